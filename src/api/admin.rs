//! Operator routes.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::AppState;
use super::error::ApiResult;
use super::extract::Authed;
use super::openapi::{AUTHED, MASTER};
use crate::route_errors;
use crate::store::transfer::{export, to_line};

route_errors!(ExportErrors: AUTHED, MASTER);

/// Streams the whole store as NDJSON (the `admp export --from http://…` path
/// out of a memory hub). Operator key only.
#[utoipa::path(get, path = "/api/admin/export", tag = "system",
    responses((status = 200, description = "NDJSON: header, agents, messages, trailer", content_type = "application/x-ndjson"),
        ExportErrors))]
pub async fn export_store(State(app): State<AppState>, req: Authed) -> ApiResult<Response> {
    app.hub.authorize_master(&req.caller)?;
    let lines = export(app.hub.store.clone()).map(|record| {
        record
            .map(|r| to_line(&r))
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
