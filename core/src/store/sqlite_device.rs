//! Device authorization grants on SQLite: the `device_authorizations` table (migration 0016).
//! Every change of status is one conditional statement, so that two browsers entering the same
//! code, or two polls racing, cannot both win.

use sqlx::Row;

use super::sqlite::{pending_from_json, pending_to_json, SqliteStore};
use super::{
    DeviceAuthorization, DevicePoll, DeviceStatus, PendingAuthorization, StoreError, TokenHash,
};

const COLUMNS: &str = "device_code_hash, user_code_hash, pending_id, client_id, status, \
    interval_seconds, last_poll_at, created_at, expires_at";

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<DeviceAuthorization, StoreError> {
    let hash = |column: &str| -> Result<TokenHash, StoreError> {
        TokenHash::from_hex(row.try_get::<&str, _>(column)?)
            .ok_or_else(|| StoreError::Corrupt(format!("device authorization {column}")))
    };
    let status: &str = row.try_get("status")?;
    Ok(DeviceAuthorization {
        device_code: hash("device_code_hash")?,
        user_code: hash("user_code_hash")?,
        pending_id: row.try_get("pending_id")?,
        client_id: row.try_get("client_id")?,
        status: DeviceStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("device status {status}")))?,
        interval: row.try_get("interval_seconds")?,
        last_poll_at: row.try_get("last_poll_at")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

impl SqliteStore {
    pub(super) async fn insert_device_authorization(
        &self,
        grant: &DeviceAuthorization,
        pending: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("INSERT INTO pending_authorizations (id, upstream_state, data, expires_at) VALUES (?, ?, ?, ?)")
            .bind(&pending.id)
            .bind(&pending.upstream_state)
            .bind(pending_to_json(pending)?)
            .bind(pending.expires_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO device_authorizations ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(grant.device_code.to_hex())
        .bind(grant.user_code.to_hex())
        .bind(&grant.pending_id)
        .bind(&grant.client_id)
        .bind(grant.status.as_str())
        .bind(grant.interval)
        .bind(grant.last_poll_at)
        .bind(grant.created_at)
        .bind(grant.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn select_device_by_user_code(
        &self,
        user_code: TokenHash,
    ) -> Result<Option<DeviceAuthorization>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM device_authorizations WHERE user_code_hash = ?"
        ))
        .bind(user_code.to_hex())
        .fetch_optional(self.pool())
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
    }

    pub(super) async fn update_device_status(
        &self,
        pending_id: &str,
        from: &[DeviceStatus],
        to: DeviceStatus,
    ) -> Result<bool, StoreError> {
        let placeholders = vec!["?"; from.len()].join(", ");
        let sql = format!(
            "UPDATE device_authorizations SET status = ? WHERE pending_id = ? AND status IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql).bind(to.as_str()).bind(pending_id);
        for status in from {
            query = query.bind(status.as_str());
        }
        Ok(query.execute(self.pool()).await?.rows_affected() == 1)
    }

    pub(super) async fn count_device_poll(
        &self,
        device_code: TokenHash,
        now: i64,
        slow_down_step: i64,
    ) -> Result<DevicePoll, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let counted = sqlx::query(&format!(
            "UPDATE device_authorizations SET last_poll_at = ? WHERE device_code_hash = ? \
             AND (last_poll_at IS NULL OR last_poll_at + interval_seconds <= ?) RETURNING {COLUMNS}"
        ))
        .bind(now)
        .bind(device_code.to_hex())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match counted {
            Some(row) => DevicePoll::Polled(from_row(&row)?),
            None => {
                // Too early, or unknown. A poll that is too early also counts as the last poll,
                // so a client that keeps hammering keeps being told to slow down.
                let slowed = sqlx::query(
                    "UPDATE device_authorizations SET interval_seconds = interval_seconds + ?, \
                     last_poll_at = ? WHERE device_code_hash = ?",
                )
                .bind(slow_down_step)
                .bind(now)
                .bind(device_code.to_hex())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if slowed == 1 {
                    DevicePoll::SlowDown
                } else {
                    DevicePoll::Unknown
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub(super) async fn take_approved_device(
        &self,
        device_code: TokenHash,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let pending_id: Option<String> = sqlx::query_scalar(
            "UPDATE device_authorizations SET status = 'redeemed' \
             WHERE device_code_hash = ? AND status = 'approved' RETURNING pending_id",
        )
        .bind(device_code.to_hex())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(pending_id) = pending_id else {
            tx.commit().await?;
            return Ok(None);
        };
        let data: Option<String> =
            sqlx::query_scalar("SELECT data FROM pending_authorizations WHERE id = ?")
                .bind(&pending_id)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM pending_authorizations WHERE id = ?")
            .bind(&pending_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        data.as_deref().map(pending_from_json).transpose()
    }

    /// Expired grants go with their pending authorizations (pruned by `prune`).
    pub(super) async fn prune_devices(&self, now: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM device_authorizations WHERE expires_at < ?")
                .bind(now)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}
