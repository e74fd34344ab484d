//! Every setting of the hub, built once at start from flags and environment
//! variables and validated there. Nothing reads the environment later, so
//! tests build configurations as plain values and run in parallel.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where messages and agents are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageBackend {
    /// Embedded SQLite file (`DATABASE_URL=sqlite://…`): survives restarts, one hub instance.
    Sqlite,
    /// PostgreSQL (`DATABASE_URL=postgres://…`): several hub instances on one database.
    Postgres,
    /// In-process maps; lost on exit.
    Memory,
    /// Mech Storage's HTTP NoSQL API (`MECH_*`): one hub instance only, since
    /// Mech has no conditional writes and the hub keeps the index in process.
    Mech,
}

/// Which generation of Mech's NoSQL request shapes the client sends (docs/STORAGE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MechApiDialect {
    /// The shapes a client checked against the live service uses: paths by
    /// `document_id` (`/nosql/documents/{id}`), create with `document_id`.
    Live,
    /// The older Node client's shapes: `/nosql/documents/key/{key}?collection_name=`,
    /// `/nosql/documents/{collection}/{key}`, create with `document_key`.
    Legacy,
}

/// SQLite's `synchronous` setting: what an acknowledged write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSynchronous {
    /// Sync the WAL on every commit: survives process crash and power loss.
    Full,
    /// Sync at checkpoints only: survives a process crash; a power loss may
    /// drop the last commits.
    Normal,
}

/// How agent-scoped routes authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AgentAuth {
    /// HTTP signature, session token or master key (the default).
    Signature,
    /// INSECURE: unauthenticated access as the Node server allowed, for clients that cannot sign.
    Legacy,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Hub configuration (`admp serve --help` lists every flag and its variable).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Port to listen on (0 lets the OS pick one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Storage backend.
    #[arg(long, env = "STORAGE_BACKEND", value_enum, default_value_t = StorageBackend::Sqlite)]
    pub storage_backend: StorageBackend,
    /// Database of the sqlite and postgres backends, e.g. `sqlite://admp.db?mode=rwc`
    /// (`mode=rwc` creates the file) or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Mech Storage server (the mech backend).
    #[arg(long, env = "MECH_BASE_URL", default_value = DEFAULT_MECH_BASE_URL)]
    pub mech_base_url: String,
    /// Mech application id (required by the mech backend).
    #[arg(long, env = "MECH_APP_ID")]
    pub mech_app_id: Option<String>,
    /// Mech API key (required by the mech backend).
    #[arg(long, env = "MECH_API_KEY", hide_env_values = true)]
    pub mech_api_key: Option<String>,
    /// File holding the Mech API key; excludes `MECH_API_KEY`.
    #[arg(long, env = "MECH_API_KEY_FILE")]
    pub mech_api_key_file: Option<PathBuf>,
    /// Mech API secret: with it the key and secret go as `X-Mech-API-Key` and
    /// `X-Mech-API-Secret`; without it the key alone goes as `X-API-Key`.
    #[arg(long, env = "MECH_API_SECRET", hide_env_values = true)]
    pub mech_api_secret: Option<String>,
    /// File holding the Mech API secret; excludes `MECH_API_SECRET`.
    #[arg(long, env = "MECH_API_SECRET_FILE")]
    pub mech_api_secret_file: Option<PathBuf>,
    /// Request shapes the Mech client sends: `live` (default) or `legacy`.
    #[arg(long, env = "MECH_API_DIALECT", value_enum, default_value_t = MechApiDialect::Live)]
    pub mech_api_dialect: MechApiDialect,
    /// Also send `X-App-ID` (off: the live service reportedly answers it with `TABLE_NOT_FOUND`).
    #[arg(long, env = "MECH_SEND_APP_ID_HEADER", default_value_t = false, action = clap::ArgAction::Set)]
    pub mech_send_app_id_header: bool,
    /// Age of the single-instance lock's last heartbeat after which another hub may take it over.
    #[arg(long, env = "MECH_LOCK_STALE_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(200..=3_600_000))]
    pub mech_lock_stale_ms: u64,
    /// Time one Mech request may take before it counts as failed and is retried.
    #[arg(long, env = "MECH_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub mech_timeout_ms: u64,
    /// Retries of one Mech request after a timeout, connection error, 5xx or 429 (never other 4xx).
    #[arg(long, env = "MECH_MAX_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub mech_max_retries: u32,
    /// First retry delay cap; each retry doubles it (full jitter: a random delay up to the cap).
    #[arg(long, env = "MECH_BACKOFF_BASE_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub mech_backoff_base_ms: u64,
    /// Largest retry delay, also the longest `Retry-After` the client waits for.
    #[arg(long, env = "MECH_BACKOFF_MAX_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub mech_backoff_max_ms: u64,
    /// Consecutive failed Mech operations that open the circuit breaker.
    #[arg(long, env = "MECH_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub mech_breaker_failures: u32,
    /// How long the open breaker answers 503 before letting one probe through.
    #[arg(long, env = "MECH_BREAKER_RESET_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub mech_breaker_reset_ms: u64,
    /// Mech requests bulk work (sweeps, start-up scan, batch acks) keeps in flight at once.
    #[arg(long, env = "MECH_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub mech_concurrency: u64,
    /// Largest document the mech backend writes, in KiB (checked before the call).
    #[arg(long, env = "MECH_MAX_DOCUMENT_KB", default_value_t = 1_024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub mech_max_document_kb: u64,
    /// Connection pool size (sqlite: readers beside the single writer).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    /// SQLite durability (see docs/STORAGE.md).
    #[arg(long, env = "SQLITE_SYNCHRONOUS", value_enum, default_value_t = SqliteSynchronous::Full)]
    pub sqlite_synchronous: SqliteSynchronous,
    /// Operator key: acts on any agent and calls admin routes.
    #[arg(long, env = "MASTER_API_KEY", hide_env_values = true)]
    pub master_api_key: Option<String>,
    /// File holding the operator key (Docker/Kubernetes secrets); excludes `MASTER_API_KEY`.
    #[arg(long, env = "MASTER_API_KEY_FILE")]
    pub master_api_key_file: Option<PathBuf>,
    /// The previous operator key, still accepted during a rotation overlap.
    #[arg(long, env = "MASTER_API_KEY_PREVIOUS", hide_env_values = true)]
    pub master_api_key_previous: Option<String>,
    /// File holding the previous operator key; excludes `MASTER_API_KEY_PREVIOUS`.
    #[arg(long, env = "MASTER_API_KEY_PREVIOUS_FILE")]
    pub master_api_key_previous_file: Option<PathBuf>,
    /// Require an API key or agent signature on every /api route except registration.
    #[arg(long, env = "API_KEY_REQUIRED", default_value_t = false, action = clap::ArgAction::Set)]
    pub api_key_required: bool,
    /// Agent route authentication mode.
    #[arg(long, env = "AGENT_AUTH", value_enum, default_value_t = AgentAuth::Signature)]
    pub agent_auth: AgentAuth,
    /// Allowed CORS origin(s), comma-separated, or `*`.
    #[arg(long, env = "CORS_ORIGIN", default_value = "*")]
    pub cors_origin: String,
    /// Default message time-to-live when the envelope has no `ttl_sec`.
    #[arg(long, env = "MESSAGE_TTL_SEC", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub message_ttl_sec: u64,
    /// Largest accepted envelope (request body), in KiB.
    #[arg(long, env = "MAX_MESSAGE_SIZE_KB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_message_size_kb: u64,
    /// Live (queued + leased) messages one inbox may hold.
    #[arg(long, env = "MAX_MESSAGES_PER_AGENT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_messages_per_agent: u64,
    /// Leases after which an unacked message is dead-lettered.
    #[arg(long, env = "MAX_DELIVERY_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_delivery_attempts: u32,
    /// Seconds between heartbeat comments on an inbox stream (keeps proxies
    /// from closing an idle stream; the stream also re-checks its agent then).
    #[arg(long, env = "STREAM_HEARTBEAT_SEC", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub stream_heartbeat_sec: u64,
    /// Concurrent inbox streams one agent may hold (429 TOO_MANY_STREAMS beyond).
    #[arg(long, env = "STREAM_MAX_PER_AGENT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub stream_max_per_agent: u32,
    /// Concurrent inbox streams one hub instance holds (429 TOO_MANY_STREAMS
    /// beyond): each is one open connection, so keep it under the file limit.
    #[arg(long, env = "STREAM_MAX_TOTAL", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stream_max_total: u32,
    /// How long acked, expired and dead records are kept.
    #[arg(long, env = "MESSAGE_RETENTION_SEC", default_value_t = 3_600)]
    pub message_retention_sec: u64,
    /// Heartbeat interval advertised to agents.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval_ms: u64,
    /// Silence after which an agent is marked offline.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_timeout_ms: u64,
    /// Interval of the background sweeper.
    #[arg(long, env = "CLEANUP_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub cleanup_interval_ms: u64,
    /// Records one sweep step handles at a time.
    #[arg(long, env = "SWEEP_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub sweep_batch_size: u64,
    /// How long a rotated-out key keeps verifying and a replaced webhook
    /// secret keeps signing next to the new one.
    #[arg(long, env = "KEY_ROTATION_OVERLAP_SEC", default_value_t = 86_400)]
    pub key_rotation_overlap_sec: u64,
    /// Sweep batches one step may run at the same time.
    #[arg(long, env = "SWEEP_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub sweep_concurrency: u64,
    /// Allow webhook targets on private, loopback and link-local addresses.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// Time a webhook receiver has to answer one attempt.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub webhook_timeout_ms: u64,
    /// Webhook attempts one hub instance makes at the same time.
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_concurrency: u64,
    /// How often the webhook worker looks for due retries and for deliveries
    /// scheduled by other instances (its own sends wake it at once).
    #[arg(long, env = "WEBHOOK_POLL_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub webhook_poll_interval_ms: u64,
    /// Delays before each webhook retry (PROTOCOL.md §6), jittered ±20 %.
    /// Not a flag: production always uses the protocol's schedule; tests pass
    /// a short one as a plain value instead of waiting minutes.
    #[arg(skip = default_webhook_retry_schedule())]
    pub webhook_retry_schedule: Vec<Duration>,
    /// Secret that signs session tokens; random per start when unset.
    #[arg(long, env = "SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,
    /// File holding the session secret; excludes `SESSION_SECRET`.
    #[arg(long, env = "SESSION_SECRET_FILE")]
    pub session_secret_file: Option<PathBuf>,
    /// Session token lifetime.
    #[arg(long, env = "SESSION_TTL_SEC", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub session_ttl_sec: u64,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Refuse requests over the rate limits below with 429 RATE_LIMITED.
    #[arg(long, env = "RATE_LIMIT_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub rate_limit_enabled: bool,
    /// Sustained requests per second of one agent (and of one IP for unauthenticated requests).
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_sec: u32,
    /// Requests one agent (or IP) may make at once before the per-second rate applies.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,
    /// Registrations per minute from one client IP (also the burst).
    #[arg(long, env = "REGISTER_RATE_LIMIT_PER_MIN", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub register_rate_limit_per_min: u32,
    /// Take the client IP from the last `X-Forwarded-For` entry (only behind a proxy that sets it).
    #[arg(long, env = "TRUST_PROXY", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_proxy: bool,
    /// Require the master key on `/metrics` (open by default, like `/health`).
    #[arg(long, env = "METRICS_REQUIRE_KEY", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_require_key: bool,
    /// Serve the operator console at `/console` (docs/CONSOLE.md).
    #[arg(long, env = "CONSOLE_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub console_enabled: bool,
    /// A key that opens the console only (the master key opens it too).
    #[arg(long, env = "CONSOLE_API_KEY", hide_env_values = true)]
    pub console_api_key: Option<String>,
    /// File holding the console key; excludes `CONSOLE_API_KEY`.
    #[arg(long, env = "CONSOLE_API_KEY_FILE")]
    pub console_api_key_file: Option<PathBuf>,
    /// Console session lifetime.
    #[arg(long, env = "CONSOLE_SESSION_TTL_SEC", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub console_session_ttl_sec: u64,
    /// Mark the console cookie `Secure` even without `X-Forwarded-Proto: https`
    /// (set it when TLS ends at a proxy that does not send the header).
    #[arg(long, env = "CONSOLE_SECURE_COOKIE", default_value_t = false, action = clap::ArgAction::Set)]
    pub console_secure_cookie: bool,

    // Security hardening (issue 12; SECURITY.md).
    /// Largest agent `metadata` (serialized JSON), in KiB, at registration and after a heartbeat merge.
    #[arg(long, env = "MAX_METADATA_KB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_024))]
    pub max_metadata_kb: u64,
    /// Failed authentications per minute from one client IP, and naming one agent, before 429.
    #[arg(long, env = "AUTH_FAILURE_LIMIT_PER_MIN", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failure_limit_per_min: u32,
    /// Webhook attempts one agent's receiver may have in flight at once (its share of `WEBHOOK_CONCURRENCY`).
    #[arg(long, env = "WEBHOOK_PER_AGENT_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_per_agent_concurrency: u32,
    /// File holding the hub's audit signing key (base64 Ed25519 seed); checkpoints are signed with it.
    #[arg(long, env = "AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<PathBuf>,
    /// The key read from `AUDIT_SIGNING_KEY_FILE` (never from the environment directly).
    #[arg(skip)]
    pub audit_signing_key: Option<String>,
    /// A signed checkpoint is appended after every this many audit events.
    #[arg(long, env = "AUDIT_CHECKPOINT_EVERY", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_checkpoint_every: u64,
}

/// Moves the content of `file` into `value` (see [`Config::resolve_secret_files`]).
fn resolve_secret_file(
    name: &str,
    value: &mut Option<String>,
    file: &mut Option<PathBuf>,
) -> Result<(), String> {
    let Some(path) = file.take() else {
        return Ok(());
    };
    if value.is_some() {
        return Err(format!(
            "both {name} and {name}_FILE are set; use one of them"
        ));
    }
    *value = Some(read_secret_file(name, &path)?);
    Ok(())
}

/// A secret file's content without its trailing newline; empty is an error.
fn read_secret_file(name: &str, path: &Path) -> Result<String, String> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| format!("{name}_FILE: cannot read {}: {e}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{name}_FILE: {} is empty", path.display()));
    }
    Ok(text)
}

/// Where the default backend keeps its data: `admp.db` in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://admp.db?mode=rwc";

/// Where the Mech backend finds Mech Storage unless `MECH_BASE_URL` says otherwise.
pub const DEFAULT_MECH_BASE_URL: &str = "https://storage.mechdna.net";

/// Allowed clock skew for envelope timestamps and HTTP `Date` headers.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Webhook retry delays of PROTOCOL.md §6 in seconds: 5 s, 30 s, 2 min,
/// 10 min, 30 min, 1 h, 2 h, 4 h; after the last one fails the delivery is failed.
pub const WEBHOOK_RETRY_SCHEDULE_SEC: [u64; 8] = [5, 30, 120, 600, 1_800, 3_600, 7_200, 14_400];

/// The protocol's retry schedule as durations.
pub fn default_webhook_retry_schedule() -> Vec<Duration> {
    WEBHOOK_RETRY_SCHEDULE_SEC
        .iter()
        .map(|&s| Duration::from_secs(s))
        .collect()
}

impl Default for Config {
    /// The documented defaults, as a starting point for tests and embedders
    /// (a unit test checks they match the flag defaults).
    fn default() -> Self {
        Config {
            port: 8080,
            host: IpAddr::from([0, 0, 0, 0]),
            storage_backend: StorageBackend::Sqlite,
            database_url: DEFAULT_DATABASE_URL.into(),
            mech_base_url: DEFAULT_MECH_BASE_URL.into(),
            mech_app_id: None,
            mech_api_key: None,
            mech_api_key_file: None,
            mech_api_secret: None,
            mech_api_secret_file: None,
            mech_api_dialect: MechApiDialect::Live,
            mech_send_app_id_header: false,
            mech_lock_stale_ms: 60_000,
            mech_timeout_ms: 5_000,
            mech_max_retries: 3,
            mech_backoff_base_ms: 100,
            mech_backoff_max_ms: 2_000,
            mech_breaker_failures: 5,
            mech_breaker_reset_ms: 30_000,
            mech_concurrency: 32,
            mech_max_document_kb: 1_024,
            database_max_connections: 10,
            sqlite_synchronous: SqliteSynchronous::Full,
            master_api_key: None,
            master_api_key_file: None,
            master_api_key_previous: None,
            master_api_key_previous_file: None,
            api_key_required: false,
            agent_auth: AgentAuth::Signature,
            cors_origin: "*".into(),
            message_ttl_sec: 86_400,
            max_message_size_kb: 256,
            max_messages_per_agent: 10_000,
            max_delivery_attempts: 10,
            stream_heartbeat_sec: 15,
            stream_max_per_agent: 4,
            stream_max_total: 1_000,
            message_retention_sec: 3_600,
            heartbeat_interval_ms: 60_000,
            heartbeat_timeout_ms: 300_000,
            cleanup_interval_ms: 60_000,
            sweep_batch_size: 500,
            key_rotation_overlap_sec: 86_400,
            sweep_concurrency: 16,
            webhook_allow_private: false,
            webhook_timeout_ms: 10_000,
            webhook_concurrency: 16,
            webhook_poll_interval_ms: 1_000,
            webhook_retry_schedule: default_webhook_retry_schedule(),
            session_secret: None,
            session_secret_file: None,
            session_ttl_sec: 900,
            log_format: LogFormat::Json,
            rate_limit_enabled: true,
            rate_limit_per_sec: 200,
            rate_limit_burst: 400,
            register_rate_limit_per_min: 60,
            trust_proxy: false,
            metrics_require_key: false,
            console_enabled: false,
            console_api_key: None,
            console_api_key_file: None,
            console_session_ttl_sec: 3_600,
            console_secure_cookie: false,
            max_metadata_kb: 16,
            auth_failure_limit_per_min: 30,
            webhook_per_agent_concurrency: 2,
            audit_signing_key_file: None,
            audit_signing_key: None,
            audit_checkpoint_every: 100,
        }
    }
}

impl Config {
    /// Reads the secrets given as files (`MASTER_API_KEY_FILE`,
    /// `MASTER_API_KEY_PREVIOUS_FILE`, `SESSION_SECRET_FILE`, `MECH_API_KEY_FILE`, `MECH_API_SECRET_FILE`) into their
    /// values, once, at start-up and before [`validate`](Self::validate).
    ///
    /// One trailing newline (`\n` or `\r\n`, as editors and `echo` add) is
    /// removed; nothing else is trimmed. Setting both a variable and its
    /// `_FILE` twin is an error naming both. A resolved file field is cleared,
    /// so calling this again is a no-op. Error messages name the variable and
    /// the path, never the content.
    pub fn resolve_secret_files(&mut self) -> Result<(), String> {
        resolve_secret_file(
            "MASTER_API_KEY",
            &mut self.master_api_key,
            &mut self.master_api_key_file,
        )?;
        resolve_secret_file(
            "MASTER_API_KEY_PREVIOUS",
            &mut self.master_api_key_previous,
            &mut self.master_api_key_previous_file,
        )?;
        resolve_secret_file(
            "SESSION_SECRET",
            &mut self.session_secret,
            &mut self.session_secret_file,
        )?;
        resolve_secret_file(
            "CONSOLE_API_KEY",
            &mut self.console_api_key,
            &mut self.console_api_key_file,
        )?;
        resolve_secret_file(
            "MECH_API_KEY",
            &mut self.mech_api_key,
            &mut self.mech_api_key_file,
        )?;
        resolve_secret_file(
            "MECH_API_SECRET",
            &mut self.mech_api_secret,
            &mut self.mech_api_secret_file,
        )?;
        resolve_secret_file(
            "AUDIT_SIGNING_KEY",
            &mut self.audit_signing_key,
            &mut self.audit_signing_key_file,
        )
    }

    /// Cross-field checks that clap cannot express; the message names the variable.
    pub fn validate(&self) -> Result<(), String> {
        for (name, file) in [
            ("MASTER_API_KEY_FILE", &self.master_api_key_file),
            (
                "MASTER_API_KEY_PREVIOUS_FILE",
                &self.master_api_key_previous_file,
            ),
            ("SESSION_SECRET_FILE", &self.session_secret_file),
            ("MECH_API_KEY_FILE", &self.mech_api_key_file),
            ("CONSOLE_API_KEY_FILE", &self.console_api_key_file),
            ("MECH_API_SECRET_FILE", &self.mech_api_secret_file),
            ("AUDIT_SIGNING_KEY_FILE", &self.audit_signing_key_file),
        ] {
            if file.is_some() {
                return Err(format!(
                    "{name} is set but was not read (call Config::resolve_secret_files first)"
                ));
            }
        }
        if let Some(key) = &self.master_api_key
            && key.len() < 16
        {
            return Err("MASTER_API_KEY must be at least 16 characters".into());
        }
        if let Some(key) = &self.master_api_key_previous {
            if self.master_api_key.is_none() {
                return Err("MASTER_API_KEY_PREVIOUS needs MASTER_API_KEY (the new key)".into());
            }
            if key.len() < 16 {
                return Err("MASTER_API_KEY_PREVIOUS must be at least 16 characters".into());
            }
        }
        if self.api_key_required && self.master_api_key.is_none() {
            return Err("API_KEY_REQUIRED=true needs MASTER_API_KEY".into());
        }
        let url = self.database_url.as_str();
        match self.storage_backend {
            StorageBackend::Sqlite if !url.starts_with("sqlite:") => {
                return Err(
                    "DATABASE_URL must be a sqlite:// URL when STORAGE_BACKEND=sqlite".into(),
                );
            }
            StorageBackend::Postgres
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
            {
                return Err(
                    "DATABASE_URL must be a postgres:// URL when STORAGE_BACKEND=postgres".into(),
                );
            }
            _ => {}
        }
        if self.storage_backend == StorageBackend::Mech {
            self.validate_mech()?;
        }
        if let Some(key) = &self.audit_signing_key
            && crate::signing::keys::decode_secret_key(key.trim()).is_none()
        {
            return Err(
                "AUDIT_SIGNING_KEY_FILE must hold a base64 Ed25519 secret key (32-byte seed or \
                 64-byte seed and public key; `admp keygen` prints one)"
                    .into(),
            );
        }
        if self.metrics_require_key && self.master_api_key.is_none() {
            return Err("METRICS_REQUIRE_KEY=true needs MASTER_API_KEY".into());
        }
        if let Some(key) = &self.console_api_key
            && key.len() < 16
        {
            return Err("CONSOLE_API_KEY must be at least 16 characters".into());
        }
        if self.console_enabled && self.master_api_key.is_none() && self.console_api_key.is_none() {
            return Err("CONSOLE_ENABLED=true needs MASTER_API_KEY or CONSOLE_API_KEY".into());
        }
        if let Some(secret) = &self.session_secret
            && secret.len() < 32
        {
            return Err("SESSION_SECRET must be at least 32 characters".into());
        }
        Ok(())
    }

    /// The Mech settings that need more than clap's range checks; the message names the variable.
    fn validate_mech(&self) -> Result<(), String> {
        let url = self.mech_base_url.trim_end_matches('/');
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or("MECH_BASE_URL must be an http:// or https:// URL")?;
        if host.is_empty() || host.contains(['?', '#', ' ']) {
            return Err("MECH_BASE_URL must be an http(s) URL without query or fragment".into());
        }
        match &self.mech_app_id {
            None => return Err("STORAGE_BACKEND=mech needs MECH_APP_ID".into()),
            Some(id)
                if id.is_empty()
                    || id.len() > 128
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
            {
                return Err(
                    "MECH_APP_ID must be 1-128 characters of letters, digits, '-', '_' or '.'"
                        .into(),
                );
            }
            Some(_) => {}
        }
        match &self.mech_api_key {
            None => {
                return Err(
                    "STORAGE_BACKEND=mech needs MECH_API_KEY (or MECH_API_KEY_FILE)".into(),
                );
            }
            Some(key) if key.is_empty() || key.chars().any(|c| c.is_control()) => {
                return Err("MECH_API_KEY must be non-empty and free of control characters".into());
            }
            Some(_) => {}
        }
        if let Some(secret) = &self.mech_api_secret
            && (secret.is_empty() || secret.chars().any(|c| c.is_control()))
        {
            return Err("MECH_API_SECRET must be non-empty and free of control characters".into());
        }
        if self.mech_backoff_base_ms > self.mech_backoff_max_ms {
            return Err("MECH_BACKOFF_BASE_MS must not exceed MECH_BACKOFF_MAX_MS".into());
        }
        if self.max_message_size_kb >= self.mech_max_document_kb {
            return Err(
                "MAX_MESSAGE_SIZE_KB must be below MECH_MAX_DOCUMENT_KB (a stored message is the \
                 envelope plus its delivery state)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Webhook attempt timeout.
    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }

    /// Largest accepted agent metadata in bytes (serialized JSON).
    pub fn max_metadata_bytes(&self) -> usize {
        (self.max_metadata_kb * 1024) as usize
    }

    /// Largest accepted request body in bytes.
    pub fn max_body_bytes(&self) -> usize {
        (self.max_message_size_kb * 1024) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    /// `Config::default()` and the flag defaults must never drift apart.
    #[test]
    fn default_matches_flag_defaults() {
        let command = Cli::command();
        let defaults = Config::default();
        let debug = format!("{defaults:?}");
        for arg in command.get_arguments() {
            let Some(value) = arg.get_default_values().first() else {
                continue;
            };
            let value = value.to_string_lossy().to_lowercase();
            let field = arg.get_id().as_str();
            let needle = format!("{field}: ");
            let at = debug
                .find(&needle)
                .unwrap_or_else(|| panic!("{field} missing"));
            let rest = &debug[at + needle.len()..];
            let shown = rest.split([',', ' ']).next().unwrap().trim_matches('"');
            let shown = shown.replace('_', "").to_lowercase();
            assert_eq!(shown, value.replace('_', ""), "default of {field}");
        }
    }

    #[test]
    fn validate_names_the_variable() {
        let config = Config {
            api_key_required: true,
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().contains("MASTER_API_KEY"));
        let config = Config {
            master_api_key: Some("short".into()),
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().contains("MASTER_API_KEY"));
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("admp-config-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, content: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn secret_files_are_read_without_their_trailing_newline() {
        let dir = TempDir::new();
        let mut config = Config {
            master_api_key_file: Some(dir.file("master", "master-key-0123456789\n")),
            master_api_key_previous_file: Some(
                dir.file("previous", "old-master-key-0123456789\r\n"),
            ),
            session_secret_file: Some(
                dir.file("session", "  a session secret, 32 chars or more  "),
            ),
            ..Config::default()
        };
        config.resolve_secret_files().unwrap();
        assert_eq!(
            config.master_api_key.as_deref(),
            Some("master-key-0123456789")
        );
        assert_eq!(
            config.master_api_key_previous.as_deref(),
            Some("old-master-key-0123456789")
        );
        // Only a trailing newline goes: other whitespace is part of the secret.
        assert_eq!(
            config.session_secret.as_deref(),
            Some("  a session secret, 32 chars or more  ")
        );
        assert!(config.master_api_key_file.is_none());
        config.validate().unwrap();
        // Resolving again is a no-op, not a "both set" error.
        config.resolve_secret_files().unwrap();
        assert_eq!(
            config.master_api_key.as_deref(),
            Some("master-key-0123456789")
        );
    }

    #[test]
    fn only_one_trailing_newline_is_removed() {
        let dir = TempDir::new();
        let mut config = Config {
            master_api_key_file: Some(dir.file("master", "master-key-0123456789\n\n")),
            ..Config::default()
        };
        config.resolve_secret_files().unwrap();
        assert_eq!(
            config.master_api_key.as_deref(),
            Some("master-key-0123456789\n")
        );
    }

    #[test]
    fn a_variable_and_its_file_together_are_an_error_naming_both() {
        let dir = TempDir::new();
        let mut config = Config {
            session_secret: Some("x".repeat(40)),
            session_secret_file: Some(dir.file("session", &"y".repeat(40))),
            ..Config::default()
        };
        let err = config.resolve_secret_files().unwrap_err();
        assert!(
            err.contains("SESSION_SECRET and SESSION_SECRET_FILE"),
            "{err}"
        );
        let mut config = Config {
            master_api_key: Some("master-key-0123456789".into()),
            master_api_key_file: Some(dir.file("master", "master-key-0123456789")),
            ..Config::default()
        };
        let err = config.resolve_secret_files().unwrap_err();
        assert!(
            err.contains("MASTER_API_KEY and MASTER_API_KEY_FILE"),
            "{err}"
        );
    }

    #[test]
    fn missing_or_empty_secret_files_are_errors_that_do_not_leak_content() {
        let dir = TempDir::new();
        let mut config = Config {
            master_api_key_file: Some(dir.0.join("absent")),
            ..Config::default()
        };
        let err = config.resolve_secret_files().unwrap_err();
        assert!(err.starts_with("MASTER_API_KEY_FILE: cannot read"), "{err}");
        let mut config = Config {
            session_secret_file: Some(dir.file("empty", "\n")),
            ..Config::default()
        };
        let err = config.resolve_secret_files().unwrap_err();
        assert!(
            err.contains("SESSION_SECRET_FILE") && err.contains("empty"),
            "{err}"
        );
        // A secret read from a file is validated like one from the variable,
        // and the message does not echo it.
        let mut config = Config {
            master_api_key_file: Some(dir.file("short", "tooshort\n")),
            ..Config::default()
        };
        config.resolve_secret_files().unwrap();
        let err = config.validate().unwrap_err();
        assert!(
            err.contains("MASTER_API_KEY") && !err.contains("tooshort"),
            "{err}"
        );
    }

    #[test]
    fn unresolved_secret_files_fail_validation() {
        let config = Config {
            master_api_key_file: Some(PathBuf::from("/run/secrets/master")),
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("MASTER_API_KEY_FILE")
        );
    }

    #[test]
    fn previous_master_key_needs_a_current_one_and_a_real_length() {
        let config = Config {
            master_api_key_previous: Some("old-master-key-0123456789".into()),
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("MASTER_API_KEY_PREVIOUS")
        );
        let config = Config {
            master_api_key: Some("new-master-key-0123456789".into()),
            master_api_key_previous: Some("short".into()),
            ..Config::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("MASTER_API_KEY_PREVIOUS")
        );
        let config = Config {
            master_api_key: Some("new-master-key-0123456789".into()),
            master_api_key_previous: Some("old-master-key-0123456789".into()),
            ..Config::default()
        };
        config.validate().unwrap();
    }

    #[test]
    fn mech_settings_are_checked_and_named() {
        let mech = Config {
            storage_backend: StorageBackend::Mech,
            mech_app_id: Some("app-1".into()),
            mech_api_key: Some("mech-key".into()),
            ..Config::default()
        };
        mech.validate().unwrap();
        let cases = [
            (
                Config {
                    mech_app_id: None,
                    ..mech.clone()
                },
                "MECH_APP_ID",
            ),
            (
                Config {
                    mech_app_id: Some("app/../x".into()),
                    ..mech.clone()
                },
                "MECH_APP_ID",
            ),
            (
                Config {
                    mech_api_key: None,
                    ..mech.clone()
                },
                "MECH_API_KEY",
            ),
            (
                Config {
                    mech_base_url: "storage.mechdna.net".into(),
                    ..mech.clone()
                },
                "MECH_BASE_URL",
            ),
            (
                Config {
                    mech_backoff_base_ms: 5_000,
                    ..mech.clone()
                },
                "MECH_BACKOFF_BASE_MS",
            ),
            (
                Config {
                    max_message_size_kb: 2_048,
                    ..mech.clone()
                },
                "MECH_MAX_DOCUMENT_KB",
            ),
        ];
        for (config, variable) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(variable), "{variable}: {err}");
        }
        // Other backends ignore the Mech settings.
        let sqlite = Config {
            mech_app_id: None,
            mech_base_url: "nonsense".into(),
            ..Config::default()
        };
        sqlite.validate().unwrap();
    }

    #[test]
    fn mech_api_key_file_is_read_like_the_other_secrets() {
        let dir = TempDir::new();
        let mut config = Config {
            storage_backend: StorageBackend::Mech,
            mech_app_id: Some("app".into()),
            mech_api_key_file: Some(dir.file("mech", "mech-secret\n")),
            ..Config::default()
        };
        config.resolve_secret_files().unwrap();
        assert_eq!(config.mech_api_key.as_deref(), Some("mech-secret"));
        config.validate().unwrap();
    }

    #[test]
    fn database_url_must_match_the_backend() {
        let config = Config {
            storage_backend: StorageBackend::Postgres,
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().contains("DATABASE_URL"));
        let config = Config {
            database_url: "postgres://localhost/admp".into(),
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().contains("DATABASE_URL"));
        let config = Config {
            storage_backend: StorageBackend::Memory,
            database_url: "postgres://localhost/admp".into(),
            ..Config::default()
        };
        assert!(config.validate().is_ok());
    }
}
