//! `GET /account` (`account_management_uri`, MSC4191): sends the user to where the action can
//! be done. Profile and device pages live at the IdP when it has them; a cross-signing reset
//! re-authenticates the user at the IdP first.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::authorize::see_other;
use super::{pages, App};
use crate::provider::AccountAction;

#[derive(Debug, Deserialize)]
pub struct AccountQuery {
    action: Option<String>,
    #[allow(dead_code)]
    device_id: Option<String>,
}

/// MSC4191 names and their historical aliases.
pub fn parse_action(action: &str) -> Option<AccountAction> {
    Some(match action {
        "org.matrix.profile" | "profile" => AccountAction::Profile,
        "org.matrix.devices_list" | "org.matrix.sessions_list" | "sessions_list" => {
            AccountAction::DevicesList
        }
        "org.matrix.device_view" | "org.matrix.session_view" | "session_view" => {
            AccountAction::DeviceView
        }
        "org.matrix.device_delete" | "org.matrix.session_end" | "session_end" => {
            AccountAction::DeviceDelete
        }
        "org.matrix.account_deactivate" => AccountAction::AccountDeactivate,
        "org.matrix.cross_signing_reset" => AccountAction::CrossSigningReset,
        _ => return None,
    })
}

pub async fn get(State(app): State<App>, Query(q): Query<AccountQuery>) -> Response {
    let action = q
        .action
        .as_deref()
        .and_then(parse_action)
        .unwrap_or(AccountAction::Profile);
    let provider_url = app
        .upstream
        .get()
        .and_then(|u| app.provider.account_url(u.metadata(), action));
    match provider_url.or_else(|| app.account_url.clone()) {
        Some(url) => see_other(url.as_str()),
        None => pages::error_page(
            StatusCode::NOT_FOUND,
            "Account management",
            "Your account is managed by your organisation's identity provider. Ask your administrator where to change it.",
        ),
    }
}
