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
