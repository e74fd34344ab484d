//! `GET /api/agents/{agent_id}/inbox/stream`: the inbox as Server-Sent
//! Events (issue 14). The hub's `InboxStream` decides what to send; this
//! module only frames it as `text/event-stream`.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, ApiQuery, Authed};
use super::messages::LeasedMessage;
use super::openapi::{AGENT_SCOPE, AUTHED, PARAMS};
use crate::hub::stream::MAX_EVENT_ID_LEN;
use crate::hub::{HubError, InboxStream, StreamEvent, StreamInput};
use crate::route_errors;

/// Stream parameters.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Unsettled (leased, neither acked nor nacked) messages this stream may
    /// hold at once (1..100, default 10).
    pub max_in_flight: Option<u64>,
    /// Lease length of each delivered message, in seconds (1..43200, default 60).
    pub visibility_timeout: Option<u64>,
}

route_errors!(StreamErrors: AUTHED, AGENT_SCOPE, PARAMS, &["TOO_MANY_STREAMS"]);

/// Streams the inbox: one `message` event per leased message (its `data` is
/// what a single pull returns), at most `max_in_flight` unsettled at once;
/// settle them with the ack/nack routes. Send `Last-Event-ID` on reconnect
/// to get what the earlier stream left unsettled first.
#[utoipa::path(get, path = "/api/agents/{agent_id}/inbox/stream", tag = "inbox",
    params(("agent_id" = String, Path), StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "the last event id received, on reconnect")),
    responses((status = 200, content_type = "text/event-stream",
        description = "events `open`, `message`, `shutdown`, `end`, and heartbeat comments (docs/API.md)"),
        StreamErrors))]
pub async fn stream(
    State(app): State<AppState>,
    ApiPath(agent_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    req: Authed,
) -> ApiResult<Response> {
    app.hub.scope(&req.caller, &agent_id).await?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) if v.len() <= MAX_EVENT_ID_LEN => Some(
            v.to_str()
                .map_err(|_| ApiError::from(bad_event_id()))?
                .to_string(),
        ),
        Some(_) => return Err(bad_event_id().into()),
    };
    let input = StreamInput {
        max_in_flight: query.max_in_flight,
        visibility_timeout: query.visibility_timeout,
        last_event_id,
    };
    let inbox = app.hub.open_stream(&req.caller, &agent_id, input).await?;
    let events = futures::stream::unfold(Some(inbox), |inbox| async move {
        let mut inbox: InboxStream = inbox?;
        let (event, last) = frame(inbox.next().await);
        Some((Ok::<_, Infallible>(event), (!last).then_some(inbox)))
    });
    let mut response = Sse::new(events).into_response();
    // Ask reverse proxies (nginx) not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", "no".parse().expect("static header"));
    Ok(response)
}

fn bad_event_id() -> HubError {
    HubError::invalid(
        "Last-Event-ID",
        format!("at most {MAX_EVENT_ID_LEN} ASCII characters"),
    )
}

/// One SSE frame, and whether it is the stream's last.
fn frame(event: StreamEvent) -> (Event, bool) {
    match event {
        StreamEvent::Open { id, stream_id } => (
            Event::default()
                .event("open")
                .id(id)
                .data(json!({ "stream_id": stream_id }).to_string()),
            false,
        ),
        StreamEvent::Message { id, message } => {
            let data = serde_json::to_string(&LeasedMessage::from(*message))
                .unwrap_or_else(|_| "{}".into());
            (Event::default().event("message").id(id).data(data), false)
        }
        StreamEvent::Heartbeat => (Event::default().comment("heartbeat"), false),
        StreamEvent::Shutdown => (Event::default().event("shutdown").data("{}"), true),
        StreamEvent::End { reason } => (
            Event::default()
                .event("end")
                .data(json!({ "reason": reason }).to_string()),
            true,
        ),
    }
}
