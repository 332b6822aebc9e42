-- mxidp issues its own Matrix tokens (docs/token-model.md): the IdP's access token stays
-- sealed in the session, for re-validation at the IdP; it is never handed to a client.
ALTER TABLE sessions ADD COLUMN sealed_access_token TEXT;
