-- The webhook secret a change replaced, as JSON {"secret", "valid_until"}:
-- deliveries are signed with it as well as the current one until valid_until.
ALTER TABLE agents ADD COLUMN previous_webhook_secret TEXT;
