//! Server-rendered pages: consent, confirmation, account, and the pages that say why a sign-in
//! stops. Every interpolated value is HTML-escaped.
//!
//! A page is made in two steps. A handler returns its title and markup as a response extension
//! ([`PageContent`]); the [`render`] layer, which has the application's branding, turns it into
//! the document and sets the headers every page carries (no caching, no framing, a strict
//! Content-Security-Policy, no referrer). A page made without the layer (unit tests) is rendered
//! with the default branding, with the same headers.

mod client_identity;
mod consent_view;
mod layout;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

pub use client_identity::ClientIdentity;
pub use consent_view::{consent_page, AdminRequest, ConsentView};

use super::App;
use crate::branding::{Branding, BrandingConfig};

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

/// A page before it is put into the document.
#[derive(Clone)]
pub struct PageContent {
    pub title: String,
    /// Markup, escaped by its maker.
    pub main: String,
}

/// `Content-Security-Policy` of every page: nothing runs, styles are inline, images (the
/// server's and the client's logos) come over https only, and no other site may frame the page
/// (clickjacking of the consent buttons). No `form-action`: browsers apply it to the redirect
/// after the consent form, which goes to the client's own (often loopback or private-use) URI.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src https:; frame-ancestors 'none'; base-uri 'none'";

/// The headers every page carries.
pub fn secure_headers(response: &mut Response) {
    super::no_store(response);
    let headers = response.headers_mut();
    headers.insert(
        header::HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // The pages' URLs carry sign-in handles; the links on them (the client's site, the IdP's
    // account pages) need not learn them.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// A page response: rendered with the default branding now, again by [`render`] with the
/// configured one.
pub fn page(status: StatusCode, title: &str, main: String) -> Response {
    let content = PageContent {
        title: title.to_owned(),
        main,
    };
    let fallback = Branding::new(&BrandingConfig::default(), "mxidp");
    let html = layout::document(&fallback, &content.title, &content.main);
    let mut response = (status, Html(html)).into_response();
    response.extensions_mut().insert(content);
    secure_headers(&mut response);
    response
}

/// The layer that puts every page into the document with the server's branding.
pub async fn render(State(app): State<App>, mut response: Response) -> Response {
    if let Some(content) = response.extensions_mut().remove::<PageContent>() {
        let html = layout::document(&app.branding, &content.title, &content.main);
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = axum::body::Body::from(html);
        secure_headers(&mut response);
    }
    response
}

/// Why a browser-facing step (callback, consent) stops, shown as a page.
pub enum PageError {
    /// A page in plain words; it gets a reference that is logged with it.
    Page(StatusCode, &'static str, String),
    /// An internal failure already logged under `reference` (see [`super::internal`]).
    Logged(StatusCode, &'static str, String, String),
    /// Shown with a link that hands `access_denied` back to the client.
    Refused(String, String),
}

impl PageError {
    /// An internal failure: logged with a reference the page shows.
    pub fn internal(context: &str, e: &dyn std::fmt::Display) -> Self {
        PageError::Logged(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The sign-in could not be completed because of a problem on this server.".into(),
            super::internal(context, e),
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Page(status, title, message) => error_page(status, title, &message),
            PageError::Logged(status, title, message, reference) => {
                logged_error_page(status, title, &message, &reference)
            }
            PageError::Refused(message, return_to) => error_page_with_return(
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                &message,
                &return_to,
            ),
        }
    }
}

/// Logs why a page stops the user, under a new reference, and returns the reference.
fn log_reference(status: StatusCode, title: &str, message: &str) -> String {
    let reference = crate::ids::random_token(6);
    tracing::info!(error_id = %reference, status = status.as_u16(), "error page \"{title}\": {message}");
    reference
}

fn error_main(title: &str, message: &str, next_step: &str, reference: &str, extra: &str) -> String {
    format!(
        "<h1>{}</h1><p>{}</p><p>{}</p>{extra}\
<p class=\"meta\">If you ask for help, give this reference: <code class=\"reference\">{}</code></p>",
        escape(title),
        escape(message),
        escape(next_step),
        escape(reference)
    )
}

const NEXT_STEP: &str =
    "Go back to the app you were signing in to and start again. If this keeps happening, contact your administrator.";

/// A page explaining why a sign-in cannot go on. Nothing secret goes into `message`.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let reference = log_reference(status, title, message);
    logged_error_page(status, title, message, &reference)
}

/// [`error_page`] for a failure already logged under `reference`.
pub fn logged_error_page(
    status: StatusCode,
    title: &str,
    message: &str,
    reference: &str,
) -> Response {
    page(
        status,
        title,
        error_main(title, message, NEXT_STEP, reference, ""),
    )
}

/// A page that tells the user something went right.
pub fn info_page(title: &str, message: &str) -> Response {
    page(
        StatusCode::OK,
        title,
        format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message)),
    )
}

/// An error page with a link that hands the error back to the client.
pub fn error_page_with_return(
    status: StatusCode,
    title: &str,
    message: &str,
    return_to: &str,
) -> Response {
    let reference = log_reference(status, title, message);
    let back = format!(
        "<div class=\"actions\"><a class=\"button primary\" href=\"{}\">Return to the app</a></div>",
        escape(return_to)
    );
    page(
        status,
        title,
        error_main(
            title,
            message,
            "Return to the app; it will tell you that the sign-in did not happen.",
            &reference,
            &back,
        ),
    )
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
    let main = format!(
        "<h1>{title}</h1>\
<p>You are about to <strong>{what}</strong> of the Matrix account <strong>{user}</strong>.</p>\
<p class=\"warning\">{consequence}</p>\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"pending\" value=\"{pending}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<div class=\"actions\"><button class=\"danger\" type=\"submit\" name=\"decision\" value=\"confirm\">{label}</button>\
<button type=\"submit\" name=\"decision\" value=\"cancel\">Cancel</button></div></form>",
        title = escape(view.title),
        what = escape(view.action_text),
        user = escape(view.user_id),
        consequence = escape(view.consequence),
        action = escape(view.action),
        pending = escape(view.pending_id),
        csrf = escape(view.csrf),
        label = escape(view.confirm_label),
    );
    page(StatusCode::OK, view.title, main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(escape("<script>\"'&"), "&lt;script&gt;&quot;&#x27;&amp;");
    }
}
