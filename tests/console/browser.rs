//! The console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver on a loopback port this test starts), on every backend.
//! Chromium and chromedriver are Debian's (`.ci/run` installs them); without
//! them this test fails, saying so, rather than passing silently.
//!
//! Set `ADMP_CONSOLE_SCREENSHOTS=<dir>` to also save a PNG of each main view
//! (docs/console/*.png are made this way).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use admp::hub::Clock;
use admp::store::MessageState;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::fixture::{Backend, ConsoleHub, console_config, eventually};
use crate::support::MASTER_KEY;
use crate::support::storage::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on 127.0.0.1, stopped (and reaped) on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the console's browser tests need Debian's chromium and \
                 chromium-driver (`apt-get install -y chromium chromium-driver`; .ci/run does it)"
            );
        }
        // A free loopback port for chromedriver (it cannot take port 0).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually("chromedriver to listen", || {
            let status = status.clone();
            async move {
                let response = reqwest::get(&status).await.ok()?;
                response.status().is_success().then_some(())
            }
        })
        .await;
        Driver { child, url }
    }

    /// A new headless Chromium session with a fresh profile in `profile`.
    async fn browser(&self, profile: &Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session from chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of the first element matching `css` once `want` accepts it
/// (pages load after a click returns: polls, tolerating stale elements).
async fn wait_text(browser: &Client, css: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if want(&text) {
                return text;
            }
            last = Some(text);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{css}: never as expected; last seen {last:?} at {:?}",
            browser.current_url().await.map(|u| u.to_string())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the first element matching `css`, waiting for it.
async fn click(browser: &Client, css: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && element.click().await.is_ok()
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no {css} to click");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Types into the first element matching `css`, waiting for it.
async fn type_into(browser: &Client, css: &str, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && element.send_keys(text).await.is_ok()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {css} to type into"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn path_of(browser: &Client) -> String {
    browser.current_url().await.unwrap().path().to_string()
}

/// Saves a screenshot when `ADMP_CONSOLE_SCREENSHOTS` names a directory.
async fn screenshot(browser: &Client, shots: &Option<PathBuf>, name: &str) {
    if let Some(dir) = shots {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// The operator's flow: log in, find an agent, open its dead letter, see a
/// forged change refused, requeue it and see the state change, see the
/// failed webhook attempt's error, log out; pages need a session throughout.
async fn operator_flow(driver: &Driver, backend: Backend, shots: Option<PathBuf>) {
    // The hub signs an audit checkpoint every 4 events: the audit page says they verify.
    let config = admp::config::Config {
        audit_signing_key: Some(admp::signing::keys::encode_secret_key(
            &admp::signing::keys::generate(),
        )),
        audit_checkpoint_every: 4,
        ..console_config()
    };
    let hub = ConsoleHub::start(backend, config, Clock::system()).await;
    let profile = TempDir::new();
    let browser = driver.browser(profile.path()).await;

    // No session: any page leads to the login.
    browser.goto(&hub.url("/console/agents/bob")).await.unwrap();
    assert_eq!(path_of(&browser).await, "/console/login", "{backend:?}");
    type_into(&browser, "#key", "a wrong key").await;
    click(&browser, "#login").await;
    wait_text(&browser, "#login-error", |t| t.contains("does not open")).await;
    screenshot(&browser, &shots, "login").await;
    type_into(&browser, "#key", MASTER_KEY).await;
    click(&browser, "#login").await;
    wait_text(&browser, "h1", |t| t == "Overview").await;
    // The counts are taken in the background: reload until they are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while browser.find(Locator::Id("counting")).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the counts never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        browser.refresh().await.unwrap();
    }
    wait_text(&browser, "#count-dead", |t| t == "1").await;
    wait_text(&browser, "#ready", |t| t.starts_with("ready")).await;
    screenshot(&browser, &shots, "overview").await;

    // Find the agent.
    click(&browser, "header nav a[href='/console/agents']").await;
    type_into(&browser, "#agent-search", "bo").await;
    click(&browser, "#agent-search-go").await;
    wait_text(&browser, "#agents tbody", |t| {
        t.contains("bob") && !t.contains("alice")
    })
    .await;
    screenshot(&browser, &shots, "agents").await;
    click(&browser, "a.agent-link").await;
    wait_text(&browser, "h1", |t| t == "Agent bob").await;
    wait_text(&browser, "#inbox-dead", |t| t == "1").await;
    // The failed webhook attempt and its error.
    wait_text(&browser, "#attempts .attempt-error", |t| t.contains("500")).await;
    // Its group, with its role and member count.
    wait_text(&browser, "#groups tbody", |t| {
        t.contains(&hub.group_id)
            && t.contains("Ops Team")
            && t.contains("owner")
            && t.contains("2 / 50")
    })
    .await;
    screenshot(&browser, &shots, "agent").await;

    // The group's page: members and the post.
    click(&browser, "#groups a.group-link").await;
    wait_text(&browser, "h1", |t| t == format!("Group {}", hub.group_id)).await;
    wait_text(&browser, "#members tbody", |t| {
        t.contains("alice") && t.contains("bob")
    })
    .await;
    wait_text(&browser, "#history tbody", |t| {
        t.contains("Deploy at 10:00")
    })
    .await;
    screenshot(&browser, &shots, "group").await;
    browser.back().await.unwrap();
    wait_text(&browser, "h1", |t| t == "Agent bob").await;

    // Open the dead letter.
    click(&browser, "#dead a.dead-link").await;
    wait_text(&browser, "#message-state", |t| t == "dead").await;
    wait_text(&browser, "#envelope", |t| t.contains("will die")).await;
    screenshot(&browser, &shots, "message").await;

    // A change without the CSRF token is refused.
    browser
        .execute(
            "document.querySelectorAll('input[name=csrf]').forEach(i => i.value = '');",
            vec![],
        )
        .await
        .unwrap();
    click(&browser, "#requeue").await;
    wait_text(&browser, "#error-code", |t| t == "CSRF_INVALID").await;
    let still = hub.store.get_message(&hub.dead_id).await.unwrap().unwrap();
    assert_eq!(still.state, MessageState::Dead);

    // The CSP is enforced: an injected inline script does not run.
    browser
        .goto(&hub.url(&format!("/console/messages/{}", hub.dead_id)))
        .await
        .unwrap();
    wait_text(&browser, "#message-state", |t| t == "dead").await;
    let ran = browser
        .execute(
            "const s = document.createElement('script'); \
             s.textContent = 'window.__injected = true'; \
             document.body.appendChild(s); \
             return window.__injected === true;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ran, json!(false), "the CSP blocks inline scripts");

    // Requeue it and see the state change.
    click(&browser, "#requeue").await;
    wait_text(&browser, "#notice", |t| t.contains("requeued")).await;
    wait_text(&browser, "#message-state", |t| t == "queued").await;
    let requeued = hub.store.get_message(&hub.dead_id).await.unwrap().unwrap();
    assert_eq!(requeued.state, MessageState::Queued);

    // Hub-wide views: dead letters (now none), failing deliveries with the error, audit.
    click(&browser, "header nav a[href='/console/dead']").await;
    wait_text(&browser, "#dead tbody", |t| t.contains("No dead letters")).await;
    screenshot(&browser, &shots, "dead").await;
    click(&browser, "header nav a[href='/console/deliveries']").await;
    wait_text(&browser, "#deliveries .delivery-error", |t| {
        t.contains("500")
    })
    .await;
    screenshot(&browser, &shots, "deliveries").await;
    click(&browser, "header nav a[href='/console/audit']").await;
    wait_text(&browser, "#chain", |t| t.contains("verified")).await;
    wait_text(&browser, "#checkpoints", |t| {
        t.contains("every 4 events") && t.contains("verify") && !t.contains("NOT")
    })
    .await;
    wait_text(&browser, "#audit tbody", |t| {
        t.contains("console.requeued") && t.contains("console:master")
    })
    .await;
    screenshot(&browser, &shots, "audit").await;

    // Log out: the session is gone.
    click(&browser, "#logout").await;
    wait_text(&browser, "h1", |t| t == "ADMP console").await;
    assert_eq!(path_of(&browser).await, "/console/login");
    browser.goto(&hub.url("/console")).await.unwrap();
    assert_eq!(path_of(&browser).await, "/console/login");

    browser.close().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_flow_in_headless_chromium_on_every_backend() {
    let driver = Driver::start().await;
    let shots = std::env::var_os("ADMP_CONSOLE_SCREENSHOTS").map(PathBuf::from);
    for backend in [
        Backend::Sqlite,
        Backend::Memory,
        Backend::Postgres,
        Backend::Mech,
    ] {
        let shots = (backend == Backend::Sqlite)
            .then(|| shots.clone())
            .flatten();
        operator_flow(&driver, backend, shots).await;
    }
}
