//! Crash safety of group fan-out: SIGKILL the hub while posts to a 50-member
//! group are in flight, restart it on the same storage, and check that every
//! post is complete or absent: each post found (in any inbox or in the
//! history) has exactly one copy in every other member's inbox and a history
//! record, and every post answered `201` before the kill is there. Retrying
//! the posts whose answer the crash swallowed (same envelope, so the same
//! idempotency key) never makes a second set of copies.
//!
//! `cargo test --test crash_groups -- --nocapture` prints the figures.
//! Needs PostgreSQL on 127.0.0.1:5432 for the postgres case.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use admp::client::AgentClient;
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;

use support::storage::{HubProcess, PgSchema, TempDir};

const MEMBERS: usize = 50;
const POSTERS: usize = 4;
/// The hub is killed once this many posts were answered `201`.
const KILL_AFTER_ACCEPTED: usize = 25;
/// Bound on every wait; a healthy run needs a fraction of it.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_group_posts_are_all_or_nothing_on_sigkill() {
    let dir = TempDir::new();
    let url = dir.sqlite_url();
    let args = ["--storage-backend", "sqlite", "--database-url", &url];
    crash_once("sqlite", dir.path(), &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_group_posts_are_all_or_nothing_on_sigkill() {
    let schema = PgSchema::create().await;
    let dir = TempDir::new();
    let url = schema.url();
    let args = ["--storage-backend", "postgres", "--database-url", &url];
    crash_once("postgres", dir.path(), &args).await;
    schema.drop_schema().await;
}

/// What the posters saw before the kill.
#[derive(Default)]
struct Ledger {
    /// Envelope sent but no answer (the crash cut it): (poster index, envelope).
    unanswered: Vec<(usize, Value)>,
    /// Posts answered `201`: post id.
    accepted: HashSet<String>,
}

async fn crash_once(label: &str, cwd: &Path, args: &[&str]) {
    let mut hub = HubProcess::start(cwd, args);
    let http = reqwest::Client::new();
    let members: Vec<AgentClient> = futures::stream::iter(0..MEMBERS)
        .map(|i| {
            let (http, url) = (http.clone(), hub.url.clone());
            async move {
                AgentClient::register(http, &url, Some(&format!("m{i:02}")))
                    .await
                    .unwrap()
            }
        })
        .buffered(8)
        .collect()
        .await;
    let created: Value = members[0]
        .create_group(&json!({"name": "crash", "settings": {"max_members": MEMBERS}}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let group_id = created["id"].as_str().unwrap().to_string();
    for m in &members[1..] {
        assert_eq!(m.join_group(&group_id, None).await.unwrap().status(), 200);
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let threshold = enough.notified();
    tokio::pin!(threshold);
    threshold.as_mut().enable();
    let load: Vec<_> = (0..POSTERS)
        .map(|p| {
            tokio::spawn(post_until_error(
                p,
                members[p].clone(),
                group_id.clone(),
                ledger.clone(),
                accepted.clone(),
                enough.clone(),
            ))
        })
        .collect();
    if accepted.load(Ordering::SeqCst) < KILL_AFTER_ACCEPTED {
        tokio::time::timeout(DEADLINE, threshold)
            .await
            .expect("the load never reached the kill threshold");
    }
    hub.kill();
    for task in load {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("a poster hung after the kill")
            .unwrap();
    }
    let ledger = std::mem::take(&mut *ledger.lock());

    let hub = HubProcess::start(cwd, args);
    let members: Vec<AgentClient> = members
        .iter()
        .map(|m| AgentClient::new(http.clone(), &hub.url, &m.agent_id, m.key.clone()))
        .collect();

    // Every copy in every inbox, by post.
    let mut copies: HashMap<String, Vec<String>> = HashMap::new();
    for m in &members {
        for post in drain(m).await {
            copies.entry(post).or_default().push(m.agent_id.clone());
        }
    }
    let history = history(&members[0], &group_id).await;
    let found: HashSet<&String> = copies.keys().chain(history.keys()).collect();
    let mut complete = 0;
    for post in &found {
        let sender = history
            .get(*post)
            .unwrap_or_else(|| panic!("{label}: copies of {post} without its history record"));
        let got = copies.get(*post).map_or(0, Vec::len);
        assert_eq!(
            got,
            MEMBERS - 1,
            "{label}: post {post} from {sender} reached {got} of {} members",
            MEMBERS - 1
        );
        let recipients: HashSet<&String> = copies[*post].iter().collect();
        assert_eq!(
            recipients.len(),
            MEMBERS - 1,
            "{label}: one copy per member"
        );
        assert!(
            !recipients.contains(sender),
            "{label}: no copy for the sender"
        );
        complete += 1;
    }
    for post in &ledger.accepted {
        assert!(found.contains(post), "{label}: accepted post {post} lost");
    }
    let landed_unanswered = found.len() - ledger.accepted.len();

    // Retrying the unanswered posts: a landed one is a duplicate, never a second set.
    let mut duplicates = 0;
    for (poster, envelope) in &ledger.unanswered {
        let response = members[*poster]
            .post_group(&group_id, envelope)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        match status {
            200 => {
                duplicates += 1;
                assert!(found.contains(&body["message_id"].as_str().unwrap().to_string()));
            }
            201 => assert_eq!(body["delivered"], MEMBERS - 1),
            other => panic!("{label}: retry answered {other}: {body}"),
        }
    }
    assert_eq!(
        duplicates, landed_unanswered,
        "{label}: every landed retry is a duplicate"
    );
    println!(
        "group crash safety, {label}: accepted={} unanswered={} landed_unanswered={landed_unanswered} \
         complete_posts={complete} partial_posts=0 copies_per_post={}",
        ledger.accepted.len(),
        ledger.unanswered.len(),
        MEMBERS - 1
    );
}

/// Posts until the hub goes away; records every `201` and every unanswered post.
async fn post_until_error(
    poster: usize,
    client: AgentClient,
    group_id: String,
    ledger: Arc<Mutex<Ledger>>,
    accepted: Arc<AtomicUsize>,
    enough: Arc<Notify>,
) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let envelope = client.group_envelope(&group_id, "crash", json!({"from": poster}));
        let answer = match client.post_group(&group_id, &envelope).await {
            Ok(response) if response.status() == 201 => response.json::<Value>().await.ok(),
            Ok(response) => panic!("post answered {}", response.status()),
            Err(_) => None,
        };
        let Some(body) = answer else {
            ledger.lock().unanswered.push((poster, envelope));
            return;
        };
        assert_eq!(body["delivered"], MEMBERS - 1, "{body}");
        ledger
            .lock()
            .accepted
            .insert(body["message_id"].as_str().unwrap().to_string());
        if accepted.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACCEPTED {
            enough.notify_one();
        }
    }
}

/// Pulls and acks a member's whole inbox; the `group_message_id` of each copy.
async fn drain(member: &AgentClient) -> Vec<String> {
    let mut posts = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "inbox did not drain");
        let response = member.pull(&json!({"max_messages": 100})).await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            return posts;
        }
        let acks: Vec<Value> = messages
            .iter()
            .map(|m| {
                posts.push(m["group_message_id"].as_str().unwrap().to_string());
                json!({"message_id": m["message_id"], "lease_id": m["lease_id"]})
            })
            .collect();
        let response = member
            .request(
                reqwest::Method::POST,
                &member.agent_path("inbox/ack"),
                Some(&json!({ "acks": acks })),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Post id → sender of every post in the history.
async fn history(member: &AgentClient, group_id: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page: Value = member
            .group_history(group_id, Some(100), cursor.as_deref())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for m in page["messages"].as_array().unwrap() {
            out.insert(
                m["id"].as_str().unwrap().to_string(),
                m["from"].as_str().unwrap().to_string(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}
