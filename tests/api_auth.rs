//! Black-box tests of authentication: the auth matrix over every agent route,
//! HTTP-signature edge cases, session tokens, key rotation, the master key,
//! `API_KEY_REQUIRED` and legacy mode.

mod support;

use std::time::{Duration, SystemTime};

use admp::client::{AgentClient, host_of};
use admp::config::{AgentAuth, Config};
use admp::hub::Clock;
use admp::signing::http::{self as httpsig, RequestParts};
use admp::signing::keys;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// How a request in the matrix is (mis)signed.
#[derive(Clone, Copy, Debug)]
enum Attack {
    NoCredentials,
    OtherAgentsSignature,
    StaleDate,
    SignedForAnotherPath,
    TamperedBody,
}

/// Sends `body` to `path`, signed by `signer` according to `attack`.
async fn attack_request(
    hub: &TestHub,
    signer: &AgentClient,
    method: Method,
    path: &str,
    body: &Value,
    attack: Attack,
) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut request = hub
        .http
        .request(method.clone(), hub.url(path))
        .header("content-type", "application/json");
    if let Attack::NoCredentials = attack {
        return request.body(bytes).send().await.unwrap();
    }
    let date = match attack {
        Attack::StaleDate => SystemTime::now() - Duration::from_secs(600),
        _ => SystemTime::now(),
    };
    let date = httpsig::http_date(date);
    let signed_path = match attack {
        Attack::SignedForAnotherPath => "/api/agents/someone-else/inbox/pull",
        _ => path,
    };
    // The signed digest covers the original body; the tampered request sends another.
    let digest = httpsig::digest_header(&bytes);
    let sent_body = match attack {
        Attack::TamperedBody => serde_json::to_vec(&json!({"tampered": true})).unwrap(),
        _ => bytes,
    };
    let host = host_of(&hub.running.url());
    let headers = [
        ("host", host.as_str()),
        ("date", date.as_str()),
        ("digest", digest.as_str()),
    ];
    let parts = RequestParts {
        method: method.as_str(),
        path_and_query: signed_path,
        headers: &headers,
    };
    let signature = httpsig::sign_request(
        &signer.key,
        &signer.agent_id,
        &["(request-target)", "host", "date", "digest"],
        &parts,
    )
    .unwrap();
    request = request
        .header("date", date)
        .header("digest", digest)
        .header("signature", signature);
    request.body(sent_body).send().await.unwrap()
}

#[tokio::test]
async fn every_agent_route_rejects_every_attack() {
    // The matrix sends ~90 refused requests from one address; the
    // failed-authentication budget has its own tests (tests/security.rs).
    let hub = TestHub::start(Config {
        auth_failure_limit_per_min: 100_000,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let mid = send(&alice, "bob", json!({})).await;
    let routes: Vec<(Method, String, Value)> = vec![
        (Method::GET, "/api/agents/bob".into(), json!({})),
        (Method::DELETE, "/api/agents/bob".into(), json!({})),
        (Method::POST, "/api/agents/bob/heartbeat".into(), json!({})),
        (Method::GET, "/api/agents/bob/trusted".into(), json!({})),
        (
            Method::POST,
            "/api/agents/bob/trusted".into(),
            json!({"agent_id": "x"}),
        ),
        (
            Method::DELETE,
            "/api/agents/bob/trusted/x".into(),
            json!({}),
        ),
        (
            Method::POST,
            "/api/agents/bob/webhook".into(),
            json!({"webhook_url": "https://example.com/h"}),
        ),
        (Method::GET, "/api/agents/bob/webhook".into(), json!({})),
        (Method::DELETE, "/api/agents/bob/webhook".into(), json!({})),
        (
            Method::POST,
            "/api/agents/bob/rotate-key".into(),
            json!({"public_key": keys::encode_public_key(&keys::generate().verifying_key())}),
        ),
        (Method::POST, "/api/agents/bob/session".into(), json!({})),
        (Method::POST, "/api/agents/bob/inbox/pull".into(), json!({})),
        (
            Method::POST,
            "/api/agents/bob/inbox/ack".into(),
            json!({"acks": [{"message_id": mid}]}),
        ),
        (Method::GET, "/api/agents/bob/inbox/stats".into(), json!({})),
        (
            Method::POST,
            "/api/agents/bob/inbox/reclaim".into(),
            json!({}),
        ),
        (Method::GET, "/api/agents/bob/inbox/dead".into(), json!({})),
        (
            Method::POST,
            format!("/api/agents/bob/messages/{mid}/ack"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/agents/bob/messages/{mid}/nack"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/agents/bob/messages/{mid}/requeue"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/api/agents/bob/messages/{mid}/reply"),
            bob.envelope("alice", "re", json!({})),
        ),
    ];
    let attacks = [
        (Attack::NoCredentials, 401, "AUTH_REQUIRED"),
        (Attack::OtherAgentsSignature, 403, "FORBIDDEN"),
        (Attack::StaleDate, 401, "REQUEST_EXPIRED"),
        (Attack::SignedForAnotherPath, 401, "SIGNATURE_INVALID"),
        (Attack::TamperedBody, 401, "DIGEST_MISMATCH"),
    ];
    let mut checked = 0;
    for (method, path, body) in &routes {
        for (attack, status, code) in attacks {
            let signer = match attack {
                Attack::OtherAgentsSignature => &alice,
                _ => &bob,
            };
            let response = attack_request(&hub, signer, method.clone(), path, body, attack).await;
            let (got, reply) = read(response).await;
            assert_eq!(
                (got.as_u16(), reply["error"].as_str().unwrap_or("")),
                (status, code),
                "{method} {path} under {attack:?}: {reply}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * attacks.len());
    // Nothing above got through: bob still exists with his inbox intact.
    let leased = pull_one(&bob).await;
    assert_eq!(leased["message_id"], mid.as_str());
}

/// Sends a GET to bob's record with a hand-written Signature header.
async fn with_signature_header(hub: &TestHub, header: &str) -> reqwest::Response {
    hub.http
        .get(hub.url("/api/agents/bob"))
        .header("date", httpsig::http_date(SystemTime::now()))
        .header("signature", header)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn signature_header_errors_have_their_own_codes() {
    let hub = TestHub::default().await;
    hub.agent("bob").await;
    let sig = "c2ln".repeat(22);
    let cases = [
        (
            format!(
                "keyId=\"bob\",signature=\"{sig}\",headers=\"(request-target) host date\",algorithm=\"rsa-sha256\""
            ),
            400,
            "UNSUPPORTED_ALGORITHM",
        ),
        (
            format!("keyId=\"bob\",signature=\"{sig}\",headers=\"host date\""),
            400,
            "INSUFFICIENT_SIGNED_HEADERS",
        ),
        (
            format!("keyId=\"bob\",signature=\"{sig}\""),
            400,
            "INSUFFICIENT_SIGNED_HEADERS",
        ),
        (
            "keyId=\"bob\",headers=\"(request-target) date\"".to_string(),
            400,
            "INVALID_SIGNATURE_HEADER",
        ),
        ("garbage".to_string(), 400, "INVALID_SIGNATURE_HEADER"),
        (
            format!("keyId=\"nobody\",signature=\"{sig}\",headers=\"(request-target) date\""),
            401,
            "SIGNATURE_INVALID",
        ),
        (
            format!("keyId=\"bob\",signature=\"{sig}\",headers=\"(request-target) date\""),
            401,
            "SIGNATURE_INVALID",
        ),
    ];
    for (header, status, code) in cases {
        let response = with_signature_header(&hub, &header).await;
        expect_error(response, status, code).await;
    }
}

#[tokio::test]
async fn signed_nonce_cannot_be_replayed() {
    let hub = TestHub::default().await;
    let bob = hub.agent("bob").await;
    let date = httpsig::http_date(SystemTime::now());
    let host = host_of(&hub.running.url());
    let path = "/api/agents/bob/inbox/stats";
    let headers = [
        ("host", host.as_str()),
        ("date", date.as_str()),
        ("x-request-nonce", "n-1"),
    ];
    let parts = RequestParts {
        method: "GET",
        path_and_query: path,
        headers: &headers,
    };
    let signature = httpsig::sign_request(
        &bob.key,
        "bob",
        &["(request-target)", "host", "date", "x-request-nonce"],
        &parts,
    )
    .unwrap();
    let send = || {
        hub.http
            .get(hub.url(path))
            .header("date", &date)
            .header("x-request-nonce", "n-1")
            .header("signature", &signature)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    expect_error(send().await.unwrap(), 401, "REPLAYED_REQUEST").await;
}

#[tokio::test]
async fn envelope_must_be_signed_by_a_registered_sender() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;

    let mut unsigned = alice.envelope("bob", "x", json!({}));
    unsigned.as_object_mut().unwrap().remove("signature");
    let anonymous = |envelope: &Value| {
        hub.http
            .post(hub.url("/api/agents/bob/messages"))
            .json(envelope)
            .send()
    };
    expect_error(
        anonymous(&unsigned).await.unwrap(),
        403,
        "INVALID_SIGNATURE",
    )
    .await;

    let mut tampered = alice.envelope("bob", "x", json!({"amount": 1}));
    tampered["body"]["amount"] = json!(1000);
    expect_error(
        anonymous(&tampered).await.unwrap(),
        403,
        "INVALID_SIGNATURE",
    )
    .await;

    let ghost = AgentClient::new(
        hub.http.clone(),
        &hub.running.url(),
        "ghost",
        keys::generate(),
    );
    let from_ghost = ghost.envelope("bob", "x", json!({}));
    expect_error(anonymous(&from_ghost).await.unwrap(), 403, "UNKNOWN_SENDER").await;

    // Signed envelope from alice, but the HTTP request is signed by bob.
    let envelope = alice.envelope("bob", "x", json!({}));
    let response = bob
        .request(Method::POST, "/api/agents/bob/messages", Some(&envelope))
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "SIGNER_MISMATCH").await;

    // Without HTTP credentials the envelope signature alone is enough.
    let (status, _) = read(anonymous(&envelope).await.unwrap()).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn envelope_validation_errors() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    let post = |body: String| {
        hub.http
            .post(hub.url("/api/agents/bob/messages"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(post("{not json".into()).await.unwrap(), 400, "INVALID_JSON").await;
    expect_error(post("[1,2]".into()).await.unwrap(), 400, "INVALID_ENVELOPE").await;

    let mut v2 = alice.envelope("bob", "x", json!({}));
    v2["version"] = json!("2.0");
    expect_error(post(v2.to_string()).await.unwrap(), 400, "INVALID_ENVELOPE").await;
    let mut no_subject = alice.envelope("bob", "x", json!({}));
    no_subject.as_object_mut().unwrap().remove("subject");
    expect_error(
        post(no_subject.to_string()).await.unwrap(),
        400,
        "INVALID_ENVELOPE",
    )
    .await;
    let mut bad_ttl = alice.envelope("bob", "x", json!({}));
    bad_ttl["ttl_sec"] = json!("soon");
    let body = expect_error(
        post(bad_ttl.to_string()).await.unwrap(),
        400,
        "INVALID_INPUT",
    )
    .await;
    assert_eq!(body["field"], "ttl_sec");

    let old = alice.envelope_with("bob", "x", json!({}), |e| {
        e.insert("timestamp".into(), json!("2020-01-01T00:00:00.000Z"));
    });
    expect_error(
        post(old.to_string()).await.unwrap(),
        400,
        "INVALID_TIMESTAMP",
    )
    .await;

    let to_carol = alice.envelope("carol", "x", json!({}));
    expect_error(
        post(to_carol.to_string()).await.unwrap(),
        400,
        "RECIPIENT_MISMATCH",
    )
    .await;

    let to_nobody = alice.envelope("nobody", "x", json!({}));
    let response = hub
        .http
        .post(hub.url("/api/agents/nobody/messages"))
        .json(&to_nobody)
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "RECIPIENT_NOT_FOUND").await;

    // `to` may be omitted: it defaults to the path agent as written there.
    let implicit = alice.envelope_with("bob", "x", json!({}), |e| {
        e.insert("to".into(), json!("bob"));
    });
    let mut without_to = implicit.clone();
    without_to.as_object_mut().unwrap().remove("to");
    let (status, _) = read(post(without_to.to_string()).await.unwrap()).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn trust_list_restricts_senders() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let carol = hub.agent("carol").await;
    let trusted = bob.agent_path("trusted");
    let (status, body) = read(
        bob.request(
            Method::POST,
            &trusted,
            Some(&json!({"agent_id": "agent://alice"})),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body),
        (200, json!({"trusted_agents": ["alice"]}))
    );
    send(&alice, "bob", json!({})).await;
    let envelope = carol.envelope("bob", "x", json!({}));
    expect_error(
        carol.send("bob", &envelope).await.unwrap(),
        403,
        "SENDER_NOT_TRUSTED",
    )
    .await;

    let (_, body) = read(
        bob.request(Method::GET, &trusted, None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body, json!({"trusted_agents": ["alice"]}));
    let remove = bob.agent_path("trusted/alice");
    let (_, body) = read(
        bob.request(Method::DELETE, &remove, None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body, json!({"trusted_agents": []}));
    send(&carol, "bob", json!({})).await;
    let response = bob
        .request(Method::POST, &trusted, Some(&json!({})))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "AGENT_ID_REQUIRED").await;
}

#[tokio::test]
async fn key_rotation_keeps_the_old_key_during_the_overlap() {
    let clock = Clock::manual();
    let hub = TestHub::start_with_clock(test_config(), clock.clone()).await;
    let bob = hub.agent("bob").await;
    hub.agent("alice").await;
    let new_key = keys::generate();
    let (status, body) = read(
        bob.request(
            Method::POST,
            &bob.agent_path("rotate-key"),
            Some(&json!({"public_key": keys::encode_public_key(&new_key.verifying_key())})),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["key_version"], 2);
    let until = body["previous_key_valid_until"].as_i64().unwrap();
    assert_eq!(until, clock.now_ms() + 86_400_000);

    let rotated = AgentClient::new(hub.http.clone(), &hub.running.url(), "bob", new_key);
    for client in [&bob, &rotated] {
        let envelope = client.envelope("alice", "x", json!({}));
        assert_eq!(client.send("alice", &envelope).await.unwrap().status(), 201);
    }
    // After the overlap only the new key verifies (HTTP and envelope alike).
    clock.advance_ms(86_400_001);
    let stats = bob.agent_path("inbox/stats");
    let response = bob
        .request_at(Method::GET, &stats, None, clock.now_system())
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "SIGNATURE_INVALID").await;
    let response = rotated
        .request_at(Method::GET, &stats, None, clock.now_system())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = bob
        .request(
            Method::POST,
            &bob.agent_path("rotate-key"),
            Some(&json!({"public_key": "short"})),
        )
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "REQUEST_EXPIRED").await;
}

#[tokio::test]
async fn session_tokens_authenticate_until_expiry_or_rotation() {
    let clock = Clock::manual();
    let hub = TestHub::start_with_clock(test_config(), clock.clone()).await;
    let mut bob = hub.agent("bob").await;
    let alice = hub.agent("alice").await;
    bob.open_session().await.unwrap();
    let token = bob.session.clone().unwrap();
    assert!(token.starts_with("admpst_"));

    assert_eq!(bob.pull(&json!({})).await.unwrap().status(), 204);
    // A session cannot open another session, and never acts for another agent.
    let response = bob
        .request(Method::POST, &bob.agent_path("session"), None)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    let response = hub
        .http
        .get(hub.url("/api/agents/alice"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    // A session counts as the HTTP signer: it may send only as bob.
    let envelope = alice.envelope("bob", "x", json!({}));
    let response = hub
        .http
        .post(hub.url("/api/agents/bob/messages"))
        .bearer_auth(&token)
        .json(&envelope)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "SIGNER_MISMATCH").await;

    let forged = format!("{}x", &token[..token.len() - 1]);
    let response = hub
        .http
        .get(hub.url("/api/agents/bob"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "TOKEN_INVALID").await;

    clock.advance_ms(901_000);
    expect_error(bob.pull(&json!({})).await.unwrap(), 401, "TOKEN_EXPIRED").await;

    // Rotation revokes a live token.
    bob.session = None;
    let fresh = bob
        .clone()
        .request_at(
            Method::POST,
            &bob.agent_path("session"),
            None,
            clock.now_system(),
        )
        .send()
        .await
        .unwrap();
    let (_, body) = read(fresh).await;
    let live = body["token"].as_str().unwrap().to_string();
    let rotate = bob.request_at(
        Method::POST,
        &bob.agent_path("rotate-key"),
        Some(&json!({"public_key": keys::encode_public_key(&keys::generate().verifying_key())})),
        clock.now_system(),
    );
    assert_eq!(rotate.send().await.unwrap().status(), 200);
    let response = hub
        .http
        .get(hub.url("/api/agents/bob"))
        .bearer_auth(live)
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "TOKEN_EXPIRED").await;
}

#[tokio::test]
async fn master_key_acts_for_any_agent_and_wrong_keys_are_refused() {
    let hub = TestHub::default().await;
    hub.agent("bob").await;
    let response = hub
        .master(Method::GET, "/api/agents/bob")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = hub
        .master(Method::GET, "/api/agents/ghost")
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "AGENT_NOT_FOUND").await;
    let response = hub
        .http
        .get(hub.url("/api/agents/bob"))
        .header("x-api-key", "wrong-key")
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "INVALID_API_KEY").await;
    let response = hub
        .http
        .get(hub.url("/api/agents/bob"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Master key rotation without downtime: the new key from a file
/// (`MASTER_API_KEY_FILE`), the old one still accepted through
/// `MASTER_API_KEY_PREVIOUS`; once the previous key is dropped it is refused.
#[tokio::test]
async fn previous_master_key_works_during_a_rotation_overlap() {
    let dir = std::env::temp_dir().join(format!("admp-rotation-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("master_api_key");
    std::fs::write(&key_file, "new-master-key-0123456789\n").unwrap();
    let get_agent = |hub: &TestHub, key: &str| {
        hub.http
            .get(hub.url("/api/agents/bob"))
            .header("x-api-key", key)
            .send()
    };

    let overlap = Config {
        master_api_key: None,
        master_api_key_file: Some(key_file.clone()),
        master_api_key_previous: Some(MASTER_KEY.into()),
        ..test_config()
    };
    let hub = TestHub::start(overlap).await;
    hub.agent("bob").await;
    for key in [MASTER_KEY, "new-master-key-0123456789"] {
        assert_eq!(get_agent(&hub, key).await.unwrap().status(), 200, "{key}");
    }
    let response = get_agent(&hub, "wrong-key").await.unwrap();
    expect_error(response, 401, "INVALID_API_KEY").await;

    let after = Config {
        master_api_key: None,
        master_api_key_file: Some(key_file),
        ..test_config()
    };
    let hub = TestHub::start(after).await;
    hub.agent("bob").await;
    assert_eq!(
        get_agent(&hub, "new-master-key-0123456789")
            .await
            .unwrap()
            .status(),
        200
    );
    let response = get_agent(&hub, MASTER_KEY).await.unwrap();
    expect_error(response, 401, "INVALID_API_KEY").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn api_key_required_gates_every_route_but_registration() {
    let config = Config {
        api_key_required: true,
        ..test_config()
    };
    let hub = TestHub::start(config).await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    let response = hub.http.get(hub.url("/api/stats")).send().await.unwrap();
    expect_error(response, 401, "API_KEY_REQUIRED").await;
    let response = hub.master(Method::GET, "/api/stats").send().await.unwrap();
    assert_eq!(response.status(), 200);
    // An unauthenticated send is refused even with a valid envelope signature…
    let envelope = alice.envelope("bob", "x", json!({}));
    let response = hub
        .http
        .post(hub.url("/api/agents/bob/messages"))
        .json(&envelope)
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "API_KEY_REQUIRED").await;
    // …and accepted with the agent's HTTP signature.
    assert_eq!(alice.send("bob", &envelope).await.unwrap().status(), 201);
    assert_eq!(
        hub.http
            .get(hub.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn legacy_mode_lets_unsigned_agent_calls_through_but_not_unsigned_mail() {
    let config = Config {
        agent_auth: AgentAuth::Legacy,
        ..test_config()
    };
    let hub = TestHub::start(config).await;
    let alice = hub.agent("alice").await;
    hub.agent("bob").await;
    let id = send(&alice, "bob", json!({})).await;
    let (status, leased) = read(
        hub.http
            .post(hub.url("/api/agents/bob/inbox/pull"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), leased["message_id"].as_str()),
        (200, Some(id.as_str()))
    );
    let mut unsigned = alice.envelope("bob", "x", json!({}));
    unsigned.as_object_mut().unwrap().remove("signature");
    let response = hub
        .http
        .post(hub.url("/api/agents/bob/messages"))
        .json(&unsigned)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "INVALID_SIGNATURE").await;
    // Present credentials are still checked in legacy mode.
    let response = alice
        .request(Method::GET, "/api/agents/bob", None)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    let response = hub
        .http
        .get(hub.url("/api/agents/ghost"))
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "AGENT_NOT_FOUND").await;
    assert_eq!(
        hub.http
            .get(hub.url(&format!("/api/messages/{id}/status")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
