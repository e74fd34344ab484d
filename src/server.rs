//! Starting and stopping a hub: open the store, bind, serve, run the sweeper
//! and the webhook worker, and shut down gracefully (stop accepting, finish
//! in-flight requests, sweeps and webhook attempts, exit 0).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;

use crate::api::{AppState, router};
use crate::config::{AgentAuth, Config, StorageBackend};
use crate::hub::{Clock, Hub, InboxWakers};
use crate::jobs::{JobStats, sweeper, webhooks};
use crate::store::mech::{MechSettings, MechStore};
use crate::store::{Store, memory::MemoryStore, postgres::PostgresStore, sqlite::SqliteStore};

/// A hub serving in the background.
pub struct RunningHub {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    /// Counters of the sweeper and the webhook worker.
    pub jobs: JobStats,
    server: JoinHandle<std::io::Result<()>>,
    sweeper: JoinHandle<()>,
    webhooks: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    /// The Mech store whose single-instance lock a graceful stop releases.
    mech: Option<Arc<MechStore>>,
}

impl RunningHub {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish
    /// (long-polls return empty at once), finish the sweep pass and the
    /// webhook attempts in progress.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.hub.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after `hub.shutdown` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await.context("server task")??;
        self.sweeper.await.context("sweeper task")?;
        self.webhooks.await.context("webhook worker task")?;
        self.housekeeping.await.context("housekeeping task")?;
        if let Some(mech) = self.mech {
            mech.close().await;
        }
        Ok(())
    }
}

/// Opens the configured storage backend (applying migrations for the SQL
/// ones). `wakers` receive the wake-ups other instances send through the
/// database, so they must be the ones the hub's long-polls wait on.
pub async fn open_store(
    config: &Config,
    wakers: Arc<InboxWakers>,
) -> anyhow::Result<Arc<dyn Store>> {
    let url = &config.database_url;
    let max_connections = config.database_max_connections;
    Ok(match config.storage_backend {
        StorageBackend::Memory => Arc::new(MemoryStore::new()),
        StorageBackend::Sqlite => Arc::new(
            SqliteStore::open(url, max_connections, config.sqlite_synchronous)
                .await
                .context("opening the SQLite database (DATABASE_URL)")?,
        ),
        StorageBackend::Postgres => Arc::new(
            PostgresStore::open(url, max_connections, wakers)
                .await
                .context("opening the PostgreSQL database (DATABASE_URL)")?,
        ),
        StorageBackend::Mech => open_mech(config).await?,
    })
}

/// Opens the Mech store: takes the single-instance lock (a second hub on the
/// same `MECH_APP_ID` is refused, naming the holder), then rebuilds the index.
async fn open_mech(config: &Config) -> anyhow::Result<Arc<MechStore>> {
    let settings = MechSettings::from_config(config).map_err(anyhow::Error::msg)?;
    let store = MechStore::open(settings)
        .await
        .context("opening the Mech store (MECH_BASE_URL, MECH_APP_ID)")?;
    tracing::info!(
        holder = %store.lock().record().holder,
        "STORAGE_BACKEND=mech: this hub holds the Mech app's single-instance lock"
    );
    Ok(Arc::new(store))
}

/// Opens a store named by URL (`memory://`, `sqlite://…`, `postgres://…`),
/// with `base` supplying every other setting. Used by export/import/migrate,
/// which run outside a hub: nobody long-polls, so the wakers are throwaway.
pub async fn open_store_url(url: &str, base: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let backend = match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("memory") => StorageBackend::Memory,
        Some("sqlite") => StorageBackend::Sqlite,
        Some("postgres" | "postgresql") => StorageBackend::Postgres,
        _ => anyhow::bail!(
            "unsupported storage URL {url:?} (expected memory://, sqlite://… or postgres://…)"
        ),
    };
    let config = Config {
        storage_backend: backend,
        database_url: url.to_string(),
        ..base.clone()
    };
    open_store(&config, Arc::default()).await
}

/// Reads `*_FILE` secrets, validates, binds `HOST:PORT` and serves in the
/// background with the given store and fresh long-poll wakers (right for
/// stores that relay no wake-ups).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
    clock: Clock,
) -> anyhow::Result<RunningHub> {
    start_with_wakers(config, store, Arc::default(), clock).await
}

/// Reads `*_FILE` secrets, validates, binds `HOST:PORT` and serves in the
/// background with the given store and the wakers that store relays wake-ups to.
pub async fn start_with_wakers(
    mut config: Config,
    store: Arc<dyn Store>,
    wakers: Arc<InboxWakers>,
    clock: Clock,
) -> anyhow::Result<RunningHub> {
    config.resolve_secret_files().map_err(anyhow::Error::msg)?;
    config.validate().map_err(anyhow::Error::msg)?;
    if config.agent_auth == AgentAuth::Legacy {
        tracing::warn!(
            "AGENT_AUTH=legacy: agent routes accept UNAUTHENTICATED requests. \
             Anyone can read and ack any inbox. Use only for clients that cannot sign."
        );
    }
    let listener = tokio::net::TcpListener::bind((config.host, config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    let hub = Arc::new(Hub::new(Arc::new(config), store, clock, wakers));
    let jobs = JobStats::default();
    let state = AppState {
        jobs: jobs.clone(),
        ..AppState::new(hub.clone())
    };
    let housekeeping = tokio::spawn(state.clone().housekeeping());
    let app = router(state);
    let stop = hub.shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    });
    let sweeper = tokio::spawn(sweeper::run(hub.clone(), jobs.sweep.clone()));
    let webhooks = tokio::spawn(webhooks::run(hub.clone(), jobs.webhooks.clone()));
    tracing::info!(%addr, backend = ?hub.config.storage_backend, "admp hub listening");
    Ok(RunningHub {
        addr,
        hub,
        jobs,
        server,
        sweeper,
        webhooks,
        housekeeping,
        mech: None,
    })
}

/// Opens the configured store, then [`start_with_wakers`].
pub async fn start(mut config: Config, clock: Clock) -> anyhow::Result<RunningHub> {
    config.resolve_secret_files().map_err(anyhow::Error::msg)?;
    config.validate().map_err(anyhow::Error::msg)?;
    let wakers = Arc::new(InboxWakers::default());
    if config.storage_backend == StorageBackend::Mech {
        let mech = open_mech(&config).await?;
        return match start_with_wakers(config, mech.clone(), wakers, clock).await {
            Ok(mut running) => {
                running.mech = Some(mech);
                Ok(running)
            }
            Err(e) => {
                mech.close().await;
                Err(e)
            }
        };
    }
    let store = open_store(&config, wakers.clone()).await?;
    start_with_wakers(config, store, wakers, clock).await
}

/// `admp serve`: runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let running = start(config, Clock::system()).await?;
    let hub = running.hub.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining in-flight requests");
        hub.shutdown.cancel();
    });
    running.wait().await?;
    tracing::info!("hub stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
