//! A resilient client for Mech Storage's HTTP NoSQL API.
//!
//! The request shapes follow `/work/shared/spec/MECH-API.md` (summarised in
//! docs/STORAGE.md): by default the shapes a public client checked against the
//! live service uses (paths by `document_id`, no `X-App-ID`), or with
//! `MECH_API_DIALECT=legacy` the older Node client's. Responses of either
//! generation are read.
//!
//! The service does not filter lists by collection, and one Mech app may hold
//! other applications' documents. So every payload this client writes is an
//! envelope `{"_collection", "_key", "record"}`, its `document_id` is
//! `<collection>:<key>`, and a listed document is ours only if its envelope
//! names the collection asked for; anything else, of any shape, is skipped.
//! The record sits one level down, so a server that merges a PUT into the
//! stored payload (top-level fields) still replaces the whole record.
//!
//! Every request has a timeout; timeouts, connection errors, 5xx and 429 are
//! retried with exponential backoff and full jitter (honouring `Retry-After`
//! and the body's `error.retryAfterMs`), other 4xx never; a circuit breaker
//! turns a Mech outage into fast 503s; inputs are checked before any call; an
//! unreadable response is logged with its status and a truncated body, then
//! reported as an error. Writes stop (fenced) once the single-instance lock
//! is lost or its heartbeat could not be renewed in time (see `lock.rs`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use super::breaker::Breaker;
use crate::config::{Config, MechApiDialect};
use crate::store::StoreError;

/// Longest document key the client sends (Mech keys travel in URLs).
pub const MAX_KEY_BYTES: usize = 512;

/// Documents asked for per list page: the most the service allows.
pub const LIST_PAGE_SIZE: usize = 1000;

/// Characters of a response body kept in logs and error messages.
pub const LOGGED_BODY_CHARS: usize = 512;

/// Envelope field naming the collection of a payload the hub wrote.
pub const COLLECTION_FIELD: &str = "_collection";
/// Envelope field holding the hub's own key of the document.
pub const KEY_FIELD: &str = "_key";
/// Envelope field holding the record itself.
pub const RECORD_FIELD: &str = "record";

/// Longest a connection attempt may take (within the request timeout).
const CONNECT_TIMEOUT_CAP: Duration = Duration::from_secs(5);

/// Idle keep-alive connections kept per host: enough for `MECH_CONCURRENCY`
/// bulk requests plus the API's own.
const IDLE_CONNECTIONS_PER_HOST: usize = 64;

/// How deep the reader looks for an envelope inside a listed or read record
/// (`data` → `document` → `data` covers every shape in MECH-API.md).
const ENVELOPE_DEPTH: usize = 4;

/// Everything the Mech backend needs to know, taken from [`Config`] once.
#[derive(Debug, Clone)]
pub struct MechSettings {
    /// Server root, e.g. `https://storage.mechdna.net`.
    pub base_url: String,
    /// Mech application id (`MECH_APP_ID`): the path prefix (and `X-App-ID` if opted in).
    pub app_id: String,
    /// Mech API key (`MECH_API_KEY`).
    pub api_key: String,
    /// Mech API secret (`MECH_API_SECRET`): with it, `X-Mech-API-Key` +
    /// `X-Mech-API-Secret`; without it, `X-API-Key` alone.
    pub api_secret: Option<String>,
    /// Request shapes sent (`MECH_API_DIALECT`).
    pub dialect: MechApiDialect,
    /// Send `X-App-ID` too (`MECH_SEND_APP_ID_HEADER`, default off).
    pub send_app_id_header: bool,
    /// Heartbeat age after which the single-instance lock may be taken over (`MECH_LOCK_STALE_MS`).
    pub lock_stale: Duration,
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
            api_secret: config.mech_api_secret.clone(),
            dialect: config.mech_api_dialect,
            send_app_id_header: config.mech_send_app_id_header,
            lock_stale: Duration::from_millis(config.mech_lock_stale_ms),
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
        /// Mech's `error.message` (or top-level `message`), or the truncated body.
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
    /// Another hub holds the single-instance lock (start-up refused).
    #[error("{0}")]
    LockHeld(String),
    /// This hub no longer (or not yet provably) holds the lock: writes are refused.
    #[error("Mech writes stopped: {0}")]
    Fenced(String),
}

impl From<MechError> for StoreError {
    /// Outages, a held lock and fenced writes are `Unavailable` (503 with
    /// `Retry-After`); anything else is a bug or a protocol mismatch and is `Internal`.
    fn from(e: MechError) -> Self {
        match e {
            MechError::BreakerOpen(_)
            | MechError::Exhausted { .. }
            | MechError::LockHeld(_)
            | MechError::Fenced(_) => StoreError::Unavailable(e.to_string()),
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

/// One of the hub's documents as a list or a read returns it.
#[derive(Debug, Clone)]
pub struct Document {
    /// The hub's key (the envelope's `_key`).
    pub key: String,
    /// The record the hub stored (the envelope's `record`).
    pub data: Value,
}

/// Whether writes may go out: set by the single-instance lock (`lock.rs`).
#[derive(Debug)]
struct Fence {
    /// `None` until a lock is held (a bare client writes freely).
    guard: Mutex<Option<FenceState>>,
}

#[derive(Debug, Clone)]
struct FenceState {
    /// Why writes stopped for good (lock lost or released).
    stopped: Option<String>,
    /// When the lock was last confirmed ours.
    renewed: Instant,
    /// How long a confirmation stays good: the lock's stale timeout.
    valid_for: Duration,
}

impl Fence {
    fn check(&self) -> Result<(), MechError> {
        let Some(state) = self.guard.lock().clone() else {
            return Ok(());
        };
        if let Some(why) = state.stopped {
            return Err(MechError::Fenced(why));
        }
        let age = state.renewed.elapsed();
        if age > state.valid_for {
            return Err(MechError::Fenced(format!(
                "the single-instance lock was last renewed {}s ago, longer than \
                 MECH_LOCK_STALE_MS; another hub may have taken it over",
                age.as_secs()
            )));
        }
        Ok(())
    }
}

/// HTTP client for one Mech application, shared by every store call.
pub struct MechClient {
    http: reqwest::Client,
    /// `{base_url}/api/apps/{app_id}`.
    root: String,
    settings: MechSettings,
    breaker: Breaker,
    fence: Fence,
}

/// Whether a request is subject to the single-instance fence.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// Refused once the lock is lost (every store write).
    Fenced,
    /// Reads, and the lock's own requests, which must go out to (re)gain it.
    Unfenced,
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
            fence: Fence {
                guard: Mutex::new(None),
            },
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

    /// Why writes are refused right now, if they are.
    pub fn fenced(&self) -> Option<String> {
        self.fence.check().err().map(|e| e.to_string())
    }

    /// The lock was confirmed ours at `at`: writes may go out for `valid_for` after it.
    pub(super) fn renew_fence(&self, at: Instant, valid_for: Duration) {
        let mut guard = self.fence.guard.lock();
        match guard.as_mut() {
            Some(state) if state.stopped.is_some() => {}
            Some(state) => state.renewed = state.renewed.max(at),
            None => {
                *guard = Some(FenceState {
                    stopped: None,
                    renewed: at,
                    valid_for,
                })
            }
        }
    }

    /// Stops every further write for good (lock lost or released).
    pub(super) fn stop_writes(&self, why: String) {
        let mut guard = self.fence.guard.lock();
        let state = guard.get_or_insert(FenceState {
            stopped: None,
            renewed: Instant::now(),
            valid_for: Duration::ZERO,
        });
        state.stopped.get_or_insert(why);
    }

    /// The `document_id` of one of the hub's documents: collections never
    /// contain `:`, so ids of different collections never collide.
    pub fn document_id(collection: &str, key: &str) -> String {
        format!("{collection}:{key}")
    }

    /// The payload the hub stores for `data`: tagged with its collection and key.
    pub fn envelope(collection: &str, key: &str, data: &Value) -> Value {
        json!({ COLLECTION_FIELD: collection, KEY_FIELD: key, RECORD_FIELD: data })
    }

    /// Stores a new document; `Ok(false)` if the key already exists (409).
    pub async fn create(
        &self,
        collection: &str,
        key: &str,
        data: &Value,
    ) -> Result<bool, MechError> {
        self.create_guarded(collection, key, data, Guard::Fenced)
            .await
    }

    pub(super) async fn create_guarded(
        &self,
        collection: &str,
        key: &str,
        data: &Value,
        guard: Guard,
    ) -> Result<bool, MechError> {
        validate_key(collection, key)?;
        let id = Self::document_id(collection, key);
        let payload = Self::envelope(collection, key, data);
        let body = match self.settings.dialect {
            MechApiDialect::Live => {
                json!({ "collection_name": collection, "document_id": id, "data": payload })
            }
            MechApiDialect::Legacy => {
                json!({ "collection_name": collection, "document_key": id, "data": payload })
            }
        };
        let bytes = self.encode(&body, collection, key)?;
        let url = format!("{}/nosql/documents", self.root);
        let op = format!("create {collection}/{key}");
        let reply = self
            .execute(&op, guard, || {
                self.request(Method::POST, &url).body(bytes.clone())
            })
            .await?;
        match reply.status {
            StatusCode::CONFLICT => Ok(false),
            s if s.is_success() => {
                // The live service echoes the id it stored; one that differs
                // means it ignored ours, and the hub could never find the record.
                let echoed = serde_json::from_str::<Value>(&reply.body)
                    .ok()
                    .and_then(|b| b.pointer("/data/document_id").cloned());
                match echoed {
                    Some(Value::String(stored)) if stored != id => Err(malformed(
                        &op,
                        s,
                        &reply.body,
                        &format!("stored document_id {stored:?} instead of {id:?}"),
                    )),
                    _ => Ok(true),
                }
            }
            other => Err(unexpected(&op, other, &reply.body)),
        }
    }

    /// Replaces an existing document's whole payload; `Ok(false)` if absent (404).
    pub async fn update(
        &self,
        collection: &str,
        key: &str,
        data: &Value,
    ) -> Result<bool, MechError> {
        self.update_guarded(collection, key, data, Guard::Fenced)
            .await
    }

    pub(super) async fn update_guarded(
        &self,
        collection: &str,
        key: &str,
        data: &Value,
        guard: Guard,
    ) -> Result<bool, MechError> {
        validate_key(collection, key)?;
        let payload = Self::envelope(collection, key, data);
        let body = match self.settings.dialect {
            MechApiDialect::Live => json!({ "collection_name": collection, "data": payload }),
            MechApiDialect::Legacy => json!({ "data": payload }),
        };
        let bytes = self.encode(&body, collection, key)?;
        let url = self.document_url(collection, key);
        let op = format!("update {collection}/{key}");
        let reply = self
            .execute(&op, guard, || {
                self.request(Method::PUT, &url).body(bytes.clone())
            })
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

    /// Reads one document; `None` if absent, or if what Mech holds under that
    /// id is not the hub's document of this collection.
    pub async fn read(&self, collection: &str, key: &str) -> Result<Option<Value>, MechError> {
        validate_key(collection, key)?;
        let id = Self::document_id(collection, key);
        let url = match self.settings.dialect {
            MechApiDialect::Live => {
                format!("{}/nosql/documents/{}", self.root, urlencoding::encode(&id))
            }
            MechApiDialect::Legacy => format!(
                "{}/nosql/documents/key/{}?collection_name={}",
                self.root,
                urlencoding::encode(&id),
                urlencoding::encode(collection)
            ),
        };
        let op = format!("read {collection}/{key}");
        let reply = self
            .execute(&op, Guard::Unfenced, || self.request(Method::GET, &url))
            .await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let body = parse_json(&op, s, &reply.body)?;
                let record = body.get("data").unwrap_or(&body);
                match ours(record, collection) {
                    Some(Ok(doc)) => Ok(Some(doc.data)),
                    Some(Err(detail)) => Err(malformed(&op, s, &reply.body, &detail)),
                    None => {
                        tracing::warn!(op, "the document under the hub's id is not the hub's");
                        Ok(None)
                    }
                }
            }
            other => Err(unexpected(&op, other, &reply.body)),
        }
    }

    /// Deletes one document; an absent one counts as deleted.
    pub async fn delete(&self, collection: &str, key: &str) -> Result<(), MechError> {
        self.delete_guarded(collection, key, Guard::Fenced).await
    }

    pub(super) async fn delete_guarded(
        &self,
        collection: &str,
        key: &str,
        guard: Guard,
    ) -> Result<(), MechError> {
        validate_key(collection, key)?;
        let url = self.document_url(collection, key);
        let op = format!("delete {collection}/{key}");
        let reply = self
            .execute(&op, guard, || self.request(Method::DELETE, &url))
            .await?;
        match reply.status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            other => Err(unexpected(&op, other, &reply.body)),
        }
    }

    /// Every document of one collection (see [`scan`](Self::scan)).
    pub async fn list_all(&self, collection: &str) -> Result<Vec<Document>, MechError> {
        let mut found = self.scan(&[collection]).await?;
        Ok(found.remove(collection).unwrap_or_default())
    }

    /// Every document of each collection, foreign documents skipped.
    ///
    /// The first collection is listed in full. If that list shows the server
    /// does not filter by `collection_name` (a record whose `collection_name`
    /// is another, or the hub's own document of another collection), the one
    /// scan already holds every collection. Otherwise each other collection
    /// is listed too, keeping from each list only its own collection.
    pub async fn scan(
        &self,
        collections: &[&str],
    ) -> Result<HashMap<String, Vec<Document>>, MechError> {
        let mut found: HashMap<String, Vec<Document>> = collections
            .iter()
            .map(|c| (c.to_string(), Vec::new()))
            .collect();
        let Some((first, rest)) = collections.split_first() else {
            return Ok(found);
        };
        let records = self.list_raw(first).await?;
        let unfiltered =
            records
                .iter()
                .any(|r| match r.get("collection_name").and_then(Value::as_str) {
                    Some(listed) => listed != *first,
                    None => envelope_collection(r)
                        .is_some_and(|c| c != *first && collections.contains(&c)),
                });
        let foreign = if unfiltered {
            self.sort_records(&records, &mut found, first, None)?
        } else {
            let mut foreign = self.sort_records(&records, &mut found, first, Some(first))?;
            for collection in rest {
                let records = self.list_raw(collection).await?;
                foreign += self.sort_records(&records, &mut found, collection, Some(collection))?;
            }
            foreign
        };
        if foreign > 0 {
            tracing::debug!(
                foreign,
                "skipped documents of other applications in the Mech app"
            );
        }
        Ok(found)
    }

    /// Files each listed record under its collection if it is one asked for
    /// (only `only`, if given); returns how many were skipped as not the hub's.
    fn sort_records(
        &self,
        records: &[Value],
        found: &mut HashMap<String, Vec<Document>>,
        listed: &str,
        only: Option<&str>,
    ) -> Result<usize, MechError> {
        let mut foreign = 0;
        for record in records {
            let Some(collection) = envelope_collection(record) else {
                foreign += 1;
                continue;
            };
            if only.is_some_and(|only| only != collection) {
                continue;
            }
            let Some(bucket) = found.get_mut(collection) else {
                foreign += 1;
                continue;
            };
            match ours(record, collection) {
                Some(Ok(doc)) => bucket.push(doc),
                Some(Err(detail)) => {
                    let body = record.to_string();
                    return Err(malformed(
                        &format!("list {listed}"),
                        StatusCode::OK,
                        &body,
                        &detail,
                    ));
                }
                None => foreign += 1,
            }
        }
        Ok(foreign)
    }

    /// Every record the server lists for `collection_name`, paged by
    /// `limit`/`offset`. A page shorter than the largest page seen so far
    /// (and than `limit`) is the last, as is an empty one; so a server that
    /// caps pages below `limit` is still read to the end, at the cost of one
    /// extra request when everything fits one page. A page that repeats the
    /// previous one, or brings no record not seen before, is an error, never
    /// a silent end.
    async fn list_raw(&self, collection: &str) -> Result<Vec<Value>, MechError> {
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        let mut previous: Option<Vec<String>> = None;
        let mut offset = 0usize;
        let mut largest = 0usize;
        loop {
            let page = self.list_page(collection, LIST_PAGE_SIZE, offset).await?;
            let count = page.len();
            if count == 0 {
                break;
            }
            let ids: Vec<String> = page.iter().map(record_identity).collect();
            let op = format!("list {collection}");
            if previous.as_ref() == Some(&ids) {
                return Err(MechError::Malformed {
                    op,
                    status: 200,
                    detail: format!("offset {offset} returned the previous page again"),
                });
            }
            let mut fresh = 0;
            for (record, id) in page.into_iter().zip(&ids) {
                if seen.insert(id.clone()) {
                    fresh += 1;
                    records.push(record);
                }
            }
            if fresh == 0 {
                return Err(MechError::Malformed {
                    op,
                    status: 200,
                    detail: format!(
                        "pagination does not advance (offset {offset}, {count} repeated documents)"
                    ),
                });
            }
            largest = largest.max(count);
            offset += count;
            if count < largest && count < LIST_PAGE_SIZE {
                break;
            }
            previous = Some(ids);
        }
        Ok(records)
    }

    /// A cheap authenticated round trip (one listed document) for readiness;
    /// fails while writes are fenced, since such a hub cannot serve.
    pub async fn ping(&self, collection: &str) -> Result<(), MechError> {
        self.fence.check()?;
        self.list_page(collection, 1, 0).await.map(|_| ())
    }

    /// One list page: the records as the server returns them.
    async fn list_page(
        &self,
        collection: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Value>, MechError> {
        let url = format!(
            "{}/nosql/documents?collection_name={}&limit={limit}&offset={offset}",
            self.root,
            urlencoding::encode(collection)
        );
        let op = format!("list {collection}");
        let reply = self
            .execute(&op, Guard::Unfenced, || self.request(Method::GET, &url))
            .await?;
        if !reply.status.is_success() {
            return Err(unexpected(&op, reply.status, &reply.body));
        }
        let body = parse_json(&op, reply.status, &reply.body)?;
        parse_list(body).map_err(|detail| malformed(&op, reply.status, &reply.body, &detail))
    }

    /// The path of one document for PUT and DELETE, in the configured dialect.
    fn document_url(&self, collection: &str, key: &str) -> String {
        let id = Self::document_id(collection, key);
        match self.settings.dialect {
            MechApiDialect::Live => {
                format!("{}/nosql/documents/{}", self.root, urlencoding::encode(&id))
            }
            MechApiDialect::Legacy => format!(
                "{}/nosql/documents/{}/{}",
                self.root,
                urlencoding::encode(collection),
                urlencoding::encode(&id)
            ),
        }
    }

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.settings.timeout)
            .header("content-type", "application/json")
            .header("accept", "application/json");
        request = match &self.settings.api_secret {
            Some(secret) => request
                .header("x-mech-api-key", &self.settings.api_key)
                .header("x-mech-api-secret", secret),
            None => request.header("x-api-key", &self.settings.api_key),
        };
        if self.settings.send_app_id_header {
            request = request.header("x-app-id", &self.settings.app_id);
        }
        request
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

    /// Runs one operation through the fence (writes), the breaker and the retry loop.
    async fn execute(
        &self,
        op: &str,
        guard: Guard,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Reply, MechError> {
        if guard == Guard::Fenced {
            self.fence.check()?;
        }
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
                    let header = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    match response.text().await {
                        Ok(body) if retryable(status) => {
                            retry_after = header.max(body_retry_after(&body));
                            last = format!("HTTP {}: {}", status.as_u16(), truncate(&body));
                        }
                        Ok(body) => {
                            if status.is_client_error()
                                && (!matches!(status, StatusCode::NOT_FOUND | StatusCode::CONFLICT)
                                    || table_missing(status, &body))
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
                        " (asked to retry after {} ms, more than MECH_BACKOFF_MAX_MS)",
                        wait.as_millis()
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

/// The records of a list response: a bare array under `data` (live), or
/// under `data.documents`, `documents` or `items` (older shapes).
fn parse_list(body: Value) -> Result<Vec<Value>, String> {
    let mut body = body;
    let taken = ["/data/documents", "/documents", "/data", "/items", ""]
        .iter()
        .find_map(|path| {
            body.pointer_mut(path)
                .filter(|v| v.is_array())
                .map(Value::take)
        });
    match taken {
        Some(Value::Array(records)) => Ok(records),
        _ => Err("no document array (looked at data, data.documents, documents, items)".into()),
    }
}

/// The envelope inside a record of any shape: the first object carrying a
/// string `_collection`, looking through `document` and `data` wrappers.
fn envelope_of(record: &Value) -> Option<&Value> {
    fn find(value: &Value, depth: usize) -> Option<&Value> {
        let object = value.as_object()?;
        if object.get(COLLECTION_FIELD).is_some_and(Value::is_string) {
            return Some(value);
        }
        if depth == 0 {
            return None;
        }
        ["document", "data"]
            .iter()
            .filter_map(|field| object.get(*field))
            .find_map(|inner| find(inner, depth - 1))
    }
    find(record, ENVELOPE_DEPTH)
}

/// The collection a record's envelope names, if it has one.
fn envelope_collection(record: &Value) -> Option<&str> {
    envelope_of(record)?.get(COLLECTION_FIELD)?.as_str()
}

/// The hub's document of `collection` in a record: `None` if the record is
/// not one (foreign: skipped), `Some(Err)` if it is ours but unusable.
fn ours(record: &Value, collection: &str) -> Option<Result<Document, String>> {
    let envelope = envelope_of(record)?;
    if envelope.get(COLLECTION_FIELD)?.as_str()? != collection {
        return None;
    }
    let key = envelope.get(KEY_FIELD)?.as_str()?;
    let data = envelope.get(RECORD_FIELD)?;
    if let Some(path) = blob_ref(data, String::new()) {
        return Some(Err(format!(
            "{collection}/{key}: Mech returned field {path} as a blob reference, which the \
             hub does not fetch (keep documents under the service's offload size)"
        )));
    }
    Some(Ok(Document {
        key: key.to_string(),
        data: data.clone(),
    }))
}

/// The path of the first `{"__type": "blob_ref"}` object inside a value.
fn blob_ref(value: &Value, path: String) -> Option<String> {
    match value {
        Value::Object(map) if map.get("__type").and_then(Value::as_str) == Some("blob_ref") => {
            Some(if path.is_empty() { "/".into() } else { path })
        }
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| blob_ref(v, format!("{path}/{k}"))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| blob_ref(v, format!("{path}/{i}"))),
        _ => None,
    }
}

/// A record's identity for the pagination guards: its id fields, else a hash of it.
fn record_identity(record: &Value) -> String {
    ["document_id", "id", "document_key", "key"]
        .iter()
        .find_map(|f| record.get(*f).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            record.to_string().hash(&mut h);
            format!("anonymous:{:016x}", h.finish())
        })
}

/// Collections are the hub's own names; keys travel in URLs: non-empty,
/// bounded, no control characters.
fn validate_key(collection: &str, key: &str) -> Result<(), MechError> {
    if collection.is_empty() || collection.contains(':') {
        return Err(MechError::Invalid(format!(
            "collection name {collection:?} must be non-empty and free of ':'"
        )));
    }
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

/// A 404 about the app's table, not a document: the live service's answer
/// to `X-App-ID` (MECH-API.md), never to be read as "no such document".
fn table_missing(status: StatusCode, body: &str) -> bool {
    status == StatusCode::NOT_FOUND
        && serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|b| {
                b.pointer("/error/code")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .is_some_and(|code| code == "TABLE_NOT_FOUND")
}

/// Statuses worth another attempt: overload and server errors.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` as seconds (fractions allowed) or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The body's `error.retryAfterMs` (the live service's 429 hint).
fn body_retry_after(body: &str) -> Option<Duration> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    let ms = parsed.pointer("/error/retryAfterMs")?;
    let ms = ms.as_u64().or_else(|| {
        ms.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.ceil().min(1e15) as u64)
    })?;
    Some(Duration::from_millis(ms))
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

/// A 4xx as `Rejected`, with Mech's `{error:{code, message}}` (or a top-level
/// `message`) when present.
fn rejected(op: &str, status: StatusCode, body: &str) -> MechError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let text = |pointer: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.pointer(pointer))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let code = text("/error/code");
    let message = text("/error/message").or_else(|| text("/message"));
    if code.is_none() && message.is_none() {
        tracing::warn!(op, status = status.as_u16(), body = %truncate(body), "Mech error without an {{error:{{code, message}}}} body");
    }
    MechError::Rejected {
        op: op.to_string(),
        status: status.as_u16(),
        code: code.unwrap_or_else(|| "UNKNOWN".into()),
        message: message.unwrap_or_else(|| truncate(body)),
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

    fn mine(collection: &str, key: &str, record: Value) -> Value {
        MechClient::envelope(collection, key, &record)
    }

    #[test]
    fn records_of_both_generations_are_read() {
        let payload = mine("admp_agents", "a", json!({"x": 1}));
        // Live list: flat payload under `document`.
        let live_list = json!({"id": "u1", "document_id": "admp_agents:a", "document": payload});
        // Live read: the GET wrapper one level deeper.
        let live_read = json!({"id": "u1", "document_id": "admp_agents:a",
            "document": {"data": payload, "wasDowngraded": false, "blobCount": 0}});
        // Legacy: payload under `data`, or `data.document.data`.
        let legacy = json!({"collection_name": "admp_agents", "document_key": "admp_agents:a", "data": payload});
        let legacy_read = json!({"document": legacy});
        for record in [&live_list, &live_read, &legacy, &legacy_read] {
            let doc = ours(record, "admp_agents").unwrap().unwrap();
            assert_eq!((doc.key.as_str(), doc.data.clone()), ("a", json!({"x": 1})));
        }
    }

    #[test]
    fn foreign_records_of_any_shape_are_not_ours() {
        for record in [
            json!(null),
            json!("text"),
            json!([1, 2]),
            json!({"document": {"agent_id": "a"}}),
            json!({"data": {"_collection": 7}}),
            json!({"document": {"_collection": "tasks", "_key": "a", "record": {}}}),
            json!({"document": {"_collection": "admp_agents"}}),
        ] {
            assert!(ours(&record, "admp_agents").is_none(), "{record}");
        }
    }

    #[test]
    fn a_blob_reference_in_our_record_is_refused_clearly() {
        let record = json!({"document": mine("admp_messages", "m", json!({"message": {"body":
            {"__type": "blob_ref", "provider": "r2", "url": "x", "key": "k", "size": 9}}}))});
        let err = ours(&record, "admp_messages").unwrap().unwrap_err();
        assert!(
            err.contains("/message/body") && err.contains("blob"),
            "{err}"
        );
    }

    #[test]
    fn list_responses_of_several_shapes_parse() {
        assert_eq!(
            parse_list(json!({"success": true, "data": [1, 2]}))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_list(json!({"data": {"documents": [1], "pagination": {"total": 7}}}))
                .unwrap()
                .len(),
            1
        );
        assert_eq!(parse_list(json!({"documents": []})).unwrap().len(), 0);
        assert!(parse_list(json!({"data": {"nothing": []}})).is_err());
    }

    #[test]
    fn keys_are_checked_before_any_call() {
        assert!(validate_key("admp_agents", "agent-1").is_ok());
        assert!(validate_key("admp_agents", "").is_err());
        assert!(validate_key("admp_agents", "a\nb").is_err());
        assert!(validate_key("admp_agents", &"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(validate_key("a:b", "k").is_err());
    }

    #[test]
    fn retry_hints_read_seconds_dates_and_the_body() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
        let body = r#"{"success":false,"error":{"code":"RATE_LIMIT_EXCEEDED","retryAfterMs":250}}"#;
        assert_eq!(body_retry_after(body), Some(Duration::from_millis(250)));
        assert_eq!(body_retry_after("{}"), None);
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
        let fenced = MechError::Fenced("lost".into());
        assert!(matches!(
            StoreError::from(fenced),
            StoreError::Unavailable(_)
        ));
        let odd = MechError::Malformed {
            op: "read".into(),
            status: 200,
            detail: "not JSON".into(),
        };
        assert!(matches!(StoreError::from(odd), StoreError::Internal(_)));
    }
}
