//! The sweeper, one sweep kind at a time, on a manual clock: time moves by
//! `advance_ms`, never by sleeping.

use std::sync::Arc;

use admp::config::Config;
use admp::hub::{Clock, Hub, Registration};
use admp::jobs::sweeper::{self, SweepStats};
use admp::store::postgres::PostgresStore;
use admp::store::{AckRequest, Enqueued, LeaseRequest, MessageState, Store, memory::MemoryStore};

use crate::support::message;

const MINUTE: i64 = 60_000;

/// A hub over a fresh memory store with a manual clock and `config`.
async fn hub(config: Config) -> Arc<Hub> {
    hub_on(config, Arc::new(MemoryStore::new()), Clock::manual()).await
}

/// A hub over `store` with agents `alice` and `bob` registered.
async fn hub_on(config: Config, store: Arc<dyn Store>, clock: Clock) -> Arc<Hub> {
    let hub = new_hub(config, store, clock);
    for id in ["alice", "bob"] {
        hub.register(Registration {
            agent_id: Some(id.into()),
            ..Registration::default()
        })
        .await
        .unwrap();
    }
    hub
}

/// A hub instance over `store` (several over one store act like several processes).
fn new_hub(config: Config, store: Arc<dyn Store>, clock: Clock) -> Arc<Hub> {
    Arc::new(Hub::new(Arc::new(config), store, clock, Arc::default()))
}

async fn enqueue(hub: &Hub, id: &str, recipient: &str, ttl_ms: i64) {
    let stored = hub
        .store
        .enqueue(
            message(id, recipient, hub.clock.now_ms(), ttl_ms),
            1_000_000,
            None,
        )
        .await
        .unwrap();
    assert!(matches!(stored, Enqueued::Created(_)));
}

/// Leases up to `max` of `recipient`'s messages for `visibility_ms`.
async fn lease(hub: &Hub, recipient: &str, max: usize, visibility_ms: i64) -> Vec<String> {
    let leased = hub
        .store
        .lease(&LeaseRequest {
            recipient: recipient.into(),
            now: hub.clock.now_ms(),
            visibility_ms,
            max_messages: max,
            max_attempts: hub.config.max_delivery_attempts,
        })
        .await
        .unwrap();
    leased.into_iter().map(|m| m.id).collect()
}

async fn ack(hub: &Hub, recipient: &str, id: &str) {
    hub.store
        .ack(&AckRequest {
            recipient: recipient.into(),
            message_id: id.into(),
            lease_id: None,
            result: None,
            now: hub.clock.now_ms(),
        })
        .await
        .unwrap();
}

async fn state(hub: &Hub, id: &str) -> Option<MessageState> {
    hub.store.get_message(id).await.unwrap().map(|m| m.state)
}

#[tokio::test]
async fn reclaim_requeues_expired_leases_then_dead_letters_at_the_limit() {
    let hub = hub(Config {
        max_delivery_attempts: 2,
        ..Config::default()
    })
    .await;
    enqueue(&hub, "m1", "bob", 60 * MINUTE).await;
    enqueue(&hub, "m2", "bob", 60 * MINUTE).await;
    assert_eq!(lease(&hub, "bob", 10, 1_000).await.len(), 2);

    hub.clock.advance_ms(999);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(
        report.reclaimed.requeued + report.reclaimed.dead,
        0,
        "leases still running"
    );

    hub.clock.advance_ms(1);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!((report.reclaimed.requeued, report.reclaimed.dead), (2, 0));
    let m1 = hub.store.get_message("m1").await.unwrap().unwrap();
    assert_eq!(m1.state, MessageState::Queued);
    assert_eq!(m1.attempts, 1, "reclaiming adds no attempt");

    assert_eq!(lease(&hub, "bob", 10, 1_000).await.len(), 2);
    hub.clock.advance_ms(1_000);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!((report.reclaimed.requeued, report.reclaimed.dead), (0, 2));
    assert_eq!(state(&hub, "m1").await, Some(MessageState::Dead));
    assert_eq!((report.expired, report.purged, report.offline), (0, 0, 0));
}

#[tokio::test]
async fn expiry_touches_only_live_messages_past_their_ttl() {
    let hub = hub(Config::default()).await;
    enqueue(&hub, "queued-old", "bob", MINUTE).await;
    enqueue(&hub, "leased-old", "alice", MINUTE).await;
    enqueue(&hub, "acked-old", "alice", MINUTE).await;
    enqueue(&hub, "young", "bob", 10 * MINUTE).await;
    let leased = lease(&hub, "alice", 2, 10 * MINUTE).await;
    assert_eq!(leased.len(), 2);
    ack(&hub, "alice", "acked-old").await;

    hub.clock.advance_ms(MINUTE);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(report.expired, 2);
    assert_eq!(state(&hub, "queued-old").await, Some(MessageState::Expired));
    assert_eq!(state(&hub, "leased-old").await, Some(MessageState::Expired));
    assert_eq!(state(&hub, "acked-old").await, Some(MessageState::Acked));
    assert_eq!(state(&hub, "young").await, Some(MessageState::Queued));
    assert_eq!(report.reclaimed.requeued + report.reclaimed.dead, 0);
}

#[tokio::test]
async fn a_message_acked_just_before_its_ttl_is_not_expired() {
    let hub = hub(Config::default()).await;
    enqueue(&hub, "m", "bob", MINUTE).await;
    lease(&hub, "bob", 1, 10 * MINUTE).await;
    hub.clock.advance_ms(MINUTE - 1);
    ack(&hub, "bob", "m").await;

    hub.clock.advance_ms(2);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(report.expired, 0);
    assert_eq!(state(&hub, "m").await, Some(MessageState::Acked));
}

#[tokio::test]
async fn purge_deletes_ended_records_past_retention_and_keeps_the_rest() {
    let hub = hub(Config {
        message_retention_sec: 3_600,
        max_delivery_attempts: 1,
        ..Config::default()
    })
    .await;
    let mut keyed = message("acked", "bob", hub.clock.now_ms(), 10 * MINUTE);
    keyed.idempotency_key = Some("key-1".into());
    hub.store.enqueue(keyed.clone(), 100, None).await.unwrap();
    enqueue(&hub, "to-die", "alice", 10 * MINUTE).await;
    enqueue(&hub, "to-expire", "alice", MINUTE).await;
    enqueue(&hub, "live", "bob", 600 * MINUTE).await;
    lease(&hub, "bob", 1, MINUTE).await;
    ack(&hub, "bob", "acked").await;
    lease(&hub, "alice", 1, MINUTE / 2).await;
    hub.clock.advance_ms(MINUTE);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(
        (report.reclaimed.dead, report.expired, report.purged),
        (1, 1, 0)
    );

    // Retention counts from when each record ended: `acked` at the start,
    // the other two a minute later.
    hub.clock.advance_ms(59 * MINUTE);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(report.purged, 0, "acked exactly one retention period ago");
    hub.clock.advance_ms(1);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(report.purged, 1);
    assert_eq!(state(&hub, "acked").await, None, "really deleted");
    assert_eq!(state(&hub, "to-die").await, Some(MessageState::Dead));

    hub.clock.advance_ms(MINUTE);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(report.purged, 2);
    for gone in ["to-die", "to-expire"] {
        assert_eq!(state(&hub, gone).await, None, "{gone} is really deleted");
    }
    assert_eq!(state(&hub, "live").await, Some(MessageState::Queued));
    let stats = hub.store.stats().await.unwrap();
    assert_eq!(stats.messages.total, 1);
    assert_eq!(hub.store.inbox_stats("alice").await.unwrap().total, 0);
    // The purged message's idempotency key is free again.
    keyed.id = "acked-again".into();
    let again = hub.store.enqueue(keyed, 100, None).await.unwrap();
    assert!(matches!(again, Enqueued::Created(_)));
}

#[tokio::test]
async fn agents_are_marked_offline_after_their_heartbeat_timeout() {
    let hub = hub(Config {
        heartbeat_timeout_ms: 1_000,
        ..Config::default()
    })
    .await;
    hub.clock.advance_ms(600);
    hub.heartbeat("bob", None).await.unwrap();
    hub.clock.advance_ms(399);
    assert_eq!(sweeper::sweep_once(&hub).await.unwrap().offline, 0);

    hub.clock.advance_ms(1);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(report.offline, 1);
    assert!(!hub.agent("alice").await.unwrap().online);
    assert!(hub.agent("bob").await.unwrap().online);
    assert_eq!(
        sweeper::sweep_once(&hub).await.unwrap().offline,
        0,
        "counted once"
    );

    hub.clock.advance_ms(600);
    assert_eq!(sweeper::sweep_once(&hub).await.unwrap().offline, 1);
}

#[tokio::test]
async fn a_backlog_larger_than_a_batch_is_drained_in_one_pass() {
    let hub = hub(Config {
        sweep_batch_size: 3,
        sweep_concurrency: 4,
        ..Config::default()
    })
    .await;
    for n in 0..25 {
        let to = if n % 2 == 0 { "alice" } else { "bob" };
        enqueue(&hub, &format!("m{n}"), to, MINUTE).await;
    }
    hub.clock.advance_ms(MINUTE);
    let report = sweeper::sweep_once(&hub).await.unwrap();
    assert_eq!(report.expired, 25);
    assert_eq!(hub.store.stats().await.unwrap().messages.expired, 25);
}

/// Two hub instances sweeping one store at the same time (as two instances on
/// one database would) handle and count every record exactly once, because
/// each bulk call is an atomic transition of records still due. Written
/// against the store trait so the PostgreSQL backend can run it as well.
async fn two_sweepers_count_each_record_once_on(store: Arc<dyn Store>) {
    let clock = Clock::manual();
    let config = Config {
        sweep_batch_size: 7,
        sweep_concurrency: 4,
        ..Config::default()
    };
    let first = hub_on(config.clone(), store.clone(), clock.clone()).await;
    let second = new_hub(config, store.clone(), clock.clone());
    for n in 0..200 {
        let to = if n % 2 == 0 { "alice" } else { "bob" };
        enqueue(&first, &format!("m{n}"), to, 600 * MINUTE).await;
    }
    assert_eq!(lease(&first, "alice", 100, 1_000).await.len(), 100);
    assert_eq!(lease(&first, "bob", 100, 1_000).await.len(), 100);
    clock.advance_ms(1_000);

    let sweep =
        |hub: Arc<Hub>| tokio::spawn(async move { sweeper::sweep_once(&hub).await.unwrap() });
    let (a, b) = (sweep(first), sweep(second));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.reclaimed.requeued + b.reclaimed.requeued, 200);
    assert_eq!(a.reclaimed.dead + b.reclaimed.dead, 0);
    assert_eq!(store.stats().await.unwrap().messages.queued, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_on_one_store_count_each_record_once() {
    two_sweepers_count_each_record_once_on(Arc::new(MemoryStore::new())).await;
}

/// The same with two PostgreSQL stores on one schema, as two hub processes have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_on_one_postgres_schema_count_each_record_once() {
    let schema = crate::storage::PgSchema::create().await;
    let store = PostgresStore::open(&schema.url(), 4, Arc::default())
        .await
        .unwrap();
    let store = Arc::new(store);
    two_sweepers_count_each_record_once_on(store.clone()).await;
    store.close().await;
    schema.drop_schema().await;
}

/// The task runs a pass at start and then every interval, records what each
/// pass did, and stops on shutdown. Tokio's paused clock stands in for the
/// interval; the hub's manual clock for message time.
#[tokio::test(start_paused = true)]
async fn the_sweeper_task_runs_on_its_interval_and_records_stats() {
    let hub = hub(Config {
        cleanup_interval_ms: 60_000,
        ..Config::default()
    })
    .await;
    enqueue(&hub, "m1", "bob", MINUTE).await;
    hub.clock.advance_ms(MINUTE);
    let stats = Arc::new(SweepStats::default());
    let task = tokio::spawn(sweeper::run(hub.clone(), stats.clone()));

    passes_reach(&stats, 1).await;
    assert_eq!(stats.snapshot().expired, 1);

    enqueue(&hub, "m2", "bob", MINUTE).await;
    hub.clock.advance_ms(MINUTE);
    tokio::time::sleep(std::time::Duration::from_millis(60_000)).await;
    passes_reach(&stats, 2).await;
    let totals = stats.snapshot();
    assert_eq!(totals.expired, 2);
    assert_eq!(totals.last.unwrap().expired, 1);
    assert_eq!(totals.failures, 0);

    hub.shutdown.cancel();
    task.await.unwrap();
}

/// Lets the sweeper task run (a bounded number of scheduler turns) until it
/// has completed `passes` passes.
async fn passes_reach(stats: &SweepStats, passes: u64) {
    for _ in 0..1_000 {
        if stats.snapshot().passes >= passes {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the sweeper did not complete {passes} pass(es)");
}
