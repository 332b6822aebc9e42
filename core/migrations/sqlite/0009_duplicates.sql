-- How many times an event was delivered again after the first (docs/events.md): the first
-- duplicate is audited, later ones are only counted, so a replayed token cannot flood the audit
-- log.
ALTER TABLE idp_events ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
