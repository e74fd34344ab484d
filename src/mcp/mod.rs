//! `admp mcp`: one agent's inbox as Model Context Protocol tools over stdio.
//!
//! The server acts as exactly one agent, like the CLI: it reads the agent's
//! key from the key directory (or registers the agent), signs every request
//! and envelope itself and talks to the hub only over its public HTTP API.
//! Tools live in [`tools`], message rendering (with the sender's content
//! fenced off as untrusted) in [`render`], the `admp://inbox` resource and
//! its non-leasing watch in [`inbox`]. See docs/MCP.md.

pub mod hub;
pub mod inbox;
pub mod render;
pub mod tools;

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rmcp::ServiceExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::client::AgentClient;
use crate::client::cli::{key_file, load_agent_from, save_agent_in};

/// Longest a hub call may take: above the 20 s long-poll, with margin.
const HTTP_TIMEOUT: Duration = Duration::from_secs(45);

/// `admp mcp` options.
#[derive(Args, Debug)]
pub struct McpArgs {
    /// The agent this server acts as (its key is `<ADMP_HOME>/<agent>.json`).
    #[arg(long = "as")]
    pub as_agent: String,
    /// Hub base URL; overrides the one saved in the key file [default: the key file's, or http://127.0.0.1:8080 when registering].
    #[arg(long, env = "ADMP_HUB")]
    pub hub: Option<String>,
    /// Key directory [default: ./.admp].
    #[arg(long, env = "ADMP_HOME")]
    pub home: Option<PathBuf>,
    /// Register the agent (with a key generated here) when it has no key file yet.
    #[arg(long)]
    pub register: bool,
}

/// Runs the MCP server on stdin/stdout until the client closes stdin.
/// Logs go to stderr: stdout carries only MCP messages.
pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let client = connect(&args).await?;
    tracing::info!(agent = %client.agent_id, hub = %client.base, "admp mcp serving on stdio");
    let closed = CancellationToken::new();
    let server = tools::InboxServer::new(hub::HubLink::new(client), closed.clone());
    let stdin = Stdin {
        inner: tokio::io::stdin(),
        closed,
    };
    let service = server
        .serve((stdin, tokio::io::stdout()))
        .await
        .context("MCP handshake on stdio")?;
    service.waiting().await.context("MCP session")?;
    Ok(())
}

/// Stdin that cancels `closed` at end of input: a running subscription then
/// ends with the session at once, instead of holding the exit for the SDK's
/// drain timeout (during which MCP hosts may already send SIGTERM).
struct Stdin {
    inner: tokio::io::Stdin,
    closed: CancellationToken,
}

impl AsyncRead for Stdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.closed.cancel();
        }
        poll
    }
}

/// The agent's client: from its key file, or freshly registered with `--register`.
async fn connect(args: &McpArgs) -> anyhow::Result<AgentClient> {
    let dir = args.home.clone().unwrap_or_else(|| PathBuf::from(".admp"));
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut client = if key_file(&dir, &args.as_agent).exists() || !args.register {
        load_agent_from(&dir, &args.as_agent)?
    } else {
        let hub = args.hub.as_deref().unwrap_or("http://127.0.0.1:8080");
        let client = AgentClient::register(http.clone(), hub, Some(&args.as_agent))
            .await
            .with_context(|| format!("registering {} at {hub}", args.as_agent))?;
        save_agent_in(&dir, &client)?;
        client
    };
    client.http = http;
    if let Some(hub) = &args.hub {
        client.base = hub.trim_end_matches('/').to_string();
    }
    Ok(client)
}
