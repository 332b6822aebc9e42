//! Headless Chromium driven over the Chrome DevTools Protocol (CDP), for the tests that need a
//! real browser: layout (does the page scroll sideways?), history (reload, Back), screenshots.
//!
//! One browser per [`Chromium`], with a fresh profile in a temporary directory, killed on drop.
//! Requests to the client's redirect URI (an https host that does not exist) are intercepted and
//! answered with a small page, so a sign-in can end at the client and the test reads the code or
//! the error from the address bar.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian installs it (`apt-get install chromium`; `.ci/run` does).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one wait may take before the test fails (a hung browser, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(60);

type Replies = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Chromium {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    to_browser: mpsc::UnboundedSender<Message>,
    replies: Replies,
    next_id: Arc<AtomicU64>,
}

/// One tab, attached with its own CDP session.
pub struct Tab<'a> {
    browser: &'a Chromium,
    session: String,
}

impl Chromium {
    /// Starts the browser. Fails the test, saying what to do, when Chromium is not installed:
    /// a browser test never passes by skipping.
    pub async fn start() -> Self {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_owned());
        assert!(
            std::path::Path::new(&binary).exists(),
            "headless Chromium is required for this test and is not at {binary}: \
             apt-get install -y --no-install-recommends chromium (.ci/run installs it), \
             or set CHROMIUM to its path"
        );
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut child = tokio::process::Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {binary}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ws_url = tokio::time::timeout(PATIENCE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("Chromium exited without opening its DevTools port");
        })
        .await
        .expect("Chromium did not open its DevTools port");
        // Keep draining stderr so that the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (socket, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("connect to Chromium's DevTools");
        let (mut sink, mut stream) = socket.split();
        let (to_browser, mut outgoing) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let replies: Replies = Arc::default();
        let next_id = Arc::new(AtomicU64::new(1));
        let (routes, sender, ids) = (replies.clone(), to_browser.clone(), next_id.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = value.get("id").and_then(Value::as_u64) {
                    if let Some(reply) = routes.lock().unwrap().remove(&id) {
                        let _ = reply.send(value);
                    }
                } else if value["method"] == "Fetch.requestPaused" {
                    // The client's redirect URI: answer for the client, keep the URL in the
                    // address bar for the test to read.
                    let body = base64::engine::general_purpose::STANDARD
                        .encode("<!doctype html><title>client</title><p>the client");
                    let command = json!({
                        "id": ids.fetch_add(1, Ordering::SeqCst),
                        "sessionId": value["sessionId"],
                        "method": "Fetch.fulfillRequest",
                        "params": {
                            "requestId": value["params"]["requestId"],
                            "responseCode": 200,
                            "responseHeaders": [{"name": "Content-Type", "value": "text/html"}],
                            "body": body,
                        }
                    });
                    let _ = sender.send(Message::text(command.to_string()));
                }
            }
        });
        Self {
            _child: child,
            _profile: profile,
            to_browser,
            replies,
            next_id,
        }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().unwrap().insert(id, tx);
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.to_browser
            .send(Message::text(command.to_string()))
            .expect("the DevTools connection is open");
        let reply = tokio::time::timeout(PATIENCE, rx)
            .await
            .unwrap_or_else(|_| panic!("no answer from Chromium to {method}"))
            .expect("Chromium answered");
        if let Some(error) = reply.get("error") {
            panic!("{method} failed: {error}");
        }
        reply["result"].clone()
    }

    /// A new tab of `width` × `height` CSS pixels (a phone when `mobile`), in which requests
    /// to `https://{intercepted_host}/` are answered by the test.
    pub async fn tab(
        &self,
        width: u32,
        height: u32,
        mobile: bool,
        intercepted_host: &str,
    ) -> Tab<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let tab = Tab {
            browser: self,
            session: attached["sessionId"].as_str().unwrap().to_owned(),
        };
        tab.call("Page.enable", json!({})).await;
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        tab.call(
            "Fetch.enable",
            json!({ "patterns": [{ "urlPattern": format!("https://{intercepted_host}/*") }] }),
        )
        .await;
        tab
    }
}

impl Tab<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `condition` (JavaScript) holds in a fully loaded page.
    pub async fn wait_for(&self, condition: &str) {
        let check = format!("document.readyState === 'complete' && !!({condition})");
        let result = tokio::time::timeout(PATIENCE, async {
            loop {
                let r = self
                    .call(
                        "Runtime.evaluate",
                        json!({ "expression": check, "returnByValue": true }),
                    )
                    .await;
                if r["result"]["value"] == json!(true) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if result.is_err() {
            let url = self.url().await;
            panic!("the page at {url} never satisfied {condition}");
        }
    }

    pub async fn url(&self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Opens `url` and waits until the browser lands on a URL starting with `lands_on`
    /// (redirects followed).
    pub async fn open(&self, url: &str, lands_on: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for(&format!("location.href.startsWith({})", json!(lands_on)))
            .await;
    }

    /// Clicks the element `selector` names and waits for the next page at `lands_on`.
    pub async fn click(&self, selector: &str, lands_on: &str) {
        self.eval(&format!(
            "window.__before_click = 1; document.querySelector({}).click()",
            json!(selector)
        ))
        .await;
        self.wait_for(&format!(
            "window.__before_click === undefined && location.href.startsWith({})",
            json!(lands_on)
        ))
        .await;
    }

    /// Reloads the page and waits until the new document is loaded.
    pub async fn reload(&self) {
        self.eval("window.__before_reload = 1").await;
        self.call("Page.reload", json!({})).await;
        self.wait_for("window.__before_reload === undefined").await;
    }

    /// The browser's Back button; waits for the previous entry at `lands_on`.
    pub async fn back(&self, lands_on: &str) {
        let history = self.call("Page.getNavigationHistory", json!({})).await;
        let current = history["currentIndex"].as_u64().unwrap() as usize;
        assert!(current > 0, "no page to go back to");
        let entry = &history["entries"][current - 1];
        self.eval("window.__before_back = 1").await;
        self.call(
            "Page.navigateToHistoryEntry",
            json!({ "entryId": entry["id"] }),
        )
        .await;
        self.wait_for(&format!(
            "window.__before_back === undefined && location.href.startsWith({})",
            json!(lands_on)
        ))
        .await;
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.eval("document.body.innerText")
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Whether the page is wider than the window (sideways scrolling).
    pub async fn scrolls_sideways(&self) -> bool {
        self.eval("document.documentElement.scrollWidth > window.innerWidth")
            .await
            .as_bool()
            .unwrap()
    }

    /// Saves a PNG of the whole page under `target/screenshots/`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// `target/screenshots` (or `$CARGO_TARGET_DIR/screenshots`).
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("screenshots")
}
