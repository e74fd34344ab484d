//! Several hub instances on one PostgreSQL schema behave as one hub.
//!
//! - Two `admp serve` processes, 4 consumers across both, 2000 messages sent
//!   through both: every message is leased once and acked once, none lost.
//! - A NOTIFY sent by one instance's store wakes long-polls on another's.
//! - Sweeps and webhook claims running on two instances at once handle every
//!   record once.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (see `tests/support`).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use admp::client::AgentClient;
use admp::hub::InboxWakers;
use admp::store::postgres::PostgresStore;
use admp::store::*;
use parking_lot::Mutex;
use serde_json::{Value, json};

use support::storage::{HubProcess, PgSchema, TempDir};

const MESSAGES: usize = 2000;
const PRODUCERS_PER_HUB: usize = 4;
const CONSUMERS_PER_HUB: usize = 2;
/// Upper bound for the whole exchange; it normally takes a fraction of this.
const DEADLINE: Duration = Duration::from_secs(300);

/// What the consumers saw, per message id: the lease ids they were handed.
type Deliveries = Arc<Mutex<HashMap<String, Vec<String>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_share_one_inbox_without_loss_or_double_leases() {
    let schema = PgSchema::create().await;
    let cwd = TempDir::new();
    let url = schema.url();
    let args = [
        "--storage-backend",
        "postgres",
        "--database-url",
        url.as_str(),
        "--database-max-connections",
        "5",
    ];
    let hubs = [
        HubProcess::start(cwd.path(), &args),
        HubProcess::start(cwd.path(), &args),
    ];
    let http = reqwest::Client::new();
    let sender = AgentClient::register(http.clone(), &hubs[0].url, Some("sender"))
        .await
        .unwrap();
    let receiver = AgentClient::register(http.clone(), &hubs[1].url, Some("receiver"))
        .await
        .unwrap();
    let on_hub = |client: &AgentClient, hub: &HubProcess| {
        AgentClient::new(http.clone(), &hub.url, &client.agent_id, client.key.clone())
    };

    let deliveries: Deliveries = Arc::default();
    let acked = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut consumers = Vec::new();
    for i in 0..CONSUMERS_PER_HUB * hubs.len() {
        let client = on_hub(&receiver, &hubs[i % hubs.len()]);
        consumers.push(tokio::spawn(consume(
            client,
            deliveries.clone(),
            acked.clone(),
        )));
    }
    let mut producers = Vec::new();
    let per_producer = MESSAGES / (PRODUCERS_PER_HUB * hubs.len());
    for i in 0..PRODUCERS_PER_HUB * hubs.len() {
        let client = on_hub(&sender, &hubs[i % hubs.len()]);
        producers.push(tokio::spawn(produce(client, i, per_producer)));
    }
    let mut sent = Vec::new();
    for producer in producers {
        sent.extend(producer.await.unwrap());
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }
    let elapsed = started.elapsed();

    assert_eq!(sent.len(), MESSAGES);
    let deliveries = std::mem::take(&mut *deliveries.lock());
    let twice: Vec<_> = deliveries.iter().filter(|(_, l)| l.len() > 1).collect();
    assert!(twice.is_empty(), "leased more than once: {twice:?}");
    for id in &sent {
        assert!(deliveries.contains_key(id), "message {id} never delivered");
    }
    assert_eq!(deliveries.len(), MESSAGES, "deliveries of unknown messages");
    assert_eq!(acked.load(Ordering::SeqCst), MESSAGES);

    let stats: Value = receiver
        .request(
            reqwest::Method::GET,
            &receiver.agent_path("inbox/stats"),
            None,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["acked"], MESSAGES);
    assert_eq!(stats["queued"], 0);
    assert_eq!(stats["leased"], 0);
    println!(
        "many instances: 2 hubs, {} consumers, {MESSAGES} messages acked exactly once in {:.1} s",
        CONSUMERS_PER_HUB * hubs.len(),
        elapsed.as_secs_f64()
    );
    drop(hubs);
    schema.drop_schema().await;
}

/// Sends `count` messages to `receiver`; every send must be accepted.
async fn produce(client: AgentClient, producer: usize, count: usize) -> Vec<String> {
    let mut sent = Vec::with_capacity(count);
    for n in 0..count {
        let envelope = client.envelope("receiver", "load", json!({"producer": producer, "n": n}));
        let id = envelope["id"].as_str().unwrap().to_string();
        let response = client.send("receiver", &envelope).await.unwrap();
        assert_eq!(response.status(), 201, "send {id}");
        sent.push(id);
    }
    sent
}

/// Pulls (long-polling) and acks until every message is acked or the deadline passes.
async fn consume(client: AgentClient, deliveries: Deliveries, acked: Arc<AtomicUsize>) {
    let deadline = Instant::now() + DEADLINE;
    while acked.load(Ordering::SeqCst) < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "consumers did not finish in time"
        );
        let response = client
            .pull(&json!({"max_messages": 20, "wait_sec": 1, "visibility_timeout": 600}))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let messages = body["messages"].as_array().unwrap();
        if messages.is_empty() {
            continue;
        }
        let mut acks = Vec::new();
        for message in messages {
            let id = message["message_id"].as_str().unwrap();
            let lease_id = message["lease_id"].as_str().unwrap();
            deliveries
                .lock()
                .entry(id.to_string())
                .or_default()
                .push(lease_id.to_string());
            acks.push(json!({"message_id": id, "lease_id": lease_id}));
        }
        let response = client
            .request(
                reqwest::Method::POST,
                &client.agent_path("inbox/ack"),
                Some(&json!({ "acks": acks })),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        for result in body["results"].as_array().unwrap() {
            assert_eq!(result["ok"], true, "ack {result}");
            acked.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Two stores on one schema, as two instances have: each with its own wakers.
async fn two_instances(schema: &PgSchema) -> [(Arc<PostgresStore>, Arc<InboxWakers>); 2] {
    let mut instances = Vec::new();
    for _ in 0..2 {
        let wakers = Arc::new(InboxWakers::default());
        let store = PostgresStore::open(&schema.url(), 4, wakers.clone())
            .await
            .unwrap();
        instances.push((Arc::new(store), wakers));
    }
    instances.try_into().ok().unwrap()
}

const T0: Millis = 1_700_000_000_000;

fn agent(id: &str) -> Agent {
    Agent {
        agent_id: id.into(),
        agent_type: "generic".into(),
        metadata: Default::default(),
        keys: Vec::new(),
        webhook_url: None,
        webhook_secret: None,
        previous_webhook_secret: None,
        trusted_agents: Vec::new(),
        last_heartbeat: T0,
        online: true,
        heartbeat_interval_ms: 60_000,
        heartbeat_timeout_ms: 300_000,
        created_at: T0,
        updated_at: T0,
    }
}

fn message(id: &str, recipient: &str) -> Message {
    Message::queued(
        id.into(),
        recipient.into(),
        "sender".into(),
        json!({"id": id}).into(),
        T0,
        3_600_000,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_on_one_instance_wakes_long_polls_on_another() {
    let schema = PgSchema::create().await;
    let [(a, _), (b, b_wakers)] = two_instances(&schema).await;
    a.create_agent(agent("bob")).await.unwrap();
    for (id, wake) in [("m1", Action::Enqueue), ("m1", Action::Requeue)] {
        // Register interest first, exactly as a long-poll does, then act on the other instance.
        let notify = b_wakers.get("bob");
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match wake {
            Action::Enqueue => {
                a.enqueue(message(id, "bob"), 100, None).await.unwrap();
            }
            Action::Requeue => {
                let leased = a
                    .lease(&LeaseRequest {
                        recipient: "bob".into(),
                        now: T0,
                        visibility_ms: 60_000,
                        max_messages: 1,
                        max_attempts: 10,
                    })
                    .await
                    .unwrap();
                assert_eq!(leased.len(), 1);
                a.nack(&NackRequest {
                    recipient: "bob".into(),
                    message_id: id.into(),
                    lease_id: leased[0].lease_id.clone(),
                    action: NackAction::Requeue { visible_at: T0 },
                    max_attempts: 10,
                    now: T0,
                })
                .await
                .unwrap();
            }
        }
        tokio::time::timeout(Duration::from_secs(10), notified)
            .await
            .unwrap_or_else(|_| panic!("instance B was not woken by {wake:?} on instance A"));
    }
    a.close().await;
    b.close().await;
    schema.drop_schema().await;
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Enqueue,
    Requeue,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_on_two_instances_count_each_message_once() {
    const N: usize = 300;
    let schema = PgSchema::create().await;
    let [(a, _), (b, _)] = two_instances(&schema).await;
    a.create_agent(agent("bob")).await.unwrap();
    for i in 0..N {
        let mut m = message(&format!("m{i:03}"), "bob");
        // A third will expire, the rest get leases that expire.
        if i % 3 == 0 {
            m.expires_at = T0 + 1;
        }
        a.enqueue(m, N as u64, None).await.unwrap();
    }
    let leased = a
        .lease(&LeaseRequest {
            recipient: "bob".into(),
            now: T0,
            visibility_ms: 1_000,
            max_messages: N,
            max_attempts: 10,
        })
        .await
        .unwrap();
    assert_eq!(leased.len(), N);

    // Expiry first (both instances at once), then lease reclaim, then purge.
    let now = T0 + 500;
    let expired = race(
        &a,
        &b,
        move |s| async move { s.expire_messages(now, 7).await },
    )
    .await;
    assert_eq!(expired, (N / 3) as u64);
    let now = T0 + 1_000;
    let reclaimed = race(&a, &b, move |s| async move {
        let counts = s
            .reclaim_expired_leases(&ReclaimRequest {
                now,
                max_attempts: 10,
                limit: 7,
                recipient: None,
            })
            .await?;
        Ok(counts.requeued + counts.dead)
    })
    .await;
    assert_eq!(reclaimed, (N - N / 3) as u64);
    let purged = race(
        &a,
        &b,
        |s| async move { s.purge_retained(T0 + 1_000, 7).await },
    )
    .await;
    assert_eq!(purged, (N / 3) as u64);
    let stats = a.inbox_stats("bob").await.unwrap();
    assert_eq!(
        (stats.total, stats.queued),
        ((N - N / 3) as u64, (N - N / 3) as u64)
    );
    a.close().await;
    b.close().await;
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_claims_on_two_instances_hand_out_each_delivery_once() {
    const N: usize = 100;
    let schema = PgSchema::create().await;
    let [(a, _), (b, _)] = two_instances(&schema).await;
    a.create_agent(agent("bob")).await.unwrap();
    for i in 0..N {
        let id = format!("m{i:03}");
        let delivery = Delivery {
            id: format!("d{i:03}"),
            message_id: id.clone(),
            agent_id: "bob".into(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: T0,
            created_at: T0,
            updated_at: T0,
            last_status: None,
            last_error: None,
        };
        a.enqueue(message(&id, "bob"), N as u64, Some(delivery))
            .await
            .unwrap();
    }
    let claimed = Arc::new(Mutex::new(Vec::new()));
    let claim = |store: Arc<PostgresStore>, claimed: Arc<Mutex<Vec<String>>>| {
        tokio::spawn(async move {
            loop {
                let batch = store.claim_due_deliveries(T0, 7, 60_000).await.unwrap();
                if batch.is_empty() {
                    return;
                }
                claimed.lock().extend(batch.into_iter().map(|d| d.id));
            }
        })
    };
    let (first, second) = (
        claim(a.clone(), claimed.clone()),
        claim(b.clone(), claimed.clone()),
    );
    first.await.unwrap();
    second.await.unwrap();
    let mut claimed = std::mem::take(&mut *claimed.lock());
    claimed.sort();
    let expected: Vec<String> = (0..N).map(|i| format!("d{i:03}")).collect();
    assert_eq!(claimed, expected, "every delivery claimed exactly once");
    a.close().await;
    b.close().await;
    schema.drop_schema().await;
}

/// Sweeps of two instances take disjoint messages (`SKIP LOCKED`) of the
/// same inboxes in different orders; ending a live message updates its
/// inbox's count row, so without one lock order for those rows two sweeps
/// deadlock (PostgreSQL aborts one with 40P01, which `race` would report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_across_many_inboxes_on_two_instances_do_not_deadlock() {
    const INBOXES: usize = 40;
    const PER_INBOX: usize = 25;
    let schema = PgSchema::create().await;
    let [(a, _), (b, _)] = two_instances(&schema).await;
    for r in 0..INBOXES {
        a.create_agent(agent(&format!("r{r:02}"))).await.unwrap();
    }
    for round in 0..3 {
        for i in 0..INBOXES * PER_INBOX {
            let recipient = format!("r{:02}", i % INBOXES);
            let mut m = message(&format!("m{round}-{i:04}"), &recipient);
            // Expiry times scatter the inboxes over each sweep's batch.
            m.expires_at = T0 + 1 + ((i * 7919) % 997) as i64;
            a.enqueue(m, u64::MAX, None).await.unwrap();
        }
        let now = T0 + 1_000;
        let expired = race(
            &a,
            &b,
            move |s| async move { s.expire_messages(now, 40).await },
        )
        .await;
        assert_eq!(expired, (INBOXES * PER_INBOX) as u64);
    }
    a.close().await;
    b.close().await;
    schema.drop_schema().await;
}

/// Runs a batch step on both instances concurrently until both find nothing
/// left; returns the total both reported.
async fn race<F, Fut>(a: &Arc<PostgresStore>, b: &Arc<PostgresStore>, step: F) -> u64
where
    F: Fn(Arc<PostgresStore>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = StoreResult<u64>> + Send,
{
    let run = |store: Arc<PostgresStore>, step: F| {
        tokio::spawn(async move {
            let mut total = 0;
            loop {
                let n = step(store.clone()).await.unwrap();
                if n == 0 {
                    return total;
                }
                total += n;
            }
        })
    };
    let first = run(a.clone(), step.clone());
    let second = run(b.clone(), step);
    first.await.unwrap() + second.await.unwrap()
}
