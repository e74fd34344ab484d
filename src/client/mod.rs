//! A small ADMP client: signs HTTP requests and envelopes the way agents do.
//! The CLI, the benchmark and the black-box tests all talk to the hub through it.

pub mod cli;
pub mod groups;
pub mod listen;
pub mod sse;
pub mod transfer;

use std::time::SystemTime;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::signing::{envelope, http as httpsig, keys};

/// Headers an agent signs on every request.
pub const SIGNED_HEADERS: &[&str] = &["(request-target)", "host", "date"];

/// One agent's connection to a hub.
#[derive(Clone)]
pub struct AgentClient {
    pub http: reqwest::Client,
    /// Hub base URL without trailing slash.
    pub base: String,
    pub agent_id: String,
    pub key: SigningKey,
    /// Session token; when set it replaces the per-request signature.
    pub session: Option<String>,
    /// Sign a fresh `x-request-nonce` on every HTTP-signed request (single-use requests).
    pub sign_nonce: bool,
}

impl AgentClient {
    /// A client for an already registered agent.
    pub fn new(http: reqwest::Client, base: &str, agent_id: &str, key: SigningKey) -> Self {
        AgentClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            agent_id: agent_id.to_string(),
            key,
            session: None,
            sign_nonce: false,
        }
    }

    /// Registers a new agent with a locally generated key (the secret never leaves).
    pub async fn register(
        http: reqwest::Client,
        base: &str,
        agent_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        let key = keys::generate();
        let mut body = json!({ "public_key": keys::encode_public_key(&key.verifying_key()) });
        if let Some(id) = agent_id {
            body["agent_id"] = json!(id);
        }
        let base = base.trim_end_matches('/');
        let response = http
            .post(format!("{base}/api/agents/register"))
            .json(&body)
            .send()
            .await
            .context("registering")?;
        let status = response.status();
        let record: Value = response.json().await.context("registration response")?;
        anyhow::ensure!(
            status.as_u16() == 201,
            "registration failed: {status} {record}"
        );
        let id = record["agent_id"]
            .as_str()
            .context("agent_id in registration response")?;
        Ok(Self::new(http, base, id, key))
    }

    /// Path of one of this agent's routes, e.g. `inbox/pull`.
    pub fn agent_path(&self, rest: &str) -> String {
        let id = urlencoding::encode(&self.agent_id);
        if rest.is_empty() {
            format!("/api/agents/{id}")
        } else {
            format!("/api/agents/{id}/{rest}")
        }
    }

    /// A request authenticated as this agent: session token if open, else an HTTP signature.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        self.request_at(method, path, body, SystemTime::now())
    }

    /// Like [`request`](Self::request) with the `Date` taken from `now` (tests with a manual clock).
    pub fn request_at(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        now: SystemTime,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.base);
        let mut builder = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            builder = builder.json(body);
        }
        if let Some(token) = &self.session {
            return builder.bearer_auth(token);
        }
        let date = httpsig::http_date(now);
        let host = host_of(&self.base);
        let nonce = uuid::Uuid::new_v4().to_string();
        let mut headers = vec![("host", host.as_str()), ("date", date.as_str())];
        let mut signed = SIGNED_HEADERS.to_vec();
        if self.sign_nonce {
            headers.push(("x-request-nonce", nonce.as_str()));
            signed.push("x-request-nonce");
            builder = builder.header("x-request-nonce", &nonce);
        }
        let parts = httpsig::RequestParts {
            method: method.as_str(),
            path_and_query: path,
            headers: &headers,
        };
        let signature = httpsig::sign_request(&self.key, &self.agent_id, &signed, &parts)
            .expect("the standard signed-header list is always valid");
        builder.header("date", date).header("signature", signature)
    }

    /// Builds and signs an envelope from this agent.
    pub fn envelope(&self, to: &str, subject: &str, body: Value) -> Value {
        self.envelope_with(to, subject, body, |_| {})
    }

    /// Builds an envelope, lets `edit` add fields (type, id, correlation_id…), then signs it.
    pub fn envelope_with(
        &self,
        to: &str,
        subject: &str,
        body: Value,
        edit: impl FnOnce(&mut Map<String, Value>),
    ) -> Value {
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut env = Map::new();
        env.insert("version".into(), json!("1.0"));
        env.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
        env.insert("type".into(), json!("task.request"));
        env.insert("from".into(), json!(format!("agent://{}", self.agent_id)));
        env.insert("to".into(), json!(format!("agent://{to}")));
        env.insert("subject".into(), json!(subject));
        env.insert("body".into(), body);
        env.insert("timestamp".into(), json!(timestamp));
        edit(&mut env);
        envelope::sign_envelope(&mut env, &self.key);
        Value::Object(env)
    }

    /// Sends a signed envelope to `to`.
    pub async fn send(&self, to: &str, envelope: &Value) -> reqwest::Result<reqwest::Response> {
        let path = format!("/api/agents/{}/messages", urlencoding::encode(to));
        self.request(Method::POST, &path, Some(envelope))
            .send()
            .await
    }

    /// Pulls with the given options (`{}` for the defaults).
    pub async fn pull(&self, options: &Value) -> reqwest::Result<reqwest::Response> {
        self.request(Method::POST, &self.agent_path("inbox/pull"), Some(options))
            .send()
            .await
    }

    /// Acks one message.
    pub async fn ack(
        &self,
        message_id: &str,
        lease_id: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let path = self.agent_path(&format!("messages/{}/ack", urlencoding::encode(message_id)));
        let body = match lease_id {
            Some(l) => json!({ "lease_id": l }),
            None => json!({}),
        };
        self.request(Method::POST, &path, Some(&body)).send().await
    }

    /// Acks several leased messages in one request (`POST …/inbox/ack`):
    /// one authentication for up to 100 messages.
    pub async fn ack_batch(
        &self,
        acks: &[(&str, Option<&str>)],
    ) -> reqwest::Result<reqwest::Response> {
        let acks: Vec<Value> = acks
            .iter()
            .map(|(message_id, lease_id)| match lease_id {
                Some(l) => json!({ "message_id": message_id, "lease_id": l }),
                None => json!({ "message_id": message_id }),
            })
            .collect();
        let body = json!({ "acks": acks });
        self.request(Method::POST, &self.agent_path("inbox/ack"), Some(&body))
            .send()
            .await
    }

    /// Opens a session: later requests carry the token instead of a signature.
    pub async fn open_session(&mut self) -> anyhow::Result<()> {
        self.session = None;
        let response = self
            .request(Method::POST, &self.agent_path("session"), None)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "session refused: {status} {body}");
        self.session = Some(
            body["token"]
                .as_str()
                .context("token in session response")?
                .to_string(),
        );
        Ok(())
    }
}

/// `host[:port]` of a base URL, as the `Host` header will carry it.
pub fn host_of(base: &str) -> String {
    let without_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}
