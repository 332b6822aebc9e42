-- What the JWT shim needs to refuse IdP-issued JWTs that the IdP cannot revoke
-- (docs/jwt-shim.md): per (upstream id, subject), tokens issued at or before
-- `tokens_not_before` are inactive (the user's sessions were all ended then), and none is
-- active while `disabled` (locked, deactivated or deleted at the IdP).
CREATE TABLE subject_tokens (
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    tokens_not_before INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (provider, subject)
);
