//! Black-box tests of the operational surface: rate limits, the audit log
//! and its hash chain, and the Prometheus metrics.

mod support;

use admp::config::Config;
use admp::signing::keys;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// Test config with small limits, so floods are short.
fn limited(per_sec: u32, burst: u32) -> Config {
    Config {
        rate_limit_per_sec: per_sec,
        rate_limit_burst: burst,
        ..test_config()
    }
}

/// Sends requests built by `request` until one is refused with 429; returns it.
/// The limits under test refill at most one token a second, so a flood is
/// refused within a few requests however slowly the test runs.
async fn flood_until_refused(
    mut request: impl FnMut() -> reqwest::RequestBuilder,
) -> reqwest::Response {
    for _ in 0..500 {
        let response = request().send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return response;
        }
        assert!(response.status().is_success(), "{}", response.status());
    }
    panic!("the flood was never refused");
}

/// Asserts a 429 `RATE_LIMITED` with a `Retry-After` of at least a second.
async fn expect_rate_limited(response: reqwest::Response) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    let body = expect_error(response, 429, "RATE_LIMITED").await;
    assert_eq!(body["retry_after_sec"], retry_after);
}

/// Every audit event, walking all pages of `limit` and checking each page's chain.
async fn audit_events(hub: &TestHub, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/audit?limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = read(hub.master(Method::GET, &path).send().await.unwrap()).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["chain_valid"], true, "{page}");
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return events,
        }
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_flooding_agent_is_limited_while_another_is_served() {
    let hub = TestHub::start(limited(1, 5)).await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;

    let refused =
        flood_until_refused(|| alice.request(Method::GET, &alice.agent_path(""), None)).await;
    expect_rate_limited(refused).await;

    let response = bob
        .request(Method::GET, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "bob has his own bucket");
    // The operator is never limited.
    for _ in 0..20 {
        let response = hub
            .master(Method::GET, "/api/agents/alice")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    let events = audit_events(&hub, 100).await;
    let hit = events
        .iter()
        .find(|e| e["kind"] == "rate_limit.exceeded")
        .expect("the hit is audited");
    assert_eq!(hit["agent_id"], "alice");
    assert_eq!(hit["detail"]["route"], "/api/agents/{agent_id}");
    assert_eq!(hit["detail"]["code"], "RATE_LIMITED");
}

#[tokio::test]
async fn anonymous_floods_share_the_ip_bucket_but_not_the_agents() {
    let hub = TestHub::start(limited(1, 5)).await;
    let alice = hub.agent("alice").await;
    let refused = flood_until_refused(|| hub.http.get(hub.url("/api/stats"))).await;
    expect_rate_limited(refused).await;
    // Open routes draw from the same per-IP bucket; probes never do.
    expect_rate_limited(hub.http.get(hub.url("/metrics")).send().await.unwrap()).await;
    for probe in ["/health", "/ready", "/health", "/ready"] {
        let response = hub.http.get(hub.url(probe)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{probe} is never rate-limited");
    }
    let response = alice
        .request(Method::GET, &alice.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn registration_is_limited_per_ip_and_forwarded_for_only_counts_behind_a_proxy() {
    let register = |hub: &TestHub, forwarded_for: &str| {
        let key = keys::generate();
        hub.http
            .post(hub.url("/api/agents/register"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({ "public_key": keys::encode_public_key(&key.verifying_key()) }))
            .send()
    };
    let config = Config {
        register_rate_limit_per_min: 2,
        ..test_config()
    };

    let direct = TestHub::start(config.clone()).await;
    for ip in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(register(&direct, ip).await.unwrap().status(), 201);
    }
    // Without TRUST_PROXY the header is ignored: all three came from 127.0.0.1.
    expect_rate_limited(register(&direct, "203.0.113.3").await.unwrap()).await;

    let proxied = TestHub::start(Config {
        trust_proxy: true,
        ..config
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            register(&proxied, "203.0.113.1").await.unwrap().status(),
            201
        );
    }
    expect_rate_limited(register(&proxied, "203.0.113.1").await.unwrap()).await;
    // The last entry is the one the proxy appended; earlier ones are the client's.
    let other = register(&proxied, "203.0.113.1, 203.0.113.2")
        .await
        .unwrap();
    assert_eq!(other.status(), 201);
}

#[tokio::test]
async fn rate_limits_can_be_switched_off() {
    let hub = TestHub::start(Config {
        rate_limit_enabled: false,
        register_rate_limit_per_min: 1,
        ..limited(1, 1)
    })
    .await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    for _ in 0..20 {
        let response = alice
            .request(Method::GET, &alice.agent_path(""), None)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let response = hub.http.get(hub.url("/health")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn the_audit_log_records_security_events_in_a_verified_chain() {
    let hub = TestHub::start(Config {
        max_delivery_attempts: 1,
        ..test_config()
    })
    .await;
    let mut alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let path = alice.agent_path("trusted");
    let response = alice
        .request(Method::POST, &path, Some(&json!({"agent_id": "bob"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let path = alice.agent_path("trusted/bob");
    assert_eq!(
        alice
            .request(Method::DELETE, &path, None)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let webhook = json!({"webhook_url": "https://hooks.example.com/admp"});
    let path = alice.agent_path("webhook");
    let response = alice
        .request(Method::POST, &path, Some(&webhook))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        alice
            .request(Method::DELETE, &path, None)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let new_key = keys::generate();
    let body = json!({"public_key": keys::encode_public_key(&new_key.verifying_key())});
    let path = alice.agent_path("rotate-key");
    let response = alice
        .request(Method::POST, &path, Some(&body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    alice.key = new_key;
    // Bob acting on Alice's inbox: refused and audited.
    let response = bob
        .request(Method::GET, &alice.agent_path(""), None)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    // A nack at the attempt limit dead-letters the message.
    send(&bob, "alice", json!({"n": 1})).await;
    let leased = pull_one(&alice).await;
    let path = alice.agent_path(&format!(
        "messages/{}/nack",
        leased["message_id"].as_str().unwrap()
    ));
    let (status, nacked) = read(
        alice
            .request(Method::POST, &path, Some(&json!({})))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), nacked["status"].as_str()),
        (200, Some("dead"))
    );
    let response = bob
        .request(Method::DELETE, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // Pages of 3 chain onto each other and add up to the whole log.
    let events = audit_events(&hub, 3).await;
    assert_eq!(
        kinds(&events),
        [
            "agent.registered",
            "agent.registered",
            "agent.trust_added",
            "agent.trust_removed",
            "agent.webhook_set",
            "agent.webhook_removed",
            "agent.key_rotated",
            "auth.failed",
            "message.dead_lettered",
            "agent.deleted",
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(events, audit_events(&hub, 1000).await);

    let registered = &events[0];
    assert_eq!(registered["agent_id"], "alice");
    assert_eq!(registered["detail"]["actor"], "anonymous");
    assert_eq!(registered["detail"]["ip"], "127.0.0.1");
    assert_eq!(registered["detail"]["key_generated_by_hub"], false);
    assert_eq!(events[2]["detail"]["trusted"], "bob");
    assert_eq!(events[2]["detail"]["actor"], "agent:alice");
    assert_eq!(events[6]["detail"]["key_version"], 2);
    let refused = &events[7];
    assert_eq!(
        refused["agent_id"],
        Value::Null,
        "a claim is not a verified agent"
    );
    assert_eq!(refused["detail"]["claimed_agent_id"], "bob");
    assert_eq!(refused["detail"]["agent_verified"], false);
    assert_eq!(refused["detail"]["code"], "FORBIDDEN");
    assert_eq!(refused["detail"]["route"], "/api/agents/{agent_id}");
    assert_eq!(events[8]["detail"]["source"], "nack");
    assert_eq!(events[9]["agent_id"], "bob");
    for e in &events {
        assert_eq!(e["hash"].as_str().unwrap().len(), 64);
        assert!(e["at"].as_i64().unwrap() > 0);
    }
}

#[tokio::test]
async fn the_audit_log_is_for_the_operator_only() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let response = hub.http.get(hub.url("/api/audit")).send().await.unwrap();
    expect_error(response, 401, "AUTH_REQUIRED").await;
    let response = alice
        .request(Method::GET, "/api/audit", None)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    for query in ["limit=0", "limit=1001", "cursor=x", "cursor=99"] {
        let response = hub
            .master(Method::GET, &format!("/api/audit?{query}"))
            .send()
            .await
            .unwrap();
        expect_error(response, 400, "INVALID_INPUT").await;
    }
}

#[tokio::test]
async fn tampering_with_a_stored_audit_row_is_detected() {
    let hub = TestHub::default().await;
    for id in ["a", "b", "c", "d"] {
        hub.agent(id).await;
    }
    assert_eq!(audit_events(&hub, 2).await.len(), 4);

    hub.store.edit_audit_rows(|rows| {
        rows[1].detail["agent_type"] = json!("not-what-happened");
    });
    let (_, page) = read(hub.master(Method::GET, "/api/audit").send().await.unwrap()).await;
    assert_eq!(page["chain_valid"], false);
    assert_eq!(page["broken_at"], 2);
    // Page by page, exactly the page holding the edited row fails.
    let page_valid = |cursor: &'static str| {
        let request = hub.master(Method::GET, &format!("/api/audit?limit=2&cursor={cursor}"));
        async move { read(request.send().await.unwrap()).await.1["chain_valid"].clone() }
    };
    assert_eq!(page_valid("0").await, false);
    assert_eq!(page_valid("2").await, true);

    // Deleting a row breaks the link of the row after it.
    hub.store.edit_audit_rows(|rows| {
        rows[1].detail["agent_type"] = json!("generic");
        rows.remove(2);
    });
    let (_, page) = read(hub.master(Method::GET, "/api/audit").send().await.unwrap()).await;
    assert_eq!(
        (page["chain_valid"].clone(), page["broken_at"].clone()),
        (json!(false), json!(4))
    );
}

#[tokio::test]
async fn metrics_report_requests_by_route_and_the_message_flow() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    send(&alice, "bob", json!({"task": 1})).await;
    let leased = pull_one(&bob).await;
    let response = bob
        .ack(
            leased["message_id"].as_str().unwrap(),
            leased["lease_id"].as_str(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = hub.http.get(hub.url("/api/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);

    let response = hub.http.get(hub.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for line in [
        r#"admp_http_requests_total{method="POST",route="/api/agents/register",status="201"} 2"#,
        r#"admp_http_requests_total{method="POST",route="/api/agents/{agent_id}/messages",status="201"} 1"#,
        r#"admp_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"admp_messages_sent_total{outcome="created"} 1"#,
        "admp_messages_leased_total 1",
        "admp_messages_acked_total 1",
        r#"admp_messages{state="acked"} 1"#,
        r#"admp_messages{state="queued"} 0"#,
        r#"admp_agents{status="online"} 2"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    for fragment in [
        r#"admp_http_request_duration_seconds_bucket{method="POST",route="/api/agents/{agent_id}/inbox/pull",status="200",le="0.005"}"#,
        r#"admp_store_call_duration_seconds_bucket{op="enqueue",le="#,
        r#"admp_store_call_duration_seconds_count{op="lease"}"#,
        "# HELP admp_http_requests_total",
        "admp_build_info{version=",
    ] {
        assert!(text.contains(fragment), "missing `{fragment}` in\n{text}");
    }
    assert!(
        !text.contains("/api/agents/bob"),
        "raw paths never label metrics"
    );
}

#[tokio::test]
async fn metrics_can_require_the_master_key() {
    let hub = TestHub::start(Config {
        metrics_require_key: true,
        ..test_config()
    })
    .await;
    let response = hub.http.get(hub.url("/metrics")).send().await.unwrap();
    expect_error(response, 401, "AUTH_REQUIRED").await;
    let response = hub
        .http
        .get(hub.url("/metrics"))
        .header("x-api-key", "not-the-master-key-at-all")
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "INVALID_API_KEY").await;
    let response = hub.master(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = hub
        .http
        .get(hub.url("/metrics"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(r#"admp_auth_failures_total{code="INVALID_API_KEY"} 1"#),
        "{text}"
    );
}
