//! The Auth0 Management API, read-only, through a machine-to-machine application: a
//! `client_credentials` token for the audience `{management_url}/api/v2/`, cached until shortly
//! before it expires, and the user's state from `GET /api/v2/users/{id}`.
//!
//! The base URL is configuration only (`management_url`, the tenant's canonical domain, which
//! the Management API needs even when users sign in on a custom domain): nothing read from a
//! payload is ever fetched. Auth0 rate-limits the API per tenant and says so with
//! `x-ratelimit-remaining` / `x-ratelimit-reset`; once spent, calls are refused here until the
//! reset instead of spending more 429s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mxidp_core::provider::UserStatus;
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::UpstreamError;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use url::Url;

/// Answers larger than this are not read (a user is a few KB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// A token is renewed this long before Auth0 says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct ManagementApi {
    base: Url,
    client_id: String,
    client_secret: SecretString,
    http: reqwest::Client,
    token: Mutex<Option<(SecretString, Instant)>>,
    /// Until when the tenant's rate limit is spent.
    paused_until: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    blocked: Option<bool>,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn transport(e: reqwest::Error) -> UpstreamError {
    UpstreamError::Transport(e.without_url().to_string())
}

impl ManagementApi {
    pub fn new(
        base: Url,
        client_id: String,
        client_secret: SecretString,
        timeout: Duration,
    ) -> Result<Self, String> {
        if base.cannot_be_a_base() || base.query().is_some() {
            return Err(format!("{base} cannot be the Management API's base URL"));
        }
        let http = mxidp_core::outbound::client(timeout).map_err(|e| e.to_string())?;
        Ok(Self {
            base,
            client_id,
            client_secret,
            http,
            token: Mutex::new(None),
            paused_until: Mutex::new(None),
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url, UpstreamError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| UpstreamError::Protocol("the Management URL cannot take a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// `{base}/api/v2/users/{id}`, every byte of the id but the unreserved ones encoded
    /// (Auth0 asks for the `|` of `auth0|…` encoded; a `/` or `?` must stay in the segment).
    fn user_url(&self, user_id: &str) -> Result<Url, UpstreamError> {
        let encoded: String = user_id
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let base = self.url(&["api", "v2", "users", ""])?;
        base.join(&encoded)
            .map_err(|e| UpstreamError::Protocol(format!("a user URL: {e}")))
    }

    /// The API's audience: `https://{tenant}/api/v2/`.
    pub fn audience(&self) -> String {
        let mut url = self.url(&["api", "v2", ""]).expect("checked in new");
        url.set_query(None);
        url.into()
    }

    async fn read(response: reqwest::Response) -> Result<Answer, UpstreamError> {
        let mut response = response;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(UpstreamError::Protocol("the answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// The cached token, or a new one from `/oauth/token`.
    async fn token(&self) -> Result<SecretString, UpstreamError> {
        if let Some((token, until)) = self.token.lock().unwrap().as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let audience = self.audience();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("audience", audience.as_str()),
        ];
        let response = self
            .http
            .post(self.url(&["oauth", "token"])?)
            .form(&form)
            .send()
            .await
            .map_err(transport)?;
        let answer = Self::read(response).await?;
        self.note_rate_limit(&answer);
        if answer.status != 200 {
            // The body may name the client; it never holds the secret.
            return Err(UpstreamError::Protocol(format!(
                "the Management API token request answered {}",
                answer.status
            )));
        }
        let token: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|e| UpstreamError::Protocol(format!("a malformed token answer: {e}")))?;
        // Auth0's default is 86400 s; an answer without one is used for a minute.
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(120));
        let until = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        let secret = SecretString::new(token.access_token);
        *self.token.lock().unwrap() = Some((secret.clone(), until));
        Ok(secret)
    }

    fn note_rate_limit(&self, answer: &Answer) {
        if let Some(wait) =
            rate_limit_wait(answer.status, &answer.headers, mxidp_core::ids::now_unix())
        {
            tracing::warn!(
                seconds = wait.as_secs(),
                "Auth0 Management API rate limit reached: pausing calls"
            );
            *self.paused_until.lock().unwrap() = Some(Instant::now() + wait);
        }
    }

    /// `GET /api/v2/users/{id}`: `blocked` → disabled, 404 → deleted.
    pub async fn user_status(&self, user_id: &str) -> Result<UserStatus, UpstreamError> {
        // Auth0 user ids are `{connection strategy}|{id}`; anything else is not asked for.
        if !user_id.contains('|') || user_id.len() > 256 || user_id.chars().any(char::is_control) {
            return Err(UpstreamError::Protocol("not an Auth0 user id".into()));
        }
        if let Some(until) = *self.paused_until.lock().unwrap() {
            if Instant::now() < until {
                return Err(UpstreamError::Protocol(
                    "the Auth0 Management API rate limit is spent until its reset".into(),
                ));
            }
        }
        let url = self.user_url(user_id)?;
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let response = self
                .http
                .get(url.clone())
                .bearer_auth(token.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(transport)?;
            let answer = Self::read(response).await?;
            self.note_rate_limit(&answer);
            match answer.status {
                200 => {
                    let user: User = serde_json::from_slice(&answer.body).map_err(|e| {
                        UpstreamError::Protocol(format!("a malformed Auth0 user: {e}"))
                    })?;
                    return Ok(if user.blocked == Some(true) {
                        UserStatus::Disabled
                    } else {
                        UserStatus::Active
                    });
                }
                404 => return Ok(UserStatus::Deleted),
                // A token revoked or rotated early: one fresh token, once.
                401 if !retried => {
                    retried = true;
                    *self.token.lock().unwrap() = None;
                }
                status => {
                    return Err(UpstreamError::Protocol(format!(
                        "the Management API answered {status}"
                    )))
                }
            }
        }
    }
}

/// What Auth0's rate-limit headers ask: `x-ratelimit-remaining` calls are left until
/// `x-ratelimit-reset` (Unix seconds). `Some(wait)` once the budget is spent or on a 429.
pub fn rate_limit_wait(status: u16, headers: &HeaderMap, now: i64) -> Option<Duration> {
    let names = mxidp_core::outbound::RateLimitHeaders {
        remaining: "x-ratelimit-remaining",
        reset: "x-ratelimit-reset",
    };
    mxidp_core::outbound::rate_limit_wait(status, headers, names, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn the_reset_header_sets_the_wait_once_the_budget_is_spent() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("50"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("3"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1000"));
        assert_eq!(rate_limit_wait(200, &h, 990), None);
        assert_eq!(rate_limit_wait(429, &h, 990), Some(Duration::from_secs(10)));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        assert_eq!(rate_limit_wait(200, &h, 990), Some(Duration::from_secs(10)));
        assert_eq!(rate_limit_wait(200, &h, 5000), Some(Duration::from_secs(1)));
        assert_eq!(
            rate_limit_wait(429, &HeaderMap::new(), 0),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn the_audience_and_user_urls_hang_off_the_configured_base_only() {
        let api = ManagementApi::new(
            "https://acme.eu.auth0.com/".parse().unwrap(),
            "m2m".into(),
            SecretString::new("s"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(api.audience(), "https://acme.eu.auth0.com/api/v2/");
        assert_eq!(
            api.user_url("auth0|1/../x?y").unwrap().as_str(),
            "https://acme.eu.auth0.com/api/v2/users/auth0%7C1%2F..%2Fx%3Fy"
        );
    }
}
