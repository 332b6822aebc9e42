//! Every way a client's action ends a session survives `kill -9` between the client's answer
//! and the homeserver's device deletion: the real binary answers the client (revocation, a
//! replayed code, a reused refresh token, a refresh the IdP refuses), is killed while the
//! homeserver is down, and after the restart the device goes exactly once. The homeserver is a
//! fake `/_synapse/mas/*` that records what it was asked and answers 503 or 200.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use mxidp_core::crypto::Sealer;
use mxidp_core::events::{EventState, EventStore};
use mxidp_core::ids::{now_unix, DeviceId, Localpart, TokenHash};
use mxidp_core::secret::SecretString;
use mxidp_core::store::{
    AuthorizationStage, Identity, PendingAuthorization, Purpose, RegisteredClient, ResponseMode,
    Session, SessionState, SqliteStore, Store, TokenKind, TokenRecord,
};
use mxidp_core::upstream::test_idp::{TestIdp, CLIENT_ID, CLIENT_SECRET};
use serde_json::{json, Value};

mod support;
use support::fake_mas::FakeMas;

/// The example configuration's key: the binary seals and opens with it.
const ENCRYPTION_KEY: &str = "LOCAL-TRIAL-ONLY-encryption-key-replace-me-0000000000";
const CLIENT: &str = "crash-client";
const SESSION: &str = "session-1";

struct Harness {
    fake: FakeMas,
    synapse: String,
    db: String,
    store: SqliteStore,
    issuer: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(issuer: &str) -> Self {
        let (fake, synapse) = FakeMas::start().await;
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("mxidp.db").display());
        let store = SqliteStore::open(&db).await.unwrap();
        Self {
            fake,
            synapse,
            db,
            store,
            issuer: issuer.to_owned(),
            _dir: dir,
        }
    }

    /// A signed-in device: identity, client, session with its Matrix tokens and the IdP's
    /// refresh token sealed. Returns the Matrix (access, refresh) tokens.
    async fn seed(&self, idp_refresh: &str) -> (String, String) {
        let alice = Localpart::parse("alice").unwrap();
        let upstream_id = self
            .issuer
            .split_once("://")
            .unwrap()
            .1
            .trim_end_matches('/');
        self.store
            .add_identity(&Identity {
                provider: upstream_id.into(),
                subject: "alice-sub".into(),
                localpart: alice.clone(),
                created_at: 1,
                deleted_at: None,
            })
            .await
            .unwrap();
        self.store
            .add_client(&RegisteredClient {
                client_id: CLIENT.into(),
                metadata: serde_json::from_value(json!({
                    "redirect_uris": ["https://client.example.org/cb"],
                    "client_uri": "https://client.example.org/",
                    "client_name": "Crash client",
                    "logo_uri": null, "tos_uri": null, "policy_uri": null,
                    "application_type": "web",
                    "grant_types": ["authorization_code", "refresh_token"],
                }))
                .unwrap(),
                created_at: 1,
            })
            .await
            .unwrap();
        let sealer = Sealer::new(&SecretString::new(ENCRYPTION_KEY));
        let now = now_unix();
        let session = Session {
            id: SESSION.into(),
            provider: upstream_id.into(),
            subject: "alice-sub".into(),
            localpart: alice,
            device_id: DeviceId::parse("DEVICEAAAA").unwrap(),
            client_id: CLIENT.into(),
            idp_sid: None,
            scope: "urn:matrix:client:api:* urn:matrix:client:device:DEVICEAAAA".into(),
            admin: false,
            state: SessionState::Active,
            sealed_refresh_token: Some(sealer.seal_str(idp_refresh)),
            sealed_access_token: Some(sealer.seal_str("idp-access-token")),
            created_at: now,
            ended_at: None,
            end_reason: None,
        };
        let access = mxidp_core::tokens::issue(TokenKind::Access);
        let refresh = mxidp_core::tokens::issue(TokenKind::Refresh);
        let record = |token: &SecretString, kind, expires_at| TokenRecord {
            hash: TokenHash::of(token.expose()),
            session_id: SESSION.into(),
            kind,
            expires_at,
            issued_at: now,
            rotated_at: None,
        };
        self.store
            .add_session(
                &session,
                &[
                    record(&access, TokenKind::Access, Some(now + 3600)),
                    record(&refresh, TokenKind::Refresh, None),
                ],
            )
            .await
            .unwrap();
        (access.expose().to_owned(), refresh.expose().to_owned())
    }

    /// Starts the real binary; returns it and its base URL once it answers.
    async fn start(&self, ready: bool) -> (Child, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mxidp"))
            .args(["serve", "--config"])
            .arg(support::example_config())
            .env("MXIDP__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("MXIDP__DATABASE__URL", &self.db)
            .env("MXIDP__MATRIX__ENDPOINT", &self.synapse)
            .env("MXIDP__UPSTREAM__ISSUER", &self.issuer)
            .env("MXIDP__UPSTREAM__CLIENT_ID", CLIENT_ID)
            .env("MXIDP__UPSTREAM__CLIENT_SECRET", CLIENT_SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}/");
        let probe = if ready { "health/ready" } else { "health/live" };
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("{base}{probe}")).send().await {
                if r.status().is_success() {
                    return (child, base);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mxidp did not answer {probe}");
    }

    /// After the client's answer, with the homeserver down: kill -9 once the worker tried it,
    /// restart with the homeserver up, and check the device went exactly once.
    async fn kill_restart_and_check(&self, mut child: Child, ready: bool) {
        let calls = self.fake.calls.clone();
        wait_until("mxidp tried the homeserver", || {
            !calls.lock().unwrap().is_empty()
        })
        .await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let session = self.store.session(SESSION).await.unwrap().unwrap();
        assert_eq!(
            session.state,
            SessionState::Ended,
            "ended before the answer"
        );
        assert!(self
            .fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .all(|(_, s)| *s == 503));

        // Second life: the homeserver is back; the session end is applied once.
        self.fake.set_up(true);
        let (mut child, _) = self.start(ready).await;
        let mut applied = false;
        for _ in 0..300 {
            let events = self.store.list_events(None, 100).await.unwrap();
            if !events.is_empty() && events.iter().all(|e| e.state == EventState::Applied) {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(applied, "the session end was not applied after the restart");
        child.kill().unwrap();
        child.wait().unwrap();

        // Third life: nothing left to do, nothing done twice.
        let (mut child, _) = self.start(ready).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(self.fake.successes(), ["sync_devices"]);
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn post_form(url: String, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An IdP nobody answers at: these ends need none.
const NO_IDP: &str = "http://127.0.0.1:9/";

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_survives_kill_9() {
    let h = Harness::new(NO_IDP).await;
    let (access, _) = h.seed("idp-refresh").await;
    let (child, base) = h.start(false).await;
    let (status, _) = post_form(
        format!("{base}oauth2/revoke"),
        &[("token", &access), ("client_id", CLIENT)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    h.kill_restart_and_check(child, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_refresh_token_survives_kill_9() {
    let h = Harness::new(NO_IDP).await;
    let (_, refresh) = h.seed("idp-refresh").await;
    // The client refreshed once already: its token is rotated out.
    h.store
        .rotate_tokens(&mxidp_core::store::Rotation {
            session_id: SESSION,
            old_refresh: TokenHash::of(&refresh),
            new_tokens: &[],
            sealed_refresh_token: None,
            sealed_access_token: "unused",
            now: now_unix(),
        })
        .await
        .unwrap();
    let (child, base) = h.start(false).await;
    let (status, body) = post_form(
        format!("{base}oauth2/token"),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", CLIENT),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    h.kill_restart_and_check(child, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_code_survives_kill_9() {
    let h = Harness::new(NO_IDP).await;
    h.seed("idp-refresh").await;
    // The code was redeemed once and created the session.
    let now = now_unix();
    let pending = PendingAuthorization {
        id: "pending-1".into(),
        purpose: Purpose::Login,
        browser_binding: "binding".into(),
        client_id: CLIENT.into(),
        redirect_uri: "https://client.example.org/cb".into(),
        response_mode: ResponseMode::Query,
        client_state: None,
        code_challenge: "challenge".into(),
        scope: "urn:matrix:client:api:* urn:matrix:client:device:DEVICEAAAA".into(),
        device_id: DeviceId::parse("DEVICEAAAA").unwrap(),
        signup: false,
        upstream_state: "state".into(),
        upstream_nonce: "nonce".into(),
        upstream_verifier: "verifier".into(),
        csrf: "csrf".into(),
        user_code: None,
        stage: AuthorizationStage::CodeIssued,
        login: None,
        created_at: now,
        expires_at: now + 600,
    };
    h.store.add_pending(&pending).await.unwrap();
    let code = TokenHash::of("the-code");
    h.store.add_code(code, "pending-1", now + 60).await.unwrap();
    h.store.redeem_code(code, now).await.unwrap();
    h.store.link_code_session(code, SESSION).await.unwrap();

    let (child, base) = h.start(false).await;
    let (status, body) = post_form(
        format!("{base}oauth2/token"),
        &[
            ("grant_type", "authorization_code"),
            ("code", "the-code"),
            ("client_id", CLIENT),
            ("redirect_uri", "https://client.example.org/cb"),
            (
                "code_verifier",
                "any-verifier-of-enough-length-0123456789abcdef",
            ),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    h.kill_restart_and_check(child, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_the_idp_refuses_survives_kill_9() {
    let idp = TestIdp::start().await;
    let h = Harness::new(idp.issuer()).await;
    let (_, refresh) = h.seed("idp-refresh").await;
    idp.fail_refresh_with_invalid_grant(true);
    let (child, base) = h.start(true).await;
    let (status, body) = post_form(
        format!("{base}oauth2/token"),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", CLIENT),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    h.kill_restart_and_check(child, true).await;
    // The IdP was asked once to refresh, and its grant was revoked after the restart.
    assert!(idp
        .revoked_tokens()
        .iter()
        .any(|t| t.token == "idp-refresh"));
}
