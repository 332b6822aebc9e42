//! OpenID Provider discovery (OpenID Connect Discovery 1.0).

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::http::{read_limited, transport};
use super::{UpstreamError, UpstreamSettings};

/// The parts of the IdP's discovery document mxidp uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    /// The issuer exactly as the IdP spells it; ID tokens' `iss` must equal it byte for byte.
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Url,
    #[serde(default)]
    pub userinfo_endpoint: Option<Url>,
    #[serde(default)]
    pub revocation_endpoint: Option<Url>,
    #[serde(default)]
    pub introspection_endpoint: Option<Url>,
    #[serde(default)]
    pub end_session_endpoint: Option<Url>,
    #[serde(default)]
    pub prompt_values_supported: Vec<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

/// Where the discovery document of `issuer` lives. OIDC Discovery §4: remove a trailing `/`
/// from the issuer, then append `/.well-known/openid-configuration` (so a path issuer such as
/// Keycloak's `…/realms/x` keeps its path).
pub(crate) fn discovery_url(issuer: &Url) -> Result<Url, UpstreamError> {
    if issuer.query().is_some() || issuer.fragment().is_some() {
        // OIDC Discovery §3: the issuer has no query or fragment component.
        return Err(UpstreamError::Discovery(format!(
            "the configured issuer {issuer} has a query or fragment; an issuer cannot"
        )));
    }
    let base = issuer.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/.well-known/openid-configuration"))
        .map_err(|e| UpstreamError::Discovery(format!("cannot build the discovery URL: {e}")))
}

/// Whether the `issuer` of the document is the configured one.
///
/// The comparison is exact (OIDC Discovery §4.3; a mismatch is how an impersonating or
/// misconfigured IdP shows). One allowance: `Url` turns a configured `https://idp.example` into
/// `https://idp.example/`, so for a configured issuer with an empty path the document may spell
/// it with or without that final `/` — both are the string the operator could have written.
fn issuer_matches(configured: &Url, advertised: &str) -> bool {
    let configured_str = configured.as_str();
    if advertised == configured_str {
        return true;
    }
    configured.path() == "/" && configured_str.strip_suffix('/') == Some(advertised)
}

/// Fetches and checks the IdP's discovery document.
pub(crate) async fn fetch(
    settings: &UpstreamSettings,
    http: &reqwest::Client,
) -> Result<ProviderMetadata, UpstreamError> {
    let url = discovery_url(&settings.issuer)?;
    let response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(settings.http_timeout)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    let body = read_limited(response).await?;
    if !status.is_success() {
        return Err(UpstreamError::Discovery(format!(
            "GET {url} answered HTTP {status}"
        )));
    }
    parse(settings, &body)
}

fn parse(settings: &UpstreamSettings, body: &[u8]) -> Result<ProviderMetadata, UpstreamError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Discovery(format!("the document is not JSON: {e}")))?;
    let Some(object) = doc.as_object() else {
        return Err(UpstreamError::Discovery(
            "the document is not a JSON object".into(),
        ));
    };
    // Name the missing field: serde's "missing field" message is less helpful to an operator.
    for field in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
    ] {
        if !object.get(field).is_some_and(Value::is_string) {
            return Err(UpstreamError::Discovery(format!(
                "the document has no `{field}`"
            )));
        }
    }
    let metadata: ProviderMetadata = serde_json::from_value(doc)
        .map_err(|e| UpstreamError::Discovery(format!("the document is malformed: {e}")))?;
    if !issuer_matches(&settings.issuer, &metadata.issuer) {
        return Err(UpstreamError::Discovery(format!(
            "the document's issuer {:?} is not the configured issuer {:?}",
            metadata.issuer,
            settings.issuer.as_str()
        )));
    }
    if !metadata.code_challenge_methods_supported.is_empty()
        && !metadata
            .code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    {
        tracing::warn!(issuer = %metadata.issuer, "the IdP does not advertise PKCE S256; mxidp sends it anyway");
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_follows_oidc_discovery_section_4() {
        let cases = [
            (
                "https://idp.example",
                "https://idp.example/.well-known/openid-configuration",
            ),
            (
                "https://idp.example/",
                "https://idp.example/.well-known/openid-configuration",
            ),
            (
                "https://idp.example/realms/acme",
                "https://idp.example/realms/acme/.well-known/openid-configuration",
            ),
            (
                "https://idp.example/realms/acme/",
                "https://idp.example/realms/acme/.well-known/openid-configuration",
            ),
        ];
        for (issuer, expected) in cases {
            let url = discovery_url(&Url::parse(issuer).unwrap()).unwrap();
            assert_eq!(url.as_str(), expected, "issuer {issuer}");
        }
        assert!(discovery_url(&Url::parse("https://idp.example/?tenant=1").unwrap()).is_err());
    }

    #[test]
    fn issuer_comparison_is_exact() {
        let path = Url::parse("https://idp.example/realms/acme").unwrap();
        assert!(issuer_matches(&path, "https://idp.example/realms/acme"));
        assert!(!issuer_matches(&path, "https://idp.example/realms/acme/"));
        assert!(!issuer_matches(&path, "https://IDP.example/realms/acme"));
        let slash = Url::parse("https://idp.example/realms/acme/").unwrap();
        assert!(!issuer_matches(&slash, "https://idp.example/realms/acme"));
        let root = Url::parse("https://idp.example").unwrap();
        assert!(issuer_matches(&root, "https://idp.example"));
        assert!(issuer_matches(&root, "https://idp.example/"));
        assert!(!issuer_matches(&root, "https://idp.example//"));
    }
}
