-- Fewer `messages` index entries per queued message. A send, and every copy
-- of a group post, writes one entry into each index whose predicate a queued
-- row meets; the indexes that begin with the recipient put those entries on
-- a different leaf page per inbox, so a fan-out to 100 members dirtied two
-- such pages per member. `messages_inbox_state (recipient, state)` held
-- every message and served only the inbox stats: they now count live
-- messages from `messages_ready` (which carries `state` for that) and ended
-- ones from a partial index that a queued message is not in.
DROP INDEX messages_inbox_state;
DROP INDEX messages_ready;
-- Pull (oldest available first), per-inbox reclaim, live counts by state.
CREATE INDEX messages_ready ON messages (recipient, available_at, seq, state)
    WHERE state IN ('queued', 'leased');
-- Ended counts by state.
CREATE INDEX messages_ended_inbox ON messages (recipient, state)
    WHERE state IN ('acked', 'expired', 'dead');
