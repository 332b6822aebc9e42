//! The embedded SQLite store (WAL mode, migrations at start).

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or `sqlite::memory:`)
    /// and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable across application crashes; only an OS crash can lose
            // the last transactions.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let in_memory = url.contains(":memory:");
        let pool = SqlitePoolOptions::new()
            // One connection keeps an in-memory database alive and shared.
            .max_connections(if in_memory { 1 } else { 8 })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let migrator = sqlx::migrate!("./migrations/sqlite");
        adopt_reworded_migrations(&pool, &migrator).await?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
        Ok(Self { pool })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A private in-memory database, for tests.
    pub async fn in_memory() -> Result<Self, StoreError> {
        Self::open("sqlite::memory:").await
    }
}

/// Migrations whose comments were reworded after they shipped (they pointed at a document
/// outside the repository), with the checksum (SHA-384 of the file) they were applied with.
/// Their SQL is unchanged.
const REWORDED_MIGRATIONS: &[(i64, &str)] = &[
    (3, "2a7d45b9f509fad4f4e2ec373ec6166444500702c8b62a01848d12825124cc071766e5bc70289a5588c4aba970e4ba57"),
    (4, "93841be608c0474cb9be49761afc743e0827fa665f97e6b2aa12ba0155d14efc70695964e2062c6584c077145f9edfeb"),
    (5, "792bd7e5abcb2579f6d444739aa98cc51acde4dd17f566c8840fa04d442310d812f65bc4e716c4b502bba2a2b9424898"),
];

/// A database that applied a reworded migration records its old checksum, and sqlx refuses a
/// migration whose file changed since. For exactly those versions and old checksums, the
/// record takes the new checksum; any other change is still refused.
async fn adopt_reworded_migrations(
    pool: &SqlitePool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let tracked: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    if tracked.is_none() {
        return Ok(());
    }
    for (version, old) in REWORDED_MIGRATIONS {
        let Some(migration) = migrator.iter().find(|m| m.version == *version) else {
            continue;
        };
        sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = ? WHERE version = ? AND lower(hex(checksum)) = ?",
        )
        .bind(migration.checksum.as_ref())
        .bind(version)
        .bind(old)
        .execute(pool)
        .await?;
    }
    Ok(())
}

fn corrupt(what: &str) -> impl FnOnce(crate::ids::IdError) -> StoreError + '_ {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

fn identity_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Identity, StoreError> {
    Ok(Identity {
        provider: row.try_get("provider")?,
        subject: row.try_get("subject")?,
        localpart: Localpart::parse(row.try_get::<&str, _>("localpart")?)
            .map_err(corrupt("localpart"))?,
        created_at: row.try_get("created_at")?,
        deleted_at: row.try_get("deleted_at")?,
    })
}

fn session_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId::from_stored(row.try_get::<String, _>("id")?),
        provider: row.try_get("provider")?,
        subject: row.try_get("subject")?,
        localpart: Localpart::parse(row.try_get::<&str, _>("localpart")?)
            .map_err(corrupt("localpart"))?,
        device_id: DeviceId::parse(row.try_get::<&str, _>("device_id")?)
            .map_err(corrupt("device_id"))?,
        client_id: row.try_get("client_id")?,
        idp_sid: row.try_get("idp_sid")?,
        scope: row.try_get("scope")?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        state: if row.try_get::<i64, _>("active")? != 0 {
            SessionState::Active
        } else {
            SessionState::Ended
        },
        sealed_refresh_token: row.try_get("sealed_refresh_token")?,
        sealed_access_token: row.try_get("sealed_access_token")?,
        created_at: row.try_get("created_at")?,
        ended_at: row.try_get("ended_at")?,
        end_reason: row.try_get("end_reason")?,
    })
}

pub(super) fn pending_from_json(data: &str) -> Result<PendingAuthorization, StoreError> {
    serde_json::from_str(data)
        .map_err(|e| StoreError::Corrupt(format!("pending authorization: {e}")))
}

pub(super) fn pending_to_json(p: &PendingAuthorization) -> Result<String, StoreError> {
    serde_json::to_string(p).map_err(|e| StoreError::Corrupt(e.to_string()))
}

async fn insert_tokens(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    tokens: &[TokenRecord],
) -> Result<(), StoreError> {
    for t in tokens {
        sqlx::query("INSERT INTO tokens (hash, session_id, kind, expires_at, issued_at, rotated_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(t.hash.to_hex())
            .bind(&t.session_id)
            .bind(t.kind.as_str())
            .bind(t.expires_at)
            .bind(t.issued_at)
            .bind(t.rotated_at)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A token with its session; `token_from_row` reads it.
const TOKEN_SELECT: &str = "SELECT t.hash AS t_hash, t.kind, t.expires_at AS t_expires_at, t.issued_at AS t_issued_at, \
     t.rotated_at AS t_rotated_at, s.id, s.provider, s.subject, s.localpart, s.device_id, s.client_id, s.idp_sid, \
     s.scope, s.admin, s.active, s.sealed_refresh_token, s.sealed_access_token, s.created_at, s.ended_at, \
     s.end_reason FROM tokens t JOIN sessions s ON s.id = t.session_id";

fn token_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<(TokenRecord, Session), StoreError> {
    let session = session_from_row(row)?;
    let kind = match row.try_get::<&str, _>("kind")? {
        "access" => TokenKind::Access,
        "refresh" => TokenKind::Refresh,
        other => return Err(StoreError::Corrupt(format!("token kind {other}"))),
    };
    let hash = TokenHash::from_hex(row.try_get::<&str, _>("t_hash")?)
        .ok_or_else(|| StoreError::Corrupt("token hash".into()))?;
    let token = TokenRecord {
        hash,
        session_id: session.id.to_string(),
        kind,
        expires_at: row.try_get("t_expires_at")?,
        issued_at: row.try_get("t_issued_at")?,
        rotated_at: row.try_get("t_rotated_at")?,
    };
    Ok((token, session))
}

const SESSION_COLUMNS: &str =
    "s.id, s.provider, s.subject, s.localpart, s.device_id, s.client_id, s.idp_sid, s.scope, \
     s.admin, s.active, s.sealed_refresh_token, s.sealed_access_token, s.created_at, s.ended_at, \
     s.end_reason";

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn add_client(&self, client: &RegisteredClient) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO clients (client_id, metadata, created_at) VALUES (?, ?, ?)")
            .bind(&client.client_id)
            .bind(
                serde_json::to_string(&client.metadata)
                    .map_err(|e| StoreError::Corrupt(format!("client metadata: {e}")))?,
            )
            .bind(client.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn client(&self, client_id: &str) -> Result<Option<RegisteredClient>, StoreError> {
        let row =
            sqlx::query("SELECT client_id, metadata, created_at FROM clients WHERE client_id = ?")
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(RegisteredClient {
                client_id: row.try_get("client_id")?,
                metadata: serde_json::from_str(row.try_get::<&str, _>("metadata")?)
                    .map_err(|e| StoreError::Corrupt(format!("client metadata: {e}")))?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn add_pending(&self, p: &PendingAuthorization) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO pending_authorizations (id, upstream_state, data, expires_at) VALUES (?, ?, ?, ?)")
            .bind(&p.id)
            .bind(&p.upstream_state)
            .bind(pending_to_json(p)?)
            .bind(p.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn pending(&self, id: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let data: Option<String> =
            sqlx::query_scalar("SELECT data FROM pending_authorizations WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        data.as_deref().map(pending_from_json).transpose()
    }

    async fn pending_by_upstream_state(
        &self,
        state: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let data: Option<String> =
            sqlx::query_scalar("SELECT data FROM pending_authorizations WHERE upstream_state = ?")
                .bind(state)
                .fetch_optional(&self.pool)
                .await?;
        data.as_deref().map(pending_from_json).transpose()
    }

    async fn update_pending(&self, p: &PendingAuthorization) -> Result<(), StoreError> {
        sqlx::query("UPDATE pending_authorizations SET data = ?, expires_at = ? WHERE id = ?")
            .bind(pending_to_json(p)?)
            .bind(p.expires_at)
            .bind(&p.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_pending(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pending_authorizations WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_code(
        &self,
        code: TokenHash,
        pending_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, pending_id, expires_at) VALUES (?, ?, ?)",
        )
        .bind(code.to_hex())
        .bind(pending_id)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn peek_code(
        &self,
        code: TokenHash,
        now: i64,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let data: Option<String> = sqlx::query_scalar(
            "SELECT p.data FROM authorization_codes c JOIN pending_authorizations p ON p.id = c.pending_id \
             WHERE c.code_hash = ? AND c.used_at IS NULL AND c.expires_at >= ?",
        )
        .bind(code.to_hex())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        data.as_deref().map(pending_from_json).transpose()
    }

    async fn redeem_code(&self, code: TokenHash, now: i64) -> Result<CodeRedemption, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Marking it used in the same statement that checks it makes redemption single-use even
        // under concurrent requests.
        let claimed = sqlx::query(
            "UPDATE authorization_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL AND expires_at >= ? RETURNING pending_id",
        )
        .bind(now)
        .bind(code.to_hex())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match claimed {
            Some(row) => {
                let pending_id: String = row.try_get("pending_id")?;
                let data: Option<String> =
                    sqlx::query_scalar("SELECT data FROM pending_authorizations WHERE id = ?")
                        .bind(&pending_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                match data {
                    Some(data) => {
                        sqlx::query("DELETE FROM pending_authorizations WHERE id = ?")
                            .bind(&pending_id)
                            .execute(&mut *tx)
                            .await?;
                        CodeRedemption::Fresh(RedeemedAuthorization(Box::new(pending_from_json(
                            &data,
                        )?)))
                    }
                    None => CodeRedemption::Unknown,
                }
            }
            None => {
                let used: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
                    "SELECT used_at, session_id FROM authorization_codes WHERE code_hash = ?",
                )
                .bind(code.to_hex())
                .fetch_optional(&mut *tx)
                .await?;
                match used {
                    Some((Some(_), session_id)) => CodeRedemption::Replayed { session_id },
                    _ => CodeRedemption::Unknown,
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn link_code_session(&self, code: TokenHash, session_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE authorization_codes SET session_id = ? WHERE code_hash = ?")
            .bind(session_id)
            .bind(code.to_hex())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn identity_by_subject(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<Identity>, StoreError> {
        let row = sqlx::query("SELECT * FROM identities WHERE provider = ? AND subject = ?")
            .bind(provider)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(identity_from_row).transpose()
    }

    async fn identity_by_localpart(
        &self,
        localpart: &Localpart,
    ) -> Result<Option<Identity>, StoreError> {
        let row = sqlx::query("SELECT * FROM identities WHERE localpart = ?")
            .bind(localpart.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(identity_from_row).transpose()
    }

    async fn add_identity(&self, i: &Identity) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO identities (provider, subject, localpart, created_at, deleted_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&i.provider)
            .bind(&i.subject)
            .bind(i.localpart.as_str())
            .bind(i.created_at)
            .bind(i.deleted_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn tombstone_identity(
        &self,
        provider: &str,
        subject: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE identities SET deleted_at = ? WHERE provider = ? AND subject = ? AND deleted_at IS NULL")
            .bind(now)
            .bind(provider)
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn consent(
        &self,
        localpart: &Localpart,
        client_id: &str,
    ) -> Result<Option<crate::consent::Remembered>, StoreError> {
        let row = sqlx::query(
            "SELECT scopes, granted_at FROM consents WHERE localpart = ? AND client_id = ?",
        )
        .bind(localpart.as_str())
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let scopes: String = row.try_get("scopes")?;
        Ok(Some(crate::consent::Remembered {
            scopes: crate::consent::parse_stored(&scopes),
            granted_at: row.try_get("granted_at")?,
        }))
    }

    async fn add_consent(
        &self,
        localpart: &Localpart,
        client_id: &str,
        scopes: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO consents (localpart, client_id, scopes, granted_at) VALUES (?, ?, ?, ?)",
        )
        .bind(localpart.as_str())
        .bind(client_id)
        .bind(scopes)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn add_session(&self, s: &Session, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, provider, subject, localpart, device_id, client_id, idp_sid, scope, admin, active, \
             sealed_refresh_token, sealed_access_token, created_at, ended_at, end_reason) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id.as_str())
        .bind(&s.provider)
        .bind(&s.subject)
        .bind(s.localpart.as_str())
        .bind(s.device_id.as_str())
        .bind(&s.client_id)
        .bind(&s.idp_sid)
        .bind(&s.scope)
        .bind(s.admin as i64)
        .bind((s.state == SessionState::Active) as i64)
        .bind(&s.sealed_refresh_token)
        .bind(&s.sealed_access_token)
        .bind(s.created_at)
        .bind(s.ended_at)
        .bind(&s.end_reason)
        .execute(&mut *tx)
        .await?;
        insert_tokens(&mut tx, tokens).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn token(&self, hash: TokenHash) -> Result<Option<(TokenRecord, Session)>, StoreError> {
        let row = sqlx::query(&format!("{TOKEN_SELECT} WHERE t.hash = ?"))
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn active_access_tokens(
        &self,
        now: i64,
    ) -> Result<Vec<(TokenRecord, Session)>, StoreError> {
        let rows = sqlx::query(&format!(
            "{TOKEN_SELECT} WHERE t.kind = 'access' AND t.rotated_at IS NULL AND s.active = 1 \
             AND (t.expires_at IS NULL OR t.expires_at > ?)"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn rotate_tokens(&self, r: &Rotation<'_>) -> Result<Vec<TokenHash>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A session that ended while the IdP was refreshing (a logout, an event) gets no new
        // tokens: checked inside the transaction that would add them.
        let active: Option<i64> = sqlx::query_scalar("SELECT active FROM sessions WHERE id = ?")
            .bind(r.session_id)
            .fetch_optional(&mut *tx)
            .await?;
        if active != Some(1) {
            return Err(StoreError::Conflict);
        }
        let rotated = sqlx::query(
            "UPDATE tokens SET rotated_at = ? WHERE hash = ? AND session_id = ? AND kind = 'refresh' AND rotated_at IS NULL",
        )
        .bind(r.now)
        .bind(r.old_refresh.to_hex())
        .bind(r.session_id)
        .execute(&mut *tx)
        .await?;
        if rotated.rows_affected() != 1 {
            return Err(StoreError::Conflict);
        }
        // The old access tokens die with the refresh: the client got a new one.
        let evicted: Vec<String> = sqlx::query_scalar(
            "UPDATE tokens SET rotated_at = ? WHERE session_id = ? AND kind = 'access' AND rotated_at IS NULL RETURNING hash",
        )
        .bind(r.now)
        .bind(r.session_id)
        .fetch_all(&mut *tx)
        .await?;
        insert_tokens(&mut tx, r.new_tokens).await?;
        sqlx::query(
            "UPDATE sessions SET sealed_access_token = ?, \
             sealed_refresh_token = COALESCE(?, sealed_refresh_token) WHERE id = ?",
        )
        .bind(r.sealed_access_token)
        .bind(r.sealed_refresh_token)
        .bind(r.session_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(evicted
            .iter()
            .filter_map(|h| TokenHash::from_hex(h))
            .collect())
    }

    async fn end_session(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        audit: &crate::audit::AuditEntry,
    ) -> Result<Option<Vec<TokenHash>>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let ended = sqlx::query(
            "UPDATE sessions SET active = 0, ended_at = ?, end_reason = ? WHERE id = ? AND active = 1",
        )
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if ended.rows_affected() == 0 {
            tx.commit().await?;
            return Ok(None);
        }
        let hashes: Vec<String> =
            sqlx::query_scalar("SELECT hash FROM tokens WHERE session_id = ?")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        super::sqlite_audit::append_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(Some(
            hashes
                .iter()
                .filter_map(|h| TokenHash::from_hex(h))
                .collect(),
        ))
    }

    async fn adopt_upstream_id(&self, id: &str, legacy_names: &[&str]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut moved = 0;
        for name in legacy_names.iter().filter(|n| **n != id) {
            moved += sqlx::query("UPDATE identities SET provider = ? WHERE provider = ?")
                .bind(id)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("UPDATE sessions SET provider = ? WHERE provider = ?")
                .bind(id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn sessions_to_revoke(
        &self,
        now: i64,
        ended_before: i64,
        limit: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.active = 0 \
             AND (s.sealed_refresh_token IS NOT NULL OR s.sealed_access_token IS NOT NULL) \
             AND (s.revoke_next_at <= ?1 OR (s.revoke_next_at IS NULL AND s.ended_at <= ?2)) \
             ORDER BY s.ended_at, s.id LIMIT ?3"
        ))
        .bind(now)
        .bind(ended_before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn finish_revocation(
        &self,
        id: &str,
        now: i64,
        audit: &crate::audit::AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE sessions SET sealed_refresh_token = NULL, sealed_access_token = NULL, \
             revoke_next_at = NULL WHERE id = ? AND active = 0 \
             AND (sealed_refresh_token IS NOT NULL OR sealed_access_token IS NOT NULL)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // A concurrent attempt finished first: its record stands alone.
        if done.rows_affected() > 0 {
            super::sqlite_audit::append_in(&mut tx, audit, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn retry_revocation(
        &self,
        id: &str,
        now: i64,
        initial: i64,
        max: i64,
    ) -> Result<i64, StoreError> {
        let attempts: Option<i64> = sqlx::query_scalar(
            "UPDATE sessions SET revoke_attempts = revoke_attempts + 1, \
             revoke_next_at = ?1 + MIN(?3, ?2 * (1 << MIN(revoke_attempts, 20))) \
             WHERE id = ?4 RETURNING revoke_attempts",
        )
        .bind(now)
        .bind(initial)
        .bind(max)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(attempts.unwrap_or(0))
    }

    async fn active_devices(&self, localpart: &Localpart) -> Result<Vec<DeviceId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT device_id FROM sessions WHERE localpart = ? AND active = 1",
        )
        .bind(localpart.as_str())
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|d| DeviceId::parse(d).map_err(corrupt("device_id")))
            .collect()
    }

    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn init_setting(&self, name: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        self.setting(name)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("setting {name} vanished")))
    }

    async fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pending_count(&self, now: i64) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pending_authorizations WHERE expires_at >= ?")
                .bind(now)
                .fetch_one(&self.pool)
                .await?;
        Ok(n.max(0) as u64)
    }

    async fn prune_unused_clients(&self, created_before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM clients WHERE created_at < ? \
             AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.client_id = clients.client_id)",
        )
        .bind(created_before)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn clients(&self, limit: i64) -> Result<Vec<(RegisteredClient, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.client_id, c.metadata, c.created_at, \
             (SELECT COUNT(*) FROM sessions s WHERE s.client_id = c.client_id AND s.active = 1) AS active \
             FROM clients c ORDER BY c.created_at DESC, c.client_id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    RegisteredClient {
                        client_id: row.try_get("client_id")?,
                        metadata: serde_json::from_str(row.try_get::<&str, _>("metadata")?)
                            .map_err(|e| StoreError::Corrupt(format!("client metadata: {e}")))?,
                        created_at: row.try_get("created_at")?,
                    },
                    row.try_get::<i64, _>("active")?.max(0) as u64,
                ))
            })
            .collect()
    }

    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("DELETE FROM clients WHERE client_id = ?")
            .bind(client_id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    async fn expired_logins(&self, now: i64, limit: i64) -> Result<Vec<UpstreamLogin>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT data FROM pending_authorizations WHERE expires_at < ? ORDER BY expires_at LIMIT ?",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|data| pending_from_json(data).ok())
            .filter_map(|p| p.login)
            .collect())
    }

    async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM pending_authorizations WHERE expires_at < ?")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        // Used codes are kept a day so that a late replay is still recognised as one.
        let b = sqlx::query("DELETE FROM authorization_codes WHERE expires_at < ?")
            .bind(now - 86_400)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let c = self.prune_devices(now).await?;
        Ok(a + b + c)
    }

    async fn add_device_authorization(
        &self,
        grant: &DeviceAuthorization,
        pending: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        self.insert_device_authorization(grant, pending).await
    }

    async fn device_authorization_by_user_code(
        &self,
        user_code: TokenHash,
    ) -> Result<Option<DeviceAuthorization>, StoreError> {
        self.select_device_by_user_code(user_code).await
    }

    async fn set_device_status(
        &self,
        pending_id: &str,
        from: &[DeviceStatus],
        to: DeviceStatus,
    ) -> Result<bool, StoreError> {
        self.update_device_status(pending_id, from, to).await
    }

    async fn poll_device(
        &self,
        device_code: TokenHash,
        now: i64,
        slow_down_step: i64,
    ) -> Result<DevicePoll, StoreError> {
        self.count_device_poll(device_code, now, slow_down_step)
            .await
    }

    async fn repoint_device(&self, old_pending: &str, new_pending: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE device_authorizations SET pending_id = ? WHERE pending_id = ?")
            .bind(new_pending)
            .bind(old_pending)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn redeem_device(
        &self,
        device_code: TokenHash,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        self.take_approved_device(device_code).await
    }

    // --- reconciliation ---

    async fn sessions_to_reconcile(
        &self,
        limit: u32,
        now: i64,
    ) -> Result<Vec<Session>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // NULL (never checked) sorts first in SQLite.
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.active = 1 \
             ORDER BY s.last_checked_at, s.created_at, s.id LIMIT ?"
        ))
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        let sessions = rows
            .iter()
            .map(session_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for session in &sessions {
            sqlx::query("UPDATE sessions SET last_checked_at = ? WHERE id = ?")
                .bind(now)
                .bind(session.id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(sessions)
    }

    // --- receivers ---

    async fn set_identity_email(
        &self,
        provider: &str,
        subject: &str,
        email: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE identities SET email = ? WHERE provider = ? AND subject = ?")
            .bind(email.map(str::to_lowercase))
            .bind(provider)
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn identity_by_email(
        &self,
        provider: &str,
        email: &str,
    ) -> Result<Option<Identity>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM identities WHERE provider = ? AND email = ? AND deleted_at IS NULL LIMIT 2",
        )
        .bind(provider)
        .bind(email.to_lowercase())
        .fetch_all(&self.pool)
        .await?;
        match rows.as_slice() {
            [one] => identity_from_row(one).map(Some),
            _ => Ok(None),
        }
    }

    // --- event pipeline ---
    async fn sessions_by_idp_sid(
        &self,
        provider: &str,
        sid: &str,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.provider = ? AND s.idp_sid = ? ORDER BY s.created_at"
        ))
        .bind(provider)
        .bind(sid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn active_sessions_of_client(&self, client_id: &str) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.client_id = ? AND s.active = 1 ORDER BY s.created_at"
        ))
        .bind(client_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn active_sessions_of_subject(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.provider = ? AND s.subject = ? AND s.active = 1 ORDER BY s.created_at"
        ))
        .bind(provider)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    async fn latest_device_session(
        &self,
        provider: &str,
        subject: &str,
        client_id: &str,
        device_id: &DeviceId,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.provider = ? AND s.subject = ? \
             AND s.client_id = ? AND s.device_id = ? ORDER BY s.active DESC, s.created_at DESC LIMIT 1"
        ))
        .bind(provider)
        .bind(subject)
        .bind(client_id)
        .bind(device_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn subject_token_rules(&self, provider: &str) -> Result<Vec<SubjectTokens>, StoreError> {
        let rows: Vec<(String, i64, bool)> = sqlx::query_as(
            "SELECT subject, tokens_not_before, disabled FROM subject_tokens WHERE provider = ?",
        )
        .bind(provider)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(subject, not_before, disabled)| SubjectTokens {
                subject,
                not_before,
                disabled,
            })
            .collect())
    }

    async fn restrict_subject_tokens(
        &self,
        provider: &str,
        subject: &str,
        not_before: Option<i64>,
        disabled: Option<bool>,
        now: i64,
    ) -> Result<SubjectTokens, StoreError> {
        let (not_before, disabled): (i64, bool) = sqlx::query_as(
            "INSERT INTO subject_tokens (provider, subject, tokens_not_before, disabled, updated_at) \
             VALUES (?1, ?2, COALESCE(?3, 0), COALESCE(?4, 0), ?5) \
             ON CONFLICT (provider, subject) DO UPDATE SET \
               tokens_not_before = MAX(tokens_not_before, COALESCE(?3, 0)), \
               disabled = COALESCE(?4, disabled), updated_at = ?5 \
             RETURNING tokens_not_before, disabled",
        )
        .bind(provider)
        .bind(subject)
        .bind(not_before)
        .bind(disabled)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(SubjectTokens {
            subject: subject.to_owned(),
            not_before,
            disabled,
        })
    }
}

#[cfg(test)]
mod upgrade_tests {
    use std::borrow::Cow;

    use super::*;
    use crate::events::{EventState, EventStore, IdpEvent};

    #[tokio::test]
    async fn a_database_migrated_before_the_comments_were_reworded_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        drop(SqliteStore::open(&url).await.unwrap());
        // What such a database records: the checksums of the files as they were.
        let pool = SqlitePool::connect(&url).await.unwrap();
        for (version, old) in REWORDED_MIGRATIONS {
            sqlx::query(&format!(
                "UPDATE _sqlx_migrations SET checksum = X'{old}' WHERE version = ?"
            ))
            .bind(version)
            .execute(&pool)
            .await
            .unwrap();
        }
        // Any other change to an applied migration is still refused.
        sqlx::query("UPDATE _sqlx_migrations SET checksum = X'00' WHERE version = 6")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let refused = SqliteStore::open(&url)
            .await
            .err()
            .expect("a changed migration");
        assert!(refused.to_string().contains("migration"), "{refused}");
        let pool = SqlitePool::connect(&url).await.unwrap();
        let migrator = sqlx::migrate!("./migrations/sqlite");
        let six = migrator.iter().find(|m| m.version == 6).unwrap();
        sqlx::query("UPDATE _sqlx_migrations SET checksum = ? WHERE version = 6")
            .bind(six.checksum.as_ref())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        SqliteStore::open(&url)
            .await
            .expect("the reworded ones are adopted");
    }

    #[tokio::test]
    async fn sessions_from_before_own_tokens_are_ended_through_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        let all = sqlx::migrate!("./migrations/sqlite");
        let before = sqlx::migrate::Migrator {
            migrations: Cow::Owned(
                all.migrations
                    .iter()
                    .filter(|m| m.version < 8)
                    .cloned()
                    .collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        for (id, active) in [("old-active", 1), ("old-ended", 0)] {
            sqlx::query(
                "INSERT INTO sessions (id, provider, subject, localpart, device_id, client_id, \
                 scope, admin, active, created_at) VALUES (?, 'generic', 's', 'alice', 'DEVICEOLD1', \
                 'c', 'openid', 0, ?, 1)",
            )
            .bind(id)
            .bind(active)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = SqliteStore::open(&url).await.unwrap();
        let events = store.list_events(None, 10).await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].state, EventState::Pending);
        assert_eq!(events[0].source, "token_model_upgrade");
        assert_eq!(
            events[0].event,
            IdpEvent::MxidpSessionEnded {
                session_id: "old-active".into()
            }
        );
    }
}
