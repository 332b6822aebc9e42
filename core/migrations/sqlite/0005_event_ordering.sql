-- Ordering and retries of the event pipeline (docs/events.md).

-- When the event was (re)queued: the maximum age counts from here, so that an operator's
-- `mxidp events retry` or `replay` gets a full retry window again.
ALTER TABLE idp_events ADD COLUMN queued_at INTEGER;
UPDATE idp_events SET queued_at = received_at WHERE queued_at IS NULL;

-- The newest status event (locked, unlocked, deactivated, reactivated, deleted) applied per
-- subject, by the IdP's own time then by id: an older one arriving later is superseded.
CREATE TABLE idp_subject_status (
    subject      TEXT PRIMARY KEY,
    occurred_at  INTEGER NOT NULL,
    event_id     INTEGER NOT NULL
);

CREATE INDEX idp_events_received ON idp_events (received_at);
