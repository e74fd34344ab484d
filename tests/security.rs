//! Black-box tests of the security hardening (issue 12): each test is a
//! request that used to succeed and must now be refused or neutralised.

mod support;

use std::sync::Arc;
use std::time::SystemTime;

use admp::audit::chain_hash;
use admp::client::{AgentClient, host_of};
use admp::config::Config;
use admp::hub::Clock;
use admp::server::start_with_store;
use admp::signing::http::{self as httpsig, RequestParts};
use admp::signing::keys;
use admp::store::Store;
use admp::store::memory::MemoryStore;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use support::*;

/// Item 8: padding `signature.sig` with whitespace does not make a new
/// idempotency key; the resend is the same message.
#[tokio::test]
async fn a_padded_signature_is_still_a_duplicate() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let _bob = hub.agent("bob").await;
    let mut envelope = alice.envelope_with("bob", "hello", json!({"n": 1}), |e| {
        e.remove("id");
    });
    let (status, first) = read(alice.send("bob", &envelope).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let sig = envelope["signature"]["sig"].as_str().unwrap().to_string();
    envelope["signature"]["sig"] = Value::String(format!("  {sig}\n\t"));
    let (status, second) = read(alice.send("bob", &envelope).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["message_id"], first["message_id"]);
    let (_, stats) = read(
        hub.master(Method::GET, "/api/agents/bob/inbox/stats")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["queued"], 1, "{stats}");
}

/// A GET signed by `agent` over `(request-target) host date x-request-nonce`.
fn nonce_request(hub_url: &str, agent: &AgentClient, path: &str, nonce: &str) -> RequestBuilder {
    let date = httpsig::http_date(SystemTime::now());
    let host = host_of(hub_url);
    let headers = [
        ("host", host.as_str()),
        ("date", date.as_str()),
        ("x-request-nonce", nonce),
    ];
    let parts = RequestParts {
        method: "GET",
        path_and_query: path,
        headers: &headers,
    };
    let signature = httpsig::sign_request(
        &agent.key,
        &agent.agent_id,
        &["(request-target)", "host", "date", "x-request-nonce"],
        &parts,
    )
    .unwrap();
    reqwest::Client::new()
        .get(format!("{hub_url}{path}"))
        .header("date", date)
        .header("x-request-nonce", nonce)
        .header("signature", signature)
}

/// Item 1: after `DELETE /api/agents/bob`, registering `bob` again is
/// refused, so nothing bob left behind (dead letters, sent messages'
/// status, webhook attempts, trust in him, sessions) is reachable by the
/// new holder of the id.
#[tokio::test]
async fn a_deleted_id_is_retired_for_good() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let mut bob = hub.agent("bob").await;
    // Alice trusts bob; bob has mail, has sent mail, has a session.
    let response = alice
        .request(
            Method::POST,
            &alice.agent_path("trusted"),
            Some(&json!({"agent_id": "bob"})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    send(&alice, "bob", json!({"secret": "for bob only"})).await;
    let sent_by_bob = send(&bob, "alice", json!({"n": 1})).await;
    bob.open_session().await.unwrap();

    let response = bob
        .request(Method::DELETE, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // The squatter: same id, its own key.
    let key = keys::generate();
    let response = hub
        .http
        .post(hub.url("/api/agents/register"))
        .json(&json!({"agent_id": "bob", "public_key": keys::encode_public_key(&key.verifying_key())}))
        .send()
        .await
        .unwrap();
    expect_error(response, 409, "AGENT_ID_RETIRED").await;
    let squatter = AgentClient::new(hub.http.clone(), &hub.running.url(), "bob", key);
    for (method, path) in [
        (Method::GET, "/api/agents/bob/inbox/dead".to_string()),
        (
            Method::GET,
            "/api/agents/bob/webhook/deliveries".to_string(),
        ),
        (Method::GET, format!("/api/messages/{sent_by_bob}/status")),
    ] {
        let response = squatter.request(method, &path, None).send().await.unwrap();
        expect_error(response, 401, "SIGNATURE_INVALID").await;
    }
    // The old session died with the agent.
    let response = bob
        .request(Method::GET, &bob.agent_path("inbox/dead"), None)
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "TOKEN_EXPIRED").await;
    // Nobody can send as bob to an inbox that trusted him.
    let envelope = squatter.envelope("alice", "hi", json!({}));
    let response = squatter.send("alice", &envelope).await.unwrap();
    expect_error(response, 401, "SIGNATURE_INVALID").await;
    // The operator still reads bob's dead letters until retention purges them.
    let (status, dead) = read(
        hub.master(Method::GET, "/api/agents/bob/inbox/dead")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(dead["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        dead["messages"][0]["envelope"]["body"]["secret"],
        "for bob only"
    );
}

/// Item 4: metadata is capped at registration and on the record a
/// heartbeat merge would produce.
#[tokio::test]
async fn metadata_is_capped_at_registration_and_heartbeat() {
    let hub = TestHub::start(Config {
        max_metadata_kb: 4,
        ..test_config()
    })
    .await;
    let key = keys::generate();
    let response = hub
        .http
        .post(hub.url("/api/agents/register"))
        .json(&json!({
            "agent_id": "big",
            "public_key": keys::encode_public_key(&key.verifying_key()),
            "metadata": {"blob": "x".repeat(5_000)},
        }))
        .send()
        .await
        .unwrap();
    expect_error(response, 413, "METADATA_TOO_LARGE").await;

    let alice = hub.agent("alice").await;
    let heartbeat = |n: usize| {
        alice
            .request(
                Method::POST,
                &alice.agent_path("heartbeat"),
                Some(&json!({"metadata": {format!("k{n}"): "x".repeat(1_500)}})),
            )
            .send()
    };
    // Each patch is small; the merged record is what counts.
    for n in 0..2 {
        assert_eq!(heartbeat(n).await.unwrap().status(), 200);
    }
    expect_error(heartbeat(2).await.unwrap(), 413, "METADATA_TOO_LARGE").await;
    let (_, record) = read(
        alice
            .request(Method::GET, &alice.agent_path(""), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let metadata = record["metadata"].as_object().unwrap();
    assert_eq!(metadata.len(), 2, "the refused heartbeat changed nothing");
    // A heartbeat without metadata still works.
    let response = alice
        .request(Method::POST, &alice.agent_path("heartbeat"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Item 6: the addresses the review found accepted are refused as webhook
/// targets before any connection (the hub never attempts a delivery).
#[tokio::test]
async fn special_purpose_webhook_targets_are_refused() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    for url in [
        "http://[::127.0.0.1]/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[fec0::1]/hook",
        "http://198.18.0.1/hook",
        "http://240.0.0.1/hook",
    ] {
        let response = bob
            .request(
                Method::POST,
                &bob.agent_path("webhook"),
                Some(&json!({"webhook_url": url})),
            )
            .send()
            .await
            .unwrap();
        let body = expect_error(response, 400, "INVALID_INPUT").await;
        assert_eq!(body["field"], "webhook_url", "{url}");
    }
    send(&alice, "bob", json!({})).await;
    let (_, webhook) = read(
        bob.request(Method::GET, &bob.agent_path("webhook"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(webhook["webhook_configured"], false);
    let counts = hub.running.jobs.webhooks.snapshot();
    assert_eq!(counts.attempts, 0, "no connection was attempted");
}

/// Item 3: failed authentications are limited per client IP (wrong API
/// keys, forged session tokens, bad signatures all count).
#[tokio::test]
async fn failed_authentication_is_rate_limited_per_ip() {
    let hub = TestHub::start(Config {
        auth_failure_limit_per_min: 5,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let bad_key = || {
        hub.http
            .get(hub.url("/api/stats"))
            .header("x-api-key", "wrong-key-0123456789")
    };
    let forged_token = || {
        hub.http
            .get(hub.url("/api/agents/alice"))
            .header("authorization", "Bearer admpst_e30.AAAA")
    };
    for _ in 0..2 {
        expect_error(bad_key().send().await.unwrap(), 401, "INVALID_API_KEY").await;
        expect_error(forged_token().send().await.unwrap(), 401, "TOKEN_INVALID").await;
    }
    let refused = bad_key().send().await.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    expect_error(refused, 429, "TOO_MANY_AUTH_FAILURES").await;
    // From now on, anything with credentials from this address is refused
    // before verification, even a valid signature…
    let response = alice
        .request(Method::GET, &alice.agent_path(""), None)
        .send()
        .await
        .unwrap();
    expect_error(response, 429, "TOO_MANY_AUTH_FAILURES").await;
    // …while probes stay up.
    assert_eq!(
        hub.http
            .get(hub.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // So is the operator key from this address: it is what a key
    // brute-force would try next.
    let response = hub.master(Method::GET, "/api/stats").send().await.unwrap();
    expect_error(response, 429, "TOO_MANY_AUTH_FAILURES").await;
}

/// Item 3: failing requests naming one agent are limited per claimed agent
/// (from any address), while the agent's own valid requests still pass.
#[tokio::test]
async fn failures_naming_an_agent_are_limited_without_locking_it_out() {
    let hub = TestHub::start(Config {
        auth_failure_limit_per_min: 3,
        trust_proxy: true,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let forger = AgentClient::new(
        hub.http.clone(),
        &hub.running.url(),
        "alice",
        keys::generate(),
    );
    let mut statuses = Vec::new();
    for n in 0..5 {
        let response = forger
            .request(Method::GET, &forger.agent_path(""), None)
            .header("x-forwarded-for", format!("198.51.100.{n}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429, 429, 429]);
    let response = alice
        .request(Method::GET, &alice.agent_path(""), None)
        .header("x-forwarded-for", "192.0.2.77")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the real alice is not locked out");
    let events = audit_events(&hub).await;
    let failed = events
        .iter()
        .find(|e| e["kind"] == "auth.failed")
        .expect("the failures are audited");
    assert_eq!(failed["agent_id"], Value::Null, "{failed}");
    assert_eq!(failed["detail"]["claimed_agent_id"], "alice");
    assert_eq!(failed["detail"]["agent_verified"], false);
    assert!(
        events
            .iter()
            .any(|e| e["detail"]["code"] == "TOO_MANY_AUTH_FAILURES"),
        "the 429s are audited"
    );
}

/// Item 3: rotating a key again inside the overlap ends the oldest key, so
/// an agent never has more than two active keys.
#[tokio::test]
async fn rotations_inside_the_overlap_keep_two_keys() {
    let hub = TestHub::default().await;
    let mut alice = hub.agent("alice").await;
    let original = alice.key.clone();
    let mut previous = alice.key.clone();
    for _ in 0..3 {
        let next = keys::generate();
        let response = alice
            .request(
                Method::POST,
                &alice.agent_path("rotate-key"),
                Some(&json!({"public_key": keys::encode_public_key(&next.verifying_key())})),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        previous = std::mem::replace(&mut alice.key, next);
    }
    let agent = hub.store.get_agent("alice").await.unwrap().unwrap();
    assert_eq!(agent.keys.len(), 2, "{:?}", agent.keys);
    // The key replaced last still verifies; the first one no longer does.
    let as_key = |key: ed25519_dalek::SigningKey| {
        AgentClient::new(hub.http.clone(), &hub.running.url(), "alice", key)
    };
    let response = as_key(previous)
        .request(Method::GET, "/api/agents/alice", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = as_key(original)
        .request(Method::GET, "/api/agents/alice", None)
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "SIGNATURE_INVALID").await;
}

/// Item 2: a nonce refused by the rate limit is not used up (the retry
/// after `Retry-After` is served); an oversized nonce is refused.
#[tokio::test]
async fn a_nonce_is_remembered_only_for_a_request_carried_out() {
    let hub = TestHub::start(Config {
        rate_limit_per_sec: 1,
        rate_limit_burst: 1,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let url = hub.running.url();
    let path = "/api/agents/alice/inbox/stats";
    // Empty alice's bucket, then a nonce request is refused with 429.
    let mut refused = None;
    for n in 0..50 {
        let response = nonce_request(&url, &alice, path, &format!("drain-{n}"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(n);
            break;
        }
    }
    let n = refused.expect("the bucket empties");
    let nonce = format!("drain-{n}");
    // The retry with the same nonce, once the bucket refilled, is served.
    let served = eventually_status(|| nonce_request(&url, &alice, path, &nonce), 200).await;
    assert_eq!(served, 200);
    let response = nonce_request(&url, &alice, path, &"n".repeat(129))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "INVALID_NONCE").await;
}

/// Item 2: replay protection holds across hub instances sharing a store
/// and across a restart.
#[tokio::test]
async fn a_nonce_cannot_be_replayed_on_another_instance_or_after_a_restart() {
    let store = Arc::new(MemoryStore::new());
    let start = || async {
        start_with_store(test_config(), store.clone(), Clock::system())
            .await
            .unwrap()
    };
    let first = start().await;
    let second = start().await;
    let alice = AgentClient::register(reqwest::Client::new(), &first.url(), Some("alice"))
        .await
        .unwrap();
    let path = "/api/agents/alice/inbox/stats";
    let first_host = host_of(&first.url());
    let captured = nonce_request(&first.url(), &alice, path, "once");
    let replay = captured.try_clone().unwrap();
    assert_eq!(captured.send().await.unwrap().status(), 200);
    // The same signed request against the other instance (the Host header
    // is not part of this test's signature: it names the first instance).
    let mut on_second = replay.try_clone().unwrap().build().unwrap();
    *on_second.url_mut() = format!("{}{path}", second.url()).parse().unwrap();
    on_second
        .headers_mut()
        .insert("host", first_host.parse().unwrap());
    let response = reqwest::Client::new().execute(on_second).await.unwrap();
    expect_error(response, 401, "REPLAYED_REQUEST").await;
    // After a restart of the first instance.
    first.shutdown().await.unwrap();
    let restarted = start().await;
    let mut again = replay.build().unwrap();
    *again.url_mut() = format!("{}{path}", restarted.url()).parse().unwrap();
    again
        .headers_mut()
        .insert("host", first_host.parse().unwrap());
    let response = reqwest::Client::new().execute(again).await.unwrap();
    expect_error(response, 401, "REPLAYED_REQUEST").await;
}

/// Polls `request` until it answers `status` (the rate limit refills in
/// about a second); returns the status.
async fn eventually_status(request: impl Fn() -> RequestBuilder, status: u16) -> u16 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let got = request().send().await.unwrap().status().as_u16();
        if got == status || got != 429 {
            return got;
        }
        assert!(std::time::Instant::now() < deadline, "still 429");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every audit event (master key; one page is enough here).
async fn audit_events(hub: &TestHub) -> Vec<Value> {
    let (status, page) = read(
        hub.master(Method::GET, "/api/audit?limit=1000")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

/// Item 9: with `AUDIT_SIGNING_KEY_FILE`, checkpoints are signed; an event
/// rewritten with the chain recomputed verifies as a chain but not against
/// the checkpoint.
#[tokio::test]
async fn audit_checkpoints_detect_a_recomputed_chain() {
    let key = keys::generate();
    let hub = TestHub::start(Config {
        audit_signing_key: Some(keys::encode_secret_key(&key)),
        audit_checkpoint_every: 3,
        ..test_config()
    })
    .await;
    for id in ["a1", "a2", "a3", "a4"] {
        hub.agent(id).await;
    }
    let (_, page) = read(hub.master(Method::GET, "/api/audit").send().await.unwrap()).await;
    assert_eq!(page["chain_valid"], true, "{page}");
    assert_eq!(page["checkpoints_valid"], true, "{page}");
    let checkpoint = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "audit.checkpoint")
        .expect("a checkpoint after the third event")
        .clone();
    assert_eq!(checkpoint["detail"]["seq"], 3);
    assert_eq!(
        checkpoint["detail"]["public_key"],
        keys::encode_public_key(&key.verifying_key())
    );

    // Whoever can write the database rewrites event 2 and recomputes every hash.
    hub.store.edit_audit_rows(|rows| {
        rows[1].detail = json!({"forged": true});
        let mut prev = rows[0].hash.clone();
        for row in rows.iter_mut().skip(1) {
            row.hash = chain_hash(
                &prev,
                row.seq,
                row.at,
                &row.kind,
                row.agent_id.as_deref(),
                &row.detail,
            );
            prev = row.hash.clone();
        }
    });
    let (_, page) = read(hub.master(Method::GET, "/api/audit").send().await.unwrap()).await;
    assert_eq!(page["chain_valid"], true, "the recomputed chain links up");
    assert_eq!(page["checkpoints_valid"], false, "{page}");
    assert_eq!(page["checkpoint_failed_at"], checkpoint["seq"]);
}
