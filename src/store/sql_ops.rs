//! The store operations both SQL backends share, each written once over
//! [`SqlConn`]. SQLite's writer thread drives them with `run_now` inside its
//! commit group; PostgreSQL awaits them on the pool or in a transaction.
//! Multi-statement operations expect the caller to have made them atomic.

use super::sql::{self, Columns, to_json_opt};
use super::sql_conn::{SqlConn, args};
use super::*;

/// A whole message row.
pub(super) fn message(row: &impl Columns) -> StoreResult<Message> {
    sql::message_from_row(row).map(|(_, m)| m)
}

/// Message state and lease id as seen by a fresh read, to explain a refused ack/nack.
pub(super) async fn lease_state(
    c: &mut impl SqlConn,
    recipient: &str,
    message_id: &str,
) -> StoreResult<Option<(String, Option<String>)>> {
    c.row(
        "SELECT state, lease_id FROM messages WHERE id = $1 AND recipient = $2",
        args![message_id, recipient],
        |r| Ok((r.text("state")?, r.text_opt("lease_id")?)),
    )
    .await
}

/// The message a lease statement changed, or why it changed none.
async fn leased_or_refused(
    c: &mut impl SqlConn,
    found: Option<Message>,
    recipient: &str,
    message_id: &str,
    lease_id: Option<&str>,
) -> StoreResult<Message> {
    match found {
        Some(m) => Ok(m),
        None => Err(sql::lease_refusal(
            lease_state(c, recipient, message_id).await?,
            lease_id,
        )),
    }
}

/// Acks one message.
pub(super) async fn ack(c: &mut impl SqlConn, r: &AckRequest) -> StoreResult<Message> {
    let result = to_json_opt(r.result.as_ref())?;
    let found = c
        .row(
            "UPDATE messages SET state = 'acked', lease_id = NULL, lease_until = NULL, \
             acked_at = $4, ended_at = $4, updated_at = $4, result = $5 \
             WHERE id = $1 AND recipient = $2 AND state = 'leased' \
               AND (CAST($3 AS TEXT) IS NULL OR lease_id = $3) \
             RETURNING *",
            args![&r.message_id, &r.recipient, &r.lease_id, r.now, &result],
            |r| message(r),
        )
        .await?;
    leased_or_refused(c, found, &r.recipient, &r.message_id, r.lease_id.as_deref()).await
}

/// Extends or ends one lease.
pub(super) async fn nack(c: &mut impl SqlConn, r: &NackRequest) -> StoreResult<Message> {
    let found = match r.action {
        NackAction::Extend {
            extend_ms,
            max_lease_until,
        } => {
            c.row(
                "UPDATE messages SET \
                     lease_until = LEAST(GREATEST(COALESCE(lease_until, $4), $4) + $5, $6), \
                     updated_at = $4 \
                 WHERE id = $1 AND recipient = $2 AND state = 'leased' \
                   AND (CAST($3 AS TEXT) IS NULL OR lease_id = $3) \
                 RETURNING *",
                args![
                    &r.message_id,
                    &r.recipient,
                    &r.lease_id,
                    r.now,
                    extend_ms,
                    max_lease_until
                ],
                |r| message(r),
            )
            .await?
        }
        NackAction::Requeue { visible_at } => {
            c.row(
                "UPDATE messages SET \
                     state = CASE WHEN attempts >= $5 THEN 'dead' ELSE 'queued' END, \
                     lease_id = NULL, \
                     lease_until = NULL, \
                     visible_at = CASE WHEN attempts >= $5 THEN visible_at ELSE $6 END, \
                     ended_at = CASE WHEN attempts >= $5 THEN $4 ELSE ended_at END, \
                     dead_reason = CASE WHEN attempts >= $5 THEN 'max_attempts' ELSE dead_reason END, \
                     updated_at = $4 \
                 WHERE id = $1 AND recipient = $2 AND state = 'leased' \
                   AND (CAST($3 AS TEXT) IS NULL OR lease_id = $3) \
                 RETURNING *",
                args![
                    &r.message_id,
                    &r.recipient,
                    &r.lease_id,
                    r.now,
                    r.max_attempts,
                    visible_at
                ],
                |r| message(r),
            )
            .await?
        }
    };
    leased_or_refused(c, found, &r.recipient, &r.message_id, r.lease_id.as_deref()).await
}

/// Puts one dead letter back in its inbox.
pub(super) async fn requeue_dead(
    c: &mut impl SqlConn,
    recipient: &str,
    message_id: &str,
    now: Millis,
) -> StoreResult<Message> {
    let found = c
        .row(
            "UPDATE messages SET state = 'queued', attempts = 0, lease_id = NULL, \
             lease_until = NULL, visible_at = $3, ended_at = NULL, dead_reason = NULL, \
             updated_at = $3 \
             WHERE id = $1 AND recipient = $2 AND state = 'dead' \
             RETURNING *",
            args![message_id, recipient, now],
            |r| message(r),
        )
        .await?;
    match found {
        Some(m) => Ok(m),
        None => match lease_state(c, recipient, message_id).await? {
            Some(_) => Err(StoreError::NotDead),
            None => Err(StoreError::MessageNotFound),
        },
    }
}
