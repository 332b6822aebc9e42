-- Values mxidp keeps about itself, e.g. a sealed check value that tells at start whether
-- database.encryption_key is the key this database was written with.
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
