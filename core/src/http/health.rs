//! `/health/live` (the process answers) and `/health/ready` (store open, IdP discovery loaded).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::App;

pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(app): State<App>) -> impl IntoResponse {
    let store = app.store.ping().await.is_ok();
    let upstream = app.upstream.get().is_some();
    // Not a readiness condition: mxidp's own tokens work without the shim's accounts.
    let shim = app.jwt_shim.as_ref().map(|shim| {
        let (ready, configured) = shim.accounts_ready();
        let (keys, issuers) = shim.issuers_ready(&app);
        json!({
            "issuers_with_keys": keys,
            "issuers": issuers,
            "service_accounts_ready": ready,
            "service_accounts": configured,
        })
    });
    let status = if store && upstream {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not ready" },
            "store": if store { "ok" } else { "unavailable" },
            "upstream_discovery": if upstream { "loaded" } else { "not loaded (IdP unreachable or misconfigured; see logs)" },
            "jwt_shim": shim,
        })),
    )
}
