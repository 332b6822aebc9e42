//! The standard IdP event receivers, usable with every provider adapter (docs/events.md):
//! OIDC Back-Channel Logout 1.0, Shared Signals push delivery (RFC 8935 of RFC 8417 SETs),
//! global token revocation (draft-parecki-oauth-global-token-revocation, Okta Universal
//! Logout), and the provider's own webhook.
//!
//! Each receiver verifies its sender on the exact bytes received, turns the payload into an
//! [`IdpEvent`] at the edge, hands it to [`crate::events::EventPipeline::accept`] (durable and
//! deduplicated when it returns), and only then answers 2xx. Refused deliveries change nothing
//! and are audited without their token.
//!
//! Keys only ever come from configured places: the IdP's discovery `jwks_uri` for logout
//! tokens, the transmitter's configured `jwks_uri` for SETs and revocation requests. `jku`,
//! `x5u` and `jwk` headers are ignored by the shared JWS verification
//! ([`crate::upstream::verify_jws`]).

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::Value;

use crate::app::AppState;
use crate::audit::AuditEntry;

pub(crate) use crate::jwt::{claim_str, verify_jwt, JwtRules, TokenError};

pub mod backchannel_logout;
pub mod keys;
pub use keys::{ReceiverKeys, Transmitter};
pub mod global_token_revocation;
pub mod ssf;
pub mod webhook;

#[cfg(test)]
pub(crate) mod test_env;

/// Paths of the receivers, relative to the public base URL.
pub mod paths {
    pub const BACKCHANNEL_LOGOUT: &str = "upstream/backchannel-logout";
    pub const SSF: &str = "upstream/ssf";
    pub const GLOBAL_TOKEN_REVOCATION: &str = "upstream/global-token-revocation";
    pub const WEBHOOK: &str = "upstream/webhook";
}

/// Source names under which the receivers store their events (the dedupe scope).
pub mod sources {
    pub const BACKCHANNEL_LOGOUT: &str = "backchannel_logout";
    pub const SSF: &str = "ssf";
    pub const GLOBAL_TOKEN_REVOCATION: &str = "global_token_revocation";
}

/// A subject identifier (RFC 9493) as the receivers support it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubjectId {
    IssSub { iss: String, sub: String },
    Email(String),
    Opaque(String),
}

impl SubjectId {
    /// Parses an RFC 9493 subject identifier object; the error says why it is unusable.
    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        let Some(object) = value.as_object() else {
            return Err("the subject identifier is not an object".into());
        };
        let member = |name: &str| -> Result<String, String> {
            match object.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(format!("the subject identifier has no `{name}`")),
            }
        };
        match object.get("format").and_then(Value::as_str) {
            Some("iss_sub") => Ok(SubjectId::IssSub {
                iss: member("iss")?,
                sub: member("sub")?,
            }),
            Some("email") => {
                let email = member("email")?;
                if !email.contains('@') {
                    return Err("the `email` is not an e-mail address".into());
                }
                Ok(SubjectId::Email(email))
            }
            Some("opaque") => Ok(SubjectId::Opaque(member("id")?)),
            Some(other) => Err(format!("the subject format {other:?} is not supported")),
            None => Err("the subject identifier has no `format`".into()),
        }
    }

    /// For logs and the audit log: the format, and the value for formats that are ids.
    pub(crate) fn describe(&self) -> String {
        match self {
            SubjectId::IssSub { iss, sub } => format!("iss_sub {iss} {sub}"),
            SubjectId::Email(email) => format!("email {email}"),
            SubjectId::Opaque(id) => format!("opaque {id}"),
        }
    }
}

/// What a subject identifier names in mxidp's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// A subject in the namespace of mxidp's identities (whether or not one exists).
    Subject(String),
    /// Nothing mxidp can act on (an unknown e-mail, another issuer's subject).
    Unknown(String),
}

/// Issuers whose `iss_sub` subjects are mxidp's subjects: the upstream IdP (as discovered and
/// as configured) and the transmitter. Okta's transmitter issuer is the org URL while ID tokens
/// may come from a custom authorization server, so both are needed.
pub(crate) fn subject_issuers(app: &AppState, transmitter: Option<&Transmitter>) -> Vec<String> {
    let mut issuers = Vec::new();
    if let Some(upstream) = app.upstream.get() {
        issuers.push(upstream.metadata().issuer.clone());
        issuers.push(upstream.settings().issuer.to_string());
    }
    if let Some(t) = transmitter {
        issuers.push(t.issuer.clone());
    }
    issuers
}

/// Issuer identifiers are compared exactly except for one trailing slash, which Okta's own
/// examples add and drop inconsistently (the GTR `iss_sub` sample ends in `/`, org URLs do not).
fn same_issuer(a: &str, b: &str) -> bool {
    a.strip_suffix('/').unwrap_or(a) == b.strip_suffix('/').unwrap_or(b)
}

pub(crate) async fn resolve_subject(
    app: &AppState,
    id: &SubjectId,
    issuers: &[String],
) -> Result<Resolved, crate::store::StoreError> {
    Ok(match id {
        SubjectId::IssSub { iss, sub } => {
            if issuers.iter().any(|known| same_issuer(known, iss)) {
                Resolved::Subject(sub.clone())
            } else {
                Resolved::Unknown(format!("subject of another issuer ({iss})"))
            }
        }
        SubjectId::Opaque(id) => Resolved::Subject(id.clone()),
        SubjectId::Email(email) => {
            match app
                .store
                .identity_by_email(&app.mapping.upstream_id, email)
                .await?
            {
                Some(identity) => Resolved::Subject(identity.subject),
                None => Resolved::Unknown("no single identity has this e-mail address".into()),
            }
        }
    })
}

/// Records a delivery in the audit log. Never pass a token in `details`.
pub(crate) async fn audit(
    app: &AppState,
    source: &str,
    action: &str,
    target: &str,
    outcome: &str,
    correlation_id: &str,
    details: Value,
) {
    crate::audit::record(
        app.store.as_ref(),
        AuditEntry {
            actor: format!("idp:{source}"),
            action: action.into(),
            target: target.into(),
            source: source.into(),
            outcome: outcome.into(),
            correlation_id: correlation_id.into(),
            details,
        },
    )
    .await;
}

/// Refusals recorded one by one per minute, per receiver and client address; the rest are
/// counted and summarised. The receivers need no credentials to reach, so without a bound a
/// flood of garbage would fill the append-only audit log and the logs; and with one budget for
/// all, a flood on one receiver (or from one address) would hide forgery attempts on another.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 20;

/// Budgets kept at most; past it, every further key shares one overflow budget.
const MAX_REFUSAL_KEYS: usize = 10_000;

/// A receiver (its source name) and a client address.
type RefusalKey = (String, Option<IpAddr>);

/// Counts refusals per minute for each (receiver, client address): (minute, refusals in it).
#[derive(Default)]
pub struct RefusalBudgets(std::sync::Mutex<HashMap<RefusalKey, (i64, u32)>>);

impl RefusalBudgets {
    /// Whether this refusal is recorded individually; the first refusal of a new minute
    /// returns how many went unrecorded in that key's previous one, for the summary.
    fn take(&self, source: &str, address: Option<IpAddr>, now: i64) -> (bool, Option<u32>) {
        let minute = now / 60;
        let mut budgets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if budgets.len() >= MAX_REFUSAL_KEYS {
            budgets.retain(|_, (m, _)| *m == minute);
        }
        let key = if budgets.len() >= MAX_REFUSAL_KEYS
            && !budgets.contains_key(&(source.to_owned(), address))
        {
            ("overflow".to_owned(), None)
        } else {
            (source.to_owned(), address)
        };
        let state = budgets.entry(key).or_insert((minute, 0));
        let mut skipped_before = None;
        if state.0 != minute {
            if state.1 > REFUSALS_RECORDED_PER_MINUTE {
                skipped_before = Some(state.1 - REFUSALS_RECORDED_PER_MINUTE);
            }
            *state = (minute, 0);
        }
        state.1 += 1;
        (state.1 <= REFUSALS_RECORDED_PER_MINUTE, skipped_before)
    }
}

/// Audits and logs a refused delivery (bounded: see [`REFUSALS_RECORDED_PER_MINUTE`]).
pub(crate) async fn refused(
    app: &AppState,
    source: &str,
    reason: &str,
    correlation_id: &str,
    address: Option<IpAddr>,
) {
    let (record, skipped) = app
        .receivers
        .refusals
        .take(source, address, crate::ids::now_unix());
    let from = address.map_or_else(|| "-".to_owned(), |a| a.to_string());
    if let Some(skipped) = skipped {
        tracing::warn!(
            source,
            address = %from,
            skipped,
            "IdP event deliveries refused without a record in the last minute (rate bound)"
        );
        audit(
            app,
            source,
            "event.refused.summary",
            &from,
            &format!("refused: {skipped} more deliveries, not recorded one by one"),
            "-",
            Value::Null,
        )
        .await;
    }
    if !record {
        tracing::debug!(source, reason, address = %from, "IdP event delivery refused");
        return;
    }
    tracing::warn!(source, reason, address = %from, "IdP event delivery refused");
    audit(
        app,
        source,
        "event.refused",
        &from,
        &format!("refused: {reason}"),
        correlation_id,
        Value::Null,
    )
    .await;
}

#[cfg(test)]
mod refusal_bound_tests {
    use super::*;

    #[test]
    fn each_receiver_and_address_has_its_own_budget() {
        let budgets = RefusalBudgets::default();
        let minute = 1_000 * 60;
        let flood: Option<IpAddr> = Some("192.0.2.66".parse().unwrap());
        let recorded = (0..50)
            .filter(|_| budgets.take("ssf", flood, minute).0)
            .count();
        assert_eq!(recorded, REFUSALS_RECORDED_PER_MINUTE as usize);
        // The flood hides nothing from another address, nor on another receiver.
        assert!(
            budgets
                .take("ssf", Some("192.0.2.7".parse().unwrap()), minute)
                .0
        );
        assert!(budgets.take("backchannel_logout", flood, minute).0);
        assert_eq!(budgets.take("ssf", flood, minute + 60), (true, Some(30)));
    }
}

/// The request body as a compact token: UTF-8, surrounding whitespace trimmed.
pub(crate) fn body_token(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Seconds since the epoch of an `event_timestamp`. Okta's SET examples carry milliseconds
/// (13 digits) where CAEP specifies seconds; both are accepted (docs/providers.md, Okta).
pub(crate) fn event_timestamp(value: Option<&Value>) -> Option<i64> {
    let n = value?.as_f64()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    // 10^11 s is the year 5138; 10^11 ms is 1973. Anything above is milliseconds.
    Some(if n >= 1e11 { n / 1000.0 } else { n } as i64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::test_env::Env;
    use super::*;
    use crate::store::Store;

    #[test]
    fn subject_identifiers_parse_the_supported_formats_only() {
        assert_eq!(
            SubjectId::parse(&json!({"format": "iss_sub", "iss": "https://i", "sub": "u1"})),
            Ok(SubjectId::IssSub {
                iss: "https://i".into(),
                sub: "u1".into()
            })
        );
        assert_eq!(
            SubjectId::parse(&json!({"format": "email", "email": "a@b.example"})),
            Ok(SubjectId::Email("a@b.example".into()))
        );
        assert_eq!(
            SubjectId::parse(&json!({"format": "opaque", "id": "00u1"})),
            Ok(SubjectId::Opaque("00u1".into()))
        );
        for bad in [
            json!("alice"),
            json!({"iss": "https://i", "sub": "u1"}),
            json!({"format": "iss_sub", "sub": "u1"}),
            json!({"format": "iss_sub", "iss": "https://i", "sub": ""}),
            json!({"format": "email", "email": "not-an-address"}),
            json!({"format": "opaque", "id": 42}),
            json!({"format": "phone_number", "phone_number": "+1"}),
        ] {
            assert!(SubjectId::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_timestamps_in_seconds_or_milliseconds() {
        // Okta's SET samples carry milliseconds (fixture ssf_set_caep_credential_change_*).
        assert_eq!(
            event_timestamp(Some(&json!(1615304991643_i64))),
            Some(1615304991)
        );
        assert_eq!(event_timestamp(Some(&json!(1702448550))), Some(1702448550));
        assert_eq!(
            event_timestamp(Some(&json!(1702448550.9))),
            Some(1702448550)
        );
        assert_eq!(event_timestamp(Some(&json!("1702448550"))), None);
        assert_eq!(event_timestamp(Some(&json!(-1))), None);
        assert_eq!(event_timestamp(None), None);
    }

    #[test]
    fn issuers_match_exactly_but_for_one_trailing_slash() {
        assert!(same_issuer(
            "https://issuer.example.com/",
            "https://issuer.example.com"
        ));
        assert!(same_issuer("https://a.example", "https://a.example"));
        assert!(!same_issuer("https://a.example", "https://A.example"));
        assert!(!same_issuer("https://a.example/x", "https://a.example"));
    }

    #[tokio::test]
    async fn identities_are_found_by_email_without_case_unless_ambiguous_or_deleted() {
        let env = Env::start().await;
        let provider = env.app.mapping.upstream_id.clone();
        env.add_identity("sub-1", "alice", Some("Alice@Example.org"))
            .await;
        let found = env
            .store
            .identity_by_email(&provider, "alice@example.ORG")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.subject, "sub-1");
        // Another provider's identities are not considered.
        assert!(env
            .store
            .identity_by_email("other", "alice@example.org")
            .await
            .unwrap()
            .is_none());
        // Two identities with one address: no guess.
        env.add_identity("sub-2", "alice2", Some("alice@example.org"))
            .await;
        assert!(env
            .store
            .identity_by_email(&provider, "alice@example.org")
            .await
            .unwrap()
            .is_none());
        env.store
            .set_identity_email(&provider, "sub-2", None)
            .await
            .unwrap();
        assert!(env
            .store
            .identity_by_email(&provider, "alice@example.org")
            .await
            .unwrap()
            .is_some());
        env.store
            .tombstone_identity(&provider, "sub-1", 1)
            .await
            .unwrap();
        assert!(env
            .store
            .identity_by_email(&provider, "alice@example.org")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn sign_in_records_the_verified_email_only() {
        let env = Env::start().await;
        let provider = env.app.mapping.upstream_id.clone();
        let sign_in = |claims: serde_json::Value| {
            let app = env.app.clone();
            async move {
                let claims = claims.as_object().unwrap().clone();
                crate::signin::resolve(
                    &claims,
                    app.provider.as_ref(),
                    &app.mapping,
                    app.store.as_ref(),
                    app.homeserver.as_ref(),
                )
                .await
                .unwrap()
            }
        };
        sign_in(json!({"sub": "s-bob", "preferred_username": "bob",
                       "email": "bob@example.org", "email_verified": true}))
        .await;
        let bob = env
            .store
            .identity_by_email(&provider, "bob@example.org")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bob.subject, "s-bob");
        // An address the IdP does not vouch for replaces nothing with itself: it clears.
        sign_in(json!({"sub": "s-bob", "preferred_username": "bob",
                       "email": "mallory@example.org", "email_verified": false}))
        .await;
        for address in ["bob@example.org", "mallory@example.org"] {
            assert!(env
                .store
                .identity_by_email(&provider, address)
                .await
                .unwrap()
                .is_none());
        }
    }
}
