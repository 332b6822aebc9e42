//! Okta Event Hooks at mxidp's webhook route.
//!
//! Okta signs nothing: the only proof of the sender is the header the admin configured on the
//! hook (`channel.config.authScheme`: a header name and a secret value of their choosing),
//! compared here in constant time. The one-time verification is a `GET` with
//! `x-okta-verification-challenge` and the same configured header, answered
//! `{"verification": <value>}`; Okta waits 3 s, so it is answered from memory. Deliveries are `POST`s of a CloudEvents envelope whose
//! `data.events[]` holds a batch of System Log events ([`crate::log_event`]).
//!
//! A batch is stored event by event: one malformed event does not cost the good ones (Okta
//! would not retry a 4xx, and a 5xx would resend the good ones once, then give up). It is
//! stored as an unactionable event that names the problem, so the audit log shows it.

use axum::http::HeaderName;
use mxidp_core::events::{IdpEvent, ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::provider::WebhookChallenge;
use mxidp_core::secret::SecretString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::log_event;

/// The header of Okta's verification request.
pub const CHALLENGE_HEADER: &str = "x-okta-verification-challenge";
/// A challenge longer than this is not echoed (Okta's are UUID-sized).
const MAX_CHALLENGE_BYTES: usize = 512;

/// The header and secret configured on the Event Hook. Without one the webhook is off (404).
#[derive(Debug, Clone)]
pub struct HookAuth {
    pub header: HeaderName,
    pub secret: SecretString,
}

fn verify(auth: Option<&HookAuth>, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
    let auth = auth.ok_or(WebhookError::Unsupported)?;
    let presented = request
        .headers
        .get(&auth.header)
        .ok_or(WebhookError::Unauthenticated)?;
    if auth.secret.ct_eq(presented.as_bytes()) {
        Ok(())
    } else {
        Err(WebhookError::Unauthenticated)
    }
}

/// Answers the verification `GET` (sender checked first, as for a delivery).
pub fn verification(
    auth: Option<&HookAuth>,
    request: &WebhookRequest<'_>,
) -> Result<WebhookChallenge, WebhookError> {
    verify(auth, request)?;
    let challenge = request
        .headers
        .get(CHALLENGE_HEADER)
        .ok_or_else(|| WebhookError::Malformed(format!("no {CHALLENGE_HEADER} header")))?
        .to_str()
        .ok()
        .filter(|c| !c.is_empty() && c.len() <= MAX_CHALLENGE_BYTES)
        .ok_or_else(|| WebhookError::Malformed(format!("an unusable {CHALLENGE_HEADER}")))?;
    Ok(WebhookChallenge {
        body: serde_json::json!({ "verification": challenge }),
    })
}

/// Verifies the sender, then turns a delivery into events: every event that matters, plus one
/// unactionable event per malformed one.
pub fn parse(
    auth: Option<&HookAuth>,
    request: &WebhookRequest<'_>,
) -> Result<Vec<ReceivedEvent>, WebhookError> {
    verify(auth, request)?;
    let body: Value = serde_json::from_slice(request.body)
        .map_err(|e| WebhookError::Malformed(format!("not JSON: {e}")))?;
    let events = body
        .pointer("/data/events")
        .and_then(Value::as_array)
        .ok_or_else(|| WebhookError::Malformed("no `data.events` array".into()))?;
    let now = mxidp_core::ids::now_unix();
    let mut out = Vec::new();
    for (index, event) in events.iter().enumerate() {
        match log_event::normalise(event) {
            Ok(Some(received)) => out.push(received),
            Ok(None) => {}
            Err(log_event::Malformed(why)) => {
                tracing::warn!(index, %why, "Okta Event Hook: a malformed event in the batch");
                out.push(unreadable(event, index, why, now));
            }
        }
    }
    Ok(out)
}

/// The record of an event that could not be read: under its `uuid` when it has one (a second
/// delivery is then a duplicate), else under a hash of the event itself.
pub fn unreadable(event: &Value, index: usize, why: String, now: i64) -> ReceivedEvent {
    let dedupe_key = match event.get("uuid").and_then(Value::as_str) {
        Some(uuid) if !uuid.is_empty() && uuid.len() <= 128 => uuid.to_owned(),
        _ => {
            let digest = Sha256::digest(event.to_string().as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("malformed:sha256:{hex}")
        }
    };
    ReceivedEvent {
        dedupe_key,
        occurred_at: now,
        event: IdpEvent::Unactionable {
            reason: format!("malformed Okta event (#{index} of the batch): {why}"),
        },
    }
}

/// A delivery with the right secret and `data` as its body: the parser on any bytes never panics
/// (smoke-fuzzed below from the real payloads).
#[cfg(test)]
fn fuzz_delivery(data: &[u8]) {
    use axum::http::{HeaderMap, HeaderValue};
    let auth = HookAuth {
        header: HeaderName::from_static("authorization"),
        secret: SecretString::new("fuzz-secret"),
    };
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("fuzz-secret"));
    let _ = parse(
        Some(&auth),
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
        let session_end = include_str!("../tests/fixtures/system_log_event_user.session.end.json");
        let corpus: Vec<Vec<u8>> = vec![
            include_bytes!("../tests/fixtures/event_hook_delivery_user.session.start.json")
                .to_vec(),
            format!("{{\"data\":{{\"events\":[{session_end}]}}}}").into_bytes(),
            format!("{{\"data\":{{\"events\":[{session_end},{session_end},null,1]}}}}")
                .into_bytes(),
        ];
        let ran = mxidp_core::fuzz_targets::smoke(
            "okta_event_hook",
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

    fn auth() -> HookAuth {
        HookAuth {
            header: HeaderName::from_static("authorization"),
            secret: SecretString::new("hook-secret"),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn delivery(events: Value) -> Vec<u8> {
        let mut body: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/event_hook_delivery_user.session.start.json"
        ))
        .unwrap();
        body["data"]["events"] = events;
        serde_json::to_vec(&body).unwrap()
    }

    fn session_end() -> Value {
        serde_json::from_str(include_str!(
            "../tests/fixtures/system_log_event_user.session.end.json"
        ))
        .unwrap()
    }

    #[test]
    fn the_documented_delivery_of_a_session_start_asks_nothing() {
        let body = include_bytes!("../tests/fixtures/event_hook_delivery_user.session.start.json");
        let h = headers(&[("authorization", "hook-secret")]);
        let request = WebhookRequest { headers: &h, body };
        assert_eq!(parse(Some(&auth()), &request), Ok(vec![]));
    }

    #[test]
    fn deliveries_need_the_configured_header_and_secret() {
        let body = delivery(json!([session_end()]));
        let good = headers(&[("authorization", "hook-secret")]);
        let events = parse(
            Some(&auth()),
            &WebhookRequest {
                headers: &good,
                body: &body,
            },
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        for bad in [
            headers(&[("authorization", "hook-secreT")]),
            headers(&[("authorization", "hook-secret ")]),
            headers(&[("x-other", "hook-secret")]),
            headers(&[]),
        ] {
            assert_eq!(
                parse(
                    Some(&auth()),
                    &WebhookRequest {
                        headers: &bad,
                        body: &body,
                    }
                ),
                Err(WebhookError::Unauthenticated)
            );
        }
        // No secret configured: no webhook at all.
        assert_eq!(
            parse(
                None,
                &WebhookRequest {
                    headers: &good,
                    body: &body,
                }
            ),
            Err(WebhookError::Unsupported)
        );
    }

    #[test]
    fn a_malformed_event_is_reported_and_the_good_ones_kept() {
        let mut bad = session_end();
        bad["uuid"] = json!("bad-1");
        bad["published"] = json!("not a time");
        let mut other = session_end();
        other["uuid"] = json!("good-2");
        let body = delivery(json!([session_end(), bad, other, 42]));
        let h = headers(&[("authorization", "hook-secret")]);
        let events = parse(
            Some(&auth()),
            &WebhookRequest {
                headers: &h,
                body: &body,
            },
        )
        .unwrap();
        let keys: Vec<_> = events.iter().map(|e| e.dedupe_key.as_str()).collect();
        assert_eq!(
            keys[..3],
            ["faf7398a-4f77-11ea-97fb-5925e98228bd", "bad-1", "good-2"]
        );
        assert!(keys[3].starts_with("malformed:sha256:"));
        assert!(
            matches!(&events[1].event, IdpEvent::Unactionable { reason } if reason.contains("published"))
        );
        assert!(matches!(events[2].event, IdpEvent::AllSessionsEnded { .. }));
        // An envelope without `data.events` is refused whole.
        let h2 = headers(&[("authorization", "hook-secret")]);
        assert!(matches!(
            parse(
                Some(&auth()),
                &WebhookRequest {
                    headers: &h2,
                    body: b"{\"data\":{}}",
                }
            ),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn the_verification_echoes_the_challenge_to_a_verified_sender() {
        let h = headers(&[
            ("authorization", "hook-secret"),
            ("x-okta-verification-challenge", "c6b4"),
        ]);
        let request = WebhookRequest {
            headers: &h,
            body: &[],
        };
        assert_eq!(
            verification(Some(&auth()), &request).unwrap().body,
            json!({"verification": "c6b4"})
        );
        let no_challenge = headers(&[("authorization", "hook-secret")]);
        assert!(matches!(
            verification(
                Some(&auth()),
                &WebhookRequest {
                    headers: &no_challenge,
                    body: &[],
                }
            ),
            Err(WebhookError::Malformed(_))
        ));
        let wrong = headers(&[
            ("authorization", "nope"),
            ("x-okta-verification-challenge", "c6b4"),
        ]);
        assert_eq!(
            verification(
                Some(&auth()),
                &WebhookRequest {
                    headers: &wrong,
                    body: &[],
                }
            ),
            Err(WebhookError::Unauthenticated)
        );
    }
}
