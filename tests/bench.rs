//! `admp bench` as a user runs it: the binary starts its own `admp serve`
//! (port 0, the OS picks a free port), drives it and prints JSON.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_spawns_its_own_hub_and_reports_json() {
    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["bench", "--scenario", "send", "--json"])
        .args(["--agents", "2", "--messages", "20", "--concurrency", "2"])
        .output()
        .expect("admp bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "admp bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let row = &report["results"][0];
    assert_eq!(row["scenario"], "send (signature)");
    assert_eq!(row["ops"], 20);
    assert_eq!(row["errors"], 0);
    assert_eq!(row["latency"]["count"], 20);
    assert!(
        row["rss_mib"].as_f64().is_some_and(|mib| mib > 0.0),
        "{row}"
    );
}

#[test]
fn bench_refuses_meaningless_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["bench", "--concurrency", "0"])
        .output()
        .expect("admp bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--concurrency"), "{stderr}");
}

#[test]
fn bench_fanout_reports_posts_and_member_copies() {
    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["bench", "--scenario", "fanout", "--json"])
        .args(["--members", "6", "--messages", "12", "--concurrency", "3"])
        .output()
        .expect("admp bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "admp bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let posts = &report["results"][0];
    assert_eq!(posts["scenario"], "fanout posts (6 members, signature)");
    assert_eq!(
        (posts["ops"].as_u64(), posts["errors"].as_u64()),
        (Some(12), Some(0))
    );
    assert_eq!(posts["latency"]["count"], 12);
    let copies = &report["results"][1];
    assert_eq!(copies["ops"], 12 * 5, "every other member got each post");
}
