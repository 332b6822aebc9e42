-- RFC 8628 device authorization grants. The device code and the user code are stored only as
-- hashes. Each row points at the pending authorization (purpose `device_grant`) that carries
-- the client, the scope and, once the user signed in and consented, the sealed IdP login.
CREATE TABLE device_authorizations (
    device_code_hash  TEXT PRIMARY KEY,
    user_code_hash    TEXT NOT NULL UNIQUE,
    pending_id        TEXT NOT NULL UNIQUE,
    client_id         TEXT NOT NULL,
    -- pending | claimed (a browser entered the code) | approved | denied | redeemed
    status            TEXT NOT NULL,
    interval_seconds  INTEGER NOT NULL,
    last_poll_at      INTEGER,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL
);
CREATE INDEX device_authorizations_expiry ON device_authorizations (expires_at);
