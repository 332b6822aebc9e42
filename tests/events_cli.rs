//! `mxidp events list | retry | replay` on a real database file, as an operator runs them.

use mxidp_core::audit::AuditEntry;
use mxidp_core::events::{EventState, EventStore, IdpEvent};
use mxidp_core::store::SqliteStore;

mod support;

fn events(db: &str, args: &[&str]) -> (bool, String, String) {
    support::cli::mxidp("events", db, args)
}

#[tokio::test]
async fn list_retry_and_replay_work_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mxidp.db").display());
    let store = SqliteStore::open(&db).await.unwrap();
    let insert = |key: &'static str, event: IdpEvent| {
        let store = &store;
        async move {
            store
                .insert_event(
                    "ssf",
                    key,
                    1_700_000_000,
                    &event,
                    1_700_000_100,
                    &AuditEntry::for_test("event.received"),
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
    let dead = insert(
        "jti-dead",
        IdpEvent::UserLocked {
            subject: "sub-dead".into(),
        },
    )
    .await;
    store
        .mark_event_dead(
            dead,
            "delete_user: the homeserver rejected it",
            1_700_000_200,
            &AuditEntry::for_test("event.dead"),
        )
        .await
        .unwrap();
    let applied = insert(
        "jti-applied",
        IdpEvent::SessionEnded {
            sid: "sid-applied".into(),
        },
    )
    .await;
    store
        .mark_event_applied(
            applied,
            false,
            1_700_000_200,
            &AuditEntry::for_test("event.applied"),
        )
        .await
        .unwrap();
    insert(
        "jti-pending",
        IdpEvent::UserDeleted {
            subject: "sub-pending".into(),
        },
    )
    .await;
    drop(store);

    let (ok, out, err) = events(&db, &["list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("LAST ERROR"));
    // Newest first, with readable times and the last error.
    assert!(lines[1].contains("pending") && lines[1].contains("sub-pending"));
    assert!(lines[2].contains("applied") && lines[2].contains("sid:sid-applied"));
    assert!(lines[3].starts_with(&dead.to_string()));
    for cell in [
        "dead",
        "ssf",
        "user_locked",
        "sub-dead",
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:15:00Z",
        "delete_user: the homeserver rejected it",
    ] {
        assert!(lines[3].contains(cell), "{cell} missing in {}", lines[3]);
    }

    let (ok, out, _) = events(&db, &["list", "--state", "dead"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, _, err) = events(&db, &["list", "--state", "lost"]);
    assert!(!ok);
    assert!(err.contains("pending, failed, dead"), "{err}");

    let (ok, out, err) = events(&db, &["retry", "--all-dead"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("1 event(s)"), "{out}");
    let (ok, out, _) = events(&db, &["list", "--state", "dead"]);
    assert!(ok);
    assert!(out.contains("(no events)"), "{out}");
    let (ok, _, err) = events(&db, &["retry", &applied.to_string()]);
    assert!(!ok, "an applied event is replayed, not retried");
    assert!(err.contains("replay"), "{err}");
    let (ok, _, _) = events(&db, &["retry", "99999"]);
    assert!(!ok);
    let (ok, _, _) = events(&db, &["retry"]);
    assert!(!ok, "an id or --all-dead is required");

    // Received at 22:15:00: a later `since` leaves it alone.
    let (ok, out, _) = events(&db, &["replay", "--since", "2023-11-14T22:15:01Z"]);
    assert!(ok);
    assert!(out.starts_with("0 "), "{out}");
    let (ok, out, err) = events(&db, &["replay", "--since", "2023-11-14T23:15:00+01:00"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("1 "), "{out}");
    let (ok, _, err) = events(&db, &["replay", "--since", "yesterday"]);
    assert!(!ok);
    assert!(err.contains("RFC 3339"), "{err}");

    let store = SqliteStore::open(&db).await.unwrap();
    for id in [dead, applied] {
        assert_eq!(
            store.event(id).await.unwrap().unwrap().state,
            EventState::Pending
        );
    }
}
