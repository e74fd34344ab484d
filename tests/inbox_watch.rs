//! `GET /api/agents/{id}/inbox/stats` as a non-leasing watch: an `ETag` on
//! the counts, `If-None-Match` + `wait_sec` to wait for them to change; and
//! `GET …/inbox/peek`, the waiting messages summarised without a lease.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{TestHub, expect_error, pull_one, read, send};

#[tokio::test]
async fn stats_carry_an_etag_and_an_unchanged_tag_is_not_modified() {
    let hub = TestHub::default().await;
    let bob = hub.agent("bob").await;
    let path = bob.agent_path("inbox/stats");
    let response = bob.request(Method::GET, &path, None).send().await.unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let (status, body) = read(response).await;
    assert_eq!((status, body["queued"].as_u64()), (StatusCode::OK, Some(0)));

    let unchanged = bob
        .request(Method::GET, &path, None)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers()["etag"].to_str().unwrap(), etag);

    // Unchanged for the whole wait: 304 at the deadline.
    let waited = bob
        .request(Method::GET, &bob.agent_path("inbox/stats?wait_sec=1"), None)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn a_send_wakes_the_watch_which_leases_nothing() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let path = bob.agent_path("inbox/stats");
    let response = bob.request(Method::GET, &path, None).send().await.unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_string();

    let watcher = bob.clone();
    let watch = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let response = watcher
            .request(
                Method::GET,
                &watcher.agent_path("inbox/stats?wait_sec=20"),
                None,
            )
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        (started.elapsed(), read(response).await)
    });
    let id = send(&alice, "bob", json!({"n": 1})).await;
    let (elapsed, (status, body)) = watch.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queued"], 1);
    assert!(
        elapsed.as_secs() < 20,
        "woken by the send, not the deadline"
    );
    // The watch took nothing: the first pull gets the message on its first attempt.
    let leased = pull_one(&bob).await;
    assert_eq!(
        (leased["message_id"].as_str(), leased["attempts"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
}

#[tokio::test]
async fn the_watch_is_bounded_and_only_for_the_inbox_owner() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let too_long = bob
        .request(
            Method::GET,
            &bob.agent_path("inbox/stats?wait_sec=21"),
            None,
        )
        .send()
        .await
        .unwrap();
    expect_error(too_long, 400, "INVALID_INPUT").await;
    let other = alice
        .request(Method::GET, &bob.agent_path("inbox/stats?wait_sec=1"), None)
        .send()
        .await
        .unwrap();
    expect_error(other, 403, "FORBIDDEN").await;
    let anonymous = hub
        .http
        .get(hub.url(&bob.agent_path("inbox/stats?wait_sec=1")))
        .send()
        .await
        .unwrap();
    expect_error(anonymous, 401, "AUTH_REQUIRED").await;
}

#[tokio::test]
async fn peek_lists_waiting_messages_without_leasing_them() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    let first = send(&alice, "bob", json!({"n": 1})).await;
    let second = send(&alice, "bob", json!({"n": 2})).await;
    let peek = |limit: &str| {
        bob.request(
            Method::GET,
            &bob.agent_path(&format!("inbox/peek{limit}")),
            None,
        )
        .send()
    };
    let (status, body) = read(peek("").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [first.as_str(), second.as_str()]);
    let m = &body["messages"][0];
    assert_eq!(
        (
            m["from"].as_str(),
            m["subject"].as_str(),
            m["type"].as_str()
        ),
        (Some("alice"), Some("test"), Some("task.request"))
    );
    assert_eq!(m["attempts"], 0);
    assert!(m.get("envelope").is_none(), "a summary, not the message");
    let (_, body) = read(peek("?limit=1").await.unwrap()).await;
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);

    let leased = pull_one(&bob).await;
    assert_eq!(
        (leased["message_id"].as_str(), leased["attempts"].as_u64()),
        (Some(first.as_str()), Some(1))
    );
    let (_, body) = read(peek("").await.unwrap()).await;
    assert_eq!(
        body["messages"][0]["message_id"],
        second.as_str(),
        "leased is not waiting"
    );

    expect_error(peek("?limit=21").await.unwrap(), 400, "INVALID_INPUT").await;
    expect_error(peek("?limit=0").await.unwrap(), 400, "INVALID_INPUT").await;
    let other = alice
        .request(Method::GET, &bob.agent_path("inbox/peek"), None)
        .send()
        .await
        .unwrap();
    expect_error(other, 403, "FORBIDDEN").await;
}
