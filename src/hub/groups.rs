//! Groups (GROUPS.md): who may create, read, change, join, leave and post,
//! and the signed fan-out. The store makes each step atomic; this module
//! decides who may take it.
//!
//! Decisions where GROUPS.md is silent (docs/API.md, "Groups"):
//! - the acting agent is the authenticated agent; the operator (master key)
//!   and unauthenticated `AGENT_AUTH=legacy` clients name it in `X-Agent-ID`;
//! - only the owner grants `admin`; admins add and remove plain members, the
//!   owner anyone but itself;
//! - a group's history is visible to its owner and admins always, to members
//!   when `history_visible`;
//! - deleting an agent deletes the groups it owns (store step, see migrations);
//! - `max_members` is at most [`MAX_GROUP_MEMBERS`], and one post writes at
//!   most [`MAX_FANOUT_BYTES`] of copies.

use rand::RngCore;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::messages::{ENVELOPE_VERSION, new_message_id};
use super::{Caller, GroupOp, Hub, HubError, HubResult, Refusal, ids};
use crate::config::AgentAuth;
use crate::signing::body_hash;
use crate::store::{
    Agent, FanOut, Group, GroupAccess, GroupChange, GroupMember, GroupPost, GroupRole,
    GroupSettings, Page, Posted, StoreError,
};

/// Largest `max_members`: bounds the work and the writes of one post.
pub const MAX_GROUP_MEMBERS: u32 = 1000;
/// Default `max_members` (GROUPS.md).
pub const DEFAULT_MAX_MEMBERS: u32 = 50;
/// Default history TTL: one week (GROUPS.md).
pub const DEFAULT_GROUP_TTL_SEC: u64 = 604_800;
/// Longest history TTL: one year.
pub const MAX_GROUP_TTL_SEC: u64 = 365 * 86_400;
/// Longest group name (GROUPS.md).
pub const MAX_NAME_LEN: usize = 100;
/// Longest join key.
pub const MAX_JOIN_KEY_LEN: usize = 256;
/// Envelope bytes × recipients one post may write (64 MiB): a 256 KiB
/// envelope reaches 256 members, a 64 KiB one 1000.
pub const MAX_FANOUT_BYTES: usize = 64 << 20;
/// Longest history page.
pub const MAX_HISTORY_PAGE: usize = 100;
/// Default history page (GROUPS.md).
pub const DEFAULT_HISTORY_PAGE: usize = 50;
/// Most groups listed for one agent.
pub const MAX_AGENT_GROUPS: usize = 1000;
/// Longest cursor of an agent's groups (a group id is at most
/// `group://` + a 100-character slug + `-` + 8 hex digits).
const MAX_GROUP_CURSOR: usize = 256;
/// Attempts at a fresh random id before giving up.
const ID_ATTEMPTS: usize = 5;

/// `POST /api/groups` as the API hands it over (name unparsed: its rules give their own codes).
#[derive(Debug, Default)]
pub struct NewGroup {
    pub name: Option<Value>,
    pub access: Option<String>,
    pub join_key: Option<String>,
    pub history_visible: Option<bool>,
    pub max_members: Option<u64>,
    pub message_ttl_sec: Option<u64>,
}

/// `PUT /api/groups/{id}`.
#[derive(Debug, Default)]
pub struct GroupUpdate {
    pub name: Option<Value>,
    pub history_visible: Option<bool>,
    pub max_members: Option<u64>,
    pub message_ttl_sec: Option<u64>,
}

/// What a caller sees of a group.
#[derive(Debug, Clone)]
pub enum GroupView {
    /// Members see the whole group.
    Full(Group, Vec<GroupMember>),
    /// Others see `{id, name, access_type, member_count}`.
    Summary(Group),
}

/// A post as the API hands it over.
pub struct PostInput<'a> {
    pub raw: &'a [u8],
    pub body: Value,
    pub idempotency_key: Option<String>,
    pub caller: &'a Caller,
    /// The caller's record as authentication read it.
    pub caller_agent: Option<&'a Agent>,
}

/// A stored (or, for a retry, previously stored) post.
#[derive(Debug, Clone)]
pub struct GroupPosted {
    pub post: GroupPost,
    pub duplicate: bool,
}

impl Hub {
    /// The agent a group request acts for (see the module docs).
    pub async fn acting_agent(&self, caller: &Caller, named: Option<&str>) -> HubResult<String> {
        self.authorize_gate(caller)?;
        let named = match caller {
            Caller::Agent { agent_id, .. } => return Ok(agent_id.clone()),
            Caller::Master => named,
            Caller::Anonymous if self.config.agent_auth == AgentAuth::Legacy => named,
            Caller::Anonymous => return Err(HubError::AuthRequired),
        };
        let Some(id) = named.map(ids::normalize) else {
            return Err(match caller {
                Caller::Master => HubError::invalid("X-Agent-ID", "names the agent to act for"),
                _ => HubError::AuthRequired,
            });
        };
        self.agent(id).await?;
        Ok(id.to_string())
    }

    /// `POST /api/groups`: the caller becomes the owner.
    pub async fn create_group(&self, actor: &str, input: NewGroup) -> HubResult<Group> {
        let name = validate_name(input.name.as_ref())?;
        let access = match input.access.as_deref() {
            None => GroupAccess::Open,
            Some(a) => GroupAccess::parse(a).ok_or_else(|| {
                HubError::invalid("access.type", "must be open, invite-only or key-protected")
            })?,
        };
        let join_key_hash = match (access, input.join_key) {
            (GroupAccess::KeyProtected, Some(key)) => Some(hash_join_key(&validate_key(&key)?)),
            (GroupAccess::KeyProtected, None) => {
                return Err(HubError::invalid(
                    "access.join_key",
                    "a key-protected group needs a join_key",
                ));
            }
            (_, _) => None,
        };
        let settings = GroupSettings {
            history_visible: input.history_visible.unwrap_or(true),
            max_members: validate_max_members(input.max_members)?.unwrap_or(DEFAULT_MAX_MEMBERS),
            message_ttl_sec: validate_ttl(input.message_ttl_sec)?.unwrap_or(DEFAULT_GROUP_TTL_SEC),
        };
        let now = self.now();
        for _ in 0..ID_ATTEMPTS {
            let group = Group {
                id: group_id(&name),
                name: name.clone(),
                created_by: actor.to_string(),
                access,
                join_key_hash: join_key_hash.clone(),
                settings,
                created_at: now,
                updated_at: now,
                member_count: 1,
            };
            match self.store.create_group(group.clone(), now).await {
                Ok(()) => return Ok(group),
                Err(StoreError::GroupExists) => continue,
                Err(StoreError::AgentNotFound) => {
                    return Err(refused(
                        GroupOp::Create,
                        Refusal::NotFound,
                        format!("agent {actor} not found"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(HubError::Internal("no free group id".into()))
    }

    async fn group(&self, group_id: &str) -> HubResult<Group> {
        self.store
            .get_group(group_id)
            .await?
            .ok_or_else(|| HubError::GroupNotFound(group_id.to_string()))
    }

    /// The actor's membership, or a 403 with `op`'s code.
    async fn membership(&self, op: GroupOp, group_id: &str, actor: &str) -> HubResult<GroupMember> {
        self.store
            .group_member(group_id, actor)
            .await?
            .ok_or_else(|| {
                refused(
                    op,
                    Refusal::Forbidden,
                    format!("{actor} is not a member of {group_id}"),
                )
            })
    }

    /// `GET /api/groups/{id}`: members see everything, others a summary.
    pub async fn group_view(&self, actor: &str, group_id: &str) -> HubResult<GroupView> {
        let group = self.group(group_id).await?;
        Ok(match self.store.group_member(group_id, actor).await? {
            Some(_) => {
                let members = self.store.group_members(group_id).await?;
                GroupView::Full(group, members)
            }
            None => GroupView::Summary(group),
        })
    }

    /// The whole group (after a change).
    async fn full(&self, group_id: &str) -> HubResult<GroupView> {
        let group = self.group(group_id).await?;
        let members = self.store.group_members(group_id).await?;
        Ok(GroupView::Full(group, members))
    }

    /// `PUT /api/groups/{id}` (owner or admin).
    pub async fn update_group(
        &self,
        actor: &str,
        group_id: &str,
        update: GroupUpdate,
    ) -> HubResult<GroupView> {
        self.group(group_id).await?;
        let me = self.membership(GroupOp::Update, group_id, actor).await?;
        if !me.role.manages() {
            return Err(refused(
                GroupOp::Update,
                Refusal::Forbidden,
                "only the owner or an admin may change the group",
            ));
        }
        let change = GroupChange {
            name: update
                .name
                .as_ref()
                .map(|n| validate_name(Some(n)))
                .transpose()?,
            history_visible: update.history_visible,
            max_members: validate_max_members(update.max_members)?,
            message_ttl_sec: validate_ttl(update.message_ttl_sec)?,
            now: self.now(),
        };
        self.store
            .update_group(group_id, &change)
            .await
            .map_err(|e| group_error(GroupOp::Update, e))?;
        self.full(group_id).await
    }

    /// `DELETE /api/groups/{id}` (owner).
    pub async fn delete_group(&self, actor: &str, group_id: &str) -> HubResult<()> {
        self.group(group_id).await?;
        let me = self.membership(GroupOp::Delete, group_id, actor).await?;
        if me.role != GroupRole::Owner {
            return Err(refused(
                GroupOp::Delete,
                Refusal::Forbidden,
                "only the owner may delete the group",
            ));
        }
        self.store.delete_group(group_id).await?;
        Ok(())
    }

    /// `GET /api/groups/{id}/members` (members).
    pub async fn group_members(&self, actor: &str, group_id: &str) -> HubResult<Vec<GroupMember>> {
        self.group(group_id).await?;
        self.membership(GroupOp::ListMembers, group_id, actor)
            .await?;
        Ok(self.store.group_members(group_id).await?)
    }

    /// `POST /api/groups/{id}/members` (owner or admin; only the owner grants admin).
    pub async fn add_group_member(
        &self,
        actor: &str,
        group_id: &str,
        agent_id: Option<&str>,
        role: Option<&str>,
    ) -> HubResult<GroupView> {
        let agent_id = match agent_id.map(ids::normalize) {
            None | Some("") => return Err(HubError::AgentIdRequired),
            Some(id) if !ids::is_valid_agent_id(id) => {
                return Err(HubError::invalid("agent_id", "not a valid agent id"));
            }
            Some(id) => id.to_string(),
        };
        let role = match role {
            None | Some("member") => GroupRole::Member,
            Some("admin") => GroupRole::Admin,
            Some(_) => return Err(HubError::invalid("role", "must be member or admin")),
        };
        self.group(group_id).await?;
        let me = self.membership(GroupOp::AddMember, group_id, actor).await?;
        let allowed = match role {
            GroupRole::Admin => me.role == GroupRole::Owner,
            _ => me.role.manages(),
        };
        if !allowed {
            return Err(refused(
                GroupOp::AddMember,
                Refusal::Forbidden,
                "only the owner may add admins; owners and admins add members",
            ));
        }
        let member = GroupMember {
            agent_id,
            role,
            joined_at: self.now(),
        };
        self.store
            .add_group_member(group_id, member)
            .await
            .map_err(|e| group_error(GroupOp::AddMember, e))?;
        self.full(group_id).await
    }

    /// `DELETE /api/groups/{id}/members/{agent}` (owner or admin; never the owner).
    pub async fn remove_group_member(
        &self,
        actor: &str,
        group_id: &str,
        agent_id: &str,
    ) -> HubResult<GroupView> {
        let agent_id = ids::normalize(agent_id);
        self.group(group_id).await?;
        let me = self
            .membership(GroupOp::RemoveMember, group_id, actor)
            .await?;
        let target = self
            .store
            .group_member(group_id, agent_id)
            .await?
            .ok_or_else(|| {
                refused(
                    GroupOp::RemoveMember,
                    Refusal::NotFound,
                    format!("{agent_id} is not a member"),
                )
            })?;
        let allowed = match target.role {
            GroupRole::Owner => false,
            GroupRole::Admin => me.role == GroupRole::Owner || me.agent_id == target.agent_id,
            GroupRole::Member => me.role.manages(),
        };
        if !allowed {
            return Err(refused(
                GroupOp::RemoveMember,
                Refusal::Forbidden,
                "the owner cannot be removed; only the owner removes admins",
            ));
        }
        self.store.remove_group_member(group_id, agent_id).await?;
        self.full(group_id).await
    }

    /// `POST /api/groups/{id}/join`.
    pub async fn join_group(
        &self,
        actor: &str,
        group_id: &str,
        key: Option<&str>,
    ) -> HubResult<GroupView> {
        let group = self.group(group_id).await?;
        match group.access {
            GroupAccess::Open => {}
            GroupAccess::InviteOnly => {
                return Err(refused(
                    GroupOp::Join,
                    Refusal::Forbidden,
                    "the group is invite-only",
                ));
            }
            GroupAccess::KeyProtected => {
                let ok = match (key, &group.join_key_hash) {
                    (Some(key), Some(hash)) => join_key_matches(key, hash),
                    _ => false,
                };
                if !ok {
                    return Err(refused(
                        GroupOp::Join,
                        Refusal::Forbidden,
                        "missing or wrong join key",
                    ));
                }
            }
        }
        let member = GroupMember {
            agent_id: actor.to_string(),
            role: GroupRole::Member,
            joined_at: self.now(),
        };
        self.store
            .add_group_member(group_id, member)
            .await
            .map_err(|e| group_error(GroupOp::Join, e))?;
        self.full(group_id).await
    }

    /// `POST /api/groups/{id}/leave`: the owner cannot leave.
    pub async fn leave_group(&self, actor: &str, group_id: &str) -> HubResult<()> {
        self.group(group_id).await?;
        let me = self.membership(GroupOp::Leave, group_id, actor).await?;
        if me.role == GroupRole::Owner {
            return Err(refused(
                GroupOp::Leave,
                Refusal::Forbidden,
                "the owner cannot leave; delete the group instead",
            ));
        }
        self.store.remove_group_member(group_id, actor).await?;
        Ok(())
    }

    /// `GET /api/agents/{id}/groups`.
    /// `GET /api/agents/{id}/groups`: a page of the agent's groups in group
    /// id order. Without `limit` a page holds `MAX_AGENT_GROUPS`, so a client
    /// that never pages sees every group of any agent with fewer.
    pub async fn agent_groups(
        &self,
        agent_id: &str,
        limit: Option<u64>,
        after: Option<&str>,
    ) -> HubResult<Page<(Group, GroupRole)>> {
        let limit = match limit {
            None => MAX_AGENT_GROUPS,
            Some(n) if (1..=MAX_AGENT_GROUPS as u64).contains(&n) => n as usize,
            Some(_) => {
                return Err(HubError::invalid(
                    "limit",
                    format!("must be between 1 and {MAX_AGENT_GROUPS}"),
                ));
            }
        };
        if after.is_some_and(|c| c.len() > MAX_GROUP_CURSOR) {
            return Err(HubError::invalid(
                "cursor",
                "must be the next_cursor of the previous page",
            ));
        }
        let rows = self.store.agent_groups(agent_id, limit + 1, after).await?;
        Ok(Page::from_overfetch(rows, limit, |(g, _)| g.id.clone()))
    }

    /// `GET /api/groups/{id}/messages`: owner and admins always, members when `history_visible`.
    pub async fn group_history(
        &self,
        actor: &str,
        group_id: &str,
        limit: Option<u64>,
        cursor: Option<&str>,
    ) -> HubResult<Page<GroupPost>> {
        let limit = match limit {
            None => DEFAULT_HISTORY_PAGE,
            Some(n) if (1..=MAX_HISTORY_PAGE as u64).contains(&n) => n as usize,
            Some(_) => {
                return Err(HubError::invalid(
                    "limit",
                    format!("must be between 1 and {MAX_HISTORY_PAGE}"),
                ));
            }
        };
        let group = self.group(group_id).await?;
        let me = self.membership(GroupOp::History, group_id, actor).await?;
        if !group.settings.history_visible && !me.role.manages() {
            return Err(refused(
                GroupOp::History,
                Refusal::Forbidden,
                "this group's history is not visible to members",
            ));
        }
        Ok(self.store.group_history(group_id, limit, cursor).await?)
    }

    /// `POST /api/groups/{id}/messages`: verify once, check membership, fan out atomically.
    pub async fn post_to_group(
        &self,
        actor: &str,
        group_id: &str,
        input: PostInput<'_>,
    ) -> HubResult<GroupPosted> {
        let group = self.group(group_id).await?;
        self.membership(GroupOp::Post, group_id, actor).await?;
        let Value::Object(body) = input.body else {
            return Err(HubError::InvalidEnvelope(
                "envelope must be a JSON object".into(),
            ));
        };
        let now = self.now();
        let legacy = !body.contains_key("signature") && self.config.agent_auth == AgentAuth::Legacy;
        let (envelope, raw, sender, key, content_hash, ttl_sec) = if legacy {
            let envelope = legacy_envelope(body, actor, group_id, now)?;
            let text = Value::Object(envelope.clone()).to_string();
            let hash = legacy_content_hash(&envelope, &text)?;
            (
                envelope,
                text.into_bytes(),
                actor.to_string(),
                None,
                hash,
                None,
            )
        } else {
            let verified = self
                .verify_signed(&body, input.raw, input.caller, input.caller_agent)
                .await?;
            if verified.fields.to != group_id {
                return Err(HubError::RecipientMismatch);
            }
            if verified.from != actor {
                return Err(HubError::SignerMismatch {
                    signer: actor.to_string(),
                    from: verified.from.clone(),
                });
            }
            let key = verified.idempotency_key(input.idempotency_key.clone())?;
            let hash = verified.content_hash();
            let ttl = verified.fields.ttl_sec;
            let from = verified.from.clone();
            (body, input.raw.to_vec(), from, Some(key), hash, ttl)
        };
        let key = match (key, input.idempotency_key) {
            (Some(k), _) => Some(k),
            (None, Some(k)) if k.is_empty() || k.len() > 255 => {
                return Err(HubError::invalid(
                    "Idempotency-Key",
                    "must be 1-255 characters",
                ));
            }
            (None, header) => header,
        };
        let recipients = group.member_count.saturating_sub(1) as usize;
        if raw.len().saturating_mul(recipients) > MAX_FANOUT_BYTES {
            return Err(HubError::FanOutTooLarge {
                limit: MAX_FANOUT_BYTES,
            });
        }
        let ttl_ms = ttl_sec.unwrap_or(self.config.message_ttl_sec) as i64 * 1000;
        let mut post = GroupPost {
            id: new_message_id(),
            group_id: group_id.to_string(),
            sender,
            envelope: crate::store::Envelope::from_object(&envelope),
            created_at: now,
            expires_at: now + group.settings.message_ttl_sec as i64 * 1000,
            idempotency_key: key,
            content_hash,
            deliveries: Vec::new(),
        };
        let fan = FanOut {
            quota: self.config.max_messages_per_agent,
            copy_expires_at: now + ttl_ms,
            now,
        };
        let mut attempts = 0;
        let posted = loop {
            match self.store.post_to_group(post.clone(), fan).await {
                Err(StoreError::MessageIdTaken) if attempts < ID_ATTEMPTS => {
                    attempts += 1;
                    post.id = new_message_id();
                }
                other => break other.map_err(|e| group_error(GroupOp::Post, e))?,
            }
        };
        Ok(match posted {
            Posted::Created(post) => {
                let mut pushed = false;
                for d in &post.deliveries {
                    if d.status == crate::store::COPY_DELIVERED {
                        self.wakers.wake(&d.agent_id);
                        pushed = true;
                    }
                }
                if pushed {
                    self.webhook_wake.notify_one();
                }
                GroupPosted {
                    post,
                    duplicate: false,
                }
            }
            Posted::Duplicate(post) => GroupPosted {
                post,
                duplicate: true,
            },
        })
    }
}

fn refused(op: GroupOp, refusal: Refusal, message: impl Into<String>) -> HubError {
    HubError::GroupRefused {
        op,
        refusal,
        message: message.into(),
    }
}

/// Store refusals of a group operation, with the operation's code.
fn group_error(op: GroupOp, e: StoreError) -> HubError {
    match e {
        StoreError::AgentNotFound => refused(op, Refusal::NotFound, "agent not found"),
        StoreError::AlreadyMember => refused(op, Refusal::Conflict, "already a member"),
        StoreError::GroupFull => refused(op, Refusal::Conflict, "maximum members reached"),
        StoreError::NotMember => refused(op, Refusal::Forbidden, "not a member of the group"),
        e => e.into(),
    }
}

/// A name is 1–100 characters of letters, digits, spaces, `-`, `_`, `.`.
fn validate_name(name: Option<&Value>) -> HubResult<String> {
    let name = match name {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim(),
        _ => return Err(HubError::InvalidName("name is required".into())),
    };
    if name.chars().count() > MAX_NAME_LEN {
        return Err(HubError::NameTooLong);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
    {
        return Err(HubError::InvalidNameChars);
    }
    Ok(name.to_string())
}

fn validate_key(key: &str) -> HubResult<String> {
    if key.is_empty() || key.len() > MAX_JOIN_KEY_LEN {
        return Err(HubError::invalid(
            "access.join_key",
            format!("must be 1-{MAX_JOIN_KEY_LEN} bytes"),
        ));
    }
    Ok(key.to_string())
}

fn validate_max_members(n: Option<u64>) -> HubResult<Option<u32>> {
    match n {
        None => Ok(None),
        Some(n) if (1..=u64::from(MAX_GROUP_MEMBERS)).contains(&n) => Ok(Some(n as u32)),
        Some(_) => Err(HubError::invalid(
            "settings.max_members",
            format!("must be between 1 and {MAX_GROUP_MEMBERS}"),
        )),
    }
}

fn validate_ttl(n: Option<u64>) -> HubResult<Option<u64>> {
    match n {
        None => Ok(None),
        Some(n) if (1..=MAX_GROUP_TTL_SEC).contains(&n) => Ok(Some(n)),
        Some(_) => Err(HubError::invalid(
            "settings.message_ttl_sec",
            format!("must be between 1 and {MAX_GROUP_TTL_SEC}"),
        )),
    }
}

/// `group://<slug>-<8 hex>`: the name lower-cased, each whitespace run one `-`.
pub fn group_id(name: &str) -> String {
    let slug = name
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase();
    format!("group://{slug}-{:08x}", rand::thread_rng().next_u32())
}

/// `sha256$<salt hex>$<hex sha256(salt ‖ key)>`.
fn hash_join_key(key: &str) -> String {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    format!("sha256${}${}", hex::encode(salt), salted(&salt, key))
}

fn salted(salt: &[u8], key: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// Constant-time check of a join key against its stored hash.
fn join_key_matches(key: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("sha256"), Some(salt), Some(hash)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(salt) = hex::decode(salt) else {
        return false;
    };
    salted(&salt, key).as_bytes().ct_eq(hash.as_bytes()).into()
}

/// The envelope the hub builds for an unsigned legacy post.
fn legacy_envelope(
    body: Map<String, Value>,
    actor: &str,
    group_id: &str,
    now: i64,
) -> HubResult<Map<String, Value>> {
    let subject = match body.get("subject") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(HubError::InvalidEnvelope(
                "missing required field: subject".into(),
            ));
        }
    };
    let mut envelope = Map::new();
    envelope.insert("version".into(), ENVELOPE_VERSION.into());
    envelope.insert("from".into(), format!("agent://{actor}").into());
    envelope.insert("to".into(), group_id.into());
    envelope.insert("subject".into(), subject.into());
    for field in ["correlation_id", "reply_to"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                envelope.insert(field.into(), s.clone().into());
            }
            Some(_) => return Err(HubError::invalid(field, "must be a string")),
        }
    }
    envelope.insert(
        "body".into(),
        body.get("body").cloned().unwrap_or(Value::Null),
    );
    let timestamp = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| HubError::Internal("clock out of range".into()))?;
    envelope.insert("timestamp".into(), timestamp.into());
    Ok(envelope)
}

/// Content hash of a legacy post: sender, subject, correlation id and body.
fn legacy_content_hash(envelope: &Map<String, Value>, text: &str) -> HubResult<String> {
    let body_hash = body_hash::envelope_body_hash(text)
        .map_err(|e| HubError::Internal(format!("hashing a built envelope: {e}")))?;
    let mut h = Sha256::new();
    for field in ["from", "subject", "correlation_id"] {
        h.update(
            envelope
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or("")
                .as_bytes(),
        );
        h.update([0]);
    }
    h.update(body_hash.as_bytes());
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_follow_the_node_format() {
        let id = group_id("Ops  Team\tA");
        let (slug, hex) = id.rsplit_once('-').unwrap();
        assert_eq!(slug, "group://ops-team-a");
        assert_eq!(hex.len(), 8);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn names_are_checked_with_their_codes() {
        assert!(matches!(validate_name(None), Err(HubError::InvalidName(_))));
        assert!(matches!(
            validate_name(Some(&Value::from("  "))),
            Err(HubError::InvalidName(_))
        ));
        assert!(matches!(
            validate_name(Some(&Value::from(7))),
            Err(HubError::InvalidName(_))
        ));
        assert!(matches!(
            validate_name(Some(&Value::from("x".repeat(101)))),
            Err(HubError::NameTooLong)
        ));
        assert!(matches!(
            validate_name(Some(&Value::from("a/b"))),
            Err(HubError::InvalidNameChars)
        ));
        assert_eq!(
            validate_name(Some(&Value::from("Ops Team_1.x-y"))).unwrap(),
            "Ops Team_1.x-y"
        );
    }

    #[test]
    fn join_keys_are_salted_hashes() {
        let a = hash_join_key("s3cret");
        let b = hash_join_key("s3cret");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(!a.contains("s3cret"));
        assert!(join_key_matches("s3cret", &a));
        assert!(!join_key_matches("s3cret!", &a));
        assert!(!join_key_matches("s3cret", "plain"));
    }
}
