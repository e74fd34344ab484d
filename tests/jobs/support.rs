//! Shared helpers: bounded waiting, stored messages, and a local webhook receiver.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admp::store::Message;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::json;

/// Longest any test waits for a background effect before failing.
const WAIT_LIMIT: Duration = Duration::from_secs(15);

/// Polls `probe` every 10 ms until it yields a value; panics naming `what`
/// after [`WAIT_LIMIT`]. This waits for an effect, never for a fixed time.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A queued message as the hub would store it, built directly for store-level tests.
pub fn message(id: &str, recipient: &str, now: i64, ttl_ms: i64) -> Message {
    Message::queued(
        id.to_string(),
        recipient.to_string(),
        "alice".to_string(),
        json!({"version": "1.0", "subject": id}).into(),
        now,
        ttl_ms,
    )
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with a `Retry-After` header (seconds).
    StatusRetryAfter(u16, u64),
    /// A redirect to the given path of the receiver.
    Redirect(&'static str),
    /// Never answers: the hub must give up at its timeout.
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    /// A header as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("header {name} missing"))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

struct Script {
    replies: Mutex<VecDeque<Reply>>,
    /// Used once the scripted replies run out.
    fallback: Reply,
    received: Mutex<Vec<Received>>,
}

/// A real HTTP receiver on 127.0.0.1. It binds port 0, so the OS picks a free
/// port and tests run in parallel without clashing.
pub struct Receiver {
    pub base: String,
    script: Arc<Script>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver that answers with `replies` in order, then `then` forever.
    pub async fn start(replies: Vec<Reply>, then: Reply) -> Receiver {
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            fallback: then,
            received: Mutex::default(),
        });
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(script.clone());
        // Port 0: the OS picks a free port.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            base,
            script,
            server,
        }
    }

    /// The webhook URL of this receiver.
    pub fn url(&self) -> String {
        format!("{}/hook", self.base)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.script.received.lock().clone()
    }

    /// Waits until at least `n` requests arrived and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} webhook request(s)"), || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(script): State<Arc<Script>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.received.lock().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = script
        .replies
        .lock()
        .pop_front()
        .unwrap_or_else(|| script.fallback.clone());
    match reply {
        Reply::Status(code) => status(code).into_response(),
        Reply::StatusRetryAfter(code, seconds) => {
            let mut response = status(code).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
        Reply::Redirect(path) => {
            let mut response = StatusCode::FOUND.into_response();
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static(path));
            response
        }
        Reply::Hang => std::future::pending().await,
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}
