//! Reconciliation (docs/events.md): finds sessions that ended at the IdP without any event reaching
//! mxidp — some IdPs never retry a webhook, some never send session expiry — and ends them
//! through the same durable pipeline as the events (source `reconciliation`).
//!
//! Each round takes a batch of active sessions (never checked first, then the longest
//! unchecked) and
//! - introspects each session's upstream refresh token at the IdP (RFC 7662), when the IdP
//!   has an introspection endpoint and the provider says it knows refresh tokens: `active:
//!   false` → an [`IdpEvent::MxidpSessionEnded`];
//! - asks the provider's [`Provider::user_status`] hook about each subject of the batch:
//!   disabled → [`IdpEvent::UserLocked`], deleted → [`IdpEvent::UserDeleted`].
//!
//! Only an answer ends anything: an unreachable IdP, an error status or a malformed answer is
//! counted as an error and changes nothing. Calls to the IdP are spaced by
//! `1 / max_requests_per_second`, and a round makes at most `batch_size` introspection calls
//! plus one status call per distinct subject, so the configuration bounds the load on the IdP.
//!
//! [`Provider::user_status`]: crate::provider::Provider::user_status

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

use crate::app::{App, AppState};
use crate::audit::{self, AuditEntry};
use crate::config::ReconciliationConfig;
use crate::events::{Acceptance, IdpEvent, ReceivedEvent};
use crate::provider::UserStatus;
use crate::store::{Session, SessionState, StoreError};
use crate::upstream::{TokenTypeHint, Upstream};

/// The `source` of the events reconciliation accepts.
pub const SOURCE: &str = crate::sessions::EndCause::Reconciliation.source();

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Sessions in the batch.
    pub checked: u32,
    /// Sessions found ended at the IdP (an event was accepted for each; one found again before
    /// the pipeline ended it is not counted twice).
    pub ended: u32,
    /// Users found disabled or deleted at the IdP (an event was accepted for each).
    pub users: u32,
    /// Calls that gave no answer (IdP unreachable, error, malformed) or could not be acted on.
    pub errors: u32,
    /// Calls made to the IdP (introspection, and status calls that answered).
    pub idp_requests: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Spaces calls to the IdP: each waits until `interval` after the start of the previous one.
struct Pace {
    interval: Duration,
    next: Option<Instant>,
}

impl Pace {
    fn new(max_requests_per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / max_requests_per_second.max(1),
            next: None,
        }
    }

    /// Waits for the next slot and returns the call's start.
    async fn ready(&self) -> Instant {
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
        }
        Instant::now()
    }

    /// A call that started at `started` reached the IdP.
    fn used(&mut self, started: Instant) {
        self.next = Some(started + self.interval);
    }
}

/// One round: checks up to `settings.batch_size` active sessions at the IdP and accepts an
/// event for each one found over. Fails only when the store does.
pub async fn reconcile_round(
    app: &AppState,
    settings: &ReconciliationConfig,
    now: i64,
) -> Result<RoundReport, ReconcileError> {
    let mut report = RoundReport::default();
    let Some(upstream) = app.upstream.get() else {
        tracing::info!("reconciliation skipped: the identity provider is not discovered yet");
        return Ok(report);
    };
    let batch = app
        .store
        .sessions_to_reconcile(settings.batch_size, now)
        .await?;
    report.checked = batch.len() as u32;
    let mut pace = Pace::new(settings.max_requests_per_second);

    let introspection = upstream.metadata().introspection_endpoint.is_some()
        && app.provider.introspects_refresh_tokens();
    if introspection {
        for session in &batch {
            check_session(app, &upstream, session, now, &mut pace, &mut report).await;
        }
    }

    // Only the upstream's users: the JWT shim's service accounts are not users of the IdP.
    let subjects: BTreeSet<&str> = batch
        .iter()
        .filter(|s| s.provider == app.mapping.upstream_id)
        .map(|s| s.subject.as_str())
        .collect();
    for subject in subjects {
        let started = pace.ready().await;
        let status = app.provider.user_status(subject).await;
        if !matches!(status, Ok(UserStatus::Unknown)) {
            pace.used(started);
            report.idp_requests += 1;
        }
        let event = match status {
            // Reconciliation only finds what the IdP never said: it does not unlock.
            Ok(UserStatus::Unknown | UserStatus::Active) => continue,
            Ok(status) => match status.event(subject) {
                Some(event) => event,
                None => continue,
            },
            Err(e) => {
                tracing::debug!(%subject, error = %e, "reconciliation: no user status");
                report.errors += 1;
                continue;
            }
        };
        // The round's time keeps a later lock (after an unlock) from being a duplicate.
        let key = format!("reconcile:{}:{subject}:{now}", event.kind());
        match accept(app, key, event, subject, now).await {
            Some(Acceptance::Stored(_)) => report.users += 1,
            Some(Acceptance::Duplicate) => {}
            None => report.errors += 1,
        }
    }
    Ok(report)
}

/// Introspects one session's refresh token; accepts an event when the IdP says it is inactive.
async fn check_session(
    app: &AppState,
    upstream: &Upstream,
    session: &Session,
    now: i64,
    pace: &mut Pace,
    report: &mut RoundReport,
) {
    let Some(sealed) = &session.sealed_refresh_token else {
        // No refresh token (the IdP gave none): nothing to introspect.
        return;
    };
    let refresh = match app.sealer.open_secret(sealed) {
        Ok(token) => token,
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "reconciliation: cannot open the sealed refresh token");
            report.errors += 1;
            return;
        }
    };
    let started = pace.ready().await;
    let answer = upstream
        .introspect(refresh.expose(), TokenTypeHint::RefreshToken)
        .await;
    pace.used(started);
    report.idp_requests += 1;
    match answer {
        Ok(answer) if answer.active => {}
        Ok(_) => {
            // A refresh through mxidp may have rotated the token while it was being asked
            // about: the old one is then inactive although the session lives. Act only when the
            // session still holds the token the IdP called inactive.
            match app.store.session(&session.id).await {
                Ok(Some(current))
                    if current.state == SessionState::Active
                        && current.sealed_refresh_token.as_ref() == Some(sealed) => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(session = %session.id, error = %e, "reconciliation: cannot re-read the session");
                    report.errors += 1;
                    return;
                }
            }
            let event = IdpEvent::MxidpSessionEnded {
                session_id: session.id.to_string(),
            };
            let key = format!("reconcile:{}", session.id);
            match accept(app, key, event, &session.id, now).await {
                Some(Acceptance::Stored(_)) => report.ended += 1,
                // Found in an earlier round; the pipeline has not ended it yet.
                Some(Acceptance::Duplicate) => {}
                None => report.errors += 1,
            }
        }
        Err(e) => {
            tracing::debug!(session = %session.id, error = %e, "reconciliation: no introspection answer");
            report.errors += 1;
        }
    }
}

/// Hands the event to the pipeline and audits the decision. `None` when it could not be stored.
async fn accept(
    app: &AppState,
    key: String,
    event: IdpEvent,
    target: &str,
    now: i64,
) -> Option<Acceptance> {
    let kind = event.kind();
    let result = app
        .events
        .accept(
            SOURCE,
            ReceivedEvent {
                dedupe_key: key.clone(),
                occurred_at: now,
                event,
            },
        )
        .await;
    let (outcome, correlation_id) = match &result {
        Ok(Acceptance::Stored(id)) => ("ok".to_owned(), id.to_string()),
        Ok(Acceptance::Duplicate) => ("ignored: already accepted".to_owned(), key.clone()),
        Err(e) => (format!("failed: {e}"), key.clone()),
    };
    audit::record(
        app.store.as_ref(),
        AuditEntry {
            actor: "mxidp".into(),
            action: format!("reconciliation.{kind}"),
            target: target.to_owned(),
            source: SOURCE.into(),
            outcome,
            correlation_id,
            details: serde_json::json!({"dedupe_key": key}),
        },
    )
    .await;
    match result {
        Ok(acceptance) => Some(acceptance),
        Err(e) => {
            tracing::warn!(%target, error = %e, "reconciliation: cannot store the event");
            None
        }
    }
}

/// `interval` ± 10 %, so that replicas and restarts do not line up their rounds at the IdP.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::thread_rng().gen_range(0.9..=1.1))
}

/// Runs a round every `interval_seconds` (jittered) when enabled; logs one line per round.
/// Returns `None` when reconciliation is disabled (`enabled`, else the adapter's default).
pub fn spawn_reconciliation(
    app: App,
    settings: ReconciliationConfig,
) -> Option<tokio::task::JoinHandle<()>> {
    if !settings.is_enabled(app.provider.as_ref()) {
        return None;
    }
    let interval = Duration::from_secs(settings.interval_seconds.max(1));
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(jittered(interval)).await;
            let started = std::time::Instant::now();
            match reconcile_round(&app, &settings, crate::ids::now_unix()).await {
                Ok(r) => {
                    crate::metrics::reconciliation_round(r.users, r.errors);
                    tracing::info!(
                        checked = r.checked,
                        ended = r.ended,
                        users = r.users,
                        errors = r.errors,
                        idp_requests = r.idp_requests,
                        duration_ms = started.elapsed().as_millis() as u64,
                        "reconciliation round"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "reconciliation round failed"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::audit::AuditStore as _;
    use crate::homeserver::MemoryHomeserver;
    use crate::ids::{DeviceId, Localpart};
    use crate::provider::{GenericOidc, Provider};
    use crate::store::{SqliteStore, Store as _};
    use crate::upstream::test_idp::{TestIdp, CLIENT_ID};
    use crate::upstream::UpstreamError;

    const VERIFIER: &str = "dBjftJeZ4CVP-mJ0kzDmpY3mNLPq0AO2Ihv1UsgM2Xzk";
    const CALLBACK: &str = "https://mxidp.example/upstream/callback";

    struct Env {
        idp: TestIdp,
        app: App,
        store: Arc<SqliteStore>,
    }

    async fn env(provider: Arc<dyn Provider>) -> Env {
        let idp = TestIdp::start().await;
        let toml = format!(
            r#"
[http]
public_base = "http://127.0.0.1:1/"
[database]
encryption_key = "test-encryption-key-0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://127.0.0.1:1/"
secret = "0123456789abcdef0123456789abcdef-synapse"
[upstream]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "unused-here"
"#,
            issuer = idp.issuer()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mxidp.toml");
        std::fs::write(&path, toml).unwrap();
        let config = crate::config::Config::load(Some(&path)).unwrap();
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        let app = crate::server::assemble(
            &config,
            store.clone(),
            Arc::new(MemoryHomeserver::new("example.org")),
            provider,
        )
        .unwrap();
        app.upstream.set(idp.upstream().await);
        Env { idp, app, store }
    }

    fn settings(batch_size: u32) -> ReconciliationConfig {
        ReconciliationConfig {
            enabled: Some(true),
            interval_seconds: 60,
            batch_size,
            max_requests_per_second: 1_000,
        }
    }

    impl Env {
        /// A session of `subject` holding a refresh token the test IdP issued; returns the
        /// session id and the raw refresh token.
        async fn session(&self, subject: &str, created_at: i64) -> (String, String) {
            self.idp
                .set_next_login(serde_json::json!({"sub": subject, "preferred_username": subject}));
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()));
            let code = self.idp.issue_code(None, CALLBACK, &challenge);
            let upstream = self.app.upstream.get().unwrap();
            let tokens = upstream
                .exchange_code(&code, &CALLBACK.parse().unwrap(), VERIFIER)
                .await
                .unwrap();
            let refresh = tokens.refresh_token.unwrap().expose().to_owned();
            let id = format!("session-{subject}-{created_at}");
            let session = Session {
                id: id.clone().into(),
                provider: self.app.mapping.upstream_id.clone(),
                subject: subject.into(),
                localpart: Localpart::parse(subject).unwrap(),
                device_id: DeviceId::parse(&format!("DEVICE{created_at:0>6}")).unwrap(),
                client_id: "client".into(),
                idp_sid: None,
                scope: "urn:matrix:client:api:*".into(),
                admin: false,
                state: SessionState::Active,
                sealed_refresh_token: Some(self.app.sealer.seal_str(&refresh)),
                sealed_access_token: None,
                created_at,
                ended_at: None,
                end_reason: None,
            };
            self.store.add_session(&session, &[]).await.unwrap();
            (id, refresh)
        }

        /// The events accepted so far: (dedupe key, event).
        async fn events(&self) -> Vec<(String, IdpEvent)> {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT dedupe_key, event FROM idp_events ORDER BY id")
                    .fetch_all(self.store.pool())
                    .await
                    .unwrap();
            rows.into_iter()
                .map(|(key, event)| (key, serde_json::from_str(&event).unwrap()))
                .collect()
        }
    }

    #[tokio::test]
    async fn a_session_the_idp_ended_is_found_and_an_event_accepted() {
        let env = env(Arc::new(GenericOidc)).await;
        let (dead, dead_token) = env.session("alice", 100).await;
        let (alive, _) = env.session("bob", 101).await;
        env.idp.set_introspection_inactive(&dead_token);

        let report = reconcile_round(&env.app, &settings(10), 1_000)
            .await
            .unwrap();
        assert_eq!(
            report,
            RoundReport {
                checked: 2,
                ended: 1,
                users: 0,
                errors: 0,
                idp_requests: 2,
            }
        );
        let events = env.events().await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, format!("reconcile:{dead}"));
        assert_eq!(
            events[0].1,
            IdpEvent::MxidpSessionEnded {
                session_id: dead.clone()
            }
        );
        // Reconciliation only reports; the pipeline ends the session. Both are untouched here.
        for id in [&dead, &alive] {
            assert_eq!(
                env.store.session(id).await.unwrap().unwrap().state,
                SessionState::Active
            );
        }
        // The decision is audited.
        let audit = env.store.audit_records(0, None, 10).await.unwrap();
        assert!(audit
            .iter()
            .any(|r| r.action == "reconciliation.mxidp_session_ended"
                && r.target == dead
                && r.outcome == "ok"));

        // The next round (pipeline not run yet) accepts nothing twice.
        let report = reconcile_round(&env.app, &settings(10), 2_000)
            .await
            .unwrap();
        assert_eq!(report.ended, 0);
        assert_eq!(report.errors, 0);
        assert_eq!(env.events().await.len(), 1);
    }

    #[tokio::test]
    async fn a_token_revoked_at_the_idp_is_inactive() {
        let env = env(Arc::new(GenericOidc)).await;
        let (id, token) = env.session("alice", 100).await;
        env.app
            .upstream
            .get()
            .unwrap()
            .revoke(&token, TokenTypeHint::RefreshToken)
            .await
            .unwrap();
        let report = reconcile_round(&env.app, &settings(10), 1_000)
            .await
            .unwrap();
        assert_eq!(report.ended, 1);
        assert_eq!(
            env.events().await[0].1,
            IdpEvent::MxidpSessionEnded { session_id: id }
        );
    }

    #[tokio::test]
    async fn active_sessions_are_left_alone() {
        let env = env(Arc::new(GenericOidc)).await;
        for i in 0..3 {
            env.session(&format!("user{i}"), 100 + i).await;
        }
        let report = reconcile_round(&env.app, &settings(10), 1_000)
            .await
            .unwrap();
        assert_eq!((report.checked, report.ended, report.errors), (3, 0, 0));
        assert!(env.events().await.is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_or_failing_idp_ends_nothing() {
        let env = env(Arc::new(GenericOidc)).await;
        let (_, token) = env.session("alice", 100).await;
        env.session("bob", 101).await;
        env.idp.set_introspection_inactive(&token);

        env.idp.fail_introspection(true);
        let report = reconcile_round(&env.app, &settings(10), 1_000)
            .await
            .unwrap();
        assert_eq!((report.checked, report.ended, report.errors), (2, 0, 2));

        // Nobody listening at all.
        env.idp.patch_discovery(
            serde_json::json!({"introspection_endpoint": "http://127.0.0.1:9/introspect"}),
        );
        env.idp.fail_introspection(false);
        env.app.upstream.set(env.idp.upstream().await);
        let report = reconcile_round(&env.app, &settings(10), 2_000)
            .await
            .unwrap();
        assert_eq!((report.checked, report.ended, report.errors), (2, 0, 2));
        assert!(env.events().await.is_empty());
    }

    #[tokio::test]
    async fn without_an_introspection_endpoint_nothing_is_asked() {
        let env = env(Arc::new(GenericOidc)).await;
        env.session("alice", 100).await;
        env.idp
            .patch_discovery(serde_json::json!({"introspection_endpoint": null}));
        env.app.upstream.set(env.idp.upstream().await);
        let report = reconcile_round(&env.app, &settings(10), 1_000)
            .await
            .unwrap();
        assert_eq!(
            (report.checked, report.idp_requests, report.errors),
            (1, 0, 0)
        );
        assert!(env.idp.introspection_requests().is_empty());
    }

    #[tokio::test]
    async fn the_batch_size_bounds_a_round_and_rounds_take_turns() {
        let env = env(Arc::new(GenericOidc)).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(env.session(&format!("user{i}"), 100 + i).await.1);
        }
        let report = reconcile_round(&env.app, &settings(2), 1_000)
            .await
            .unwrap();
        assert_eq!((report.checked, report.idp_requests), (2, 2));
        assert_eq!(env.idp.introspection_requests().len(), 2);
        reconcile_round(&env.app, &settings(2), 1_001)
            .await
            .unwrap();
        reconcile_round(&env.app, &settings(2), 1_002)
            .await
            .unwrap();
        // Three rounds of two: every session was asked about once, the oldest check first
        // (then the round-one sessions again).
        let asked: Vec<String> = env
            .idp
            .introspection_requests()
            .into_iter()
            .map(|r| r.token)
            .collect();
        assert_eq!(asked.len(), 6);
        assert_eq!(&asked[..5], &ids[..]);
        assert_eq!(asked[5], ids[0]);
    }

    #[tokio::test]
    async fn calls_are_spaced_by_the_rate() {
        let env = env(Arc::new(GenericOidc)).await;
        for i in 0..3 {
            env.session(&format!("user{i}"), 100 + i).await;
        }
        let mut settings = settings(10);
        settings.max_requests_per_second = 20; // 50 ms apart
        let started = std::time::Instant::now();
        let report = reconcile_round(&env.app, &settings, 1_000).await.unwrap();
        assert_eq!(report.idp_requests, 3);
        // Two gaps of at least 50 ms between three calls (a lower bound only).
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn pace_spaces_calls_by_the_interval() {
        let mut pace = Pace::new(50); // 20 ms
        let first = pace.ready().await;
        pace.used(first);
        let second = pace.ready().await;
        pace.used(second);
        let third = pace.ready().await;
        // Lower bounds only: a slow machine may space them more.
        assert!(second - first >= Duration::from_millis(20));
        assert!(third - second >= Duration::from_millis(20));
        // A call that did not reach the IdP leaves the slot free.
        let pace = Pace::new(1);
        let a = pace.ready().await;
        let b = pace.ready().await;
        assert!(b - a < Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1_000 {
            let d = jittered(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }

    /// An adapter with a user API.
    struct Directory;

    #[async_trait]
    impl Provider for Directory {
        async fn user_status(&self, subject: &str) -> Result<UserStatus, UpstreamError> {
            match subject {
                "locked" => Ok(UserStatus::Disabled),
                "gone" => Ok(UserStatus::Deleted),
                "flaky" => Err(UpstreamError::Transport("timed out".into())),
                _ => Ok(UserStatus::Active),
            }
        }
    }

    #[tokio::test]
    async fn the_user_status_hook_turns_disabled_and_deleted_users_into_events() {
        let env = env(Arc::new(Directory)).await;
        for subject in ["fine", "locked", "gone", "flaky"] {
            env.session(subject, 100).await;
        }
        // Two sessions of one user: asked once.
        env.session("locked", 101).await;
        let report = reconcile_round(&env.app, &settings(10), 1_000)
            .await
            .unwrap();
        assert_eq!(report.checked, 5);
        assert_eq!(report.users, 2);
        assert_eq!(report.errors, 1);
        assert_eq!(report.idp_requests, 5 + 4);
        let events: Vec<IdpEvent> = env.events().await.into_iter().map(|e| e.1).collect();
        assert_eq!(
            events,
            vec![
                IdpEvent::UserDeleted {
                    subject: "gone".into()
                },
                IdpEvent::UserLocked {
                    subject: "locked".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn spawn_does_nothing_when_disabled() {
        let env = env(Arc::new(GenericOidc)).await;
        let mut settings = settings(10);
        settings.enabled = Some(false);
        assert!(spawn_reconciliation(env.app.clone(), settings).is_none());
    }
}
