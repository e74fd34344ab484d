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
        AgentExists(_) => (S::CONFLICT, "AGENT_EXISTS"),
        MessageNotFound(_) => (S::NOT_FOUND, "MESSAGE_NOT_FOUND"),
        NotLeased => (S::CONFLICT, "NOT_LEASED"),
        LeaseMismatch => (S::CONFLICT, "LEASE_MISMATCH"),
        NotDead => (S::CONFLICT, "NOT_DEAD"),
        DuplicateMessageId => (S::CONFLICT, "DUPLICATE_MESSAGE_ID"),
        InboxFull { .. } => (S::TOO_MANY_REQUESTS, "INBOX_FULL"),
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
        if let Some(sec) = self.retry_after_sec {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(sec));
        }
        response
    }
}

/// Codes produced outside `status_and_code` (request parsing and routing).
pub const TRANSPORT_CODES: &[(u16, &str)] = &[
    (400, "INVALID_JSON"),
    (404, "NOT_FOUND"),
    (405, "METHOD_NOT_ALLOWED"),
    (413, "PAYLOAD_TOO_LARGE"),
];
