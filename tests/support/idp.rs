//! The test OpenID Provider: `node tests/idp/server.mjs <config.json>` (oidc-provider 9).
//!
//! Headless login: see the header of `tests/idp/server.mjs` and [`super::browser`].
//!
//! Defaults: oidc-provider's own `conformIdTokenClaims: true` (with the code flow, profile,
//! e-mail and group claims are released by userinfo only, OIDC Core §5.4) and
//! `rotateRefreshToken: true`. A test changes them through [`IdpConfig::extra`], or, for an IdP
//! started by someone else (e.g. `Stack::start`), with [`with_overrides`].

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Map, Value};
use url::Url;

use super::process::ChildProcess;
use super::{free_port, missing_dependency, repo_root};

/// One OAuth client registered at the IdP (mxidp itself, in the real tests).
#[derive(Clone, Debug)]
pub struct IdpClient {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    /// `client_secret_basic` (default), `client_secret_post`, `none`, ...
    pub token_endpoint_auth_method: String,
    pub backchannel_logout_uri: Option<String>,
    pub backchannel_logout_session_required: Option<bool>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Any further client metadata (merged last, overrides the fields above).
    pub extra: Map<String, Value>,
}

impl IdpClient {
    /// A confidential `client_secret_basic` client with one redirect URI.
    pub fn confidential(client_id: &str, client_secret: &str, redirect_uri: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            redirect_uris: vec![redirect_uri.to_owned()],
            token_endpoint_auth_method: "client_secret_basic".to_owned(),
            backchannel_logout_uri: None,
            backchannel_logout_session_required: None,
            post_logout_redirect_uris: Vec::new(),
            extra: Map::new(),
        }
    }

    fn to_json(&self) -> Value {
        let mut c = json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
        });
        let obj = c.as_object_mut().unwrap();
        if let Some(uri) = &self.backchannel_logout_uri {
            obj.insert("backchannel_logout_uri".into(), json!(uri));
        }
        if let Some(required) = self.backchannel_logout_session_required {
            obj.insert(
                "backchannel_logout_session_required".into(),
                json!(required),
            );
        }
        if !self.post_logout_redirect_uris.is_empty() {
            obj.insert(
                "post_logout_redirect_uris".into(),
                json!(self.post_logout_redirect_uris),
            );
        }
        obj.extend(self.extra.clone());
        c
    }
}

/// An end-user account at the IdP. Every field is released as the claim of the same name
/// (scopes `openid`, `profile`, `email`, `groups`).
#[derive(Clone, Debug)]
pub struct IdpAccount {
    pub sub: String,
    pub preferred_username: String,
    pub name: String,
    pub email: String,
    pub email_verified: bool,
    pub groups: Vec<String>,
    /// When set, the login form also demands this password.
    pub password: Option<String>,
    /// Further claims (merged last).
    pub extra: Map<String, Value>,
}

impl IdpAccount {
    /// `alice` → sub `sub-alice`, name `Alice`, `alice@example.org` (verified), group
    /// `matrix-users`. The `sub` deliberately differs from the username.
    pub fn new(username: &str) -> Self {
        let mut name = username.to_owned();
        if let Some(first) = name.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        Self {
            sub: format!("sub-{username}"),
            preferred_username: username.to_owned(),
            name,
            email: format!("{username}@example.org"),
            email_verified: true,
            groups: vec!["matrix-users".to_owned()],
            password: None,
            extra: Map::new(),
        }
    }

    fn to_json(&self) -> Value {
        let mut a = json!({
            "sub": self.sub,
            "preferred_username": self.preferred_username,
            "name": self.name,
            "email": self.email,
            "email_verified": self.email_verified,
            "groups": self.groups,
        });
        let obj = a.as_object_mut().unwrap();
        if let Some(password) = &self.password {
            obj.insert("password".into(), json!(password));
        }
        obj.extend(self.extra.clone());
        a
    }
}

#[derive(Clone, Debug, Default)]
pub struct IdpConfig {
    /// Default: a free port.
    pub port: Option<u16>,
    pub clients: Vec<IdpClient>,
    /// Keyed by the login name typed into the form (the `sub` also works as login name).
    pub accounts: Vec<(String, IdpAccount)>,
    /// Further top-level config for server.mjs (merged last), e.g.
    /// `{"ttl": {"AccessToken": 5}}`, `{"rotateRefreshToken": false}`,
    /// `{"conformIdTokenClaims": false}` (profile/e-mail claims in the ID token too).
    pub extra: Map<String, Value>,
}

impl IdpConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn client(mut self, client: IdpClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Sets one top-level key of server.mjs's config (see [`Self::extra`]).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// Adds an account whose login name is its `preferred_username`.
    pub fn account(mut self, account: IdpAccount) -> Self {
        self.accounts
            .push((account.preferred_username.clone(), account));
        self
    }
}

/// The harness's own top-level defaults, before [`IdpConfig::extra`] and [`with_overrides`].
/// server.mjs defaults `conformIdTokenClaims` to false (for direct use); the harness uses
/// oidc-provider's default, the spec-conformant one.
fn harness_defaults() -> Map<String, Value> {
    let mut defaults = Map::new();
    defaults.insert("conformIdTokenClaims".into(), json!(true));
    defaults
}

tokio::task_local! {
    static OVERRIDES: Map<String, Value>;
}

/// Runs `future` with `overrides` (a JSON object of top-level server.mjs keys) merged last into
/// the configuration of every IdP that [`Idp::start`] starts within it, in the same task. For
/// stacks that build their [`IdpConfig`] themselves, e.g.
/// `with_overrides(json!({"rotateRefreshToken": false}), Stack::start(accounts)).await` or
/// `with_overrides(json!({"conformIdTokenClaims": false}), ...)`.
pub async fn with_overrides<F: Future>(overrides: Value, future: F) -> F::Output {
    let Value::Object(overrides) = overrides else {
        panic!("IdP config overrides must be a JSON object, not {overrides}")
    };
    OVERRIDES.scope(overrides, future).await
}

/// A running test IdP; killed on drop.
pub struct Idp {
    process: ChildProcess,
    issuer: Url,
    _dir: tempfile::TempDir,
}

impl Idp {
    /// Starts `node tests/idp/server.mjs` and waits (≤ 20 s) for its `READY <issuer>` line.
    /// Panics with the child's output on failure. `node` can be overridden with `MXIDP_NODE`.
    pub async fn start(config: IdpConfig) -> Idp {
        let root = repo_root();
        let modules = root.join("tests/idp/node_modules/oidc-provider");
        if !modules.is_dir() {
            missing_dependency("oidc-provider (tests/idp/node_modules)", &modules);
        }
        // A port picked by free_port() may be taken by a parallel test before node binds it:
        // retry with another one (only when the caller did not fix the port).
        let mut attempt = 1;
        loop {
            match Self::try_start(&config, &root).await {
                Ok(idp) => return idp,
                Err((err, output)) => {
                    if config.port.is_none() && output.contains("EADDRINUSE") && attempt < 3 {
                        attempt += 1;
                        continue;
                    }
                    panic!("test IdP failed to start: {err}\n--- idp output ---\n{output}")
                }
            }
        }
    }

    async fn try_start(
        config: &IdpConfig,
        root: &std::path::Path,
    ) -> Result<Idp, (String, String)> {
        let port = config.port.unwrap_or_else(free_port);
        let issuer = format!("http://127.0.0.1:{port}");
        let mut json = json!({
            "port": port,
            "issuer": issuer,
            "clients": config.clients.iter().map(IdpClient::to_json).collect::<Vec<_>>(),
            "accounts": config
                .accounts
                .iter()
                .map(|(login, a)| (login.clone(), a.to_json()))
                .collect::<Map<_, _>>(),
        });
        let top = json.as_object_mut().unwrap();
        top.extend(harness_defaults());
        top.extend(config.extra.clone());
        let _ = OVERRIDES.try_with(|overrides| top.extend(overrides.clone()));

        let dir = tempfile::Builder::new()
            .prefix("mxidp-idp-")
            .tempdir()
            .expect("create temp dir");
        let config_path = dir.path().join("idp.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&json).unwrap())
            .expect("write idp.json");

        let node = std::env::var("MXIDP_NODE").unwrap_or_else(|_| "node".to_owned());
        let mut command = Command::new(&node);
        command
            .arg(root.join("tests/idp/server.mjs"))
            .arg(&config_path)
            .current_dir(root.join("tests/idp"));
        let mut process = ChildProcess::spawn("idp", command)
            .unwrap_or_else(|e| panic!("cannot run {node:?} (Node.js) for the test IdP: {e}"));
        match process
            .wait_for_stdout_line("READY ", Duration::from_secs(20))
            .await
        {
            Ok(line) => assert_eq!(line.trim_end(), format!("READY {issuer}")),
            Err(err) => {
                process.kill();
                tokio::time::sleep(Duration::from_millis(100)).await; // let the readers drain
                return Err((err, process.output()));
            }
        }
        Ok(Idp {
            process,
            issuer: Url::parse(&issuer).unwrap(),
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash: oidc-provider's issuer is used verbatim).
    pub fn issuer(&self) -> String {
        self.issuer.as_str().trim_end_matches('/').to_owned()
    }

    /// `path` resolved against the issuer, e.g. `url("/auth")`.
    pub fn url(&self, path: &str) -> Url {
        self.issuer.join(path).expect("valid path")
    }

    /// `GET /.well-known/openid-configuration`.
    pub async fn discovery(&self) -> Value {
        reqwest::get(self.url("/.well-known/openid-configuration"))
            .await
            .expect("IdP discovery request")
            .error_for_status()
            .expect("IdP discovery status")
            .json()
            .await
            .expect("IdP discovery JSON")
    }

    /// Test-only admin action: ends every IdP session of `sub` server-side, sending
    /// back-channel logout tokens to the clients that registered a `backchannel_logout_uri`
    /// and revoking their grants and tokens. Returns `{"sessions": n, "notified": [client ids]}`.
    pub async fn end_sessions_of(&self, sub: &str) -> Value {
        let mut url = self.url("/test/logout");
        url.query_pairs_mut().append_pair("sub", sub);
        reqwest::Client::new()
            .post(url)
            .send()
            .await
            .expect("IdP /test/logout request")
            .error_for_status()
            .expect("IdP /test/logout status")
            .json()
            .await
            .expect("IdP /test/logout JSON")
    }

    /// Output of the node process so far (warnings, `[idp] …` event lines).
    pub fn logs(&self) -> String {
        self.process.output()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}
