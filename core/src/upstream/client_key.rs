//! `private_key_jwt` client authentication (OIDC Core §9, RFC 7523 §2.2): mxidp proves it is
//! its client with a short-lived JWT signed by a key the IdP holds the public half of, instead
//! of a shared secret. ZITADEL API and OIDC apps and Okta service apps use it.
//!
//! The key is a PEM private key (RSA → RS256, EC P-256 → ES256), or ZITADEL's key file, a JSON
//! object whose `key` is that PEM and whose `keyId` becomes the JWT's `kid`.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// How long an assertion is valid: one request's worth.
const LIFETIME_SECONDS: i64 = 60;

pub struct ClientKey {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// Reads a key file's contents; `kid` (configured) wins over the file's `keyId`. Errors
    /// never quote the file.
    pub fn parse(contents: &str, kid: Option<String>) -> Result<Self, String> {
        let trimmed = contents.trim_start();
        let (pem, file_kid) = if trimmed.starts_with('{') {
            let file: serde_json::Value = serde_json::from_str(trimmed)
                .map_err(|_| "the key file is neither PEM nor a JSON key file".to_owned())?;
            let pem = file["key"]
                .as_str()
                .ok_or("the JSON key file has no `key` (a PEM private key)")?
                .to_owned();
            (pem, file["keyId"].as_str().map(str::to_owned))
        } else {
            (contents.to_owned(), None)
        };
        let (key, algorithm) = if let Ok(key) = EncodingKey::from_rsa_pem(pem.as_bytes()) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = EncodingKey::from_ec_pem(pem.as_bytes()) {
            (key, Algorithm::ES256)
        } else {
            return Err(
                "not an RSA or EC (P-256, PKCS#8) private key in PEM; ZITADEL's JSON key files are read as they are downloaded"
                    .into(),
            );
        };
        let key = Self {
            key,
            algorithm,
            kid: kid.or(file_kid),
        };
        // A P-384 key would load but sign nothing: find out now, not at the first sign-in.
        key.assertion("probe", &["probe"], 0)
            .map(|_| key)
            .map_err(|_| "the key cannot sign RS256 or ES256 (an EC key must be P-256)".into())
    }

    /// A client assertion: `iss` = `sub` = the client id, `aud` the given audiences, a fresh
    /// `jti`, valid for a minute from `now`.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &[&str],
        now: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        let claims = json!({
            "iss": client_id, "sub": client_id, "aud": audience,
            "iat": now, "exp": now + LIFETIME_SECONDS,
            "jti": crate::ids::random_token(16),
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    // A P-256 key generated for these tests only (tests/support/keys/zitadel-app-key-ec-p256.pem).
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgOgivWkhXf7zoZffk
WhfPgoLL4fcjDM7+kUCAZ31mPquhRANCAAQLZomhX6JKpIvZ/2vhJwqc6a/m2AYp
9BVgkWWhICXyN7uQtk4B9Qa7xAIo9rIKSll2eShbopQ1/sgUrSbN1BoN
-----END PRIVATE KEY-----";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC2aJoV+iSqSL2f9r4ScKnOmv5tgG
KfQVYJFloSAl8je7kLZOAfUGu8QCKPayCkpZdnkoW6KUNf7IFK0mzdQaDQ==
-----END PUBLIC KEY-----";

    #[test]
    fn a_zitadel_key_file_signs_assertions_the_idp_can_verify() {
        let file = serde_json::json!({"type": "application", "keyId": "336512",
            "key": EC_PRIVATE, "appId": "3364", "clientId": "3364@mxidp"})
        .to_string();
        let key = ClientKey::parse(&file, None).unwrap();
        assert!(!format!("{key:?}").contains("MIGH"));
        let now = crate::ids::now_unix();
        let jwt = key
            .assertion(
                "3364@mxidp",
                &[
                    "https://acme.zitadel.cloud",
                    "https://acme.zitadel.cloud/oauth/v2/token",
                ],
                now,
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.kid.as_deref(), Some("336512"));
        assert_eq!(header.alg, Algorithm::ES256);
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["https://acme.zitadel.cloud"]);
        v.set_issuer(&["3364@mxidp"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes()).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["sub"], "3364@mxidp");
        assert_eq!(claims["exp"].as_i64(), Some(now + 60));
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        // A configured kid wins; a bare PEM works too.
        let key = ClientKey::parse(EC_PRIVATE, Some("k2".into())).unwrap();
        let jwt = key.assertion("c", &["a"], now).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&jwt).unwrap().kid.as_deref(),
            Some("k2")
        );
    }

    #[test]
    fn anything_else_is_refused_without_quoting_it() {
        for bad in [
            "",
            "{}",
            "{\"key\": \"not a pem\"}",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            EC_PUBLIC,
        ] {
            let e = ClientKey::parse(bad, None).unwrap_err();
            assert!(!e.contains("AAAA") && !e.contains("MFkw"), "{e}");
        }
    }
}
