//! The storage contract, stated once and run against every backend.
//!
//! Each `contract::*` function describes one part of the behaviour every
//! `Store` must have (the memory backend is the reference); the
//! `conformance!` macro turns the whole list into `#[tokio::test]`s for one
//! backend. Adding a backend is an implementation of [`Backend`] plus one line:
//!
//! ```ignore
//! conformance!(mech, MechBackend);            // or `..., durable)` to add the reopen test
//! ```
//!
//! PostgreSQL tests need the server on 127.0.0.1:5432 (see `tests/support`).
//! The Mech backend runs against the in-process Mech emulator
//! (`tests/support/mech_emulator.rs`) in both modes (`mech`: the live API as
//! MECH-API.md describes it; `mech_legacy`: the older shapes), each with 300
//! foreign documents in the app and no injected faults or latency;
//! `tests/mech_store.rs` covers the faults.

mod support;

use std::future::Future;
use std::sync::Arc;

use admp::config::SqliteSynchronous;
use admp::hub::InboxWakers;
use admp::store::Store;
use admp::store::mech::MechStore;
use admp::store::memory::MemoryStore;
use admp::store::postgres::PostgresStore;
use admp::store::sqlite::SqliteStore;

use support::mech_emulator::{MechEmulator, Mode};
use support::storage::{PgSchema, TempDir};

/// A way to get a fresh, empty store of one backend, and to clean it up.
trait Backend: Sized + Send + 'static {
    /// A new store with nothing in it, isolated from every other test.
    fn create() -> impl Future<Output = Self> + Send;
    /// The store under test.
    fn store(&self) -> Arc<dyn Store>;
    /// Closes the store and opens the same storage again (durable backends only).
    fn reopen(&mut self) -> impl Future<Output = ()> + Send {
        async { unreachable!("only durable backends are reopened") }
    }
    /// Releases whatever `create` made.
    fn destroy(self) -> impl Future<Output = ()> + Send;
}

struct MemoryBackend(Arc<MemoryStore>);

impl Backend for MemoryBackend {
    async fn create() -> Self {
        MemoryBackend(Arc::new(MemoryStore::new()))
    }
    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
    async fn destroy(self) {}
}

struct SqliteBackend {
    dir: TempDir,
    store: Arc<SqliteStore>,
}

impl SqliteBackend {
    async fn open(dir: &TempDir) -> Arc<SqliteStore> {
        let store = SqliteStore::open(&dir.sqlite_url(), 4, SqliteSynchronous::Full)
            .await
            .expect("opening SQLite");
        Arc::new(store)
    }
}

impl Backend for SqliteBackend {
    async fn create() -> Self {
        let dir = TempDir::new();
        let store = Self::open(&dir).await;
        SqliteBackend { dir, store }
    }
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
    async fn reopen(&mut self) {
        self.store.close().await;
        self.store = Self::open(&self.dir).await;
    }
    async fn destroy(self) {
        self.store.close().await;
    }
}

struct PostgresBackend {
    schema: PgSchema,
    store: Arc<PostgresStore>,
}

impl PostgresBackend {
    async fn open(schema: &PgSchema) -> Arc<PostgresStore> {
        let wakers = Arc::new(InboxWakers::default());
        let store = PostgresStore::open(&schema.url(), 4, wakers)
            .await
            .expect("opening PostgreSQL");
        Arc::new(store)
    }
}

impl Backend for PostgresBackend {
    async fn create() -> Self {
        let schema = PgSchema::create().await;
        let store = Self::open(&schema).await;
        PostgresBackend { schema, store }
    }
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
    async fn reopen(&mut self) {
        self.store.close().await;
        self.store = Self::open(&self.schema).await;
    }
    async fn destroy(self) {
        self.store.close().await;
        self.schema.drop_schema().await;
    }
}

/// The Mech backend on the emulator: live mode (`LEGACY = false`) or legacy
/// mode, with other applications' documents already in the app and list
/// pages capped at 100 so every scan paginates.
struct MechBackend<const LEGACY: bool> {
    emulator: MechEmulator,
    store: Arc<MechStore>,
}

impl<const LEGACY: bool> MechBackend<LEGACY> {
    async fn open(emulator: &MechEmulator) -> Arc<MechStore> {
        let store = MechStore::open(emulator.settings())
            .await
            .expect("opening the Mech store on the emulator");
        Arc::new(store)
    }
}

impl<const LEGACY: bool> Backend for MechBackend<LEGACY> {
    async fn create() -> Self {
        let mode = if LEGACY { Mode::Legacy } else { Mode::Live };
        let emulator = MechEmulator::start_shared(mode).await;
        emulator.set_page_cap(Some(100));
        let store = Self::open(&emulator).await;
        MechBackend { emulator, store }
    }
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
    /// A hub restart: the old hub releases its lock, a new store rebuilds its index from Mech.
    async fn reopen(&mut self) {
        self.store.close().await;
        self.store = Self::open(&self.emulator).await;
    }
    async fn destroy(self) {
        self.store.close().await;
    }
}

/// Runs one contract on a fresh store, cleaning up even when it fails.
async fn run<B, F, Fut>(contract: F)
where
    B: Backend,
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let backend = B::create().await;
    let outcome = tokio::spawn(contract(backend.store())).await;
    backend.destroy().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Runs the reopen contract: fill, close, open the same storage, check.
async fn run_reopen<B: Backend>() {
    let mut backend = B::create().await;
    let filled = tokio::spawn(contract::reopen_fill(backend.store())).await;
    let outcome = match filled {
        Ok(expected) => {
            backend.reopen().await;
            tokio::spawn(contract::reopen_check(backend.store(), expected)).await
        }
        Err(e) => Err(e),
    };
    backend.destroy().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

macro_rules! contract_tests {
    ($backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run::<$backend, _, _>(contract::$name).await;
            }
        )*
    };
}

/// Generates the whole suite for one backend; `durable` adds the reopen test.
macro_rules! conformance {
    ($module:ident, $backend:ty $(, $durable:ident)?) => {
        mod $module {
            use super::*;

            contract_tests!($backend;
                agents_create_get_and_refuse_taken_ids,
                update_agent_applies_each_change,
                mark_offline_after_heartbeat_timeout,
                enqueue_needs_a_registered_recipient,
                enqueue_stores_the_message_verbatim,
                lease_takes_oldest_first_with_fresh_lease_ids,
                leased_message_is_invisible_until_its_lease_ends,
                delayed_message_waits_for_visible_at,
                next_available_at_follows_delays_and_leases,
                expired_lease_at_max_attempts_dies_at_next_pull,
                ttl_expires_during_lease_and_batch_fills_up,
                ack_checks_state_and_lease_id,
                ack_many_settles_each_entry_on_its_own,
                nack_requeues_with_delay,
                nack_extend_is_capped,
                nack_at_max_attempts_dead_letters,
                lease_errors_for_nack,
                dead_letters_page_with_cursor_and_requeue,
                idempotency_duplicate_and_conflict,
                quota_counts_live_messages_only,
                message_id_of_another_inbox_is_taken,
                delete_agent_dead_letters_inbox_and_cancels_deliveries,
                expire_sweep_ends_live_messages_past_ttl,
                reclaim_sweep_requeues_or_kills_expired_leases,
                purge_deletes_and_forgets_idempotency_keys,
                stats_count_by_state,
                deliveries_claim_record_and_cancel,
                audit_chain_appends_and_verifies,
                export_pages_and_import_is_idempotent,
                concurrent_leases_never_share_a_message,
                concurrent_enqueues_respect_the_quota,
                concurrent_audit_appends_keep_one_chain,
                groups_create_get_update_delete,
                group_members_add_list_remove_with_refusals,
                agent_groups_page_by_group_id_after_a_cursor,
                concurrent_group_joins_admit_exactly_max_members,
                group_post_fans_out_in_one_step,
                group_post_idempotency_and_refusals,
                group_history_pages_newest_first_and_purges,
                delete_agent_removes_memberships_and_owned_groups,
                console_search_agents_pages_by_prefix,
                console_dead_letters_across_inboxes_in_order,
                console_failing_deliveries_and_retry_now,
                peek_queued_shows_waiting_messages_without_leasing,
                nonces_are_remembered_once_until_they_expire,
                retired_agent_ids_stay_retired,
                fair_claims_cap_each_agent_and_skip_busy_ones,
                refused_agent_changes_leave_the_record_unchanged,
                stream_leases_carry_their_holder_and_are_counted,
                release_held_requeues_or_kills_what_a_stream_holds,
                lease_held_from_takes_over_another_streams_leases,
            );

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn reopen_keeps_everything() {
                    let _ = stringify!($durable);
                    run_reopen::<$backend>().await;
                }
            )?
        }
    };
}

conformance!(memory, MemoryBackend);
conformance!(sqlite, SqliteBackend, durable);
conformance!(postgres, PostgresBackend, durable);
conformance!(mech, MechBackend<false>, durable);
conformance!(mech_legacy, MechBackend<true>, durable);

/// The contract itself: backend-independent, in terms of the `Store` trait only.
mod contract {
    use std::collections::HashSet;
    use std::sync::Arc;

    use admp::audit::{GENESIS_HASH, first_broken_link};
    use admp::store::*;
    use serde_json::json;

    /// An arbitrary but fixed "now" (2023-11-14), so times are exact.
    const T0: Millis = 1_700_000_000_000;
    const MINUTE: i64 = 60_000;
    const MAX_ATTEMPTS: u32 = 10;
    const QUOTA: u64 = 10_000;

    pub(super) fn agent(id: &str) -> Agent {
        Agent {
            agent_id: id.to_string(),
            agent_type: "generic".into(),
            metadata: json!({"zeta": 1, "alpha": {"b": 2, "a": 1}})
                .as_object()
                .cloned()
                .unwrap(),
            keys: vec![AgentKey {
                public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                version: 1,
                valid_until: None,
            }],
            webhook_url: None,
            webhook_secret: None,
            previous_webhook_secret: None,
            trusted_agents: Vec::new(),
            last_heartbeat: T0,
            online: true,
            heartbeat_interval_ms: 60_000,
            heartbeat_timeout_ms: 300_000,
            created_at: T0,
            updated_at: T0,
        }
    }

    /// A queued message for `recipient`, visible at `at`, living an hour.
    fn message(id: &str, recipient: &str, at: Millis) -> Message {
        let envelope = json!({
            "version": "1.0",
            "id": id,
            "to": format!("agent://{recipient}"),
            "from": "agent://sender",
            "subject": "task",
            "body": {"z": [1, 2.5, "é"], "a": null, "10": true, "2": false},
            "timestamp": "2023-11-14T22:13:20Z",
        });
        Message {
            idempotency_key: Some(id.to_string()),
            content_hash: format!("hash-of-{id}"),
            ..Message::queued(
                id.to_string(),
                recipient.to_string(),
                "sender".into(),
                envelope.into(),
                at,
                60 * MINUTE,
            )
        }
    }

    fn delivery(id: &str, message_id: &str, agent_id: &str, due: Millis) -> Delivery {
        Delivery {
            id: id.to_string(),
            message_id: message_id.to_string(),
            agent_id: agent_id.to_string(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: due,
            created_at: due,
            updated_at: due,
            last_status: None,
            last_error: None,
        }
    }

    async fn setup_agents(store: &Arc<dyn Store>, ids: &[&str]) {
        for id in ids {
            store.create_agent(agent(id)).await.unwrap();
        }
    }

    async fn enqueue(store: &Arc<dyn Store>, message: Message) -> Message {
        match store.enqueue(message, QUOTA, None).await.unwrap() {
            Enqueued::Created(m) => m,
            Enqueued::Duplicate(m) => panic!("unexpected duplicate {}", m.id),
        }
    }

    async fn lease(
        store: &Arc<dyn Store>,
        recipient: &str,
        now: Millis,
        max_messages: usize,
    ) -> Vec<Message> {
        lease_with(store, recipient, now, max_messages, MAX_ATTEMPTS).await
    }

    async fn lease_with(
        store: &Arc<dyn Store>,
        recipient: &str,
        now: Millis,
        max_messages: usize,
        max_attempts: u32,
    ) -> Vec<Message> {
        store
            .lease(&LeaseRequest {
                recipient: recipient.to_string(),
                now,
                visibility_ms: MINUTE,
                max_messages,
                max_attempts,
            })
            .await
            .unwrap()
    }

    fn ack_request(recipient: &str, id: &str, lease_id: Option<&str>, now: Millis) -> AckRequest {
        AckRequest {
            recipient: recipient.to_string(),
            message_id: id.to_string(),
            lease_id: lease_id.map(str::to_string),
            result: Some(json!({"done": true, "n": 3})),
            now,
        }
    }

    fn nack_request(
        recipient: &str,
        id: &str,
        lease_id: Option<&str>,
        action: NackAction,
        now: Millis,
    ) -> NackRequest {
        NackRequest {
            recipient: recipient.to_string(),
            message_id: id.to_string(),
            lease_id: lease_id.map(str::to_string),
            action,
            max_attempts: MAX_ATTEMPTS,
            now,
        }
    }

    async fn get(store: &Arc<dyn Store>, id: &str) -> Message {
        store
            .get_message(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("message {id} missing"))
    }

    fn ids(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.id.as_str()).collect()
    }

    pub async fn agents_create_get_and_refuse_taken_ids(store: Arc<dyn Store>) {
        let a = agent("alice");
        store.create_agent(a.clone()).await.unwrap();
        assert_eq!(store.get_agent("alice").await.unwrap(), Some(a));
        assert!(matches!(
            store.create_agent(agent("alice")).await,
            Err(StoreError::AgentExists)
        ));
        assert_eq!(store.get_agent("bob").await.unwrap(), None);
    }

    pub async fn update_agent_applies_each_change(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice"]).await;
        let changes = [
            AgentChange::Heartbeat {
                now: T0 + 1,
                metadata: json!({"alpha": "replaced", "new": [1]})
                    .as_object()
                    .cloned(),
                max_metadata_bytes: usize::MAX,
            },
            AgentChange::AddTrusted {
                agent_id: "bob".into(),
                now: T0 + 2,
            },
            AgentChange::AddTrusted {
                agent_id: "carol".into(),
                now: T0 + 3,
            },
            AgentChange::RemoveTrusted {
                agent_id: "bob".into(),
                now: T0 + 4,
            },
            AgentChange::SetWebhook {
                url: Some("https://example.test/hook".into()),
                secret: Some("whsec_c2VjcmV0".into()),
                overlap_until: T0 + 5,
                now: T0 + 5,
            },
            AgentChange::SetWebhook {
                url: Some("https://example.test/hook".into()),
                secret: Some("whsec_bmV3".into()),
                overlap_until: T0 + MINUTE,
                now: T0 + 5,
            },
            AgentChange::RotateKey {
                public_key: "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=".into(),
                overlap_until: T0 + MINUTE,
                now: T0 + 6,
            },
        ];
        let mut expected = agent("alice");
        for change in &changes {
            change.apply(&mut expected).unwrap();
            let updated = store.update_agent("alice", change).await.unwrap();
            assert_eq!(updated, expected, "after {change:?}");
        }
        assert_eq!(
            store.get_agent("alice").await.unwrap(),
            Some(expected.clone())
        );
        assert_eq!(expected.trusted_agents, vec!["carol".to_string()]);
        assert_eq!(expected.key_version(), 2);
        assert_eq!(
            expected.webhook_signing_secrets(T0 + 6),
            ["whsec_bmV3", "whsec_c2VjcmV0"],
            "the replaced webhook secret is stored with its overlap"
        );
        assert!(matches!(
            store.update_agent("nobody", &changes[0]).await,
            Err(StoreError::AgentNotFound)
        ));
    }

    pub async fn mark_offline_after_heartbeat_timeout(store: Arc<dyn Store>) {
        setup_agents(&store, &["a", "b", "c"]).await;
        let timeout = agent("a").heartbeat_timeout_ms as i64;
        store
            .update_agent(
                "c",
                &AgentChange::Heartbeat {
                    now: T0 + MINUTE,
                    metadata: None,
                    max_metadata_bytes: usize::MAX,
                },
            )
            .await
            .unwrap();
        assert_eq!(store.mark_offline(T0 + timeout - 1, 10).await.unwrap(), 0);
        assert_eq!(store.mark_offline(T0 + timeout, 1).await.unwrap(), 1);
        assert_eq!(store.mark_offline(T0 + timeout, 10).await.unwrap(), 1);
        assert_eq!(store.mark_offline(T0 + timeout, 10).await.unwrap(), 0);
        assert!(!store.get_agent("a").await.unwrap().unwrap().online);
        assert!(store.get_agent("c").await.unwrap().unwrap().online);
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.agents_total, stats.agents_online), (3, 1));
        let back = store
            .update_agent(
                "a",
                &AgentChange::Heartbeat {
                    now: T0 + timeout + 1,
                    metadata: None,
                    max_metadata_bytes: usize::MAX,
                },
            )
            .await
            .unwrap();
        assert!(back.online);
    }

    pub async fn enqueue_needs_a_registered_recipient(store: Arc<dyn Store>) {
        assert!(matches!(
            store.enqueue(message("m1", "ghost", T0), QUOTA, None).await,
            Err(StoreError::AgentNotFound)
        ));
        assert_eq!(store.get_message("m1").await.unwrap(), None);
    }

    pub async fn enqueue_stores_the_message_verbatim(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        let m = message("m1", "bob", T0);
        assert_eq!(enqueue(&store, m.clone()).await, m);
        let stored = get(&store, "m1").await;
        assert_eq!(stored, m);
        // Key order of the envelope is part of what is delivered.
        assert_eq!(stored.envelope.to_string(), m.envelope.to_string());
        assert_eq!(store.get_message("other").await.unwrap(), None);
    }

    pub async fn lease_takes_oldest_first_with_fresh_lease_ids(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        enqueue(&store, message("late", "bob", T0 + 5)).await;
        enqueue(&store, message("early", "bob", T0)).await;
        enqueue(&store, message("tie", "bob", T0)).await;
        enqueue(&store, message("other-inbox", "carol", T0)).await;
        let now = T0 + 10;
        let leased = lease(&store, "bob", now, 2).await;
        assert_eq!(ids(&leased), ["early", "tie"]);
        for m in &leased {
            assert_eq!(m.state, MessageState::Leased);
            assert_eq!(m.attempts, 1);
            assert_eq!(m.lease_until, Some(now + MINUTE));
            assert!(!m.lease_id.as_deref().unwrap_or_default().is_empty());
            assert_eq!(get(&store, &m.id).await, *m);
        }
        assert_ne!(leased[0].lease_id, leased[1].lease_id);
        let rest = lease(&store, "bob", now, 10).await;
        assert_eq!(ids(&rest), ["late"]);
        assert!(lease(&store, "bob", now, 10).await.is_empty());
        assert!(lease(&store, "nobody", now, 10).await.is_empty());
    }

    pub async fn leased_message_is_invisible_until_its_lease_ends(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("m1", "bob", T0)).await;
        let first = lease(&store, "bob", T0, 1).await.remove(0);
        let until = first.lease_until.unwrap();
        assert!(lease(&store, "bob", T0, 1).await.is_empty());
        assert!(lease(&store, "bob", until - 1, 1).await.is_empty());
        // The lease ended without ack: the next pull takes it again.
        let second = lease(&store, "bob", until, 1).await.remove(0);
        assert_eq!(second.id, "m1");
        assert_eq!(second.attempts, 2);
        assert_ne!(second.lease_id, first.lease_id);
        assert_eq!(second.lease_until, Some(until + MINUTE));
        // The stale consumer cannot ack any more.
        assert!(matches!(
            store
                .ack(&ack_request(
                    "bob",
                    "m1",
                    first.lease_id.as_deref(),
                    until + 1
                ))
                .await,
            Err(StoreError::LeaseMismatch)
        ));
    }

    pub async fn delayed_message_waits_for_visible_at(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("later", "bob", T0 + MINUTE)).await;
        enqueue(&store, message("now", "bob", T0)).await;
        assert_eq!(ids(&lease(&store, "bob", T0, 10).await), ["now"]);
        store
            .ack(&ack_request("bob", "now", None, T0))
            .await
            .unwrap();
        assert!(lease(&store, "bob", T0 + MINUTE - 1, 10).await.is_empty());
        assert_eq!(ids(&lease(&store, "bob", T0 + MINUTE, 10).await), ["later"]);
    }

    pub async fn next_available_at_follows_delays_and_leases(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        let next =
            |store: Arc<dyn Store>| async move { store.next_available_at("bob").await.unwrap() };
        assert_eq!(next(store.clone()).await, None, "empty inbox");
        assert_eq!(store.next_available_at("nobody").await.unwrap(), None);
        enqueue(&store, message("later", "bob", T0 + 10 * MINUTE)).await;
        enqueue(&store, message("now", "bob", T0)).await;
        assert_eq!(next(store.clone()).await, Some(T0));
        assert_eq!(ids(&lease(&store, "bob", T0, 1).await), ["now"]);
        assert_eq!(next(store.clone()).await, Some(T0 + MINUTE), "lease end");
        store
            .ack(&ack_request("bob", "now", None, T0))
            .await
            .unwrap();
        assert_eq!(next(store.clone()).await, Some(T0 + 10 * MINUTE));
        assert_eq!(
            ids(&lease(&store, "bob", T0 + 10 * MINUTE, 1).await),
            ["later"]
        );
        store
            .ack(&ack_request("bob", "later", None, T0 + 10 * MINUTE))
            .await
            .unwrap();
        assert_eq!(next(store.clone()).await, None, "only ended messages left");
    }

    pub async fn expired_lease_at_max_attempts_dies_at_next_pull(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("m1", "bob", T0)).await;
        enqueue(&store, message("m2", "bob", T0 + 10 * MINUTE)).await;
        let first = lease_with(&store, "bob", T0, 1, 2).await;
        assert_eq!((ids(&first), first[0].attempts), (vec!["m1"], 1));
        let second = lease_with(&store, "bob", T0 + MINUTE, 1, 2).await;
        assert_eq!((ids(&second), second[0].attempts), (vec!["m1"], 2));
        // m1's second lease ended at the limit: the next pull dead-letters it
        // on the way and goes on to m2.
        let now = T0 + 10 * MINUTE;
        assert_eq!(ids(&lease_with(&store, "bob", now, 1, 2).await), ["m2"]);
        let dead = get(&store, "m1").await;
        assert_eq!(dead.state, MessageState::Dead);
        assert_eq!(dead.dead_reason.as_deref(), Some(dead_reason::MAX_ATTEMPTS));
        assert_eq!(dead.ended_at, Some(now));
        assert_eq!(dead.attempts, 2);
        assert_eq!(dead.lease_id, None);
    }

    pub async fn ttl_expires_during_lease_and_batch_fills_up(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        let mut short = message("short", "bob", T0);
        short.expires_at = T0 + 5;
        enqueue(&store, short).await;
        enqueue(&store, message("a", "bob", T0 + 1)).await;
        enqueue(&store, message("b", "bob", T0 + 2)).await;
        let leased = lease(&store, "bob", T0 + 10, 2).await;
        assert_eq!(ids(&leased), ["a", "b"]);
        let expired = get(&store, "short").await;
        assert_eq!(expired.state, MessageState::Expired);
        assert_eq!(expired.ended_at, Some(T0 + 10));
        assert_eq!(expired.attempts, 0);
    }

    pub async fn ack_many_settles_each_entry_on_its_own(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        for id in ["m1", "m2", "m3", "m4"] {
            enqueue(&store, message(id, "bob", T0)).await;
        }
        let now = T0 + 1;
        let leased = lease(&store, "bob", now, 3).await;
        assert_eq!(ids(&leased), ["m1", "m2", "m3"]);
        let batch = [
            ack_request("bob", "m1", leased[0].lease_id.as_deref(), now),
            ack_request("bob", "m2", Some("stale"), now),
            ack_request("bob", "m3", None, now),
            ack_request("bob", "m4", None, now),
            ack_request("bob", "missing", None, now),
            ack_request("bob", "m1", None, now),
        ];
        let outcomes = store.ack_many(&batch).await.unwrap();
        assert_eq!(outcomes.len(), batch.len());
        assert_eq!(outcomes[0].as_ref().unwrap().state, MessageState::Acked);
        assert!(matches!(outcomes[1], Err(StoreError::LeaseMismatch)));
        assert_eq!(outcomes[2].as_ref().unwrap().id, "m3");
        assert!(matches!(outcomes[3], Err(StoreError::NotLeased)));
        assert!(matches!(outcomes[4], Err(StoreError::MessageNotFound)));
        assert!(
            matches!(outcomes[5], Err(StoreError::NotLeased)),
            "an entry sees the entries before it"
        );
        // The refused entry did not undo the others, and changed nothing itself.
        assert_eq!(get(&store, "m1").await.state, MessageState::Acked);
        assert_eq!(get(&store, "m3").await.state, MessageState::Acked);
        assert_eq!(get(&store, "m2").await, leased[1]);
        assert_eq!(get(&store, "m4").await.state, MessageState::Queued);
    }

    pub async fn ack_checks_state_and_lease_id(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        enqueue(&store, message("m1", "bob", T0)).await;
        enqueue(&store, message("m2", "bob", T0)).await;
        let now = T0 + 1;
        assert!(matches!(
            store.ack(&ack_request("bob", "m1", None, now)).await,
            Err(StoreError::NotLeased)
        ));
        let leased = lease(&store, "bob", now, 2).await;
        let lease_id = leased[0].lease_id.as_deref();
        assert!(matches!(
            store
                .ack(&ack_request("bob", "m1", Some("stale"), now))
                .await,
            Err(StoreError::LeaseMismatch)
        ));
        assert!(matches!(
            store.ack(&ack_request("bob", "missing", None, now)).await,
            Err(StoreError::MessageNotFound)
        ));
        assert!(matches!(
            store.ack(&ack_request("carol", "m1", lease_id, now)).await,
            Err(StoreError::MessageNotFound)
        ));
        let acked = store
            .ack(&ack_request("bob", "m1", lease_id, now + 1))
            .await
            .unwrap();
        assert_eq!(acked.state, MessageState::Acked);
        assert_eq!(acked.acked_at, Some(now + 1));
        assert_eq!(acked.ended_at, Some(now + 1));
        assert_eq!(acked.lease_id, None);
        assert_eq!(acked.result, Some(json!({"done": true, "n": 3})));
        assert_eq!(get(&store, "m1").await, acked);
        assert!(matches!(
            store
                .ack(&ack_request("bob", "m1", lease_id, now + 2))
                .await,
            Err(StoreError::NotLeased)
        ));
        // Without a lease id, any current lease is accepted (compat).
        let acked = store
            .ack(&ack_request("bob", "m2", None, now))
            .await
            .unwrap();
        assert_eq!(acked.state, MessageState::Acked);
    }

    pub async fn nack_requeues_with_delay(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("m1", "bob", T0)).await;
        let leased = lease(&store, "bob", T0, 1).await.remove(0);
        let delay_until = T0 + 10 * MINUTE;
        let nacked = store
            .nack(&nack_request(
                "bob",
                "m1",
                leased.lease_id.as_deref(),
                NackAction::Requeue {
                    visible_at: delay_until,
                },
                T0 + 1,
            ))
            .await
            .unwrap();
        assert_eq!(nacked.state, MessageState::Queued);
        assert_eq!(nacked.lease_id, None);
        assert_eq!(nacked.lease_until, None);
        assert_eq!(nacked.visible_at, delay_until);
        assert_eq!(nacked.attempts, 1, "only pulls count attempts");
        assert!(lease(&store, "bob", delay_until - 1, 1).await.is_empty());
        let again = lease(&store, "bob", delay_until, 1).await.remove(0);
        assert_eq!(again.attempts, 2);
    }

    pub async fn nack_extend_is_capped(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("m1", "bob", T0)).await;
        let leased = lease(&store, "bob", T0, 1).await.remove(0);
        let lease_id = leased.lease_id.as_deref();
        let until = leased.lease_until.unwrap();
        let cap = T0 + 12 * 60 * MINUTE;
        let extend = |extend_ms, now| {
            nack_request(
                "bob",
                "m1",
                lease_id,
                NackAction::Extend {
                    extend_ms,
                    max_lease_until: cap,
                },
                now,
            )
        };
        let extended = store.nack(&extend(MINUTE, T0 + 1)).await.unwrap();
        assert_eq!(extended.state, MessageState::Leased);
        assert_eq!(extended.lease_until, Some(until + MINUTE));
        assert_eq!(extended.lease_id, leased.lease_id);
        let capped = store.nack(&extend(24 * 60 * MINUTE, T0 + 2)).await.unwrap();
        assert_eq!(capped.lease_until, Some(cap));
        assert_eq!(capped.attempts, 1);
    }

    pub async fn nack_at_max_attempts_dead_letters(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("m1", "bob", T0)).await;
        let leased = lease_with(&store, "bob", T0, 1, 1).await.remove(0);
        let mut request = nack_request(
            "bob",
            "m1",
            leased.lease_id.as_deref(),
            NackAction::Requeue { visible_at: T0 + 1 },
            T0 + 1,
        );
        request.max_attempts = 1;
        let dead = store.nack(&request).await.unwrap();
        assert_eq!(dead.state, MessageState::Dead);
        assert_eq!(dead.dead_reason.as_deref(), Some(dead_reason::MAX_ATTEMPTS));
        assert_eq!(dead.ended_at, Some(T0 + 1));
        assert!(lease(&store, "bob", T0 + 2, 1).await.is_empty());
    }

    pub async fn lease_errors_for_nack(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("m1", "bob", T0)).await;
        let requeue = NackAction::Requeue { visible_at: T0 };
        assert!(matches!(
            store
                .nack(&nack_request("bob", "m1", None, requeue, T0))
                .await,
            Err(StoreError::NotLeased)
        ));
        assert!(matches!(
            store
                .nack(&nack_request("bob", "nope", None, requeue, T0))
                .await,
            Err(StoreError::MessageNotFound)
        ));
        lease(&store, "bob", T0, 1).await;
        assert!(matches!(
            store
                .nack(&nack_request("bob", "m1", Some("stale"), requeue, T0))
                .await,
            Err(StoreError::LeaseMismatch)
        ));
        let requeued = store
            .nack(&nack_request("bob", "m1", None, requeue, T0))
            .await
            .unwrap();
        assert_eq!(requeued.state, MessageState::Queued);
    }

    pub async fn dead_letters_page_with_cursor_and_requeue(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        let mut expected = Vec::new();
        for i in 0..5 {
            let id = format!("d{i}");
            enqueue(&store, message(&id, "bob", T0)).await;
            let leased = lease_with(&store, "bob", T0 + i, 1, 1).await.remove(0);
            let mut request = nack_request(
                "bob",
                &id,
                leased.lease_id.as_deref(),
                NackAction::Requeue { visible_at: T0 },
                // Two pairs die in the same millisecond: the cursor must split ties.
                T0 + 100 + i / 2,
            );
            request.max_attempts = 1;
            store.nack(&request).await.unwrap();
            expected.push(id);
        }
        enqueue(&store, message("alive", "bob", T0)).await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store.list_dead("bob", 2, cursor.as_deref()).await.unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|m| {
                assert_eq!(m.state, MessageState::Dead);
                m.id.clone()
            }));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, expected);
        assert!(
            store
                .list_dead("carol", 10, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(matches!(
            store.list_dead("bob", 2, Some("garbage")).await,
            Err(StoreError::InvalidCursor)
        ));

        let requeued = store.requeue_dead("bob", "d0", T0 + MINUTE).await.unwrap();
        assert_eq!(requeued.state, MessageState::Queued);
        assert_eq!(requeued.attempts, 0);
        assert_eq!(requeued.dead_reason, None);
        assert_eq!(requeued.ended_at, None);
        assert_eq!(requeued.visible_at, T0 + MINUTE);
        assert!(matches!(
            store.requeue_dead("bob", "alive", T0).await,
            Err(StoreError::NotDead)
        ));
        assert!(matches!(
            store.requeue_dead("bob", "nope", T0).await,
            Err(StoreError::MessageNotFound)
        ));
        assert!(matches!(
            store.requeue_dead("carol", "d1", T0).await,
            Err(StoreError::MessageNotFound)
        ));
        let page = store.list_dead("bob", 10, None).await.unwrap();
        assert_eq!(ids(&page.items), ["d1", "d2", "d3", "d4"]);
        assert_eq!(page.next_cursor, None);
        let leased = lease(&store, "bob", T0 + MINUTE, 10).await;
        assert_eq!(ids(&leased), ["alive", "d0"]);
    }

    pub async fn idempotency_duplicate_and_conflict(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        let mut first = message("m1", "bob", T0);
        first.idempotency_key = Some("key-1".into());
        enqueue(&store, first.clone()).await;
        lease(&store, "bob", T0, 1).await;

        // Same key, same content: the original, in its current state.
        let mut retry = message("m1-retry", "bob", T0 + 1);
        retry.idempotency_key = Some("key-1".into());
        retry.content_hash = first.content_hash.clone();
        match store.enqueue(retry.clone(), QUOTA, None).await.unwrap() {
            Enqueued::Duplicate(original) => {
                assert_eq!(original.id, "m1");
                assert_eq!(original.state, MessageState::Leased);
            }
            other => panic!("expected a duplicate, got {other:?}"),
        }
        // Same key, other content: a conflict.
        retry.content_hash = "different".into();
        assert!(matches!(
            store.enqueue(retry.clone(), QUOTA, None).await,
            Err(StoreError::IdempotencyConflict)
        ));
        // Keys are scoped to the recipient.
        let mut elsewhere = message("m2", "carol", T0);
        elsewhere.idempotency_key = Some("key-1".into());
        enqueue(&store, elsewhere).await;
        // A duplicate schedules no delivery.
        retry.content_hash = first.content_hash.clone();
        let d = delivery("dup-delivery", "m1-retry", "bob", T0);
        store.enqueue(retry, QUOTA, Some(d)).await.unwrap();
        assert_eq!(store.get_delivery("dup-delivery").await.unwrap(), None);
        assert_eq!(store.get_message("m1-retry").await.unwrap(), None);
    }

    pub async fn quota_counts_live_messages_only(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        store
            .enqueue(message("m1", "bob", T0), 2, None)
            .await
            .unwrap();
        store
            .enqueue(message("m2", "bob", T0), 2, None)
            .await
            .unwrap();
        assert!(matches!(
            store.enqueue(message("m3", "bob", T0), 2, None).await,
            Err(StoreError::InboxFull)
        ));
        assert_eq!(store.get_message("m3").await.unwrap(), None);
        // Leased messages are still live.
        let leased = lease(&store, "bob", T0, 1).await.remove(0);
        assert!(matches!(
            store.enqueue(message("m3", "bob", T0), 2, None).await,
            Err(StoreError::InboxFull)
        ));
        store
            .ack(&ack_request(
                "bob",
                &leased.id,
                leased.lease_id.as_deref(),
                T0,
            ))
            .await
            .unwrap();
        store
            .enqueue(message("m3", "bob", T0), 2, None)
            .await
            .unwrap();
    }

    pub async fn message_id_of_another_inbox_is_taken(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        enqueue(&store, message("shared-id", "bob", T0)).await;
        let mut clash = message("shared-id", "carol", T0);
        clash.idempotency_key = None;
        assert!(matches!(
            store.enqueue(clash, QUOTA, None).await,
            Err(StoreError::MessageIdTaken)
        ));
        assert_eq!(get(&store, "shared-id").await.recipient, "bob");
    }

    pub async fn delete_agent_dead_letters_inbox_and_cancels_deliveries(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        for id in ["m1", "m2", "m3"] {
            let d = delivery(&format!("del-{id}"), id, "bob", T0);
            store
                .enqueue(message(id, "bob", T0), QUOTA, Some(d))
                .await
                .unwrap();
        }
        let d = delivery("del-carol", "c1", "carol", T0);
        store
            .enqueue(message("c1", "carol", T0), QUOTA, Some(d))
            .await
            .unwrap();
        let leased = lease(&store, "bob", T0, 1).await.remove(0);
        store
            .ack(&ack_request("bob", &leased.id, None, T0 + 1))
            .await
            .unwrap();
        lease(&store, "bob", T0 + 1, 1).await;

        assert!(store.delete_agent("bob", T0 + 2).await.unwrap());
        assert_eq!(store.get_agent("bob").await.unwrap(), None);
        assert_eq!(get(&store, "m1").await.state, MessageState::Acked);
        for id in ["m2", "m3"] {
            let m = get(&store, id).await;
            assert_eq!(m.state, MessageState::Dead, "{id}");
            assert_eq!(
                m.dead_reason.as_deref(),
                Some(dead_reason::RECIPIENT_DELETED)
            );
            assert_eq!(m.ended_at, Some(T0 + 2));
            assert_eq!(m.lease_id, None);
        }
        for id in ["m1", "m2", "m3"] {
            let d = store
                .get_delivery(&format!("del-{id}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(d.state, DeliveryState::Cancelled);
        }
        let carol = store.get_delivery("del-carol").await.unwrap().unwrap();
        assert_eq!(carol.state, DeliveryState::Pending);
        assert_eq!(get(&store, "c1").await.state, MessageState::Queued);
        assert!(matches!(
            store.enqueue(message("m4", "bob", T0), QUOTA, None).await,
            Err(StoreError::AgentNotFound)
        ));
        assert!(!store.delete_agent("bob", T0 + 3).await.unwrap());

        // Re-registering the id does not resurrect the old inbox.
        store.create_agent(agent("bob")).await.unwrap();
        assert!(lease(&store, "bob", T0 + 4, 10).await.is_empty());
        assert_eq!(
            store.list_dead("bob", 10, None).await.unwrap().items.len(),
            2
        );
        enqueue(&store, message("m5", "bob", T0 + 4)).await;
        assert_eq!(ids(&lease(&store, "bob", T0 + 4, 10).await), ["m5"]);
    }

    pub async fn expire_sweep_ends_live_messages_past_ttl(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        let mut acked = message("acked", "bob", T0);
        acked.expires_at = T0 + 1;
        enqueue(&store, acked).await;
        lease(&store, "bob", T0, 1).await;
        store
            .ack(&ack_request("bob", "acked", None, T0))
            .await
            .unwrap();
        for (id, ttl) in [("e1", 10), ("e2", 20), ("e3", 30), ("keep", 10 * MINUTE)] {
            let mut m = message(id, "bob", T0);
            m.expires_at = T0 + ttl;
            enqueue(&store, m).await;
        }
        assert_eq!(ids(&lease(&store, "bob", T0, 1).await), ["e1"]);
        assert_eq!(store.expire_messages(T0 + 25, 1).await.unwrap(), 1);
        assert_eq!(store.expire_messages(T0 + 25, 10).await.unwrap(), 1);
        assert_eq!(store.expire_messages(T0 + 25, 10).await.unwrap(), 0);
        for id in ["e1", "e2"] {
            let m = get(&store, id).await;
            assert_eq!(m.state, MessageState::Expired, "{id}");
            assert_eq!(m.ended_at, Some(T0 + 25));
            assert_eq!(m.lease_id, None);
        }
        assert_eq!(get(&store, "e3").await.state, MessageState::Queued);
        let acked = get(&store, "acked").await;
        assert_eq!(
            (acked.state, acked.ended_at),
            (MessageState::Acked, Some(T0))
        );
    }

    pub async fn reclaim_sweep_requeues_or_kills_expired_leases(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        for id in ["b1", "b2", "b3"] {
            enqueue(&store, message(id, "bob", T0)).await;
        }
        enqueue(&store, message("c1", "carol", T0)).await;
        lease(&store, "bob", T0, 3).await;
        lease(&store, "carol", T0, 1).await;
        let expired = T0 + MINUTE;
        let reclaim = |max_attempts, limit, recipient: Option<&str>| ReclaimRequest {
            now: expired,
            max_attempts,
            limit,
            recipient: recipient.map(str::to_string),
        };
        let none = store
            .reclaim_expired_leases(&ReclaimRequest {
                now: expired - 1,
                ..reclaim(MAX_ATTEMPTS, 10, None)
            })
            .await
            .unwrap();
        assert_eq!(none, ReclaimCounts::default());
        // Only carol's inbox.
        let counts = store
            .reclaim_expired_leases(&reclaim(MAX_ATTEMPTS, 10, Some("carol")))
            .await
            .unwrap();
        assert_eq!(
            counts,
            ReclaimCounts {
                requeued: 1,
                dead: 0
            }
        );
        assert_eq!(get(&store, "c1").await.state, MessageState::Queued);
        assert_eq!(get(&store, "b1").await.state, MessageState::Leased);
        // Bounded by the limit; at max attempts they die instead.
        let counts = store
            .reclaim_expired_leases(&reclaim(1, 2, None))
            .await
            .unwrap();
        assert_eq!(
            counts,
            ReclaimCounts {
                requeued: 0,
                dead: 2
            }
        );
        let counts = store
            .reclaim_expired_leases(&reclaim(MAX_ATTEMPTS, 10, None))
            .await
            .unwrap();
        assert_eq!(
            counts,
            ReclaimCounts {
                requeued: 1,
                dead: 0
            }
        );
        let states: Vec<MessageState> = [
            get(&store, "b1").await,
            get(&store, "b2").await,
            get(&store, "b3").await,
        ]
        .iter()
        .map(|m| m.state)
        .collect();
        assert_eq!(
            states.iter().filter(|s| **s == MessageState::Dead).count(),
            2
        );
        let requeued = [
            get(&store, "b1").await,
            get(&store, "b2").await,
            get(&store, "b3").await,
        ]
        .into_iter()
        .find(|m| m.state == MessageState::Queued)
        .unwrap();
        assert_eq!(requeued.visible_at, expired);
        assert_eq!(requeued.lease_id, None);
        assert_eq!(requeued.attempts, 1);
        let dead = store.list_dead("bob", 10, None).await.unwrap().items;
        assert!(
            dead.iter()
                .all(|m| m.dead_reason.as_deref() == Some(dead_reason::MAX_ATTEMPTS))
        );
    }

    pub async fn purge_deletes_and_forgets_idempotency_keys(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        for id in ["old", "recent", "live"] {
            enqueue(&store, message(id, "bob", T0)).await;
        }
        let leased = lease(&store, "bob", T0, 2).await;
        assert_eq!(ids(&leased), ["old", "recent"]);
        store
            .ack(&ack_request("bob", "old", None, T0 + 10))
            .await
            .unwrap();
        store
            .ack(&ack_request("bob", "recent", None, T0 + 20))
            .await
            .unwrap();
        assert_eq!(store.purge_retained(T0 + 10, 10).await.unwrap(), 0);
        assert_eq!(store.purge_retained(T0 + 11, 10).await.unwrap(), 1);
        assert_eq!(store.get_message("old").await.unwrap(), None);
        assert_eq!(get(&store, "recent").await.state, MessageState::Acked);
        assert_eq!(get(&store, "live").await.state, MessageState::Queued);
        assert_eq!(
            store.purge_retained(T0 + 100 * MINUTE, 10).await.unwrap(),
            1
        );
        assert_eq!(get(&store, "live").await.state, MessageState::Queued);
        // The purged message's key is forgotten: the same send is new again.
        let again = message("old", "bob", T0 + 30);
        assert!(matches!(
            store.enqueue(again, QUOTA, None).await.unwrap(),
            Enqueued::Created(_)
        ));
        let counts = store.inbox_stats("bob").await.unwrap();
        assert_eq!((counts.total, counts.queued, counts.acked), (2, 2, 0));
    }

    pub async fn stats_count_by_state(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        for i in 0..6 {
            enqueue(&store, message(&format!("b{i}"), "bob", T0 + i)).await;
        }
        enqueue(&store, message("c0", "carol", T0)).await;
        let leased = lease_with(&store, "bob", T0 + 10, 4, 1).await;
        store
            .ack(&ack_request("bob", &leased[0].id, None, T0 + 10))
            .await
            .unwrap();
        let mut kill = nack_request(
            "bob",
            &leased[1].id,
            None,
            NackAction::Requeue { visible_at: T0 },
            T0 + 10,
        );
        kill.max_attempts = 1;
        store.nack(&kill).await.unwrap();
        let mut short = message("b-expiring", "bob", T0);
        short.expires_at = T0 + 1;
        enqueue(&store, short).await;
        store.expire_messages(T0 + 10, 10).await.unwrap();

        let bob = store.inbox_stats("bob").await.unwrap();
        assert_eq!(
            bob,
            StateCounts {
                total: 7,
                queued: 2,
                leased: 2,
                acked: 1,
                expired: 1,
                dead: 1,
            }
        );
        assert_eq!(
            store.inbox_stats("nobody").await.unwrap(),
            StateCounts::default()
        );
        let hub = store.stats().await.unwrap();
        assert_eq!(hub.agents_total, 2);
        assert_eq!(hub.agents_online, 2);
        assert_eq!(hub.messages.total, 8);
        assert_eq!(hub.messages.queued, 3);
    }

    pub async fn deliveries_claim_record_and_cancel(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        let due = T0 + 100;
        store
            .enqueue(
                message("m1", "bob", T0),
                QUOTA,
                Some(delivery("d1", "m1", "bob", due)),
            )
            .await
            .unwrap();
        store
            .enqueue(
                message("m2", "bob", T0),
                QUOTA,
                Some(delivery("d2", "m2", "bob", due + 1)),
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_delivery("d1").await.unwrap(),
            Some(delivery("d1", "m1", "bob", due))
        );
        assert!(
            store
                .claim_due_deliveries(due - 1, 10, 30_000)
                .await
                .unwrap()
                .is_empty()
        );
        let claimed = store.claim_due_deliveries(due, 10, 30_000).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, "d1");
        assert_eq!(claimed[0].next_attempt_at, due + 30_000);
        // Claimed: not handed out again while the claim lasts.
        let claimed = store
            .claim_due_deliveries(due + 1, 10, 30_000)
            .await
            .unwrap();
        assert_eq!(ids_of(&claimed), ["d2"]);

        let attempt = |delivery_id: &str, message_id: &str, n, at, status| DeliveryAttempt {
            delivery_id: delivery_id.to_string(),
            message_id: message_id.to_string(),
            agent_id: "bob".into(),
            attempt: n,
            at,
            status_code: status,
            latency_ms: 12,
            error: status.is_none().then(|| "connection refused".to_string()),
        };
        let retry_at = due + 5_000;
        store
            .record_attempt(
                &attempt("d1", "m1", 1, due, None),
                AttemptOutcome::RetryAt(retry_at),
            )
            .await
            .unwrap();
        let d1 = store.get_delivery("d1").await.unwrap().unwrap();
        assert_eq!(d1.state, DeliveryState::Pending);
        assert_eq!(d1.attempts, 1);
        assert_eq!(d1.next_attempt_at, retry_at);
        assert_eq!(d1.last_error.as_deref(), Some("connection refused"));
        assert_eq!(d1.updated_at, due);
        let claimed = store
            .claim_due_deliveries(retry_at, 10, 30_000)
            .await
            .unwrap();
        assert_eq!(ids_of(&claimed), ["d1"]);
        store
            .record_attempt(
                &attempt("d1", "m1", 2, retry_at, Some(204)),
                AttemptOutcome::Delivered,
            )
            .await
            .unwrap();
        let d1 = store.get_delivery("d1").await.unwrap().unwrap();
        assert_eq!(d1.state, DeliveryState::Delivered);
        assert_eq!(d1.attempts, 2);
        assert_eq!(d1.last_status, Some(204));
        assert!(
            store
                .claim_due_deliveries(due + 10 * 60 * MINUTE, 10, 1)
                .await
                .unwrap()
                .iter()
                .all(|d| d.id != "d1")
        );

        store
            .record_attempt(
                &attempt("d2", "m2", 1, due + 1, Some(500)),
                AttemptOutcome::Failed,
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_delivery("d2").await.unwrap().unwrap().state,
            DeliveryState::Failed
        );
        let listed = store.list_attempts("bob", 10).await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|a| (a.delivery_id.as_str(), a.attempt))
                .collect::<Vec<_>>(),
            [("d2", 1), ("d1", 2), ("d1", 1)]
        );
        assert_eq!(listed[1], attempt("d1", "m1", 2, retry_at, Some(204)));
        assert_eq!(store.list_attempts("bob", 1).await.unwrap().len(), 1);
        assert!(store.list_attempts("nobody", 10).await.unwrap().is_empty());

        store
            .enqueue(
                message("m3", "bob", T0),
                QUOTA,
                Some(delivery("d3", "m3", "bob", due)),
            )
            .await
            .unwrap();
        assert_eq!(store.cancel_deliveries("bob", due + 2).await.unwrap(), 1);
        assert_eq!(store.cancel_deliveries("bob", due + 2).await.unwrap(), 0);
        let d3 = store.get_delivery("d3").await.unwrap().unwrap();
        assert_eq!(
            (d3.state, d3.updated_at),
            (DeliveryState::Cancelled, due + 2)
        );
        // A late attempt result does not revive a cancelled delivery.
        store
            .record_attempt(
                &attempt("d3", "m3", 1, due + 3, Some(200)),
                AttemptOutcome::Delivered,
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_delivery("d3").await.unwrap().unwrap().state,
            DeliveryState::Cancelled
        );
        assert!(
            store
                .claim_due_deliveries(due + 10 * 60 * MINUTE, 10, 1)
                .await
                .unwrap()
                .is_empty()
        );
    }

    fn ids_of(deliveries: &[Delivery]) -> Vec<&str> {
        deliveries.iter().map(|d| d.id.as_str()).collect()
    }

    fn audit_event(i: i64) -> NewAuditEvent {
        NewAuditEvent {
            at: T0 + i,
            kind: "agent.registered".into(),
            agent_id: (i % 2 == 0).then(|| format!("agent-{i}")),
            detail: json!({"i": i, "note": "ünïcode", "nested": {"z": 1, "a": [true, null]}}),
        }
    }

    pub async fn audit_chain_appends_and_verifies(store: Arc<dyn Store>) {
        assert!(store.list_audit(None, 10).await.unwrap().is_empty());
        let mut appended = Vec::new();
        for i in 0..5 {
            let event = store.append_audit(audit_event(i)).await.unwrap();
            assert_eq!(event.seq, i as u64 + 1);
            assert_eq!(event.detail, audit_event(i).detail);
            appended.push(event);
        }
        let all = store.list_audit(None, 100).await.unwrap();
        assert_eq!(all, appended);
        assert_eq!(first_broken_link(GENESIS_HASH, &all), None);
        let page = store.list_audit(Some(2), 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(first_broken_link(&all[1].hash, &page), None);
        assert!(store.list_audit(Some(5), 10).await.unwrap().is_empty());
    }

    pub async fn export_pages_and_import_is_idempotent(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "alice", "carol"]).await;
        for id in ["m3", "m1", "m2"] {
            enqueue(&store, message(id, "bob", T0)).await;
        }
        let mut agents = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.export_agents(after.as_deref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.agent_id.clone());
            agents.extend(page);
        }
        assert_eq!(
            agents
                .iter()
                .map(|a| a.agent_id.as_str())
                .collect::<Vec<_>>(),
            ["alice", "bob", "carol"]
        );
        let mut messages = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.export_messages(after.as_deref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            messages.extend(page);
        }
        assert_eq!(ids(&messages), ["m1", "m2", "m3"]);

        // Importing what is already there changes nothing.
        for a in agents {
            assert!(!store.import_agent(a).await.unwrap());
        }
        for m in messages {
            assert!(!store.import_message(m).await.unwrap());
        }

        // A new record arrives exactly as exported, lease and all.
        let mut imported_agent = agent("dave");
        imported_agent.online = false;
        imported_agent.trusted_agents = vec!["bob".into()];
        imported_agent.webhook_url = Some("https://example.test/dave".into());
        assert!(store.import_agent(imported_agent.clone()).await.unwrap());
        assert!(!store.import_agent(imported_agent.clone()).await.unwrap());
        assert_eq!(store.get_agent("dave").await.unwrap(), Some(imported_agent));

        let mut leased = message("imported", "dave", T0);
        leased.state = MessageState::Leased;
        leased.attempts = 3;
        leased.lease_id = Some("lease-from-elsewhere".into());
        leased.lease_until = Some(T0 + MINUTE);
        leased.idempotency_key = Some("imported-key".into());
        leased.result = Some(json!([1, "two"]));
        assert!(store.import_message(leased.clone()).await.unwrap());
        assert!(!store.import_message(leased.clone()).await.unwrap());
        assert_eq!(get(&store, "imported").await, leased);
        let mut dead = message("imported-dead", "ghost", T0);
        dead.state = MessageState::Dead;
        dead.ended_at = Some(T0);
        dead.dead_reason = Some(dead_reason::RECIPIENT_DELETED.into());
        assert!(store.import_message(dead.clone()).await.unwrap());
        assert_eq!(get(&store, "imported-dead").await, dead);

        // The imported lease and idempotency key are live state.
        assert!(lease(&store, "dave", T0 + 1, 10).await.is_empty());
        store
            .ack(&ack_request(
                "dave",
                "imported",
                Some("lease-from-elsewhere"),
                T0 + 2,
            ))
            .await
            .unwrap();
        let mut retry = message("imported-retry", "dave", T0 + 3);
        retry.idempotency_key = Some("imported-key".into());
        retry.content_hash = leased.content_hash.clone();
        assert!(matches!(
            store.enqueue(retry, QUOTA, None).await.unwrap(),
            Enqueued::Duplicate(m) if m.id == "imported"
        ));
    }

    pub async fn concurrent_leases_never_share_a_message(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        for i in 0..20 {
            enqueue(&store, message(&format!("m{i:02}"), "bob", T0)).await;
        }
        let pulls: Vec<_> = (0..40)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { lease(&store, "bob", T0 + 1, 1).await })
            })
            .collect();
        let mut leased = Vec::new();
        for pull in pulls {
            leased.extend(pull.await.unwrap());
        }
        let distinct: HashSet<&str> = leased.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(leased.len(), 20, "every message leased exactly once");
        assert_eq!(distinct.len(), 20);
        assert!(leased.iter().all(|m| m.attempts == 1));
        assert!(lease(&store, "bob", T0 + 1, 100).await.is_empty());
    }

    pub async fn concurrent_enqueues_respect_the_quota(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        let sends: Vec<_> = (0..30)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .enqueue(message(&format!("m{i:02}"), "bob", T0), 10, None)
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for send in sends {
            match send.await.unwrap() {
                Ok(Enqueued::Created(_)) => created += 1,
                Err(StoreError::InboxFull) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(created, 10);
        assert_eq!(store.inbox_stats("bob").await.unwrap().queued, 10);
    }

    pub async fn concurrent_audit_appends_keep_one_chain(store: Arc<dyn Store>) {
        let appends: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.append_audit(audit_event(i)).await.unwrap() })
            })
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        let all = store.list_audit(None, 100).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(first_broken_link(GENESIS_HASH, &all), None);
    }

    /// What a reopened store must still hold.
    pub struct Filled {
        agent: Agent,
        messages: Vec<Message>,
        delivery: Delivery,
        audit: Vec<AuditEvent>,
    }

    pub async fn reopen_fill(store: Arc<dyn Store>) -> Filled {
        setup_agents(&store, &["bob"]).await;
        let agent = store
            .update_agent(
                "bob",
                &AgentChange::AddTrusted {
                    agent_id: "alice".into(),
                    now: T0,
                },
            )
            .await
            .unwrap();
        enqueue(&store, message("leased", "bob", T0)).await;
        enqueue(&store, message("acked", "bob", T0)).await;
        enqueue(&store, message("queued", "bob", T0 + 1)).await;
        store
            .enqueue(
                message("with-delivery", "bob", T0 + 1),
                QUOTA,
                Some(delivery("d1", "with-delivery", "bob", T0)),
            )
            .await
            .unwrap();
        let leased = lease(&store, "bob", T0, 2).await;
        store
            .ack(&ack_request("bob", &leased[1].id, None, T0))
            .await
            .unwrap();
        for i in 0..3 {
            store.append_audit(audit_event(i)).await.unwrap();
        }
        let mut messages = Vec::new();
        for id in ["queued", "leased", "acked", "with-delivery"] {
            messages.push(get(&store, id).await);
        }
        Filled {
            agent,
            messages,
            delivery: store.get_delivery("d1").await.unwrap().unwrap(),
            audit: store.list_audit(None, 100).await.unwrap(),
        }
    }

    pub async fn reopen_check(store: Arc<dyn Store>, expected: Filled) {
        assert_eq!(store.get_agent("bob").await.unwrap(), Some(expected.agent));
        for m in &expected.messages {
            assert_eq!(&get(&store, &m.id).await, m);
        }
        assert_eq!(
            store.get_delivery("d1").await.unwrap(),
            Some(expected.delivery)
        );
        assert_eq!(store.list_audit(None, 100).await.unwrap(), expected.audit);
        // The lease held before the restart still holds; the chain goes on.
        let leased = lease(&store, "bob", T0 + 1, 10).await;
        assert_eq!(ids(&leased), ["queued", "with-delivery"]);
        let next = store.append_audit(audit_event(3)).await.unwrap();
        assert_eq!(next.seq, 4);
        let all = store.list_audit(None, 100).await.unwrap();
        assert_eq!(first_broken_link(GENESIS_HASH, &all), None);
    }

    fn group(id: &str, owner: &str, max_members: u32) -> Group {
        Group {
            id: id.to_string(),
            name: "Team".into(),
            created_by: owner.to_string(),
            access: GroupAccess::Open,
            join_key_hash: Some("sha256$00$ff".into()),
            settings: GroupSettings {
                history_visible: true,
                max_members,
                message_ttl_sec: 60,
            },
            created_at: T0,
            updated_at: T0,
            member_count: 0,
        }
    }

    fn member(agent_id: &str, role: GroupRole, at: Millis) -> GroupMember {
        GroupMember {
            agent_id: agent_id.to_string(),
            role,
            joined_at: at,
        }
    }

    fn post(id: &str, group_id: &str, sender: &str, at: Millis) -> GroupPost {
        let envelope = json!({"version": "1.0", "from": format!("agent://{sender}"),
            "to": group_id, "subject": "s", "body": {"10": 1, "a": [1.5]},
            "timestamp": "2023-11-14T22:13:20Z", "signature": {"alg": "ed25519", "kid": "k", "sig": "c2ln"}});
        GroupPost {
            id: id.to_string(),
            group_id: group_id.to_string(),
            sender: sender.to_string(),
            envelope: envelope.into(),
            created_at: at,
            expires_at: at + MINUTE,
            idempotency_key: Some(format!("key-{id}")),
            content_hash: format!("hash-{id}"),
            deliveries: Vec::new(),
        }
    }

    fn fan(at: Millis, quota: u64) -> FanOut {
        FanOut {
            quota,
            copy_expires_at: at + 60 * MINUTE,
            now: at,
        }
    }

    const G: &str = "group://team-0000abcd";

    pub async fn groups_create_get_update_delete(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice"]).await;
        assert!(matches!(
            store.create_group(group(G, "ghost", 5), T0).await,
            Err(StoreError::AgentNotFound)
        ));
        store.create_group(group(G, "alice", 5), T0).await.unwrap();
        assert!(matches!(
            store.create_group(group(G, "alice", 5), T0).await,
            Err(StoreError::GroupExists)
        ));
        let stored = store.get_group(G).await.unwrap().unwrap();
        assert_eq!(
            stored,
            Group {
                member_count: 1,
                ..group(G, "alice", 5)
            }
        );
        assert_eq!(
            store.group_members(G).await.unwrap(),
            [member("alice", GroupRole::Owner, T0)]
        );
        let change = GroupChange {
            name: Some("Renamed".into()),
            max_members: Some(9),
            now: T0 + 1,
            ..GroupChange::default()
        };
        let updated = store.update_group(G, &change).await.unwrap();
        assert_eq!(updated.name, "Renamed");
        assert_eq!(updated.settings.max_members, 9);
        assert!(updated.settings.history_visible, "untouched");
        assert_eq!(updated.settings.message_ttl_sec, 60, "untouched");
        assert_eq!(updated.updated_at, T0 + 1);
        assert_eq!(store.get_group(G).await.unwrap(), Some(updated));
        assert!(matches!(
            store.update_group("group://none-00000000", &change).await,
            Err(StoreError::GroupNotFound)
        ));
        store
            .post_to_group(post("p1", G, "alice", T0), fan(T0, QUOTA))
            .await
            .unwrap();
        assert!(store.delete_group(G).await.unwrap());
        assert!(!store.delete_group(G).await.unwrap());
        assert_eq!(store.get_group(G).await.unwrap(), None);
        assert!(store.group_members(G).await.unwrap().is_empty());
        assert!(
            store
                .group_history(G, 10, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(
            store
                .agent_groups("alice", 10, None)
                .await
                .unwrap()
                .is_empty()
        );
        // The id is free again.
        store.create_group(group(G, "alice", 5), T0).await.unwrap();
    }

    /// The console pages an agent's groups: `after` is an exclusive lower
    /// bound on the group id, other agents' groups never show.
    pub async fn agent_groups_page_by_group_id_after_a_cursor(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice", "bob"]).await;
        let ids = [
            "group://a-00000001",
            "group://b-00000002",
            "group://c-00000003",
            "group://d-00000004",
        ];
        for (i, id) in ids.iter().enumerate() {
            let owner = if i == 1 { "bob" } else { "alice" };
            store.create_group(group(id, owner, 5), T0).await.unwrap();
        }
        for id in [ids[0], ids[3]] {
            store
                .add_group_member(id, member("bob", GroupRole::Member, T0 + 1))
                .await
                .unwrap();
        }
        let page = |limit: usize, after: Option<&'static str>| {
            let store = store.clone();
            async move {
                store
                    .agent_groups("bob", limit, after)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|(g, r)| (g.id, r))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            page(2, None).await,
            [
                (ids[0].to_string(), GroupRole::Member),
                (ids[1].to_string(), GroupRole::Owner)
            ]
        );
        assert_eq!(
            page(2, Some(ids[1])).await,
            [(ids[3].to_string(), GroupRole::Member)],
            "after the cursor, skipping a group bob is not in"
        );
        assert_eq!(page(2, Some(ids[3])).await, []);
        assert_eq!(
            page(10, Some("group://b")).await,
            [
                (ids[1].to_string(), GroupRole::Owner),
                (ids[3].to_string(), GroupRole::Member)
            ],
            "a cursor that is no group id still bounds the range"
        );
        assert_eq!(
            store
                .agent_groups("alice", 10, Some(ids[2]))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    pub async fn group_members_add_list_remove_with_refusals(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice", "bob", "carol", "dave"]).await;
        store.create_group(group(G, "alice", 3), T0).await.unwrap();
        let other = "group://other-00000001";
        store
            .create_group(group(other, "bob", 3), T0)
            .await
            .unwrap();
        store
            .add_group_member(G, member("carol", GroupRole::Admin, T0 + 2))
            .await
            .unwrap();
        store
            .add_group_member(G, member("bob", GroupRole::Member, T0 + 1))
            .await
            .unwrap();
        assert!(matches!(
            store
                .add_group_member(G, member("bob", GroupRole::Member, T0))
                .await,
            Err(StoreError::AlreadyMember)
        ));
        assert!(matches!(
            store
                .add_group_member(G, member("dave", GroupRole::Member, T0))
                .await,
            Err(StoreError::GroupFull)
        ));
        assert!(matches!(
            store
                .add_group_member(
                    "group://none-00000000",
                    member("dave", GroupRole::Member, T0)
                )
                .await,
            Err(StoreError::GroupNotFound)
        ));
        assert!(matches!(
            store
                .add_group_member(other, member("ghost", GroupRole::Member, T0))
                .await,
            Err(StoreError::AgentNotFound)
        ));
        assert_eq!(
            store.group_members(G).await.unwrap(),
            [
                member("alice", GroupRole::Owner, T0),
                member("bob", GroupRole::Member, T0 + 1),
                member("carol", GroupRole::Admin, T0 + 2),
            ]
        );
        assert_eq!(
            store.group_member(G, "carol").await.unwrap(),
            Some(member("carol", GroupRole::Admin, T0 + 2))
        );
        assert_eq!(store.group_member(G, "dave").await.unwrap(), None);
        let bobs: Vec<(String, GroupRole, u64)> = store
            .agent_groups("bob", 10, None)
            .await
            .unwrap()
            .into_iter()
            .map(|(g, r)| (g.id, r, g.member_count))
            .collect();
        assert_eq!(
            bobs,
            [
                (other.to_string(), GroupRole::Owner, 1),
                (G.to_string(), GroupRole::Member, 3)
            ],
            "ordered by group id"
        );
        assert_eq!(store.agent_groups("bob", 1, None).await.unwrap().len(), 1);
        assert!(store.remove_group_member(G, "bob").await.unwrap());
        assert!(!store.remove_group_member(G, "bob").await.unwrap());
        assert_eq!(store.get_group(G).await.unwrap().unwrap().member_count, 2);
        store
            .add_group_member(G, member("dave", GroupRole::Member, T0))
            .await
            .unwrap();
    }

    pub async fn concurrent_group_joins_admit_exactly_max_members(store: Arc<dyn Store>) {
        let agents: Vec<String> = (0..24).map(|i| format!("a{i:02}")).collect();
        let ids: Vec<&str> = agents.iter().map(String::as_str).collect();
        setup_agents(&store, &ids).await;
        setup_agents(&store, &["owner"]).await;
        store.create_group(group(G, "owner", 7), T0).await.unwrap();
        let joins = agents.iter().map(|a| {
            let store = store.clone();
            let a = a.clone();
            tokio::spawn(async move {
                store
                    .add_group_member(G, member(&a, GroupRole::Member, T0))
                    .await
            })
        });
        let outcomes = futures::future::join_all(joins).await;
        let admitted = outcomes.iter().filter(|o| matches!(o, Ok(Ok(())))).count();
        let full = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Err(StoreError::GroupFull))))
            .count();
        assert_eq!((admitted, full), (6, 18), "owner + 6 = max_members 7");
        assert_eq!(store.group_members(G).await.unwrap().len(), 7);
    }

    pub async fn group_post_fans_out_in_one_step(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice", "bob", "carol", "dave", "eve"]).await;
        store
            .update_agent(
                "carol",
                &AgentChange::SetWebhook {
                    url: Some("https://example.com/hook".into()),
                    secret: Some("s".into()),
                    overlap_until: T0,
                    now: T0,
                },
            )
            .await
            .unwrap();
        store.create_group(group(G, "alice", 10), T0).await.unwrap();
        for a in ["bob", "carol", "dave"] {
            store
                .add_group_member(G, member(a, GroupRole::Member, T0))
                .await
                .unwrap();
        }
        // dave's inbox is full (quota 1).
        store
            .enqueue(message("fill", "dave", T0), 1, None)
            .await
            .unwrap();
        let p = post("p1", G, "alice", T0);
        let Posted::Created(stored) = store.post_to_group(p.clone(), fan(T0, 1)).await.unwrap()
        else {
            panic!("a new post is created")
        };
        let outcome: Vec<(&str, &str, &str)> = stored
            .deliveries
            .iter()
            .map(|d| {
                (
                    d.agent_id.as_str(),
                    d.message_id.as_str(),
                    d.status.as_str(),
                )
            })
            .collect();
        assert_eq!(
            outcome,
            [
                ("bob", "p1.0", "delivered"),
                ("carol", "p1.1", "delivered"),
                ("dave", "p1.2", "failed")
            ]
        );
        assert_eq!(stored.deliveries[2].reason.as_deref(), Some("inbox_full"));
        for (agent, id) in [("bob", "p1.0"), ("carol", "p1.1")] {
            let copy = get(&store, id).await;
            assert_eq!(copy.recipient, agent);
            assert_eq!(copy.sender, "alice");
            assert_eq!(copy.envelope, p.envelope, "the sender's envelope, verbatim");
            assert_eq!(copy.state, MessageState::Queued);
            assert_eq!(copy.expires_at, T0 + 60 * MINUTE);
            assert_eq!(copy_origin(&copy), Some((G.to_string(), "p1".to_string())));
            let leased = lease(&store, agent, T0, 10).await;
            assert_eq!(ids(&leased), [id], "an ordinary, leaseable message");
            store
                .ack(&ack_request(agent, id, leased[0].lease_id.as_deref(), T0))
                .await
                .unwrap();
        }
        assert!(store.get_message("p1.2").await.unwrap().is_none());
        assert!(
            lease(&store, "alice", T0, 10).await.is_empty(),
            "no copy for the sender"
        );
        // carol has a webhook: her copy got a delivery in the same step.
        let due = store.claim_due_deliveries(T0, 10, MINUTE).await.unwrap();
        let pushed: Vec<(&str, &str)> = due
            .iter()
            .map(|d| (d.agent_id.as_str(), d.message_id.as_str()))
            .collect();
        assert_eq!(pushed, [("carol", "p1.1")]);
        let history = store.group_history(G, 10, None).await.unwrap();
        assert_eq!(history.items, [stored]);
    }

    pub async fn group_post_idempotency_and_refusals(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice", "bob", "eve"]).await;
        store.create_group(group(G, "alice", 10), T0).await.unwrap();
        store
            .add_group_member(G, member("bob", GroupRole::Member, T0))
            .await
            .unwrap();
        let Posted::Created(first) = store
            .post_to_group(post("p1", G, "alice", T0), fan(T0, QUOTA))
            .await
            .unwrap()
        else {
            panic!("created")
        };
        // Same key, same content (a retry with a fresh post id): the original.
        let retry = GroupPost {
            id: "p2".into(),
            idempotency_key: Some("key-p1".into()),
            content_hash: "hash-p1".into(),
            ..post("p2", G, "alice", T0 + 5)
        };
        assert_eq!(
            store
                .post_to_group(retry.clone(), fan(T0 + 5, QUOTA))
                .await
                .unwrap(),
            Posted::Duplicate(first)
        );
        assert!(store.get_message("p2.0").await.unwrap().is_none());
        let conflict = GroupPost {
            content_hash: "other".into(),
            ..retry
        };
        assert!(matches!(
            store.post_to_group(conflict, fan(T0, QUOTA)).await,
            Err(StoreError::IdempotencyConflict)
        ));
        assert!(matches!(
            store
                .post_to_group(post("p3", G, "eve", T0), fan(T0, QUOTA))
                .await,
            Err(StoreError::NotMember)
        ));
        assert!(matches!(
            store
                .post_to_group(
                    post("p4", "group://none-00000000", "alice", T0),
                    fan(T0, QUOTA)
                )
                .await,
            Err(StoreError::GroupNotFound)
        ));
        // A copy id taken by another message: nothing of the post is stored.
        store
            .enqueue(message("p5.0", "eve", T0), QUOTA, None)
            .await
            .unwrap();
        assert!(matches!(
            store
                .post_to_group(post("p5", G, "alice", T0), fan(T0, QUOTA))
                .await,
            Err(StoreError::MessageIdTaken)
        ));
        assert_eq!(
            store.group_history(G, 10, None).await.unwrap().items.len(),
            1
        );
        assert_eq!(
            lease(&store, "bob", T0, 10).await.len(),
            1,
            "only p1's copy"
        );
    }

    pub async fn group_history_pages_newest_first_and_purges(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice"]).await;
        store.create_group(group(G, "alice", 10), T0).await.unwrap();
        for (id, at) in [("a", T0), ("b", T0 + 1), ("c", T0 + 1), ("d", T0 + 2)] {
            store
                .post_to_group(post(id, G, "alice", at), fan(at, QUOTA))
                .await
                .unwrap();
        }
        let page = store.group_history(G, 2, None).await.unwrap();
        let ids_of = |p: &Page<GroupPost>| p.items.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids_of(&page), ["d", "c"]);
        let page = store
            .group_history(G, 2, page.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(ids_of(&page), ["b", "a"]);
        assert_eq!(page.next_cursor, None);
        assert!(matches!(
            store.group_history(G, 2, Some("nonsense")).await,
            Err(StoreError::InvalidCursor)
        ));
        // Posts live a minute; purge in bounded batches.
        assert_eq!(store.purge_group_history(T0 + MINUTE, 10).await.unwrap(), 1);
        assert_eq!(
            store.purge_group_history(T0 + MINUTE + 2, 1).await.unwrap(),
            1
        );
        assert_eq!(
            store
                .purge_group_history(T0 + MINUTE + 2, 10)
                .await
                .unwrap(),
            2
        );
        assert!(
            store
                .group_history(G, 10, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        // A purged key can be used again.
        assert!(matches!(
            store
                .post_to_group(post("a", G, "alice", T0 + 3), fan(T0 + 3, QUOTA))
                .await,
            Ok(Posted::Created(_))
        ));
    }

    pub async fn delete_agent_removes_memberships_and_owned_groups(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice", "bob"]).await;
        let owned = "group://bobs-00000002";
        store.create_group(group(G, "alice", 10), T0).await.unwrap();
        store
            .create_group(group(owned, "bob", 10), T0)
            .await
            .unwrap();
        store
            .add_group_member(G, member("bob", GroupRole::Member, T0))
            .await
            .unwrap();
        store
            .add_group_member(owned, member("alice", GroupRole::Member, T0))
            .await
            .unwrap();
        store
            .post_to_group(post("p1", owned, "bob", T0), fan(T0, QUOTA))
            .await
            .unwrap();
        assert!(store.delete_agent("bob", T0).await.unwrap());
        assert_eq!(store.group_member(G, "bob").await.unwrap(), None);
        assert_eq!(store.get_group(G).await.unwrap().unwrap().member_count, 1);
        assert_eq!(store.get_group(owned).await.unwrap(), None);
        assert!(
            store
                .group_history(owned, 10, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        let alices: Vec<String> = store
            .agent_groups("alice", 10, None)
            .await
            .unwrap()
            .into_iter()
            .map(|(g, _)| g.id)
            .collect();
        assert_eq!(alices, [G]);
    }

    pub async fn console_search_agents_pages_by_prefix(store: Arc<dyn Store>) {
        setup_agents(&store, &["b1", "a2", "ab", "a", "a1", "ba", "c"]).await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .search_agents("a", 2, cursor.as_deref())
                .await
                .unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|a| a.agent_id.clone()));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "a1", "a2", "ab"]);
        let all = store.search_agents("", 100, None).await.unwrap();
        let all: Vec<&str> = all.items.iter().map(|a| a.agent_id.as_str()).collect();
        assert_eq!(all, ["a", "a1", "a2", "ab", "b1", "ba", "c"]);
        let b = store.search_agents("b", 1, None).await.unwrap();
        assert_eq!(b.items, [agent("b1")]);
        assert_eq!(b.next_cursor.as_deref(), Some("b1"));
        let rest = store.search_agents("b", 1, Some("b1")).await.unwrap();
        assert_eq!(rest.items[0].agent_id, "ba");
        assert_eq!(rest.next_cursor, None);
        assert!(
            store
                .search_agents("zz", 10, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }

    /// Enqueues `id` for `recipient` and dead-letters it at `at` (one attempt allowed).
    async fn dead_letter(store: &Arc<dyn Store>, recipient: &str, id: &str, at: Millis) {
        enqueue(store, message(id, recipient, T0)).await;
        let leased = lease_with(store, recipient, at, 1, 1).await.remove(0);
        let mut request = nack_request(
            recipient,
            id,
            leased.lease_id.as_deref(),
            NackAction::Requeue { visible_at: at },
            at,
        );
        request.max_attempts = 1;
        let dead = store.nack(&request).await.unwrap();
        assert_eq!(dead.state, MessageState::Dead);
    }

    pub async fn console_dead_letters_across_inboxes_in_order(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol", "dave"]).await;
        // Interleaved across inboxes; two die in the same millisecond.
        dead_letter(&store, "bob", "x1", T0 + 10).await;
        dead_letter(&store, "carol", "x2", T0 + 20).await;
        dead_letter(&store, "bob", "x3", T0 + 20).await;
        dead_letter(&store, "dave", "x4", T0 + 30).await;
        dead_letter(&store, "carol", "x5", T0 + 40).await;
        enqueue(&store, message("alive", "bob", T0)).await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store.list_dead_all(2, cursor.as_deref()).await.unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|m| {
                assert_eq!(m.state, MessageState::Dead);
                m.id.clone()
            }));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["x1", "x2", "x3", "x4", "x5"]);
        assert!(matches!(
            store.list_dead_all(2, Some("garbage")).await,
            Err(StoreError::InvalidCursor)
        ));
        store
            .requeue_dead("carol", "x2", T0 + MINUTE)
            .await
            .unwrap();
        let page = store.list_dead_all(10, None).await.unwrap();
        assert_eq!(ids(&page.items), ["x1", "x3", "x4", "x5"]);
        assert_eq!(page.next_cursor, None);
    }

    pub async fn console_failing_deliveries_and_retry_now(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        for n in 1..=4 {
            store
                .enqueue(
                    message(&format!("m{n}"), "bob", T0),
                    QUOTA,
                    Some(delivery(&format!("d{n}"), &format!("m{n}"), "bob", T0)),
                )
                .await
                .unwrap();
        }
        let attempt = |n: u32, at: Millis, status: u16| DeliveryAttempt {
            delivery_id: format!("d{n}"),
            message_id: format!("m{n}"),
            agent_id: "bob".into(),
            attempt: 1,
            at,
            status_code: Some(status),
            latency_ms: 3,
            error: (status >= 300).then(|| format!("HTTP {status}")),
        };
        store
            .record_attempt(
                &attempt(1, T0 + 10, 500),
                AttemptOutcome::RetryAt(T0 + MINUTE),
            )
            .await
            .unwrap();
        store
            .record_attempt(&attempt(2, T0 + 20, 503), AttemptOutcome::Failed)
            .await
            .unwrap();
        store
            .record_attempt(&attempt(3, T0 + 30, 200), AttemptOutcome::Delivered)
            .await
            .unwrap();
        // d4: never attempted, so not failing.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .list_failing_deliveries(1, cursor.as_deref())
                .await
                .unwrap();
            assert!(page.items.len() <= 1);
            seen.extend(page.items.iter().map(|d| d.id.clone()));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["d2", "d1"]);
        let failing = store.list_failing_deliveries(10, None).await.unwrap();
        assert_eq!(failing.items[0].last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(failing.items[0].state, DeliveryState::Failed);
        assert!(matches!(
            store.list_failing_deliveries(2, Some("nope")).await,
            Err(StoreError::InvalidCursor)
        ));

        let now = T0 + 100;
        let retried = store.retry_delivery("d2", now).await.unwrap().unwrap();
        assert_eq!(
            (retried.state, retried.next_attempt_at, retried.attempts),
            (DeliveryState::Pending, now, 1)
        );
        assert_eq!(store.get_delivery("d2").await.unwrap(), Some(retried));
        let claimed = store.claim_due_deliveries(now, 10, 30_000).await.unwrap();
        let mut due = ids_of(&claimed);
        due.sort();
        assert_eq!(due, ["d2", "d4"], "d1 is not due yet");
        // Delivered stays delivered; unknown ids are None.
        let delivered = store.retry_delivery("d3", now).await.unwrap().unwrap();
        assert_eq!(delivered.state, DeliveryState::Delivered);
        assert_eq!(store.retry_delivery("missing", now).await.unwrap(), None);
    }

    pub async fn peek_queued_shows_waiting_messages_without_leasing(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        enqueue(&store, message("first", "bob", T0)).await;
        enqueue(&store, message("second", "bob", T0)).await;
        enqueue(&store, message("later", "bob", T0 + MINUTE)).await;
        let peek = |now: Millis, limit: usize| {
            let store = store.clone();
            async move { store.peek_queued("bob", now, limit).await.unwrap() }
        };
        assert_eq!(ids(&peek(T0, 10).await), ["first", "second"]);
        assert_eq!(ids(&peek(T0, 1).await), ["first"]);
        assert_eq!(
            ids(&peek(T0 + MINUTE, 10).await),
            ["first", "second", "later"]
        );
        assert!(
            store
                .peek_queued("nobody", T0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Peeking leased nothing: the first pull still gets it on its first attempt.
        let leased = lease(&store, "bob", T0, 1).await;
        assert_eq!((ids(&leased), leased[0].attempts), (vec!["first"], 1));
        assert_eq!(
            ids(&peek(T0, 10).await),
            ["second"],
            "leased is not waiting"
        );
        // Past its TTL a message is not waiting, even before the sweeper ends it.
        assert_eq!(ids(&peek(T0 + 60 * MINUTE, 10).await), ["later"]);
    }

    pub async fn nonces_are_remembered_once_until_they_expire(store: Arc<dyn Store>) {
        let key = "a".repeat(64);
        let other = "b".repeat(64);
        assert!(store.remember_nonce(&key, T0 + 600, T0).await.unwrap());
        assert!(!store.remember_nonce(&key, T0 + 700, T0 + 1).await.unwrap());
        assert!(
            store
                .remember_nonce(&other, T0 + 900, T0 + 1)
                .await
                .unwrap()
        );
        // Nothing is purged before it expires…
        assert_eq!(store.purge_nonces(T0 + 599, 10).await.unwrap(), 0);
        assert!(
            !store
                .remember_nonce(&key, T0 + 700, T0 + 599)
                .await
                .unwrap()
        );
        // …an expired entry may be taken over (its request's Date is stale anyway)…
        assert!(
            store
                .remember_nonce(&key, T0 + 1_300, T0 + 700)
                .await
                .unwrap()
        );
        assert!(
            !store
                .remember_nonce(&key, T0 + 1_400, T0 + 800)
                .await
                .unwrap()
        );
        // …and purging forgets only expired entries, in batches.
        assert_eq!(store.purge_nonces(T0 + 1_000, 10).await.unwrap(), 1);
        assert_eq!(store.purge_nonces(T0 + 1_000, 10).await.unwrap(), 0);
        assert!(
            !store
                .remember_nonce(&key, T0 + 1_400, T0 + 1_000)
                .await
                .unwrap()
        );
        assert_eq!(store.purge_nonces(T0 + 2_000, 10).await.unwrap(), 1);
        assert!(
            store
                .remember_nonce(&key, T0 + 3_000, T0 + 2_000)
                .await
                .unwrap()
        );
        // Concurrent first uses: exactly one wins.
        let fresh = "c".repeat(64);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, fresh) = (store.clone(), fresh.clone());
            tasks.push(tokio::spawn(async move {
                store.remember_nonce(&fresh, T0 + 600, T0).await.unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1);
    }

    pub async fn retired_agent_ids_stay_retired(store: Arc<dyn Store>) {
        assert!(!store.is_agent_id_retired("bob").await.unwrap());
        store.retire_agent_id("bob", T0).await.unwrap();
        store.retire_agent_id("bob", T0 + 1).await.unwrap();
        assert!(store.is_agent_id_retired("bob").await.unwrap());
        assert!(!store.is_agent_id_retired("bo").await.unwrap());
        assert!(!store.is_agent_id_retired("bobby").await.unwrap());
    }

    pub async fn fair_claims_cap_each_agent_and_skip_busy_ones(store: Arc<dyn Store>) {
        setup_agents(&store, &["a", "b", "c"]).await;
        let mut n = 0;
        for (agent_id, count) in [("a", 5), ("b", 2), ("c", 1)] {
            for _ in 0..count {
                n += 1;
                let id = format!("m{n:02}");
                let message = message(&id, agent_id, T0 + n);
                store
                    .enqueue(
                        message,
                        QUOTA,
                        Some(delivery(&format!("d{n:02}"), &id, agent_id, T0 + n)),
                    )
                    .await
                    .unwrap();
            }
        }
        let now = T0 + 100;
        let claimed = store
            .claim_due_deliveries_fair(now, 10, MINUTE, 2, &[])
            .await
            .unwrap();
        let ids: Vec<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["d01", "d02", "d06", "d07", "d08"],
            "two per agent, oldest first"
        );
        assert!(claimed.iter().all(|d| d.next_attempt_at == now + MINUTE));
        // Claimed ones are not due again; a busy agent is skipped.
        let claimed = store
            .claim_due_deliveries_fair(now, 10, MINUTE, 2, &["a".to_string()])
            .await
            .unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        let claimed = store
            .claim_due_deliveries_fair(now, 1, MINUTE, 2, &[])
            .await
            .unwrap();
        let ids: Vec<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d03"], "the limit applies across agents");
    }

    async fn lease_held(
        store: &Arc<dyn Store>,
        now: Millis,
        max_messages: usize,
        max_attempts: u32,
        holder: &str,
        from: Option<&str>,
    ) -> Vec<Message> {
        let request = LeaseRequest {
            recipient: "bob".into(),
            now,
            visibility_ms: MINUTE,
            max_messages,
            max_attempts,
        };
        store.lease_held(&request, holder, from).await.unwrap()
    }

    fn held_by(m: &Message, holder: &str) -> bool {
        m.lease_id
            .as_deref()
            .is_some_and(|l| l.starts_with(&holder_tag(holder)) && l.len() > holder.len() + 8)
    }

    pub async fn stream_leases_carry_their_holder_and_are_counted(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        for (i, id) in ["m1", "m2", "m3", "m4", "m5"].iter().enumerate() {
            enqueue(&store, message(id, "bob", T0 + i as i64)).await;
        }
        let now = T0 + 10;
        let s1 = lease_held(&store, now, 2, MAX_ATTEMPTS, "s1", None).await;
        assert_eq!(ids(&s1), ["m1", "m2"]);
        for m in &s1 {
            assert!(held_by(m, "s1"), "{:?}", m.lease_id);
            assert_eq!((m.state, m.attempts), (MessageState::Leased, 1));
            assert_eq!(m.lease_until, Some(now + MINUTE));
            assert_eq!(get(&store, &m.id).await, *m);
        }
        assert_ne!(s1[0].lease_id, s1[1].lease_id);
        let s2 = lease_held(&store, now, 1, MAX_ATTEMPTS, "s2", None).await;
        assert_eq!(ids(&s2), ["m3"]);
        assert!(held_by(&s2[0], "s2"));
        // A plain pull's lease belongs to no stream.
        assert_eq!(ids(&lease(&store, "bob", now, 1).await), ["m4"]);
        let count = |holder: &'static str, at: Millis| {
            let store = store.clone();
            async move { store.count_held("bob", holder, at).await.unwrap() }
        };
        assert_eq!((count("s1", now).await, count("s2", now).await), (2, 1));
        assert_eq!(
            count("s", now).await,
            0,
            "a prefix of a holder is another holder"
        );
        assert_eq!(store.count_held("carol", "s1", now).await.unwrap(), 0);
        // Settling frees the stream's slots; an ended lease no longer counts.
        let ack = ack_request("bob", "m1", s1[0].lease_id.as_deref(), now);
        store.ack(&ack).await.unwrap();
        assert_eq!(count("s1", now).await, 1);
        let requeue = NackAction::Requeue { visible_at: now };
        let nack = nack_request("bob", "m2", s1[1].lease_id.as_deref(), requeue, now);
        store.nack(&nack).await.unwrap();
        assert_eq!(count("s1", now).await, 0);
        assert_eq!(count("s2", now + MINUTE - 1).await, 1);
        assert_eq!(count("s2", now + MINUTE).await, 0);
        // The requeued m2 is visible from `now`, after m5 (T0 + 4).
        let again = lease_held(&store, now, 5, MAX_ATTEMPTS, "s1", None).await;
        assert_eq!(ids(&again), ["m5", "m2"]);
        assert_eq!(again[1].attempts, 2);
    }

    pub async fn release_held_requeues_or_kills_what_a_stream_holds(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            enqueue(&store, message(id, "bob", T0 + i as i64)).await;
        }
        let now = T0 + 10;
        assert_eq!(
            ids(&lease_held(&store, now, 2, 2, "s1", None).await),
            ["m1", "m2"]
        );
        assert_eq!(
            ids(&lease_held(&store, now, 2, 2, "s2", None).await),
            ["m3"]
        );
        let none = ReclaimCounts::default();
        assert_eq!(
            store.release_held("carol", "s1", now, 2).await.unwrap(),
            none
        );
        let released = store.release_held("bob", "s1", now + 1, 2).await.unwrap();
        assert_eq!(
            released,
            ReclaimCounts {
                requeued: 2,
                dead: 0
            }
        );
        for id in ["m1", "m2"] {
            let m = get(&store, id).await;
            assert_eq!((m.state, m.attempts), (MessageState::Queued, 1));
            assert_eq!((m.lease_id, m.lease_until), (None, None));
            assert_eq!(m.visible_at, now + 1);
        }
        assert!(
            held_by(&get(&store, "m3").await, "s2"),
            "another stream's lease stays"
        );
        // Released at once: the next lease takes them again, the attempt counted.
        let second = lease_held(&store, now + 1, 2, 2, "s1", None).await;
        assert_eq!(ids(&second), ["m1", "m2"]);
        assert_eq!(second[0].attempts, 2);
        // At the attempt limit a release dead-letters, as an expired lease would.
        let released = store.release_held("bob", "s1", now + 2, 2).await.unwrap();
        assert_eq!(
            released,
            ReclaimCounts {
                requeued: 0,
                dead: 2
            }
        );
        let dead = get(&store, "m1").await;
        assert_eq!(dead.state, MessageState::Dead);
        assert_eq!(dead.dead_reason.as_deref(), Some(dead_reason::MAX_ATTEMPTS));
        assert_eq!(dead.ended_at, Some(now + 2));
        assert_eq!(
            store.release_held("bob", "s1", now + 3, 2).await.unwrap(),
            none
        );
        assert_eq!(store.count_held("bob", "s2", now + 3).await.unwrap(), 1);
    }

    pub async fn lease_held_from_takes_over_another_streams_leases(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob", "carol"]).await;
        for (i, id) in ["m1", "m2", "m3", "m4"].iter().enumerate() {
            enqueue(&store, message(id, "bob", T0 + i as i64)).await;
        }
        let old = lease_held(&store, T0 + 10, 3, MAX_ATTEMPTS, "old", None).await;
        assert_eq!(ids(&old), ["m1", "m2", "m3"]);
        store
            .ack(&ack_request(
                "bob",
                "m2",
                old[1].lease_id.as_deref(),
                T0 + 11,
            ))
            .await
            .unwrap();
        enqueue(&store, message("m5", "bob", T0 + 12)).await;
        // Another inbox never yields what "old" holds in bob's.
        let request = LeaseRequest {
            recipient: "carol".into(),
            now: T0 + 20,
            visibility_ms: MINUTE,
            max_messages: 10,
            max_attempts: MAX_ATTEMPTS,
        };
        assert!(
            store
                .lease_held(&request, "new", Some("old"))
                .await
                .unwrap()
                .is_empty()
        );
        // Only what "old" holds unsettled, under fresh leases, before the queue.
        let now = T0 + 20;
        let taken = lease_held(&store, now, 10, MAX_ATTEMPTS, "new", Some("old")).await;
        assert_eq!(ids(&taken), ["m1", "m3"]);
        for (m, was) in taken.iter().zip([&old[0], &old[2]]) {
            assert!(held_by(m, "new"));
            assert_eq!(m.attempts, 2);
            assert_eq!(m.lease_until, Some(now + MINUTE));
            assert_ne!(m.lease_id, was.lease_id);
        }
        assert_eq!(get(&store, "m4").await.state, MessageState::Queued);
        assert_eq!(store.count_held("bob", "old", now).await.unwrap(), 0);
        assert_eq!(store.count_held("bob", "new", now).await.unwrap(), 2);
        let stale = ack_request("bob", "m1", old[0].lease_id.as_deref(), now);
        assert!(matches!(
            store.ack(&stale).await,
            Err(StoreError::LeaseMismatch)
        ));
        // At most `max_messages`; the rest stays with its holder.
        let part = lease_held(&store, now, 1, MAX_ATTEMPTS, "newer", Some("new")).await;
        assert_eq!(ids(&part), ["m1"]);
        assert_eq!(store.count_held("bob", "new", now).await.unwrap(), 1);
        // A message at the attempt limit goes to the dead letters instead.
        let last = lease_held(&store, now, 10, 3, "last", Some("newer")).await;
        assert!(last.is_empty());
        let dead = get(&store, "m1").await;
        assert_eq!((dead.state, dead.attempts), (MessageState::Dead, 3));
        assert!(
            lease_held(&store, now, 10, MAX_ATTEMPTS, "x", Some("gone"))
                .await
                .is_empty()
        );
    }

    pub async fn refused_agent_changes_leave_the_record_unchanged(store: Arc<dyn Store>) {
        setup_agents(&store, &["alice"]).await;
        let before = store.get_agent("alice").await.unwrap().unwrap();
        let big = AgentChange::Heartbeat {
            now: T0 + 5,
            metadata: json!({"blob": "x".repeat(200)}).as_object().cloned(),
            max_metadata_bytes: 100,
        };
        assert!(matches!(
            store.update_agent("alice", &big).await,
            Err(StoreError::TooLarge("metadata"))
        ));
        assert_eq!(store.get_agent("alice").await.unwrap().unwrap(), before);
    }

    /// SQL backends (group commit): operations committed together stay
    /// all-or-nothing each. Half of 40 concurrent sends fail after their
    /// message row was written (their delivery id is taken); those leave no
    /// message and no count behind, and the other half commits.
    pub async fn failing_op_in_a_group_changes_nothing(store: Arc<dyn Store>) {
        setup_agents(&store, &["bob"]).await;
        store
            .enqueue(
                message("m-first", "bob", T0),
                QUOTA,
                Some(delivery("taken", "m-first", "bob", T0)),
            )
            .await
            .unwrap();
        let sends: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = format!("m{i:02}");
                    let delivery_id = if i % 2 == 0 {
                        format!("d{i:02}")
                    } else {
                        "taken".into()
                    };
                    let d = delivery(&delivery_id, &id, "bob", T0);
                    store.enqueue(message(&id, "bob", T0), QUOTA, Some(d)).await
                })
            })
            .collect();
        for (i, send) in sends.into_iter().enumerate() {
            let outcome = send.await.unwrap();
            let id = format!("m{i:02}");
            if i % 2 == 0 {
                assert!(
                    matches!(outcome, Ok(Enqueued::Created(_))),
                    "{id}: {outcome:?}"
                );
                assert!(
                    store
                        .get_delivery(&format!("d{i:02}"))
                        .await
                        .unwrap()
                        .is_some()
                );
            } else {
                assert!(
                    matches!(outcome, Err(StoreError::Internal(_))),
                    "{id}: {outcome:?}"
                );
                assert_eq!(store.get_message(&id).await.unwrap(), None, "{id}");
            }
        }
        assert_eq!(store.inbox_stats("bob").await.unwrap().queued, 21);
        // The maintained count agrees: the quota is reached at exactly 21.
        assert!(matches!(
            store.enqueue(message("m-over", "bob", T0), 21, None).await,
            Err(StoreError::InboxFull)
        ));
        store
            .enqueue(message("m-last", "bob", T0), 22, None)
            .await
            .unwrap();
    }
}

/// Group commit on the SQL backends (the memory and Mech backends have no
/// multi-row writes that could half-fail this way).
mod sql_group_commit {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_failing_op_in_a_group_changes_nothing() {
        run::<SqliteBackend, _, _>(contract::failing_op_in_a_group_changes_nothing).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_failing_op_in_a_group_changes_nothing() {
        run::<PostgresBackend, _, _>(contract::failing_op_in_a_group_changes_nothing).await;
    }
}

/// SQLite's migrations moved from sqlx's migrator to the backend's own
/// runner: databases made by either open with the other.
mod sqlite_migrations {
    use super::*;

    /// The last migration sqlx's migrator applied to SQLite (the fixture's
    /// newest); later ones were only ever applied by the backend's runner.
    const SQLX_LAST_VERSION: i64 = 30;

    /// `(version, description, checksum)` rows of a database's ledger.
    fn ledger(path: &std::path::Path) -> Vec<(i64, String, Vec<u8>)> {
        let conn = rusqlite::Connection::open(path).expect("opening the file");
        let mut statement = conn
            .prepare("SELECT version, description, checksum FROM _sqlx_migrations ORDER BY version")
            .expect("the ledger exists");
        statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("reading the ledger")
            .collect::<Result<_, _>>()
            .expect("reading the ledger")
    }

    #[tokio::test]
    async fn a_database_made_by_sqlx_opens_and_keeps_working() {
        let dir = TempDir::new();
        let file = dir.path().join("admp.db");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sqlite-made-by-sqlx.db"
        );
        std::fs::copy(fixture, &file).expect("copying the fixture");
        let before = ledger(&file);
        assert_eq!(
            before.len(),
            6,
            "the fixture holds every migration sqlx applied"
        );

        let store = SqliteBackend::open(&dir).await;
        let agent = contract::agent("sqlx-made");
        store.create_agent(agent.clone()).await.unwrap();
        assert_eq!(store.get_agent("sqlx-made").await.unwrap(), Some(agent));
        store.close().await;

        let after = ledger(&file);
        assert_eq!(
            after[..before.len()],
            before[..],
            "nothing applied twice, nothing rewritten"
        );
        assert!(
            after[before.len()..]
                .iter()
                .all(|(version, ..)| *version > SQLX_LAST_VERSION),
            "only the migrations written since were applied: {after:?}"
        );
    }

    #[tokio::test]
    async fn a_fresh_database_records_what_sqlx_recorded() {
        let dir = TempDir::new();
        let store = SqliteBackend::open(&dir).await;
        store.close().await;
        let fixture = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/sqlite-made-by-sqlx.db"
        ));
        let fresh = ledger(&dir.path().join("admp.db"));
        let made_by_sqlx = ledger(fixture);
        assert_eq!(
            fresh[..made_by_sqlx.len()],
            made_by_sqlx[..],
            "the migrations sqlx applied are recorded as sqlx recorded them"
        );
    }
}
