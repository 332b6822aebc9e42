-- Received IdP events: the durable inbox/outbox of the event pipeline (docs/events.md).
CREATE TABLE idp_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    source           TEXT NOT NULL,
    dedupe_key       TEXT NOT NULL,
    occurred_at      INTEGER NOT NULL,
    received_at      INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    subject          TEXT,
    event            TEXT NOT NULL,      -- JSON of IdpEvent
    state            TEXT NOT NULL,      -- pending | applied | ignored | dead
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    finished_at      INTEGER,
    UNIQUE (source, dedupe_key)
);
CREATE INDEX idp_events_due ON idp_events (state, next_attempt_at);
CREATE INDEX idp_events_subject ON idp_events (subject, occurred_at);
