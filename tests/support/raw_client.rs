//! A Matrix client that speaks the OAuth profile over raw HTTP, the way matrix-js-sdk >= 42
//! does: metadata from Synapse, stable scopes, `response_mode=fragment`, `client_id` on every call.

use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

use super::browser::{self, LoginOptions};
use super::stack::Stack;
use super::{pkce_pair, query_param, random_string};

/// A client that speaks the OAuth profile over raw HTTP, the way matrix-js-sdk ≥ 42 does:
/// metadata from Synapse, stable scopes, `response_mode=fragment`, `client_id` on every call.
pub struct RawClient {
    pub metadata: Value,
    pub client_id: String,
    pub device_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl RawClient {
    pub async fn sign_in<I>(
        stack: &Stack<I>,
        username: &str,
        browser_client: &reqwest::Client,
    ) -> RawClient {
        let (client, granted) = Self::sign_in_with_scope(stack, username, browser_client, "").await;
        assert_eq!(
            granted,
            format!(
                "urn:matrix:client:api:* urn:matrix:client:device:{}",
                client.device_id
            )
        );
        client
    }

    /// [`Self::sign_in`] asking for `extra_scope` too (e.g. `urn:synapse:admin:*`); returns the
    /// client and the scope mxidp granted.
    pub async fn sign_in_with_scope<I>(
        stack: &Stack<I>,
        username: &str,
        browser_client: &reqwest::Client,
        extra_scope: &str,
    ) -> (RawClient, String) {
        let http = reqwest::Client::new();
        let metadata: Value = http
            .get(
                stack
                    .synapse
                    .url("/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            metadata["issuer"],
            stack.mxidp.as_str(),
            "Synapse hands out mxidp's public metadata"
        );
        let redirect_uri = "https://app.example.org/";
        let registered: Value = http
            .post(metadata["registration_endpoint"].as_str().unwrap())
            .json(&json!({
                "client_name": "Raw web client",
                "client_uri": "https://app.example.org/",
                "redirect_uris": [redirect_uri],
                "application_type": "web",
                "response_types": ["code"],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let client_id = registered["client_id"]
            .as_str()
            .expect("client_id")
            .to_owned();
        let device_id = random_string(10);
        let (verifier, challenge) = pkce_pair();
        let mut url: Url = metadata["authorization_endpoint"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("response_mode", "fragment")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair(
                "scope",
                format!(
                    "urn:matrix:client:api:* urn:matrix:client:device:{device_id} {extra_scope}"
                )
                .trim_end(),
            )
            .append_pair("state", "raw-state")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let journey = browser::login(browser_client, url, LoginOptions::new(username)).await;
        assert!(
            journey.final_url.query().is_none(),
            "fragment mode puts nothing in the query"
        );
        assert_eq!(
            query_param(&journey.final_url, "state").as_deref(),
            Some("raw-state")
        );
        let code = query_param(&journey.final_url, "code").expect("code in the fragment");
        let tokens: Value = http
            .post(metadata["token_endpoint"].as_str().unwrap())
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", &verifier),
                ("client_id", &client_id),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let granted = tokens["scope"]
            .as_str()
            .unwrap_or_else(|| panic!("no scope in {tokens}"))
            .to_owned();
        let client = RawClient {
            metadata,
            client_id,
            device_id,
            access_token: tokens["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh_token: tokens["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        };
        (client, granted)
    }

    pub async fn revoke(&self, token: &str, hint: &str) -> StatusCode {
        reqwest::Client::new()
            .post(self.metadata["revocation_endpoint"].as_str().unwrap())
            .form(&[
                ("token", token),
                ("token_type_hint", hint),
                ("client_id", &self.client_id),
            ])
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn refresh(&self) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.metadata["token_endpoint"].as_str().unwrap())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &self.refresh_token),
                ("client_id", &self.client_id),
            ])
            .send()
            .await
            .unwrap()
    }
}
