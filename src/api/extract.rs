//! Extractors that turn an HTTP request into plain values for the hub, with
//! every rejection rendered as our JSON error (axum's own are plain text).

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::ratelimit::ClientIp;
use crate::hub::{Caller, Credentials, HubError};
use crate::signing::http::RequestParts;
use crate::store::Agent;

/// Header carrying the client's idempotency key for sends.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// An authenticated request: who is calling, and the raw body (read once,
/// bounded by `MAX_MESSAGE_SIZE_KB`, needed verbatim for digests and body hashes).
/// Authenticated requests are also where the per-agent rate limit applies.
pub struct Authed {
    pub caller: Caller,
    /// The calling agent's record as authentication read it (see
    /// [`crate::hub::Authenticated::agent`]).
    pub agent: Option<Agent>,
    pub body: Bytes,
    pub idempotency_key: Option<String>,
    /// Where the request came from (for audit records).
    pub client_ip: IpAddr,
    /// `x-request-id` (for audit records).
    pub request_id: Option<String>,
}

impl FromRequest<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let limit = state.hub.config.max_body_bytes();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::payload_too_large(limit));
        }
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| ApiError::payload_too_large(limit))?;

        let headers: Vec<(&str, &str)> = parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let bearer = bearer_token(&parts.headers);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |pq| pq.as_str());
        let credentials = Credentials {
            signature: header("signature"),
            bearer,
            api_key: header("x-api-key"),
            request: RequestParts {
                method: parts.method.as_str(),
                path_and_query,
                headers: &headers,
            },
            body: &body,
        };
        let client_ip = ClientIp::of(
            &parts.extensions,
            &parts.headers,
            state.hub.config.trust_proxy,
        );
        let failures = state.limits.as_ref().map(|l| &l.failures);
        let presents_credentials = credentials.signature.is_some()
            || credentials.bearer.is_some()
            || credentials.api_key.is_some();
        if presents_credentials && let Some(retry) = failures.and_then(|f| f.ip_blocked(client_ip))
        {
            return Err(ApiError::too_many_auth_failures(retry));
        }
        let authenticated = match state.hub.authenticate(&credentials).await {
            Ok(a) => a,
            Err(e @ (HubError::StorageUnavailable(_) | HubError::Internal(_))) => {
                return Err(e.into());
            }
            Err(e) => {
                let claimed = state
                    .hub
                    .claimed_agent(credentials.signature, credentials.bearer);
                if let Some(retry) = failures.and_then(|f| f.record(client_ip, claimed.as_deref()))
                {
                    return Err(ApiError::too_many_auth_failures(retry));
                }
                return Err(e.into());
            }
        };
        let caller = authenticated.caller.clone();
        if let Some(agent_id) = caller.agent_id() {
            tracing::Span::current().record("agent_id", agent_id);
        }
        if let Some(limits) = &state.limits {
            limits.check(&caller, client_ip)?;
        }
        // Only now, with the request admitted, is its nonce used up.
        state.hub.consume_nonce(&authenticated).await?;
        Ok(Authed {
            caller,
            agent: authenticated.agent,
            body,
            idempotency_key: header(IDEMPOTENCY_KEY).map(str::to_string),
            client_ip: client_ip.0,
            request_id: header("x-request-id").map(str::to_string),
        })
    }
}

/// The `Authorization: Bearer` value, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Authed {
    /// Parses the body as `T`; an empty body reads as `{}`. Syntax errors are
    /// `INVALID_JSON`; wrong types name the field in `INVALID_INPUT`.
    pub fn json<T: DeserializeOwned>(&self) -> ApiResult<T> {
        parse_json(&self.body)
    }

    /// The body as a JSON value (for envelopes, whose unknown fields are kept).
    pub fn json_value(&self) -> ApiResult<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::invalid_json(e.to_string()))
    }
}

/// See [`Authed::json`].
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| ApiError::invalid_json(e.to_string()))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = match missing_field(&message) {
            Some(name) if path == "." => name.to_string(),
            Some(name) => format!("{path}.{name}"),
            None if path == "." => "body".to_string(),
            None => path,
        };
        ApiError::invalid_input(&field, message)
    })
}

/// serde reports a missing field at its parent's path; recover the name.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// `axum::extract::Path` with a JSON rejection.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with a JSON rejection.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::invalid_input("path", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::invalid_input("query", e.body_text())
    }
}
