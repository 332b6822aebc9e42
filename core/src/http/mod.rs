//! The HTTP application: one module per endpoint, each with its own error enum that maps to
//! the OAuth or Matrix error shape in one place.

use std::sync::{Arc, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use url::Url;

use crate::cache::IntrospectionCache;
use crate::crypto::Sealer;
use crate::homeserver::HomeserverConnection;
use crate::identity::{ConflictPolicy, LocalpartTemplate};
use crate::provider::Provider;
use crate::secret::SecretString;
use crate::store::Store;
use crate::upstream::Upstream;

mod account;
mod authorize;
mod callback;
mod consent;
mod health;
mod introspect;
mod metadata;
mod pages;
mod registration;
mod revoke;
mod token;

pub use introspect::introspect_token;

/// Paths of mxidp's endpoints, relative to the public base URL.
pub mod paths {
    pub const AUTHORIZE: &str = "oauth2/authorize";
    pub const TOKEN: &str = "oauth2/token";
    pub const REVOKE: &str = "oauth2/revoke";
    pub const REGISTER: &str = "oauth2/registration";
    pub const INTROSPECT: &str = "oauth2/introspect";
    pub const CALLBACK: &str = "upstream/callback";
    pub const CONSENT: &str = "consent";
    pub const ACCOUNT: &str = "account";
}

/// Settings of the identity mapping, parsed once at start.
pub struct MappingSettings {
    pub upstream_id: String,
    pub localpart_template: LocalpartTemplate,
    pub displayname_template: Option<LocalpartTemplate>,
    pub keep_before_at: bool,
    pub conflict: ConflictPolicy,
    pub sync_emails: bool,
    pub access: Option<crate::identity::AccessPolicy>,
    pub admin: Option<crate::identity::AdminPolicy>,
}

/// Lifetimes, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub pending_authorization: i64,
    pub authorization_code: i64,
    pub default_access_token: i64,
}

/// The upstream client, loaded by discovery in the background: mxidp starts (and reports
/// not-ready) while the IdP is unreachable.
#[derive(Default)]
pub struct UpstreamSlot(RwLock<Option<Arc<Upstream>>>);

impl UpstreamSlot {
    pub fn get(&self) -> Option<Arc<Upstream>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, upstream: Upstream) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(upstream));
    }
}

pub struct AppState {
    /// mxidp's public URL, the issuer (ends in `/`).
    pub issuer: Url,
    pub store: Arc<dyn Store>,
    /// Where receivers hand verified IdP events (durable, deduplicated).
    pub events: crate::events::EventPipeline,
    pub homeserver: Arc<dyn HomeserverConnection>,
    pub provider: Arc<dyn Provider>,
    pub upstream: UpstreamSlot,
    /// The secret Synapse presents at introspection, and mxidp at `/_synapse/mas/*`.
    pub matrix_secret: SecretString,
    pub sealer: Sealer,
    pub cache: IntrospectionCache,
    pub mapping: MappingSettings,
    pub lifetimes: Lifetimes,
    /// Where users manage their account at the IdP, when known.
    pub account_url: Option<Url>,
    pub max_body_bytes: usize,
    /// Keys of the configured event transmitters (Shared Signals, global token revocation).
    pub receivers: crate::receivers::ReceiverKeys,
    /// Background re-validation at the IdP (`upstream.revalidation = "introspect"`).
    pub revalidator: Option<crate::revalidate::Revalidator>,
}

pub type App = Arc<AppState>;

impl AppState {
    pub fn url(&self, path: &str) -> Url {
        // The issuer ends in '/', so joining a relative path appends to it.
        self.issuer
            .join(path)
            .expect("endpoint paths are valid relative URLs")
    }

    pub fn callback_url(&self) -> Url {
        self.url(paths::CALLBACK)
    }

    /// Cookies get `Secure` whenever mxidp is served over https.
    pub fn secure_cookies(&self) -> bool {
        self.issuer.scheme() == "https"
    }
}

pub fn router(state: App) -> Router {
    let max_body = state.max_body_bytes;
    // Browser clients (Element Web) call these from their own origin. No credentials are
    // involved (public clients, tokens in the body), so any origin may.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::ACCEPT, header::AUTHORIZATION]);
    let browser_api = Router::new()
        .route("/.well-known/openid-configuration", get(metadata::get))
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::get),
        )
        .route(&format!("/{}", paths::REGISTER), post(registration::post))
        .route(&format!("/{}", paths::TOKEN), post(token::post))
        .route(&format!("/{}", paths::REVOKE), post(revoke::post))
        .layer(cors);
    Router::new()
        .merge(browser_api)
        .route(&format!("/{}", paths::AUTHORIZE), get(authorize::get))
        .route(&format!("/{}", paths::CALLBACK), get(callback::get))
        .route(&format!("/{}", paths::CONSENT), post(consent::post))
        .route(&format!("/{}", paths::INTROSPECT), post(introspect::post))
        .route(&format!("/{}", paths::ACCOUNT), get(account::get))
        .route(
            &format!("/{}", crate::receivers::paths::BACKCHANNEL_LOGOUT),
            post(crate::receivers::backchannel_logout::post),
        )
        .route(
            &format!("/{}", crate::receivers::paths::SSF),
            post(crate::receivers::ssf::post),
        )
        .route(
            &format!("/{}", crate::receivers::paths::GLOBAL_TOKEN_REVOCATION),
            post(crate::receivers::global_token_revocation::post),
        )
        .route(
            &format!("/{}", crate::receivers::paths::WEBHOOK),
            post(crate::receivers::webhook::post),
        )
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(
            // Only method and path: query strings carry codes and states.
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
                })
                // Handlers log their own failures with a reference; a 503 readiness probe is
                // not an error worth a line per probe.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// An OAuth 2.0 error response (RFC 6749 §5.2) with `Cache-Control: no-store`.
pub(crate) fn oauth_error(
    status: StatusCode,
    error: &str,
    description: impl Into<String>,
) -> Response {
    let mut response = (
        status,
        Json(json!({ "error": error, "error_description": description.into() })),
    )
        .into_response();
    no_store(&mut response);
    response
}

pub(crate) fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Logs an internal failure with a correlation id and returns that id for the user-facing error.
pub(crate) fn internal(context: &str, error: &dyn std::fmt::Display) -> String {
    let id = crate::ids::random_token(6);
    tracing::error!(error_id = %id, "{context}: {error}");
    id
}

#[cfg(test)]
mod tests;
