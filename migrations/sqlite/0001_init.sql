-- ADMP hub schema, SQLite flavour. Keep in step with migrations/postgres.
-- Times are epoch milliseconds; JSON values are stored as text so key order
-- (which envelope signatures depend on) survives verbatim.

CREATE TABLE agents (
    agent_id              TEXT PRIMARY KEY NOT NULL,
    agent_type            TEXT NOT NULL,
    metadata              TEXT NOT NULL,      -- JSON object
    keys                  TEXT NOT NULL,      -- JSON array of AgentKey, current key last
    webhook_url           TEXT,
    webhook_secret        TEXT,
    trusted_agents        TEXT NOT NULL,      -- JSON array of agent ids
    last_heartbeat        INTEGER NOT NULL,
    online                BOOLEAN NOT NULL,
    heartbeat_interval_ms INTEGER NOT NULL,
    heartbeat_timeout_ms  INTEGER NOT NULL,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    -- When the agent counts as silent; the offline sweep walks this index.
    offline_at            INTEGER GENERATED ALWAYS AS (last_heartbeat + heartbeat_timeout_ms) STORED
);
CREATE INDEX agents_offline_due ON agents (offline_at) WHERE online;

CREATE TABLE messages (
    -- Arrival order: the tie-break of every ordering and the dead-letter cursor.
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    recipient       TEXT NOT NULL,
    sender          TEXT NOT NULL,
    envelope        TEXT NOT NULL,            -- JSON, delivered verbatim
    state           TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'acked', 'expired', 'dead')),
    attempts        INTEGER NOT NULL,
    lease_id        TEXT,
    lease_until     INTEGER,
    visible_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    acked_at        INTEGER,
    ended_at        INTEGER,
    dead_reason     TEXT,
    result          TEXT,                     -- JSON
    idempotency_key TEXT,
    content_hash    TEXT NOT NULL,
    -- When a pull may take the message: a leased one becomes available again when its lease ends.
    available_at    INTEGER GENERATED ALWAYS AS (CASE WHEN state = 'leased' THEN lease_until ELSE visible_at END) STORED
);
-- Pull (oldest available first), per-inbox reclaim and the live-message quota.
CREATE INDEX messages_ready ON messages (recipient, available_at, seq) WHERE state IN ('queued', 'leased');
-- Lease-reclaim sweep.
CREATE INDEX messages_lease_end ON messages (lease_until) WHERE state = 'leased';
-- TTL sweep.
CREATE INDEX messages_ttl ON messages (expires_at) WHERE state IN ('queued', 'leased');
-- Retention purge.
CREATE INDEX messages_ended ON messages (ended_at) WHERE state IN ('acked', 'expired', 'dead');
-- Dead-letter listing and its cursor.
CREATE INDEX messages_dead ON messages (recipient, ended_at, seq) WHERE state = 'dead';
-- Inbox stats.
CREATE INDEX messages_inbox_state ON messages (recipient, state);
-- Idempotency keys are scoped to the recipient and forgotten when the message is purged.
CREATE UNIQUE INDEX messages_idempotency ON messages (recipient, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    message_id      TEXT NOT NULL,
    agent_id        TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_agent_pending ON deliveries (agent_id) WHERE state = 'pending';

CREATE TABLE delivery_attempts (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms  INTEGER NOT NULL,
    error       TEXT
);
CREATE INDEX delivery_attempts_agent ON delivery_attempts (agent_id, seq);

CREATE TABLE audit_events (
    seq      INTEGER PRIMARY KEY NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    agent_id TEXT,
    detail   TEXT NOT NULL,                   -- JSON
    hash     TEXT NOT NULL
);

-- The end of the audit chain, in one row: appends lock it so the chain never forks.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
