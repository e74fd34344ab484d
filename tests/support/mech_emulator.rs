//! An in-memory Mech Storage emulator for tests and the sweep benchmark,
//! following the evidence in `/work/shared/spec/MECH-API.md`, on port 0 (the
//! OS picks a free port, so emulators of parallel tests never collide).
//!
//! Two modes:
//! - [`Mode::Live`] (default) behaves like the live column of MECH-API.md:
//!   paths by `document_id` (or the server `id`), create with `document_id`
//!   (`document_key` ignored; a taken `document_id` is 409), GET wraps the
//!   payload as `document: {data, wasDowngraded, blobCount}`, PUT replaces
//!   the whole payload, lists are bare arrays over **every collection** in
//!   insertion order (`collection_name` is ignored; default page 50, at most
//!   1000, no pagination block), any request carrying `X-App-ID` is answered
//!   404 `TABLE_NOT_FOUND`, and a 429 carries `error.retryAfterMs` and no header.
//! - [`Mode::Legacy`] behaves like the older Node client expected:
//!   `/key/{key}?collection_name=`, `/{collection}/{key}`, `document_key`,
//!   lists filtered by collection under `data.documents` with a pagination
//!   block (pages of at most 50), PUT merging top-level fields, `X-App-ID`
//!   accepted, a 429 with `Retry-After`.
//!
//! Both accept `X-Mech-API-Key` + `X-Mech-API-Secret`, or `X-API-Key` alone.
//! [`MechEmulator::seed_foreign`] fills the app with other applications'
//! documents of assorted shapes. Fault switches for a slow, failing network:
//!
//! - `set_latency`: every request waits this long before it is handled;
//! - `set_error_rate`: that fraction of requests is answered 500 unprocessed;
//! - `stall_next`: the next n requests hang for a while, then get 504
//!   unprocessed (a client with a shorter timeout has given up by then);
//! - `throttle_next`: the next n requests get 429 with the mode's hint;
//! - `garbage_next`: the next n requests get a 200 that is not JSON;
//! - `set_outage`: everything is answered 503 until switched back;
//! - `set_page_cap`: list pages shorter than the client asked for;
//! - `set_ignore_offset`: lists always answer the first page (a broken server).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use admp::config::{Config, MechApiDialect};
use admp::store::mech::MechClient;
use admp::store::mech::MechSettings;
use admp::store::mech::lock::{LOCK_COLLECTION, LOCK_KEY};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

/// The application id the emulator serves.
pub const APP_ID: &str = "admp-test-app";
/// The API key the emulator accepts (anything else is 401).
pub const API_KEY: &str = "mech-test-key";
/// The API secret that goes with [`API_KEY`] in `X-Mech-API-Secret`.
pub const API_SECRET: &str = "mech-test-secret";
/// Default list page (live mode) when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 50;
/// Largest list page the live mode returns.
pub const MAX_PAGE: usize = 1000;
/// Largest list page the legacy mode returns, whatever `limit` asks.
pub const LEGACY_MAX_PAGE: usize = 50;
/// Foreign documents the test suites seed before the hub starts.
pub const FOREIGN_DOCUMENTS: usize = 300;

/// Which generation of the API the emulator speaks (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The live service as MECH-API.md's [A] column describes it.
    Live,
    /// The older shapes of MECH-API.md's [N] column.
    Legacy,
}

/// The fault switches (see the module docs).
#[derive(Debug, Clone, Default)]
struct Faults {
    latency: Duration,
    error_rate: f64,
    outage: bool,
    stall_next: u64,
    stall_for: Duration,
    throttle_next: u64,
    throttle_for: Duration,
    garbage_next: u64,
    page_cap: Option<usize>,
    ignore_offset: bool,
}

/// Request counters, for tests that count attempts instead of timing them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every request that reached the emulator.
    pub requests: AtomicU64,
    /// Requests answered with an injected 500, 503, 504, 429 or garbage.
    pub injected: AtomicU64,
    /// Requests applied to the documents (create, update, delete).
    pub writes: AtomicU64,
    /// List requests (collection scans).
    pub lists: AtomicU64,
    /// Requests refused for carrying `X-App-ID` (live mode).
    pub app_id_headers: AtomicU64,
    /// Requests being handled right now.
    pub in_flight: AtomicU64,
    /// The most requests ever handled at once.
    pub max_in_flight: AtomicU64,
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(counters: &'a Counters) -> Self {
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One stored document.
#[derive(Debug, Clone)]
struct Stored {
    /// Server-assigned uuid.
    id: String,
    /// The client's key (`document_id` live, `document_key` legacy).
    key: String,
    collection: String,
    payload: Value,
}

/// Documents in insertion order, with lookups by key and server id.
#[derive(Default)]
struct Documents {
    next: u64,
    order: BTreeMap<u64, Stored>,
    /// Live: `document_id` → position; legacy: `collection\0key` → position.
    by_key: HashMap<String, u64>,
    by_id: HashMap<String, u64>,
}

impl Documents {
    fn insert(&mut self, lookup: String, stored: Stored) {
        let at = self.next;
        self.next += 1;
        self.by_key.insert(lookup, at);
        self.by_id.insert(stored.id.clone(), at);
        self.order.insert(at, stored);
    }

    fn find(&self, lookup: &str) -> Option<u64> {
        self.by_key
            .get(lookup)
            .or_else(|| self.by_id.get(lookup))
            .copied()
    }

    fn remove(&mut self, at: u64) -> Option<Stored> {
        let stored = self.order.remove(&at)?;
        self.by_id.remove(&stored.id);
        self.by_key.retain(|_, v| *v != at);
        Some(stored)
    }
}

struct Shared {
    mode: Mode,
    documents: Mutex<Documents>,
    faults: Mutex<Faults>,
    counters: Counters,
}

impl Shared {
    /// The lookup key of a document: its `document_id` (live) or collection and key (legacy).
    fn lookup(&self, collection: &str, key: &str) -> String {
        match self.mode {
            Mode::Live => key.to_string(),
            Mode::Legacy => format!("{collection}\0{key}"),
        }
    }
}

/// A running emulator; stops when dropped.
pub struct MechEmulator {
    /// Where it listens (127.0.0.1, an OS-picked port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for MechEmulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MechEmulator {
    /// Starts an empty live-mode emulator.
    pub async fn start() -> Self {
        Self::start_mode(Mode::Live).await
    }

    /// Starts an empty emulator in `mode` on 127.0.0.1, port 0.
    pub async fn start_mode(mode: Mode) -> Self {
        let shared = Arc::new(Shared {
            mode,
            documents: Mutex::default(),
            faults: Mutex::default(),
            counters: Counters::default(),
        });
        let routes = match mode {
            Mode::Live => Router::new()
                .route("/api/apps/{app}/nosql/documents", get(list).post(create))
                .route(
                    "/api/apps/{app}/nosql/documents/{key}",
                    get(live_read).put(live_update).delete(live_remove),
                ),
            Mode::Legacy => Router::new()
                .route("/api/apps/{app}/nosql/documents", get(list).post(create))
                .route(
                    "/api/apps/{app}/nosql/documents/key/{key}",
                    get(legacy_read),
                )
                .route(
                    "/api/apps/{app}/nosql/documents/{collection}/{key}",
                    axum::routing::put(legacy_update).delete(legacy_remove),
                ),
        };
        let app = routes
            .layer(middleware::from_fn_with_state(
                shared.clone(),
                inject_faults,
            ))
            .with_state(shared.clone());
        // Port 0: the OS picks a free port.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("binding the Mech emulator");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("Mech emulator serves");
        });
        MechEmulator {
            addr,
            shared,
            server,
        }
    }

    /// Starts an emulator in `mode` already holding [`FOREIGN_DOCUMENTS`] foreign documents.
    pub async fn start_shared(mode: Mode) -> Self {
        let emulator = Self::start_mode(mode).await;
        emulator.seed_foreign(FOREIGN_DOCUMENTS);
        emulator
    }

    /// The mode it speaks.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// `http://127.0.0.1:<port>`, the `MECH_BASE_URL` of this emulator.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A config pointing the mech backend here in the matching dialect, with
    /// key and secret, otherwise the documented defaults.
    pub fn config(&self) -> Config {
        Config {
            storage_backend: admp::config::StorageBackend::Mech,
            mech_base_url: self.base_url(),
            mech_app_id: Some(APP_ID.into()),
            mech_api_key: Some(API_KEY.into()),
            mech_api_secret: Some(API_SECRET.into()),
            mech_api_dialect: match self.shared.mode {
                Mode::Live => MechApiDialect::Live,
                Mode::Legacy => MechApiDialect::Legacy,
            },
            ..Config::default()
        }
    }

    /// The Mech settings of [`config`](Self::config).
    pub fn settings(&self) -> MechSettings {
        MechSettings::from_config(&self.config()).expect("emulator config is complete")
    }

    /// Delays every request by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults.lock().latency = latency;
    }

    /// Answers this fraction (0.0–1.0) of requests with a 500, unprocessed.
    pub fn set_error_rate(&self, rate: f64) {
        self.shared.faults.lock().error_rate = rate;
    }

    /// Answers every request 503 while `down`.
    pub fn set_outage(&self, down: bool) {
        self.shared.faults.lock().outage = down;
    }

    /// Makes the next `n` requests hang for `stall`, then answer 504 unprocessed.
    pub fn stall_next(&self, n: u64, stall: Duration) {
        let mut faults = self.shared.faults.lock();
        faults.stall_next = n;
        faults.stall_for = stall;
    }

    /// Answers the next `n` requests 429 asking for `wait`: live mode in the
    /// body only (`error.retryAfterMs`), legacy mode in `Retry-After` (whole seconds).
    pub fn throttle_next(&self, n: u64, wait: Duration) {
        let mut faults = self.shared.faults.lock();
        faults.throttle_next = n;
        faults.throttle_for = wait;
    }

    /// Answers the next `n` requests 200 with a body that is not JSON.
    pub fn garbage_next(&self, n: u64) {
        self.shared.faults.lock().garbage_next = n;
    }

    /// Caps list pages at `cap` documents whatever `limit` asks (`None`: the mode's own cap).
    pub fn set_page_cap(&self, cap: Option<usize>) {
        self.shared.faults.lock().page_cap = cap;
    }

    /// While on, every list answers as if `offset` were 0.
    pub fn set_ignore_offset(&self, on: bool) {
        self.shared.faults.lock().ignore_offset = on;
    }

    /// The request counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::SeqCst)
    }

    /// Starts counting the most concurrent requests afresh.
    pub fn reset_max_in_flight(&self) {
        self.shared
            .counters
            .max_in_flight
            .store(0, Ordering::SeqCst);
    }

    /// The hub's documents of a collection (payloads tagged with it).
    pub fn count(&self, collection: &str) -> usize {
        self.shared
            .documents
            .lock()
            .order
            .values()
            .filter(|d| {
                d.payload.get("_collection").and_then(Value::as_str) == Some(collection)
                    && d.payload.get("_key").is_some_and(Value::is_string)
                    && d.payload.get("record").is_some()
            })
            .count()
    }

    /// Every document in the app, the hub's and foreign ones.
    pub fn total(&self) -> usize {
        self.shared.documents.lock().order.len()
    }

    /// One of the hub's records, looked up behind the API (the envelope removed).
    pub fn document(&self, collection: &str, key: &str) -> Option<Value> {
        let id = MechClient::document_id(collection, key);
        let lookup = self.shared.lookup(collection, &id);
        let documents = self.shared.documents.lock();
        let at = documents.by_key.get(&lookup)?;
        documents.order[at].payload.get("record").cloned()
    }

    /// Stores one of the hub's records behind the API, enveloped as the
    /// client writes it (e.g. to seed a benchmark quickly).
    pub fn insert(&self, collection: &str, key: &str, record: Value) {
        let id = MechClient::document_id(collection, key);
        let payload = MechClient::envelope(collection, key, &record);
        self.put_raw(collection, &id, payload);
    }

    /// Stores a raw payload under `key` behind the API, replacing any.
    pub fn put_raw(&self, collection: &str, key: &str, payload: Value) {
        let lookup = self.shared.lookup(collection, key);
        let mut documents = self.shared.documents.lock();
        if let Some(at) = documents.by_key.get(&lookup).copied() {
            documents.order.get_mut(&at).unwrap().payload = payload;
            return;
        }
        let stored = Stored {
            id: uuid::Uuid::new_v4().to_string(),
            key: key.to_string(),
            collection: collection.to_string(),
            payload,
        };
        documents.insert(lookup, stored);
    }

    /// Writes a lock document as another hub would, heartbeat `age` ago.
    pub fn plant_lock(&self, holder: &str, age: Duration) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let at = now - age.as_millis() as i64;
        self.insert(
            LOCK_COLLECTION,
            LOCK_KEY,
            json!({ "holder": holder, "host": "elsewhere", "pid": 4242,
                    "started_at": at, "heartbeat_at": at, "stale_after_ms": 60_000 }),
        );
    }

    /// The holder named by the lock document, if there is one.
    pub fn lock_holder(&self) -> Option<String> {
        self.document(LOCK_COLLECTION, LOCK_KEY)
            .and_then(|r| r["holder"].as_str().map(str::to_string))
    }

    /// Adds `n` documents of other applications, in assorted shapes: other
    /// collections, our collection names without our tag, `_collection`
    /// tags of other apps, fields our records have, nested `data`/`document`.
    pub fn seed_foreign(&self, n: usize) {
        for i in 0..n {
            let (collection, payload) = match i % 8 {
                0 => (
                    "tasks",
                    json!({ "title": format!("task {i}"), "done": i % 3 == 0 }),
                ),
                1 => (
                    "admp_agents",
                    json!({ "agent_id": format!("foreign-{i}"), "note": "another app, same collection name" }),
                ),
                2 => (
                    "notes",
                    json!({ "_collection": "notes", "text": "x".repeat(i % 50) }),
                ),
                3 => (
                    "admp_messages",
                    json!({ "_collection": "admp_messages", "message": { "id": i } }),
                ),
                4 => (
                    "events",
                    json!({ "data": { "document": { "seq": i, "kind": "foreign" } } }),
                ),
                5 => (
                    "admp_audit",
                    json!({ "_collection": 42, "seq": i, "hash": "not ours" }),
                ),
                6 => (
                    "blobs",
                    json!({ "content": { "__type": "blob_ref", "provider": "r2",
                        "url": "https://example.invalid/x", "key": "k", "size": 10 } }),
                ),
                _ => (
                    "misc",
                    json!({ "list": [1, 2, 3], "nested": { "_key": "k" } }),
                ),
            };
            let key = if i % 5 == 0 {
                uuid::Uuid::new_v4().to_string()
            } else {
                format!("foreign-{collection}-{i}")
            };
            self.put_raw(collection, &key, payload);
        }
    }
}

/// Takes one from a countdown switch; true if it was armed.
fn take(counter: &mut u64) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "success": false, "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `X-Mech-API-Key` + `X-Mech-API-Secret`, or `X-API-Key` alone.
fn authorised(headers: &HeaderMap) -> bool {
    let pair = header(headers, "x-mech-api-key") == Some(API_KEY)
        && header(headers, "x-mech-api-secret") == Some(API_SECRET);
    let single = header(headers, "x-api-key") == Some(API_KEY);
    pair || single
}

/// The `X-App-ID` rule, authentication, then the armed faults, then the handler.
async fn inject_faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&shared.counters);
    if let Some(app_id) = header(request.headers(), "x-app-id") {
        if shared.mode == Mode::Live {
            shared
                .counters
                .app_id_headers
                .fetch_add(1, Ordering::SeqCst);
            return error(
                StatusCode::NOT_FOUND,
                "TABLE_NOT_FOUND",
                "table app_admp-test-app_admp-test-app_documents does not exist",
            );
        }
        if app_id != APP_ID {
            return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "wrong X-App-ID");
        }
    }
    if !authorised(request.headers()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "bad API key or secret",
        );
    }
    let (latency, outage, stall, throttle, garbage, fail) = {
        let mut faults = shared.faults.lock();
        let stall = take(&mut faults.stall_next).then_some(faults.stall_for);
        let throttle = take(&mut faults.throttle_next).then_some(faults.throttle_for);
        let garbage = take(&mut faults.garbage_next);
        let fail = faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate;
        (
            faults.latency,
            faults.outage,
            stall,
            throttle,
            garbage,
            fail,
        )
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let injected = || shared.counters.injected.fetch_add(1, Ordering::SeqCst);
    if outage {
        injected();
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "emulated outage",
        );
    }
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
        injected();
        return error(StatusCode::GATEWAY_TIMEOUT, "TIMEOUT", "emulated stall");
    }
    if let Some(wait) = throttle {
        injected();
        return match shared.mode {
            Mode::Live => (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({ "success": false, "error": {
                    "code": "RATE_LIMIT_EXCEEDED", "message": "slow down",
                    "retryAfterMs": wait.as_millis() as u64 } })),
            )
                .into_response(),
            Mode::Legacy => {
                let mut response =
                    error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "slow down");
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs_f64().ceil() as u64),
                );
                response
            }
        };
    }
    if garbage {
        injected();
        return (StatusCode::OK, "<html>upstream proxy error</html>").into_response();
    }
    if fail {
        injected();
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "injected failure",
        );
    }
    next.run(request).await
}

/// The 404 of an app this emulator does not serve, if `app` is one.
fn wrong_app(app: &str) -> Option<Response> {
    (app != APP_ID).then(|| error(StatusCode::NOT_FOUND, "APP_NOT_FOUND", "no such app"))
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such document")
}

/// A record as a list returns it: live `{id, document_id, document}`,
/// legacy `{collection_name, document_key, data}`.
fn listed(mode: Mode, stored: &Stored) -> Value {
    match mode {
        Mode::Live => json!({ "id": stored.id, "document_id": stored.key,
            "document": stored.payload }),
        Mode::Legacy => json!({ "collection_name": stored.collection,
            "document_key": stored.key, "data": stored.payload }),
    }
}

/// The request body's `data`, which must be an object.
fn body_data(body: &Value) -> Option<&Value> {
    body.get("data").filter(|d| d.is_object())
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "INVALID_JSON", "body is not JSON");
    };
    // Live: `document_id` (a `document_key` is ignored; without an id the
    // server makes one). Legacy: `document_key` is required.
    let key_field = match shared.mode {
        Mode::Live => "document_id",
        Mode::Legacy => "document_key",
    };
    let (Some(collection), Some(data)) = (body["collection_name"].as_str(), body_data(&body))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "collection_name and data (an object) are required",
        );
    };
    let id = uuid::Uuid::new_v4().to_string();
    let key = match (body[key_field].as_str(), shared.mode) {
        (Some(key), _) => key.to_string(),
        (None, Mode::Live) => id.clone(),
        (None, Mode::Legacy) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "document_key is required",
            );
        }
    };
    let lookup = shared.lookup(collection, &key);
    let mut documents = shared.documents.lock();
    if documents.by_key.contains_key(&lookup) {
        return error(StatusCode::CONFLICT, "DUPLICATE_KEY", "document exists");
    }
    let stored = Stored {
        id: id.clone(),
        key: key.clone(),
        collection: collection.to_string(),
        payload: data.clone(),
    };
    let answer = match shared.mode {
        Mode::Live => json!({ "success": true, "data": { "id": id, "document_id": key } }),
        Mode::Legacy => {
            json!({ "success": true, "data": { "document": listed(Mode::Legacy, &stored) } })
        }
    };
    documents.insert(lookup, stored);
    shared.counters.writes.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn live_read(
    State(shared): State<Arc<Shared>>,
    Path((app, key)): Path<(String, String)>,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let documents = shared.documents.lock();
    let Some(at) = documents.find(&key) else {
        return not_found();
    };
    let stored = &documents.order[&at];
    axum::Json(json!({ "success": true, "data": {
        "id": stored.id, "document_id": stored.key,
        "document": { "data": stored.payload, "wasDowngraded": false, "blobCount": 0 } } }))
    .into_response()
}

async fn live_update(
    State(shared): State<Arc<Shared>>,
    Path((app, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let body = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    let Some(data) = body_data(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "data (an object) is required",
        );
    };
    let mut documents = shared.documents.lock();
    let Some(at) = documents.find(&key) else {
        return not_found();
    };
    let stored = documents.order.get_mut(&at).unwrap();
    // Full replacement: no merge.
    stored.payload = data.clone();
    shared.counters.writes.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({ "success": true, "data": { "id": stored.id, "document_id": stored.key } }))
        .into_response()
}

async fn live_remove(
    State(shared): State<Arc<Shared>>,
    Path((app, key)): Path<(String, String)>,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let mut documents = shared.documents.lock();
    let Some(at) = documents.find(&key) else {
        return not_found();
    };
    documents.remove(at);
    shared.counters.writes.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({ "success": true })).into_response()
}

#[derive(Deserialize)]
struct CollectionQuery {
    collection_name: String,
}

async fn legacy_read(
    State(shared): State<Arc<Shared>>,
    Path((app, key)): Path<(String, String)>,
    Query(query): Query<CollectionQuery>,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let documents = shared.documents.lock();
    let lookup = shared.lookup(&query.collection_name, &key);
    match documents.by_key.get(&lookup) {
        Some(at) => axum::Json(json!({
            "success": true,
            "data": { "document": listed(Mode::Legacy, &documents.order[at]) }
        }))
        .into_response(),
        None => not_found(),
    }
}

async fn legacy_update(
    State(shared): State<Arc<Shared>>,
    Path((app, collection, key)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let Some(patch) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("data").and_then(Value::as_object).cloned())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "data (an object) is required",
        );
    };
    let lookup = shared.lookup(&collection, &key);
    let mut documents = shared.documents.lock();
    let Some(at) = documents.by_key.get(&lookup).copied() else {
        return not_found();
    };
    let stored = documents.order.get_mut(&at).unwrap();
    // The pessimistic reading of the older API: top-level fields merge.
    if let Value::Object(existing) = &mut stored.payload {
        for (field, value) in patch {
            existing.insert(field, value);
        }
    }
    let answer = json!({ "success": true, "data": { "document": listed(Mode::Legacy, stored) } });
    shared.counters.writes.fetch_add(1, Ordering::SeqCst);
    axum::Json(answer).into_response()
}

async fn legacy_remove(
    State(shared): State<Arc<Shared>>,
    Path((app, collection, key)): Path<(String, String, String)>,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let lookup = shared.lookup(&collection, &key);
    let mut documents = shared.documents.lock();
    let Some(at) = documents.by_key.get(&lookup).copied() else {
        return not_found();
    };
    documents.remove(at);
    shared.counters.writes.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    collection_name: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    shared.counters.lists.fetch_add(1, Ordering::SeqCst);
    let (cap, ignore_offset) = {
        let faults = shared.faults.lock();
        (faults.page_cap, faults.ignore_offset)
    };
    let mode_cap = match shared.mode {
        Mode::Live => MAX_PAGE,
        Mode::Legacy => LEGACY_MAX_PAGE,
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, cap.unwrap_or(mode_cap).min(mode_cap));
    let offset = if ignore_offset {
        0
    } else {
        query.offset.unwrap_or(0)
    };
    let documents = shared.documents.lock();
    // Live: every collection, whatever `collection_name` says. Legacy: filtered.
    let matching: Vec<&Stored> = documents
        .order
        .values()
        .filter(|d| {
            shared.mode == Mode::Live || query.collection_name.as_deref() == Some(&d.collection)
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|d| listed(shared.mode, d))
        .collect();
    match shared.mode {
        Mode::Live => axum::Json(json!({ "success": true, "data": page })).into_response(),
        Mode::Legacy => {
            let total = matching.len();
            axum::Json(json!({
                "success": true,
                "data": {
                    "documents": page,
                    "pagination": { "limit": limit, "offset": offset, "total": total,
                                    "has_more": offset + limit < total }
                }
            }))
            .into_response()
        }
    }
}
