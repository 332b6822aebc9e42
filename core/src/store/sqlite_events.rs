//! [`EventStore`] on SQLite.

use async_trait::async_trait;

use super::sqlite::SqliteStore;
use super::StoreError;
use crate::events::{EventStore, IdpEvent};

#[async_trait]
impl EventStore for SqliteStore {
    async fn insert_event(
        &self,
        source: &str,
        dedupe_key: &str,
        occurred_at: i64,
        event: &IdpEvent,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let json = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO idp_events (source, dedupe_key, occurred_at, received_at, kind, subject, event, state, next_attempt_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT (source, dedupe_key) DO NOTHING RETURNING id",
        )
        .bind(source)
        .bind(dedupe_key)
        .bind(occurred_at)
        .bind(now)
        .bind(event.kind())
        .bind(event.subject())
        .bind(json)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(id)
    }
}
