-- Live (queued + leased) messages per inbox, maintained by a trigger on every
-- state change, so a send's quota check is one primary-key read whatever the
-- inbox depth (it used to count up to the quota's rows of the inbox).
CREATE TABLE inbox_live (
    recipient TEXT COLLATE "C" PRIMARY KEY,
    live BIGINT NOT NULL
);

INSERT INTO inbox_live (recipient, live)
SELECT recipient, count(*) FROM messages
WHERE state IN ('queued', 'leased')
GROUP BY recipient;

-- Every agent has its row, so an enqueue can lock it together with the agent
-- row (`FOR UPDATE`) and read the count as of the lock, not of its snapshot.
INSERT INTO inbox_live (recipient, live)
SELECT agent_id, 0 FROM agents
ON CONFLICT (recipient) DO NOTHING;

CREATE FUNCTION admp_agent_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_live (recipient, live) VALUES (NEW.agent_id, 0)
    ON CONFLICT (recipient) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_inbox AFTER INSERT ON agents
FOR EACH ROW EXECUTE FUNCTION admp_agent_inbox();

CREATE FUNCTION admp_inbox_live() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_live boolean := false;
    is_live boolean := false;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        was_live := OLD.state IN ('queued', 'leased');
    END IF;
    IF TG_OP <> 'DELETE' THEN
        is_live := NEW.state IN ('queued', 'leased');
    END IF;
    IF is_live AND NOT was_live THEN
        INSERT INTO inbox_live AS l (recipient, live) VALUES (NEW.recipient, 1)
        ON CONFLICT (recipient) DO UPDATE SET live = l.live + 1;
    ELSIF was_live AND NOT is_live THEN
        UPDATE inbox_live SET live = live - 1 WHERE recipient = OLD.recipient;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_live AFTER INSERT OR DELETE OR UPDATE OF state ON messages
FOR EACH ROW EXECUTE FUNCTION admp_inbox_live();
