//! The `admp` command line: `serve` (the default) and client commands that
//! keep each agent's key in `.admp/<agent>.json` so a person can try the hub
//! without hand-signing Ed25519 in curl.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AgentClient;
use super::transfer::{self, Location};
use crate::config::{Config, LogFormat};
use crate::signing::keys;

/// `admp`: the ADMP hub and its client.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Server settings when no subcommand is given (same as `admp serve`).
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the hub (the default).
    Serve(Box<Config>),
    /// Print a fresh Ed25519 key pair (base64), for clients that register with `public_key`.
    Keygen,
    /// Print docs/ERROR-CODES.md (generated from the code).
    ErrorCodes,
    /// Write every agent and message as NDJSON (from a running hub or a storage URL).
    Export {
        /// `http(s)://hub` (needs --api-key) or a storage URL (`sqlite://admp.db`, `postgres://…`).
        #[arg(long)]
        from: String,
        /// The hub's master key, for `--from http(s)://…`.
        #[arg(long, env = "MASTER_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Output file (stdout when absent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Load an NDJSON export into a storage URL (idempotent; verifies counts).
    Import {
        /// Storage URL to import into.
        #[arg(long)]
        to: String,
        /// Input file (stdin when absent).
        #[arg(long = "in")]
        input: Option<PathBuf>,
        /// Import into a target that already holds data.
        #[arg(long)]
        merge: bool,
    },
    /// Export from one place and import into another in one step.
    Migrate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, env = "MASTER_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        #[arg(long)]
        merge: bool,
    },
    /// Probe a hub's `/health`: exit 0 on 200, 1 otherwise (the Docker
    /// `HEALTHCHECK`; no curl needed in the image).
    Healthcheck(HealthcheckArgs),
    /// Load benchmark: drives a hub (its own `admp serve` unless `--url`) like real agents.
    Bench(Box<crate::bench::BenchArgs>),
    /// Agent management.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Groups: create, join, leave, post, members, history (GROUPS.md).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Send a signed message.
    Send {
        /// Sending agent (its key is read from the key directory).
        #[arg(long = "as")]
        as_agent: String,
        /// Recipient agent id.
        #[arg(long)]
        to: String,
        #[arg(long)]
        subject: String,
        /// JSON body.
        #[arg(long, default_value = "{}")]
        body: String,
    },
    /// Pull (lease) the next message.
    Pull {
        #[arg(long = "as")]
        as_agent: String,
        /// Long-poll up to this many seconds.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Acknowledge a leased message.
    Ack {
        #[arg(long = "as")]
        as_agent: String,
        message_id: String,
        #[arg(long)]
        lease_id: Option<String>,
    },
    /// Follow the inbox stream: print each message as one JSON line and ack
    /// it (or run `--exec` per message); reconnects with `Last-Event-ID`.
    Listen {
        #[arg(long = "as")]
        as_agent: String,
        /// Unsettled messages the stream may hold at once.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100))]
        max_in_flight: u64,
        /// Run this shell command per message, the message JSON on stdin
        /// (`ADMP_MESSAGE_ID` in its environment): exit 0 acks, else nacks.
        #[arg(long)]
        exec: Option<String>,
    },
    /// Show a message's status (as its sender or recipient).
    Status {
        #[arg(long = "as")]
        as_agent: String,
        message_id: String,
    },
    /// Serve one agent's inbox to an MCP client over stdio (docs/MCP.md).
    Mcp(crate::mcp::McpArgs),
}

/// `admp healthcheck` options.
#[derive(Args)]
struct HealthcheckArgs {
    /// URL to probe [default: http://127.0.0.1:$PORT/health].
    #[arg(long)]
    url: Option<String>,
    /// Port of the local hub when `--url` is absent (the hub's own `PORT`).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Give up after this many milliseconds (connect and response).
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    timeout_ms: u64,
}

impl HealthcheckArgs {
    fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}/health", self.port))
    }
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Register an agent; its secret key stays in the key directory.
    Register {
        /// Hub base URL.
        #[arg(long, env = "ADMP_HUB", default_value = "http://127.0.0.1:8080")]
        hub: String,
        /// Agent id (generated when absent).
        #[arg(long)]
        id: Option<String>,
    },
    /// Show the agent's record.
    Show {
        #[arg(long = "as")]
        as_agent: String,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group; the agent becomes its owner. Prints the group (with its id).
    Create {
        #[arg(long = "as")]
        as_agent: String,
        #[arg(long)]
        name: String,
        /// `open`, `invite-only` or `key-protected`.
        #[arg(long, default_value = "open")]
        access: String,
        /// Join key of a key-protected group.
        #[arg(long)]
        join_key: Option<String>,
        #[arg(long)]
        max_members: Option<u64>,
        /// History TTL in seconds.
        #[arg(long)]
        message_ttl_sec: Option<u64>,
    },
    /// Join a group (with its key when key-protected).
    Join {
        #[arg(long = "as")]
        as_agent: String,
        group_id: String,
        #[arg(long)]
        key: Option<String>,
    },
    /// Leave a group.
    Leave {
        #[arg(long = "as")]
        as_agent: String,
        group_id: String,
    },
    /// Post a signed message to every other member.
    Post {
        #[arg(long = "as")]
        as_agent: String,
        group_id: String,
        #[arg(long)]
        subject: String,
        /// JSON body.
        #[arg(long, default_value = "{}")]
        body: String,
    },
    /// List the members.
    Members {
        #[arg(long = "as")]
        as_agent: String,
        group_id: String,
    },
    /// Show the history, newest first.
    History {
        #[arg(long = "as")]
        as_agent: String,
        group_id: String,
        #[arg(long)]
        limit: Option<u64>,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        before: Option<String>,
    },
}

/// What the key directory keeps per agent.
#[derive(Serialize, Deserialize)]
struct SavedAgent {
    hub: String,
    agent_id: String,
    /// tweetnacl-format secret key, base64.
    secret_key: String,
}

/// Where agent keys live: `$ADMP_HOME` or `./.admp`.
fn key_dir() -> PathBuf {
    std::env::var_os("ADMP_HOME").map_or_else(|| PathBuf::from(".admp"), PathBuf::from)
}

fn load_agent(agent_id: &str) -> anyhow::Result<AgentClient> {
    load_agent_from(&key_dir(), agent_id)
}

fn save_agent(client: &AgentClient) -> anyhow::Result<PathBuf> {
    save_agent_in(&key_dir(), client)
}

/// The key file of `agent_id` in the key directory `dir`.
pub fn key_file(dir: &Path, agent_id: &str) -> PathBuf {
    dir.join(format!("{agent_id}.json"))
}

/// A client for an agent whose key the CLI saved in `dir` (its hub from the file).
pub fn load_agent_from(dir: &Path, agent_id: &str) -> anyhow::Result<AgentClient> {
    let path = key_file(dir, agent_id);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (register the agent first)", path.display()))?;
    let saved: SavedAgent = serde_json::from_str(&text)?;
    let key = keys::decode_secret_key(&saved.secret_key).context("secret key in key file")?;
    Ok(AgentClient::new(
        reqwest::Client::new(),
        &saved.hub,
        &saved.agent_id,
        key,
    ))
}

/// Saves an agent's hub, id and secret key in `dir`, readable by the owner only.
pub fn save_agent_in(dir: &Path, client: &AgentClient) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = key_file(dir, &client.agent_id);
    let saved = SavedAgent {
        hub: client.base.clone(),
        agent_id: client.agent_id.clone(),
        secret_key: keys::encode_secret_key(&client.key),
    };
    std::fs::write(&path, serde_json::to_string_pretty(&saved)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Serve(config)) => serve(*config).await,
            Some(command) => client_command(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    init_tracing(config.log_format);
    config.resolve_secret_files().map_err(anyhow::Error::msg)?;
    config.validate().map_err(anyhow::Error::msg)?;
    crate::server::serve(config).await
}

/// JSON or human logs, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

async fn client_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => unreachable!("handled by run"),
        Command::ErrorCodes => print!("{}", crate::api::error::error_codes_markdown()),
        Command::Export { from, api_key, out } => {
            let lines = transfer::read_export(&Location::parse(&from), api_key.as_deref()).await?;
            transfer::write_export(&lines, out.as_deref())?;
            eprintln!("exported {} records", lines.len().saturating_sub(2));
        }
        Command::Import { to, input, merge } => {
            let lines = transfer::read_file(input.as_deref())?;
            let report = transfer::import_into(&to, lines, merge).await?;
            print_json(&serde_json::to_value(report)?);
        }
        Command::Migrate {
            from,
            to,
            api_key,
            merge,
        } => {
            let lines = transfer::read_export(&Location::parse(&from), api_key.as_deref()).await?;
            let report = transfer::import_into(&to, lines, merge).await?;
            print_json(&serde_json::to_value(report)?);
        }
        Command::Healthcheck(args) => healthcheck(&args).await?,
        Command::Bench(args) => crate::bench::run(*args).await?,
        Command::Keygen => {
            let key = keys::generate();
            print_json(&json!({
                "public_key": keys::encode_public_key(&key.verifying_key()),
                "secret_key": keys::encode_secret_key(&key),
            }));
        }
        Command::Agent(AgentCommand::Register { hub, id }) => {
            let client = AgentClient::register(reqwest::Client::new(), &hub, id.as_deref()).await?;
            let path = save_agent(&client)?;
            print_json(&json!({
                "agent_id": client.agent_id,
                "public_key": keys::encode_public_key(&client.key.verifying_key()),
                "key_file": path.display().to_string(),
            }));
        }
        Command::Agent(AgentCommand::Show { as_agent }) => {
            let client = load_agent(&as_agent)?;
            let response = client
                .request(Method::GET, &client.agent_path(""), None)
                .send()
                .await?;
            print_response(response).await?;
        }
        Command::Group(command) => group_command(command).await?,
        Command::Send {
            as_agent,
            to,
            subject,
            body,
        } => {
            let client = load_agent(&as_agent)?;
            let body: Value = serde_json::from_str(&body).context("--body must be JSON")?;
            let envelope = client.envelope(&to, &subject, body);
            print_response(client.send(&to, &envelope).await?).await?;
        }
        Command::Pull { as_agent, wait } => {
            let client = load_agent(&as_agent)?;
            let response = client.pull(&json!({ "wait_sec": wait })).await?;
            if response.status() == reqwest::StatusCode::NO_CONTENT {
                println!("(inbox empty)");
                return Ok(());
            }
            print_response(response).await?;
        }
        Command::Ack {
            as_agent,
            message_id,
            lease_id,
        } => {
            let client = load_agent(&as_agent)?;
            print_response(client.ack(&message_id, lease_id.as_deref()).await?).await?;
        }
        Command::Listen {
            as_agent,
            max_in_flight,
            exec,
        } => {
            let options = super::listen::ListenOptions {
                max_in_flight,
                exec,
            };
            super::listen::listen(&load_agent(&as_agent)?, &options).await?;
        }
        Command::Mcp(args) => crate::mcp::run(args).await?,
        Command::Status {
            as_agent,
            message_id,
        } => {
            let client = load_agent(&as_agent)?;
            let path = format!("/api/messages/{}/status", urlencoding::encode(&message_id));
            print_response(client.request(Method::GET, &path, None).send().await?).await?;
        }
    }
    Ok(())
}

async fn group_command(command: GroupCommand) -> anyhow::Result<()> {
    let response = match command {
        GroupCommand::Create {
            as_agent,
            name,
            access,
            join_key,
            max_members,
            message_ttl_sec,
        } => {
            let mut settings = serde_json::Map::new();
            if let Some(n) = max_members {
                settings.insert("max_members".into(), json!(n));
            }
            if let Some(t) = message_ttl_sec {
                settings.insert("message_ttl_sec".into(), json!(t));
            }
            let mut access = json!({ "type": access });
            if let Some(key) = join_key {
                access["join_key"] = json!(key);
            }
            let body = json!({ "name": name, "access": access, "settings": settings });
            load_agent(&as_agent)?.create_group(&body).await?
        }
        GroupCommand::Join {
            as_agent,
            group_id,
            key,
        } => {
            load_agent(&as_agent)?
                .join_group(&group_id, key.as_deref())
                .await?
        }
        GroupCommand::Leave { as_agent, group_id } => {
            load_agent(&as_agent)?.leave_group(&group_id).await?
        }
        GroupCommand::Post {
            as_agent,
            group_id,
            subject,
            body,
        } => {
            let client = load_agent(&as_agent)?;
            let body: Value = serde_json::from_str(&body).context("--body must be JSON")?;
            let envelope = client.group_envelope(&group_id, &subject, body);
            client.post_group(&group_id, &envelope).await?
        }
        GroupCommand::Members { as_agent, group_id } => {
            load_agent(&as_agent)?.group_members(&group_id).await?
        }
        GroupCommand::History {
            as_agent,
            group_id,
            limit,
            before,
        } => {
            load_agent(&as_agent)?
                .group_history(&group_id, limit, before.as_deref())
                .await?
        }
    };
    print_response(response).await
}

/// GETs the health URL once; `Ok` only on exactly 200. Proxies from the
/// environment and redirects are ignored: the probe is about this hub.
async fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let url = args.url();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(args.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    anyhow::ensure!(
        status == reqwest::StatusCode::OK,
        "GET {url} answered {status}"
    );
    println!("healthy: GET {url} answered {status}");
    Ok(())
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

async fn print_response(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    print_json(&body);
    anyhow::ensure!(status.is_success(), "hub answered {status}");
    Ok(())
}
