//! A headless "browser" for OAuth/OIDC login flows: follows redirects by hand (keeping
//! cookies), fills the IdP's login form, answers other pages (consent) through a hook, and stops
//! at the redirect to the client's `redirect_uri` without fetching it.
//!
//! Meant for both the IdP alone (IdP `/auth` → login form → client) and the full mxidp path
//! (mxidp `/authorize` → IdP login → mxidp callback → mxidp consent page → client).

use std::fmt;

use reqwest::{Method, StatusCode};
use url::Url;

/// A `reqwest::Client` that behaves like a browser for our purposes: cookie store on,
/// redirects NOT followed (the flow inspects every hop).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("build reqwest client")
}

/// An HTML page the flow landed on.
#[derive(Clone, Debug)]
pub struct Page {
    pub url: Url,
    pub status: StatusCode,
    pub body: String,
    pub forms: Vec<Form>,
}

impl Page {
    /// The first form having a field or button called `name`.
    pub fn form_with(&self, name: &str) -> Option<&Form> {
        self.forms
            .iter()
            .find(|f| f.has_field(name) || f.buttons.iter().any(|b| b.name == name))
    }
}

impl fmt::Display for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}\n{}", self.status, self.url, self.body)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Form {
    pub id: Option<String>,
    /// Raw `action` attribute (None or empty = the page's own URL).
    pub action: Option<String>,
    /// Upper-case, `GET` when absent.
    pub method: String,
    /// Inputs with a name (hidden, text, password, checked checkboxes, …), in document order.
    pub fields: Vec<Field>,
    /// Named submit buttons (`<button name value>`, `<input type=submit name value>`), including
    /// those outside the form that point to it with `form="<id>"`.
    pub buttons: Vec<Field>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
    /// `type` attribute, lower-case (`button` for buttons).
    pub kind: String,
}

impl Form {
    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.as_str())
    }

    /// The form's URL, resolved against the page URL.
    pub fn action_url(&self, page_url: &Url) -> Url {
        match self.action.as_deref() {
            None | Some("") => page_url.clone(),
            Some(a) => page_url
                .join(a)
                .unwrap_or_else(|e| panic!("bad form action {a:?}: {e}")),
        }
    }

    /// Submits the form's fields, with `overrides` replacing (or adding) values. To press a
    /// named button, pass its name and value as an override.
    pub fn submission(&self, page_url: &Url, overrides: &[(&str, &str)]) -> Submission {
        let mut fields: Vec<(String, String)> = self
            .fields
            .iter()
            .filter(|f| !overrides.iter().any(|(n, _)| *n == f.name))
            .map(|f| (f.name.clone(), f.value.clone()))
            .collect();
        fields.extend(
            overrides
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        Submission {
            method: if self.method == "POST" {
                Method::POST
            } else {
                Method::GET
            },
            url: self.action_url(page_url),
            fields,
        }
    }
}

/// What the flow should send next.
#[derive(Clone, Debug)]
pub struct Submission {
    pub method: Method,
    pub url: Url,
    /// Form fields (POST body, or query for GET).
    pub fields: Vec<(String, String)>,
}

/// Answers a page the flow does not recognise (e.g. mxidp's consent page). Return `None` to
/// fall back to the defaults (login form filling, then [`approve_consent`]).
pub type PageHandler = Box<dyn FnMut(&Page) -> Option<Submission> + Send>;

pub struct LoginOptions {
    pub username: String,
    /// Sent in a `password` field if the login form has one (empty string when None).
    pub password: Option<String>,
    /// Stop at the first redirect whose target starts with this. Default: the `redirect_uri`
    /// query parameter of the start URL.
    pub redirect_uri: Option<String>,
    /// Called for every HTML page before the defaults.
    pub on_page: Option<PageHandler>,
    pub max_steps: usize,
}

impl LoginOptions {
    pub fn new(username: &str) -> Self {
        Self {
            username: username.to_owned(),
            password: None,
            redirect_uri: None,
            on_page: None,
            max_steps: 25,
        }
    }

    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    pub fn redirect_uri(mut self, redirect_uri: &str) -> Self {
        self.redirect_uri = Some(redirect_uri.to_owned());
        self
    }

    pub fn on_page(
        mut self,
        handler: impl FnMut(&Page) -> Option<Submission> + Send + 'static,
    ) -> Self {
        self.on_page = Some(Box::new(handler));
        self
    }
}

/// The result of a flow: the redirect to the client, and what happened on the way.
#[derive(Debug)]
pub struct Journey {
    /// The `Location` that points at the client's redirect URI (not fetched).
    pub final_url: Url,
    /// Every URL requested, in order (method + URL).
    pub requests: Vec<String>,
    /// Every HTML page seen (login form, consent, …).
    pub pages: Vec<Page>,
}

/// Login names the login form's user field may have (oidc-provider test IdP: `login`;
/// Keycloak: `username`; ZITADEL: `loginName`).
const USER_FIELDS: &[&str] = &["login", "username", "email", "loginName"];

/// Walks from `start_url` (an authorization URL) to the redirect to the client, logging in as
/// `username`; returns that final redirect URL (with `code`/`state` or `error`).
pub async fn login_at_idp(client: &reqwest::Client, start_url: Url, username: &str) -> Url {
    login(client, start_url, LoginOptions::new(username))
        .await
        .final_url
}

/// General form of [`login_at_idp`].
pub async fn login(client: &reqwest::Client, start_url: Url, mut opts: LoginOptions) -> Journey {
    let stop_prefix = opts
        .redirect_uri
        .clone()
        .or_else(|| super::query_param(&start_url, "redirect_uri"))
        .unwrap_or_else(|| {
            panic!("no redirect_uri in {start_url} and none in LoginOptions: where to stop?")
        });
    let mut journey = Journey {
        final_url: start_url.clone(),
        requests: Vec::new(),
        pages: Vec::new(),
    };
    let mut next = Submission {
        method: Method::GET,
        url: start_url,
        fields: Vec::new(),
    };
    for _ in 0..opts.max_steps {
        if next.url.as_str().starts_with(&stop_prefix) {
            // e.g. an auto-submitting form_post page: hand its fields over as a query.
            let mut url = next.url.clone();
            if !next.fields.is_empty() {
                url.query_pairs_mut().extend_pairs(&next.fields);
            }
            journey.final_url = url;
            return journey;
        }
        journey
            .requests
            .push(format!("{} {}", next.method, next.url));
        let response = send(client, &next).await;
        let url = next.url.clone();
        let status = response.status();
        if status.is_redirection() {
            let location = location(&response, &url);
            if location.as_str().starts_with(&stop_prefix) {
                journey.final_url = location;
                return journey;
            }
            next = Submission {
                method: Method::GET,
                url: location,
                fields: Vec::new(),
            };
            continue;
        }
        let body = response.text().await.unwrap_or_default();
        let page = Page {
            forms: parse_forms(&body),
            url,
            status,
            body,
        };
        if !status.is_success() {
            panic!(
                "login flow hit an error page.\nrequests so far:\n  {}\npage: {page}",
                journey.requests.join("\n  ")
            );
        }
        let answer = opts
            .on_page
            .as_mut()
            .and_then(|handler| handler(&page))
            .or_else(|| fill_login_form(&page, &opts.username, opts.password.as_deref()))
            .or_else(|| approve_consent(&page));
        let Some(answer) = answer else {
            panic!(
                "login flow: don't know how to answer this page.\nrequests so far:\n  {}\npage: {page}",
                journey.requests.join("\n  ")
            );
        };
        journey.pages.push(page);
        next = answer;
    }
    panic!(
        "login flow did not reach {stop_prefix} within {} steps:\n  {}",
        opts.max_steps,
        journey.requests.join("\n  ")
    );
}

/// Fills and submits the first form with a user field (`login`/`username`/`email`).
pub fn fill_login_form(page: &Page, username: &str, password: Option<&str>) -> Option<Submission> {
    let (form, user_field) = page.forms.iter().find_map(|form| {
        USER_FIELDS
            .iter()
            .find(|n| form.has_field(n))
            .map(|n| (form, *n))
    })?;
    let mut overrides = vec![(user_field, username)];
    if form.has_field("password") {
        overrides.push(("password", password.unwrap_or("")));
    }
    Some(form.submission(&page.url, &overrides))
}

/// Default consent answer: the first POST form with a button or field whose value looks like
/// approval (`allow`, `accept`, `approve`, `consent`, `confirm`, `yes`, `continue`), pressing
/// that button; else a page with exactly one POST form, submitted as is.
pub fn approve_consent(page: &Page) -> Option<Submission> {
    const YES: &[&str] = &[
        "allow", "accept", "approve", "consent", "confirm", "yes", "continue", "grant",
    ];
    let looks_yes = |v: &str| {
        let v = v.to_ascii_lowercase();
        YES.iter().any(|y| v.contains(y))
    };
    let post_forms: Vec<&Form> = page.forms.iter().filter(|f| f.method == "POST").collect();
    for form in &post_forms {
        if let Some(button) = form.buttons.iter().find(|b| looks_yes(&b.value)) {
            return Some(form.submission(&page.url, &[(&button.name, &button.value)]));
        }
    }
    if post_forms.len() == 1 {
        return Some(post_forms[0].submission(&page.url, &[]));
    }
    None
}

/// RP-initiated logout at an oidc-provider-style `end_session_endpoint`: GETs `end_session_url`
/// (with `id_token_hint`, `post_logout_redirect_uri`, … already in it), confirms the logout
/// form (`logout=yes`), and follows redirects until one leaves the IdP's origin (returned, not
/// fetched) or a final page is reached (its URL is returned).
pub async fn logout_at_idp(client: &reqwest::Client, end_session_url: Url) -> Url {
    let origin = end_session_url.origin();
    let mut next = Submission {
        method: Method::GET,
        url: end_session_url,
        fields: Vec::new(),
    };
    let mut confirmed = false;
    for _ in 0..10 {
        let response = send(client, &next).await;
        let url = next.url.clone();
        if response.status().is_redirection() {
            let location = location(&response, &url);
            if location.origin() != origin {
                return location;
            }
            next = Submission {
                method: Method::GET,
                url: location,
                fields: Vec::new(),
            };
            continue;
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "logout failed: {status} {url}\n{body}");
        if confirmed {
            return url;
        }
        let forms = parse_forms(&body);
        let Some(form) = forms.iter().find(|f| f.has_field("xsrf")) else {
            return url;
        };
        next = form.submission(&url, &[("logout", "yes")]);
        confirmed = true;
    }
    panic!("logout did not finish within 10 steps");
}

async fn send(client: &reqwest::Client, s: &Submission) -> reqwest::Response {
    let request = if s.method == Method::POST {
        client.post(s.url.clone()).form(&s.fields)
    } else if s.fields.is_empty() {
        client.get(s.url.clone())
    } else {
        let mut url = s.url.clone();
        url.query_pairs_mut().extend_pairs(&s.fields);
        client.get(url)
    };
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", s.method, s.url))
}

fn location(response: &reqwest::Response, base: &Url) -> Url {
    let raw = response
        .headers()
        .get(reqwest::header::LOCATION)
        .unwrap_or_else(|| panic!("{} from {base} without Location", response.status()))
        .to_str()
        .expect("ASCII Location");
    base.join(raw)
        .unwrap_or_else(|e| panic!("bad Location {raw:?}: {e}"))
}

// ---- a minimal HTML form scanner ---------------------------------------------------------------

struct Tag {
    name: String,
    closing: bool,
    attrs: Vec<(String, String)>,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Extracts forms (fields and named buttons) from an HTML document. Handles quoted and
/// unquoted attributes, entities in attribute values, and `form="<id>"` owners.
pub fn parse_forms(html: &str) -> Vec<Form> {
    let mut forms: Vec<Form> = Vec::new();
    let mut current: Option<usize> = None;
    // (form id, is button, field) for elements owned by a form through `form=`.
    let mut detached: Vec<(String, bool, Field)> = Vec::new();
    for tag in scan_tags(html) {
        match (tag.name.as_str(), tag.closing) {
            ("form", false) => {
                forms.push(Form {
                    id: tag.attr("id").map(str::to_owned),
                    action: tag.attr("action").map(str::to_owned),
                    method: tag.attr("method").unwrap_or("get").to_ascii_uppercase(),
                    fields: Vec::new(),
                    buttons: Vec::new(),
                });
                current = Some(forms.len() - 1);
            }
            ("form", true) => current = None,
            ("input" | "button" | "textarea" | "select", false) => {
                let Some(name) = tag.attr("name").filter(|n| !n.is_empty()) else {
                    continue;
                };
                let kind = match tag.name.as_str() {
                    "button" => "button".to_owned(),
                    "input" => tag.attr("type").unwrap_or("text").to_ascii_lowercase(),
                    other => other.to_owned(),
                };
                let is_button = kind == "button" || kind == "submit";
                if (kind == "checkbox" || kind == "radio") && tag.attr("checked").is_none() {
                    continue;
                }
                let value = tag
                    .attr("value")
                    .unwrap_or(if kind == "checkbox" { "on" } else { "" })
                    .to_owned();
                let field = Field {
                    name: name.to_owned(),
                    value,
                    kind,
                };
                if let Some(owner) = tag.attr("form") {
                    detached.push((owner.to_owned(), is_button, field));
                } else if let Some(i) = current {
                    if is_button {
                        forms[i].buttons.push(field);
                    } else {
                        forms[i].fields.push(field);
                    }
                }
            }
            _ => {}
        }
    }
    for (owner, is_button, field) in detached {
        if let Some(form) = forms.iter_mut().find(|f| f.id.as_deref() == Some(&owner)) {
            if is_button {
                form.buttons.push(field);
            } else {
                form.fields.push(field);
            }
        }
    }
    forms
}

fn scan_tags(html: &str) -> Vec<Tag> {
    let bytes = html.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        i += off + 1;
        if html[i..].starts_with("!--") {
            i = html[i..].find("-->").map_or(bytes.len(), |e| i + e + 3);
            continue;
        }
        let closing = html[i..].starts_with('/');
        if closing {
            i += 1;
        }
        let name_len = html[i..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(html.len() - i);
        if name_len == 0 {
            continue;
        }
        let name = html[i..i + name_len].to_ascii_lowercase();
        i += name_len;
        let mut attrs = Vec::new();
        // attributes until '>'
        loop {
            while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'>' {
                i = (i + 1).min(bytes.len());
                break;
            }
            let start = i;
            while i < bytes.len()
                && !bytes[i].is_ascii_whitespace()
                && !matches!(bytes[i], b'=' | b'>' | b'/')
            {
                i += 1;
            }
            let attr_name = html[start..i].to_ascii_lowercase();
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if i < bytes.len() && bytes[i] == b'=' {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                    let quote = bytes[i] as char;
                    let end = html[i + 1..].find(quote).map_or(bytes.len(), |e| i + 1 + e);
                    value = decode_entities(&html[i + 1..end]);
                    i = (end + 1).min(bytes.len());
                } else {
                    let start = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                        i += 1;
                    }
                    value = decode_entities(&html[start..i]);
                }
            }
            if !attr_name.is_empty() {
                attrs.push((attr_name, value));
            } else {
                i += 1;
            }
        }
        let skip_content = !closing && (name == "script" || name == "style");
        tags.push(Tag {
            name: name.clone(),
            closing,
            attrs,
        });
        if skip_content {
            let end_tag = format!("</{name}");
            i = html[i..]
                .to_ascii_lowercase()
                .find(&end_tag)
                .map_or(bytes.len(), |e| i + e);
        }
    }
    tags
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let window = rest.char_indices().nth(12).map_or(rest.len(), |(i, _)| i);
        let Some(semi) = rest[..window].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
