-- Reconciliation (crate::reconcile) checks active sessions at the IdP in batches, the longest
-- unchecked first: when each session was last looked at.
ALTER TABLE sessions ADD COLUMN last_checked_at INTEGER;
CREATE INDEX sessions_reconcile ON sessions (active, last_checked_at);
