//! Webhook push (PROTOCOL.md §6): what one notification request looks like,
//! how it is signed, how a receiver checks it, which targets may be called,
//! and when a failed attempt is retried. The worker that sends the requests
//! lives in `crate::jobs::webhooks`; nothing here touches the store.
//!
//! Every request carries two signatures:
//! * the compat body field `signature`, for receivers written against the
//!   Node server ([`verify_legacy_signature`]);
//! * Standard Webhooks headers over the exact body bytes, which any language
//!   can check without re-serialising JSON ([`verify`], [`verify_headers`]).
//!
//! `docs/WEBHOOKS.md` gives the recipe for receivers in other languages.

mod payload;
mod retry;
mod signature;
mod target;

pub use payload::{Notification, WebhookRequest};
pub use retry::{MAX_RETRY_AFTER, next_attempt_delay, parse_retry_after};
pub use signature::{
    TIMESTAMP_TOLERANCE, legacy_signature, node_json, sign, signing_key, verify, verify_headers,
    verify_legacy_signature,
};
pub use target::{GuardedResolver, check_url, http_client};

/// The only event the hub sends: a message was stored for the agent.
pub const EVENT_MESSAGE_RECEIVED: &str = "message.received";
/// `User-Agent` of every webhook request (compat).
pub const USER_AGENT: &str = "ADMP-Server/1.0";

/// Header names of a webhook request.
pub mod headers {
    /// Event name, e.g. `message.received` (compat).
    pub const EVENT: &str = "x-admp-event";
    /// ADMP message id (compat).
    pub const MESSAGE_ID: &str = "x-admp-message-id";
    /// 1 for the first attempt of a delivery (compat).
    pub const DELIVERY_ATTEMPT: &str = "x-admp-delivery-attempt";
    /// Standard Webhooks: the delivery id, stable across retries.
    pub const WEBHOOK_ID: &str = "webhook-id";
    /// Standard Webhooks: unix seconds of this attempt.
    pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
    /// Standard Webhooks: `v1,<base64 HMAC-SHA256>`.
    pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
}

/// Why a webhook could not be sent or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not an absolute http(s) URL with a host.
    #[error("invalid webhook URL: {0}")]
    InvalidUrl(String),
    /// The target is (or resolves to) an address the SSRF guard refuses.
    #[error(
        "refused: {host} resolves to {addr}, a private, loopback or link-local address (WEBHOOK_ALLOW_PRIVATE)"
    )]
    RefusedAddress {
        host: String,
        addr: std::net::IpAddr,
    },
    /// DNS resolution failed or returned nothing.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// A receiver-side check: a required header is absent or not text.
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    /// A receiver-side check: `webhook-timestamp` is not unix seconds or too far from now.
    #[error("webhook timestamp is invalid or outside the tolerance")]
    TimestampOutOfTolerance,
    /// A receiver-side check: no signature matches.
    #[error("webhook signature does not match")]
    InvalidSignature,
    /// A receiver-side check: the body is not the JSON object the hub sends.
    #[error("webhook body is not a signed ADMP notification: {0}")]
    InvalidBody(String),
}
