//! Crash safety: SIGKILL the hub in the middle of a load (sends, pulls and
//! acks in flight), restart it on the same storage, and check that
//!
//! - every send that got `201` is still there (queued, leased or acked): lost = 0;
//! - nothing whose ack was answered comes back: resurrected = 0;
//! - leases cut by the crash are delivered again (at-least-once): counted as
//!   redelivered, as are sends whose `201` the crash swallowed.
//!
//! Each test runs several kill/restart cycles on one database and prints its
//! figures (`cargo test --test crash_safety -- --nocapture`); docs/STORAGE.md
//! records them. Needs PostgreSQL on 127.0.0.1:5432 for the postgres case.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use admp::client::AgentClient;
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Notify;

use support::storage::{HubProcess, PgSchema, TempDir};

/// Kill/restart cycles per backend.
const RUNS: usize = 3;
/// The hub is killed once this many sends of a run were accepted.
const KILL_AFTER_ACCEPTED: usize = 150;
const PRODUCERS: usize = 4;
const CONSUMERS: usize = 2;
/// Short leases, so those cut by the crash come back soon after the restart.
const VISIBILITY_SEC: u64 = 2;
/// Bound on every wait of the test; a healthy run needs a fraction of it.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_loses_nothing_on_sigkill() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let args = ["--storage-backend", "sqlite", "--database-url", &url];
    crash_runs("sqlite (synchronous=full)", dir.path(), &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_normal_loses_nothing_on_sigkill() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let args = [
        "--storage-backend",
        "sqlite",
        "--database-url",
        &url,
        "--sqlite-synchronous",
        "normal",
    ];
    crash_runs("sqlite (synchronous=normal)", dir.path(), &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_loses_nothing_on_sigkill() {
    let schema = PgSchema::create().await;
    let dir = TempDir::new();
    let url = schema.url();
    let args = ["--storage-backend", "postgres", "--database-url", &url];
    crash_runs("postgres", dir.path(), &args).await;
    schema.drop_schema().await;
}

/// What one backend's runs add up to.
#[derive(Debug, Default)]
struct Figures {
    runs: usize,
    accepted: usize,
    acked_before_kill: usize,
    lost: usize,
    resurrected: usize,
    redelivered: usize,
    unconfirmed_landed: usize,
}

/// What the clients saw before the kill.
#[derive(Default)]
struct Ledger {
    /// Sends answered `201`.
    accepted: HashSet<String>,
    /// Acks answered `ok: true`.
    acked: HashSet<String>,
}

async fn crash_runs(label: &str, cwd: &Path, args: &[&str]) {
    let mut figures = Figures::default();
    for run in 0..RUNS {
        crash_once(run, cwd, args, &mut figures).await;
    }
    println!("crash safety, {label}: {figures:?}");
    assert_eq!(figures.lost, 0, "{label}: accepted sends lost");
    assert_eq!(
        figures.resurrected, 0,
        "{label}: acked messages delivered again"
    );
}

async fn crash_once(run: usize, cwd: &Path, args: &[&str], figures: &mut Figures) {
    let mut hub = HubProcess::start(cwd, args);
    let http = reqwest::Client::new();
    let receiver_id = format!("receiver-{run}");
    let sender = AgentClient::register(http.clone(), &hub.url, Some(&format!("sender-{run}")))
        .await
        .unwrap();
    let receiver = AgentClient::register(http.clone(), &hub.url, Some(&receiver_id))
        .await
        .unwrap();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let mut load = Vec::new();
    for _ in 0..PRODUCERS {
        load.push(tokio::spawn(produce(
            sender.clone(),
            receiver_id.clone(),
            ledger.clone(),
            accepted.clone(),
            enough.clone(),
        )));
    }
    for _ in 0..CONSUMERS {
        load.push(tokio::spawn(consume_until_error(
            receiver.clone(),
            ledger.clone(),
        )));
    }
    let threshold = enough.notified();
    tokio::pin!(threshold);
    threshold.as_mut().enable();
    if accepted.load(Ordering::SeqCst) < KILL_AFTER_ACCEPTED {
        tokio::time::timeout(DEADLINE, threshold)
            .await
            .expect("the load never reached the kill threshold");
    }
    hub.kill();
    for task in load {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("a client hung after the kill")
            .unwrap();
    }
    let ledger = std::mem::take(&mut *ledger.lock());

    let hub = HubProcess::start(cwd, args);
    let sender = AgentClient::new(http.clone(), &hub.url, &sender.agent_id, sender.key.clone());
    let receiver = AgentClient::new(http, &hub.url, &receiver.agent_id, receiver.key.clone());
    figures.runs += 1;
    figures.accepted += ledger.accepted.len();
    figures.acked_before_kill += ledger.acked.len();
    for id in &ledger.accepted {
        let Some(state) = status(&sender, id).await else {
            figures.lost += 1;
            continue;
        };
        assert!(
            ["queued", "leased", "acked"].contains(&state.as_str()),
            "{id} is {state} after restart"
        );
        if ledger.acked.contains(id) {
            assert_eq!(
                state, "acked",
                "{id}: ack answered before the kill but not kept"
            );
        }
    }
    drain(&sender, &receiver, &ledger, figures).await;
}

/// Sends until the hub goes away; records every `201`.
async fn produce(
    client: AgentClient,
    to: String,
    ledger: Arc<Mutex<Ledger>>,
    accepted: Arc<AtomicUsize>,
    enough: Arc<Notify>,
) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let envelope = client.envelope(&to, "load", json!({"at": "crash test"}));
        let id = envelope["id"].as_str().unwrap().to_string();
        let Ok(response) = client.send(&to, &envelope).await else {
            return;
        };
        assert_eq!(response.status(), 201, "send {id}");
        ledger.lock().accepted.insert(id);
        if accepted.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACCEPTED {
            enough.notify_one();
        }
    }
}

/// Pulls and acks until the hub goes away; records every ack answered `ok`.
async fn consume_until_error(client: AgentClient, ledger: Arc<Mutex<Ledger>>) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let Some(messages) = pull(&client, 1).await else {
            return;
        };
        let Some(acked) = ack_all(&client, &messages).await else {
            return;
        };
        ledger.lock().acked.extend(acked);
    }
}

/// Delivers everything left after the restart, classifying each delivery,
/// until the inbox holds no live message; then every accepted send must be acked.
async fn drain(
    sender: &AgentClient,
    receiver: &AgentClient,
    before: &Ledger,
    figures: &mut Figures,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "the inbox did not drain after the restart"
        );
        let messages = pull(receiver, 1).await.expect("pull after restart");
        if messages.is_empty() {
            let stats: Value = receiver
                .request(Method::GET, &receiver.agent_path("inbox/stats"), None)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if stats["queued"] == 0 && stats["leased"] == 0 {
                break;
            }
            continue;
        }
        for m in &messages {
            let id = m["message_id"].as_str().unwrap();
            if before.acked.contains(id) {
                figures.resurrected += 1;
            } else if m["attempts"].as_u64() > Some(1) {
                figures.redelivered += 1;
            } else if !before.accepted.contains(id) {
                figures.unconfirmed_landed += 1;
            }
        }
        ack_all(receiver, &messages)
            .await
            .expect("ack after restart");
    }
    for id in &before.accepted {
        assert_eq!(status(sender, id).await.as_deref(), Some("acked"), "{id}");
    }
}

/// A message's state as its sender sees it; `None` when the hub does not know it.
async fn status(sender: &AgentClient, id: &str) -> Option<String> {
    let path = format!("/api/messages/{id}/status");
    let response = sender
        .request(Method::GET, &path, None)
        .send()
        .await
        .unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    Some(body["status"].as_str().unwrap().to_string())
}

/// One batch pull (long-polling up to `wait_sec`); `None` once the hub is unreachable.
async fn pull(client: &AgentClient, wait_sec: u64) -> Option<Vec<Value>> {
    let options = json!({
        "max_messages": 10,
        "wait_sec": wait_sec,
        "visibility_timeout": VISIBILITY_SEC,
    });
    let response = client.pull(&options).await.ok()?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.ok()?;
    Some(body["messages"].as_array().cloned().unwrap_or_default())
}

/// Acks a pulled batch in one request; the ids acked, `None` once the hub is unreachable.
async fn ack_all(client: &AgentClient, messages: &[Value]) -> Option<Vec<String>> {
    if messages.is_empty() {
        return Some(Vec::new());
    }
    let acks: Vec<Value> = messages
        .iter()
        .map(|m| json!({"message_id": m["message_id"], "lease_id": m["lease_id"]}))
        .collect();
    let response = client
        .request(
            Method::POST,
            &client.agent_path("inbox/ack"),
            Some(&json!({ "acks": acks })),
        )
        .send()
        .await
        .ok()?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.ok()?;
    Some(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["ok"] == true)
            .map(|r| r["message_id"].as_str().unwrap().to_string())
            .collect(),
    )
}
