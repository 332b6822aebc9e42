-- Nothing lost under kill -9 (docs/events.md):
-- * an event's application attempts are counted when they start, so that an attempt cut short
--   by a crash is seen, and the next one is audited as a retry;
-- * revoking an ended session's tokens at the IdP is a durable, retried step: an ended session
--   that still holds sealed IdP tokens is a revocation to do, tried again at `revoke_next_at`.
ALTER TABLE idp_events ADD COLUMN started_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN revoke_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN revoke_next_at INTEGER;
CREATE INDEX sessions_revocation_due ON sessions (revoke_next_at)
    WHERE active = 0 AND (sealed_refresh_token IS NOT NULL OR sealed_access_token IS NOT NULL);
