//! `admp bench`: a load benchmark that drives a hub over HTTP exactly as real
//! agents do (client-held Ed25519 keys, signed envelopes, HTTP signatures or
//! session tokens) and reports throughput, latency percentiles, errors and the
//! server's resident memory. Every loop is bounded in count and in time.

mod console;
mod hub;
pub mod scenarios;
pub mod stats;
mod stream;

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::json;

pub use hub::{SpawnOptions, Target};
pub use stats::Report;

/// Storage backend of a hub the benchmark starts itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Memory,
    Sqlite,
    Postgres,
}

impl Backend {
    /// The `--storage-backend` value of `admp serve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Register agents with client-held keys.
    Register,
    /// Signed sends to the benchmark's agents.
    Send,
    /// Fill the inboxes, then pull and ack until every one is empty.
    Drain,
    /// Senders and consumers at once.
    Mixed,
    /// Fill one inbox to each `--depths` value and time pull+ack cycles there.
    Depth,
    /// Idle long-pollers; time from a send to the poller's wake-up.
    Longpoll,
    /// Signed posts to one group of `--members` agents: posts/s, member copies/s, post latency.
    Fanout,
    /// Inbox streams (SSE) with batch acks: a backlog drained, senders at
    /// full speed, end-to-end latency at a steady 1000 msg/s, and the hub's
    /// memory with `--pollers` idle streams open.
    Stream,
    /// Every scenario, the drain in each auth mode (signature, session, batch).
    All,
    /// Operator console render times over a store filled in process with
    /// `--agents` agents and `--messages` messages (not part of `all`).
    Console,
}

/// How consumers authenticate their pulls and acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Auth {
    /// An Ed25519 HTTP signature on every request.
    Signature,
    /// One signed `POST …/session`, then a bearer token.
    Session,
}

/// `admp bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Hub to drive; when absent the benchmark starts `admp serve` itself
    /// (port 0, rate limits off) and stops it at the end.
    #[arg(long)]
    pub url: Option<String>,
    /// PID of the `--url` hub, to report its resident memory.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Backend of the hub the benchmark starts (without `--url`).
    #[arg(long, value_enum, default_value_t = Backend::Memory, conflicts_with = "url")]
    pub backend: Backend,
    /// PostgreSQL database for `--backend postgres`; the run creates a schema
    /// of its own there and drops it afterwards, leaving the database as it was.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    pub postgres_url: String,
    /// `depth` on a spawned PostgreSQL hub: fill the inbox with one SQL
    /// `INSERT … SELECT generate_series` per 100 000 messages instead of
    /// signed sends (1M sends take ~20 min here); the timed pull+ack cycles
    /// still go through HTTP.
    #[arg(long)]
    pub sql_fill: bool,
    /// Hub instances the benchmark starts on one PostgreSQL schema
    /// (`--backend postgres`, no `--url`); agent `i` talks to instance
    /// `i mod N` for everything, so load spreads across them and every
    /// inbox is served by the instances its senders and consumer use.
    #[arg(long, default_value_t = 1, conflicts_with = "url")]
    pub instances: usize,
    /// Agents that send and receive (one inbox each).
    #[arg(long, default_value_t = 32)]
    pub agents: usize,
    /// Operations per scenario: messages for send/drain/mixed, agents for register.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Concurrent clients (requests in flight).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Upper bound on each timed phase, in seconds; a phase stops early when it is reached.
    #[arg(long, default_value_t = 120)]
    pub duration_sec: u64,
    /// Size of each message body's text, in bytes.
    #[arg(long, default_value_t = 200)]
    pub body_bytes: usize,
    /// Consumers (and senders, beside the envelope signature) use session tokens.
    #[arg(long)]
    pub session: bool,
    /// HTTP-signed requests also sign a fresh `x-request-nonce` (replay
    /// protection: one store write per request).
    #[arg(long)]
    pub nonce: bool,
    /// Pull up to this many messages per request and ack them in one batch (1 = single pull+ack).
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Inbox depths for the depth scenario.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    pub depths: Vec<u64>,
    /// Timed pull+ack cycles at each depth.
    #[arg(long, default_value_t = 500)]
    pub depth_cycles: u64,
    /// Upper bound on filling one depth level, in seconds (the row says which depth was reached).
    #[arg(long, default_value_t = 600)]
    pub fill_sec: u64,
    /// Idle long-pollers for the longpoll scenario.
    #[arg(long, default_value_t = 100)]
    pub pollers: usize,
    /// Sends whose wake-up latency the longpoll scenario times.
    #[arg(long, default_value_t = 200)]
    pub wakeups: u64,
    /// Members of the fanout scenario's group (the poster included).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// Rejects settings that would make a run meaningless or unbounded.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--agents", self.agents as u64),
            ("--messages", self.messages),
            ("--concurrency", self.concurrency as u64),
            ("--duration-sec", self.duration_sec),
            ("--depth-cycles", self.depth_cycles),
            ("--fill-sec", self.fill_sec),
            ("--pollers", self.pollers as u64),
            ("--wakeups", self.wakeups),
            ("--members", self.members as u64),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if !(1..=crate::hub::MAX_BATCH).contains(&self.batch) {
            return Err(format!(
                "--batch must be between 1 and {}",
                crate::hub::MAX_BATCH
            ));
        }
        if self.instances == 0 || self.instances > 16 {
            return Err("--instances must be between 1 and 16".into());
        }
        if self.instances > 1 && self.backend != Backend::Postgres {
            return Err(
                "--instances above 1 needs --backend postgres (one shared database)".into(),
            );
        }
        if self.depths.is_empty() || self.depths.contains(&0) {
            return Err("--depths needs at least one depth, each at least 1".into());
        }
        if self.concurrency > 10_000 || self.agents > 1_000_000 || self.pollers > 10_000 {
            return Err(
                "--concurrency and --pollers are capped at 10000, --agents at 1000000".into(),
            );
        }
        if self.members > crate::hub::MAX_GROUP_MEMBERS as usize {
            return Err(format!(
                "--members is capped at {} (max_members of a group)",
                crate::hub::MAX_GROUP_MEMBERS
            ));
        }
        if self.body_bytes > 1 << 20 {
            return Err("--body-bytes is capped at 1 MiB".into());
        }
        Ok(())
    }

    fn auth(&self) -> Auth {
        if self.session {
            Auth::Session
        } else {
            Auth::Signature
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_sec)
    }

    fn spawn_options(&self) -> SpawnOptions {
        let deepest = self.depths.iter().copied().max().unwrap_or(0);
        SpawnOptions {
            backend: self.backend,
            postgres_url: self.postgres_url.clone(),
            max_messages_per_agent: (deepest + self.depth_cycles + 1_000)
                .max(self.messages + 1_000),
            max_message_size_kb: (self.body_bytes as u64 / 1024 + 64).max(256),
            stream_max_total: (self.pollers + self.agents + 100) as u32,
        }
    }
}

/// Runs the requested scenarios and prints the table (or JSON).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    if args.scenario == Scenario::Console {
        return console::run(&args).await;
    }
    let plan = plan(&args);
    let mut reports = Vec::new();
    for step in &plan {
        let mut target = match &args.url {
            Some(url) => Target::existing(url, args.pid),
            // A fresh hub per step, so memory and queue contents do not carry over.
            None => Target::spawn(&args.spawn_options(), args.instances).await?,
        };
        target.sign_nonce = args.nonce;
        let outcome = scenarios::run_step(&target, &args, step).await;
        target.stop().await?;
        let rows = outcome?;
        if !args.json {
            if reports.is_empty() {
                print!("{}", stats::header());
            }
            for row in &rows {
                print!("{}", stats::row(row));
            }
        }
        reports.extend(rows);
    }
    if args.json {
        let out = json!({
            "target": args.url.clone().unwrap_or_else(|| format!("spawned admp serve ({})", args.backend.as_str())),
            "concurrency": args.concurrency,
            "agents": args.agents,
            "body_bytes": args.body_bytes,
            "results": reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// One scenario with its auth variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub scenario: Scenario,
    pub auth: Auth,
    pub batch: u64,
}

/// The steps a run performs: the one asked for, or for `all` every scenario
/// with the drain in its three variants (signature, session, session + batch 100).
pub fn plan(args: &BenchArgs) -> Vec<Step> {
    let step = |scenario, auth, batch| Step {
        scenario,
        auth,
        batch,
    };
    match args.scenario {
        Scenario::All => vec![
            step(Scenario::Register, Auth::Signature, 1),
            step(Scenario::Send, Auth::Signature, 1),
            step(Scenario::Send, Auth::Session, 1),
            step(Scenario::Drain, Auth::Signature, 1),
            step(Scenario::Drain, Auth::Session, 1),
            step(Scenario::Drain, Auth::Session, crate::hub::MAX_BATCH),
            step(Scenario::Mixed, args.auth(), args.batch),
            step(Scenario::Depth, args.auth(), 1),
            step(Scenario::Longpoll, args.auth(), 1),
        ],
        scenario => vec![step(scenario, args.auth(), args.batch)],
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(argv: &[&str]) -> Result<BenchArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn defaults_are_valid() {
        let args = parse(&[]).expect("defaults parse");
        assert_eq!(args.validate(), Ok(()));
        assert_eq!(args.depths, vec![1_000, 10_000, 100_000, 1_000_000]);
        assert_eq!(args.concurrency, 32);
        assert!(args.url.is_none());
    }

    #[test]
    fn rejects_zero_and_out_of_range_values() {
        for argv in [
            &["--concurrency", "0"][..],
            &["--messages", "0"],
            &["--agents", "0"],
            &["--duration-sec", "0"],
            &["--batch", "0"],
            &["--batch", "101"],
            &["--depths", "1000,0"],
        ] {
            let args = parse(argv).expect("parses");
            assert!(args.validate().is_err(), "{argv:?} must be refused");
        }
    }

    #[test]
    fn pid_needs_url_and_backend_conflicts_with_url() {
        assert!(parse(&["--pid", "1"]).is_err());
        assert!(parse(&["--url", "http://h", "--backend", "sqlite"]).is_err());
        let args = parse(&["--url", "http://h", "--pid", "7"]).expect("parses");
        assert_eq!(args.pid, Some(7));
    }

    #[test]
    fn all_runs_every_scenario_and_three_drains() {
        let args = parse(&[]).expect("parses");
        let steps = plan(&args);
        let drains: Vec<_> = steps
            .iter()
            .filter(|s| s.scenario == Scenario::Drain)
            .map(|s| (s.auth, s.batch))
            .collect();
        assert_eq!(
            drains,
            vec![
                (Auth::Signature, 1),
                (Auth::Session, 1),
                (Auth::Session, 100)
            ]
        );
        for scenario in [
            Scenario::Register,
            Scenario::Send,
            Scenario::Mixed,
            Scenario::Depth,
            Scenario::Longpoll,
        ] {
            assert!(steps.iter().any(|s| s.scenario == scenario), "{scenario:?}");
        }
        let one = parse(&["--scenario", "drain", "--session", "--batch", "10"]).expect("parses");
        assert_eq!(
            plan(&one),
            vec![Step {
                scenario: Scenario::Drain,
                auth: Auth::Session,
                batch: 10
            }]
        );
    }

    #[test]
    fn spawned_hub_quota_fits_the_deepest_inbox() {
        let args = parse(&["--depths", "5000", "--messages", "100"]).expect("parses");
        assert!(args.spawn_options().max_messages_per_agent >= 5_000 + args.depth_cycles);
    }
}
