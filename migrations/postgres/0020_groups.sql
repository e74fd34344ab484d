-- Groups (GROUPS.md): one row per group, one row per member (never an array),
-- and the history of posts. A post's copies are ordinary rows of `messages`.

CREATE TABLE group_info (
    id              TEXT PRIMARY KEY NOT NULL,    -- group://<slug>-<8 hex>
    name            TEXT NOT NULL,
    created_by      TEXT NOT NULL,                -- the owner
    access          TEXT NOT NULL CHECK (access IN ('open', 'invite-only', 'key-protected')),
    join_key_hash   TEXT,                         -- salted hash, never returned
    history_visible BOOLEAN NOT NULL,
    max_members     BIGINT NOT NULL,
    message_ttl_sec BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX group_info_owner ON group_info (created_by);

CREATE TABLE group_members (
    group_id  TEXT NOT NULL,
    agent_id  TEXT NOT NULL,
    role      TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, agent_id)
);
-- An agent's groups, and its memberships when it is deleted.
CREATE INDEX group_members_agent ON group_members (agent_id, group_id);

CREATE TABLE group_posts (
    id              TEXT PRIMARY KEY NOT NULL,    -- the group_message_id of every copy
    group_id        TEXT NOT NULL,
    sender          TEXT NOT NULL,
    envelope        TEXT NOT NULL,                -- the sender's envelope, verbatim
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    idempotency_key TEXT,
    content_hash    TEXT NOT NULL,
    deliveries      TEXT NOT NULL                 -- JSON array of per-member outcomes
);
-- History pages, newest first.
CREATE INDEX group_posts_history ON group_posts (group_id, created_at, id);
-- History purge.
CREATE INDEX group_posts_ttl ON group_posts (expires_at);
-- Idempotency keys of posts are scoped to the group.
CREATE UNIQUE INDEX group_posts_idempotency ON group_posts (group_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- A deleted group takes its members and history with it.
CREATE FUNCTION admp_group_info_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM group_members WHERE group_id = OLD.id;
    DELETE FROM group_posts WHERE group_id = OLD.id;
    RETURN OLD;
END
$$;
CREATE TRIGGER group_info_deleted AFTER DELETE ON group_info
    FOR EACH ROW EXECUTE FUNCTION admp_group_info_deleted();

-- Deleting an agent removes its memberships and the groups it owns in the
-- same transaction as the agent row (docs/API.md, "Groups").
CREATE FUNCTION admp_agent_deleted_groups() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM group_info WHERE created_by = OLD.agent_id;
    DELETE FROM group_members WHERE agent_id = OLD.agent_id;
    RETURN OLD;
END
$$;
CREATE TRIGGER agents_deleted_groups AFTER DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION admp_agent_deleted_groups();
