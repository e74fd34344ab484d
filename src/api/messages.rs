//! Sending, replying, message status and the consumer routes of an inbox.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiResult, status_and_code};
use super::extract::{ApiPath, ApiQuery, Authed};
use super::openapi::{AGENT_SCOPE, AUTHED, ENVELOPE, GATED, JSON_BODY, PARAMS};
use crate::audit::AuditKind;
use crate::hub::{AckInput, NackInput, PullInput, SendInput, Sent};
use crate::route_errors;
use crate::store::{Envelope, Message, MessageState, StateCounts};

/// Send and reply response.
#[derive(Debug, Serialize, ToSchema)]
pub struct SendResponse {
    pub message_id: String,
    /// Current state of the message.
    pub status: &'static str,
    /// Present and true when the idempotency key was seen with the same content.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

fn sent_response(sent: Sent, created: StatusCode) -> (StatusCode, Json<SendResponse>) {
    let status = if sent.duplicate {
        StatusCode::OK
    } else {
        created
    };
    (
        status,
        Json(SendResponse {
            message_id: sent.message.id,
            status: sent.message.state.as_str(),
            duplicate: sent.duplicate,
        }),
    )
}

route_errors!(SendErrors: AUTHED, GATED, PARAMS, ENVELOPE, &["RECIPIENT_MISMATCH"]);

/// Sends a signed envelope to `{agent_id}` (201; 200 with `duplicate` for a retry).
#[utoipa::path(post, path = "/api/agents/{agent_id}/messages", tag = "messages",
    params(("agent_id" = String, Path, description = "recipient"),
        ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Object, description = "ADMP envelope with signature"),
    responses((status = 201, body = SendResponse), (status = 200, body = SendResponse), SendErrors))]
pub async fn send(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<(StatusCode, Json<SendResponse>)> {
    app.hub.authorize_gate(&req.caller)?;
    let envelope = req.json_value()?;
    let input = SendInput {
        raw: &req.body,
        envelope,
        idempotency_key: req.idempotency_key.clone(),
        caller: &req.caller,
        caller_agent: req.agent.as_ref(),
    };
    let sent = app.hub.send(&agent_id, input).await?;
    Ok(sent_response(sent, StatusCode::CREATED))
}

route_errors!(ReplyErrors: AUTHED, AGENT_SCOPE, PARAMS, ENVELOPE,
    &["MESSAGE_NOT_FOUND", "REPLY_MISMATCH"]);

/// Replies to a message this agent received (200, as the Node server did).
#[utoipa::path(post, path = "/api/agents/{agent_id}/messages/{message_id}/reply", tag = "messages",
    params(("agent_id" = String, Path), ("message_id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Object, description = "ADMP envelope signed by {agent_id}"),
    responses((status = 200, body = SendResponse), ReplyErrors))]
pub async fn reply(
    State(app): State<AppState>,
    ApiPath((agent_id, message_id)): ApiPath<(String, String)>,
    req: Authed,
) -> ApiResult<(StatusCode, Json<SendResponse>)> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let envelope = req.json_value()?;
    let input = SendInput {
        raw: &req.body,
        envelope,
        idempotency_key: req.idempotency_key.clone(),
        caller: &req.caller,
        caller_agent: req.agent.as_ref(),
    };
    let sent = app.hub.reply(&agent_id, &message_id, input).await?;
    Ok(sent_response(sent, StatusCode::OK))
}

/// Message status.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    pub id: String,
    pub status: &'static str,
    pub created_at: i64,
    pub updated_at: i64,
    pub attempts: u32,
    pub lease_until: Option<i64>,
    pub acked_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
}

route_errors!(StatusErrors: AUTHED, GATED, PARAMS,
    &["AUTH_REQUIRED", "FORBIDDEN", "MESSAGE_NOT_FOUND"]);

/// Status of a message, for its sender, its recipient or the operator.
#[utoipa::path(get, path = "/api/messages/{message_id}/status", tag = "messages",
    params(("message_id" = String, Path)),
    responses((status = 200, body = StatusResponse), StatusErrors))]
pub async fn status(
    State(app): State<AppState>,
    ApiPath(message_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<StatusResponse>> {
    app.hub.authorize_gate(&req.caller)?;
    let m = app.hub.message_status(&req.caller, &message_id).await?;
    Ok(Json(StatusResponse {
        id: m.id,
        status: m.state.as_str(),
        created_at: m.created_at,
        updated_at: m.updated_at,
        attempts: m.attempts,
        lease_until: m.lease_until,
        acked_at: m.acked_at,
        dead_reason: m.dead_reason,
    }))
}

/// `POST /api/agents/{id}/inbox/pull` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PullRequest {
    /// Lease length in seconds (1..43200, default 60).
    pub visibility_timeout: Option<u64>,
    /// Long-poll up to this many seconds (0..20, default 0).
    pub wait_sec: Option<u64>,
    /// Batch mode (1..100): the response is `{messages: [...]}`.
    pub max_messages: Option<u64>,
}

/// A leased message.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeasedMessage {
    pub message_id: String,
    #[schema(value_type = Object)]
    pub envelope: Envelope,
    pub lease_until: Option<i64>,
    pub lease_id: Option<String>,
    pub attempts: u32,
    /// For a group copy: the group it was posted to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// For a group copy: the post's id, the same in every member's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_message_id: Option<String>,
}

impl From<Message> for LeasedMessage {
    fn from(m: Message) -> Self {
        let (group_id, group_message_id) = crate::store::copy_origin(&m).unzip();
        LeasedMessage {
            group_id,
            group_message_id,
            message_id: m.id,
            envelope: m.envelope,
            lease_until: m.lease_until,
            lease_id: m.lease_id,
            attempts: m.attempts,
        }
    }
}

/// Batch pull response.
#[derive(Debug, Serialize, ToSchema)]
pub struct PullBatchResponse {
    pub messages: Vec<LeasedMessage>,
}

/// A pull's answer: one leased message, or `{messages}` when `max_messages` was given.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PullResponse {
    /// Without `max_messages` (the Node server's shape).
    Single(LeasedMessage),
    /// With `max_messages`: possibly empty.
    Batch(PullBatchResponse),
}

route_errors!(AgentBodyErrors: AUTHED, AGENT_SCOPE, PARAMS, JSON_BODY);

/// Leases the oldest visible message(s); 204 when empty (single mode).
#[utoipa::path(post, path = "/api/agents/{agent_id}/inbox/pull", tag = "inbox",
    params(("agent_id" = String, Path)), request_body = PullRequest,
    responses((status = 200, description = "a leased message; `{messages: [...]}` when `max_messages` is given", body = PullResponse),
        (status = 204, description = "inbox empty (without `max_messages`)"), AgentBodyErrors))]
pub async fn pull(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Response> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: PullRequest = req.json()?;
    let batch = body.max_messages.is_some();
    let input = PullInput {
        visibility_timeout: body.visibility_timeout,
        wait_sec: body.wait_sec,
        max_messages: body.max_messages,
    };
    let mut messages = app.hub.pull(&agent_id, &input).await?;
    Ok(if batch {
        let messages = messages.into_iter().map(LeasedMessage::from).collect();
        Json(PullResponse::Batch(PullBatchResponse { messages })).into_response()
    } else {
        match messages.pop() {
            Some(m) => Json(PullResponse::Single(LeasedMessage::from(m))).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        }
    })
}

/// `POST .../messages/{mid}/ack` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AckBody {
    /// Processing result, stored with the message.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The lease being acknowledged; a stale one is refused with LEASE_MISMATCH.
    pub lease_id: Option<String>,
}

/// `{ok: true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OkResponse {
    pub ok: bool,
}

route_errors!(LeaseErrors: AUTHED, AGENT_SCOPE, PARAMS, JSON_BODY,
    &["MESSAGE_NOT_FOUND", "NOT_LEASED", "LEASE_MISMATCH"]);

/// Acknowledges a leased message.
#[utoipa::path(post, path = "/api/agents/{agent_id}/messages/{message_id}/ack", tag = "inbox",
    params(("agent_id" = String, Path), ("message_id" = String, Path)), request_body = AckBody,
    responses((status = 200, body = OkResponse), LeaseErrors))]
pub async fn ack(
    State(app): State<AppState>,
    ApiPath((agent_id, message_id)): ApiPath<(String, String)>,
    req: Authed,
) -> ApiResult<Json<OkResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: AckBody = req.json()?;
    app.hub
        .ack(&agent_id, &message_id, body.lease_id, body.result)
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

/// One entry of a batch ack.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchAckEntry {
    pub message_id: String,
    pub lease_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// `POST /api/agents/{id}/inbox/ack` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchAckRequest {
    /// 1..100 acknowledgements.
    pub acks: Vec<BatchAckEntry>,
}

/// Outcome of one entry of a batch ack.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAckResult {
    pub message_id: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// Batch ack response.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAckResponse {
    pub results: Vec<BatchAckResult>,
}

/// Acknowledges up to 100 messages in one request.
#[utoipa::path(post, path = "/api/agents/{agent_id}/inbox/ack", tag = "inbox",
    params(("agent_id" = String, Path)), request_body = BatchAckRequest,
    responses((status = 200, description = "one outcome per entry; `error` is the code a single ack would answer", body = BatchAckResponse),
        AgentBodyErrors))]
pub async fn batch_ack(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<BatchAckResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: BatchAckRequest = req.json()?;
    let message_ids: Vec<String> = body.acks.iter().map(|e| e.message_id.clone()).collect();
    let entries = body
        .acks
        .into_iter()
        .map(|entry| AckInput {
            message_id: entry.message_id,
            lease_id: entry.lease_id,
            result: entry.result,
        })
        .collect();
    let outcomes = app.hub.ack_batch(&agent_id, entries).await?;
    let results = message_ids
        .into_iter()
        .zip(outcomes)
        .map(|(message_id, outcome)| BatchAckResult {
            message_id,
            ok: outcome.is_ok(),
            error: outcome.err().map(|e| status_and_code(&e).1),
        })
        .collect();
    Ok(Json(BatchAckResponse { results }))
}

/// `POST .../messages/{mid}/nack` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct NackBody {
    /// Extend the lease by this many seconds instead of requeueing.
    pub extend_sec: Option<u64>,
    /// Accepted for compatibility: without `extend_sec` a nack always requeues.
    pub requeue: Option<bool>,
    /// Requeue, visible again after this many seconds (default 0).
    pub delay_sec: Option<u64>,
    pub lease_id: Option<String>,
}

/// Nack response.
#[derive(Debug, Serialize, ToSchema)]
pub struct NackResponse {
    pub ok: bool,
    pub status: &'static str,
    pub lease_until: Option<i64>,
}

/// Extends a lease or gives the message back.
#[utoipa::path(post, path = "/api/agents/{agent_id}/messages/{message_id}/nack", tag = "inbox",
    params(("agent_id" = String, Path), ("message_id" = String, Path)), request_body = NackBody,
    responses((status = 200, body = NackResponse), LeaseErrors))]
pub async fn nack(
    State(app): State<AppState>,
    ApiPath((agent_id, message_id)): ApiPath<(String, String)>,
    req: Authed,
) -> ApiResult<Json<NackResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let body: NackBody = req.json()?;
    let m = app
        .hub
        .nack(
            &agent_id,
            &message_id,
            NackInput {
                extend_sec: body.extend_sec,
                delay_sec: body.delay_sec,
                lease_id: body.lease_id,
            },
        )
        .await?;
    if m.state == MessageState::Dead {
        let detail = json!({ "source": "nack", "message_id": m.id, "attempts": m.attempts });
        app.audit(&req, AuditKind::DeadLettered, &agent_id, detail)
            .await;
    }
    Ok(Json(NackResponse {
        ok: true,
        status: m.state.as_str(),
        lease_until: m.lease_until,
    }))
}

/// Inbox counts by state (`failed` is always 0, kept for compatibility).
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxStatsResponse {
    pub total: u64,
    pub queued: u64,
    pub leased: u64,
    pub acked: u64,
    pub failed: u64,
    pub expired: u64,
    pub dead: u64,
}

impl From<StateCounts> for InboxStatsResponse {
    fn from(c: StateCounts) -> Self {
        InboxStatsResponse {
            total: c.total,
            queued: c.queued,
            leased: c.leased,
            acked: c.acked,
            failed: 0,
            expired: c.expired,
            dead: c.dead,
        }
    }
}

route_errors!(InboxErrors: AUTHED, AGENT_SCOPE, PARAMS);

/// Inbox stats query: `wait_sec` turns the read into a watch.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsQuery {
    /// With `If-None-Match`: wait up to this many seconds (0..20) for the
    /// counts to change; leases nothing.
    pub wait_sec: Option<u64>,
}

/// Counts of this inbox's messages by state, with an `ETag`. With
/// `If-None-Match` (and optionally `wait_sec`) it is a non-leasing watch:
/// 200 with the new counts as soon as they differ from the tagged ones (a
/// message arriving wakes it), 304 if they are unchanged at the deadline.
#[utoipa::path(get, path = "/api/agents/{agent_id}/inbox/stats", tag = "inbox",
    params(("agent_id" = String, Path), StatsQuery,
        ("If-None-Match" = Option<String>, Header, description = "ETag of counts already seen")),
    responses((status = 200, body = InboxStatsResponse), (status = 304, description = "Counts unchanged"),
        InboxErrors))]
pub async fn inbox_stats(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StatsQuery>,
    headers: axum::http::HeaderMap,
    req: Authed,
) -> ApiResult<Response> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let known: Vec<String> = headers
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/").to_string())
        .collect();
    let unchanged = |counts: &StateCounts| known.contains(&stats_etag(counts));
    let counts = app
        .hub
        .watch_inbox_stats(&agent_id, query.wait_sec.unwrap_or(0), unchanged)
        .await?;
    let etag = [(axum::http::header::ETAG, stats_etag(&counts))];
    if unchanged(&counts) {
        return Ok((StatusCode::NOT_MODIFIED, etag).into_response());
    }
    Ok((etag, Json(InboxStatsResponse::from(counts))).into_response())
}

/// Peek query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PeekQuery {
    /// How many waiting messages to show (1..20, default 5).
    pub limit: Option<usize>,
}

/// A waiting message, summarised (its envelope is read by pulling it).
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitingMessage {
    pub message_id: String,
    /// Sender agent id (the envelope signature was verified on send).
    pub from: String,
    /// Sender-chosen type and subject (not covered by the signature).
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    pub subject: Option<String>,
    pub created_at: i64,
    pub attempts: u32,
}

/// The waiting messages of an inbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeekResponse {
    /// In the order a pull would take them.
    pub messages: Vec<WaitingMessage>,
}

/// The next waiting messages of this inbox, summarised, without leasing them.
#[utoipa::path(get, path = "/api/agents/{agent_id}/inbox/peek", tag = "inbox",
    params(("agent_id" = String, Path), PeekQuery),
    responses((status = 200, body = PeekResponse), InboxErrors))]
pub async fn peek(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PeekQuery>,
    req: Authed,
) -> ApiResult<Json<PeekResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let waiting = app.hub.peek_inbox(&agent_id, query.limit).await?;
    Ok(Json(PeekResponse {
        messages: waiting
            .into_iter()
            .map(|m| {
                let envelope = m.envelope.to_value();
                let field = |name: &str| {
                    envelope
                        .get(name)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                WaitingMessage {
                    message_type: field("type"),
                    subject: field("subject"),
                    message_id: m.id,
                    from: m.sender,
                    created_at: m.created_at,
                    attempts: m.attempts,
                }
            })
            .collect(),
    }))
}

/// Strong entity tag of a set of counts: equal tags, equal counts.
fn stats_etag(c: &StateCounts) -> String {
    format!(
        "\"{}.{}.{}.{}.{}.{}\"",
        c.total, c.queued, c.leased, c.acked, c.expired, c.dead
    )
}

/// Reclaim response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReclaimResponse {
    /// Expired leases ended (requeued or dead-lettered at the attempt limit).
    pub reclaimed: u64,
}

/// Ends this agent's expired leases now.
#[utoipa::path(post, path = "/api/agents/{agent_id}/inbox/reclaim", tag = "inbox",
    params(("agent_id" = String, Path)),
    responses((status = 200, body = ReclaimResponse), InboxErrors))]
pub async fn reclaim(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    req: Authed,
) -> ApiResult<Json<ReclaimResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let counts = app.hub.reclaim(&agent_id).await?;
    if counts.dead > 0 {
        let detail = json!({ "source": "reclaim", "count": counts.dead });
        app.audit(&req, AuditKind::DeadLettered, &agent_id, detail)
            .await;
    }
    Ok(Json(ReclaimResponse {
        reclaimed: counts.requeued + counts.dead,
    }))
}

/// Dead-letter listing query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeadQuery {
    /// Page size (1..100, default 50).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A dead-lettered message.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub message_id: String,
    #[schema(value_type = Object)]
    pub envelope: Envelope,
    pub attempts: u32,
    pub dead_reason: Option<String>,
    pub dead_at: Option<i64>,
}

/// Dead-letter page.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub messages: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

/// Lists this inbox's dead letters, oldest first.
#[utoipa::path(get, path = "/api/agents/{agent_id}/inbox/dead", tag = "inbox",
    params(("agent_id" = String, Path), DeadQuery),
    responses((status = 200, body = DeadLetterPage), InboxErrors))]
pub async fn dead_letters(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeadQuery>,
    req: Authed,
) -> ApiResult<Json<DeadLetterPage>> {
    app.hub.scope_retained(&req.caller, &agent_id).await?;
    let page = app
        .hub
        .dead_letters(&agent_id, query.limit, query.cursor.as_deref())
        .await?;
    Ok(Json(DeadLetterPage {
        messages: page
            .items
            .into_iter()
            .map(|m| DeadLetter {
                message_id: m.id,
                envelope: m.envelope,
                attempts: m.attempts,
                dead_reason: m.dead_reason,
                dead_at: m.ended_at,
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Requeue response.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequeueResponse {
    pub ok: bool,
    pub status: &'static str,
}

route_errors!(RequeueErrors: AUTHED, AGENT_SCOPE, PARAMS, &["MESSAGE_NOT_FOUND", "NOT_DEAD"]);

/// Puts a dead letter back in the queue with its attempts reset.
#[utoipa::path(post, path = "/api/agents/{agent_id}/messages/{message_id}/requeue", tag = "inbox",
    params(("agent_id" = String, Path), ("message_id" = String, Path)),
    responses((status = 200, body = RequeueResponse), RequeueErrors))]
pub async fn requeue(
    State(app): State<AppState>,
    ApiPath((agent_id, message_id)): ApiPath<(String, String)>,
    req: Authed,
) -> ApiResult<Json<RequeueResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let m = app.hub.requeue_dead(&agent_id, &message_id).await?;
    Ok(Json(RequeueResponse {
        ok: true,
        status: m.state.as_str(),
    }))
}
