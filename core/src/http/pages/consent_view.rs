//! The consent page: who asks (see [`super::ClientIdentity`]), for which account, for what, and
//! the two answers.

use axum::http::StatusCode;
use axum::response::Response;

use super::{escape, page, ClientIdentity};

/// What the page says about `urn:synapse:admin:*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRequest {
    NotAsked,
    /// Asked, and the user is an administrator: the token would carry it.
    Granted,
    /// Asked, but the user is not an administrator: the token will not carry it.
    NotAllowed,
}

pub struct ConsentView<'a> {
    pub client: &'a ClientIdentity,
    pub pending_id: &'a str,
    pub csrf: &'a str,
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub admin: AdminRequest,
    pub email: bool,
    /// A device grant's user code: the user checks it against the one their device shows.
    pub user_code: Option<&'a str>,
    /// Where the form posts.
    pub action: &'a str,
}

pub fn consent_page(view: &ConsentView<'_>) -> Response {
    let client = view.client;
    let mut powers = String::from("<li>read and send messages and use your account as you</li>");
    if view.email {
        powers.push_str("<li>see your e-mail address</li>");
    }
    match view.admin {
        AdminRequest::NotAsked => {}
        AdminRequest::Granted => powers.push_str(
            "<li class=\"warning\"><strong>Administer this homeserver</strong>: you are a server \
administrator, and this app asks to act as one: read and change every account and room, and the \
server's settings. Allow this only for an administration tool you use on purpose.</li>",
        ),
        AdminRequest::NotAllowed => powers.push_str(
            "<li class=\"meta\">It also asks to administer the homeserver. Your account is not an \
administrator, so it will not get that.</li>",
        ),
    }
    let main = format!(
        "{logo}<h1>Allow {heading} to use your Matrix account?</h1>\
{origin}\
<p>Make sure you trust {name}. It will sign in as <strong>{user}</strong> and be able to:</p>\
<ul>{powers}</ul>\
<p class=\"meta\">It will appear in your sessions as device <code>{device}</code>.</p>\
{code_check}\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"pending\" value=\"{pending}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<div class=\"actions\"><button class=\"primary\" type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></div>\
<p class=\"meta\">Not {user}? <button class=\"link\" type=\"submit\" name=\"decision\" value=\"switch\">Use another account</button></p></form>",
        logo = client.logo_html(),
        heading = client.heading_html(),
        origin = client.origin_html(),
        name = client.name_html(),
        user = escape(view.user_id),
        device = escape(view.device_id),
        code_check = view.user_code.map_or(String::new(), |code| format!(
            "<p class=\"warning\">You are signing in a device with the code <strong><code>{}</code></strong>. \
Allow only if you started this sign-in yourself and your device shows this code.</p>",
            escape(code)
        )),
        action = escape(view.action),
        pending = escape(view.pending_id),
        csrf = escape(view.csrf),
    );
    page(
        StatusCode::OK,
        &format!("Allow {} to use your account?", client.short_name()),
        main,
    )
}
