//! The Mech backend over a slow, failing network: injected 5xx, stalls beyond
//! the client timeout, 429 with `Retry-After`, unparsable answers, a full
//! outage (503 `STORAGE_UNAVAILABLE` with `Retry-After`, circuit breaker,
//! recovery), input validation before any call, bounded sweep concurrency,
//! and a hub restart that rebuilds its index from Mech.
//!
//! Every hub and emulator listens on port 0 (the OS picks a free port). Time
//! budgets come from short timeouts and backoffs passed as config values;
//! tests count the requests the emulator saw rather than time them, and the
//! few time bounds are generous (`timeout × attempts + backoff + margin`).

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use admp::client::AgentClient;
use admp::config::Config;
use admp::hub::{Clock, Hub};
use admp::jobs::sweeper::sweep_once;
use admp::server::{RunningHub, start_with_store};
use admp::store::mech::{AGENTS, ATTEMPTS, AUDIT, DELIVERIES, MESSAGES, MechSettings, MechStore};
use admp::store::{
    AckRequest, Agent, AgentChange, AgentKey, Enqueued, LeaseRequest, Message, Store, StoreError,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::mech_emulator::{FOREIGN_DOCUMENTS, MechEmulator, Mode};
use support::{MASTER_KEY, expect_error, read};

/// Short client budgets so faults resolve in milliseconds.
fn fast(emulator: &MechEmulator) -> Config {
    Config {
        host: [127, 0, 0, 1].into(),
        // Port 0: the OS picks a free port.
        port: 0,
        master_api_key: Some(MASTER_KEY.into()),
        rate_limit_enabled: false,
        mech_timeout_ms: 150,
        mech_max_retries: 3,
        mech_backoff_base_ms: 2,
        mech_backoff_max_ms: 20,
        mech_breaker_failures: 5,
        mech_breaker_reset_ms: 200,
        ..emulator.config()
    }
}

async fn open(config: &Config) -> Arc<MechStore> {
    let settings = MechSettings::from_config(config).unwrap();
    Arc::new(MechStore::open(settings).await.expect("Mech store opens"))
}

/// A hub on the Mech store, and an HTTP client for it.
struct MechHub {
    running: RunningHub,
    store: Arc<MechStore>,
    http: reqwest::Client,
}

impl MechHub {
    async fn start(config: Config) -> Self {
        let store = open(&config).await;
        let running = start_with_store(config, store.clone(), Clock::system())
            .await
            .expect("hub starts");
        MechHub {
            running,
            store,
            http: reqwest::Client::new(),
        }
    }

    async fn agent(&self, id: &str) -> AgentClient {
        AgentClient::register(self.http.clone(), &self.running.url(), Some(id))
            .await
            .expect("registration succeeds")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }
}

fn agent(id: &str) -> Agent {
    Agent {
        agent_id: id.into(),
        agent_type: "test".into(),
        metadata: Default::default(),
        keys: vec![AgentKey {
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            version: 1,
            valid_until: None,
        }],
        webhook_url: None,
        webhook_secret: None,
        previous_webhook_secret: None,
        trusted_agents: Vec::new(),
        last_heartbeat: 0,
        online: true,
        heartbeat_interval_ms: 60_000,
        heartbeat_timeout_ms: 300_000,
        created_at: 0,
        updated_at: 0,
    }
}

fn message(id: &str, to: &str, now: i64, ttl_ms: i64) -> Message {
    Message {
        content_hash: format!("hash-{id}"),
        ..Message::queued(
            id.into(),
            to.into(),
            "alice".into(),
            json!({ "id": id, "body": { "n": id } }).into(),
            now,
            ttl_ms,
        )
    }
}

/// The 503 of an unreachable store: right code, and a `Retry-After`.
async fn expect_unavailable(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    expect_error(response, 503, "STORAGE_UNAVAILABLE").await;
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "503 carries Retry-After"
    );
}

async fn thirty_percent_server_errors_every_api_operation_still_succeeds(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    // Enough retries that 30 % failures essentially never exhaust them
    // (0.3^11 per call), and a breaker that a lucky streak cannot open.
    let hub = MechHub::start(Config {
        mech_max_retries: 10,
        mech_breaker_failures: 50,
        ..fast(&emulator)
    })
    .await;
    emulator.set_error_rate(0.3);
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;

    let heartbeat = bob
        .request(
            Method::POST,
            &bob.agent_path("heartbeat"),
            Some(&json!({"metadata": {"v": 2}})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(heartbeat.status(), 200);
    let mut sent = Vec::new();
    for i in 0..20 {
        let envelope = alice.envelope("bob", "fault", json!({ "i": i }));
        let (status, body) = read(alice.send("bob", &envelope).await.unwrap()).await;
        assert_eq!(status, StatusCode::CREATED, "send {i}: {body}");
        sent.push(body["message_id"].as_str().unwrap().to_string());
    }
    let (status, pulled) = read(bob.pull(&json!({"max_messages": 20})).await.unwrap()).await;
    assert_eq!(status, 200, "{pulled}");
    let leased = pulled["messages"].as_array().unwrap();
    assert_eq!(leased.len(), 20);
    for (i, lease) in leased.iter().enumerate() {
        let id = lease["message_id"].as_str().unwrap();
        if i == 0 {
            let nack = bob
                .request(
                    Method::POST,
                    &bob.agent_path(&format!("messages/{id}/nack")),
                    Some(&json!({"requeue": true})),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(nack.status(), 200);
        } else {
            let (status, body) = read(bob.ack(id, lease["lease_id"].as_str()).await.unwrap()).await;
            assert_eq!(status, 200, "ack {id}: {body}");
        }
    }
    let (status, again) = read(bob.pull(&json!({"max_messages": 1})).await.unwrap()).await;
    assert_eq!(status, 200, "{again}");
    let again_id = again["messages"][0]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = read(
        bob.ack(&again_id, again["messages"][0]["lease_id"].as_str())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, stats) = read(
        bob.request(Method::GET, &bob.agent_path("inbox/stats"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(stats["acked"], 20, "{stats}");
    let deleted = hub
        .http
        .delete(hub.url("/api/agents/alice"))
        .header("x-api-key", MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    assert!(
        emulator.counters().injected.load(Ordering::SeqCst) > 10,
        "faults were injected"
    );
    // Everything the API confirmed is in Mech.
    for id in &sent {
        let doc = emulator
            .document(MESSAGES, id)
            .expect("message stored in Mech");
        assert_eq!(doc["message"]["state"], "acked");
    }
    assert!(emulator.document(AGENTS, "alice").is_none());
    assert!(!hub.store.client().breaker_open());
    hub.running.shutdown().await.unwrap();
}

async fn stalls_beyond_the_timeout_are_retried_then_succeed(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let store = open(&fast(&emulator)).await;
    let before = emulator.requests();
    // Two attempts hang far past the 150 ms timeout; the third gets through.
    emulator.stall_next(2, Duration::from_secs(3));
    store.create_agent(agent("bob")).await.unwrap();
    assert_eq!(emulator.requests() - before, 3, "two timeouts, one success");
    assert!(emulator.document(AGENTS, "bob").is_some());
    assert_eq!(
        store.get_agent("bob").await.unwrap().unwrap().agent_id,
        "bob"
    );
}

async fn stalls_on_every_attempt_give_a_clean_503_within_the_budget(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = fast(&emulator);
    let attempts = u64::from(config.mech_max_retries) + 1;
    let budget = Duration::from_millis(
        config.mech_timeout_ms * attempts + config.mech_backoff_max_ms * attempts,
    ) + Duration::from_secs(2);
    let hub = MechHub::start(config).await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    let before = emulator.requests();
    // Every attempt of the next send hangs for 10 s: far longer than the budget.
    emulator.stall_next(attempts, Duration::from_secs(10));
    let started = Instant::now();
    let envelope = alice.envelope("bob", "stalled", json!({}));
    expect_unavailable(alice.send("bob", &envelope).await.unwrap()).await;
    assert!(
        started.elapsed() < budget,
        "{:?} within {budget:?}",
        started.elapsed()
    );
    assert_eq!(emulator.requests() - before, attempts);
    // Nothing half-stored: the refused send is neither in Mech nor in the inbox.
    assert_eq!(emulator.count(MESSAGES), 0);
    assert_eq!(hub.store.inbox_stats("bob").await.unwrap().total, 0);
    // The stall is over: the next send goes through.
    let envelope = alice.envelope("bob", "after", json!({}));
    assert_eq!(alice.send("bob", &envelope).await.unwrap().status(), 201);
    hub.running.shutdown().await.unwrap();
}

async fn outage_answers_503_fast_loses_nothing_and_recovers(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = Config {
        mech_breaker_failures: 2,
        ..fast(&emulator)
    };
    let attempts = u64::from(config.mech_max_retries) + 1;
    let hub = MechHub::start(config).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let mut accepted = Vec::new();
    for i in 0..3 {
        let envelope = alice.envelope("bob", "before", json!({ "i": i }));
        let (status, body) = read(alice.send("bob", &envelope).await.unwrap()).await;
        assert_eq!(status, 201);
        accepted.push(body["message_id"].as_str().unwrap().to_string());
    }

    emulator.set_outage(true);
    // Two sends exhaust their retries (each made every attempt)…
    for _ in 0..2 {
        let before = emulator.requests();
        let envelope = alice.envelope("bob", "during", json!({}));
        expect_unavailable(alice.send("bob", &envelope).await.unwrap()).await;
        assert_eq!(emulator.requests() - before, attempts);
    }
    // …which opens the breaker: now the API answers 503 without calling Mech.
    assert!(hub.store.client().breaker_open());
    let before = emulator.requests();
    let envelope = alice.envelope("bob", "during", json!({}));
    expect_unavailable(alice.send("bob", &envelope).await.unwrap()).await;
    let pull = bob.pull(&json!({})).await.unwrap();
    expect_unavailable(pull).await;
    let ready = hub.http.get(hub.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        emulator.requests(),
        before,
        "an open breaker makes no calls"
    );

    emulator.set_outage(false);
    // The breaker lets a probe through after MECH_BREAKER_RESET_MS (200 ms);
    // poll until it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let envelope = alice.envelope("bob", "after", json!({}));
        let (status, body) = read(alice.send("bob", &envelope).await.unwrap()).await;
        if status == 201 {
            accepted.push(body["message_id"].as_str().unwrap().to_string());
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the hub recovers once Mech is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!hub.store.client().breaker_open());
    // Every accepted message is delivered, the refused ones never appear.
    let (status, pulled) = read(bob.pull(&json!({"max_messages": 10})).await.unwrap()).await;
    assert_eq!(status, 200);
    let mut ids: Vec<String> = pulled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    accepted.sort();
    assert_eq!(ids, accepted);
    assert_eq!(emulator.count(MESSAGES), accepted.len());
    hub.running.shutdown().await.unwrap();
}

async fn start_up_during_an_outage_fails_cleanly(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    emulator.set_outage(true);
    let settings = MechSettings::from_config(&fast(&emulator)).unwrap();
    let err = MechStore::open(settings)
        .await
        .err()
        .expect("no store without Mech");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

async fn throttling_honours_retry_after_and_other_4xx_are_never_retried(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = Config {
        mech_backoff_max_ms: 1_500,
        ..fast(&emulator)
    };
    let store = open(&config).await;
    let before = emulator.requests();
    // Live mode: the wait is only in the body (`error.retryAfterMs`);
    // legacy mode: only in `Retry-After`. Either is waited for in full.
    emulator.throttle_next(1, Duration::from_secs(1));
    let started = Instant::now();
    store.create_agent(agent("bob")).await.unwrap();
    assert_eq!(emulator.requests() - before, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the asked time"
    );
    // A Retry-After longer than MECH_BACKOFF_MAX_MS: give up at once with 503.
    let before = emulator.requests();
    emulator.throttle_next(1, Duration::from_secs(60));
    let err = store.create_agent(agent("carol")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert_eq!(emulator.requests() - before, 1);

    // A wrong key is a 401: one request, no retry, an internal error.
    let wrong = Config {
        mech_api_key: Some("not-the-key".into()),
        ..config
    };
    let settings = MechSettings::from_config(&wrong).unwrap();
    let before = emulator.requests();
    let err = MechStore::open(settings).await.err().unwrap();
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("401")),
        "{err}"
    );
    // The first request (reading the lock) is refused, and not retried.
    assert_eq!(emulator.requests() - before, 1);
}

async fn unparsable_answers_are_reported_not_swallowed(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let store = open(&fast(&emulator)).await;
    emulator.garbage_next(1);
    let err = store.ping().await.unwrap_err();
    match &err {
        StoreError::Internal(m) => {
            assert!(
                m.contains("HTTP 200") && m.contains("upstream proxy error"),
                "{m}"
            )
        }
        other => panic!("expected Internal, got {other:?}"),
    }
    // Mech answered, so the breaker does not count it as an outage.
    assert!(!store.client().breaker_open());
    store.ping().await.unwrap();
}

async fn invalid_inputs_are_refused_before_any_call(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let store = open(&Config {
        max_message_size_kb: 1,
        mech_max_document_kb: 2,
        ..fast(&emulator)
    })
    .await;
    store.create_agent(agent("bob")).await.unwrap();
    let before = emulator.requests();
    let err = store
        .create_agent(agent(&"x".repeat(600)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("document key")),
        "{err}"
    );
    let err = store.create_agent(agent("bad\u{7}id")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("control")),
        "{err}"
    );
    let mut huge = message("huge", "bob", 0, 60_000);
    huge.envelope = json!({ "body": "y".repeat(4096) }).into();
    let err = store.enqueue(huge, 100, None).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("MECH_MAX_DOCUMENT_KB")),
        "{err}"
    );
    assert_eq!(emulator.requests(), before, "nothing was sent");
    // The refused message left no trace: its id is free again.
    assert!(store.get_message("huge").await.unwrap().is_none());
    let fits = message("huge", "bob", 0, 60_000);
    assert!(matches!(
        store.enqueue(fits, 100, None).await.unwrap(),
        Enqueued::Created(_)
    ));
}

async fn sweeps_use_the_index_and_bounded_concurrency(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let store = open(&Config {
        mech_concurrency: 8,
        ..fast(&emulator)
    })
    .await;
    for agent_id in ["bob", "carol"] {
        store.create_agent(agent(agent_id)).await.unwrap();
    }
    for i in 0..120 {
        let to = if i % 2 == 0 { "bob" } else { "carol" };
        let m = message(&format!("m{i:03}"), to, 0, 1_000);
        store.enqueue(m, 1_000, None).await.unwrap();
    }
    emulator.set_latency(Duration::from_millis(5));
    emulator.reset_max_in_flight();
    let lists = emulator.counters().lists.load(Ordering::SeqCst);
    let before = emulator.requests();
    assert_eq!(store.expire_messages(1_000, 500).await.unwrap(), 120);
    let max = emulator.counters().max_in_flight.load(Ordering::SeqCst);
    assert!(max > 1, "writes overlap (no N+1): {max}");
    assert!(max <= 8, "at most MECH_CONCURRENCY in flight: {max}");
    assert_eq!(emulator.requests() - before, 120, "one write per message");
    assert_eq!(
        emulator.counters().lists.load(Ordering::SeqCst),
        lists,
        "no scans"
    );
    // The purge deletes just as concurrently, again without listing.
    emulator.reset_max_in_flight();
    assert_eq!(store.purge_retained(2_000, 500).await.unwrap(), 120);
    let max = emulator.counters().max_in_flight.load(Ordering::SeqCst);
    assert!(max > 1 && max <= 8, "{max}");
    assert_eq!(emulator.count(MESSAGES), 0);
    assert_eq!(emulator.counters().lists.load(Ordering::SeqCst), lists);
}

async fn a_batch_ack_writes_its_entries_in_parallel(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let store = open(&Config {
        mech_concurrency: 8,
        ..fast(&emulator)
    })
    .await;
    store.create_agent(agent("bob")).await.unwrap();
    for i in 0..40 {
        let m = message(&format!("m{i:02}"), "bob", 0, 60_000);
        store.enqueue(m, 1_000, None).await.unwrap();
    }
    let leased = store
        .lease(&LeaseRequest {
            recipient: "bob".into(),
            now: 1,
            visibility_ms: 60_000,
            max_messages: 40,
            max_attempts: 10,
        })
        .await
        .unwrap();
    assert_eq!(leased.len(), 40);
    let acks: Vec<AckRequest> = leased
        .iter()
        .map(|m| AckRequest {
            recipient: "bob".into(),
            message_id: m.id.clone(),
            lease_id: m.lease_id.clone(),
            result: None,
            now: 2,
        })
        .collect();
    emulator.set_latency(Duration::from_millis(5));
    emulator.reset_max_in_flight();
    let before = emulator.requests();
    let outcomes = store.ack_many(&acks).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(emulator.requests() - before, 40, "one write per entry");
    let max = emulator.counters().max_in_flight.load(Ordering::SeqCst);
    assert!(max > 1 && max <= 8, "writes overlap, bounded: {max}");
    assert_eq!(store.inbox_stats("bob").await.unwrap().acked, 40);
}

async fn one_sweeper_pass_drains_a_backlog_of_many_batches(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    // Batches of 100, up to 16 at once: the sweeper's concurrent batches
    // must each find fresh work, not race for the same records.
    // A generous timeout: a retried request would be counted twice.
    let config = Config {
        sweep_batch_size: 100,
        sweep_concurrency: 16,
        mech_timeout_ms: 10_000,
        ..fast(&emulator)
    };
    let store = open(&config).await;
    let clock = Clock::manual();
    let now = clock.now_ms();
    for agent_id in ["bob", "carol", "dave"] {
        // Heartbeats are fresh, so the pass's offline step writes nothing.
        let fresh = Agent {
            last_heartbeat: now,
            ..agent(agent_id)
        };
        store.create_agent(fresh).await.unwrap();
    }
    for i in 0..350 {
        let to = ["bob", "carol", "dave"][i % 3];
        let m = message(&format!("m{i:03}"), to, now, 1_000);
        store.enqueue(m, 1_000, None).await.unwrap();
    }
    clock.advance_ms(1_000);
    let hub = Hub::new(Arc::new(config), store.clone(), clock, Arc::default());
    let before = emulator.requests();
    let report = sweep_once(&hub).await.unwrap();
    assert_eq!(report.expired, 350);
    assert_eq!(store.stats().await.unwrap().messages.expired, 350);
    assert_eq!(
        emulator.requests() - before,
        350,
        "each message written once"
    );
}

async fn accepted_messages_survive_failures_and_a_restart(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    // Few retries, so some sends do fail; the breaker stays out of the way.
    let config = Config {
        mech_max_retries: 1,
        mech_breaker_failures: 1_000,
        ..fast(&emulator)
    };
    let store = open(&config).await;
    store.create_agent(agent("bob")).await.unwrap();
    emulator.set_error_rate(0.4);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        match store
            .enqueue(
                message(&format!("m{i:02}"), "bob", 0, 3_600_000),
                1_000,
                None,
            )
            .await
        {
            Ok(Enqueued::Created(m)) => accepted.push(m.id),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(StoreError::Unavailable(_)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0 && !accepted.is_empty(), "{refused} refused");
    emulator.set_error_rate(0.0);
    store.close().await;
    let restarted = open(&config).await;
    for id in &accepted {
        assert_eq!(
            restarted.get_message(id).await.unwrap(),
            store.get_message(id).await.unwrap(),
            "{id} survives the restart unchanged"
        );
    }
    let leased = restarted
        .lease(&LeaseRequest {
            recipient: "bob".into(),
            now: 1,
            visibility_ms: 60_000,
            max_messages: 100,
            max_attempts: 10,
        })
        .await
        .unwrap();
    let mut ids: Vec<String> = leased.into_iter().map(|m| m.id).collect();
    ids.sort();
    // A refused send may leave its document behind only if the clean-up
    // delete failed too; every accepted one is there.
    assert!(accepted.iter().all(|id| ids.contains(id)));
}

async fn a_restarted_hub_rebuilds_its_index_and_serves_the_same_inboxes(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = fast(&emulator);
    let first = MechHub::start(config.clone()).await;
    let alice = first.agent("alice").await;
    let bob = first.agent("bob").await;
    let carol = first.agent("carol").await;
    // Pages of 50: with the foreign documents, the rebuild must paginate.
    emulator.set_page_cap(Some(50));
    for i in 0..70 {
        let (to, from) = if i % 2 == 0 {
            ("bob", &alice)
        } else {
            ("carol", &alice)
        };
        let envelope = from.envelope(to, "restart", json!({ "i": i }));
        assert_eq!(from.send(to, &envelope).await.unwrap().status(), 201);
    }
    let (_, pulled) = read(bob.pull(&json!({"max_messages": 5})).await.unwrap()).await;
    let held = pulled["messages"].as_array().unwrap().clone();
    for lease in &held[..3] {
        let id = lease["message_id"].as_str().unwrap();
        assert_eq!(
            bob.ack(id, lease["lease_id"].as_str())
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let stats_before = first.store.stats().await.unwrap();
    first.running.shutdown().await.unwrap();
    first.store.close().await;
    assert!(
        emulator.lock_holder().is_none(),
        "a graceful stop releases the lock"
    );

    let second = MechHub::start(config).await;
    assert_eq!(second.store.stats().await.unwrap(), stats_before);
    // The same agents, with the same keys: their signatures still verify.
    let bob = AgentClient::new(
        second.http.clone(),
        &second.running.url(),
        "bob",
        bob.key.clone(),
    );
    let carol = AgentClient::new(
        second.http.clone(),
        &second.running.url(),
        "carol",
        carol.key.clone(),
    );
    // The two unacked leases still hold; the rest of bob's inbox is served.
    let (status, body) = read(bob.pull(&json!({"max_messages": 100})).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 35 - 5);
    let (_, body) = read(carol.pull(&json!({"max_messages": 100})).await.unwrap()).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 35);
    // A lease taken before the restart can still be acked with its lease id.
    let id = held[3]["message_id"].as_str().unwrap();
    assert_eq!(
        bob.ack(id, held[3]["lease_id"].as_str())
            .await
            .unwrap()
            .status(),
        200
    );
    second.running.shutdown().await.unwrap();
    second.store.close().await;
    // Other applications' documents were neither touched nor in the way.
    let ours: usize = [AGENTS, MESSAGES, DELIVERIES, ATTEMPTS, AUDIT]
        .iter()
        .map(|c| emulator.count(c))
        .sum();
    assert_eq!(emulator.total() - ours, FOREIGN_DOCUMENTS);
    assert_eq!(emulator.counters().app_id_headers.load(Ordering::SeqCst), 0);
}

async fn a_second_instance_is_refused_naming_the_holder(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = fast(&emulator);
    let first = open(&config).await;
    let holder = first.lock().record().holder.clone();
    let before = emulator.total();
    let err = MechStore::open(MechSettings::from_config(&config).unwrap())
        .await
        .err()
        .expect("a second hub on the same app is refused");
    match &err {
        StoreError::Unavailable(m) => assert!(
            m.contains(&holder) && m.contains("MECH_LOCK_STALE_MS"),
            "the refusal names the holder and the timeout: {m}"
        ),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(emulator.total(), before, "the refused hub wrote nothing");
    assert_eq!(emulator.lock_holder().as_deref(), Some(holder.as_str()));
    // The first hub keeps working.
    first.create_agent(agent("still-here")).await.unwrap();
    first.close().await;
}

async fn a_stale_lock_is_taken_over_and_a_fresh_one_is_not(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = fast(&emulator);
    // Heartbeat 1 s old, stale after 60 s: refused, naming the holder.
    emulator.plant_lock("crashed-hub/1/abcd", Duration::from_secs(1));
    let err = MechStore::open(MechSettings::from_config(&config).unwrap())
        .await
        .err()
        .expect("a fresh lock refuses the start");
    assert!(err.to_string().contains("crashed-hub/1/abcd"), "{err}");
    // Heartbeat older than MECH_LOCK_STALE_MS: taken over.
    emulator.plant_lock("crashed-hub/1/abcd", Duration::from_secs(61));
    let store = open(&config).await;
    assert_eq!(
        emulator.lock_holder().as_deref(),
        Some(store.lock().record().holder.as_str())
    );
    store.create_agent(agent("after-takeover")).await.unwrap();
    store.close().await;
}

async fn a_crashed_hub_is_replaced_once_its_heartbeat_is_stale(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = Config {
        mech_lock_stale_ms: 600,
        ..fast(&emulator)
    };
    let crashed = open(&config).await;
    crashed.create_agent(agent("bob")).await.unwrap();
    crashed
        .enqueue(message("m1", "bob", 0, 3_600_000), 100, None)
        .await
        .unwrap();
    // A crash: no release, the heartbeat just stops.
    drop(crashed);
    let settings = MechSettings::from_config(&config).unwrap();
    let err = MechStore::open(settings.clone()).await.err().unwrap();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let restarted = loop {
        match MechStore::open(settings.clone()).await {
            Ok(store) => break store,
            Err(StoreError::Unavailable(m)) if Instant::now() < deadline => {
                assert!(m.contains("MECH_LOCK_STALE_MS"), "{m}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the stale lock was never taken over: {e}"),
        }
    };
    assert!(restarted.get_agent("bob").await.unwrap().is_some());
    assert!(restarted.get_message("m1").await.unwrap().is_some());
    restarted.close().await;
}

async fn a_hub_that_lost_its_lock_stops_writing(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    let config = Config {
        mech_lock_stale_ms: 400,
        ..fast(&emulator)
    };
    let store = open(&config).await;
    store.create_agent(agent("bob")).await.unwrap();
    // Another hub (wrongly) took the lock over.
    emulator.plant_lock("intruder/2/ef01", Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store
            .update_agent(
                "bob",
                &AgentChange::Heartbeat {
                    now: 1,
                    metadata: None,
                    max_metadata_bytes: usize::MAX,
                },
            )
            .await
        {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("intruder/2/ef01"), "{m}");
                break;
            }
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("writes never stopped: {other:?}"),
        }
    }
    assert!(store.ping().await.is_err(), "a fenced hub is not ready");
    assert_eq!(emulator.lock_holder().as_deref(), Some("intruder/2/ef01"));
}

async fn credentials_and_the_app_id_header_follow_the_settings(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    // The key alone goes as X-API-Key.
    let key_only = Config {
        mech_api_secret: None,
        ..fast(&emulator)
    };
    let store = open(&key_only).await;
    store.create_agent(agent("bob")).await.unwrap();
    store.close().await;
    // X-App-ID only when opted in; the live service answers it TABLE_NOT_FOUND.
    let with_header = Config {
        mech_send_app_id_header: true,
        ..fast(&emulator)
    };
    let opened = MechStore::open(MechSettings::from_config(&with_header).unwrap()).await;
    match mode {
        Mode::Live => {
            let err = opened.err().expect("the live API refuses X-App-ID");
            assert!(err.to_string().contains("TABLE_NOT_FOUND"), "{err}");
        }
        Mode::Legacy => {
            opened
                .expect("the older API accepts X-App-ID")
                .close()
                .await
        }
    }
    let expected = u64::from(mode == Mode::Live);
    assert_eq!(
        emulator.counters().app_id_headers.load(Ordering::SeqCst),
        expected
    );
}

async fn pagination_that_does_not_advance_is_an_error(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    emulator.set_page_cap(Some(20));
    emulator.set_ignore_offset(true);
    let err = MechStore::open(MechSettings::from_config(&fast(&emulator)).unwrap())
        .await
        .err()
        .expect("a server that ignores offset is not read as complete");
    assert!(err.to_string().contains("previous page again"), "{err}");
}

async fn an_offloaded_blob_in_our_record_is_refused_clearly(mode: Mode) {
    let emulator = MechEmulator::start_shared(mode).await;
    emulator.insert(
        AGENTS,
        "bob",
        json!({ "agent_id": "bob", "metadata": { "__type": "blob_ref", "provider": "r2",
                "url": "https://example.invalid/b", "key": "k", "size": 99 } }),
    );
    let err = MechStore::open(MechSettings::from_config(&fast(&emulator)).unwrap())
        .await
        .err()
        .expect("a blob reference where a record field was stored is refused");
    assert!(
        err.to_string().contains("blob reference") && err.to_string().contains("/metadata"),
        "{err}"
    );
}

/// Runs each scenario against both emulator modes: `live::*` and `legacy::*`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod live {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Live).await;
                }
            )*
        }
        mod legacy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::Legacy).await;
                }
            )*
        }
    };
}

both_modes!(
    thirty_percent_server_errors_every_api_operation_still_succeeds,
    stalls_beyond_the_timeout_are_retried_then_succeed,
    stalls_on_every_attempt_give_a_clean_503_within_the_budget,
    outage_answers_503_fast_loses_nothing_and_recovers,
    start_up_during_an_outage_fails_cleanly,
    throttling_honours_retry_after_and_other_4xx_are_never_retried,
    unparsable_answers_are_reported_not_swallowed,
    invalid_inputs_are_refused_before_any_call,
    sweeps_use_the_index_and_bounded_concurrency,
    a_batch_ack_writes_its_entries_in_parallel,
    one_sweeper_pass_drains_a_backlog_of_many_batches,
    accepted_messages_survive_failures_and_a_restart,
    a_restarted_hub_rebuilds_its_index_and_serves_the_same_inboxes,
    a_second_instance_is_refused_naming_the_holder,
    a_stale_lock_is_taken_over_and_a_fresh_one_is_not,
    a_crashed_hub_is_replaced_once_its_heartbeat_is_stale,
    a_hub_that_lost_its_lock_stops_writing,
    credentials_and_the_app_id_header_follow_the_settings,
    pagination_that_does_not_advance_is_an_error,
    an_offloaded_blob_in_our_record_is_refused_clearly,
);
