//! mxidp's pages in a real browser: headless Chromium over the DevTools protocol
//! (tests/support/chromium.rs), against mxidp in this process with the in-process OpenID
//! Provider (which signs the user in at once) and the in-memory homeserver.
//!
//! What only a browser shows: the consent page survives reload and Back; a client approved
//! before that comes back for the admin scope meets the page again, and Deny leaves it without;
//! a 200-character name without spaces does not make the phone page scroll sideways.
//! Screenshots of the consent, error and account pages go to `target/screenshots/`.
//! Chromium is required: without it these tests fail and say how to install it.

mod support;

use std::sync::Arc;

use mxidp_core::homeserver::MemoryHomeserver;
use mxidp_core::ids::Localpart;
use mxidp_core::provider::GenericOidc;
use mxidp_core::store::SqliteStore;
use mxidp_core::upstream::test_idp::{TestIdp, CLIENT_ID, CLIENT_SECRET};
use serde_json::{json, Value};
use support::chromium::Chromium;
use url::Url;

const SECRET: &str = "0123456789abcdef0123456789abcdef-synapse";
/// The client's host: it does not exist, the browser's requests to it are answered by the test.
const CLIENT_HOST: &str = "client.example.test";

struct Server {
    idp: TestIdp,
    hs: MemoryHomeserver,
    base: Url,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(extra: &str) -> Self {
        let idp = TestIdp::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Url = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mxidp.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[http]
public_base = "{base}"
[database]
encryption_key = "test-encryption-key-0123456789abcdef"
[matrix]
homeserver = "example.org"
endpoint = "http://127.0.0.1:1/"
secret = "{SECRET}"
[upstream]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "unused-here"
{extra}
"#,
                issuer = idp.issuer()
            ),
        )
        .unwrap();
        let config = mxidp_core::config::Config::load(Some(&path)).unwrap();
        assert_eq!(config.check(), vec![]);
        let hs = MemoryHomeserver::new("example.org");
        let store = Arc::new(SqliteStore::in_memory().await.unwrap());
        let app = mxidp_core::server::assemble(
            &config,
            store,
            Arc::new(hs.clone()),
            Arc::new(GenericOidc),
        )
        .unwrap();
        mxidp_core::server::warm_introspection_cache(&app)
            .await
            .unwrap();
        let mut settings = idp.upstream_settings();
        settings.client_secret = mxidp_core::secret::SecretString::new(CLIENT_SECRET);
        app.upstream.set(idp.upstream_with(settings).await);
        let router = mxidp_core::server::router(app);
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await;
        });
        Self {
            idp,
            hs,
            base,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.base.join(path).unwrap().to_string()
    }

    async fn register(&self, name: &str) -> String {
        let r = self
            .http
            .post(self.url("oauth2/registration"))
            .json(&json!({
                "client_name": name,
                "client_uri": format!("https://{CLIENT_HOST}/"),
                "redirect_uris": [format!("https://{CLIENT_HOST}/cb")],
                "token_endpoint_auth_method": "none"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["client_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn introspect(&self, token: &str) -> Value {
        self.http
            .post(self.url("oauth2/introspect"))
            .bearer_auth(SECRET)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// One authorization request of the client, with the PKCE verifier it keeps.
struct Authorization {
    client_id: String,
    verifier: String,
    url: String,
}

impl Authorization {
    fn new(server: &Server, client_id: &str, device: &str, admin: bool) -> Self {
        Self::to(
            server,
            client_id,
            device,
            admin,
            &format!("https://{CLIENT_HOST}/cb"),
        )
    }

    fn to(server: &Server, client_id: &str, device: &str, admin: bool, redirect: &str) -> Self {
        let (verifier, challenge) = support::pkce_pair();
        let mut scope = format!("urn:matrix:client:api:* urn:matrix:client:device:{device}");
        if admin {
            scope.push_str(" urn:synapse:admin:*");
        }
        let mut url = Url::parse(&server.url("oauth2/authorize")).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair("response_type", "code")
            .append_pair("scope", &scope)
            .append_pair("state", "client-state")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Self {
            client_id: client_id.to_owned(),
            verifier,
            url: url.to_string(),
        }
    }

    /// Redeems the code in the client's URL the browser landed on; returns the access token.
    async fn redeem(&self, server: &Server, landed: &str) -> String {
        let code = support::query_param(&Url::parse(landed).unwrap(), "code")
            .unwrap_or_else(|| panic!("no code in {landed}"));
        let r = server
            .http
            .post(server.url("oauth2/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", &format!("https://{CLIENT_HOST}/cb")),
                ("code_verifier", self.verifier.as_str()),
                ("client_id", self.client_id.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn has_admin_scope(introspection: &Value) -> bool {
    introspection["scope"]
        .as_str()
        .unwrap_or("")
        .split(' ')
        .any(|s| s == "urn:synapse:admin:*")
}

const CLIENT_URL: &str = "https://client.example.test/cb";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_client_asking_for_the_admin_scope_meets_the_consent_page_and_deny_leaves_it_out(
) {
    let server =
        Server::start("[policy]\nadmin = { claim = \"groups\", value = \"matrix-admins\" }").await;
    let boss =
        json!({"sub": "boss-sub", "preferred_username": "boss", "groups": ["matrix-admins"]});
    let client_id = server.register("Ops Console").await;
    let browser = Chromium::start().await;
    let tab = browser.tab(1280, 900, false, CLIENT_HOST).await;
    let consent = server.url("consent?pending=");

    // Allowed once, for normal use.
    server.idp.set_next_login(boss.clone());
    let normal = Authorization::new(&server, &client_id, "OPSDEVICE001", false);
    tab.open(&normal.url, &consent).await;
    tab.click("button[value=allow]", CLIENT_URL).await;
    let token = normal.redeem(&server, &tab.url().await).await;
    assert!(!has_admin_scope(&server.introspect(&token).await));

    // The same client asks for the admin scope: the consent page, with the warning.
    server.idp.set_next_login(boss.clone());
    let admin = Authorization::new(&server, &client_id, "OPSDEVICE002", true);
    // (Were it approved silently, the browser would land on the client and this wait fail.)
    tab.open(&admin.url, &consent).await;
    let text = tab.text().await;
    assert!(text.contains("Administer this homeserver"), "{text}");
    assert_eq!(
        tab.eval("document.querySelectorAll('.warning').length")
            .await,
        json!(1)
    );
    tab.screenshot("consent-admin-desktop").await;

    // Deny: the client is told so, and no token with the admin scope exists.
    tab.click("button[value=deny]", CLIENT_URL).await;
    let landed = tab.url().await;
    assert!(landed.contains("error=access_denied"), "{landed}");
    assert!(!landed.contains("code="), "{landed}");
    assert!(!has_admin_scope(&server.introspect(&token).await));
    assert!(!server
        .hs
        .devices(&Localpart::parse("boss").unwrap())
        .iter()
        .any(|d| d.as_str() == "OPSDEVICE002"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_back_on_the_consent_page_keep_the_sign_in_going() {
    let server = Server::start("").await;
    let client_id = server.register("Element").await;
    let browser = Chromium::start().await;
    let tab = browser.tab(1280, 900, false, CLIENT_HOST).await;
    let consent = server.url("consent?pending=");
    let sign_in = Authorization::new(&server, &client_id, "ELEMENTDEV01", false);

    tab.open(&sign_in.url, &consent).await;
    let at = tab.url().await;
    // The IdP's code and state are not in the address bar.
    assert!(!at.contains("code=") && !at.contains("state="), "{at}");

    tab.reload().await;
    assert_eq!(tab.url().await, at);
    assert!(tab.text().await.contains("to use your Matrix account?"));

    // Away (the account page) and Back.
    tab.open(&server.url("account"), &server.url("account"))
        .await;
    tab.back(&consent).await;
    assert!(tab.text().await.contains("to use your Matrix account?"));

    tab.click("button[value=allow]", CLIENT_URL).await;
    let token = sign_in.redeem(&server, &tab.url().await).await;
    assert_eq!(server.introspect(&token).await["active"], true);

    // The cross-signing reset's confirmation page has its own address too.
    let confirm = server.url("account/confirm?pending=");
    tab.open(
        &server.url("account?action=org.matrix.cross_signing_reset"),
        &confirm,
    )
    .await;
    tab.reload().await;
    assert!(tab.text().await.contains("Reset my identity"));
    tab.screenshot("confirm-cross-signing-reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_name_without_spaces_does_not_scroll_sideways_on_a_phone_and_pages_are_captured() {
    let server = Server::start(
        "[branding]\ndisplay_name = \"Example Corp\"\nsupport_url = \"mailto:help@example.org\"\nterms_url = \"https://example.org/terms\"\npolicy_url = \"https://example.org/privacy\"",
    )
    .await;
    let long_name = "W".repeat(200);
    let client_id = server.register(&long_name).await;
    let browser = Chromium::start().await;
    let consent = server.url("consent?pending=");

    for width in [390, 320] {
        let tab = browser.tab(width, 844, true, CLIENT_HOST).await;
        let sign_in = Authorization::new(&server, &client_id, &format!("PHONEDEV{width}"), false);
        tab.open(&sign_in.url, &consent).await;
        assert!(
            !tab.scrolls_sideways().await,
            "the consent page is wider than {width} px: {}",
            tab.eval("document.documentElement.scrollWidth").await
        );
        // The full name is there, in the title of the shortened one.
        assert_eq!(
            tab.eval("document.querySelector('h1 .client-name').title.length")
                .await,
            json!(200)
        );
        // Touch targets: the buttons are at least 44 px high.
        assert_eq!(
            tab.eval("[...document.querySelectorAll('button')].every(b => b.getBoundingClientRect().height >= 44)")
                .await,
            json!(true)
        );
        tab.screenshot(&format!("consent-long-name-{width}")).await;
    }

    // A native client at the registration bounds: a 256-character name, a 2 KB client_uri
    // (shown as text in the "not verified" warning).
    let r = server
        .http
        .post(server.url("oauth2/registration"))
        .json(&json!({
            "client_name": "N".repeat(256),
            "client_uri": format!("https://app.example.test/{}", "a".repeat(2000)),
            "redirect_uris": ["http://127.0.0.1/callback"],
            "application_type": "native",
            "token_endpoint_auth_method": "none"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let native = r.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tab = browser.tab(320, 640, true, CLIENT_HOST).await;
    let sign_in = Authorization::to(
        &server,
        &native,
        "PHONENATIVE1",
        false,
        "http://127.0.0.1:47000/callback",
    );
    tab.open(&sign_in.url, &consent).await;
    assert!(tab.text().await.contains("name not verified"));
    assert!(
        !tab.scrolls_sideways().await,
        "the native client's page is wider than 320 px: {}",
        tab.eval("document.documentElement.scrollWidth").await
    );
    tab.screenshot("consent-native-bounds-320").await;

    let tab = browser.tab(390, 844, true, CLIENT_HOST).await;
    tab.call(
        "Emulation.setEmulatedMedia",
        json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
    )
    .await;
    let sign_in = Authorization::new(&server, &client_id, "PHONEDARK001", false);
    tab.open(&sign_in.url, &consent).await;
    assert!(!tab.scrolls_sideways().await);
    tab.screenshot("consent-long-name-390-dark").await;

    // An error page (an app that is not registered) and the account page.
    for (name, path) in [
        ("error-unknown-app", "oauth2/authorize?client_id=nobody"),
        ("account", "account"),
    ] {
        let tab = browser.tab(390, 844, true, CLIENT_HOST).await;
        tab.open(
            &server.url(path),
            &server.url(path.split('?').next().unwrap()),
        )
        .await;
        assert!(!tab.scrolls_sideways().await, "{name}");
        let text = tab.text().await;
        assert!(text.contains("Example Corp"), "{name}: {text}");
        let shot = tab.screenshot(name).await;
        assert!(std::fs::metadata(&shot).unwrap().len() > 0);
    }
}
