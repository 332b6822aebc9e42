//! Server-rendered pages (error and consent). Every interpolated value is HTML-escaped.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1b1d22}}\
.card{{border:1px solid #d0d4da;border-radius:12px;padding:1.5rem}}button{{font-size:1rem;padding:.6rem 1.2rem;margin-right:.5rem;border-radius:8px;border:1px solid #888}}\
button.primary{{background:#0b6e4f;color:#fff;border-color:#0b6e4f}}code{{background:#f1f3f5;padding:.1rem .3rem;border-radius:4px}}</style>\
</head><body><div class=\"card\">{body}</div></body></html>",
        title = escape(title),
    )
}

/// Why a browser-facing step (callback, consent) stops, shown as a page.
pub enum PageError {
    Page(StatusCode, &'static str, String),
    /// Shown with a link that hands `access_denied` back to the client.
    Refused(String, String),
}

impl PageError {
    /// An internal failure: logged with a reference the page shows.
    pub fn internal(context: &str, e: &dyn std::fmt::Display) -> Self {
        PageError::Page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            format!(
                "The sign-in could not be completed. Reference: {}",
                super::internal(context, e)
            ),
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Page(status, title, message) => error_page(status, title, &message),
            PageError::Refused(message, return_to) => error_page_with_return(
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                &message,
                &return_to,
            ),
        }
    }
}

/// A page explaining why a sign-in cannot go on. Nothing secret goes into `message`.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message));
    let mut response = (status, Html(layout(title, &body))).into_response();
    super::no_store(&mut response);
    response
}

/// A page that tells the user something went right.
pub fn info_page(title: &str, message: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message));
    let mut response = Html(layout(title, &body)).into_response();
    super::no_store(&mut response);
    response
}

/// An error page with a link that hands the error back to the client.
pub fn error_page_with_return(
    status: StatusCode,
    title: &str,
    message: &str,
    return_to: &str,
) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><a href=\"{}\">Return to the application</a></p>",
        escape(title),
        escape(message),
        escape(return_to)
    );
    let mut response = (status, Html(layout(title, &body))).into_response();
    super::no_store(&mut response);
    response
}

pub struct ConsentView<'a> {
    pub pending_id: &'a str,
    pub csrf: &'a str,
    pub client_name: &'a str,
    pub client_uri: &'a str,
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub admin: bool,
    pub action: &'a str,
}

/// A destructive account action awaiting the user's word.
pub struct ConfirmView<'a> {
    pub title: &'a str,
    /// What will be done, after "You are about to".
    pub action_text: &'a str,
    pub user_id: &'a str,
    pub consequence: &'a str,
    pub confirm_label: &'a str,
    pub pending_id: &'a str,
    pub csrf: &'a str,
    pub action: &'a str,
}

pub fn confirm_page(view: &ConfirmView<'_>) -> Response {
    let body = format!(
        "<h1>{title}</h1>\
<p>You are about to <strong>{what}</strong> of the Matrix account <strong>{user}</strong>.</p>\
<p>{consequence}</p>\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"pending\" value=\"{pending}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button class=\"primary\" type=\"submit\" name=\"decision\" value=\"confirm\">{label}</button>\
<button type=\"submit\" name=\"decision\" value=\"cancel\">Cancel</button></form>",
        title = escape(view.title),
        what = escape(view.action_text),
        user = escape(view.user_id),
        consequence = escape(view.consequence),
        action = escape(view.action),
        pending = escape(view.pending_id),
        csrf = escape(view.csrf),
        label = escape(view.confirm_label),
    );
    unframed(Html(layout(view.title, &body)).into_response())
}

/// No caching, no framing (clickjacking), nothing loaded from elsewhere: for pages with a form.
fn unframed(mut response: Response) -> Response {
    super::no_store(&mut response);
    response.headers_mut().insert(
        axum::http::header::HeaderName::from_static("x-frame-options"),
        axum::http::HeaderValue::from_static("DENY"),
    );
    response.headers_mut().insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

pub fn consent_page(view: &ConsentView<'_>) -> Response {
    let admin = if view.admin {
        "<li class=\"warning\"><strong>administer the homeserver</strong> (you are a homeserver administrator): every account, room and setting</li>"
    } else {
        ""
    };
    let body = format!(
        "<h1>Allow {name} to use your Matrix account?</h1>\
<p><a href=\"{uri}\" rel=\"noopener noreferrer\">{uri}</a> wants to sign in as <strong>{user}</strong>.</p>\
<p>It will be able to:</p><ul><li>read and send messages and use your account as you</li>{admin}</ul>\
<p>It will appear in your sessions as device <code>{device}</code>.</p>\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"pending\" value=\"{pending}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button class=\"primary\" type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        name = escape(view.client_name),
        uri = escape(view.client_uri),
        user = escape(view.user_id),
        device = escape(view.device_id),
        action = escape(view.action),
        pending = escape(view.pending_id),
        csrf = escape(view.csrf),
    );
    unframed(Html(layout("Allow access", &body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(escape("<script>\"'&"), "&lt;script&gt;&quot;&#x27;&amp;");
    }
}
