//! The one outbound HTTP client configuration, for every call mxidp makes (the IdP, event
//! transmitters' keys, the homeserver, adapters' admin APIs): a total and a connect timeout,
//! and no redirects.

use std::time::Duration;

/// A client for outbound calls with this timeout.
pub fn client(timeout: Duration) -> Result<reqwest::Client, OutboundError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        // mxidp never follows redirects from the IdP or the homeserver: an answer is an answer,
        // and a redirect could point a request that carries credentials somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mxidp/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OutboundError(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct OutboundError(String);

/// The headers an API announces its per-window rate limit with: the calls left, and the Unix
/// time the window resets (Okta `x-rate-limit-*`, Auth0 `x-ratelimit-*`).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitHeaders {
    pub remaining: &'static str,
    pub reset: &'static str,
}

/// How long to wait before the next call, when the window's calls are spent (none left, or a
/// 429). With no reset, or one in the past, a little; one far off is capped at an hour, so that
/// a wrong clock cannot stop the caller for long.
pub fn rate_limit_wait(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    names: RateLimitHeaders,
    now: i64,
) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let spent = status == 429 || number(names.remaining).is_some_and(|r| r <= 0);
    if !spent {
        return None;
    }
    let wait = number(names.reset).map_or(60, |reset| reset - now);
    Some(Duration::from_secs(wait.clamp(1, 3600) as u64))
}
