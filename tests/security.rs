//! Black-box tests of the security hardening (issue 12): each test is a
//! request that used to succeed and must now be refused or neutralised.

mod support;

use reqwest::{Method, StatusCode};
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
