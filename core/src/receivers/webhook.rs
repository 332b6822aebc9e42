//! The provider's own webhook: `POST /upstream/webhook`. The adapter verifies the sender on the
//! raw bytes and parses the payload ([`crate::provider::Provider::parse_webhook`]); every event
//! is stored under the source `webhook:<provider>` before the 200.
//!
//! Answers: 200 once every event is durable (duplicates included: webhooks are delivered at
//! least once), 401 when the sender is not verified, 400 for a malformed payload, 404 when the
//! provider has no webhook.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{audit, refused};
use crate::events::{Acceptance, WebhookError, WebhookRequest};
use crate::http::App;

pub async fn post(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let source = format!("webhook:{}", app.provider.name());
    let events = match app.provider.parse_webhook(&WebhookRequest {
        headers: &headers,
        body: &body,
    }) {
        Ok(events) => events,
        Err(error) => {
            let status = match &error {
                WebhookError::Unsupported => return StatusCode::NOT_FOUND.into_response(),
                WebhookError::Unauthenticated => StatusCode::UNAUTHORIZED,
                WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            };
            refused(&app, &source, &error.to_string(), "-").await;
            return crate::http::oauth_error(
                status,
                if status == StatusCode::UNAUTHORIZED {
                    "access_denied"
                } else {
                    "invalid_request"
                },
                error.to_string(),
            );
        }
    };
    let mut stored = 0usize;
    for received in events {
        let kind = received.event.kind();
        let target = received.event.subject().unwrap_or("-").to_owned();
        let dedupe_key = received.dedupe_key.clone();
        match app.events.accept(&source, received).await {
            Ok(Acceptance::Stored(id)) => {
                stored += 1;
                audit(
                    &app,
                    &source,
                    "event.received",
                    &target,
                    "ok",
                    &id.to_string(),
                    json!({ "kind": kind, "dedupe_key": dedupe_key }),
                )
                .await;
            }
            Ok(Acceptance::Duplicate) => {}
            Err(e) => {
                // Events stored before this one stay stored; the sender's retry is deduplicated.
                let id = crate::http::internal("storing a webhook event", &e);
                return crate::http::oauth_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("internal error (reference {id})"),
                );
            }
        }
    }
    tracing::debug!(source, stored, "webhook delivery accepted");
    StatusCode::OK.into_response()
}
