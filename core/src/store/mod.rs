//! Persistence behind one trait. SQLite is the embedded default; PostgreSQL follows.
//! Tokens are stored only as SHA-256 hashes; the upstream refresh token, which mxidp needs to
//! end a session at the IdP, is stored sealed (see [`crate::crypto`]).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, Localpart, SessionId, TokenHash};

pub mod sqlite;
mod sqlite_audit;
mod sqlite_device;
mod sqlite_events;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("a record with this key exists already")]
    Conflict,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// A Matrix client registered through MSC2966 dynamic registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisteredClient {
    pub client_id: String,
    /// The validated registration metadata, typed: parsed once, when the client registered.
    pub metadata: crate::registration::ClientMetadata,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    Query,
    Fragment,
}

/// Where a sign-in stands between `/authorize` and the client's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationStage {
    /// The browser was sent to the IdP.
    AtIdp,
    /// The IdP signed the user in; waiting for consent.
    AwaitingConsent,
    /// The client has its code; waiting for the client to redeem it.
    CodeIssued,
}

/// Why the browser was sent to the IdP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A Matrix client's authorization request.
    #[default]
    Login,
    /// The user re-authenticates before a cross-signing reset (MSC4191
    /// `org.matrix.cross_signing_reset`); the client fields are unused.
    CrossSigningReset,
    /// A device authorization grant (RFC 8628): the client waits on another device, so there is
    /// no redirect URI, state or PKCE; the client polls the token endpoint with its device code.
    DeviceGrant,
    /// The compatibility layer's single sign-on (`/login/sso/redirect`): a legacy client with
    /// no registration; consent sends the browser to its `redirectUrl` with a login token.
    CompatSso,
}

/// A sign-in in progress. Everything the callback and the consent page need, bound to the
/// browser by the hash of a cookie.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub id: String,
    #[serde(default)]
    pub purpose: Purpose,
    pub browser_binding: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub response_mode: ResponseMode,
    pub client_state: Option<String>,
    pub code_challenge: String,
    pub scope: String,
    pub device_id: DeviceId,
    /// Requested by the client with `prompt=create`.
    pub signup: bool,
    /// The state, nonce and PKCE verifier mxidp sent to the IdP.
    pub upstream_state: String,
    pub upstream_nonce: String,
    pub upstream_verifier: String,
    /// Token the consent form must echo (with the browser cookie) to count.
    pub csrf: String,
    /// A device grant's user code, kept once a browser has entered (and so spent) it: the
    /// consent page shows it, so the user can check it is the one on their device.
    #[serde(default)]
    pub user_code: Option<String>,
    pub stage: AuthorizationStage,
    /// Filled once the IdP signed the user in.
    pub login: Option<UpstreamLogin>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for PendingAuthorization {
    // The PKCE verifier, the CSRF token and the sealed tokens stay out of any log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("id", &self.id)
            .field("purpose", &self.purpose)
            .field("client_id", &self.client_id)
            .field("device_id", &self.device_id)
            .field("stage", &self.stage)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the IdP's callback established, kept until the client redeems its code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamLogin {
    pub subject: String,
    pub localpart: Localpart,
    pub idp_sid: Option<String>,
    pub admin: bool,
    /// The IdP's tokens, sealed with the store key: kept in the session that `/token` creates.
    pub sealed_tokens: String,
    pub access_expires_in: Option<u64>,
    /// Profile to sync to the homeserver once the user consents.
    pub display_name: Option<String>,
    pub emails: Vec<String>,
}

/// The (provider, subject) → localpart link. Rows are never deleted: a deleted identity keeps
/// its row as a tombstone so that its localpart is never given to another subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
    pub localpart: Localpart,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    Ended,
}

/// One signed-in Matrix device: an mxidp session wrapping the IdP's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub provider: String,
    pub subject: String,
    pub localpart: Localpart,
    pub device_id: DeviceId,
    pub client_id: String,
    pub idp_sid: Option<String>,
    /// The Matrix scope granted, in the client's family.
    pub scope: String,
    pub admin: bool,
    pub state: SessionState,
    /// The IdP's refresh token, sealed: refreshed when the client refreshes, revoked when the
    /// session ends. Kept after the session ended until the IdP revocation is done.
    pub sealed_refresh_token: Option<String>,
    /// The IdP's access token paired with the current Matrix access token, sealed: what
    /// re-validation checks at the IdP. It never leaves mxidp.
    pub sealed_access_token: Option<String>,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
}

/// A token handed to a client, by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub hash: TokenHash,
    pub session_id: String,
    pub kind: TokenKind,
    /// Unix time; `None` when the IdP gave no lifetime (refresh tokens often).
    pub expires_at: Option<i64>,
    pub issued_at: i64,
    /// Set when a refresh rotated it out. Presenting a rotated refresh token again is treated
    /// as theft (MSC2964) and ends the session.
    pub rotated_at: Option<i64>,
}

/// One refresh, as [`Store::rotate_tokens`] records it.
pub struct Rotation<'a> {
    pub session_id: &'a str,
    /// The Matrix refresh token the client presented: rotated out, every time.
    pub old_refresh: TokenHash,
    pub new_tokens: &'a [TokenRecord],
    /// The IdP's new refresh token, sealed; `None` keeps the current one (an IdP that does not
    /// rotate).
    pub sealed_refresh_token: Option<&'a str>,
    /// The IdP's new access token, sealed.
    pub sealed_access_token: &'a str,
    pub now: i64,
}

/// What redeeming an authorization code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeRedemption {
    /// First use: the pending authorization to turn into a session.
    Fresh(RedeemedAuthorization),
    /// The code was used before: the session it created (to be ended).
    Replayed {
        session_id: Option<String>,
    },
    Unknown,
}

/// A redeemed code's pending authorization (boxed separately to keep the enum small).
#[derive(Debug, Clone)]
pub struct RedeemedAuthorization(pub Box<PendingAuthorization>);

impl PartialEq for RedeemedAuthorization {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for RedeemedAuthorization {}

/// Where a device authorization grant stands (RFC 8628).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Nobody entered the user code yet.
    Pending,
    /// A browser entered the code and went on to the IdP: the code is spent for anyone else.
    Claimed,
    /// The user signed in and allowed the client: the next poll gets tokens.
    Approved,
    /// The user (or the IdP, or a policy) refused.
    Denied,
    /// The client got its tokens.
    Redeemed,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Claimed => "claimed",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Redeemed => "redeemed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "claimed" => Self::Claimed,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "redeemed" => Self::Redeemed,
            _ => return None,
        })
    }
}

/// One device authorization grant, by the hashes of its codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    pub device_code: TokenHash,
    pub user_code: TokenHash,
    /// The pending authorization (purpose [`Purpose::DeviceGrant`]) that carries the request.
    pub pending_id: String,
    pub client_id: String,
    pub status: DeviceStatus,
    pub interval: i64,
    pub last_poll_at: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What one poll of the token endpoint found (see [`Store::poll_device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    Unknown,
    /// Polled again before the interval was over: the interval grows (RFC 8628 §3.5).
    SlowDown,
    /// Counted; what the grant is at.
    Polled(DeviceAuthorization),
}

/// All of mxidp's persistence. The event and audit parts are their own traits (and files).
#[async_trait]
pub trait Store: crate::events::EventStore + crate::audit::AuditStore + Send + Sync {
    /// Checks that the database answers (for `/health/ready`).
    async fn ping(&self) -> Result<(), StoreError>;

    async fn add_client(&self, client: &RegisteredClient) -> Result<(), StoreError>;
    async fn client(&self, client_id: &str) -> Result<Option<RegisteredClient>, StoreError>;

    async fn add_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError>;
    async fn pending(&self, id: &str) -> Result<Option<PendingAuthorization>, StoreError>;
    async fn pending_by_upstream_state(
        &self,
        state: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError>;
    async fn update_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError>;
    async fn delete_pending(&self, id: &str) -> Result<(), StoreError>;

    /// Issues a single-use code for a pending authorization that has consent.
    async fn add_code(
        &self,
        code: TokenHash,
        pending_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError>;
    /// The pending authorization of a code that is unused and unexpired, without spending it:
    /// the token endpoint checks the client and PKCE first, so that someone holding a stolen
    /// code without its verifier cannot burn it.
    async fn peek_code(
        &self,
        code: TokenHash,
        now: i64,
    ) -> Result<Option<PendingAuthorization>, StoreError>;
    /// Marks the code used (atomically) and returns what it was for.
    async fn redeem_code(&self, code: TokenHash, now: i64) -> Result<CodeRedemption, StoreError>;
    /// Remembers which session a code created, so a replay can end it.
    async fn link_code_session(&self, code: TokenHash, session_id: &str) -> Result<(), StoreError>;

    async fn identity_by_subject(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<Identity>, StoreError>;
    /// The identity that holds (or held) a localpart, tombstones included.
    async fn identity_by_localpart(
        &self,
        localpart: &Localpart,
    ) -> Result<Option<Identity>, StoreError>;
    /// Fails with [`StoreError::Conflict`] when the subject or the localpart is taken.
    async fn add_identity(&self, identity: &Identity) -> Result<(), StoreError>;
    async fn tombstone_identity(
        &self,
        provider: &str,
        subject: &str,
        now: i64,
    ) -> Result<(), StoreError>;

    /// What the user allowed this client before, if anything.
    async fn consent(
        &self,
        localpart: &Localpart,
        client_id: &str,
    ) -> Result<Option<crate::consent::Remembered>, StoreError>;
    /// Records (replaces) the user's consent to this client: `scopes` space-separated.
    async fn add_consent(
        &self,
        localpart: &Localpart,
        client_id: &str,
        scopes: &str,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Creates the session and its tokens in one transaction.
    async fn add_session(
        &self,
        session: &Session,
        tokens: &[TokenRecord],
    ) -> Result<(), StoreError>;
    async fn session(&self, id: &str) -> Result<Option<Session>, StoreError>;
    /// The token and its session, for introspection, refresh and revocation.
    async fn token(&self, hash: TokenHash) -> Result<Option<(TokenRecord, Session)>, StoreError>;
    /// Every access token that is active now (not rotated, not expired, session active), with
    /// its session: what the introspection cache loads at start.
    async fn active_access_tokens(
        &self,
        now: i64,
    ) -> Result<Vec<(TokenRecord, Session)>, StoreError>;
    /// Refresh: marks the session's access tokens and `old_refresh` rotated, adds the new
    /// tokens and replaces the sealed IdP tokens, in one transaction. Returns the hashes of the
    /// rotated access tokens (to evict from caches). Fails with [`StoreError::Conflict`] when
    /// `old_refresh` was already rotated (a race or a replay) or the session has ended.
    async fn rotate_tokens(&self, rotation: &Rotation<'_>) -> Result<Vec<TokenHash>, StoreError>;
    /// Ends a session, with its `session.ended` audit record in the same transaction; returns
    /// the hashes of its tokens (to evict from caches) when it was active, `None` (and no
    /// record) when it had ended already. The sealed IdP tokens stay: an ended session that
    /// holds them is a revocation at the IdP still to do ([`Store::sessions_to_revoke`]).
    async fn end_session(
        &self,
        id: &str,
        reason: &str,
        now: i64,
        audit: &crate::audit::AuditEntry,
    ) -> Result<Option<Vec<TokenHash>>, StoreError>;
    /// Ended sessions whose IdP tokens are still to be revoked: a retry due at `now`, or no
    /// attempt recorded for a session that ended before `ended_before` (the event that ended it
    /// normally revokes at once; this finds what a crash left). Oldest first.
    async fn sessions_to_revoke(
        &self,
        now: i64,
        ended_before: i64,
        limit: i64,
    ) -> Result<Vec<Session>, StoreError>;
    /// The IdP revocation of an ended session is over (done, or given up): its sealed IdP
    /// tokens are dropped, with the `audit` record, in one transaction.
    async fn finish_revocation(
        &self,
        id: &str,
        now: i64,
        audit: &crate::audit::AuditEntry,
    ) -> Result<(), StoreError>;
    /// The IdP revocation failed for now: one more attempt, the next after `initial` seconds
    /// doubled per earlier attempt, at most `max`; returns the attempts so far.
    async fn retry_revocation(
        &self,
        id: &str,
        now: i64,
        initial: i64,
        max: i64,
    ) -> Result<i64, StoreError>;
    /// Devices of the user's sessions that are still active.
    async fn active_devices(&self, localpart: &Localpart) -> Result<Vec<DeviceId>, StoreError>;

    /// Moves identities and sessions recorded under an adapter's code name (how mxidp keyed
    /// them before `upstream.id`) to the upstream id; returns how many identities moved.
    async fn adopt_upstream_id(&self, id: &str, legacy_names: &[&str]) -> Result<u64, StoreError>;

    /// A setting of mxidp's own, by name.
    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Sets a setting only when it has none yet; returns the value that is stored afterwards.
    async fn init_setting(&self, name: &str, value: &str) -> Result<String, StoreError>;
    /// Sets a setting, replacing its value (an event log's cursor).
    async fn put_setting(&self, name: &str, value: &str) -> Result<(), StoreError>;

    /// Sign-ins in progress (pending authorizations not yet expired).
    async fn pending_count(&self, now: i64) -> Result<u64, StoreError>;
    /// Deletes clients registered before `created_before` that never got a session: anyone
    /// can register, so registrations nobody used do not stay forever.
    async fn prune_unused_clients(&self, created_before: i64) -> Result<u64, StoreError>;
    /// Registered clients, newest first, with their number of active sessions.
    async fn clients(&self, limit: i64) -> Result<Vec<(RegisteredClient, u64)>, StoreError>;
    /// Deletes a client registration; `false` when there was none. Its sessions are not touched.
    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError>;

    /// The IdP sign-ins of pending authorizations that expired before they became a session
    /// (at most `limit`): their IdP tokens are revoked before [`Store::prune`] deletes them.
    async fn expired_logins(&self, now: i64, limit: i64) -> Result<Vec<UpstreamLogin>, StoreError>;

    /// Deletes expired pending authorizations and codes.
    async fn prune(&self, now: i64) -> Result<u64, StoreError>;

    /// Stores a device authorization grant with its pending authorization, in one transaction.
    async fn add_device_authorization(
        &self,
        grant: &DeviceAuthorization,
        pending: &PendingAuthorization,
    ) -> Result<(), StoreError>;
    async fn device_authorization_by_user_code(
        &self,
        user_code: TokenHash,
    ) -> Result<Option<DeviceAuthorization>, StoreError>;
    /// Moves the grant of `pending_id` from `from` to `to` atomically; `false` when it was not
    /// at `from` (another browser claimed the code first, or it was answered already).
    async fn set_device_status(
        &self,
        pending_id: &str,
        from: &[DeviceStatus],
        to: DeviceStatus,
    ) -> Result<bool, StoreError>;
    /// Counts one poll: [`DevicePoll::SlowDown`] (and `interval` grows by `slow_down_step`) when
    /// the previous poll was less than the interval ago, decided in one statement.
    async fn poll_device(
        &self,
        device_code: TokenHash,
        now: i64,
        slow_down_step: i64,
    ) -> Result<DevicePoll, StoreError>;
    /// The user chose another account on the consent page: the sign-in starts over under a new
    /// pending authorization, which the grant now follows.
    async fn repoint_device(&self, old_pending: &str, new_pending: &str) -> Result<(), StoreError>;
    /// Marks an approved grant redeemed and takes its pending authorization (deleted), at most
    /// once.
    async fn redeem_device(
        &self,
        device_code: TokenHash,
    ) -> Result<Option<PendingAuthorization>, StoreError>;

    // --- reconciliation ---

    /// The batch of one reconciliation round: up to `limit` active sessions, never-checked
    /// ones first, then the longest unchecked; each is marked checked at `now`, so successive
    /// rounds walk all sessions in turn.
    async fn sessions_to_reconcile(&self, limit: u32, now: i64)
        -> Result<Vec<Session>, StoreError>;

    // --- receivers ---

    /// Records the verified e-mail address of an identity at sign-in (`None` clears it): the
    /// key that e-mail-format subjects of IdP events are resolved with.
    async fn set_identity_email(
        &self,
        provider: &str,
        subject: &str,
        email: Option<&str>,
    ) -> Result<(), StoreError>;
    /// The live (not tombstoned) identity whose recorded e-mail is `email`, compared without
    /// case. `None` when no identity, or more than one, has it: an ambiguous address must not
    /// pick a user.
    async fn identity_by_email(
        &self,
        provider: &str,
        email: &str,
    ) -> Result<Option<Identity>, StoreError>;

    // --- event pipeline ---
    /// Every session, active or ended, that the IdP knows by this `sid` (a back-channel logout
    /// retried after its sessions ended must still find them to finish the device deletion).
    async fn sessions_by_idp_sid(
        &self,
        provider: &str,
        sid: &str,
    ) -> Result<Vec<Session>, StoreError>;
    /// The client's active sessions.
    async fn active_sessions_of_client(&self, client_id: &str) -> Result<Vec<Session>, StoreError>;
    /// The subject's active sessions.
    async fn active_sessions_of_subject(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Vec<Session>, StoreError>;

    // --- the JWT shim (docs/jwt-shim.md) ---

    /// The newest session of a subject's device for a client, active or ended.
    async fn latest_device_session(
        &self,
        provider: &str,
        subject: &str,
        client_id: &str,
        device_id: &DeviceId,
    ) -> Result<Option<Session>, StoreError>;
    /// Every subject whose IdP-issued tokens are restricted.
    async fn subject_token_rules(&self, provider: &str) -> Result<Vec<SubjectTokens>, StoreError>;
    /// Raises the subject's `tokens_not_before` to `not_before` (never lowers it) and sets
    /// `disabled` when given; returns the rule as it stands.
    async fn restrict_subject_tokens(
        &self,
        provider: &str,
        subject: &str,
        not_before: Option<i64>,
        disabled: Option<bool>,
        now: i64,
    ) -> Result<SubjectTokens, StoreError>;
}

/// Which of a subject's IdP-issued JWTs the shim still accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTokens {
    pub subject: String,
    /// Tokens issued at or before this (Unix seconds) are inactive.
    pub not_before: i64,
    /// No token is active (locked, deactivated or deleted at the IdP).
    pub disabled: bool,
}
