//! What the OpenAPI document says about errors, and the documentation page.
//!
//! Each route declares the error codes it can answer with [`route_errors!`],
//! composed from the sets below (one per layer a request goes through) plus
//! its own codes. The status of each code comes from
//! [`ERROR_CODES`](super::error::ERROR_CODES), and every documented error
//! response carries a schema whose `error` is an enum of exactly the codes
//! that route answers with that status, so generated clients and schema
//! checkers see the truth. `tests/openapi_conformance.rs` drives every
//! operation against the running router and fails on any status or body the
//! document does not describe. docs/API.md ("Documenting a route's errors")
//! explains how to add a route.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::response::Response as OpenApiResponse;
use utoipa_swagger_ui::Config;

use super::ApiDoc;
use super::error::{ApiError, ERROR_CODES};

/// Title of the documentation page (a deployment smoke test looks for "ADMP").
pub const DOCS_TITLE: &str = "ADMP API Documentation";

/// Any route: a panic or a limiter failure becomes a 500.
pub const ANY: &[&str] = &["INTERNAL_ERROR"];

/// Routes outside `Authed` (metrics, docs): the per-IP rate limit.
pub const OPEN: &[&str] = &["RATE_LIMITED", "INTERNAL_ERROR"];

/// Every route that reads the [`Authed`](super::extract::Authed) extractor:
/// the bounded body, credentials that are present but wrong, the per-caller
/// rate limit, and storage behind the credential lookups.
pub const AUTHED: &[&str] = &[
    "PAYLOAD_TOO_LARGE",
    "INVALID_API_KEY",
    "SIGNATURE_INVALID",
    "REQUEST_EXPIRED",
    "INVALID_SIGNATURE_HEADER",
    "UNSUPPORTED_ALGORITHM",
    "INSUFFICIENT_SIGNED_HEADERS",
    "DIGEST_MISMATCH",
    "REPLAYED_REQUEST",
    "INVALID_NONCE",
    "TOO_MANY_AUTH_FAILURES",
    "TOKEN_EXPIRED",
    "TOKEN_INVALID",
    "RATE_LIMITED",
    "STORAGE_UNAVAILABLE",
    "INTERNAL_ERROR",
];

/// Routes behind `Hub::authorize_gate` (`API_KEY_REQUIRED=true`).
pub const GATED: &[&str] = &["API_KEY_REQUIRED"];

/// Operator-only routes (`Hub::authorize_master`).
pub const MASTER: &[&str] = &["AUTH_REQUIRED", "FORBIDDEN"];

/// Agent-scoped routes (`Hub::scope`): the gate, the caller must be the
/// agent or the operator, and the agent must exist.
pub const AGENT_SCOPE: &[&str] = &[
    "API_KEY_REQUIRED",
    "AUTH_REQUIRED",
    "FORBIDDEN",
    "AGENT_NOT_FOUND",
];

/// Routes with path or query parameters: a value that does not decode.
pub const PARAMS: &[&str] = &["INVALID_INPUT"];

/// Routes that parse a JSON body (`Authed::json`).
pub const JSON_BODY: &[&str] = &["INVALID_JSON", "INVALID_INPUT"];

/// The send pipeline shared by send and reply (`Hub::accept`).
pub const ENVELOPE: &[&str] = &[
    "INVALID_JSON",
    "INVALID_INPUT",
    "INVALID_ENVELOPE",
    "INVALID_TIMESTAMP",
    "SIGNER_MISMATCH",
    "UNKNOWN_SENDER",
    "INVALID_SIGNATURE",
    "RECIPIENT_NOT_FOUND",
    "SENDER_NOT_TRUSTED",
    "DUPLICATE_MESSAGE_ID",
    "INBOX_FULL",
];

/// Declares a route's error responses: a unit struct implementing
/// `utoipa::IntoResponses`, listed in the route's `responses(...)` next to
/// its success responses. Arguments are code sets from this module and
/// slices of the route's own codes:
///
/// ```ignore
/// route_errors!(AckErrors: AUTHED, AGENT_SCOPE, JSON_BODY, &["MESSAGE_NOT_FOUND", "NOT_LEASED"]);
/// #[utoipa::path(..., responses((status = 200, body = OkResponse), AckErrors))]
/// ```
#[macro_export]
macro_rules! route_errors {
    ($(#[$meta:meta])* $name:ident: $($codes:expr),+ $(,)?) => {
        $(#[$meta])*
        #[doc = "Error responses of one route (see `api::openapi`)."]
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::api::openapi::error_responses(&[$($codes),+])
            }
        }
    };
}

/// One response per status for `codes` (duplicates across sets are merged).
///
/// Panics on a code missing from `ERROR_CODES`: every test that builds the
/// router builds the document, so a typo cannot reach a release.
pub fn error_responses(sets: &[&[&str]]) -> BTreeMap<String, RefOr<OpenApiResponse>> {
    let mut by_status: BTreeMap<u16, Vec<(&str, &str)>> = BTreeMap::new();
    for code in sets.iter().flat_map(|set| set.iter()) {
        // A code may have several statuses (GROUPS.md's `*_FAILED` codes): each is documented.
        let rows: Vec<_> = ERROR_CODES.iter().filter(|(_, c, _)| c == code).collect();
        assert!(
            !rows.is_empty(),
            "{code} is not in ERROR_CODES (src/api/error.rs)"
        );
        for (status, _, meaning) in rows {
            let codes = by_status.entry(*status).or_default();
            if !codes.iter().any(|(c, _)| c == code) {
                codes.push((code, meaning));
            }
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| {
            let response: OpenApiResponse = serde_json::from_value(error_response(status, &codes))
                .expect("the error response is a valid OpenAPI response");
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// The OpenAPI response object for one status and its codes.
fn error_response(status: u16, codes: &[(&str, &str)]) -> Value {
    let description = codes
        .iter()
        .map(|(code, meaning)| format!("`{code}`: {meaning}"))
        .collect::<Vec<_>>()
        .join("\n\n");
    let names: Vec<&str> = codes.iter().map(|(code, _)| *code).collect();
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "enum": names, "description": "Stable code, see docs/ERROR-CODES.md."},
                "message": {"type": "string", "description": "Human-readable explanation."},
                "field": {"type": "string", "description": "The input at fault (`INVALID_INPUT`)."},
                "retry_after_sec": {"type": "integer", "minimum": 0,
                    "description": "Seconds to wait before retrying (429, 503)."}
            }
        }}}
    });
    if status == 429 || status == 503 {
        response["headers"] = json!({"Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 0}
        }});
    }
    response
}

/// `/openapi.json` and the documentation page under `/docs/`, titled with
/// the product's name (Swagger UI's own page says "Swagger UI").
pub fn docs_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let document = Arc::new(ApiDoc::openapi());
    let config = Arc::new(Config::from("/openapi.json"));
    let index = config.clone();
    Router::new()
        .route(
            "/openapi.json",
            get(move || std::future::ready(axum::Json(document.as_ref().clone()))),
        )
        .route("/docs", get(|| async { Redirect::to("/docs/") }))
        .route(
            "/docs/",
            get(move || std::future::ready(docs_file("", &index))),
        )
        .route(
            "/docs/{*file}",
            get(move |Path(file): Path<String>| std::future::ready(docs_file(&file, &config))),
        )
}

/// One file of the vendored Swagger UI; the index page gets our title.
fn docs_file(file: &str, config: &Arc<Config<'static>>) -> Response {
    let file = if file.is_empty() { "index.html" } else { file };
    match utoipa_swagger_ui::serve(file, config.clone()) {
        Ok(Some(found)) => {
            let body = if file == "index.html" {
                String::from_utf8_lossy(&found.bytes)
                    .replace(
                        "<title>Swagger UI</title>",
                        &format!("<title>{DOCS_TITLE}</title>"),
                    )
                    .into_bytes()
            } else {
                found.bytes.into_owned()
            };
            ([(header::CONTENT_TYPE, found.content_type)], body).into_response()
        }
        Ok(None) => super::system::no_such_route().into_response(),
        Err(e) => {
            tracing::error!(error = %e, "documentation page failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal error",
            )
            .into_response()
        }
    }
}
