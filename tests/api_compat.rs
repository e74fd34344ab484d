//! What clients written for the Node ADMP server check, black-box: the
//! recipient-not-found code of send and reply, the reserved id prefixes in
//! any letter case, and the documentation page's title. (The webhook body's
//! `delivered_at` and compat signature are checked against a live receiver
//! in tests/jobs/webhooks.rs, `payload_and_both_signatures_verify`.)

mod support;

use reqwest::Method;
use serde_json::json;
use support::{TestHub, expect_error, pull_one, read, send};

#[tokio::test]
async fn send_to_an_unknown_or_deleted_recipient_is_recipient_not_found() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;

    let envelope = alice.envelope("nobody", "hi", json!({}));
    let body = expect_error(
        alice.send("nobody", &envelope).await.unwrap(),
        404,
        "RECIPIENT_NOT_FOUND",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("nobody"));

    // Deleted: the same code.
    let response = bob
        .request(Method::DELETE, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let envelope = alice.envelope("bob", "late", json!({}));
    expect_error(
        alice.send("bob", &envelope).await.unwrap(),
        404,
        "RECIPIENT_NOT_FOUND",
    )
    .await;

    // Other routes keep AGENT_NOT_FOUND for an unknown agent.
    let response = hub
        .master(Method::GET, "/api/agents/nobody")
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "AGENT_NOT_FOUND").await;
    let response = hub
        .master(Method::POST, "/api/agents/nobody/inbox/pull")
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "AGENT_NOT_FOUND").await;
}

#[tokio::test]
async fn reply_to_a_deleted_sender_is_recipient_not_found() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let message_id = send(&bob, "alice", json!({"q": 1})).await;
    pull_one(&alice).await;
    let response = bob
        .request(Method::DELETE, &bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    let reply = alice.envelope_with("bob", "re", json!({"a": 1}), |e| {
        e.insert("correlation_id".into(), json!(message_id));
    });
    let path = alice.agent_path(&format!("messages/{message_id}/reply"));
    let response = alice
        .request(Method::POST, &path, Some(&reply))
        .send()
        .await
        .unwrap();
    expect_error(response, 404, "RECIPIENT_NOT_FOUND").await;
}

/// Ids that would pass for a DID or an agent URI, in assorted letter cases.
const RESERVED: [&str; 6] = [
    "DID:spoofed",
    "Did:x",
    "did:web:x",
    "AGENT:foo",
    "Agent:foo",
    "agent:foo",
];

#[tokio::test]
async fn reserved_prefixes_are_refused_at_registration_in_any_case() {
    let hub = TestHub::default().await;
    for id in RESERVED {
        let response = hub
            .http
            .post(hub.url("/api/agents/register"))
            .json(&json!({"agent_id": id}))
            .send()
            .await
            .unwrap();
        let body = expect_error(response, 400, "INVALID_INPUT").await;
        assert_eq!(body["field"], "agent_id", "{id}");
        let response = hub
            .master(Method::GET, &format!("/api/agents/{id}"))
            .send()
            .await
            .unwrap();
        expect_error(response, 404, "AGENT_NOT_FOUND").await;
    }
    // Lookalikes that do not start with a reserved prefix are fine.
    for id in ["didier", "agent-7", "my:did:x"] {
        let response = hub
            .http
            .post(hub.url("/api/agents/register"))
            .json(&json!({"agent_id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{id}");
    }
}

#[tokio::test]
async fn reserved_prefixes_are_refused_wherever_an_id_is_accepted() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    for id in RESERVED {
        // The trust list.
        let response = alice
            .request(
                Method::POST,
                &alice.agent_path("trusted"),
                Some(&json!({"agent_id": id})),
            )
            .send()
            .await
            .unwrap();
        let body = expect_error(response, 400, "INVALID_INPUT").await;
        assert_eq!(body["field"], "agent_id");

        // An envelope's recipient, bare or as an agent:// address, and the
        // recipient in the path (which `to` defaults to).
        for to in [id.to_string(), format!("agent://{id}")] {
            let envelope = alice.envelope_with(id, "hi", json!({}), |e| {
                e.insert("to".into(), json!(to));
            });
            let response = alice.send(id, &envelope).await.unwrap();
            let body = expect_error(response, 400, "INVALID_INPUT").await;
            assert_eq!(body["field"], "to", "{to}");
        }
        let mut envelope = alice.envelope(id, "hi", json!({}));
        envelope.as_object_mut().unwrap().remove("to");
        let body = expect_error(
            alice.send(id, &envelope).await.unwrap(),
            400,
            "INVALID_INPUT",
        )
        .await;
        assert_eq!(body["field"], "to");

        // An envelope's sender.
        let envelope = alice.envelope_with("alice", "hi", json!({}), |e| {
            e.insert("from".into(), json!(id));
        });
        let response = hub
            .http
            .post(hub.url("/api/agents/alice/messages"))
            .json(&envelope)
            .send()
            .await
            .unwrap();
        let body = expect_error(response, 400, "INVALID_INPUT").await;
        assert_eq!(body["field"], "from");
    }
    let (_, record) = read(
        alice
            .request(Method::GET, &alice.agent_path("trusted"), None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(record["trusted_agents"], json!([]));
}

#[tokio::test]
async fn missing_required_fields_answer_the_node_servers_codes() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    for body in [
        json!({}),
        json!({"agent_id": ""}),
        json!({"agent_id": null}),
    ] {
        let response = alice
            .request(Method::POST, &alice.agent_path("trusted"), Some(&body))
            .send()
            .await
            .unwrap();
        let error = expect_error(response, 400, "AGENT_ID_REQUIRED").await;
        assert_eq!(error["field"], "agent_id");
    }
    for body in [
        json!({}),
        json!({"webhook_url": ""}),
        json!({"webhook_secret": "s"}),
    ] {
        let response = alice
            .request(Method::POST, &alice.agent_path("webhook"), Some(&body))
            .send()
            .await
            .unwrap();
        let error = expect_error(response, 400, "WEBHOOK_URL_REQUIRED").await;
        assert_eq!(error["field"], "webhook_url");
    }
}

#[tokio::test]
async fn the_docs_page_carries_the_product_name() {
    let hub = TestHub::default().await;
    // `/docs` redirects to the page, as before.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects.get(hub.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/docs/");

    for path in ["/docs/", "/docs/index.html"] {
        let response = hub.http.get(hub.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains("<title>ADMP API Documentation</title>"),
            "{page}"
        );
        assert!(!page.contains("<title>Swagger UI</title>"));
    }
    // The page's scripts and its configuration pointing at /openapi.json.
    let response = hub
        .http
        .get(hub.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("/openapi.json"));
    let response = hub
        .http
        .get(hub.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    expect_error(
        hub.http.get(hub.url("/docs/nope.js")).send().await.unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    let (status, doc) = read(hub.http.get(hub.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/agents/{agent_id}/messages"].is_object());
}
