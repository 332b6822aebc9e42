//! What a successful IdP sign-in means for Matrix: access policy, the (provider, subject) →
//! localpart link with conflict handling and tombstones, admin policy, profile (docs/identity.md).

use crate::app::MappingSettings;
use crate::homeserver::{HomeserverConnection, HomeserverError, Unavailable};
use crate::identity::{
    candidates, display_name, sanitize_localpart, verified_emails, MappingError,
};
use crate::ids::{now_unix, Localpart};
use crate::provider::{Claims, Provider};
use crate::store::{Identity, Store, StoreError};
use serde_json::Value;

/// The Matrix user a sign-in maps to.
#[derive(Debug, Clone)]
pub struct MatrixLogin {
    pub subject: String,
    pub localpart: Localpart,
    pub admin: bool,
    pub display_name: Option<String>,
    pub emails: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the identity provider did not name a stable subject for this user")]
    NoSubject,
    #[error("your organisation has not given you access to Matrix")]
    AccessDenied,
    #[error("the Matrix account of this identity was deleted; it cannot be used again")]
    Tombstoned,
    /// The adapter's [`Provider::admit`] refused the user; the text is for the user.
    #[error("{0}")]
    NotAdmitted(String),
    #[error("no Matrix user name can be derived from your profile: {0}")]
    Mapping(#[from] MappingError),
    #[error("the Matrix user name {0} is already taken by another account; ask an administrator")]
    LocalpartTaken(String),
    #[error("the Matrix user name {0} is not allowed by the homeserver")]
    LocalpartInvalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("homeserver: {0}")]
    Homeserver(#[from] HomeserverError),
}

impl SignInError {
    /// The user is at fault (or policy), as opposed to an outage.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, SignInError::Store(_) | SignInError::Homeserver(_))
    }
}

pub async fn resolve(
    claims: &Claims,
    provider: &dyn Provider,
    mapping: &MappingSettings,
    store: &dyn Store,
    homeserver: &dyn HomeserverConnection,
) -> Result<MatrixLogin, SignInError> {
    let subject = provider.subject(claims).ok_or(SignInError::NoSubject)?;
    let roles = provider.roles(claims);
    if let Some(access) = &mapping.access {
        if !access.allows(claims, &roles) {
            return Err(SignInError::AccessDenied);
        }
    }
    provider.admit(claims).map_err(SignInError::NotAdmitted)?;
    let admin = mapping
        .admin
        .as_ref()
        .is_some_and(|p| p.allows(claims, &roles));

    let localpart = match store
        .identity_by_subject(&mapping.upstream_id, &subject)
        .await?
    {
        Some(identity) if identity.deleted_at.is_some() => return Err(SignInError::Tombstoned),
        // Renames at the IdP do not move the account: the link is keyed on the subject.
        Some(identity) => identity.localpart,
        None => link_new_identity(claims, &subject, mapping, store, homeserver).await?,
    };
    let emails = verified_emails(claims);
    if emails.is_empty() && claims.get("email_verified") == Some(&Value::Bool(true)) {
        // Skipped rather than refused: Synapse would answer 400 to the whole provisioning.
        tracing::warn!(%subject, "the IdP's verified e-mail is not an address Synapse accepts; not synced");
        crate::audit::record(
            store,
            crate::audit::AuditEntry {
                actor: "mxidp".into(),
                action: "profile.email_skipped".into(),
                target: subject.clone(),
                source: "signin".into(),
                outcome: "skipped: Synapse cannot parse the address".into(),
                correlation_id: subject.clone(),
                details: serde_json::Value::Null,
            },
        )
        .await;
    }
    // Kept current on every sign-in: IdP events may name the user by e-mail only.
    store
        .set_identity_email(
            &mapping.upstream_id,
            &subject,
            emails.first().map(String::as_str),
        )
        .await?;
    Ok(MatrixLogin {
        subject,
        localpart,
        admin,
        display_name: display_name(claims, mapping.displayname_template.as_ref()),
        emails: if mapping.sync_emails {
            emails
        } else {
            Vec::new()
        },
    })
}

/// First sign-in of a subject: pick a localpart nobody has ever had and link it. A localpart
/// that exists in the homeserver or in mxidp's history is never linked silently (docs/identity.md).
async fn link_new_identity(
    claims: &Claims,
    subject: &str,
    mapping: &MappingSettings,
    store: &dyn Store,
    homeserver: &dyn HomeserverConnection,
) -> Result<Localpart, SignInError> {
    let raw = mapping.localpart_template.render(claims)?;
    let base = sanitize_localpart(&raw, mapping.keep_before_at)?;
    let mut last_refusal = SignInError::LocalpartTaken(base.to_string());
    for candidate in candidates(&base, mapping.conflict) {
        if candidate.check_length(homeserver.server_name()).is_err() {
            last_refusal = SignInError::LocalpartInvalid(candidate.to_string());
            continue;
        }
        if store.identity_by_localpart(&candidate).await?.is_some() {
            last_refusal = SignInError::LocalpartTaken(candidate.to_string());
            continue;
        }
        match homeserver.is_localpart_available(&candidate).await? {
            Ok(()) => {}
            Err(Unavailable::InUse) | Err(Unavailable::Exclusive) => {
                last_refusal = SignInError::LocalpartTaken(candidate.to_string());
                continue;
            }
            Err(Unavailable::Invalid) => {
                last_refusal = SignInError::LocalpartInvalid(candidate.to_string());
                continue;
            }
        }
        let identity = Identity {
            provider: mapping.upstream_id.clone(),
            subject: subject.to_owned(),
            localpart: candidate.clone(),
            created_at: now_unix(),
            deleted_at: None,
        };
        match store.add_identity(&identity).await {
            Ok(()) => {
                tracing::info!(localpart = %candidate, "linked a new identity");
                return Ok(candidate);
            }
            // Lost a race: either this subject was linked meanwhile, or the localpart was taken.
            Err(StoreError::Conflict) => {
                if let Some(existing) = store
                    .identity_by_subject(&mapping.upstream_id, subject)
                    .await?
                {
                    return Ok(existing.localpart);
                }
                last_refusal = SignInError::LocalpartTaken(candidate.to_string());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_refusal)
}
