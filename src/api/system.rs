//! Probes, hub statistics, the OpenAPI document and the JSON fallbacks.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Authed, bearer_token};
use super::openapi::{ANY, AUTHED, GATED, OPEN};
use crate::hub::HubError;
use crate::route_errors;

/// Liveness response.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// Always `healthy`.
    pub status: &'static str,
    /// Server time, ISO-8601.
    pub timestamp: String,
    pub version: &'static str,
}

// Probes are never rate-limited: only a panic can fail them.
route_errors!(ProbeErrors: ANY);

/// Liveness probe: cheap, never touches storage.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, body = HealthResponse), ProbeErrors))]
pub async fn health() -> Json<HealthResponse> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Json(HealthResponse {
        status: "healthy",
        timestamp,
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// What each readiness check found.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyChecks {
    /// `ok`, or why storage did not answer.
    pub store: String,
}

/// Readiness response (200 and 503 alike).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    pub checks: ReadyChecks,
}

/// Readiness probe: 200 when storage answers, else 503. Never rate-limited,
/// so its store work is bounded here instead: see [`ReadyProbe`].
#[utoipa::path(get, path = "/ready", tag = "system",
    responses((status = 200, description = "storage answers", body = ReadyResponse),
        (status = 503, description = "storage does not answer", body = ReadyResponse),
        ProbeErrors))]
pub async fn ready(State(app): State<AppState>) -> Response {
    let (status, state, store) = match app.ready.check(&app).await {
        Ok(()) => (StatusCode::OK, "ready", "ok".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    let body = ReadyResponse {
        status: state,
        checks: ReadyChecks { store },
    };
    (status, Json(body)).into_response()
}

/// How long one store ping answers `/ready` for everyone.
const READY_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The last `/ready` answer. Probes are exempt from rate limits, so a flood
/// of them costs at most one store ping per [`READY_FRESH`]: concurrent
/// probes wait for the one ping in flight and share its result.
#[derive(Default)]
pub struct ReadyProbe {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl ReadyProbe {
    async fn check(&self, app: &AppState) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < READY_FRESH
        {
            return result.clone();
        }
        let result = app.hub.store.ping().await.map_err(|e| e.to_string());
        *last = Some((std::time::Instant::now(), result.clone()));
        result
    }
}

route_errors!(MetricsErrors: OPEN, &["AUTH_REQUIRED", "INVALID_API_KEY"]);

/// Prometheus metrics of this hub (see docs/OPERATIONS.md). Open like the
/// probes, unless `METRICS_REQUIRE_KEY=true` (then the master key).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
        MetricsErrors))]
pub async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if app.hub.config.metrics_require_key {
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| bearer_token(&headers));
        match key {
            None => return Err(HubError::AuthRequired.into()),
            Some(key) if !app.hub.is_master_key(key) => {
                return Err(HubError::InvalidApiKey.into());
            }
            Some(_) => {}
        }
    }
    // Counts by state come from storage at scrape time; if it does not
    // answer, the scrape still reports everything else (and the failed call).
    if let Ok(stats) = app.hub.store.stats().await {
        app.hub.metrics.set_counts(&stats);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.hub.metrics.render(),
    )
        .into_response())
}

/// Agent counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentCounts {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
}

/// Message counts by state (`failed` is always 0, kept for compatibility).
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageCounts {
    pub total: u64,
    pub queued: u64,
    pub leased: u64,
    pub acked: u64,
    pub expired: u64,
    pub dead: u64,
    pub failed: u64,
}

/// Hub statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    pub agents: AgentCounts,
    pub messages: MessageCounts,
}

route_errors!(StatsErrors: AUTHED, GATED);

/// Hub-wide counts (behind the API key gate when `API_KEY_REQUIRED`).
#[utoipa::path(get, path = "/api/stats", tag = "system",
    responses((status = 200, body = StatsResponse), StatsErrors))]
pub async fn stats(State(app): State<AppState>, req: Authed) -> ApiResult<Json<StatsResponse>> {
    app.hub.authorize_gate(&req.caller)?;
    let s = app.hub.store.stats().await.map_err(HubError::from)?;
    Ok(Json(StatsResponse {
        agents: AgentCounts {
            total: s.agents_total,
            online: s.agents_online,
            offline: s.agents_total - s.agents_online,
        },
        messages: MessageCounts {
            total: s.messages.total,
            queued: s.messages.queued,
            leased: s.messages.leased,
            acked: s.messages.acked,
            expired: s.messages.expired,
            dead: s.messages.dead,
            failed: 0,
        },
    }))
}

/// Unknown route.
pub async fn not_found() -> ApiError {
    no_such_route()
}

/// The 404 of a path nothing serves.
pub fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this route",
    )
}
