//! Webhook delivery end to end: a hub on port 0 pushes to a real local
//! receiver. Retries are driven by a short `webhook_retry_schedule` in the
//! config, and every wait polls for an effect with a deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use admp::client::AgentClient;
use admp::config::Config;
use admp::hub::Clock;
use admp::server::{RunningHub, start_with_store};
use admp::store::{DeliveryState, Store, memory::MemoryStore};
use admp::webhook;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Received, Receiver, Reply, eventually};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A hub config for webhook tests: loopback receivers allowed, a fast poll,
/// and a retry schedule in milliseconds instead of minutes.
fn config(retry_ms: &[u64]) -> Config {
    Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        webhook_allow_private: true,
        webhook_poll_interval_ms: 20,
        webhook_timeout_ms: 5_000,
        webhook_retry_schedule: retry_ms
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect(),
        ..Config::default()
    }
}

/// A hub, a sender `alice` and a recipient `bob` whose webhook points at `webhook_url`.
struct Setup {
    hub: RunningHub,
    store: Arc<dyn Store>,
    alice: AgentClient,
    bob: AgentClient,
}

async fn setup(config: Config, webhook_url: &str) -> Setup {
    setup_on(config, Arc::new(MemoryStore::new()), webhook_url).await
}

async fn setup_on(config: Config, store: Arc<dyn Store>, webhook_url: &str) -> Setup {
    setup_with_clock(config, store, Clock::system(), webhook_url).await
}

async fn setup_with_clock(
    config: Config,
    store: Arc<dyn Store>,
    clock: Clock,
    webhook_url: &str,
) -> Setup {
    let hub = start_with_store(config, store.clone(), clock)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let alice = AgentClient::register(http.clone(), &hub.url(), Some("alice"))
        .await
        .unwrap();
    let bob = AgentClient::register(http, &hub.url(), Some("bob"))
        .await
        .unwrap();
    let response = bob
        .request(
            Method::POST,
            &bob.agent_path("webhook"),
            Some(&json!({"webhook_url": webhook_url, "webhook_secret": SECRET})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    Setup {
        hub,
        store,
        alice,
        bob,
    }
}

impl Setup {
    /// Alice sends bob a message; returns (message id, envelope as sent).
    async fn send(&self) -> (String, Value) {
        let envelope = self
            .alice
            .envelope("bob", "ping", json!({"n": 1, "text": "héllo"}));
        let response = self.alice.send("bob", &envelope).await.unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        (body["message_id"].as_str().unwrap().to_string(), envelope)
    }

    /// Bob's webhook attempts as the API lists them, newest first.
    async fn attempts(&self) -> Vec<Value> {
        let response = self
            .bob
            .request(
                Method::GET,
                &self.bob.agent_path("webhook/deliveries"),
                None,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["attempts"].as_array().unwrap().clone()
    }

    /// Waits until the API lists at least `n` attempts.
    async fn wait_for_attempts(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} recorded attempt(s)"), || async {
            let attempts = self.attempts().await;
            (attempts.len() >= n).then_some(attempts)
        })
        .await
    }

    /// Waits until delivery `id` reaches `state`.
    async fn wait_for_state(&self, id: &str, state: DeliveryState) {
        eventually(&format!("delivery {id} {state:?}"), || async {
            let delivery = self.store.get_delivery(id).await.unwrap()?;
            (delivery.state == state).then_some(())
        })
        .await
    }
}

#[tokio::test]
async fn payload_and_both_signatures_verify() {
    let receiver = Receiver::start(vec![], Reply::Status(204)).await;
    let s = setup(config(&[60_000]), &receiver.url()).await;
    let (message_id, envelope) = s.send().await;

    let request = receiver.wait_for(1).await.remove(0);
    assert_eq!(request.path, "/hook");
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("user-agent"), "ADMP-Server/1.0");
    assert_eq!(request.header("x-admp-event"), "message.received");
    assert_eq!(request.header("x-admp-message-id"), message_id);
    assert_eq!(request.header("x-admp-delivery-attempt"), "1");

    let body = request.json();
    assert_eq!(body["event"], "message.received");
    assert_eq!(body["message_id"], message_id.as_str());
    assert_eq!(body["envelope"], envelope);
    // A number of epoch milliseconds, as the Node server's `Date.now()`.
    let delivered_at = body["delivered_at"]
        .as_i64()
        .expect("delivered_at is a number");
    let now_ms = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - 60_000..=now_ms).contains(&delivered_at),
        "{delivered_at}"
    );

    webhook::verify_headers(SECRET, &request.headers, &request.body, SystemTime::now())
        .expect("Standard Webhooks signature verifies");
    webhook::verify_legacy_signature(SECRET, &request.body).expect("compat signature verifies");
    // The compat signature covers the body bytes as sent: the body up to its
    // `signature` member, already in Node's printing.
    let raw = std::str::from_utf8(&request.body).unwrap();
    let (unsigned, _) = raw.rsplit_once(",\"signature\":").unwrap();
    let unsigned = format!("{unsigned}}}");
    assert_eq!(webhook::node_json(&unsigned), unsigned);
    assert_eq!(
        body["signature"],
        webhook::legacy_signature(SECRET, &unsigned)
    );
    assert!(
        webhook::verify_headers(
            "whsec_AAAA",
            &request.headers,
            &request.body,
            SystemTime::now()
        )
        .is_err()
    );

    let attempts = s.wait_for_attempts(1).await;
    assert_eq!(attempts[0]["status_code"], 204);
    assert_eq!(attempts[0]["success"], true);
    assert_eq!(attempts[0]["delivery_id"], request.header("webhook-id"));
    s.wait_for_state(request.header("webhook-id"), DeliveryState::Delivered)
        .await;

    // Push is a notification: the message still waits in the inbox.
    let pulled: Value = s.bob.pull(&json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(pulled["message_id"], message_id.as_str());
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn receiver_failing_twice_gets_the_message_on_the_third_attempt() {
    let receiver = Receiver::start(
        vec![Reply::Status(500), Reply::Status(503)],
        Reply::Status(200),
    )
    .await;
    let s = setup(config(&[100, 100, 60_000]), &receiver.url()).await;
    let (message_id, _) = s.send().await;

    let requests = receiver.wait_for(3).await;
    let webhook_id = requests[0].header("webhook-id").to_string();
    for (n, request) in requests.iter().enumerate() {
        assert_eq!(
            request.header("x-admp-delivery-attempt"),
            (n + 1).to_string()
        );
        assert_eq!(
            request.header("webhook-id"),
            webhook_id,
            "stable across retries"
        );
        assert_eq!(request.json()["message_id"], message_id.as_str());
        webhook::verify_headers(SECRET, &request.headers, &request.body, SystemTime::now())
            .unwrap();
    }
    // The retries waited for the schedule (100 ms, minus at most 20 % jitter).
    for pair in requests.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(80));
    }

    s.wait_for_state(&webhook_id, DeliveryState::Delivered)
        .await;
    let attempts = s.wait_for_attempts(3).await;
    let statuses: Vec<&Value> = attempts.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(statuses, [&json!(200), &json!(503), &json!(500)]);
    assert_eq!(attempts[2]["success"], false);
    assert!(attempts[2]["error"].as_str().unwrap().contains("500"));
    assert_eq!(receiver.received().len(), 3, "no attempt after success");
    let stats = s.hub.jobs.webhooks.snapshot();
    assert_eq!((stats.attempts, stats.retried, stats.delivered), (3, 2, 1));
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn delivery_fails_after_the_last_retry() {
    let receiver = Receiver::start(vec![], Reply::Status(500)).await;
    let s = setup(config(&[50, 50]), &receiver.url()).await;
    s.send().await;

    let first = receiver.wait_for(1).await.remove(0);
    let webhook_id = first.header("webhook-id").to_string();
    s.wait_for_state(&webhook_id, DeliveryState::Failed).await;
    let delivery = s.store.get_delivery(&webhook_id).await.unwrap().unwrap();
    assert_eq!(
        delivery.attempts, 3,
        "the first attempt and one per schedule step"
    );
    assert_eq!(delivery.last_status, Some(500));
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(s.hub.jobs.webhooks.snapshot().failed, 1);
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_after_from_the_receiver_postpones_the_retry() {
    let receiver = Receiver::start(vec![Reply::StatusRetryAfter(429, 1)], Reply::Status(200)).await;
    let s = setup(config(&[10, 10]), &receiver.url()).await;
    s.send().await;

    let requests = receiver.wait_for(2).await;
    assert!(
        requests[1].at - requests[0].at >= Duration::from_millis(950),
        "the schedule says 10 ms but the receiver asked for 1 s"
    );
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_receiver_is_cut_off_at_the_timeout() {
    let receiver = Receiver::start(vec![], Reply::Hang).await;
    let config = Config {
        webhook_timeout_ms: 300,
        ..config(&[60_000])
    };
    let s = setup(config, &receiver.url()).await;
    s.send().await;

    let attempt = s.wait_for_attempts(1).await.remove(0);
    assert_eq!(attempt["status_code"], Value::Null);
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 300 ms")
    );
    let latency = attempt["latency_ms"].as_u64().unwrap();
    assert!((300..3_000).contains(&latency), "latency {latency} ms");
    assert_eq!(receiver.received().len(), 1);
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn redirects_are_failures_and_not_followed() {
    let receiver = Receiver::start(vec![Reply::Redirect("/elsewhere")], Reply::Status(200)).await;
    let s = setup(config(&[60_000]), &receiver.url()).await;
    s.send().await;

    let attempt = s.wait_for_attempts(1).await.remove(0);
    assert_eq!(attempt["status_code"], 302);
    assert_eq!(attempt["success"], false);
    assert!(attempt["error"].as_str().unwrap().contains("redirect"));
    let paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/hook"]);
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn ssrf_guard_refuses_private_targets_after_resolution() {
    let receiver = Receiver::start(vec![], Reply::Status(200)).await;
    let guarded = Config {
        webhook_allow_private: false,
        ..config(&[60_000])
    };
    // `localhost` passes registration (it is a name), but resolves to loopback.
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let s = setup(guarded, &by_name).await;
    s.send().await;

    let attempt = s.wait_for_attempts(1).await.remove(0);
    let error = attempt["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused: localhost resolves to"),
        "{error}"
    );
    assert_eq!(attempt["status_code"], Value::Null);
    assert!(
        receiver.received().is_empty(),
        "the receiver was never called"
    );

    // A literal loopback address is refused when the webhook is set.
    let response = s
        .bob
        .request(
            Method::POST,
            &s.bob.agent_path("webhook"),
            Some(&json!({"webhook_url": receiver.url()})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn removing_the_webhook_or_the_agent_cancels_pending_retries() {
    let receiver = Receiver::start(vec![], Reply::Status(500)).await;
    let s = setup(config(&[60_000]), &receiver.url()).await;
    s.send().await;
    let first = receiver.wait_for(1).await.remove(0);
    let webhook_id = first.header("webhook-id").to_string();
    s.wait_for_attempts(1).await;

    let response = s
        .bob
        .request(Method::DELETE, &s.bob.agent_path("webhook"), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let delivery = s.store.get_delivery(&webhook_id).await.unwrap().unwrap();
    assert_eq!(delivery.state, DeliveryState::Cancelled);

    // With the webhook back, a new message is pushed; deleting bob cancels it.
    let response = s
        .bob
        .request(
            Method::POST,
            &s.bob.agent_path("webhook"),
            Some(&json!({"webhook_url": receiver.url()})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    s.send().await;
    let second = receiver.wait_for(2).await.remove(1);
    let second_id = second.header("webhook-id").to_string();
    assert_ne!(second_id, webhook_id);
    s.wait_for_attempts(2).await;
    let response = s
        .bob
        .request(Method::DELETE, &s.bob.agent_path(""), None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let delivery = s.store.get_delivery(&second_id).await.unwrap().unwrap();
    assert_eq!(delivery.state, DeliveryState::Cancelled);
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn pending_retries_use_the_current_webhook_url() {
    let old = Receiver::start(vec![], Reply::Status(500)).await;
    let new = Receiver::start(vec![], Reply::Status(200)).await;
    let s = setup(config(&[1_000]), &old.url()).await;
    s.send().await;
    let first = old.wait_for(1).await.remove(0);

    let response = s
        .bob
        .request(
            Method::POST,
            &s.bob.agent_path("webhook"),
            Some(&json!({"webhook_url": new.url(), "webhook_secret": "plain secret"})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let retry = new.wait_for(1).await.remove(0);
    assert_eq!(retry.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(retry.header("x-admp-delivery-attempt"), "2");
    webhook::verify_headers(
        "plain secret",
        &retry.headers,
        &retry.body,
        SystemTime::now(),
    )
    .expect("signed with the new secret");
    assert_eq!(old.received().len(), 1);
    s.hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_replaced_secret_keeps_signing_until_the_overlap_ends() {
    let receiver = Receiver::start(vec![], Reply::Status(204)).await;
    let clock = Clock::manual();
    // A one-minute overlap: long enough to see both signatures, short enough
    // that moving the clock past it stays inside the HTTP Date skew window.
    let hub_config = Config {
        key_rotation_overlap_sec: 60,
        ..config(&[60_000])
    };
    let store = Arc::new(MemoryStore::new());
    let s = setup_with_clock(hub_config, store, clock.clone(), &receiver.url()).await;
    let rotated: Value = s
        .bob
        .request(
            Method::POST,
            &s.bob.agent_path("webhook"),
            Some(&json!({"webhook_url": receiver.url(), "webhook_secret": "new secret"})),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rotated["webhook_secret"], "new secret");
    assert_eq!(
        rotated["previous_webhook_secret_valid_until"],
        clock.now_ms() + 60_000
    );

    let send = || async {
        let envelope = s.alice.envelope("bob", "ping", json!({}));
        assert_eq!(s.alice.send("bob", &envelope).await.unwrap().status(), 201);
    };
    send().await;
    let during = receiver.wait_for(1).await.remove(0);
    assert_eq!(during.header("webhook-signature").matches("v1,").count(), 2);
    for secret in [SECRET, "new secret"] {
        webhook::verify_headers(secret, &during.headers, &during.body, clock.now_system())
            .unwrap_or_else(|e| panic!("{secret} verifies during the overlap: {e}"));
    }
    webhook::verify_legacy_signature("new secret", &during.body)
        .expect("the compat body signature uses the current secret");

    clock.advance_ms(61_000);
    send().await;
    let after = receiver.wait_for(2).await.remove(1);
    assert_eq!(after.header("webhook-signature").matches("v1,").count(), 1);
    webhook::verify_headers(
        "new secret",
        &after.headers,
        &after.body,
        clock.now_system(),
    )
    .expect("the current secret verifies after the overlap");
    assert!(
        webhook::verify_headers(SECRET, &after.headers, &after.body, clock.now_system()).is_err(),
        "the replaced secret no longer signs"
    );
    s.hub.shutdown().await.unwrap();
}

/// The restart scenario against any store: `reopen` gives the second hub the
/// store as a restarted process would see it.
async fn retries_survive_a_restart_with<F, Fut>(first_store: Arc<dyn Store>, reopen: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let receiver = Receiver::start(vec![Reply::Status(503)], Reply::Status(200)).await;
    let s = setup_on(config(&[1_500]), first_store, &receiver.url()).await;
    let (message_id, _) = s.send().await;
    let first: Received = receiver.wait_for(1).await.remove(0);
    s.wait_for_attempts(1).await;
    s.hub.shutdown().await.unwrap();
    assert_eq!(
        receiver.received().len(),
        1,
        "the first hub stopped before its retry"
    );

    let restarted = start_with_store(config(&[1_500]), reopen().await, Clock::system())
        .await
        .unwrap();
    let retry = receiver.wait_for(2).await.remove(1);
    assert_eq!(retry.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(retry.header("x-admp-delivery-attempt"), "2");
    assert_eq!(retry.json()["message_id"], message_id.as_str());
    eventually("the restarted hub to record the delivery", || async {
        (restarted.jobs.webhooks.snapshot().delivered == 1).then_some(())
    })
    .await;
    restarted.shutdown().await.unwrap();
}

/// SQLite: the restarted hub opens a new store on the same file, exactly as a
/// restarted process does.
#[tokio::test]
async fn retries_survive_a_hub_restart_on_sqlite() {
    let dir = crate::storage::TempDir::new();
    let url = dir.sqlite_url();
    let open = |url: String| async move {
        admp::server::open_store_url(&url, &admp::config::Config::default())
            .await
            .expect("sqlite store opens")
    };
    let first = open(url.clone()).await;
    retries_survive_a_restart_with(first, || open(url)).await;
}

/// Memory variant: the restarted hub gets the same store instance, as a
/// durable backend would give it the same data.
#[tokio::test]
async fn retries_survive_a_hub_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let same = store.clone();
    retries_survive_a_restart_with(store, || async move { same }).await;
}

#[tokio::test]
async fn metrics_count_webhook_outcomes_and_sweeps() {
    let receiver = Receiver::start(vec![Reply::Status(500)], Reply::Status(204)).await;
    let s = setup(config(&[10]), &receiver.url()).await;
    s.send().await;
    let delivered = receiver.wait_for(2).await;
    s.wait_for_state(delivered[0].header("webhook-id"), DeliveryState::Delivered)
        .await;

    let http = reqwest::Client::new();
    let url = format!("{}/metrics", s.hub.url());
    let expected = [
        r#"admp_webhook_attempts_total{outcome="retry"} 1"#,
        r#"admp_webhook_attempts_total{outcome="delivered"} 1"#,
        "admp_webhook_attempt_duration_seconds_count 2",
        // The sweeper's first pass runs at start.
        r#"admp_sweeps_total{result="ok"}"#,
        r#"admp_sweep_step_duration_seconds_count{step="reclaim"}"#,
        r#"admp_sweep_records_total{outcome="dead"} 0"#,
    ];
    eventually("webhook and sweep metrics", || async {
        let text = http.get(&url).send().await.unwrap().text().await.unwrap();
        expected
            .iter()
            .all(|line| text.contains(line))
            .then_some(())
    })
    .await;
    s.hub.shutdown().await.unwrap();
}

/// Issue 12 item 5: a receiver that accepts and never answers, with a
/// backlog, holds at most `WEBHOOK_PER_AGENT_CONCURRENCY` of the worker's
/// slots; another agent's delivery goes out at once instead of waiting for
/// the silent receiver's timeouts.
#[tokio::test]
async fn a_silent_receiver_cannot_delay_another_agents_webhooks() {
    let silent = Receiver::start(vec![], Reply::Hang).await;
    let healthy = Receiver::start(vec![], Reply::Status(204)).await;
    let config = Config {
        webhook_concurrency: 4,
        webhook_per_agent_concurrency: 1,
        // Far longer than the test may take: before the fix, the silent
        // receiver's backlog held every slot for this long.
        webhook_timeout_ms: 60_000,
        ..config(&[10])
    };
    let s = setup(config, &silent.url()).await;
    for _ in 0..12 {
        s.send().await;
    }
    // The silent receiver gets one request (its share), not four.
    silent.wait_for(1).await;
    let carol = AgentClient::register(reqwest::Client::new(), &s.hub.url(), Some("carol"))
        .await
        .unwrap();
    let response = carol
        .request(
            Method::POST,
            &carol.agent_path("webhook"),
            Some(&json!({"webhook_url": healthy.url(), "webhook_secret": SECRET})),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let envelope = s.alice.envelope("carol", "ping", json!({"n": 2}));
    assert_eq!(
        s.alice.send("carol", &envelope).await.unwrap().status(),
        201
    );
    let got = healthy.wait_for(1).await;
    assert_eq!(got[0].json()["envelope"]["to"], "agent://carol");
    assert_eq!(
        silent.received().len(),
        1,
        "the silent receiver never holds more than its share"
    );
}
