//! `GET /.well-known/openid-configuration`: mxidp's authorization-server metadata. Synapse
//! requires `issuer` and `account_management_uri`, caches the document until it restarts and
//! hands it verbatim to clients, so every URL here is mxidp's public URL (docs/synapse-contract.md).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{paths, App};

/// MSC4191 actions mxidp serves at `account_management_uri`.
pub const ACCOUNT_ACTIONS: &[&str] = &[
    "org.matrix.profile",
    "org.matrix.devices_list",
    "org.matrix.device_view",
    "org.matrix.device_delete",
    "org.matrix.cross_signing_reset",
];

pub async fn get(State(app): State<App>) -> Response {
    // Synapse keeps the first document it gets until it restarts, and retries on failure: so
    // answer only once the IdP is discovered and the document is complete (prompt values).
    let Some(upstream) = app.upstream.get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(json!({"error": "temporarily_unavailable", "error_description": "the identity provider is not discovered yet"})),
        )
            .into_response();
    };
    let mut doc = json!({
        "issuer": app.issuer.as_str(),
        "authorization_endpoint": app.url(paths::AUTHORIZE),
        "token_endpoint": app.url(paths::TOKEN),
        "revocation_endpoint": app.url(paths::REVOKE),
        "registration_endpoint": app.url(paths::REGISTER),
        "introspection_endpoint": app.url(paths::INTROSPECT),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "fragment"],
        "device_authorization_endpoint": app.url(paths::DEVICE_AUTHORIZATION),
        // matrix-js-sdk registers every grant type listed here: list only what works.
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code",
        ],
        "code_challenge_methods_supported": ["S256"],
        // RFC 9207: every authorization response carries `iss`.
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": [
            "urn:matrix:client:api:*",
            "urn:matrix:org.matrix.msc2967.client:api:*",
            "urn:matrix:client:device:*",
            "urn:matrix:org.matrix.msc2967.client:device:*",
            "urn:synapse:admin:*",
        ],
        "account_management_uri": app.url(paths::ACCOUNT),
        "account_management_actions_supported": ACCOUNT_ACTIONS,
        "org.matrix.msc4191.account_management_uri": app.url(paths::ACCOUNT),
        "org.matrix.msc4191.account_management_actions_supported": ACCOUNT_ACTIONS,
    });
    // `prompt=create` only where the IdP can register users (Okta cannot).
    if app
        .provider
        .signup_parameters(upstream.metadata())
        .is_some()
    {
        doc["prompt_values_supported"] = json!(["create"]);
    }
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(doc)).into_response()
}
