//! Group statements shared by the SQL backends (migrations `0020_groups.sql`).
//!
//! The SQL is the same on SQLite and PostgreSQL except for row locks, so
//! [`group_sql!`] writes it once and each backend expands it inside its own
//! module (where its `insert_message` / `insert_delivery` statements live):
//! SQLite has one writer and needs no locks; PostgreSQL locks the group row
//! (`FOR UPDATE` on joins, `FOR SHARE` on posts), and a post's caller
//! (`PostgresStore::post_to_group`) first locks the recipients' inbox count
//! rows (`inbox_live`) in recipient order, the lock a direct send takes;
//! together they make `max_members` and the inbox quota exact under
//! concurrency. The post also reads the recipients' agent rows `FOR UPDATE`,
//! which the count-row locks taken before it make redundant.
//!
//! Every function takes a connection: the caller opens the transaction (one
//! per operation; a whole fan-out is one transaction) and commits it.

use std::sync::LazyLock;

use super::sql::Columns;
use super::*;

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt {what} in storage: {detail}"))
}

/// Decodes a group row selected with [`GROUP_COLUMNS`].
pub(super) fn group_from_row(row: &impl Columns) -> StoreResult<Group> {
    let access: String = row.text("access")?;
    Ok(Group {
        id: row.text("id")?,
        name: row.text("name")?,
        created_by: row.text("created_by")?,
        access: GroupAccess::parse(&access).ok_or_else(|| corrupt("group access", &access))?,
        join_key_hash: row.text_opt("join_key_hash")?,
        settings: GroupSettings {
            history_visible: row.flag("history_visible")?,
            max_members: row.unsigned("max_members")?,
            message_ttl_sec: row.unsigned("message_ttl_sec")?,
        },
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        member_count: row.unsigned("member_count")?,
    })
}

/// Decodes the `role` column.
pub(super) fn role_from_row(row: &impl Columns) -> StoreResult<GroupRole> {
    let role: String = row.text("role")?;
    GroupRole::parse(&role).ok_or_else(|| corrupt("group role", &role))
}

/// Decodes a `group_members` row.
pub(super) fn member_from_row(row: &impl Columns) -> StoreResult<GroupMember> {
    Ok(GroupMember {
        agent_id: row.text("agent_id")?,
        role: role_from_row(row)?,
        joined_at: row.int("joined_at")?,
    })
}

/// Decodes a `group_posts` row.
pub(super) fn post_from_row(row: &impl Columns) -> StoreResult<GroupPost> {
    let deliveries: String = row.text("deliveries")?;
    Ok(GroupPost {
        id: row.text("id")?,
        group_id: row.text("group_id")?,
        sender: row.text("sender")?,
        envelope: Envelope::from_json_text(row.text("envelope")?)
            .map_err(|e| corrupt("envelope", e))?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        idempotency_key: row.text_opt("idempotency_key")?,
        content_hash: row.text("content_hash")?,
        deliveries: serde_json::from_str(&deliveries).map_err(|e| corrupt("deliveries", e))?,
    })
}

/// `(created_at, id)` a history page starts below (`None`: the newest).
pub(super) fn history_bounds(
    cursor: Option<&str>,
) -> StoreResult<(Option<Millis>, Option<String>)> {
    match cursor {
        Some(c) => {
            let (at, id) = parse_history_cursor(c).ok_or(StoreError::InvalidCursor)?;
            Ok((Some(at), Some(id)))
        }
        None => Ok((None, None)),
    }
}

/// Selects groups with their member count.
const GROUP_COLUMNS: &str = "g.id, g.name, g.created_by, g.access, g.join_key_hash, \
     g.history_visible, g.max_members, g.message_ttl_sec, g.created_at, g.updated_at, \
     (SELECT count(*) FROM group_members c WHERE c.group_id = g.id) AS member_count";
/// One group. Binds: id.
pub(super) static GET_GROUP: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {GROUP_COLUMNS} FROM group_info g WHERE g.id = $1"));
/// An agent's groups with its role, a page by group id (every group id
/// sorts after "": no cursor is the whole range). Binds: agent, limit, after.
pub(super) static AGENT_GROUPS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {GROUP_COLUMNS}, m.role FROM group_members m \
         JOIN group_info g ON g.id = m.group_id \
         WHERE m.agent_id = $1 AND m.group_id > $3 ORDER BY m.group_id LIMIT $2"
    )
});
/// Binds: the group's columns in table order; a taken id inserts nothing.
pub(super) const INSERT_GROUP: &str = "INSERT INTO group_info (id, name, created_by, access, \
     join_key_hash, history_visible, max_members, message_ttl_sec, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING";
/// Binds: group, agent, role, joined_at.
pub(super) const INSERT_MEMBER: &str = "INSERT INTO group_members (group_id, agent_id, role, \
     joined_at) VALUES ($1, $2, $3, $4)";
/// Binds: id, name, history_visible, max_members, message_ttl_sec, now (NULL keeps a field).
pub(super) const UPDATE_GROUP: &str = "UPDATE group_info SET name = COALESCE($2, name), \
     history_visible = COALESCE($3, history_visible), \
     max_members = COALESCE($4, max_members), \
     message_ttl_sec = COALESCE($5, message_ttl_sec), updated_at = $6 \
     WHERE id = $1";
/// Binds: id.
pub(super) const DELETE_GROUP: &str = "DELETE FROM group_info WHERE id = $1";
/// Binds: group, agent.
pub(super) const MEMBER: &str = "SELECT agent_id, role, joined_at FROM group_members \
     WHERE group_id = $1 AND agent_id = $2";
/// Binds: group.
pub(super) const MEMBERS: &str = "SELECT agent_id, role, joined_at FROM group_members \
     WHERE group_id = $1 ORDER BY agent_id";
/// Binds: group.
pub(super) const COUNT_MEMBERS: &str = "SELECT count(*) FROM group_members WHERE group_id = $1";
/// Binds: group, agent.
pub(super) const REMOVE_MEMBER: &str =
    "DELETE FROM group_members WHERE group_id = $1 AND agent_id = $2";
/// Binds: group, idempotency key.
pub(super) const POST_BY_KEY: &str =
    "SELECT * FROM group_posts WHERE group_id = $1 AND idempotency_key = $2";
/// Binds: the post's columns in table order; a taken id inserts nothing.
pub(super) const INSERT_POST: &str = "INSERT INTO group_posts (id, group_id, sender, envelope, \
     created_at, expires_at, idempotency_key, content_hash, deliveries) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";
/// Newest first before a cursor. Binds: group, cursor created_at, cursor id, limit.
pub(super) const HISTORY: &str = "SELECT * FROM group_posts WHERE group_id = $1 \
     AND ($2 IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3)) \
     ORDER BY created_at DESC, id DESC LIMIT $4";
/// Binds: now, limit.
pub(super) const PURGE_HISTORY: &str = "DELETE FROM group_posts WHERE id IN (SELECT id \
     FROM group_posts WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)";

/// Expands to a module `group_sql` of group operations for one driver:
/// `group_sql!(Connection type, Row type, "lock for update", "lock for share")`.
macro_rules! group_sql {
    ($conn:ty, $row:ty, $for_update:literal, $for_share:literal) => {
        mod group_sql {
            use super::*;
            use crate::store::sql::{Columns, db_error, limit, to_json};
            use crate::store::sql_groups::*;

            async fn agent_exists(conn: &mut $conn, agent_id: &str) -> StoreResult<bool> {
                let sql = format!("SELECT 1 FROM agents WHERE agent_id = $1{}", $for_share);
                Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(agent_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .is_some())
            }

            pub(in super::super) async fn create(
                conn: &mut $conn,
                group: &Group,
                now: Millis,
            ) -> StoreResult<()> {
                if !agent_exists(conn, &group.created_by).await? {
                    return Err(StoreError::AgentNotFound);
                }
                let inserted = sqlx::query(INSERT_GROUP)
                .bind(&group.id)
                .bind(&group.name)
                .bind(&group.created_by)
                .bind(group.access.as_str())
                .bind(&group.join_key_hash)
                .bind(group.settings.history_visible)
                .bind(i64::from(group.settings.max_members))
                .bind(i64::try_from(group.settings.message_ttl_sec).unwrap_or(i64::MAX))
                .bind(group.created_at)
                .bind(group.updated_at)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
                if inserted.rows_affected() == 0 {
                    return Err(StoreError::GroupExists);
                }
                insert_member(
                    conn,
                    &group.id,
                    &GroupMember {
                        agent_id: group.created_by.clone(),
                        role: GroupRole::Owner,
                        joined_at: now,
                    },
                )
                .await
            }

            async fn insert_member(
                conn: &mut $conn,
                group_id: &str,
                member: &GroupMember,
            ) -> StoreResult<()> {
                sqlx::query(INSERT_MEMBER)
                .bind(group_id)
                .bind(&member.agent_id)
                .bind(member.role.as_str())
                .bind(member.joined_at)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
                Ok(())
            }

            pub(in super::super) async fn get_group(
                conn: &mut $conn,
                group_id: &str,
            ) -> StoreResult<Option<Group>> {
                sqlx::query(GET_GROUP.as_str())
                    .bind(group_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .as_ref()
                    .map(group_from_row)
                    .transpose()
            }

            pub(in super::super) async fn update(
                conn: &mut $conn,
                group_id: &str,
                change: &GroupChange,
            ) -> StoreResult<Group> {
                let updated = sqlx::query(UPDATE_GROUP)
                .bind(group_id)
                .bind(&change.name)
                .bind(change.history_visible)
                .bind(change.max_members.map(i64::from))
                .bind(
                    change
                        .message_ttl_sec
                        .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                )
                .bind(change.now)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
                if updated.rows_affected() == 0 {
                    return Err(StoreError::GroupNotFound);
                }
                get_group(conn, group_id)
                    .await?
                    .ok_or(StoreError::GroupNotFound)
            }

            pub(in super::super) async fn delete(
                conn: &mut $conn,
                group_id: &str,
            ) -> StoreResult<bool> {
                let done = sqlx::query(DELETE_GROUP)
                    .bind(group_id)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                Ok(done.rows_affected() > 0)
            }

            pub(in super::super) async fn member(
                conn: &mut $conn,
                group_id: &str,
                agent_id: &str,
            ) -> StoreResult<Option<GroupMember>> {
                sqlx::query(MEMBER)
                .bind(group_id)
                .bind(agent_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error)?
                .as_ref()
                .map(member_from_row)
                .transpose()
            }

            pub(in super::super) async fn members(
                conn: &mut $conn,
                group_id: &str,
            ) -> StoreResult<Vec<GroupMember>> {
                sqlx::query(MEMBERS)
                .bind(group_id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?
                .iter()
                .map(member_from_row)
                .collect()
            }

            pub(in super::super) async fn add_member(
                conn: &mut $conn,
                group_id: &str,
                member: &GroupMember,
            ) -> StoreResult<()> {
                // The group row lock serialises joins of one group: the count
                // below is then exact.
                let sql = format!(
                    "SELECT max_members FROM group_info WHERE id = $1{}",
                    $for_update
                );
                let max: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(group_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .ok_or(StoreError::GroupNotFound)?;
                if self::member(conn, group_id, &member.agent_id).await?.is_some() {
                    return Err(StoreError::AlreadyMember);
                }
                let count: i64 = sqlx::query_scalar(COUNT_MEMBERS)
                        .bind(group_id)
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(db_error)?;
                if count >= max {
                    return Err(StoreError::GroupFull);
                }
                if !agent_exists(conn, &member.agent_id).await? {
                    return Err(StoreError::AgentNotFound);
                }
                insert_member(conn, group_id, member).await
            }

            pub(in super::super) async fn remove_member(
                conn: &mut $conn,
                group_id: &str,
                agent_id: &str,
            ) -> StoreResult<bool> {
                let done = sqlx::query(REMOVE_MEMBER)
                        .bind(group_id)
                        .bind(agent_id)
                        .execute(&mut *conn)
                        .await
                        .map_err(db_error)?;
                Ok(done.rows_affected() > 0)
            }

            pub(in super::super) async fn agent_groups(
                conn: &mut $conn,
                agent_id: &str,
                count: usize,
                after: Option<&str>,
            ) -> StoreResult<Vec<(Group, GroupRole)>> {
                sqlx::query(AGENT_GROUPS.as_str())
                    .bind(agent_id)
                    .bind(limit(count))
                    .bind(after.unwrap_or(""))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .iter()
                    .map(|row| Ok((group_from_row(row)?, role_from_row(row)?)))
                    .collect()
            }

            /// The whole fan-out, inside the caller's transaction. Returns the
            /// outcome and the members that got a copy (for wake-ups).
            pub(in super::super) async fn post(
                conn: &mut $conn,
                mut post: GroupPost,
                fan: &FanOut,
            ) -> StoreResult<(Posted, Vec<String>)> {
                let sql = format!("SELECT 1 FROM group_info WHERE id = $1{}", $for_share);
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&post.group_id)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .ok_or(StoreError::GroupNotFound)?;
                if member(conn, &post.group_id, &post.sender).await?.is_none() {
                    return Err(StoreError::NotMember);
                }
                if let Some(key) = &post.idempotency_key {
                    let existing = sqlx::query(POST_BY_KEY)
                    .bind(&post.group_id)
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(db_error)?;
                    if let Some(row) = existing {
                        let existing = post_from_row(&row)?;
                        return if existing.content_hash == post.content_hash {
                            Ok((Posted::Duplicate(existing), Vec::new()))
                        } else {
                            Err(StoreError::IdempotencyConflict)
                        };
                    }
                }
                // The recipients' agent rows, in id order (PostgreSQL: also
                // locked, redundantly: the caller holds their count rows).
                let sql = format!(
                    "SELECT agent_id, webhook_url FROM agents WHERE agent_id IN \
                     (SELECT agent_id FROM group_members WHERE group_id = $1 AND agent_id <> $2) \
                     ORDER BY agent_id{}",
                    $for_update
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&post.group_id)
                    .bind(&post.sender)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?;
                let full: std::collections::HashSet<String> = if fan.quota == 0 {
                    rows.iter()
                        .map(|r| r.text("agent_id"))
                        .collect::<StoreResult<_>>()?
                } else {
                    sqlx::query_scalar(
                        "SELECT m.agent_id FROM group_members m \
                         WHERE m.group_id = $1 AND m.agent_id <> $2 AND EXISTS ( \
                           SELECT 1 FROM messages x WHERE x.recipient = m.agent_id \
                           AND x.state IN ('queued', 'leased') LIMIT 1 OFFSET $3)",
                    )
                    .bind(&post.group_id)
                    .bind(&post.sender)
                    .bind(i64::try_from(fan.quota - 1).unwrap_or(i64::MAX))
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_error)?
                    .into_iter()
                    .collect()
                };
                let mut recipients = Vec::with_capacity(rows.len());
                for row in &rows {
                    let agent_id: String = row.text("agent_id")?;
                    let webhook: Option<String> = row.text_opt("webhook_url")?;
                    recipients.push(Recipient {
                        full: full.contains(&agent_id),
                        push: webhook.is_some(),
                        agent_id,
                    });
                }
                let plan = plan_fan_out(&mut post, fan, recipients);
                let inserted = sqlx::query(INSERT_POST)
                .bind(&post.id)
                .bind(&post.group_id)
                .bind(&post.sender)
                .bind(post.envelope.as_str())
                .bind(post.created_at)
                .bind(post.expires_at)
                .bind(&post.idempotency_key)
                .bind(&post.content_hash)
                .bind(to_json(&post.deliveries)?)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
                if inserted.rows_affected() == 0 {
                    return Err(StoreError::MessageIdTaken);
                }
                let mut woken = Vec::with_capacity(plan.copies.len());
                for copy in &plan.copies {
                    let inserted = insert_message(copy)?
                        .execute(&mut *conn)
                        .await
                        .map_err(db_error)?;
                    if inserted.rows_affected() == 0 {
                        return Err(StoreError::MessageIdTaken);
                    }
                    woken.push(copy.recipient.clone());
                }
                for delivery in &plan.deliveries {
                    insert_delivery(delivery)
                        .execute(&mut *conn)
                        .await
                        .map_err(db_error)?;
                }
                Ok((Posted::Created(post), woken))
            }

            pub(in super::super) async fn history(
                conn: &mut $conn,
                group_id: &str,
                count: usize,
                cursor: Option<&str>,
            ) -> StoreResult<Page<GroupPost>> {
                let (before_at, before_id) = history_bounds(cursor)?;
                let rows = sqlx::query(HISTORY)
                .bind(group_id)
                .bind(before_at)
                .bind(before_id)
                .bind(limit(count.saturating_add(1)))
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?;
                let mut items: Vec<GroupPost> =
                    rows.iter().map(post_from_row).collect::<StoreResult<_>>()?;
                let next_cursor = if items.len() > count {
                    items.truncate(count);
                    items.last().map(history_cursor)
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            pub(in super::super) async fn purge_history(
                conn: &mut $conn,
                now: Millis,
                count: usize,
            ) -> StoreResult<u64> {
                let done = sqlx::query(PURGE_HISTORY)
                .bind(now)
                .bind(limit(count))
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
                Ok(done.rows_affected())
            }
        }
    };
}

pub(super) use group_sql;
