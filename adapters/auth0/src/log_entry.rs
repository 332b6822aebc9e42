//! One Auth0 tenant log entry (`{"log_id": …, "data": {"type": …, "date": …, …}}`) as an event.
//!
//! Auth0 has no event for "an admin blocked a user": the Dashboard and the Management API both
//! `PATCH /api/v2/users/{id}` with `{"blocked": …}`, logged as `sapi` ("Success API
//! Operation") with the admin in `data.user_id` and the target user URL-encoded in
//! `details.request.path`. So `sapi` entries are read by their request, and only a successful
//! one (2xx) counts.
//!
//! | type | event |
//! |---|---|
//! | `slo` (logout) | that session (`details.session_id`, the ID token's `sid`), else all of the user's |
//! | `sdu`, `du` (user deleted) | deleted |
//! | `scp` (password changed) | credential changed |
//! | `sapi` `delete /api/v2/users/{id}` | deleted |
//! | `sapi` `patch /api/v2/users/{id}` with `blocked` | locked / unlocked |
//! | `sapi` `delete /api/v2/users/{id}/sessions` | all of the user's sessions ended |
//! | `sapi` `delete /api/v2/sessions/{id}` | that session ended |
//! | `limit_wc`, `ublkdu`, anything else | audited and ignored |
//!
//! `limit_wc` and `ublkdu` are brute-force protection blocking an IP against an account and its
//! release: the account itself stays usable from elsewhere, so they are not account locks.

use mxidp_core::events::{IdpEvent, ReceivedEvent};
use serde_json::Value;

/// Why an entry could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Auth0 log ids are 56 digits today; anything reasonable is accepted as a dedupe key.
const MAX_ID_BYTES: usize = 128;

/// The entry's `log_id` (top level, else `data.log_id`), when usable as a dedupe key.
pub fn log_id(entry: &Value) -> Option<&str> {
    entry
        .get("log_id")
        .or_else(|| entry.pointer("/data/log_id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES)
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The event of one entry: mapped, or unactionable with the reason it is ignored.
pub fn normalise(entry: &Value) -> Result<ReceivedEvent, Malformed> {
    let log_id = log_id(entry).ok_or_else(|| Malformed("no usable `log_id`".into()))?;
    let data = entry
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| Malformed(format!("{log_id}: no `data` object")))?;
    let kind = text(data, "/type").ok_or_else(|| Malformed(format!("{log_id}: no `type`")))?;
    let date = text(data, "/date").ok_or_else(|| Malformed(format!("{log_id}: no `date`")))?;
    let occurred_at = mxidp_core::audit::parse_time(date)
        .map_err(|e| Malformed(format!("{log_id}: `date`: {e}")))?;
    let user = text(data, "/user_id").map(str::to_owned);
    let need_user = || {
        user.clone()
            .ok_or_else(|| Malformed(format!("{log_id}: a `{kind}` entry without `user_id`")))
    };
    let event = match kind {
        "slo" => match text(data, "/details/session_id") {
            Some(sid) => IdpEvent::SessionEnded { sid: sid.into() },
            None => IdpEvent::AllSessionsEnded {
                subject: need_user()?,
            },
        },
        "sdu" | "du" => IdpEvent::UserDeleted {
            subject: need_user()?,
        },
        "scp" => IdpEvent::CredentialChanged {
            subject: need_user()?,
        },
        "sapi" => management_call(data).map_err(|why| Malformed(format!("{log_id}: {why}")))?,
        "limit_wc" | "ublkdu" => ignored(format!(
            "Auth0 `{kind}`: a brute-force block of an IP against the account, not an account lock"
        )),
        other => ignored(format!("Auth0 `{other}`: not an account or session change")),
    };
    Ok(ReceivedEvent {
        dedupe_key: log_id.to_owned(),
        occurred_at,
        event,
    })
}

fn ignored(reason: String) -> IdpEvent {
    IdpEvent::Unactionable { reason }
}

/// A successful Management API call (`sapi`), read by its request.
fn management_call(data: &Value) -> Result<IdpEvent, String> {
    let method = text(data, "/details/request/method").unwrap_or_default();
    let path = text(data, "/details/request/path").unwrap_or_default();
    let status = data
        .pointer("/details/response/statusCode")
        .and_then(Value::as_u64);
    if !status.is_some_and(|s| (200..300).contains(&s)) {
        // `sapi` is a success by definition; an entry that says otherwise changes nothing.
        return Ok(ignored(format!(
            "Auth0 `sapi` {method} {path}: no 2xx status"
        )));
    }
    // The query is logged apart; strip one anyway so that it cannot become part of an id.
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let id = |raw: &str| decode_id(raw).ok_or_else(|| format!("an unusable id in {path:?}"));
    let event = match (method.to_ascii_lowercase().as_str(), segments.as_slice()) {
        ("delete", ["", "api", "v2", "users", raw]) => IdpEvent::UserDeleted { subject: id(raw)? },
        ("patch", ["", "api", "v2", "users", raw]) => {
            match data.pointer("/details/request/body/blocked") {
                Some(Value::Bool(true)) => IdpEvent::UserLocked { subject: id(raw)? },
                Some(Value::Bool(false)) => IdpEvent::UserUnlocked { subject: id(raw)? },
                Some(_) => return Err("`blocked` is not a boolean".into()),
                None => ignored(format!(
                    "Auth0 `sapi` patch of a user without `blocked`: {path}"
                )),
            }
        }
        ("delete", ["", "api", "v2", "users", raw, "sessions"]) => {
            IdpEvent::AllSessionsEnded { subject: id(raw)? }
        }
        ("delete", ["", "api", "v2", "sessions", raw]) => IdpEvent::SessionEnded { sid: id(raw)? },
        _ => ignored(format!(
            "Auth0 `sapi` {method} {path}: not an account or session change"
        )),
    };
    Ok(event)
}

/// A path segment percent-decoded (`auth0%7C5f…` → `auth0|5f…`): Auth0 user ids hold `|`.
/// `None` for an empty, overlong or non-UTF-8 id, or one holding control characters.
pub fn decode_id(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let id = String::from_utf8(out).ok()?;
    (!id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shape of the real `sapi` fixture, with another request and response.
    fn sapi(method: &str, path: &str, body: Value, status: u64) -> Value {
        let mut entry: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/logstream-entry-sapi-mgmt-api.json"
        ))
        .unwrap();
        entry["data"]["details"]["request"]["method"] = json!(method);
        entry["data"]["details"]["request"]["path"] = json!(path);
        entry["data"]["details"]["request"]["body"] = body;
        entry["data"]["details"]["response"] = json!({ "statusCode": status });
        entry
    }

    fn event(entry: &Value) -> IdpEvent {
        normalise(entry).unwrap().event
    }

    const TARGET: &str = "auth0|6182002f34f4dd006b05b5c7";

    #[test]
    fn a_management_api_user_deletion_deletes_the_target_not_the_admin() {
        let entry = sapi(
            "delete",
            "/api/v2/users/auth0%7C6182002f34f4dd006b05b5c7",
            json!({}),
            204,
        );
        // `data.user_id` is the admin who called the API.
        assert_eq!(
            entry["data"]["user_id"],
            json!("auth0|6181ce2b0f293a006d158194")
        );
        assert_eq!(
            event(&entry),
            IdpEvent::UserDeleted {
                subject: TARGET.into()
            }
        );
    }

    #[test]
    fn blocked_true_and_false_lock_and_unlock() {
        let path = "/api/v2/users/auth0%7C6182002f34f4dd006b05b5c7";
        assert_eq!(
            event(&sapi("patch", path, json!({"blocked": true}), 200)),
            IdpEvent::UserLocked {
                subject: TARGET.into()
            }
        );
        assert_eq!(
            event(&sapi("PATCH", path, json!({"blocked": false}), 200)),
            IdpEvent::UserUnlocked {
                subject: TARGET.into()
            }
        );
        // A profile edit is not a lock.
        assert!(matches!(
            event(&sapi("patch", path, json!({"name": "x"}), 200)),
            IdpEvent::Unactionable { .. }
        ));
        // A refused call (if one were ever logged as `sapi`) changes nothing.
        assert!(matches!(
            event(&sapi("patch", path, json!({"blocked": true}), 403)),
            IdpEvent::Unactionable { .. }
        ));
        assert!(normalise(&sapi("patch", path, json!({"blocked": "yes"}), 200)).is_err());
    }

    #[test]
    fn session_deletions_end_sessions_and_sub_resources_are_not_the_user() {
        assert_eq!(
            event(&sapi(
                "delete",
                "/api/v2/users/google-oauth2%7C1004/sessions",
                json!({}),
                202
            )),
            IdpEvent::AllSessionsEnded {
                subject: "google-oauth2|1004".into()
            }
        );
        assert_eq!(
            event(&sapi("delete", "/api/v2/sessions/abc-123", json!({}), 202)),
            IdpEvent::SessionEnded {
                sid: "abc-123".into()
            }
        );
        for path in [
            "/api/v2/users/auth0%7C1/roles",
            "/api/v2/users/auth0%7C1/multifactor/actions/invalidate-remember-browser",
            "/api/v2/users",
            "/api/v2/log-streams/lst_1",
        ] {
            assert!(
                matches!(
                    event(&sapi("delete", path, json!({}), 204)),
                    IdpEvent::Unactionable { .. }
                ),
                "{path}"
            );
        }
        for bad in [
            "/api/v2/users/%ZZ",
            "/api/v2/users/%0A",
            "/api/v2/users/%FF",
        ] {
            assert!(
                normalise(&sapi("delete", bad, json!({}), 204)).is_err(),
                "{bad}"
            );
        }
    }

    fn typed(kind: &str, details: Value) -> Value {
        json!({"log_id": "900201", "data": {
            "date": "2024-05-01T10:00:00.000Z", "type": kind, "details": details,
            "user_id": TARGET, "log_id": "900201"
        }})
    }

    #[test]
    fn deletions_password_changes_and_logouts_by_type() {
        for kind in ["sdu", "du"] {
            assert_eq!(
                event(&typed(kind, json!({}))),
                IdpEvent::UserDeleted {
                    subject: TARGET.into()
                }
            );
        }
        assert_eq!(
            event(&typed("scp", json!({}))),
            IdpEvent::CredentialChanged {
                subject: TARGET.into()
            }
        );
        // A logout without its session id ends all of the user's sessions.
        assert_eq!(
            event(&typed("slo", json!({}))),
            IdpEvent::AllSessionsEnded {
                subject: TARGET.into()
            }
        );
    }

    #[test]
    fn brute_force_blocks_and_unknown_types_are_audited_only() {
        for kind in ["limit_wc", "ublkdu"] {
            assert!(
                matches!(event(&typed(kind, json!({}))), IdpEvent::Unactionable { reason } if reason.contains("brute-force")),
                "{kind}"
            );
        }
        assert!(matches!(
            event(&typed("a_type_from_2030", json!({}))),
            IdpEvent::Unactionable { .. }
        ));
    }

    #[test]
    fn entries_without_what_they_need_are_malformed() {
        assert!(normalise(&json!({"data": {}})).is_err());
        let mut no_user = typed("sdu", json!({}));
        no_user["data"]["user_id"] = json!("");
        assert!(normalise(&no_user).unwrap_err().0.contains("user_id"));
        let mut no_date = typed("sdu", json!({}));
        no_date["data"].as_object_mut().unwrap().remove("date");
        assert!(normalise(&no_date).unwrap_err().0.contains("date"));
        // `log_id` only inside `data` is still the key.
        let mut inner = typed("scp", json!({}));
        inner.as_object_mut().unwrap().remove("log_id");
        assert_eq!(normalise(&inner).unwrap().dedupe_key, "900201");
    }
}
