//! `[jwt_shim]`: which issuers' JWT access tokens introspection accepts, and how their
//! service accounts map to Matrix users (docs/jwt-shim.md).

use serde::Deserialize;
use url::Url;

use crate::config::Problem;
use crate::ids::{DeviceId, Localpart};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// Off by default: only the tokens mxidp issued are active until an operator names the
    /// issuers and audiences to trust.
    #[serde(default)]
    pub enabled: bool,
    /// Verdicts kept in memory (by token hash, until the token expires).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// How often the service accounts are provisioned again in the homeserver.
    #[serde(default = "default_recheck")]
    pub recheck_seconds: u64,
    /// How long the first sight of a user token may wait for the homeserver to create its
    /// device.
    #[serde(default = "default_provision_timeout")]
    pub device_timeout_ms: u64,
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cache_entries: default_cache_entries(),
            recheck_seconds: default_recheck(),
            device_timeout_ms: default_provision_timeout(),
            issuers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss`, byte for byte (a trailing slash matters: Auth0 has one, ZITADEL
    /// not). Unset: the upstream IdP's issuer as its discovery document gives it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Unset: the `jwks_uri` of the issuer's discovery document (the upstream's own keys for
    /// the upstream issuer).
    #[serde(default)]
    pub jwks_uri: Option<Url>,
    /// The token's `aud` must name one of these. Required: a token minted for another API is
    /// never accepted here.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Asymmetric algorithms only.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tokens valid for longer than this (`exp - iat`) are refused.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_seconds: u64,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Accept tokens without a `typ` header (Okta's). `at+jwt` (RFC 9068) and `JWT` are always
    /// accepted; the audience is what keeps ID tokens out.
    #[serde(default = "default_true")]
    pub accept_untyped: bool,
    /// Accept users' own tokens that carry the Matrix scopes (an IdP that issues
    /// `urn:matrix:client:api:*` and a device scope). Only for the upstream issuer, whose
    /// subjects mxidp has linked to Matrix users.
    #[serde(default)]
    pub user_tokens: bool,
    /// Whether a user token's `urn:synapse:admin:*` scope is passed on.
    #[serde(default)]
    pub user_admin_scope: bool,
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountConfig {
    /// The OAuth client the IdP issued the token to (`azp`, `client_id`, `cid`, or Auth0's
    /// `sub` before `@clients`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Or the token's `sub` (a ZITADEL machine user's id).
    #[serde(default)]
    pub subject: Option<String>,
    pub localpart: String,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub display_name: Option<String>,
    /// Unset: derived from the issuer and the client, stable across restarts.
    #[serde(default)]
    pub device_id: Option<String>,
    /// `false` turns the account's tokens inactive and removes its device.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Take over a homeserver user that exists already and mxidp did not create (a bot
    /// registered before mxidp).
    #[serde(default)]
    pub adopt_existing_user: bool,
}

impl ServiceAccountConfig {
    /// What matches this account, for messages: `client_id "x"` or `subject "y"`.
    pub fn describe(&self) -> String {
        match (&self.client_id, &self.subject) {
            (Some(c), _) => format!("client_id {c:?}"),
            (None, Some(s)) => format!("subject {s:?}"),
            (None, None) => "an unnamed account".into(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_recheck() -> u64 {
    3_600
}
fn default_provision_timeout() -> u64 {
    3_000
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}
fn default_max_lifetime() -> u64 {
    86_400
}
fn default_leeway() -> u64 {
    30
}

impl ShimConfig {
    /// Every problem of `[jwt_shim]`, each with its key path.
    pub fn check(&self, upstream_issuer: &Url, problems: &mut Vec<Problem>) {
        if !self.enabled {
            return;
        }
        let mut push = |key: String, message: String| problems.push(Problem { key, message });
        if self.issuers.is_empty() {
            push(
                "jwt_shim.issuers".into(),
                "is empty: name at least one issuer (an entry without `issuer` means the upstream IdP)".into(),
            );
        }
        if self.cache_entries == 0 {
            push("jwt_shim.cache_entries".into(), "must be at least 1".into());
        }
        let mut seen_issuers = Vec::new();
        let mut localparts: Vec<&str> = Vec::new();
        for (i, issuer) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("jwt_shim.issuers[{i}].{field}");
            let iss = issuer.issuer.as_deref();
            if let Some(iss) = iss {
                match Url::parse(iss) {
                    Ok(url) if url.scheme() == "https" || is_loopback(&url) => {}
                    Ok(_) => push(
                        key("issuer"),
                        "must be https (or a loopback address)".into(),
                    ),
                    Err(e) => push(key("issuer"), format!("is not a URL: {e}")),
                }
            }
            if seen_issuers.contains(&iss) {
                push(
                    key("issuer"),
                    format!("{} is listed twice", iss.unwrap_or("the upstream issuer")),
                );
            }
            seen_issuers.push(iss);
            if issuer.audiences.iter().all(|a| a.trim().is_empty()) {
                push(
                    key("audiences"),
                    "is required: the API audience the IdP puts in these tokens' `aud`".into(),
                );
            }
            if issuer.algorithms.is_empty() {
                push(key("algorithms"), "must name at least one algorithm".into());
            }
            for alg in &issuer.algorithms {
                if parse_algorithm(alg).is_none() {
                    push(
                        key("algorithms"),
                        format!("{alg:?} is unknown or symmetric (only RS*, PS*, ES256, ES384 and EdDSA)"),
                    );
                }
            }
            if issuer.max_lifetime_seconds == 0 {
                push(key("max_lifetime_seconds"), "must be at least 1".into());
            }
            if issuer.user_tokens
                && issuer
                    .issuer
                    .as_deref()
                    .is_some_and(|u| !same_issuer(u, upstream_issuer))
            {
                push(
                    key("user_tokens"),
                    "only the upstream issuer's users are linked to Matrix users".into(),
                );
            }
            if issuer
                .jwks_uri
                .as_ref()
                .is_some_and(|u| u.scheme() != "https" && !is_loopback(u))
            {
                push(
                    key("jwks_uri"),
                    "must be https (or a loopback address)".into(),
                );
            }
            for (j, account) in issuer.service_accounts.iter().enumerate() {
                let key =
                    |field: &str| format!("jwt_shim.issuers[{i}].service_accounts[{j}].{field}");
                let names = [&account.client_id, &account.subject];
                if names.iter().all(|n| n.as_deref().is_none_or(str::is_empty)) {
                    push(key("client_id"), "set `client_id` or `subject`".into());
                }
                if names
                    .iter()
                    .all(|n| n.as_deref().is_some_and(|n| !n.is_empty()))
                {
                    push(
                        key("subject"),
                        "set `client_id` or `subject`, not both".into(),
                    );
                }
                match Localpart::parse(&account.localpart) {
                    Err(e) => push(key("localpart"), e.to_string()),
                    Ok(_) if localparts.contains(&account.localpart.as_str()) => push(
                        key("localpart"),
                        format!("{:?} is used by two service accounts", account.localpart),
                    ),
                    Ok(_) => localparts.push(&account.localpart),
                }
                if let Some(device) = &account.device_id {
                    if let Err(e) = DeviceId::parse(device) {
                        push(key("device_id"), e.to_string());
                    }
                }
            }
            let mut clients: Vec<(&Option<String>, &Option<String>)> = Vec::new();
            for (j, account) in issuer.service_accounts.iter().enumerate() {
                let pair = (&account.client_id, &account.subject);
                if clients.contains(&pair) {
                    push(
                        format!("jwt_shim.issuers[{i}].service_accounts[{j}]"),
                        format!("{} is listed twice", account.describe()),
                    );
                }
                clients.push(pair);
            }
        }
    }
}

/// Whether a configured issuer is the upstream's (`upstream.issuer` is parsed, which adds a
/// slash to a bare origin).
pub fn same_issuer(issuer: &str, upstream: &Url) -> bool {
    issuer.trim_end_matches('/') == upstream.as_str().trim_end_matches('/')
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// An allowed algorithm name: asymmetric only (HS* would need a shared secret, and verifying
/// one with a public key is the classic forgery).
pub fn parse_algorithm(name: &str) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm::*;
    let alg: jsonwebtoken::Algorithm = name.parse().ok()?;
    matches!(
        alg,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA
    )
    .then_some(alg)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(shim: &str) -> Vec<String> {
        let toml = format!(
            r#"
[http]
public_base = "https://mxidp.example.org/"
[database]
encryption_key = "test-encryption-key-0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://127.0.0.1:8008/"
secret = "a-shared-secret-0123456789abcdef0123"
[upstream]
issuer = "https://idp.example.org/"
client_id = "mxidp"
client_secret = "s3cret"
{shim}
"#
        );
        Config::from_toml_str(&toml)
            .unwrap()
            .check()
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    #[test]
    fn a_good_configuration_has_no_problem_and_off_is_not_checked() {
        assert_eq!(
            problems(
                r#"
[jwt_shim]
enabled = true
[[jwt_shim.issuers]]
audiences = ["https://matrix.example.org/api"]
user_tokens = true
[[jwt_shim.issuers.service_accounts]]
client_id = "bot"
localpart = "bot"
[[jwt_shim.issuers]]
issuer = "https://tenant.example.com/"
audiences = ["matrix"]
[[jwt_shim.issuers.service_accounts]]
subject = "2874529873"
localpart = "zitadel-bot"
device_id = "ZITADELBOT"
"#
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            problems("[jwt_shim]\nenabled = false\n[[jwt_shim.issuers]]\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_unsafe_or_ambiguous_setting_is_named() {
        let found = problems(
            r#"
[jwt_shim]
enabled = true
[[jwt_shim.issuers]]
algorithms = ["HS256", "RS256"]
max_lifetime_seconds = 0
[[jwt_shim.issuers.service_accounts]]
localpart = "Bad Name"
[[jwt_shim.issuers.service_accounts]]
client_id = "a"
subject = "b"
localpart = "bot"
device_id = "short"
[[jwt_shim.issuers]]
issuer = "http://tenant.example.com/"
audiences = ["matrix"]
user_tokens = true
[[jwt_shim.issuers.service_accounts]]
client_id = "c"
localpart = "bot"
"#,
        );
        let expect = [
            "jwt_shim.issuers[0].audiences: is required",
            "jwt_shim.issuers[0].algorithms: \"HS256\" is unknown or symmetric",
            "jwt_shim.issuers[0].max_lifetime_seconds",
            "jwt_shim.issuers[0].service_accounts[0].client_id: set `client_id` or `subject`",
            "jwt_shim.issuers[0].service_accounts[0].localpart",
            "jwt_shim.issuers[0].service_accounts[1].subject: set `client_id` or `subject`, not both",
            "jwt_shim.issuers[0].service_accounts[1].device_id",
            "jwt_shim.issuers[1].issuer: must be https",
            "jwt_shim.issuers[1].user_tokens: only the upstream issuer",
            "jwt_shim.issuers[1].service_accounts[0].localpart: \"bot\" is used by two service accounts",
        ];
        for e in expect {
            assert!(
                found.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }
}
