//! `admp healthcheck`, the Docker `HEALTHCHECK` of the image: the real binary
//! against a real hub (exit 0) and against nothing (exit 1).

mod support;

use std::process::Output;

use support::TestHub;

/// Runs the built `admp` binary with `args` and `env`, in an empty working
/// directory (so no stray `.env` is loaded), without blocking the runtime
/// that serves the hub under test.
async fn admp(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = std::env::temp_dir().join(format!("admp-healthcheck-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_admp"));
    command
        .args(args)
        .current_dir(&dir)
        // Only for the child: the test process environment is never touched.
        .env_remove("PORT")
        .envs(env.iter().copied());
    let output = command.output().await.expect("admp runs");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A port nothing listens on: bind port 0 (the OS picks a free port), note
/// it, and close the listener again.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn healthcheck_exits_0_against_a_running_hub() {
    // The test hub listens on port 0: the OS picks a free port, so tests
    // running in parallel never collide.
    let hub = TestHub::default().await;
    let url = hub.url("/health");

    let output = admp(&["healthcheck", "--url", &url], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("200"));

    // Without --url it probes http://127.0.0.1:$PORT/health, as in the image.
    let port = hub.running.addr.port().to_string();
    let output = admp(&["healthcheck"], &[("PORT", &port)]).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

#[tokio::test]
async fn healthcheck_exits_1_when_nothing_listens() {
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}/health");
    let output = admp(&["healthcheck", "--url", &url, "--timeout-ms", "2000"], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("error"));

    let output = admp(
        &["healthcheck", "--timeout-ms", "2000"],
        &[("PORT", &port.to_string())],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
}

#[tokio::test]
async fn healthcheck_exits_1_on_a_non_200_answer() {
    let hub = TestHub::default().await;
    let output = admp(&["healthcheck", "--url", &hub.url("/no-such-route")], &[]).await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("404"));
}
