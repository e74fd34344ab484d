//! `admp bench --scenario console`: render times of the operator console's
//! pages over a big store. The store is filled in process through the
//! `Store` trait (agents, messages in every state, failing webhook
//! deliveries, audit events, groups with members and history), then a hub serves it on 127.0.0.1 and each
//! page is fetched over HTTP with a session, warm-up first, then timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, stream};
use serde_json::json;

use super::{Backend, BenchArgs};
use crate::config::{Config, SqliteSynchronous, StorageBackend};
use crate::hub::Clock;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    Agent, AgentKey, AttemptOutcome, Delivery, DeliveryAttempt, DeliveryState, FanOut, Group,
    GroupAccess, GroupMember, GroupPost, GroupRole, GroupSettings, Message, MessageState, Metadata,
    NewAuditEvent, Store, StoreError, dead_reason,
};

/// Timed fetches per page (after two warm-ups).
const SAMPLES: usize = 20;
/// Deliveries given a failed attempt.
const FAILING_DELIVERIES: usize = 2_000;
/// Audit events appended.
const AUDIT_EVENTS: u64 = 1_000;
/// Groups created, each with up to [`GROUP_MEMBERS`] members.
const GROUPS: usize = 100;
const GROUP_MEMBERS: usize = 20;
/// Groups the agent whose page is timed belongs to (more than one page of them).
const MIDDLE_AGENT_GROUPS: usize = 30;
/// Posts in the history of the group whose page is timed (more than one page).
const GROUP_POSTS: usize = 120;
/// The operator key of the benchmark hub.
const KEY: &str = "console-bench-master-key-0123456789";

/// Fills a store, serves it with the console on, and prints each page's times.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("admp-console-bench-{}", uuid::Uuid::new_v4()));
    let (store, backend): (Arc<dyn Store>, StorageBackend) = match args.backend {
        Backend::Memory => (Arc::new(MemoryStore::new()), StorageBackend::Memory),
        Backend::Sqlite => {
            std::fs::create_dir_all(&dir)?;
            let url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
            let store = SqliteStore::open(&url, 8, SqliteSynchronous::Normal).await?;
            let filling = Instant::now();
            bulk_fill_sqlite(&url, args.agents, args.messages).await?;
            eprintln!(
                "bulk insert of the agents and messages: {:.1} s",
                filling.elapsed().as_secs_f64()
            );
            (Arc::new(store), StorageBackend::Sqlite)
        }
        Backend::Postgres => anyhow::bail!("the console scenario runs on memory or sqlite"),
    };
    let result = measure(args, store, backend).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    args: &BenchArgs,
    store: Arc<dyn Store>,
    backend: StorageBackend,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bulk = backend == StorageBackend::Sqlite;
    let sample_id = fill(&*store, args.agents, args.messages, args.concurrency, bulk).await?;
    let middle = format!("agent-{:06}", args.agents / 2);
    let sample_group = fill_groups(&*store, args.agents, &middle).await?;
    eprintln!(
        "filled {} agents and {} messages in {:.1} s",
        args.agents,
        args.messages,
        started.elapsed().as_secs_f64()
    );
    let counted = Instant::now();
    store.stats().await?;
    eprintln!(
        "one full count (the overview's background recount): {:.1} ms",
        counted.elapsed().as_secs_f64() * 1000.0
    );
    let config = Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        storage_backend: backend,
        master_api_key: Some(KEY.into()),
        console_enabled: true,
        rate_limit_enabled: false,
        // The benchmark times pages, not sweeps.
        cleanup_interval_ms: 3_600_000,
        ..Config::default()
    };
    let running = crate::server::start_with_store(config, store, Clock::system()).await?;
    let base = running.url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = http
        .post(format!("{base}/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={KEY}"))
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the console login set no cookie")?
        .to_string();
    let pages = [
        "/console".to_string(),
        "/console/agents".to_string(),
        format!("/console/agents?q={}", &middle[..10]),
        format!("/console/agents?cursor={middle}"),
        format!("/console/agents/{middle}"),
        format!("/console/groups/{}", urlencoding::encode(&sample_group)),
        format!("/console/messages/{sample_id}"),
        "/console/dead".to_string(),
        "/console/deliveries".to_string(),
        "/console/audit".to_string(),
    ];
    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>9}",
        "page", "first ms", "p50 ms", "p95 ms", "max ms"
    );
    for page in &pages {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut first = Duration::ZERO;
        for i in 0..SAMPLES + 2 {
            let t = Instant::now();
            let response = http
                .get(format!("{base}{page}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            anyhow::ensure!(status == 200, "{page}: HTTP {status}: {body:.300}");
            if i == 0 {
                first = t.elapsed();
            }
            if i >= 2 {
                times.push(t.elapsed());
            }
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<52} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            page,
            ms(first),
            ms(times[SAMPLES / 2]),
            ms(times[SAMPLES * 95 / 100]),
            ms(times[SAMPLES - 1])
        );
    }
    running.shutdown().await?;
    Ok(())
}

/// Agents `agent-000000…`, messages spread over them (70 % acked, 20 %
/// queued, 5 % dead, 5 % expired), failing deliveries and audit events.
/// Returns one message id for the message page.
async fn fill(
    store: &dyn Store,
    agents: usize,
    messages: u64,
    concurrency: usize,
    bulk_filled: bool,
) -> anyhow::Result<String> {
    let now = crate::telemetry::wall_ms();
    if bulk_filled {
        return fill_webhooks_and_audit(store, agents, now).await;
    }
    let agent = |i: usize| Agent {
        agent_id: format!("agent-{i:06}"),
        agent_type: "bench".into(),
        metadata: Metadata::new(),
        keys: vec![AgentKey {
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            version: 1,
            valid_until: None,
        }],
        webhook_url: i
            .is_multiple_of(10)
            .then(|| "https://hooks.example.com/admp".into()),
        webhook_secret: i.is_multiple_of(10).then(|| "whsec_bench".into()),
        previous_webhook_secret: None,
        trusted_agents: Vec::new(),
        last_heartbeat: now,
        online: !i.is_multiple_of(3),
        heartbeat_interval_ms: 60_000,
        heartbeat_timeout_ms: 300_000,
        created_at: now,
        updated_at: now,
    };
    let results: Vec<_> = stream::iter(0..agents)
        .map(|i| store.import_agent(agent(i)))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let message = |n: u64| {
        let recipient = format!("agent-{:06}", n as usize % agents);
        let id = format!("msg-{n:09}");
        let envelope = json!({"version": "1.0", "id": id, "from": "agent://agent-000001",
            "to": format!("agent://{recipient}"), "subject": "bench", "body": {"n": n}});
        let at = now - (messages - n) as i64;
        let mut m = Message::queued(
            id,
            recipient,
            "agent-000001".into(),
            envelope.into(),
            at,
            86_400_000,
        );
        m.content_hash = "bench".into();
        match n % 20 {
            0 => m.kill(dead_reason::MAX_ATTEMPTS, at),
            1 => m.end(MessageState::Expired, at),
            2..=5 => {}
            _ => m.end(MessageState::Acked, at),
        }
        m
    };
    let mut done = 0u64;
    let mut stream = stream::iter(0..messages)
        .map(|n| store.import_message(message(n)))
        .buffer_unordered(concurrency);
    while let Some(r) = stream.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(100_000) {
            eprintln!("… {done} messages");
        }
    }
    drop(stream);
    fill_webhooks_and_audit(store, agents, now).await
}

/// Failing deliveries (half given up, half retrying) and audit events,
/// through the store. Returns the id of a message for the message page.
async fn fill_webhooks_and_audit(
    store: &dyn Store,
    agents: usize,
    now: i64,
) -> anyhow::Result<String> {
    for i in 0..FAILING_DELIVERIES {
        let recipient = format!("agent-{:06}", (i * 10) % agents);
        let id = format!("hooked-{i:06}");
        let m = Message::queued(
            id.clone(),
            recipient.clone(),
            "agent-000001".into(),
            json!({"version": "1.0", "id": id, "subject": "hooked"}).into(),
            now,
            86_400_000,
        );
        let delivery = Delivery {
            id: format!("delivery-{i:06}"),
            message_id: id.clone(),
            agent_id: recipient.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            updated_at: now,
            last_status: None,
            last_error: None,
        };
        store.enqueue(m, u64::MAX, Some(delivery)).await?;
        let attempt = DeliveryAttempt {
            delivery_id: format!("delivery-{i:06}"),
            message_id: id,
            agent_id: recipient,
            attempt: 1,
            at: now + i as i64,
            status_code: Some(500),
            latency_ms: 12,
            error: Some("receiver answered 500 Internal Server Error".into()),
        };
        let outcome = if i % 2 == 0 {
            AttemptOutcome::Failed
        } else {
            AttemptOutcome::RetryAt(now + 3_600_000)
        };
        store.record_attempt(&attempt, outcome).await?;
    }
    for n in 0..AUDIT_EVENTS {
        store
            .append_audit(NewAuditEvent {
                at: now,
                kind: "agent.registered".into(),
                agent_id: Some(format!("agent-{:06}", n as usize % agents)),
                detail: json!({ "n": n }),
            })
            .await?;
    }
    Ok("hooked-000000".into())
}

/// [`GROUPS`] groups of [`GROUP_MEMBERS`] members spread over the agents
/// (`middle` joins the first [`MIDDLE_AGENT_GROUPS`]), and [`GROUP_POSTS`]
/// posts fanned out in the first. Returns the first group's id.
async fn fill_groups(store: &dyn Store, agents: usize, middle: &str) -> anyhow::Result<String> {
    let now = crate::telemetry::wall_ms();
    let id = |g: usize| format!("group://bench-team-{g:08x}");
    for g in 0..GROUPS {
        let owner = format!("agent-{:06}", (g * 97) % agents);
        let group = Group {
            id: id(g),
            name: format!("Bench Team {g}"),
            created_by: owner,
            access: GroupAccess::Open,
            join_key_hash: None,
            settings: GroupSettings {
                history_visible: true,
                max_members: 50,
                message_ttl_sec: 86_400,
            },
            created_at: now,
            updated_at: now,
            member_count: 0,
        };
        store.create_group(group, now).await?;
        let mut members: Vec<String> = (1..GROUP_MEMBERS)
            .map(|k| format!("agent-{:06}", (g * 97 + k * 491) % agents))
            .collect();
        if g < MIDDLE_AGENT_GROUPS {
            members.push(middle.to_string());
        }
        for agent_id in members {
            let member = GroupMember {
                agent_id,
                role: GroupRole::Member,
                joined_at: now,
            };
            match store.add_group_member(&id(g), member).await {
                Ok(()) | Err(StoreError::AlreadyMember) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let sender = format!("agent-{:06}", 0);
    for n in 0..GROUP_POSTS {
        let post_id = format!("post-{n:06}");
        let envelope = json!({"version": "1.0", "id": post_id, "from": format!("agent://{sender}"),
            "to": id(0), "subject": format!("bench post {n}"), "body": {"n": n}});
        let post = GroupPost {
            id: post_id.clone(),
            group_id: id(0),
            sender: sender.clone(),
            envelope: envelope.into(),
            created_at: now + n as i64,
            expires_at: now + 86_400_000,
            idempotency_key: None,
            content_hash: post_id,
            deliveries: Vec::new(),
        };
        let fan = FanOut {
            quota: u64::MAX,
            copy_expires_at: now + 86_400_000,
            now: now + n as i64,
        };
        store.post_to_group(post, fan).await?;
    }
    Ok(id(0))
}

/// The same distribution as [`fill`] written straight into the SQLite file
/// with two `INSERT … SELECT` statements over a generated series (a million
/// single-row transactions would take the benchmark longer than the
/// measurement). The store opened first applied the schema.
async fn bulk_fill_sqlite(url: &str, agents: usize, messages: u64) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(crate::store::sqlite::path_from_url(url)?)?;
    conn.pragma_update(None, "synchronous", "off")?;
    let now = crate::telemetry::wall_ms();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1) \
         INSERT INTO agents (agent_id, agent_type, metadata, keys, webhook_url, webhook_secret, \
             trusted_agents, last_heartbeat, online, heartbeat_interval_ms, heartbeat_timeout_ms, \
             created_at, updated_at) \
         SELECT printf('agent-%06d', i), 'bench', '{}', \
             '[{\"public_key\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\",\"version\":1,\"valid_until\":null}]', \
             CASE WHEN i % 10 = 0 THEN 'https://hooks.example.com/admp' END, \
             CASE WHEN i % 10 = 0 THEN 'whsec_bench' END, \
             '[]', $2, i % 3 != 0, 60000, 300000, $2, $2 FROM n",
        rusqlite::named_params! {"$1": agents as i64, "$2": now},
    )?;
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1), \
         m(i, at, state) AS (SELECT i, $3 - ($1 - i), CASE i % 20 WHEN 0 THEN 'dead' \
             WHEN 1 THEN 'expired' WHEN 2 THEN 'queued' WHEN 3 THEN 'queued' WHEN 4 THEN 'queued' \
             WHEN 5 THEN 'queued' ELSE 'acked' END FROM n) \
         INSERT INTO messages (id, recipient, sender, envelope, state, attempts, visible_at, \
             expires_at, created_at, updated_at, acked_at, ended_at, dead_reason, content_hash) \
         SELECT printf('msg-%09d', i), printf('agent-%06d', i % $2), 'agent-000001', \
             json_object('version', '1.0', 'id', printf('msg-%09d', i), \
                 'from', 'agent://agent-000001', 'to', printf('agent://agent-%06d', i % $2), \
                 'subject', 'bench', 'body', json_object('n', i)), \
             state, CASE state WHEN 'dead' THEN 10 ELSE 0 END, at, at + 86400000, at, at, \
             CASE state WHEN 'acked' THEN at END, \
             CASE WHEN state != 'queued' THEN at END, \
             CASE state WHEN 'dead' THEN 'max_attempts' END, 'bench' FROM m",
        rusqlite::named_params! {"$1": messages as i64, "$2": agents as i64, "$3": now},
    )?;
    Ok(())
}
