//! The operator console (`/console`, docs/CONSOLE.md): server-rendered HTML
//! pages (askama templates compiled into the binary, no script) to see and
//! repair a running hub. Off unless `CONSOLE_ENABLED=true`.
//!
//! Security: a login with the master key or `CONSOLE_API_KEY` opens a
//! server-side session (random id in an `HttpOnly`, `SameSite=Strict`
//! cookie, `Secure` behind TLS, expiring); every page but the login needs
//! it; every change is a POST carrying the session's CSRF token and is
//! audited with the operator as actor; failed logins are limited per client
//! IP and audited; every response carries a strict Content-Security-Policy.

mod actions;
mod session;
mod views;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use super::AppState;
pub use session::{ConsoleState, Operator};
pub use views::GROUPS_SHOWN;

/// The Content-Security-Policy of every console response: only this
/// origin's stylesheet, no script at all, no framing, forms post here only.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest console form body.
const MAX_FORM_BYTES: usize = 8 * 1024;

/// The stylesheet, compiled in.
const STYLESHEET: &str = include_str!("static/console.css");

/// The console's routes (none when it is disabled: `/console` is then a 404).
pub fn router(state: &AppState) -> Router {
    if state.console.is_none() {
        return Router::new();
    }
    Router::new()
        .route("/console/static/console.css", get(stylesheet))
        .route(
            "/console/login",
            get(session::login_page).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console", get(views::overview))
        .route("/console/agents", get(views::agents))
        .route("/console/agents/{agent_id}", get(views::agent))
        .route(
            "/console/agents/{agent_id}/delete",
            get(views::confirm_delete).post(actions::delete_agent),
        )
        .route(
            "/console/agents/{agent_id}/dead/requeue-all",
            post(actions::requeue_all),
        )
        .route(
            "/console/agents/{agent_id}/dead/{message_id}/requeue",
            post(actions::requeue_one),
        )
        .route("/console/groups/{group_id}", get(views::group))
        .route("/console/messages", get(views::message_lookup))
        .route("/console/messages/{message_id}", get(views::message))
        .route("/console/dead", get(views::dead_letters))
        .route("/console/deliveries", get(views::failing_deliveries))
        .route(
            "/console/deliveries/{delivery_id}/retry",
            post(actions::retry_delivery),
        )
        .route("/console/audit", get(views::audit))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state.clone())
}

/// Adds the CSP and its companions to every console response; no page is cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

/// A console page or error: the rendered HTML, or an error page.
pub type PageResult = Result<Response, PageError>;

/// An error shown as an HTML page with its status and a stable code.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl PageError {
    /// A page error with `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        PageError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<crate::hub::HubError> for PageError {
    fn from(e: crate::hub::HubError) -> Self {
        let api = super::error::ApiError::from(e);
        PageError {
            status: api.status,
            code: api.code,
            message: api.message,
        }
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::hub::HubError::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = views::ErrorPage {
            status: self.status.as_u16(),
            code: self.code,
            message: &self.message,
        };
        (self.status, render(&page)).into_response()
    }
}

/// Renders a template (a render failure is a bug: logged, 500).
pub fn render(template: &impl askama::Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "console page failed to render",
            )
                .into_response()
        }
    }
}
