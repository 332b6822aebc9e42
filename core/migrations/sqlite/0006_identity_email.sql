-- The verified e-mail address of each identity, recorded at sign-in, so that IdP events naming
-- a user by e-mail (Okta Universal Logout's default `sub_id` format, SSF `email` subjects) can
-- be mapped to the (provider, subject) key. Stored lower-cased; NULL when the IdP vouched for
-- none.
ALTER TABLE identities ADD COLUMN email TEXT;
CREATE INDEX identities_email ON identities (provider, email);
