//! Auth0 Log Streams ("Custom Webhook", type `http`) at mxidp's webhook route.
//!
//! Auth0 signs nothing: the only proof of the sender is the `Authorization` value the admin
//! set on the stream (`sink.httpAuthorization`), sent verbatim and compared here in constant
//! time. The body's framing depends on the stream's `httpContentFormat`: a JSON array
//! (`JSONARRAY`), one entry per line (`JSONLINES`) or one object (`JSONOBJECT`); all three are
//! accepted without being told which. Each entry is `{"log_id": …, "data": {…}}`
//! ([`crate::log_entry`]).
//!
//! Delivery is at least once and unordered: every entry is stored under its `log_id`, so a
//! retry or a duplicate acts once, and the pipeline orders by the entry's own `date`. A batch is
//! stored entry by entry: one malformed entry is recorded as unactionable (the audit log shows
//! it) and does not cost the good ones, since Auth0 would otherwise resend the whole batch.

use mxidp_core::events::{IdpEvent, ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::secret::SecretString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::log_entry;

/// Checks the stream's `Authorization` value. Without a configured value the route is off.
fn verify(secret: Option<&SecretString>, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
    let secret = secret.ok_or(WebhookError::Unsupported)?;
    let presented = request
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(WebhookError::Unauthenticated)?;
    if secret.ct_eq(presented.as_bytes()) {
        Ok(())
    } else {
        Err(WebhookError::Unauthenticated)
    }
}

/// Verifies the sender, then turns a delivery into one event per entry.
pub fn parse(
    secret: Option<&SecretString>,
    request: &WebhookRequest<'_>,
) -> Result<Vec<ReceivedEvent>, WebhookError> {
    verify(secret, request)?;
    let now = mxidp_core::ids::now_unix();
    let entries = split(request.body)?;
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let read = match &entry {
                Ok(value) => log_entry::normalise(value),
                Err(why) => Err(log_entry::Malformed(why.clone())),
            };
            read.unwrap_or_else(|log_entry::Malformed(why)| {
                tracing::warn!(index, %why, "Auth0 Log Stream: a malformed entry in the batch");
                unreadable(entry.as_ref().ok(), request.body, index, why, now)
            })
        })
        .collect())
}

/// The entries of a body in any of the three formats. A line of JSON Lines that is not JSON is
/// an entry of its own that failed; a body that is none of the formats is refused whole.
pub fn split(body: &[u8]) -> Result<Vec<Result<Value, String>>, WebhookError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| WebhookError::Malformed("the body is not UTF-8".into()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(trimmed)
            .map_err(|e| WebhookError::Malformed(format!("not a JSON array: {e}")))?;
        return Ok(items.into_iter().map(Ok).collect());
    }
    // One object, possibly pretty-printed over several lines (JSONOBJECT).
    if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(trimmed) {
        return Ok(vec![Ok(value)]);
    }
    let lines: Vec<Result<Value, String>> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).map_err(|e| format!("a line is not JSON: {e}")))
        .collect();
    if lines.is_empty() || lines.iter().all(Result::is_err) {
        return Err(WebhookError::Malformed(
            "not a JSON array, JSON Lines or a JSON object".into(),
        ));
    }
    Ok(lines)
}

/// The record of an entry that could not be read: under its `log_id` when it has a usable one
/// (a second delivery is then a duplicate), else under a hash of the entry.
fn unreadable(
    entry: Option<&Value>,
    body: &[u8],
    index: usize,
    why: String,
    now: i64,
) -> ReceivedEvent {
    let dedupe_key = match entry.and_then(log_entry::log_id) {
        Some(id) => id.to_owned(),
        None => {
            let bytes = match entry {
                Some(value) => value.to_string().into_bytes(),
                // An unparsable line: its hash within the body, with its position.
                None => [body, index.to_string().as_bytes()].concat(),
            };
            let digest = Sha256::digest(&bytes);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("malformed:sha256:{hex}")
        }
    };
    ReceivedEvent {
        dedupe_key,
        occurred_at: now,
        event: IdpEvent::Unactionable {
            reason: format!("malformed Auth0 log entry (#{index} of the batch): {why}"),
        },
    }
}

#[cfg(test)]
fn fuzz_delivery(data: &[u8]) {
    use axum::http::{HeaderMap, HeaderValue};
    let secret = SecretString::new("fuzz-secret");
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("fuzz-secret"));
    let _ = parse(
        Some(&secret),
        &WebhookRequest {
            headers: &headers,
            body: data,
        },
    );
}

#[cfg(test)]
mod fuzz_smoke {
    #[test]
    fn the_delivery_parser_survives_real_payloads_and_seeded_mutations() {
        let corpus: Vec<Vec<u8>> = vec![
            include_bytes!("../tests/fixtures/logstream-entries-slo-logout.json").to_vec(),
            include_bytes!("../tests/fixtures/logstream-jsonlines-success-login.ndjson").to_vec(),
            include_bytes!("../tests/fixtures/logstream-entry-sapi-mgmt-api.json").to_vec(),
        ];
        let ran = mxidp_core::fuzz_targets::smoke(
            "auth0_log_stream",
            super::fuzz_delivery,
            &corpus,
            std::time::Duration::from_secs(2),
        );
        assert!(ran > corpus.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use serde_json::json;

    const SLO: &str = include_str!("../tests/fixtures/logstream-entries-slo-logout.json");
    const LOGINS: &str = include_str!("../tests/fixtures/logstream-jsonlines-success-login.ndjson");
    const FAILURES: &str = include_str!("../tests/fixtures/logstream-entries-login-failures.json");
    const SAPI: &str = include_str!("../tests/fixtures/logstream-entry-sapi-mgmt-api.json");

    fn secret() -> SecretString {
        SecretString::new("Bearer stream-secret")
    }

    fn with(authorization: Option<&str>, body: &[u8]) -> Result<Vec<ReceivedEvent>, WebhookError> {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert("authorization", HeaderValue::from_str(value).unwrap());
        }
        parse(
            Some(&secret()),
            &WebhookRequest {
                headers: &headers,
                body,
            },
        )
    }

    fn deliver(body: &[u8]) -> Vec<ReceivedEvent> {
        with(Some("Bearer stream-secret"), body).unwrap()
    }

    #[test]
    fn the_real_slo_entries_as_a_json_array_end_their_sessions() {
        let events = deliver(SLO.as_bytes());
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].dedupe_key,
            "90020211103055400418223355659153263714766654532376068162"
        );
        assert_eq!(
            events[0].event,
            IdpEvent::SessionEnded {
                sid: "1TAd-7tsPYzxWudzqfHYXN0e6q1D0GSc".into()
            }
        );
        // 2021-11-03T05:53:57.546Z
        assert_eq!(events[0].occurred_at, 1_635_918_837);
        assert_eq!(
            events[1].event,
            IdpEvent::SessionEnded {
                sid: "SIMuasvKPfIe7_GhWAVKN9e2mNCtyLqV".into()
            }
        );
    }

    #[test]
    fn the_real_json_lines_logins_are_audited_only_and_a_repeated_line_keeps_its_key() {
        let events = deliver(LOGINS.as_bytes());
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(
            |e| matches!(&e.event, IdpEvent::Unactionable { reason } if reason.contains("`s`"))
        ));
        assert_eq!(
            events[1].dedupe_key,
            "90020211103032530111223343147286033102509916061341581378"
        );
        // Elastic's full capture ends with a line repeated: the same key, so it is stored once.
        let last = LOGINS.lines().last().unwrap();
        let repeated = deliver(format!("{LOGINS}{last}\n").as_bytes());
        assert_eq!(repeated.len(), 4);
        assert_eq!(repeated[3], events[2]);
    }

    #[test]
    fn the_real_login_failures_are_ignored() {
        for event in deliver(FAILURES.as_bytes()) {
            assert!(
                matches!(&event.event, IdpEvent::Unactionable { .. }),
                "{event:?}"
            );
        }
    }

    #[test]
    fn a_single_object_and_a_pretty_printed_object_are_one_entry_each() {
        let events = deliver(SAPI.as_bytes());
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].dedupe_key,
            "90020211104001430299115418365351830745472004626724159538"
        );
        // A log stream update is not an account change.
        assert!(matches!(&events[0].event, IdpEvent::Unactionable { .. }));
        let compact = serde_json::to_vec(&serde_json::from_str::<Value>(SAPI).unwrap()).unwrap();
        assert_eq!(deliver(&compact), events);
    }

    #[test]
    fn the_three_formats_of_the_same_entries_give_the_same_events() {
        let entries: Vec<Value> = serde_json::from_str(SLO).unwrap();
        let array = serde_json::to_vec(&entries).unwrap();
        let lines = entries
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let from_array = deliver(&array);
        assert_eq!(deliver(lines.as_bytes()), from_array);
        let objects: Vec<_> = entries
            .iter()
            .flat_map(|e| deliver(e.to_string().as_bytes()))
            .collect();
        assert_eq!(objects, from_array);
    }

    #[test]
    fn only_the_configured_authorization_value_is_accepted() {
        let body = SLO.as_bytes();
        for bad in [
            Some("Bearer stream-secreT"),
            Some("bearer stream-secret"),
            Some("Bearer stream-secret "),
            Some("stream-secret"),
            None,
        ] {
            assert_eq!(
                with(bad, body),
                Err(WebhookError::Unauthenticated),
                "{bad:?}"
            );
        }
        let headers = HeaderMap::new();
        assert_eq!(
            parse(
                None,
                &WebhookRequest {
                    headers: &headers,
                    body
                }
            ),
            Err(WebhookError::Unsupported)
        );
    }

    #[test]
    fn one_bad_entry_in_an_array_is_recorded_and_the_good_ones_kept() {
        let mut entries: Vec<Value> = serde_json::from_str(SLO).unwrap();
        let mut bad = entries[0].clone();
        bad["log_id"] = json!("90020211103055400418223355659153263714766654532376060000");
        bad["data"]["log_id"] = bad["log_id"].clone();
        bad["data"]["date"] = json!("yesterday");
        entries.insert(1, bad);
        entries.push(json!(42));
        let events = deliver(&serde_json::to_vec(&entries).unwrap());
        assert_eq!(events.len(), 4);
        assert!(matches!(events[0].event, IdpEvent::SessionEnded { .. }));
        assert!(
            matches!(&events[1].event, IdpEvent::Unactionable { reason } if reason.contains("date"))
        );
        assert_eq!(
            events[1].dedupe_key,
            "90020211103055400418223355659153263714766654532376060000"
        );
        assert!(matches!(events[2].event, IdpEvent::SessionEnded { .. }));
        assert!(events[3].dedupe_key.starts_with("malformed:sha256:"));
    }

    #[test]
    fn a_bad_line_of_json_lines_does_not_cost_the_others() {
        let entries: Vec<Value> = serde_json::from_str(SLO).unwrap();
        let body = format!("{}\n{{not json\n{}\n", entries[0], entries[1]);
        let events = deliver(body.as_bytes());
        assert_eq!(events.len(), 3);
        assert!(matches!(events[0].event, IdpEvent::SessionEnded { .. }));
        assert!(matches!(events[1].event, IdpEvent::Unactionable { .. }));
        assert!(matches!(events[2].event, IdpEvent::SessionEnded { .. }));
    }

    #[test]
    fn a_body_in_no_format_is_refused_whole() {
        for body in [&b"hello"[..], b"", b"\n\n", b"[1,", b"\xff\xfe"] {
            assert!(
                matches!(
                    with(Some("Bearer stream-secret"), body),
                    Err(WebhookError::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }
}
