//! Schema migrations: the files of `migrations/sqlite`, embedded and applied
//! in order at open, each in its own transaction.
//!
//! They are recorded in `_sqlx_migrations`, the table (and the SHA-384
//! checksums) of sqlx's migrator, which applied them before this backend
//! moved to rusqlite: a database made by either opens with the other, and a
//! migration file changed after it was applied is refused as sqlx refused it.

use rusqlite::{Connection, TransactionBehavior};
use sha2::{Digest, Sha384};

use super::conn::{db_error, exec, rows};
use crate::store::{StoreError, StoreResult};

/// `(version, file name)` of every migration, in order, with its SQL.
/// `listed_migrations_are_the_directory` keeps this list complete.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "0002_previous_webhook_secret.sql",
        include_str!("../../../migrations/sqlite/0002_previous_webhook_secret.sql"),
    ),
    (
        3,
        "0003_inbox_live.sql",
        include_str!("../../../migrations/sqlite/0003_inbox_live.sql"),
    ),
    (
        10,
        "0010_security.sql",
        include_str!("../../../migrations/sqlite/0010_security.sql"),
    ),
    (
        20,
        "0020_groups.sql",
        include_str!("../../../migrations/sqlite/0020_groups.sql"),
    ),
    (
        30,
        "0030_console_indexes.sql",
        include_str!("../../../migrations/sqlite/0030_console_indexes.sql"),
    ),
    (
        40,
        "0040_fewer_message_indexes.sql",
        include_str!("../../../migrations/sqlite/0040_fewer_message_indexes.sql"),
    ),
];

/// sqlx's bookkeeping table, word for word.
const LEDGER: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// sqlx's description of a migration file: the name after the version,
/// underscores as spaces.
fn description(file: &str) -> String {
    let stem = file.strip_suffix(".sql").unwrap_or(file);
    let name = stem.split_once('_').map_or(stem, |(_, name)| name);
    name.replace('_', " ")
}

/// Applies every migration the database has not recorded yet.
pub(super) fn run(conn: &mut Connection) -> StoreResult<()> {
    exec(conn, LEDGER, &[])?;
    let applied: Vec<(i64, bool, Vec<u8>)> = rows(
        conn,
        "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
        &[],
        |row| Ok((row.at(0)?, row.at(1)?, row.at(2)?)),
    )?;
    for &(version, file, sql) in MIGRATIONS {
        let checksum = Sha384::digest(sql.as_bytes()).to_vec();
        match applied.iter().find(|(v, _, _)| *v == version) {
            Some((_, false, _)) => {
                return Err(StoreError::Internal(format!(
                    "migration {file} failed earlier and left the database dirty"
                )));
            }
            Some((_, true, recorded)) if *recorded != checksum => {
                return Err(StoreError::Internal(format!(
                    "migration {file} was changed after it was applied"
                )));
            }
            Some(_) => continue,
            None => {}
        }
        let started = std::time::Instant::now();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_error)?;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Internal(format!("migration {file}: {e}")))?;
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        exec(
            &tx,
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, TRUE, $3, $4)",
            &[&version, &description(file), &checksum, &nanos],
        )?;
        tx.commit().map_err(db_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_migrations_are_the_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(_, f, _)| *f).collect();
        assert_eq!(files, listed);
        for (version, file, _) in MIGRATIONS {
            assert_eq!(file[..4].parse::<i64>().unwrap(), *version);
        }
    }

    #[test]
    fn descriptions_are_sqlx_descriptions() {
        assert_eq!(
            description("0002_previous_webhook_secret.sql"),
            "previous webhook secret"
        );
    }
}
