-- mxidp schema v1. Tokens are stored as SHA-256 hex; the upstream refresh token only sealed.

CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY,
    metadata    TEXT NOT NULL,           -- validated MSC2966 metadata, JSON
    created_at  INTEGER NOT NULL
);

-- Sign-ins in progress (between /authorize and the code redemption).
CREATE TABLE pending_authorizations (
    id              TEXT PRIMARY KEY,
    upstream_state  TEXT NOT NULL UNIQUE,
    data            TEXT NOT NULL,       -- JSON of PendingAuthorization
    expires_at      INTEGER NOT NULL
);
CREATE INDEX pending_authorizations_expiry ON pending_authorizations (expires_at);

-- mxidp's single-use authorization codes, by hash.
CREATE TABLE authorization_codes (
    code_hash   TEXT PRIMARY KEY,
    pending_id  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    session_id  TEXT
);

-- (provider, subject) -> localpart. Never deleted: deleted_at marks a tombstone, and the
-- UNIQUE localpart keeps it from ever being given to another subject.
CREATE TABLE identities (
    provider    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    localpart   TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER,
    PRIMARY KEY (provider, subject)
);

CREATE TABLE consents (
    localpart   TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    granted_at  INTEGER NOT NULL,
    PRIMARY KEY (localpart, client_id)
);

CREATE TABLE sessions (
    id                    TEXT PRIMARY KEY,
    provider              TEXT NOT NULL,
    subject               TEXT NOT NULL,
    localpart             TEXT NOT NULL,
    device_id             TEXT NOT NULL,
    client_id             TEXT NOT NULL,
    idp_sid               TEXT,
    scope                 TEXT NOT NULL,
    admin                 INTEGER NOT NULL,
    active                INTEGER NOT NULL,
    sealed_refresh_token  TEXT,
    created_at            INTEGER NOT NULL,
    ended_at              INTEGER,
    end_reason            TEXT
);
CREATE INDEX sessions_subject ON sessions (provider, subject);
CREATE INDEX sessions_localpart ON sessions (localpart);
CREATE INDEX sessions_idp_sid ON sessions (idp_sid);

CREATE TABLE tokens (
    hash        TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    kind        TEXT NOT NULL,           -- access | refresh
    expires_at  INTEGER,
    issued_at   INTEGER NOT NULL,
    rotated_at  INTEGER
);
CREATE INDEX tokens_session ON tokens (session_id);
