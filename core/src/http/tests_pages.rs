//! The pages as a user's browser gets them: who asks (the verified host, the "not verified"
//! mark), the post/redirect/get consent page, the headers every page carries, and the
//! reference an error page gives, which is the one in the log.

use std::sync::{Arc, Mutex};

use super::*;

/// The `<h1>` of a page.
fn heading(html: &str) -> &str {
    let start = html.find("<h1>").expect("a heading") + 4;
    let end = html[start..].find("</h1>").unwrap() + start;
    &html[start..end]
}

impl Env {
    async fn web_client_named(&self, name: &str, host: &str) -> Request {
        let r = self
            .register(json!({
                "client_name": name,
                "client_uri": format!("https://{host}/"),
                "redirect_uris": [format!("https://{host}/cb")],
                "token_endpoint_auth_method": "none"
            }))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        Request {
            client_id: r.json::<Value>().await.unwrap()["client_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            redirect_uri: format!("https://{host}/cb"),
            scope: device_scope("DEVICE000301"),
            verifier: crate::ids::random_token(32),
            response_mode: None,
        }
    }
}

#[tokio::test]
async fn the_heading_names_the_host_the_answer_goes_to() {
    let env = env().await;
    let r = env.web_client_named("Element", "evil.example.test").await;
    let (page, _) = env.to_callback(&r).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let h1 = heading(&html);
    assert!(
        h1.contains("<strong class=\"client-name\">Element</strong>"),
        "{h1}"
    );
    assert!(h1.contains("(evil.example.test)"), "{h1}");
    assert!(!h1.contains("not verified"), "{h1}");
    // The client's link opens in a new tab, so the consent page stays where it is.
    assert!(html.contains(
        "href=\"https://evil.example.test/\" target=\"_blank\" rel=\"noopener noreferrer\""
    ));
    assert!(html.contains("<title>Allow Element to use your account?"));
}

#[tokio::test]
async fn a_native_clients_name_is_marked_not_verified_and_its_claimed_site_is_no_link() {
    let env = env().await;
    let r = env.native_request("DEVICE000302").await;
    let (page, _) = env.to_callback(&r).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(heading(&html).contains("name not verified"), "{html}");
    assert!(html.contains("its name is not verified"), "{html}");
    assert!(html.contains("says it comes from <span class=\"claimed\">app.element.io</span>"));
    assert!(!html.contains("href=\"https://app.element.io/"), "{html}");
}

#[tokio::test]
async fn a_long_name_is_shortened_with_the_full_name_in_a_title() {
    let env = env().await;
    let name = "W".repeat(200);
    let r = env.web_client_named(&name, "client.example.org").await;
    let (page, _) = env.to_callback(&r).await;
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("title=\"{name}\"")));
    let shown = format!("{}…</strong>", "W".repeat(39));
    assert!(heading(&html).contains(&shown), "{html}");
}

#[tokio::test]
async fn the_consent_page_can_be_reloaded_until_the_user_answers_and_only_in_its_browser() {
    let env = env().await;
    let r = env.request("DEVICE000303").await;
    let start = env
        .http
        .get(env.authorize_url(&r, &[]))
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
    let back = env.http.get(location(&start)).send().await.unwrap();
    let callback = location(&back);
    let answer = env
        .http
        .get(&callback)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    // Post/redirect/get: the IdP's code and state leave the address bar.
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let consent = location(&answer);
    assert!(
        consent.starts_with(env.url("consent?pending=").as_str()),
        "{consent}"
    );
    let get = |cookie: String| {
        let consent = consent.clone();
        let http = env.http.clone();
        async move {
            http.get(consent)
                .header(COOKIE, cookie)
                .send()
                .await
                .unwrap()
        }
    };
    // Reload, as often as the user likes.
    for _ in 0..2 {
        let page = get(cookie.clone()).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.text().await.unwrap().contains("Allow"));
    }
    // The callback URL again (a reload before the redirect landed) leads to the same page.
    let again = env
        .http
        .get(&callback)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&again), consent);
    // Another browser does not get it.
    let other = get("mxidp_binding=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()).await;
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
    let html = other.text().await.unwrap();
    assert!(!html.contains("name=\"csrf\""), "{html}");
    // The page names the app and says what to do.
    assert!(
        html.contains("This sign-in to Test Client was started in another browser"),
        "{html}"
    );
    // Answered: the page says so and offers no second answer.
    let page = get(cookie.clone()).await;
    let done = env.consent(page, &cookie, "allow").await;
    assert!(location(&done).contains("code="));
    let after = get(cookie.clone()).await;
    assert_eq!(after.status(), StatusCode::OK);
    let html = after.text().await.unwrap();
    assert!(html.contains("already"), "{html}");
    assert!(!html.contains("name=\"csrf\""), "{html}");
}

fn assert_page_headers(r: &reqwest::Response, what: &str) {
    let h = r.headers();
    let get = |name: &str| {
        h.get(name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    let csp = get("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(get("cache-control"), "no-store", "{what}");
    assert!(get("content-type").starts_with("text/html"), "{what}");
}

#[tokio::test]
async fn every_page_carries_the_security_headers() {
    let env = env().await;
    // The consent page.
    let r = env.request("DEVICE000304").await;
    let (consent, cookie) = env.to_callback(&r).await;
    assert_page_headers(&consent, "consent page");
    // The answer refused (no CSRF token).
    let refused = env
        .http
        .post(env.url("consent"))
        .header(COOKIE, &cookie)
        .form(&[("pending", "x")])
        .send()
        .await
        .unwrap();
    assert_page_headers(&refused, "refused answer");
    let text = refused.text().await.unwrap();
    assert!(!text.contains("missing field"), "{text}");
    // Error pages at /authorize and at the callback.
    let unknown = env
        .http
        .get(env.url("oauth2/authorize?client_id=nobody"))
        .send()
        .await
        .unwrap();
    assert_page_headers(&unknown, "unknown client");
    let callback = env
        .http
        .get(env.url("upstream/callback?state=forged"))
        .send()
        .await
        .unwrap();
    assert_page_headers(&callback, "callback error");
    // The account page and the cross-signing reset confirmation.
    let account = env.http.get(env.url("account")).send().await.unwrap();
    assert_page_headers(&account, "account page");
    let (start, cookie) = env.start_cross_signing_reset().await;
    let back = env.http.get(location(&start)).send().await.unwrap();
    let confirm = env.back_at_mxidp(&location(&back), &cookie).await;
    assert_page_headers(&confirm, "confirmation page");
}

#[tokio::test]
async fn branding_is_shown_on_every_page() {
    let env = env_with(
        "[branding]\ndisplay_name = \"Example Corp\"\nsupport_url = \"mailto:help@example.org\"\nterms_url = \"https://example.org/terms\"",
    )
    .await;
    for path in ["account", "oauth2/authorize?client_id=nobody"] {
        let html = env
            .http
            .get(env.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            html.contains("<span class=\"server\">Example Corp</span>"),
            "{path}"
        );
        assert!(html.contains("href=\"mailto:help@example.org\""), "{path}");
        assert!(
            html.contains("href=\"https://example.org/terms\""),
            "{path}"
        );
    }
    // Unset, the pages name the Matrix server.
    let plain = env_with("").await;
    let html = plain.http.get(plain.url("account")).send().await.unwrap();
    assert!(html
        .text()
        .await
        .unwrap()
        .contains("<span class=\"server\">example.org</span>"));
}

/// What the log received, for the test that reads it.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn reference(html: &str) -> String {
    let marker = "<code class=\"reference\">";
    let start = html.find(marker).expect("a reference") + marker.len();
    html[start..].split('<').next().unwrap().to_owned()
}

/// The log of this test binary. Global, not a scoped subscriber: tracing caches per call site
/// whether anyone listens, and tests on other threads would race a thread-local one.
fn captured_log() -> &'static CapturedLog {
    static LOG: std::sync::OnceLock<CapturedLog> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = CapturedLog::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the unit tests");
        log
    })
}

#[tokio::test]
async fn an_error_pages_reference_is_the_one_in_the_log() {
    let log = captured_log();
    let env = env().await;

    // A page in plain words (a duplicate parameter), no parser message.
    let dup = env
        .http
        .get(env.url("oauth2/authorize?client_id=a&client_id=b"))
        .send()
        .await
        .unwrap();
    let html = dup.text().await.unwrap();
    assert!(!html.contains("duplicate field"), "{html}");
    let id = reference(&html);
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains(&format!("error_id={id}"))),
        "{id} not in the log:\n{logged}"
    );

    // An internal failure: the homeserver refuses the account; the page's reference is the
    // one logged with the cause.
    let r = env.request("DEVICE000305").await;
    let (page, cookie) = env.to_callback(&r).await;
    env.hs.mark_taken("alice");
    let refused = env.consent(page, &cookie, "allow").await;
    let html = refused.text().await.unwrap();
    let id = reference(&html);
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains(&format!("error_id={id}")) && l.contains("provision user refused")),
        "{id} not in the log:\n{logged}"
    );
}

#[tokio::test]
async fn use_another_account_starts_the_same_request_over_at_the_idp() {
    let env = env().await;
    let r = env.request("DEVICE000306").await;
    let (page, cookie) = env.to_callback(&r).await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Not @alice:example.org?"), "{html}");
    let old_pending = hidden(&html, "pending");
    let switch = env.consent_html(&html, &cookie, "switch").await;
    assert_eq!(switch.status(), StatusCode::SEE_OTHER);
    let at_idp: Url = location(&switch).parse().unwrap();
    assert!(at_idp.as_str().starts_with(env.idp.issuer()), "{at_idp}");
    assert!(at_idp
        .query_pairs()
        .any(|(k, v)| k == "prompt" && v == "login"));
    // The first sign-in is over, and its IdP tokens went back.
    assert!(env.app.store.pending(&old_pending).await.unwrap().is_none());
    assert_eq!(env.revoked_at_idp().len(), 1);

    env.idp
        .set_next_login(json!({"sub": "bob-sub", "preferred_username": "bob"}));
    let back = env.http.get(at_idp).send().await.unwrap();
    let page = env.back_at_mxidp(&location(&back), &cookie).await;
    let done = env.consent(page, &cookie, "allow").await;
    let to: Url = location(&done).parse().unwrap();
    let code = to
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let tokens: Value = env.exchange(&r, &code).await.json().await.unwrap();
    let i = env
        .introspect(tokens["access_token"].as_str().unwrap())
        .await;
    assert_eq!(i["username"], "bob", "{i}");
}
