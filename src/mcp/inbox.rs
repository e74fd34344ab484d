//! The `admp://inbox` resource (counts and the oldest waiting messages, from
//! the hub's stats and peek routes) and the watch that drives its update
//! notifications. The watch never leases: it long-polls the hub's inbox
//! counts (`GET …/inbox/stats?wait_sec=20` with `If-None-Match`), which the
//! hub answers as soon as a message arrives, so a subscribed client learns
//! of new mail within a second while the messages stay queued for
//! whichever consumer pulls them.

use std::future::Future;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hub::{HubFailure, HubLink};
use super::render::UNTRUSTED_NOTICE;

/// URI of the inbox resource.
pub const INBOX_URI: &str = "admp://inbox";
/// Longest long-poll the hub allows.
const WATCH_WAIT_SEC: u64 = 20;
/// First and longest pause after the hub could not be reached.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Counts of the inbox's messages by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InboxStats {
    /// All messages the hub still holds for this agent (live and retained).
    #[serde(default)]
    pub total: u64,
    /// Waiting to be pulled: check_inbox returns these.
    #[serde(default)]
    pub queued: u64,
    /// Pulled and not yet acked (by this or another consumer).
    #[serde(default)]
    pub leased: u64,
    #[serde(default)]
    pub acked: u64,
    #[serde(default)]
    pub expired: u64,
    /// Dead letters: list_dead_letters shows them.
    #[serde(default)]
    pub dead: u64,
}

/// How many waiting messages the resource lists.
const WAITING_SHOWN: usize = 10;

/// What `admp://inbox` reads as.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InboxResource {
    pub agent_id: String,
    pub hub_url: String,
    pub stats: InboxStats,
    /// The oldest waiting (queued) messages, in the order check_inbox will return them.
    pub oldest_waiting: Vec<WaitingMessage>,
    /// Subjects and types are written by the senders.
    pub untrusted_notice: &'static str,
    /// How to get the waiting messages.
    pub hint: &'static str,
}

/// A waiting message, summarised; reading it means leasing it (check_inbox).
#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitingMessage {
    pub message_id: String,
    /// Sender agent id, authenticated by the hub.
    pub from: String,
    /// When the hub accepted it (epoch ms).
    pub created_at: i64,
    pub attempts: u32,
    /// Subject as the sender wrote it: untrusted.
    pub untrusted_subject: Option<String>,
    /// Type as the sender set it: untrusted.
    pub untrusted_type: Option<String>,
}

/// One entry of the hub's peek answer.
#[derive(Deserialize)]
struct Peeked {
    message_id: String,
    from: String,
    #[serde(rename = "type")]
    message_type: Option<String>,
    subject: Option<String>,
    created_at: i64,
    attempts: u32,
}

/// Result of one look at the counts.
pub enum Seen {
    /// Counts differ from the tag given (or none was given).
    Changed { etag: String, stats: InboxStats },
    /// Same counts at the end of the wait.
    Unchanged,
}

/// The inbox counts now, without leasing anything.
pub async fn stats(link: &HubLink) -> Result<InboxStats, HubFailure> {
    let path = link.client().agent_path("inbox/stats");
    link.call_as(Method::GET, &path, None).await
}

/// The resource's current content: counts and the oldest waiting
/// messages, both read without leasing anything.
pub async fn read(link: &HubLink) -> Result<InboxResource, HubFailure> {
    #[derive(Deserialize)]
    struct Peek {
        messages: Vec<Peeked>,
    }
    let path = link
        .client()
        .agent_path(&format!("inbox/peek?limit={WAITING_SHOWN}"));
    let peek: Peek = link.call_as(Method::GET, &path, None).await?;
    Ok(InboxResource {
        agent_id: link.client().agent_id.clone(),
        hub_url: link.client().base.clone(),
        stats: stats(link).await?,
        oldest_waiting: peek
            .messages
            .into_iter()
            .map(|m| WaitingMessage {
                message_id: m.message_id,
                from: m.from,
                created_at: m.created_at,
                attempts: m.attempts,
                untrusted_subject: m.subject,
                untrusted_type: m.message_type,
            })
            .collect(),
        untrusted_notice: UNTRUSTED_NOTICE,
        hint: "Call check_inbox to lease and read the waiting messages; this resource never leases them.",
    })
}

/// Waits up to `wait_sec` for the counts to differ from those tagged `etag`.
pub async fn look(link: &HubLink, etag: Option<&str>, wait_sec: u64) -> Result<Seen, HubFailure> {
    let path = link
        .client()
        .agent_path(&format!("inbox/stats?wait_sec={wait_sec}"));
    let headers: Vec<(&str, &str)> = etag.map(|e| ("if-none-match", e)).into_iter().collect();
    let response = link.send(Method::GET, &path, None, &headers).await?;
    if response.status() == StatusCode::NOT_MODIFIED {
        return Ok(Seen::Unchanged);
    }
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match (status.is_success(), etag) {
        (true, Some(etag)) => Ok(Seen::Changed {
            etag,
            stats: serde_json::from_value(body).unwrap_or_default(),
        }),
        (true, None) => Err(HubFailure {
            error: "UNEXPECTED_RESPONSE".into(),
            message: "the hub's inbox stats carry no ETag: it cannot be watched".into(),
            http_status: Some(status.as_u16()),
        }),
        (false, _) => Err(HubFailure {
            error: body["error"].as_str().unwrap_or("HUB_ERROR").to_string(),
            message: body["message"].as_str().unwrap_or_default().to_string(),
            http_status: Some(status.as_u16()),
        }),
    }
}

/// The tag of the inbox counts now: the baseline a watch starts from.
pub async fn baseline(link: &HubLink) -> Result<String, HubFailure> {
    match look(link, None, 0).await? {
        Seen::Changed { etag, .. } => Ok(etag),
        Seen::Unchanged => Err(HubFailure {
            error: "UNEXPECTED_RESPONSE".into(),
            message: "the hub answered 304 to a request without If-None-Match".into(),
            http_status: Some(304),
        }),
    }
}

/// Calls `on_change` each time the inbox counts move away from those tagged
/// `etag`, until it returns false (the client is gone). Hub failures are
/// retried with backoff.
pub async fn follow<F, Fut>(link: &HubLink, mut etag: String, mut on_change: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut retry = RETRY_MIN;
    loop {
        match look(link, Some(&etag), WATCH_WAIT_SEC).await {
            Ok(Seen::Changed { etag: new, .. }) => {
                retry = RETRY_MIN;
                etag = new;
                if !on_change().await {
                    return;
                }
            }
            Ok(Seen::Unchanged) => retry = RETRY_MIN,
            Err(failure) => {
                tracing::warn!(error = %failure.error, message = %failure.message, "inbox watch: retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
