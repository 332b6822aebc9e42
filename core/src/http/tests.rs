//! The Matrix-facing OAuth server end to end in one process: the real router over loopback
//! HTTP, the test OpenID Provider, the in-memory homeserver and an in-memory SQLite store.
//! Every bad-input case checks the error AND that nothing changed.

use std::sync::Arc;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use crate::homeserver::MemoryHomeserver;
use crate::http::authorize::pkce_s256;
use crate::http::App;
use crate::ids::{Localpart, TokenHash};
use crate::provider::GenericOidc;
use crate::store::SqliteStore;
use crate::upstream::test_idp::{TestIdp, CLIENT_ID, CLIENT_SECRET};

#[path = "tests_pages.rs"]
mod pages;

const SECRET: &str = "0123456789abcdef0123456789abcdef-synapse";
const UNSTABLE_API: &str = "urn:matrix:org.matrix.msc2967.client:api:*";
const STABLE_API: &str = "urn:matrix:client:api:*";

struct Env {
    idp: TestIdp,
    app: App,
    hs: MemoryHomeserver,
    base: Url,
    http: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

fn config_toml(base: &Url, idp: &TestIdp, extra: &str) -> String {
    format!(
        r#"
[http]
public_base = "{base}"
max_body_bytes = 4096
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
    )
}

async fn env() -> Env {
    env_with("").await
}

async fn env_with(extra: &str) -> Env {
    env_with_provider(extra, Arc::new(GenericOidc)).await
}

async fn env_with_provider(extra: &str, provider: Arc<dyn crate::provider::Provider>) -> Env {
    let idp = TestIdp::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base: Url = format!("http://{}/", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxidp.toml");
    std::fs::write(&path, config_toml(&base, &idp, extra)).unwrap();
    let config = crate::config::Config::load(Some(&path)).unwrap();
    assert_eq!(config.check(), vec![]);
    let hs = MemoryHomeserver::new("example.org");
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let app = crate::server::assemble(&config, store, Arc::new(hs.clone()), provider).unwrap();
    crate::server::warm_introspection_cache(&app).await.unwrap();
    let mut settings = idp.upstream_settings();
    settings.client_secret = crate::secret::SecretString::new(CLIENT_SECRET);
    app.upstream.set(idp.upstream_with(settings).await);
    let router = crate::server::router(app.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Env {
        idp,
        app,
        hs,
        base,
        http,
        _server: server,
    }
}

/// A client's authorization request, with the PKCE verifier it keeps.
struct Request {
    client_id: String,
    redirect_uri: String,
    scope: String,
    verifier: String,
    response_mode: Option<&'static str>,
}

fn device_scope(device: &str) -> String {
    format!("{UNSTABLE_API} urn:matrix:org.matrix.msc2967.client:device:{device}")
}

impl Env {
    fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    /// Runs the event worker's round: what a session end left to it (the homeserver, the IdP).
    async fn settle(&self) {
        crate::events::pipeline::run_due(&self.app, crate::ids::now_unix())
            .await
            .unwrap();
    }

    /// The tokens the IdP was asked to revoke, in order.
    fn revoked_at_idp(&self) -> Vec<String> {
        self.idp
            .revoked_tokens()
            .into_iter()
            .map(|t| t.token)
            .collect()
    }

    /// The IdP access token sealed in the session behind a Matrix access token.
    async fn idp_access_token(&self, matrix_access: &str) -> String {
        self.idp_tokens(matrix_access).await.0
    }

    /// The IdP's access and refresh tokens sealed in the session behind a Matrix token.
    async fn idp_tokens(&self, matrix_token: &str) -> (String, Option<String>) {
        let (_, session) = self
            .app
            .store
            .token(TokenHash::of(matrix_token))
            .await
            .unwrap()
            .unwrap();
        let open = |sealed: &str| {
            self.app
                .sealer
                .open_secret(sealed)
                .unwrap()
                .expose()
                .to_owned()
        };
        (
            open(session.sealed_access_token.as_deref().unwrap()),
            session.sealed_refresh_token.as_deref().map(open),
        )
    }

    async fn register(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("oauth2/registration"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn register_client(&self) -> String {
        let r = self
            .register(json!({
                "client_name": "Test Client",
                "client_uri": "https://client.example.org/",
                "redirect_uris": ["https://client.example.org/cb"],
                "application_type": "web",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none"
            }))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["client_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn request(&self, device: &str) -> Request {
        Request {
            client_id: self.register_client().await,
            redirect_uri: "https://client.example.org/cb".into(),
            scope: device_scope(device),
            verifier: crate::ids::random_token(32),
            response_mode: None,
        }
    }

    fn authorize_url(&self, r: &Request, overrides: &[(&str, Option<&str>)]) -> Url {
        let challenge = pkce_s256(&r.verifier);
        let mut params: Vec<(String, Option<String>)> = vec![
            ("client_id".into(), Some(r.client_id.clone())),
            ("redirect_uri".into(), Some(r.redirect_uri.clone())),
            ("response_type".into(), Some("code".into())),
            ("scope".into(), Some(r.scope.clone())),
            ("state".into(), Some("client-state".into())),
            ("code_challenge".into(), Some(challenge)),
            ("code_challenge_method".into(), Some("S256".into())),
            ("response_mode".into(), r.response_mode.map(String::from)),
        ];
        for (k, v) in overrides {
            if let Some(p) = params.iter_mut().find(|(name, _)| name == k) {
                p.1 = v.map(String::from);
            } else {
                params.push((k.to_string(), v.map(String::from)));
            }
        }
        let mut url = self.url("oauth2/authorize");
        for (k, v) in params {
            if let Some(v) = v {
                url.query_pairs_mut().append_pair(&k, &v);
            }
        }
        url
    }

    /// /authorize → IdP → callback. Returns the callback response and the browser cookie.
    async fn to_callback(&self, r: &Request) -> (reqwest::Response, String) {
        let start = self
            .http
            .get(self.authorize_url(r, &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            start.status(),
            StatusCode::SEE_OTHER,
            "{}",
            start.text().await.unwrap()
        );
        let cookie = start.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let at_idp = location(&start);
        let back = self.http.get(at_idp).send().await.unwrap();
        let callback = location(&back);
        assert!(callback.starts_with(self.url("upstream/callback").as_str()));
        let answer = self
            .http
            .get(callback)
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        (self.follow_to_consent(answer, &cookie).await, cookie)
    }

    /// Back from the IdP at mxidp's callback, on to the page it redirects to.
    async fn back_at_mxidp(&self, callback: &str, cookie: &str) -> reqwest::Response {
        let answer = self
            .http
            .get(callback)
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap();
        self.follow_to_consent(answer, cookie).await
    }

    /// The callback redirects (post/redirect/get) to the consent page when one is needed;
    /// anything else (the client's redirect, an error page) is returned as it is.
    async fn follow_to_consent(
        &self,
        answer: reqwest::Response,
        cookie: &str,
    ) -> reqwest::Response {
        // The consent page of a sign-in, or the confirmation page of a cross-signing reset.
        let pages = [self.url("consent"), self.url("account/confirm")];
        let to_consent = answer
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .filter(|l| pages.iter().any(|p| l.starts_with(p.as_str())))
            .map(str::to_owned);
        match to_consent {
            Some(page) => self
                .http
                .get(page)
                .header(COOKIE, cookie)
                .send()
                .await
                .unwrap(),
            None => answer,
        }
    }

    /// Answers the consent page; returns the redirect to the client.
    async fn consent(
        &self,
        page: reqwest::Response,
        cookie: &str,
        decision: &str,
    ) -> reqwest::Response {
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        let pending = hidden(&html, "pending");
        let csrf = hidden(&html, "csrf");
        self.http
            .post(self.url("consent"))
            .header(COOKIE, cookie)
            .form(&[
                ("pending", pending.as_str()),
                ("csrf", csrf.as_str()),
                ("decision", decision),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Answers a consent page already read.
    async fn consent_html(&self, html: &str, cookie: &str, decision: &str) -> reqwest::Response {
        let pending = hidden(html, "pending");
        let csrf = hidden(html, "csrf");
        self.http
            .post(self.url("consent"))
            .header(COOKIE, cookie)
            .form(&[
                ("pending", pending.as_str()),
                ("csrf", csrf.as_str()),
                ("decision", decision),
            ])
            .send()
            .await
            .unwrap()
    }

    /// The whole sign-in; returns the client's code.
    async fn sign_in(&self, r: &Request) -> String {
        let (page, cookie) = self.to_callback(r).await;
        let done = if page.status() == StatusCode::SEE_OTHER {
            page
        } else {
            self.consent(page, &cookie, "allow").await
        };
        assert_eq!(done.status(), StatusCode::SEE_OTHER);
        let to: Url = location(&done).parse().unwrap();
        assert!(to.as_str().starts_with(&r.redirect_uri), "{to}");
        let params: std::collections::HashMap<String, String> = match r.response_mode {
            Some("fragment") => url::form_urlencoded::parse(to.fragment().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
            _ => to.query_pairs().into_owned().collect(),
        };
        assert_eq!(
            params.get("state").map(String::as_str),
            Some("client-state")
        );
        // RFC 9207: the authorization server names itself in every answer.
        assert_eq!(
            params.get("iss").map(String::as_str),
            Some(self.base.as_str())
        );
        params
            .get("code")
            .cloned()
            .unwrap_or_else(|| panic!("no code in {to}"))
    }

    async fn token(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url("oauth2/token"))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn exchange(&self, r: &Request, code: &str) -> reqwest::Response {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &r.redirect_uri),
            ("code_verifier", &r.verifier),
            ("client_id", &r.client_id),
        ])
        .await
    }

    async fn tokens(&self, r: &Request) -> Value {
        let code = self.sign_in(r).await;
        let answer = self.exchange(r, &code).await;
        assert_eq!(answer.status(), StatusCode::OK);
        answer.json().await.unwrap()
    }

    async fn introspect_with(&self, secret: &str, token: &str) -> reqwest::Response {
        self.http
            .post(self.url("oauth2/introspect"))
            .bearer_auth(secret)
            .header("X-MAS-Supports-Device-Id", "1")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap()
    }

    async fn introspect(&self, token: &str) -> Value {
        let r = self.introspect_with(SECRET, token).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

impl Env {
    /// Starts a cross-signing reset at the account page: the redirect to the IdP and the
    /// browser-binding cookie it set.
    async fn start_cross_signing_reset(&self) -> (reqwest::Response, String) {
        let start = self
            .http
            .get(self.url("account?action=org.matrix.cross_signing_reset"))
            .send()
            .await
            .unwrap();
        let cookie = start.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        (start, cookie)
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location in a {} answer", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in page"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn alice() -> Localpart {
    Localpart::parse("alice").unwrap()
}

#[tokio::test]
async fn full_flow_sign_in_introspect_refresh_revoke() {
    let env = env().await;
    let r = env.request("DEVICEABCDEF").await;
    let tokens = env.tokens(&r).await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_i64().unwrap() > 0);
    assert_eq!(tokens["scope"], device_scope("DEVICEABCDEF"));
    assert!(
        tokens.get("id_token").is_none(),
        "the IdP's ID token is for mxidp only"
    );
    // mxidp's own tokens: the IdP's stay sealed in the session.
    assert_eq!(
        crate::tokens::recognise(access),
        Some(crate::store::TokenKind::Access)
    );
    assert_eq!(
        crate::tokens::recognise(refresh),
        Some(crate::store::TokenKind::Refresh)
    );
    let (idp_access, idp_refresh) = env.idp_tokens(access).await;
    assert_ne!(idp_access, access);
    assert_eq!(
        env.introspect(&idp_access).await,
        json!({"active": false}),
        "the IdP's own token is no Matrix token"
    );

    // Synapse's view: both scope families, the device, the localpart.
    let i = env.introspect(access).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["username"], "alice");
    assert_eq!(i["sub"], "alice-sub");
    assert_eq!(i["device_id"], "DEVICEABCDEF");
    let scope = i["scope"].as_str().unwrap();
    for s in [
        STABLE_API,
        UNSTABLE_API,
        "urn:matrix:client:device:DEVICEABCDEF",
        "urn:matrix:org.matrix.msc2967.client:device:DEVICEABCDEF",
    ] {
        assert!(scope.split(' ').any(|x| x == s), "{s} missing from {scope}");
    }
    assert!(!scope.contains("urn:synapse:admin:*"));
    assert!(i["expires_in"].is_i64());

    // The user and the device exist in the homeserver before the client's first request.
    let user = env.hs.user(&alice()).expect("provisioned");
    assert_eq!(user.display_name.as_deref(), Some("Alice Liddell"));
    assert!(env
        .hs
        .devices(&alice())
        .iter()
        .any(|d| d.as_str() == "DEVICEABCDEF"));

    // Refresh rotates: new tokens work, the old access token is inactive.
    let refreshed: Value = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &r.client_id),
        ])
        .await
        .json()
        .await
        .unwrap();
    let access2 = refreshed["access_token"].as_str().unwrap();
    let refresh2 = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(access2, access);
    assert_ne!(refresh2, refresh);
    assert_eq!(env.introspect(access).await, json!({"active": false}));
    assert_eq!(env.introspect(access2).await["active"], true);

    // Revoking the access token ends the whole session: both tokens, the device, the IdP.
    let (_, idp_refresh2) = env.idp_tokens(access2).await;
    let revoked = env
        .http
        .post(env.url("oauth2/revoke"))
        .form(&[
            ("token", access2),
            ("token_type_hint", "access_token"),
            ("client_id", &r.client_id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(env.introspect(access2).await, json!({"active": false}));
    env.settle().await;
    assert!(
        env.hs.devices(&alice()).is_empty(),
        "device deleted in the homeserver"
    );
    let again = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh2),
            ("client_id", &r.client_id),
        ])
        .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    let revoked_at_idp = env.revoked_at_idp();
    assert_eq!(
        revoked_at_idp,
        [idp_refresh2.unwrap()],
        "the IdP's refresh token, and only it, revoked at the IdP"
    );
    assert!(idp_refresh.is_some());
}

#[tokio::test]
async fn js_sdk_style_stable_scopes_fragment_mode_and_refresh_token_revocation() {
    let env = env().await;
    let mut r = env.request("JSDEVICE0001").await;
    r.scope = format!("{STABLE_API} urn:matrix:client:device:JSDEVICE0001");
    r.response_mode = Some("fragment");
    let tokens = env.tokens(&r).await;
    assert_eq!(tokens["scope"], r.scope);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(env.introspect(access).await["active"], true);
    // Revoking the refresh token ends the session too.
    let revoked = env
        .http
        .post(env.url("oauth2/revoke"))
        .form(&[
            ("token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", r.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(env.introspect(access).await["active"], false);
}

#[tokio::test]
async fn consent_is_remembered_per_user_and_client_and_deny_returns_access_denied() {
    let env = env().await;
    let r = env.request("DEVICE000001").await;
    env.tokens(&r).await;
    // Same client again: straight back to the client, no page.
    let mut again = Request {
        scope: device_scope("DEVICE000002"),
        ..r
    };
    again.verifier = crate::ids::random_token(32);
    let (answer, _) = env.to_callback(&again).await;
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert!(location(&answer).contains("code="));

    // A new client asks again; denying sends access_denied and creates nothing.
    let other = env.request("DEVICE000003").await;
    let (page, cookie) = env.to_callback(&other).await;
    let denied = env.consent(page, &cookie, "deny").await;
    assert!(location(&denied).contains("error=access_denied"));
    assert!(!env
        .hs
        .devices(&alice())
        .iter()
        .any(|d| d.as_str() == "DEVICE000003"));
}

fn has_admin_scope(introspection: &Value) -> bool {
    introspection["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|s| s == "urn:synapse:admin:*")
}

/// The privilege escalation of issue 17: consent remembered per client let a client that was
/// once allowed for normal use come back for `urn:synapse:admin:*` and get it without a page.
#[tokio::test]
async fn an_approved_client_asking_for_the_admin_scope_is_asked_every_time_and_deny_grants_nothing()
{
    let env = env_with("[policy]\nadmin = { claim = \"groups\", value = \"matrix-admins\" }").await;
    let boss =
        json!({"sub": "boss-sub", "preferred_username": "boss", "groups": ["matrix-admins"]});
    env.idp.set_next_login(boss.clone());
    let r = env.request("DEVICE000101").await;
    let plain = env.tokens(&r).await;
    let plain_access = plain["access_token"].as_str().unwrap().to_owned();

    let with_admin = |device: &str| Request {
        client_id: r.client_id.clone(),
        redirect_uri: r.redirect_uri.clone(),
        scope: format!("{} urn:synapse:admin:*", device_scope(device)),
        verifier: crate::ids::random_token(32),
        response_mode: None,
    };
    // Same client, now asking for the admin scope: the page, with the admin warning.
    env.idp.set_next_login(boss.clone());
    let (page, cookie) = env.to_callback(&with_admin("DEVICE000102")).await;
    assert_eq!(page.status(), StatusCode::OK, "the consent page is shown");
    let html = page.text().await.unwrap();
    assert!(html.contains("class=\"warning\""), "{html}");
    assert!(html.contains("Administer this homeserver"), "{html}");
    let denied = env.consent_html(&html, &cookie, "deny").await;
    assert!(location(&denied).contains("error=access_denied"));
    assert!(!env
        .hs
        .devices(&Localpart::parse("boss").unwrap())
        .iter()
        .any(|d| d.as_str() == "DEVICE000102"));
    assert!(!has_admin_scope(&env.introspect(&plain_access).await));

    // Allowing it once does not make it silent: the next admin request asks again.
    env.idp.set_next_login(boss.clone());
    let admin = env.tokens(&with_admin("DEVICE000103")).await;
    assert!(has_admin_scope(
        &env.introspect(admin["access_token"].as_str().unwrap())
            .await
    ));
    env.idp.set_next_login(boss.clone());
    let (again, _) = env.to_callback(&with_admin("DEVICE000104")).await;
    assert_eq!(again.status(), StatusCode::OK, "asked again");
    // The plain scopes stay remembered.
    env.idp.set_next_login(boss);
    let (silent, _) = env
        .to_callback(&Request {
            scope: device_scope("DEVICE000105"),
            ..with_admin("DEVICE000105")
        })
        .await;
    assert_eq!(silent.status(), StatusCode::SEE_OTHER);
    assert!(location(&silent).contains("code="));
}

#[tokio::test]
async fn a_request_for_more_scopes_than_allowed_shows_the_page_again() {
    let env = env().await;
    let r = env.request("DEVICE000106").await;
    env.tokens(&r).await;
    let more = Request {
        client_id: r.client_id.clone(),
        redirect_uri: r.redirect_uri.clone(),
        scope: format!("{} email", device_scope("DEVICE000107")),
        verifier: crate::ids::random_token(32),
        response_mode: None,
    };
    let (page, _) = env.to_callback(&more).await;
    assert_eq!(page.status(), StatusCode::OK, "the consent page is shown");
}

impl Env {
    /// A native client with a loopback redirect: its identity cannot be verified.
    async fn native_request(&self, device: &str) -> Request {
        let r = self
            .register(json!({
                "client_name": "Element",
                "client_uri": "https://app.element.io/",
                "redirect_uris": ["http://127.0.0.1/callback"],
                "application_type": "native",
                "token_endpoint_auth_method": "none"
            }))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let client_id = r.json::<Value>().await.unwrap()["client_id"]
            .as_str()
            .unwrap()
            .to_owned();
        Request {
            client_id,
            redirect_uri: "http://127.0.0.1:45678/callback".into(),
            scope: device_scope(device),
            verifier: crate::ids::random_token(32),
            response_mode: None,
        }
    }
}

#[tokio::test]
async fn a_native_client_is_asked_every_time_unless_a_short_window_is_configured() {
    let env = env().await;
    let r = env.native_request("DEVICE000108").await;
    env.tokens(&r).await;
    let again = Request {
        scope: device_scope("DEVICE000109"),
        verifier: crate::ids::random_token(32),
        ..r
    };
    let (page, _) = env.to_callback(&again).await;
    assert_eq!(
        page.status(),
        StatusCode::OK,
        "RFC 8252 §8.6: no silent approval"
    );

    let windowed = env_with("[consent]\nnative_remember_seconds = 600").await;
    let r = windowed.native_request("DEVICE000110").await;
    windowed.tokens(&r).await;
    let again = Request {
        scope: device_scope("DEVICE000111"),
        verifier: crate::ids::random_token(32),
        ..r
    };
    let (silent, _) = windowed.to_callback(&again).await;
    assert_eq!(silent.status(), StatusCode::SEE_OTHER);
    assert!(location(&silent).contains("code="));
}

#[tokio::test]
async fn consent_form_without_the_browser_cookie_is_refused() {
    let env = env().await;
    let r = env.request("DEVICE000004").await;
    let (page, _cookie) = env.to_callback(&r).await;
    let refused = env
        .consent(
            page,
            "mxidp_binding=someone-elses-cookie-value-000000000000",
            "allow",
        )
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(env
        .hs
        .calls()
        .iter()
        .all(|c| !c.starts_with("provision_user")));
}

async fn assert_page_without_redirect(r: reqwest::Response) -> String {
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.headers().get(LOCATION).is_none(),
        "must not redirect to an unverified URI"
    );
    r.text().await.unwrap()
}

#[tokio::test]
async fn unregistered_client_and_unregistered_redirect_uri_get_a_page_not_a_redirect() {
    let env = env().await;
    let mut r = env.request("DEVICE000005").await;
    r.client_id = "not-a-client".into();
    let page = assert_page_without_redirect(
        env.http
            .get(env.authorize_url(&r, &[]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(page.contains("not registered"));

    let r = env.request("DEVICE000006").await;
    let bad = env.authorize_url(
        &r,
        &[("redirect_uri", Some("https://attacker.example.net/cb"))],
    );
    assert_page_without_redirect(env.http.get(bad).send().await.unwrap()).await;
    assert!(
        env.idp.authorize_requests().is_empty(),
        "nothing reached the IdP"
    );
}

async fn client_error(env: &Env, url: Url) -> String {
    let answer = env.http.get(url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let to: Url = location(&answer).parse().unwrap();
    assert!(to.as_str().starts_with("https://client.example.org/cb"));
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some("client-state"));
    q["error"].clone()
}

#[tokio::test]
async fn pkce_is_mandatory_and_s256_only() {
    let env = env().await;
    let r = env.request("DEVICE000007").await;
    let missing = env.authorize_url(
        &r,
        &[("code_challenge", None), ("code_challenge_method", None)],
    );
    assert_eq!(client_error(&env, missing).await, "invalid_request");
    let plain = env.authorize_url(&r, &[("code_challenge_method", Some("plain"))]);
    assert_eq!(client_error(&env, plain).await, "invalid_request");
    let no_method = env.authorize_url(&r, &[("code_challenge_method", None)]);
    assert_eq!(client_error(&env, no_method).await, "invalid_request");
    assert!(env.idp.authorize_requests().is_empty());
}

#[tokio::test]
async fn scope_rules_are_enforced_at_authorize() {
    let env = env().await;
    let r = env.request("DEVICE000008").await;
    let cases = [
        format!("{STABLE_API} urn:matrix:org.matrix.msc2967.client:device:DEVICE000008"),
        format!("{UNSTABLE_API} urn:matrix:org.matrix.msc2967.client:device:DEVICE000008 urn:matrix:org.matrix.msc2967.client:device:DEVICE000009"),
        "urn:matrix:org.matrix.msc2967.client:device:DEVICE000008".to_string(),
        format!("{UNSTABLE_API} urn:matrix:org.matrix.msc2967.client:device:SHORT"),
        format!("{UNSTABLE_API} urn:matrix:org.matrix.msc2967.client:device:BAD\"DEVICE01"),
        format!("{UNSTABLE_API} urn:matrix:org.matrix.msc2967.client:device:BAD\\DEVICE01"),
    ];
    for scope in cases {
        let url = env.authorize_url(&r, &[("scope", Some(&scope))]);
        assert_eq!(
            client_error(&env, url).await,
            "invalid_scope",
            "scope {scope}"
        );
    }
    assert!(env.idp.authorize_requests().is_empty());
}

#[tokio::test]
async fn a_wrong_code_verifier_or_client_fails_without_spending_the_code() {
    let env = env().await;
    let r = env.request("DEVICE000010").await;
    let code = env.sign_in(&r).await;
    let wrong = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &r.redirect_uri),
            (
                "code_verifier",
                "wrong-verifier-wrong-verifier-wrong-verifier-00",
            ),
            ("client_id", &r.client_id),
        ])
        .await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    assert!(
        env.hs.devices(&alice()).is_empty(),
        "no device without tokens"
    );
    // Someone holding the code without its verifier, or another client, cannot burn it.
    let other_client = env
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &r.redirect_uri),
            ("code_verifier", &r.verifier),
            ("client_id", "another-client"),
        ])
        .await;
    assert_eq!(other_client.status(), StatusCode::BAD_REQUEST);
    let right = env.exchange(&r, &code).await;
    assert_eq!(
        right.status(),
        StatusCode::OK,
        "the client's own redemption works"
    );
    let again = env.exchange(&r, &code).await;
    assert_eq!(
        again.status(),
        StatusCode::BAD_REQUEST,
        "the code is single use"
    );
}

#[tokio::test]
async fn a_code_used_twice_fails_and_ends_the_session_it_created() {
    let env = env().await;
    let r = env.request("DEVICE000011").await;
    let code = env.sign_in(&r).await;
    let first: Value = env.exchange(&r, &code).await.json().await.unwrap();
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(env.introspect(access).await["active"], true);
    let second = env.exchange(&r, &code).await;
    assert_eq!(second.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        second.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    assert_eq!(env.introspect(access).await["active"], false);
    env.settle().await;
    assert!(env.hs.devices(&alice()).is_empty());
}

#[tokio::test]
async fn callback_with_unknown_state_or_another_browser_is_refused() {
    let env = env().await;
    let r = env.request("DEVICE000012").await;
    let unknown = env
        .http
        .get(env.url("upstream/callback?state=forged&code=whatever"))
        .send()
        .await
        .unwrap();
    assert_page_without_redirect(unknown).await;

    let start = env
        .http
        .get(env.authorize_url(&r, &[]))
        .send()
        .await
        .unwrap();
    let back = env.http.get(location(&start)).send().await.unwrap();
    let callback = location(&back);
    let other_browser = env
        .http
        .get(&callback)
        .header(
            COOKIE,
            "mxidp_binding=attackers-own-browser-cookie-0000000000",
        )
        .send()
        .await
        .unwrap();
    let page = assert_page_without_redirect(other_browser).await;
    assert!(page.contains("another browser"));
    let no_cookie = env.http.get(&callback).send().await.unwrap();
    assert_page_without_redirect(no_cookie).await;
    assert!(
        env.idp.token_requests().is_empty(),
        "the IdP code was not exchanged"
    );
    assert!(env.hs.calls().is_empty());
}

#[tokio::test]
async fn bad_id_tokens_are_refused_and_change_nothing() {
    let env = env().await;
    let expired = crate::ids::now_unix() - 3600;
    let cases: Vec<(&str, Value, Value)> = vec![
        ("wrong aud", json!({}), json!({"aud": "someone-else"})),
        (
            "wrong iss",
            json!({}),
            json!({"iss": "https://evil.example.com/"}),
        ),
        ("wrong nonce", json!({}), json!({"nonce": "not-the-nonce"})),
        (
            "expired",
            json!({}),
            json!({"exp": expired, "iat": expired - 600}),
        ),
        ("alg none", json!({"alg": "none"}), json!({})),
        (
            "HS256 with the public key",
            json!({"alg": "HS256"}),
            json!({}),
        ),
    ];
    for (name, header, claims) in cases {
        let r = env.request("DEVICE000013").await;
        env.idp.forge_next_id_token(header, claims);
        let (answer, _) = env.to_callback(&r).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{name}");
        let page = answer.text().await.unwrap();
        assert!(page.contains("cannot accept"), "{name}: {page}");
    }
    assert!(env.hs.calls().is_empty(), "nothing reached the homeserver");
    assert!(env
        .app
        .store
        .identity_by_subject(&env.app.mapping.upstream_id, "alice-sub")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn introspection_secret_unknown_tokens_and_body_limit() {
    let env = env().await;
    let wrong = env.introspect_with("not-the-secret", "anything").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.json::<Value>().await.unwrap(),
        json!({"error": "access_denied"})
    );
    let missing = env
        .http
        .post(env.url("oauth2/introspect"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        env.introspect("unknown-token").await,
        json!({"active": false})
    );

    let big = "x".repeat(10_000);
    for path in [
        "oauth2/introspect",
        "oauth2/token",
        "oauth2/registration",
        "oauth2/revoke",
    ] {
        let r = env
            .http
            .post(env.url(path))
            .bearer_auth(SECRET)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={big}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
}

#[tokio::test]
async fn registration_rules() {
    let env = env().await;
    let cases = [
        (
            json!({"client_uri": "https://app.example.com/", "redirect_uris": ["http://app.example.com/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://app.example.com/", "redirect_uris": ["https://app.example.com/cb#frag"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://app.example.com/", "application_type": "native", "redirect_uris": ["org.evil.app:/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"client_uri": "https://app.example.com/", "redirect_uris": ["https://other.example.net/cb"]}),
            "invalid_redirect_uri",
        ),
    ];
    for (body, error) in cases {
        let r = env.register(body.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], error, "{body}");
    }
    let not_json = env
        .http
        .post(env.url("oauth2/registration"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let native = env
        .register(json!({
            "client_uri": "https://element.io/",
            "application_type": "native",
            "redirect_uris": ["io.element.elementx:/callback", "http://127.0.0.1/cb"],
        }))
        .await;
    assert_eq!(native.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn metadata_satisfies_synapse_and_both_sdks() {
    let env = env().await;
    let m: Value = env
        .http
        .get(env.url(".well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["issuer"], env.base.as_str());
    for key in [
        "authorization_endpoint",
        "token_endpoint",
        "revocation_endpoint",
        "registration_endpoint",
        "account_management_uri",
    ] {
        assert!(
            m[key].as_str().unwrap().starts_with(env.base.as_str()),
            "{key}"
        );
    }
    assert_eq!(m["response_modes_supported"], json!(["query", "fragment"]));
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        m["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ])
    );
    assert!(m["device_authorization_endpoint"]
        .as_str()
        .unwrap()
        .starts_with(env.base.as_str()));
    // The test IdP advertises prompt=create, so mxidp offers sign-up.
    assert_eq!(m["prompt_values_supported"], json!(["create"]));
}

#[tokio::test]
async fn two_subjects_with_the_same_name_never_share_an_account() {
    let env = env().await;
    env.tokens(&env.request("DEVICE000014").await).await;
    env.idp.set_next_login(
        json!({"sub": "mallory-sub", "preferred_username": "alice", "name": "Not Alice"}),
    );
    let (page, _) = env.to_callback(&env.request("DEVICE000015").await).await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert!(page.text().await.unwrap().contains("already taken"));
    assert!(env
        .app
        .store
        .identity_by_subject(&env.app.mapping.upstream_id, "mallory-sub")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        env.hs.user(&alice()).unwrap().display_name.as_deref(),
        Some("Alice Liddell")
    );
}

#[tokio::test]
async fn suffix_policy_gives_the_second_subject_its_own_localpart() {
    let env = env_with("[mapping]\non_conflict = \"suffix\"").await;
    env.tokens(&env.request("DEVICE000016").await).await;
    env.idp
        .set_next_login(json!({"sub": "other-sub", "preferred_username": "alice"}));
    let tokens = env.tokens(&env.request("DEVICE000017").await).await;
    let i = env
        .introspect(tokens["access_token"].as_str().unwrap())
        .await;
    assert_eq!(i["username"], "alice-2");
}

#[tokio::test]
async fn email_like_username_yields_a_valid_localpart() {
    let env = env().await;
    env.idp
        .set_next_login(json!({"sub": "jd-sub", "preferred_username": "John.Doe@Example.COM"}));
    let tokens = env.tokens(&env.request("DEVICE000018").await).await;
    assert_eq!(
        env.introspect(tokens["access_token"].as_str().unwrap())
            .await["username"],
        "john.doe"
    );
}

#[tokio::test]
async fn a_tombstoned_localpart_is_never_reassigned() {
    let env = env_with("[mapping]\non_conflict = \"suffix\"").await;
    env.tokens(&env.request("DEVICE000019").await).await;
    env.app
        .store
        .tombstone_identity(
            &env.app.mapping.upstream_id,
            "alice-sub",
            crate::ids::now_unix(),
        )
        .await
        .unwrap();
    // The deleted subject cannot come back...
    let (page, _) = env.to_callback(&env.request("DEVICE000020").await).await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    // ...and a new subject with the same name does not get "alice".
    env.idp
        .set_next_login(json!({"sub": "new-alice-sub", "preferred_username": "alice"}));
    let tokens = env.tokens(&env.request("DEVICE000021").await).await;
    assert_eq!(
        env.introspect(tokens["access_token"].as_str().unwrap())
            .await["username"],
        "alice-2"
    );
}

#[tokio::test]
async fn access_policy_refuses_with_a_page_and_no_account() {
    let env = env_with("[policy]\naccess = { claim = \"groups\", value = \"matrix-users\" }").await;
    let (page, _) = env.to_callback(&env.request("DEVICE000022").await).await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert!(page.text().await.unwrap().contains("not given you access"));
    assert!(env
        .hs
        .calls()
        .iter()
        .all(|c| !c.starts_with("provision_user")));
}

#[tokio::test]
async fn admin_policy_grants_the_synapse_admin_scope_only_to_clients_that_ask() {
    let env = env_with("[policy]\nadmin = { claim = \"groups\", value = \"matrix-admins\" }").await;
    let boss =
        json!({"sub": "boss-sub", "preferred_username": "boss", "groups": ["matrix-admins"]});
    let has_admin = |i: &Value| {
        i["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "urn:synapse:admin:*")
    };

    // An ordinary client (Element X) gets no admin power, even for an admin.
    env.idp.set_next_login(boss.clone());
    let plain = env.tokens(&env.request("DEVICE000023").await).await;
    assert!(!has_admin(
        &env.introspect(plain["access_token"].as_str().unwrap())
            .await
    ));

    // An admin tool that asks for it gets it, and the token response says so.
    env.idp.set_next_login(boss);
    let mut r = env.request("DEVICE000034").await;
    r.scope = format!("{} urn:synapse:admin:*", device_scope("DEVICE000034"));
    let admin = env.tokens(&r).await;
    assert!(admin["scope"]
        .as_str()
        .unwrap()
        .contains("urn:synapse:admin:*"));
    assert!(has_admin(
        &env.introspect(admin["access_token"].as_str().unwrap())
            .await
    ));

    // A user the policy does not name gets no admin scope even when the client asks.
    env.idp
        .set_next_login(json!({"sub": "worker-sub", "preferred_username": "worker"}));
    let mut r = env.request("DEVICE000035").await;
    r.scope = format!("{} urn:synapse:admin:*", device_scope("DEVICE000035"));
    let denied = env.tokens(&r).await;
    assert!(!denied["scope"]
        .as_str()
        .unwrap()
        .contains("urn:synapse:admin:*"));
    assert!(!has_admin(
        &env.introspect(denied["access_token"].as_str().unwrap())
            .await
    ));
}

#[tokio::test]
async fn an_idp_that_ends_the_session_makes_refresh_fail_and_deletes_the_device() {
    let env = env().await;
    let r = env.request("DEVICE000024").await;
    let tokens = env.tokens(&r).await;
    env.idp.fail_refresh_with_invalid_grant(true);
    let answer = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &r.client_id),
        ])
        .await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        env.introspect(tokens["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    env.settle().await;
    assert!(env.hs.devices(&alice()).is_empty());
}

#[tokio::test]
async fn a_reused_rotated_refresh_token_ends_the_session() {
    let env = env().await;
    let r = env.request("DEVICE000025").await;
    let tokens = env.tokens(&r).await;
    let old = tokens["refresh_token"].as_str().unwrap();
    let fresh: Value = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", old),
            ("client_id", &r.client_id),
        ])
        .await
        .json()
        .await
        .unwrap();
    let replay = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", old),
            ("client_id", &r.client_id),
        ])
        .await;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        env.introspect(fresh["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let env = env().await;
    let tokens = env.tokens(&env.request("DEVICE000026").await).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (record, session) = env
        .app
        .store
        .token(TokenHash::of(access))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.hash, TokenHash::of(access));
    let sealed = session.sealed_refresh_token.unwrap();
    assert!(!sealed.contains(tokens["refresh_token"].as_str().unwrap()));
}

#[tokio::test]
async fn cross_signing_reset_reauthenticates_at_the_idp_then_opens_the_window() {
    let env = env().await;
    env.tokens(&env.request("DEVICE000027").await).await;
    let start = env
        .http
        .get(env.url("account?action=org.matrix.cross_signing_reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let cookie = start.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let at_idp: Url = location(&start).parse().unwrap();
    let q: std::collections::HashMap<String, String> = at_idp.query_pairs().into_owned().collect();
    assert_eq!(q.get("prompt").map(String::as_str), Some("login"));
    assert_eq!(q.get("max_age").map(String::as_str), Some("0"));
    assert!(!env
        .hs
        .calls()
        .iter()
        .any(|c| c.starts_with("allow_cross_signing_reset")));

    let back = env.http.get(at_idp).send().await.unwrap();
    let done = env.back_at_mxidp(&location(&back), &cookie).await;
    // Signed in again: a confirmation page names the action, the account and the consequence;
    // nothing is allowed yet.
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.headers()["x-frame-options"], "DENY");
    let page = done.text().await.unwrap();
    assert!(page.contains("cryptographic identity"), "{page}");
    assert!(page.contains("@alice:example.org"), "{page}");
    assert!(page.contains("method=\"post\""), "{page}");
    // The confirmation has its own address: a reload shows it again, to this browser only.
    let again = env.url(&format!(
        "account/confirm?pending={}",
        hidden(&page, "pending")
    ));
    let reloaded = env
        .http
        .get(again.clone())
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status(), StatusCode::OK);
    assert!(reloaded.text().await.unwrap().contains("Reset my identity"));
    let elsewhere = env.http.get(again).send().await.unwrap();
    assert_eq!(elsewhere.status(), StatusCode::BAD_REQUEST);
    let allowed = || {
        env.hs
            .calls()
            .iter()
            .filter(|c| c.starts_with("allow_cross_signing_reset"))
            .count()
    };
    assert_eq!(allowed(), 0, "a GET and a sign-in are not a confirmation");
    let pending = hidden(&page, "pending");
    let csrf = hidden(&page, "csrf");
    let confirm = |cookie: Option<&str>, csrf: &str, decision: &str| {
        let mut request = env.http.post(env.url("account/confirm")).form(&[
            ("pending", pending.as_str()),
            ("csrf", csrf),
            ("decision", decision),
        ]);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send()
    };
    // Another browser (no cookie), or the right browser without the CSRF token: refused.
    let other = confirm(None, &csrf, "confirm").await.unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let forged = confirm(Some(&cookie), "wrong-csrf", "confirm")
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(allowed(), 0);
    // The user confirms from the browser that started it: the window opens, once.
    let ok = confirm(Some(&cookie), &csrf, "confirm").await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.text().await.unwrap().contains("10 minutes"));
    assert_eq!(allowed(), 1, "{:?}", env.hs.calls());
    assert!(env
        .hs
        .calls()
        .iter()
        .any(|c| c == "allow_cross_signing_reset alice"));
    let again = confirm(Some(&cookie), &csrf, "confirm").await.unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN, "single use");
    assert_eq!(allowed(), 1);
}

#[tokio::test]
async fn a_cancelled_cross_signing_reset_changes_nothing() {
    let env = env().await;
    env.tokens(&env.request("DEVICE000038").await).await;
    let (start, cookie) = env.start_cross_signing_reset().await;
    let back = env.http.get(location(&start)).send().await.unwrap();
    let page = env
        .back_at_mxidp(&location(&back), &cookie)
        .await
        .text()
        .await
        .unwrap();
    let cancelled = env
        .http
        .post(env.url("account/confirm"))
        .header(COOKIE, &cookie)
        .form(&[
            ("pending", hidden(&page, "pending").as_str()),
            ("csrf", hidden(&page, "csrf").as_str()),
            ("decision", "cancel"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert!(!env
        .hs
        .calls()
        .iter()
        .any(|c| c.starts_with("allow_cross_signing_reset")));
}

#[tokio::test]
async fn cross_signing_reset_for_an_unknown_identity_changes_nothing() {
    let env = env().await;
    let (start, cookie) = env.start_cross_signing_reset().await;
    let back = env.http.get(location(&start)).send().await.unwrap();
    let done = env.back_at_mxidp(&location(&back), &cookie).await;
    assert_eq!(done.status(), StatusCode::FORBIDDEN);
    assert!(env.hs.calls().is_empty());
}

#[tokio::test]
async fn sign_up_is_offered_only_when_the_idp_supports_it() {
    let env = env().await;
    env.idp
        .patch_discovery(json!({"prompt_values_supported": ["none", "login"]}));
    // Rediscover with the patched document.
    let mut settings = env.idp.upstream_settings();
    settings.client_secret = crate::secret::SecretString::new(CLIENT_SECRET);
    env.app.upstream.set(env.idp.upstream_with(settings).await);
    let m: Value = env
        .http
        .get(env.url(".well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(m.get("prompt_values_supported").is_none(), "{m}");
    // A client that sends prompt=create anyway just signs in.
    let r = env.request("DEVICE000028").await;
    let start = env
        .http
        .get(env.authorize_url(&r, &[("prompt", Some("create"))]))
        .send()
        .await
        .unwrap();
    let at_idp: Url = location(&start).parse().unwrap();
    assert!(!at_idp.query_pairs().any(|(k, _)| k == "prompt"));
}

#[tokio::test]
async fn sign_up_request_is_passed_to_an_idp_that_supports_it() {
    let env = env().await;
    let r = env.request("DEVICE000029").await;
    let start = env
        .http
        .get(env.authorize_url(&r, &[("prompt", Some("create"))]))
        .send()
        .await
        .unwrap();
    let at_idp: Url = location(&start).parse().unwrap();
    assert!(
        at_idp
            .query_pairs()
            .any(|(k, v)| k == "prompt" && v == "create"),
        "{at_idp}"
    );
}

/// An adapter that overrides only some hooks, the way provider crates will.
struct TenantAdapter;

impl crate::provider::Provider for TenantAdapter {
    fn name(&self) -> &'static str {
        "tenant"
    }
    fn validate_claims(&self, claims: &crate::provider::Claims) -> Result<(), String> {
        match claims.get("tenant").and_then(Value::as_str) {
            Some("acme") => Ok(()),
            _ => Err("the user belongs to another tenant".into()),
        }
    }
    fn authorize_parameters(&self) -> Vec<(String, String)> {
        vec![("audience".into(), "matrix".into())]
    }
    fn roles(&self, claims: &crate::provider::Claims) -> Vec<String> {
        crate::provider::string_list(claims.get("realm").and_then(|r| r.get("roles")))
    }
}

#[tokio::test]
async fn adapter_overrides_are_used_by_the_core_flow() {
    let env = env_with_provider(
        "[policy]\nadmin = { claim = \"roles\", value = \"matrix-admin\" }",
        Arc::new(TenantAdapter),
    )
    .await;
    // Wrong tenant: refused after standard validation, nothing created.
    env.idp
        .set_next_login(json!({"sub": "eve-sub", "preferred_username": "eve", "tenant": "other"}));
    let (page, _) = env.to_callback(&env.request("DEVICE000030").await).await;
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    // The adapter's reason goes to the log (under the page's reference), not to the user.
    assert!(page.text().await.unwrap().contains("cannot accept"));
    assert!(env.hs.calls().is_empty());
    let sent = env.idp.authorize_requests();
    assert_eq!(
        sent.last().unwrap().get("audience").map(String::as_str),
        Some("matrix")
    );

    // Right tenant, admin through the adapter's roles; identities are keyed by its name.
    env.idp.set_next_login(json!({
        "sub": "ann-sub", "preferred_username": "ann", "tenant": "acme",
        "realm": {"roles": ["matrix-admin"]}
    }));
    let mut r = env.request("DEVICE000031").await;
    r.scope = format!("{} urn:synapse:admin:*", device_scope("DEVICE000031"));
    let tokens = env.tokens(&r).await;
    let i = env
        .introspect(tokens["access_token"].as_str().unwrap())
        .await;
    assert!(i["scope"].as_str().unwrap().contains("urn:synapse:admin:*"));
    assert!(env
        .app
        .store
        .identity_by_subject(&env.app.mapping.upstream_id, "ann-sub")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn metadata_waits_for_discovery_so_synapse_never_caches_an_incomplete_document() {
    use tower::ServiceExt;
    let idp = TestIdp::start().await;
    let base: Url = "http://127.0.0.1:9/".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxidp.toml");
    std::fs::write(&path, config_toml(&base, &idp, "")).unwrap();
    let config = crate::config::Config::load(Some(&path)).unwrap();
    let store = Arc::new(SqliteStore::in_memory().await.unwrap());
    let app = crate::server::assemble(
        &config,
        store,
        Arc::new(MemoryHomeserver::default()),
        Arc::new(GenericOidc),
    )
    .unwrap();
    let get = |uri: &str| {
        axum::http::Request::get(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let router = crate::server::router(app.clone());
    let before = router
        .clone()
        .oneshot(get("/.well-known/openid-configuration"))
        .await
        .unwrap();
    assert_eq!(before.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = router.clone().oneshot(get("/health/ready")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    app.upstream.set(idp.upstream().await);
    let after = router
        .clone()
        .oneshot(get("/.well-known/openid-configuration"))
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(
        router.oneshot(get("/health/ready")).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn browser_clients_get_cors_on_the_oauth_endpoints_but_not_on_introspection() {
    let env = env().await;
    for path in [
        "oauth2/token",
        "oauth2/registration",
        "oauth2/revoke",
        "oauth2/device",
        ".well-known/openid-configuration",
        "_matrix/client/v3/login",
        "_matrix/client/v3/logout",
        "_matrix/client/v3/logout/all",
        "_matrix/client/r0/refresh",
    ] {
        let preflight = env
            .http
            .request(reqwest::Method::OPTIONS, env.url(path))
            .header("Origin", "https://app.element.io")
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(
            preflight
                .headers()
                .get("access-control-allow-origin")
                .unwrap(),
            "*",
            "{path}"
        );
    }
    let introspect = env
        .http
        .post(env.url("oauth2/introspect"))
        .header("Origin", "https://app.element.io")
        .bearer_auth(SECRET)
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert!(introspect
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // The logout call of a web client carries its token: the preflight must allow the header.
    let preflight = env
        .http
        .request(
            reqwest::Method::OPTIONS,
            env.url("_matrix/client/v3/logout"),
        )
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    let allowed = preflight
        .headers()
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    // Pages are not for other origins: the user-code page, the consent page, the SSO redirect.
    for path in ["link", "consent", "_matrix/client/v3/login/sso/redirect"] {
        let page = env
            .http
            .get(env.url(path))
            .header("Origin", "https://app.element.io")
            .send()
            .await
            .unwrap();
        assert!(
            page.headers().get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn account_management_goes_to_the_configured_page_or_explains() {
    let without = env().await;
    let page = without
        .http
        .get(without.url("account?action=org.matrix.profile"))
        .send()
        .await
        .unwrap();
    // No page at the IdP is known: the account page explains, and offers mxidp's own page.
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("identity provider"), "{html}");
    assert!(
        html.contains("action=org.matrix.cross_signing_reset"),
        "{html}"
    );

    let with = env_with("account_url = \"https://idp.example.org/account\"").await;
    // Without an action: a page (not a 404) with the link to the IdP's account page.
    let landing = with.http.get(with.url("account")).send().await.unwrap();
    assert_eq!(landing.status(), StatusCode::OK);
    let html = landing.text().await.unwrap();
    assert!(
        html.contains("href=\"https://idp.example.org/account\""),
        "{html}"
    );
    for action in [
        "org.matrix.profile",
        "org.matrix.devices_list",
        "sessions_list",
    ] {
        let r = with
            .http
            .get(with.url(&format!("account?action={action}")))
            .send()
            .await
            .unwrap();
        assert_eq!(location(&r), "https://idp.example.org/account", "{action}");
    }
}

#[tokio::test]
async fn introspection_answers_from_memory_and_falls_back_to_the_store_when_the_cache_is_incomplete(
) {
    let env = env().await;
    assert!(env.app.cache.is_complete());
    let tokens = env.tokens(&env.request("DEVICE000032").await).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(env.introspect(access).await["active"], true);

    // A restart: a fresh cache loaded from the store knows the session.
    let cache = crate::cache::IntrospectionCache::new(10);
    let loaded = env
        .app
        .store
        .active_access_tokens(crate::ids::now_unix())
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    cache.warm(
        loaded
            .iter()
            .map(|(r, s)| (r.hash, crate::cache::ActiveToken::new(r, s))),
    );
    assert!(matches!(
        cache.lookup(&TokenHash::of(access)),
        crate::cache::Lookup::Active(_)
    ));

    // An overflowing cache is no longer trusted for misses: the store answers.
    for i in 0..200_001u32 {
        if env.app.cache.is_complete() {
            env.app.cache.insert(
                TokenHash::of(&format!("filler-{i}")),
                crate::cache::ActiveToken::new(&loaded[0].0, &loaded[0].1),
            );
        } else {
            break;
        }
    }
    assert!(!env.app.cache.is_complete());
    assert_eq!(
        env.introspect(access).await["active"],
        true,
        "found in the store"
    );
}

#[tokio::test]
async fn homeserver_down_at_the_token_endpoint_gives_503_and_leaves_no_session() {
    let env = env().await;
    let r = env.request("DEVICE000033").await;
    let code = env.sign_in(&r).await;
    env.hs.set_unavailable(true);
    let answer = env.exchange(&r, &code).await;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.json::<Value>().await.unwrap()["error"],
        "temporarily_unavailable"
    );
    let active = env
        .app
        .store
        .active_access_tokens(crate::ids::now_unix())
        .await
        .unwrap();
    assert!(active.is_empty(), "no session may outlive a failed sign-in");
    assert!(env.app.cache.is_empty());
}

#[tokio::test]
async fn sign_in_and_sign_out_are_audited_without_tokens() {
    let env = env().await;
    let r = env.request("DEVICE000090").await;
    let tokens = env.tokens(&r).await;
    env.idp.fail_refresh_with_invalid_grant(true);
    let answer = env
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &r.client_id),
        ])
        .await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    env.settle().await;

    let records = env.app.store.audit_records(0, None, 100).await.unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    // The same records as for any other session end (docs/events.md): the event, the end in
    // the store, the homeserver's device list, the IdP's tokens revoked, the event's outcome.
    assert_eq!(
        actions,
        [
            "session.started",
            "event.received",
            "session.ended",
            "homeserver.sync_devices",
            "idp.tokens_revoked",
            "event.applied"
        ]
    );
    let started = &records[0];
    assert_eq!(started.actor, format!("client:{}", r.client_id));
    assert!(records[1..].iter().all(|rec| rec.actor == "mxidp"));
    assert_eq!(records[1].source, "idp_refresh");
    assert_eq!(records[2].target, started.target);
    assert!(records[2].details.contains("IdP refused refresh"));
    assert_eq!(records[3].outcome, "ok");
    assert_eq!(records[2].correlation_id, records[5].correlation_id);
    // The revocation at the IdP is its own durable step, recorded against the session.
    assert_eq!(records[4].target, started.target);
    assert_eq!(records[4].outcome, "ok");
    for record in &records {
        for token in ["access_token", "refresh_token"] {
            assert!(!record.details.contains(tokens[token].as_str().unwrap()));
        }
    }
    assert!(crate::audit::verify(env.app.store.as_ref())
        .await
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn a_session_ended_during_a_refresh_gets_no_new_tokens_and_stays_uncached() {
    let env = env().await;
    let tokens = env.tokens(&env.request("DEVICE000036").await).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (record, session) = env
        .app
        .store
        .token(TokenHash::of(access))
        .await
        .unwrap()
        .unwrap();
    // A logout lands while the IdP is answering the refresh.
    env.app
        .store
        .end_session(
            &session.id,
            "logout",
            crate::ids::now_unix(),
            &crate::audit::AuditEntry::for_test("session.ended"),
        )
        .await
        .unwrap();
    let fresh = crate::store::TokenRecord {
        hash: TokenHash::of("fresh-access"),
        issued_at: crate::ids::now_unix(),
        ..record.clone()
    };
    let rotated = env
        .app
        .store
        .rotate_tokens(&crate::store::Rotation {
            session_id: &session.id,
            old_refresh: TokenHash::of(tokens["refresh_token"].as_str().unwrap()),
            new_tokens: std::slice::from_ref(&fresh),
            sealed_refresh_token: None,
            sealed_access_token: "sealed",
            now: crate::ids::now_unix(),
        })
        .await;
    assert!(matches!(rotated, Err(crate::store::StoreError::Conflict)));
    // A cache insert that races the end of the session does not survive it.
    env.app
        .cache
        .insert_checked(
            env.app.store.as_ref(),
            fresh.hash,
            crate::cache::ActiveToken::new(&fresh, &session),
        )
        .await
        .unwrap();
    assert_eq!(
        env.app.cache.lookup(&fresh.hash),
        crate::cache::Lookup::NotActive
    );
}

#[tokio::test]
async fn cross_signing_reset_needs_proof_of_a_fresh_sign_in() {
    for (name, patch) in [
        ("no auth_time", json!({"auth_time": null})),
        (
            "an old auth_time",
            json!({"auth_time": crate::ids::now_unix() - 3600}),
        ),
    ] {
        let env = env().await;
        env.tokens(&env.request("DEVICE000037").await).await;
        let (start, cookie) = env.start_cross_signing_reset().await;
        env.idp.forge_next_id_token(json!({}), patch);
        let back = env.http.get(location(&start)).send().await.unwrap();
        let done = env.back_at_mxidp(&location(&back), &cookie).await;
        assert_eq!(done.status(), StatusCode::FORBIDDEN, "{name}");
        assert!(
            !env.hs
                .calls()
                .iter()
                .any(|c| c.starts_with("allow_cross_signing_reset")),
            "{name}"
        );
    }
}

/// Polls until `done` holds, running due pipeline events in between (no worker in these tests).
async fn until_with_pipeline<F, Fut>(env: &Env, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        crate::events::pipeline::run_due(&env.app, crate::ids::now_unix())
            .await
            .unwrap();
        if done().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn introspect_revalidation_runs_behind_the_hot_path_cached_and_ends_only_on_an_answer() {
    let env = env_with("revalidation = \"introspect\"\nrevalidation_cache_seconds = 1").await;
    let r = env.request("DEVICE000031").await;
    let tokens = env.tokens(&r).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let asked = || env.idp.introspection_requests().len();

    // The IdP is in trouble: Synapse still gets its answer, and no answer ends nothing.
    env.idp.fail_introspection(true);
    assert_eq!(env.introspect(&access).await["active"], true);
    assert!(until_with_pipeline(&env, || async { asked() == 1 }).await);
    // Cached (and coalesced): asking again within the period does not reach the IdP.
    for _ in 0..5 {
        assert_eq!(env.introspect(&access).await["active"], true);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(asked(), 1);
    assert!(!env.hs.devices(&alice()).is_empty());

    // After the cache period, the IdP calls the token inactive: the session ends.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    env.idp.fail_introspection(false);
    env.idp
        .set_introspection_inactive(&env.idp_access_token(&access).await);
    assert_eq!(
        env.introspect(&access).await["active"],
        true,
        "the hot path does not wait for the IdP"
    );
    assert!(
        until_with_pipeline(&env, || async {
            env.introspect(&access).await["active"] == false
        })
        .await,
        "the session did not end"
    );
    assert_eq!(asked(), 2);
    // The device goes right after the store marks the session ended (same task, a moment later).
    assert!(
        until_with_pipeline(&env, || async { env.hs.devices(&alice()).is_empty() }).await,
        "the device was not deleted"
    );
}

fn load_config(toml: &str) -> crate::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mxidp.toml");
    std::fs::write(&path, toml).unwrap();
    crate::config::Config::load(Some(&path)).unwrap()
}

async fn refresh(env: &Env, client_id: &str, refresh_token: &str) -> reqwest::Response {
    env.token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", client_id),
    ])
    .await
}

#[tokio::test]
async fn mxidp_rotates_its_refresh_token_whether_or_not_the_idp_does() {
    for idp_rotates in [true, false] {
        let env = env().await;
        env.idp.set_refresh_rotation(idp_rotates);
        let r = env.request("DEVICE000101").await;
        let tokens = env.tokens(&r).await;
        let refresh1 = tokens["refresh_token"].as_str().unwrap();
        let (_, idp_refresh1) = env.idp_tokens(refresh1).await;

        let answer = refresh(&env, &r.client_id, refresh1).await;
        assert_eq!(answer.status(), StatusCode::OK, "idp_rotates={idp_rotates}");
        let refreshed: Value = answer.json().await.unwrap();
        let access2 = refreshed["access_token"].as_str().unwrap();
        let refresh2 = refreshed["refresh_token"].as_str().unwrap();
        assert_ne!(
            refresh2, refresh1,
            "mxidp rotates, idp_rotates={idp_rotates}"
        );
        let (_, idp_refresh2) = env.idp_tokens(refresh2).await;
        assert_eq!(
            idp_refresh1 == idp_refresh2,
            !idp_rotates,
            "the IdP's own refresh token changes only when the IdP rotates"
        );
        assert_eq!(env.introspect(access2).await["active"], true);

        // The rotated token again: refused, and the whole session ends (MSC2964).
        let reused = refresh(&env, &r.client_id, refresh1).await;
        assert_eq!(reused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            reused.json::<Value>().await.unwrap()["error"],
            "invalid_grant"
        );
        assert_eq!(env.introspect(access2).await, json!({"active": false}));
        let after = refresh(&env, &r.client_id, refresh2).await;
        assert_eq!(after.status(), StatusCode::BAD_REQUEST);
        env.settle().await;
        assert!(
            env.hs.devices(&alice()).is_empty(),
            "idp_rotates={idp_rotates}"
        );
        let revoked = env.revoked_at_idp();
        assert_eq!(
            revoked,
            [idp_refresh2.unwrap()],
            "the IdP's grant is ended too"
        );
    }
}

#[tokio::test]
async fn a_client_without_the_refresh_grant_gets_no_refresh_token_and_unauthorized_client() {
    let env = env().await;
    let registered = env
        .register(json!({
            "client_name": "Bot", "client_uri": "https://client.example.org/",
            "redirect_uris": ["https://client.example.org/cb"], "application_type": "web",
            "grant_types": ["authorization_code"], "token_endpoint_auth_method": "none"
        }))
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let client_id = registered.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut r = env.request("DEVICE000102").await;
    r.client_id = client_id;
    let tokens = env.tokens(&r).await;
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let token_requests = env.idp.token_requests().len();

    // Whatever token it presents: the grant is not the client's.
    let other = env.tokens(&env.request("DEVICE000103").await).await;
    let answer = refresh(&env, &r.client_id, other["refresh_token"].as_str().unwrap()).await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
    assert_eq!(
        env.idp.token_requests().len(),
        token_requests + 1,
        "only the second sign-in reached the IdP: no refresh was attempted"
    );
    assert_eq!(
        env.introspect(other["access_token"].as_str().unwrap())
            .await["active"],
        true
    );

    // An unregistered client is no client at all.
    let unknown = refresh(
        &env,
        "no-such-client",
        other["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
}

#[tokio::test]
async fn tokens_that_are_not_mxidps_are_refused_without_a_lookup() {
    let env = env().await;
    let r = env.request("DEVICE000104").await;
    let tokens = env.tokens(&r).await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    // One character changed: the checksum fails, so the answer needs no store.
    let mut typo = access.to_owned();
    let last = typo.pop().unwrap();
    typo.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(env.introspect(&typo).await, json!({"active": false}));
    let (idp_access, idp_refresh) = env.idp_tokens(access).await;
    assert_eq!(env.introspect(&idp_access).await, json!({"active": false}));
    // The IdP's refresh token is no use at mxidp either, and ends nothing.
    let answer = refresh(&env, &r.client_id, &idp_refresh.unwrap()).await;
    assert_eq!(
        answer.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    // A refresh token is not an access token.
    assert_eq!(
        env.introspect(refresh_token).await,
        json!({"active": false})
    );
    assert_eq!(env.introspect(access).await["active"], true);
}

#[tokio::test]
async fn switching_the_provider_adapter_keeps_users_on_their_accounts() {
    let env = env().await;
    env.tokens(&env.request("DEVICE000105").await).await;
    let upstream_id = env.app.mapping.upstream_id.clone();
    assert_eq!(
        upstream_id,
        env.idp
            .issuer()
            .split_once("://")
            .unwrap()
            .1
            .trim_end_matches('/')
    );
    // Same store, another adapter name: identities are keyed on the upstream id.
    struct Renamed;
    #[async_trait::async_trait]
    impl crate::provider::Provider for Renamed {
        fn name(&self) -> &'static str {
            "keycloak"
        }
    }
    let config = load_config(&config_toml(&env.base, &env.idp, ""));
    let app2 = crate::server::assemble(
        &config,
        env.app.store.clone(),
        Arc::new(env.hs.clone()),
        Arc::new(Renamed),
    )
    .unwrap();
    assert_eq!(app2.mapping.upstream_id, upstream_id);
    let identity = app2
        .store
        .identity_by_subject(&app2.mapping.upstream_id, "alice-sub")
        .await
        .unwrap()
        .expect("alice keeps her identity");
    assert_eq!(identity.localpart, alice());
}

#[tokio::test]
async fn identities_keyed_on_an_adapter_name_move_to_the_upstream_id() {
    let env = env().await;
    let now = crate::ids::now_unix();
    env.app
        .store
        .add_identity(&crate::store::Identity {
            provider: "generic".into(),
            subject: "old-sub".into(),
            localpart: Localpart::parse("olduser").unwrap(),
            created_at: now,
            deleted_at: None,
        })
        .await
        .unwrap();
    let config = load_config(&config_toml(&env.base, &env.idp, ""));
    let moved = crate::server::adopt_upstream_id(env.app.store.as_ref(), &config)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    // A returning user signs in to the same account.
    env.idp
        .set_next_login(json!({"sub": "old-sub", "preferred_username": "someone-else"}));
    let tokens = env.tokens(&env.request("DEVICE000106").await).await;
    assert_eq!(
        env.introspect(tokens["access_token"].as_str().unwrap())
            .await["username"],
        "olduser"
    );
    assert_eq!(
        crate::server::adopt_upstream_id(env.app.store.as_ref(), &config)
            .await
            .unwrap(),
        0,
        "once"
    );
}

#[tokio::test]
async fn claims_only_in_userinfo_sign_in_on_the_default_configuration() {
    let env = env().await;
    env.idp.set_conform_id_token_claims(true);
    let tokens = env.tokens(&env.request("DEVICE000107").await).await;
    let i = env
        .introspect(tokens["access_token"].as_str().unwrap())
        .await;
    assert_eq!(i["username"], "alice");
    assert_eq!(env.idp.userinfo_requests(), 1);
    let user = env.hs.user(&alice()).unwrap();
    assert_eq!(user.display_name.as_deref(), Some("Alice Liddell"));

    // The Matrix token is mxidp's: the IdP's userinfo does not know it.
    let userinfo = env
        .http
        .get(format!(
            "{}/userinfo",
            env.idp.issuer().trim_end_matches('/')
        ))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn auto_userinfo_is_not_asked_when_the_id_token_has_the_claims() {
    let env = env().await;
    env.tokens(&env.request("DEVICE000108").await).await;
    assert_eq!(env.idp.userinfo_requests(), 0);
}

#[tokio::test]
async fn fetch_userinfo_false_refuses_a_sign_in_whose_claims_are_only_in_userinfo() {
    let env = env().await;
    let mut settings = env.idp.upstream_settings();
    settings.client_secret = crate::secret::SecretString::new(CLIENT_SECRET);
    settings.fetch_userinfo = crate::upstream::UserinfoMode::Never;
    env.app.upstream.set(env.idp.upstream_with(settings).await);
    env.idp.set_conform_id_token_claims(true);
    let (page, _) = env.to_callback(&env.request("DEVICE000109").await).await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert!(page.text().await.unwrap().contains("preferred_username"));
    assert_eq!(env.idp.userinfo_requests(), 0);
}

#[tokio::test]
async fn a_client_with_a_long_name_signs_in_with_a_shortened_device_name() {
    let env = env().await;
    let registered = env
        .register(json!({
            "client_name": "N".repeat(150), "client_uri": "https://client.example.org/",
            "redirect_uris": ["https://client.example.org/cb"], "application_type": "web",
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none"
        }))
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let mut r = env.request("DEVICE000110").await;
    r.client_id = registered.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tokens = env.tokens(&r).await;
    assert_eq!(
        env.introspect(tokens["access_token"].as_str().unwrap())
            .await["active"],
        true
    );
    let name = env
        .hs
        .device_display_name(
            &alice(),
            &crate::ids::DeviceId::parse("DEVICE000110").unwrap(),
        )
        .expect("the device has a name");
    assert_eq!(name.chars().count(), 100);
    assert!(name.starts_with("NNNN") && name.ends_with('…'));
}

#[tokio::test]
async fn an_email_synapse_cannot_parse_does_not_block_the_sign_in() {
    let env = env().await;
    env.idp.set_next_login(json!({
        "sub": "alice-sub", "preferred_username": "alice", "name": "Alice Liddell",
        "email": "alice@corp@example.com", "email_verified": true
    }));
    let tokens = env.tokens(&env.request("DEVICE000111").await).await;
    assert_eq!(
        env.introspect(tokens["access_token"].as_str().unwrap())
            .await["username"],
        "alice"
    );
    let user = env.hs.user(&alice()).unwrap();
    assert!(user.emails.is_empty(), "{:?}", user.emails);
    let records = env.app.store.audit_records(0, None, 100).await.unwrap();
    assert!(records.iter().any(|r| r.action == "profile.email_skipped"));
}

#[tokio::test]
async fn authorization_responses_name_the_issuer() {
    let env = env().await;
    // `sign_in` checks `iss` in the client's redirect.
    env.sign_in(&env.request("DEVICE000112").await).await;
    // An error answer carries it too.
    let r = env.request("DEVICE000113").await;
    let (page, cookie) = env.to_callback(&r).await;
    let denied = env.consent(page, &cookie, "deny").await;
    let to: Url = location(&denied).parse().unwrap();
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(q.get("iss").map(String::as_str), Some(env.base.as_str()));
    let metadata: Value = env
        .http
        .get(env.url(".well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["authorization_response_iss_parameter_supported"],
        true
    );
}

fn registration(name: &str) -> Value {
    json!({
        "client_name": name, "client_uri": "https://client.example.org/",
        "redirect_uris": ["https://client.example.org/cb"], "application_type": "web",
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none"
    })
}

#[tokio::test]
async fn registrations_past_the_limit_get_429_with_retry_after() {
    let env = env_with("[limits]\nregistrations_per_window = 2000\nwindow_seconds = 3600").await;
    for i in 0..2000 {
        let r = env.register(registration(&format!("client {i}"))).await;
        assert_eq!(r.status(), StatusCode::CREATED, "registration {i}");
    }
    let over = env.register(registration("one too many")).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: i64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    // The limit is per endpoint: signing in still works.
    env.tokens(&Request {
        client_id: env
            .app
            .store
            .clients(1)
            .await
            .unwrap()
            .remove(0)
            .0
            .client_id,
        redirect_uri: "https://client.example.org/cb".into(),
        scope: device_scope("DEVICE000114"),
        verifier: crate::ids::random_token(32),
        response_mode: None,
    })
    .await;
}

#[tokio::test]
async fn oversized_registrations_get_400_and_store_nothing() {
    let env = env().await;
    // (A 60,000-character name is refused the same way by `registration::validate`; this
    // test server's body limit is 4 KiB, so it would answer 413 before that.)
    let long = env.register(registration(&"x".repeat(300))).await;
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        long.json::<Value>().await.unwrap()["error"],
        "invalid_client_metadata"
    );
    let mut many = registration("many");
    many["redirect_uris"] = json!((0..11)
        .map(|i| format!("https://client.example.org/cb{i}"))
        .collect::<Vec<_>>());
    let many = env.register(many).await;
    assert_eq!(many.status(), StatusCode::BAD_REQUEST);
    assert_eq!(env.app.store.clients(10).await.unwrap().len(), 0);
}

#[tokio::test]
async fn sign_ins_in_progress_are_capped() {
    let env = env_with("[limits]\nmax_pending_authorizations = 2").await;
    let r = env.request("DEVICE000115").await;
    for _ in 0..2 {
        let started = env
            .http
            .get(env.authorize_url(&r, &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), StatusCode::SEE_OTHER);
    }
    let third = env
        .http
        .get(env.authorize_url(&r, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        env.app
            .store
            .pending_count(crate::ids::now_unix())
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn registrations_never_used_are_pruned_and_used_ones_kept() {
    let env = env().await;
    let used = env.request("DEVICE000116").await;
    env.tokens(&used).await;
    let unused = env.register(registration("never used")).await;
    assert_eq!(unused.status(), StatusCode::CREATED);
    assert_eq!(env.app.store.clients(10).await.unwrap().len(), 2);
    // Within the default day nothing goes; after it, only the unused one.
    crate::server::prune_once(&env.app, crate::ids::now_unix() + 3600).await;
    assert_eq!(env.app.store.clients(10).await.unwrap().len(), 2);
    crate::server::prune_once(&env.app, crate::ids::now_unix() + 2 * 86_400).await;
    let left = env.app.store.clients(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0.client_id, used.client_id);
}

#[tokio::test]
async fn a_refused_or_denied_sign_in_hands_the_idp_tokens_back() {
    // Refused by the access policy after the IdP signed the user in.
    let env = env_with("[policy]\naccess = { claim = \"groups\", value = \"matrix-users\" }").await;
    let (page, _) = env.to_callback(&env.request("DEVICE000117").await).await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        env.idp.revoked_tokens().len(),
        1,
        "the IdP grant is revoked"
    );

    // Denied by the user on the consent page.
    let denying = self::env().await;
    let r = denying.request("DEVICE000118").await;
    let (page, cookie) = denying.to_callback(&r).await;
    let denied = denying.consent(page, &cookie, "deny").await;
    assert_eq!(denied.status(), StatusCode::SEE_OTHER);
    assert_eq!(denying.idp.revoked_tokens().len(), 1);
    assert_eq!(
        denying.idp.revoked_tokens()[0].token_type_hint.as_deref(),
        Some("refresh_token")
    );
}

#[tokio::test]
async fn a_profile_the_homeserver_refuses_does_not_block_the_sign_in() {
    let env = env().await;
    env.hs.set_refuse_profiles(true);
    let tokens = env.tokens(&env.request("DEVICE000119").await).await;
    assert_eq!(
        env.introspect(tokens["access_token"].as_str().unwrap())
            .await["username"],
        "alice"
    );
    let user = env
        .hs
        .user(&alice())
        .expect("provisioned without the profile");
    assert_ne!(user.display_name.as_deref(), Some("Alice Liddell"));
    let records = env.app.store.audit_records(0, None, 100).await.unwrap();
    assert!(records.iter().any(|r| r.action == "profile.skipped"));
}

#[tokio::test]
async fn a_homeserver_refusal_is_shown_for_what_it_is() {
    let env = env().await;
    // The localpart was free at the callback, then an account Synapse holds for someone else
    // appears before consent: the account itself is refused, and the page says so.
    let r = env.request("DEVICE000120").await;
    let (page, cookie) = env.to_callback(&r).await;
    env.hs.mark_taken("alice");
    let done = env.consent(page, &cookie, "allow").await;
    let status = done.status();
    let text = done.text().await.unwrap();
    assert!(
        status == StatusCode::FORBIDDEN && text.contains("refused"),
        "{status} {text}"
    );
    assert!(!text.contains("unavailable"), "{text}");
}

#[tokio::test]
async fn a_sign_in_left_at_the_consent_page_hands_the_idp_tokens_back_when_it_expires() {
    let env = env().await;
    let (page, _) = env.to_callback(&env.request("DEVICE000121").await).await;
    assert_eq!(page.status(), StatusCode::OK, "the consent page");
    crate::server::prune_once(&env.app, crate::ids::now_unix() + 60).await;
    assert!(env.idp.revoked_tokens().is_empty(), "not expired yet");
    crate::server::prune_once(&env.app, crate::ids::now_unix() + 3_600).await;
    assert_eq!(env.idp.revoked_tokens().len(), 1);
    assert_eq!(
        env.app
            .store
            .pending_count(crate::ids::now_unix())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn an_idp_revocation_that_fails_stays_due_and_is_done_once_the_idp_answers() {
    let env = env().await;
    let tokens = env.tokens(&env.request("DEVICE000041").await).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (_, idp_refresh) = env.idp_tokens(access).await;
    let (_, session) = env
        .app
        .store
        .token(TokenHash::of(access))
        .await
        .unwrap()
        .unwrap();
    env.idp.fail_revocation(true);
    let revoked = env
        .http
        .post(env.url("oauth2/revoke"))
        .form(&[("token", access), ("client_id", &session.client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    env.settle().await;
    // Over for Matrix at once; at the IdP, still to do: the sealed tokens stay with the session.
    assert_eq!(env.introspect(access).await, json!({"active": false}));
    assert!(env.revoked_at_idp().is_empty());
    let stored = env.app.store.session(&session.id).await.unwrap().unwrap();
    assert!(stored.sealed_refresh_token.is_some());
    let now = crate::ids::now_unix();
    assert_eq!(
        crate::sessions::revoke_due(&env.app, now).await.unwrap(),
        0,
        "the retry waits for its back-off"
    );

    // The IdP is back; the next due round (here: an hour later) revokes, once.
    env.idp.fail_revocation(false);
    assert_eq!(
        crate::sessions::revoke_due(&env.app, now + 3_600)
            .await
            .unwrap(),
        1
    );
    assert_eq!(env.revoked_at_idp(), vec![idp_refresh.unwrap()]);
    let stored = env.app.store.session(&session.id).await.unwrap().unwrap();
    assert!(stored.sealed_refresh_token.is_none() && stored.sealed_access_token.is_none());
    assert_eq!(
        crate::sessions::revoke_due(&env.app, now + 7_200)
            .await
            .unwrap(),
        0
    );
    let records = env.app.store.audit_records(0, None, 100).await.unwrap();
    let revocations: Vec<_> = records
        .iter()
        .filter(|r| r.action == "idp.tokens_revoked")
        .collect();
    assert_eq!(revocations.len(), 1, "{records:?}");
    assert_eq!(revocations[0].outcome, "ok");
    assert_eq!(revocations[0].target, session.id.as_str());
}

#[tokio::test]
async fn a_session_ended_by_a_crash_before_revocation_is_revoked_by_the_next_round() {
    let env = env().await;
    let tokens = env.tokens(&env.request("DEVICE000042").await).await;
    let access = tokens["access_token"].as_str().unwrap();
    let (_, idp_refresh) = env.idp_tokens(access).await;
    let (_, session) = env
        .app
        .store
        .token(TokenHash::of(access))
        .await
        .unwrap()
        .unwrap();
    // What a crash right after the store's end leaves: ended, nothing asked of the IdP.
    let ended_at = crate::ids::now_unix() - 60;
    env.app
        .store
        .end_session(
            &session.id,
            "crash test",
            ended_at,
            &crate::audit::AuditEntry::for_test("session.ended"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        crate::sessions::revoke_due(&env.app, crate::ids::now_unix())
            .await
            .unwrap(),
        1
    );
    assert_eq!(env.revoked_at_idp(), vec![idp_refresh.unwrap()]);
}

#[tokio::test]
async fn introspect_revalidation_keeps_to_its_budget_and_pauses_on_the_idps_429() {
    let env = env_with(
        "revalidation = \"introspect\"\nrevalidation_cache_seconds = 1\nrevalidation_max_per_minute = 2",
    )
    .await;
    let mut accesses = Vec::new();
    for device in ["DEVICE000051", "DEVICE000052", "DEVICE000053"] {
        let tokens = env.tokens(&env.request(device).await).await;
        accesses.push(tokens["access_token"].as_str().unwrap().to_owned());
    }
    let asked = || env.idp.introspection_requests().len();
    for access in &accesses {
        assert_eq!(env.introspect(access).await["active"], true);
    }
    assert!(until_with_pipeline(&env, || async { asked() == 2 }).await);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(asked(), 2, "the third token waits for the next minute");

    // A 429 with Okta's reset header: nothing more is asked until then, whatever the budget.
    let env = env_with("revalidation = \"introspect\"\nrevalidation_cache_seconds = 1").await;
    let tokens = env.tokens(&env.request("DEVICE000054").await).await;
    let first = tokens["access_token"].as_str().unwrap().to_owned();
    let tokens = env.tokens(&env.request("DEVICE000055").await).await;
    let second = tokens["access_token"].as_str().unwrap().to_owned();
    env.idp
        .rate_limit_introspection(Some(crate::ids::now_unix() + 120));
    assert_eq!(env.introspect(&first).await["active"], true);
    let asked = || env.idp.introspection_requests().len();
    assert!(until_with_pipeline(&env, || async { asked() == 1 }).await);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(env.introspect(&second).await["active"], true);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(asked(), 1, "paused until the IdP's reset");
    // A rate limit is no verdict: both sessions stay.
    assert_eq!(env.introspect(&first).await["active"], true);
}
