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

use super::refused;
use crate::app::App;
use crate::events::{Acceptance, WebhookError, WebhookRequest};
use crate::limits::ClientAddress;

/// The source the provider's own events are stored under: its webhook's deliveries, and its
/// event log's pages ([`crate::events::log_stream`]), so that their dedupe keys meet.
pub fn source(provider: &dyn crate::provider::Provider) -> String {
    format!("webhook:{}", provider.name())
}

pub async fn post(
    State(app): State<App>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let source = source(app.provider.as_ref());
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
            refused(&app, &source, &error.to_string(), "-", address).await;
            return crate::error_reply::oauth_error(
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
        match app.events.accept(&source, received).await {
            Ok(Acceptance::Stored(_)) => {
                // `accept` writes the audit record (kind, dedupe key, event id).
                stored += 1;
            }
            Ok(Acceptance::Duplicate) => {}
            Err(e) => {
                // Events stored before this one stay stored; the sender's retry is deduplicated.
                let id = crate::error_reply::internal("storing a webhook event", &e);
                return crate::error_reply::oauth_error(
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

/// `GET /upstream/webhook`: the IdP's one-time verification of the endpoint (Okta Event
/// Hooks), answered by the adapter after it checked the sender; nothing is stored.
pub async fn get(
    State(app): State<App>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
) -> Response {
    let source = source(app.provider.as_ref());
    match app.provider.webhook_verification(&WebhookRequest {
        headers: &headers,
        body: &[],
    }) {
        Ok(challenge) => {
            tracing::info!(source, "webhook verification answered");
            axum::Json(challenge.body).into_response()
        }
        Err(WebhookError::Unsupported) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            refused(&app, &source, &error.to_string(), "-", address).await;
            let status = match error {
                WebhookError::Unauthenticated => StatusCode::UNAUTHORIZED,
                _ => StatusCode::BAD_REQUEST,
            };
            crate::error_reply::oauth_error(status, "access_denied", error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use reqwest::StatusCode;
    use serde_json::{json, Value};

    use crate::events::{IdpEvent, ReceivedEvent, WebhookError, WebhookRequest};
    use crate::provider::Provider;
    use crate::receivers::test_env::{Env, Options};

    /// An adapter whose webhook carries a shared secret header and a JSON list of lockings.
    struct TestAdapter;

    impl Provider for TestAdapter {
        fn name(&self) -> &'static str {
            "test"
        }

        fn parse_webhook(
            &self,
            request: &WebhookRequest<'_>,
        ) -> Result<Vec<ReceivedEvent>, WebhookError> {
            if request.headers.get("x-test-secret").map(|v| v.as_bytes()) != Some(b"s3cret") {
                return Err(WebhookError::Unauthenticated);
            }
            let items: Vec<Value> = serde_json::from_slice(request.body)
                .map_err(|e| WebhookError::Malformed(e.to_string()))?;
            items
                .iter()
                .map(|item| {
                    Ok(ReceivedEvent {
                        dedupe_key: item["id"]
                            .as_str()
                            .ok_or_else(|| WebhookError::Malformed("no id".into()))?
                            .into(),
                        occurred_at: 1_700_000_000,
                        event: IdpEvent::UserLocked {
                            subject: item["user"].as_str().unwrap_or_default().into(),
                        },
                    })
                })
                .collect()
        }
    }

    async fn post(env: &Env, secret: &str, body: &str) -> reqwest::Response {
        env.http
            .post(env.url(crate::receivers::paths::WEBHOOK))
            .header("x-test-secret", secret)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn verified_deliveries_are_stored_once_per_event_id() {
        let env = Env::with(Options {
            provider: Arc::new(TestAdapter),
            ..Options::default()
        })
        .await;
        let body = json!([{"id": "e1", "user": "u1"}, {"id": "e2", "user": "u2"}]).to_string();
        assert_eq!(post(&env, "s3cret", &body).await.status(), StatusCode::OK);
        // The same delivery again (at-least-once senders): acknowledged, nothing twice.
        assert_eq!(post(&env, "s3cret", &body).await.status(), StatusCode::OK);
        let events = env.events().await;
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].source, "webhook:test");
        assert_eq!(
            events[1].event,
            IdpEvent::UserLocked {
                subject: "u2".into()
            }
        );
    }

    #[tokio::test]
    async fn unverified_and_malformed_deliveries_are_refused() {
        let env = Env::with(Options {
            provider: Arc::new(TestAdapter),
            ..Options::default()
        })
        .await;
        let body = json!([{"id": "e1", "user": "u1"}]).to_string();
        assert_eq!(
            post(&env, "wrong", &body).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(&env, "s3cret", "{not json").await.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&env, "s3cret", "[{\"user\": \"u1\"}]").await.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(
                &env,
                "s3cret",
                &"x".repeat(crate::receivers::test_env::MAX_BODY + 1)
            )
            .await
            .status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(env.events().await, vec![]);
    }

    /// Okta-style verification: a one-time GET that echoes a challenge header, sender checked.
    struct Verifying;

    impl Provider for Verifying {
        fn webhook_verification(
            &self,
            request: &WebhookRequest<'_>,
        ) -> Result<crate::provider::WebhookChallenge, WebhookError> {
            if request.headers.get("x-test-secret").map(|v| v.as_bytes()) != Some(b"s3cret") {
                return Err(WebhookError::Unauthenticated);
            }
            let challenge = request
                .headers
                .get("x-challenge")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| WebhookError::Malformed("no challenge".into()))?;
            Ok(crate::provider::WebhookChallenge {
                body: json!({ "verification": challenge }),
            })
        }
    }

    #[tokio::test]
    async fn the_webhook_verification_is_answered_by_the_adapter_and_stores_nothing() {
        let env = Env::with(Options {
            provider: Arc::new(Verifying),
            ..Options::default()
        })
        .await;
        let get = |secret: &'static str| {
            env.http
                .get(env.url(crate::receivers::paths::WEBHOOK))
                .header("x-test-secret", secret)
                .header("x-challenge", "abc123")
                .send()
        };
        let answer = get("s3cret").await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(
            answer.json::<Value>().await.unwrap(),
            json!({"verification": "abc123"})
        );
        assert_eq!(
            get("wrong").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(env.events().await, vec![]);
        // Generic OIDC has no webhook, so no verification either.
        let generic = Env::start().await;
        let answer = generic
            .http
            .get(generic.url(crate::receivers::paths::WEBHOOK))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_provider_without_webhooks_has_no_endpoint() {
        let env = Env::start().await;
        assert_eq!(
            post(&env, "s3cret", "[]").await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
