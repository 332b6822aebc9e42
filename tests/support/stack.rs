//! The whole deployment on loopback: oidc-provider as the IdP, Synapse in
//! `matrix_authentication_service` mode, and mxidp from this workspace (in-process, with the
//! production wiring of `mxidp_core::server`: SQLite file store, Synapse connection, discovery).

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::{free_port, Idp, IdpAccount, IdpClient, IdpConfig, Synapse, SynapseOptions};

pub const SHARED_SECRET: &str = "e2e-shared-secret-0123456789abcdef0123456789";
pub const CLIENT_ID: &str = "mxidp";
pub const CLIENT_SECRET: &str = "mxidp-client-secret-for-tests";
pub const SERVER_NAME: &str = "e2e.test";

pub struct Stack {
    pub idp: Idp,
    pub synapse: Synapse,
    /// mxidp's public URL (its issuer).
    pub mxidp: Url,
    pub app: mxidp_core::http::App,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Stack {
    /// Starts the IdP with the given accounts, Synapse and mxidp; returns once mxidp is ready.
    pub async fn start(accounts: Vec<IdpAccount>) -> Stack {
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
        let synapse = Synapse::start(SynapseOptions::new(
            mxidp.clone(),
            SHARED_SECRET,
            SERVER_NAME,
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
[upstream]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email", "groups"]
"#,
            listen = listener.local_addr().unwrap(),
            db = dir.path().join("mxidp.db").display(),
            synapse = synapse.base_url(),
            issuer = idp.issuer(),
        );
        let path = dir.path().join("mxidp.toml");
        std::fs::write(&path, toml).unwrap();
        let config =
            mxidp_core::config::Config::load_checked(Some(&path)).expect("valid e2e config");
        let app = mxidp_core::server::build(&config, Arc::new(mxidp_core::provider::GenericOidc))
            .await
            .expect("mxidp builds");
        mxidp_core::server::spawn_discovery(
            app.clone(),
            mxidp_core::server::upstream_settings(&config).unwrap(),
        );
        let served = app.clone();
        let server = tokio::spawn(async move {
            let _ = mxidp_core::server::run(served, listener, std::future::pending()).await;
        });
        let stack = Stack {
            idp,
            synapse,
            mxidp,
            app,
            server,
            _dir: dir,
        };
        stack.wait_ready().await;
        stack
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let ready = self.mxidp.join("health/ready").unwrap();
        for _ in 0..100 {
            if let Ok(r) = http.get(ready.clone()).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
