//! Protocol errors. The API layer maps each to a status and stable code in one place.

use crate::store::StoreError;

/// Everything a hub operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{field}: {message}")]
    InvalidInput { field: String, message: String },
    #[error("{0}")]
    InvalidEnvelope(String),
    #[error("envelope timestamp missing, unparsable or outside the allowed clock skew")]
    InvalidTimestamp,
    #[error("envelope `to` names another agent than the request path")]
    RecipientMismatch,
    #[error("{0}")]
    ReplyMismatch(String),
    #[error("sender {0} is not a registered agent")]
    UnknownSender(String),
    #[error("envelope signature missing or invalid")]
    InvalidSignature,
    #[error("HTTP signer {signer} is not the envelope sender {from}")]
    SignerMismatch { signer: String, from: String },
    #[error("sender {0} is not on the recipient's trusted list")]
    SenderNotTrusted(String),
    #[error("agent {0} not found")]
    AgentNotFound(String),
    /// The addressee of a send or reply is not (or no longer) registered;
    /// its own code because Node-era clients branch on it.
    #[error("recipient {0} not found")]
    RecipientNotFound(String),
    #[error("agent {0} already exists")]
    AgentExists(String),
    #[error("message {0} not found")]
    MessageNotFound(String),
    #[error("message is not leased")]
    NotLeased,
    #[error("lease_id does not match the message's current lease")]
    LeaseMismatch,
    #[error("message is not in the dead letters")]
    NotDead,
    #[error("idempotency key already used for a message with different content")]
    DuplicateMessageId,
    #[error("recipient inbox is full")]
    InboxFull { retry_after_sec: u64 },
    #[error("{0}")]
    Forbidden(String),
    /// An inbox stream beyond `STREAM_MAX_PER_AGENT` or `STREAM_MAX_TOTAL`.
    #[error("{0}")]
    TooManyStreams(String),

    #[error("authentication required")]
    AuthRequired,
    #[error("an API key or agent signature is required")]
    ApiKeyRequired,
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("{0}")]
    SignatureInvalid(String),
    #[error("{0}")]
    RequestExpired(String),
    #[error("{0}")]
    InvalidSignatureHeader(String),
    #[error("{0}")]
    UnsupportedAlgorithm(String),
    #[error("signed headers must include (request-target) and date")]
    InsufficientSignedHeaders,
    #[error("body digest does not match the signed digest header")]
    DigestMismatch,
    #[error("request nonce already used")]
    ReplayedRequest,
    #[error("session token expired or revoked")]
    TokenExpired,
    #[error("session token malformed or forged")]
    TokenInvalid,

    #[error("group {0} not found")]
    GroupNotFound(String),
    #[error("{0}")]
    InvalidName(String),
    #[error("group name is longer than 100 characters")]
    NameTooLong,
    #[error("group name may hold only letters, digits, spaces, '-', '_' and '.'")]
    InvalidNameChars,
    #[error("agent_id is required")]
    AgentIdRequired,
    #[error("{message}")]
    GroupRefused {
        op: GroupOp,
        refusal: Refusal,
        message: String,
    },

    #[error("envelope size times group members exceeds {limit} bytes")]
    FanOutTooLarge { limit: usize },
    // Security hardening (issue 12).
    #[error("metadata exceeds MAX_METADATA_KB ({limit_kb} KiB)")]
    MetadataTooLarge { limit_kb: u64 },
    #[error("the trust list holds its maximum of {0} agents")]
    TrustListFull(usize),
    #[error("{0}")]
    InvalidNonce(String),
    #[error("agent id {0} belonged to a deleted agent and cannot be registered again")]
    AgentIdRetired(String),

    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The group route a refusal comes from: GROUPS.md gives each its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOp {
    Create,
    Update,
    Delete,
    ListMembers,
    AddMember,
    RemoveMember,
    Join,
    Leave,
    Post,
    History,
}

impl GroupOp {
    /// Every operation, for the error-code table's tests.
    pub const ALL: [GroupOp; 10] = [
        GroupOp::Create,
        GroupOp::Update,
        GroupOp::Delete,
        GroupOp::ListMembers,
        GroupOp::AddMember,
        GroupOp::RemoveMember,
        GroupOp::Join,
        GroupOp::Leave,
        GroupOp::Post,
        GroupOp::History,
    ];

    /// The stable `*_FAILED` code of the route.
    pub fn code(self) -> &'static str {
        match self {
            GroupOp::Create => "CREATE_GROUP_FAILED",
            GroupOp::Update => "UPDATE_GROUP_FAILED",
            GroupOp::Delete => "DELETE_GROUP_FAILED",
            GroupOp::ListMembers => "LIST_MEMBERS_FAILED",
            GroupOp::AddMember => "ADD_MEMBER_FAILED",
            GroupOp::RemoveMember => "REMOVE_MEMBER_FAILED",
            GroupOp::Join => "JOIN_FAILED",
            GroupOp::Leave => "LEAVE_FAILED",
            GroupOp::Post => "POST_MESSAGE_FAILED",
            GroupOp::History => "GET_MESSAGES_FAILED",
        }
    }
}

/// Why a group route refused: the HTTP status of its `*_FAILED` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Role, membership or access (403).
    Forbidden,
    /// A named agent does not exist (404).
    NotFound,
    /// Already a member, or the group is full (409).
    Conflict,
}

/// Result alias for hub operations.
pub type HubResult<T> = Result<T, HubError>;

impl HubError {
    /// Shorthand for a field-level input error.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        HubError::InvalidInput {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl From<StoreError> for HubError {
    /// Store errors that reach the caller without a more specific meaning.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AgentExists => HubError::AgentExists(String::new()),
            StoreError::AgentNotFound => HubError::AgentNotFound(String::new()),
            StoreError::MessageNotFound => HubError::MessageNotFound(String::new()),
            StoreError::NotLeased => HubError::NotLeased,
            StoreError::LeaseMismatch => HubError::LeaseMismatch,
            StoreError::NotDead => HubError::NotDead,
            StoreError::InboxFull => HubError::InboxFull { retry_after_sec: 1 },
            StoreError::IdempotencyConflict => HubError::DuplicateMessageId,
            StoreError::InvalidCursor => HubError::invalid("cursor", "invalid cursor"),
            StoreError::TooLarge("trusted_agents") => {
                HubError::TrustListFull(crate::store::MAX_TRUSTED_AGENTS)
            }
            StoreError::TooLarge(field) => HubError::invalid(field, "too large"),
            StoreError::Unavailable(m) => HubError::StorageUnavailable(m),
            StoreError::GroupNotFound => HubError::GroupNotFound(String::new()),
            e @ (StoreError::MessageIdTaken
            | StoreError::Internal(_)
            | StoreError::GroupExists
            | StoreError::AlreadyMember
            | StoreError::GroupFull
            | StoreError::NotMember) => HubError::Internal(e.to_string()),
        }
    }
}
