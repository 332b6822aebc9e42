//! Crash safety of the IdP event pipeline with the real binary: an event accepted (2xx answered)
//! whose action has not run survives `kill -9`, and runs exactly once after the restart. The
//! homeserver is a fake `/_synapse/mas/*` that records what it was asked and answers 503 or 200.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mxidp_core::events::{EventState, EventStore, IdpEvent};
use mxidp_core::ids::{DeviceId, Localpart};
use mxidp_core::store::{Identity, Session, SessionState, SqliteStore, Store};

mod support;
use support::fake_mas::FakeMas;

fn start(db: &str, synapse: &str) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Command::new(env!("CARGO_BIN_EXE_mxidp"))
        .args(["serve", "--config"])
        .arg(support::example_config())
        .env("MXIDP__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("MXIDP__DATABASE__URL", db)
        .env("MXIDP__MATRIX__ENDPOINT", synapse)
        .env("MXIDP__UPSTREAM__ISSUER", "http://127.0.0.1:9/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_event_survives_kill_9_and_runs_exactly_once_after_the_restart() {
    let (fake, synapse) = FakeMas::start().await;

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mxidp.db").display());
    let store = SqliteStore::open(&db).await.unwrap();
    let alice = Localpart::parse("alice").unwrap();
    // Keyed on the adapter's name, as before `upstream.id`: the start moves them.
    store
        .add_identity(&Identity {
            provider: "generic".into(),
            subject: "sub-alice".into(),
            localpart: alice.clone(),
            created_at: 1,
            deleted_at: None,
        })
        .await
        .unwrap();
    store
        .add_session(
            &Session {
                id: "session-1".into(),
                provider: "generic".into(),
                subject: "sub-alice".into(),
                localpart: alice.clone(),
                device_id: DeviceId::parse("DEVICEAAAA").unwrap(),
                client_id: "client".into(),
                idp_sid: Some("sid-1".into()),
                scope: "openid".into(),
                admin: false,
                state: SessionState::Active,
                sealed_refresh_token: None,
                sealed_access_token: None,
                created_at: 1,
                ended_at: None,
                end_reason: None,
            },
            &[],
        )
        .await
        .unwrap();
    // What a receiver does before it answers 2xx: the event is durable, its action not run.
    let id = store
        .insert_event(
            "backchannel_logout",
            "jti-1",
            mxidp_core::ids::now_unix(),
            &IdpEvent::SessionEnded {
                sid: "sid-1".into(),
            },
            mxidp_core::ids::now_unix(),
            &mxidp_core::audit::AuditEntry::for_test("event.received"),
        )
        .await
        .unwrap()
        .unwrap();

    // First life: the homeserver answers 503, the action cannot complete; then kill -9.
    let mut child = start(&db, &synapse);
    let calls = fake.calls.clone();
    wait_until("mxidp tried the homeserver", || {
        !calls.lock().unwrap().is_empty()
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let event = store.event(id).await.unwrap().unwrap();
    assert_ne!(event.state, EventState::Applied);
    assert!(fake.calls.lock().unwrap().iter().all(|(_, s)| *s == 503));

    // Second life: the homeserver is back; the event is applied once.
    fake.set_up(true);
    let mut child = start(&db, &synapse);
    let mut applied = false;
    for _ in 0..300 {
        if store.event(id).await.unwrap().unwrap().state == EventState::Applied {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(applied, "the event was not applied after the restart");
    child.kill().unwrap();
    child.wait().unwrap();

    // Third life: nothing left to do, nothing done twice.
    let mut child = start(&db, &synapse);
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(fake.successes(), ["sync_devices"]);
    assert_eq!(
        store.session("session-1").await.unwrap().unwrap().state,
        SessionState::Ended
    );
}
