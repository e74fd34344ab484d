//! A hub with the console on, over any backend, holding one dead letter
//! whose webhook delivery failed against a local receiver answering 500,
//! and one group ("Ops Team": bob owns it, alice joined, bob posted once).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admp::client::AgentClient;
use admp::config::Config;
use admp::hub::Clock;
use admp::server::{RunningHub, start_with_store};
use admp::store::Store;
use admp::store::mech::MechStore;
use admp::store::memory::MemoryStore;
use admp::store::postgres::PostgresStore;
use admp::store::sqlite::SqliteStore;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::json;

use crate::support::mech_emulator::MechEmulator;
use crate::support::storage::{PgSchema, TempDir};
use crate::support::test_config;

/// The console-only key of the test hubs.
pub const CONSOLE_KEY: &str = "console-only-key-0123456789";

/// Polls `probe` until it returns `Some`, for at most 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The storage backends the console runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    Postgres,
    Mech,
}

/// What keeps a backend alive for the length of a test (held, never read).
#[allow(dead_code)]
pub enum Keep {
    Nothing,
    Dir(TempDir),
    Schema(PgSchema),
    Mech(MechEmulator),
}

impl Backend {
    /// A fresh store of this kind.
    pub async fn open(self) -> (Arc<dyn Store>, Keep) {
        match self {
            Backend::Memory => (Arc::new(MemoryStore::new()), Keep::Nothing),
            Backend::Sqlite => {
                let dir = TempDir::new();
                let store =
                    SqliteStore::open(&dir.sqlite_url(), 4, admp::config::SqliteSynchronous::Full)
                        .await
                        .expect("sqlite store");
                (Arc::new(store), Keep::Dir(dir))
            }
            Backend::Postgres => {
                let schema = PgSchema::create().await;
                let store = PostgresStore::open(&schema.url(), 4, Arc::default())
                    .await
                    .expect("postgres store");
                (Arc::new(store), Keep::Schema(schema))
            }
            Backend::Mech => {
                let emulator = MechEmulator::start().await;
                let store = MechStore::open(emulator.settings())
                    .await
                    .expect("mech store");
                (Arc::new(store), Keep::Mech(emulator))
            }
        }
    }
}

/// A receiver on 127.0.0.1 that answers every webhook with 500.
pub struct FailingReceiver {
    pub url: String,
    server: tokio::task::JoinHandle<()>,
}

impl FailingReceiver {
    pub async fn start() -> Self {
        let app = Router::new().route(
            "/hook",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "receiver is down") }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FailingReceiver { url, server }
    }
}

impl Drop for FailingReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The console's test settings: on, both keys, one attempt before the dead
/// letters, webhooks to loopback allowed, a retry an hour after a failure.
pub fn console_config() -> Config {
    Config {
        console_enabled: true,
        console_api_key: Some(CONSOLE_KEY.into()),
        max_delivery_attempts: 1,
        webhook_allow_private: true,
        webhook_retry_schedule: vec![Duration::from_secs(3_600)],
        ..test_config()
    }
}

/// A running console hub plus what it was filled with.
pub struct ConsoleHub {
    pub running: RunningHub,
    pub store: Arc<dyn Store>,
    pub dead_id: String,
    pub queued_id: String,
    /// The group bob owns.
    pub group_id: String,
    /// Alice's client (a member of the group).
    pub alice: AgentClient,
    _receiver: FailingReceiver,
    _keep: Keep,
}

impl ConsoleHub {
    /// Starts a hub on `backend` with `config` and fills it (see the module docs).
    pub async fn start(backend: Backend, config: Config, clock: Clock) -> Self {
        let (store, keep) = backend.open().await;
        let running = start_with_store(config, store.clone(), clock.clone())
            .await
            .expect("hub starts");
        let receiver = FailingReceiver::start().await;
        let http = reqwest::Client::new();
        let base = running.url();
        let alice = AgentClient::register(http.clone(), &base, Some("alice"))
            .await
            .unwrap();
        let bob = AgentClient::register(http.clone(), &base, Some("bob"))
            .await
            .unwrap();
        AgentClient::register(http.clone(), &base, Some("carol"))
            .await
            .unwrap();
        let set = bob
            .request(
                reqwest::Method::POST,
                &bob.agent_path("webhook"),
                Some(&json!({ "webhook_url": receiver.url })),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(set.status(), 200, "{}", set.text().await.unwrap());

        let group_id = ops_team(&bob, &alice).await;
        let dead_id = send(&alice, "bob", "will die").await;
        let queued_id = send(&alice, "carol", "waits").await;
        let pulled = bob.pull(&json!({})).await.unwrap();
        assert_eq!(pulled.status(), 200);
        let nack = bob
            .request(
                reqwest::Method::POST,
                &bob.agent_path(&format!("messages/{dead_id}/nack")),
                Some(&json!({})),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(nack.status(), 200, "{}", nack.text().await.unwrap());
        let hub = running.hub.clone();
        eventually("the failed webhook attempt", || {
            let hub = hub.clone();
            async move {
                let attempts = hub.store.list_attempts("bob", 10).await.unwrap();
                (!attempts.is_empty()).then_some(())
            }
        })
        .await;
        ConsoleHub {
            running,
            store,
            dead_id,
            queued_id,
            group_id,
            alice,
            _receiver: receiver,
            _keep: keep,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    /// Shuts the hub down and drops a PostgreSQL schema.
    pub async fn stop(self) {
        self.running.shutdown().await.unwrap();
        if let Keep::Schema(schema) = self._keep {
            schema.drop_schema().await;
        }
    }
}

/// `owner` creates "Ops Team", `member` joins, `owner` posts once (the copy
/// goes to `member`, who has no webhook). Returns the group id.
async fn ops_team(owner: &AgentClient, member: &AgentClient) -> String {
    let created = owner
        .create_group(&json!({ "name": "Ops Team" }))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let group: serde_json::Value = created.json().await.unwrap();
    let group_id = group["id"].as_str().unwrap().to_string();
    let joined = member.join_group(&group_id, None).await.unwrap();
    assert_eq!(joined.status(), 200, "{}", joined.text().await.unwrap());
    let envelope = owner.group_envelope(&group_id, "Deploy at 10:00", json!({}));
    let posted = owner.post_group(&group_id, &envelope).await.unwrap();
    assert_eq!(posted.status(), 201, "{}", posted.text().await.unwrap());
    group_id
}

async fn send(from: &AgentClient, to: &str, subject: &str) -> String {
    let envelope = from.envelope(to, subject, json!({ "text": subject }));
    let reply = from.send(to, &envelope).await.unwrap();
    assert_eq!(reply.status(), 201);
    let body: serde_json::Value = reply.json().await.unwrap();
    body["message_id"].as_str().unwrap().to_string()
}

/// A plain HTTP client that shows redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An HTML form body (`application/x-www-form-urlencoded`), as a browser posts it.
pub trait FormExt {
    fn form(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormExt for reqwest::RequestBuilder {
    fn form(self, pairs: &[(&str, &str)]) -> Self {
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}
