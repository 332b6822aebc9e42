//! Okta's management API, read-only, with an API token (`Authorization: SSWS <token>`) or an
//! API service app ([`crate::service_app`]): the Users API ([`crate::users`]) and the System Log
//! ([`crate::system_log`]). Answers carry Okta's rate-limit headers, which the callers honour.

use std::time::Duration;

use mxidp_core::secret::SecretString;
use mxidp_core::upstream::UpstreamError;
use reqwest::header::HeaderMap;
use url::Url;

/// Answers larger than this are not read (a System Log page of 100 events is ~300 KB).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct ManagementApi {
    /// The org URL (`https://acme.okta.com/`): management paths hang off it, whichever
    /// authorization server signs users in.
    org: Url,
    credential: Credential,
    http: reqwest::Client,
}

/// How the adapter authenticates to the management API.
#[derive(Debug)]
pub enum Credential {
    /// An admin's API token: `Authorization: SSWS <token>`.
    ApiToken(SecretString),
    /// An API service app with `private_key_jwt` (Okta's recommendation over API tokens).
    ServiceApp(crate::service_app::ServiceApp),
}

/// An answer: status, headers and the body (bounded).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl ManagementApi {
    pub fn new(org: Url, credential: Credential, timeout: Duration) -> Result<Self, String> {
        let http = mxidp_core::outbound::client(timeout).map_err(|e| e.to_string())?;
        Ok(Self {
            org,
            credential,
            http,
        })
    }

    pub fn org(&self) -> &Url {
        &self.org
    }

    /// `GET` a URL under the org (built by the caller from fixed paths and checked ids).
    pub async fn get(&self, url: Url) -> Result<Answer, UpstreamError> {
        debug_assert_eq!(url.origin(), self.org.origin());
        let authorization = match &self.credential {
            Credential::ApiToken(token) => format!("SSWS {}", token.expose()),
            Credential::ServiceApp(app) => app.authorization(&self.http, &self.org).await?,
        };
        let mut answer = self
            .http
            .get(url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
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
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// What Okta's rate-limit headers ask: `X-Rate-Limit-Remaining` requests are left until
/// `X-Rate-Limit-Reset` (Unix seconds). `Some(wait)` when the next call should wait for the
/// reset: the budget is spent (or the call was refused with 429).
pub fn rate_limit_wait(status: u16, headers: &HeaderMap, now: i64) -> Option<Duration> {
    let names = mxidp_core::outbound::RateLimitHeaders {
        remaining: "x-rate-limit-remaining",
        reset: "x-rate-limit-reset",
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
        h.insert("x-rate-limit-limit", HeaderValue::from_static("120"));
        h.insert("x-rate-limit-remaining", HeaderValue::from_static("3"));
        h.insert("x-rate-limit-reset", HeaderValue::from_static("1000"));
        assert_eq!(rate_limit_wait(200, &h, 990), None);
        assert_eq!(rate_limit_wait(429, &h, 990), Some(Duration::from_secs(10)));
        h.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        assert_eq!(rate_limit_wait(200, &h, 990), Some(Duration::from_secs(10)));
        assert_eq!(rate_limit_wait(200, &h, 2000), Some(Duration::from_secs(1)));
        assert_eq!(
            rate_limit_wait(429, &HeaderMap::new(), 0),
            Some(Duration::from_secs(60))
        );
    }
}
