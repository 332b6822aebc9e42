-- The audit log (docs/events.md): append-only and hash-chained. Each record's hash covers the
-- previous record's hash and every field of its own (see crate::audit), so a modified or
-- deleted record breaks the chain at a place `mxidp audit verify` names.
CREATE TABLE audit_log (
    seq             INTEGER PRIMARY KEY,  -- 1, 2, 3, … assigned by the appender, never reused
    at              INTEGER NOT NULL,     -- Unix seconds
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    target          TEXT NOT NULL,
    source          TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    details         TEXT NOT NULL,        -- canonical JSON (sorted keys), hashed as stored
    prev_hash       TEXT NOT NULL UNIQUE, -- a second record on the same predecessor is a fork
    hash            TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Append-only for mxidp itself. These do not stop someone with write access to the file
-- (they can drop the triggers); the hash chain is what shows that.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
