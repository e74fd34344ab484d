-- ADMP hub schema, PostgreSQL flavour. Keep in step with migrations/sqlite.
-- Times are epoch milliseconds; JSON values are stored as text so key order
-- (which envelope signatures depend on) survives verbatim (jsonb reorders keys).
-- Ids use the "C" collation: byte order, as the other backends sort them.
-- Tables are created in the connection's current schema (search_path), so
-- several hubs can share one database in separate schemas.

CREATE TABLE agents (
    agent_id              TEXT COLLATE "C" PRIMARY KEY,
    agent_type            TEXT NOT NULL,
    metadata              TEXT NOT NULL,      -- JSON object
    keys                  TEXT NOT NULL,      -- JSON array of AgentKey, current key last
    webhook_url           TEXT,
    webhook_secret        TEXT,
    trusted_agents        TEXT NOT NULL,      -- JSON array of agent ids
    last_heartbeat        BIGINT NOT NULL,
    online                BOOLEAN NOT NULL,
    heartbeat_interval_ms BIGINT NOT NULL,
    heartbeat_timeout_ms  BIGINT NOT NULL,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    -- When the agent counts as silent; the offline sweep walks this index.
    offline_at            BIGINT GENERATED ALWAYS AS (last_heartbeat + heartbeat_timeout_ms) STORED
);
CREATE INDEX agents_offline_due ON agents (offline_at) WHERE online;

CREATE TABLE messages (
    -- Arrival order: the tie-break of every ordering and the dead-letter cursor.
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT COLLATE "C" NOT NULL UNIQUE,
    recipient       TEXT COLLATE "C" NOT NULL,
    sender          TEXT NOT NULL,
    envelope        TEXT NOT NULL,            -- JSON, delivered verbatim
    state           TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'acked', 'expired', 'dead')),
    attempts        BIGINT NOT NULL,
    lease_id        TEXT,
    lease_until     BIGINT,
    visible_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    acked_at        BIGINT,
    ended_at        BIGINT,
    dead_reason     TEXT,
    result          TEXT,                     -- JSON
    idempotency_key TEXT,
    content_hash    TEXT NOT NULL,
    -- When a pull may take the message: a leased one becomes available again when its lease ends.
    available_at    BIGINT GENERATED ALWAYS AS (CASE WHEN state = 'leased' THEN lease_until ELSE visible_at END) STORED
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
    id              TEXT COLLATE "C" PRIMARY KEY,
    message_id      TEXT NOT NULL,
    agent_id        TEXT COLLATE "C" NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_agent_pending ON deliveries (agent_id) WHERE state = 'pending';

CREATE TABLE delivery_attempts (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    agent_id    TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    status_code BIGINT,
    latency_ms  BIGINT NOT NULL,
    error       TEXT
);
CREATE INDEX delivery_attempts_agent ON delivery_attempts (agent_id, seq);

CREATE TABLE audit_events (
    seq      BIGINT PRIMARY KEY,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    agent_id TEXT,
    detail   TEXT NOT NULL,                   -- JSON
    hash     TEXT NOT NULL
);

-- The end of the audit chain, in one row: appends lock it (SELECT … FOR UPDATE)
-- so concurrent appends from several instances never fork the chain.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
