//! What a verified access token says about who it is for: a configured service account (by its
//! OAuth client or its subject), or a user carrying the Matrix scopes natively. Each IdP names
//! the client differently (docs/jwt-shim.md).

use serde_json::{Map, Value};

use crate::ids::DeviceId;
use crate::scope::{MatrixScope, SYNAPSE_ADMIN_SCOPE};

/// The OAuth client a token was issued to: `azp` (Keycloak, Auth0, ZITADEL), `client_id`
/// (RFC 9068), `cid` (Okta), else Auth0's client-credentials `sub` (`<client>@clients`).
pub fn client_id(claims: &Map<String, Value>) -> Option<&str> {
    ["azp", "client_id", "cid"]
        .iter()
        .find_map(|name| claims.get(*name).and_then(Value::as_str))
        .filter(|c| !c.is_empty())
        .or_else(|| subject(claims).and_then(|s| s.strip_suffix("@clients")))
}

pub fn subject(claims: &Map<String, Value>) -> Option<&str> {
    claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The granted scopes: `scope` as a space-separated string (RFC 9068, Keycloak, Auth0), or
/// `scp` as an array (Okta) or string.
pub fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split(' ').filter(|w| !w.is_empty()).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A user token's Matrix grant: its device, and whether it carries the admin scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeGrant {
    pub device: DeviceId,
    pub admin: bool,
}

/// The Matrix part of a user token's scopes (others, like `openid` or an API's own, are
/// ignored): the API scope and exactly one device scope, one family, as a client would
/// request them. `None` when they are missing or malformed.
pub fn native_grant(scopes: &[&str]) -> Option<NativeGrant> {
    let matrix: Vec<&str> = scopes
        .iter()
        .copied()
        .filter(|s| s.starts_with("urn:matrix:"))
        .collect();
    let parsed = MatrixScope::parse(&matrix.join(" ")).ok()?;
    Some(NativeGrant {
        device: parsed.device_id().clone(),
        admin: scopes.contains(&SYNAPSE_ADMIN_SCOPE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_client_is_found_where_each_idp_puts_it() {
        assert_eq!(
            client_id(&claims(json!({"azp": "kc-bot", "sub": "u"}))),
            Some("kc-bot")
        );
        assert_eq!(
            client_id(&claims(json!({"client_id": "rfc9068"}))),
            Some("rfc9068")
        );
        assert_eq!(client_id(&claims(json!({"cid": "0oa1"}))), Some("0oa1"));
        assert_eq!(
            client_id(&claims(json!({"sub": "abc@clients"}))),
            Some("abc")
        );
        assert_eq!(client_id(&claims(json!({"sub": "auth0|u1"}))), None);
    }

    #[test]
    fn scopes_are_read_from_a_string_or_an_array() {
        assert_eq!(scopes(&claims(json!({"scope": "a  b"}))), vec!["a", "b"]);
        assert_eq!(scopes(&claims(json!({"scp": ["x", "y"]}))), vec!["x", "y"]);
        assert!(scopes(&claims(json!({"scope": 3}))).is_empty());
    }

    #[test]
    fn a_native_grant_needs_the_api_and_one_device_scope() {
        let grant = native_grant(&[
            "openid",
            "urn:matrix:client:api:*",
            "urn:matrix:client:device:ABCDEFGHIJ",
        ])
        .unwrap();
        assert_eq!(grant.device.as_str(), "ABCDEFGHIJ");
        assert!(!grant.admin);
        assert!(native_grant(&["openid", "urn:matrix:client:api:*"]).is_none());
        assert!(native_grant(&["urn:matrix:client:device:ABCDEFGHIJ"]).is_none());
        assert!(native_grant(&[
            "urn:matrix:client:api:*",
            "urn:matrix:client:device:ABCDEFGHIJ",
            "urn:matrix:client:device:KLMNOPQRST"
        ])
        .is_none());
        assert!(
            native_grant(&[
                "urn:matrix:org.matrix.msc2967.client:api:*",
                "urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ",
                "urn:synapse:admin:*"
            ])
            .unwrap()
            .admin
        );
    }
}
