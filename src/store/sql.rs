//! What the SQL backends share: turning rows into records, records into
//! column values, and driver errors into [`StoreError`].
//!
//! Both schemas (`migrations/sqlite`, `migrations/postgres`) use the same
//! column names and store every integer as a 64-bit value, every JSON value
//! as text, so one set of row readers serves both drivers.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;

use super::*;

/// Maps a driver error: connection and pool trouble is `Unavailable` (the
/// caller may retry and `/ready` reports it), anything else is `Internal`.
pub(super) fn db_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) if is_transient(db.code().as_deref()) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// Whether a database error code means "try again later" rather than a bug.
fn is_transient(code: Option<&str>) -> bool {
    let Some(code) = code else {
        return false;
    };
    // SQLite reports its (extended) result code as a number: BUSY, LOCKED,
    // IOERR, FULL, CANTOPEN are about the environment, not the statement.
    if let Ok(n) = code.parse::<i64>() {
        return matches!(n & 0xff, 5 | 6 | 10 | 13 | 14);
    }
    // PostgreSQL SQLSTATE: connection exceptions, insufficient resources,
    // operator intervention (shutdown), serialization failure and deadlock.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || code == "40001"
        || code == "40P01"
}

/// A stored value that does not parse: the row was written by something else.
fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt {what} in storage: {detail}"))
}

/// Serialises a value for a JSON text column.
pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(format!("encoding JSON: {e}")))
}

fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| corrupt(column, e))
}

/// Optional JSON text column.
pub(super) fn to_json_opt<T: Serialize>(value: Option<&T>) -> StoreResult<Option<String>> {
    value.map(to_json).transpose()
}

/// Reads columns by name from a row of either driver (sqlx's PostgreSQL
/// rows; SQLite's in `sqlite/conn.rs`), so one set of row readers serves both.
pub(super) trait Columns {
    /// A TEXT column that may be NULL.
    fn text_opt(&self, column: &'static str) -> StoreResult<Option<String>>;
    /// An INTEGER / BIGINT column that may be NULL.
    fn int_opt(&self, column: &'static str) -> StoreResult<Option<i64>>;
    /// A BOOLEAN column.
    fn flag(&self, column: &'static str) -> StoreResult<bool>;

    /// A TEXT column.
    fn text(&self, column: &'static str) -> StoreResult<String> {
        self.text_opt(column)?
            .ok_or_else(|| corrupt(column, "unexpected NULL"))
    }
    /// An INTEGER / BIGINT column.
    fn int(&self, column: &'static str) -> StoreResult<i64> {
        self.int_opt(column)?
            .ok_or_else(|| corrupt(column, "unexpected NULL"))
    }
    /// A non-negative integer column read into a narrower unsigned type.
    fn unsigned<T: TryFrom<i64>>(&self, column: &'static str) -> StoreResult<T> {
        let n = self.int(column)?;
        T::try_from(n).map_err(|_| corrupt(column, n))
    }
}

impl Columns for sqlx::postgres::PgRow {
    fn text_opt(&self, column: &'static str) -> StoreResult<Option<String>> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn int_opt(&self, column: &'static str) -> StoreResult<Option<i64>> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
    fn flag(&self, column: &'static str) -> StoreResult<bool> {
        self.try_get(column).map_err(|e| corrupt(column, e))
    }
}

/// The earliest `available_at` of an inbox's live messages (served by the
/// `messages_ready` index). Binds: recipient.
pub(super) const NEXT_AVAILABLE_AT: &str = "SELECT MIN(available_at) AS next FROM messages \
     WHERE recipient = $1 AND state IN ('queued', 'leased')";

/// Decodes an `agents` row.
pub(super) fn agent_from_row(row: &impl Columns) -> StoreResult<Agent> {
    Ok(Agent {
        agent_id: row.text("agent_id")?,
        agent_type: row.text("agent_type")?,
        metadata: from_json("metadata", &row.text("metadata")?)?,
        keys: from_json("keys", &row.text("keys")?)?,
        webhook_url: row.text_opt("webhook_url")?,
        webhook_secret: row.text_opt("webhook_secret")?,
        previous_webhook_secret: row
            .text_opt("previous_webhook_secret")?
            .map(|text| from_json("previous_webhook_secret", &text))
            .transpose()?,
        trusted_agents: from_json("trusted_agents", &row.text("trusted_agents")?)?,
        last_heartbeat: row.int("last_heartbeat")?,
        online: row.flag("online")?,
        heartbeat_interval_ms: row.unsigned("heartbeat_interval_ms")?,
        heartbeat_timeout_ms: row.unsigned("heartbeat_timeout_ms")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

/// Decodes a `messages` row together with its arrival sequence number.
pub(super) fn message_from_row(row: &impl Columns) -> StoreResult<(i64, Message)> {
    let state: String = row.text("state")?;
    let result: Option<String> = row.text_opt("result")?;
    let message = Message {
        id: row.text("id")?,
        recipient: row.text("recipient")?,
        sender: row.text("sender")?,
        envelope: Envelope::from_json_text(row.text("envelope")?)
            .map_err(|e| corrupt("envelope", e))?,
        state: MessageState::parse(&state).ok_or_else(|| corrupt("message state", &state))?,
        attempts: row.unsigned("attempts")?,
        lease_id: row.text_opt("lease_id")?,
        lease_until: row.int_opt("lease_until")?,
        visible_at: row.int("visible_at")?,
        expires_at: row.int("expires_at")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        acked_at: row.int_opt("acked_at")?,
        ended_at: row.int_opt("ended_at")?,
        dead_reason: row.text_opt("dead_reason")?,
        result: result.map(|r| from_json("result", &r)).transpose()?,
        idempotency_key: row.text_opt("idempotency_key")?,
        content_hash: row.text("content_hash")?,
    };
    Ok((row.int("seq")?, message))
}

/// Decodes a `deliveries` row.
pub(super) fn delivery_from_row(row: &impl Columns) -> StoreResult<Delivery> {
    let state: String = row.text("state")?;
    let last_status: Option<i64> = row.int_opt("last_status")?;
    Ok(Delivery {
        id: row.text("id")?,
        message_id: row.text("message_id")?,
        agent_id: row.text("agent_id")?,
        state: DeliveryState::parse(&state).ok_or_else(|| corrupt("delivery state", &state))?,
        attempts: row.unsigned("attempts")?,
        next_attempt_at: row.int("next_attempt_at")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        last_status: last_status
            .map(|s| u16::try_from(s).map_err(|_| corrupt("last_status", s)))
            .transpose()?,
        last_error: row.text_opt("last_error")?,
    })
}

/// Decodes a `delivery_attempts` row.
pub(super) fn attempt_from_row(row: &impl Columns) -> StoreResult<DeliveryAttempt> {
    let status_code: Option<i64> = row.int_opt("status_code")?;
    Ok(DeliveryAttempt {
        delivery_id: row.text("delivery_id")?,
        message_id: row.text("message_id")?,
        agent_id: row.text("agent_id")?,
        attempt: row.unsigned("attempt")?,
        at: row.int("at")?,
        status_code: status_code
            .map(|s| u16::try_from(s).map_err(|_| corrupt("status_code", s)))
            .transpose()?,
        latency_ms: row.unsigned("latency_ms")?,
        error: row.text_opt("error")?,
    })
}

/// Decodes an `audit_events` row.
pub(super) fn audit_from_row(row: &impl Columns) -> StoreResult<AuditEvent> {
    Ok(AuditEvent {
        seq: row.unsigned("seq")?,
        at: row.int("at")?,
        kind: row.text("kind")?,
        agent_id: row.text_opt("agent_id")?,
        detail: from_json("detail", &row.text("detail")?)?,
        hash: row.text("hash")?,
    })
}

/// The leases a lease statement granted, in pull order.
///
/// The statement also returns the messages it expired or dead-lettered on the
/// way; those are dropped here. It records in `visible_at` when each message
/// became available (for a re-leased message: when the previous lease ended),
/// which is the pull order key together with `seq`.
pub(super) fn granted_in_order(rows: Vec<(i64, Message)>) -> Vec<Message> {
    let mut granted: Vec<(i64, Message)> = rows
        .into_iter()
        .filter(|(_, m)| m.state == MessageState::Leased)
        .collect();
    granted.sort_by_key(|(seq, m)| (m.visible_at, *seq));
    granted.into_iter().map(|(_, m)| m).collect()
}

/// Turns a failed ack/nack into the error the caller should see, from a fresh
/// read of the message's state and lease id (`None` when it does not exist in
/// that inbox).
pub(super) fn lease_refusal(
    found: Option<(String, Option<String>)>,
    given: Option<&str>,
) -> StoreError {
    match found {
        None => StoreError::MessageNotFound,
        Some((state, _)) if state != MessageState::Leased.as_str() => StoreError::NotLeased,
        Some((_, current)) if given.is_some() && current.as_deref() != given => {
            StoreError::LeaseMismatch
        }
        // The message was re-leased between the attempt and this read; at the
        // time of the attempt it was not leased under a matching lease.
        Some(_) => StoreError::NotLeased,
    }
}

/// The dead-letter cursor: `<ended_at>.<seq>` of the last message of a page.
pub(super) fn dead_cursor(ended_at: Millis, seq: i64) -> String {
    format!("{ended_at}.{seq}")
}

/// Parses a dead-letter cursor.
pub(super) fn parse_dead_cursor(cursor: &str) -> StoreResult<(Millis, i64)> {
    let (at, seq) = cursor.split_once('.').ok_or(StoreError::InvalidCursor)?;
    Ok((
        at.parse().map_err(|_| StoreError::InvalidCursor)?,
        seq.parse().map_err(|_| StoreError::InvalidCursor)?,
    ))
}

/// What `record_attempt` writes when the delivery is still pending:
/// its next state and, for a retry, when the retry is due.
pub(super) fn attempt_transition(outcome: AttemptOutcome) -> (DeliveryState, Option<Millis>) {
    match outcome {
        AttemptOutcome::Delivered => (DeliveryState::Delivered, None),
        AttemptOutcome::Failed => (DeliveryState::Failed, None),
        AttemptOutcome::RetryAt(at) => (DeliveryState::Pending, Some(at)),
    }
}

/// Attempts kept per agent for the deliveries listing (as the memory backend).
pub(super) const ATTEMPTS_KEPT_PER_AGENT: i64 = 100;

/// `usize` limit as a SQL bind value.
pub(super) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One `(state, n)` row of a `GROUP BY state`.
pub(super) fn state_count(row: &impl Columns) -> StoreResult<(MessageState, u64)> {
    let state: String = row.text("state")?;
    let n: u64 = row.unsigned("n")?;
    let state = MessageState::parse(&state).ok_or_else(|| corrupt("message state", &state))?;
    Ok((state, n))
}

/// The next link of the audit chain after `(prev_seq, prev_hash)`.
pub(super) fn chain(prev_seq: i64, prev_hash: &str, event: NewAuditEvent) -> AuditEvent {
    let seq = prev_seq as u64 + 1;
    let hash = crate::audit::chain_hash(
        prev_hash,
        seq,
        event.at,
        &event.kind,
        event.agent_id.as_deref(),
        &event.detail,
    );
    AuditEvent {
        seq,
        at: event.at,
        kind: event.kind,
        agent_id: event.agent_id,
        detail: event.detail,
        hash,
    }
}
