//! Plumbing shared by every call mxidp makes to the IdP: bounded response bodies, client
//! authentication at the token and revocation endpoints, and the OAuth error shape.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use url::form_urlencoded;

use super::{ClientAuthMethod, UpstreamError, UpstreamSettings};

/// Largest IdP response body mxidp reads (docs/architecture.md: every body has a size limit). Discovery
/// documents, JWKS and token responses are a few KiB; 1 MiB leaves room for large key sets.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Reads a response body, refusing to buffer more than [`MAX_RESPONSE_BYTES`].
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
) -> Result<Vec<u8>, UpstreamError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn too_large() -> UpstreamError {
    UpstreamError::Protocol(format!(
        "response body larger than {MAX_RESPONSE_BYTES} bytes"
    ))
}

/// A transport failure, described without the request URL's query (which could carry a token
/// in a misconfigured setup) — reqwest's `without_url` drops the URL entirely.
pub(crate) fn transport(error: reqwest::Error) -> UpstreamError {
    let kind = if error.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    UpstreamError::Transport(format!("request {kind}: {}", error.without_url()))
}

/// Adds mxidp's client credentials to a token or revocation request.
///
/// `client_secret_basic` follows RFC 6749 §2.3.1: client id and secret are each
/// `application/x-www-form-urlencoded` before being joined with `:` and base64-encoded, so a
/// secret containing `:` or non-ASCII characters survives (several IdPs issue such secrets).
///
/// `private_key_jwt` puts the IdP's issuer and the endpoint called in the assertion's `aud`:
/// ZITADEL checks for its issuer, Okta and RFC 7523 for the endpoint.
pub(crate) fn authenticate(
    request: reqwest::RequestBuilder,
    endpoint: (&str, &url::Url),
    form: &mut Vec<(&'static str, String)>,
    settings: &UpstreamSettings,
) -> reqwest::RequestBuilder {
    match settings.auth_method {
        ClientAuthMethod::PrivateKeyJwt => {
            let (issuer, url) = endpoint;
            // The configuration check makes sure a key is loaded for this method.
            let assertion = settings.client_key.as_ref().and_then(|key| {
                key.assertion(
                    &settings.client_id,
                    &[issuer, url.as_str()],
                    crate::ids::now_unix(),
                )
                .ok()
            });
            form.push(("client_id", settings.client_id.clone()));
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            form.push(("client_assertion", assertion.unwrap_or_default()));
            request
        }
        ClientAuthMethod::ClientSecretBasic => {
            let id: String =
                form_urlencoded::byte_serialize(settings.client_id.as_bytes()).collect();
            let secret: String =
                form_urlencoded::byte_serialize(settings.client_secret.expose().as_bytes())
                    .collect();
            let credentials = STANDARD.encode(format!("{id}:{secret}"));
            request.header(
                reqwest::header::AUTHORIZATION,
                format!("Basic {credentials}"),
            )
        }
        ClientAuthMethod::ClientSecretPost => {
            form.push(("client_id", settings.client_id.clone()));
            form.push(("client_secret", settings.client_secret.expose().to_owned()));
            request
        }
    }
}

/// The error body of RFC 6749 §5.2 (also used by RFC 7009 and userinfo).
#[derive(Debug, Deserialize)]
pub(crate) struct OAuthErrorBody {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
}

/// Turns a non-success answer into the most precise [`UpstreamError`]: `invalid_grant` is its own
/// variant because it ends the session for good (docs/token-model.md).
pub(crate) fn error_from_response(status: reqwest::StatusCode, body: &[u8]) -> UpstreamError {
    match serde_json::from_slice::<OAuthErrorBody>(body) {
        Ok(err) => {
            let description = err.error_description.unwrap_or_default();
            if err.error == "invalid_grant" {
                UpstreamError::InvalidGrant(description)
            } else {
                UpstreamError::OAuth {
                    error: err.error,
                    description,
                }
            }
        }
        Err(_) => UpstreamError::Protocol(format!("HTTP {status} without an OAuth error body")),
    }
}

/// How long a 429 asks to wait: `Retry-After` in seconds (RFC 9110 §10.2.3), or Okta's
/// `X-Rate-Limit-Reset` (the Unix time the window resets). At most an hour.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let seconds = number("retry-after")
        .or_else(|| number("x-rate-limit-reset").map(|reset| reset - crate::ids::now_unix()))?;
    Some(std::time::Duration::from_secs(
        seconds.clamp(1, 3_600) as u64
    ))
}
