//! `admp migrate` between the durable backends: a hub's SQLite file, populated
//! over HTTP, copied into a PostgreSQL schema with nothing lost, and a second
//! run (with `--merge`) duplicating nothing. Needs PostgreSQL on 127.0.0.1:5432.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use admp::client::AgentClient;
use admp::config::SqliteSynchronous;
use admp::store::Store;
use admp::store::postgres::PostgresStore;
use admp::store::sqlite::SqliteStore;
use serde_json::{Value, json};

use support::storage::{HubProcess, PgSchema, TempDir};

/// Runs `admp migrate --from … --to …` (plus `extra`) and returns its JSON report.
fn migrate(cwd: &Path, from: &str, to: &str, extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["migrate", "--from", from, "--to", to])
        .args(extra)
        .current_dir(cwd)
        .env_clear()
        .output()
        .expect("running admp migrate");
    assert!(
        output.status.success(),
        "admp migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

/// Every agent and message of a store, in id order.
async fn snapshot(store: &dyn Store) -> (Vec<admp::store::Agent>, Vec<admp::store::Message>) {
    let agents = store.export_agents(None, 10_000).await.unwrap();
    let messages = store.export_messages(None, 10_000).await.unwrap();
    (agents, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_round_trips_a_populated_hub() {
    let dir = TempDir::new();
    let sqlite_url = dir.sqlite_url();
    {
        let hub = HubProcess::start(
            dir.path(),
            &["--storage-backend", "sqlite", "--database-url", &sqlite_url],
        );
        let http = reqwest::Client::new();
        let alice = AgentClient::register(http.clone(), &hub.url, Some("alice"))
            .await
            .unwrap();
        let bob = AgentClient::register(http, &hub.url, Some("bob"))
            .await
            .unwrap();
        for i in 0..40 {
            let envelope = alice.envelope("bob", "migrate", json!({"i": i}));
            assert_eq!(alice.send("bob", &envelope).await.unwrap().status(), 201);
        }
        let pulled: Value = bob
            .pull(&json!({"max_messages": 3}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let first = &pulled["messages"][0];
        let ack = bob
            .ack(
                first["message_id"].as_str().unwrap(),
                first["lease_id"].as_str(),
            )
            .await
            .unwrap();
        assert_eq!(ack.status(), 200);
    }

    let schema = PgSchema::create().await;
    let pg_url = schema.url();
    let report = migrate(dir.path(), &sqlite_url, &pg_url, &[]);
    assert_eq!(report["agents_inserted"], 2, "{report}");
    assert_eq!(report["messages_inserted"], 40, "{report}");

    let source = SqliteStore::open(&sqlite_url, 2, SqliteSynchronous::Full)
        .await
        .unwrap();
    let target = PostgresStore::open(&pg_url, 2, Arc::default())
        .await
        .unwrap();
    let copied = snapshot(&target).await;
    assert_eq!(copied, snapshot(&source).await);
    let states: Vec<&str> = copied.1.iter().map(|m| m.state.as_str()).collect();
    assert_eq!(states.iter().filter(|s| **s == "acked").count(), 1);
    assert_eq!(states.iter().filter(|s| **s == "leased").count(), 2);

    let again = migrate(dir.path(), &sqlite_url, &pg_url, &["--merge"]);
    assert_eq!(again["agents_inserted"], 0, "{again}");
    assert_eq!(again["messages_inserted"], 0, "{again}");
    assert_eq!(again["messages_skipped"], 40, "{again}");
    assert_eq!(snapshot(&target).await, copied);

    source.close().await;
    target.close().await;
    schema.drop_schema().await;
}
