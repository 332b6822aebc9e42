//! `POST /oauth2/registration`: MSC2966 dynamic client registration. The rules live in
//! [`crate::registration`]; this module stores the client and shapes the answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{internal, oauth_error, App};
use crate::registration::{validate, ClientRegistrationRequest, RegistrationError};
use crate::store::RegisteredClient;

pub enum RouteError {
    BadJson(String),
    Rules(RegistrationError),
    Internal(String),
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        match self {
            RouteError::BadJson(msg) => {
                oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", msg)
            }
            RouteError::Rules(e) => {
                oauth_error(StatusCode::BAD_REQUEST, e.error_code(), e.to_string())
            }
            RouteError::Internal(id) => oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("internal error {id}"),
            ),
        }
    }
}

pub async fn post(State(app): State<App>, body: axum::body::Bytes) -> Result<Response, RouteError> {
    let request: ClientRegistrationRequest = serde_json::from_slice(&body)
        .map_err(|e| RouteError::BadJson(format!("invalid JSON: {e}")))?;
    let metadata = validate(request).map_err(RouteError::Rules)?;
    let client_id = crate::ids::random_token(16);
    let metadata_json = serde_json::to_value(&metadata)
        .map_err(|e| RouteError::Internal(internal("serialise client", &e)))?;
    let client = RegisteredClient {
        client_id: client_id.clone(),
        metadata,
        created_at: crate::ids::now_unix(),
    };
    app.store
        .add_client(&client)
        .await
        .map_err(|e| RouteError::Internal(internal("store client", &e)))?;
    tracing::info!(client_id = %client_id, "registered client");
    let mut answer = match metadata_json {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    answer.insert("client_id".into(), Value::String(client_id));
    answer.insert("client_id_issued_at".into(), Value::from(client.created_at));
    answer.insert(
        "token_endpoint_auth_method".into(),
        Value::String("none".into()),
    );
    let mut response = (StatusCode::CREATED, Json(Value::Object(answer))).into_response();
    super::no_store(&mut response);
    Ok(response)
}
