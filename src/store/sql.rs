//! What the SQL backends share: turning rows into records, records into
//! column values, and driver errors into [`StoreError`].
//!
//! Both schemas (`migrations/sqlite`, `migrations/postgres`) use the same
//! column names and store every integer as a 64-bit value, every JSON value
//! as text, so one set of row readers serves both drivers.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{ColumnIndex, Decode, Row, Type};

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

/// Reads one column, mapping decode failures to `Internal`.
fn get<'r, R, T>(row: &'r R, column: &'static str) -> StoreResult<T>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column).map_err(|e| corrupt(column, e))
}

/// Reads a non-negative integer column into a narrower unsigned type.
fn get_unsigned<'r, R, T>(row: &'r R, column: &'static str) -> StoreResult<T>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    T: TryFrom<i64>,
{
    let n: i64 = get(row, column)?;
    T::try_from(n).map_err(|_| corrupt(column, n))
}

/// The earliest `available_at` of an inbox's live messages (served by the
/// `messages_ready` index). Binds: recipient.
pub(super) const NEXT_AVAILABLE_AT: &str = "SELECT MIN(available_at) FROM messages \
     WHERE recipient = $1 AND state IN ('queued', 'leased')";

/// Decodes an `agents` row.
pub(super) fn agent_from_row<'r, R>(row: &'r R) -> StoreResult<Agent>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Agent {
        agent_id: get(row, "agent_id")?,
        agent_type: get(row, "agent_type")?,
        metadata: from_json("metadata", &get::<_, String>(row, "metadata")?)?,
        keys: from_json("keys", &get::<_, String>(row, "keys")?)?,
        webhook_url: get(row, "webhook_url")?,
        webhook_secret: get(row, "webhook_secret")?,
        previous_webhook_secret: get::<_, Option<String>>(row, "previous_webhook_secret")?
            .map(|text| from_json("previous_webhook_secret", &text))
            .transpose()?,
        trusted_agents: from_json("trusted_agents", &get::<_, String>(row, "trusted_agents")?)?,
        last_heartbeat: get(row, "last_heartbeat")?,
        online: get(row, "online")?,
        heartbeat_interval_ms: get_unsigned(row, "heartbeat_interval_ms")?,
        heartbeat_timeout_ms: get_unsigned(row, "heartbeat_timeout_ms")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// Decodes a `messages` row together with its arrival sequence number.
pub(super) fn message_from_row<'r, R>(row: &'r R) -> StoreResult<(i64, Message)>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, "state")?;
    let result: Option<String> = get(row, "result")?;
    let message = Message {
        id: get(row, "id")?,
        recipient: get(row, "recipient")?,
        sender: get(row, "sender")?,
        envelope: Envelope::from_json_text(get(row, "envelope")?)
            .map_err(|e| corrupt("envelope", e))?,
        state: MessageState::parse(&state).ok_or_else(|| corrupt("message state", &state))?,
        attempts: get_unsigned(row, "attempts")?,
        lease_id: get(row, "lease_id")?,
        lease_until: get(row, "lease_until")?,
        visible_at: get(row, "visible_at")?,
        expires_at: get(row, "expires_at")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        acked_at: get(row, "acked_at")?,
        ended_at: get(row, "ended_at")?,
        dead_reason: get(row, "dead_reason")?,
        result: result.map(|r| from_json("result", &r)).transpose()?,
        idempotency_key: get(row, "idempotency_key")?,
        content_hash: get(row, "content_hash")?,
    };
    Ok((get(row, "seq")?, message))
}

/// Decodes a `deliveries` row.
pub(super) fn delivery_from_row<'r, R>(row: &'r R) -> StoreResult<Delivery>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, "state")?;
    let last_status: Option<i64> = get(row, "last_status")?;
    Ok(Delivery {
        id: get(row, "id")?,
        message_id: get(row, "message_id")?,
        agent_id: get(row, "agent_id")?,
        state: DeliveryState::parse(&state).ok_or_else(|| corrupt("delivery state", &state))?,
        attempts: get_unsigned(row, "attempts")?,
        next_attempt_at: get(row, "next_attempt_at")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        last_status: last_status
            .map(|s| u16::try_from(s).map_err(|_| corrupt("last_status", s)))
            .transpose()?,
        last_error: get(row, "last_error")?,
    })
}

/// Decodes a `delivery_attempts` row.
pub(super) fn attempt_from_row<'r, R>(row: &'r R) -> StoreResult<DeliveryAttempt>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let status_code: Option<i64> = get(row, "status_code")?;
    Ok(DeliveryAttempt {
        delivery_id: get(row, "delivery_id")?,
        message_id: get(row, "message_id")?,
        agent_id: get(row, "agent_id")?,
        attempt: get_unsigned(row, "attempt")?,
        at: get(row, "at")?,
        status_code: status_code
            .map(|s| u16::try_from(s).map_err(|_| corrupt("status_code", s)))
            .transpose()?,
        latency_ms: get_unsigned(row, "latency_ms")?,
        error: get(row, "error")?,
    })
}

/// Decodes an `audit_events` row.
pub(super) fn audit_from_row<'r, R>(row: &'r R) -> StoreResult<AuditEvent>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditEvent {
        seq: get_unsigned(row, "seq")?,
        at: get(row, "at")?,
        kind: get(row, "kind")?,
        agent_id: get(row, "agent_id")?,
        detail: from_json("detail", &get::<_, String>(row, "detail")?)?,
        hash: get(row, "hash")?,
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

/// Counts `(state, n)` rows (a `GROUP BY state`) into [`StateCounts`].
pub(super) fn count_states<'r, R>(rows: &'r [R]) -> StoreResult<StateCounts>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut counts = StateCounts::default();
    for row in rows {
        let state: String = get(row, "state")?;
        let n: u64 = get_unsigned(row, "n")?;
        let state = MessageState::parse(&state).ok_or_else(|| corrupt("message state", &state))?;
        counts.add(state, n);
    }
    Ok(counts)
}

/// Tallies the `state` column returned by a reclaim statement.
pub(super) fn reclaim_counts<'r, R>(rows: &'r [R]) -> StoreResult<ReclaimCounts>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut counts = ReclaimCounts::default();
    for row in rows {
        let state: String = get(row, "state")?;
        if state == MessageState::Dead.as_str() {
            counts.dead += 1;
        } else {
            counts.requeued += 1;
        }
    }
    Ok(counts)
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
