//! `POST /oauth2/introspect` for Synapse (docs/synapse-contract.md, docs/token-model.md), the hot path: hash → in-memory
//! cache → store → answer. No network I/O. Unknown, expired, rotated and revoked tokens are
//! `200 {"active":false}`; only a wrong shared secret is an error (401).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{App, AppState};
use crate::cache::{ActiveToken, Lookup};
use crate::ids::{now_unix, TokenHash};
use crate::jwt_shim::JwtShim;
use crate::metrics;
use crate::store::{SessionState, StoreError, TokenKind};

pub async fn post(State(app): State<App>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let started = std::time::Instant::now();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !app.matrix_secret.ct_eq(presented.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "access_denied" })),
        )
            .into_response();
    }
    let Some(token) = form_value(&body, "token") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_request", "error_description": "token is missing" })),
        )
            .into_response();
    };
    let now = now_unix();
    if let Some(shim) = app.jwt_shim.as_ref().filter(|_| JwtShim::takes(&token)) {
        return match shim.introspect(&app, &token, now).await {
            Ok(Some(active)) => {
                metrics::introspection("jwt", "active", started);
                json_answer(active.answer(now))
            }
            Ok(None) => {
                metrics::introspection("jwt", "inactive", started);
                json_answer(INACTIVE.to_owned())
            }
            Err(e) => {
                metrics::introspection("jwt", "error", started);
                server_error(super::internal("introspection of a JWT", &e))
            }
        };
    }
    match introspect_token(&app, &token, now).await {
        Ok(Some(active)) => {
            // Answered from mxidp's state; re-validation at the IdP, if on, runs behind it.
            if let Some(revalidator) = &app.revalidator {
                revalidator.nudge(&app, &token, &active);
            }
            metrics::introspection("own", "active", started);
            json_answer(active.answer(now))
        }
        Ok(None) => {
            metrics::introspection("own", "inactive", started);
            json_answer(INACTIVE.to_owned())
        }
        Err(e) => {
            metrics::introspection("own", "error", started);
            server_error(super::internal("introspection", &e))
        }
    }
}

/// Synapse turns a non-200 into 503 for its client, which is right for an outage.
fn server_error(reference: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "server_error", "error_description": reference })),
    )
        .into_response()
}

const INACTIVE: &str = r#"{"active":false}"#;

/// A 200 with a JSON body rendered already (the answers are pre-rendered per token).
fn json_answer(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Reads one form field without building a map (the body is `token=…&token_type_hint=…`);
/// only the value asked for is copied.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The active token behind `token`, or `None` when it is not active now.
pub async fn introspect_token(
    app: &AppState,
    token: &str,
    now: i64,
) -> Result<Option<Arc<ActiveToken>>, StoreError> {
    // A token mxidp did not issue is refused before any hashing or lookup.
    if crate::tokens::recognise(token) != Some(TokenKind::Access) {
        return Ok(None);
    }
    let hash = TokenHash::of(token);
    let active = match app.cache.lookup(&hash) {
        Lookup::Active(active) => active,
        Lookup::NotActive => return Ok(None),
        Lookup::Unknown => {
            let Some((record, session)) = app.store.token(hash).await? else {
                return Ok(None);
            };
            if record.kind != TokenKind::Access
                || record.rotated_at.is_some()
                || session.state != SessionState::Active
            {
                return Ok(None);
            }
            let active = ActiveToken::new(&record, &session);
            app.cache
                .insert_checked(app.store.as_ref(), hash, active.clone())
                .await?;
            Arc::new(active)
        }
    };
    Ok(active
        .expires_at
        .is_none_or(|exp| exp > now)
        .then_some(active))
}
