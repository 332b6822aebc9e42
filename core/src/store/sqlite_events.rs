//! [`EventStore`] on SQLite.

use async_trait::async_trait;
use sqlx::Row;

use super::sqlite::SqliteStore;
use super::sqlite_audit::append_in;
use super::StoreError;
use crate::audit::AuditEntry;
use crate::events::{EventState, EventStore, IdpEvent, StatusWatermark, StoredEvent};

const EVENT_COLUMNS: &str = "id, source, dedupe_key, occurred_at, received_at, event, state, \
     attempts, next_attempt_at, last_error, finished_at, COALESCE(queued_at, received_at) AS queued_at";

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredEvent, StoreError> {
    let state: &str = row.try_get("state")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        dedupe_key: row.try_get("dedupe_key")?,
        occurred_at: row.try_get("occurred_at")?,
        received_at: row.try_get("received_at")?,
        event: serde_json::from_str(row.try_get::<&str, _>("event")?)
            .map_err(|e| StoreError::Corrupt(format!("IdP event: {e}")))?,
        state: EventState::parse(state)
            .ok_or_else(|| StoreError::Corrupt(format!("event state {state}")))?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        finished_at: row.try_get("finished_at")?,
        queued_at: row.try_get("queued_at")?,
    })
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn insert_event(
        &self,
        source: &str,
        dedupe_key: &str,
        occurred_at: i64,
        event: &IdpEvent,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<Option<i64>, StoreError> {
        let json = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO idp_events (source, dedupe_key, occurred_at, received_at, kind, subject, event, state, next_attempt_at, queued_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (source, dedupe_key) DO NOTHING RETURNING id",
        )
        .bind(source)
        .bind(dedupe_key)
        .bind(occurred_at)
        .bind(now)
        .bind(event.kind())
        .bind(event.subject())
        .bind(json)
        .bind(now)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = id {
            let mut entry = audit.clone();
            if entry.correlation_id.is_empty() {
                entry.correlation_id = id.to_string();
            }
            append_in(&mut tx, &entry, now).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    async fn count_duplicate(
        &self,
        source: &str,
        dedupe_key: &str,
        audit: &AuditEntry,
        now: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let count: Option<i64> = sqlx::query_scalar(
            "UPDATE idp_events SET duplicates = duplicates + 1 WHERE source = ? AND dedupe_key = ? \
             RETURNING duplicates",
        )
        .bind(source)
        .bind(dedupe_key)
        .fetch_optional(&mut *tx)
        .await?;
        let count = count.unwrap_or(0);
        if count == 1 {
            append_in(&mut tx, audit, now).await?;
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn begin_attempt(&self, id: i64) -> Result<i64, StoreError> {
        let started: Option<i64> = sqlx::query_scalar(
            "UPDATE idp_events SET started_attempts = started_attempts + 1 WHERE id = ? \
             RETURNING started_attempts",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        started.ok_or_else(|| StoreError::Database(format!("no IdP event {id}")))
    }

    async fn event(&self, id: i64) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM idp_events WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn due_events(&self, now: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM idp_events WHERE state IN ('pending', 'failed') \
             AND next_attempt_at <= ? ORDER BY occurred_at, id LIMIT ?"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn list_events(
        &self,
        state: Option<EventState>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // `?1 IS NULL` lists every state.
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM idp_events WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2"
        ))
        .bind(state.map(EventState::as_str))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn mark_event_applied(
        &self,
        id: i64,
        status: bool,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "UPDATE idp_events SET state = 'applied', attempts = attempts + 1, last_error = NULL, \
             finished_at = ? WHERE id = ?",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if status {
            // Row values compare lexicographically: (occurred_at, id) only ever moves forward.
            sqlx::query(
                "INSERT INTO idp_subject_status (subject, occurred_at, event_id) \
                 SELECT subject, occurred_at, id FROM idp_events WHERE id = ? AND subject IS NOT NULL \
                 ON CONFLICT (subject) DO UPDATE SET occurred_at = excluded.occurred_at, event_id = excluded.event_id \
                 WHERE (excluded.occurred_at, excluded.event_id) > (idp_subject_status.occurred_at, idp_subject_status.event_id)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        append_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_event_ignored(
        &self,
        id: i64,
        reason: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "UPDATE idp_events SET state = 'ignored', last_error = ?, finished_at = ? WHERE id = ?",
        )
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        append_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_event_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_at: i64,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "UPDATE idp_events SET state = 'failed', attempts = attempts + 1, last_error = ?, \
             next_attempt_at = ?, finished_at = NULL WHERE id = ?",
        )
        .bind(error)
        .bind(next_attempt_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        append_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_event_dead(
        &self,
        id: i64,
        error: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "UPDATE idp_events SET state = 'dead', attempts = attempts + 1, last_error = ?, \
             finished_at = ? WHERE id = ?",
        )
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        append_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn outbox(&self, _now: i64) -> Result<(i64, Option<i64>), StoreError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*), MIN(COALESCE(queued_at, received_at)) FROM idp_events \
             WHERE state IN ('pending', 'failed')",
        )
        .fetch_one(self.pool())
        .await?)
    }

    async fn status_watermark(&self, subject: &str) -> Result<Option<StatusWatermark>, StoreError> {
        Ok(
            sqlx::query_as(
                "SELECT occurred_at, event_id FROM idp_subject_status WHERE subject = ?",
            )
            .bind(subject)
            .fetch_optional(self.pool())
            .await?,
        )
    }

    async fn retry_event(&self, id: i64, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE idp_events SET state = 'pending', next_attempt_at = ?, queued_at = ?, \
             finished_at = NULL WHERE id = ? AND state != 'applied'",
        )
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn retry_dead_events(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE idp_events SET state = 'pending', next_attempt_at = ?, queued_at = ?, \
             finished_at = NULL WHERE state = 'dead'",
        )
        .bind(now)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    async fn replay_events_since(&self, since: i64, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE idp_events SET state = 'pending', next_attempt_at = ?, queued_at = ?, \
             finished_at = NULL WHERE state = 'applied' AND received_at >= ?",
        )
        .bind(now)
        .bind(now)
        .bind(since)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}
