//! STUB: ID-token validation.
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct IdTokenClaims {
    pub sub: String,
    pub sid: Option<String>,
    pub claims: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("stub")]
    Stub,
}
