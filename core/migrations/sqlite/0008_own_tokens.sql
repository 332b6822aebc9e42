-- mxidp issues its own Matrix tokens (docs/token-model.md): the IdP's access token stays
-- sealed in the session, for re-validation at the IdP; it is never handed to a client.
ALTER TABLE sessions ADD COLUMN sealed_access_token TEXT;

-- Sessions from before this change handed the IdP's own tokens to their clients, which mxidp no
-- longer accepts (they are not in its format). End them through the event pipeline, so that
-- their devices leave the homeserver and the IdP grants are revoked, like any other session end;
-- the clients sign in again. A new database has no sessions here.
INSERT INTO idp_events (source, dedupe_key, occurred_at, received_at, kind, subject, event, state,
                        next_attempt_at, queued_at)
SELECT 'token_model_upgrade', id, CAST(strftime('%s', 'now') AS INTEGER),
       CAST(strftime('%s', 'now') AS INTEGER), 'mxidp_session_ended', NULL,
       json_object('kind', 'mxidp_session_ended', 'session_id', id), 'pending',
       CAST(strftime('%s', 'now') AS INTEGER), CAST(strftime('%s', 'now') AS INTEGER)
FROM sessions WHERE active = 1;
