//! The MCP server's only way to the hub: signed HTTP calls as one agent,
//! with the hub's JSON errors kept intact for the tool result.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::client::AgentClient;
use crate::signing::keys;

/// How many message senders the reply tool remembers.
const SENDERS_KEPT: usize = 10_000;

/// Why a hub call failed, as a tool reports it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HubFailure {
    /// The hub's stable error code (docs/ERROR-CODES.md), or `HUB_UNREACHABLE`
    /// / `INVALID_ARGUMENT` for failures before the hub answered.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// HTTP status the hub answered with (absent when it did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl HubFailure {
    /// A failure found before calling the hub.
    pub fn invalid(message: impl Into<String>) -> Self {
        HubFailure {
            error: "INVALID_ARGUMENT".into(),
            message: message.into(),
            http_status: None,
        }
    }
}

/// One agent's signed connection to the hub, plus the senders of the
/// messages it has seen (a reply must be signed with the recipient in it).
pub struct HubLink {
    client: AgentClient,
    senders: Mutex<Senders>,
}

#[derive(Default)]
struct Senders {
    by_message: HashMap<String, String>,
    order: VecDeque<String>,
}

impl HubLink {
    /// Wraps a client that already holds the agent's key.
    pub fn new(client: AgentClient) -> Self {
        HubLink {
            client,
            senders: Mutex::default(),
        }
    }

    /// The agent's client (signing, envelopes, paths).
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The agent's public key, base64.
    pub fn public_key(&self) -> String {
        keys::encode_public_key(&self.client.key.verifying_key())
    }

    /// Remembers who sent `message_id` (bounded: oldest forgotten first).
    pub fn remember_sender(&self, message_id: &str, sender: &str) {
        let mut senders = self.senders.lock();
        if senders
            .by_message
            .insert(message_id.to_string(), sender.to_string())
            .is_none()
        {
            senders.order.push_back(message_id.to_string());
        }
        while senders.order.len() > SENDERS_KEPT {
            if let Some(old) = senders.order.pop_front() {
                senders.by_message.remove(&old);
            }
        }
    }

    /// The sender of a message this server has returned from the inbox.
    pub fn sender_of(&self, message_id: &str) -> Option<String> {
        self.senders.lock().by_message.get(message_id).cloned()
    }

    /// Sends a signed request; only failing to reach the hub is an error here.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, HubFailure> {
        let mut request = self.client.request(method, path, body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.map_err(|e| HubFailure {
            error: "HUB_UNREACHABLE".into(),
            message: format!("calling the hub at {}: {e}", self.client.base),
            http_status: None,
        })
    }

    /// A signed request; `Ok` with the status and JSON body (`Null` when
    /// empty) on 2xx, the hub's `{error, message}` otherwise.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value), HubFailure> {
        let response = self.send(method, path, body, headers).await?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok((status, value));
        }
        Err(HubFailure {
            error: value["error"].as_str().unwrap_or("HUB_ERROR").to_string(),
            message: value["message"].as_str().map_or_else(
                || format!("the hub answered {status}: {text}"),
                str::to_string,
            ),
            http_status: Some(status.as_u16()),
        })
    }

    /// Like [`call`](Self::call) without extra headers, deserializing the body into `T`.
    pub async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, HubFailure> {
        self.call_as_with(method, path, body, &[]).await
    }

    /// Like [`call`](Self::call), deserializing the body into `T`.
    pub async fn call_as_with<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<T, HubFailure> {
        let (_, value) = self.call(method, path, body, headers).await?;
        serde_json::from_value(value).map_err(|e| HubFailure {
            error: "UNEXPECTED_RESPONSE".into(),
            message: format!("the hub's answer did not have the expected shape: {e}"),
            http_status: None,
        })
    }
}
