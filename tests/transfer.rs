//! Export from a running hub over HTTP and import into another store: nothing
//! lost, nothing duplicated on a second run, non-empty targets refused.

mod support;

use std::sync::Arc;

use admp::store::Store;
use admp::store::memory::MemoryStore;
use admp::store::transfer::{self, TransferError};
use reqwest::Method;
use serde_json::json;
use support::*;

async fn export_lines(hub: &TestHub) -> Vec<String> {
    let response = hub
        .master(Method::GET, "/api/admin/export")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    text.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn a_populated_hub_round_trips_through_an_export() {
    // 600 sends from one agent go faster than the default rate limit allows;
    // this test is about the export, so the limiter is off.
    let hub = TestHub::start(admp::config::Config {
        rate_limit_enabled: false,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let bob = hub.agent("bob").await;
    hub.agent("carol").await;
    let mut ids = Vec::new();
    for i in 0..600 {
        ids.push(
            send(
                &alice,
                if i % 2 == 0 { "bob" } else { "carol" },
                json!({ "i": i }),
            )
            .await,
        );
    }
    let leased = pull_one(&bob).await;
    let acked = pull_one(&bob).await;
    bob.ack(acked["message_id"].as_str().unwrap(), None)
        .await
        .unwrap();

    let lines = export_lines(&hub).await;
    assert_eq!(
        lines.len(),
        1 + 3 + 600 + 1,
        "header, agents, messages, trailer"
    );

    let target = Arc::new(MemoryStore::new());
    let report = transfer::import(target.as_ref(), lines.clone().into_iter().map(Ok), false)
        .await
        .unwrap();
    assert_eq!((report.agents_inserted, report.messages_inserted), (3, 600));

    let source = &hub.running.hub.store;
    assert_eq!(source.stats().await.unwrap(), target.stats().await.unwrap());
    for id in [&ids[0], &ids[299], &ids[599]] {
        assert_eq!(
            source.get_message(id).await.unwrap(),
            target.get_message(id).await.unwrap()
        );
    }
    let leased_id = leased["message_id"].as_str().unwrap();
    let copy = target.get_message(leased_id).await.unwrap().unwrap();
    assert_eq!(copy.lease_id.as_deref(), leased["lease_id"].as_str());
    assert_eq!(
        target.get_agent("alice").await.unwrap(),
        source.get_agent("alice").await.unwrap()
    );

    // Running it again into the same target: refused without --merge, and a
    // merge inserts nothing new.
    let again = transfer::import(target.as_ref(), lines.clone().into_iter().map(Ok), false).await;
    assert!(matches!(again, Err(TransferError::TargetNotEmpty)));
    let merged = transfer::import(target.as_ref(), lines.into_iter().map(Ok), true)
        .await
        .unwrap();
    assert_eq!((merged.agents_inserted, merged.messages_inserted), (0, 0));
    assert_eq!((merged.agents_skipped, merged.messages_skipped), (3, 600));
    assert_eq!(source.stats().await.unwrap(), target.stats().await.unwrap());
}

#[tokio::test]
async fn a_truncated_export_is_refused() {
    let hub = TestHub::default().await;
    hub.agent("alice").await;
    let mut lines = export_lines(&hub).await;
    lines.pop();
    let target = MemoryStore::new();
    let result = transfer::import(&target, lines.into_iter().map(Ok), false).await;
    assert!(
        matches!(result, Err(TransferError::Verification(_))),
        "{result:?}"
    );
    let garbage = vec![Ok("{\"kind\":\"agent\"}".to_string())];
    let result = transfer::import(&target, garbage, true).await;
    assert!(matches!(result, Err(TransferError::Format { .. })));
}

#[tokio::test]
async fn only_the_operator_may_export() {
    let hub = TestHub::default().await;
    let alice = hub.agent("alice").await;
    let response = alice
        .request(Method::GET, "/api/admin/export", None)
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "FORBIDDEN").await;
    let response = hub
        .http
        .get(hub.url("/api/admin/export"))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "AUTH_REQUIRED").await;
}
