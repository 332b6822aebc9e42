//! The connection to Synapse through its `/_synapse/mas/*` API (Synapse ≥ 1.136 with
//! `matrix_authentication_service.enabled`), the API Synapse offers to the service it delegates
//! auth to. Every call carries `Authorization: Bearer <shared secret>`; see
//! docs/synapse-contract.md for the endpoints and their status codes.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use super::{
    FieldAction, HomeserverConnection, HomeserverError, MatrixUser, ProvisionRequest, Provisioned,
    Unavailable,
};
use crate::ids::{DeviceId, Localpart};
use crate::secret::SecretString;

/// Talks to one Synapse over its client listener.
#[derive(Clone)]
pub struct SynapseConnection {
    /// `{endpoint}_synapse/mas/`, so that a call is `api.join(call)`.
    api: Url,
    server_name: String,
    secret: SecretString,
    http: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for SynapseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynapseConnection")
            .field("api", &self.api.as_str())
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The status and (size-limited) body of one answer from Synapse.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

/// The Matrix error shape, `{"errcode": "M_…", "error": "…"}`.
#[derive(Deserialize, Default)]
struct MatrixErrorBody {
    #[serde(default)]
    errcode: String,
    #[serde(default)]
    error: String,
}

impl Answer {
    fn matrix_error(&self) -> MatrixErrorBody {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| MatrixErrorBody {
            errcode: String::new(),
            // Not JSON (a proxy's HTML page, say): keep a short prefix to make the log useful.
            error: String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned(),
        })
    }

    fn is_not_found(&self) -> bool {
        // 404 with M_NOT_FOUND is Synapse's "no such user". A 404 with another errcode
        // (M_UNRECOGNIZED) means the endpoint is not mounted, i.e. MAS mode is off: that must
        // surface as a rejection, not be mistaken for a missing user.
        self.status == StatusCode::NOT_FOUND && self.matrix_error().errcode == "M_NOT_FOUND"
    }

    /// The error for any answer the call does not treat as its own success or known outcome.
    fn into_error(self, localpart: &Localpart) -> HomeserverError {
        match self.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HomeserverError::Unauthorized,
            _ if self.is_not_found() => HomeserverError::UserNotFound(localpart.to_string()),
            status => {
                let MatrixErrorBody { errcode, error } = self.matrix_error();
                HomeserverError::Rejected {
                    status: status.as_u16(),
                    errcode,
                    message: error,
                }
            }
        }
    }

    /// Any 2xx is success for calls whose answer carries nothing (Synapse sends `200 {}` or
    /// `204`), otherwise the mapped error.
    fn success(self, localpart: &Localpart) -> Result<(), HomeserverError> {
        if self.status.is_success() {
            Ok(())
        } else {
            Err(self.into_error(localpart))
        }
    }
}

/// `query_user`'s answer on the wire.
#[derive(Deserialize)]
struct WireUser {
    user_id: String,
    display_name: Option<String>,
    avatar_url: Option<String>,
    #[serde(default)]
    is_suspended: bool,
    #[serde(default)]
    is_deactivated: bool,
}

/// `provision_user`'s body. Each field's set/unset pair comes from one [`FieldAction`], so both
/// keys of a pair can never be present: Synapse answers 400 when both keys are there, whatever
/// their values, because its validator checks key presence.
#[derive(Serialize)]
struct ProvisionBody<'a> {
    localpart: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_displayname: Option<&'a String>,
    #[serde(skip_serializing_if = "is_false")]
    unset_displayname: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_avatar_url: Option<&'a String>,
    #[serde(skip_serializing_if = "is_false")]
    unset_avatar_url: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    set_emails: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "is_false")]
    unset_emails: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked: Option<bool>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// `(set_x, unset_x)` for one field.
fn split<T>(action: &FieldAction<T>) -> (Option<&T>, bool) {
    match action {
        FieldAction::Keep => (None, false),
        FieldAction::Set(value) => (Some(value), false),
        FieldAction::Unset => (None, true),
    }
}

impl<'a> From<&'a ProvisionRequest> for ProvisionBody<'a> {
    fn from(request: &'a ProvisionRequest) -> Self {
        let (set_displayname, unset_displayname) = split(&request.displayname);
        let (set_avatar_url, unset_avatar_url) = split(&request.avatar_url);
        let (set_emails, unset_emails) = split(&request.emails);
        Self {
            localpart: request.localpart.as_str(),
            set_displayname,
            unset_displayname,
            set_avatar_url,
            unset_avatar_url,
            set_emails,
            unset_emails,
            locked: request.locked,
        }
    }
}

impl SynapseConnection {
    /// Limit for one whole exchange (connect, send, read the answer).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Synapse's answers here are `{}` or one small user record; anything bigger is not Synapse.
    pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

    /// `endpoint` is the base URL of Synapse's client listener (`http://127.0.0.1:8008/`); a path
    /// prefix is kept whether or not it ends in `/`.
    pub fn new(
        mut endpoint: Url,
        server_name: String,
        secret: SecretString,
        http: reqwest::Client,
    ) -> Self {
        if !endpoint.path().ends_with('/') {
            let path = format!("{}/", endpoint.path());
            endpoint.set_path(&path);
        }
        endpoint.set_query(None);
        endpoint.set_fragment(None);
        // Only a URL that cannot be a base (`mailto:…`) fails here; configuration checks for
        // http(s) first, and should one slip through, every call reports it (see `url`).
        let api = endpoint.join("_synapse/mas/").unwrap_or(endpoint);
        Self {
            api,
            server_name,
            secret,
            http,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Replaces the per-call timeout (default [`Self::DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn url(&self, call: &str) -> Result<Url, HomeserverError> {
        self.api.join(call).map_err(|e| {
            HomeserverError::Protocol(format!(
                "the Synapse endpoint {} is not an http(s) base URL: {e}",
                self.api
            ))
        })
    }

    /// `GET {api}{call}?localpart=…`.
    async fn get(
        &self,
        call: &'static str,
        localpart: &Localpart,
    ) -> Result<Answer, HomeserverError> {
        let request = self
            .http
            .get(self.url(call)?)
            .query(&[("localpart", localpart.as_str())]);
        self.exchange(call, request).await
    }

    /// `POST {api}{call}` with a JSON body.
    async fn post(
        &self,
        call: &'static str,
        body: &impl Serialize,
    ) -> Result<Answer, HomeserverError> {
        let request = self.http.post(self.url(call)?).json(body);
        self.exchange(call, request).await
    }

    /// Sends one request with the shared secret, under the timeout, and reads at most
    /// [`Self::MAX_RESPONSE_BYTES`] of the answer.
    async fn exchange(
        &self,
        call: &'static str,
        request: RequestBuilder,
    ) -> Result<Answer, HomeserverError> {
        let request = request
            .bearer_auth(self.secret.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.timeout, async {
            let mut response = request.send().await.map_err(|e| transport(call, &e))?;
            let status = response.status();
            if response
                .content_length()
                .is_some_and(|len| len > Self::MAX_RESPONSE_BYTES as u64)
            {
                return Err(too_big(call));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| transport(call, &e))? {
                if body.len() + chunk.len() > Self::MAX_RESPONSE_BYTES {
                    return Err(too_big(call));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer { status, body })
        })
        .await
        .map_err(|_| {
            HomeserverError::Transport(format!("{call}: no answer within {:?}", self.timeout))
        })?;
        match &answer {
            Ok(answer) => {
                crate::metrics::homeserver_call(call, started, answer.status.as_u16() < 500);
                tracing::debug!(call, status = answer.status.as_u16(), "synapse answered")
            }
            Err(error) => {
                crate::metrics::homeserver_call(call, started, false);
                tracing::debug!(call, %error, "synapse call failed")
            }
        }
        answer
    }
}

fn transport(call: &str, error: &reqwest::Error) -> HomeserverError {
    // reqwest's own message is terse ("error sending request"); the cause chain says why
    // (connection refused, DNS, TLS).
    let mut message = format!("{call}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    HomeserverError::Transport(message)
}

fn too_big(call: &str) -> HomeserverError {
    HomeserverError::Protocol(format!(
        "{call}: answer larger than {} bytes",
        SynapseConnection::MAX_RESPONSE_BYTES
    ))
}

#[async_trait]
impl HomeserverConnection for SynapseConnection {
    fn server_name(&self) -> &str {
        &self.server_name
    }

    async fn query_user(
        &self,
        localpart: &Localpart,
    ) -> Result<Option<MatrixUser>, HomeserverError> {
        let answer = self.get("query_user", localpart).await?;
        if answer.status == StatusCode::OK {
            let user: WireUser = serde_json::from_slice(&answer.body)
                .map_err(|e| HomeserverError::Protocol(format!("query_user: {e}")))?;
            Ok(Some(MatrixUser {
                user_id: user.user_id,
                display_name: user.display_name,
                avatar_url: user.avatar_url,
                is_suspended: user.is_suspended,
                is_deactivated: user.is_deactivated,
            }))
        } else if answer.is_not_found() {
            Ok(None)
        } else {
            Err(answer.into_error(localpart))
        }
    }

    async fn is_localpart_available(
        &self,
        localpart: &Localpart,
    ) -> Result<Result<(), Unavailable>, HomeserverError> {
        let answer = self.get("is_localpart_available", localpart).await?;
        if answer.status == StatusCode::OK {
            return Ok(Ok(()));
        }
        if answer.status == StatusCode::BAD_REQUEST {
            match answer.matrix_error().errcode.as_str() {
                "M_USER_IN_USE" => return Ok(Err(Unavailable::InUse)),
                "M_INVALID_USERNAME" => return Ok(Err(Unavailable::Invalid)),
                "M_EXCLUSIVE" => return Ok(Err(Unavailable::Exclusive)),
                _ => {}
            }
        }
        Err(answer.into_error(localpart))
    }

    async fn provision_user(
        &self,
        request: &ProvisionRequest,
    ) -> Result<Provisioned, HomeserverError> {
        let answer = self
            .post("provision_user", &ProvisionBody::from(request))
            .await?;
        match answer.status {
            StatusCode::CREATED => Ok(Provisioned::Created),
            StatusCode::OK => Ok(Provisioned::Updated),
            status if status.is_success() => Err(HomeserverError::Protocol(format!(
                "provision_user: unexpected status {status}"
            ))),
            _ => Err(answer.into_error(&request.localpart)),
        }
    }

    async fn upsert_device(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> Result<(), HomeserverError> {
        let mut body = json!({ "localpart": localpart, "device_id": device_id });
        if let Some(display_name) = display_name {
            body["display_name"] = json!(display_name);
        }
        // 201 inserted, 200 already there: both leave the device in place.
        self.post("upsert_device", &body).await?.success(localpart)
    }

    async fn update_device_display_name(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
        display_name: &str,
    ) -> Result<(), HomeserverError> {
        let body =
            json!({ "localpart": localpart, "device_id": device_id, "display_name": display_name });
        let answer = self.post("update_device_display_name", &body).await?;
        if answer.is_not_found() {
            // Synapse answers 404 M_NOT_FOUND both for a missing user ("User not found") and for
            // a missing device ("Not found"), so UserNotFound could be wrong here; pass the
            // answer on as it is.
            let MatrixErrorBody { errcode, error } = answer.matrix_error();
            return Err(HomeserverError::Rejected {
                status: 404,
                errcode,
                message: error,
            });
        }
        answer.success(localpart)
    }

    async fn delete_device(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
    ) -> Result<(), HomeserverError> {
        let body = json!({ "localpart": localpart, "device_id": device_id });
        let answer = self.post("delete_device", &body).await?;
        // Synapse answers 204 even for a device it does not have, and 404 M_NOT_FOUND for a user
        // it does not have. Either way no such device exists afterwards, which is all a sign-out
        // needs, so a retry after a lost answer, or a cleanup racing a deactivation, succeeds.
        if answer.is_not_found() {
            return Ok(());
        }
        answer.success(localpart)
    }

    async fn sync_devices(
        &self,
        localpart: &Localpart,
        devices: &BTreeSet<DeviceId>,
    ) -> Result<(), HomeserverError> {
        let body = json!({ "localpart": localpart, "devices": devices });
        self.post("sync_devices", &body).await?.success(localpart)
    }

    async fn delete_user(&self, localpart: &Localpart, erase: bool) -> Result<(), HomeserverError> {
        let body = json!({ "localpart": localpart, "erase": erase });
        self.post("delete_user", &body).await?.success(localpart)
    }

    async fn reactivate_user(&self, localpart: &Localpart) -> Result<(), HomeserverError> {
        let body = json!({ "localpart": localpart });
        self.post("reactivate_user", &body)
            .await?
            .success(localpart)
    }

    async fn set_displayname(
        &self,
        localpart: &Localpart,
        displayname: &str,
    ) -> Result<(), HomeserverError> {
        let body = json!({ "localpart": localpart, "displayname": displayname });
        self.post("set_displayname", &body)
            .await?
            .success(localpart)
    }

    async fn unset_displayname(&self, localpart: &Localpart) -> Result<(), HomeserverError> {
        let body = json!({ "localpart": localpart });
        self.post("unset_displayname", &body)
            .await?
            .success(localpart)
    }

    async fn allow_cross_signing_reset(
        &self,
        localpart: &Localpart,
    ) -> Result<(), HomeserverError> {
        let body = json!({ "localpart": localpart });
        self.post("allow_cross_signing_reset", &body)
            .await?
            .success(localpart)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, Uri};
    use axum::response::{IntoResponse, Response};
    use serde_json::Value;

    use super::*;

    const SECRET: &str = "a-shared-secret-of-at-least-32-chars!";

    /// One request as the fake Synapse saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        query: Option<String>,
        authorization: Option<String>,
        body: Option<Value>,
    }

    #[derive(Default)]
    struct FakeState {
        seen: Vec<Seen>,
        /// Answer per call name; calls not listed answer `200 {}`.
        answers: HashMap<String, (u16, String)>,
        delay: Option<Duration>,
    }

    /// A stand-in for Synapse's `/_synapse/mas/*` that records what it gets.
    #[derive(Clone, Default)]
    struct FakeSynapse(Arc<Mutex<FakeState>>);

    impl FakeSynapse {
        fn answer(&self, call: &str, status: u16, body: Value) {
            self.answer_raw(call, status, body.to_string());
        }

        fn answer_raw(&self, call: &str, status: u16, body: String) {
            let mut state = self.0.lock().unwrap();
            state.answers.insert(call.to_owned(), (status, body));
        }

        fn delay(&self, delay: Duration) {
            self.0.lock().unwrap().delay = Some(delay);
        }

        fn seen(&self) -> Vec<Seen> {
            self.0.lock().unwrap().seen.clone()
        }

        fn last(&self) -> Seen {
            self.seen()
                .pop()
                .expect("no request reached the fake Synapse")
        }

        fn last_body(&self) -> Value {
            self.last().body.expect("the last request had no JSON body")
        }
    }

    async fn handle(
        State(fake): State<FakeSynapse>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let call = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
        let (answer, delay) = {
            let mut state = fake.0.lock().unwrap();
            state.seen.push(Seen {
                method,
                path: uri.path().to_owned(),
                query: uri.query().map(str::to_owned),
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: serde_json::from_slice(&body).ok(),
            });
            let answer = state
                .answers
                .get(&call)
                .cloned()
                .unwrap_or((200, "{}".to_owned()));
            (answer, state.delay)
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let (status, body) = answer;
        (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response()
    }

    /// Starts a fake Synapse and a connection to it, mounted under `prefix` ("/" for none).
    async fn start_at(prefix: &str) -> (SynapseConnection, FakeSynapse) {
        let fake = FakeSynapse::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let endpoint = Url::parse(&format!("http://{addr}{prefix}")).unwrap();
        let connection = SynapseConnection::new(
            endpoint,
            "example.org".to_owned(),
            SecretString::new(SECRET),
            reqwest::Client::new(),
        );
        (connection, fake)
    }

    async fn start() -> (SynapseConnection, FakeSynapse) {
        start_at("/").await
    }

    fn alice() -> Localpart {
        Localpart::parse("alice").unwrap()
    }

    fn device(id: &str) -> DeviceId {
        DeviceId::parse(id).unwrap()
    }

    fn not_found() -> Value {
        json!({"errcode": "M_NOT_FOUND", "error": "User not found"})
    }

    #[tokio::test]
    async fn query_user_sends_get_with_localpart_and_bearer() {
        let (hs, fake) = start().await;
        fake.answer(
            "query_user",
            200,
            json!({
                "user_id": "@alice:example.org",
                "display_name": "Alice",
                "avatar_url": null,
                "is_suspended": false,
                "is_deactivated": true,
            }),
        );
        let user = hs.query_user(&alice()).await.unwrap().unwrap();
        assert_eq!(
            user,
            MatrixUser {
                user_id: "@alice:example.org".to_owned(),
                display_name: Some("Alice".to_owned()),
                avatar_url: None,
                is_suspended: false,
                is_deactivated: true,
            }
        );
        let seen = fake.last();
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/_synapse/mas/query_user");
        assert_eq!(seen.query.as_deref(), Some("localpart=alice"));
        assert_eq!(seen.authorization, Some(format!("Bearer {SECRET}")));
        assert_eq!(hs.server_name(), "example.org");
    }

    #[tokio::test]
    async fn query_user_404_is_none_but_unmounted_api_is_an_error() {
        let (hs, fake) = start().await;
        fake.answer("query_user", 404, not_found());
        assert_eq!(hs.query_user(&alice()).await.unwrap(), None);

        // Synapse without MAS mode answers M_UNRECOGNIZED: a misconfiguration, not "no user".
        fake.answer(
            "query_user",
            404,
            json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}),
        );
        let error = hs.query_user(&alice()).await.unwrap_err();
        assert!(
            matches!(&error, HomeserverError::Rejected { status: 404, errcode, .. } if errcode == "M_UNRECOGNIZED"),
            "{error:?}"
        );

        fake.answer_raw("query_user", 200, "not json".to_owned());
        assert!(matches!(
            hs.query_user(&alice()).await,
            Err(HomeserverError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn is_localpart_available_maps_each_reason() {
        let (hs, fake) = start().await;
        assert_eq!(hs.is_localpart_available(&alice()).await.unwrap(), Ok(()));
        let seen = fake.last();
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/_synapse/mas/is_localpart_available");
        assert_eq!(seen.query.as_deref(), Some("localpart=alice"));
        assert_eq!(seen.authorization, Some(format!("Bearer {SECRET}")));

        for (errcode, reason) in [
            ("M_USER_IN_USE", Unavailable::InUse),
            ("M_INVALID_USERNAME", Unavailable::Invalid),
            ("M_EXCLUSIVE", Unavailable::Exclusive),
        ] {
            fake.answer(
                "is_localpart_available",
                400,
                json!({"errcode": errcode, "error": "nope"}),
            );
            assert_eq!(
                hs.is_localpart_available(&alice()).await.unwrap(),
                Err(reason)
            );
        }

        fake.answer(
            "is_localpart_available",
            400,
            json!({"errcode": "M_MISSING_PARAM", "error": "Missing localpart"}),
        );
        let error = hs.is_localpart_available(&alice()).await.unwrap_err();
        assert!(
            matches!(&error, HomeserverError::Rejected { status: 400, errcode, message }
                if errcode == "M_MISSING_PARAM" && message == "Missing localpart"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn provision_user_body_has_only_the_keys_asked_for() {
        let (hs, fake) = start().await;

        // Nothing to change: the localpart alone, no `locked`.
        fake.answer("provision_user", 201, json!({}));
        let request = ProvisionRequest::new(alice());
        assert_eq!(
            hs.provision_user(&request).await.unwrap(),
            Provisioned::Created
        );
        let seen = fake.last();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/_synapse/mas/provision_user");
        assert_eq!(seen.authorization, Some(format!("Bearer {SECRET}")));
        assert_eq!(seen.body, Some(json!({"localpart": "alice"})));

        // Every kind of action at once.
        fake.answer("provision_user", 200, json!({}));
        let request = ProvisionRequest {
            displayname: FieldAction::Set("Alice".to_owned()),
            avatar_url: FieldAction::Unset,
            emails: FieldAction::Set(vec!["alice@example.org".to_owned()]),
            locked: Some(false),
            ..ProvisionRequest::new(alice())
        };
        assert_eq!(
            hs.provision_user(&request).await.unwrap(),
            Provisioned::Updated
        );
        assert_eq!(
            fake.last_body(),
            json!({
                "localpart": "alice",
                "set_displayname": "Alice",
                "unset_avatar_url": true,
                "set_emails": ["alice@example.org"],
                "locked": false,
            })
        );

        // The reverse: never both keys of a pair.
        let request = ProvisionRequest {
            displayname: FieldAction::Unset,
            avatar_url: FieldAction::Set("mxc://example.org/abc".to_owned()),
            emails: FieldAction::Unset,
            locked: Some(true),
            ..ProvisionRequest::new(alice())
        };
        hs.provision_user(&request).await.unwrap();
        let body = fake.last_body();
        assert_eq!(
            body,
            json!({
                "localpart": "alice",
                "unset_displayname": true,
                "set_avatar_url": "mxc://example.org/abc",
                "unset_emails": true,
                "locked": true,
            })
        );
        for field in ["displayname", "avatar_url", "emails"] {
            let both = body.get(format!("set_{field}")).is_some()
                && body.get(format!("unset_{field}")).is_some();
            assert!(!both, "both set_{field} and unset_{field} in {body}");
        }
    }

    #[tokio::test]
    async fn provision_user_status_mapping() {
        let (hs, fake) = start().await;
        let request = ProvisionRequest::new(alice());

        fake.answer("provision_user", 202, json!({}));
        assert!(matches!(
            hs.provision_user(&request).await,
            Err(HomeserverError::Protocol(_))
        ));

        fake.answer(
            "provision_user",
            400,
            json!({"errcode": "M_INVALID_USERNAME", "error": "bad"}),
        );
        let error = hs.provision_user(&request).await.unwrap_err();
        assert!(
            matches!(&error, HomeserverError::Rejected { status: 400, errcode, .. } if errcode == "M_INVALID_USERNAME"),
            "{error:?}"
        );
        assert!(!error.is_transient());

        fake.answer(
            "provision_user",
            503,
            json!({"errcode": "M_UNKNOWN", "error": "overloaded"}),
        );
        let error = hs.provision_user(&request).await.unwrap_err();
        assert!(
            matches!(error, HomeserverError::Rejected { status: 503, .. }),
            "{error:?}"
        );
        assert!(error.is_transient());

        // A proxy's HTML error page still gives a readable rejection.
        fake.answer_raw("provision_user", 502, "<html>Bad Gateway</html>".to_owned());
        let error = hs.provision_user(&request).await.unwrap_err();
        assert!(
            matches!(&error, HomeserverError::Rejected { status: 502, errcode, message }
                if errcode.is_empty() && message.contains("Bad Gateway")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn upsert_device_body_and_statuses() {
        let (hs, fake) = start().await;
        let id = device("DEVICEID1234");

        fake.answer("upsert_device", 201, json!({}));
        hs.upsert_device(&alice(), &id, Some("Element X"))
            .await
            .unwrap();
        let seen = fake.last();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/_synapse/mas/upsert_device");
        assert_eq!(
            seen.body,
            Some(
                json!({"localpart": "alice", "device_id": "DEVICEID1234", "display_name": "Element X"})
            )
        );

        fake.answer("upsert_device", 200, json!({}));
        hs.upsert_device(&alice(), &id, None).await.unwrap();
        assert_eq!(
            fake.last_body(),
            json!({"localpart": "alice", "device_id": "DEVICEID1234"})
        );

        fake.answer("upsert_device", 404, not_found());
        assert!(matches!(
            hs.upsert_device(&alice(), &id, None).await,
            Err(HomeserverError::UserNotFound(lp)) if lp == "alice"
        ));
    }

    #[tokio::test]
    async fn delete_device_is_idempotent() {
        let (hs, fake) = start().await;
        let id = device("DEVICEID1234");

        fake.answer_raw("delete_device", 204, String::new());
        hs.delete_device(&alice(), &id).await.unwrap();
        let seen = fake.last();
        assert_eq!(seen.path, "/_synapse/mas/delete_device");
        assert_eq!(
            seen.body,
            Some(json!({"localpart": "alice", "device_id": "DEVICEID1234"}))
        );

        fake.answer("delete_device", 404, not_found());
        hs.delete_device(&alice(), &id).await.unwrap();

        fake.answer(
            "delete_device",
            500,
            json!({"errcode": "M_UNKNOWN", "error": "Internal server error"}),
        );
        let error = hs.delete_device(&alice(), &id).await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
    }

    #[tokio::test]
    async fn the_other_calls_post_their_bodies() {
        let (hs, fake) = start().await;
        let lp = alice();
        let a = device("AAAAAAAAAA");
        let b = device("BBBBBBBBBB");
        let devices: BTreeSet<DeviceId> = [b.clone(), a.clone()].into();

        hs.update_device_display_name(&lp, &a, "Laptop")
            .await
            .unwrap();
        hs.sync_devices(&lp, &devices).await.unwrap();
        hs.sync_devices(&lp, &BTreeSet::new()).await.unwrap();
        hs.delete_user(&lp, true).await.unwrap();
        hs.delete_user(&lp, false).await.unwrap();
        hs.reactivate_user(&lp).await.unwrap();
        hs.set_displayname(&lp, "Alice A.").await.unwrap();
        hs.unset_displayname(&lp).await.unwrap();
        hs.allow_cross_signing_reset(&lp).await.unwrap();

        let expected = [
            (
                "update_device_display_name",
                json!({"localpart": "alice", "device_id": "AAAAAAAAAA", "display_name": "Laptop"}),
            ),
            (
                "sync_devices",
                json!({"localpart": "alice", "devices": ["AAAAAAAAAA", "BBBBBBBBBB"]}),
            ),
            ("sync_devices", json!({"localpart": "alice", "devices": []})),
            ("delete_user", json!({"localpart": "alice", "erase": true})),
            ("delete_user", json!({"localpart": "alice", "erase": false})),
            ("reactivate_user", json!({"localpart": "alice"})),
            (
                "set_displayname",
                json!({"localpart": "alice", "displayname": "Alice A."}),
            ),
            ("unset_displayname", json!({"localpart": "alice"})),
            ("allow_cross_signing_reset", json!({"localpart": "alice"})),
        ];
        let seen = fake.seen();
        assert_eq!(seen.len(), expected.len());
        for (seen, (call, body)) in seen.iter().zip(expected) {
            assert_eq!(seen.method, Method::POST, "{call}");
            assert_eq!(seen.path, format!("/_synapse/mas/{call}"));
            assert_eq!(seen.query, None, "{call}");
            assert_eq!(
                seen.authorization,
                Some(format!("Bearer {SECRET}")),
                "{call}"
            );
            assert_eq!(seen.body.as_ref(), Some(&body), "{call}");
        }

        // Each of them reports a missing user the same way.
        for call in [
            "sync_devices",
            "delete_user",
            "reactivate_user",
            "set_displayname",
            "unset_displayname",
            "allow_cross_signing_reset",
        ] {
            fake.answer(call, 404, not_found());
        }
        let results = [
            hs.sync_devices(&lp, &devices).await,
            hs.delete_user(&lp, false).await,
            hs.reactivate_user(&lp).await,
            hs.set_displayname(&lp, "x").await,
            hs.unset_displayname(&lp).await,
            hs.allow_cross_signing_reset(&lp).await,
        ];
        for result in results {
            assert!(
                matches!(&result, Err(HomeserverError::UserNotFound(lp)) if lp == "alice"),
                "{result:?}"
            );
        }
    }

    #[tokio::test]
    async fn refused_secret_is_unauthorized() {
        let (hs, fake) = start().await;
        for status in [401, 403] {
            for call in [
                "query_user",
                "is_localpart_available",
                "delete_device",
                "provision_user",
            ] {
                fake.answer(
                    call,
                    status,
                    json!({"errcode": "M_UNKNOWN", "error": "This endpoint must only be called by MAS"}),
                );
            }
            assert!(matches!(
                hs.query_user(&alice()).await,
                Err(HomeserverError::Unauthorized)
            ));
            assert!(matches!(
                hs.is_localpart_available(&alice()).await,
                Err(HomeserverError::Unauthorized)
            ));
            assert!(matches!(
                hs.delete_device(&alice(), &device("DEVICEID1234")).await,
                Err(HomeserverError::Unauthorized)
            ));
            let error = hs
                .provision_user(&ProvisionRequest::new(alice()))
                .await
                .unwrap_err();
            assert!(matches!(error, HomeserverError::Unauthorized));
            assert!(!error.is_transient());
        }
    }

    #[tokio::test]
    async fn slow_synapse_times_out_as_transport() {
        let (hs, fake) = start().await;
        let hs = hs.with_timeout(Duration::from_millis(200));
        fake.delay(Duration::from_secs(5));
        let started = std::time::Instant::now();
        let error = hs.query_user(&alice()).await.unwrap_err();
        assert!(matches!(error, HomeserverError::Transport(_)), "{error:?}");
        assert!(error.is_transient());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn unreachable_synapse_is_transport_and_never_shows_the_secret() {
        // Bind then drop, so that nothing listens on the port.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let hs = SynapseConnection::new(
            Url::parse(&format!("http://{addr}/")).unwrap(),
            "example.org".to_owned(),
            SecretString::new(SECRET),
            reqwest::Client::new(),
        );
        let error = hs.reactivate_user(&alice()).await.unwrap_err();
        assert!(matches!(error, HomeserverError::Transport(_)), "{error:?}");
        assert!(!error.to_string().contains(SECRET));
        assert!(!format!("{hs:?}").contains(SECRET));
    }

    #[tokio::test]
    async fn oversized_answer_is_refused() {
        let (hs, fake) = start().await;
        let huge = "x".repeat(SynapseConnection::MAX_RESPONSE_BYTES + 1);
        fake.answer("query_user", 200, json!({ "user_id": huge }));
        let error = hs.query_user(&alice()).await.unwrap_err();
        assert!(matches!(error, HomeserverError::Protocol(_)), "{error:?}");
    }

    #[tokio::test]
    async fn endpoint_path_prefix_is_kept() {
        for prefix in ["/synapse", "/synapse/"] {
            let (hs, fake) = start_at(prefix).await;
            hs.reactivate_user(&alice()).await.unwrap();
            assert_eq!(fake.last().path, "/synapse/_synapse/mas/reactivate_user");
        }
    }

    #[tokio::test]
    async fn update_device_display_name_404_stays_ambiguous() {
        // Real Synapse answers 404 M_NOT_FOUND "Not found" for a missing device and
        // "User not found" for a missing user: neither may be reported as UserNotFound.
        let (hs, fake) = start().await;
        for message in ["Not found", "User not found"] {
            fake.answer(
                "update_device_display_name",
                404,
                json!({"errcode": "M_NOT_FOUND", "error": message}),
            );
            let error = hs
                .update_device_display_name(&alice(), &device("DEVICEID1234"), "x")
                .await
                .unwrap_err();
            assert!(
                matches!(&error, HomeserverError::Rejected { status: 404, errcode, message: m }
                    if errcode == "M_NOT_FOUND" && m == message),
                "{error:?}"
            );
        }
    }

    #[tokio::test]
    async fn endpoint_that_cannot_be_a_base_fails_calls_instead_of_panicking() {
        let hs = SynapseConnection::new(
            Url::parse("mailto:synapse@example.org").unwrap(),
            "example.org".to_owned(),
            SecretString::new(SECRET),
            reqwest::Client::new(),
        );
        assert!(matches!(
            hs.query_user(&alice()).await,
            Err(HomeserverError::Protocol(_))
        ));
        assert!(matches!(
            hs.reactivate_user(&alice()).await,
            Err(HomeserverError::Protocol(_))
        ));
    }
}
