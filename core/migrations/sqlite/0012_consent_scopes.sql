-- A consent records the scopes the user allowed (space-separated, without the device scope and
-- never the admin scope). Consents recorded before this column cover no scope: the next sign-in
-- with that client shows the consent page once more.
ALTER TABLE consents ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
