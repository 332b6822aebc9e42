//! [`AuditStore`] on SQLite: the `audit_log` table (migration 0004). Only appends and reads.

use async_trait::async_trait;
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::StoreError;
use crate::audit::{AuditEntry, AuditRecord, AuditStore, GENESIS_HASH};

const COLUMNS: &str =
    "seq, at, actor, action, target, source, outcome, correlation_id, details, prev_hash, hash";

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        source: row.try_get("source")?,
        outcome: row.try_get("outcome")?,
        correlation_id: row.try_get("correlation_id")?,
        details: row.try_get("details")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Appends `entry` as the next record of the chain inside the caller's transaction, so that the
/// record and the change it records are written together or not at all. The transaction must
/// hold the write lock before this reads the last hash: begun with `BEGIN IMMEDIATE`, or after
/// a write of its own.
pub(super) async fn append_in(
    tx: &mut sqlx::SqliteConnection,
    entry: &AuditEntry,
    at: i64,
) -> Result<AuditRecord, StoreError> {
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let record = AuditRecord::chained(seq, at, entry, &prev_hash);
    sqlx::query(&format!(
        "INSERT INTO audit_log ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(record.seq)
    .bind(record.at)
    .bind(&record.actor)
    .bind(&record.action)
    .bind(&record.target)
    .bind(&record.source)
    .bind(&record.outcome)
    .bind(&record.correlation_id)
    .bind(&record.details)
    .bind(&record.prev_hash)
    .bind(&record.hash)
    .execute(&mut *tx)
    .await?;
    Ok(record)
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, entry: &AuditEntry, at: i64) -> Result<AuditRecord, StoreError> {
        // BEGIN IMMEDIATE takes the write lock before the read: a second appender (another
        // connection or another process) waits here (busy timeout) instead of reading the same
        // last hash. The UNIQUE prev_hash is the backstop should anything get past it.
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let record = append_in(&mut tx, entry, at).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn audit_records(
        &self,
        after_seq: i64,
        since: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > ? AND at >= ? ORDER BY seq LIMIT ?"
        ))
        .bind(after_seq)
        .bind(since.unwrap_or(i64::MIN))
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(record_from_row).collect()
    }
}
