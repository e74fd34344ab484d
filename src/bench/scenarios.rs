//! The load each scenario generates. Clients are [`AgentClient`]s, so every
//! request is signed (or carries a session token) exactly as a real agent's.
//! Every loop stops at its operation count, its request budget or its
//! deadline, whichever comes first.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::stats::{Report, summarize};
use super::{Auth, BenchArgs, Scenario, Step, Target};
use crate::client::AgentClient;

/// Longest a long-poll waits, per PROTOCOL.md §5.
const LONG_POLL_SEC: u64 = 20;
/// Longest the longpoll scenario waits for one wake-up before counting an error.
const WAKE_TIMEOUT: Duration = Duration::from_secs(LONG_POLL_SEC + 5);

/// What one worker did.
#[derive(Default)]
pub(super) struct WorkerOut {
    pub(super) ops: u64,
    pub(super) errors: u64,
    pub(super) latency: Vec<Duration>,
    pub(super) ack_latency: Vec<Duration>,
    /// When its last operation completed.
    pub(super) last: Option<Instant>,
    /// Ids of the messages its pulls were handed (for the leased-twice count).
    pub(super) leased: Vec<String>,
}

/// The sum of all workers' results.
pub(super) struct Totals {
    pub(super) ops: u64,
    errors: u64,
    latency: Vec<Duration>,
    ack_latency: Vec<Duration>,
    last: Option<Instant>,
}

impl Totals {
    pub(super) fn merge(outs: Vec<WorkerOut>) -> Self {
        let mut t = Totals {
            ops: 0,
            errors: 0,
            latency: Vec::new(),
            ack_latency: Vec::new(),
            last: None,
        };
        for o in outs {
            t.ops += o.ops;
            t.errors += o.errors;
            t.latency.extend(o.latency);
            t.ack_latency.extend(o.ack_latency);
            t.last = t.last.max(o.last);
        }
        t
    }

    /// A report row timed from `start` to the last completed operation.
    pub(super) fn report(mut self, name: impl Into<String>, start: Instant) -> Report {
        let elapsed = self.last.map_or(Duration::ZERO, |l| l - start);
        let mut report = Report::new(name, self.ops, self.errors, elapsed, &mut self.latency);
        report.ack_latency = summarize(&mut self.ack_latency);
        report
    }
}

/// Runs `workers` tasks made by `make` and collects their results.
async fn run_workers<F, Fut>(workers: usize, make: F) -> anyhow::Result<Vec<WorkerOut>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = WorkerOut> + Send + 'static,
{
    let handles: Vec<_> = (0..workers).map(|w| tokio::spawn(make(w))).collect();
    let mut outs = Vec::with_capacity(workers);
    for handle in handles {
        outs.push(handle.await.context("benchmark worker panicked")?);
    }
    Ok(outs)
}

/// The HTTP client every simulated agent shares (one keep-alive pool).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(LONG_POLL_SEC + 30))
        .build()
        .expect("a plain HTTP client always builds")
}

/// Runs one step against `target`; the rows carry the server's RSS afterwards.
pub async fn run_step(
    target: &Target,
    args: &BenchArgs,
    step: &Step,
) -> anyhow::Result<Vec<Report>> {
    let http = http_client();
    let mut rows = match step.scenario {
        Scenario::Register => vec![register(&http, target, args).await?],
        Scenario::Send => vec![send(&http, target, args, step.auth).await?],
        Scenario::Drain => vec![drain(&http, target, args, step).await?],
        Scenario::Mixed => mixed(&http, target, args, step).await?,
        Scenario::Depth => depth(&http, target, args, step).await?,
        Scenario::Longpoll => vec![longpoll(&http, target, args, step.auth).await?],
        Scenario::Fanout => fanout(&http, target, args, step.auth).await?,
        Scenario::Stream => super::stream::stream(&http, target, args, step.auth).await?,
        Scenario::All => anyhow::bail!("`all` is expanded into steps before running"),
        Scenario::Console => anyhow::bail!("`console` runs on its own (bench::console)"),
    };
    let rss = target.rss_mib();
    for row in rows.iter_mut().filter(|r| r.rss_mib.is_none()) {
        row.rss_mib = rss;
    }
    Ok(rows)
}

pub(super) fn auth_name(auth: Auth) -> &'static str {
    match auth {
        Auth::Signature => "signature",
        Auth::Session => "session",
    }
}

/// A message body of about `bytes` bytes.
pub(super) fn body_of(bytes: usize) -> Value {
    json!({ "text": "x".repeat(bytes) })
}

/// Registers `n` agents with client-held keys, `concurrency` at a time, and
/// opens a session for each when `auth` asks for one.
pub(super) async fn fleet(
    http: &reqwest::Client,
    target: &Target,
    n: usize,
    concurrency: usize,
    auth: Auth,
) -> anyhow::Result<Arc<Vec<AgentClient>>> {
    let mut agents = Vec::with_capacity(n);
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            // Agent `i` lives on instance `i mod N` (one instance unless `--instances`).
            let url = target.urls[i % target.urls.len()].clone();
            let http = http.clone();
            let sign_nonce = target.sign_nonce;
            async move {
                let mut client = AgentClient::register(http, &url, None).await?;
                client.sign_nonce = sign_nonce;
                if auth == Auth::Session {
                    client.open_session().await?;
                }
                anyhow::Ok(client)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(client) = pending.next().await {
        agents.push(client.context("setting up the benchmark's agents")?);
    }
    Ok(Arc::new(agents))
}

/// Copies of `agents` holding session tokens (fast senders for filling inboxes).
pub(super) async fn with_sessions(agents: &[AgentClient]) -> anyhow::Result<Arc<Vec<AgentClient>>> {
    let mut out = Vec::with_capacity(agents.len());
    for agent in agents {
        let mut copy = agent.clone();
        if copy.session.is_none() {
            copy.open_session().await?;
        }
        out.push(copy);
    }
    Ok(Arc::new(out))
}

/// `register`: agents registered per second (key generation included, as a client would).
async fn register(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
) -> anyhow::Result<Report> {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.duration();
    let start = Instant::now();
    let total = args.messages;
    let outs = run_workers(args.concurrency, |_| {
        let (http, url, next) = (http.clone(), target.url.clone(), next.clone());
        async move {
            let mut out = WorkerOut::default();
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let t0 = Instant::now();
                match AgentClient::register(http.clone(), &url, None).await {
                    Ok(_) => {
                        out.ops += 1;
                        out.latency.push(t0.elapsed());
                        out.last = Some(Instant::now());
                    }
                    Err(_) => out.errors += 1,
                }
            }
            out
        }
    })
    .await?;
    Ok(Totals::merge(outs).report("register", start))
}

/// Sends `total` signed envelopes from `senders` round-robin to `recipients`,
/// `workers` at a time, until `deadline`.
pub(super) async fn send_phase(
    senders: Arc<Vec<AgentClient>>,
    recipients: Arc<Vec<String>>,
    total: u64,
    workers: usize,
    deadline: Instant,
    body: Value,
) -> anyhow::Result<Vec<WorkerOut>> {
    let next = Arc::new(AtomicU64::new(0));
    run_workers(workers, |w| {
        let (senders, recipients, next, body) = (
            senders.clone(),
            recipients.clone(),
            next.clone(),
            body.clone(),
        );
        async move {
            let mut out = WorkerOut::default();
            let sender = &senders[w % senders.len()];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let to = &recipients[(i % recipients.len() as u64) as usize];
                let envelope = sender.envelope(to, "bench", body.clone());
                let t0 = Instant::now();
                match sender.send(to, &envelope).await {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        out.latency.push(t0.elapsed());
                        out.ops += 1;
                        out.last = Some(Instant::now());
                    }
                    _ => out.errors += 1,
                }
            }
            out
        }
    })
    .await
}

pub(super) fn ids(agents: &[AgentClient]) -> Arc<Vec<String>> {
    Arc::new(agents.iter().map(|a| a.agent_id.clone()).collect())
}

/// `send`: signed envelopes per second between the benchmark's agents.
async fn send(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    auth: Auth,
) -> anyhow::Result<Report> {
    let agents = fleet(http, target, args.agents, args.concurrency, auth).await?;
    let recipients = ids(&agents);
    let start = Instant::now();
    let outs = send_phase(
        agents,
        recipients,
        args.messages,
        args.concurrency,
        start + args.duration(),
        body_of(args.body_bytes),
    )
    .await?;
    Ok(Totals::merge(outs).report(format!("send ({})", auth_name(auth)), start))
}

/// One leased message: what an ack needs.
struct Leased {
    message_id: String,
    lease_id: Option<String>,
}

fn leased_of(value: &Value) -> Option<Leased> {
    Some(Leased {
        message_id: value.get("message_id")?.as_str()?.to_string(),
        lease_id: value
            .get("lease_id")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Pulls up to `batch` messages (single-message mode when `batch` is 1) with
/// `wait_sec` of long-poll. `Err(())` is a failed request.
async fn pull(client: &AgentClient, batch: u64, wait_sec: u64) -> Result<Vec<Leased>, ()> {
    let options = if batch > 1 {
        json!({ "max_messages": batch, "wait_sec": wait_sec })
    } else {
        json!({ "wait_sec": wait_sec })
    };
    let response = client.pull(&options).await.map_err(|_| ())?;
    match response.status() {
        StatusCode::NO_CONTENT => Ok(Vec::new()),
        StatusCode::OK => {
            let body: Value = response.json().await.map_err(|_| ())?;
            if batch > 1 {
                let messages = body.get("messages").and_then(Value::as_array).ok_or(())?;
                messages.iter().map(|m| leased_of(m).ok_or(())).collect()
            } else {
                Ok(vec![leased_of(&body).ok_or(())?])
            }
        }
        _ => Err(()),
    }
}

/// Acks `leased` (one request per message, or one batch request); returns
/// (acked, refused).
async fn ack(client: &AgentClient, leased: &[Leased], batch: bool) -> (u64, u64) {
    if batch {
        let acks: Vec<(&str, Option<&str>)> = leased
            .iter()
            .map(|l| (l.message_id.as_str(), l.lease_id.as_deref()))
            .collect();
        let Ok(response) = client.ack_batch(&acks).await else {
            return (0, leased.len() as u64);
        };
        if !response.status().is_success() {
            return (0, leased.len() as u64);
        }
        let Ok(body) = response.json::<Value>().await else {
            return (0, leased.len() as u64);
        };
        let ok = body["results"]
            .as_array()
            .map_or(0, |r| r.iter().filter(|e| e["ok"] == true).count()) as u64;
        (ok, leased.len() as u64 - ok)
    } else {
        let mut acked = 0;
        for l in leased {
            if let Ok(r) = client.ack(&l.message_id, l.lease_id.as_deref()).await
                && r.status().is_success()
            {
                acked += 1;
            }
        }
        (acked, leased.len() as u64 - acked)
    }
}

/// Pull+ack cycles on `client` until its inbox is empty (or, with
/// `wait_sec`, until `stop` says the work is done), bounded by `deadline`
/// and the shared request `budget`.
struct Consume<'a> {
    batch: u64,
    wait_sec: u64,
    deadline: Instant,
    budget: &'a AtomicU64,
    /// Shared count of acked messages and the total that ends the run.
    acked: &'a AtomicU64,
    goal: u64,
}

impl Consume<'_> {
    async fn run(&self, client: &AgentClient, out: &mut WorkerOut) {
        while Instant::now() < self.deadline && self.acked.load(Ordering::Relaxed) < self.goal {
            let spent = self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
            if spent.is_err() {
                break;
            }
            let t0 = Instant::now();
            let leased = match pull(client, self.batch, self.wait_sec).await {
                Ok(l) => l,
                Err(()) => {
                    out.errors += 1;
                    continue;
                }
            };
            if leased.is_empty() {
                if self.wait_sec == 0 {
                    break;
                }
                continue;
            }
            out.latency.push(t0.elapsed());
            out.leased
                .extend(leased.iter().map(|l| l.message_id.clone()));
            let t1 = Instant::now();
            let (acked, refused) = ack(client, &leased, self.batch > 1).await;
            out.ack_latency.push(t1.elapsed());
            out.ops += acked;
            out.errors += refused;
            self.acked.fetch_add(acked, Ordering::Relaxed);
            out.last = Some(Instant::now());
        }
    }
}

/// Request budget of a drain of `messages`: generous, but finite.
fn budget_for(messages: u64, inboxes: usize) -> u64 {
    messages.saturating_mul(4) + 100 * inboxes as u64
}

/// `drain`: fill every inbox, then pull+ack until all are empty.
async fn drain(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    step: &Step,
) -> anyhow::Result<Report> {
    let agents = fleet(http, target, args.agents, args.concurrency, step.auth).await?;
    let fillers = with_sessions(&agents).await?;
    let fill_deadline = Instant::now() + Duration::from_secs(args.fill_sec);
    let filled = Totals::merge(
        send_phase(
            fillers,
            ids(&agents),
            args.messages,
            args.concurrency,
            fill_deadline,
            body_of(args.body_bytes),
        )
        .await?,
    );
    let budget = AtomicU64::new(budget_for(filled.ops, agents.len()));
    let budget = Arc::new(budget);
    let acked = Arc::new(AtomicU64::new(0));
    let (n, c) = (agents.len(), args.concurrency);
    let deadline = Instant::now() + args.duration();
    let (batch, goal) = (step.batch, filled.ops);
    let start = Instant::now();
    let outs = run_workers(c, |w| {
        let (agents, budget, acked) = (agents.clone(), budget.clone(), acked.clone());
        async move {
            let mine: Vec<usize> = if c >= n {
                vec![w % n]
            } else {
                (w..n).step_by(c).collect()
            };
            let mut out = WorkerOut::default();
            let consume = Consume {
                batch,
                wait_sec: 0,
                deadline,
                budget: &budget,
                acked: &acked,
                goal,
            };
            for i in mine {
                consume.run(&agents[i], &mut out).await;
            }
            out
        }
    })
    .await?;
    let mut name = format!("drain ({}", auth_name(step.auth));
    if step.batch > 1 {
        name.push_str(&format!(", batch {}", step.batch));
    }
    name.push(')');
    let totals = Totals::merge(outs);
    let left = goal.saturating_sub(totals.ops);
    let mut report = totals.report(name, start);
    if filled.errors > 0 || left > 0 {
        report.note = Some(format!(
            "filled {goal} ({} send errors), {left} not acked",
            filled.errors
        ));
    }
    Ok(report)
}

/// `mixed`: half the clients send while the other half consume with a short long-poll.
async fn mixed(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    step: &Step,
) -> anyhow::Result<Vec<Report>> {
    let senders_n = (args.concurrency / 2).max(1);
    let consumers_n = (args.concurrency - senders_n).max(1);
    let agents = fleet(http, target, args.agents, args.concurrency, step.auth).await?;
    let inboxes = consumers_n.min(agents.len());
    let recipients = Arc::new(agents[..inboxes].to_vec());
    let deadline = Instant::now() + args.duration();
    let budget = Arc::new(AtomicU64::new(budget_for(args.messages, inboxes)));
    let acked = Arc::new(AtomicU64::new(0));
    let (batch, goal) = (step.batch, args.messages);
    let start = Instant::now();
    let consumers = run_workers(consumers_n, |w| {
        let (recipients, budget, acked) = (recipients.clone(), budget.clone(), acked.clone());
        async move {
            let mut out = WorkerOut::default();
            let consume = Consume {
                batch,
                wait_sec: 1,
                deadline,
                budget: &budget,
                acked: &acked,
                goal,
            };
            consume
                .run(&recipients[w % recipients.len()], &mut out)
                .await;
            out
        }
    });
    let sends = send_phase(
        agents.clone(),
        ids(&recipients),
        args.messages,
        senders_n,
        deadline,
        body_of(args.body_bytes),
    );
    let (consumed, sent) = tokio::join!(consumers, sends);
    let auth = auth_name(step.auth);
    let consumed = consumed?;
    let twice = leased_twice(consumed.iter().flat_map(|o| &o.leased));
    let mut pulled = Totals::merge(consumed).report(format!("mixed: pull+ack ({auth})"), start);
    let instances = target.urls.len();
    pulled.note = Some(format!(
        "{instances} instance(s); {twice} message(s) leased twice; \
         msg/s here = messages sent, pulled and acked end to end"
    ));
    Ok(vec![
        Totals::merge(sent?).report(format!("mixed: send ({auth})"), start),
        pulled,
    ])
}

/// How many ids occur more than once (a lease handed out twice: with acks
/// well inside the visibility timeout there must be none).
fn leased_twice<'a>(ids: impl Iterator<Item = &'a String>) -> usize {
    let mut seen = std::collections::HashSet::new();
    ids.filter(|id| !seen.insert(id.as_str())).count()
}

/// `depth`: one inbox filled to each depth in turn; at each, timed pull+ack
/// cycles, every acked message replaced by a fresh one so the depth holds.
async fn depth(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    step: &Step,
) -> anyhow::Result<Vec<Report>> {
    let agents = fleet(http, target, args.agents, args.concurrency, Auth::Session).await?;
    let consumer = fleet(http, target, 1, 1, step.auth).await?[0].clone();
    let recipient = Arc::new(vec![consumer.agent_id.clone()]);
    let body = body_of(args.body_bytes);
    let mut depths = args.depths.clone();
    depths.sort_unstable();
    let mut queued = 0_u64;
    let mut rows = Vec::new();
    for target_depth in depths {
        let fill_deadline = Instant::now() + Duration::from_secs(args.fill_sec);
        let fill_start = Instant::now();
        let wanted = target_depth.saturating_sub(queued);
        let (filled, how) = match (target.sqlite_file(), target.database_url.as_deref()) {
            (Some(file), _) => (
                fill_sqlite_inbox(file, &recipient[0], wanted).await?,
                "written into the SQLite file directly",
            ),
            (None, Some(url)) if args.sql_fill => (
                sql_fill(url, &recipient[0], wanted, &body).await?,
                "written into the PostgreSQL schema directly",
            ),
            _ => {
                let sent = send_phase(
                    agents.clone(),
                    recipient.clone(),
                    wanted,
                    args.concurrency,
                    fill_deadline,
                    body.clone(),
                )
                .await?;
                (Totals::merge(sent).ops, "sent")
            }
        };
        let fill_secs = fill_start.elapsed().as_secs_f64();
        queued += filled;
        let deadline = Instant::now() + args.duration();
        let mut out = WorkerOut::default();
        let start = Instant::now();
        for k in 0..args.depth_cycles {
            if Instant::now() >= deadline {
                break;
            }
            let t0 = Instant::now();
            let leased = match pull(&consumer, 1, 0).await {
                Ok(l) if !l.is_empty() => l,
                _ => {
                    out.errors += 1;
                    continue;
                }
            };
            out.latency.push(t0.elapsed());
            let t1 = Instant::now();
            let (acked, refused) = ack(&consumer, &leased, false).await;
            out.ack_latency.push(t1.elapsed());
            out.ops += acked;
            out.errors += refused;
            out.last = Some(Instant::now());
            // Untimed: put one message back so the depth stays where it was.
            let sender = &agents[(k % agents.len() as u64) as usize];
            let envelope = sender.envelope(&recipient[0], "bench", body.clone());
            match sender.send(&recipient[0], &envelope).await {
                Ok(r) if r.status() == StatusCode::CREATED => {}
                _ => queued = queued.saturating_sub(1),
            }
        }
        let mut report = Totals::merge(vec![out]).report(
            format!("depth {target_depth} pull+ack ({})", auth_name(step.auth)),
            start,
        );
        let mut note = format!(
            "filled {filled} in {fill_secs:.0} s ({:.0}/s, {how})",
            filled as f64 / fill_secs.max(1e-9)
        );
        let reached = queued >= target_depth;
        if !reached {
            note.push_str(&format!(
                "; depth {queued} reached, not {target_depth} (--fill-sec)"
            ));
        }
        report.note = Some(note);
        report.rss_mib = target.rss_mib();
        rows.push(report);
        if !reached {
            break;
        }
    }
    Ok(rows)
}

/// Puts `count` queued messages in `recipient`'s inbox with one
/// `INSERT … SELECT` in the SQLite file of the running hub (sending a
/// million signed messages would take the benchmark longer than the
/// measurement); the hub's triggers keep its live count right. Returns how
/// many it wrote.
async fn fill_sqlite_inbox(
    file: &std::path::Path,
    recipient: &str,
    count: u64,
) -> anyhow::Result<u64> {
    if count == 0 {
        return Ok(0);
    }
    let (file, recipient) = (file.to_path_buf(), recipient.to_string());
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(file)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        let now = crate::telemetry::wall_ms();
        let written = conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1), \
                 batch(tag) AS (SELECT lower(hex(randomblob(4)))) \
             INSERT INTO messages (id, recipient, sender, envelope, state, attempts, visible_at, \
                 expires_at, created_at, updated_at, content_hash) \
             SELECT printf('depth-%s-%09d', tag, i), $2, 'bench-filler', \
                 json_object('version', '1.0', 'id', printf('depth-%s-%09d', tag, i), \
                     'from', 'agent://bench-filler', 'to', 'agent://' || $2, \
                     'subject', 'bench', 'body', json_object('n', i)), \
                 'queued', 0, $3 - 1, $3 + 86400000, $3, $3, 'bench' FROM n, batch",
            rusqlite::named_params! {"$1": count as i64, "$2": recipient, "$3": now},
        )?;
        Ok(written as u64)
    })
    .await?
}

/// Queues `n` messages for `recipient` straight into the spawned hub's
/// PostgreSQL schema, 100 000 per statement, and adds them to the inbox's
/// `inbox_live` count. Each row is a well-formed envelope from a filler agent.
async fn sql_fill(url: &str, recipient: &str, n: u64, body: &Value) -> anyhow::Result<u64> {
    const CHUNK: u64 = 100_000;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connecting for --sql-fill")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let envelope = json!({
        "version": "1.0",
        "from": "agent://bench-filler",
        "to": format!("agent://{recipient}"),
        "subject": "fill",
        "body": body,
        "timestamp": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?,
    })
    .to_string();
    // Per-row triggers would update the one `inbox_live` row once per
    // message (a million row versions); off for this session (needs a
    // superuser, as the bench's scratch database has), the count is added once.
    let mut conn = pool.acquire().await?;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .context("--sql-fill needs a superuser (session_replication_role)")?;
    let mut done = 0;
    while done < n {
        let rows = (n - done).min(CHUNK);
        sqlx::query(
            "INSERT INTO messages (id, recipient, sender, envelope, state, attempts, \
             visible_at, expires_at, created_at, updated_at, content_hash) \
             SELECT gen_random_uuid()::text, $1, 'bench-filler', $2, 'queued', 0, \
             $3 - $4 + g, $3 + 86400000, $3, $3, 'fill' FROM generate_series(1, $4) AS g",
        )
        .bind(recipient)
        .bind(&envelope)
        .bind(now)
        .bind(rows as i64)
        .execute(&mut *conn)
        .await
        .context("--sql-fill insert")?;
        sqlx::query("UPDATE inbox_live SET live = live + $2 WHERE recipient = $1")
            .bind(recipient)
            .bind(rows as i64)
            .execute(&mut *conn)
            .await
            .context("--sql-fill count")?;
        done += rows;
    }
    drop(conn);
    pool.close().await;
    Ok(n)
}

/// `longpoll`: `pollers` agents long-poll an empty inbox; one sender sends
/// to each in turn and times how long the poller takes to hold the message.
async fn longpoll(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    auth: Auth,
) -> anyhow::Result<Report> {
    let pollers = fleet(http, target, args.pollers, args.concurrency, auth).await?;
    let sender = fleet(http, target, 1, 1, Auth::Session).await?[0].clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let stop = tokio_util::sync::CancellationToken::new();
    // Each poller receives at most its share of the wake-ups (plus the warm-up).
    let per_poller = args.wakeups / args.pollers as u64 + 2;
    let deadline = Instant::now() + args.duration();
    let mut tasks = Vec::new();
    for poller in pollers.iter() {
        let (poller, tx, stop) = (poller.clone(), tx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut received = 0;
            // Long-polls that time out empty are bounded by the deadline.
            while received < per_poller && Instant::now() < deadline {
                let leased = tokio::select! {
                    () = stop.cancelled() => break,
                    leased = pull(&poller, 1, LONG_POLL_SEC) => leased,
                };
                let Ok(leased) = leased else { continue };
                for l in &leased {
                    let _ = tx.send((l.message_id.clone(), Instant::now()));
                }
                received += leased.len() as u64;
                ack(&poller, &leased, false).await;
            }
        }));
    }
    drop(tx);
    let body = body_of(args.body_bytes);
    let mut out = WorkerOut::default();
    let mut wait_for = async |poller: &AgentClient, out: Option<&mut WorkerOut>| {
        let envelope = sender.envelope(&poller.agent_id, "wake", body.clone());
        let t0 = Instant::now();
        let sent = sender.send(&poller.agent_id, &envelope).await;
        let message_id = match sent {
            Ok(r) if r.status() == StatusCode::CREATED => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["message_id"].as_str().map(str::to_string)),
            _ => None,
        };
        let seen = match &message_id {
            Some(id) => tokio::time::timeout(WAKE_TIMEOUT, async {
                while let Some((got, at)) = rx.recv().await {
                    if &got == id {
                        return Some(at);
                    }
                }
                None
            })
            .await
            .ok()
            .flatten(),
            None => None,
        };
        if let Some(out) = out {
            match seen {
                Some(at) => {
                    out.latency.push(at - t0);
                    out.ops += 1;
                    out.last = Some(Instant::now());
                }
                None => out.errors += 1,
            }
        }
    };
    // Warm-up: one message per poller proves every poller is long-polling.
    for poller in pollers.iter() {
        if Instant::now() >= deadline {
            break;
        }
        wait_for(poller, None).await;
    }
    let start = Instant::now();
    for i in 0..args.wakeups {
        if Instant::now() >= deadline {
            break;
        }
        let poller = &pollers[(i % pollers.len() as u64) as usize];
        wait_for(poller, Some(&mut out)).await;
    }
    stop.cancel();
    for task in tasks {
        task.await.context("long-poller panicked")?;
    }
    let mut report = Totals::merge(vec![out]).report(
        format!(
            "longpoll wake-up ({} pollers, {})",
            args.pollers,
            auth_name(auth)
        ),
        start,
    );
    report.note = Some("latency: send start → poller holds the message".into());
    Ok(report)
}

/// `fanout`: one group of `--members` agents; `--messages` signed posts, each
/// from a member (round-robin) to every other member. Rows: posts/s with the
/// post latency, and member copies stored per second over the same time.
async fn fanout(
    http: &reqwest::Client,
    target: &Target,
    args: &BenchArgs,
    auth: Auth,
) -> anyhow::Result<Vec<Report>> {
    let members = fleet(http, target, args.members, args.concurrency, auth).await?;
    let owner = &members[0];
    let created = owner
        .create_group(&json!({"name": "bench fanout",
            "settings": {"max_members": args.members, "message_ttl_sec": 3600}}))
        .await?;
    anyhow::ensure!(
        created.status() == StatusCode::CREATED,
        "creating the group: {}",
        created.status()
    );
    let group: Value = created.json().await?;
    let group_id = group["id"]
        .as_str()
        .context("group id in the create response")?
        .to_string();
    let mut joins = futures::stream::iter(members.iter().skip(1))
        .map(|m| m.join_group(&group_id, None))
        .buffer_unordered(args.concurrency.max(1));
    while let Some(joined) = joins.next().await {
        let status = joined?.status();
        anyhow::ensure!(status == StatusCode::OK, "joining the group: {status}");
    }
    drop(joins);
    let copies = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let group_id = Arc::new(group_id);
    let total = args.messages;
    let deadline = Instant::now() + args.duration();
    let body = body_of(args.body_bytes);
    let start = Instant::now();
    let outs = run_workers(args.concurrency, |w| {
        let (members, next, copies, group_id, body) = (
            members.clone(),
            next.clone(),
            copies.clone(),
            group_id.clone(),
            body.clone(),
        );
        async move {
            let mut out = WorkerOut::default();
            let poster = &members[w % members.len()];
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let envelope = poster.group_envelope(&group_id, "bench", body.clone());
                let t0 = Instant::now();
                let outcome = match poster.post_group(&group_id, &envelope).await {
                    Ok(r) if r.status() == StatusCode::CREATED => r.json::<Value>().await.ok(),
                    _ => None,
                };
                match outcome.and_then(|v| v["delivered"].as_u64()) {
                    Some(delivered) => {
                        out.latency.push(t0.elapsed());
                        out.ops += 1;
                        out.last = Some(Instant::now());
                        copies.fetch_add(delivered, Ordering::Relaxed);
                    }
                    None => out.errors += 1,
                }
            }
            out
        }
    })
    .await?;
    let totals = Totals::merge(outs);
    let label = format!("{} members, {}", args.members, auth_name(auth));
    let errors = totals.errors;
    let posts = totals.report(format!("fanout posts ({label})"), start);
    let elapsed = Duration::from_secs_f64(posts.elapsed_sec);
    let mut copies_row = Report::new(
        format!("fanout member copies ({label})"),
        copies.load(Ordering::Relaxed),
        errors,
        elapsed,
        &mut [],
    );
    copies_row.note = Some("copies stored by the posts above, over the same wall time".into());
    Ok(vec![posts, copies_row])
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::bench::plan;
    use crate::config::Config;
    use crate::hub::Clock;
    use crate::server::start_with_store;
    use crate::store::memory::MemoryStore;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// Every scenario of `all`, a handful of operations each, against an
    /// in-process hub: the counts must come out exact and error-free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_scenario_completes_its_counts_against_a_hub() {
        let config = Config {
            host: [127, 0, 0, 1].into(),
            // Port 0: the OS picks a free port.
            port: 0,
            rate_limit_enabled: false,
            ..Config::default()
        };
        let running = start_with_store(config, Arc::new(MemoryStore::new()), Clock::system())
            .await
            .expect("hub starts");
        let argv = [
            "bench",
            "--agents",
            "3",
            "--messages",
            "24",
            "--concurrency",
            "4",
            "--depths",
            "30,10",
            "--depth-cycles",
            "5",
            "--pollers",
            "3",
            "--wakeups",
            "4",
            "--body-bytes",
            "50",
        ];
        let args = Wrapper::try_parse_from(argv).expect("arguments parse").args;
        args.validate().expect("valid arguments");
        let target = Target::existing(&running.url(), Some(std::process::id()));
        let mut rows = Vec::new();
        for step in plan(&args) {
            rows.extend(run_step(&target, &args, &step).await.expect("step runs"));
        }
        let ops: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|r| (r.scenario.as_str(), r.ops, r.errors))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("register", 24, 0),
                ("send (signature)", 24, 0),
                ("send (session)", 24, 0),
                ("drain (signature)", 24, 0),
                ("drain (session)", 24, 0),
                ("drain (session, batch 100)", 24, 0),
                ("mixed: send (signature)", 24, 0),
                ("mixed: pull+ack (signature)", 24, 0),
                ("depth 10 pull+ack (signature)", 5, 0),
                ("depth 30 pull+ack (signature)", 5, 0),
                ("longpoll wake-up (3 pollers, signature)", 4, 0),
            ]
        );
        for row in &rows {
            let latency = row.latency.as_ref().expect("latencies recorded");
            if row.scenario.contains("batch") {
                assert!(latency.count as u64 <= row.ops, "{}", row.scenario);
            } else {
                assert_eq!(latency.count as u64, row.ops, "{}", row.scenario);
            }
            assert!(row.rss_mib.is_some(), "{}", row.scenario);
        }
        running.shutdown().await.expect("hub stops");
    }
}
