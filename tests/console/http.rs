//! Every console route's authorization over plain HTTP: what a request
//! without a session, with a wrong or missing CSRF token, with an expired or
//! closed session gets; the login's cookie, limits and audit; the headers.

use admp::hub::Clock;
use admp::store::MessageState;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};

use crate::fixture::{Backend, CONSOLE_KEY, ConsoleHub, FormExt, console_config, no_redirects};
use crate::support::MASTER_KEY;

/// Every page (GET) of the console, for a hub filled by the fixture.
fn pages(hub: &ConsoleHub) -> Vec<String> {
    vec![
        "/console".into(),
        "/console/agents".into(),
        "/console/agents?q=b".into(),
        "/console/agents/bob".into(),
        "/console/agents/bob/delete".into(),
        format!("/console/messages/{}", hub.dead_id),
        format!("/console/messages?id={}", hub.dead_id),
        "/console/dead".into(),
        "/console/deliveries".into(),
        "/console/audit".into(),
        format!("/console/groups/{}", urlencoding::encode(&hub.group_id)),
        "/console/agents/bob?groups_after=group%3A%2F%2Fa".into(),
    ]
}

/// Every change (POST) of the console.
fn changes(hub: &ConsoleHub) -> Vec<String> {
    vec![
        format!("/console/agents/bob/dead/{}/requeue", hub.dead_id),
        "/console/agents/bob/dead/requeue-all".into(),
        "/console/deliveries/some-delivery/retry".into(),
        "/console/agents/bob/delete".into(),
        "/console/logout".into(),
    ]
}

/// Logs in with `key`; the session cookie (`name=value`) and the CSRF token.
async fn login(hub: &ConsoleHub, key: &str) -> (String, String) {
    let http = no_redirects();
    let response = http
        .post(hub.url("/console/login"))
        .form(&[("key", key)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/console");
    let set = response.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http
        .get(hub.url("/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a CSRF token")
        .to_string();
    (cookie, csrf)
}

async fn memory_hub() -> ConsoleHub {
    ConsoleHub::start(Backend::Memory, console_config(), Clock::system()).await
}

#[tokio::test]
async fn console_is_off_by_default() {
    let config = admp::config::Config {
        console_enabled: false,
        ..console_config()
    };
    let hub = ConsoleHub::start(Backend::Memory, config, Clock::system()).await;
    for path in ["/console", "/console/login", "/console/static/console.css"] {
        let response = no_redirects().get(hub.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn without_a_session_every_page_and_change_goes_to_the_login() {
    let hub = memory_hub().await;
    let http = no_redirects();
    for path in pages(&hub) {
        // The operator key as an API header is no console session.
        let response = http
            .get(hub.url(&path))
            .header("x-api-key", MASTER_KEY)
            .header("cookie", "admp_console=forged-session-id")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(response.headers()[LOCATION], "/console/login", "{path}");
        assert!(response.headers().contains_key(CONTENT_SECURITY_POLICY));
    }
    for path in changes(&hub) {
        let response = http
            .post(hub.url(&path))
            .form(&[("csrf", "x"), ("confirm", "bob")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(response.headers()[LOCATION], "/console/login", "{path}");
    }
    // Nothing changed.
    let dead = hub.store.get_message(&hub.dead_id).await.unwrap().unwrap();
    assert_eq!(dead.state, MessageState::Dead);
    assert!(hub.store.get_agent("bob").await.unwrap().is_some());
    hub.stop().await;
}

#[tokio::test]
async fn with_a_session_every_page_renders_under_a_strict_csp() {
    let hub = memory_hub().await;
    let (cookie, _) = login(&hub, MASTER_KEY).await;
    for path in pages(&hub) {
        let response = reqwest::Client::new()
            .get(hub.url(&path))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["cache-control"], "no-store");
        let html = response.text().await.unwrap();
        assert!(!html.contains("<script"), "{path} has no script");
    }
    hub.stop().await;
}

#[tokio::test]
async fn the_cookie_is_httponly_strict_expiring_and_secure_behind_tls() {
    let config = admp::config::Config {
        trust_proxy: true,
        ..console_config()
    };
    let hub = ConsoleHub::start(Backend::Memory, config, Clock::system()).await;
    let http = no_redirects();
    let plain = http
        .post(hub.url("/console/login"))
        .form(&[("key", MASTER_KEY)])
        .send()
        .await
        .unwrap();
    let cookie = plain.headers()[SET_COOKIE].to_str().unwrap();
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=3600",
    ] {
        assert!(cookie.contains(part), "{cookie} has {part}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let tls = http
        .post(hub.url("/console/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("key", MASTER_KEY)])
        .send()
        .await
        .unwrap();
    assert!(
        tls.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    hub.stop().await;
}

#[tokio::test]
async fn changes_without_the_csrf_token_are_refused() {
    let hub = memory_hub().await;
    let (cookie, csrf) = login(&hub, MASTER_KEY).await;
    let http = no_redirects();
    for path in changes(&hub) {
        for form in [
            vec![("confirm", "bob")],
            vec![("csrf", "wrong"), ("confirm", "bob")],
        ] {
            let response = http
                .post(hub.url(&path))
                .header("cookie", &cookie)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
            assert!(response.text().await.unwrap().contains("CSRF_INVALID"));
        }
    }
    let dead = hub.store.get_message(&hub.dead_id).await.unwrap().unwrap();
    assert_eq!(dead.state, MessageState::Dead);
    assert!(hub.store.get_agent("bob").await.unwrap().is_some());

    // With the token the same change goes through, audited with the operator.
    let response = http
        .post(hub.url(&format!("/console/agents/bob/dead/{}/requeue", hub.dead_id)))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let requeued = hub.store.get_message(&hub.dead_id).await.unwrap().unwrap();
    assert_eq!(requeued.state, MessageState::Queued);
    let audit = hub.store.list_audit(None, 1000).await.unwrap();
    let event = audit
        .iter()
        .find(|e| e.kind == "console.requeued")
        .expect("the requeue is audited");
    assert_eq!(event.detail["actor"], "console:master");
    assert_eq!(event.agent_id.as_deref(), Some("bob"));
    hub.stop().await;
}

#[tokio::test]
async fn delete_needs_the_typed_id_and_is_audited() {
    let hub = memory_hub().await;
    let (cookie, csrf) = login(&hub, CONSOLE_KEY).await;
    let http = no_redirects();
    let post = |confirm: &'static str| {
        http.post(hub.url("/console/agents/carol/delete"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str()), ("confirm", confirm)])
            .send()
    };
    let refused = post("carl").await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(hub.store.get_agent("carol").await.unwrap().is_some());
    let done = post("carol").await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert!(hub.store.get_agent("carol").await.unwrap().is_none());
    let queued = hub
        .store
        .get_message(&hub.queued_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        queued.state,
        MessageState::Dead,
        "its live message is dead-lettered"
    );
    let audit = hub.store.list_audit(None, 1000).await.unwrap();
    let event = audit.iter().find(|e| e.kind == "agent.deleted").unwrap();
    assert_eq!(event.detail["actor"], "console:console-key");
    hub.stop().await;
}

#[tokio::test]
async fn failed_logins_are_audited_and_limited_per_address() {
    let hub = memory_hub().await;
    let http = no_redirects();
    // Oversized keys are refused (and counted) without being compared.
    let huge = "k".repeat(2_000);
    for key in [
        "not-the-key-at-all",
        "",
        "x",
        MASTER_KEY.trim_end_matches('9'),
        &huge,
    ] {
        let response = http
            .post(hub.url("/console/login"))
            .form(&[("key", key)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(!response.headers().contains_key(SET_COOKIE));
    }
    // Even the right key waits now.
    let limited = http
        .post(hub.url("/console/login"))
        .form(&[("key", MASTER_KEY)])
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!limited.headers().contains_key(SET_COOKIE));
    let audit = hub.store.list_audit(None, 1000).await.unwrap();
    let failures = audit
        .iter()
        .filter(|e| e.kind == "console.login_failed")
        .count();
    assert_eq!(failures, 5);
    hub.stop().await;
}

#[tokio::test]
async fn sessions_expire_and_logout_ends_them() {
    let clock = Clock::manual();
    let hub = ConsoleHub::start(Backend::Memory, console_config(), clock.clone()).await;
    let http = no_redirects();
    let (cookie, csrf) = login(&hub, MASTER_KEY).await;
    let get = |cookie: &str| {
        http.get(hub.url("/console/agents"))
            .header("cookie", cookie.to_string())
            .send()
    };
    assert_eq!(get(&cookie).await.unwrap().status(), StatusCode::OK);
    clock.advance_ms(3_600 * 1000 + 1);
    assert_eq!(get(&cookie).await.unwrap().status(), StatusCode::SEE_OTHER);

    let (cookie, csrf2) = login(&hub, MASTER_KEY).await;
    assert_ne!(csrf, csrf2, "each session has its own CSRF token");
    let out = http
        .post(hub.url("/console/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf2.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(get(&cookie).await.unwrap().status(), StatusCode::SEE_OTHER);
    hub.stop().await;
}

#[tokio::test]
async fn oversized_queries_and_unknown_records_are_clear_errors() {
    let hub = memory_hub().await;
    let (cookie, _) = login(&hub, MASTER_KEY).await;
    let http = no_redirects();
    let long = "a".repeat(300);
    for (path, status, code) in [
        (format!("/console/agents?q={long}"), 400, "INVALID_INPUT"),
        (
            "/console/dead?cursor=garbage".to_string(),
            400,
            "INVALID_INPUT",
        ),
        ("/console/agents/nobody".to_string(), 404, "AGENT_NOT_FOUND"),
        (
            format!("/console/agents/bob?groups_after={long}"),
            400,
            "INVALID_INPUT",
        ),
        (
            "/console/groups/group%3A%2F%2Fnone-00000000".to_string(),
            404,
            "GROUP_NOT_FOUND",
        ),
        (
            format!(
                "/console/groups/{}?cursor=garbage",
                urlencoding::encode(&hub.group_id)
            ),
            400,
            "INVALID_INPUT",
        ),
        (
            "/console/messages/nothing".to_string(),
            404,
            "MESSAGE_NOT_FOUND",
        ),
    ] {
        let response = http
            .get(hub.url(&path))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let html = response.text().await.unwrap();
        assert!(html.contains(code), "{path}: {html}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn retry_now_and_requeue_all_change_the_records_and_are_audited() {
    let hub = memory_hub().await;
    let (cookie, csrf) = login(&hub, MASTER_KEY).await;
    let http = no_redirects();
    let failing = hub.store.list_failing_deliveries(10, None).await.unwrap();
    let delivery = failing
        .items
        .first()
        .expect("the fixture's failed delivery");
    assert_eq!(delivery.attempts, 1);
    let response = http
        .post(hub.url(&format!("/console/deliveries/{}/retry", delivery.id)))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // The worker attempts it at once (the receiver still answers 500).
    let store = hub.store.clone();
    let id = delivery.id.clone();
    crate::fixture::eventually("a second attempt", || {
        let store = store.clone();
        let id = id.clone();
        async move {
            let d = store.get_delivery(&id).await.unwrap().unwrap();
            (d.attempts >= 2).then_some(())
        }
    })
    .await;
    let unknown = http
        .post(hub.url("/console/deliveries/no-such-delivery/retry"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);

    let response = http
        .post(hub.url("/console/agents/bob/dead/requeue-all"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let requeued = hub.store.get_message(&hub.dead_id).await.unwrap().unwrap();
    assert_eq!(requeued.state, MessageState::Queued);
    let audit = hub.store.list_audit(None, 1000).await.unwrap();
    let kinds: Vec<&str> = audit.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"console.delivery_retried"), "{kinds:?}");
    let all = audit.iter().find(|e| e.kind == "console.requeued").unwrap();
    assert_eq!(all.detail["count"], 1);
    assert_eq!(all.detail["actor"], "console:master");
    hub.stop().await;
}

/// An agent's groups are listed a page at a time with a link to the next;
/// the group page shows members and history, a sender's subject escaped.
#[tokio::test]
async fn agent_groups_are_paged_and_the_group_page_escapes_posts() {
    let hub = memory_hub().await;
    let (cookie, _) = login(&hub, MASTER_KEY).await;
    let page = |path: String| {
        let cookie = cookie.clone();
        let url = hub.url(&path);
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            response.text().await.unwrap()
        }
    };
    let groups_shown = admp::api::console::GROUPS_SHOWN;
    for i in 0..groups_shown {
        let created = hub
            .alice
            .create_group(&serde_json::json!({ "name": format!("Team {i:02}") }))
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    // Alice: her 20 own groups plus Ops Team; ids sort "group://ops-…" before "group://team-…".
    let first = page("/console/agents/alice".into()).await;
    assert_eq!(first.matches("class=\"group-link\"").count(), groups_shown);
    assert!(
        first.contains("Ops Team") && first.contains(">member<"),
        "{first}"
    );
    let next = first
        .split("id=\"groups-next\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to the next page of groups")
        .to_string();
    let second = page(next).await;
    assert_eq!(second.matches("class=\"group-link\"").count(), 1);
    assert!(second.contains("Team 19") && !second.contains("Ops Team"));
    assert!(!second.contains("groups-next"));
    // Bob owns Ops Team; Carol is in none.
    let bobs = page("/console/agents/bob".into()).await;
    assert!(bobs.contains(&hub.group_id) && bobs.contains(">owner<"));
    assert!(
        page("/console/agents/carol".into())
            .await
            .contains("In no group.")
    );

    let hostile = hub.alice.group_envelope(
        &hub.group_id,
        "<script>alert(1)</script>",
        serde_json::json!({}),
    );
    let posted = hub.alice.post_group(&hub.group_id, &hostile).await.unwrap();
    assert_eq!(posted.status(), 201);
    let group = page(format!(
        "/console/groups/{}",
        urlencoding::encode(&hub.group_id)
    ))
    .await;
    let members = group.split("id=\"members\"").nth(1).unwrap();
    assert!(members.contains(">alice<") && members.contains(">bob<"));
    assert!(group.contains("Deploy at 10:00"));
    assert!(group.contains("&#60;script&#62;alert(1)"), "{group}");
    assert!(!group.contains("<script"));
    assert!(group.contains("1 of 1 delivered"));
    hub.stop().await;
}

/// The audit page says whether checkpoints are signed and whether this
/// page's verify with the hub's key.
#[tokio::test]
async fn the_audit_page_reports_signed_checkpoints() {
    let hub = memory_hub().await;
    let (cookie, _) = login(&hub, MASTER_KEY).await;
    let audit_page = |hub: &ConsoleHub, cookie: &str| {
        let url = hub.url("/console/audit");
        let cookie = cookie.to_string();
        async move {
            reqwest::Client::new()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert!(
        audit_page(&hub, &cookie)
            .await
            .contains("Signed checkpoints: off")
    );
    hub.stop().await;

    let key = admp::signing::keys::generate();
    let public = admp::signing::keys::encode_public_key(&key.verifying_key());
    let config = admp::config::Config {
        audit_signing_key: Some(admp::signing::keys::encode_secret_key(&key)),
        audit_checkpoint_every: 2,
        ..console_config()
    };
    let hub = ConsoleHub::start(Backend::Memory, config, Clock::system()).await;
    let (cookie, _) = login(&hub, MASTER_KEY).await;
    let html = audit_page(&hub, &cookie).await;
    let status = html
        .split("id=\"checkpoints\">")
        .nth(1)
        .and_then(|rest| rest.split("</p>").next())
        .expect("the checkpoint status");
    assert!(status.contains("every 2 events"), "{status}");
    assert!(status.contains(&public), "{status}");
    assert!(
        status.contains("verify;") && !status.contains("NOT"),
        "{status}"
    );
    assert!(html.contains("audit.checkpoint"));
    hub.stop().await;
}
