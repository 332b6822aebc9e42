//! The receivers end to end in one process: the real router over loopback HTTP, the test
//! OpenID Provider (whose keys also sign the transmitters' tokens), the in-memory homeserver
//! and an in-memory SQLite store whose `idp_events` table the tests read directly.

use std::sync::Arc;

use serde_json::{json, Value};
use url::Url;

use crate::app::App;
use crate::events::IdpEvent;
use crate::homeserver::MemoryHomeserver;
use crate::ids::Localpart;
use crate::provider::{GenericOidc, Provider};
use crate::store::{Identity, SqliteStore, Store};
use crate::upstream::test_idp::{TestIdp, CLIENT_ID, CLIENT_SECRET};

pub(crate) const MAX_BODY: usize = 4096;

pub(crate) struct Env {
    pub idp: TestIdp,
    pub app: App,
    pub store: Arc<SqliteStore>,
    pub base: Url,
    pub http: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

/// A stored event as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub source: String,
    pub dedupe_key: String,
    pub occurred_at: i64,
    pub event: IdpEvent,
}

pub(crate) struct Options {
    /// Extra configuration, given the IdP (for its JWKS URL).
    pub extra: Box<dyn Fn(&TestIdp) -> String>,
    pub provider: Arc<dyn Provider>,
    /// Whether the upstream client is discovered (the back-channel logout needs it).
    pub discovered: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            extra: Box::new(|_| String::new()),
            provider: Arc::new(GenericOidc),
            discovered: true,
        }
    }
}

pub(crate) fn now() -> i64 {
    crate::ids::now_unix()
}

impl Env {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with_config(extra: impl Fn(&TestIdp) -> String + 'static) -> Self {
        Self::with(Options {
            extra: Box::new(extra),
            ..Options::default()
        })
        .await
    }

    pub async fn with(options: Options) -> Self {
        let idp = TestIdp::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let toml = format!(
            r#"
[http]
public_base = "{base}"
max_body_bytes = {MAX_BODY}
[database]
encryption_key = "test-encryption-key-0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://127.0.0.1:1/"
secret = "0123456789abcdef0123456789abcdef-synapse"
[upstream]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "unused-here"
{extra}
"#,
            issuer = idp.issuer(),
            extra = (options.extra)(&idp),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mxidp.toml");
        std::fs::write(&path, toml).unwrap();
        let config = crate::config::Config::load(Some(&path)).unwrap();
        assert_eq!(config.check(), vec![]);
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        let hs = MemoryHomeserver::new("example.org");
        let app = crate::server::assemble(&config, store.clone(), Arc::new(hs), options.provider)
            .unwrap();
        if options.discovered {
            let mut settings = idp.upstream_settings();
            settings.client_secret = crate::secret::SecretString::new(CLIENT_SECRET);
            app.upstream.set(idp.upstream_with(settings).await);
        }
        let router = crate::server::router(app.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Env {
            idp,
            app,
            store,
            base,
            http: reqwest::Client::new(),
            _server: server,
        }
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    /// Every stored event, oldest first.
    pub async fn events(&self) -> Vec<Row> {
        let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
            "SELECT source, dedupe_key, occurred_at, event FROM idp_events ORDER BY id",
        )
        .fetch_all(self.store.pool())
        .await
        .unwrap();
        rows.into_iter()
            .map(|(source, dedupe_key, occurred_at, event)| Row {
                source,
                dedupe_key,
                occurred_at,
                event: serde_json::from_str(&event).unwrap(),
            })
            .collect()
    }

    /// Links a subject to a localpart, as a first sign-in would, with its verified e-mail.
    pub async fn add_identity(&self, subject: &str, localpart: &str, email: Option<&str>) {
        let provider = &self.app.mapping.upstream_id;
        self.store
            .add_identity(&Identity {
                provider: provider.clone(),
                subject: subject.into(),
                localpart: Localpart::parse(localpart).unwrap(),
                created_at: now(),
                deleted_at: None,
            })
            .await
            .unwrap();
        self.store
            .set_identity_email(provider, subject, email)
            .await
            .unwrap();
    }

    /// A compact JWS signed with the test IdP's keys (the key follows the header's `alg`).
    pub fn sign(&self, header: Value, claims: Value) -> String {
        self.idp.mint_id_token(header, claims)
    }
}

/// Replaces members of a JSON object (`null` removes the member).
pub(crate) fn patched(mut value: Value, changes: Value) -> Value {
    for (name, new) in changes.as_object().unwrap() {
        if new.is_null() {
            value.as_object_mut().unwrap().remove(name);
        } else {
            value[name] = new.clone();
        }
    }
    value
}

/// Changes one byte of the payload so that the signature no longer matches.
pub(crate) fn tampered(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["tampered"] = json!(true);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}
