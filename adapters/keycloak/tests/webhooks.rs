//! Webhook parsing over the real fixtures (tests/fixtures/*.source.txt): sender verification on
//! the raw bytes, and every Keycloak event Matrix cares about turned into its normalised event.
//! No real `access.LOGOUT` / `admin.USER-*` body has been published (none found in public sources; see docs/providers.md, Keycloak):
//! those are the real `access.LOGIN` body with `type` and the fields Phase Two's
//! `ExtendedAdminEvent` documents changed.

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use mxidp_core::events::{IdpEvent, ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::provider::Provider;
use mxidp_core::secret::SecretString;
use mxidp_keycloak::events::{sign, SIGNATURE_HEADER};
use mxidp_keycloak::{Keycloak, WebhookAuth};
use serde_json::{json, Value};

const SECRET: &str = "ofj09saP4-webhook-secret";
const LOGIN: &str = include_str!("fixtures/phasetwo-webhook-access-LOGIN.json");
const CLIENT_CREATE: &str = include_str!("fixtures/phasetwo-webhook-admin-CLIENT-CREATE.json.txt");
const REGISTER: &str = include_str!("fixtures/http-listener-REGISTER-event.json");
const USER: &str = "f7cd3491-7c6c-480c-bc5c-b2b3b0fb048c";

fn keycloak() -> Keycloak {
    Keycloak::new().with_webhook(WebhookAuth {
        hmac: Some(SecretString::new(SECRET)),
        basic: Some(("keycloak".into(), SecretString::new("listener-password"))),
    })
}

fn signed(body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sign(SECRET, body)).unwrap(),
    );
    headers
}

fn basic(user: &str, password: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Basic {value}")).unwrap(),
    );
    headers
}

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Vec<ReceivedEvent>, WebhookError> {
    keycloak().parse_webhook(&WebhookRequest { headers, body })
}

/// The real LOGIN body as another access event.
fn access(kind: &str) -> String {
    let mut v: Value = serde_json::from_str(LOGIN).unwrap();
    v["type"] = json!(kind);
    serde_json::to_string_pretty(&v).unwrap()
}

/// The real body reshaped as an admin event on `users/<USER>` (fields of `ExtendedAdminEvent`).
fn admin(operation: &str, path: &str, representation: Option<&str>) -> String {
    let mut v: Value = serde_json::from_str(LOGIN).unwrap();
    v["type"] = json!(format!("admin.USER-{operation}"));
    v["id"] = json!(format!("evt-{operation}-{path}"));
    v["resourceType"] = json!("USER");
    v["operationType"] = json!(operation);
    v["resourcePath"] = json!(path);
    v["authDetails"]["userId"] = json!("admin-user-id");
    v["authDetails"]["username"] = json!("admin");
    if let Some(r) = representation {
        v["representation"] = json!(r);
    }
    serde_json::to_string(&v).unwrap()
}

fn one(body: &str) -> ReceivedEvent {
    let mut events = parse(&signed(body.as_bytes()), body.as_bytes()).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

#[test]
fn the_real_phase_two_login_body_verifies_and_is_ignored() {
    assert_eq!(
        parse(&signed(LOGIN.as_bytes()), LOGIN.as_bytes()),
        Ok(vec![])
    );
}

#[test]
fn the_signature_is_checked_on_the_raw_bytes() {
    let body = access("access.LOGOUT");
    // A wrong secret, a truncated signature, no signature.
    let mut wrong = HeaderMap::new();
    wrong.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sign("another-secret", body.as_bytes())).unwrap(),
    );
    assert_eq!(
        parse(&wrong, body.as_bytes()),
        Err(WebhookError::Unauthenticated)
    );
    let mut short = HeaderMap::new();
    short.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sign(SECRET, body.as_bytes())[..62]).unwrap(),
    );
    assert_eq!(
        parse(&short, body.as_bytes()),
        Err(WebhookError::Unauthenticated)
    );
    assert_eq!(
        parse(&HeaderMap::new(), body.as_bytes()),
        Err(WebhookError::Unauthenticated)
    );
    // The same JSON re-serialised (other bytes) does not carry the signature of the original.
    let compact = serde_json::to_string(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    assert_ne!(compact, body);
    assert_eq!(
        parse(&signed(body.as_bytes()), compact.as_bytes()),
        Err(WebhookError::Unauthenticated)
    );
    // Upper-case hex is the same signature.
    let mut upper = HeaderMap::new();
    upper.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&sign(SECRET, body.as_bytes()).to_uppercase()).unwrap(),
    );
    assert!(parse(&upper, body.as_bytes()).is_ok());
}

#[test]
fn logout_ends_the_sso_session_or_every_session() {
    let e = one(&access("access.LOGOUT"));
    assert_eq!(
        e.event,
        IdpEvent::SessionEnded {
            sid: "70c446c9-ed9a-4c9e-9a72-d26363bb4000".into()
        }
    );
    // Keycloak's `time` is milliseconds; the pipeline orders on seconds.
    assert_eq!(e.occurred_at, 1_588_363_619);
    // Phase Two's per-send `uid` when the event has no `id`.
    assert_eq!(e.dedupe_key, "8d76de08-1c12-4d9a-bb86-fd1c602b2486");

    let mut v: Value = serde_json::from_str(&access("access.LOGOUT")).unwrap();
    v["authDetails"]
        .as_object_mut()
        .unwrap()
        .remove("sessionId");
    v["id"] = json!("event-id-1");
    let e = one(&v.to_string());
    assert_eq!(
        e.event,
        IdpEvent::AllSessionsEnded {
            subject: USER.into()
        }
    );
    assert_eq!(e.dedupe_key, "event-id-1");
}

#[test]
fn account_deletion_and_credential_changes() {
    assert_eq!(
        one(&access("access.DELETE_ACCOUNT")).event,
        IdpEvent::UserDeleted {
            subject: USER.into()
        }
    );
    for kind in ["access.UPDATE_PASSWORD", "access.UPDATE_CREDENTIAL"] {
        assert_eq!(
            one(&access(kind)).event,
            IdpEvent::CredentialChanged {
                subject: USER.into()
            }
        );
    }
    assert_eq!(
        one(&access("access.USER_DISABLED_BY_PERMANENT_LOCKOUT")).event,
        IdpEvent::UserLocked {
            subject: USER.into()
        }
    );
    // A failed operation changed nothing.
    let mut v: Value = serde_json::from_str(&access("access.DELETE_ACCOUNT")).unwrap();
    v["error"] = json!("user_not_found");
    let body = v.to_string();
    assert_eq!(parse(&signed(body.as_bytes()), body.as_bytes()), Ok(vec![]));
}

#[test]
fn admin_user_events_act_on_the_user_in_the_resource_path() {
    let target = "0b8f7a16-2d2c-4d67-8b5b-3f2f0d6c1a11";
    let path = format!("users/{target}");
    let deleted = one(&admin("DELETE", &path, None));
    // The user in the path, not the admin in authDetails.
    assert_eq!(
        deleted.event,
        IdpEvent::UserDeleted {
            subject: target.into()
        }
    );
    assert_eq!(deleted.dedupe_key, format!("evt-DELETE-{path}"));

    // The representation is a JSON string, possibly partial.
    let disabled = one(&admin(
        "UPDATE",
        &path,
        Some(r#"{"enabled":false,"username":"jdoe"}"#),
    ));
    assert_eq!(
        disabled.event,
        IdpEvent::UserLocked {
            subject: target.into()
        }
    );
    assert_eq!(
        one(&admin("UPDATE", &path, Some(r#"{"enabled":true}"#))).event,
        IdpEvent::UserUnlocked {
            subject: target.into()
        }
    );
    // Nothing said about `enabled` (or no representation at all): nothing to act on without the
    // admin API.
    for rep in [Some(r#"{"email":"new@example.org"}"#), None] {
        let body = admin("UPDATE", &path, rep);
        assert_eq!(parse(&signed(body.as_bytes()), body.as_bytes()), Ok(vec![]));
    }
    assert_eq!(
        one(&admin("ACTION", &format!("{path}/logout"), None)).event,
        IdpEvent::AllSessionsEnded {
            subject: target.into()
        }
    );
    assert_eq!(
        one(&admin("ACTION", &format!("{path}/reset-password"), None)).event,
        IdpEvent::CredentialChanged {
            subject: target.into()
        }
    );
    // Group membership and role mapping changes are not a status change.
    let body = admin("UPDATE", &format!("{path}/groups/abc"), None);
    assert_eq!(parse(&signed(body.as_bytes()), body.as_bytes()), Ok(vec![]));
}

#[test]
fn the_published_admin_example_is_refused_as_malformed() {
    // The Phase Two docs example lacks a comma (kept verbatim): not JSON.
    assert!(matches!(
        parse(&signed(CLIENT_CREATE.as_bytes()), CLIENT_CREATE.as_bytes()),
        Err(WebhookError::Malformed(_))
    ));
    // Repaired, it is a client event: nothing for Matrix.
    let repaired = CLIENT_CREATE.replace(
        "\"type\":\"admin.CLIENT-CREATE\"\n",
        "\"type\":\"admin.CLIENT-CREATE\",\n",
    );
    assert_eq!(
        parse(&signed(repaired.as_bytes()), repaired.as_bytes()),
        Ok(vec![])
    );
}

#[test]
fn plain_event_representations_with_http_basic() {
    let auth = basic("keycloak", "listener-password");
    // The real REGISTER event: verified, nothing for Matrix.
    assert_eq!(parse(&auth, REGISTER.as_bytes()), Ok(vec![]));
    // The same listener's shape for a logout (EventRepresentation: ids at the top level) and
    // its deduplication by the body's hash when the event has no id.
    let mut v: Value = serde_json::from_str(REGISTER).unwrap();
    v["type"] = json!("LOGOUT");
    v["sessionId"] = json!("sso-session-1");
    v["time"] = json!(1_700_000_000_123_i64);
    let body = v.to_string();
    let events = parse(&auth, body.as_bytes()).unwrap();
    assert_eq!(
        events[0].event,
        IdpEvent::SessionEnded {
            sid: "sso-session-1".into()
        }
    );
    assert_eq!(events[0].occurred_at, 1_700_000_000);
    assert!(events[0].dedupe_key.starts_with("sha256:"));
    assert_eq!(
        parse(&auth, body.as_bytes()).unwrap()[0].dedupe_key,
        events[0].dedupe_key
    );

    // AdminEventRepresentation (no `type`) and vymalo's `USER-DELETE` spelling.
    let plain_admin = json!({
        "time": 1_700_000_001_000_i64, "realmId": "r", "operationType": "DELETE",
        "resourceType": "USER", "resourcePath": "users/u-1",
        "authDetails": {"realmId": "r", "clientId": "c", "userId": "admin", "ipAddress": "x"}
    })
    .to_string();
    assert_eq!(
        parse(&auth, plain_admin.as_bytes()).unwrap()[0].event,
        IdpEvent::UserDeleted {
            subject: "u-1".into()
        }
    );
    let vymalo = json!({"type": "USER-DELETE", "id": "e-9", "time": 1_700_000_002_000_i64,
        "resourcePath": "users/u-2", "userId": "admin"})
    .to_string();
    assert_eq!(
        parse(&auth, vymalo.as_bytes()).unwrap()[0].event,
        IdpEvent::UserDeleted {
            subject: "u-2".into()
        }
    );

    // Wrong password, wrong user, not Basic.
    for headers in [
        basic("keycloak", "wrong"),
        basic("other", "listener-password"),
        {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_static("Bearer x"));
            h
        },
    ] {
        assert_eq!(
            parse(&headers, REGISTER.as_bytes()),
            Err(WebhookError::Unauthenticated)
        );
    }
}

#[test]
fn without_credentials_the_webhook_is_off() {
    let body = access("access.LOGOUT");
    assert_eq!(
        Keycloak::new().parse_webhook(&WebhookRequest {
            headers: &signed(body.as_bytes()),
            body: body.as_bytes()
        }),
        Err(WebhookError::Unsupported)
    );
}
