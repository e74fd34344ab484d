//! Sweep benchmark of the Mech backend: how long one sweeper pass takes to
//! expire a backlog of messages when every Mech request costs a round trip.
//!
//! The Node server expired messages one sequential request at a time (the
//! review's "1000 messages ≈ 38 minutes"); this backend picks them from its
//! in-process index and writes `MECH_CONCURRENCY` at a time. The benchmark
//! seeds the Mech emulator (`tests/support/mech_emulator.rs`) with expired
//! messages, opens the store (the start-up scan), injects per-request latency
//! and times one real sweeper pass (`jobs::sweeper::sweep_once`):
//!
//! ```text
//! cargo run --release --example mech_sweep -- --concurrency 32
//! cargo run --release --example mech_sweep -- --concurrency 1
//! cargo run --release --example mech_sweep -- --concurrency 32 --max-ms 2000   # CI: fail above
//! ```

#[path = "../tests/support/mech_emulator.rs"]
mod mech_emulator;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admp::config::Config;
use admp::hub::{Clock, Hub};
use admp::jobs::sweeper::sweep_once;
use admp::store::mech::{AGENTS, MESSAGES, MechSettings, MechStore};
use admp::store::{Agent, AgentKey, Message, Store};
use clap::Parser;
use mech_emulator::{MechEmulator, Mode};
use serde_json::json;

/// Times one sweeper pass over expired messages stored in the Mech emulator.
#[derive(Parser)]
struct Args {
    /// `MECH_CONCURRENCY` of the store under test.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Expired messages to clean.
    #[arg(long, default_value_t = 1_000)]
    messages: usize,
    /// Inboxes the messages are spread over.
    #[arg(long, default_value_t = 10)]
    inboxes: usize,
    /// Latency the emulator adds to every request, in milliseconds.
    #[arg(long, default_value_t = 35)]
    latency_ms: u64,
    /// Exit non-zero if the pass takes longer than this (for CI).
    #[arg(long)]
    max_ms: Option<u64>,
}

fn agent(id: &str, now: i64) -> Agent {
    Agent {
        agent_id: id.into(),
        agent_type: "bench".into(),
        metadata: Default::default(),
        keys: vec![AgentKey {
            public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            version: 1,
            valid_until: None,
        }],
        webhook_url: None,
        webhook_secret: None,
        previous_webhook_secret: None,
        trusted_agents: Vec::new(),
        last_heartbeat: now,
        online: true,
        heartbeat_interval_ms: 60_000,
        heartbeat_timeout_ms: 3_600_000,
        created_at: now,
        updated_at: now,
    }
}

fn expired_message(id: &str, to: &str, now: i64) -> Message {
    // Sent two minutes ago with a one-minute TTL.
    Message {
        content_hash: format!("bench-{id}"),
        ..Message::queued(
            id.into(),
            to.into(),
            "bench-sender".into(),
            json!({ "id": id, "subject": "bench", "body": { "id": id } }).into(),
            now - 120_000,
            60_000,
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    // Live mode, with other applications' documents in the app as well.
    let emulator = MechEmulator::start_shared(Mode::Live).await;
    let clock = Clock::system();
    let now = clock.now_ms();
    let inboxes = args.inboxes.max(1);
    for i in 0..inboxes {
        let id = format!("inbox-{i:03}");
        emulator.insert(AGENTS, &id, serde_json::to_value(agent(&id, now))?);
    }
    for n in 0..args.messages {
        let id = format!("msg-{n:06}");
        let message = expired_message(&id, &format!("inbox-{:03}", n % inboxes), now);
        emulator.insert(MESSAGES, &id, json!({ "seq": n, "message": message }));
    }
    let config = Config {
        mech_concurrency: args.concurrency,
        ..emulator.config()
    };
    let store = Arc::new(
        MechStore::open(MechSettings::from_config(&config).map_err(anyhow::Error::msg)?).await?,
    );
    let hub = Hub::new(Arc::new(config), store.clone(), clock, Arc::default());

    emulator.set_latency(Duration::from_millis(args.latency_ms));
    let requests_before = emulator.requests();
    let started = Instant::now();
    let report = sweep_once(&hub).await?;
    let elapsed = started.elapsed();
    let requests = emulator.requests() - requests_before;
    let stats = store.stats().await?;
    store.close().await;

    println!(
        "mech sweep: {} expired messages over {} inboxes, {} ms latency per request, \
         MECH_CONCURRENCY={}: {:.2} s ({} requests)",
        report.expired,
        inboxes,
        args.latency_ms,
        args.concurrency,
        elapsed.as_secs_f64(),
        requests
    );
    anyhow::ensure!(
        report.expired as usize == args.messages
            && stats.messages.expired as usize == args.messages,
        "expected {} expired messages, the pass reported {} and the store holds {}",
        args.messages,
        report.expired,
        stats.messages.expired
    );
    if let Some(max_ms) = args.max_ms
        && elapsed > Duration::from_millis(max_ms)
    {
        eprintln!(
            "mech sweep took {} ms, above --max-ms {max_ms}",
            elapsed.as_millis()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
