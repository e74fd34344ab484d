//! A resilient client for Mech Storage's HTTP NoSQL API.
//!
//! The Node server called Mech with bare `fetch`: no timeout, no retry, no
//! breaker, parse errors swallowed. Here every request has a timeout; timeouts,
//! connection errors, 5xx and 429 are retried with exponential backoff and full
//! jitter (honouring `Retry-After`), other 4xx never; a circuit breaker turns a
//! Mech outage into fast 503s; inputs are checked before any call; and an
//! unreadable response is logged with its status and a truncated body, then
//! reported as an error.

use std::time::Duration;

use rand::Rng;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use super::breaker::Breaker;
use crate::config::Config;
use crate::store::StoreError;

/// Longest document key the client sends (Mech keys travel in URLs).
pub const MAX_KEY_BYTES: usize = 512;

/// Documents asked for per list page; pagination fetches the rest.
pub const LIST_PAGE_SIZE: usize = 100;

/// Characters of a response body kept in logs and error messages.
pub const LOGGED_BODY_CHARS: usize = 512;

/// Longest a connection attempt may take (within the request timeout).
const CONNECT_TIMEOUT_CAP: Duration = Duration::from_secs(5);

/// Idle keep-alive connections kept per host: enough for `MECH_CONCURRENCY`
/// bulk requests plus the API's own.
const IDLE_CONNECTIONS_PER_HOST: usize = 64;

/// Everything the Mech backend needs to know, taken from [`Config`] once.
#[derive(Debug, Clone)]
pub struct MechSettings {
    /// Server root, e.g. `https://storage.mechdna.net`.
    pub base_url: String,
    /// Mech application id (`MECH_APP_ID`): the path prefix and the `X-App-ID` header.
    pub app_id: String,
    /// Mech API key (`MECH_API_KEY`), sent as `X-API-Key`.
    pub api_key: String,
    /// Per-request timeout (`MECH_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Retries after the first attempt (`MECH_MAX_RETRIES`).
    pub max_retries: u32,
    /// Cap of the first retry delay (`MECH_BACKOFF_BASE_MS`).
    pub backoff_base: Duration,
    /// Largest retry delay and longest honoured `Retry-After` (`MECH_BACKOFF_MAX_MS`).
    pub backoff_max: Duration,
    /// Consecutive failed operations that open the breaker (`MECH_BREAKER_FAILURES`).
    pub breaker_failures: u32,
    /// Time the breaker stays open before one probe (`MECH_BREAKER_RESET_MS`).
    pub breaker_reset: Duration,
    /// Requests bulk work keeps in flight (`MECH_CONCURRENCY`).
    pub concurrency: usize,
    /// Largest document written, in bytes (`MECH_MAX_DOCUMENT_KB`).
    pub max_document_bytes: usize,
}

impl MechSettings {
    /// The Mech settings of a validated config; the error names the missing variable.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        Ok(MechSettings {
            base_url: config.mech_base_url.trim_end_matches('/').to_string(),
            app_id: config
                .mech_app_id
                .clone()
                .ok_or("STORAGE_BACKEND=mech needs MECH_APP_ID")?,
            api_key: config
                .mech_api_key
                .clone()
                .ok_or("STORAGE_BACKEND=mech needs MECH_API_KEY (or MECH_API_KEY_FILE)")?,
            timeout: Duration::from_millis(config.mech_timeout_ms),
            max_retries: config.mech_max_retries,
            backoff_base: Duration::from_millis(config.mech_backoff_base_ms),
            backoff_max: Duration::from_millis(config.mech_backoff_max_ms),
            breaker_failures: config.mech_breaker_failures,
            breaker_reset: Duration::from_millis(config.mech_breaker_reset_ms),
            concurrency: config.mech_concurrency as usize,
            max_document_bytes: (config.mech_max_document_kb * 1024) as usize,
        })
    }
}

/// Why a Mech call failed.
#[derive(Debug, thiserror::Error)]
pub enum MechError {
    /// The breaker is open: Mech failed repeatedly and is not called for now.
    #[error("Mech circuit breaker open (next probe in {}s)", .0.as_secs_f64().ceil())]
    BreakerOpen(Duration),
    /// Every attempt timed out, failed to connect or got a 5xx/429.
    #[error("Mech unreachable after {attempts} attempt(s): {last}")]
    Exhausted {
        /// Attempts made (the first plus the retries).
        attempts: u32,
        /// What the last attempt got, for the log and the 503 message.
        last: String,
    },
    /// Mech refused the request with a 4xx other than 404/409/429.
    #[error("Mech rejected {op}: HTTP {status} {code}: {message}")]
    Rejected {
        /// The operation, e.g. `create admp_messages/<id>`.
        op: String,
        /// The HTTP status.
        status: u16,
        /// Mech's `error.code` (`UNKNOWN` without one).
        code: String,
        /// Mech's `error.message`, or the truncated body.
        message: String,
    },
    /// A response that is not the JSON the API documents.
    #[error("Mech answered {op} with an unreadable response (HTTP {status}): {detail}")]
    Malformed {
        /// The operation, e.g. `list admp_agents`.
        op: String,
        /// The HTTP status of the unreadable answer.
        status: u16,
        /// What was wrong, with the truncated body.
        detail: String,
    },
    /// The input was refused before any call.
    #[error("invalid Mech input: {0}")]
    Invalid(String),
}

impl From<MechError> for StoreError {
    /// Outages are `Unavailable` (503 with `Retry-After`); anything else is a bug or
    /// a protocol mismatch and is `Internal`.
    fn from(e: MechError) -> Self {
        match e {
            MechError::BreakerOpen(_) | MechError::Exhausted { .. } => {
                StoreError::Unavailable(e.to_string())
            }
            MechError::Rejected { .. } | MechError::Malformed { .. } | MechError::Invalid(_) => {
                StoreError::Internal(e.to_string())
            }
        }
    }
}

/// A Mech answer the caller interprets: 2xx, 404 or 409 with its body.
struct Reply {
    status: StatusCode,
    body: String,
}

/// One stored document as a list returns it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The `document_key`.
    pub key: String,
    /// The stored document (the record's `data`).
    pub data: Value,
}

/// HTTP client for one Mech application, shared by every store call.
pub struct MechClient {
    http: reqwest::Client,
    /// `{base_url}/api/apps/{app_id}`.
    root: String,
    settings: MechSettings,
    breaker: Breaker,
}

impl MechClient {
    /// A client with a keep-alive pool; makes no request yet.
    pub fn new(settings: MechSettings) -> Result<Self, MechError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(CONNECT_TIMEOUT_CAP))
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
            .build()
            .map_err(|e| MechError::Invalid(format!("building the HTTP client: {e}")))?;
        let root = format!(
            "{}/api/apps/{}",
            settings.base_url,
            urlencoding::encode(&settings.app_id)
        );
        Ok(MechClient {
            http,
            root,
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_reset),
            settings,
        })
    }

    /// The settings this client runs with.
    pub fn settings(&self) -> &MechSettings {
        &self.settings
    }

    /// True while the breaker refuses calls.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Stores a new document; `Ok(false)` if the key already exists (409).
    pub async fn create(
        &self,
        collection: &str,
        key: &str,
        data: &Value,
    ) -> Result<bool, MechError> {
        validate_key(key)?;
        let body = json!({ "collection_name": collection, "document_key": key, "data": data });
        let bytes = self.encode(&body, collection, key)?;
        let url = format!("{}/nosql/documents", self.root);
        let op = format!("create {collection}/{key}");
        let reply = self
            .execute(&op, || self.request(Method::POST, &url).body(bytes.clone()))
            .await?;
        match reply.status {
            StatusCode::CONFLICT => Ok(false),
            s if s.is_success() => Ok(true),
            other => Err(unexpected(&op, other, &reply.body)),
        }
    }

    /// Merges `data` into an existing document (top-level fields); `Ok(false)` if absent (404).
    pub async fn update(
        &self,
        collection: &str,
        key: &str,
        data: &Value,
    ) -> Result<bool, MechError> {
        validate_key(key)?;
        let bytes = self.encode(&json!({ "data": data }), collection, key)?;
        let url = self.document_url(collection, key);
        let op = format!("update {collection}/{key}");
        let reply = self
            .execute(&op, || self.request(Method::PUT, &url).body(bytes.clone()))
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            other => Err(unexpected(&op, other, &reply.body)),
        }
    }

    /// Writes a whole document whether or not Mech has it. `exists` is the
    /// index's belief and picks the first call; the other call covers a
    /// retried create that had landed, or a record Mech lost.
    pub async fn put(
        &self,
        collection: &str,
        key: &str,
        data: &Value,
        exists: bool,
    ) -> Result<(), MechError> {
        if exists {
            if !self.update(collection, key, data).await?
                && !self.create(collection, key, data).await?
            {
                return Err(MechError::Malformed {
                    op: format!("put {collection}/{key}"),
                    status: 409,
                    detail: "update said absent, create said present".into(),
                });
            }
        } else if !self.create(collection, key, data).await?
            && !self.update(collection, key, data).await?
        {
            return Err(MechError::Malformed {
                op: format!("put {collection}/{key}"),
                status: 404,
                detail: "create said present, update said absent".into(),
            });
        }
        Ok(())
    }

    /// Reads one document; `None` if absent.
    pub async fn read(&self, collection: &str, key: &str) -> Result<Option<Value>, MechError> {
        validate_key(key)?;
        let url = format!(
            "{}/nosql/documents/key/{}?collection_name={}",
            self.root,
            urlencoding::encode(key),
            urlencoding::encode(collection)
        );
        let op = format!("read {collection}/{key}");
        let reply = self
            .execute(&op, || self.request(Method::GET, &url))
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let body = parse_json(&op, s, &reply.body)?;
                let record = body
                    .get("data")
                    .map(|d| d.get("document").unwrap_or(d))
                    .ok_or_else(|| malformed(&op, s, &reply.body, "no `data` field"))?;
                Ok(Some(record_data(record).clone()))
            }
            other => Err(unexpected(&op, other, &reply.body)),
        }
    }

    /// Deletes one document; an absent one counts as deleted.
    pub async fn delete(&self, collection: &str, key: &str) -> Result<(), MechError> {
        validate_key(key)?;
        let url = self.document_url(collection, key);
        let op = format!("delete {collection}/{key}");
        let reply = self
            .execute(&op, || self.request(Method::DELETE, &url))
            .await?;
        match reply.status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            other => Err(unexpected(&op, other, &reply.body)),
        }
    }

    /// Every document of a collection, following the pagination the response
    /// offers (cursor, `has_more`, `total`, or full pages) to the end; a
    /// server that ignores the paging parameters is an error, not a silent
    /// first page.
    pub async fn list_all(&self, collection: &str) -> Result<Vec<Document>, MechError> {
        let mut documents = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0usize;
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_page(collection, LIST_PAGE_SIZE, offset, cursor.as_deref())
                .await?;
            let count = page.documents.len();
            let mut fresh = 0;
            for doc in page.documents {
                if seen.insert(doc.key.clone()) {
                    fresh += 1;
                    documents.push(doc);
                }
            }
            if count == 0 {
                break;
            }
            if fresh == 0 {
                return Err(MechError::Malformed {
                    op: format!("list {collection}"),
                    status: 200,
                    detail: format!(
                        "pagination does not advance (offset {offset}, {count} repeated documents)"
                    ),
                });
            }
            offset += count;
            let more = match (&page.next_cursor, page.has_more, page.total) {
                (Some(next), _, _) => {
                    cursor = Some(next.clone());
                    true
                }
                (None, Some(more), _) => more,
                (None, None, Some(total)) => offset < total,
                (None, None, None) => count >= LIST_PAGE_SIZE,
            };
            if !more {
                break;
            }
        }
        Ok(documents)
    }

    /// A cheap authenticated round trip (one document of `collection`) for readiness.
    pub async fn ping(&self, collection: &str) -> Result<(), MechError> {
        self.list_page(collection, 1, 0, None).await.map(|_| ())
    }

    async fn list_page(
        &self,
        collection: &str,
        limit: usize,
        offset: usize,
        cursor: Option<&str>,
    ) -> Result<ListPage, MechError> {
        let mut url = format!(
            "{}/nosql/documents?collection_name={}&limit={limit}",
            self.root,
            urlencoding::encode(collection)
        );
        match cursor {
            Some(cursor) => url.push_str(&format!("&cursor={}", urlencoding::encode(cursor))),
            None => url.push_str(&format!("&offset={offset}")),
        }
        let op = format!("list {collection}");
        let reply = self
            .execute(&op, || self.request(Method::GET, &url))
            .await?;
        if !reply.status.is_success() {
            return Err(unexpected(&op, reply.status, &reply.body));
        }
        let body = parse_json(&op, reply.status, &reply.body)?;
        parse_list(&body).map_err(|detail| malformed(&op, reply.status, &reply.body, &detail))
    }

    fn document_url(&self, collection: &str, key: &str) -> String {
        format!(
            "{}/nosql/documents/{}/{}",
            self.root,
            urlencoding::encode(collection),
            urlencoding::encode(key)
        )
    }

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http
            .request(method, url)
            .timeout(self.settings.timeout)
            .header("x-api-key", &self.settings.api_key)
            .header("x-app-id", &self.settings.app_id)
            .header("content-type", "application/json")
            .header("accept", "application/json")
    }

    /// Serialises a request body, refusing documents over the size limit.
    fn encode(&self, body: &Value, collection: &str, key: &str) -> Result<Vec<u8>, MechError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| MechError::Invalid(format!("{collection}/{key}: {e}")))?;
        if bytes.len() > self.settings.max_document_bytes {
            return Err(MechError::Invalid(format!(
                "{collection}/{key} is {} bytes; MECH_MAX_DOCUMENT_KB allows {}",
                bytes.len(),
                self.settings.max_document_bytes
            )));
        }
        Ok(bytes)
    }

    /// Runs one operation through the breaker and the retry loop.
    async fn execute(
        &self,
        op: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Reply, MechError> {
        let permit = self.breaker.admit().map_err(MechError::BreakerOpen)?;
        let outcome = self.attempts(op, build).await;
        match &outcome {
            Err(MechError::Exhausted { .. }) => self.breaker.failed(permit),
            // A 4xx or an odd body still proves Mech is up.
            _ => self.breaker.succeeded(permit),
        }
        outcome
    }

    /// Up to `1 + max_retries` attempts; retries timeouts, connection errors, 5xx and 429.
    async fn attempts(
        &self,
        op: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Reply, MechError> {
        let attempts = self.settings.max_retries + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            let mut retry_after = None;
            match build().send().await {
                Ok(response) => {
                    let status = response.status();
                    retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    match response.text().await {
                        Ok(body) if retryable(status) => {
                            last = format!("HTTP {}: {}", status.as_u16(), truncate(&body));
                        }
                        Ok(body) => {
                            if status.is_client_error()
                                && !matches!(status, StatusCode::NOT_FOUND | StatusCode::CONFLICT)
                            {
                                return Err(rejected(op, status, &body));
                            }
                            return Ok(Reply { status, body });
                        }
                        Err(e) => last = describe(&e),
                    }
                }
                Err(e) => last = describe(&e),
            }
            if attempt + 1 == attempts {
                break;
            }
            let mut delay = self.backoff(attempt);
            if let Some(wait) = retry_after {
                if wait > self.settings.backoff_max {
                    last.push_str(&format!(
                        " (Retry-After {}s exceeds MECH_BACKOFF_MAX_MS)",
                        wait.as_secs()
                    ));
                    return Err(MechError::Exhausted {
                        attempts: attempt + 1,
                        last,
                    });
                }
                delay = delay.max(wait);
            }
            tracing::debug!(op, attempt = attempt + 1, error = %last, delay_ms = delay.as_millis() as u64, "retrying Mech request");
            tokio::time::sleep(delay).await;
        }
        tracing::warn!(op, attempts, error = %last, "Mech request failed after every retry");
        Err(MechError::Exhausted { attempts, last })
    }

    /// Full jitter: a random delay up to `min(max, base * 2^attempt)`.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .settings
            .backoff_base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.settings.backoff_max);
        let millis = cap.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}

/// One list response, pagination included.
struct ListPage {
    documents: Vec<Document>,
    next_cursor: Option<String>,
    has_more: Option<bool>,
    total: Option<usize>,
}

/// Reads a list response: documents under `data.documents`, `documents`,
/// `data` or `items`; pagination hints wherever the response puts them.
fn parse_list(body: &Value) -> Result<ListPage, String> {
    let data = body.get("data");
    let array = data
        .and_then(|d| d.get("documents"))
        .or_else(|| body.get("documents"))
        .or_else(|| data.filter(|d| d.is_array()))
        .or_else(|| body.get("items"))
        .and_then(Value::as_array)
        .ok_or("no document array (looked at data.documents, documents, data, items)")?;
    let mut documents = Vec::with_capacity(array.len());
    for record in array {
        let key = record
            .get("document_key")
            .or_else(|| record.get("key"))
            .and_then(Value::as_str)
            .ok_or("a listed document has no `document_key`")?;
        documents.push(Document {
            key: key.to_string(),
            data: record_data(record).clone(),
        });
    }
    let hints: Vec<&Value> = [
        data.and_then(|d| d.get("pagination")),
        body.get("pagination"),
        data.filter(|d| d.is_object()),
        Some(body),
    ]
    .into_iter()
    .flatten()
    .collect();
    let find = |names: &[&str]| {
        hints.iter().find_map(|h| {
            names
                .iter()
                .find_map(|n| h.get(*n).filter(|v| !v.is_null()))
        })
    };
    Ok(ListPage {
        documents,
        next_cursor: find(&["next_cursor", "nextCursor", "cursor"])
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        has_more: find(&["has_more", "hasMore"]).and_then(Value::as_bool),
        total: find(&["total", "total_count"])
            .and_then(Value::as_u64)
            .map(|t| t as usize),
    })
}

/// The stored document inside a record (`{document_key, data, …}`), or the value itself.
fn record_data(record: &Value) -> &Value {
    match record.get("data") {
        Some(data)
            if record.get("document_key").is_some()
                || record.get("collection_name").is_some()
                || record.get("key").is_some() =>
        {
            data
        }
        _ => record,
    }
}

/// Keys travel in URLs: non-empty, bounded, no control characters.
fn validate_key(key: &str) -> Result<(), MechError> {
    if key.is_empty() {
        return Err(MechError::Invalid("empty document key".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(MechError::Invalid(format!(
            "document key of {} bytes exceeds {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(MechError::Invalid(
            "document key contains control characters".into(),
        ));
    }
    Ok(())
}

/// Statuses worth another attempt: overload and server errors.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport error in a few words (timeouts and connection failures named as such).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out ({e})")
    } else if e.is_connect() {
        format!("connection failed ({e})")
    } else {
        format!("request failed ({e})")
    }
}

/// Parses a JSON body, logging (never swallowing) one that is not JSON.
fn parse_json(op: &str, status: StatusCode, body: &str) -> Result<Value, MechError> {
    serde_json::from_str(body).map_err(|e| malformed(op, status, body, &format!("not JSON: {e}")))
}

/// Logs an unreadable response with its status and a truncated body, and reports it.
fn malformed(op: &str, status: StatusCode, body: &str, detail: &str) -> MechError {
    tracing::error!(op, status = status.as_u16(), body = %truncate(body), detail, "unreadable Mech response");
    MechError::Malformed {
        op: op.to_string(),
        status: status.as_u16(),
        detail: format!("{detail}; body: {}", truncate(body)),
    }
}

/// A 4xx as `Rejected`, with Mech's `{error:{code, message}}` when present.
fn rejected(op: &str, status: StatusCode, body: &str) -> MechError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if error.is_none() {
        tracing::warn!(op, status = status.as_u16(), body = %truncate(body), "Mech error without an {{error:{{code, message}}}} body");
    }
    MechError::Rejected {
        op: op.to_string(),
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| "UNKNOWN".into()),
        message: field("message").unwrap_or_else(|| truncate(body)),
    }
}

/// A status the operation does not expect (e.g. a 3xx).
fn unexpected(op: &str, status: StatusCode, body: &str) -> MechError {
    malformed(op, status, body, "unexpected status")
}

/// The first [`LOGGED_BODY_CHARS`] characters of a body.
fn truncate(body: &str) -> String {
    match body.char_indices().nth(LOGGED_BODY_CHARS) {
        Some((at, _)) => format!("{}… ({} bytes)", &body[..at], body.len()),
        None => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_responses_of_several_shapes_parse() {
        let wrapped = json!({"data": {"documents": [{"document_key": "a", "data": {"x": 1}}],
                                      "pagination": {"has_more": true, "total": 7}}});
        let page = parse_list(&wrapped).unwrap();
        assert_eq!(page.documents[0].key, "a");
        assert_eq!(page.documents[0].data, json!({"x": 1}));
        assert_eq!((page.has_more, page.total), (Some(true), Some(7)));
        let flat = json!({"documents": [{"key": "b", "data": {"y": 2}}], "next_cursor": "c2"});
        let page = parse_list(&flat).unwrap();
        assert_eq!(page.next_cursor.as_deref(), Some("c2"));
        assert!(parse_list(&json!({"data": {"nothing": []}})).is_err());
        assert!(parse_list(&json!({"documents": [{"data": {}}]})).is_err());
    }

    #[test]
    fn keys_are_checked_before_any_call() {
        assert!(validate_key("agent-1").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("a\nb").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn long_bodies_are_truncated_in_logs() {
        let body = "x".repeat(LOGGED_BODY_CHARS * 2);
        let shown = truncate(&body);
        assert!(shown.starts_with(&"x".repeat(LOGGED_BODY_CHARS)));
        assert!(shown.ends_with(&format!("({} bytes)", body.len())));
        assert_eq!(truncate("short"), "short");
    }

    #[test]
    fn outages_are_unavailable_and_protocol_errors_internal() {
        let outage = MechError::Exhausted {
            attempts: 4,
            last: "timed out".into(),
        };
        assert!(matches!(
            StoreError::from(outage),
            StoreError::Unavailable(_)
        ));
        let open = MechError::BreakerOpen(Duration::from_secs(3));
        assert!(matches!(StoreError::from(open), StoreError::Unavailable(_)));
        let odd = MechError::Malformed {
            op: "read".into(),
            status: 200,
            detail: "not JSON".into(),
        };
        assert!(matches!(StoreError::from(odd), StoreError::Internal(_)));
    }
}
