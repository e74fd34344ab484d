//! Memory stays bounded under the floods the adversarial review used
//! (issue 12 items 2 and 4): resident memory is measured around each flood
//! in this test binary, which holds this one test so nothing else allocates
//! meanwhile. Before the fixes the same floods grew RSS by ~180 MB (nonces)
//! and ~425 MB (metadata).

mod support;

use std::time::SystemTime;

use admp::client::host_of;
use admp::config::Config;
use admp::signing::http::{self as httpsig, RequestParts};
use reqwest::Method;
use serde_json::json;
use support::*;

/// Resident set size of this process in MiB (Linux `/proc/self/status`).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line");
    kib / 1024.0
}

/// Growth a flood may cause: allocator slack and metrics, not the flood's data.
const ALLOWED_GROWTH_MIB: f64 = 24.0;

#[tokio::test]
async fn floods_of_large_metadata_and_nonces_leave_memory_bounded() {
    let hub = TestHub::start(Config {
        rate_limit_enabled: false,
        ..test_config()
    })
    .await;
    let alice = hub.agent("alice").await;
    let url = hub.running.url();

    // Item 4: 200 heartbeats, each adding 200 KB of new metadata keys (the
    // review grew one record to 42.7 MB this way).
    let blob = "x".repeat(200 * 1024);
    let before = rss_mib();
    for n in 0..200 {
        let response = alice
            .request(
                Method::POST,
                &alice.agent_path("heartbeat"),
                Some(&json!({ "metadata": { format!("k{n}"): blob } })),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "heartbeat {n}");
    }
    let growth = rss_mib() - before;
    println!("metadata flood: RSS grew {growth:.1} MiB");
    assert!(
        growth < ALLOWED_GROWTH_MIB,
        "metadata flood grew RSS by {growth:.1} MiB"
    );

    // Item 2: 3,000 signed requests with 60 KB nonces (refused), then 3,000
    // with the largest accepted nonce (remembered as fixed-size digests).
    let host = host_of(&url);
    let path = "/api/agents/alice/inbox/stats";
    let signed = |nonce: String| {
        let date = httpsig::http_date(SystemTime::now());
        let headers = [
            ("host", host.as_str()),
            ("date", date.as_str()),
            ("x-request-nonce", nonce.as_str()),
        ];
        let parts = RequestParts {
            method: "GET",
            path_and_query: path,
            headers: &headers,
        };
        let signature = httpsig::sign_request(
            &alice.key,
            "alice",
            &["(request-target)", "host", "date", "x-request-nonce"],
            &parts,
        )
        .unwrap();
        hub.http
            .get(hub.url(path))
            .header("date", date)
            .header("x-request-nonce", nonce)
            .header("signature", signature)
    };
    let before = rss_mib();
    for n in 0..3_000 {
        let nonce = format!("{n:08}{}", "n".repeat(60 * 1024));
        let response = signed(nonce).send().await.unwrap();
        assert_eq!(response.status(), 400, "oversized nonce {n}");
    }
    for n in 0..3_000 {
        let nonce = format!("{n:08}{}", "n".repeat(120));
        let response = signed(nonce).send().await.unwrap();
        assert_eq!(response.status(), 200, "nonce {n}");
    }
    let growth = rss_mib() - before;
    println!("nonce flood: RSS grew {growth:.1} MiB");
    assert!(
        growth < ALLOWED_GROWTH_MIB,
        "nonce flood grew RSS by {growth:.1} MiB"
    );
}
