-- Security hardening (issue 12).
-- Request nonces (x-request-nonce), by a fixed-size digest of agent and
-- nonce, so replay protection holds across restarts and instances. The
-- sweeper purges rows past expires_at.
CREATE TABLE request_nonces (
    nonce_key  TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX request_nonces_expires ON request_nonces (expires_at);

-- Agent ids retired by deletion (tombstones): never registered again, so
-- nothing the deleted agent left behind is reachable by a later holder.
CREATE TABLE retired_agents (
    agent_id   TEXT PRIMARY KEY,
    retired_at BIGINT NOT NULL
);
