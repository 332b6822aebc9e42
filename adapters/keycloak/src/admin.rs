//! Keycloak's admin REST API, read-only: `GET /admin/realms/{realm}/users/{id}` with a
//! service-account token (`client_credentials` at the realm's token endpoint). The service
//! account needs the `realm-management` client role `view-users`.

use std::time::{Duration, Instant};

use mxidp_core::provider::UserStatus;
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::UpstreamError;
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

/// Answers larger than this are not read (a user representation is a few kilobytes).
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// A token is renewed this long before Keycloak says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct AdminApi {
    /// `{server}/admin/realms/{realm}/`.
    users_base: Url,
    token_endpoint: Url,
    client_id: String,
    client_secret: SecretString,
    http: reqwest::Client,
    /// The service-account token; the lock also makes concurrent callers share one fetch.
    token: Mutex<Option<(SecretString, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct UserRepresentation {
    #[serde(default = "enabled_by_default")]
    enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl AdminApi {
    /// The admin API of the realm whose issuer is `issuer` (`{server}/realms/{realm}`, or
    /// `{server}/auth/realms/{realm}` on legacy deployments).
    pub fn for_issuer(
        issuer: &Url,
        client_id: String,
        client_secret: SecretString,
        timeout: Duration,
    ) -> Result<Self, String> {
        let issuer_text = issuer.as_str().trim_end_matches('/');
        let (server, realm) = issuer_text
            .rsplit_once("/realms/")
            .filter(|(_, realm)| !realm.is_empty() && !realm.contains('/'))
            .ok_or_else(|| {
                format!("{issuer} is not a Keycloak realm issuer (…/realms/<realm>); the admin API needs one")
            })?;
        let users_base = Url::parse(&format!("{server}/admin/realms/{realm}/"))
            .map_err(|e| format!("cannot derive the admin API URL: {e}"))?;
        let token_endpoint = Url::parse(&format!("{issuer_text}/protocol/openid-connect/token"))
            .map_err(|e| format!("cannot derive the token endpoint: {e}"))?;
        let http = mxidp_core::outbound::client(timeout).map_err(|e| e.to_string())?;
        Ok(Self {
            users_base,
            token_endpoint,
            client_id,
            client_secret,
            http,
            token: Mutex::new(None),
        })
    }

    /// Active, disabled or deleted, as Keycloak says now.
    pub async fn user_status(&self, user_id: &str) -> Result<UserStatus, UpstreamError> {
        // The id comes from a webhook or an event: it becomes one path segment of an
        // authenticated admin request, so only what Keycloak ids are made of passes (a UUID, or
        // `f:<provider>:<external id>` for federated users); `%2e%2e`, `\\` and the like do not.
        if !is_user_id(user_id) {
            return Err(UpstreamError::Protocol("not a Keycloak user id".into()));
        }
        let mut url = self.users_base.clone();
        url.path_segments_mut()
            .map_err(|()| UpstreamError::Protocol("the admin API URL cannot take a path".into()))?
            .pop_if_empty()
            .push("users")
            .push(user_id);
        for attempt in 0..2 {
            let token = self.token().await?;
            let answer = self
                .http
                .get(url.clone())
                .bearer_auth(token.expose())
                .send()
                .await
                .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
            match answer.status().as_u16() {
                200 => {
                    let user: UserRepresentation =
                        serde_json::from_slice(&read_limited(answer).await?).map_err(|e| {
                            UpstreamError::Protocol(format!("a malformed user representation: {e}"))
                        })?;
                    return Ok(if user.enabled {
                        UserStatus::Active
                    } else {
                        UserStatus::Disabled
                    });
                }
                404 => return Ok(UserStatus::Deleted),
                // The token expired early or was revoked: one fresh token, then give up.
                401 if attempt == 0 => *self.token.lock().await = None,
                status => {
                    return Err(UpstreamError::Protocol(format!(
                        "the admin API answered {status} for a user lookup"
                    )))
                }
            }
        }
        Err(UpstreamError::Protocol(
            "the admin API refused the service-account token".into(),
        ))
    }

    async fn token(&self) -> Result<SecretString, UpstreamError> {
        let mut slot = self.token.lock().await;
        if let Some((token, expires)) = slot.as_ref() {
            if Instant::now() < *expires {
                return Ok(token.clone());
            }
        }
        let answer = self
            .http
            .post(self.token_endpoint.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
        let status = answer.status();
        let body = read_limited(answer).await?;
        if !status.is_success() {
            // Keycloak's OAuth error, never the request (which holds the secret).
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(UpstreamError::OAuth {
                error: error["error"].as_str().unwrap_or("unknown").to_owned(),
                description: format!("service-account token request answered {status}"),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("a malformed token answer: {e}")))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60));
        let token = SecretString::new(answer.access_token);
        *slot = Some((
            token.clone(),
            Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
        ));
        Ok(token)
    }
}

async fn read_limited(mut answer: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(UpstreamError::Protocol("the answer is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(issuer: &str) -> Result<AdminApi, String> {
        AdminApi::for_issuer(
            &issuer.parse().unwrap(),
            "mxidp-admin".into(),
            SecretString::new("s"),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn the_admin_api_is_derived_from_the_realm_issuer() {
        let a = api("https://sso.example.com/realms/acme").unwrap();
        assert_eq!(
            a.users_base.as_str(),
            "https://sso.example.com/admin/realms/acme/"
        );
        assert_eq!(
            a.token_endpoint.as_str(),
            "https://sso.example.com/realms/acme/protocol/openid-connect/token"
        );
        // Legacy WildFly deployments keep the `/auth` context path.
        let legacy = api("https://sso.example.com/auth/realms/acme").unwrap();
        assert_eq!(
            legacy.users_base.as_str(),
            "https://sso.example.com/auth/admin/realms/acme/"
        );
        assert!(api("https://login.example.com/").is_err());
    }
}

/// Whether `id` has the shape of a Keycloak user id: a UUID, or a federation id
/// (`f:<provider id>:<external id>`): ASCII letters, digits, `-`, `_` and `:`, at most 255.
fn is_user_id(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
}

#[cfg(test)]
mod id_tests {
    use super::is_user_id;

    #[test]
    fn only_keycloak_id_shapes_reach_the_admin_api() {
        for good in [
            "0b8f7a16-2d2c-4d67-8b5b-3f2f0d6c1a11",
            "f:3d9b5d52-0c2a-4c52-9c0b-7b7f3a4b2e10:jdoe",
        ] {
            assert!(is_user_id(good), "{good}");
        }
        for bad in [
            "",
            "../../roles",
            "%2e%2e",
            "a\\b",
            "a/b",
            "a?b",
            "a#b",
            "a b",
            "é",
            &"a".repeat(256),
        ] {
            assert!(!is_user_id(bad), "{bad}");
        }
    }
}
