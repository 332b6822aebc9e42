//! STUB: the upstream client.
use serde_json::{Map, Value};
use url::Url;

use super::*;

pub struct Upstream {
    metadata: ProviderMetadata,
}

impl Upstream {
    pub async fn discover(_settings: UpstreamSettings, _http: reqwest::Client) -> Result<Self, UpstreamError> {
        todo!()
    }
    pub fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }
    pub fn settings(&self) -> &UpstreamSettings {
        todo!()
    }
    pub fn authorization_url(&self, _request: &UpstreamAuthorization) -> Url {
        todo!()
    }
    pub async fn exchange_code(&self, _code: &str, _redirect_uri: &Url, _code_verifier: &str) -> Result<UpstreamTokens, UpstreamError> {
        todo!()
    }
    pub async fn validate_id_token(&self, _id_token: &str, _expected_nonce: Option<&str>) -> Result<IdTokenClaims, IdTokenError> {
        todo!()
    }
    pub async fn userinfo(&self, _access_token: &str) -> Result<Map<String, Value>, UpstreamError> {
        todo!()
    }
    pub async fn refresh(&self, _refresh_token: &str) -> Result<UpstreamTokens, UpstreamError> {
        todo!()
    }
    pub async fn revoke(&self, _token: &str, _hint: TokenTypeHint) -> Result<(), UpstreamError> {
        todo!()
    }
}
