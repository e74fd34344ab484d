-- Live (queued + leased) messages per inbox, maintained by triggers on every
-- state change, so a send's quota check is one primary-key read whatever the
-- inbox depth (it used to count up to the quota's rows of the inbox).
CREATE TABLE inbox_live (
    recipient TEXT PRIMARY KEY,
    live INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO inbox_live (recipient, live)
SELECT recipient, count(*) FROM messages
WHERE state IN ('queued', 'leased')
GROUP BY recipient;

CREATE TRIGGER messages_live_insert AFTER INSERT ON messages
WHEN NEW.state IN ('queued', 'leased')
BEGIN
    INSERT INTO inbox_live (recipient, live) VALUES (NEW.recipient, 1)
    ON CONFLICT (recipient) DO UPDATE SET live = live + 1;
END;

CREATE TRIGGER messages_live_delete AFTER DELETE ON messages
WHEN OLD.state IN ('queued', 'leased')
BEGIN
    UPDATE inbox_live SET live = live - 1 WHERE recipient = OLD.recipient;
END;

CREATE TRIGGER messages_live_leave AFTER UPDATE OF state ON messages
WHEN OLD.state IN ('queued', 'leased') AND NEW.state NOT IN ('queued', 'leased')
BEGIN
    UPDATE inbox_live SET live = live - 1 WHERE recipient = OLD.recipient;
END;

CREATE TRIGGER messages_live_enter AFTER UPDATE OF state ON messages
WHEN OLD.state NOT IN ('queued', 'leased') AND NEW.state IN ('queued', 'leased')
BEGIN
    INSERT INTO inbox_live (recipient, live) VALUES (NEW.recipient, 1)
    ON CONFLICT (recipient) DO UPDATE SET live = live + 1;
END;
