//! Group records and the fan-out plan every backend shares (GROUPS.md).
//!
//! Membership is one record per member (never one array per group), so
//! concurrent joins, leaves and posts each change their own record. A post is
//! stored as one history record plus one ordinary [`Message`] per member
//! except the sender, all in one store step; [`plan_fan_out`] decides what
//! that step writes, so the backends only differ in how they make it atomic.

use serde::{Deserialize, Serialize};

use super::{Delivery, DeliveryState, Envelope, Message, Millis};

/// Who may join a group by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupAccess {
    /// Anyone may join.
    Open,
    /// Only owners and admins add members.
    InviteOnly,
    /// Joining needs the join key.
    KeyProtected,
}

impl GroupAccess {
    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupAccess::Open => "open",
            GroupAccess::InviteOnly => "invite-only",
            GroupAccess::KeyProtected => "key-protected",
        }
    }

    /// Parses a stored or wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => GroupAccess::Open,
            "invite-only" => GroupAccess::InviteOnly,
            "key-protected" => GroupAccess::KeyProtected,
            _ => return None,
        })
    }
}

/// A member's role; the owner is the creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupRole {
    Owner,
    Admin,
    Member,
}

impl GroupRole {
    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Owner => "owner",
            GroupRole::Admin => "admin",
            GroupRole::Member => "member",
        }
    }

    /// Parses a stored or wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => GroupRole::Owner,
            "admin" => GroupRole::Admin,
            "member" => GroupRole::Member,
            _ => return None,
        })
    }

    /// Owners and admins manage the group.
    pub fn manages(self) -> bool {
        matches!(self, GroupRole::Owner | GroupRole::Admin)
    }
}

/// Settings a group's owner or admins may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    pub history_visible: bool,
    pub max_members: u32,
    /// How long a post stays in the history.
    pub message_ttl_sec: u64,
}

/// A group as stored (its members are separate records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// `group://<slug>-<8 hex>`.
    pub id: String,
    pub name: String,
    /// The owner.
    pub created_by: String,
    pub access: GroupAccess,
    /// Salted hash of the join key (key-protected groups); never returned.
    pub join_key_hash: Option<String>,
    pub settings: GroupSettings,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Members right now; filled in by the store on reads, ignored on writes.
    #[serde(default)]
    pub member_count: u64,
}

/// One membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub agent_id: String,
    pub role: GroupRole,
    pub joined_at: Millis,
}

/// An owner's or admin's change to a group; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupChange {
    pub name: Option<String>,
    pub history_visible: Option<bool>,
    pub max_members: Option<u32>,
    pub message_ttl_sec: Option<u64>,
    pub now: Millis,
}

impl GroupChange {
    /// Applies the change in place (memory and Mech; the SQL backends do the same in SQL).
    pub fn apply(&self, group: &mut Group) {
        if let Some(name) = &self.name {
            group.name = name.clone();
        }
        if let Some(v) = self.history_visible {
            group.settings.history_visible = v;
        }
        if let Some(v) = self.max_members {
            group.settings.max_members = v;
        }
        if let Some(v) = self.message_ttl_sec {
            group.settings.message_ttl_sec = v;
        }
        group.updated_at = self.now;
    }
}

/// What happened to one member's copy of a post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOutcome {
    pub agent_id: String,
    /// The copy's message id (also reported for a failed copy, which was never stored).
    pub message_id: String,
    /// `delivered` or `failed`.
    pub status: String,
    /// Why a copy failed (`inbox_full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Copy status of a stored copy.
pub const COPY_DELIVERED: &str = "delivered";
/// Copy status of a copy refused by the member's full inbox.
pub const COPY_FAILED: &str = "failed";
/// Why a copy failed: the member's inbox held `MAX_MESSAGES_PER_AGENT` live messages.
pub const REASON_INBOX_FULL: &str = "inbox_full";

/// A post: the history record of one fan-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPost {
    /// The `group_message_id` every copy carries.
    pub id: String,
    pub group_id: String,
    pub sender: String,
    /// The sender's envelope, verbatim (signature included).
    pub envelope: Envelope,
    pub created_at: Millis,
    /// When the history forgets it (`message_ttl_sec` of the group at post time).
    pub expires_at: Millis,
    /// Scope: the group.
    pub idempotency_key: Option<String>,
    /// Tells a retry from a conflicting reuse of the key.
    pub content_hash: String,
    /// Filled in by the store: one entry per member except the sender.
    #[serde(default)]
    pub deliveries: Vec<CopyOutcome>,
}

/// Parameters of one fan-out besides the post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// Live messages an inbox may hold (`MAX_MESSAGES_PER_AGENT`).
    pub quota: u64,
    /// TTL deadline of each copy.
    pub copy_expires_at: Millis,
    pub now: Millis,
}

/// Outcome of a post.
#[derive(Debug, Clone, PartialEq)]
pub enum Posted {
    /// Stored now.
    Created(GroupPost),
    /// The idempotency key was seen with the same content: the original post.
    Duplicate(GroupPost),
}

/// One member a post goes to, as the store sees it inside the fan-out step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub agent_id: String,
    /// The member has a webhook: its copy gets a delivery.
    pub push: bool,
    /// The member's inbox is at the quota: its copy fails.
    pub full: bool,
}

/// Everything one fan-out writes.
#[derive(Debug, Clone, PartialEq)]
pub struct FanOutPlan {
    pub copies: Vec<Message>,
    pub deliveries: Vec<Delivery>,
}

/// The id of member number `n`'s copy: `<group_message_id>.<n>`, so a copy
/// names its post without a second record.
pub fn copy_id(post_id: &str, n: usize) -> String {
    format!("{post_id}.{n}")
}

/// `(group_id, group_message_id)` of a group copy, read from the copy itself:
/// its envelope `to` is the group id (a direct message's `to` is always an
/// agent) and its id is `<group_message_id>.<n>`.
pub fn copy_origin(message: &Message) -> Option<(String, String)> {
    if !message.envelope.as_str().contains("\"group://") {
        return None;
    }
    let envelope = message.envelope.to_value();
    let group_id = envelope.get("to")?.as_str()?;
    if !group_id.starts_with("group://") {
        return None;
    }
    let (post_id, _) = message.id.rsplit_once('.')?;
    Some((group_id.to_string(), post_id.to_string()))
}

/// Plans a fan-out: a copy (and, with a webhook, a delivery) for every
/// recipient whose inbox has room, a `failed` outcome for the others.
/// Recipients must come in a stable order (by agent id) and exclude the sender.
pub fn plan_fan_out(
    post: &mut GroupPost,
    fan: &FanOut,
    recipients: impl IntoIterator<Item = Recipient>,
) -> FanOutPlan {
    let mut plan = FanOutPlan {
        copies: Vec::new(),
        deliveries: Vec::new(),
    };
    post.deliveries.clear();
    for (n, r) in recipients.into_iter().enumerate() {
        let id = copy_id(&post.id, n);
        if r.full {
            post.deliveries.push(CopyOutcome {
                agent_id: r.agent_id,
                message_id: id,
                status: COPY_FAILED.into(),
                reason: Some(REASON_INBOX_FULL.into()),
            });
            continue;
        }
        let copy = Message {
            content_hash: post.content_hash.clone(),
            ..Message::queued(
                id.clone(),
                r.agent_id.clone(),
                post.sender.clone(),
                post.envelope.clone(),
                fan.now,
                fan.copy_expires_at - fan.now,
            )
        };
        if r.push {
            plan.deliveries.push(Delivery::pending_for(&copy, fan.now));
        }
        plan.copies.push(copy);
        post.deliveries.push(CopyOutcome {
            agent_id: r.agent_id,
            message_id: id,
            status: COPY_DELIVERED.into(),
            reason: None,
        });
    }
    plan
}

impl Delivery {
    /// The webhook notification of a new message, due at once. Its id is the
    /// Standard Webhooks `webhook-id`, stable across retries.
    pub fn pending_for(message: &Message, now: Millis) -> Self {
        Delivery {
            id: format!("wh_{}", uuid::Uuid::new_v4().simple()),
            message_id: message.id.clone(),
            agent_id: message.recipient.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            updated_at: now,
            last_status: None,
            last_error: None,
        }
    }
}

/// History page cursor: `<created_at>:<post id>` of the last post shown.
pub fn history_cursor(post: &GroupPost) -> String {
    format!("{}:{}", post.created_at, post.id)
}

/// Parses a history cursor.
pub fn parse_history_cursor(cursor: &str) -> Option<(Millis, String)> {
    let (at, id) = cursor.split_once(':')?;
    Some((at.parse().ok()?, id.to_string()))
}
