//! The homeserver behind one trait (docs/synapse-contract.md). `synapse` speaks Synapse's
//! `/_synapse/mas/*` API; `memory` is the double used by unit tests.

use std::collections::BTreeSet;

use async_trait::async_trait;

use crate::ids::{DeviceId, Localpart};

pub mod memory;
pub mod synapse;

pub use memory::MemoryHomeserver;
pub use synapse::SynapseConnection;

/// What Synapse knows about a user (`GET query_user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixUser {
    pub user_id: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub is_suspended: bool,
    pub is_deactivated: bool,
}

/// What to do with one profile field on `provision_user`. Synapse answers 400 when both
/// `set_x` and `unset_x` are present, so the type makes that unrepresentable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FieldAction<T> {
    #[default]
    Keep,
    Set(T),
    Unset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionRequest {
    pub localpart: Localpart,
    pub displayname: FieldAction<String>,
    pub avatar_url: FieldAction<String>,
    pub emails: FieldAction<Vec<String>>,
    /// `None` leaves the lock state as it is (Synapse < 1.150 ignores the field).
    pub locked: Option<bool>,
}

impl ProvisionRequest {
    pub fn new(localpart: Localpart) -> Self {
        Self {
            localpart,
            displayname: FieldAction::Keep,
            avatar_url: FieldAction::Keep,
            emails: FieldAction::Keep,
            locked: None,
        }
    }

    /// Whether the request changes profile fields (display name, avatar, e-mails).
    pub fn has_profile(&self) -> bool {
        !matches!(
            (&self.displayname, &self.avatar_url, &self.emails),
            (FieldAction::Keep, FieldAction::Keep, FieldAction::Keep)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    Created,
    Updated,
}

/// Why a localpart cannot be used (`is_localpart_available` answers 400 with one of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    InUse,
    Invalid,
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum HomeserverError {
    #[error("the homeserver does not know user {0}")]
    UserNotFound(String),
    #[error("the homeserver refused the shared secret (is secret_path the same file in Synapse and mxidp?)")]
    Unauthorized,
    #[error("the homeserver rejected the request: {status} {errcode} {message}")]
    Rejected {
        status: u16,
        errcode: String,
        message: String,
    },
    #[error("the homeserver could not be reached: {0}")]
    Transport(String),
    #[error("the homeserver answered something unexpected: {0}")]
    Protocol(String),
}

impl HomeserverError {
    /// Worth retrying later (network, 5xx), as opposed to a refusal that will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            HomeserverError::Transport(_) => true,
            HomeserverError::Rejected { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

#[async_trait]
pub trait HomeserverConnection: Send + Sync {
    /// The homeserver's server name, the part after `:` in user ids.
    fn server_name(&self) -> &str;

    async fn query_user(
        &self,
        localpart: &Localpart,
    ) -> Result<Option<MatrixUser>, HomeserverError>;

    /// `Ok(Ok(()))` when available, `Ok(Err(reason))` when Synapse says it is not.
    async fn is_localpart_available(
        &self,
        localpart: &Localpart,
    ) -> Result<Result<(), Unavailable>, HomeserverError>;

    async fn provision_user(
        &self,
        request: &ProvisionRequest,
    ) -> Result<Provisioned, HomeserverError>;

    async fn upsert_device(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> Result<(), HomeserverError>;

    async fn update_device_display_name(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
        display_name: &str,
    ) -> Result<(), HomeserverError>;

    /// Deleting a device is how a sign-out takes effect at once: Synapse checks the device on
    /// every request even while an introspection answer is cached. Deleting a device that is
    /// already gone succeeds.
    async fn delete_device(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
    ) -> Result<(), HomeserverError>;

    /// Make the user's device list exactly `devices` (deletes the others, creates missing ones).
    async fn sync_devices(
        &self,
        localpart: &Localpart,
        devices: &BTreeSet<DeviceId>,
    ) -> Result<(), HomeserverError>;

    /// Deactivates (Synapse keeps the row); `erase` asks for GDPR erasure.
    async fn delete_user(&self, localpart: &Localpart, erase: bool) -> Result<(), HomeserverError>;

    async fn reactivate_user(&self, localpart: &Localpart) -> Result<(), HomeserverError>;

    async fn set_displayname(
        &self,
        localpart: &Localpart,
        displayname: &str,
    ) -> Result<(), HomeserverError>;

    async fn unset_displayname(&self, localpart: &Localpart) -> Result<(), HomeserverError>;

    /// Opens Synapse's 10-minute window for replacing the cross-signing master key without UIA.
    async fn allow_cross_signing_reset(&self, localpart: &Localpart)
        -> Result<(), HomeserverError>;
}
