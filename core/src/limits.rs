//! Bounds on what anonymous requests may make mxidp store: client registrations, sign-ins
//! started at `/oauth2/authorize` and account actions. Every one of them creates a row before
//! anyone has signed in, so each is limited per client address (answer 429 with
//! `Retry-After`), and the sign-ins in progress are capped as a whole.
//!
//! The client address is the TCP peer, or, when the peer is a reverse proxy named in
//! `limits.trusted_proxies`, the last address in `X-Forwarded-For` that is not one of them
//! (the first ones are whatever the client chose to send).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::config::LimitsConfig;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Registration,
    Authorization,
    Account,
}

/// Keys kept at most; past this, expired windows are dropped, and if that is not enough new
/// addresses are refused until windows expire (the map must not grow without bound either).
const MAX_KEYS: usize = 100_000;

/// Who is counted: a bucket and a client address (`None` when the peer is unknown).
type Key = (Bucket, Option<IpAddr>);
/// A window's start and the requests counted in it.
type Window = (i64, u32);

/// Fixed-window counters per (bucket, address).
pub struct RateLimiter {
    settings: LimitsConfig,
    windows: Mutex<HashMap<Key, Window>>,
}

impl RateLimiter {
    pub fn new(settings: LimitsConfig) -> Self {
        Self {
            settings,
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &LimitsConfig {
        &self.settings
    }

    fn limit(&self, bucket: Bucket) -> u32 {
        match bucket {
            Bucket::Registration => self.settings.registrations_per_window,
            Bucket::Authorization => self.settings.authorizations_per_window,
            Bucket::Account => self.settings.account_actions_per_window,
        }
    }

    /// Counts one request; `Err(seconds)` when the address is over its limit for the window.
    pub fn check(&self, bucket: Bucket, address: Option<IpAddr>, now: i64) -> Result<(), i64> {
        let window = self.settings.window_seconds.max(1) as i64;
        let start = now - now.rem_euclid(window);
        let retry_after = start + window - now;
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_KEYS && !windows.contains_key(&(bucket, address)) {
            windows.retain(|_, (window_start, _)| *window_start == start);
            if windows.len() >= MAX_KEYS {
                return Err(retry_after);
            }
        }
        let entry = windows.entry((bucket, address)).or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        if entry.1 >= self.limit(bucket) {
            return Err(retry_after);
        }
        entry.1 += 1;
        Ok(())
    }

    /// The client's address, as far as it can be trusted.
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.settings.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        forwarded
            .iter()
            .rev()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .find(|a| !self.settings.trusted_proxies.contains(a))
            .or(Some(peer))
    }
}

/// The client's address for a handler (see [`RateLimiter::client_address`]); `None` when the
/// server was not started with connection info (tests).
pub struct ClientAddress(pub Option<IpAddr>);

impl axum::extract::FromRequestParts<App> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &App,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(ClientAddress(
            app.limits.client_address(peer, &parts.headers),
        ))
    }
}

/// The 429 answer, with `Retry-After`.
pub fn too_many(retry_after: i64) -> Response {
    let mut response = crate::error_reply::oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        "too many requests from this address; try again later",
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Middleware for one bucket's routes.
pub async fn limit(
    State((app, bucket)): State<(App, Bucket)>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let address = app.limits.client_address(peer, request.headers());
    match app.limits.check(bucket, address, crate::ids::now_unix()) {
        Ok(()) => next.run(request).await,
        Err(retry_after) => {
            // Behind a proxy that is not in `limits.trusted_proxies`, every client seems to be
            // the proxy and all share one limit: say so where the operator looks.
            tracing::warn!(
                ?bucket,
                ?address,
                "rate limit reached for this address (if it is your reverse proxy, add it to limits.trusted_proxies)"
            );
            too_many(retry_after).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_window: u32, trusted: &[&str]) -> RateLimiter {
        RateLimiter::new(LimitsConfig {
            registrations_per_window: per_window,
            authorizations_per_window: per_window,
            account_actions_per_window: per_window,
            window_seconds: 60,
            trusted_proxies: trusted.iter().map(|a| a.parse().unwrap()).collect(),
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn each_address_has_its_own_window_per_bucket() {
        let l = limiter(2, &[]);
        let a = Some("192.0.2.1".parse().unwrap());
        let b = Some("192.0.2.2".parse().unwrap());
        assert!(l.check(Bucket::Registration, a, 120).is_ok());
        assert!(l.check(Bucket::Registration, a, 121).is_ok());
        assert_eq!(l.check(Bucket::Registration, a, 130), Err(50));
        assert!(l.check(Bucket::Registration, b, 130).is_ok());
        assert!(l.check(Bucket::Authorization, a, 130).is_ok());
        // The next window starts afresh.
        assert!(l.check(Bucket::Registration, a, 180).is_ok());
    }

    #[test]
    fn a_proxy_on_the_same_host_is_trusted_by_default() {
        let l = RateLimiter::new(LimitsConfig::default());
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        for proxy in ["127.0.0.1", "::1"] {
            assert_eq!(
                l.client_address(Some(proxy.parse().unwrap()), &headers),
                Some("203.0.113.9".parse().unwrap()),
                "{proxy}"
            );
        }
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let l = limiter(2, &["10.0.0.5"]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7"),
        );
        // From the proxy: the last address the proxy saw, not the client-chosen first one.
        assert_eq!(
            l.client_address(Some("10.0.0.5".parse().unwrap()), &headers),
            Some("198.51.100.7".parse().unwrap())
        );
        // From anyone else: the header is the client's own words.
        assert_eq!(
            l.client_address(Some("192.0.2.1".parse().unwrap()), &headers),
            Some("192.0.2.1".parse().unwrap())
        );
    }
}
