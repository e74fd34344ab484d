//! Group calls of an agent client (GROUPS.md), used by the CLI, the bench and tests.

use reqwest::Method;
use serde_json::{Value, json};

use super::AgentClient;

/// `/api/groups/<url-encoded id>/<rest>`.
pub fn group_path(group_id: &str, rest: &str) -> String {
    let id = urlencoding::encode(group_id);
    if rest.is_empty() {
        format!("/api/groups/{id}")
    } else {
        format!("/api/groups/{id}/{rest}")
    }
}

impl AgentClient {
    /// Creates a group (`body` as in `POST /api/groups`).
    pub async fn create_group(&self, body: &Value) -> reqwest::Result<reqwest::Response> {
        self.request(Method::POST, "/api/groups", Some(body))
            .send()
            .await
    }

    /// Joins a group, with its key when key-protected.
    pub async fn join_group(
        &self,
        group_id: &str,
        key: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let body = match key {
            Some(k) => json!({ "key": k }),
            None => json!({}),
        };
        self.request(Method::POST, &group_path(group_id, "join"), Some(&body))
            .send()
            .await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group_id: &str) -> reqwest::Result<reqwest::Response> {
        self.request(Method::POST, &group_path(group_id, "leave"), None)
            .send()
            .await
    }

    /// Builds and signs an envelope addressed to a group (`to` = the group id).
    pub fn group_envelope(&self, group_id: &str, subject: &str, body: Value) -> Value {
        self.envelope_with(group_id, subject, body, |env| {
            env.insert("to".into(), json!(group_id));
        })
    }

    /// Posts a signed envelope to a group.
    pub async fn post_group(
        &self,
        group_id: &str,
        envelope: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.request(
            Method::POST,
            &group_path(group_id, "messages"),
            Some(envelope),
        )
        .send()
        .await
    }

    /// Lists a group's members.
    pub async fn group_members(&self, group_id: &str) -> reqwest::Result<reqwest::Response> {
        self.request(Method::GET, &group_path(group_id, "members"), None)
            .send()
            .await
    }

    /// One page of a group's history (`limit`, `before` as in the route).
    pub async fn group_history(
        &self,
        group_id: &str,
        limit: Option<u64>,
        before: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut path = group_path(group_id, "messages");
        let mut query = Vec::new();
        if let Some(n) = limit {
            query.push(format!("limit={n}"));
        }
        if let Some(c) = before {
            query.push(format!("before={}", urlencoding::encode(c)));
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        self.request(Method::GET, &path, None).send().await
    }
}
