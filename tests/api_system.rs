//! Black-box tests of probes, routing errors, request ids and the OpenAPI document.

mod support;

use reqwest::Method;
use serde_json::Value;
use support::*;

#[tokio::test]
async fn health_and_ready() {
    let hub = TestHub::default().await;
    let (status, body) = read(hub.http.get(hub.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert!(body["timestamp"].is_string());
    assert!(body["version"].is_string());
    let (status, body) = read(hub.http.get(hub.url("/ready")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["checks"]["store"], "ok");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let hub = TestHub::default().await;
    let response = hub.http.get(hub.url("/api/nope")).send().await.unwrap();
    expect_error(response, 404, "NOT_FOUND").await;
    let response = hub.http.delete(hub.url("/health")).send().await.unwrap();
    expect_error(response, 405, "METHOD_NOT_ALLOWED").await;
    let response = hub
        .http
        .get(hub.url("/api/agents/bob/inbox/pull"))
        .send()
        .await
        .unwrap();
    expect_error(response, 405, "METHOD_NOT_ALLOWED").await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let hub = TestHub::default().await;
    let response = hub
        .http
        .get(hub.url("/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let response = hub.http.get(hub.url("/api/nope")).send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a uuid: {generated}");
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let hub = TestHub::default().await;
    let (status, doc) = read(hub.http.get(hub.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let expected = [
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/metrics"),
        ("get", "/api/stats"),
        ("get", "/api/admin/export"),
        ("get", "/api/audit"),
        ("post", "/api/agents/register"),
        ("get", "/api/agents/{agent_id}"),
        ("delete", "/api/agents/{agent_id}"),
        ("post", "/api/agents/{agent_id}/heartbeat"),
        ("get", "/api/agents/{agent_id}/trusted"),
        ("post", "/api/agents/{agent_id}/trusted"),
        ("delete", "/api/agents/{agent_id}/trusted/{other}"),
        ("post", "/api/agents/{agent_id}/webhook"),
        ("get", "/api/agents/{agent_id}/webhook"),
        ("delete", "/api/agents/{agent_id}/webhook"),
        ("post", "/api/agents/{agent_id}/rotate-key"),
        ("post", "/api/agents/{agent_id}/session"),
        ("post", "/api/agents/{agent_id}/messages"),
        ("post", "/api/agents/{agent_id}/messages/{message_id}/reply"),
        ("post", "/api/agents/{agent_id}/messages/{message_id}/ack"),
        ("post", "/api/agents/{agent_id}/messages/{message_id}/nack"),
        (
            "post",
            "/api/agents/{agent_id}/messages/{message_id}/requeue",
        ),
        ("post", "/api/agents/{agent_id}/inbox/pull"),
        ("post", "/api/agents/{agent_id}/inbox/ack"),
        ("get", "/api/agents/{agent_id}/inbox/stats"),
        ("post", "/api/agents/{agent_id}/inbox/reclaim"),
        ("get", "/api/agents/{agent_id}/inbox/dead"),
        ("get", "/api/messages/{message_id}/status"),
    ];
    for (method, path) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from /openapi.json"
        );
        // The route really exists with that method (anything but 404/405).
        let concrete = path
            .replace("{agent_id}", "bob")
            .replace("{other}", "x")
            .replace("{message_id}", "m");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = hub
            .http
            .request(method.clone(), hub.url(&concrete))
            .send()
            .await
            .unwrap();
        let (status, body): (_, Value) = read(response).await;
        assert!(
            !matches!(status.as_u16(), 405) && body["error"] != "NOT_FOUND",
            "{method} {concrete} is not routed: {status} {body}"
        );
    }
    let html = hub.http.get(hub.url("/docs/")).send().await.unwrap();
    assert_eq!(html.status(), 200);
    assert!(html.text().await.unwrap().contains("swagger"));
}
