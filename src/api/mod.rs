//! HTTP: the router, one module per resource, extractors, and the single
//! error-to-response mapping. Handlers translate HTTP to hub calls and back;
//! they hold no protocol rules.

pub mod admin;
pub mod agents;
pub mod audit;
pub mod console;
pub mod error;
pub mod extract;
pub mod groups;
pub mod messages;
pub mod observe;
pub mod openapi;
pub mod ratelimit;
pub mod stream;
pub mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;
use utoipa::OpenApi;

use crate::hub::Hub;
use error::{ApiError, ErrorCode};
use observe::AuditThrottle;
use ratelimit::RateLimits;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    /// `None` when `RATE_LIMIT_ENABLED=false`.
    pub limits: Option<Arc<RateLimits>>,
    /// Keeps floods of refused requests from flooding the audit log.
    pub throttle: Arc<AuditThrottle>,
    /// Counters of the sweeper and the webhook worker (the console shows them).
    pub jobs: crate::jobs::JobStats,
    /// Operator console sessions and login limits (`None` when disabled).
    pub console: Option<Arc<console::ConsoleState>>,
    /// Bounds the store work of `/ready`, which is never rate-limited.
    pub ready: Arc<system::ReadyProbe>,
}

/// How often the housekeeping task folds metric samples into buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How often it forgets idle rate-limit keys and audit-throttle windows.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl AppState {
    /// The state of a hub's HTTP application, limiters built from its config.
    pub fn new(hub: Arc<Hub>) -> Self {
        AppState {
            limits: RateLimits::from_config(&hub.config),
            throttle: Arc::new(AuditThrottle::default()),
            jobs: crate::jobs::JobStats::default(),
            console: hub
                .config
                .console_enabled
                .then(|| Arc::new(console::ConsoleState::default())),
            ready: Arc::default(),
            hub,
        }
    }

    /// Keeps memory bounded until shutdown: buffered histogram samples every
    /// few seconds, idle rate-limit keys and throttle windows every minute.
    pub async fn housekeeping(self) {
        let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = upkeep.tick() => self.hub.metrics.upkeep(),
                _ = prune.tick() => {
                    if let Some(limits) = &self.limits {
                        limits.retain_recent();
                    }
                    self.throttle.prune();
                    if let Some(console) = &self.console {
                        console.prune(self.hub.clock.now_ms());
                    }
                }
                _ = self.hub.shutdown.cancelled() => return,
            }
        }
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "ADMP hub", description = "Agent Dispatch Messaging Protocol: an inbox for every agent."),
    paths(
        system::health, system::ready, system::metrics, system::stats, audit::list_audit,
        admin::export_store,
        agents::register, agents::get_agent, agents::delete_agent, agents::heartbeat,
        agents::list_trusted, agents::add_trusted, agents::remove_trusted,
        agents::set_webhook, agents::get_webhook, agents::delete_webhook, agents::webhook_deliveries,
        agents::rotate_key, agents::create_session,
        messages::send, messages::reply, messages::status,
        messages::pull, messages::ack, messages::batch_ack, messages::nack,
        messages::inbox_stats, messages::reclaim, messages::dead_letters, messages::requeue,
        groups::create_group, groups::get_group, groups::update_group, groups::delete_group,
        groups::list_members, groups::add_member, groups::remove_member,
        groups::join_group, groups::leave_group, groups::post_message, groups::history,
        groups::agent_groups,
        messages::peek, stream::stream,
    ),
    tags((name = "agents"), (name = "messages"), (name = "inbox"), (name = "system"),
        (name = "groups"))
)]
pub struct ApiDoc;

/// Builds the whole HTTP application.
///
/// Three groups of routes, by how they are rate-limited (see
/// [`ratelimit`]): open routes and registration per client IP by
/// tower_governor layers, everything else per caller inside `Authed`.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.hub.config.cors_origin);
    // Probes are never rate-limited: an orchestrator must not restart a
    // healthy hub because someone flooded from the same address (SECURITY.md).
    let probes = Router::new()
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .with_state(state.clone());
    let mut open = Router::new()
        .route("/metrics", get(system::metrics))
        .merge(openapi::docs_router())
        .with_state(state.clone());
    let mut register = Router::new()
        .route("/api/agents/register", post(agents::register))
        .with_state(state.clone());
    if let Some(limits) = &state.limits {
        open = open.layer(limits.ip_layer());
        register = register.layer(limits.register_layer());
    }
    let api = Router::new()
        .route("/api/stats", get(system::stats))
        .route("/api/audit", get(audit::list_audit))
        .route("/api/admin/export", get(admin::export_store))
        .route(
            "/api/agents/{agent_id}",
            get(agents::get_agent).delete(agents::delete_agent),
        )
        .route("/api/agents/{agent_id}/heartbeat", post(agents::heartbeat))
        .route(
            "/api/agents/{agent_id}/trusted",
            get(agents::list_trusted).post(agents::add_trusted),
        )
        .route(
            "/api/agents/{agent_id}/trusted/{other}",
            axum::routing::delete(agents::remove_trusted),
        )
        .route(
            "/api/agents/{agent_id}/webhook",
            post(agents::set_webhook)
                .get(agents::get_webhook)
                .delete(agents::delete_webhook),
        )
        .route(
            "/api/agents/{agent_id}/webhook/deliveries",
            get(agents::webhook_deliveries),
        )
        .route(
            "/api/agents/{agent_id}/rotate-key",
            post(agents::rotate_key),
        )
        .route(
            "/api/agents/{agent_id}/session",
            post(agents::create_session),
        )
        .route("/api/agents/{agent_id}/messages", post(messages::send))
        .route(
            "/api/agents/{agent_id}/messages/{message_id}/reply",
            post(messages::reply),
        )
        .route(
            "/api/agents/{agent_id}/messages/{message_id}/ack",
            post(messages::ack),
        )
        .route(
            "/api/agents/{agent_id}/messages/{message_id}/nack",
            post(messages::nack),
        )
        .route(
            "/api/agents/{agent_id}/messages/{message_id}/requeue",
            post(messages::requeue),
        )
        .route("/api/agents/{agent_id}/inbox/pull", post(messages::pull))
        .route(
            "/api/agents/{agent_id}/inbox/ack",
            post(messages::batch_ack),
        )
        .route(
            "/api/agents/{agent_id}/inbox/stats",
            get(messages::inbox_stats),
        )
        .route("/api/agents/{agent_id}/inbox/peek", get(messages::peek))
        .route("/api/agents/{agent_id}/inbox/stream", get(stream::stream))
        .route(
            "/api/agents/{agent_id}/inbox/reclaim",
            post(messages::reclaim),
        )
        .route(
            "/api/agents/{agent_id}/inbox/dead",
            get(messages::dead_letters),
        )
        .route("/api/messages/{message_id}/status", get(messages::status))
        .route("/api/groups", post(groups::create_group))
        .route(
            "/api/groups/{group_id}",
            get(groups::get_group)
                .put(groups::update_group)
                .delete(groups::delete_group),
        )
        .route(
            "/api/groups/{group_id}/members",
            get(groups::list_members).post(groups::add_member),
        )
        .route(
            "/api/groups/{group_id}/members/{agent_id}",
            axum::routing::delete(groups::remove_member),
        )
        .route("/api/groups/{group_id}/join", post(groups::join_group))
        .route("/api/groups/{group_id}/leave", post(groups::leave_group))
        .route(
            "/api/groups/{group_id}/messages",
            post(groups::post_message).get(groups::history),
        )
        .route("/api/agents/{agent_id}/groups", get(groups::agent_groups))
        .with_state(state.clone());

    let console = console::router(&state);
    Router::new()
        .merge(probes)
        .merge(open)
        .merge(register)
        .merge(api)
        .merge(console)
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        // Bodies are read and bounded by our own extractor (413 as JSON).
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state,
            observe::observe,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(cors)
}

/// The span every log line of a request carries: request id, method, route
/// template and path; `agent_id` and `client_ip` are filled in once known.
fn request_span<B>(req: &Request<B>) -> Span {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(observe::UNMATCHED_ROUTE, MatchedPath::as_str);
    tracing::info_span!(
        "request",
        request_id,
        method = %req.method(),
        route,
        path = %req.uri().path(),
        agent_id = tracing::field::Empty,
        client_ip = tracing::field::Empty,
    )
}

/// One access-log line per request, inside its span; refusals name their code.
fn log_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    let error = response.extensions().get::<ErrorCode>().map(|c| c.0);
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_micros() as f64 / 1000.0,
        error,
        "request finished"
    );
}

fn cors_layer(origin: &str) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods(Any)
        .allow_headers(Any)
        .max_age(Duration::from_secs(600));
    if origin.trim() == "*" {
        return layer.allow_origin(Any);
    }
    let origins: Vec<HeaderValue> = origin
        .split(',')
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    layer.allow_origin(AllowOrigin::list(origins))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "internal error",
    )
    .into_response()
}
