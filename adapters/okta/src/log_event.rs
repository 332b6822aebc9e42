//! One Okta `LogEvent` → a normalised event. Event Hook deliveries carry System Log events
//! (`data.events[]`), so the hook and the System Log poller share this normaliser, and both key
//! an event on its `uuid`: an event seen by both paths is stored once.
//!
//! Where the affected user sits depends on the event type: `user.session.end` names the user as
//! the `actor` with `target: null`; lifecycle events name the admin (or Okta) as the actor and
//! the user in `target[]` with `type: "User"`. Lifecycle events take the user from `target[]`
//! only (the actor there is never the one affected); the others prefer a `User` target and fall
//! back to a `User` actor, so an admin's "Clear sessions" or "Unlock" acts on the user, never on
//! the admin.

use mxidp_core::events::{IdpEvent, ReceivedEvent};
use serde_json::Value;

/// The event types that matter for Matrix, for the System Log filter and the Event Hook's
/// subscription (all of them hook-eligible).
pub const EVENT_TYPES: &[&str] = &[
    "user.session.end",
    "user.session.clear",
    "user.authentication.universal_logout",
    "user.lifecycle.deactivate",
    "user.lifecycle.reactivate",
    "user.lifecycle.suspend",
    "user.lifecycle.unsuspend",
    "user.lifecycle.delete.initiated",
    "user.account.lock",
    "user.account.unlock",
    "user.account.unlock_by_admin",
    "user.account.reset_password",
    "user.account.update_password",
];

/// Why an event could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Where the event names the user it is about.
enum UserAt {
    /// `target[]` of type `User` only.
    Target,
    /// A `User` target, else a `User` actor.
    TargetOrActor,
}

/// The normalised event for one `LogEvent`; `Ok(None)` for an event that asks nothing of
/// Matrix (another type, or an operation that failed at Okta).
pub fn normalise(event: &Value) -> Result<Option<ReceivedEvent>, Malformed> {
    let uuid = text(event.get("uuid")).ok_or_else(|| Malformed("no `uuid`".into()))?;
    let kind = text(event.get("eventType")).ok_or_else(|| Malformed("no `eventType`".into()))?;
    let Some((user_at, make)) = mapping(kind) else {
        return Ok(None);
    };
    // A failed deactivation or password change changed nothing at Okta.
    if let Some(result) = event.pointer("/outcome/result").and_then(Value::as_str) {
        if result != "SUCCESS" {
            return Ok(None);
        }
    }
    let published =
        text(event.get("published")).ok_or_else(|| Malformed(format!("{uuid}: no `published`")))?;
    let occurred_at = mxidp_core::audit::parse_time(published)
        .map_err(|e| Malformed(format!("{uuid}: `published`: {e}")))?;
    let subject =
        user(event, user_at).ok_or_else(|| Malformed(format!("{uuid}: {kind} names no user")))?;
    if !is_okta_id(subject) {
        return Err(Malformed(format!("{uuid}: the user id is not an Okta id")));
    }
    Ok(Some(ReceivedEvent {
        dedupe_key: uuid.to_owned(),
        occurred_at,
        event: make(subject.to_owned()),
    }))
}

type Make = fn(String) -> IdpEvent;

fn mapping(kind: &str) -> Option<(UserAt, Make)> {
    use UserAt::*;
    Some(match kind {
        "user.session.end" | "user.session.clear" | "user.authentication.universal_logout" => {
            (TargetOrActor, |subject| IdpEvent::AllSessionsEnded {
                subject,
            })
        }
        "user.lifecycle.deactivate" => (Target, |subject| IdpEvent::UserDeactivated {
            subject,
            erase: false,
        }),
        "user.lifecycle.reactivate" => (Target, |subject| IdpEvent::UserReactivated { subject }),
        "user.lifecycle.suspend" => (Target, |subject| IdpEvent::UserLocked { subject }),
        "user.lifecycle.unsuspend" => (Target, |subject| IdpEvent::UserUnlocked { subject }),
        "user.lifecycle.delete.initiated" => (Target, |subject| IdpEvent::UserDeleted { subject }),
        "user.account.lock" => (TargetOrActor, |subject| IdpEvent::UserLocked { subject }),
        "user.account.unlock" | "user.account.unlock_by_admin" => {
            (TargetOrActor, |subject| IdpEvent::UserUnlocked { subject })
        }
        "user.account.reset_password" | "user.account.update_password" => {
            (TargetOrActor, |subject| IdpEvent::CredentialChanged {
                subject,
            })
        }
        _ => return None,
    })
}

fn user_id(v: &Value) -> Option<&str> {
    (v.get("type").and_then(Value::as_str) == Some("User"))
        .then(|| text(v.get("id")))
        .flatten()
}

fn user(event: &Value, at: UserAt) -> Option<&str> {
    let target = event
        .get("target")
        .and_then(Value::as_array)
        .and_then(|targets| targets.iter().find_map(user_id));
    match at {
        UserAt::Target => target,
        UserAt::TargetOrActor => target.or_else(|| event.get("actor").and_then(user_id)),
    }
}

/// Okta object ids are short ASCII alphanumerics (`00u…` for users). Anything else is refused
/// before it reaches the store or a Users API path.
pub fn is_okta_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn text(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture_session_end() -> Value {
        serde_json::from_str(include_str!(
            "../tests/fixtures/system_log_event_user.session.end.json"
        ))
        .unwrap()
    }

    #[test]
    fn a_session_end_names_the_user_as_the_actor() {
        let received = normalise(&fixture_session_end()).unwrap().unwrap();
        assert_eq!(received.dedupe_key, "faf7398a-4f77-11ea-97fb-5925e98228bd");
        // 2020-02-14T22:18:51.843Z
        assert_eq!(received.occurred_at, 1_581_718_731);
        assert_eq!(
            received.event,
            IdpEvent::AllSessionsEnded {
                subject: "00u1abvz4pYqdM8ms4x6".into()
            }
        );
    }

    /// The lifecycle shape Okta documents: the admin acts, the user is the `User` target.
    fn lifecycle(kind: &str) -> Value {
        let mut event = fixture_session_end();
        event["eventType"] = json!(kind);
        event["actor"] = json!({"id": "00uADMIN0000000000001", "type": "User",
            "alternateId": "admin@example.com", "displayName": "Admin"});
        event["target"] = json!([
            {"id": "0oa1appinstance00001", "type": "AppInstance"},
            {"id": "00u3m90rxKjGQ0G6L1d6", "type": "User", "alternateId": "john.doe@example.com"},
        ]);
        event
    }

    #[test]
    fn lifecycle_events_act_on_the_target_user_never_the_admin() {
        let subject = || "00u3m90rxKjGQ0G6L1d6".to_owned();
        for (kind, expected) in [
            (
                "user.lifecycle.deactivate",
                IdpEvent::UserDeactivated {
                    subject: subject(),
                    erase: false,
                },
            ),
            (
                "user.lifecycle.suspend",
                IdpEvent::UserLocked { subject: subject() },
            ),
            (
                "user.lifecycle.unsuspend",
                IdpEvent::UserUnlocked { subject: subject() },
            ),
            (
                "user.lifecycle.reactivate",
                IdpEvent::UserReactivated { subject: subject() },
            ),
            (
                "user.lifecycle.delete.initiated",
                IdpEvent::UserDeleted { subject: subject() },
            ),
            (
                "user.account.unlock_by_admin",
                IdpEvent::UserUnlocked { subject: subject() },
            ),
            (
                "user.account.reset_password",
                IdpEvent::CredentialChanged { subject: subject() },
            ),
            (
                "user.session.clear",
                IdpEvent::AllSessionsEnded { subject: subject() },
            ),
        ] {
            let received = normalise(&lifecycle(kind)).unwrap().unwrap();
            assert_eq!(received.event, expected, "{kind}");
        }
        // A lifecycle event without a User target is malformed, not an act on the admin.
        let mut no_target = lifecycle("user.lifecycle.deactivate");
        no_target["target"] = Value::Null;
        assert!(normalise(&no_target).is_err());
    }

    #[test]
    fn other_types_and_failed_operations_ask_nothing() {
        let mut start = fixture_session_end();
        start["eventType"] = json!("user.session.start");
        assert_eq!(normalise(&start), Ok(None));
        let mut failed = lifecycle("user.lifecycle.deactivate");
        failed["outcome"]["result"] = json!("FAILURE");
        assert_eq!(normalise(&failed), Ok(None));
    }

    #[test]
    fn only_okta_id_shapes_reach_the_users_api() {
        for good in ["00u1abvz4pYqdM8ms4x6", "00uid4BxXw6I6TV4m0g3"] {
            assert!(is_okta_id(good), "{good}");
        }
        for bad in [
            "",
            "../../groups",
            "%2e%2e",
            "a/b",
            "a?b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_okta_id(bad), "{bad}");
        }
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        let mut no_uuid = fixture_session_end();
        no_uuid.as_object_mut().unwrap().remove("uuid");
        assert!(normalise(&no_uuid).unwrap_err().0.contains("uuid"));
        let mut bad_time = fixture_session_end();
        bad_time["published"] = json!("yesterday");
        assert!(normalise(&bad_time).unwrap_err().0.contains("published"));
        let mut odd_id = fixture_session_end();
        odd_id["actor"]["id"] = json!("../users/00u1");
        assert!(normalise(&odd_id).is_err());
    }
}
