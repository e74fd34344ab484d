//! A PostgreSQL schema of its own inside a shared database, for runs that must
//! neither see nor leave anything there: the test suite (many tests, and CI
//! runs, share one server) and `admp bench --backend postgres`.
//!
//! Connections made with [`ScratchSchema::url`] work inside the schema (the
//! URL sets `search_path`), so the hub's migrations create their tables there.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// A schema `<prefix>_<random>`, dropped with everything in it by
/// [`ScratchSchema::drop_schema`] or, failing that, when the value is dropped.
pub struct ScratchSchema {
    admin_url: String,
    name: String,
}

impl ScratchSchema {
    /// Creates a fresh schema in the database `admin_url` points at.
    pub async fn create(admin_url: &str, prefix: &str) -> Result<ScratchSchema, sqlx::Error> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        Ok(ScratchSchema {
            admin_url: admin_url.to_string(),
            name,
        })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `DATABASE_URL` whose connections work inside this schema.
    pub fn url(&self) -> String {
        let separator = if self.admin_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}options=-c%20search_path%3D{}",
            self.admin_url, self.name
        )
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(mut self) -> Result<(), sqlx::Error> {
        let name = std::mem::take(&mut self.name);
        drop_schema(&self.admin_url, &name).await
    }
}

impl Drop for ScratchSchema {
    /// A run that ended before `drop_schema` (a failed test, an aborted
    /// benchmark) still removes its schema, on a thread of its own because the
    /// caller's runtime may be gone or busy. Best effort: errors are ignored.
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), std::mem::take(&mut self.name));
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let _ = runtime.block_on(drop_schema(&admin_url, &name));
        });
        let _ = cleanup.join();
    }
}

async fn drop_schema(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
        .execute(&mut conn)
        .await?;
    conn.close().await.ok();
    Ok(())
}
