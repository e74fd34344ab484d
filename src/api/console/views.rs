//! The console's pages (GET only): each reads one page from the store and
//! renders a template from `templates/`. Lists take `cursor` (the store's)
//! and never load more than one page.

use std::time::Instant;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use futures::future::join_all;
use serde::Deserialize;

use super::super::AppState;
use super::session::{CachedCounts, MAX_FAILED_LOGINS, Operator};
use super::{PageError, PageResult, render};
use crate::store::{
    Agent, Delivery, DeliveryAttempt, Group, GroupMember, GroupPost, GroupRole, Message, Page,
    StateCounts,
};
use crate::telemetry::wall_ms;

/// Rows per list page.
pub const PAGE_SIZE: usize = 50;
/// Webhook attempts shown on an agent's page.
const ATTEMPTS_SHOWN: usize = 20;
/// Groups per page on an agent's page.
pub const GROUPS_SHOWN: usize = 20;
/// Longest accepted search prefix, cursor or id in a query string.
const MAX_QUERY_LEN: usize = 255;

/// What every signed-in page shows around its content.
pub struct Layout {
    pub csrf: String,
    pub actor: &'static str,
    pub title: String,
    started: Instant,
}

impl Layout {
    fn new(operator: &Operator, title: impl Into<String>) -> Self {
        Layout {
            csrf: operator.csrf.clone(),
            actor: operator.actor,
            title: title.into(),
            started: Instant::now(),
        }
    }

    /// Time spent on the page so far (shown in the footer).
    pub fn elapsed_ms(&self) -> String {
        format!("{:.1}", self.started.elapsed().as_secs_f64() * 1000.0)
    }
}

/// Epoch milliseconds as RFC 3339 (UTC), "—" for none.
pub fn when(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "—".into();
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A query-string value within bounds, or a 400 page.
fn bounded<'a>(
    name: &'static str,
    value: &'a Option<String>,
) -> Result<Option<&'a str>, PageError> {
    match value.as_deref() {
        Some(v) if v.len() > MAX_QUERY_LEN => Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            format!("{name} is longer than {MAX_QUERY_LEN} characters"),
        )),
        Some("") | None => Ok(None),
        Some(v) => Ok(Some(v)),
    }
}

/// Query of the list pages.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub q: Option<String>,
    pub cursor: Option<String>,
    pub notice: Option<String>,
    /// An agent's page: the last group id of the previous page of its groups.
    pub groups_after: Option<String>,
}

/// A fixed message a redirect after a change asks the next page to show.
fn notice_text(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "requeued" => "Dead letter requeued.",
        "requeued-all" => "Dead letters requeued.",
        "requeued-more" => "1000 dead letters requeued; more remain (requeue again).",
        "retried" => "Delivery scheduled now; the worker attempts it at once.",
        "deleted" => "Agent deleted; its live messages were dead-lettered.",
        _ => return None,
    })
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub status: u16,
    pub code: &'a str,
    pub message: &'a str,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub error: Option<&'static str>,
}

/// One minute's bar pair in the overview's chart.
pub struct RateBar {
    pub label: String,
    pub sent: u64,
    pub acked: u64,
    pub x: usize,
    pub sent_h: u64,
    pub acked_h: u64,
    pub sent_y: u64,
    pub acked_y: u64,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub layout: Layout,
    pub backend: String,
    pub ready: bool,
    pub ready_detail: String,
    pub agents_total: u64,
    pub agents_online: u64,
    pub messages: StateCounts,
    pub rates: Vec<RateBar>,
    pub sent_last_minute: u64,
    pub acked_last_minute: u64,
    pub sweep_passes: u64,
    pub sweep_failures: u64,
    pub sweep_last: String,
    pub webhook_attempts: u64,
    pub webhook_delivered: u64,
    pub webhook_retried: u64,
    pub webhook_failed: u64,
    pub webhook_cancelled: u64,
    pub max_failed_logins: u32,
    /// False until the first background count is done.
    pub counted: bool,
    /// Age of the counts shown (they are refreshed in the background).
    pub counts_age_sec: i64,
}

/// Chart height in pixels.
const CHART_H: u64 = 80;

/// `GET /console`.
pub async fn overview(State(app): State<AppState>, operator: Operator) -> PageResult {
    let layout = Layout::new(&operator, "Overview");
    let started = Instant::now();
    let ping = app.hub.store.ping().await;
    let counts = hub_counts(&app);
    let stats = counts.map(|c| c.stats).unwrap_or_default();
    let counts_age_sec = counts.map_or(0, |c| (app.hub.clock.now_ms() - c.at).max(0) / 1000);
    let (ready, ready_detail) = match ping {
        Ok(()) => (
            true,
            format!(
                "store answered in {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            ),
        ),
        Err(e) => (false, e.to_string()),
    };
    let minutes = app.hub.metrics.recent.snapshot(wall_ms());
    let peak = minutes
        .iter()
        .map(|m| m.sent.max(m.acked))
        .max()
        .unwrap_or(0)
        .max(1);
    let rates = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let sent_h = m.sent * CHART_H / peak;
            let acked_h = m.acked * CHART_H / peak;
            RateBar {
                label: when(Some(m.minute))[11..16].to_string(),
                sent: m.sent,
                acked: m.acked,
                x: i * 24,
                sent_h,
                acked_h,
                sent_y: CHART_H - sent_h,
                acked_y: CHART_H - acked_h,
            }
        })
        .collect::<Vec<_>>();
    let last = minutes.last().copied().unwrap_or_default();
    let sweep = app.jobs.sweep.snapshot();
    let hooks = app.jobs.webhooks.snapshot();
    let sweep_last = match sweep.last {
        Some(r) => format!(
            "{} requeued, {} dead, {} expired, {} purged, {} offline in {:.1} ms",
            r.reclaimed.requeued,
            r.reclaimed.dead,
            r.expired,
            r.purged,
            r.offline,
            r.durations.total.as_secs_f64() * 1000.0
        ),
        None => "no pass completed yet".into(),
    };
    Ok(render(&OverviewPage {
        layout,
        backend: format!("{:?}", app.hub.config.storage_backend).to_lowercase(),
        ready,
        ready_detail,
        agents_total: stats.agents_total,
        agents_online: stats.agents_online,
        messages: stats.messages,
        rates,
        sent_last_minute: last.sent,
        acked_last_minute: last.acked,
        sweep_passes: sweep.passes,
        sweep_failures: sweep.failures,
        sweep_last,
        webhook_attempts: hooks.attempts,
        webhook_delivered: hooks.delivered,
        webhook_retried: hooks.retried,
        webhook_failed: hooks.failed,
        webhook_cancelled: hooks.cancelled,
        max_failed_logins: MAX_FAILED_LOGINS,
        counted: counts.is_some(),
        counts_age_sec,
    }))
}

/// Counts older than this are refreshed in the background.
const COUNTS_FRESH_MS: i64 = 15_000;

/// The hub-wide counts for the overview, if taken yet. Counting every
/// message is a scan of the whole table (seconds at a million rows on
/// SQLite), so a page never waits for it: it shows the last counts taken
/// and, when there are none or they are older than [`COUNTS_FRESH_MS`],
/// starts a recount in the background (one at a time).
fn hub_counts(app: &AppState) -> Option<CachedCounts> {
    use std::sync::atomic::Ordering;
    let console = app.console.clone()?;
    let now = app.hub.clock.now_ms();
    let cached = *console.counts.lock();
    let stale = cached.is_none_or(|c| now - c.at >= COUNTS_FRESH_MS);
    if stale && !console.refreshing.swap(true, Ordering::AcqRel) {
        let hub = app.hub.clone();
        tokio::spawn(async move {
            match hub.store.stats().await {
                Ok(stats) => {
                    *console.counts.lock() = Some(CachedCounts {
                        at: hub.clock.now_ms(),
                        stats,
                    });
                }
                Err(e) => tracing::warn!(error = %e, "console: counting messages failed"),
            }
            console.refreshing.store(false, Ordering::Release);
        });
    }
    cached
}

/// One row of the agents list.
pub struct AgentRow {
    pub id: String,
    pub online: bool,
    pub last_heartbeat: String,
    pub depth: u64,
    pub dead: u64,
    pub webhook: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
pub struct AgentsPage {
    pub layout: Layout,
    pub q: String,
    pub rows: Vec<AgentRow>,
    pub next_cursor: Option<String>,
}

fn webhook_state(agent: &Agent) -> String {
    match &agent.webhook_url {
        Some(url) => url.clone(),
        None => "none".into(),
    }
}

/// `GET /console/agents?q=<id prefix>&cursor=`.
pub async fn agents(
    State(app): State<AppState>,
    operator: Operator,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let layout = Layout::new(&operator, "Agents");
    let q = bounded("q", &query.q)?.unwrap_or("").trim().to_string();
    let cursor = bounded("cursor", &query.cursor)?;
    let page = app.hub.store.search_agents(&q, PAGE_SIZE, cursor).await?;
    let counts = join_all(
        page.items
            .iter()
            .map(|a| app.hub.store.inbox_stats(&a.agent_id)),
    )
    .await;
    let rows = page
        .items
        .iter()
        .zip(counts)
        .map(|(a, c)| {
            let c = c.unwrap_or_default();
            AgentRow {
                id: a.agent_id.clone(),
                online: a.online,
                last_heartbeat: when(Some(a.last_heartbeat)),
                depth: c.queued + c.leased,
                dead: c.dead,
                webhook: webhook_state(a),
            }
        })
        .collect();
    Ok(render(&AgentsPage {
        layout,
        q,
        rows,
        next_cursor: page.next_cursor,
    }))
}

/// One key of an agent.
pub struct KeyRow {
    pub version: u32,
    pub public_key: String,
    pub status: String,
}

/// One dead letter in a list.
pub struct DeadRow {
    pub id: String,
    pub recipient: String,
    pub sender: String,
    pub ended: String,
    pub reason: String,
    pub attempts: u32,
}

impl From<&Message> for DeadRow {
    fn from(m: &Message) -> Self {
        DeadRow {
            id: m.id.clone(),
            recipient: m.recipient.clone(),
            sender: m.sender.clone(),
            ended: when(m.ended_at),
            reason: m.dead_reason.clone().unwrap_or_default(),
            attempts: m.attempts,
        }
    }
}

/// One webhook attempt.
pub struct AttemptRow {
    pub at: String,
    pub message_id: String,
    pub attempt: u32,
    pub status: String,
    pub latency_ms: u64,
    pub error: String,
}

impl From<&DeliveryAttempt> for AttemptRow {
    fn from(a: &DeliveryAttempt) -> Self {
        AttemptRow {
            at: when(Some(a.at)),
            message_id: a.message_id.clone(),
            attempt: a.attempt,
            status: a.status_code.map_or("—".into(), |s| s.to_string()),
            latency_ms: a.latency_ms,
            error: a.error.clone().unwrap_or_default(),
        }
    }
}

/// One of an agent's groups.
pub struct GroupRow {
    pub id: String,
    pub name: String,
    pub role: &'static str,
    pub member_count: u64,
    pub max_members: u32,
    pub access: &'static str,
}

impl From<(Group, GroupRole)> for GroupRow {
    fn from((g, role): (Group, GroupRole)) -> Self {
        GroupRow {
            role: role.as_str(),
            member_count: g.member_count,
            max_members: g.settings.max_members,
            access: g.access.as_str(),
            id: g.id,
            name: g.name,
        }
    }
}

#[derive(Template)]
#[template(path = "agent.html")]
pub struct AgentPage {
    pub layout: Layout,
    pub notice: Option<&'static str>,
    pub id: String,
    pub agent_type: String,
    pub online: bool,
    pub last_heartbeat: String,
    pub created: String,
    pub counts: StateCounts,
    pub webhook: String,
    pub webhook_overlap: Option<String>,
    pub trusted: Vec<String>,
    pub keys: Vec<KeyRow>,
    pub dead: Vec<DeadRow>,
    pub dead_next: Option<String>,
    pub attempts: Vec<AttemptRow>,
    pub groups: Vec<GroupRow>,
    /// `groups_after` of the next page of groups.
    pub groups_next: Option<String>,
}

/// `GET /console/agents/{id}?cursor=&groups_after=` (the cursor pages its
/// dead letters, `groups_after` its groups).
pub async fn agent(
    State(app): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let layout = Layout::new(&operator, format!("Agent {agent_id}"));
    let cursor = bounded("cursor", &query.cursor)?;
    let groups_after = bounded("groups_after", &query.groups_after)?;
    let agent = app.hub.agent(&agent_id).await?;
    let (counts, dead, attempts, groups) = tokio::join!(
        app.hub.store.inbox_stats(&agent_id),
        app.hub.store.list_dead(&agent_id, PAGE_SIZE, cursor),
        app.hub.store.list_attempts(&agent_id, ATTEMPTS_SHOWN),
        app.hub
            .store
            .agent_groups(&agent_id, GROUPS_SHOWN + 1, groups_after),
    );
    let (counts, dead, attempts) = (counts?, dead?, attempts?);
    let Page {
        items: groups,
        next_cursor: groups_next,
    } = Page::from_overfetch(groups?, GROUPS_SHOWN, |(g, _)| g.id.clone());
    let now = app.hub.clock.now_ms();
    let keys = agent
        .keys
        .iter()
        .rev()
        .map(|k| KeyRow {
            version: k.version,
            public_key: k.public_key.clone(),
            status: match k.valid_until {
                None => "current".into(),
                Some(until) if until > now => {
                    format!("rotation overlap until {}", when(Some(until)))
                }
                Some(until) => format!("retired at {}", when(Some(until))),
            },
        })
        .collect();
    Ok(render(&AgentPage {
        layout,
        notice: notice_text(query.notice.as_deref()),
        webhook: webhook_state(&agent),
        webhook_overlap: agent
            .previous_webhook_secret
            .as_ref()
            .filter(|p| p.valid_until > now)
            .map(|p| when(Some(p.valid_until))),
        id: agent.agent_id,
        agent_type: agent.agent_type,
        online: agent.online,
        last_heartbeat: when(Some(agent.last_heartbeat)),
        created: when(Some(agent.created_at)),
        counts,
        trusted: agent.trusted_agents,
        keys,
        dead: dead.items.iter().map(DeadRow::from).collect(),
        dead_next: dead.next_cursor,
        attempts: attempts.iter().map(AttemptRow::from).collect(),
        groups: groups.into_iter().map(GroupRow::from).collect(),
        groups_next,
    }))
}

/// One member of a group.
pub struct MemberRow {
    pub agent_id: String,
    pub role: &'static str,
    pub joined: String,
}

impl From<GroupMember> for MemberRow {
    fn from(m: GroupMember) -> Self {
        MemberRow {
            role: m.role.as_str(),
            joined: when(Some(m.joined_at)),
            agent_id: m.agent_id,
        }
    }
}

/// One post of a group's history.
pub struct PostRow {
    pub id: String,
    pub sender: String,
    pub at: String,
    /// As the sender wrote it (escaped by the template).
    pub subject: String,
    pub copies: usize,
    /// Copies stored (the others failed, e.g. a full inbox).
    pub delivered: usize,
}

impl From<&GroupPost> for PostRow {
    fn from(p: &GroupPost) -> Self {
        let envelope = p.envelope.to_value();
        PostRow {
            id: p.id.clone(),
            sender: p.sender.clone(),
            at: when(Some(p.created_at)),
            subject: envelope["subject"].as_str().unwrap_or_default().to_string(),
            copies: p.deliveries.len(),
            delivered: p
                .deliveries
                .iter()
                .filter(|d| d.status == crate::store::COPY_DELIVERED)
                .count(),
        }
    }
}

#[derive(Template)]
#[template(path = "group.html")]
pub struct GroupPage {
    pub layout: Layout,
    pub g: Group,
    pub access: &'static str,
    pub created: String,
    pub members: Vec<MemberRow>,
    pub posts: Vec<PostRow>,
    pub next_cursor: Option<String>,
}

/// `GET /console/groups/{id}?cursor=`: a group read-only, its members
/// (at most the group's `max_members`, itself at most 1000) and one page of
/// its history, newest first.
pub async fn group(
    State(app): State<AppState>,
    operator: Operator,
    Path(group_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let layout = Layout::new(&operator, format!("Group {group_id}"));
    let cursor = bounded("cursor", &query.cursor)?;
    let g = app
        .hub
        .store
        .get_group(&group_id)
        .await?
        .ok_or_else(|| crate::hub::HubError::GroupNotFound(group_id.clone()))?;
    let (members, history) = tokio::join!(
        app.hub.store.group_members(&group_id),
        app.hub.store.group_history(&group_id, PAGE_SIZE, cursor),
    );
    let (members, history) = (members?, history?);
    Ok(render(&GroupPage {
        layout,
        access: g.access.as_str(),
        created: when(Some(g.created_at)),
        members: members.into_iter().map(MemberRow::from).collect(),
        posts: history.items.iter().map(PostRow::from).collect(),
        next_cursor: history.next_cursor,
        g,
    }))
}

#[derive(Template)]
#[template(path = "delete.html")]
pub struct DeletePage {
    pub layout: Layout,
    pub id: String,
    pub live: u64,
}

/// `GET /console/agents/{id}/delete`: the confirmation form.
pub async fn confirm_delete(
    State(app): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
) -> PageResult {
    let layout = Layout::new(&operator, format!("Delete {agent_id}"));
    let agent = app.hub.agent(&agent_id).await?;
    let counts = app.hub.store.inbox_stats(&agent_id).await?;
    Ok(render(&DeletePage {
        layout,
        id: agent.agent_id,
        live: counts.queued + counts.leased,
    }))
}

/// Query of the message lookup.
#[derive(Debug, Deserialize)]
pub struct LookupQuery {
    pub id: Option<String>,
}

/// `GET /console/messages?id=`: to the message's page.
pub async fn message_lookup(_operator: Operator, Query(query): Query<LookupQuery>) -> PageResult {
    match bounded("id", &query.id)? {
        Some(id) => Ok(Redirect::to(&format!(
            "/console/messages/{}",
            urlencoding::encode(id.trim())
        ))
        .into_response()),
        None => Ok(Redirect::to("/console").into_response()),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub layout: Layout,
    pub notice: Option<&'static str>,
    pub m: Message,
    pub state: &'static str,
    pub is_dead: bool,
    pub sender_known: bool,
    pub created: String,
    pub updated: String,
    pub visible: String,
    pub expires: String,
    pub lease_until: String,
    pub ended: String,
    pub envelope: String,
    pub result: String,
}

/// `GET /console/messages/{id}`.
pub async fn message(
    State(app): State<AppState>,
    operator: Operator,
    Path(message_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let layout = Layout::new(&operator, format!("Message {message_id}"));
    let m = app
        .hub
        .store
        .get_message(&message_id)
        .await?
        .ok_or_else(|| {
            PageError::new(
                StatusCode::NOT_FOUND,
                "MESSAGE_NOT_FOUND",
                format!("no message {message_id} (purged after retention, or never stored)"),
            )
        })?;
    let sender_known = app.hub.store.get_agent(&m.sender).await?.is_some();
    let envelope = serde_json::to_string_pretty(&m.envelope.to_value()).unwrap_or_default();
    let result = m
        .result
        .as_ref()
        .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
        .unwrap_or_default();
    Ok(render(&MessagePage {
        layout,
        notice: notice_text(query.notice.as_deref()),
        state: m.state.as_str(),
        is_dead: m.state == crate::store::MessageState::Dead,
        sender_known,
        created: when(Some(m.created_at)),
        updated: when(Some(m.updated_at)),
        visible: when(Some(m.visible_at)),
        expires: when(Some(m.expires_at)),
        lease_until: when(m.lease_until),
        ended: when(m.ended_at),
        envelope,
        result,
        m,
    }))
}

#[derive(Template)]
#[template(path = "dead.html")]
pub struct DeadPage {
    pub layout: Layout,
    pub rows: Vec<DeadRow>,
    pub next_cursor: Option<String>,
}

/// `GET /console/dead?cursor=`: dead letters of every inbox.
pub async fn dead_letters(
    State(app): State<AppState>,
    operator: Operator,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let layout = Layout::new(&operator, "Dead letters");
    let cursor = bounded("cursor", &query.cursor)?;
    let page = app.hub.store.list_dead_all(PAGE_SIZE, cursor).await?;
    Ok(render(&DeadPage {
        layout,
        rows: page.items.iter().map(DeadRow::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One failing delivery.
pub struct DeliveryRow {
    pub id: String,
    pub agent_id: String,
    pub message_id: String,
    pub state: &'static str,
    pub attempts: u32,
    pub next_attempt: String,
    pub updated: String,
    pub last_status: String,
    pub last_error: String,
}

impl From<&Delivery> for DeliveryRow {
    fn from(d: &Delivery) -> Self {
        DeliveryRow {
            id: d.id.clone(),
            agent_id: d.agent_id.clone(),
            message_id: d.message_id.clone(),
            state: d.state.as_str(),
            attempts: d.attempts,
            next_attempt: when(Some(d.next_attempt_at)),
            updated: when(Some(d.updated_at)),
            last_status: d.last_status.map_or("—".into(), |s| s.to_string()),
            last_error: d.last_error.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "deliveries.html")]
pub struct DeliveriesPage {
    pub layout: Layout,
    pub notice: Option<&'static str>,
    pub rows: Vec<DeliveryRow>,
    pub next_cursor: Option<String>,
}

/// `GET /console/deliveries?cursor=`: deliveries whose last attempt failed.
pub async fn failing_deliveries(
    State(app): State<AppState>,
    operator: Operator,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let layout = Layout::new(&operator, "Failing webhook deliveries");
    let cursor = bounded("cursor", &query.cursor)?;
    let page = app
        .hub
        .store
        .list_failing_deliveries(PAGE_SIZE, cursor)
        .await?;
    Ok(render(&DeliveriesPage {
        layout,
        notice: notice_text(query.notice.as_deref()),
        rows: page.items.iter().map(DeliveryRow::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One audit event.
pub struct AuditRow {
    pub seq: u64,
    pub at: String,
    pub kind: String,
    pub agent_id: String,
    pub detail: String,
    pub hash: String,
    pub broken: bool,
}

/// The signed checkpoints as the audit page reports them.
pub struct CheckpointStatus {
    /// Public key that signs them (base64).
    pub public_key: String,
    /// `AUDIT_CHECKPOINT_EVERY`.
    pub every: u64,
    /// Checkpoints on this page.
    pub on_page: usize,
    /// The event the page's last checkpoint anchors.
    pub last_anchor: Option<u64>,
    /// The first checkpoint on the page that does not verify.
    pub failed_at: Option<u64>,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub layout: Layout,
    pub rows: Vec<AuditRow>,
    pub chain_valid: bool,
    pub broken_at: Option<u64>,
    pub next_cursor: Option<String>,
    /// `None` when the hub signs no checkpoints (no `AUDIT_SIGNING_KEY_FILE`).
    pub checkpoints: Option<CheckpointStatus>,
}

/// `GET /console/audit?cursor=`: the log from its start (or `cursor`), the
/// hash chain verified from the page's anchor.
pub async fn audit(
    State(app): State<AppState>,
    operator: Operator,
    Query(query): Query<ListQuery>,
) -> PageResult {
    let layout = Layout::new(&operator, "Audit log");
    let cursor = bounded("cursor", &query.cursor)?;
    let page = app.hub.audit_page(Some(PAGE_SIZE), cursor).await?;
    let checkpoints = app.hub.audit_public_key().map(|public_key| {
        let on_page: Vec<&crate::store::AuditEvent> = page
            .events
            .iter()
            .filter(|e| e.kind == crate::audit::CHECKPOINT_KIND)
            .collect();
        CheckpointStatus {
            public_key,
            every: app.hub.config.audit_checkpoint_every,
            on_page: on_page.len(),
            last_anchor: on_page.last().and_then(|e| e.detail["seq"].as_u64()),
            failed_at: page.checkpoint_failed_at,
        }
    });
    let rows = page
        .events
        .iter()
        .map(|e| AuditRow {
            seq: e.seq,
            at: when(Some(e.at)),
            kind: e.kind.clone(),
            agent_id: e.agent_id.clone().unwrap_or_default(),
            detail: e.detail.to_string(),
            hash: e.hash.chars().take(12).collect(),
            broken: page.broken_at.is_some_and(|b| e.seq >= b),
        })
        .collect();
    Ok(render(&AuditPage {
        layout,
        rows,
        chain_valid: page.chain_valid,
        broken_at: page.broken_at,
        next_cursor: page.next_cursor,
        checkpoints,
    }))
}
