//! Group routes (GROUPS.md): HTTP in, hub calls, Node-compatible JSON out.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiPath, ApiQuery, Authed};
use super::openapi::{AGENT_SCOPE, AUTHED, ENVELOPE, JSON_BODY, PARAMS};
use crate::audit::AuditKind;
use crate::hub::{GroupPosted, GroupUpdate, GroupView, NewGroup, PostInput};
use crate::route_errors;
use crate::store::{CopyOutcome, Envelope, Group, GroupMember, GroupPost, GroupRole};

/// Who acts on a group route: the gate, credentials (or `X-Agent-ID` for
/// the operator and legacy callers, naming an existing agent).
const ACTOR: &[&str] = &[
    "API_KEY_REQUIRED",
    "AUTH_REQUIRED",
    "INVALID_INPUT",
    "AGENT_NOT_FOUND",
];
/// The group in the path.
const GROUP: &[&str] = &["GROUP_NOT_FOUND"];
/// A group name's rules.
const NAME: &[&str] = &["INVALID_NAME", "NAME_TOO_LONG", "INVALID_NAME_CHARS"];

route_errors!(CreateGroupErrors: AUTHED, ACTOR, JSON_BODY, NAME, &["CREATE_GROUP_FAILED"]);
route_errors!(GetGroupErrors: AUTHED, ACTOR, PARAMS, GROUP);
route_errors!(UpdateGroupErrors: AUTHED, ACTOR, PARAMS, JSON_BODY, GROUP, NAME, &["UPDATE_GROUP_FAILED"]);
route_errors!(DeleteGroupErrors: AUTHED, ACTOR, PARAMS, GROUP, &["DELETE_GROUP_FAILED"]);
route_errors!(ListMembersErrors: AUTHED, ACTOR, PARAMS, GROUP, &["LIST_MEMBERS_FAILED"]);
route_errors!(AddMemberErrors: AUTHED, ACTOR, PARAMS, JSON_BODY, GROUP, &["ADD_MEMBER_FAILED", "AGENT_ID_REQUIRED"]);
route_errors!(RemoveMemberErrors: AUTHED, ACTOR, PARAMS, GROUP, &["REMOVE_MEMBER_FAILED"]);
route_errors!(JoinErrors: AUTHED, ACTOR, PARAMS, JSON_BODY, GROUP, &["JOIN_FAILED"]);
route_errors!(LeaveErrors: AUTHED, ACTOR, PARAMS, GROUP, &["LEAVE_FAILED"]);
route_errors!(PostErrors: AUTHED, ACTOR, PARAMS, ENVELOPE, GROUP,
    &["POST_MESSAGE_FAILED", "RECIPIENT_MISMATCH", "PAYLOAD_TOO_LARGE"]);
route_errors!(HistoryErrors: AUTHED, ACTOR, PARAMS, GROUP, &["GET_MESSAGES_FAILED"]);
route_errors!(AgentGroupsErrors: AUTHED, AGENT_SCOPE, PARAMS);

/// Header naming the acting agent for operator (master key) and legacy calls.
pub const AGENT_ID_HEADER: &str = "x-agent-id";

fn named_agent(headers: &HeaderMap) -> Option<&str> {
    headers.get(AGENT_ID_HEADER).and_then(|v| v.to_str().ok())
}

async fn actor(app: &AppState, headers: &HeaderMap, req: &Authed) -> ApiResult<String> {
    Ok(app
        .hub
        .acting_agent(&req.caller, named_agent(headers))
        .await?)
}

/// `access` of a new group.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AccessInput {
    /// `open` (default), `invite-only` or `key-protected`.
    #[serde(rename = "type")]
    pub access_type: Option<String>,
    /// Required for key-protected groups; stored only as a salted hash.
    pub join_key: Option<String>,
}

/// Group settings in a request.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SettingsInput {
    pub history_visible: Option<bool>,
    /// 1..1000 (default 50).
    pub max_members: Option<u64>,
    /// History TTL in seconds (default 604800).
    pub message_ttl_sec: Option<u64>,
}

/// `POST /api/groups` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateGroupRequest {
    /// 1–100 characters of letters, digits, spaces, `-`, `_`, `.`.
    #[schema(value_type = Option<String>)]
    pub name: Option<Value>,
    pub access: Option<AccessInput>,
    pub settings: Option<SettingsInput>,
}

/// `PUT /api/groups/{group_id}` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateGroupRequest {
    #[schema(value_type = Option<String>)]
    pub name: Option<Value>,
    pub settings: Option<SettingsInput>,
}

/// `POST /api/groups/{group_id}/members` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AddMemberRequest {
    pub agent_id: Option<String>,
    /// `member` (default) or `admin`.
    pub role: Option<String>,
}

/// `POST /api/groups/{group_id}/join` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct JoinRequest {
    pub key: Option<String>,
}

/// A group's access type.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessView {
    #[serde(rename = "type")]
    pub access_type: &'static str,
}

/// A group's settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    pub history_visible: bool,
    pub max_members: u32,
    pub message_ttl_sec: u64,
}

/// One member.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub agent_id: String,
    pub role: &'static str,
    pub joined_at: i64,
}

impl From<GroupMember> for MemberView {
    fn from(m: GroupMember) -> Self {
        MemberView {
            agent_id: m.agent_id,
            role: m.role.as_str(),
            joined_at: m.joined_at,
        }
    }
}

/// The whole group (members' view); the join key is never shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupFull {
    pub id: String,
    pub name: String,
    pub created_by: String,
    pub access: AccessView,
    pub settings: SettingsView,
    pub members: Vec<MemberView>,
    pub member_count: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What non-members see.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummary {
    pub id: String,
    pub name: String,
    pub access_type: &'static str,
    pub member_count: u64,
}

/// `GET /api/groups/{id}`: the whole group for members, a summary for others.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum GroupAnswer {
    Full(GroupFull),
    Summary(GroupSummary),
}

fn full(group: Group, members: Vec<GroupMember>) -> GroupFull {
    GroupFull {
        access: AccessView {
            access_type: group.access.as_str(),
        },
        settings: SettingsView {
            history_visible: group.settings.history_visible,
            max_members: group.settings.max_members,
            message_ttl_sec: group.settings.message_ttl_sec,
        },
        member_count: members.len() as u64,
        members: members.into_iter().map(MemberView::from).collect(),
        id: group.id,
        name: group.name,
        created_by: group.created_by,
        created_at: group.created_at,
        updated_at: group.updated_at,
    }
}

fn view_json(view: GroupView) -> Value {
    let answer = match view {
        GroupView::Full(group, members) => GroupAnswer::Full(full(group, members)),
        GroupView::Summary(g) => GroupAnswer::Summary(GroupSummary {
            access_type: g.access.as_str(),
            member_count: g.member_count,
            id: g.id,
            name: g.name,
        }),
    };
    serde_json::to_value(answer).expect("views serialise")
}

/// Creates a group; the caller is its owner.
#[utoipa::path(post, path = "/api/groups", tag = "groups", request_body = CreateGroupRequest,
    params(("X-Agent-ID" = Option<String>, Header, description = "acting agent (master key or legacy mode only)")),
    responses((status = 201, body = GroupFull), CreateGroupErrors))]
pub async fn create_group(
    State(app): State<AppState>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let actor = actor(&app, &headers, &req).await?;
    let body: CreateGroupRequest = req.json()?;
    let access = body.access.unwrap_or_default();
    let settings = body.settings.unwrap_or_default();
    let input = NewGroup {
        name: body.name,
        access: access.access_type,
        join_key: access.join_key,
        history_visible: settings.history_visible,
        max_members: settings.max_members,
        message_ttl_sec: settings.message_ttl_sec,
    };
    let group = app.hub.create_group(&actor, input).await?;
    let detail = json!({ "group_id": group.id, "access": group.access.as_str() });
    app.audit(&req, AuditKind::GroupCreated, &actor, detail)
        .await;
    let view = app.hub.group_view(&actor, &group.id).await?;
    Ok((StatusCode::CREATED, Json(view_json(view))))
}

/// A group: the whole group for members, a summary for others.
#[utoipa::path(get, path = "/api/groups/{group_id}", tag = "groups",
    params(("group_id" = String, Path, description = "URL-encoded group://… id")),
    responses((status = 200, description = "GroupFull for members, GroupSummary for others", body = GroupAnswer), GetGroupErrors))]
pub async fn get_group(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<Value>> {
    let actor = actor(&app, &headers, &req).await?;
    Ok(Json(view_json(
        app.hub.group_view(&actor, &group_id).await?,
    )))
}

/// Changes a group's name or settings (owner or admin).
#[utoipa::path(put, path = "/api/groups/{group_id}", tag = "groups",
    params(("group_id" = String, Path)), request_body = UpdateGroupRequest,
    responses((status = 200, body = GroupFull), UpdateGroupErrors))]
pub async fn update_group(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<Value>> {
    let actor = actor(&app, &headers, &req).await?;
    let body: UpdateGroupRequest = req.json()?;
    let settings = body.settings.unwrap_or_default();
    let changed: Vec<&str> = [
        ("name", body.name.is_some()),
        ("history_visible", settings.history_visible.is_some()),
        ("max_members", settings.max_members.is_some()),
        ("message_ttl_sec", settings.message_ttl_sec.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, given)| given.then_some(field))
    .collect();
    let update = GroupUpdate {
        name: body.name,
        history_visible: settings.history_visible,
        max_members: settings.max_members,
        message_ttl_sec: settings.message_ttl_sec,
    };
    let view = app.hub.update_group(&actor, &group_id, update).await?;
    let detail = json!({ "group_id": group_id, "changed": changed });
    app.audit(&req, AuditKind::GroupUpdated, &actor, detail)
        .await;
    Ok(Json(view_json(view)))
}

/// Deletes a group with its members and history (owner).
#[utoipa::path(delete, path = "/api/groups/{group_id}", tag = "groups",
    params(("group_id" = String, Path)),
    responses((status = 204), DeleteGroupErrors))]
pub async fn delete_group(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<StatusCode> {
    let actor = actor(&app, &headers, &req).await?;
    app.hub.delete_group(&actor, &group_id).await?;
    let detail = json!({ "group_id": group_id });
    app.audit(&req, AuditKind::GroupDeleted, &actor, detail)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Members list response.
#[derive(Debug, Serialize, ToSchema)]
pub struct MembersResponse {
    pub members: Vec<MemberView>,
}

/// The members (members only).
#[utoipa::path(get, path = "/api/groups/{group_id}/members", tag = "groups",
    params(("group_id" = String, Path)),
    responses((status = 200, body = MembersResponse), ListMembersErrors))]
pub async fn list_members(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<MembersResponse>> {
    let actor = actor(&app, &headers, &req).await?;
    let members = app.hub.group_members(&actor, &group_id).await?;
    Ok(Json(MembersResponse {
        members: members.into_iter().map(MemberView::from).collect(),
    }))
}

/// Adds a member (owner or admin; only the owner adds admins).
#[utoipa::path(post, path = "/api/groups/{group_id}/members", tag = "groups",
    params(("group_id" = String, Path)), request_body = AddMemberRequest,
    responses((status = 200, body = GroupFull), AddMemberErrors))]
pub async fn add_member(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<Value>> {
    let actor = actor(&app, &headers, &req).await?;
    let body: AddMemberRequest = req.json()?;
    let view = app
        .hub
        .add_group_member(
            &actor,
            &group_id,
            body.agent_id.as_deref(),
            body.role.as_deref(),
        )
        .await?;
    let detail = json!({ "group_id": group_id, "member": body.agent_id, "role": body.role });
    app.audit(&req, AuditKind::GroupMemberAdded, &actor, detail)
        .await;
    Ok(Json(view_json(view)))
}

/// Removes a member (owner or admin; never the owner).
#[utoipa::path(delete, path = "/api/groups/{group_id}/members/{agent_id}", tag = "groups",
    params(("group_id" = String, Path), ("agent_id" = String, Path)),
    responses((status = 200, body = GroupFull), RemoveMemberErrors))]
pub async fn remove_member(
    State(app): State<AppState>,
    ApiPath((group_id, agent_id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<Value>> {
    let actor = actor(&app, &headers, &req).await?;
    let view = app
        .hub
        .remove_group_member(&actor, &group_id, &agent_id)
        .await?;
    let detail = json!({ "group_id": group_id, "member": agent_id });
    app.audit(&req, AuditKind::GroupMemberRemoved, &actor, detail)
        .await;
    Ok(Json(view_json(view)))
}

/// Joins a group: open, or key-protected with the right key.
#[utoipa::path(post, path = "/api/groups/{group_id}/join", tag = "groups",
    params(("group_id" = String, Path)), request_body = JoinRequest,
    responses((status = 200, body = GroupFull), JoinErrors))]
pub async fn join_group(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<Value>> {
    let actor = actor(&app, &headers, &req).await?;
    let body: JoinRequest = req.json()?;
    let view = app
        .hub
        .join_group(&actor, &group_id, body.key.as_deref())
        .await?;
    let detail = json!({ "group_id": group_id, "with_key": body.key.is_some() });
    app.audit(&req, AuditKind::GroupJoined, &actor, detail)
        .await;
    Ok(Json(view_json(view)))
}

/// Leave response.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaveResponse {
    pub message: &'static str,
    pub group_id: String,
}

/// Leaves a group (not the owner).
#[utoipa::path(post, path = "/api/groups/{group_id}/leave", tag = "groups",
    params(("group_id" = String, Path)),
    responses((status = 200, body = LeaveResponse), LeaveErrors))]
pub async fn leave_group(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<LeaveResponse>> {
    let actor = actor(&app, &headers, &req).await?;
    app.hub.leave_group(&actor, &group_id).await?;
    let detail = json!({ "group_id": group_id });
    app.audit(&req, AuditKind::GroupLeft, &actor, detail).await;
    Ok(Json(LeaveResponse {
        message: "Left group",
        group_id,
    }))
}

/// One member's copy in a post response.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub agent_id: String,
    pub message_id: String,
    /// `delivered` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<CopyOutcome> for DeliveryView {
    fn from(c: CopyOutcome) -> Self {
        DeliveryView {
            agent_id: c.agent_id,
            message_id: c.message_id,
            status: c.status,
            reason: c.reason,
        }
    }
}

/// Post response.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostResponse {
    /// The `group_message_id` every copy carries.
    pub message_id: String,
    pub group_id: String,
    pub deliveries: Vec<DeliveryView>,
    pub delivered: usize,
    pub failed: usize,
    /// Present and true when the idempotency key was seen with the same content.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl From<GroupPosted> for PostResponse {
    fn from(p: GroupPosted) -> Self {
        let delivered = p
            .post
            .deliveries
            .iter()
            .filter(|d| d.status == crate::store::COPY_DELIVERED)
            .count();
        PostResponse {
            message_id: p.post.id,
            group_id: p.post.group_id,
            failed: p.post.deliveries.len() - delivered,
            delivered,
            deliveries: p
                .post
                .deliveries
                .into_iter()
                .map(DeliveryView::from)
                .collect(),
            duplicate: p.duplicate,
        }
    }
}

/// Posts a signed envelope (`to` = the group id) to every other member, atomically.
#[utoipa::path(post, path = "/api/groups/{group_id}/messages", tag = "groups",
    params(("group_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Object, description = "ADMP envelope signed by the sender, `to` = group id; under AGENT_AUTH=legacy also {subject, body, correlation_id?, reply_to?}"),
    responses((status = 201, body = PostResponse), (status = 200, body = PostResponse), PostErrors))]
pub async fn post_message(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<(StatusCode, Json<PostResponse>)> {
    let actor = actor(&app, &headers, &req).await?;
    let body = req.json_value()?;
    let input = PostInput {
        raw: &req.body,
        body,
        idempotency_key: req.idempotency_key.clone(),
        caller: &req.caller,
        caller_agent: req.agent.as_ref(),
    };
    let posted = app.hub.post_to_group(&actor, &group_id, input).await?;
    let status = if posted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(PostResponse::from(posted))))
}

/// History query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// 1..100 (default 50).
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    pub before: Option<String>,
}

/// One post in the history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItem {
    /// The `group_message_id`.
    pub id: String,
    pub group_id: String,
    pub from: String,
    #[schema(value_type = Object)]
    pub envelope: Envelope,
    pub created_at: i64,
}

impl From<GroupPost> for HistoryItem {
    fn from(p: GroupPost) -> Self {
        HistoryItem {
            id: p.id,
            group_id: p.group_id,
            from: p.sender,
            envelope: p.envelope,
            created_at: p.created_at,
        }
    }
}

/// History response.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub messages: Vec<HistoryItem>,
    pub count: usize,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// The group's posts, newest first (members; `history_visible`).
#[utoipa::path(get, path = "/api/groups/{group_id}/messages", tag = "groups",
    params(("group_id" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryResponse), HistoryErrors))]
pub async fn history(
    State(app): State<AppState>,
    ApiPath(group_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Json<HistoryResponse>> {
    let actor = actor(&app, &headers, &req).await?;
    let page = app
        .hub
        .group_history(&actor, &group_id, query.limit, query.before.as_deref())
        .await?;
    let messages: Vec<HistoryItem> = page.items.into_iter().map(HistoryItem::from).collect();
    Ok(Json(HistoryResponse {
        count: messages.len(),
        has_more: page.next_cursor.is_some(),
        next_cursor: page.next_cursor,
        messages,
    }))
}

/// One of an agent's groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentGroupView {
    pub id: String,
    pub name: String,
    pub role: &'static str,
    pub member_count: u64,
}

/// An agent's groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentGroupsResponse {
    pub groups: Vec<AgentGroupView>,
    /// `cursor` of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `GET /api/agents/{agent_id}/groups` query.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AgentGroupsQuery {
    /// 1..1000 (default 1000).
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The groups an agent belongs to (the agent itself or the operator), in
/// group id order.
#[utoipa::path(get, path = "/api/agents/{agent_id}/groups", tag = "groups",
    params(("agent_id" = String, Path), AgentGroupsQuery),
    responses((status = 200, body = AgentGroupsResponse), AgentGroupsErrors))]
pub async fn agent_groups(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<AgentGroupsQuery>,
    req: Authed,
) -> ApiResult<Json<AgentGroupsResponse>> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let page = app
        .hub
        .agent_groups(&agent_id, query.limit, query.cursor.as_deref())
        .await?;
    Ok(Json(AgentGroupsResponse {
        next_cursor: page.next_cursor,
        groups: page
            .items
            .into_iter()
            .map(|(g, role): (Group, GroupRole)| AgentGroupView {
                id: g.id,
                name: g.name,
                role: role.as_str(),
                member_count: g.member_count,
            })
            .collect(),
    }))
}
