//! The one place errors become HTTP: every `HubError` maps to a status and a
//! stable code, and every error body is `{"error": CODE, "message": …}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::hub::HubError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after_sec: Option<u64>,
    /// The field at fault, for `INVALID_INPUT`.
    pub field: Option<String>,
}

/// Error body shape (for the OpenAPI document).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code, see docs/ERROR-CODES.md.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_sec: Option<u64>,
}

/// Response extension naming the error code, so middleware (metrics, audit
/// of refused requests) can see what was refused without parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with a code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_sec: None,
            field: None,
        }
    }

    /// 400 `INVALID_JSON`.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_JSON", message)
    }

    /// 400 `INVALID_INPUT` naming the field.
    pub fn invalid_input(field: &str, message: impl Into<String>) -> Self {
        ApiError::from(HubError::invalid(field, message))
    }

    /// 400 for a missing or empty required field, with the code the Node
    /// server answered for it (`AGENT_ID_REQUIRED`, `WEBHOOK_URL_REQUIRED`).
    pub fn required(code: &'static str, field: &str) -> Self {
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            code,
            format!("{field} is required"),
        );
        error.field = Some(field.to_string());
        error
    }

    /// 429 `RATE_LIMITED`, retry after at least a second.
    pub fn rate_limited(retry_after_sec: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "rate limit exceeded; retry later",
        );
        error.retry_after_sec = Some(retry_after_sec.max(1));
        error
    }

    /// 429 `TOO_MANY_AUTH_FAILURES`, retry after at least a second.
    pub fn too_many_auth_failures(retry_after_sec: u64) -> Self {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_AUTH_FAILURES",
            "too many failed authentications from this address or naming this agent",
        );
        error.retry_after_sec = Some(retry_after_sec.max(1));
        error
    }

    /// 413 `PAYLOAD_TOO_LARGE`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body exceeds {limit} bytes"),
        )
    }
}

/// Status and code of each hub error: the whole mapping, in one table.
pub fn status_and_code(e: &HubError) -> (StatusCode, &'static str) {
    use HubError::*;
    use StatusCode as S;
    match e {
        InvalidInput { .. } => (S::BAD_REQUEST, "INVALID_INPUT"),
        InvalidEnvelope(_) => (S::BAD_REQUEST, "INVALID_ENVELOPE"),
        InvalidTimestamp => (S::BAD_REQUEST, "INVALID_TIMESTAMP"),
        RecipientMismatch => (S::BAD_REQUEST, "RECIPIENT_MISMATCH"),
        ReplyMismatch(_) => (S::BAD_REQUEST, "REPLY_MISMATCH"),
        UnknownSender(_) => (S::FORBIDDEN, "UNKNOWN_SENDER"),
        InvalidSignature => (S::FORBIDDEN, "INVALID_SIGNATURE"),
        SignerMismatch { .. } => (S::FORBIDDEN, "SIGNER_MISMATCH"),
        SenderNotTrusted(_) => (S::FORBIDDEN, "SENDER_NOT_TRUSTED"),
        AgentNotFound(_) => (S::NOT_FOUND, "AGENT_NOT_FOUND"),
        RecipientNotFound(_) => (S::NOT_FOUND, "RECIPIENT_NOT_FOUND"),
        AgentExists(_) => (S::CONFLICT, "AGENT_EXISTS"),
        MessageNotFound(_) => (S::NOT_FOUND, "MESSAGE_NOT_FOUND"),
        NotLeased => (S::CONFLICT, "NOT_LEASED"),
        LeaseMismatch => (S::CONFLICT, "LEASE_MISMATCH"),
        NotDead => (S::CONFLICT, "NOT_DEAD"),
        DuplicateMessageId => (S::CONFLICT, "DUPLICATE_MESSAGE_ID"),
        InboxFull { .. } => (S::TOO_MANY_REQUESTS, "INBOX_FULL"),
        TooManyStreams(_) => (S::TOO_MANY_REQUESTS, "TOO_MANY_STREAMS"),
        Forbidden(_) => (S::FORBIDDEN, "FORBIDDEN"),
        AuthRequired => (S::UNAUTHORIZED, "AUTH_REQUIRED"),
        ApiKeyRequired => (S::UNAUTHORIZED, "API_KEY_REQUIRED"),
        InvalidApiKey => (S::UNAUTHORIZED, "INVALID_API_KEY"),
        SignatureInvalid(_) => (S::UNAUTHORIZED, "SIGNATURE_INVALID"),
        RequestExpired(_) => (S::UNAUTHORIZED, "REQUEST_EXPIRED"),
        InvalidSignatureHeader(_) => (S::BAD_REQUEST, "INVALID_SIGNATURE_HEADER"),
        UnsupportedAlgorithm(_) => (S::BAD_REQUEST, "UNSUPPORTED_ALGORITHM"),
        InsufficientSignedHeaders => (S::BAD_REQUEST, "INSUFFICIENT_SIGNED_HEADERS"),
        DigestMismatch => (S::UNAUTHORIZED, "DIGEST_MISMATCH"),
        ReplayedRequest => (S::UNAUTHORIZED, "REPLAYED_REQUEST"),
        TokenExpired => (S::UNAUTHORIZED, "TOKEN_EXPIRED"),
        TokenInvalid => (S::UNAUTHORIZED, "TOKEN_INVALID"),
        GroupNotFound(_) => (S::NOT_FOUND, "GROUP_NOT_FOUND"),
        InvalidName(_) => (S::BAD_REQUEST, "INVALID_NAME"),
        NameTooLong => (S::BAD_REQUEST, "NAME_TOO_LONG"),
        InvalidNameChars => (S::BAD_REQUEST, "INVALID_NAME_CHARS"),
        AgentIdRequired => (S::BAD_REQUEST, "AGENT_ID_REQUIRED"),
        GroupRefused { op, refusal, .. } => (
            match refusal {
                crate::hub::Refusal::Forbidden => S::FORBIDDEN,
                crate::hub::Refusal::NotFound => S::NOT_FOUND,
                crate::hub::Refusal::Conflict => S::CONFLICT,
            },
            op.code(),
        ),
        FanOutTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
        MetadataTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "METADATA_TOO_LARGE"),
        TrustListFull(_) => (S::BAD_REQUEST, "TRUST_LIST_FULL"),
        InvalidNonce(_) => (S::BAD_REQUEST, "INVALID_NONCE"),
        AgentIdRetired(_) => (S::CONFLICT, "AGENT_ID_RETIRED"),
        StorageUnavailable(_) => (S::SERVICE_UNAVAILABLE, "STORAGE_UNAVAILABLE"),
        Internal(_) => (S::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let (status, code) = status_and_code(&e);
        let mut error = ApiError::new(status, code, e.to_string());
        if status.is_server_error() {
            tracing::error!(code, error = %e, "request failed");
        }
        match e {
            HubError::InvalidInput { field, .. } => error.field = Some(field),
            HubError::InboxFull { retry_after_sec } => {
                error.retry_after_sec = Some(retry_after_sec)
            }
            HubError::TooManyStreams(_) => error.retry_after_sec = Some(5),
            HubError::StorageUnavailable(_) => error.retry_after_sec = Some(5),
            HubError::Internal(_) => {
                error.message = "internal error".into();
            }
            _ => {}
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
            field: self.field,
            retry_after_sec: self.retry_after_sec,
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(sec) = self.retry_after_sec {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(sec));
        }
        response
    }
}

/// Every error code the hub answers with: status, code, meaning. The single
/// source of `docs/ERROR-CODES.md` (a test renders it and compares).
pub const ERROR_CODES: &[(u16, &str, &str)] = &[
    (400, "INVALID_JSON", "The body is not valid JSON."),
    (
        400,
        "INVALID_INPUT",
        "A field has the wrong type or an out-of-range value; `field` names it.",
    ),
    (
        400,
        "AGENT_ID_REQUIRED",
        "A trust-list addition or a group member addition without `agent_id` (the Node server's code).",
    ),
    (
        400,
        "WEBHOOK_URL_REQUIRED",
        "A webhook change without `webhook_url` (the Node server's code).",
    ),
    (
        400,
        "INVALID_ENVELOPE",
        "The envelope is not an object, lacks a required field or has an unsupported `version`.",
    ),
    (
        400,
        "INVALID_TIMESTAMP",
        "The envelope `timestamp` is unparsable or more than 300 s from server time.",
    ),
    (
        400,
        "RECIPIENT_MISMATCH",
        "The envelope `to` names another agent than the request path.",
    ),
    (
        400,
        "REPLY_MISMATCH",
        "A reply's `from`, `to` or `correlation_id` contradicts the original message.",
    ),
    (
        400,
        "INVALID_SIGNATURE_HEADER",
        "The `Signature` header is malformed.",
    ),
    (
        400,
        "UNSUPPORTED_ALGORITHM",
        "The `Signature` header names an algorithm other than ed25519.",
    ),
    (
        400,
        "INSUFFICIENT_SIGNED_HEADERS",
        "The signed headers do not include `(request-target)` and `date`.",
    ),
    (
        401,
        "AUTH_REQUIRED",
        "An agent route was called without credentials.",
    ),
    (
        401,
        "API_KEY_REQUIRED",
        "`API_KEY_REQUIRED=true` and the request carries no API key or agent credentials.",
    ),
    (401, "INVALID_API_KEY", "The API key is wrong."),
    (
        401,
        "SIGNATURE_INVALID",
        "The HTTP signature does not verify, names an unknown keyId, or a signed header is missing.",
    ),
    (
        401,
        "REQUEST_EXPIRED",
        "The `Date` header is missing, unparsable or more than 300 s from server time.",
    ),
    (
        401,
        "DIGEST_MISMATCH",
        "A signed `Digest`/`Content-Digest` does not match the body.",
    ),
    (
        401,
        "REPLAYED_REQUEST",
        "A signed `x-request-nonce` was already used inside the replay window.",
    ),
    (
        401,
        "TOKEN_EXPIRED",
        "The session token expired or was revoked (key rotation, agent deletion).",
    ),
    (
        401,
        "TOKEN_INVALID",
        "The session token is malformed or forged.",
    ),
    (
        403,
        "FORBIDDEN",
        "The caller is authenticated but may not act on this resource.",
    ),
    (
        403,
        "UNKNOWN_SENDER",
        "The envelope `from` is not a registered agent.",
    ),
    (
        403,
        "INVALID_SIGNATURE",
        "The envelope signature is missing or does not verify with the sender's active keys.",
    ),
    (
        403,
        "SIGNER_MISMATCH",
        "The HTTP signer (or session agent) is not the envelope sender.",
    ),
    (
        403,
        "SENDER_NOT_TRUSTED",
        "The recipient's trust list does not include the sender.",
    ),
    (404, "NOT_FOUND", "No such route."),
    (404, "AGENT_NOT_FOUND", "No such agent."),
    (
        404,
        "RECIPIENT_NOT_FOUND",
        "Send or reply to an agent that is not registered (or was deleted).",
    ),
    (404, "MESSAGE_NOT_FOUND", "No such message (in this inbox)."),
    (
        405,
        "METHOD_NOT_ALLOWED",
        "The route exists but not with this method.",
    ),
    (409, "AGENT_EXISTS", "The agent id is taken."),
    (
        409,
        "NOT_LEASED",
        "Ack or nack of a message that is not leased.",
    ),
    (
        409,
        "LEASE_MISMATCH",
        "The `lease_id` is not the message's current lease.",
    ),
    (
        409,
        "NOT_DEAD",
        "Requeue of a message that is not dead-lettered.",
    ),
    (
        409,
        "DUPLICATE_MESSAGE_ID",
        "The idempotency key was used for a message with different content.",
    ),
    (
        413,
        "PAYLOAD_TOO_LARGE",
        "The body exceeds `MAX_MESSAGE_SIZE_KB` (or a group post's envelope times its members exceeds 64 MiB).",
    ),
    (
        429,
        "INBOX_FULL",
        "The recipient holds `MAX_MESSAGES_PER_AGENT` live messages; see `Retry-After`.",
    ),
    (
        429,
        "TOO_MANY_STREAMS",
        "The agent holds `STREAM_MAX_PER_AGENT` inbox streams, or this hub `STREAM_MAX_TOTAL`; see `Retry-After`.",
    ),
    (
        429,
        "RATE_LIMITED",
        "Too many requests from this agent (or, unauthenticated, this IP); see `Retry-After`.",
    ),
    (
        413,
        "METADATA_TOO_LARGE",
        "Agent `metadata` (at registration, or merged by a heartbeat) exceeds `MAX_METADATA_KB`.",
    ),
    (
        400,
        "TRUST_LIST_FULL",
        "The trust list already holds its maximum of 1000 agents.",
    ),
    (
        400,
        "INVALID_NONCE",
        "A signed `x-request-nonce` is empty, longer than 128 characters or not visible ASCII.",
    ),
    (
        409,
        "AGENT_ID_RETIRED",
        "The agent id belonged to a deleted agent; deleted ids are never registered again.",
    ),
    (
        429,
        "TOO_MANY_AUTH_FAILURES",
        "Too many failed authentications from this IP (or naming this agent); see `Retry-After`.",
    ),
    (500, "INTERNAL_ERROR", "A bug; logged with the request id."),
    (
        400,
        "INVALID_NAME",
        "Group name missing, empty or not a string.",
    ),
    (
        400,
        "NAME_TOO_LONG",
        "Group name longer than 100 characters.",
    ),
    (
        400,
        "INVALID_NAME_CHARS",
        "Group name with characters other than letters, digits, spaces, `-`, `_`, `.`.",
    ),
    (404, "GROUP_NOT_FOUND", "No group with this id."),
    (
        403,
        "CREATE_GROUP_FAILED",
        "Group creation refused (GROUPS.md gives each group route one code, with 403/404/409).",
    ),
    (
        404,
        "CREATE_GROUP_FAILED",
        "Group creation by an agent deleted meanwhile.",
    ),
    (
        403,
        "UPDATE_GROUP_FAILED",
        "Changing a group needs its owner or an admin (403).",
    ),
    (
        403,
        "DELETE_GROUP_FAILED",
        "Only the owner deletes a group (403).",
    ),
    (
        403,
        "LIST_MEMBERS_FAILED",
        "Only members (or the operator) list the members (403).",
    ),
    (
        403,
        "ADD_MEMBER_FAILED",
        "Adding a member refused: only owners and admins add members, only the owner adds admins.",
    ),
    (
        404,
        "ADD_MEMBER_FAILED",
        "Adding an agent that does not exist.",
    ),
    (
        409,
        "ADD_MEMBER_FAILED",
        "Adding a member: already a member, or the group has `max_members`.",
    ),
    (
        403,
        "REMOVE_MEMBER_FAILED",
        "Removing a member refused: the owner, or an admin by anyone but the owner.",
    ),
    (
        404,
        "REMOVE_MEMBER_FAILED",
        "Removing an agent that is not a member.",
    ),
    (
        403,
        "JOIN_FAILED",
        "Join refused: the group is invite-only, or the join key is missing or wrong.",
    ),
    (404, "JOIN_FAILED", "Joining as an agent deleted meanwhile."),
    (
        409,
        "JOIN_FAILED",
        "Join refused: already a member, or the group has `max_members`.",
    ),
    (
        403,
        "LEAVE_FAILED",
        "Leave refused: not a member, or the owner (403).",
    ),
    (
        403,
        "POST_MESSAGE_FAILED",
        "Posting refused: the sender is not a member (403).",
    ),
    (
        403,
        "GET_MESSAGES_FAILED",
        "History refused: not a member, or history hidden from members (403).",
    ),
    (
        503,
        "STORAGE_UNAVAILABLE",
        "The storage backend is unreachable; see `Retry-After`.",
    ),
];

/// Renders `docs/ERROR-CODES.md` from [`ERROR_CODES`].
pub fn error_codes_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\n\
         Every error body is `{\"error\": \"<CODE>\", \"message\": \"<text>\"}`, \
         sometimes with `field` (the input at fault) or `retry_after_sec`.\n\
         Codes are stable. This file is generated from `ERROR_CODES` in \
         `src/api/error.rs`; a test fails when they differ \
         (`cargo run -- error-codes > docs/ERROR-CODES.md` regenerates it).\n\n\
         | Status | Code | Meaning |\n|---|---|---|\n",
    );
    for (status, code, meaning) in ERROR_CODES {
        out.push_str(&format!("| {status} | `{code}` | {meaning} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// One instance of every `HubError` variant. The exhaustive match in
    /// `witness` stops compiling when a variant is added, pointing here.
    fn every_hub_error() -> Vec<HubError> {
        fn witness(e: &HubError) {
            use HubError::*;
            match e {
                InvalidInput { .. }
                | InvalidEnvelope(_)
                | InvalidTimestamp
                | RecipientMismatch
                | ReplyMismatch(_)
                | UnknownSender(_)
                | InvalidSignature
                | SignerMismatch { .. }
                | SenderNotTrusted(_)
                | AgentNotFound(_)
                | RecipientNotFound(_)
                | AgentExists(_)
                | MessageNotFound(_)
                | NotLeased
                | LeaseMismatch
                | NotDead
                | DuplicateMessageId
                | InboxFull { .. }
                | TooManyStreams(_)
                | Forbidden(_)
                | AuthRequired
                | ApiKeyRequired
                | InvalidApiKey
                | SignatureInvalid(_)
                | RequestExpired(_)
                | InvalidSignatureHeader(_)
                | UnsupportedAlgorithm(_)
                | InsufficientSignedHeaders
                | DigestMismatch
                | ReplayedRequest
                | TokenExpired
                | TokenInvalid
                | GroupNotFound(_)
                | InvalidName(_)
                | NameTooLong
                | InvalidNameChars
                | AgentIdRequired
                | GroupRefused { .. }
                | FanOutTooLarge { .. }
                | MetadataTooLarge { .. }
                | TrustListFull(_)
                | InvalidNonce(_)
                | AgentIdRetired(_)
                | StorageUnavailable(_)
                | Internal(_) => {}
            }
        }
        use HubError::*;
        let s = String::new;
        let mut all = vec![
            HubError::invalid("f", "m"),
            InvalidEnvelope(s()),
            InvalidTimestamp,
            RecipientMismatch,
            ReplyMismatch(s()),
            UnknownSender(s()),
            InvalidSignature,
            SignerMismatch {
                signer: s(),
                from: s(),
            },
            SenderNotTrusted(s()),
            AgentNotFound(s()),
            RecipientNotFound(s()),
            AgentExists(s()),
            MessageNotFound(s()),
            NotLeased,
            LeaseMismatch,
            NotDead,
            DuplicateMessageId,
            InboxFull { retry_after_sec: 1 },
            TooManyStreams(s()),
            Forbidden(s()),
            AuthRequired,
            ApiKeyRequired,
            InvalidApiKey,
            SignatureInvalid(s()),
            RequestExpired(s()),
            InvalidSignatureHeader(s()),
            UnsupportedAlgorithm(s()),
            InsufficientSignedHeaders,
            DigestMismatch,
            ReplayedRequest,
            TokenExpired,
            TokenInvalid,
            MetadataTooLarge { limit_kb: 1 },
            TrustListFull(1),
            InvalidNonce(s()),
            AgentIdRetired(s()),
            StorageUnavailable(s()),
            Internal(s()),
            GroupNotFound(s()),
            InvalidName(s()),
            NameTooLong,
            InvalidNameChars,
            AgentIdRequired,
            FanOutTooLarge { limit: 1 },
        ];
        all.extend(crate::hub::GroupOp::ALL.map(|op| GroupRefused {
            op,
            refusal: crate::hub::Refusal::Forbidden,
            message: s(),
        }));
        all.iter().for_each(witness);
        all
    }

    #[test]
    fn every_hub_error_has_a_documented_code() {
        for e in every_hub_error() {
            let (status, code) = status_and_code(&e);
            assert!(
                ERROR_CODES
                    .iter()
                    .any(|c| (c.0, c.1) == (status.as_u16(), code)),
                "{code} ({status}) missing from ERROR_CODES"
            );
        }
        let from_store = HubError::from(StoreError::InboxFull);
        assert_eq!(status_and_code(&from_store).1, "INBOX_FULL");
    }

    #[test]
    fn codes_are_unique() {
        // A code may have several statuses (GROUPS.md's `*_FAILED` codes), each once.
        let mut codes: Vec<_> = ERROR_CODES.iter().map(|c| (c.0, c.1)).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ERROR_CODES.len());
    }

    #[test]
    fn error_codes_doc_matches_the_code() {
        let doc = include_str!("../../docs/ERROR-CODES.md");
        assert_eq!(
            doc,
            error_codes_markdown(),
            "docs/ERROR-CODES.md is stale: run `cargo run -- error-codes > docs/ERROR-CODES.md`"
        );
    }
}
