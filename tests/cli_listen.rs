//! `admp listen` as a user runs it: the real binary follows an inbox stream
//! of a real hub (SQLite, so the inbox outlives a restart), prints and acks
//! each message, and comes back by itself after the hub restarts.

mod support;

use std::process::Stdio;
use std::time::Duration;

use admp::client::AgentClient;
use admp::client::cli::save_agent_in;
use admp::config::{Config, StorageBackend};
use admp::hub::Clock;
use admp::server::{RunningHub, start};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use support::storage::TempDir;
use support::{send, test_config};

const DEADLINE: Duration = Duration::from_secs(15);

async fn hub(dir: &TempDir, port: u16, edit: impl FnOnce(&mut Config)) -> RunningHub {
    let mut config = test_config();
    config.port = port;
    config.storage_backend = StorageBackend::Sqlite;
    config.database_url = dir.sqlite_url();
    config.rate_limit_enabled = false;
    edit(&mut config);
    start(config, Clock::system()).await.expect("hub starts")
}

/// `admp listen --as bob …` with bob's key in `keys`.
fn listen(keys: &TempDir, extra: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["listen", "--as", "bob", "--max-in-flight", "5"])
        .args(extra)
        .env("ADMP_HOME", keys.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("admp listen starts");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("admp listen printed nothing in time")
        .unwrap()
        .expect("admp listen exited");
    serde_json::from_str(&line).unwrap()
}

async fn counts(bob: &AgentClient) -> Value {
    let response = bob
        .request(Method::GET, &bob.agent_path("inbox/stats"), None)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

/// Waits until bob's inbox counts satisfy `check`.
async fn until_counts(bob: &AgentClient, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = counts(bob).await;
        if check(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what} ({now})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn listen_prints_acks_and_survives_a_hub_restart() {
    let (data, keys) = (TempDir::new(), TempDir::new());
    let first = hub(&data, 0, |_| {}).await;
    let port = first.addr.port();
    let http = reqwest::Client::new();
    let alice = AgentClient::register(http.clone(), &first.url(), Some("alice"))
        .await
        .unwrap();
    let bob = AgentClient::register(http.clone(), &first.url(), Some("bob"))
        .await
        .unwrap();
    save_agent_in(keys.path(), &bob).unwrap();
    let (_child, mut lines) = listen(&keys, &[]);

    let id = send(&alice, "bob", json!({ "n": 1 })).await;
    let printed = next_line(&mut lines).await;
    assert_eq!(printed["message_id"], json!(id));
    assert_eq!(printed["envelope"]["body"], json!({ "n": 1 }));
    until_counts(&bob, "the first message acked", |c| c["acked"] == 1).await;

    // The hub goes away and comes back on the same port and database.
    first.hub.shutdown.cancel();
    first.wait().await.unwrap();
    let second = hub(&data, port, |_| {}).await;
    let id = send(&alice, "bob", json!({ "n": 2 })).await;
    let printed = next_line(&mut lines).await;
    assert_eq!(printed["message_id"], json!(id));
    until_counts(&bob, "the second message acked", |c| c["acked"] == 2).await;
    second.hub.shutdown.cancel();
    second.wait().await.unwrap();
}

#[tokio::test]
async fn listen_exec_acks_on_success_and_nacks_otherwise() {
    let (data, keys) = (TempDir::new(), TempDir::new());
    let running = hub(&data, 0, |c| c.max_delivery_attempts = 2).await;
    let http = reqwest::Client::new();
    let alice = AgentClient::register(http.clone(), &running.url(), Some("alice"))
        .await
        .unwrap();
    let bob = AgentClient::register(http.clone(), &running.url(), Some("bob"))
        .await
        .unwrap();
    save_agent_in(keys.path(), &bob).unwrap();
    let (_child, _lines) = listen(&keys, &["--exec", "grep -q '\"good\"'"]);
    send(&alice, "bob", json!({ "good": true })).await;
    send(&alice, "bob", json!({ "bad": true })).await;
    // The failing one is nacked on each delivery until the attempt limit.
    until_counts(&bob, "one acked, one dead", |c| {
        c["acked"] == 1 && c["dead"] == 1
    })
    .await;
    running.hub.shutdown.cancel();
    running.wait().await.unwrap();
}
