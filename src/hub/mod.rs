//! Protocol rules: who may do what, envelope validation and signatures,
//! idempotency, leasing policy, long-poll. No HTTP and no SQL here: the API
//! layer hands in plain values and the store makes each change atomic.

mod agents;
mod audit;
pub mod auth;
mod clock;
pub mod console;
mod error;
mod groups;
pub mod ids;
mod inbox;
mod messages;
pub mod stream;
mod wakers;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::Store;
use crate::store::instrumented::InstrumentedStore;
use crate::telemetry::Metrics;

pub use agents::{Registered, Registration, RotatedKey, is_public_ip};
pub use audit::{AuditPage, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE};
pub use auth::{Authenticated, Caller, Credentials};
pub use clock::Clock;
pub use error::{GroupOp, HubError, HubResult, Refusal};
pub use groups::{
    GroupPosted, GroupUpdate, GroupView, MAX_GROUP_MEMBERS, NewGroup, PostInput, group_id,
};
pub use inbox::{AckInput, MAX_BATCH, NackInput, PullInput};
pub use messages::{SendInput, Sent};
pub use stream::{InboxStream, StreamEvent, StreamInput, StreamRegistry};
pub use wakers::InboxWakers;

/// The hub: configuration, storage and the shared in-process state the
/// protocol needs (long-poll wakers, session key).
pub struct Hub {
    pub config: Arc<Config>,
    /// The backend, wrapped so every call is timed into `metrics`.
    pub store: Arc<dyn Store>,
    /// This hub's Prometheus metrics (one recorder per hub, never global).
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub wakers: Arc<InboxWakers>,
    sessions: auth::SessionKey,
    /// Signs audit checkpoints (`AUDIT_SIGNING_KEY_FILE`); never stored.
    audit_key: Option<ed25519_dalek::SigningKey>,
    /// Cancelled on shutdown so long-polls return at once.
    pub shutdown: CancellationToken,
    /// Poked when a send schedules a webhook delivery, so the worker attempts
    /// it at once instead of at its next poll.
    pub webhook_wake: Notify,
    /// Inbox streams open on this instance (the stream limits).
    pub streams: StreamRegistry,
}

impl Hub {
    /// Builds a hub over `store`, whose calls are reported to the hub's
    /// metrics. `wakers` are shared with the store when it relays wake-ups
    /// between instances (PostgreSQL LISTEN/NOTIFY).
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        clock: Clock,
        wakers: Arc<InboxWakers>,
    ) -> Self {
        let sessions = auth::SessionKey::new(config.session_secret.as_deref());
        let audit_key = config
            .audit_signing_key
            .as_deref()
            .and_then(crate::signing::keys::decode_secret_key);
        let metrics = Arc::new(Metrics::new());
        Hub {
            config,
            store: InstrumentedStore::wrap(store, metrics.clone()),
            metrics,
            clock,
            wakers,
            sessions,
            audit_key,
            shutdown: CancellationToken::new(),
            webhook_wake: Notify::new(),
            streams: StreamRegistry::default(),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}
