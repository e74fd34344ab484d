//! SQL of `Store::peek_queued`, shared by SQLite and PostgreSQL: the
//! waiting messages of one inbox in pull order (the `messages_ready` index),
//! read without a lease.

/// `state IN ('queued', 'leased')` is `messages_ready`'s own predicate,
/// repeated word for word so SQLite sees that the index applies. Binds:
/// recipient, now, limit.
pub(super) const PEEK_QUEUED: &str = "SELECT * FROM messages \
     WHERE recipient = $1 AND state IN ('queued', 'leased') AND state = 'queued' \
       AND available_at <= $2 AND expires_at > $2 \
     ORDER BY available_at, seq LIMIT $3";
