//! Synapse (from `<repo>/.venv`) with `matrix_authentication_service` pointing at a given
//! endpoint (mxidp, or a stub).
//!
//! Synapse fetches `{endpoint}/.well-known/openid-configuration` lazily — at the first request
//! that needs the metadata (`/_matrix/client/v1/auth_metadata`, `/.well-known/matrix/client`,
//! the cross-signing UIA), not at start-up, and it retries after a failed fetch (the failing
//! request gets a 500). Introspection (`/oauth2/introspect`) happens per access token. So Synapse
//! may be started before or after mxidp; only requests made while mxidp is down fail.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use url::Url;

use super::process::ChildProcess;
use super::{free_port, missing_dependency, repo_root};

#[derive(Clone, Debug)]
pub struct SynapseOptions {
    /// `matrix_authentication_service.endpoint` (mxidp's internal URL).
    pub mas_endpoint: Url,
    /// `matrix_authentication_service.secret` (shared with mxidp).
    pub secret: String,
    /// e.g. `"test.local"`; user ids are `@localpart:<server_name>`.
    pub server_name: String,
    /// Extra YAML appended verbatim to homeserver.yaml (top-level keys).
    pub extra_yaml: String,
}

impl SynapseOptions {
    pub fn new(mas_endpoint: Url, secret: &str, server_name: &str) -> Self {
        Self {
            mas_endpoint,
            secret: secret.to_owned(),
            server_name: server_name.to_owned(),
            extra_yaml: String::new(),
        }
    }
}

/// A running Synapse; killed on drop, its temp dir (database, media, logs) removed.
pub struct Synapse {
    process: ChildProcess,
    base_url: Url,
    server_name: String,
    secret: String,
    dir: tempfile::TempDir,
}

impl Synapse {
    /// Writes homeserver.yaml into a temp dir, starts Synapse and waits (≤ 60 s) until
    /// `GET /_matrix/client/versions` answers. Python: `MXIDP_SYNAPSE_PYTHON`, else
    /// `<repo>/.venv/bin/python`. Panics with the log on failure.
    pub async fn start(options: SynapseOptions) -> Synapse {
        let python: std::path::PathBuf = match std::env::var_os("MXIDP_SYNAPSE_PYTHON") {
            Some(p) => p.into(),
            None => {
                let p = repo_root().join(".venv/bin/python");
                if !p.exists() {
                    missing_dependency("the Synapse virtualenv (.venv/bin/python)", &p);
                }
                p
            }
        };
        // A port picked by free_port() may be taken by a parallel test before Synapse binds it:
        // retry with another one.
        let mut attempt = 1;
        loop {
            match Self::try_start(&options, &python).await {
                Ok(synapse) => return synapse,
                Err(failure) => {
                    if failure.contains("Failed to listen on TCP port") && attempt < 3 {
                        attempt += 1;
                        continue;
                    }
                    panic!("{failure}");
                }
            }
        }
    }

    async fn try_start(
        options: &SynapseOptions,
        python: &std::path::Path,
    ) -> Result<Synapse, String> {
        let dir = tempfile::Builder::new()
            .prefix("mxidp-synapse-")
            .tempdir()
            .expect("create temp dir");
        let port = free_port();
        let base_url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        write_config(dir.path(), port, options);

        let mut command = Command::new(python);
        command
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.path().join("homeserver.yaml"))
            .current_dir(dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let process = ChildProcess::spawn("synapse", command).unwrap_or_else(|e| {
            panic!(
                "cannot run {} -m synapse.app.homeserver: {e}; \
                 run .ci/run once to install the test dependencies",
                python.display()
            )
        });
        let mut synapse = Synapse {
            process,
            base_url,
            server_name: options.server_name.clone(),
            secret: options.secret.clone(),
            dir,
        };
        if let Err(err) = synapse.wait_ready(Duration::from_secs(60)).await {
            synapse.process.kill();
            tokio::time::sleep(Duration::from_millis(100)).await; // let the readers drain
            return Err(format!(
                "Synapse failed to start: {err}\n--- synapse output ---\n{}\n--- homeserver.log ---\n{}",
                synapse.process.output(),
                synapse.log()
            ));
        }
        Ok(synapse)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = self.url("/_matrix/client/versions");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(resp) = http.get(url.clone()).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.process.exited() {
                return Err(format!("synapse exited with {status}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("{url} did not answer within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `http://127.0.0.1:<port>/` (client listener; also serves `/_synapse/mas/*`).
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    /// `path` resolved against the base URL.
    pub fn url(&self, path: &str) -> Url {
        self.base_url.join(path).expect("valid path")
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// `@localpart:<server_name>`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// The MAS shared secret Synapse was configured with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Calls `POST /_synapse/mas/<call>` with the shared secret, like mxidp does.
    pub async fn mas_post(&self, call: &str, body: serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url(&format!("/_synapse/mas/{call}")))
            .bearer_auth(&self.secret)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /_synapse/mas/{call}: {e}"))
    }

    /// Calls `GET /_synapse/mas/<call>?<query>` with the shared secret.
    pub async fn mas_get(&self, call: &str, query: &[(&str, &str)]) -> reqwest::Response {
        reqwest::Client::new()
            .get(self.url(&format!("/_synapse/mas/{call}")))
            .bearer_auth(&self.secret)
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /_synapse/mas/{call}: {e}"))
    }

    /// Contents of homeserver.log (WARNING and above).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("homeserver.log")).unwrap_or_default()
    }

    /// Synapse's stdout/stderr so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

fn write_config(dir: &Path, port: u16, options: &SynapseOptions) {
    let d = dir.display();
    // An ed25519 signing key in Synapse's format: `ed25519 <key id> <unpadded base64 seed>`.
    let seed: [u8; 32] = rand::random();
    let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed);
    std::fs::write(dir.join("signing.key"), format!("ed25519 a_test {key}\n"))
        .expect("write signing.key");

    let log_config = format!(
        r#"version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
    request: ""
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filters: [context]
    filename: {d}/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"#
    );
    std::fs::write(dir.join("log.yaml"), log_config).expect("write log.yaml");

    // Generous rate limits: tests make many requests from one IP and user.
    let generous = "{per_second: 1000, burst_count: 1000}";
    let config = format!(
        r#"server_name: "{server_name}"
public_baseurl: "http://127.0.0.1:{port}/"
pid_file: "{d}/homeserver.pid"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{d}/homeserver.db"
log_config: "{d}/log.yaml"
media_store_path: "{d}/media_store"
signing_key_path: "{d}/signing.key"
macaroon_secret_key: "{macaroon}"
form_secret: "{form}"
report_stats: false
enable_metrics: false
suppress_key_server_warning: true
trusted_key_servers: []
matrix_authentication_service:
  enabled: true
  endpoint: "{endpoint}"
  secret: "{secret}"
rc_message: {generous}
rc_registration: {generous}
rc_room_creation: {generous}
rc_admin_redaction: {generous}
rc_3pid_validation: {generous}
rc_media_create: {generous}
rc_delayed_event_mgmt: {generous}
rc_reports: {generous}
rc_profile: {generous}
rc_user_directory: {generous}
rc_key_requests: {generous}
rc_presence:
  per_user: {generous}
rc_login:
  address: {generous}
  account: {generous}
  failed_attempts: {generous}
rc_joins:
  local: {generous}
  remote: {generous}
rc_joins_per_room: {generous}
rc_invites:
  per_room: {generous}
  per_user: {generous}
  per_issuer: {generous}
rc_third_party_invite: {generous}
{extra}
"#,
        server_name = options.server_name,
        endpoint = options.mas_endpoint,
        secret = options.secret,
        macaroon = super::random_string(32),
        form = super::random_string(32),
        extra = options.extra_yaml,
    );
    std::fs::write(dir.join("homeserver.yaml"), config).expect("write homeserver.yaml");
}
