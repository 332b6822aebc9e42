//! End-to-end test support: launchers for the test OpenID Provider (`tests/idp/server.mjs`) and
//! Synapse, plus a headless "browser" that walks OAuth login flows with plain HTTP.
//!
//! Use from an integration test with `mod support;`. Every launcher cleans up on `Drop`
//! (kills the child process, removes its temporary directory).
// Each test binary uses a different subset of this module.
#![allow(dead_code, unused_imports)]

pub mod auth0;
pub mod browser;
pub mod chromium;
pub mod cli;
pub mod fake_mas;
pub mod idp;
pub mod keycloak;
pub mod okta;
pub mod process;
pub mod proxy;
pub mod raw_client;
pub mod stack;
pub mod synapse;
pub mod zitadel;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use base64::Engine as _;
use sha2::Digest as _;

pub use idp::{Idp, IdpAccount, IdpClient, IdpConfig};
pub use synapse::{Synapse, SynapseOptions};

/// The repository root (the root package's manifest directory).
/// The documented example configuration, which the CLI and crash tests start from.
pub fn example_config() -> PathBuf {
    repo_root().join("deploy/mxidp.example.toml")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Panics with a message naming the missing test dependency.
pub(crate) fn missing_dependency(what: &str, path: &std::path::Path) -> ! {
    panic!(
        "end-to-end test dependency missing: {what} not found at {}; \
         run .ci/run once to install the test dependencies",
        path.display()
    )
}

/// A random URL-safe string of `len` characters.
pub fn random_string(len: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng as _;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A PKCE pair `(code_verifier, S256 code_challenge)`.
pub fn pkce_pair() -> (String, String) {
    let verifier = random_string(64);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Decodes the payload of a JWT without verifying it (tests only).
pub fn jwt_payload(jwt: &str) -> serde_json::Value {
    let payload = jwt
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// The value of query parameter `name` of `url` (also looks into the fragment, for
/// `response_mode=fragment`).
pub fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .or_else(|| {
            url::form_urlencoded::parse(url.fragment()?.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
}

/// Every audit record of an in-process mxidp, as `(action, the rest of the record as text)`.
pub async fn audit_actions(app: &mxidp_core::app::App) -> Vec<(String, String)> {
    use mxidp_core::audit::AuditStore as _;
    app.store
        .audit_records(0, None, 10_000)
        .await
        .expect("read the audit log")
        .into_iter()
        .map(|r| {
            let rest = format!(
                "{} {} {} {} {} {}",
                r.actor, r.target, r.source, r.outcome, r.correlation_id, r.details
            );
            (r.action, rest)
        })
        .collect()
}
