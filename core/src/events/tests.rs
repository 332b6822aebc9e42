//! The event pipeline against the in-memory homeserver and an in-memory SQLite store: every
//! action, idempotence (duplicates, replays), ordering by the IdP's time, retries with back-off,
//! the maximum age and the dead letters. `run_due` is called with an injected `now`.

use std::sync::Arc;

use super::*;
use crate::app::App;
use crate::cache::{ActiveToken, Lookup};
use crate::homeserver::{HomeserverConnection, MemoryHomeserver, ProvisionRequest};
use crate::ids::{DeviceId, Localpart, TokenHash};
use crate::provider::GenericOidc;
use crate::store::{Identity, Session, SessionState, SqliteStore, TokenKind, TokenRecord};

/// "Now" for `run_due`: a little ahead of the clock, so that every event accepted during a test
/// (stamped with the real time) is due at it.
fn t0() -> i64 {
    static T0_: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0_.get_or_init(|| crate::ids::now_unix() + 600)
}

struct Env {
    app: App,
    hs: MemoryHomeserver,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    env_with("").await
}

/// `extra` is TOML appended to the configuration, e.g. an `[events]` section.
async fn env_with(extra: &str) -> Env {
    env_with_provider(extra, Arc::new(GenericOidc)).await
}

async fn env_with_provider(extra: &str, provider: Arc<dyn crate::provider::Provider>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxidp.toml");
    std::fs::write(
        &path,
        format!(
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
issuer = "http://127.0.0.1:1/"
client_id = "mxidp"
client_secret = "unused-here"
{extra}
"#
        ),
    )
    .unwrap();
    let config = crate::config::Config::load(Some(&path)).unwrap();
    let hs = MemoryHomeserver::new("example.org");
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let app = crate::server::assemble(&config, store, Arc::new(hs.clone()), provider).unwrap();
    // The introspection cache holds every active token from here on (as after a start).
    crate::server::warm_introspection_cache(&app).await.unwrap();
    Env { app, hs, _dir: dir }
}

fn lp(value: &str) -> Localpart {
    Localpart::parse(value).unwrap()
}

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

impl Env {
    /// A user known to mxidp (identity) and to the homeserver.
    async fn user(&self, subject: &str, localpart: &str) {
        self.app
            .store
            .add_identity(&Identity {
                provider: self.app.mapping.upstream_id.clone(),
                subject: subject.into(),
                localpart: lp(localpart),
                created_at: t0() - 1000,
                deleted_at: None,
            })
            .await
            .unwrap();
        self.hs
            .provision_user(&ProvisionRequest::new(lp(localpart)))
            .await
            .unwrap();
    }

    /// An active session with its device in the homeserver and its access token in the cache;
    /// returns the token's hash.
    async fn session(
        &self,
        subject: &str,
        localpart: &str,
        device_id: &str,
        sid: Option<&str>,
    ) -> TokenHash {
        let session = Session {
            id: format!("session-{device_id}").into(),
            provider: self.app.mapping.upstream_id.clone(),
            subject: subject.into(),
            localpart: lp(localpart),
            device_id: device(device_id),
            client_id: "client".into(),
            idp_sid: sid.map(str::to_owned),
            scope: "openid".into(),
            admin: false,
            state: SessionState::Active,
            sealed_refresh_token: None,
            sealed_access_token: None,
            created_at: t0() - 500,
            ended_at: None,
            end_reason: None,
        };
        let token = TokenRecord {
            hash: TokenHash::of(&format!("access-{device_id}")),
            session_id: session.id.to_string(),
            kind: TokenKind::Access,
            expires_at: None,
            issued_at: t0() - 500,
            rotated_at: None,
        };
        self.app
            .store
            .add_session(&session, std::slice::from_ref(&token))
            .await
            .unwrap();
        self.app
            .cache
            .insert(token.hash, ActiveToken::new(&token, &session));
        self.hs
            .upsert_device(&lp(localpart), &device(device_id), None)
            .await
            .unwrap();
        token.hash
    }

    async fn accept(&self, key: &str, occurred_at: i64, event: IdpEvent) -> i64 {
        match self
            .app
            .events
            .accept(
                "test",
                ReceivedEvent {
                    dedupe_key: key.into(),
                    occurred_at,
                    event,
                },
            )
            .await
            .unwrap()
        {
            Acceptance::Stored(id) => id,
            Acceptance::Duplicate => panic!("{key} was taken for a duplicate"),
        }
    }

    async fn run(&self, now: i64) -> usize {
        run_due(&self.app, now).await.unwrap()
    }

    async fn event(&self, id: i64) -> StoredEvent {
        self.app.store.event(id).await.unwrap().unwrap()
    }

    async fn session_state(&self, device_id: &str) -> SessionState {
        self.app
            .store
            .session(&format!("session-{device_id}"))
            .await
            .unwrap()
            .unwrap()
            .state
    }

    fn calls_of(&self, prefix: &str) -> usize {
        self.hs
            .calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }
}

fn subject(s: &str) -> String {
    s.to_owned()
}

#[tokio::test]
async fn session_ended_ends_the_matching_sessions_and_deletes_only_their_devices() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    let first = env
        .session("sub-alice", "alice", "DEVICEAAAA", Some("sid-1"))
        .await;
    let second = env
        .session("sub-alice", "alice", "DEVICEBBBB", Some("sid-2"))
        .await;
    env.hs.clear_calls();

    let id = env
        .accept(
            "jti-1",
            t0(),
            IdpEvent::SessionEnded {
                sid: "sid-1".into(),
            },
        )
        .await;
    assert_eq!(env.run(t0()).await, 1);

    assert_eq!(env.event(id).await.state, EventState::Applied);
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
    assert_eq!(env.session_state("DEVICEBBBB").await, SessionState::Active);
    assert_eq!(env.hs.devices(&lp("alice")), [device("DEVICEBBBB")].into());
    assert_eq!(env.hs.calls(), ["sync_devices alice [DEVICEBBBB]"]);
    // Introspection answers inactive at once: the token left the cache.
    assert_eq!(env.app.cache.lookup(&first), Lookup::NotActive);
    assert!(matches!(env.app.cache.lookup(&second), Lookup::Active(_)));
}

#[tokio::test]
async fn an_unknown_sid_or_subject_is_recorded_and_ignored_without_a_homeserver_call() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.session("sub-alice", "alice", "DEVICEAAAA", Some("sid-1"))
        .await;
    env.hs.clear_calls();

    let unknown_sid = env
        .accept(
            "jti-1",
            t0(),
            IdpEvent::SessionEnded {
                sid: "sid-nobody".into(),
            },
        )
        .await;
    let unknown_subject = env
        .accept(
            "jti-2",
            t0(),
            IdpEvent::UserDeactivated {
                subject: subject("sub-nobody"),
                erase: true,
            },
        )
        .await;
    assert_eq!(env.run(t0()).await, 2);

    for id in [unknown_sid, unknown_subject] {
        let event = env.event(id).await;
        assert_eq!(event.state, EventState::Ignored);
        assert!(event.last_error.is_some(), "the reason is recorded");
    }
    assert_eq!(
        env.event(unknown_subject).await.last_error.as_deref(),
        Some("unknown subject")
    );
    assert!(env.hs.calls().is_empty(), "{:?}", env.hs.calls());
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Active);
}

#[tokio::test]
async fn all_sessions_ended_ends_every_session_of_the_subject_only() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.user("sub-bob", "bob").await;
    env.session("sub-alice", "alice", "DEVICEAAAA", Some("sid-1"))
        .await;
    env.session("sub-alice", "alice", "DEVICEBBBB", None).await;
    env.session("sub-bob", "bob", "DEVICECCCC", None).await;
    env.hs.clear_calls();

    let id = env
        .accept(
            "e1",
            t0(),
            IdpEvent::AllSessionsEnded {
                subject: subject("sub-alice"),
            },
        )
        .await;
    env.run(t0()).await;
    assert_eq!(env.event(id).await.state, EventState::Applied);
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
    assert_eq!(env.session_state("DEVICEBBBB").await, SessionState::Ended);
    assert_eq!(env.session_state("DEVICECCCC").await, SessionState::Active);
    assert!(env.hs.devices(&lp("alice")).is_empty());
    assert_eq!(env.hs.devices(&lp("bob")), [device("DEVICECCCC")].into());
    assert_eq!(env.hs.calls(), ["sync_devices alice []"]);
}

#[tokio::test]
async fn lock_ends_sessions_and_locks_unlock_unlocks() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    env.hs.clear_calls();

    env.accept(
        "e1",
        t0(),
        IdpEvent::UserLocked {
            subject: subject("sub-alice"),
        },
    )
    .await;
    env.run(t0()).await;
    assert!(env.hs.user(&lp("alice")).unwrap().locked);
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
    assert!(env.hs.devices(&lp("alice")).is_empty());
    assert_eq!(
        env.hs.calls(),
        ["provision_user alice", "sync_devices alice []"]
    );

    env.hs.clear_calls();
    env.accept(
        "e2",
        t0() + 10,
        IdpEvent::UserUnlocked {
            subject: subject("sub-alice"),
        },
    )
    .await;
    env.run(t0() + 10).await;
    assert!(!env.hs.user(&lp("alice")).unwrap().locked);
    assert_eq!(env.hs.calls(), ["provision_user alice"]);
}

#[tokio::test]
async fn deactivation_ends_sessions_and_deactivates_with_erasure_reactivation_reactivates() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    env.hs.clear_calls();

    env.accept(
        "e1",
        t0(),
        IdpEvent::UserDeactivated {
            subject: subject("sub-alice"),
            erase: true,
        },
    )
    .await;
    env.run(t0()).await;
    let user = env.hs.user(&lp("alice")).unwrap();
    assert!(user.deactivated && user.erased);
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
    assert_eq!(env.hs.calls(), ["delete_user alice erase=true"]);

    env.hs.clear_calls();
    env.accept(
        "e2",
        t0() + 10,
        IdpEvent::UserReactivated {
            subject: subject("sub-alice"),
        },
    )
    .await;
    env.run(t0() + 10).await;
    assert!(!env.hs.user(&lp("alice")).unwrap().deactivated);
    assert_eq!(env.hs.calls(), ["reactivate_user alice"]);
}

#[tokio::test]
async fn deletion_deactivates_with_the_configured_erasure_and_tombstones_the_localpart() {
    for erase in [false, true] {
        let env = env_with(&format!("[events]\nerase_on_delete = {erase}")).await;
        env.user("sub-alice", "alice").await;
        env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
        env.hs.clear_calls();

        let id = env
            .accept(
                "e1",
                t0(),
                IdpEvent::UserDeleted {
                    subject: subject("sub-alice"),
                },
            )
            .await;
        env.run(t0()).await;
        assert_eq!(env.event(id).await.state, EventState::Applied);
        assert_eq!(env.hs.calls(), [format!("delete_user alice erase={erase}")]);
        assert_eq!(env.hs.user(&lp("alice")).unwrap().erased, erase);
        assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
        let identity = env
            .app
            .store
            .identity_by_localpart(&lp("alice"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(identity.deleted_at, Some(t0()));

        // A later reactivation never brings a deleted identity back.
        env.hs.clear_calls();
        let id = env
            .accept(
                "e2",
                t0() + 10,
                IdpEvent::UserReactivated {
                    subject: subject("sub-alice"),
                },
            )
            .await;
        env.run(t0() + 10).await;
        assert_eq!(env.event(id).await.state, EventState::Ignored);
        assert!(env.hs.calls().is_empty());
    }
}

#[tokio::test]
async fn credential_change_ends_sessions_or_only_records_by_policy() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    env.hs.clear_calls();
    let id = env
        .accept(
            "e1",
            t0(),
            IdpEvent::CredentialChanged {
                subject: subject("sub-alice"),
            },
        )
        .await;
    env.run(t0()).await;
    assert_eq!(env.event(id).await.state, EventState::Applied);
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
    assert_eq!(env.hs.calls(), ["sync_devices alice []"]);

    let env = env_with("[events]\non_credential_change = \"record\"").await;
    env.user("sub-alice", "alice").await;
    env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    env.hs.clear_calls();
    let id = env
        .accept(
            "e1",
            t0(),
            IdpEvent::CredentialChanged {
                subject: subject("sub-alice"),
            },
        )
        .await;
    env.run(t0()).await;
    assert_eq!(env.event(id).await.state, EventState::Ignored);
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Active);
    assert!(env.hs.calls().is_empty());
}

#[tokio::test]
async fn the_same_event_twice_or_in_two_batches_acts_once() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    let event = ReceivedEvent {
        dedupe_key: "jti-1".into(),
        occurred_at: t0(),
        event: IdpEvent::UserDeactivated {
            subject: subject("sub-alice"),
            erase: false,
        },
    };
    assert!(matches!(
        env.app.events.accept("test", event.clone()).await.unwrap(),
        Acceptance::Stored(_)
    ));
    // Twice before the worker ran…
    assert_eq!(
        env.app.events.accept("test", event.clone()).await.unwrap(),
        Acceptance::Duplicate
    );
    assert_eq!(env.run(t0()).await, 1);
    // …and again in a later batch, after it was applied.
    assert_eq!(
        env.app.events.accept("test", event).await.unwrap(),
        Acceptance::Duplicate
    );
    assert_eq!(env.run(t0() + 60).await, 0);
    assert_eq!(env.calls_of("delete_user"), 1);
}

#[tokio::test]
async fn an_older_reactivation_arriving_late_does_not_revive_a_deactivated_user() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.accept(
        "deactivated",
        t0() + 100,
        IdpEvent::UserDeactivated {
            subject: subject("sub-alice"),
            erase: false,
        },
    )
    .await;
    env.run(t0() + 100).await;
    assert!(env.hs.user(&lp("alice")).unwrap().deactivated);

    let late = env
        .accept(
            "reactivated",
            t0() + 50,
            IdpEvent::UserReactivated {
                subject: subject("sub-alice"),
            },
        )
        .await;
    env.run(t0() + 200).await;
    let late = env.event(late).await;
    assert_eq!(late.state, EventState::Ignored);
    assert!(late.last_error.unwrap().starts_with("superseded"));
    assert_eq!(env.calls_of("reactivate_user"), 0);
    assert!(env.hs.user(&lp("alice")).unwrap().deactivated);

    // Both in one round, received newest first: the IdP's time decides, not arrival.
    let env2 = crate::events::tests::env().await;
    env2.user("sub-bob", "bob").await;
    let newer = env2
        .accept(
            "reactivated",
            t0() + 100,
            IdpEvent::UserReactivated {
                subject: subject("sub-bob"),
            },
        )
        .await;
    let older = env2
        .accept(
            "deactivated",
            t0() + 50,
            IdpEvent::UserDeactivated {
                subject: subject("sub-bob"),
                erase: false,
            },
        )
        .await;
    env2.run(t0() + 200).await;
    assert!(!env2.hs.user(&lp("bob")).unwrap().deactivated);
    // Applied in the IdP's order, so neither was superseded.
    assert_eq!(env2.event(older).await.state, EventState::Applied);
    assert_eq!(env2.event(newer).await.state, EventState::Applied);
}

#[tokio::test]
async fn a_late_lock_does_not_undo_a_newer_unlock_but_session_endings_always_apply() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.accept(
        "unlocked",
        t0() + 100,
        IdpEvent::UserUnlocked {
            subject: subject("sub-alice"),
        },
    )
    .await;
    env.run(t0() + 100).await;
    env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    env.accept(
        "locked",
        t0() + 50,
        IdpEvent::UserLocked {
            subject: subject("sub-alice"),
        },
    )
    .await;
    env.accept(
        "all-ended",
        t0() + 10,
        IdpEvent::AllSessionsEnded {
            subject: subject("sub-alice"),
        },
    )
    .await;
    env.run(t0() + 200).await;
    assert!(!env.hs.user(&lp("alice")).unwrap().locked);
    // The older session-ending event still ends the sessions.
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
}

#[tokio::test]
async fn with_the_homeserver_down_an_event_fails_backs_off_and_applies_once_after_it_returns() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    let token = env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    env.hs.set_unavailable(true);
    env.hs.clear_calls();

    let id = env
        .accept(
            "e1",
            t0(),
            IdpEvent::AllSessionsEnded {
                subject: subject("sub-alice"),
            },
        )
        .await;
    assert_eq!(env.run(t0()).await, 1);
    let failed = env.event(id).await;
    assert_eq!(failed.state, EventState::Failed);
    assert_eq!(failed.attempts, 1);
    assert!(failed
        .last_error
        .as_deref()
        .unwrap()
        .contains("sync_devices"));
    // The default retry_initial_seconds is 2, with up to half again of jitter.
    assert!(
        (t0() + 2..=t0() + 3).contains(&failed.next_attempt_at),
        "{}",
        failed.next_attempt_at
    );
    // The session is over for Matrix already: introspection does not wait for the homeserver.
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
    assert_eq!(env.app.cache.lookup(&token), Lookup::NotActive);
    // Not due before its back-off.
    assert_eq!(env.run(t0() + 1).await, 0);

    // Still down: the delay doubles.
    assert_eq!(env.run(failed.next_attempt_at).await, 1);
    let again = env.event(id).await;
    assert_eq!((again.state, again.attempts), (EventState::Failed, 2));
    let delay = again.next_attempt_at - failed.next_attempt_at;
    assert!((4..=6).contains(&delay), "{delay}");
    assert_eq!(env.calls_of("sync_devices"), 2);

    env.hs.set_unavailable(false);
    env.hs.clear_calls();
    assert_eq!(env.run(again.next_attempt_at).await, 1);
    assert_eq!(env.event(id).await.state, EventState::Applied);
    assert!(env.hs.devices(&lp("alice")).is_empty());
    assert_eq!(env.run(again.next_attempt_at + 3600).await, 0);
    assert_eq!(env.hs.calls(), ["sync_devices alice []"]);
}

#[tokio::test]
async fn back_off_doubles_with_jitter_up_to_the_cap() {
    let env = env_with("[events]\nretry_initial_seconds = 10\nretry_max_seconds = 100").await;
    for _ in 0..50 {
        for (attempts, low, high) in [
            (1, 10, 15),
            (2, 20, 30),
            (3, 40, 60),
            (4, 80, 100),
            (5, 100, 100),
            (60, 100, 100),
        ] {
            let delay = env.app.events.retry_delay(attempts);
            assert!(
                (low..=high).contains(&delay),
                "attempt {attempts}: {delay} not in {low}..={high}"
            );
        }
    }
}

#[tokio::test]
async fn an_event_still_failing_at_the_maximum_age_is_dead_and_retry_brings_it_back() {
    let env = env_with("[events]\nmax_age_seconds = 60\nretry_initial_seconds = 50").await;
    env.user("sub-alice", "alice").await;
    env.hs.set_unavailable(true);
    let id = env
        .accept(
            "e1",
            t0(),
            IdpEvent::UserLocked {
                subject: subject("sub-alice"),
            },
        )
        .await;
    let queued = env.event(id).await.queued_at;
    env.run(queued).await;
    let failed = env.event(id).await;
    assert_eq!(failed.state, EventState::Failed);
    // The last attempt is at the maximum age, not after it.
    assert!(failed.next_attempt_at <= queued + 60);
    env.run(queued + 60).await;
    let dead = env.event(id).await;
    assert_eq!(dead.state, EventState::Dead);
    assert!(dead.last_error.unwrap().contains("maximum age"));
    assert_eq!(env.run(queued + 10_000).await, 0, "a dead event stays dead");
    assert!(!env.hs.user(&lp("alice")).unwrap().locked);

    // The operator retries it once the homeserver is back: a full window again.
    env.hs.set_unavailable(false);
    let now = queued + 20_000;
    assert!(env.app.store.retry_event(id, now).await.unwrap());
    assert_eq!(env.event(id).await.state, EventState::Pending);
    assert_eq!(env.run(now).await, 1);
    assert_eq!(env.event(id).await.state, EventState::Applied);
    assert!(env.hs.user(&lp("alice")).unwrap().locked);
    // An applied event is not "retried" (that is what replay is for).
    assert!(!env.app.store.retry_event(id, now).await.unwrap());
    assert!(!env.app.store.retry_event(9_999, now).await.unwrap());
}

#[tokio::test]
async fn a_refusal_that_will_not_change_is_dead_at_once_and_retry_all_dead_requeues_them() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.user("sub-bob", "bob").await;
    // Known to mxidp but missing in the homeserver: reactivation is refused (404), not retried.
    env.hs.insert_user(lp("alice"), Default::default());
    let alice = env
        .accept(
            "e1",
            t0(),
            IdpEvent::UserReactivated {
                subject: subject("sub-alice"),
            },
        )
        .await;
    env.app
        .store
        .add_identity(&Identity {
            provider: env.app.mapping.upstream_id.clone(),
            subject: "sub-carol".into(),
            localpart: lp("carol"),
            created_at: t0(),
            deleted_at: None,
        })
        .await
        .unwrap();
    let carol = env
        .accept(
            "e2",
            t0(),
            IdpEvent::UserReactivated {
                subject: subject("sub-carol"),
            },
        )
        .await;
    env.run(t0()).await;
    assert_eq!(env.event(alice).await.state, EventState::Applied);
    let dead = env.event(carol).await;
    assert_eq!((dead.state, dead.attempts), (EventState::Dead, 1));
    assert!(dead.last_error.unwrap().contains("reactivate_user"));
    let listed = env
        .app
        .store
        .list_events(Some(EventState::Dead), 100)
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|e| e.id).collect::<Vec<_>>(), [carol]);

    env.hs
        .provision_user(&ProvisionRequest::new(lp("carol")))
        .await
        .unwrap();
    assert_eq!(env.app.store.retry_dead_events(t0() + 5).await.unwrap(), 1);
    env.run(t0() + 5).await;
    assert_eq!(env.event(carol).await.state, EventState::Applied);
}

#[tokio::test]
async fn replay_is_idempotent_and_still_respects_the_order_of_status_events() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    let deactivated = env
        .accept(
            "deactivated",
            t0(),
            IdpEvent::UserDeactivated {
                subject: subject("sub-alice"),
                erase: false,
            },
        )
        .await;
    env.run(t0()).await;
    let reactivated = env
        .accept(
            "reactivated",
            t0() + 100,
            IdpEvent::UserReactivated {
                subject: subject("sub-alice"),
            },
        )
        .await;
    env.run(t0() + 100).await;
    env.accept(
        "ended",
        t0() + 150,
        IdpEvent::AllSessionsEnded {
            subject: subject("sub-alice"),
        },
    )
    .await;
    env.run(t0() + 150).await;
    assert!(!env.hs.user(&lp("alice")).unwrap().deactivated);

    for round in 0..2 {
        env.hs.clear_calls();
        let requeued = env
            .app
            .store
            .replay_events_since(0, t0() + 1000 + round)
            .await
            .unwrap();
        assert_eq!(requeued, if round == 0 { 3 } else { 2 });
        env.run(t0() + 1000 + round).await;
        // The old deactivation is superseded by the reactivation: replaying it must not
        // deactivate the user, not even for a moment.
        assert_eq!(env.calls_of("delete_user"), 0, "{:?}", env.hs.calls());
        assert_eq!(
            env.hs.calls(),
            ["reactivate_user alice", "sync_devices alice []"]
        );
        assert!(!env.hs.user(&lp("alice")).unwrap().deactivated);
        assert_eq!(env.event(deactivated).await.state, EventState::Ignored);
        assert_eq!(env.event(reactivated).await.state, EventState::Applied);
    }
    // Only events received since T are replayed.
    assert_eq!(
        env.app
            .store
            .replay_events_since(crate::ids::now_unix() + 3600, t0() + 5000)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_thousand_events_while_the_homeserver_is_down_all_apply_once_after_it_returns() {
    const USERS: usize = 500;
    let env = env().await;
    for i in 0..USERS {
        let (sub, name) = (format!("sub-{i}"), format!("user{i}"));
        env.user(&sub, &name).await;
        env.session(
            &sub,
            &name,
            &format!("DEVICE{i:06}"),
            Some(&format!("sid-{i}")),
        )
        .await;
    }
    env.hs.set_unavailable(true);
    env.hs.clear_calls();
    let mut ids = Vec::new();
    for i in 0..USERS {
        let sub = format!("sub-{i}");
        let t = t0() + i as i64;
        ids.push(
            env.accept(
                &format!("ended-{i}"),
                t,
                IdpEvent::SessionEnded {
                    sid: format!("sid-{i}"),
                },
            )
            .await,
        );
        ids.push(
            env.accept(
                &format!("locked-{i}"),
                t,
                IdpEvent::UserLocked { subject: sub },
            )
            .await,
        );
    }
    assert_eq!(ids.len(), 1000);

    // Two rounds while down: every event fails and is kept; after the first transient failure
    // of a round the homeserver is not called again in that round.
    let mut now = t0() + 10_000;
    for _ in 0..2 {
        assert_eq!(env.run(now).await, 1000);
        assert_eq!(env.hs.calls().len(), 1, "{:?}", &env.hs.calls()[..3]);
        env.hs.clear_calls();
        for id in &ids {
            assert_eq!(env.event(*id).await.state, EventState::Failed);
        }
        now += 3600;
    }
    // Sessions ended in mxidp right away.
    assert_eq!(env.session_state("DEVICE000007").await, SessionState::Ended);

    env.hs.set_unavailable(false);
    assert_eq!(env.run(now).await, 1000);
    for id in &ids {
        assert_eq!(env.event(*id).await.state, EventState::Applied);
    }
    // Per user: sync_devices for the logout, provision_user + sync_devices for the lock.
    assert_eq!(env.calls_of("sync_devices"), 2 * USERS);
    assert_eq!(env.calls_of("provision_user"), USERS);
    assert_eq!(env.hs.calls().len(), 3 * USERS);
    for i in 0..USERS {
        let name = lp(&format!("user{i}"));
        assert!(env.hs.user(&name).unwrap().locked);
        assert!(env.hs.devices(&name).is_empty());
    }
    env.hs.clear_calls();
    assert_eq!(env.run(now + 86_400).await, 0);
    assert!(env.hs.calls().is_empty(), "nothing is applied twice");
}

#[tokio::test]
async fn the_worker_applies_an_event_as_soon_as_it_is_accepted_and_picks_up_earlier_ones() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.user("sub-bob", "bob").await;
    // Accepted before the worker started (as before a crash): picked up at start.
    env.accept(
        "e1",
        crate::ids::now_unix(),
        IdpEvent::UserLocked {
            subject: subject("sub-alice"),
        },
    )
    .await;
    let worker = spawn_worker(env.app.clone());
    let wait_for = |name: &'static str| {
        let hs = env.hs.clone();
        async move {
            for _ in 0..200 {
                if hs.user(&lp(name)).unwrap().locked {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("{name} was not locked by the worker");
        }
    };
    wait_for("alice").await;
    // Woken by accept, well before the poll interval.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    env.accept(
        "e2",
        crate::ids::now_unix(),
        IdpEvent::UserLocked {
            subject: subject("sub-bob"),
        },
    )
    .await;
    wait_for("bob").await;
    worker.abort();
}

#[tokio::test]
async fn event_states_parse_for_the_cli() {
    for state in [
        EventState::Pending,
        EventState::Failed,
        EventState::Applied,
        EventState::Ignored,
        EventState::Dead,
    ] {
        assert_eq!(EventState::parse(state.as_str()), Some(state));
    }
    assert_eq!(EventState::parse("lost"), None);
}

#[tokio::test]
async fn a_session_found_dead_by_reconciliation_ends_alone_and_once() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    let dead = env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    let alive = env.session("sub-alice", "alice", "DEVICEBBBB", None).await;
    env.hs.clear_calls();
    let event = IdpEvent::MxidpSessionEnded {
        session_id: "session-DEVICEAAAA".into(),
    };
    let id = env
        .accept("reconcile:session-DEVICEAAAA", t0(), event.clone())
        .await;
    assert_eq!(env.run(t0()).await, 1);
    assert_eq!(env.event(id).await.state, EventState::Applied);
    assert_eq!(env.session_state("DEVICEAAAA").await, SessionState::Ended);
    assert_eq!(env.session_state("DEVICEBBBB").await, SessionState::Active);
    assert_eq!(env.hs.calls(), ["sync_devices alice [DEVICEBBBB]"]);
    assert_eq!(env.app.cache.lookup(&dead), Lookup::NotActive);
    assert!(matches!(env.app.cache.lookup(&alive), Lookup::Active(_)));
    let unknown = env
        .accept(
            "reconcile:nope",
            t0(),
            IdpEvent::MxidpSessionEnded {
                session_id: "no-such-session".into(),
            },
        )
        .await;
    env.run(t0()).await;
    assert_eq!(env.event(unknown).await.state, EventState::Ignored);
}

/// An IdP with a user API: `user_status` answers from a table; a missing subject is an outage.
struct UserApi(std::sync::Mutex<std::collections::HashMap<String, crate::provider::UserStatus>>);

#[async_trait::async_trait]
impl crate::provider::Provider for UserApi {
    async fn user_status(
        &self,
        subject: &str,
    ) -> Result<crate::provider::UserStatus, crate::upstream::UpstreamError> {
        self.0
            .lock()
            .unwrap()
            .get(subject)
            .copied()
            .ok_or_else(|| crate::upstream::UpstreamError::Protocol("unreachable".into()))
    }
}

#[tokio::test]
async fn user_changed_is_resolved_by_asking_the_idp_in_the_worker() {
    use crate::provider::UserStatus;
    let api = Arc::new(UserApi(Default::default()));
    let env = env_with_provider("", api.clone()).await;
    env.user("sub-ann", "ann").await;
    env.session("sub-ann", "ann", "DEVICEANN1", None).await;

    // The IdP cannot be asked: the event waits, nothing is done on the delivery's word alone.
    let id = env
        .accept(
            "changed-1",
            t0(),
            IdpEvent::UserChanged {
                subject: subject("sub-ann"),
                enabled: Some(true),
            },
        )
        .await;
    env.run(t0()).await;
    assert_eq!(env.event(id).await.state, EventState::Failed);
    assert_eq!(env.session_state("DEVICEANN1").await, SessionState::Active);

    // The IdP says disabled, whatever the delivery claimed: locked and signed out.
    api.0
        .lock()
        .unwrap()
        .insert("sub-ann".into(), UserStatus::Disabled);
    env.run(t0() + 3600).await;
    assert_eq!(env.event(id).await.state, EventState::Applied);
    assert!(env.hs.user(&lp("ann")).unwrap().locked);
    assert_eq!(env.session_state("DEVICEANN1").await, SessionState::Ended);

    // The IdP cannot say (no user API for this user): the delivery's `enabled` decides, and
    // without one nothing is done.
    api.0
        .lock()
        .unwrap()
        .insert("sub-ann".into(), UserStatus::Unknown);
    let unlock = env
        .accept(
            "changed-2",
            t0() + 10,
            IdpEvent::UserChanged {
                subject: subject("sub-ann"),
                enabled: Some(true),
            },
        )
        .await;
    env.run(t0() + 3600).await;
    assert_eq!(env.event(unlock).await.state, EventState::Applied);
    assert!(!env.hs.user(&lp("ann")).unwrap().locked);
    let silent = env
        .accept(
            "changed-3",
            t0() + 20,
            IdpEvent::UserChanged {
                subject: subject("sub-ann"),
                enabled: None,
            },
        )
        .await;
    env.run(t0() + 3600).await;
    assert_eq!(env.event(silent).await.state, EventState::Ignored);
}

#[tokio::test]
async fn an_attempt_cut_short_by_a_crash_is_retried_and_audited_as_a_retry() {
    let env = env().await;
    env.user("sub-alice", "alice").await;
    env.session("sub-alice", "alice", "DEVICEAAAA", None).await;
    let id = env
        .accept(
            "e1",
            t0(),
            IdpEvent::AllSessionsEnded {
                subject: subject("sub-alice"),
            },
        )
        .await;
    // What a kill -9 in the middle of the first attempt leaves: the attempt counted as
    // started, no outcome recorded, the event still pending.
    assert_eq!(env.app.store.begin_attempt(id).await.unwrap(), 1);
    assert_eq!(env.event(id).await.state, EventState::Pending);

    env.run(t0()).await;
    assert_eq!(env.event(id).await.state, EventState::Applied);
    let records = env.app.store.audit_records(0, None, 100).await.unwrap();
    let of_event: Vec<_> = records
        .iter()
        .filter(|r| r.correlation_id == id.to_string())
        .collect();
    let count = |action: &str| of_event.iter().filter(|r| r.action == action).count();
    assert_eq!(count("event.received"), 1);
    assert_eq!(count("event.applied"), 1);
    let applied = of_event
        .iter()
        .find(|r| r.action == "event.applied")
        .unwrap();
    let details: serde_json::Value = serde_json::from_str(&applied.details).unwrap();
    assert_eq!(details["attempt"], 2);
    assert_eq!(details["after_interrupted_attempt"], true);
    // The actions the retry repeated say so too.
    assert!(of_event
        .iter()
        .filter(|r| r.action.starts_with("homeserver."))
        .all(|r| r.details.contains("\"attempt\":2")));
}

#[tokio::test]
async fn an_event_and_its_received_record_are_written_together() {
    let env = env().await;
    let id = env
        .accept(
            "e1",
            t0(),
            IdpEvent::UserLocked {
                subject: subject("sub-x"),
            },
        )
        .await;
    // The same delivery again: stored once, its duplicate recorded once.
    for _ in 0..3 {
        env.app
            .events
            .accept(
                "test",
                crate::events::ReceivedEvent {
                    dedupe_key: "e1".into(),
                    occurred_at: t0(),
                    event: IdpEvent::UserLocked {
                        subject: subject("sub-x"),
                    },
                },
            )
            .await
            .unwrap();
    }
    let records = env.app.store.audit_records(0, None, 100).await.unwrap();
    let received: Vec<_> = records
        .iter()
        .filter(|r| r.action == "event.received")
        .collect();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].correlation_id, id.to_string());
    assert_eq!(received[0].outcome, "ok");
    assert_eq!(received[1].outcome, "ignored: duplicate");
    assert!(crate::audit::verify(env.app.store.as_ref())
        .await
        .unwrap()
        .is_ok());
}
