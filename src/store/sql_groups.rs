//! The group operations (migrations `0020_groups.sql`), each written once
//! over [`SqlConn`] for SQLite and PostgreSQL.
//!
//! What differs per dialect stays outside the operations:
//! - **Row locks** (and the recipients' sort), from `sql_conn::Dialect`, in
//!   statements built once per dialect (`ByDialect`). SQLite has one writer,
//!   runs one operation at a time and takes none. PostgreSQL locks the group
//!   row `FOR UPDATE` on joins (joins of one group take turns, so
//!   `max_members` is exact), `FOR SHARE` on posts, the agent a group is
//!   created for or joined by `FOR SHARE`, and the recipients' agent rows
//!   `FOR UPDATE` on posts.
//! - **A post's preamble** (PostgreSQL, `PostgresStore::post_to_group`): it
//!   first locks the recipients' inbox count rows (`inbox_live`) in
//!   recipient order, the lock a direct send takes, so the counts the shared
//!   post then reads from `inbox_live` are exact and the inbox quota holds
//!   under concurrency (the agent rows locked after them are then
//!   redundant). Its wake-ups also stay there: PostgreSQL notifies the
//!   copies' recipients after the commit.
//! - **The copies' insert**, [`SqlConn::insert_messages`]: SQLite writes many
//!   rows per statement with positional binds, PostgreSQL one statement per
//!   copy.
//!
//! Every operation takes a connection: the caller makes a multi-statement
//! operation atomic (SQLite: the writer's savepoint; PostgreSQL: one
//! transaction per operation; a whole fan-out is one of either).

use std::sync::LazyLock;

use super::sql::{Columns, limit, to_json};
use super::sql_conn::{ByDialect, Dialect, SqlConn, args};
use super::*;

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("corrupt {what} in storage: {detail}"))
}
/// Decodes a group row selected with [`GROUP_COLUMNS`].
fn group_from_row(row: &impl Columns) -> StoreResult<Group> {
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
fn role_from_row(row: &impl Columns) -> StoreResult<GroupRole> {
    let role: String = row.text("role")?;
    GroupRole::parse(&role).ok_or_else(|| corrupt("group role", &role))
}

/// Decodes a `group_members` row.
fn member_from_row(row: &impl Columns) -> StoreResult<GroupMember> {
    Ok(GroupMember {
        agent_id: row.text("agent_id")?,
        role: role_from_row(row)?,
        joined_at: row.int("joined_at")?,
    })
}

/// Decodes a `group_posts` row.
fn post_from_row(row: &impl Columns) -> StoreResult<GroupPost> {
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
fn history_bounds(cursor: Option<&str>) -> StoreResult<(Option<Millis>, Option<String>)> {
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
static GET_GROUP: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {GROUP_COLUMNS} FROM group_info g WHERE g.id = $1"));
/// An agent's groups with its role, a page by group id (every group id
/// sorts after "": no cursor is the whole range). Binds: agent, limit, after.
static AGENT_GROUPS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {GROUP_COLUMNS}, m.role FROM group_members m \
         JOIN group_info g ON g.id = m.group_id \
         WHERE m.agent_id = $1 AND m.group_id > $3 ORDER BY m.group_id LIMIT $2"
    )
});
/// Binds: the group's columns in table order; a taken id inserts nothing.
const INSERT_GROUP: &str = "INSERT INTO group_info (id, name, created_by, access, \
     join_key_hash, history_visible, max_members, message_ttl_sec, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING";
/// Binds: group, agent, role, joined_at.
const INSERT_MEMBER: &str = "INSERT INTO group_members (group_id, agent_id, role, \
     joined_at) VALUES ($1, $2, $3, $4)";
/// Binds: id, name, history_visible, max_members, message_ttl_sec, now (NULL keeps a field).
const UPDATE_GROUP: &str = "UPDATE group_info SET name = COALESCE($2, name), \
     history_visible = COALESCE($3, history_visible), \
     max_members = COALESCE($4, max_members), \
     message_ttl_sec = COALESCE($5, message_ttl_sec), updated_at = $6 \
     WHERE id = $1";
/// Binds: id.
const DELETE_GROUP: &str = "DELETE FROM group_info WHERE id = $1";
/// Binds: group, agent.
const MEMBER: &str = "SELECT agent_id, role, joined_at FROM group_members \
     WHERE group_id = $1 AND agent_id = $2";
/// Binds: group.
const MEMBERS: &str = "SELECT agent_id, role, joined_at FROM group_members \
     WHERE group_id = $1 ORDER BY agent_id";
/// Binds: group.
const COUNT_MEMBERS: &str = "SELECT count(*) AS n FROM group_members WHERE group_id = $1";
/// Binds: group, agent.
const REMOVE_MEMBER: &str = "DELETE FROM group_members WHERE group_id = $1 AND agent_id = $2";
/// Binds: group, idempotency key.
const POST_BY_KEY: &str = "SELECT * FROM group_posts WHERE group_id = $1 AND idempotency_key = $2";
/// Binds: the post's columns in table order; a taken id inserts nothing.
const INSERT_POST: &str = "INSERT INTO group_posts (id, group_id, sender, envelope, \
     created_at, expires_at, idempotency_key, content_hash, deliveries) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";
/// Newest first before a cursor. Binds: group, cursor created_at, cursor id, limit.
const HISTORY: &str = "SELECT * FROM group_posts WHERE group_id = $1 \
     AND ($2 IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3)) \
     ORDER BY created_at DESC, id DESC LIMIT $4";
/// Binds: now, limit.
const PURGE_HISTORY: &str = "DELETE FROM group_posts WHERE id IN (SELECT id \
     FROM group_posts WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)";

/// Any message whose id lies between `<post id>.` and `<post id>/` (`/`
/// follows `.` in byte order, which both engines use for ids): a copy id
/// of the post, `<post id>.<n>`, already taken. Binds: the two bounds.
const COPY_ID_TAKEN: &str = "SELECT 1 FROM messages WHERE id > $1 AND id < $2 LIMIT 1";

/// Whether an agent exists; PostgreSQL keeps it so until the commit.
/// Binds: agent.
static AGENT_EXISTS: ByDialect =
    ByDialect::new(|d| format!("SELECT 1 FROM agents WHERE agent_id = $1{}", d.for_share()));

/// A group's `max_members`; PostgreSQL locks the group row, so joins of one
/// group take turns. Binds: group.
static MAX_MEMBERS: ByDialect = ByDialect::new(|d| {
    format!(
        "SELECT max_members FROM group_info WHERE id = $1{}",
        d.for_update()
    )
});

/// Whether a group exists; PostgreSQL keeps it so until the commit. Binds:
/// group.
static GROUP_EXISTS: ByDialect =
    ByDialect::new(|d| format!("SELECT 1 FROM group_info WHERE id = $1{}", d.for_share()));

/// A post's recipients in id order, with their live counts (`inbox_live`).
/// SQLite orders by `m.agent_id` (the membership index's order: no sort);
/// PostgreSQL by `a.agent_id`, whose "C" collation the membership table
/// lacks, and locks the recipients' agent rows. Binds: group, sender.
static RECIPIENTS: ByDialect = ByDialect::new(|d| {
    let order = match d {
        Dialect::Sqlite => "m.agent_id",
        Dialect::Postgres => "a.agent_id FOR UPDATE OF a",
    };
    format!(
        "SELECT a.agent_id, a.webhook_url, coalesce(l.live, 0) AS live \
         FROM group_members m JOIN agents a ON a.agent_id = m.agent_id \
         LEFT JOIN inbox_live l ON l.recipient = m.agent_id \
         WHERE m.group_id = $1 AND m.agent_id <> $2 ORDER BY {order}"
    )
});

/// Whether the agent exists (locked as the dialect says).
async fn agent_exists<C: SqlConn>(c: &mut C, agent_id: &str) -> StoreResult<bool> {
    Ok(
        c.row(AGENT_EXISTS.get(C::DIALECT), args![agent_id], |_| Ok(()))
            .await?
            .is_some(),
    )
}

/// Inserts one membership row.
async fn insert_member(c: &mut impl SqlConn, group_id: &str, m: &GroupMember) -> StoreResult<()> {
    c.exec(
        INSERT_MEMBER,
        args![group_id, &m.agent_id, m.role.as_str(), m.joined_at],
    )
    .await
    .map(drop)
}

/// `Store::create_group`: the group and its owner's membership.
pub(super) async fn create_group<C: SqlConn>(
    c: &mut C,
    group: &Group,
    now: Millis,
) -> StoreResult<()> {
    if !agent_exists(c, &group.created_by).await? {
        return Err(StoreError::AgentNotFound);
    }
    let inserted = c
        .exec(
            INSERT_GROUP,
            args![
                &group.id,
                &group.name,
                &group.created_by,
                group.access.as_str(),
                &group.join_key_hash,
                group.settings.history_visible,
                group.settings.max_members,
                i64::try_from(group.settings.message_ttl_sec).unwrap_or(i64::MAX),
                group.created_at,
                group.updated_at,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::GroupExists);
    }
    insert_member(
        c,
        &group.id,
        &GroupMember {
            agent_id: group.created_by.clone(),
            role: GroupRole::Owner,
            joined_at: now,
        },
    )
    .await
}

/// `Store::get_group`.
pub(super) async fn get_group(c: &mut impl SqlConn, group_id: &str) -> StoreResult<Option<Group>> {
    c.row(GET_GROUP.as_str(), args![group_id], |r| group_from_row(r))
        .await
}

/// `Store::update_group`: the update, then the group read back.
pub(super) async fn update_group(
    c: &mut impl SqlConn,
    group_id: &str,
    change: &GroupChange,
) -> StoreResult<Group> {
    let updated = c
        .exec(
            UPDATE_GROUP,
            args![
                group_id,
                &change.name,
                change.history_visible,
                change.max_members.map(i64::from),
                change
                    .message_ttl_sec
                    .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                change.now,
            ],
        )
        .await?;
    if updated == 0 {
        return Err(StoreError::GroupNotFound);
    }
    get_group(c, group_id)
        .await?
        .ok_or(StoreError::GroupNotFound)
}

/// `Store::delete_group` (a trigger removes its members and history).
pub(super) async fn delete_group(c: &mut impl SqlConn, group_id: &str) -> StoreResult<bool> {
    Ok(c.exec(DELETE_GROUP, args![group_id]).await? > 0)
}

/// `Store::group_member`.
pub(super) async fn group_member(
    c: &mut impl SqlConn,
    group_id: &str,
    agent_id: &str,
) -> StoreResult<Option<GroupMember>> {
    c.row(MEMBER, args![group_id, agent_id], |r| member_from_row(r))
        .await
}

/// `Store::group_members`.
pub(super) async fn group_members(
    c: &mut impl SqlConn,
    group_id: &str,
) -> StoreResult<Vec<GroupMember>> {
    c.rows(MEMBERS, args![group_id], |r| member_from_row(r))
        .await
}

/// `Store::add_group_member`: exact under concurrency, since joins of one
/// group take turns (SQLite's single writer; PostgreSQL's group-row lock).
pub(super) async fn add_group_member<C: SqlConn>(
    c: &mut C,
    group_id: &str,
    member: &GroupMember,
) -> StoreResult<()> {
    let max = c
        .row(MAX_MEMBERS.get(C::DIALECT), args![group_id], |r| {
            r.int("max_members")
        })
        .await?
        .ok_or(StoreError::GroupNotFound)?;
    if group_member(c, group_id, &member.agent_id).await?.is_some() {
        return Err(StoreError::AlreadyMember);
    }
    let count = c
        .row(COUNT_MEMBERS, args![group_id], |r| r.int("n"))
        .await?
        .unwrap_or(0);
    if count >= max {
        return Err(StoreError::GroupFull);
    }
    if !agent_exists(c, &member.agent_id).await? {
        return Err(StoreError::AgentNotFound);
    }
    insert_member(c, group_id, member).await
}

/// `Store::remove_group_member`.
pub(super) async fn remove_group_member(
    c: &mut impl SqlConn,
    group_id: &str,
    agent_id: &str,
) -> StoreResult<bool> {
    Ok(c.exec(REMOVE_MEMBER, args![group_id, agent_id]).await? > 0)
}

/// `Store::agent_groups`.
pub(super) async fn agent_groups(
    c: &mut impl SqlConn,
    agent_id: &str,
    count: usize,
    after: Option<&str>,
) -> StoreResult<Vec<(Group, GroupRole)>> {
    c.rows(
        AGENT_GROUPS.as_str(),
        args![agent_id, limit(count), after.unwrap_or("")],
        |r| Ok((group_from_row(r)?, role_from_row(r)?)),
    )
    .await
}

/// `Store::post_to_group`: the whole fan-out (the caller makes it atomic).
/// The recipients and their live counts come from one join (the maintained
/// `inbox_live` count, not a scan of each inbox); the copies go in through
/// [`SqlConn::insert_messages`].
pub(super) async fn post_to_group<C: SqlConn>(
    c: &mut C,
    mut post: GroupPost,
    fan: &FanOut,
) -> StoreResult<Posted> {
    if c.row(GROUP_EXISTS.get(C::DIALECT), args![&post.group_id], |_| {
        Ok(())
    })
    .await?
    .is_none()
    {
        return Err(StoreError::GroupNotFound);
    }
    if group_member(c, &post.group_id, &post.sender)
        .await?
        .is_none()
    {
        return Err(StoreError::NotMember);
    }
    if let Some(key) = &post.idempotency_key {
        let existing = c
            .row(POST_BY_KEY, args![&post.group_id, key], |r| {
                post_from_row(r)
            })
            .await?;
        if let Some(existing) = existing {
            return if existing.content_hash == post.content_hash {
                Ok(Posted::Duplicate(existing))
            } else {
                Err(StoreError::IdempotencyConflict)
            };
        }
    }
    let recipients = c
        .rows(
            RECIPIENTS.get(C::DIALECT),
            args![&post.group_id, &post.sender],
            |r| {
                let live: u64 = r.unsigned("live")?;
                Ok(Recipient {
                    agent_id: r.text("agent_id")?,
                    push: r.text_opt("webhook_url")?.is_some(),
                    full: live >= fan.quota,
                })
            },
        )
        .await?;
    let plan = plan_fan_out(&mut post, fan, recipients);
    let deliveries = to_json(&post.deliveries)?;
    // From the post's insert on, nothing may fail for the post's own
    // reasons (SQLite runs a post without a savepoint: see
    // `SqliteStore::post_to_group`): the copies' ids, `<post id>.<n>`,
    // must all be free, and a taken post id inserts nothing.
    let (first_copy, past_copies) = (format!("{}.", post.id), format!("{}/", post.id));
    let copy_ids_taken = c
        .row(COPY_ID_TAKEN, args![&first_copy, &past_copies], |_| Ok(()))
        .await?
        .is_some();
    if copy_ids_taken {
        return Err(StoreError::MessageIdTaken);
    }
    let inserted = c
        .exec(
            INSERT_POST,
            args![
                &post.id,
                &post.group_id,
                &post.sender,
                post.envelope.as_str(),
                post.created_at,
                post.expires_at,
                &post.idempotency_key,
                &post.content_hash,
                &deliveries,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::MessageIdTaken);
    }
    if c.insert_messages(&plan.copies).await? < plan.copies.len() as u64 {
        return Err(StoreError::MessageIdTaken);
    }
    for d in &plan.deliveries {
        super::sql_agents::insert_delivery(c, d).await?;
    }
    Ok(Posted::Created(post))
}

/// `Store::group_history`: newest first, below the cursor.
pub(super) async fn group_history(
    c: &mut impl SqlConn,
    group_id: &str,
    count: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<GroupPost>> {
    let (before_at, before_id) = history_bounds(cursor)?;
    let items = c
        .rows(
            HISTORY,
            args![
                group_id,
                before_at,
                &before_id,
                limit(count.saturating_add(1))
            ],
            |r| post_from_row(r),
        )
        .await?;
    Ok(super::sql_console::paged(items, count, history_cursor))
}

/// `Store::purge_group_history`: up to `count` expired posts.
pub(super) async fn purge_group_history(
    c: &mut impl SqlConn,
    now: Millis,
    count: usize,
) -> StoreResult<u64> {
    c.exec(PURGE_HISTORY, args![now, limit(count)]).await
}
