//! What the hub learns from every request: the client address, request
//! metrics by route template and status, and an audit record of refused
//! requests (auth failures and rate-limit hits).
//!
//! Refusals are observed here, at the response, rather than where each is
//! decided (extractor, handlers, the tower_governor layers): every refusal
//! carries its code in an [`ErrorCode`] response extension, so one place
//! sees them all. Their audit records are throttled per client (one a
//! minute, with a count of the skipped ones), so a flood of bad requests
//! cannot flood the audit log; successful requests never write to it here.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde_json::json;

use super::AppState;
use super::error::ErrorCode;
use super::ratelimit::ClientIp;
use crate::audit::AuditKind;

/// Route label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Records metrics and refusals of one request; runs inside the request's
/// tracing span, after routing (so the matched route template is known).
pub async fn observe(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let ip = ClientIp::of(req.extensions(), req.headers(), app.hub.config.trust_proxy);
    req.extensions_mut().insert(ip);
    tracing::Span::current().record("client_ip", tracing::field::display(ip.0));
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    // Cheap reference-counted copies, read only if the request is refused.
    let credentials = Presented {
        signature: req.headers().get("signature").cloned(),
        authorization: req.headers().get(header::AUTHORIZATION).cloned(),
        request_id: req.headers().get("x-request-id").cloned(),
    };

    let response = next.run(req).await;

    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    let status = response.status();
    app.hub
        .metrics
        .http_request(method.as_str(), route, status.as_u16(), started.elapsed());
    if let Some(&ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        let refusal = Refusal {
            code,
            route,
            method: method.as_str(),
            ip,
            credentials: &credentials,
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            app.hub.metrics.auth_failure(code);
            refused(&app, AuditKind::AuthFailed, refusal).await;
        } else if code == "RATE_LIMITED" || code == "TOO_MANY_AUTH_FAILURES" {
            app.hub.metrics.rate_limited(route);
            refused(&app, AuditKind::RateLimited, refusal).await;
        }
    }
    response
}

/// Credential headers a request carried.
struct Presented {
    signature: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

/// A refused request, as the audit record describes it.
struct Refusal<'a> {
    code: &'static str,
    route: &'a str,
    method: &'a str,
    ip: ClientIp,
    credentials: &'a Presented,
}

/// Audits a refusal unless the same client was audited for the same kind of
/// refusal within the last [`AUDIT_THROTTLE`]; the next record says how
/// many were skipped. The one write per client and minute is awaited, so the
/// record exists once the refusal is answered.
async fn refused(app: &AppState, kind: AuditKind, r: Refusal<'_>) {
    let bearer = text(&r.credentials.authorization).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let claimed = app
        .hub
        .claimed_agent(text(&r.credentials.signature), bearer);
    // A per-agent rate-limit hit comes from an authenticated agent; in
    // every other refusal the agent is only what the request claimed.
    let verified = kind == AuditKind::RateLimited && r.code == "RATE_LIMITED";
    // Auth failures are throttled per address (an attacker can claim any
    // agent); rate-limit hits per agent when the caller was one.
    let subject = match (verified, &claimed) {
        (true, Some(agent)) => format!("agent:{agent}"),
        _ => format!("ip:{}", r.ip.0),
    };
    let Some(skipped) = app.throttle.admit(kind, subject) else {
        return;
    };
    let detail = json!({
        "code": r.code,
        "method": r.method,
        "route": r.route,
        "ip": r.ip.0.to_string(),
        "request_id": text(&r.credentials.request_id),
        "skipped_since_last": skipped,
    });
    if verified {
        app.hub.audit(kind, claimed.as_deref(), detail).await;
    } else {
        // Never recorded as the event's agent: the keyId (or token subject)
        // of a refused request is a claim nobody verified.
        let mut detail = detail;
        detail["claimed_agent_id"] = json!(claimed);
        detail["agent_verified"] = json!(false);
        app.hub.audit(kind, None, detail).await;
    }
}

fn text(value: &Option<HeaderValue>) -> Option<&str> {
    value.as_ref().and_then(|v| v.to_str().ok())
}

/// Window in which repeated refusals of one client are audited once.
pub const AUDIT_THROTTLE: Duration = Duration::from_secs(60);
/// Entries kept before stale ones are pruned on the spot.
const THROTTLE_PRUNE_AT: usize = 100_000;

/// One audit record per (kind, client) per [`AUDIT_THROTTLE`].
#[derive(Debug, Default)]
pub struct AuditThrottle {
    windows: DashMap<(AuditKind, String), Window>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    skipped: u64,
}

impl AuditThrottle {
    /// `Some(skipped)` when a record should be written now (with how many
    /// were skipped since the previous one), `None` to skip this one.
    pub fn admit(&self, kind: AuditKind, subject: String) -> Option<u64> {
        if self.windows.len() > THROTTLE_PRUNE_AT {
            self.prune();
        }
        let now = Instant::now();
        match self.windows.entry((kind, subject)) {
            Entry::Vacant(e) => {
                e.insert(Window {
                    opened: now,
                    skipped: 0,
                });
                Some(0)
            }
            Entry::Occupied(mut e) => {
                let window = e.get_mut();
                if now.duration_since(window.opened) < AUDIT_THROTTLE {
                    window.skipped += 1;
                    return None;
                }
                let skipped = window.skipped;
                *window = Window {
                    opened: now,
                    skipped: 0,
                };
                Some(skipped)
            }
        }
    }

    /// Drops windows that have ended (their skipped counts only ever show
    /// in the metrics).
    pub fn prune(&self) {
        self.windows
            .retain(|_, w| w.opened.elapsed() < AUDIT_THROTTLE);
        self.windows.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_admits_once_per_window_and_client() {
        let t = AuditThrottle::default();
        assert_eq!(t.admit(AuditKind::AuthFailed, "ip:1".into()), Some(0));
        assert_eq!(t.admit(AuditKind::AuthFailed, "ip:1".into()), None);
        assert_eq!(t.admit(AuditKind::AuthFailed, "ip:1".into()), None);
        assert_eq!(t.admit(AuditKind::AuthFailed, "ip:2".into()), Some(0));
        assert_eq!(t.admit(AuditKind::RateLimited, "ip:1".into()), Some(0));
        // An ended window admits again and reports what it skipped.
        t.windows
            .get_mut(&(AuditKind::AuthFailed, "ip:1".to_string()))
            .unwrap()
            .opened -= AUDIT_THROTTLE;
        assert_eq!(t.admit(AuditKind::AuthFailed, "ip:1".into()), Some(2));
        t.prune();
        assert_eq!(t.windows.len(), 3);
    }
}
