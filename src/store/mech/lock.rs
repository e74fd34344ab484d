//! The single-instance lock: one hub per Mech app, enforced.
//!
//! The Mech backend keeps its index in the hub process, so two hubs on one
//! Mech app would each trust their own index and corrupt each other's writes.
//! A hub therefore holds one lock document (`admp_lock`/`hub`) naming it and
//! renews its heartbeat every quarter of `MECH_LOCK_STALE_MS`:
//!
//! - at start, a lock whose heartbeat is younger than `MECH_LOCK_STALE_MS`
//!   (judged by this host's wall clock) refuses the start with an error
//!   naming the holder; an older one is taken over (delete, then create: a
//!   create of a taken `document_id` is a 409, so of two hubs taking over at
//!   once only one creates it), and the lock is read back to confirm;
//! - every heartbeat reads the lock first: if another hub holds it, this hub
//!   stops writing for good (every write is answered 503 and `/ready` fails);
//! - writes also stop while the last confirmed heartbeat is older than
//!   `MECH_LOCK_STALE_MS` (Mech unreachable), because another hub may then
//!   take over; they resume once a heartbeat confirms the lock again;
//! - a graceful stop deletes the lock, so the next hub starts at once. After
//!   a crash (SIGKILL) the next hub starts once the heartbeat is stale.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Guard, MechClient, MechError};

/// Collection of the lock document.
pub const LOCK_COLLECTION: &str = "admp_lock";
/// Key of the lock document.
pub const LOCK_KEY: &str = "hub";

/// Rounds of read/create/take-over before start-up gives up on a lock that keeps changing.
const ACQUIRE_ROUNDS: usize = 4;

/// What the lock document says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRecord {
    /// Unique per hub process: `<host>/<pid>/<random>`.
    pub holder: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// When the holder started (ms since the epoch).
    pub started_at: i64,
    /// The holder's last heartbeat (ms since the epoch, the holder's clock).
    pub heartbeat_at: i64,
    /// The holder's `MECH_LOCK_STALE_MS`, for the operator reading the document.
    pub stale_after_ms: u64,
}

impl LockRecord {
    /// Who holds it, for logs and the refusal.
    fn describe(&self) -> String {
        let started = UNIX_EPOCH + Duration::from_millis(self.started_at.max(0) as u64);
        format!(
            "hub {} (host {}, pid {}, started {})",
            self.holder,
            self.host,
            self.pid,
            httpdate::fmt_http_date(started)
        )
    }
}

/// The lock this hub holds; dropping it stops the heartbeat (without deleting the lock).
pub struct HubLock {
    client: Arc<MechClient>,
    mine: LockRecord,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for HubLock {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.lock().take() {
            task.abort();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The lock as Mech holds it: `None` if absent, `Err(raw)` if unreadable.
async fn read_lock(client: &MechClient) -> Result<Option<Result<LockRecord, Value>>, MechError> {
    Ok(client
        .read(LOCK_COLLECTION, LOCK_KEY)
        .await?
        .map(|v| serde_json::from_value(v.clone()).map_err(|_| v)))
}

impl HubLock {
    /// Takes the lock (see the module docs) and starts the heartbeat, or
    /// refuses with [`MechError::LockHeld`] naming the holder.
    pub async fn acquire(client: Arc<MechClient>) -> Result<HubLock, MechError> {
        let stale = client.settings().lock_stale;
        let host = host_name();
        let pid = std::process::id();
        let started_at = now_ms();
        let mut mine = LockRecord {
            holder: format!(
                "{host}/{pid}/{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            host,
            pid,
            started_at,
            heartbeat_at: started_at,
            stale_after_ms: stale.as_millis() as u64,
        };
        for _ in 0..ACQUIRE_ROUNDS {
            let began = Instant::now();
            mine.heartbeat_at = now_ms();
            let doc = serde_json::to_value(&mine).expect("a lock record serialises");
            match read_lock(&client).await? {
                None => {
                    if !client
                        .create_guarded(LOCK_COLLECTION, LOCK_KEY, &doc, Guard::Unfenced)
                        .await?
                    {
                        continue;
                    }
                }
                Some(held) => {
                    let (who, age) = match &held {
                        Ok(record) => (record.describe(), now_ms() - record.heartbeat_at),
                        Err(_) => ("an unreadable lock document".to_string(), i64::MAX),
                    };
                    if age < stale.as_millis() as i64 {
                        return Err(refusal(&client, &who, age, stale));
                    }
                    tracing::warn!(
                        previous = %who,
                        heartbeat_age_ms = age,
                        "taking over the stale Mech single-instance lock"
                    );
                    client
                        .delete_guarded(LOCK_COLLECTION, LOCK_KEY, Guard::Unfenced)
                        .await?;
                    if !client
                        .create_guarded(LOCK_COLLECTION, LOCK_KEY, &doc, Guard::Unfenced)
                        .await?
                    {
                        continue;
                    }
                }
            }
            match read_lock(&client).await? {
                Some(Ok(record)) if record.holder == mine.holder => {
                    client.renew_fence(began, stale);
                    tracing::info!(holder = %mine.holder, "holding the Mech single-instance lock");
                    let lock = HubLock {
                        client: client.clone(),
                        mine: mine.clone(),
                        heartbeat: Mutex::new(None),
                    };
                    *lock.heartbeat.lock() = Some(tokio::spawn(heartbeat(client, mine)));
                    return Ok(lock);
                }
                Some(Ok(other)) => {
                    let age = now_ms() - other.heartbeat_at;
                    return Err(refusal(&client, &other.describe(), age, stale));
                }
                _ => continue,
            }
        }
        Err(MechError::LockHeld(
            "the Mech single-instance lock kept changing while this hub tried to take it: \
             another hub is starting on the same MECH_APP_ID"
                .into(),
        ))
    }

    /// This hub's lock record (its holder id names it in logs).
    pub fn record(&self) -> &LockRecord {
        &self.mine
    }

    /// Graceful stop: stops the heartbeat and every further write, then
    /// deletes the lock if it is still this hub's, so the next hub starts at once.
    pub async fn release(&self) {
        if let Some(task) = self.heartbeat.lock().take() {
            task.abort();
        }
        self.client
            .stop_writes("this hub released the single-instance lock (shut down)".into());
        match read_lock(&self.client).await {
            Ok(Some(Ok(record))) if record.holder == self.mine.holder => {
                if let Err(e) = self
                    .client
                    .delete_guarded(LOCK_COLLECTION, LOCK_KEY, Guard::Unfenced)
                    .await
                {
                    tracing::warn!(error = %e, "could not release the Mech lock; the next hub waits until it is stale");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release the Mech lock; the next hub waits until it is stale")
            }
        }
    }
}

/// The refusal naming the holder and when it becomes stale.
fn refusal(client: &MechClient, who: &str, age_ms: i64, stale: Duration) -> MechError {
    let remaining = (stale.as_millis() as i64 - age_ms).max(0);
    MechError::LockHeld(format!(
        "Mech app {} is in use by {who}, whose last heartbeat was {:.1} s ago. One Mech app \
         serves one hub (the backend's index lives in the hub process). Stop that hub, or, if \
         it is gone, start again once its heartbeat is older than MECH_LOCK_STALE_MS={} ms \
         (in about {:.1} s)",
        client.settings().app_id,
        age_ms.max(0) as f64 / 1000.0,
        stale.as_millis(),
        remaining as f64 / 1000.0
    ))
}

/// Renews the lock every quarter of the stale timeout until it is lost.
async fn heartbeat(client: Arc<MechClient>, mut mine: LockRecord) {
    let stale = client.settings().lock_stale;
    let every = stale / 4;
    loop {
        tokio::time::sleep(every).await;
        let began = Instant::now();
        mine.heartbeat_at = now_ms();
        let doc = serde_json::to_value(&mine).expect("a lock record serialises");
        let renewed = match read_lock(&client).await {
            Ok(Some(Ok(record))) if record.holder == mine.holder => {
                client
                    .update_guarded(LOCK_COLLECTION, LOCK_KEY, &doc, Guard::Unfenced)
                    .await
            }
            Ok(Some(Ok(other))) => {
                let why = format!(
                    "{} took over the single-instance lock; this hub no longer writes to Mech \
                     (restart it once the other hub is stopped)",
                    other.describe()
                );
                tracing::error!("{why}");
                client.stop_writes(why);
                return;
            }
            Ok(Some(Err(_))) => {
                client
                    .update_guarded(LOCK_COLLECTION, LOCK_KEY, &doc, Guard::Unfenced)
                    .await
            }
            // Absent (deleted by a hub taking over, which then creates it):
            // recreate; a 409 means the other hub won, which the next beat sees.
            Ok(None) => {
                client
                    .create_guarded(LOCK_COLLECTION, LOCK_KEY, &doc, Guard::Unfenced)
                    .await
            }
            Err(e) => Err(e),
        };
        match renewed {
            Ok(true) => client.renew_fence(began, stale),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the Mech single-instance lock")
            }
        }
    }
}
