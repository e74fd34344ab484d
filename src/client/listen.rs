//! `admp listen`: follows an agent's inbox stream, handles each message
//! (prints it as one JSON line, or runs a command with it on stdin), settles
//! it, and reconnects with `Last-Event-ID` and backoff whenever the stream
//! breaks, so a hub restart or a move to another instance loses nothing.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::AgentClient;
use super::sse::{SseItem, SseReader};

/// First pause before a reconnect; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What `admp listen` does with each message.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Unsettled messages the stream may hold (1..=100).
    pub max_in_flight: u64,
    /// Run this through `sh -c` per message (message JSON on stdin): exit 0
    /// acks, anything else nacks. Without it the message is printed and acked.
    pub exec: Option<String>,
}

/// Listens until an error that retrying cannot fix (bad credentials, agent
/// deleted); returns it.
pub async fn listen(client: &AgentClient, options: &ListenOptions) -> anyhow::Result<()> {
    let mut last_event_id: Option<String> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        follow(client, options, &mut last_event_id, &mut backoff).await?;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: opens the stream and handles its events until it ends;
/// `Ok` means "reconnect" (connection lost, hub shutting down or busy).
async fn follow(
    client: &AgentClient,
    options: &ListenOptions,
    last_event_id: &mut Option<String>,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let query = format!("max_in_flight={}", options.max_in_flight);
    let response = match client.stream(&query, last_event_id.as_deref()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("admp listen: connecting: {e}; retrying");
            return Ok(());
        }
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        // Busy or failing hubs recover; refusals of this request do not.
        if status.as_u16() == 429 || status.is_server_error() {
            eprintln!("admp listen: {status} {body}; retrying");
            return Ok(());
        }
        anyhow::bail!("stream refused: {status} {body}");
    }
    let mut reader = SseReader::new(response);
    loop {
        let item = match reader.next().await {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(()),
            Err(e) => {
                eprintln!("admp listen: {e:#}; reconnecting");
                return Ok(());
            }
        };
        let SseItem::Event { event, id, data } = item else {
            continue;
        };
        if id.is_some() {
            *last_event_id = id;
        }
        match event.as_str() {
            "open" => *backoff = FIRST_BACKOFF,
            "message" => {
                let message: Value = serde_json::from_str(&data).context("message event data")?;
                handle(client, options, &message).await?;
            }
            "shutdown" => {
                *backoff = FIRST_BACKOFF;
                return Ok(());
            }
            "end" => anyhow::bail!("the hub ended the stream: {data}"),
            _ => {}
        }
    }
}

/// Handles one message and settles it.
async fn handle(
    client: &AgentClient,
    options: &ListenOptions,
    message: &Value,
) -> anyhow::Result<()> {
    let message_id = message["message_id"].as_str().unwrap_or_default();
    let lease_id = message["lease_id"].as_str();
    let ok = match &options.exec {
        None => {
            let mut stdout = tokio::io::stdout();
            stdout.write_all(format!("{message}\n").as_bytes()).await?;
            stdout.flush().await?;
            true
        }
        Some(command) => run(command, message).await,
    };
    let path = if ok {
        client.agent_path(&format!("messages/{}/ack", urlencoding::encode(message_id)))
    } else {
        client.agent_path(&format!(
            "messages/{}/nack",
            urlencoding::encode(message_id)
        ))
    };
    let body = json!({ "lease_id": lease_id });
    match client
        .request(Method::POST, &path, Some(&body))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {}
        // The lease was lost (ended, or taken over by a reconnect): the
        // message comes back through the stream; nothing to do here.
        Ok(r) => eprintln!("admp listen: settling {message_id}: {}", r.status()),
        Err(e) => eprintln!("admp listen: settling {message_id}: {e}"),
    }
    Ok(())
}

/// Runs `command` with the message on stdin; true when it exits 0.
async fn run(command: &str, message: &Value) -> bool {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env(
            "ADMP_MESSAGE_ID",
            message["message_id"].as_str().unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("admp listen: running {command}: {e}");
            return false;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not an error.
        let _ = stdin.write_all(format!("{message}\n").as_bytes()).await;
    }
    child.wait().await.is_ok_and(|status| status.success())
}
