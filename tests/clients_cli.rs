//! `mxidp clients list | delete` on a real database file, as an operator runs them.

use mxidp_core::events::{EventStore, IdpEvent};
use mxidp_core::ids::{DeviceId, Localpart};
use mxidp_core::store::{RegisteredClient, Session, SessionState, SqliteStore, Store};
use serde_json::json;

mod support;

fn clients(db: &str, args: &[&str]) -> (bool, String, String) {
    support::cli::mxidp("clients", db, args)
}

#[tokio::test]
async fn list_and_delete_a_client_whose_sessions_end_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("mxidp.db").display());
    let store = SqliteStore::open(&db).await.unwrap();
    for (id, name) in [("client-a", "Element"), ("client-b", "Spam Bot")] {
        store
            .add_client(&RegisteredClient {
                client_id: id.into(),
                metadata: serde_json::from_value(json!({
                    "redirect_uris": ["https://app.example.org/cb"],
                    "client_uri": "https://app.example.org/", "client_name": name,
                    "logo_uri": null, "tos_uri": null, "policy_uri": null,
                    "application_type": "web", "grant_types": ["authorization_code"],
                }))
                .unwrap(),
                created_at: 1_700_000_000,
            })
            .await
            .unwrap();
    }
    store
        .add_session(
            &Session {
                id: "session-b".into(),
                provider: "idp".into(),
                subject: "sub".into(),
                localpart: Localpart::parse("alice").unwrap(),
                device_id: DeviceId::parse("DEVICEBBBB").unwrap(),
                client_id: "client-b".into(),
                idp_sid: None,
                scope: "openid".into(),
                admin: false,
                state: SessionState::Active,
                sealed_refresh_token: None,
                sealed_access_token: None,
                created_at: 1_700_000_000,
                ended_at: None,
                end_reason: None,
            },
            &[],
        )
        .await
        .unwrap();

    let (ok, out, err) = clients(&db, &["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("client-a") && out.contains("Element"), "{out}");
    assert!(out.contains("Spam Bot"), "{out}");

    let (ok, out, err) = clients(&db, &["delete", "client-b"]);
    assert!(ok, "{err}");
    assert!(out.contains("1 active session(s) queued"), "{out}");
    let remaining = store.clients(10).await.unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].0.client_id, "client-a");
    let events = store.list_events(None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, "client_deleted");
    assert_eq!(
        events[0].event,
        IdpEvent::MxidpSessionEnded {
            session_id: "session-b".into()
        }
    );

    let (ok, _, err) = clients(&db, &["delete", "no-such-client"]);
    assert!(!ok);
    assert!(err.contains("no client no-such-client"), "{err}");
}
