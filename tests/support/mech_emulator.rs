//! An in-memory Mech Storage emulator for tests and the sweep benchmark: the
//! NoSQL document endpoints the Mech backend uses, on port 0 (the OS picks a
//! free port, so emulators of parallel tests never collide), with switches
//! for the faults a slow, failing network produces:
//!
//! - `set_latency`: every request waits this long before it is handled;
//! - `set_error_rate`: that fraction of requests is answered 500 unprocessed;
//! - `stall_next`: the next n requests hang for a while, then get 504
//!   unprocessed (a client with a shorter timeout has given up by then);
//! - `throttle_next`: the next n requests get 429 with `Retry-After`;
//! - `garbage_next`: the next n requests get a 200 that is not JSON;
//! - `set_outage`: everything is answered 503 until switched back.
//!
//! List pages are capped at [`MAX_PAGE`] documents, smaller than the client's
//! page size, so every scan exercises pagination (`offset`, `has_more`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use admp::config::Config;
use admp::store::mech::MechSettings;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

/// The application id the emulator serves.
pub const APP_ID: &str = "admp-test-app";
/// The API key the emulator accepts (anything else is 401).
pub const API_KEY: &str = "mech-test-key";
/// Largest list page returned, whatever `limit` asks.
pub const MAX_PAGE: usize = 50;

/// The fault switches (see the module docs).
#[derive(Debug, Clone, Default)]
struct Faults {
    latency: Duration,
    error_rate: f64,
    outage: bool,
    stall_next: u64,
    stall_for: Duration,
    throttle_next: u64,
    throttle_retry_after_sec: u64,
    garbage_next: u64,
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

#[derive(Default)]
struct Shared {
    /// collection → key → stored data.
    documents: Mutex<HashMap<String, BTreeMap<String, Value>>>,
    faults: Mutex<Faults>,
    counters: Counters,
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
    /// Starts an empty emulator on 127.0.0.1, port 0 (the OS picks a free port).
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/api/apps/{app}/nosql/documents", get(list).post(create))
            .route("/api/apps/{app}/nosql/documents/key/{key}", get(read))
            .route(
                "/api/apps/{app}/nosql/documents/{collection}/{key}",
                put(update).delete(remove),
            )
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

    /// `http://127.0.0.1:<port>`, the `MECH_BASE_URL` of this emulator.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A config pointing the mech backend here, otherwise the documented defaults.
    pub fn config(&self) -> Config {
        Config {
            storage_backend: admp::config::StorageBackend::Mech,
            mech_base_url: self.base_url(),
            mech_app_id: Some(APP_ID.into()),
            mech_api_key: Some(API_KEY.into()),
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

    /// Answers the next `n` requests 429 with `Retry-After: retry_after_sec`.
    pub fn throttle_next(&self, n: u64, retry_after_sec: u64) {
        let mut faults = self.shared.faults.lock();
        faults.throttle_next = n;
        faults.throttle_retry_after_sec = retry_after_sec;
    }

    /// Answers the next `n` requests 200 with a body that is not JSON.
    pub fn garbage_next(&self, n: u64) {
        self.shared.faults.lock().garbage_next = n;
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

    /// Documents in a collection.
    pub fn count(&self, collection: &str) -> usize {
        self.shared
            .documents
            .lock()
            .get(collection)
            .map_or(0, BTreeMap::len)
    }

    /// One stored document, looked up behind the API.
    pub fn document(&self, collection: &str, key: &str) -> Option<Value> {
        self.shared
            .documents
            .lock()
            .get(collection)
            .and_then(|c| c.get(key).cloned())
    }

    /// Stores a document behind the API (e.g. to seed a benchmark quickly).
    pub fn insert(&self, collection: &str, key: &str, data: Value) {
        self.shared
            .documents
            .lock()
            .entry(collection.to_string())
            .or_default()
            .insert(key.to_string(), data);
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
        axum::Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// Authentication, then the armed faults, then the real handler.
async fn inject_faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&shared.counters);
    let authorised = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        == Some(API_KEY)
        && request
            .headers()
            .get("x-app-id")
            .and_then(|v| v.to_str().ok())
            == Some(APP_ID);
    if !authorised {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "bad X-API-Key or X-App-ID",
        );
    }
    let (latency, outage, stall, throttle, garbage, fail) = {
        let mut faults = shared.faults.lock();
        let stall = take(&mut faults.stall_next).then_some(faults.stall_for);
        let throttle = take(&mut faults.throttle_next).then_some(faults.throttle_retry_after_sec);
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
    if let Some(retry_after) = throttle {
        injected();
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "slow down");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
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

fn record(collection: &str, key: &str, data: &Value) -> Value {
    json!({ "collection_name": collection, "document_key": key, "data": data })
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
    let (Some(collection), Some(key), Some(data)) = (
        body["collection_name"].as_str(),
        body["document_key"].as_str(),
        body.get("data").filter(|d| d.is_object()),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "collection_name, document_key and data (an object) are required",
        );
    };
    let mut documents = shared.documents.lock();
    let collection_docs = documents.entry(collection.to_string()).or_default();
    if collection_docs.contains_key(key) {
        return error(StatusCode::CONFLICT, "DUPLICATE_KEY", "document_key exists");
    }
    collection_docs.insert(key.to_string(), data.clone());
    shared.counters.writes.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::CREATED,
        axum::Json(
            json!({ "success": true, "data": { "document": record(collection, key, data) } }),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CollectionQuery {
    collection_name: String,
}

async fn read(
    State(shared): State<Arc<Shared>>,
    Path((app, key)): Path<(String, String)>,
    Query(query): Query<CollectionQuery>,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let documents = shared.documents.lock();
    match documents
        .get(&query.collection_name)
        .and_then(|c| c.get(&key))
    {
        Some(data) => axum::Json(json!({
            "success": true,
            "data": { "document": record(&query.collection_name, &key, data) }
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such document"),
    }
}

async fn update(
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
    let mut documents = shared.documents.lock();
    let Some(Value::Object(existing)) =
        documents.get_mut(&collection).and_then(|c| c.get_mut(&key))
    else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such document");
    };
    // Partial merge: top-level fields of the patch replace the stored ones.
    for (field, value) in patch {
        existing.insert(field, value);
    }
    let merged = Value::Object(existing.clone());
    shared.counters.writes.fetch_add(1, Ordering::SeqCst);
    axum::Json(
        json!({ "success": true, "data": { "document": record(&collection, &key, &merged) } }),
    )
    .into_response()
}

async fn remove(
    State(shared): State<Arc<Shared>>,
    Path((app, collection, key)): Path<(String, String, String)>,
) -> Response {
    if let Some(refused) = wrong_app(&app) {
        return refused;
    }
    let removed = shared
        .documents
        .lock()
        .get_mut(&collection)
        .and_then(|c| c.remove(&key));
    match removed {
        Some(_) => {
            shared.counters.writes.fetch_add(1, Ordering::SeqCst);
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such document"),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    collection_name: String,
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
    let limit = query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let offset = query.offset.unwrap_or(0);
    let documents = shared.documents.lock();
    let empty = BTreeMap::new();
    let collection = documents.get(&query.collection_name).unwrap_or(&empty);
    let page: Vec<Value> = collection
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(key, data)| record(&query.collection_name, key, data))
        .collect();
    let total = collection.len();
    axum::Json(json!({
        "success": true,
        "data": {
            "documents": page,
            "pagination": {
                "limit": limit,
                "offset": offset,
                "total": total,
                "has_more": offset + limit < total,
            }
        }
    }))
    .into_response()
}
