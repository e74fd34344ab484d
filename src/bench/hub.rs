//! The hub a benchmark drives: an existing one (`--url`, `--pid`) or a fresh
//! `admp serve` child started from this very executable on a free port with
//! rate limits off, so `admp bench` is one self-contained command.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::Backend;
use crate::store::scratch::ScratchSchema;

/// How long a spawned hub may take to log its address (PostgreSQL migrations included).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a spawned hub may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The log line that carries the bound address.
const LISTENING: &str = "admp hub listening";

/// Where the benchmark sends its requests and whose memory it reads.
pub struct Target {
    /// Base URL without trailing slash.
    pub url: String,
    /// Base URLs of every instance (`url` first); more than one with `--instances`.
    pub urls: Vec<String>,
    /// Server process, for its resident memory.
    pub pid: Option<u32>,
    /// Set when this benchmark started the hub and must stop it.
    spawned: Option<Spawned>,
    /// Agents sign a fresh `x-request-nonce` on every HTTP-signed request (`--nonce`).
    pub sign_nonce: bool,
    /// The spawned PostgreSQL hub's `DATABASE_URL` (its own schema), for
    /// filling an inbox with SQL (`depth --sql-fill`).
    pub database_url: Option<String>,
}

struct Spawned {
    child: Child,
    /// Further instances on the same database (`--instances`), stopped first.
    others: Vec<Child>,
    /// SQLite files to delete after the run.
    files: Vec<PathBuf>,
    /// The PostgreSQL schema the run's tables live in, dropped after it.
    schema: Option<ScratchSchema>,
}

/// What a spawned hub is configured with.
pub struct SpawnOptions {
    pub backend: Backend,
    /// PostgreSQL database for `Backend::Postgres`; the run creates a schema
    /// of its own there and drops it afterwards.
    pub postgres_url: String,
    /// Inbox quota; the depth scenario needs more than the default 10 000.
    pub max_messages_per_agent: u64,
    /// Largest envelope the hub accepts, in KiB (at least the body size).
    pub max_message_size_kb: u64,
    /// `STREAM_MAX_TOTAL`: room for every stream the run opens.
    pub stream_max_total: u32,
}

impl Target {
    /// A hub someone else runs.
    pub fn existing(url: &str, pid: Option<u32>) -> Self {
        let url = url.trim_end_matches('/').to_string();
        Target {
            urls: vec![url.clone()],
            url,
            pid,
            spawned: None,
            sign_nonce: false,
            database_url: None,
        }
    }

    /// Starts `instances` × `admp serve` on 127.0.0.1 port 0 (the OS picks
    /// free ports), on one database, rate limits off, and waits for each
    /// one's address in its log.
    pub async fn spawn(options: &SpawnOptions, instances: usize) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        let mut schema = None;
        let database_url = match options.backend {
            Backend::Memory => "memory://".to_string(),
            Backend::Sqlite => {
                let path = std::env::temp_dir()
                    .join(format!("admp-bench-{}.db", uuid::Uuid::new_v4().simple()));
                for suffix in ["", "-wal", "-shm"] {
                    files.push(PathBuf::from(format!("{}{suffix}", path.display())));
                }
                format!("sqlite://{}?mode=rwc", path.display())
            }
            Backend::Postgres => {
                let created = ScratchSchema::create(&options.postgres_url, "admp_bench")
                    .await
                    .with_context(|| format!("creating a schema in {}", options.postgres_url))?;
                let url = created.url();
                schema = Some(created);
                url
            }
        };
        let (child, url) = spawn_one(options, &database_url).await?;
        let sql_url = schema.is_some().then(|| database_url.clone());
        let mut urls = vec![url.clone()];
        let mut others = Vec::new();
        for _ in 1..instances {
            let (other, url) = spawn_one(options, &database_url).await?;
            others.push(other);
            urls.push(url);
        }
        Ok(Target {
            url,
            urls,
            pid: child.id(),
            spawned: Some(Spawned {
                child,
                others,
                files,
                schema,
            }),
            sign_nonce: false,
            database_url: sql_url,
        })
    }

    /// The database file of a SQLite hub this benchmark started (the depth
    /// scenario fills an inbox through it directly).
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.spawned.as_ref()?.files.first().map(PathBuf::as_path)
    }

    /// Resident memory of the server in MiB (Linux `/proc/PID/status` `VmRSS`).
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        parse_vm_rss_kib(&status).map(|kib| kib as f64 / 1024.0)
    }

    /// Stops a spawned hub and removes its temporary files; a no-op for an existing hub.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut spawned) = self.spawned.take() {
            for mut other in spawned.others {
                stop_child(&mut other).await?;
            }
            stop_child(&mut spawned.child).await?;
            for file in spawned.files {
                if let Err(e) = std::fs::remove_file(&file)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    eprintln!("warning: could not remove {}: {e}", file.display());
                }
            }
            if let Some(schema) = spawned.schema {
                let name = schema.name().to_string();
                schema
                    .drop_schema()
                    .await
                    .with_context(|| format!("dropping the benchmark schema {name}"))?;
            }
        }
        Ok(())
    }
}

/// Starts one `admp serve` on `database_url`; returns it and its base URL.
async fn spawn_one(options: &SpawnOptions, database_url: &str) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe().context("locating the admp executable")?;
    let mut child = Command::new(exe)
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--storage-backend", options.backend.as_str()])
        .args(["--database-url", database_url])
        .args(["--rate-limit-enabled", "false"])
        .args(["--api-key-required", "false", "--agent-auth", "signature"])
        .args(["--log-format", "json"])
        .arg("--max-messages-per-agent")
        .arg(options.max_messages_per_agent.to_string())
        .arg("--max-message-size-kb")
        .arg(options.max_message_size_kb.to_string())
        .arg("--stream-max-total")
        .arg(options.stream_max_total.to_string())
        .env("RUST_LOG", "warn,admp::server=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting admp serve")?;
    let stdout = child.stdout.take().context("hub stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = listening_addr(&line) {
                return Ok(addr);
            }
            eprintln!("hub: {line}");
        }
        anyhow::bail!("admp serve exited before listening")
    })
    .await
    .context("admp serve did not log its address in time")??;
    // Keep reading so the hub never blocks on a full pipe; warnings and errors go to stderr.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.contains(r#""level":"INFO""#) {
                eprintln!("hub: {line}");
            }
        }
    });
    Ok((child, format!("http://{addr}")))
}

/// SIGTERM (graceful: pools closed, WAL checkpointed), SIGKILL if it lingers.
async fn stop_child(child: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(STOP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        child.start_kill().context("stopping admp serve")?;
    }
    child.wait().await.context("waiting for admp serve")?;
    Ok(())
}

/// The `addr` field of the hub's JSON "listening" log line.
fn listening_addr(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != LISTENING {
        return None;
    }
    Some(fields.get("addr")?.as_str()?.to_string())
}

/// `VmRSS:   12345 kB` → 12345.
fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_from_the_listening_line() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"admp hub listening","addr":"127.0.0.1:40123","backend":"Memory"},"target":"admp::server"}"#;
        assert_eq!(listening_addr(line).as_deref(), Some("127.0.0.1:40123"));
        let other = r#"{"fields":{"message":"something else","addr":"x"}}"#;
        assert_eq!(listening_addr(other), None);
        assert_eq!(listening_addr("not json"), None);
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tadmp\nVmPeak:\t  9999 kB\nVmRSS:\t   40260 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(40_260));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        let me = Target::existing("http://127.0.0.1:1/", Some(std::process::id()));
        assert_eq!(me.url, "http://127.0.0.1:1");
        assert!(me.rss_mib().is_some_and(|mib| mib > 0.0));
    }
}
