//! The one JWT verifier: the signature ([`verify_jws`]: allow-listed asymmetric algorithms, the
//! key by `kid` from the configured key set only), then `typ`, `iss`, `aud` (or `azp`), `jti`,
//! `iat`, `exp` and `nbf` by the caller's [`JwtRules`]. Back-channel logout tokens, Security
//! Event Tokens, global-token-revocation JWTs and `jwt` re-validation of the IdP's access tokens
//! all go through it. ID tokens share the signature layer and add OpenID Connect's own rules
//! (`nonce`, `azp` with several audiences, `auth_time`) in `upstream::id_token`.

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::upstream::{string_claim, time_claim, verify_jws, IdTokenError, JwksCache};

/// Why a signed token was refused. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's key or algorithm is not acceptable: {0}")]
    Key(String),
    /// No key of the set has this `kid` (yet): the keys may have rotated since.
    #[error("{0}")]
    UnknownKey(String),
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the signing keys could not be fetched: {0}")]
    KeysUnavailable(String),
    #[error("the token's `typ` header {0:?} is not the one this receiver takes")]
    WrongType(Option<String>),
    #[error("the token was issued by {0:?}, not by the configured issuer")]
    WrongIssuer(String),
    #[error("the token's audience does not name this receiver")]
    WrongAudience,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token has no `exp` and was issued too long ago")]
    TooOld,
    #[error("the token has no valid `{0}` claim")]
    Claim(&'static str),
    #[error("{0}")]
    Invalid(String),
}

impl From<IdTokenError> for TokenError {
    fn from(e: IdTokenError) -> Self {
        match e {
            IdTokenError::Malformed(m) => TokenError::Malformed(m),
            IdTokenError::Encrypted => {
                TokenError::Malformed("encrypted tokens (JWE) are not accepted".into())
            }
            IdTokenError::AlgorithmNotAllowed(alg) => {
                TokenError::Key(format!("algorithm {alg:?} is not allowed"))
            }
            IdTokenError::UnsupportedCriticalHeader(names) => {
                TokenError::Malformed(format!("unsupported critical headers {names:?}"))
            }
            IdTokenError::UnknownKey { kid } => {
                TokenError::UnknownKey(format!("no configured key matches kid {kid:?}"))
            }
            IdTokenError::KeysUnavailable(why) => TokenError::KeysUnavailable(why),
            IdTokenError::BadSignature => TokenError::BadSignature,
            // The remaining variants are claim checks of ID tokens, which the receivers do not
            // use; mapped for completeness.
            other => TokenError::Invalid(other.to_string()),
        }
    }
}

/// What a receiver requires of its JWT beyond a good signature.
pub(crate) struct JwtRules<'a> {
    /// Accepted `typ` header values, compared without case and without an `application/`
    /// prefix (RFC 7515 §4.1.9). `None` in the list accepts a token without `typ`.
    pub types: &'a [Option<&'a str>],
    /// The exact `iss`.
    pub issuer: &'a str,
    /// The token's `aud` (string or array) must contain one of these.
    pub audiences: &'a [String],
    /// Whether a `jti` must be present (events are deduplicated by it).
    pub require_jti: bool,
    /// When `aud` names none of `audiences`: accept the token if its `azp` is this (Keycloak
    /// access tokens name mxidp as `azp`, their audience being the resource servers).
    pub authorized_party: Option<&'a str>,
    pub require_iat: bool,
    pub require_exp: bool,
    /// Without `exp`, a token whose `iat` is older than this is refused.
    pub max_age_without_exp: Option<i64>,
    pub leeway: i64,
    pub now: i64,
}

/// A verified JWT with the registered claims the receivers use.
#[derive(Debug)]
pub(crate) struct VerifiedJwt {
    pub claims: Map<String, Value>,
    /// Empty when the rules did not require one and the token had none.
    pub jti: String,
    pub iat: Option<i64>,
}

/// Verifies the signature with `jwks` (allow-listed algorithms only), then `typ`, `iss`,
/// `aud`, `jti`, `iat`, `exp`, `nbf`.
pub(crate) async fn verify_jwt(
    token: &str,
    jwks: &JwksCache,
    algorithms: &[Algorithm],
    rules: &JwtRules<'_>,
) -> Result<VerifiedJwt, TokenError> {
    let verified = verify_jws(token, jwks, algorithms).await?;
    check_claims(&verified.header, verified.claims, rules)
}

/// The checks after the signature: `typ` from the header, then the registered claims.
pub(crate) fn check_claims(
    header: &Map<String, Value>,
    claims: Map<String, Value>,
    rules: &JwtRules<'_>,
) -> Result<VerifiedJwt, TokenError> {
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(TokenError::Malformed("`typ` is not a string".into())),
    };
    let normalised = typ.map(|t| {
        let lower = t.to_ascii_lowercase();
        lower
            .strip_prefix("application/")
            .map(str::to_owned)
            .unwrap_or(lower)
    });
    if !rules
        .types
        .iter()
        .any(|accepted| accepted.map(str::to_ascii_lowercase) == normalised)
    {
        return Err(TokenError::WrongType(typ.map(str::to_owned)));
    }
    let iss = claim_str(&claims, "iss")?.ok_or(TokenError::Claim("iss"))?;
    if iss != rules.issuer {
        return Err(TokenError::WrongIssuer(iss));
    }
    let aud: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or(TokenError::Claim("aud"))?,
        // An access token may name its client only as `azp`.
        None if rules.authorized_party.is_some() => Vec::new(),
        _ => return Err(TokenError::Claim("aud")),
    };
    let azp_ok = || {
        rules
            .authorized_party
            .is_some_and(|party| claims.get("azp").and_then(Value::as_str) == Some(party))
    };
    if !aud.iter().any(|a| rules.audiences.iter().any(|e| e == a)) && !azp_ok() {
        return Err(TokenError::WrongAudience);
    }
    let jti = claim_str(&claims, "jti")?.filter(|j| !j.is_empty());
    let jti = match jti {
        Some(jti) => jti,
        None if rules.require_jti => return Err(TokenError::Claim("jti")),
        None => String::new(),
    };
    let (now, leeway) = (rules.now, rules.leeway);
    let iat = claim_time(&claims, "iat")?;
    if rules.require_iat && iat.is_none() {
        return Err(TokenError::Claim("iat"));
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(TokenError::IssuedInFuture);
    }
    match claim_time(&claims, "exp")? {
        Some(exp) if exp.saturating_add(leeway) <= now => return Err(TokenError::Expired),
        Some(_) => {}
        None if rules.require_exp => return Err(TokenError::Claim("exp")),
        None => {
            if let (Some(max_age), Some(iat)) = (rules.max_age_without_exp, iat) {
                if iat.saturating_add(max_age).saturating_add(leeway) < now {
                    return Err(TokenError::TooOld);
                }
            }
        }
    }
    if claim_time(&claims, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    Ok(VerifiedJwt { claims, jti, iat })
}

pub(crate) fn claim_str(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, TokenError> {
    string_claim(claims, name).map_err(|_| TokenError::Claim(name))
}

fn claim_time(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    time_claim(claims, name).map_err(|_| TokenError::Claim(name))
}
