//! A user's status from the Users API (`GET /api/v1/users/{id}`), for reconciliation: Okta's
//! `status` says whether the user may sign in now, and a 404 that the user is gone.

use mxidp_core::provider::UserStatus;
use mxidp_core::upstream::UpstreamError;
use serde::Deserialize;

use crate::log_event::is_okta_id;
use crate::management::ManagementApi;

#[derive(Deserialize)]
struct User {
    status: String,
}

/// Okta's user status → what Matrix makes of it. `ACTIVE`, `RECOVERY` and `PASSWORD_EXPIRED`
/// users can sign in (the last two after a reset); `SUSPENDED`, `LOCKED_OUT` and
/// `DEPROVISIONED` (deactivated) cannot and may come back; `STAGED` and `PROVISIONED` have not
/// activated yet. An unknown status is not guessed at.
pub fn status_of(okta_status: &str) -> UserStatus {
    match okta_status {
        "ACTIVE" | "RECOVERY" | "PASSWORD_EXPIRED" => UserStatus::Active,
        "SUSPENDED" | "LOCKED_OUT" | "DEPROVISIONED" | "STAGED" | "PROVISIONED" => {
            UserStatus::Disabled
        }
        _ => UserStatus::Unknown,
    }
}

pub async fn user_status(api: &ManagementApi, user_id: &str) -> Result<UserStatus, UpstreamError> {
    // The id becomes a path segment of an authenticated request.
    if !is_okta_id(user_id) {
        return Err(UpstreamError::Protocol("not an Okta user id".into()));
    }
    let mut url = api.org().clone();
    url.path_segments_mut()
        .map_err(|()| UpstreamError::Protocol("the org URL cannot take a path".into()))?
        .pop_if_empty()
        .extend(["api", "v1", "users", user_id]);
    let answer = api.get(url).await?;
    match answer.status {
        200 => {
            let user: User = serde_json::from_slice(&answer.body)
                .map_err(|e| UpstreamError::Protocol(format!("a malformed Okta user: {e}")))?;
            Ok(status_of(&user.status))
        }
        404 => Ok(UserStatus::Deleted),
        status => Err(UpstreamError::Protocol(format!(
            "the Users API answered {status}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn okta_statuses_map_to_what_matrix_does() {
        assert_eq!(status_of("ACTIVE"), UserStatus::Active);
        assert_eq!(status_of("PASSWORD_EXPIRED"), UserStatus::Active);
        for s in ["SUSPENDED", "LOCKED_OUT", "DEPROVISIONED"] {
            assert_eq!(status_of(s), UserStatus::Disabled, "{s}");
        }
        assert_eq!(status_of("SOMETHING_NEW"), UserStatus::Unknown);
    }
}
