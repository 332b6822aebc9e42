//! ID-token validation (OpenID Connect Core 1.0 §3.1.3.7) with the IdP's public keys.
//!
//! The header is parsed here rather than by `jsonwebtoken`, so that `alg: none`, HMAC
//! algorithms and critical extensions are refused with a precise error before any key is looked
//! up. Only the signature check itself is delegated to `jsonwebtoken`'s primitives; the claims
//! checks are done on the decoded claim map so that every failure has its own variant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::jwks::JwksCache;

/// The validated claims of an ID token.
#[derive(Debug, Clone)]
pub struct IdTokenClaims {
    /// The IdP's subject identifier (the stable key for most IdPs, docs/identity.md).
    pub sub: String,
    /// The IdP session id, used to match back-channel logout tokens.
    pub sid: Option<String>,
    /// Every claim of the token, including the ones below.
    pub claims: Map<String, Value>,
    pub iss: String,
    pub aud: Vec<String>,
    pub azp: Option<String>,
    pub exp: i64,
    pub iat: i64,
    pub nonce: Option<String>,
    pub auth_time: Option<i64>,
}

/// Why an ID token was refused. Messages never contain the token itself.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    #[error("the ID token is encrypted (JWE); mxidp only accepts signed ID tokens")]
    Encrypted,
    #[error("the ID token's algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("the ID token has critical header parameters mxidp does not understand: {0:?}")]
    UnsupportedCriticalHeader(Vec<String>),
    #[error("no signing key of the IdP matches the ID token (kid {kid:?})")]
    UnknownKey { kid: Option<String> },
    #[error("the IdP's signing keys could not be fetched: {0}")]
    KeysUnavailable(String),
    #[error("the ID token's signature is invalid")]
    BadSignature,
    #[error("the ID token was issued by {found:?}, not by {expected:?}")]
    WrongIssuer { expected: String, found: String },
    #[error("the ID token's audience {found:?} does not include mxidp's client id")]
    WrongAudience { found: Vec<String> },
    #[error("the ID token has several audiences but no `azp` claim")]
    MissingAuthorizedParty,
    #[error("the ID token's authorized party {found:?} is not mxidp's client id")]
    WrongAuthorizedParty { found: String },
    #[error("the ID token's nonce does not match the one sent with the authorization request")]
    WrongNonce,
    #[error("the ID token has no nonce, but one was sent with the authorization request")]
    MissingNonce,
    #[error("the ID token expired at {exp}")]
    Expired { exp: i64 },
    #[error("the ID token is not valid before {nbf}")]
    NotYetValid { nbf: i64 },
    #[error("the ID token was issued in the future ({iat})")]
    IssuedInFuture { iat: i64 },
    #[error("the ID token has no valid `{0}` claim")]
    MissingClaim(&'static str),
}

/// What an ID token is checked against.
pub(crate) struct Expectations<'a> {
    /// The issuer from the discovery document, compared byte for byte.
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub allowed_algorithms: &'a [Algorithm],
    pub nonce: Option<&'a str>,
    pub leeway: Duration,
    pub now: SystemTime,
}

pub(crate) async fn validate(
    token: &str,
    jwks: &JwksCache,
    expect: &Expectations<'_>,
) -> Result<IdTokenClaims, IdTokenError> {
    let verified = verify_jws(token, jwks, expect.allowed_algorithms).await?;
    check_claims(verified.claims, expect)
}

/// A compact JWS whose signature checked out against a configured key set.
pub(crate) struct VerifiedJws {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

/// Parses a compact JWS, refuses `none`, HMAC and algorithms outside `allowed`, refuses
/// critical headers, picks the key by `kid` from `jwks` only, and verifies the signature on the
/// exact bytes received. Shared by ID tokens, back-channel logout tokens, Security Event Tokens
/// and global-token-revocation JWTs; each caller checks its own claims afterwards.
pub(crate) async fn verify_jws(
    token: &str,
    jwks: &JwksCache,
    allowed: &[Algorithm],
) -> Result<VerifiedJws, IdTokenError> {
    let parsed = ParsedJws::parse(token, allowed)?;
    let key = jwks.key_for(parsed.kid(), parsed.alg).await?;
    parsed.verify(key.key())
}

/// A compact JWS whose header was checked (algorithm allowed, no critical extensions) and
/// whose signature is still to be verified: [`verify_jws`] waits for the key set when the
/// `kid` is unknown; the JWT shim, which must answer without network I/O, takes the key it
/// has now ([`JwksCache::key_now`]).
pub(crate) struct ParsedJws<'t> {
    pub header: Map<String, Value>,
    pub alg: Algorithm,
    /// The exact bytes that were signed: `header.payload` as received.
    message: &'t str,
    payload_b64: &'t str,
    signature_b64: &'t str,
}

impl<'t> ParsedJws<'t> {
    pub(crate) fn parse(token: &'t str, allowed: &[Algorithm]) -> Result<Self, IdTokenError> {
        let segments: Vec<&str> = token.split('.').collect();
        match segments.len() {
            3 => {}
            // RFC 7516 compact serialization: an encrypted token. mxidp registers no
            // encryption key at the IdP, so this is either a misconfiguration or an attack.
            5 => return Err(IdTokenError::Encrypted),
            n => {
                return Err(IdTokenError::Malformed(format!(
                    "{n} segments instead of 3"
                )))
            }
        }
        let (header_b64, payload_b64, signature_b64) = (segments[0], segments[1], segments[2]);
        let header = decode_json_object(header_b64, "header")?;
        let alg = allowed_algorithm(&header, allowed)?;
        if let Some(crit) = header.get("crit") {
            // RFC 7515 §4.1.11: a recipient must reject critical extensions it does not
            // process; mxidp processes none.
            let names = crit.as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            });
            return Err(IdTokenError::UnsupportedCriticalHeader(
                names.unwrap_or_default(),
            ));
        }
        // Only `kid` selects a key. `jku`, `x5u`, `jwk` and `x5c` are deliberately ignored: a
        // key or key URL carried by the token itself would let anyone sign tokens mxidp accepts.
        if header.get("kid").is_some_and(|kid| !kid.is_string()) {
            return Err(IdTokenError::Malformed("`kid` is not a string".into()));
        }
        Ok(Self {
            header,
            alg,
            message: &token[..header_b64.len() + 1 + payload_b64.len()],
            payload_b64,
            signature_b64,
        })
    }

    pub(crate) fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// The payload, decoded but not yet trusted: only for choosing which issuer's keys verify
    /// the token (its `iss`), never for a decision.
    pub(crate) fn untrusted_claims(&self) -> Result<Map<String, Value>, IdTokenError> {
        decode_json_object(self.payload_b64, "payload")
    }

    /// Verifies the signature on the exact bytes received, then decodes the claims.
    pub(crate) fn verify(self, key: &DecodingKey) -> Result<VerifiedJws, IdTokenError> {
        match jsonwebtoken::crypto::verify(
            self.signature_b64,
            self.message.as_bytes(),
            key,
            self.alg,
        ) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(IdTokenError::BadSignature),
        }
        let claims = decode_json_object(self.payload_b64, "payload")?;
        Ok(VerifiedJws {
            header: self.header,
            claims,
        })
    }
}

fn allowed_algorithm(
    header: &Map<String, Value>,
    allowed: &[Algorithm],
) -> Result<Algorithm, IdTokenError> {
    let Some(name) = header.get("alg").and_then(Value::as_str) else {
        return Err(IdTokenError::Malformed("the header has no `alg`".into()));
    };
    let refused = || IdTokenError::AlgorithmNotAllowed(name.to_owned());
    // `none` is not an `Algorithm` at all, so it cannot be in the allow-list.
    let alg: Algorithm = name.parse().map_err(|_| refused())?;
    // HMAC would need a shared secret; mxidp only holds the IdP's public keys, and verifying
    // HS256 with a public key as the secret is the classic algorithm-confusion forgery. Refused
    // even if the configuration lists it.
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
        || !allowed.contains(&alg)
    {
        return Err(refused());
    }
    Ok(alg)
}

fn decode_json_object(segment: &str, what: &str) -> Result<Map<String, Value>, IdTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| IdTokenError::Malformed(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(IdTokenError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

fn check_claims(
    claims: Map<String, Value>,
    expect: &Expectations<'_>,
) -> Result<IdTokenClaims, IdTokenError> {
    let iss = string_claim(&claims, "iss")?.ok_or(IdTokenError::MissingClaim("iss"))?;
    if iss != expect.issuer {
        return Err(IdTokenError::WrongIssuer {
            expected: expect.issuer.to_owned(),
            found: iss,
        });
    }

    let aud = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(IdTokenError::MissingClaim("aud"))?,
        _ => return Err(IdTokenError::MissingClaim("aud")),
    };
    if !aud.iter().any(|a| a == expect.client_id) {
        return Err(IdTokenError::WrongAudience { found: aud });
    }
    // OIDC Core §3.1.3.7 (4, 5): with several audiences the authorized party must be named,
    // and whenever it is named it must be mxidp; otherwise a token minted for another client
    // that merely lists mxidp as an extra audience would be accepted.
    let azp = string_claim(&claims, "azp")?;
    match &azp {
        Some(azp) if azp != expect.client_id => {
            return Err(IdTokenError::WrongAuthorizedParty { found: azp.clone() });
        }
        None if aud.len() > 1 => return Err(IdTokenError::MissingAuthorizedParty),
        _ => {}
    }

    let nonce = string_claim(&claims, "nonce")?;
    if let Some(expected) = expect.nonce {
        match &nonce {
            None => return Err(IdTokenError::MissingNonce),
            Some(found)
                if !crate::secret::constant_time_eq(found.as_bytes(), expected.as_bytes()) =>
            {
                return Err(IdTokenError::WrongNonce);
            }
            _ => {}
        }
    }

    let now = expect
        .now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let leeway = i64::try_from(expect.leeway.as_secs()).unwrap_or(i64::MAX);
    let exp = time_claim(&claims, "exp")?.ok_or(IdTokenError::MissingClaim("exp"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(IdTokenError::Expired { exp });
    }
    if let Some(nbf) = time_claim(&claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(IdTokenError::NotYetValid { nbf });
        }
    }
    let iat = time_claim(&claims, "iat")?.ok_or(IdTokenError::MissingClaim("iat"))?;
    if iat > now.saturating_add(leeway) {
        return Err(IdTokenError::IssuedInFuture { iat });
    }
    let auth_time = time_claim(&claims, "auth_time")?;

    let sub = string_claim(&claims, "sub")?
        .filter(|s| !s.is_empty())
        .ok_or(IdTokenError::MissingClaim("sub"))?;
    let sid = string_claim(&claims, "sid")?;

    Ok(IdTokenClaims {
        sub,
        sid,
        iss,
        aud,
        azp,
        exp,
        iat,
        nonce,
        auth_time,
        claims,
    })
}

/// A claim that must be a string when present.
pub(crate) fn string_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, IdTokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(IdTokenError::MissingClaim(name)),
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional).
pub(crate) fn time_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, IdTokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.is_finite() => Ok(Some(f.floor() as i64)),
            _ => Err(IdTokenError::MissingClaim(name)),
        },
        Some(_) => Err(IdTokenError::MissingClaim(name)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::upstream::test_idp::{rsa_public_key_der, TestIdp, TestKey, CLIENT_ID};
    use crate::upstream::Upstream;

    const NONCE: &str = "n-0S6_WzA2Mj";

    async fn setup() -> (TestIdp, Upstream) {
        let idp = TestIdp::start().await;
        let upstream = idp.upstream().await;
        (idp, upstream)
    }

    /// Good claims with some members replaced (`null` removes a member).
    fn claims_with(idp: &TestIdp, changes: Value) -> Value {
        let mut claims = idp.id_token_claims(Some(NONCE));
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn header(alg: &str, kid: Option<&str>) -> Value {
        match kid {
            Some(kid) => json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            None => json!({"alg": alg, "typ": "JWT"}),
        }
    }

    #[tokio::test]
    async fn a_good_token_is_accepted_with_all_its_claims() {
        let (idp, upstream) = setup().await;
        let token = idp.mint_id_token(
            TestIdp::default_header(),
            claims_with(
                &idp,
                json!({"sid": "session-1", "auth_time": 1_700_000_000}),
            ),
        );
        let claims = upstream
            .validate_id_token(&token, Some(NONCE))
            .await
            .unwrap();
        assert_eq!(claims.sub, "alice-sub");
        assert_eq!(claims.sid.as_deref(), Some("session-1"));
        assert_eq!(claims.iss, idp.issuer());
        assert_eq!(claims.aud, [CLIENT_ID]);
        assert_eq!(claims.nonce.as_deref(), Some(NONCE));
        assert_eq!(claims.auth_time, Some(1_700_000_000));
        assert_eq!(claims.claims["preferred_username"], "alice");
    }

    #[tokio::test]
    async fn every_supported_key_type_verifies() {
        let (idp, upstream) = setup().await;
        for (alg, key) in [
            ("RS256", TestKey::Rsa),
            ("PS256", TestKey::Rsa),
            ("ES256", TestKey::Ec),
            ("EdDSA", TestKey::Ed),
        ] {
            let token = idp.mint_id_token(
                header(alg, Some(key.kid())),
                idp.id_token_claims(Some(NONCE)),
            );
            let result = upstream.validate_id_token(&token, Some(NONCE)).await;
            assert!(result.is_ok(), "{alg}: {result:?}");
        }
    }

    #[tokio::test]
    async fn a_token_without_kid_uses_the_single_key_of_its_type() {
        let (idp, upstream) = setup().await;
        let token = idp.mint_id_token(header("RS256", None), idp.id_token_claims(Some(NONCE)));
        assert!(upstream
            .validate_id_token(&token, Some(NONCE))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn wrong_audience_is_refused() {
        let (idp, upstream) = setup().await;
        for aud in [json!("someone-else"), json!(["a", "b"]), json!([])] {
            let token = idp.mint_id_token(
                TestIdp::default_header(),
                claims_with(&idp, json!({"aud": aud})),
            );
            let error = upstream
                .validate_id_token(&token, Some(NONCE))
                .await
                .unwrap_err();
            assert!(
                matches!(error, IdTokenError::WrongAudience { .. }),
                "{aud}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn audience_arrays_need_an_authorized_party_that_is_mxidp() {
        let (idp, upstream) = setup().await;
        let mint =
            |changes| idp.mint_id_token(TestIdp::default_header(), claims_with(&idp, changes));
        let several = json!([CLIENT_ID, "other-client"]);

        let token = mint(json!({"aud": several}));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::MissingAuthorizedParty)
        ));
        let token = mint(json!({"aud": several, "azp": "other-client"}));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::WrongAuthorizedParty { .. })
        ));
        // A single audience with a foreign azp is refused too.
        let token = mint(json!({"azp": "other-client"}));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::WrongAuthorizedParty { .. })
        ));
        let token = mint(json!({"aud": several, "azp": CLIENT_ID}));
        let claims = upstream
            .validate_id_token(&token, Some(NONCE))
            .await
            .unwrap();
        assert_eq!(claims.aud.len(), 2);
        let token = mint(json!({"aud": [CLIENT_ID]}));
        assert!(upstream
            .validate_id_token(&token, Some(NONCE))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn wrong_issuer_is_refused_even_if_it_differs_only_by_a_slash() {
        let (idp, upstream) = setup().await;
        for iss in [
            json!("https://evil.example/realms/test"),
            json!(format!("{}/", idp.issuer())),
            Value::Null,
        ] {
            let token = idp.mint_id_token(
                TestIdp::default_header(),
                claims_with(&idp, json!({"iss": iss})),
            );
            let error = upstream
                .validate_id_token(&token, Some(NONCE))
                .await
                .unwrap_err();
            let expected = if iss.is_null() {
                matches!(error, IdTokenError::MissingClaim("iss"))
            } else {
                matches!(error, IdTokenError::WrongIssuer { .. })
            };
            assert!(expected, "{iss}: {error}");
        }
    }

    #[tokio::test]
    async fn wrong_or_missing_nonce_is_refused() {
        let (idp, upstream) = setup().await;
        let token = idp.good_id_token(Some("another-nonce"));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::WrongNonce)
        ));
        let token = idp.good_id_token(None);
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::MissingNonce)
        ));
        // No nonce expected (a refresh response): not checked.
        assert!(upstream.validate_id_token(&token, None).await.is_ok());
    }

    #[tokio::test]
    async fn expiry_is_checked_with_the_leeway() {
        let (idp, upstream) = setup().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mint =
            |changes| idp.mint_id_token(TestIdp::default_header(), claims_with(&idp, changes));

        let token = mint(json!({"exp": now - 3600, "iat": now - 7200}));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::Expired { .. })
        ));
        // Expired 10 s ago, inside the 30 s leeway.
        let token = mint(json!({"exp": now - 10}));
        assert!(upstream
            .validate_id_token(&token, Some(NONCE))
            .await
            .is_ok());
        let token = mint(json!({"exp": null}));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::MissingClaim("exp"))
        ));
        let token = mint(json!({"exp": "tomorrow"}));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::MissingClaim("exp"))
        ));
    }

    #[tokio::test]
    async fn iat_nbf_and_sub_are_checked() {
        let (idp, upstream) = setup().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mint =
            |changes| idp.mint_id_token(TestIdp::default_header(), claims_with(&idp, changes));
        let check = |token: String| {
            let upstream = &upstream;
            async move { upstream.validate_id_token(&token, Some(NONCE)).await }
        };
        assert!(matches!(
            check(mint(json!({"iat": now + 600}))).await,
            Err(IdTokenError::IssuedInFuture { .. })
        ));
        assert!(check(mint(json!({"iat": now + 10}))).await.is_ok());
        assert!(matches!(
            check(mint(json!({"iat": null}))).await,
            Err(IdTokenError::MissingClaim("iat"))
        ));
        assert!(matches!(
            check(mint(json!({"nbf": now + 600}))).await,
            Err(IdTokenError::NotYetValid { .. })
        ));
        assert!(matches!(
            check(mint(json!({"sub": null}))).await,
            Err(IdTokenError::MissingClaim("sub"))
        ));
        assert!(matches!(
            check(mint(json!({"sub": ""}))).await,
            Err(IdTokenError::MissingClaim("sub"))
        ));
        assert!(matches!(
            check(mint(json!({"sub": 42}))).await,
            Err(IdTokenError::MissingClaim("sub"))
        ));
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let (idp, upstream) = setup().await;
        for alg in ["none", "None", "NONE"] {
            let token =
                idp.mint_id_token(header(alg, Some("rsa-1")), idp.id_token_claims(Some(NONCE)));
            assert!(token.ends_with('.'), "unsigned");
            let error = upstream
                .validate_id_token(&token, Some(NONCE))
                .await
                .unwrap_err();
            assert!(
                matches!(&error, IdTokenError::AlgorithmNotAllowed(a) if a == alg),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn hmac_signed_with_the_public_key_is_refused_even_when_configured() {
        let idp = TestIdp::start().await;
        let mut settings = idp.upstream_settings();
        settings
            .allowed_algorithms
            .extend([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);
        let upstream = idp.upstream_with(settings).await;
        let claims = idp.id_token_claims(Some(NONCE));
        let tokens = [
            idp.mint_id_token(header("HS256", Some("rsa-1")), claims.clone()),
            idp.mint_id_token(header("HS512", None), claims.clone()),
            idp.mint_id_token_with_hmac_secret(
                header("HS256", Some("rsa-1")),
                claims.clone(),
                &rsa_public_key_der(),
            ),
        ];
        for token in tokens {
            let error = upstream
                .validate_id_token(&token, Some(NONCE))
                .await
                .unwrap_err();
            assert!(
                matches!(error, IdTokenError::AlgorithmNotAllowed(_)),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn algorithms_outside_the_allow_list_are_refused() {
        let idp = TestIdp::start().await;
        let mut settings = idp.upstream_settings();
        settings.allowed_algorithms = vec![Algorithm::RS256];
        let upstream = idp.upstream_with(settings).await;
        for (alg, key) in [
            ("ES256", TestKey::Ec),
            ("PS256", TestKey::Rsa),
            ("RS384", TestKey::Rsa),
            ("XY999", TestKey::Rsa),
        ] {
            let token = idp.mint_id_token(
                header(alg, Some(key.kid())),
                idp.id_token_claims(Some(NONCE)),
            );
            let error = upstream
                .validate_id_token(&token, Some(NONCE))
                .await
                .unwrap_err();
            assert!(
                matches!(&error, IdTokenError::AlgorithmNotAllowed(a) if a == alg),
                "{alg}: {error}"
            );
        }
        assert!(upstream
            .validate_id_token(&idp.good_id_token(Some(NONCE)), Some(NONCE))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn unknown_kid_refetches_once_then_fails() {
        let idp = TestIdp::start().await;
        let mut settings = idp.upstream_settings();
        settings.jwks_refetch_cooldown = Duration::ZERO;
        let upstream = idp.upstream_with(settings).await;
        assert!(upstream
            .validate_id_token(&idp.good_id_token(Some(NONCE)), Some(NONCE))
            .await
            .is_ok());
        assert_eq!(idp.jwks_fetches(), 1);
        let token = idp.mint_id_token(
            header("RS256", Some("not-published")),
            idp.id_token_claims(Some(NONCE)),
        );
        let error = upstream
            .validate_id_token(&token, Some(NONCE))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, IdTokenError::UnknownKey { kid: Some(k) } if k == "not-published"),
            "{error}"
        );
        assert_eq!(
            idp.jwks_fetches(),
            2,
            "exactly one refetch for the unknown kid"
        );
    }

    #[tokio::test]
    async fn key_urls_and_embedded_keys_in_the_header_are_never_used() {
        let idp = TestIdp::start().await;
        idp.publish_keys(&[TestKey::Rsa]);
        let attacker = TestIdp::start().await;
        let upstream = idp.upstream().await;
        let token = idp.mint_id_token(
            json!({
                "alg": "ES256",
                "kid": "ec-1",
                "jku": attacker.jwks_uri().as_str(),
                "x5u": attacker.jwks_uri().as_str(),
                "jwk": TestKey::Ec.public_jwk(),
            }),
            idp.id_token_claims(Some(NONCE)),
        );
        let error = upstream
            .validate_id_token(&token, Some(NONCE))
            .await
            .unwrap_err();
        assert!(matches!(error, IdTokenError::UnknownKey { .. }), "{error}");
        assert_eq!(attacker.jwks_fetches(), 0);
    }

    #[tokio::test]
    async fn tampered_payload_fails_the_signature() {
        let (idp, upstream) = setup().await;
        let token = idp.good_id_token(Some(NONCE));
        let forged_claims = claims_with(&idp, json!({"sub": "admin"}));
        let forged_payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged_claims.to_string());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(matches!(
            upstream.validate_id_token(&forged, Some(NONCE)).await,
            Err(IdTokenError::BadSignature)
        ));
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        assert!(matches!(
            upstream.validate_id_token(&truncated, Some(NONCE)).await,
            Err(IdTokenError::BadSignature)
        ));
    }

    #[tokio::test]
    async fn jwe_and_malformed_tokens_are_refused() {
        let (idp, upstream) = setup().await;
        let jwe = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn";
        assert!(matches!(
            upstream.validate_id_token(jwe, Some(NONCE)).await,
            Err(IdTokenError::Encrypted)
        ));
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.??.##"] {
            let error = upstream
                .validate_id_token(bad, Some(NONCE))
                .await
                .unwrap_err();
            assert!(
                matches!(error, IdTokenError::Malformed(_)),
                "{bad:?}: {error}"
            );
        }
        let header_not_object = format!(
            "{}.e30.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1]")
        );
        assert!(matches!(
            upstream
                .validate_id_token(&header_not_object, Some(NONCE))
                .await,
            Err(IdTokenError::Malformed(_))
        ));
        // Signed correctly, but the payload is not a JSON object.
        let token = idp.mint_id_token(TestIdp::default_header(), json!(["not", "claims"]));
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn unknown_critical_headers_are_refused() {
        let (idp, upstream) = setup().await;
        let token = idp.mint_id_token(
            json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}),
            idp.id_token_claims(Some(NONCE)),
        );
        assert!(matches!(
            upstream.validate_id_token(&token, Some(NONCE)).await,
            Err(IdTokenError::UnsupportedCriticalHeader(_))
        ));
    }
}
