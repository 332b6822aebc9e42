//! Token re-validation (`upstream.revalidation = "introspect"` or `"jwt"`, docs/token-model.md).
//!
//! `jwt` verifies JWT access tokens locally with the IdP's cached keys (signature, `iss`,
//! `exp`); a token that fails is as good as inactive. Opaque tokens cannot be judged this way
//! (a warning is logged once).
//!
//! Matrix clients hold the IdP's own access tokens, and Synapse presents them at mxidp's
//! introspection endpoint whenever its own cache (2 minutes) has none. That endpoint is the hot
//! path and does no network I/O: it answers from mxidp's session state, then hands the active
//! token to [`Revalidator::nudge`], which returns at once. At most one RFC 7662 introspection per
//! token runs at the IdP at a time (concurrent nudges of a token coalesce into the one in
//! flight), and a token's verdict is reused for `upstream.revalidation_cache_seconds`. An IdP
//! that calls the token inactive ends the session through the durable event pipeline (source
//! `revalidation`, [`IdpEvent::MxidpSessionEnded`]), which deletes the device in Synapse; the
//! next request with the token is refused.
//!
//! Only an answer ends anything: an unreachable IdP or an error answer changes nothing (it is
//! not retried before the cache period is over, so an outage does not multiply the calls). A
//! token within [`EXPIRY_MARGIN`] of its own expiry is not judged: the IdP may call it inactive
//! because it has just expired, which says nothing about the session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::cache::ActiveToken;
use crate::config::Revalidation;
use crate::ids::{now_unix, TokenHash};
use crate::jwt::{verify_jwt, JwtRules, TokenError};
use crate::sessions::EndCause;
use crate::store::SessionState;
use crate::upstream::{TokenTypeHint, Upstream, UpstreamError};

static UNSUPPORTED_WARNED: AtomicBool = AtomicBool::new(false);

/// The `source` of the events re-validation accepts.
pub const SOURCE: &str = crate::sessions::EndCause::Revalidation.source();
/// Tokens this close to their expiry are not sent to the IdP.
pub const EXPIRY_MARGIN: i64 = 30;
/// Above this many remembered tokens, verdicts older than the cache period are dropped.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
enum Entry {
    InFlight,
    Checked(Instant),
}

/// The verdict cache and the in-flight set of re-validation.
#[derive(Debug)]
pub struct Revalidator {
    cache_for: Duration,
    mode: Revalidation,
    entries: Mutex<HashMap<TokenHash, Entry>>,
    /// Introspection calls allowed per minute (`None`: no limit). An IdP whose introspection is
    /// rate-limited (Okta shares one bucket with every `/oauth2` call) keeps room for sign-ins.
    budget: Option<u32>,
    pace: Mutex<Pace>,
}

/// The introspection calls of the current minute, and a pause the IdP asked for (429).
#[derive(Debug)]
struct Pace {
    window_start: Instant,
    calls: u32,
    paused_until: Option<Instant>,
}

impl Revalidator {
    /// Introspection at the IdP.
    pub fn new(cache_for: Duration) -> Self {
        Self::with_mode(cache_for, Revalidation::Introspect)
    }

    pub fn with_mode(cache_for: Duration, mode: Revalidation) -> Self {
        Self {
            cache_for,
            mode,
            entries: Mutex::new(HashMap::new()),
            budget: None,
            pace: Mutex::new(Pace {
                window_start: Instant::now(),
                calls: 0,
                paused_until: None,
            }),
        }
    }

    /// The same with at most `per_minute` introspection calls a minute.
    pub fn with_budget(mut self, per_minute: Option<u32>) -> Self {
        self.budget = per_minute.filter(|n| *n > 0);
        self
    }

    /// Takes one introspection call from the budget at `now`: false while the IdP asked to
    /// pause (429) or the minute's calls are spent. The token is then simply not judged this
    /// time; a later introspection by Synapse nudges it again.
    fn take_call(&self, now: Instant) -> bool {
        let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        if pace.paused_until.is_some_and(|until| now < until) {
            return false;
        }
        if now.duration_since(pace.window_start) >= Duration::from_secs(60) {
            pace.window_start = now;
            pace.calls = 0;
        }
        if self.budget.is_some_and(|budget| pace.calls >= budget) {
            return false;
        }
        pace.calls += 1;
        true
    }

    /// The IdP answered 429: no introspection until it says (a minute when it did not).
    fn pause(&self, retry_after: Option<Duration>) {
        let wait = retry_after.unwrap_or(Duration::from_secs(60));
        tracing::warn!(
            wait_s = wait.as_secs(),
            "revalidation: the IdP's rate limit is reached; pausing introspection"
        );
        self.pace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused_until = Some(Instant::now() + wait);
    }

    /// Claims the check of `hash`: true when no check is in flight and the last verdict is
    /// older than the cache period.
    fn claim(&self, hash: TokenHash) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > PRUNE_ABOVE {
            let cache_for = self.cache_for;
            entries.retain(|_, e| match e {
                Entry::InFlight => true,
                Entry::Checked(at) => at.elapsed() < cache_for,
            });
        }
        match entries.get(&hash) {
            Some(Entry::InFlight) => false,
            Some(Entry::Checked(at)) if at.elapsed() < self.cache_for => false,
            _ => {
                entries.insert(hash, Entry::InFlight);
                true
            }
        }
    }

    fn done(&self, hash: TokenHash) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, Entry::Checked(Instant::now()));
    }

    /// Re-validates `token` (active in mxidp's state) at the IdP in the background unless that
    /// is cached or in flight; never waits. Returns whether a check was started.
    pub fn nudge(&self, app: &App, token: &str, active: &ActiveToken) -> bool {
        let now = now_unix();
        if active
            .expires_at
            .is_some_and(|exp| exp - now < EXPIRY_MARGIN)
        {
            return false;
        }
        let hash = TokenHash::of(token);
        if !self.claim(hash) {
            return false;
        }
        if self.mode == Revalidation::Introspect && !self.take_call(Instant::now()) {
            // Not judged now: forget the claim so that a later nudge may try.
            self.entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&hash);
            return false;
        }
        let app = app.clone();
        let session_id = active.session_id.clone();
        tokio::spawn(async move {
            check(&app, &session_id).await;
            if let Some(revalidator) = &app.revalidator {
                revalidator.done(hash);
            }
        });
        true
    }
}

/// What local verification says of a JWT access token.
#[derive(Debug, PartialEq, Eq)]
pub enum JwtVerdict {
    Valid,
    /// A definite failure: bad signature, foreign issuer, expired, forbidden algorithm.
    Invalid(String),
    /// No verdict: not a JWT, keys unavailable, a key not (yet) known.
    Unknown(String),
}

/// Verifies a JWT access token with the IdP's cached keys and the one JWT verifier: the
/// ID-token algorithm allow-list, `typ` (none, `JWT` or RFC 9068's `at+jwt`), `iss`, an `aud`
/// naming mxidp's client or the adapter's API audience (or an `azp` naming mxidp's client),
/// `exp` and `nbf`.
pub async fn verify_access_jwt(
    upstream: &Upstream,
    extra_audience: Option<String>,
    token: &str,
    now: i64,
) -> JwtVerdict {
    let settings = upstream.settings();
    let mut audiences = vec![settings.client_id.clone()];
    audiences.extend(extra_audience);
    let rules = JwtRules {
        types: &[None, Some("jwt"), Some("at+jwt")],
        issuer: upstream.metadata().issuer.as_str(),
        audiences: &audiences,
        require_jti: false,
        authorized_party: Some(settings.client_id.as_str()),
        require_iat: false,
        require_exp: true,
        max_age_without_exp: None,
        leeway: settings.leeway.as_secs() as i64,
        now,
    };
    match verify_jwt(token, upstream.jwks(), &settings.allowed_algorithms, &rules).await {
        Ok(_) => JwtVerdict::Valid,
        Err(
            e @ (TokenError::Malformed(_)
            | TokenError::KeysUnavailable(_)
            | TokenError::UnknownKey(_)),
        ) => JwtVerdict::Unknown(e.to_string()),
        Err(e) => JwtVerdict::Invalid(e.to_string()),
    }
}

/// Checks the IdP access token paired with the session's current Matrix token: the client
/// holds only mxidp's token, the IdP's stays sealed in the session.
async fn check(app: &App, session_id: &str) {
    let Some(upstream) = app.upstream.get() else {
        return;
    };
    let session = match app.store.session(session_id).await {
        Ok(Some(session)) if session.state == SessionState::Active => session,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(session = %session_id, error = %e, "revalidation: cannot read the session");
            return;
        }
    };
    let Some(token) = session
        .sealed_access_token
        .as_deref()
        .and_then(|sealed| app.sealer.open_secret(sealed).ok())
    else {
        return;
    };
    let token = token.expose();
    let mode = app.revalidator.as_ref().map(|r| r.mode);
    if mode == Some(Revalidation::Jwt) {
        let audience = app.provider.access_token_audience();
        match verify_access_jwt(&upstream, audience, token, now_unix()).await {
            JwtVerdict::Valid => return,
            JwtVerdict::Unknown(why) => {
                if !UNSUPPORTED_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%why, "upstream.revalidation = \"jwt\" cannot judge this IdP's access tokens");
                }
                return;
            }
            JwtVerdict::Invalid(why) => {
                tracing::info!(session = %session_id, %why, "revalidation: the access token fails local verification");
                end_through_pipeline(app, session_id).await;
                return;
            }
        }
    }
    let answer = match upstream.introspect(token, TokenTypeHint::AccessToken).await {
        Ok(answer) => answer,
        Err(UpstreamError::Unsupported(what)) => {
            // Once per process: the IdP's discovery names no introspection endpoint.
            if !UNSUPPORTED_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "upstream.revalidation = \"introspect\" but the IdP offers no {what}; tokens are not re-validated"
                );
            }
            return;
        }
        Err(UpstreamError::RateLimited { retry_after }) => {
            if let Some(revalidator) = &app.revalidator {
                revalidator.pause(retry_after);
            }
            return;
        }
        Err(e) => {
            tracing::debug!(session = %session_id, error = %e, "revalidation: no introspection answer");
            return;
        }
    };
    if answer.active {
        return;
    }
    tracing::info!(session = %session_id, "revalidation: the IdP calls the token inactive; ending the session");
    end_through_pipeline(app, session_id).await;
}

/// Ends the session through the durable session end.
async fn end_through_pipeline(app: &App, session_id: &str) {
    let session = match app.store.session(session_id).await {
        Ok(Some(session)) if session.state == SessionState::Active => session,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(session = %session_id, error = %e, "revalidation: cannot read the session");
            return;
        }
    };
    if let Err(e) = crate::sessions::end_session(app, &session, EndCause::Revalidation).await {
        tracing::warn!(session = %session_id, error = %e, "revalidation: cannot store the event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::test_idp::TestIdp;
    use serde_json::json;

    #[tokio::test]
    async fn jwt_mode_judges_signature_issuer_and_expiry_locally() {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        let now = now_unix();
        let claims = |patch: serde_json::Value| {
            let mut c = json!({"iss": idp.issuer(), "aud": crate::upstream::test_idp::CLIENT_ID,
                "sub": "alice-sub", "iat": now, "exp": now + 300});
            for (k, v) in patch.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let good = idp.mint_id_token(TestIdp::default_header(), claims(json!({})));
        assert_eq!(
            verify_access_jwt(&upstream, None, &good, now).await,
            JwtVerdict::Valid
        );

        let expired = idp.mint_id_token(
            TestIdp::default_header(),
            claims(json!({"exp": now - 3600})),
        );
        assert!(matches!(
            verify_access_jwt(&upstream, None, &expired, now).await,
            JwtVerdict::Invalid(_)
        ));
        let foreign = idp.mint_id_token(
            TestIdp::default_header(),
            claims(json!({"iss": "https://evil.example/"})),
        );
        assert!(matches!(
            verify_access_jwt(&upstream, None, &foreign, now).await,
            JwtVerdict::Invalid(_)
        ));
        let mut tampered = good.clone();
        tampered.truncate(tampered.len() - 4);
        tampered.push_str("AAAA");
        assert!(matches!(
            verify_access_jwt(&upstream, None, &tampered, now).await,
            JwtVerdict::Invalid(_)
        ));
        let none = idp.mint_id_token(json!({"alg": "none"}), claims(json!({})));
        assert!(matches!(
            verify_access_jwt(&upstream, None, &none, now).await,
            JwtVerdict::Invalid(_)
        ));
        // The audience: mxidp's client, the adapter's API audience, or mxidp as `azp`.
        let other_api = idp.mint_id_token(
            TestIdp::default_header(),
            claims(json!({"aud": "https://api.example/"})),
        );
        assert!(matches!(
            verify_access_jwt(&upstream, None, &other_api, now).await,
            JwtVerdict::Invalid(why) if why.contains("audience")
        ));
        assert_eq!(
            verify_access_jwt(
                &upstream,
                Some("https://api.example/".into()),
                &other_api,
                now
            )
            .await,
            JwtVerdict::Valid
        );
        let mut keycloak_style = claims(json!({"azp": crate::upstream::test_idp::CLIENT_ID}));
        keycloak_style.as_object_mut().unwrap().remove("aud");
        let keycloak_style = idp.mint_id_token(TestIdp::default_header(), keycloak_style);
        assert_eq!(
            verify_access_jwt(&upstream, None, &keycloak_style, now).await,
            JwtVerdict::Valid
        );
        // RFC 9068's `typ` is accepted; a logout token is no access token.
        let mut at_jwt = TestIdp::default_header();
        at_jwt["typ"] = json!("at+jwt");
        let at_jwt = idp.mint_id_token(at_jwt, claims(json!({})));
        assert_eq!(
            verify_access_jwt(&upstream, None, &at_jwt, now).await,
            JwtVerdict::Valid
        );
        let mut logout = TestIdp::default_header();
        logout["typ"] = json!("logout+jwt");
        let logout = idp.mint_id_token(logout, claims(json!({})));
        assert!(matches!(
            verify_access_jwt(&upstream, None, &logout, now).await,
            JwtVerdict::Invalid(_)
        ));
        // An opaque token gets no verdict: nothing is ended on a guess.
        assert!(matches!(
            verify_access_jwt(&upstream, None, "opaque-token", now).await,
            JwtVerdict::Unknown(_)
        ));
    }

    #[test]
    fn one_check_per_token_in_flight_and_per_cache_period() {
        let r = Revalidator::new(Duration::from_millis(50));
        let a = TokenHash::of("a");
        assert!(r.claim(a));
        // Concurrent nudges of the same token coalesce into the check in flight.
        assert!(!r.claim(a));
        assert!(r.claim(TokenHash::of("b")));
        r.done(a);
        // The verdict is cached…
        assert!(!r.claim(a));
        std::thread::sleep(Duration::from_millis(60));
        // …for the cache period only.
        assert!(r.claim(a));
    }

    #[test]
    fn the_budget_allows_so_many_calls_a_minute_and_a_429_pauses_them() {
        let revalidator = Revalidator::new(Duration::from_secs(60)).with_budget(Some(2));
        let start = Instant::now();
        assert!(revalidator.take_call(start));
        assert!(revalidator.take_call(start + Duration::from_secs(1)));
        assert!(
            !revalidator.take_call(start + Duration::from_secs(2)),
            "spent"
        );
        assert!(
            revalidator.take_call(start + Duration::from_secs(61)),
            "a new minute"
        );
        revalidator.pause(Some(Duration::from_secs(30)));
        let paused = Instant::now();
        assert!(!revalidator.take_call(paused + Duration::from_secs(29)));
        assert!(revalidator.take_call(paused + Duration::from_secs(31)));
        // Without a budget only the pause limits.
        let open = Revalidator::new(Duration::from_secs(60)).with_budget(None);
        assert!((0..1_000).all(|_| open.take_call(start)));
    }
}
