//! Console sessions: login and logout, the session cookie, the `Operator`
//! extractor every page takes, CSRF tokens and the failed-login limit.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use parking_lot::Mutex;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::super::AppState;
use super::super::ratelimit::ClientIp;
use super::views::LoginPage;
use super::{PageError, render};
use crate::audit::AuditKind;
use crate::hub::console::ConsoleKey;

/// The session cookie's name.
pub const COOKIE: &str = "admp_console";
/// Sessions kept at most; the oldest is dropped to admit a new one.
const MAX_SESSIONS: usize = 1_000;
/// Failed logins one client IP may make per window before it must wait.
pub const MAX_FAILED_LOGINS: u32 = 5;
/// The failed-login window.
const FAILED_LOGIN_WINDOW_MS: i64 = 5 * 60_000;
/// Client IPs tracked at most for the login limit.
const MAX_TRACKED_IPS: usize = 10_000;
/// Longest accepted key in the login form.
const MAX_KEY_LEN: usize = 1_024;

/// One open session.
#[derive(Debug, Clone)]
struct Session {
    key: ConsoleKey,
    csrf: String,
    expires_at: i64,
    /// Short, non-secret name of the session for the audit log.
    tag: String,
}

/// Failed logins of one client IP in the current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: i64,
}

/// Sessions and failed-login counts of this hub instance (docs/CONSOLE.md:
/// with several instances, sessions are per instance).
#[derive(Debug, Default)]
pub struct ConsoleState {
    /// By SHA-256 of the cookie value, so lookups reveal nothing by timing.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// The overview's hub-wide counts (see `views::hub_counts`).
    pub(super) counts: Mutex<Option<CachedCounts>>,
    /// True while a refresh of `counts` runs in the background.
    pub(super) refreshing: std::sync::atomic::AtomicBool,
}

/// Hub-wide counts and when (hub clock, ms) they were taken.
#[derive(Debug, Clone, Copy)]
pub struct CachedCounts {
    pub at: i64,
    pub stats: crate::store::HubStats,
}

impl ConsoleState {
    /// Forgets expired sessions and old failure windows (the housekeeping task).
    pub fn prune(&self, now: i64) {
        self.sessions.lock().retain(|_, s| s.expires_at > now);
        self.failures
            .lock()
            .retain(|_, f| now - f.since < FAILED_LOGIN_WINDOW_MS);
    }
}

/// The operator behind a request: a valid, unexpired session. Pages take it
/// as an argument; without a session the request is redirected to the login.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The session's CSRF token (forms carry it back).
    pub csrf: String,
    /// Who made a change, for the audit log.
    pub actor: &'static str,
    pub session_tag: String,
    pub ip: IpAddr,
}

impl Operator {
    /// Refuses a change whose form does not carry this session's token.
    pub fn check_csrf(&self, given: &str) -> Result<(), PageError> {
        let ok: bool = given.as_bytes().ct_eq(self.csrf.as_bytes()).into();
        if ok && !given.is_empty() {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                "CSRF_INVALID",
                "the form's CSRF token is missing or wrong; reload the page and try again",
            ))
        }
    }

    /// Audits a change made by this operator.
    pub async fn audit(
        &self,
        app: &AppState,
        kind: AuditKind,
        agent_id: Option<&str>,
        mut detail: serde_json::Value,
    ) {
        if let Some(map) = detail.as_object_mut() {
            map.insert("actor".into(), self.actor.into());
            map.insert("session".into(), self.session_tag.clone().into());
            map.insert("ip".into(), self.ip.to_string().into());
        }
        app.hub.audit(kind, agent_id, detail).await;
    }
}

/// Without a session: a redirect to the login page.
pub struct LoginRequired;

impl IntoResponse for LoginRequired {
    fn into_response(self) -> Response {
        Redirect::to("/console/login").into_response()
    }
}

impl<S> FromRequestParts<S> for Operator
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = LoginRequired;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let console = app.console.as_ref().ok_or(LoginRequired)?;
        let token = cookie(&parts.headers, COOKIE).ok_or(LoginRequired)?;
        let now = app.hub.clock.now_ms();
        let session = {
            let mut sessions = console.sessions.lock();
            let id = digest(token);
            match sessions.get(&id) {
                Some(s) if s.expires_at > now => s.clone(),
                Some(_) => {
                    sessions.remove(&id);
                    return Err(LoginRequired);
                }
                None => return Err(LoginRequired),
            }
        };
        let ip = ClientIp::of(
            &parts.extensions,
            &parts.headers,
            app.hub.config.trust_proxy,
        );
        Ok(Operator {
            csrf: session.csrf,
            actor: session.key.actor(),
            session_tag: session.tag,
            ip: ip.0,
        })
    }
}

/// `GET /console/login`.
pub async fn login_page() -> Response {
    render(&LoginPage { error: None })
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
}

/// `POST /console/login`: the key for a session cookie.
pub async fn login(
    State(app): State<AppState>,
    Extension(ip): Extension<ClientIp>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(console) = app.console.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let now = app.hub.clock.now_ms();
    let limited =
        console.failures.lock().get(&ip.0).is_some_and(|f| {
            now - f.since < FAILED_LOGIN_WINDOW_MS && f.count >= MAX_FAILED_LOGINS
        });
    if limited {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            render(&LoginPage {
                error: Some("Too many failed logins from this address; wait a few minutes."),
            }),
        )
            .into_response();
    }
    let key = (form.key.len() <= MAX_KEY_LEN)
        .then(|| app.hub.console_key(&form.key))
        .flatten();
    let Some(key) = key else {
        let count = {
            let mut failures = console.failures.lock();
            if failures.len() >= MAX_TRACKED_IPS && !failures.contains_key(&ip.0) {
                failures.retain(|_, f| now - f.since < FAILED_LOGIN_WINDOW_MS);
            }
            let entry = failures.entry(ip.0).or_insert(Failures {
                count: 0,
                since: now,
            });
            if now - entry.since >= FAILED_LOGIN_WINDOW_MS {
                *entry = Failures {
                    count: 0,
                    since: now,
                };
            }
            entry.count += 1;
            entry.count
        };
        app.hub
            .audit(
                AuditKind::ConsoleLoginFailed,
                None,
                json!({ "ip": ip.0.to_string(), "failures_in_window": count }),
            )
            .await;
        return (
            StatusCode::UNAUTHORIZED,
            render(&LoginPage {
                error: Some("That key does not open the console."),
            }),
        )
            .into_response();
    };

    let token = random_hex();
    let tag = hex::encode(&digest(&token)[..4]);
    let ttl_ms = app.hub.config.console_session_ttl_sec as i64 * 1000;
    {
        let mut sessions = console.sessions.lock();
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(id, _)| *id)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            digest(&token),
            Session {
                key,
                csrf: random_hex(),
                expires_at: now + ttl_ms,
                tag: tag.clone(),
            },
        );
    }
    console.failures.lock().remove(&ip.0);
    app.hub
        .audit(
            AuditKind::ConsoleLogin,
            None,
            json!({ "actor": key.actor(), "session": tag, "ip": ip.0.to_string() }),
        )
        .await;
    let secure = secure_cookie(&app, &headers);
    let cookie = format!(
        "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        app.hub.config.console_session_ttl_sec,
        if secure { "; Secure" } else { "" }
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
}

/// The logout form.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /console/logout`: ends the session and clears the cookie.
pub async fn logout(
    State(app): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    operator.check_csrf(&form.csrf)?;
    if let (Some(console), Some(token)) = (&app.console, cookie(&headers, COOKIE)) {
        console.sessions.lock().remove(&digest(token));
    }
    operator
        .audit(&app, AuditKind::ConsoleLogout, None, json!({}))
        .await;
    let secure = secure_cookie(&app, &headers);
    let cookie = format!(
        "{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/console/login"),
    )
        .into_response())
}

/// `Secure` when TLS ends at a trusted proxy that says so, or when configured.
fn secure_cookie(app: &AppState, headers: &HeaderMap) -> bool {
    app.hub.config.console_secure_cookie
        || (app.hub.config.trust_proxy
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https")))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// 32 random bytes as hex: session ids and CSRF tokens.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
