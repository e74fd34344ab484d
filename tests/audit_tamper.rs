//! Tampering with the audit log in the database itself (a direct SQL
//! `UPDATE` or `DELETE`, as someone with database access could) is detected
//! by the hub's chain check, on SQLite and PostgreSQL. The memory backend's
//! equivalent is in `api_operations.rs`.
//!
//! PostgreSQL tests need the server on 127.0.0.1:5432 (see `tests/support`).

mod support;

use std::sync::Arc;

use admp::audit::AuditKind;
use admp::config::{Config, SqliteSynchronous};
use admp::hub::{Clock, Hub, InboxWakers};
use admp::store::Store;
use admp::store::postgres::PostgresStore;
use admp::store::sqlite::SqliteStore;
use serde_json::json;
use sqlx::Connection;

use support::storage::{PgSchema, TempDir};

/// Statements an attacker with database access might run.
const EDIT: &str = r#"UPDATE audit_events SET detail = '{"n":99}' WHERE seq = 2"#;
const UNDO_EDIT: &str = r#"UPDATE audit_events SET detail = '{"n":2}' WHERE seq = 2"#;
const DELETE: &str = "DELETE FROM audit_events WHERE seq = 3";

/// Appends four events through a hub over `store`, runs `tamper` with each
/// statement in turn, and checks what the audit listing reports.
async fn tampering_is_detected<F, Fut>(store: Arc<dyn Store>, tamper: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = ()>,
{
    let hub = Hub::new(
        Arc::new(Config::default()),
        store,
        Clock::system(),
        Arc::new(InboxWakers::default()),
    );
    for n in 1..=4 {
        let agent = format!("agent-{n}");
        hub.audit(AuditKind::AgentRegistered, Some(&agent), json!({ "n": n }))
            .await;
    }
    let page = hub.audit_page(None, None).await.unwrap();
    assert_eq!((page.events.len(), page.chain_valid), (4, true));

    tamper(EDIT).await;
    let page = hub.audit_page(None, None).await.unwrap();
    assert_eq!(page.events[1].detail, json!({"n": 99}), "the edit landed");
    assert_eq!((page.chain_valid, page.broken_at), (false, Some(2)));
    // Paging: the page holding the edited row fails, the next one chains on.
    let first = hub.audit_page(Some(2), None).await.unwrap();
    let second = hub.audit_page(Some(2), Some("2")).await.unwrap();
    assert_eq!((first.chain_valid, second.chain_valid), (false, true));

    tamper(UNDO_EDIT).await;
    assert!(hub.audit_page(None, None).await.unwrap().chain_valid);
    tamper(DELETE).await;
    let page = hub.audit_page(None, None).await.unwrap();
    assert_eq!((page.chain_valid, page.broken_at), (false, Some(4)));
}

#[tokio::test]
async fn sqlite_tampering_is_detected() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.sqlite_url(), 4, SqliteSynchronous::Full)
        .await
        .expect("opening SQLite");
    let store = Arc::new(store);
    let file = dir.path().join("admp.db");
    tampering_is_detected(store.clone(), |sql| {
        let file = file.clone();
        async move {
            let conn = rusqlite::Connection::open(&file).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn.execute_batch(sql).unwrap();
        }
    })
    .await;
    store.close().await;
}

#[tokio::test]
async fn postgres_tampering_is_detected() {
    let schema = PgSchema::create().await;
    let store = PostgresStore::open(&schema.url(), 4, Arc::new(InboxWakers::default()))
        .await
        .expect("opening PostgreSQL");
    let store = Arc::new(store);
    let url = schema.url();
    let outcome = tokio::spawn({
        let store = store.clone();
        async move {
            tampering_is_detected(store, |sql| {
                let url = url.clone();
                async move {
                    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                    sqlx::query(sql).execute(&mut conn).await.unwrap();
                    conn.close().await.unwrap();
                }
            })
            .await
        }
    })
    .await;
    store.close().await;
    schema.drop_schema().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
