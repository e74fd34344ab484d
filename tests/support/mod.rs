//! Shared helpers for the black-box HTTP tests: each test spawns its own hub
//! on port 0 (the OS picks a free port, so tests run in parallel without
//! colliding) and talks to it over real HTTP.

#![allow(dead_code)]

pub mod mech_emulator;
pub mod storage;

use std::sync::Arc;

use admp::client::AgentClient;
use admp::config::Config;
use admp::hub::Clock;
use admp::server::{RunningHub, start_with_store};
use admp::store::memory::MemoryStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Operator key used by tests that need one.
pub const MASTER_KEY: &str = "test-master-key-0123456789";

/// A hub under test plus an HTTP client for it.
pub struct TestHub {
    pub running: RunningHub,
    pub http: reqwest::Client,
    pub clock: Clock,
    /// The hub's store, for looking behind the API (e.g. tampering tests).
    pub store: Arc<MemoryStore>,
}

/// Test defaults: memory store, port 0, an operator key, quiet sweeper.
pub fn test_config() -> Config {
    Config {
        host: [127, 0, 0, 1].into(),
        // Port 0: the OS picks a free port.
        port: 0,
        master_api_key: Some(MASTER_KEY.into()),
        ..Config::default()
    }
}

impl TestHub {
    /// Starts a hub with `config` on the system clock.
    pub async fn start(config: Config) -> Self {
        Self::start_with_clock(config, Clock::system()).await
    }

    /// Starts a hub whose clock the test moves by hand.
    pub async fn start_with_clock(config: Config, clock: Clock) -> Self {
        let store = Arc::new(MemoryStore::new());
        let running = start_with_store(config, store.clone(), clock.clone())
            .await
            .expect("hub starts");
        TestHub {
            running,
            http: reqwest::Client::new(),
            clock,
            store,
        }
    }

    /// Starts a hub with the test defaults.
    pub async fn default() -> Self {
        Self::start(test_config()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    /// Registers an agent with a client-held key.
    pub async fn agent(&self, id: &str) -> AgentClient {
        AgentClient::register(self.http.clone(), &self.running.url(), Some(id))
            .await
            .expect("registration succeeds")
    }

    /// A request with the operator key.
    pub fn master(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("x-api-key", MASTER_KEY)
    }
}

/// Status and JSON body (Null when the body is empty or not JSON).
pub async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts an error response's status and code.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let (got, body) = read(response).await;
    assert_eq!(
        (got.as_u16(), body["error"].as_str().unwrap_or("")),
        (status, code),
        "body: {body}"
    );
    assert!(
        body["message"].is_string(),
        "error body has a message: {body}"
    );
    body
}

/// Sends `body` from `from` to `to` and returns the message id (asserting 201).
pub async fn send(from: &AgentClient, to: &str, body: Value) -> String {
    let envelope = from.envelope(to, "test", body);
    let (status, reply) = read(from.send(to, &envelope).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "send failed: {reply}");
    reply["message_id"].as_str().unwrap().to_string()
}

/// Pulls one message (asserting 200) and returns the lease record.
pub async fn pull_one(agent: &AgentClient) -> Value {
    let (status, body) = read(agent.pull(&json!({})).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "pull failed: {body}");
    body
}
