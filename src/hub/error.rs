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
            e @ (StoreError::MessageIdTaken | StoreError::Internal(_)) => {
                HubError::Internal(e.to_string())
            }
        }
    }
}
