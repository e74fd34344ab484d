//! `admp bench --scenario stream`: consumers on inbox streams (SSE) acking
//! in batches. Four rows: a backlog drained through streams, the same with
//! senders at full speed (end-to-end latency: send start → event received),
//! a steady 1000 msg/s (the latency target), and `--pollers` idle streams
//! (the hub's resident-memory growth while they are open).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::scenarios::{
    Totals, WorkerOut, auth_name, body_of, fleet, ids, send_phase, with_sessions,
};
use super::stats::{Report, summarize};
use super::{Auth, BenchArgs, Target};
use crate::client::AgentClient;
use crate::client::sse::{SseItem, SseReader};

/// Unsettled messages each benchmark stream may hold (the route's maximum).
const MAX_IN_FLIGHT: u64 = 100;
/// The steady rate of the latency row, messages per second.
const STEADY_RATE: u64 = 1_000;
/// Messages of the latency row (five seconds at the steady rate).
const STEADY_MESSAGES: u64 = 5_000;

/// What the consumers share: acks done, when the last one completed, and
/// when each message was sent (by envelope id, which is the message id).
#[derive(Default)]
struct Progress {
    acked: AtomicU64,
    errors: AtomicU64,
    last_ack: Mutex<Option<Instant>>,
    sent_at: Mutex<HashMap<String, Instant>>,
    latency: Mutex<Vec<Duration>>,
    changed: Notify,
}

impl Progress {
    /// Waits until `goal` messages are acked or `deadline` passes.
    async fn wait_for(&self, goal: u64, deadline: Instant) {
        loop {
            let changed = self.changed.notified();
            if self.acked.load(Ordering::Relaxed) >= goal || Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline.into(), changed).await;
        }
    }
}

/// Opens `agent`'s stream and follows it until `stop`: each message event is
/// timed against its send and acked in batches (up to 100 per request, as
/// many as arrived while the previous batch was in flight).
async fn consume(
    agent: AgentClient,
    progress: Arc<Progress>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let response = agent
        .stream(&format!("max_in_flight={MAX_IN_FLIGHT}"), None)
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "stream refused: {}",
        response.status()
    );
    let mut reader = SseReader::new(response);
    // The `open` event: the stream is established.
    reader.next().await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Option<String>)>();
    let acker = {
        let (agent, progress) = (agent.clone(), progress.clone());
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < crate::hub::MAX_BATCH as usize {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let acks: Vec<(&str, Option<&str>)> = batch
                    .iter()
                    .map(|(m, l)| (m.as_str(), l.as_deref()))
                    .collect();
                let ok = match agent.ack_batch(&acks).await {
                    Ok(r) if r.status().is_success() => {
                        r.json::<Value>()
                            .await
                            .ok()
                            .and_then(|b| {
                                b["results"]
                                    .as_array()
                                    .map(|r| r.iter().filter(|e| e["ok"] == true).count())
                            })
                            .unwrap_or(0) as u64
                    }
                    _ => 0,
                };
                progress
                    .errors
                    .fetch_add(batch.len() as u64 - ok, Ordering::Relaxed);
                progress.acked.fetch_add(ok, Ordering::Relaxed);
                *progress.last_ack.lock() = Some(Instant::now());
                progress.changed.notify_waiters();
            }
        })
    };
    Ok(tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                () = stop.cancelled() => break,
                item = reader.next() => item,
            };
            let Ok(Some(SseItem::Event { event, data, .. })) = item else {
                break;
            };
            if event != "message" {
                continue;
            }
            let received = Instant::now();
            let Ok(m) = serde_json::from_str::<Value>(&data) else {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let id = m["message_id"].as_str().unwrap_or_default().to_string();
            if let Some(sent) = progress.sent_at.lock().remove(&id) {
                progress.latency.lock().push(received - sent);
            }
            let lease = m["lease_id"].as_str().map(str::to_string);
            let _ = tx.send((id, lease));
        }
        drop(tx);
        let _ = acker.await;
    }))
}

/// Opens one stream per agent.
async fn open_streams(
    agents: &[AgentClient],
    progress: &Arc<Progress>,
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(agents.len());
    for agent in agents {
        tasks.push(consume(agent.clone(), progress.clone(), stop.clone()).await?);
    }
    Ok(tasks)
}

/// A row from the shared progress, timed from `start` to the last ack.
fn row(name: String, progress: &Progress, start: Instant, goal: u64) -> Report {
    let acked = progress.acked.load(Ordering::Relaxed);
    let out = WorkerOut {
        ops: acked,
        errors: progress.errors.load(Ordering::Relaxed),
        latency: std::mem::take(&mut *progress.latency.lock()),
        ack_latency: Vec::new(),
        last: *progress.last_ack.lock(),
        leased: Vec::new(),
    };
    let mut report = Totals::merge(vec![out]).report(name, start);
    if acked < goal {
        report.note = Some(format!("{} of {goal} acked before the deadline", acked));
    }
    report
}

/// Sends `total` messages from `sender` round-robin to `recipients` at
/// `rate` per second (each send its own task, so a slow one does not hold
/// back the schedule), recording each send's start.
async fn paced_sends(
    sender: &AgentClient,
    recipients: &[String],
    total: u64,
    rate: u64,
    progress: &Arc<Progress>,
    body: &Value,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let failed = Arc::new(AtomicU64::new(0));
    let mut sends = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let to = recipients[(i % recipients.len() as u64) as usize].clone();
        let envelope = sender.envelope(&to, "bench", body.clone());
        let id = envelope["id"].as_str().unwrap_or_default().to_string();
        let (sender, progress, failed) = (sender.clone(), progress.clone(), failed.clone());
        sends.push(tokio::spawn(async move {
            progress.sent_at.lock().insert(id, Instant::now());
            match sender.send(&to, &envelope).await {
                Ok(r) if r.status() == StatusCode::CREATED => {}
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for send in sends {
        let _ = send.await;
    }
    failed.load(Ordering::Relaxed)
}

/// The four rows (see the module comment).
pub(super) async fn stream(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    auth: Auth,
) -> anyhow::Result<Vec<Report>> {
    let agents = fleet(http, target, args.agents, args.concurrency, auth).await?;
    let senders = with_sessions(&agents).await?;
    let recipients = ids(&agents);
    let body = body_of(args.body_bytes);
    let mut rows = Vec::new();
    let variant = format!("{}, {} streams, batch acks", auth_name(auth), agents.len());

    // 1. A backlog, drained through the streams.
    let fill_deadline = Instant::now() + Duration::from_secs(args.fill_sec);
    let filled = Totals::merge(
        send_phase(
            senders.clone(),
            recipients.clone(),
            args.messages,
            args.concurrency,
            fill_deadline,
            body.clone(),
        )
        .await?,
    );
    let progress = Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let start = Instant::now();
    let tasks = open_streams(&agents, &progress, &stop).await?;
    progress
        .wait_for(filled.ops, Instant::now() + args.duration())
        .await;
    rows.push(row(
        format!("stream drain of a backlog ({variant})"),
        &progress,
        start,
        filled.ops,
    ));
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }

    // 2. Senders at full speed while the streams deliver.
    let progress = Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = open_streams(&agents, &progress, &stop).await?;
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let deadline = start + args.duration();
    let mut send_tasks = Vec::new();
    for w in 0..args.concurrency {
        let (senders, recipients, next, body, progress) = (
            senders.clone(),
            recipients.clone(),
            next.clone(),
            body.clone(),
            progress.clone(),
        );
        let total = args.messages;
        send_tasks.push(tokio::spawn(async move {
            let sender = &senders[w % senders.len()];
            let mut sent = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    return sent;
                }
                let to = &recipients[(i % recipients.len() as u64) as usize];
                let envelope = sender.envelope(to, "bench", body.clone());
                let id = envelope["id"].as_str().unwrap_or_default().to_string();
                progress.sent_at.lock().insert(id, Instant::now());
                if let Ok(r) = sender.send(to, &envelope).await
                    && r.status() == StatusCode::CREATED
                {
                    sent += 1;
                }
            }
        }));
    }
    let mut sent = 0;
    for task in send_tasks {
        sent += task.await.unwrap_or(0);
    }
    progress.wait_for(sent, deadline).await;
    let mut report = row(
        format!("stream drain, senders at full speed ({variant})"),
        &progress,
        start,
        sent,
    );
    report.note.get_or_insert_with(|| {
        format!("latency: send start → event received; sends {:.0}/s", {
            sent as f64 / start.elapsed().as_secs_f64().max(1e-9)
        })
    });
    rows.push(report);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }

    // 3. A steady 1000 msg/s: end-to-end latency.
    let progress = Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = open_streams(&agents, &progress, &stop).await?;
    let total = STEADY_MESSAGES.min(args.messages);
    let start = Instant::now();
    let failed = paced_sends(
        &senders[0],
        &recipients,
        total,
        STEADY_RATE,
        &progress,
        &body,
    )
    .await;
    progress
        .wait_for(total - failed, Instant::now() + args.duration())
        .await;
    let mut report = row(
        format!("stream at {STEADY_RATE} msg/s ({variant})"),
        &progress,
        start,
        total,
    );
    report
        .note
        .get_or_insert_with(|| "latency: send start → event received".into());
    rows.push(report);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }

    // 4. Idle streams: the hub's memory growth while they are open.
    let idle = fleet(http, target, args.pollers, args.concurrency, auth).await?;
    let before = target.rss_mib();
    let progress = Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let start = Instant::now();
    let tasks = open_streams(&idle, &progress, &stop).await?;
    let elapsed = start.elapsed();
    let after = target.rss_mib();
    let mut report = Report::new(
        format!("idle streams open ({})", auth_name(auth)),
        tasks.len() as u64,
        0,
        elapsed,
        &mut [],
    );
    report.latency = summarize(&mut []);
    report.rss_mib = after;
    report.note = match (before, after) {
        (Some(b), Some(a)) => Some(format!(
            "hub RSS {b:.1} → {a:.1} MiB: +{:.1} MiB for {} streams ({:.1} KiB each)",
            a - b,
            tasks.len(),
            (a - b) * 1024.0 / tasks.len().max(1) as f64
        )),
        _ => Some("hub RSS unknown (give --pid with --url)".into()),
    };
    rows.push(report);
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(rows)
}
