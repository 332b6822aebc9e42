//! Dynamic client registration rules for Matrix clients (RFC 7591 as profiled by MSC2966, spec
//! v1.15 "Client registration").
//!
//! mxidp registers only public clients using the authorization-code grant. `client_uri` is the
//! common base: every other URI (logo, terms, policy, https redirect URIs) must be on its host or
//! a subdomain of it, so that a registration cannot borrow another site's name. Native clients may
//! also use a private-use scheme that is the reverse-DNS of that host, or a port-less loopback
//! `http` URI (RFC 8252 §7.1, §7.3).

use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::scope::for_error_text;

/// The registration request body (RFC 7591 §2). Unknown members are ignored (RFC 7591 §3.1),
/// which also drops localized `field#lang` variants (§2.2 allows that).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientRegistrationRequest {
    pub redirect_uris: Option<Vec<String>>,
    pub client_uri: Option<String>,
    pub client_name: Option<String>,
    pub logo_uri: Option<String>,
    pub tos_uri: Option<String>,
    pub policy_uri: Option<String>,
    pub application_type: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub token_endpoint_auth_method: Option<String>,
}

/// OpenID Connect Dynamic Registration `application_type`; RFC 7591 clients default to `web`
/// (MSC2966).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationType {
    Web,
    Native,
}

/// The grant types mxidp knows. Others a client lists are dropped, not refused (MSC2966).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    /// RFC 8628, for clients that sign in with a code typed on another device.
    #[serde(rename = "urn:ietf:params:oauth:grant-type:device_code")]
    DeviceCode,
}

impl GrantType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }
}

/// A validated public client, as stored and echoed in the 201 response. The token endpoint
/// auth method is always `none`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMetadata {
    pub redirect_uris: Vec<Url>,
    pub client_uri: Url,
    pub client_name: Option<String>,
    pub logo_uri: Option<Url>,
    pub tos_uri: Option<Url>,
    pub policy_uri: Option<Url>,
    pub application_type: ApplicationType,
    pub grant_types: Vec<GrantType>,
}

/// Why a registration was refused (RFC 7591 §3.2.2). `Display` is the `error_description`; it
/// quotes client input only through a filter that keeps it within RFC 6749 §5.2 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidClientMetadata(String),
}

impl RegistrationError {
    /// The OAuth `error` code.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::InvalidRedirectUri(_) => "invalid_redirect_uri",
            Self::InvalidClientMetadata(_) => "invalid_client_metadata",
        }
    }

    /// The OAuth `error_description`.
    pub fn description(&self) -> &str {
        match self {
            Self::InvalidRedirectUri(d) | Self::InvalidClientMetadata(d) => d,
        }
    }
}

fn metadata_err(msg: impl Into<String>) -> RegistrationError {
    RegistrationError::InvalidClientMetadata(msg.into())
}

fn redirect_err(uri: &str, why: &str) -> RegistrationError {
    RegistrationError::InvalidRedirectUri(format!("redirect URI {} {why}", for_error_text(uri)))
}

/// Bounds on what an anonymous registration may store. Registration is open to anyone, so each
/// field has a size a real client never comes near (Element's name is 7 characters, its
/// redirect URIs two), and a request beyond them is refused rather than stored.
pub mod bounds {
    /// Characters of `client_name`; Synapse's device display names take 100 (longer names are
    /// cut for the device, but stored as given up to this).
    pub const CLIENT_NAME_CHARS: usize = 256;
    /// Bytes of any one URI.
    pub const URI_BYTES: usize = 2048;
    pub const REDIRECT_URIS: usize = 10;
    /// Entries of `grant_types` and `response_types` (known and unknown ones together).
    pub const LIST_ENTRIES: usize = 10;
}

/// Checks a registration request against the MSC2966 rules and returns what to store.
pub fn validate(request: ClientRegistrationRequest) -> Result<ClientMetadata, RegistrationError> {
    check_bounds(&request)?;
    // Only public clients: mxidp has no client secrets or keys to check.
    match request.token_endpoint_auth_method.as_deref() {
        None | Some("none") => {}
        Some(other) => {
            return Err(metadata_err(format!(
                "token_endpoint_auth_method {} is not supported; only public clients (none) can register",
                for_error_text(other)
            )))
        }
    }

    let application_type = match request.application_type.as_deref() {
        None | Some("web") => ApplicationType::Web,
        Some("native") => ApplicationType::Native,
        Some(other) => {
            return Err(metadata_err(format!(
                "application_type {} is not web or native",
                for_error_text(other)
            )))
        }
    };

    // RFC 7591 §2: response_types defaults to ["code"]; other values are ignored (MSC2966).
    if let Some(types) = &request.response_types {
        if !types.iter().any(|t| t == "code") {
            return Err(metadata_err(
                "response_types must include code: only the authorization code flow is supported",
            ));
        }
    }

    // RFC 7591 §2: grant_types defaults to ["authorization_code"]. Unknown types are dropped
    // rather than refused.
    let grant_types = match &request.grant_types {
        None => vec![GrantType::AuthorizationCode],
        Some(types) => {
            let mut kept = Vec::new();
            for known in [
                GrantType::AuthorizationCode,
                GrantType::RefreshToken,
                GrantType::DeviceCode,
            ] {
                if types.iter().any(|t| t == known.as_str()) {
                    kept.push(known);
                }
            }
            if !kept.contains(&GrantType::AuthorizationCode) {
                return Err(metadata_err(
                    "grant_types must include authorization_code: only the authorization code flow is supported",
                ));
            }
            kept
        }
    };

    let client_uri = parse_client_uri(request.client_uri.as_deref())?;
    let base_host = match client_uri.host() {
        Some(Host::Domain(d)) => d.to_owned(),
        _ => return Err(metadata_err("client_uri must have a domain name as host")),
    };

    let logo_uri = parse_related_uri("logo_uri", request.logo_uri.as_deref(), &base_host)?;
    let tos_uri = parse_related_uri("tos_uri", request.tos_uri.as_deref(), &base_host)?;
    let policy_uri = parse_related_uri("policy_uri", request.policy_uri.as_deref(), &base_host)?;

    let raw_redirects = request.redirect_uris.unwrap_or_default();
    if raw_redirects.is_empty() {
        return Err(RegistrationError::InvalidRedirectUri(
            "at least one redirect URI is required".into(),
        ));
    }
    let redirect_uris = raw_redirects
        .iter()
        .map(|raw| parse_redirect_uri(raw, application_type, &base_host))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(ClientMetadata {
        redirect_uris,
        client_uri,
        client_name: request.client_name,
        logo_uri,
        tos_uri,
        policy_uri,
        application_type,
        grant_types,
    })
}

fn check_bounds(request: &ClientRegistrationRequest) -> Result<(), RegistrationError> {
    if request.client_name.as_ref().is_some_and(|n| {
        n.chars().count() > bounds::CLIENT_NAME_CHARS || n.chars().any(char::is_control)
    }) {
        return Err(metadata_err(format!(
            "client_name must be at most {} characters, without control characters",
            bounds::CLIENT_NAME_CHARS
        )));
    }
    let uris = [
        ("client_uri", &request.client_uri),
        ("logo_uri", &request.logo_uri),
        ("tos_uri", &request.tos_uri),
        ("policy_uri", &request.policy_uri),
    ];
    for (name, uri) in uris {
        if uri.as_ref().is_some_and(|u| u.len() > bounds::URI_BYTES) {
            return Err(metadata_err(format!(
                "{name} must be at most {} bytes",
                bounds::URI_BYTES
            )));
        }
    }
    if let Some(redirects) = &request.redirect_uris {
        if redirects.len() > bounds::REDIRECT_URIS {
            return Err(RegistrationError::InvalidRedirectUri(format!(
                "at most {} redirect URIs",
                bounds::REDIRECT_URIS
            )));
        }
        if redirects.iter().any(|u| u.len() > bounds::URI_BYTES) {
            return Err(RegistrationError::InvalidRedirectUri(format!(
                "a redirect URI must be at most {} bytes",
                bounds::URI_BYTES
            )));
        }
    }
    for (name, list) in [
        ("grant_types", &request.grant_types),
        ("response_types", &request.response_types),
    ] {
        if list
            .as_ref()
            .is_some_and(|l| l.len() > bounds::LIST_ENTRIES || l.iter().any(|t| t.len() > 256))
        {
            return Err(metadata_err(format!(
                "{name} must have at most {} entries of at most 256 bytes",
                bounds::LIST_ENTRIES
            )));
        }
    }
    Ok(())
}

fn parse_client_uri(raw: Option<&str>) -> Result<Url, RegistrationError> {
    let raw = raw.ok_or_else(|| metadata_err("client_uri is required"))?;
    let url = Url::parse(raw).map_err(|_| {
        metadata_err(format!(
            "client_uri {} is not a valid URL",
            for_error_text(raw)
        ))
    })?;
    if url.scheme() != "https" {
        return Err(metadata_err("client_uri must use https"));
    }
    if has_userinfo(&url) {
        return Err(metadata_err(
            "client_uri must not contain a user name or password",
        ));
    }
    if url.fragment().is_some() {
        return Err(metadata_err("client_uri must not contain a fragment"));
    }
    Ok(url)
}

/// `logo_uri`, `tos_uri`, `policy_uri`: https on the client_uri host or a subdomain. A bad one
/// refuses the registration rather than being dropped silently, so the client's author notices.
fn parse_related_uri(
    field: &str,
    raw: Option<&str>,
    base_host: &str,
) -> Result<Option<Url>, RegistrationError> {
    let Some(raw) = raw else { return Ok(None) };
    let url = Url::parse(raw).map_err(|_| {
        metadata_err(format!(
            "{field} {} is not a valid URL",
            for_error_text(raw)
        ))
    })?;
    if url.scheme() != "https" {
        return Err(metadata_err(format!("{field} must use https")));
    }
    if has_userinfo(&url) {
        return Err(metadata_err(format!(
            "{field} must not contain a user name or password"
        )));
    }
    if url.fragment().is_some() {
        return Err(metadata_err(format!("{field} must not contain a fragment")));
    }
    if !host_within(&url, base_host) {
        return Err(metadata_err(format!(
            "{field} must be on the client_uri host or a subdomain of it"
        )));
    }
    Ok(Some(url))
}

fn parse_redirect_uri(
    raw: &str,
    application_type: ApplicationType,
    base_host: &str,
) -> Result<Url, RegistrationError> {
    let url = Url::parse(raw).map_err(|_| redirect_err(raw, "is not a valid URL"))?;
    // RFC 6749 §3.1.2: the redirection endpoint URI MUST NOT include a fragment.
    if url.fragment().is_some() {
        return Err(redirect_err(raw, "must not contain a fragment"));
    }
    match (application_type, url.scheme()) {
        (_, "https") => check_web_redirect(&url, raw, base_host)?,
        (ApplicationType::Web, _) => return Err(redirect_err(raw, "must use https (web client)")),
        (ApplicationType::Native, "http") => check_loopback_redirect(&url, raw)?,
        (ApplicationType::Native, scheme) => {
            check_private_use_redirect(&url, raw, scheme, base_host)?
        }
    }
    Ok(url)
}

fn check_web_redirect(url: &Url, raw: &str, base_host: &str) -> Result<(), RegistrationError> {
    if has_userinfo(url) {
        return Err(redirect_err(
            raw,
            "must not contain a user name or password",
        ));
    }
    if !host_within(url, base_host) {
        return Err(redirect_err(
            raw,
            "must be on the client_uri host or a subdomain of it",
        ));
    }
    Ok(())
}

/// RFC 8252 §7.3: loopback redirect over plain http. The port is chosen by the app at run time,
/// so it must not be registered; any port matches later (see [`redirect_uri_matches`]).
fn check_loopback_redirect(url: &Url, raw: &str) -> Result<(), RegistrationError> {
    if !is_loopback_host(url) {
        return Err(redirect_err(
            raw,
            "uses http but not a loopback host (localhost, 127.0.0.1 or [::1])",
        ));
    }
    if has_userinfo(url) {
        return Err(redirect_err(
            raw,
            "must not contain a user name or password",
        ));
    }
    if url.port().is_some() {
        return Err(redirect_err(
            raw,
            "must not name a port: loopback redirect URIs match any port",
        ));
    }
    Ok(())
}

/// RFC 8252 §7.1: a private-use scheme in reverse-DNS form. MSC2966: the scheme "MUST be
/// prefixed with the client URI hostname in reverse-DNS notation" (`https://element.io/` →
/// `io.element.elementx:`), so an app cannot claim another site's scheme. The URI
/// must have no authority: `com.example.app:/cb`, not `com.example.app://cb`.
fn check_private_use_redirect(
    url: &Url,
    raw: &str,
    scheme: &str,
    base_host: &str,
) -> Result<(), RegistrationError> {
    // At least two labels: rules out a bare TLD and schemes like `file`, `data`, `javascript`.
    let reverse_host: String = base_host.rsplit('.').collect::<Vec<_>>().join(".");
    let is_reverse_dns = scheme.contains('.')
        && (reverse_host == scheme
            || scheme
                .strip_prefix(reverse_host.as_str())
                .is_some_and(|rest| rest.starts_with('.')));
    if !is_reverse_dns {
        return Err(redirect_err(
            raw,
            "must use a private-use scheme prefixed with the reverse domain name of the client_uri host",
        ));
    }
    // `scheme://` introduces an authority, even an empty one (`scheme:///cb`).
    let after_scheme = &url.as_str()[scheme.len() + 1..];
    if url.has_host() || after_scheme.starts_with("//") {
        return Err(redirect_err(
            raw,
            "must not have an authority (write scheme:/path, not scheme://...)",
        ));
    }
    Ok(())
}

fn has_userinfo(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// The URL's host is `base_host` or a subdomain of it. Domains only: the url crate has already
/// lowercased them.
fn host_within(url: &Url, base_host: &str) -> bool {
    match url.host() {
        Some(Host::Domain(host)) => {
            host == base_host
                || host
                    .strip_suffix(base_host)
                    .is_some_and(|prefix| prefix.ends_with('.'))
        }
        _ => false,
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d == "localhost",
        Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        None => false,
    }
}

/// Finds the registered redirect URI that `presented` (the authorization request's
/// `redirect_uri`) names, and returns the URI to redirect to.
///
/// The comparison is exact on the url crate's serialisation of both sides. Registered URIs are
/// stored parsed, so `presented` is parsed the same way first; that only applies RFC 3986 §6.2.2
/// syntax normalisation (scheme/host case, default port, the `/` path of a bare origin), never
/// prefix or query matching. The one exception: a loopback http URI registered without a port
/// matches the same URI with any port (RFC 8252 §7.3), and the presented URI, port included, is
/// returned.
pub fn redirect_uri_matches(registered: &[Url], presented: &str) -> Option<Url> {
    let presented = Url::parse(presented).ok()?;
    if let Some(exact) = registered.iter().find(|r| **r == presented) {
        return Some(exact.clone());
    }
    if presented.scheme() != "http" || !is_loopback_host(&presented) {
        return None;
    }
    let mut without_port = presented.clone();
    without_port.set_port(None).ok()?;
    registered
        .iter()
        .any(|r| {
            r.scheme() == "http" && r.port().is_none() && is_loopback_host(r) && *r == without_port
        })
        .then_some(presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(redirects: &[&str]) -> ClientRegistrationRequest {
        ClientRegistrationRequest {
            client_uri: Some("https://app.example.com/".into()),
            client_name: Some("Example".into()),
            redirect_uris: Some(redirects.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn native(redirects: &[&str]) -> ClientRegistrationRequest {
        ClientRegistrationRequest {
            application_type: Some("native".into()),
            ..web(redirects)
        }
    }

    fn redirect_error(req: ClientRegistrationRequest) -> String {
        match validate(req) {
            Err(e @ RegistrationError::InvalidRedirectUri(_)) => {
                assert_eq!(e.error_code(), "invalid_redirect_uri");
                e.description().to_owned()
            }
            other => panic!("expected invalid_redirect_uri, got {other:?}"),
        }
    }

    fn metadata_error(req: ClientRegistrationRequest) -> String {
        match validate(req) {
            Err(e @ RegistrationError::InvalidClientMetadata(_)) => {
                assert_eq!(e.error_code(), "invalid_client_metadata");
                e.description().to_owned()
            }
            other => panic!("expected invalid_client_metadata, got {other:?}"),
        }
    }

    #[test]
    fn element_web_like_registration_accepted() {
        let json = serde_json::json!({
            "client_name": "Element",
            "client_name#fr": "Élément",
            "client_uri": "https://example.com/",
            "logo_uri": "https://static.example.com/logo.png",
            "tos_uri": "https://example.com/terms",
            "policy_uri": "https://app.example.com/privacy?x=1",
            "redirect_uris": ["https://app.example.com/?no_universal_links=true"],
            "application_type": "web",
            "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
            "response_types": ["code", "id_token"],
            "token_endpoint_auth_method": "none",
            "software_id": "whatever"
        });
        let req: ClientRegistrationRequest = serde_json::from_value(json).unwrap();
        let meta = validate(req).unwrap();
        assert_eq!(meta.application_type, ApplicationType::Web);
        assert_eq!(
            meta.grant_types,
            vec![
                GrantType::AuthorizationCode,
                GrantType::RefreshToken,
                GrantType::DeviceCode
            ]
        );
        assert_eq!(meta.client_name.as_deref(), Some("Element"));
        assert_eq!(meta.redirect_uris.len(), 1);
        assert!(meta.logo_uri.is_some() && meta.tos_uri.is_some() && meta.policy_uri.is_some());
    }

    #[test]
    fn application_type_defaults_to_web() {
        let meta = validate(web(&["https://app.example.com/cb"])).unwrap();
        assert_eq!(meta.application_type, ApplicationType::Web);
        assert_eq!(meta.grant_types, vec![GrantType::AuthorizationCode]);
    }

    #[test]
    fn http_redirect_for_web_client_rejected() {
        redirect_error(web(&["http://app.example.com/cb"]));
        // Not even loopback: that is for native clients.
        redirect_error(web(&["http://localhost/cb"]));
    }

    #[test]
    fn fragment_rejected() {
        redirect_error(web(&["https://app.example.com/cb#frag"]));
        redirect_error(web(&["https://app.example.com/cb#"]));
        redirect_error(native(&["com.example.app:/cb#x"]));
        let mut req = web(&["https://app.example.com/cb"]);
        req.client_uri = Some("https://app.example.com/#top".into());
        metadata_error(req);
        let mut req = web(&["https://app.example.com/cb"]);
        req.logo_uri = Some("https://app.example.com/logo.png#x".into());
        metadata_error(req);
    }

    #[test]
    fn redirect_host_outside_client_uri_host_rejected() {
        redirect_error(web(&["https://evil.com/cb"]));
        // Parent domain of the client_uri host is outside it.
        redirect_error(web(&["https://example.com/cb"]));
        // Suffix match must be on a label boundary.
        redirect_error(web(&["https://notapp.example.com/cb"]));
        redirect_error(web(&["https://app.example.com.evil.com/cb"]));
    }

    #[test]
    fn subdomain_ok() {
        let meta = validate(web(&[
            "https://login.app.example.com/cb",
            "https://app.example.com:8443/other?q=1",
        ]))
        .unwrap();
        assert_eq!(meta.redirect_uris.len(), 2);
    }

    #[test]
    fn userinfo_in_redirect_rejected() {
        redirect_error(web(&["https://user@app.example.com/cb"]));
    }

    #[test]
    fn no_redirect_uri_rejected() {
        redirect_error(web(&[]));
        let mut req = web(&[]);
        req.redirect_uris = None;
        redirect_error(req);
    }

    #[test]
    fn native_private_use_scheme_reverse_domain_accepted() {
        // client_uri is https://app.example.com/ (MSC2966's examples, shifted by one label).
        let meta = validate(native(&[
            "com.example.app:/cb",
            "com.example.app.mobile:/",
            "com.example.app:callback",
        ]))
        .unwrap();
        assert_eq!(meta.application_type, ApplicationType::Native);
        assert_eq!(meta.redirect_uris.len(), 3);
    }

    #[test]
    fn private_use_scheme_not_reverse_domain_of_client_uri_rejected() {
        for uri in [
            "example:/cb",
            "org.example.app:/cb",
            "com.exam:/cb",
            "com.example:/cb",
            "com.example.ap:/cb",
            "com.example.appx:/cb",
            "com:/cb",
        ] {
            assert!(
                redirect_error(native(&[uri])).contains("reverse domain"),
                "{uri}"
            );
        }
        // Private-use schemes are for native clients only.
        redirect_error(web(&["com.example.app:/cb"]));
    }

    #[test]
    fn private_use_scheme_with_authority_rejected() {
        assert!(redirect_error(native(&["com.example.app://callback"])).contains("authority"));
        assert!(redirect_error(native(&["com.example.app:///callback"])).contains("authority"));
    }

    #[test]
    fn loopback_without_port_accepted_for_native() {
        let meta = validate(native(&[
            "http://localhost/cb",
            "http://127.0.0.1/",
            "http://[::1]/cb",
        ]))
        .unwrap();
        assert_eq!(meta.redirect_uris.len(), 3);
    }

    #[test]
    fn loopback_with_port_at_registration_rejected() {
        for uri in [
            "http://localhost:1234/cb",
            "http://127.0.0.1:8080/",
            "http://[::1]:9/cb",
        ] {
            assert!(redirect_error(native(&[uri])).contains("port"), "{uri}");
        }
    }

    #[test]
    fn native_non_loopback_http_or_https_localhost_rejected() {
        redirect_error(native(&["http://app.example.com/cb"]));
        redirect_error(native(&["http://127.0.0.2/cb"]));
        // https is judged by the web rules: localhost is not the client_uri host.
        redirect_error(native(&["https://localhost/cb"]));
        // Claimed https redirect on the client's own host is fine.
        validate(native(&["https://app.example.com/cb"])).unwrap();
    }

    #[test]
    fn client_uri_rules() {
        let mut req = web(&["https://app.example.com/cb"]);
        req.client_uri = None;
        metadata_error(req);
        let mut req = web(&["https://app.example.com/cb"]);
        req.client_uri = Some("http://app.example.com/".into());
        metadata_error(req);
        let mut req = web(&["https://app.example.com/cb"]);
        req.client_uri = Some("https://me:pw@app.example.com/".into());
        metadata_error(req);
    }

    #[test]
    fn related_uris_must_share_the_client_uri_host() {
        let mut req = web(&["https://app.example.com/cb"]);
        req.tos_uri = Some("https://other.org/tos".into());
        assert!(metadata_error(req).contains("tos_uri"));
        let mut req = web(&["https://app.example.com/cb"]);
        req.policy_uri = Some("http://app.example.com/policy".into());
        assert!(metadata_error(req).contains("policy_uri"));
    }

    #[test]
    fn confidential_clients_rejected() {
        let mut req = web(&["https://app.example.com/cb"]);
        req.token_endpoint_auth_method = Some("client_secret_basic".into());
        metadata_error(req);
        let mut req = web(&["https://app.example.com/cb"]);
        req.token_endpoint_auth_method = Some("none".into());
        validate(req).unwrap();
    }

    #[test]
    fn oversized_registrations_are_refused() {
        let mut req = web(&["https://app.example.com/cb"]);
        req.client_name = Some("x".repeat(60_000));
        assert!(matches!(
            validate(req),
            Err(RegistrationError::InvalidClientMetadata(_))
        ));
        let mut req = web(&["https://app.example.com/cb"]);
        req.redirect_uris = Some(
            (0..1_500)
                .map(|i| format!("https://app.example.com/cb{i}"))
                .collect(),
        );
        assert!(matches!(
            validate(req),
            Err(RegistrationError::InvalidRedirectUri(_))
        ));
        let mut req = web(&["https://app.example.com/cb"]);
        req.logo_uri = Some(format!("https://app.example.com/{}", "l".repeat(3_000)));
        assert!(validate(req).is_err());
        let mut req = web(&["https://app.example.com/cb"]);
        req.client_name = Some("Element\u{0}".into());
        assert!(validate(req).is_err());
        let mut req = web(&["https://app.example.com/cb"]);
        req.client_name = Some("N".repeat(bounds::CLIENT_NAME_CHARS));
        assert!(validate(req).is_ok());
    }

    #[test]
    fn response_and_grant_types_must_include_the_code_flow() {
        let mut req = web(&["https://app.example.com/cb"]);
        req.response_types = Some(vec!["token".into()]);
        metadata_error(req);
        let mut req = web(&["https://app.example.com/cb"]);
        req.grant_types = Some(vec!["refresh_token".into(), "implicit".into()]);
        metadata_error(req);
        let mut req = web(&["https://app.example.com/cb"]);
        req.grant_types = Some(vec!["authorization_code".into(), "made_up".into()]);
        assert_eq!(
            validate(req).unwrap().grant_types,
            vec![GrantType::AuthorizationCode]
        );
    }

    #[test]
    fn unknown_application_type_rejected() {
        let mut req = web(&["https://app.example.com/cb"]);
        req.application_type = Some("desktop".into());
        metadata_error(req);
    }

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|s| Url::parse(s).unwrap()).collect()
    }

    #[test]
    fn exact_redirect_uri_match() {
        let reg = urls(&["https://app.example.com/cb", "com.example.app:/cb"]);
        assert_eq!(
            redirect_uri_matches(&reg, "https://app.example.com/cb"),
            Some(reg[0].clone())
        );
        assert_eq!(
            redirect_uri_matches(&reg, "com.example.app:/cb"),
            Some(reg[1].clone())
        );
        assert_eq!(
            redirect_uri_matches(&reg, "https://app.example.com/cb/"),
            None
        );
        assert_eq!(
            redirect_uri_matches(&reg, "https://app.example.com/cb?x=1"),
            None
        );
        assert_eq!(
            redirect_uri_matches(&reg, "https://app.example.com/c"),
            None
        );
        assert_eq!(
            redirect_uri_matches(&reg, "https://app.example.com:8443/cb"),
            None
        );
        assert_eq!(redirect_uri_matches(&reg, "not a url"), None);
    }

    #[test]
    fn loopback_port_insensitive_match_works() {
        let reg = urls(&[
            "http://localhost/cb",
            "http://127.0.0.1/",
            "http://[::1]/cb",
        ]);
        let m = redirect_uri_matches(&reg, "http://localhost:51234/cb").unwrap();
        assert_eq!(m.as_str(), "http://localhost:51234/cb");
        assert!(redirect_uri_matches(&reg, "http://127.0.0.1:8080/").is_some());
        assert!(redirect_uri_matches(&reg, "http://[::1]:1/cb").is_some());
        assert!(redirect_uri_matches(&reg, "http://localhost/cb").is_some());
        // Only the port may differ.
        assert_eq!(
            redirect_uri_matches(&reg, "http://localhost:51234/other"),
            None
        );
        assert_eq!(redirect_uri_matches(&reg, "http://127.0.0.1:8080/cb"), None);
        assert_eq!(
            redirect_uri_matches(&reg, "https://localhost:51234/cb"),
            None
        );
    }

    #[test]
    fn port_insensitivity_is_only_for_loopback() {
        let reg = urls(&["https://app.example.com/cb"]);
        assert_eq!(
            redirect_uri_matches(&reg, "https://app.example.com:444/cb"),
            None
        );
        let reg = urls(&["http://example.com/cb"]);
        assert_eq!(
            redirect_uri_matches(&reg, "http://example.com:8080/cb"),
            None
        );
    }
}
