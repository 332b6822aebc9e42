//! Webhook deliveries from Keycloak event-listener extensions (docs/providers.md, Keycloak).
//!
//! Keycloak has no built-in webhook; two kinds of extension are understood, in one parser:
//! - Phase Two keycloak-events `ext-event-webhook`: one `ExtendedAdminEvent` per POST, `type`
//!   `access.<EventType>` or `admin.<RESOURCE>-<OPERATION>`, signed with lowercase hex
//!   HMAC-SHA256 of the body in `X-Keycloak-Signature` (no prefix, no timestamp). The signature
//!   is over the exact bytes Jackson wrote, so it is checked on the raw body, never on a
//!   re-serialisation.
//! - plain `EventRepresentation` / `AdminEventRepresentation` JSON (Phase Two `ext-event-http`,
//!   which signs the same way; HTTP listeners such as keycloak-event-listener-http or
//!   vymalo/keycloak-webhook, which send HTTP Basic credentials). vymalo spells admin types
//!   `USER-DELETE` without the `admin.` prefix.
//!
//! What matters for Matrix (everything else is acknowledged and ignored, so the sender does not
//! retry it): `LOGOUT` (one SSO session, or all of a user's), `DELETE_ACCOUNT`, password and
//! credential updates, a permanent brute-force lockout (which disables the user), and the admin
//! user `DELETE`, `UPDATE` (`enabled`), `logout` and `reset-password` operations.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use mxidp_core::events::{IdpEvent, ReceivedEvent, WebhookError, WebhookRequest};
use mxidp_core::provider::UserStatus;
use mxidp_core::secret::{constant_time_eq, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The header Phase Two's listeners sign into.
pub const SIGNATURE_HEADER: &str = "x-keycloak-signature";

/// How deliveries are authenticated. With neither, the webhook is off (404).
#[derive(Debug, Clone, Default)]
pub struct WebhookAuth {
    /// Phase Two's HMAC-SHA256 secret.
    pub hmac: Option<SecretString>,
    /// HTTP Basic user name and password of a plain HTTP listener.
    pub basic: Option<(String, SecretString)>,
}

/// One Keycloak event, as far as Matrix cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// Maps to a normalised event as it stands.
    Normalised(ReceivedEvent),
    /// An admin update of `users/<id>`: `enabled` is what the representation says, when it
    /// says anything (it is the admin's possibly partial request body).
    UserUpdated {
        dedupe_key: String,
        occurred_at: i64,
        user_id: String,
        enabled: Option<bool>,
    },
}

impl WebhookEvent {
    /// The event to store, from the payload alone (no admin API).
    pub fn into_received(self) -> Option<ReceivedEvent> {
        match self {
            WebhookEvent::Normalised(received) => Some(received),
            WebhookEvent::UserUpdated {
                dedupe_key,
                occurred_at,
                user_id,
                enabled,
            } => {
                let status = match enabled? {
                    true => UserStatus::Active,
                    false => UserStatus::Disabled,
                };
                status_event(&dedupe_key, occurred_at, &user_id, status)
            }
        }
    }
}

/// The status event for what Keycloak says of a user now.
pub fn status_event(
    dedupe_key: &str,
    occurred_at: i64,
    user_id: &str,
    status: UserStatus,
) -> Option<ReceivedEvent> {
    let event = status.event(user_id)?;
    Some(ReceivedEvent {
        dedupe_key: dedupe_key.to_owned(),
        occurred_at,
        event,
    })
}

/// Verifies the sender on the raw bytes, then parses the delivery (one event, or an array).
pub fn parse(
    auth: &WebhookAuth,
    request: &WebhookRequest<'_>,
) -> Result<Vec<WebhookEvent>, WebhookError> {
    verify(auth, request)?;
    let body: Value = serde_json::from_slice(request.body)
        .map_err(|e| WebhookError::Malformed(format!("not JSON: {e}")))?;
    let body_hash = hex(&Sha256::digest(request.body));
    let now = mxidp_core::ids::now_unix();
    match body {
        Value::Object(event) => Ok(parse_event(&event, format!("sha256:{body_hash}"), now)?
            .into_iter()
            .collect()),
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let event = item.as_object().ok_or_else(|| {
                    WebhookError::Malformed("an array item is not an object".into())
                })?;
                out.extend(parse_event(event, format!("sha256:{body_hash}:{i}"), now)?);
            }
            Ok(out)
        }
        _ => Err(WebhookError::Malformed("not a JSON object".into())),
    }
}

fn verify(auth: &WebhookAuth, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
    if auth.hmac.is_none() && auth.basic.is_none() {
        return Err(WebhookError::Unsupported);
    }
    if let Some(secret) = &auth.hmac {
        if let Some(signature) = request.headers.get(SIGNATURE_HEADER) {
            return verify_hmac(secret, signature.as_bytes(), request.body);
        }
    }
    if let Some((user, password)) = &auth.basic {
        if let Some(header) = request.headers.get(axum::http::header::AUTHORIZATION) {
            return verify_basic(user, password, header.as_bytes());
        }
    }
    Err(WebhookError::Unauthenticated)
}

fn verify_hmac(secret: &SecretString, signature: &[u8], body: &[u8]) -> Result<(), WebhookError> {
    let presented = unhex(signature).ok_or(WebhookError::Unauthenticated)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| WebhookError::Unauthenticated)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&presented)
        .map_err(|_| WebhookError::Unauthenticated)
}

fn verify_basic(user: &str, password: &SecretString, header: &[u8]) -> Result<(), WebhookError> {
    let encoded = header
        .strip_prefix(b"Basic ")
        .ok_or(WebhookError::Unauthenticated)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .map_err(|_| WebhookError::Unauthenticated)?;
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or(WebhookError::Unauthenticated)?;
    let (presented_user, presented_password) = (&decoded[..colon], &decoded[colon + 1..]);
    // Both compared, in constant time, whatever the first answer.
    let user_ok = constant_time_eq(user.as_bytes(), presented_user);
    let password_ok = password.ct_eq(presented_password);
    if user_ok & password_ok {
        Ok(())
    } else {
        Err(WebhookError::Unauthenticated)
    }
}

fn parse_event(
    event: &Map<String, Value>,
    fallback_key: String,
    now: i64,
) -> Result<Option<WebhookEvent>, WebhookError> {
    let auth_details = event.get("authDetails");
    // The event's own id (stable across Phase Two's retries); `uid` is per send. Events from
    // older Keycloak carry neither: the body's hash stands in.
    let dedupe_key = text(event.get("id"))
        .or_else(|| text(event.get("uid")))
        .map(str::to_owned)
        .unwrap_or(fallback_key);
    let occurred_at = match event.get("time") {
        None | Some(Value::Null) => now,
        // Keycloak's `time` is epoch milliseconds.
        Some(t) => t
            .as_i64()
            .ok_or_else(|| WebhookError::Malformed("`time` is not an integer".into()))?
            .div_euclid(1000),
    };
    if event.get("error").is_some_and(|e| !e.is_null()) {
        // A failed operation changed nothing at Keycloak.
        return Ok(None);
    }
    let kind = text(event.get("type")).unwrap_or("");
    let admin_type = kind
        .strip_prefix("admin.")
        .or_else(|| kind.contains('-').then_some(kind));
    let normalised = |event| {
        Some(WebhookEvent::Normalised(ReceivedEvent {
            dedupe_key: dedupe_key.clone(),
            occurred_at,
            event,
        }))
    };

    if admin_type.is_some() || event.contains_key("operationType") {
        // `admin.<RESOURCE>-<OPERATION>`; resource types use `_`, never `-`.
        let (type_resource, type_operation) = admin_type
            .and_then(|t| t.rsplit_once('-'))
            .unwrap_or(("", ""));
        let resource = text(event.get("resourceType")).unwrap_or(type_resource);
        let operation = text(event.get("operationType")).unwrap_or(type_operation);
        if resource != "USER" {
            return Ok(None);
        }
        let path = text(event.get("resourcePath")).unwrap_or("");
        let Some(rest) = path.strip_prefix("users/") else {
            return Ok(None);
        };
        let (user_id, sub) = match rest.split_once('/') {
            Some((id, sub)) => (id, Some(sub)),
            None => (rest, None),
        };
        if user_id.is_empty() {
            return Err(WebhookError::Malformed(
                "an empty user id in `resourcePath`".into(),
            ));
        }
        let subject = user_id.to_owned();
        return Ok(match (operation, sub) {
            ("DELETE", None) => normalised(IdpEvent::UserDeleted { subject }),
            ("UPDATE", None) => Some(WebhookEvent::UserUpdated {
                dedupe_key: dedupe_key.clone(),
                occurred_at,
                user_id: subject,
                enabled: representation_enabled(event.get("representation")),
            }),
            ("ACTION", Some("logout")) => normalised(IdpEvent::AllSessionsEnded { subject }),
            ("ACTION", Some("reset-password")) => {
                normalised(IdpEvent::CredentialChanged { subject })
            }
            _ => None,
        });
    }

    let user_type = kind.strip_prefix("access.").unwrap_or(kind);
    // Phase Two puts the user's ids in `authDetails`; EventRepresentation at the top level.
    let user_id = text(auth_details.and_then(|a| a.get("userId")))
        .or_else(|| text(event.get("userId")))
        .map(str::to_owned);
    let session_id = text(auth_details.and_then(|a| a.get("sessionId")))
        .or_else(|| text(event.get("sessionId")))
        .map(str::to_owned);
    Ok(match (user_type, user_id) {
        // `sid` in back-channel logout tokens is this same SSO session id.
        ("LOGOUT", _) if session_id.is_some() => normalised(IdpEvent::SessionEnded {
            sid: session_id.unwrap_or_default(),
        }),
        ("LOGOUT", Some(subject)) => normalised(IdpEvent::AllSessionsEnded { subject }),
        ("DELETE_ACCOUNT", Some(subject)) => normalised(IdpEvent::UserDeleted { subject }),
        // UPDATE_CREDENTIAL replaces UPDATE_PASSWORD in Keycloak 26.
        ("UPDATE_PASSWORD" | "UPDATE_CREDENTIAL", Some(subject)) => {
            normalised(IdpEvent::CredentialChanged { subject })
        }
        // A permanent lockout disables the user.
        ("USER_DISABLED_BY_PERMANENT_LOCKOUT", Some(subject)) => {
            normalised(IdpEvent::UserLocked { subject })
        }
        _ => None,
    })
}

/// A non-empty string member.
fn text(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// `enabled` from an admin event's representation: a JSON string (Keycloak and Phase Two), or
/// an object (some listeners decode it).
fn representation_enabled(representation: Option<&Value>) -> Option<bool> {
    match representation? {
        Value::String(text) => serde_json::from_str::<Value>(text)
            .ok()?
            .get("enabled")?
            .as_bool(),
        Value::Object(object) => object.get("enabled")?.as_bool(),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    let text = text.trim_ascii();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

/// Phase Two's signature of a body: what `X-Keycloak-Signature` carries (for tests and doubles).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// The fuzz entry point (fuzz/, SECURITY.md): the input as the body of a delivery with good
/// HTTP Basic credentials, so that the parser runs; and with its first bytes (up to a newline)
/// as the `X-Keycloak-Signature` of the rest, so that the HMAC check runs. Never panics.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_delivery(data: &[u8]) {
    use axum::http::{HeaderMap, HeaderValue};
    let auth = WebhookAuth {
        hmac: Some(SecretString::new("fuzz-secret")),
        basic: Some(("fuzz".into(), SecretString::new("fuzz-password"))),
    };
    let mut headers = HeaderMap::new();
    // "fuzz:fuzz-password"
    headers.insert(
        axum::http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic ZnV6ejpmdXp6LXBhc3N3b3Jk"),
    );
    let _ = parse(
        &auth,
        &WebhookRequest {
            headers: &headers,
            body: data,
        },
    );
    let (signature, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(value) = HeaderValue::from_bytes(signature) {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, value);
        let _ = parse(
            &auth,
            &WebhookRequest {
                headers: &headers,
                body,
            },
        );
    }
}

#[cfg(test)]
mod fuzz_smoke {
    #[test]
    fn the_webhook_parser_survives_its_corpus_and_seeded_mutations() {
        let corpus = mxidp_core::fuzz_targets::corpus("keycloak_webhook");
        assert!(!corpus.is_empty());
        let ran = mxidp_core::fuzz_targets::smoke(
            "keycloak_webhook",
            super::fuzz_delivery,
            &corpus,
            std::time::Duration::from_secs(2),
        );
        assert!(ran > corpus.len());
    }
}
