//! `GET /api/agents/{id}/inbox/stats` as a non-leasing watch: an `ETag` on
//! the counts, `If-None-Match` + `wait_sec` to wait for them to change.

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
