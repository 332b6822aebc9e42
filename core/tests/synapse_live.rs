//! `SynapseConnection` against a real Synapse in MAS mode. Uses the repository's `.venv`
//! (installed by `.ci/run`) or the Python named by `MXIDP_SYNAPSE_PYTHON`, and fails when
//! neither exists. Self-contained on purpose: the end-to-end harness lives in `tests/`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mxidp_core::homeserver::{
    FieldAction, HomeserverConnection, HomeserverError, ProvisionRequest, Provisioned,
    SynapseConnection, Unavailable,
};
use mxidp_core::ids::{DeviceId, Localpart};
use mxidp_core::secret::SecretString;
use url::Url;

const SECRET: &str = "live-test-shared-secret-0123456789abcdef";
const SERVER_NAME: &str = "example.org";

/// A Synapse process in a temporary directory, stopped on drop.
struct Synapse {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Synapse {
    fn log_tail(&self) -> String {
        let log = std::fs::read(self.dir.path().join("homeserver.log")).unwrap_or_default();
        String::from_utf8_lossy(&log[log.len().saturating_sub(4000)..]).into_owned()
    }

    fn endpoint(&self) -> Url {
        Url::parse(&format!("http://127.0.0.1:{}/", self.port)).unwrap()
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The least configuration Synapse 1.163 accepts in MAS mode.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let d = dir.display();
    // An application service with an exclusive namespace, to see M_EXCLUSIVE.
    std::fs::write(
        dir.join("appservice.yaml"),
        "id: bridge\nurl: null\nas_token: as-token-0123456789\nhs_token: hs-token-0123456789\n\
         sender_localpart: bridgebot\nnamespaces:\n  users:\n    - exclusive: true\n      \
         regex: '@irc-.*:example\\.org'\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("log.yaml"),
        format!(
            "version: 1\nformatters:\n  precise:\n    format: '%(asctime)s %(name)s %(levelname)s %(message)s'\n\
             handlers:\n  file:\n    class: logging.FileHandler\n    filename: {d}/homeserver.log\n    \
             formatter: precise\nroot:\n  level: INFO\n  handlers: [file]\ndisable_existing_loggers: false\n"
        ),
    )
    .unwrap();
    let config = dir.join("homeserver.yaml");
    std::fs::write(
        &config,
        format!(
            r#"server_name: "{SERVER_NAME}"
pid_file: {d}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {d}/homeserver.db
log_config: {d}/log.yaml
media_store_path: {d}/media
signing_key_path: {d}/signing.key
report_stats: false
enable_registration: false
app_service_config_files: [{d}/appservice.yaml]
# A fresh database queues background updates; one of them adds the unique index that
# reactivate_user needs (see below). Run them back to back instead of sleeping in between.
background_updates:
  sleep_enabled: false
matrix_authentication_service:
  enabled: true
  # Only used for introspection, which this test does not exercise.
  endpoint: "http://127.0.0.1:9/"
  secret: "{SECRET}"
"#
        ),
    )
    .unwrap();
    config
}

fn start(python: &str) -> Synapse {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let status = Command::new(python)
        .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run synapse --generate-keys");
    assert!(status.success(), "synapse --generate-keys failed");
    let output = File::create(dir.path().join("stdout.log")).unwrap();
    let child = Command::new(python)
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(&config)
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("start synapse");
    Synapse { child, dir, port }
}

async fn wait_healthy(synapse: &mut Synapse) {
    let url = synapse.endpoint().join("health").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = reqwest::get(url.clone()).await {
            if response.status().is_success() {
                return;
            }
        }
        if let Ok(Some(status)) = synapse.child.try_wait() {
            panic!(
                "synapse exited with {status}; stdout.log and the log say:\n{}\n{}",
                std::fs::read_to_string(synapse.dir.path().join("stdout.log")).unwrap_or_default(),
                synapse.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "synapse not healthy after 90 s:\n{}",
            synapse.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn lp(value: &str) -> Localpart {
    Localpart::parse(value).unwrap()
}

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

#[tokio::test]
async fn synapse_connection_against_real_synapse() {
    let python = std::env::var("MXIDP_SYNAPSE_PYTHON").unwrap_or_else(|_| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(
            venv.exists(),
            "no Synapse: run .ci/run once to install the test dependencies (or set MXIDP_SYNAPSE_PYTHON)"
        );
        venv.display().to_string()
    });
    let mut synapse = start(&python);
    wait_healthy(&mut synapse).await;
    let connect = |secret: &str| {
        SynapseConnection::new(
            synapse.endpoint(),
            SERVER_NAME.to_owned(),
            SecretString::new(secret),
            reqwest::Client::new(),
        )
    };
    let hs = connect(SECRET);
    let alice = lp("alice");
    let bob = lp("bob");

    // A wrong secret: Synapse answers 403.
    assert!(matches!(
        connect("not-the-secret").query_user(&alice).await,
        Err(HomeserverError::Unauthorized)
    ));

    assert_eq!(hs.query_user(&alice).await.unwrap(), None);
    assert_eq!(hs.is_localpart_available(&alice).await.unwrap(), Ok(()));
    assert_eq!(
        hs.is_localpart_available(&lp("irc-alice")).await.unwrap(),
        Err(Unavailable::Exclusive)
    );

    // Create with no display name: Synapse uses the localpart.
    assert_eq!(
        hs.provision_user(&ProvisionRequest::new(alice.clone()))
            .await
            .unwrap(),
        Provisioned::Created
    );
    let user = hs.query_user(&alice).await.unwrap().unwrap();
    assert_eq!(user.user_id, "@alice:example.org");
    assert_eq!(user.display_name.as_deref(), Some("alice"));
    assert_eq!(
        hs.is_localpart_available(&alice).await.unwrap(),
        Err(Unavailable::InUse)
    );

    let request = ProvisionRequest {
        displayname: FieldAction::Set("Alice".to_owned()),
        avatar_url: FieldAction::Set("mxc://example.org/abc".to_owned()),
        emails: FieldAction::Set(vec!["alice@example.org".to_owned()]),
        locked: Some(false),
        ..ProvisionRequest::new(alice.clone())
    };
    assert_eq!(
        hs.provision_user(&request).await.unwrap(),
        Provisioned::Updated
    );
    let user = hs.query_user(&alice).await.unwrap().unwrap();
    assert_eq!(user.display_name.as_deref(), Some("Alice"));
    assert_eq!(user.avatar_url.as_deref(), Some("mxc://example.org/abc"));

    let request = ProvisionRequest {
        displayname: FieldAction::Unset,
        avatar_url: FieldAction::Unset,
        emails: FieldAction::Unset,
        ..ProvisionRequest::new(alice.clone())
    };
    hs.provision_user(&request).await.unwrap();
    let user = hs.query_user(&alice).await.unwrap().unwrap();
    assert_eq!(
        user.display_name, None,
        "unset reads back as null, not \"\""
    );
    assert_eq!(user.avatar_url, None);

    // Devices.
    let phone = device("PHONEDEVICE1");
    hs.upsert_device(&alice, &phone, Some("Phone"))
        .await
        .unwrap();
    hs.upsert_device(&alice, &phone, None).await.unwrap();
    assert!(matches!(
        hs.upsert_device(&bob, &phone, None).await,
        Err(HomeserverError::UserNotFound(who)) if who == "bob"
    ));
    hs.update_device_display_name(&alice, &phone, "Old phone")
        .await
        .unwrap();
    assert!(matches!(
        hs.update_device_display_name(&alice, &device("NOSUCHDEVICE"), "x")
            .await,
        Err(HomeserverError::Rejected { status: 404, .. })
    ));
    hs.delete_device(&alice, &phone).await.unwrap();
    hs.delete_device(&alice, &phone).await.unwrap();
    hs.delete_device(&bob, &phone).await.unwrap();
    let devices: BTreeSet<DeviceId> = [device("AAAAAAAAAA"), device("BBBBBBBBBB")].into();
    hs.sync_devices(&alice, &devices).await.unwrap();
    assert!(matches!(
        hs.sync_devices(&bob, &devices).await,
        Err(HomeserverError::UserNotFound(_))
    ));

    // Profile and cross-signing.
    hs.set_displayname(&alice, "Alice A.").await.unwrap();
    assert_eq!(
        hs.query_user(&alice)
            .await
            .unwrap()
            .unwrap()
            .display_name
            .as_deref(),
        Some("Alice A.")
    );
    hs.unset_displayname(&alice).await.unwrap();
    assert_eq!(
        hs.query_user(&alice).await.unwrap().unwrap().display_name,
        None
    );
    // No cross-signing keys yet: Synapse logs a warning and answers 200.
    hs.allow_cross_signing_reset(&alice).await.unwrap();
    assert!(matches!(
        hs.allow_cross_signing_reset(&bob).await,
        Err(HomeserverError::UserNotFound(_))
    ));

    // Deactivation keeps the row and the localpart.
    hs.set_displayname(&alice, "Alice").await.unwrap();
    hs.delete_user(&alice, false).await.unwrap();
    let user = hs.query_user(&alice).await.unwrap().unwrap();
    assert!(user.is_deactivated);
    assert_eq!(
        user.display_name.as_deref(),
        Some("Alice"),
        "without erase the profile stays"
    );
    assert_eq!(
        hs.is_localpart_available(&alice).await.unwrap(),
        Err(Unavailable::InUse)
    );
    assert!(matches!(
        hs.delete_user(&bob, false).await,
        Err(HomeserverError::UserNotFound(_))
    ));

    // On a fresh SQLite database reactivate_user answers 500 until the background update
    // `profiles_full_user_id_key_idx` has run (its upsert needs that unique index), so it is
    // retried while the error is transient, as mxidp's own retries would.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match hs.reactivate_user(&alice).await {
            Ok(()) => {
                println!("reactivate_user succeeded after {attempts} attempt(s)");
                break;
            }
            Err(error) if error.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("reactivate_user: {error}\n{}", synapse.log_tail()),
        }
    }
    assert!(!hs.query_user(&alice).await.unwrap().unwrap().is_deactivated);

    // Erasure clears the profile.
    hs.delete_user(&alice, true).await.unwrap();
    let user = hs.query_user(&alice).await.unwrap().unwrap();
    assert!(user.is_deactivated);
    assert_eq!(user.display_name, None);
}
