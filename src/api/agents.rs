//! `/api/agents/...`: registration and the agent's own record, trust list,
//! webhook, key rotation and session tokens.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, ApiQuery, Authed};
use super::openapi::{AGENT_SCOPE, AUTHED, JSON_BODY, PARAMS};
use crate::audit::AuditKind;
use crate::hub::Registration;
use crate::route_errors;
use crate::store::{Agent, DeliveryAttempt};

/// `POST /api/agents/register` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// 1-255 chars of `[A-Za-z0-9._:-]`; generated as `agent-<uuid>` when absent.
    pub agent_id: Option<String>,
    /// Defaults to `generic`.
    pub agent_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// Base64 Ed25519 public key (recommended: the secret never leaves the client).
    pub public_key: Option<String>,
}

/// Heartbeat block of an agent record.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatView {
    pub last_heartbeat: i64,
    /// `online` or `offline`.
    pub status: &'static str,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// One public key of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub public_key: String,
    pub version: u32,
    pub valid_until: Option<i64>,
}

/// `POST /api/agents/register` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterResponse {
    pub agent_id: String,
    pub agent_type: String,
    pub public_key: String,
    pub key_version: u32,
    /// tweetnacl secret key (base64 of 64 bytes), only when the server generated the pair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub heartbeat: HeartbeatView,
}

/// An agent record as agents see it: never any secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    pub agent_id: String,
    pub agent_type: String,
    pub public_key: String,
    pub key_version: u32,
    pub public_keys: Vec<KeyView>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub webhook_url: Option<String>,
    pub webhook_configured: bool,
    pub trusted_agents: Vec<String>,
    pub heartbeat: HeartbeatView,
    pub created_at: i64,
    pub updated_at: i64,
}

fn heartbeat_view(agent: &Agent) -> HeartbeatView {
    HeartbeatView {
        last_heartbeat: agent.last_heartbeat,
        status: if agent.online { "online" } else { "offline" },
        interval_ms: agent.heartbeat_interval_ms,
        timeout_ms: agent.heartbeat_timeout_ms,
    }
}

fn current_public_key(agent: &Agent) -> String {
    agent
        .current_key()
        .map(|k| k.public_key.clone())
        .unwrap_or_default()
}

impl From<&Agent> for AgentView {
    fn from(agent: &Agent) -> Self {
        AgentView {
            agent_id: agent.agent_id.clone(),
            agent_type: agent.agent_type.clone(),
            public_key: current_public_key(agent),
            key_version: agent.key_version(),
            public_keys: agent
                .keys
                .iter()
                .map(|k| KeyView {
                    public_key: k.public_key.clone(),
                    version: k.version,
                    valid_until: k.valid_until,
                })
                .collect(),
            metadata: agent.metadata.clone(),
            webhook_url: agent.webhook_url.clone(),
            webhook_configured: agent.webhook_url.is_some(),
            trusted_agents: agent.trusted_agents.clone(),
            heartbeat: heartbeat_view(agent),
            created_at: agent.created_at,
            updated_at: agent.updated_at,
        }
    }
}

route_errors!(RegisterErrors: AUTHED, JSON_BODY, &["AGENT_EXISTS", "AGENT_ID_RETIRED", "METADATA_TOO_LARGE"]);

/// Registers an agent.
#[utoipa::path(post, path = "/api/agents/register", tag = "agents",
    request_body = RegisterRequest,
    responses((status = 201, body = RegisterResponse), RegisterErrors))]
pub async fn register(
    State(app): State<AppState>,
    req: Authed,
) -> ApiResult<(StatusCode, Json<RegisterResponse>)> {
    let body: RegisterRequest = req.json()?;
    let registered = app
        .hub
        .register(Registration {
            agent_id: body.agent_id,
            agent_type: body.agent_type,
            metadata: body.metadata,
            webhook_url: body.webhook_url,
            webhook_secret: body.webhook_secret,
            public_key: body.public_key,
        })
        .await?;
    let agent = registered.agent;
    let detail = json!({
        "agent_type": agent.agent_type,
        "key_generated_by_hub": registered.secret_key.is_some(),
        "webhook_url": agent.webhook_url,
    });
    app.audit(&req, AuditKind::AgentRegistered, &agent.agent_id, detail)
        .await;
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            public_key: current_public_key(&agent),
            key_version: agent.key_version(),
            heartbeat: heartbeat_view(&agent),
            agent_id: agent.agent_id,
            agent_type: agent.agent_type,
            secret_key: registered.secret_key,
            webhook_url: agent.webhook_url,
            webhook_secret: agent.webhook_secret,
            metadata: agent.metadata,
        }),
    ))
}

route_errors!(AgentErrors: AUTHED, AGENT_SCOPE, PARAMS);

/// The agent's record, without secrets.
#[utoipa::path(get, path = "/api/agents/{agent_id}", tag = "agents",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = AgentView), AgentErrors))]
pub async fn get_agent(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<AgentView>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let agent = app.hub.agent(&agent_id).await?;
    Ok(Json(AgentView::from(&agent)))
}

/// Deletes the agent; its live messages are dead-lettered.
#[utoipa::path(delete, path = "/api/agents/{agent_id}", tag = "agents",
    params(("agent_id" = String, Path)),
    responses((status = 204, description = "deleted"), AgentErrors))]
pub async fn delete_agent(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<StatusCode> {
    app.hub.scope(&req.caller, &agent_id).await?;
    app.hub.delete_agent(&agent_id).await?;
    app.audit(&req, AuditKind::AgentDeleted, &agent_id, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/agents/{id}/heartbeat` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct HeartbeatRequest {
    /// Merged shallowly into the agent's metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Heartbeat response.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    pub ok: bool,
    pub last_heartbeat: i64,
    pub timeout_at: i64,
    pub status: &'static str,
}

route_errors!(AgentBodyErrors: AUTHED, AGENT_SCOPE, PARAMS, JSON_BODY);
route_errors!(HeartbeatErrors: AUTHED, AGENT_SCOPE, PARAMS, JSON_BODY, &["METADATA_TOO_LARGE"]);

/// Records a heartbeat.
#[utoipa::path(post, path = "/api/agents/{agent_id}/heartbeat", tag = "agents",
    params(("agent_id" = String, Path)), request_body = HeartbeatRequest,
    responses((status = 200, body = HeartbeatResponse), HeartbeatErrors))]
pub async fn heartbeat(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<HeartbeatResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: HeartbeatRequest = req.json()?;
    let agent = app.hub.heartbeat(&agent_id, body.metadata).await?;
    Ok(Json(HeartbeatResponse {
        ok: true,
        last_heartbeat: agent.last_heartbeat,
        timeout_at: agent.last_heartbeat + agent.heartbeat_timeout_ms as i64,
        status: "online",
    }))
}

/// Trust list response.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrustedResponse {
    pub trusted_agents: Vec<String>,
}

/// `POST /api/agents/{id}/trusted` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TrustRequest {
    /// Required (400 `AGENT_ID_REQUIRED` when absent or empty).
    pub agent_id: Option<String>,
}

/// Lists the agents allowed to send to this one (empty: everyone).
#[utoipa::path(get, path = "/api/agents/{agent_id}/trusted", tag = "agents",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = TrustedResponse), AgentErrors))]
pub async fn list_trusted(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<TrustedResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let agent = app.hub.agent(&agent_id).await?;
    Ok(Json(TrustedResponse {
        trusted_agents: agent.trusted_agents,
    }))
}

route_errors!(TrustErrors: AUTHED, AGENT_SCOPE, PARAMS, JSON_BODY, &["AGENT_ID_REQUIRED", "TRUST_LIST_FULL"]);

/// Adds an agent to the trust list.
#[utoipa::path(post, path = "/api/agents/{agent_id}/trusted", tag = "agents",
    params(("agent_id" = String, Path)), request_body = TrustRequest,
    responses((status = 200, body = TrustedResponse), TrustErrors))]
pub async fn add_trusted(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<TrustedResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: TrustRequest = req.json()?;
    let other = body
        .agent_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::required("AGENT_ID_REQUIRED", "agent_id"))?;
    let agent = app.hub.trust(&agent_id, &other).await?;
    let detail = json!({ "trusted": other });
    app.audit(&req, AuditKind::TrustAdded, &agent_id, detail)
        .await;
    Ok(Json(TrustedResponse {
        trusted_agents: agent.trusted_agents,
    }))
}

/// Removes an agent from the trust list.
#[utoipa::path(delete, path = "/api/agents/{agent_id}/trusted/{other}", tag = "agents",
    params(("agent_id" = String, Path), ("other" = String, Path)),
    responses((status = 200, body = TrustedResponse), AgentErrors))]
pub async fn remove_trusted(
    State(app): State<AppState>,
    ApiPath((agent_id, other)): ApiPath<(String, String)>,
    req: Authed,
) -> ApiResult<Json<TrustedResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let agent = app.hub.untrust(&agent_id, &other).await?;
    let detail = json!({ "trusted": other });
    app.audit(&req, AuditKind::TrustRemoved, &agent_id, detail)
        .await;
    Ok(Json(TrustedResponse {
        trusted_agents: agent.trusted_agents,
    }))
}

/// `POST /api/agents/{id}/webhook` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct WebhookRequest {
    /// Required (400 `WEBHOOK_URL_REQUIRED` when absent or empty).
    pub webhook_url: Option<String>,
    /// Generated as `whsec_…` when absent.
    pub webhook_secret: Option<String>,
}

/// Webhook configuration after a change (the only time the secret is shown).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookConfigured {
    pub agent_id: String,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// When the replaced secret stops signing (epoch ms); absent when no
    /// secret was replaced. Until then requests carry both `v1,` signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_webhook_secret_valid_until: Option<i64>,
}

/// Webhook configuration as `GET` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub webhook_url: Option<String>,
    pub webhook_configured: bool,
}

/// Webhook removal response.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookRemoved {
    pub message: &'static str,
    pub webhook_configured: bool,
}

route_errors!(WebhookErrors: AUTHED, AGENT_SCOPE, PARAMS, JSON_BODY, &["WEBHOOK_URL_REQUIRED"]);

/// Sets the webhook that is notified of new messages.
#[utoipa::path(post, path = "/api/agents/{agent_id}/webhook", tag = "agents",
    params(("agent_id" = String, Path)), request_body = WebhookRequest,
    responses((status = 200, body = WebhookConfigured), WebhookErrors))]
pub async fn set_webhook(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<WebhookConfigured>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: WebhookRequest = req.json()?;
    let url = body
        .webhook_url
        .filter(|url| !url.is_empty())
        .ok_or_else(|| ApiError::required("WEBHOOK_URL_REQUIRED", "webhook_url"))?;
    let agent = app
        .hub
        .set_webhook(&agent_id, url, body.webhook_secret)
        .await?;
    let detail = json!({ "webhook_url": agent.webhook_url });
    app.audit(&req, AuditKind::WebhookSet, &agent_id, detail)
        .await;
    Ok(Json(WebhookConfigured {
        agent_id: agent.agent_id,
        webhook_url: agent.webhook_url,
        webhook_secret: agent.webhook_secret,
        previous_webhook_secret_valid_until: agent
            .previous_webhook_secret
            .map(|previous| previous.valid_until),
    }))
}

/// Shows whether a webhook is configured (never the secret).
#[utoipa::path(get, path = "/api/agents/{agent_id}/webhook", tag = "agents",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = WebhookView), AgentErrors))]
pub async fn get_webhook(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<WebhookView>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let agent = app.hub.agent(&agent_id).await?;
    Ok(Json(WebhookView {
        webhook_configured: agent.webhook_url.is_some(),
        webhook_url: agent.webhook_url,
    }))
}

/// Removes the webhook.
#[utoipa::path(delete, path = "/api/agents/{agent_id}/webhook", tag = "agents",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = WebhookRemoved), AgentErrors))]
pub async fn delete_webhook(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<WebhookRemoved>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    app.hub.clear_webhook(&agent_id).await?;
    app.audit(&req, AuditKind::WebhookRemoved, &agent_id, json!({}))
        .await;
    Ok(Json(WebhookRemoved {
        message: "Webhook removed",
        webhook_configured: false,
    }))
}

/// Webhook attempts listing query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeliveriesQuery {
    /// How many attempts (1..100, default 50).
    pub limit: Option<usize>,
}

/// One webhook attempt as the agent sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// The delivery (`webhook-id`); its retries share it.
    pub delivery_id: String,
    pub message_id: String,
    /// 1 for the first attempt of the delivery.
    pub attempt: u32,
    /// When the attempt started, epoch milliseconds.
    pub at: i64,
    /// The receiver's HTTP status; absent when no response arrived.
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// Why the attempt failed (timeout, refused target, non-2xx status…).
    pub error: Option<String>,
    /// The receiver answered 2xx.
    pub success: bool,
}

impl From<DeliveryAttempt> for AttemptView {
    fn from(a: DeliveryAttempt) -> Self {
        AttemptView {
            success: a.error.is_none() && a.status_code.is_some_and(|s| (200..300).contains(&s)),
            delivery_id: a.delivery_id,
            message_id: a.message_id,
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error,
        }
    }
}

/// Webhook attempts listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptsPage {
    /// Newest first.
    pub attempts: Vec<AttemptView>,
}

/// Recent webhook attempts for this agent, newest first: when, status, latency, error.
#[utoipa::path(get, path = "/api/agents/{agent_id}/webhook/deliveries", tag = "agents",
    params(("agent_id" = String, Path), DeliveriesQuery),
    responses((status = 200, body = AttemptsPage), AgentErrors))]
pub async fn webhook_deliveries(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
    req: Authed,
) -> ApiResult<Json<AttemptsPage>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let attempts = app.hub.webhook_attempts(&agent_id, query.limit).await?;
    Ok(Json(AttemptsPage {
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
    }))
}

/// `POST /api/agents/{id}/rotate-key` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RotateKeyRequest {
    /// The new base64 Ed25519 public key.
    pub public_key: String,
}

/// Key rotation response.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotateKeyResponse {
    pub agent_id: String,
    pub public_key: String,
    pub key_version: u32,
    /// Until when the previous key still verifies (`KEY_ROTATION_OVERLAP_SEC`).
    pub previous_key_valid_until: Option<i64>,
}

/// Replaces the agent's key; the old one keeps verifying during the overlap window.
#[utoipa::path(post, path = "/api/agents/{agent_id}/rotate-key", tag = "agents",
    params(("agent_id" = String, Path)), request_body = RotateKeyRequest,
    responses((status = 200, body = RotateKeyResponse), AgentBodyErrors))]
pub async fn rotate_key(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<RotateKeyResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: RotateKeyRequest = req.json()?;
    let rotated = app.hub.rotate_key(&agent_id, &body.public_key).await?;
    let detail = json!({
        "key_version": rotated.agent.key_version(),
        "previous_key_valid_until": rotated.previous_key_valid_until,
    });
    app.audit(&req, AuditKind::KeyRotated, &agent_id, detail)
        .await;
    Ok(Json(RotateKeyResponse {
        public_key: current_public_key(&rotated.agent),
        key_version: rotated.agent.key_version(),
        agent_id: rotated.agent.agent_id,
        previous_key_valid_until: rotated.previous_key_valid_until,
    }))
}

/// Session token response.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    /// `admpst_…`, sent as `Authorization: Bearer`.
    pub token: String,
    pub expires_at: i64,
}

route_errors!(SessionErrors: AUTHED, PARAMS, &["AUTH_REQUIRED", "FORBIDDEN", "AGENT_NOT_FOUND"]);

/// Opens a session: one signature buys a token for `SESSION_TTL_SEC`.
#[utoipa::path(post, path = "/api/agents/{agent_id}/session", tag = "agents",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = SessionResponse), SessionErrors))]
pub async fn create_session(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<SessionResponse>> {
    let (token, expires_at) = app.hub.create_session(&req.caller, &agent_id).await?;
    Ok(Json(SessionResponse { token, expires_at }))
}
