//! The console's changes, each a POST with the session's CSRF token, each
//! audited with the operator as actor: requeue dead letters, retry a
//! webhook delivery now, delete an agent (after typing its id).

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use serde_json::json;

use super::super::AppState;
use super::session::{CsrfForm, Operator};
use super::{PageError, PageResult};
use crate::audit::AuditKind;

/// Query-string-safe form of an id in a redirect.
fn enc(id: &str) -> String {
    urlencoding::encode(id).into_owned()
}

/// `POST /console/agents/{id}/dead/{message_id}/requeue`: back to its page.
pub async fn requeue_one(
    State(app): State<AppState>,
    operator: Operator,
    Path((agent_id, message_id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    operator.check_csrf(&form.csrf)?;
    app.hub.requeue_dead(&agent_id, &message_id).await?;
    operator
        .audit(
            &app,
            AuditKind::ConsoleRequeued,
            Some(&agent_id),
            json!({ "message_id": message_id, "count": 1 }),
        )
        .await;
    Ok(Redirect::to(&format!(
        "/console/messages/{}?notice=requeued",
        enc(&message_id)
    ))
    .into_response())
}

/// `POST /console/agents/{id}/dead/requeue-all`.
pub async fn requeue_all(
    State(app): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    operator.check_csrf(&form.csrf)?;
    app.hub.agent(&agent_id).await?;
    let (moved, more) = app.hub.requeue_all_dead(&agent_id).await?;
    operator
        .audit(
            &app,
            AuditKind::ConsoleRequeued,
            Some(&agent_id),
            json!({ "count": moved, "more_remain": more }),
        )
        .await;
    let notice = if more {
        "requeued-more"
    } else {
        "requeued-all"
    };
    Ok(Redirect::to(&format!(
        "/console/agents/{}?notice={notice}",
        enc(&agent_id)
    ))
    .into_response())
}

/// `POST /console/deliveries/{id}/retry`.
pub async fn retry_delivery(
    State(app): State<AppState>,
    operator: Operator,
    Path(delivery_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    operator.check_csrf(&form.csrf)?;
    let delivery = app.hub.retry_delivery_now(&delivery_id).await?;
    operator
        .audit(
            &app,
            AuditKind::ConsoleDeliveryRetried,
            Some(&delivery.agent_id),
            json!({ "delivery_id": delivery.id, "message_id": delivery.message_id }),
        )
        .await;
    Ok(Redirect::to("/console/deliveries?notice=retried").into_response())
}

/// The delete confirmation: the agent id typed again.
#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// `POST /console/agents/{id}/delete`.
pub async fn delete_agent(
    State(app): State<AppState>,
    operator: Operator,
    Path(agent_id): Path<String>,
    Form(form): Form<DeleteForm>,
) -> PageResult {
    operator.check_csrf(&form.csrf)?;
    if form.confirm.trim() != agent_id {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "CONFIRMATION_MISMATCH",
            "type the agent id exactly to confirm the deletion",
        ));
    }
    app.hub.delete_agent(&agent_id).await?;
    operator
        .audit(&app, AuditKind::AgentDeleted, Some(&agent_id), json!({}))
        .await;
    Ok(Redirect::to("/console/agents?notice=deleted").into_response())
}
