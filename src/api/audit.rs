//! `GET /api/audit` (operator only) and the helper handlers use to record
//! the security-relevant changes they make.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiQuery, Authed};
use super::openapi::{AUTHED, MASTER, PARAMS};
use crate::audit::AuditKind;
use crate::hub::Caller;
use crate::route_errors;
use crate::store::AuditEvent;

impl AppState {
    /// Records a change made by `req` to `agent_id`, adding who made it,
    /// from where, and the request id. Written before the response, so an
    /// answered change is always in the log (a failed write is logged and
    /// counted, and the request still succeeds).
    pub(crate) async fn audit(&self, req: &Authed, kind: AuditKind, agent_id: &str, detail: Value) {
        let mut detail = match detail {
            Value::Object(map) => map,
            other => [("value".to_string(), other)].into_iter().collect(),
        };
        let actor = match &req.caller {
            Caller::Agent { agent_id, .. } => format!("agent:{agent_id}"),
            Caller::Master => "master".to_string(),
            Caller::Anonymous => "anonymous".to_string(),
        };
        detail.insert("actor".into(), actor.into());
        detail.insert("ip".into(), req.client_ip.to_string().into());
        detail.insert("request_id".into(), req.request_id.clone().into());
        self.hub
            .audit(kind, Some(agent_id), Value::Object(detail))
            .await;
    }
}

/// Audit listing query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Page size (1..1000, default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    /// 1, 2, 3… in append order.
    pub seq: u64,
    /// Epoch milliseconds.
    pub at: i64,
    /// e.g. `agent.registered`, `auth.failed`, `rate_limit.exceeded`.
    pub kind: String,
    pub agent_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: Value,
    /// `sha256(previous hash ‖ canonical event)`, hex.
    pub hash: String,
}

impl From<AuditEvent> for AuditEventView {
    fn from(e: AuditEvent) -> Self {
        AuditEventView {
            seq: e.seq,
            at: e.at,
            kind: e.kind,
            agent_id: e.agent_id,
            detail: e.detail,
            hash: e.hash,
        }
    }
}

/// One page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPageResponse {
    pub events: Vec<AuditEventView>,
    pub next_cursor: Option<String>,
    /// The page's hashes verify, chained onto the previous page's last event
    /// (or the genesis hash on the first page).
    pub chain_valid: bool,
    /// `seq` of the first event that does not verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    /// Every signed checkpoint on the page verifies with the hub's audit key
    /// and matches the event it anchors; `null` when the hub has no
    /// `AUDIT_SIGNING_KEY_FILE`.
    pub checkpoints_valid: Option<bool>,
    /// `seq` of the first checkpoint that does not verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_failed_at: Option<u64>,
}

route_errors!(AuditErrors: AUTHED, MASTER, PARAMS);

/// Pages through the audit log, oldest first, verifying the hash chain.
#[utoipa::path(get, path = "/api/audit", tag = "system",
    params(AuditQuery),
    responses((status = 200, body = AuditPageResponse), AuditErrors))]
pub async fn list_audit(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
    req: Authed,
) -> ApiResult<Json<AuditPageResponse>> {
    app.hub.authorize_master(&req.caller)?;
    let page = app
        .hub
        .audit_page(query.limit, query.cursor.as_deref())
        .await?;
    Ok(Json(AuditPageResponse {
        events: page.events.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
        chain_valid: page.chain_valid,
        broken_at: page.broken_at,
        checkpoints_valid: page.checkpoints_valid,
        checkpoint_failed_at: page.checkpoint_failed_at,
    }))
}
