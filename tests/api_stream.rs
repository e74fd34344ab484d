//! Inbox streams (issue 14), black-box over real HTTP: each test spawns a
//! hub on port 0 and reads the `text/event-stream` body as it arrives.

mod support;

use std::future::Future;
use std::time::{Duration, SystemTime};

use admp::client::AgentClient;
use admp::client::sse::{SseItem, SseReader};
use admp::config::{Config, StorageBackend};
use admp::hub::Clock;
use admp::server::{RunningHub, start};
use admp::store::{MessageState, Store};
use reqwest::Method;
use serde_json::{Value, json};

use support::storage::PgSchema;
use support::{TestHub, expect_error, read, send, test_config};

/// How long a test waits for something the hub should do promptly.
const DEADLINE: Duration = Duration::from_secs(10);

/// Opens `agent`'s stream and checks the response and its `open` event;
/// returns the reader and the open event's id.
async fn open(agent: &AgentClient, query: &str, last: Option<&str>) -> (SseReader, String) {
    let response = agent.stream(query, last).await.unwrap();
    assert_eq!(response.status(), 200, "stream refused");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut reader = SseReader::new(response);
    let (event, id, data) = next_event(&mut reader).await;
    assert_eq!(event, "open");
    assert_eq!(id, format!("{}:0", data["stream_id"].as_str().unwrap()));
    (reader, id)
}

/// The next item, within the deadline.
async fn next_item(reader: &mut SseReader) -> SseItem {
    tokio::time::timeout(DEADLINE, reader.next())
        .await
        .expect("nothing arrived in time")
        .unwrap()
        .expect("the stream ended")
}

/// The next event (heartbeats skipped): type, id, data.
async fn next_event(reader: &mut SseReader) -> (String, String, Value) {
    loop {
        if let SseItem::Event { event, id, data } = next_item(reader).await {
            return (
                event,
                id.unwrap_or_default(),
                serde_json::from_str(&data).unwrap(),
            );
        }
    }
}

/// The next `message` event: its id and the leased message.
async fn next_message(reader: &mut SseReader) -> (String, Value) {
    let (event, id, data) = next_event(reader).await;
    assert_eq!(event, "message", "{data}");
    (id, data)
}

/// Inbox counts by state.
async fn stats(agent: &AgentClient) -> Value {
    let (status, body) = read(
        agent
            .request(Method::GET, &agent.agent_path("inbox/stats"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `check` holds, looking again every 20 ms, failing at the deadline.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn hub_with(edit: impl FnOnce(&mut Config)) -> TestHub {
    let mut config = test_config();
    config.rate_limit_enabled = false;
    edit(&mut config);
    TestHub::start(config).await
}

#[tokio::test]
async fn events_arrive_in_order_with_lease_ids() {
    let hub = hub_with(|_| {}).await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(send(&alice, "bob", json!({ "n": i })).await);
    }
    let (mut events, open_id) = open(&bob, "", None).await;
    // Sent while the stream is open: delivered after the backlog.
    for i in 3..5 {
        sent.push(send(&alice, "bob", json!({ "n": i })).await);
    }
    let stream_id = open_id.split_once(':').unwrap().0.to_string();
    for (i, expected) in sent.iter().enumerate() {
        let (id, m) = next_message(&mut events).await;
        assert_eq!(id, format!("{stream_id}:{}", i + 1));
        assert_eq!(m["message_id"], json!(expected));
        assert_eq!(m["envelope"]["body"], json!({ "n": i }));
        assert_eq!(m["attempts"], 1);
        assert!(m["lease_until"].is_i64());
        let lease_id = m["lease_id"].as_str().unwrap();
        assert!(lease_id.starts_with(&format!("{stream_id}~")), "{lease_id}");
        let (status, _) = read(bob.ack(expected, Some(lease_id)).await.unwrap()).await;
        assert_eq!(status, 200);
    }
    assert_eq!(stats(&bob).await["acked"], 5);
}

#[tokio::test]
async fn max_in_flight_holds_and_acks_free_slots() {
    let hub = hub_with(|c| c.stream_heartbeat_sec = 1).await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    for i in 0..6 {
        send(&alice, "bob", json!({ "n": i })).await;
    }
    let (mut events, _) = open(&bob, "max_in_flight=2", None).await;
    let first = next_message(&mut events).await.1;
    let second = next_message(&mut events).await.1;
    // Full: the next thing the stream says is a heartbeat, not a message.
    assert_eq!(
        next_item(&mut events).await,
        SseItem::Comment("heartbeat".into())
    );
    let counts = stats(&bob).await;
    assert_eq!(
        (counts["leased"].clone(), counts["queued"].clone()),
        (json!(2), json!(4))
    );
    // A single ack frees one slot: exactly one more message.
    let lease = |m: &Value| m["lease_id"].as_str().unwrap().to_string();
    bob.ack(first["message_id"].as_str().unwrap(), Some(&lease(&first)))
        .await
        .unwrap();
    let third = next_message(&mut events).await.1;
    assert_eq!(third["envelope"]["body"]["n"], 2);
    assert_eq!(
        next_item(&mut events).await,
        SseItem::Comment("heartbeat".into())
    );
    // A batch ack of both frees two.
    let (m2, m3) = (
        second["message_id"].as_str().unwrap(),
        third["message_id"].as_str().unwrap(),
    );
    let (l2, l3) = (lease(&second), lease(&third));
    let (status, body) = read(
        bob.ack_batch(&[(m2, Some(&l2)), (m3, Some(&l3))])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let fourth = next_message(&mut events).await.1;
    assert_eq!(fourth["envelope"]["body"]["n"], 3);
    assert_eq!(
        next_message(&mut events).await.1["envelope"]["body"]["n"],
        4
    );
    assert_eq!(
        next_item(&mut events).await,
        SseItem::Comment("heartbeat".into())
    );
    // A nack settles too: its slot takes the next message.
    let m4 = fourth["message_id"].as_str().unwrap();
    let response = bob
        .request(
            Method::POST,
            &bob.agent_path(&format!("messages/{m4}/nack")),
            Some(&json!({ "lease_id": lease(&fourth) })),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        next_message(&mut events).await.1["envelope"]["body"]["n"],
        5
    );
    assert_eq!(stats(&bob).await["leased"], 2);
}

#[tokio::test]
async fn an_ack_without_a_lease_id_frees_the_slot_at_once() {
    // Default heartbeat (15 s, past DEADLINE): only the ack's wake-up can
    // let the stream move on in time.
    let hub = hub_with(|_| {}).await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    for i in 0..2 {
        send(&alice, "bob", json!({ "n": i })).await;
    }
    let (mut events, _) = open(&bob, "max_in_flight=1", None).await;
    let first = next_message(&mut events).await.1;
    bob.ack(first["message_id"].as_str().unwrap(), None)
        .await
        .unwrap();
    let second = next_message(&mut events).await.1;
    assert_eq!(second["envelope"]["body"]["n"], 1);
}

#[tokio::test]
async fn a_closed_connection_releases_its_leases_at_once_with_the_attempt_counted() {
    let hub = hub_with(|_| {}).await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    for i in 0..4 {
        send(&alice, "bob", json!({ "n": i })).await;
    }
    // A lease of 10 minutes: only the release can bring them back soon.
    let (mut events, _) = open(&bob, "max_in_flight=3&visibility_timeout=600", None).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_message(&mut events).await.1["message_id"].clone());
    }
    assert_eq!(stats(&bob).await["leased"], 3);
    drop(events); // the client socket closes
    until("the closed stream's leases are released", || async {
        stats(&bob).await["leased"] == 0
    })
    .await;
    let (status, batch) = read(bob.pull(&json!({ "max_messages": 10 })).await.unwrap()).await;
    assert_eq!(status, 200);
    let messages = batch["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    for m in messages {
        let expected = if got.contains(&m["message_id"]) { 2 } else { 1 };
        assert_eq!(m["attempts"], expected, "{m}");
    }
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_the_unsettled_messages_first() {
    let hub = hub_with(|_| {}).await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    for i in 0..4 {
        send(&alice, "bob", json!({ "n": i })).await;
    }
    let (mut first, _) = open(&bob, "max_in_flight=3&visibility_timeout=600", None).await;
    let mut delivered = Vec::new();
    let mut last_id = String::new();
    for _ in 0..3 {
        let (id, m) = next_message(&mut first).await;
        delivered.push(m);
        last_id = id;
    }
    // One is settled; the connection then goes silent without closing (the
    // hub never notices), and new mail arrives meanwhile.
    let acked = delivered.remove(0);
    bob.ack(
        acked["message_id"].as_str().unwrap(),
        acked["lease_id"].as_str(),
    )
    .await
    .unwrap();
    let newer = send(&alice, "bob", json!({ "n": 4 })).await;
    let (mut second, _) = open(&bob, "max_in_flight=10", Some(&last_id)).await;
    for earlier in &delivered {
        let m = next_message(&mut second).await.1;
        assert_eq!(m["message_id"], earlier["message_id"]);
        assert_eq!(m["attempts"], 2);
        assert_ne!(m["lease_id"], earlier["lease_id"], "a fresh lease");
    }
    let rest: Vec<Value> = [
        next_message(&mut second).await.1["message_id"].clone(),
        next_message(&mut second).await.1["message_id"].clone(),
    ]
    .into();
    assert!(rest.contains(&json!(newer)), "{rest:?}");
    // The silent connection's leases are void.
    let stale = &delivered[0];
    let response = bob
        .ack(
            stale["message_id"].as_str().unwrap(),
            stale["lease_id"].as_str(),
        )
        .await
        .unwrap();
    expect_error(response, 409, "LEASE_MISMATCH").await;
    drop(first);
}

#[tokio::test]
async fn a_poison_message_reaches_the_dead_letters_through_repeated_drops() {
    let hub = hub_with(|c| c.max_delivery_attempts = 3).await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    let poison = send(&alice, "bob", json!({ "poison": true })).await;
    for attempt in 1..=3 {
        let (mut events, _) = open(&bob, "visibility_timeout=600", None).await;
        let m = next_message(&mut events).await.1;
        assert_eq!(
            (m["message_id"].as_str().unwrap(), m["attempts"].as_i64()),
            (poison.as_str(), Some(attempt))
        );
        drop(events);
        until("the dropped stream's lease ends", || async {
            stats(&bob).await["leased"] == 0
        })
        .await;
    }
    let counts = stats(&bob).await;
    assert_eq!(
        (counts["dead"].clone(), counts["queued"].clone()),
        (json!(1), json!(0))
    );
    let (status, dead) = read(
        bob.request(Method::GET, &bob.agent_path("inbox/dead"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(dead["messages"][0]["message_id"], json!(poison), "{dead}");
    assert_eq!(dead["messages"][0]["attempts"], 3);

    // The last release dead-lettered it: the audit log says so.
    until("the stream's dead-lettering is audited", || async {
        let (status, page) = read(
            hub.master(Method::GET, "/api/audit?limit=100")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        page["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "message.dead_lettered"
                && e["agent_id"] == "bob"
                && e["detail"]["source"] == "stream"
                && e["detail"]["count"] == 1
        })
    })
    .await;
}

#[tokio::test]
async fn shutdown_releases_the_leases_then_says_so() {
    let hub = hub_with(|_| {}).await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    let id = send(&alice, "bob", json!({})).await;
    let (mut events, _) = open(&bob, "visibility_timeout=600", None).await;
    next_message(&mut events).await;
    hub.running.hub.shutdown.cancel();
    let (event, _, _) = next_event(&mut events).await;
    assert_eq!(event, "shutdown");
    let m = hub.store.get_message(&id).await.unwrap().unwrap();
    assert_eq!((m.state, m.attempts), (MessageState::Queued, 1));
    let end = tokio::time::timeout(DEADLINE, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, None, "the stream closes after the shutdown event");
}

#[tokio::test]
async fn streams_are_limited_per_agent_and_per_hub() {
    let hub = hub_with(|c| {
        c.stream_max_per_agent = 2;
        c.stream_max_total = 3;
    })
    .await;
    let (alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    let (b1, _) = open(&bob, "", None).await;
    let (_b2, _) = open(&bob, "", None).await;
    let third = bob.stream("", None).await.unwrap();
    let body = expect_error(third, 429, "TOO_MANY_STREAMS").await;
    assert!(body["message"].as_str().unwrap().contains("bob"));
    let (_a1, _) = open(&alice, "", None).await;
    let over = alice.stream("", None).await.unwrap();
    expect_error(over, 429, "TOO_MANY_STREAMS").await;
    // A closed stream gives its place back.
    drop(b1);
    until("a closed stream frees its place", || async {
        alice.stream("", None).await.unwrap().status() == 200
    })
    .await;
}

#[tokio::test]
async fn refusals_stale_date_other_agents_and_bad_parameters() {
    let hub = hub_with(|c| c.stream_heartbeat_sec = 1).await;
    let (mut alice, bob) = (hub.agent("alice").await, hub.agent("bob").await);
    let path = bob.agent_path("inbox/stream");
    let stale = SystemTime::now() - Duration::from_secs(3600);
    let response = bob
        .request_at(Method::GET, &path, None, stale)
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "REQUEST_EXPIRED").await;
    // Alice's signature, then her session token, on bob's stream.
    let response = alice
        .request(Method::GET, &path, None)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    alice.open_session().await.unwrap();
    let response = alice
        .request(Method::GET, &path, None)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    let response = hub.http.get(hub.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    for query in [
        "max_in_flight=0",
        "max_in_flight=101",
        "visibility_timeout=0",
        "max_in_flight=x",
    ] {
        let response = bob.stream(query, None).await.unwrap();
        expect_error(response, 400, "INVALID_INPUT").await;
    }
    let long = format!("{}:1", "a".repeat(200));
    for bad in ["nope", "0123456789abcdef0123456789ABCDEF:1", long.as_str()] {
        let response = bob.stream("", Some(bad)).await.unwrap();
        expect_error(response, 400, "INVALID_INPUT").await;
    }
    // Naming another agent's stream touches nothing of that agent's.
    send(&alice, "bob", json!({})).await;
    let (mut bobs, _) = open(&bob, "visibility_timeout=600", None).await;
    let (bob_event_id, m) = next_message(&mut bobs).await;
    alice.session = None;
    let (mut alices, _) = open(&alice, "", Some(&bob_event_id)).await;
    // Alice's stream took over "its" earlier stream and went idle: a heartbeat.
    assert_eq!(
        next_item(&mut alices).await,
        SseItem::Comment("heartbeat".into())
    );
    let response = bob
        .ack(m["message_id"].as_str().unwrap(), m["lease_id"].as_str())
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "bob's lease survived alice's resume"
    );
    assert_eq!(stats(&alice).await["leased"], 0);
}

#[tokio::test]
async fn a_deleted_agent_or_a_revoked_session_ends_the_stream() {
    let hub = hub_with(|c| c.stream_heartbeat_sec = 1).await;
    let bob = hub.agent("bob").await;
    let (mut events, _) = open(&bob, "", None).await;
    let response = hub
        .master(Method::DELETE, &bob.agent_path(""))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let (event, _, data) = next_event(&mut events).await;
    assert_eq!(
        (event.as_str(), data["reason"].as_str()),
        ("end", Some("AGENT_NOT_FOUND"))
    );
    // The ended stream leaves no inbox notifier behind for the deleted agent.
    assert!(hub.running.hub.wakers.peek("bob").is_none());

    let mut carol = hub.agent("carol").await;
    carol.open_session().await.unwrap();
    let (mut events, _) = open(&carol, "", None).await;
    let new_key = admp::signing::keys::generate();
    let public = admp::signing::keys::encode_public_key(&new_key.verifying_key());
    let signed = AgentClient::new(
        hub.http.clone(),
        &hub.running.url(),
        "carol",
        carol.key.clone(),
    );
    let response = signed
        .request(
            Method::POST,
            &carol.agent_path("rotate-key"),
            Some(&json!({ "public_key": public })),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (event, _, data) = next_event(&mut events).await;
    assert_eq!(
        (event.as_str(), data["reason"].as_str()),
        ("end", Some("TOKEN_EXPIRED"))
    );
}

/// A hub on the PostgreSQL schema `schema`.
async fn pg_hub(schema: &PgSchema) -> RunningHub {
    let mut config = test_config();
    config.storage_backend = StorageBackend::Postgres;
    config.database_url = schema.url();
    config.rate_limit_enabled = false;
    // A long heartbeat: only the cross-instance wake-ups can explain promptness.
    config.stream_heartbeat_sec = 300;
    start(config, Clock::system()).await.expect("hub starts")
}

#[tokio::test]
async fn two_hubs_on_postgres_stream_what_the_other_receives() {
    let schema = PgSchema::create().await;
    let (a, b) = (pg_hub(&schema).await, pg_hub(&schema).await);
    let http = reqwest::Client::new();
    let alice = AgentClient::register(http.clone(), &a.url(), Some("alice"))
        .await
        .unwrap();
    let bob_on_a = AgentClient::register(http.clone(), &a.url(), Some("bob"))
        .await
        .unwrap();
    let bob_on_b = AgentClient::new(http.clone(), &b.url(), "bob", bob_on_a.key.clone());
    let (mut events, _) = open(&bob_on_b, "max_in_flight=1", None).await;
    let first = send(&alice, "bob", json!({ "n": 1 })).await;
    let second = send(&alice, "bob", json!({ "n": 2 })).await;
    let m = next_message(&mut events).await.1;
    assert_eq!(m["message_id"], json!(first));
    // Settled through hub A: hub B's stream hears of the free slot.
    let response = bob_on_a.ack(&first, m["lease_id"].as_str()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        next_message(&mut events).await.1["message_id"],
        json!(second)
    );
    drop(events);
    a.hub.shutdown.cancel();
    b.hub.shutdown.cancel();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
    schema.drop_schema().await;
}
