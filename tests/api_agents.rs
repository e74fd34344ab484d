//! Black-box tests of registration and the agent's own routes.

mod support;

use admp::client::AgentClient;
use admp::signing::keys;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Method;
use serde_json::json;
use support::*;

#[tokio::test]
async fn registration_with_a_client_key_returns_no_secret() {
    let hub = TestHub::default().await;
    let key = keys::generate();
    let public_key = keys::encode_public_key(&key.verifying_key());
    let (status, body) = read(
        hub.http
            .post(hub.url("/api/agents/register"))
            .json(
                &json!({"agent_id": "alice", "public_key": public_key, "metadata": {"team": "a"}}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["agent_id"], "alice");
    assert_eq!(body["agent_type"], "generic");
    assert_eq!(body["public_key"], public_key.as_str());
    assert!(body.get("secret_key").is_none());
    assert_eq!(body["heartbeat"]["status"], "online");
    assert_eq!(body["heartbeat"]["interval_ms"], 60_000);
    assert_eq!(body["heartbeat"]["timeout_ms"], 300_000);
    assert!(body["webhook_url"].is_null());

    let taken = hub
        .http
        .post(hub.url("/api/agents/register"))
        .json(&json!({"agent_id": "alice"}))
        .send()
        .await
        .unwrap();
    expect_error(taken, 409, "AGENT_EXISTS").await;
}

#[tokio::test]
async fn registration_without_a_key_returns_a_tweetnacl_secret_once() {
    let hub = TestHub::default().await;
    let (status, body) = read(
        hub.http
            .post(hub.url("/api/agents/register"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let id = body["agent_id"].as_str().unwrap();
    assert!(id.starts_with("agent-"), "generated id {id}");
    let secret = BASE64.decode(body["secret_key"].as_str().unwrap()).unwrap();
    assert_eq!(secret.len(), 64, "seed ‖ public key");
    assert_eq!(
        BASE64.encode(&secret[32..]),
        body["public_key"].as_str().unwrap()
    );

    // The returned secret signs requests, and no later read shows it.
    let key = keys::decode_secret_key(body["secret_key"].as_str().unwrap()).unwrap();
    let agent = AgentClient::new(hub.http.clone(), &hub.running.url(), id, key);
    let (status, record) = read(
        agent
            .request(Method::GET, &agent.agent_path(""), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let text = record.to_string();
    assert!(!text.contains("secret"), "no secret in {text}");
}

#[tokio::test]
async fn registration_rejects_bad_input_with_the_field_named() {
    let hub = TestHub::default().await;
    let cases = [
        (json!({"agent_id": "did:web:x"}), "agent_id"),
        (json!({"agent_id": "agent:x"}), "agent_id"),
        (json!({"agent_id": "has space"}), "agent_id"),
        (json!({"agent_id": "x".repeat(256)}), "agent_id"),
        (json!({"agent_id": 42}), "agent_id"),
        (json!({"public_key": "AAAA"}), "public_key"),
        (json!({"metadata": "not an object"}), "metadata"),
        (json!({"webhook_url": "ftp://example.com"}), "webhook_url"),
        (
            json!({"webhook_url": "http://127.0.0.1/hook"}),
            "webhook_url",
        ),
        (json!({"agent_type": ""}), "agent_type"),
    ];
    for (body, field) in cases {
        let response = hub
            .http
            .post(hub.url("/api/agents/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let error = expect_error(response, 400, "INVALID_INPUT").await;
        assert_eq!(error["field"], field, "{body}");
    }
    let response = hub
        .http
        .post(hub.url("/api/agents/register"))
        .body("{\"agent_id\":")
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "INVALID_JSON").await;
}

#[tokio::test]
async fn null_or_empty_agent_id_gets_a_generated_one() {
    let hub = TestHub::default().await;
    for body in [json!({"agent_id": null}), json!({"agent_id": ""})] {
        let (status, reply) = read(
            hub.http
                .post(hub.url("/api/agents/register"))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201);
        assert!(reply["agent_id"].as_str().unwrap().starts_with("agent-"));
    }
}

#[tokio::test]
async fn record_heartbeat_and_metadata_merge() {
    let hub = TestHub::default().await;
    let bob = hub.agent("bob").await;
    let (status, body) = read(
        bob.request(
            Method::POST,
            &bob.agent_path("heartbeat"),
            Some(&json!({"metadata": {"version": "2"}})),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    assert_eq!(body["status"], "online");
    let last = body["last_heartbeat"].as_i64().unwrap();
    assert_eq!(body["timeout_at"].as_i64().unwrap(), last + 300_000);

    let (_, record) = read(
        bob.request(Method::GET, &bob.agent_path(""), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(record["agent_id"], "bob");
    assert_eq!(record["metadata"]["version"], "2");
    assert_eq!(record["key_version"], 1);
    assert_eq!(record["heartbeat"]["last_heartbeat"], last);
    let response = bob
        .request(
            Method::POST,
            &bob.agent_path("heartbeat"),
            Some(&json!({"metadata": [1]})),
        )
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "INVALID_INPUT").await;
}

#[tokio::test]
async fn webhook_configuration_never_shows_the_secret_on_read() {
    let hub = TestHub::default().await;
    let bob = hub.agent("bob").await;
    let path = bob.agent_path("webhook");
    let (status, body) = read(
        bob.request(
            Method::POST,
            &path,
            Some(&json!({"webhook_url": "https://example.com/hook"})),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["agent_id"], "bob");
    assert_eq!(body["webhook_url"], "https://example.com/hook");
    let secret = body["webhook_secret"].as_str().unwrap();
    let raw = BASE64
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert_eq!(raw.len(), 32);

    let (_, view) = read(bob.request(Method::GET, &path, None).send().await.unwrap()).await;
    assert_eq!(
        view,
        json!({"webhook_url": "https://example.com/hook", "webhook_configured": true})
    );
    let (_, record) = read(
        bob.request(Method::GET, &bob.agent_path(""), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(!record.to_string().contains(secret));

    let (_, removed) = read(
        bob.request(Method::DELETE, &path, None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        removed,
        json!({"message": "Webhook removed", "webhook_configured": false})
    );
    let response = bob
        .request(
            Method::POST,
            &path,
            Some(&json!({"webhook_url": "not a url"})),
        )
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "INVALID_INPUT").await;
    let response = bob
        .request(Method::POST, &path, Some(&json!({})))
        .send()
        .await
        .unwrap();
    // The Node server's code for a missing URL.
    let error = expect_error(response, 400, "WEBHOOK_URL_REQUIRED").await;
    assert!(error["message"].as_str().unwrap().contains("webhook_url"));
}

#[tokio::test]
async fn ids_travel_percent_encoded() {
    let hub = TestHub::default().await;
    let odd = hub.agent("team:alpha.v1-x").await;
    let (status, record) = read(
        odd.request(Method::GET, "/api/agents/team%3Aalpha.v1-x", None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["agent_id"], "team:alpha.v1-x");
}
