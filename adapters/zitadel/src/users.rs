//! A user's state from ZITADEL's user API (`GET {issuer}/v2/users/{id}`), for reconciliation,
//! with a service user's personal access token (`Authorization: Bearer`). The service user
//! needs to read users (an Org User Manager or read-only user role of the organisation, or the
//! instance's for several organisations).

use std::time::Duration;

use mxidp_core::provider::UserStatus;
use mxidp_core::secret::SecretString;
use mxidp_core::upstream::UpstreamError;
use serde::Deserialize;
use url::Url;

/// A user is a few kilobytes.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub struct UserApi {
    /// `{issuer}/v2/users/`.
    users: Url,
    token: SecretString,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    user: User,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    state: Option<String>,
}

/// ZITADEL's ids are digits; ids set through the API are kept to letters, digits, `-` and `_`
/// here, as the id becomes one path segment of an authenticated request.
pub fn is_zitadel_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// ZITADEL's user state → what Matrix makes of it. `INACTIVE` (deactivated) and `LOCKED` may
/// come back; `DELETED` does not. `INITIAL` (not set up yet) and anything new are not guessed
/// at.
pub fn status_of(state: &str) -> UserStatus {
    match state {
        "USER_STATE_ACTIVE" => UserStatus::Active,
        "USER_STATE_INACTIVE" | "USER_STATE_LOCKED" => UserStatus::Disabled,
        "USER_STATE_DELETED" => UserStatus::Deleted,
        _ => UserStatus::Unknown,
    }
}

impl UserApi {
    pub fn new(issuer: &Url, token: SecretString, timeout: Duration) -> Result<Self, String> {
        let base = issuer.as_str().trim_end_matches('/');
        let users = Url::parse(&format!("{base}/v2/users/"))
            .map_err(|e| format!("cannot derive the user API URL from the issuer: {e}"))?;
        let http = mxidp_core::outbound::client(timeout).map_err(|e| e.to_string())?;
        Ok(Self { users, token, http })
    }

    pub async fn user_status(&self, user_id: &str) -> Result<UserStatus, UpstreamError> {
        if !is_zitadel_id(user_id) {
            return Err(UpstreamError::Protocol("not a ZITADEL user id".into()));
        }
        let url = self
            .users
            .join(user_id)
            .map_err(|e| UpstreamError::Protocol(format!("user API URL: {e}")))?;
        let mut answer = self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
        let status = answer.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(UpstreamError::Protocol("the answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        match status {
            200 => {
                let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
                    UpstreamError::Protocol("a malformed answer of the user API".into())
                })?;
                Ok(answer
                    .user
                    .state
                    .as_deref()
                    .map_or(UserStatus::Unknown, status_of))
            }
            // Removed users are not found.
            404 => Ok(UserStatus::Deleted),
            status => Err(UpstreamError::Protocol(format!(
                "the user API answered {status}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zitadel_states_map_to_what_matrix_does() {
        assert_eq!(status_of("USER_STATE_ACTIVE"), UserStatus::Active);
        assert_eq!(status_of("USER_STATE_INACTIVE"), UserStatus::Disabled);
        assert_eq!(status_of("USER_STATE_LOCKED"), UserStatus::Disabled);
        assert_eq!(status_of("USER_STATE_DELETED"), UserStatus::Deleted);
        assert_eq!(status_of("USER_STATE_INITIAL"), UserStatus::Unknown);
        assert_eq!(status_of("USER_STATE_SOMETHING_NEW"), UserStatus::Unknown);
    }

    #[test]
    fn only_id_shaped_ids_become_a_path_segment() {
        assert!(is_zitadel_id("336494809936035843"));
        assert!(is_zitadel_id("custom_user-1"));
        for bad in ["", "..", "1/2", "1?x", "1%2e", "a b", &"1".repeat(201)] {
            assert!(!is_zitadel_id(bad), "{bad}");
        }
    }
}
