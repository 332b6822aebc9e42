//! [`AuditStore`] on SQLite. STUB: the audit work fills this in.

use super::sqlite::SqliteStore;
use crate::audit::AuditStore;

impl AuditStore for SqliteStore {}
