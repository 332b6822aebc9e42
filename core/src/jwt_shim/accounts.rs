//! The homeserver side of the shim: service accounts are provisioned (identity, user, device,
//! session) ahead of time and again every `recheck_seconds`, so that introspection of their
//! tokens needs no network; a user token's device is created at its first sight, within
//! `device_timeout_ms`, and remembered as a session, so that the IdP's sign-out and lock events
//! end it like any other (docs/jwt-shim.md).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::verdicts::{Holder, Verdict};
use super::{Issuer, JwtShim, Refusal, ServiceAccount, ShimError, SESSION_CLIENT_PREFIX};
use crate::app::{App, AppState};
use crate::audit::{self, AuditEntry};
use crate::cache::{ActiveToken, JwtGrant};
use crate::homeserver::{FieldAction, ProvisionRequest, Unavailable};
use crate::ids::{now_unix, DeviceId, SessionId};
use crate::sessions::EndCause;
use crate::store::{Identity, Session, SessionState};

/// A stable device id for a service account: ten characters from a hash of the issuer and the
/// account, so that it survives restarts and differs between issuers.
pub(super) fn derived_device_id(issuer: &str, account: &str) -> DeviceId {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(format!("{issuer}\n{account}").as_bytes());
    let id: String = digest
        .iter()
        .take(10)
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    DeviceId::parse(&id).expect("ten characters of the scope alphabet")
}

/// How long to wait before trying again keys or an account that could not be loaded.
const RETRY: Duration = Duration::from_secs(2);

/// Loads the other issuers' keys and provisions the service accounts, then keeps them so.
/// `None` when the shim is off.
pub fn spawn_service_accounts(app: App) -> Option<tokio::task::JoinHandle<()>> {
    app.jwt_shim.as_ref()?;
    Some(tokio::spawn(async move {
        let Some(shim) = app.jwt_shim.as_ref() else {
            return;
        };
        shim.first_use.start(app.clone());
        loop {
            let keys_ready = shim.load_keys(&app).await;
            let accounts_ready = shim.provision_accounts(&app).await;
            let wait = if keys_ready && accounts_ready {
                shim.recheck
            } else {
                RETRY
            };
            tokio::time::sleep(wait).await;
        }
    }))
}

impl JwtShim {
    /// Service accounts ready in the homeserver, and configured (enabled ones).
    pub fn accounts_ready(&self) -> (usize, usize) {
        let enabled = self.accounts().filter(|(_, a)| a.enabled);
        let (mut ready, mut total) = (0, 0);
        for (_, account) in enabled {
            total += 1;
            ready += usize::from(account.is_ready());
        }
        (ready, total)
    }

    /// Issuers whose keys are loaded, and all issuers.
    pub fn issuers_ready(&self, app: &AppState) -> (usize, usize) {
        let ready = self
            .issuers
            .iter()
            .filter(|i| i.keys(app).is_some_and(|k| !k.is_empty()))
            .count();
        (ready, self.issuers.len())
    }

    fn accounts(&self) -> impl Iterator<Item = (&Issuer, &ServiceAccount)> {
        self.issuers
            .iter()
            .flat_map(|i| i.accounts.iter().map(move |a| (i, a)))
    }

    /// Fetches the keys of every issuer that has none yet; true when all have keys.
    pub(super) async fn load_keys(&self, app: &AppState) -> bool {
        let mut all = true;
        for issuer in &self.issuers {
            if let Some(keys) = issuer.keys(app) {
                if keys.is_empty() {
                    // Loaded once up front, so that the first token needs no fetch.
                    if let Err(e) = keys.load().await {
                        tracing::warn!(issuer = %issuer.name(), error = %e, "JWT shim: the issuer's keys could not be fetched");
                        all = false;
                    }
                }
                continue;
            }
            if issuer.is_upstream && issuer.jwks_uri.is_none() {
                // The upstream's keys come with its discovery.
                all = false;
                continue;
            }
            match issuer.jwks_uri(&self.http).await {
                Ok(uri) => {
                    let cache = self.key_cache(uri);
                    if let Err(e) = cache.load().await {
                        tracing::warn!(issuer = %issuer.name(), error = %e, "JWT shim: the issuer's keys could not be fetched");
                        all = false;
                    }
                    *issuer.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(cache);
                }
                Err(e) => {
                    tracing::warn!(issuer = %issuer.name(), error = %e, "JWT shim: the issuer's discovery failed");
                    all = false;
                }
            }
        }
        all
    }

    pub(super) fn key_cache(&self, uri: url::Url) -> crate::upstream::JwksCache {
        let t = &self.http;
        crate::upstream::JwksCache::new(t.client.clone(), uri, t.timeout, t.jwks_cooldown)
            .with_refresh_every(t.jwks_refresh)
    }

    /// One round over the service accounts; true when every enabled one is ready.
    pub(super) async fn provision_accounts(&self, app: &AppState) -> bool {
        let mut all = true;
        for (issuer, account) in self.accounts() {
            if !account.enabled {
                account.ready.store(false, Ordering::Release);
                disable(app, issuer, account).await;
                continue;
            }
            match provision(app, issuer, account).await {
                Ok(session_id) => {
                    *account
                        .session_id
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = session_id;
                    if !account.ready.swap(true, Ordering::AcqRel) {
                        tracing::info!(localpart = %account.localpart, device_id = %account.device, account = %account.label, "JWT shim: service account ready");
                    }
                }
                Err(Failure::Transient(e)) => {
                    // A homeserver blip does not stop an account that was ready.
                    tracing::warn!(localpart = %account.localpart, error = %e, "JWT shim: could not provision the service account; retrying");
                    all &= account.ready.load(Ordering::Acquire);
                }
                Err(Failure::Refused(e)) => {
                    account.ready.store(false, Ordering::Release);
                    tracing::error!(localpart = %account.localpart, error = %e, "JWT shim: the service account cannot be used");
                    all = false;
                }
            }
        }
        all
    }
}

impl Issuer {
    /// The configured `jwks_uri`, else the one in the issuer's discovery document.
    async fn jwks_uri(&self, t: &super::ShimHttp) -> Result<url::Url, String> {
        if let Some(uri) = &self.jwks_uri {
            return Ok(uri.clone());
        }
        // Only issuers other than the upstream are discovered here.
        let issuer = self
            .issuer
            .as_deref()
            .ok_or("the upstream's keys come with its discovery")?;
        let base = issuer.trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let response = t
            .client
            .get(&url)
            .timeout(t.timeout)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered HTTP {}", response.status()));
        }
        let document: Value = response.json().await.map_err(|e| format!("{url}: {e}"))?;
        // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
        if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(format!("{url} names another issuer"));
        }
        let uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{url} has no jwks_uri"))?;
        uri.parse().map_err(|e| format!("{url}: jwks_uri: {e}"))
    }
}

enum Failure {
    /// Try again later (the homeserver or the store could not be reached).
    Transient(String),
    /// A configuration conflict that retrying will not fix.
    Refused(String),
}

/// The identity, user, device and session of an account; returns the session id.
async fn provision(
    app: &AppState,
    issuer: &Issuer,
    account: &ServiceAccount,
) -> Result<String, Failure> {
    let transient = |e: &dyn std::fmt::Display| Failure::Transient(e.to_string());
    let subject = account.identity_subject();
    let localpart = &account.localpart;
    let now = now_unix();
    match app
        .store
        .identity_by_subject(&issuer.namespace, &subject)
        .await
        .map_err(|e| transient(&e))?
    {
        Some(identity) if identity.localpart != *localpart => {
            return Err(Failure::Refused(format!(
                "{} has Matrix user {} already; a localpart cannot change",
                account.label, identity.localpart
            )))
        }
        Some(identity) if identity.deleted_at.is_some() => {
            return Err(Failure::Refused(format!(
                "{localpart} was retired; a retired localpart is never used again"
            )))
        }
        Some(_) => {}
        None => {
            if let Some(other) = app
                .store
                .identity_by_localpart(localpart)
                .await
                .map_err(|e| transient(&e))?
            {
                return Err(Failure::Refused(format!(
                    "{localpart} belongs to another identity ({} of {}); choose another localpart",
                    other.subject, other.provider
                )));
            }
            if !account.adopt_existing_user {
                match app.homeserver.is_localpart_available(localpart).await {
                    Ok(Ok(())) => {}
                    Ok(Err(Unavailable::InUse)) => {
                        return Err(Failure::Refused(format!(
                            "{localpart} exists in the homeserver already; set adopt_existing_user = true to use it for {}",
                            account.label
                        )))
                    }
                    Ok(Err(reason)) => {
                        return Err(Failure::Refused(format!(
                            "the homeserver refuses localpart {localpart}: {reason:?}"
                        )))
                    }
                    Err(e) => return Err(transient(&e)),
                }
            }
            app.store
                .add_identity(&Identity {
                    provider: issuer.namespace.clone(),
                    subject: subject.clone(),
                    localpart: localpart.clone(),
                    created_at: now,
                    deleted_at: None,
                })
                .await
                .map_err(|e| transient(&e))?;
        }
    }
    let mut request = ProvisionRequest::new(localpart.clone());
    if let Some(name) = &account.display_name {
        request.displayname = FieldAction::Set(name.clone());
    }
    let refused = |e: crate::homeserver::HomeserverError| {
        if e.is_transient() {
            Failure::Transient(e.to_string())
        } else {
            Failure::Refused(e.to_string())
        }
    };
    app.homeserver
        .provision_user(&request)
        .await
        .map_err(refused)?;
    let device_name = format!("service account ({})", account.label);
    app.homeserver
        .upsert_device(localpart, &account.device, Some(&device_name))
        .await
        .map_err(refused)?;
    let sessions = app
        .store
        .active_sessions_of_subject(&issuer.namespace, &subject)
        .await
        .map_err(|e| transient(&e))?;
    let mut current = None;
    for session in sessions {
        if session.device_id == account.device && current.is_none() {
            current = Some(session.id.to_string());
        } else {
            // The configured device changed: the old one goes.
            let _ =
                crate::sessions::end_session(app, &session, EndCause::ServiceAccountDisabled).await;
        }
    }
    if let Some(id) = current {
        return Ok(id);
    }
    let session = Session {
        id: SessionId::new(),
        provider: issuer.namespace.clone(),
        subject: subject.clone(),
        localpart: localpart.clone(),
        device_id: account.device.clone(),
        client_id: format!(
            "{SESSION_CLIENT_PREFIX}{}",
            account.client_id.as_deref().unwrap_or(&subject)
        ),
        idp_sid: None,
        scope: crate::scope::introspection_scope(&account.device, account.admin),
        admin: account.admin,
        state: SessionState::Active,
        sealed_refresh_token: None,
        sealed_access_token: None,
        created_at: now,
        ended_at: None,
        end_reason: None,
    };
    app.store
        .add_session(&session, &[])
        .await
        .map_err(|e| transient(&e))?;
    audit::record(
        app.store.as_ref(),
        AuditEntry {
            actor: "mxidp".into(),
            action: "jwt_shim.service_account_provisioned".into(),
            target: localpart.to_string(),
            source: "jwt_shim".into(),
            outcome: "ok".into(),
            correlation_id: session.id.to_string(),
            details: json!({
                "issuer": issuer.name(),
                "account": account.label,
                "device_id": account.device.as_str(),
                "admin": account.admin,
            }),
        },
    )
    .await;
    Ok(session.id.to_string())
}

/// A disabled account's sessions end (its device goes from the homeserver).
async fn disable(app: &AppState, issuer: &Issuer, account: &ServiceAccount) {
    let sessions = match app
        .store
        .active_sessions_of_subject(&issuer.namespace, &account.identity_subject())
        .await
    {
        Ok(sessions) => sessions,
        Err(e) => {
            tracing::warn!(localpart = %account.localpart, error = %e, "JWT shim: cannot read the disabled account's sessions");
            return;
        }
    };
    for session in sessions {
        if let Err(e) =
            crate::sessions::end_session(app, &session, EndCause::ServiceAccountDisabled).await
        {
            tracing::warn!(localpart = %account.localpart, error = %e, "JWT shim: could not end the disabled account's session");
        }
    }
}

/// One audit record per service-account token, at its first sight (by this process): who
/// used which account, never the token.
pub(super) async fn audit_first_use(
    app: &AppState,
    issuer: &Issuer,
    account: &ServiceAccount,
    claims: &Map<String, Value>,
) {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    let Some(shim) = app.jwt_shim.as_ref() else {
        return;
    };
    shim.first_use
        .record(
            app.store.as_ref(),
            AuditEntry {
                actor: format!("client:{}", super::claims::client_id(claims).unwrap_or("")),
                action: "jwt_shim.token_first_use".into(),
                target: account.localpart.to_string(),
                source: "introspection".into(),
                outcome: "ok".into(),
                correlation_id: text("jti").to_owned(),
                details: json!({
                    "issuer": issuer.name(),
                    "subject": text("sub"),
                    "jti": text("jti"),
                    "iat": claims.get("iat"),
                    "exp": claims.get("exp"),
                }),
            },
        )
        .await;
}

/// A user token with the Matrix scopes, after verification.
pub(super) struct UserToken<'a> {
    pub subject: &'a str,
    pub client: &'a str,
    pub device: &'a DeviceId,
    pub admin: bool,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Maps a user token to the Matrix user mxidp links its subject to, and its device to a
/// session: found, or created now (with the device) unless it ended after the token was issued.
pub(super) async fn user_token(
    app: &AppState,
    shim: &JwtShim,
    token: UserToken<'_>,
) -> Result<Result<Verdict, Refusal>, ShimError> {
    let provider = app.mapping.upstream_id.as_str();
    let Some(identity) = app
        .store
        .identity_by_subject(provider, token.subject)
        .await?
    else {
        return Ok(Err(
            "a user mxidp has never seen (a bare token never creates an account)".into(),
        ));
    };
    if identity.deleted_at.is_some() {
        return Ok(Err("the user was deleted at the IdP".into()));
    }
    if !app.subject_tokens.allows(token.subject, token.issued_at) {
        return Ok(Err(
            "the user is disabled, or the token was issued before their sessions were ended".into(),
        ));
    }
    let client_id = format!("{SESSION_CLIENT_PREFIX}{}", token.client);
    let latest = app
        .store
        .latest_device_session(provider, token.subject, &client_id, token.device)
        .await?;
    let session_id = match latest {
        Some(s) if s.state == SessionState::Active => s.id.to_string(),
        Some(s) if s.ended_at.is_some_and(|ended| ended >= token.issued_at) => {
            return Ok(Err(
                "the device's session ended after the token was issued".into()
            ))
        }
        _ => create_device(app, shim, &identity, &client_id, &token).await?,
    };
    let active = ActiveToken::for_jwt(
        JwtGrant {
            session_id: &session_id,
            subject: token.subject,
            localpart: identity.localpart.as_str(),
            client_id: token.client,
            device_id: token.device,
            admin: token.admin,
        },
        token.issued_at,
        token.expires_at,
    );
    Ok(Ok(Verdict {
        active: std::sync::Arc::new(active),
        holder: Holder::User {
            subject: token.subject.to_owned(),
            issued_at: token.issued_at,
        },
        expires_at: token.expires_at,
    }))
}

async fn create_device(
    app: &AppState,
    shim: &JwtShim,
    identity: &Identity,
    client_id: &str,
    token: &UserToken<'_>,
) -> Result<String, ShimError> {
    let name = format!("{} (IdP token)", token.client);
    match tokio::time::timeout(
        shim.device_timeout,
        app.homeserver
            .upsert_device(&identity.localpart, token.device, Some(&name)),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ShimError::Homeserver(e.to_string())),
        Err(_) => {
            return Err(ShimError::Homeserver(format!(
                "no answer within jwt_shim.device_timeout_ms ({} ms)",
                shim.device_timeout.as_millis()
            )))
        }
    }
    let now = now_unix();
    let session = Session {
        id: SessionId::new(),
        provider: identity.provider.clone(),
        subject: identity.subject.clone(),
        localpart: identity.localpart.clone(),
        device_id: token.device.clone(),
        client_id: client_id.to_owned(),
        idp_sid: None,
        scope: crate::scope::introspection_scope(token.device, token.admin),
        admin: token.admin,
        state: SessionState::Active,
        sealed_refresh_token: None,
        sealed_access_token: None,
        created_at: now,
        ended_at: None,
        end_reason: None,
    };
    app.store.add_session(&session, &[]).await?;
    audit::record(
        app.store.as_ref(),
        AuditEntry {
            actor: format!("client:{client_id}"),
            action: "jwt_shim.device_created".into(),
            target: identity.localpart.to_string(),
            source: "introspection".into(),
            outcome: "ok".into(),
            correlation_id: session.id.to_string(),
            details: json!({
                "subject": identity.subject,
                "device_id": token.device.as_str(),
                "admin": token.admin,
            }),
        },
    )
    .await;
    Ok(session.id.to_string())
}
