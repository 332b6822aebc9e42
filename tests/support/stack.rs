//! The whole deployment on loopback: oidc-provider as the IdP, Synapse in
//! `matrix_authentication_service` mode, and mxidp from this workspace (in-process, with the
//! production wiring of `mxidp_core::server`: SQLite file store, Synapse connection, discovery).

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::keycloak::{KcClient, KcUser, KeycloakDouble};
use super::process::ChildProcess;
use super::proxy::Proxy;
use super::{Idp, IdpAccount, IdpClient, IdpConfig, Synapse, SynapseOptions};

pub const SHARED_SECRET: &str = "e2e-shared-secret-0123456789abcdef0123456789";
pub const CLIENT_ID: &str = "mxidp";
pub const CLIENT_SECRET: &str = "mxidp-client-secret-for-tests";
pub const SERVER_NAME: &str = "e2e.test";

/// The IdP of a stack: oidc-provider ([`Idp`], the default) or the Keycloak double
/// ([`KeycloakDouble`], see [`Stack::keycloak`]).
pub struct Stack<I = Idp> {
    pub idp: I,
    pub synapse: Synapse,
    /// Between mxidp and Synapse: take it down to "stop Synapse", read the calls that reached it.
    pub proxy: Proxy,
    /// mxidp's public URL (its issuer).
    pub mxidp: Url,
    mode: Mode,
    config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// mxidp in this test process (its state is inspectable), or as the real binary (killable).
enum Mode {
    InProcess {
        app: mxidp_core::app::App,
        server: tokio::task::JoinHandle<()>,
    },
    Process {
        child: Option<ChildProcess>,
    },
}

impl<I> Drop for Stack<I> {
    fn drop(&mut self) {
        if let Mode::InProcess { server, .. } = &self.mode {
            server.abort();
        }
    }
}

impl Stack<Idp> {
    /// Starts the IdP with the given accounts, Synapse and mxidp (in this process); returns
    /// once mxidp is ready.
    pub async fn start(accounts: Vec<IdpAccount>) -> Stack {
        Self::start_with(accounts, false, "").await
    }

    /// The same with mxidp as the real `mxidp serve` process.
    pub async fn start_process(accounts: Vec<IdpAccount>) -> Stack {
        Self::start_with(accounts, true, "").await
    }

    /// Either, with extra TOML appended to mxidp's configuration (whole sections).
    pub async fn start_with(accounts: Vec<IdpAccount>, process: bool, extra_toml: &str) -> Stack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mxidp: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let mut client = IdpClient::confidential(
            CLIENT_ID,
            CLIENT_SECRET,
            mxidp.join("upstream/callback").unwrap().as_str(),
        );
        client.backchannel_logout_uri = Some(
            mxidp
                .join("upstream/backchannel-logout")
                .unwrap()
                .to_string(),
        );
        client.backchannel_logout_session_required = Some(true);
        let mut config = IdpConfig::new().client(client);
        for a in accounts {
            config = config.account(a);
        }
        let idp = Idp::start(config).await;
        let issuer = idp.issuer().to_string();
        Stack::assemble(
            idp,
            listener,
            mxidp,
            &format!(
                r#"[upstream]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "groups"]
{extra_toml}"#
            ),
            process,
            |_| Arc::new(mxidp_core::provider::GenericOidc),
        )
        .await
    }
}

/// The Keycloak double's webhook secret and admin client, as mxidp's `[adapters.keycloak]` has them.
pub const KEYCLOAK_WEBHOOK_SECRET: &str = "phase-two-webhook-secret-for-tests";
pub const KEYCLOAK_ADMIN_CLIENT_ID: &str = "mxidp-admin";
pub const KEYCLOAK_ADMIN_CLIENT_SECRET: &str = "mxidp-admin-secret-for-tests";

impl Stack<KeycloakDouble> {
    /// The Keycloak double (realm `matrix`, clients `mxidp` with back-channel logout to mxidp and
    /// `mxidp-admin` with a service account), Synapse, and mxidp in this process with
    /// `provider = "keycloak"`, `[adapters.keycloak]` (Phase Two webhook secret, admin client) and
    /// `[policy] admin` = realm role `matrix-admin`.
    pub async fn keycloak(users: Vec<KcUser>) -> Stack<KeycloakDouble> {
        Self::keycloak_with(users, "", "").await
    }

    /// The same with extra `[upstream]` keys (lines) and extra TOML appended to mxidp's
    /// configuration (whole sections).
    pub async fn keycloak_with(
        users: Vec<KcUser>,
        upstream_extra: &str,
        extra_toml: &str,
    ) -> Stack<KeycloakDouble> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mxidp: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let idp = KeycloakDouble::start(
            users,
            vec![
                KcClient {
                    client_id: CLIENT_ID.into(),
                    secret: CLIENT_SECRET.into(),
                    backchannel_logout_url: Some(
                        mxidp
                            .join("upstream/backchannel-logout")
                            .unwrap()
                            .to_string(),
                    ),
                },
                KcClient {
                    client_id: KEYCLOAK_ADMIN_CLIENT_ID.into(),
                    secret: KEYCLOAK_ADMIN_CLIENT_SECRET.into(),
                    backchannel_logout_url: None,
                },
            ],
        )
        .await;
        idp.set_admin_client(KEYCLOAK_ADMIN_CLIENT_ID);
        idp.set_webhook(
            mxidp.join("upstream/webhook").unwrap(),
            KEYCLOAK_WEBHOOK_SECRET,
        );
        let issuer = idp.issuer();
        Stack::assemble(
            idp,
            listener,
            mxidp,
            &format!(
                r#"[upstream]
issuer = "{issuer}"
provider = "keycloak"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email"]
{upstream_extra}
[adapters.keycloak]
webhook_secret = "{KEYCLOAK_WEBHOOK_SECRET}"
admin_client_id = "{KEYCLOAK_ADMIN_CLIENT_ID}"
admin_client_secret = "{KEYCLOAK_ADMIN_CLIENT_SECRET}"
[policy]
admin = {{ claim = "roles", value = "matrix-admin" }}
{extra_toml}"#
            ),
            false,
            |config| {
                Arc::new(
                    mxidp_keycloak::Keycloak::from_config(config)
                        .unwrap_or_else(|p| panic!("keycloak adapter config: {p:?}")),
                )
            },
        )
        .await
    }
}

impl<I> Stack<I> {
    /// Synapse, the proxy and mxidp for an IdP that is already running; `upstream_toml` holds
    /// `[upstream]` and whatever sections follow it.
    pub(super) async fn assemble(
        idp: I,
        listener: tokio::net::TcpListener,
        mxidp: Url,
        upstream_toml: &str,
        process: bool,
        provider: impl FnOnce(&mxidp_core::config::Config) -> Arc<dyn mxidp_core::provider::Provider>,
    ) -> Stack<I> {
        let synapse = Synapse::start(SynapseOptions::new(
            mxidp.clone(),
            SHARED_SECRET,
            SERVER_NAME,
        ))
        .await;
        let synapse_addr = synapse.base_url();
        let proxy = Proxy::start(format!(
            "{}:{}",
            synapse_addr.host_str().unwrap(),
            synapse_addr.port_or_known_default().unwrap()
        ))
        .await;

        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            r#"
[http]
listen = "{listen}"
public_base = "{mxidp}"
[database]
url = "sqlite://{db}"
encryption_key = "e2e-encryption-key-0123456789abcdef"
[matrix]
homeserver = "{SERVER_NAME}"
endpoint = "{synapse}"
secret = "{SHARED_SECRET}"
{upstream_toml}
"#,
            listen = listener.local_addr().unwrap(),
            db = dir.path().join("mxidp.db").display(),
            synapse = proxy.url(),
        );
        let path = dir.path().join("mxidp.toml");
        std::fs::write(&path, toml).unwrap();
        let mode = if process {
            drop(listener);
            Mode::Process {
                child: Some(spawn_mxidp(&path)),
            }
        } else {
            let config =
                mxidp_core::config::Config::load_checked(Some(&path)).expect("valid e2e config");
            let app = mxidp_core::server::build(&config, provider(&config))
                .await
                .expect("mxidp builds");
            mxidp_core::server::spawn_background(app.clone(), &config).expect("background tasks");
            let served = app.clone();
            let server = tokio::spawn(async move {
                let _ = mxidp_core::server::run(served, listener, std::future::pending()).await;
            });
            Mode::InProcess { app, server }
        };
        let stack = Stack {
            idp,
            synapse,
            proxy,
            mxidp,
            mode,
            config_path: path,
            _dir: dir,
        };
        stack.wait_ready().await;
        stack
    }

    /// mxidp's state (in-process stacks only).
    pub fn app(&self) -> &mxidp_core::app::App {
        match &self.mode {
            Mode::InProcess { app, .. } => app,
            Mode::Process { .. } => panic!("mxidp runs as a process in this stack"),
        }
    }

    /// `kill -9` the mxidp process: no shutdown, no flush.
    pub fn kill9(&mut self) {
        let Mode::Process { child } = &mut self.mode else {
            panic!("in-process stack")
        };
        let mut c = child.take().expect("mxidp is running");
        c.kill();
    }

    /// Starts mxidp again on the same configuration and database; waits until ready.
    pub async fn restart(&mut self) {
        let Mode::Process { child } = &mut self.mode else {
            panic!("in-process stack")
        };
        assert!(child.is_none(), "kill it first");
        *child = Some(spawn_mxidp(&self.config_path));
        self.wait_ready().await;
    }

    /// The configuration file mxidp runs with (for CLI commands in tests).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let ready = self.mxidp.join("health/ready").unwrap();
        for _ in 0..300 {
            if let Ok(r) = http.get(ready.clone()).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Mode::Process { child: Some(c) } = &self.mode {
            panic!("mxidp did not become ready:\n{}", c.output());
        }
        panic!("mxidp did not become ready (IdP discovery failed?)");
    }

    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{SERVER_NAME}")
    }

    /// `GET /_matrix/client/v3/account/whoami` with a raw access token.
    pub async fn whoami(&self, access_token: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.synapse.url("/_matrix/client/v3/account/whoami"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }

    /// mxidp's introspection answer, asked as Synapse asks it.
    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        reqwest::Client::new()
            .post(self.mxidp.join("oauth2/introspect").unwrap())
            .bearer_auth(SHARED_SECRET)
            .header("X-MAS-Supports-Device-Id", "1")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The device ids Synapse lists for the user of `access_token`.
    pub async fn devices(&self, access_token: &str) -> Vec<String> {
        let answer: serde_json::Value = reqwest::Client::new()
            .get(self.synapse.url("/_matrix/client/v3/devices"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("no devices in {answer}"))
            .iter()
            .map(|d| d["device_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn spawn_mxidp(config: &std::path::Path) -> ChildProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mxidp"));
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("MXIDP_LOG", "info");
    ChildProcess::spawn("mxidp", command).expect("start the mxidp binary")
}
