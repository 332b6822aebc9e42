//! `GET /oauth2/authorize`: validates the Matrix client's request (client, redirect URI, scopes,
//! PKCE S256), stores it, binds the browser with a cookie and sends the browser to the IdP with
//! mxidp's own client id, state, nonce and PKCE (docs/architecture.md).
//!
//! Until the client and redirect URI are known to be genuine, errors are shown as a page and
//! never redirected (RFC 6749 §4.1.2.1): redirecting to an unchecked URI is an open redirect.

use self::axum_extra_cookie::{binding_cookie, read_binding};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use url::Url;

use super::{internal, pages, App, AppState};
use crate::ids::{now_unix, random_token, TokenHash};
use crate::registration::{redirect_uri_matches, ClientMetadata};
use crate::scope::MatrixScope;
use crate::store::{AuthorizationStage, PendingAuthorization, Purpose, ResponseMode};
use crate::upstream::UpstreamAuthorization;

#[derive(Debug, Deserialize, Default)]
pub struct AuthorizeQuery {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    response_mode: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    prompt: Option<String>,
}

pub enum RouteError {
    /// Shown as a page: the client or its redirect URI cannot be trusted.
    Page(StatusCode, &'static str, String),
    /// A page for an internal failure logged under the reference (the last field).
    Logged(StatusCode, &'static str, String, String),
    /// Handed back to the client at its (verified) redirect URI.
    Redirect(Box<ClientRedirect>, &'static str, String),
}

/// A verified place to send the client's answer.
pub struct ClientRedirect {
    pub redirect_uri: Url,
    pub mode: ResponseMode,
    pub state: Option<String>,
    /// mxidp's issuer, sent as `iss` with every answer (RFC 9207): a client that talks to several
    /// authorization servers can tell which one answered (mix-up attacks).
    pub issuer: String,
}

impl ClientRedirect {
    /// `params` go in the query or the fragment, as the client asked.
    pub fn url(&self, params: &[(&str, &str)]) -> Url {
        let mut url = self.redirect_uri.clone();
        let mut all: Vec<(&str, &str)> = params.to_vec();
        if let Some(state) = &self.state {
            all.push(("state", state));
        }
        all.push(("iss", &self.issuer));
        match self.mode {
            ResponseMode::Query => {
                url.query_pairs_mut().extend_pairs(all);
            }
            ResponseMode::Fragment => {
                let encoded = serde_urlencoded::to_string(&all).unwrap_or_default();
                url.set_fragment(Some(&encoded));
            }
        }
        url
    }

    pub fn error(&self, error: &str, description: &str) -> Response {
        see_other(
            self.url(&[("error", error), ("error_description", description)])
                .as_str(),
        )
    }
}

/// Refuses a new sign-in while `limits.max_pending_authorizations` are in progress: each one is
/// a row anyone can create without signing in.
pub(crate) async fn check_pending_capacity(app: &AppState, now: i64) -> Result<(), RouteError> {
    let in_progress = app.store.pending_count(now).await.map_err(|e| {
        RouteError::Logged(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "A problem on this server stopped the sign-in.".into(),
            internal("count pending", &e),
        )
    })?;
    if in_progress >= app.limits.settings().max_pending_authorizations {
        tracing::warn!(
            in_progress,
            "sign-ins in progress at limits.max_pending_authorizations"
        );
        return Err(RouteError::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins in progress",
            "The server is handling too many sign-ins right now. Try again in a few minutes."
                .into(),
        ));
    }
    Ok(())
}

/// 303 so that a POST (consent) is followed by a GET.
pub fn see_other(location: &str) -> Response {
    let mut response = Redirect::to(location).into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    super::no_store(&mut response);
    response
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        match self {
            RouteError::Page(status, title, message) => pages::error_page(status, title, &message),
            RouteError::Logged(status, title, message, reference) => {
                pages::logged_error_page(status, title, &message, &reference)
            }
            RouteError::Redirect(to, error, description) => to.error(error, &description),
        }
    }
}

pub async fn get(
    State(app): State<App>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<Response, RouteError> {
    let q: AuthorizeQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
            RouteError::Page(
                StatusCode::BAD_REQUEST,
                "Invalid sign-in request",
                // The parser's message (e.g. a duplicate parameter) is for the app's developers.
                {
                    tracing::info!(error = %e, "malformed authorization request");
                    "The app sent a sign-in request this server cannot read.".to_owned()
                },
            )
        })?;
    let page = |title: &'static str, message: &str| {
        RouteError::Page(StatusCode::BAD_REQUEST, title, message.to_owned())
    };

    let client_id = q.client_id.as_deref().ok_or_else(|| {
        page(
            "Invalid sign-in request",
            "The app did not say which app it is.",
        )
    })?;
    let client = app
        .store
        .client(client_id)
        .await
        .map_err(|e| RouteError::Logged(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "A problem on this server stopped the sign-in.".into(), internal("load client", &e)))?
        .ok_or_else(|| page("Unknown application", "This application is not registered with this server. Try signing in again from the application."))?;
    let metadata: &ClientMetadata = &client.metadata;
    let presented = q.redirect_uri.as_deref().ok_or_else(|| {
        page(
            "Invalid sign-in request",
            "The app did not say where to send you back.",
        )
    })?;
    let redirect_uri =
        redirect_uri_matches(&metadata.redirect_uris, presented).ok_or_else(|| {
            RouteError::Page(
                StatusCode::BAD_REQUEST,
                "Sign-in stopped",
                format!(
                    "{} asked to send you back to an address it did not register, so this server will not send you there.",
                    pages::ClientIdentity::new(metadata, "").short_name()
                ),
            )
        })?;
    let response_mode = match q.response_mode.as_deref() {
        None | Some("query") => ResponseMode::Query,
        Some("fragment") => ResponseMode::Fragment,
        Some(_) => {
            // Unknown mode: we cannot know how the client wants the error, so show it.
            return Err(page(
                "Invalid sign-in request",
                "The app asked for its answer in a form this server does not offer.",
            ));
        }
    };
    let to = Box::new(ClientRedirect {
        redirect_uri: presented.parse().unwrap_or(redirect_uri),
        mode: response_mode,
        state: q.state.clone(),
        issuer: app.issuer.to_string(),
    });
    let fail = |error: &'static str, description: &str| {
        RouteError::Redirect(to.clone_box(), error, description.to_owned())
    };

    if q.response_type.as_deref() != Some("code") {
        return Err(fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    let code_challenge = match (
        q.code_challenge.as_deref(),
        q.code_challenge_method.as_deref(),
    ) {
        (Some(c), Some("S256")) if is_s256_challenge(c) => c.to_owned(),
        (Some(_), Some("S256")) => {
            return Err(fail(
                "invalid_request",
                "code_challenge is not a base64url SHA-256 value",
            ))
        }
        (None, _) => {
            return Err(fail(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            ))
        }
        // A missing method means `plain` (RFC 7636 §4.3), which would defeat PKCE.
        (Some(_), _) => {
            return Err(fail(
                "invalid_request",
                "code_challenge_method must be S256",
            ))
        }
    };
    let scope_text = q.scope.as_deref().unwrap_or("");
    let scope =
        MatrixScope::parse(scope_text).map_err(|e| fail("invalid_scope", &e.to_string()))?;
    let prompts: Vec<&str> = q
        .prompt
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|p| !p.is_empty())
        .collect();
    if prompts.contains(&"none") {
        // mxidp always shows the IdP's sign-in and a consent page.
        return Err(fail("login_required", "prompt=none is not supported"));
    }
    let upstream = app.upstream.get().ok_or_else(|| {
        fail(
            "temporarily_unavailable",
            "the identity provider is not reachable yet",
        )
    })?;
    let mut extra = app.provider.authorize_parameters();
    let signup = prompts.contains(&"create");
    if signup {
        if let Some(params) = app.provider.signup_parameters(upstream.metadata()) {
            extra.extend(params);
        }
    }

    let now = now_unix();
    let binding = BrowserBinding::of(&headers, app.secure_cookies());
    let verifier = random_token(32);
    let pending = PendingAuthorization {
        id: random_token(16),
        purpose: Purpose::Login,
        browser_binding: binding.hash(),
        client_id: client.client_id.clone(),
        redirect_uri: presented.to_owned(),
        response_mode,
        client_state: q.state.clone(),
        code_challenge,
        scope: scope_text.to_owned(),
        device_id: scope.device_id().clone(),
        signup,
        upstream_state: random_token(24),
        upstream_nonce: random_token(24),
        upstream_verifier: verifier.clone(),
        csrf: random_token(24),
        user_code: None,
        stage: AuthorizationStage::AtIdp,
        login: None,
        created_at: now,
        expires_at: now + app.lifetimes.pending_authorization,
    };
    check_pending_capacity(&app, now).await?;
    app.store.add_pending(&pending).await.map_err(|e| {
        RouteError::Logged(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "A problem on this server stopped the sign-in.".into(),
            internal("store pending", &e),
        )
    })?;
    let url = upstream.authorization_url(&UpstreamAuthorization {
        redirect_uri: app.callback_url(),
        state: pending.upstream_state.clone(),
        nonce: pending.upstream_nonce.clone(),
        code_challenge: pkce_s256(&verifier),
        extra,
    });
    tracing::info!(client_id = %client.client_id, device_id = %pending.device_id, "authorization started");
    Ok(binding.redirect(url.as_str(), app.secure_cookies()))
}

/// The browser's binding cookie: the one it has, or a new one to set with the redirect.
pub struct BrowserBinding {
    value: String,
    is_new: bool,
}

impl BrowserBinding {
    pub fn of(headers: &axum::http::HeaderMap, secure: bool) -> Self {
        match read_binding(headers, secure) {
            Some(existing) => Self {
                value: existing,
                is_new: false,
            },
            None => Self {
                value: random_token(32),
                is_new: true,
            },
        }
    }

    /// What the pending authorization stores: the hash, never the cookie.
    pub fn hash(&self) -> String {
        TokenHash::of(&self.value).to_hex()
    }

    /// A 303 to `location` that sets the cookie when the browser had none.
    pub fn redirect(&self, location: &str, secure: bool) -> Response {
        let mut response = see_other(location);
        if self.is_new {
            let cookie = binding_cookie(&self.value, secure);
            if let Ok(value) = header::HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        response
    }
}

impl ClientRedirect {
    fn clone_box(&self) -> Box<ClientRedirect> {
        Box::new(ClientRedirect {
            redirect_uri: self.redirect_uri.clone(),
            mode: self.mode,
            state: self.state.clone(),
            issuer: self.issuer.clone(),
        })
    }
}

/// 43 base64url characters: the encoding of a SHA-256 digest (RFC 7636 §4.2).
fn is_s256_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn pkce_s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// The browser-binding cookie: ties the IdP callback and the consent form to the browser that
/// started the sign-in, so a stolen callback URL or a forged consent POST does not work.
pub mod axum_extra_cookie {
    use axum::http::{header, HeaderMap};

    /// Over https the `__Host-` prefix makes browsers refuse the cookie unless it is Secure,
    /// host-only and `Path=/`: a sibling subdomain cannot plant one (login fixation).
    pub fn binding_cookie_name(secure: bool) -> &'static str {
        if secure {
            "__Host-mxidp_binding"
        } else {
            "mxidp_binding"
        }
    }

    pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The binding cookie, when it has the shape mxidp gives it (32 random bytes, base64url).
    pub fn read_binding(headers: &HeaderMap, secure: bool) -> Option<String> {
        read_cookie(headers, binding_cookie_name(secure)).filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    }

    pub fn binding_cookie(value: &str, secure: bool) -> String {
        // SameSite=Lax: the IdP's redirect back to the callback is a top-level GET and keeps it.
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=86400{}",
            binding_cookie_name(secure),
            if secure { "; Secure" } else { "" }
        )
    }
}

#[cfg(test)]
mod cookie_tests {
    use super::axum_extra_cookie::*;
    use axum::http::{header, HeaderMap, HeaderValue};

    #[test]
    fn the_binding_cookie_is_host_only_on_https_and_only_mxidps_own_values_count() {
        let value = crate::ids::random_token(32);
        let secure = binding_cookie(&value, true);
        assert!(secure.starts_with("__Host-mxidp_binding="));
        assert!(
            secure.contains("; Secure") && secure.contains("Path=/") && !secure.contains("Domain")
        );
        assert!(!binding_cookie(&value, false).contains("Secure"));

        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("mxidp_binding={value}")).unwrap(),
        );
        assert_eq!(read_binding(&headers, false), Some(value.clone()));
        // Over https only the prefixed name is read: an unprefixed one may come from a subdomain.
        assert_eq!(read_binding(&headers, true), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("mxidp_binding=planted-by-someone-else-but-long-enough-0000"),
        );
        assert_eq!(read_binding(&headers, false), None);
    }
}
