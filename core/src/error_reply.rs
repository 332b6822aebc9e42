//! The error replies every endpoint shares: the OAuth 2.0 error shape and the correlation id
//! that ties a user-facing "internal error" to its log line.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An OAuth 2.0 error response (RFC 6749 §5.2) with `Cache-Control: no-store`.
pub fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let mut response = (
        status,
        Json(json!({ "error": error, "error_description": description.into() })),
    )
        .into_response();
    no_store(&mut response);
    response
}

pub fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Logs an internal failure with a correlation id and returns that id for the user-facing error.
pub fn internal(context: &str, error: &dyn std::fmt::Display) -> String {
    let id = crate::ids::random_token(6);
    tracing::error!(error_id = %id, "{context}: {error}");
    id
}
