-- The operator console's hub-wide listings, one indexed page each
-- (src/store/sql_console.rs): dead letters of every inbox, oldest first ...
CREATE INDEX messages_dead_all ON messages (ended_at, seq) WHERE state = 'dead';
-- ... and deliveries whose last attempt failed, newest first.
CREATE INDEX deliveries_failing ON deliveries (updated_at, id)
    WHERE state = 'failed' OR (state = 'pending' AND attempts > 0);
