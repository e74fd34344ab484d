//! Managed PostgreSQL (DigitalOcean, most clouds) accepts only TLS
//! connections (`sslmode=require`). The hub's driver is built with rustls:
//! this opens the PostgreSQL store with `sslmode=require` against the real
//! server on 127.0.0.1:5432 (which offers TLS) and checks, on the server's
//! side, that every connection the store made is encrypted.

mod support;

use std::sync::Arc;

use admp::hub::InboxWakers;
use admp::store::Store;
use admp::store::postgres::PostgresStore;
use sqlx::Connection;
use support::storage::{PgSchema, postgres_admin_url};

#[tokio::test]
async fn the_postgres_store_connects_over_tls_when_required() {
    let schema = PgSchema::create().await;
    let application = format!("admp_tls_{}", uuid::Uuid::new_v4().simple());
    let url = format!(
        "{}&sslmode=require&application_name={application}",
        schema.url()
    );
    let store = PostgresStore::open(&url, 2, Arc::new(InboxWakers::default()))
        .await
        .expect("opening PostgreSQL with sslmode=require");
    store.ping().await.unwrap();
    assert!(store.stats().await.is_ok());

    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .unwrap();
    let connections: Vec<(bool, Option<String>)> = sqlx::query_as(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s \
         JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
    )
    .bind(&application)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        !connections.is_empty(),
        "the store's connections are visible"
    );
    assert!(
        connections.iter().all(|(ssl, _)| *ssl),
        "every connection is TLS: {connections:?}"
    );
    admin.close().await.ok();
    drop(store);
    schema.drop_schema().await;
}
