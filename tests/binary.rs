//! The real `admp` binary: starts with flags only, serves, and exits 0 on SIGTERM
//! after draining.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn serve_answers_and_exits_cleanly_on_sigterm() {
    // Port 0: the OS picks a free port; the hub logs the address it bound.
    let mut child = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--storage-backend", "memory", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("admp starts");
    let stdout = child.stdout.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = log["fields"]["addr"].as_str()
            {
                let _ = addr_tx.send(addr.to_string());
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the hub logs its address");
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "hub did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_bad_setting_stops_start_up_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["serve", "--port", "0"])
        .env("MAX_DELIVERY_ATTEMPTS", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MAX_DELIVERY_ATTEMPTS"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["serve", "--port", "0", "--api-key-required", "true"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MASTER_API_KEY"), "{stderr}");
}

/// Secrets from files, through the real environment of the real binary (set
/// on the child only): a variable and its `_FILE` twin together, or an
/// unreadable file, stop start-up with a message naming the variables.
#[test]
fn secret_file_mistakes_stop_start_up_naming_the_variables() {
    let dir = std::env::temp_dir().join(format!("admp-binary-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("master_api_key");
    std::fs::write(&key_file, "file-master-key-0123456789\n").unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["serve", "--port", "0"])
        .current_dir(&dir)
        .env("MASTER_API_KEY", "env-master-key-0123456789")
        .env("MASTER_API_KEY_FILE", &key_file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MASTER_API_KEY and MASTER_API_KEY_FILE"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_admp"))
        .args(["serve", "--port", "0"])
        .current_dir(&dir)
        .env_remove("SESSION_SECRET")
        .env("SESSION_SECRET_FILE", dir.join("missing"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SESSION_SECRET_FILE"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
