//! Nothing lost under `kill -9`, with the real binary: a transmitter delivers tens of signed
//! back-channel logout tokens (retrying every delivery until it is acknowledged, and sending
//! some twice, as real transmitters do) while mxidp is killed at random moments, several times.
//! A replay of a delivery whose answer a kill swallowed is refused (400), which the transmitter
//! takes as final. The IdP answers revocations slowly, so kills land between a session's end and its
//! revocation too. After the last restart:
//! - every stored event has exactly one `event.received` and one `event.applied` record;
//! - every ended session was revoked at the IdP and has exactly one `idp.tokens_revoked`;
//! - the audit chain verifies.

use std::collections::{HashMap, VecDeque};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxidp_core::audit::AuditStore as _;
use mxidp_core::crypto::Sealer;
use mxidp_core::events::{EventState, EventStore as _};
use mxidp_core::ids::{now_unix, DeviceId, Localpart};
use mxidp_core::secret::SecretString;
use mxidp_core::store::{Identity, Session, SessionState, SqliteStore, Store};
use mxidp_core::upstream::test_idp::{TestIdp, TestKey, CLIENT_ID, CLIENT_SECRET};
use rand::Rng;
use serde_json::json;

mod support;
use support::fake_mas::FakeMas;

/// The example configuration's key: the binary seals and opens with it.
const ENCRYPTION_KEY: &str = "LOCAL-TRIAL-ONLY-encryption-key-replace-me-0000000000";
const USERS: usize = 30;
const KILLS: usize = 6;

fn start(db: &str, port: u16, synapse: &str, issuer: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mxidp"))
        .args(["serve", "--config"])
        .arg(support::example_config())
        .env("MXIDP__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("MXIDP__DATABASE__URL", db)
        .env("MXIDP__MATRIX__ENDPOINT", synapse)
        .env("MXIDP__UPSTREAM__ISSUER", issuer)
        .env("MXIDP__UPSTREAM__CLIENT_ID", CLIENT_ID)
        .env("MXIDP__UPSTREAM__CLIENT_SECRET", CLIENT_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A signed logout token for every session of `sub` (OIDC Back-Channel Logout 1.0).
fn logout_token(idp: &TestIdp, sub: &str, jti: &str) -> String {
    idp.mint_id_token(
        json!({"alg": "RS256", "kid": TestKey::Rsa.kid(), "typ": "logout+jwt"}),
        json!({
            "iss": idp.issuer(),
            "aud": CLIENT_ID,
            "iat": now_unix(),
            "exp": now_unix() + 3_600,
            "jti": jti,
            "sub": sub,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sessions_audit_and_idp_revocations_survive_random_kills() {
    let idp = TestIdp::start().await;
    // Slow revocations: kills land between a session's end and its revocation.
    idp.set_revocation_delay(Duration::from_millis(150));
    let (fake, synapse) = FakeMas::start().await;
    fake.set_up(true);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mxidp.db").display());
    let store = SqliteStore::open(&db).await.unwrap();
    let upstream_id = idp
        .issuer()
        .split_once("://")
        .unwrap()
        .1
        .trim_end_matches('/')
        .to_owned();

    // USERS signed-in users, each with one session holding the IdP's refresh token, sealed.
    let sealer = Sealer::new(&SecretString::new(ENCRYPTION_KEY));
    let mut idp_refresh = HashMap::new();
    for i in 0..USERS {
        let localpart = Localpart::parse(&format!("user{i}")).unwrap();
        let subject = format!("sub-{i}");
        store
            .add_identity(&Identity {
                provider: upstream_id.clone(),
                subject: subject.clone(),
                localpart: localpart.clone(),
                created_at: 1,
                deleted_at: None,
            })
            .await
            .unwrap();
        let session_id = format!("session-{i}");
        let refresh = format!("idp-refresh-{i}");
        store
            .add_session(
                &Session {
                    id: session_id.clone().into(),
                    provider: upstream_id.clone(),
                    subject,
                    localpart,
                    device_id: DeviceId::parse(&format!("DEVICE{i:04}")).unwrap(),
                    client_id: "client".into(),
                    idp_sid: None,
                    scope: "urn:matrix:client:api:*".into(),
                    admin: false,
                    state: SessionState::Active,
                    sealed_refresh_token: Some(sealer.seal_str(&refresh)),
                    sealed_access_token: Some(sealer.seal_str(&format!("idp-access-{i}"))),
                    created_at: now_unix(),
                    ended_at: None,
                    end_reason: None,
                },
                &[],
            )
            .await
            .unwrap();
        idp_refresh.insert(session_id, refresh);
    }

    // The transmitter: each delivery until it is acknowledged (a 2xx); every third twice.
    let mut deliveries = VecDeque::new();
    for i in 0..USERS {
        let token = logout_token(&idp, &format!("sub-{i}"), &format!("jti-{i}"));
        deliveries.push_back(token.clone());
        if i % 3 == 0 {
            deliveries.push_back(token);
        }
    }
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}/upstream/backchannel-logout");
    let delivered = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(0usize));
    let transmitter = {
        let (delivered, attempts) = (delivered.clone(), attempts.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            while let Some(token) = deliveries.front() {
                *attempts.lock().unwrap() += 1;
                let answer = http
                    .post(&url)
                    .form(&[("logout_token", token.as_str())])
                    .send()
                    .await;
                match answer {
                    // Acknowledged, or refused for good: a replay of a delivery whose answer
                    // was lost in a kill (a transmitter does not retry a 4xx).
                    Ok(r) if r.status().is_success() || r.status().is_client_error() => {
                        deliveries.pop_front();
                        // Spread over the process's lives, as users sign out over time.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // Down (killed, restarting), or not ready yet: again shortly.
                    _ => tokio::time::sleep(Duration::from_millis(30)).await,
                }
            }
            delivered.store(true, Ordering::SeqCst);
        })
    };

    // mxidp's lives: killed at a random moment, KILLS times at least, until all is delivered.
    let mut kills = 0;
    let mut child = start(&db, port, &synapse, idp.issuer());
    let started = Instant::now();
    loop {
        let life = rand::thread_rng().gen_range(150..900);
        tokio::time::sleep(Duration::from_millis(life)).await;
        if delivered.load(Ordering::SeqCst) && kills >= KILLS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "deliveries did not finish"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        child = start(&db, port, &synapse, idp.issuer());
    }
    transmitter.await.unwrap();

    // The last life finishes what the others left: every event applied, every revocation done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = store.list_events(None, 1_000).await.unwrap();
        let pending = events
            .iter()
            .filter(|e| !matches!(e.state, EventState::Applied | EventState::Ignored))
            .count();
        let revoking = store
            .sessions_to_revoke(i64::MAX, i64::MAX, 1_000)
            .await
            .unwrap()
            .len();
        if pending == 0 && revoking == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} events not applied, {revoking} revocations not done"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let events = store.list_events(None, 1_000).await.unwrap();
    assert_eq!(
        events.len(),
        USERS,
        "one stored event per distinct delivery"
    );
    assert!(events.iter().all(|e| e.state == EventState::Applied));
    let records = store.audit_records(0, None, 100_000).await.unwrap();
    for event in &events {
        let of = |action: &str, outcome: &str| {
            records
                .iter()
                .filter(|r| {
                    r.action == action
                        && r.outcome == outcome
                        && r.correlation_id == event.id.to_string()
                })
                .count()
        };
        assert_eq!(of("event.received", "ok"), 1, "event {}", event.id);
        assert_eq!(of("event.applied", "ok"), 1, "event {}", event.id);
    }
    let revoked: Vec<String> = idp.revoked_tokens().into_iter().map(|t| t.token).collect();
    for (session_id, refresh) in &idp_refresh {
        let session = store.session(session_id).await.unwrap().unwrap();
        assert_eq!(session.state, SessionState::Ended, "{session_id}");
        assert!(session.sealed_refresh_token.is_none(), "{session_id}");
        assert!(
            revoked.contains(refresh),
            "{session_id} was not revoked at the IdP"
        );
        let records_of_session = records
            .iter()
            .filter(|r| r.action == "idp.tokens_revoked" && r.target == *session_id)
            .count();
        assert_eq!(records_of_session, 1, "{session_id}");
    }
    let verification = mxidp_core::audit::verify(&store).await.unwrap();
    assert!(verification.is_ok(), "{verification:?}");
    let attempts = *attempts.lock().unwrap();
    eprintln!(
        "{kills} kills; {attempts} delivery attempts for {} deliveries; {} revocation calls for {USERS} sessions",
        USERS + USERS.div_ceil(3),
        revoked.len()
    );
    assert!(kills >= KILLS);
}
