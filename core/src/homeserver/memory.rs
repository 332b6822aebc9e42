//! An in-memory homeserver for tests. It behaves like Synapse's `/_synapse/mas/*` where a test
//! could notice: availability is case-insensitive and counts deactivated users, deactivation
//! keeps the user, device calls on a missing user fail, deleting a device twice succeeds.
//!
//! Clones share one state, so a test can hand one clone to the code under test (as
//! `Arc<dyn HomeserverConnection>`) and inspect another.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    FieldAction, HomeserverConnection, HomeserverError, MatrixUser, ProvisionRequest, Provisioned,
    Unavailable,
};
use crate::ids::{DeviceId, Localpart};

/// One user as the fake homeserver stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryUser {
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub emails: BTreeSet<String>,
    pub locked: bool,
    pub suspended: bool,
    pub deactivated: bool,
    pub erased: bool,
    /// Device id → display name.
    pub devices: BTreeMap<DeviceId, Option<String>>,
    /// Set by `allow_cross_signing_reset`.
    pub cross_signing_reset_allowed: bool,
}

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<Localpart, MemoryUser>,
    /// Lowercased localparts held by accounts mxidp did not create (e.g. a legacy `Alice`).
    taken: BTreeSet<String>,
    /// Lowercased localparts inside an application service's exclusive namespace.
    exclusive: BTreeSet<String>,
    calls: Vec<String>,
    unavailable: bool,
    /// Refuse (400) every provisioning that sets a profile field, as Synapse does with a value
    /// it will not store.
    refuse_profiles: bool,
}

#[derive(Debug, Clone)]
pub struct MemoryHomeserver {
    server_name: String,
    state: Arc<Mutex<State>>,
}

impl Default for MemoryHomeserver {
    fn default() -> Self {
        Self::new("example.org")
    }
}

impl MemoryHomeserver {
    pub fn new(server_name: impl Into<String>) -> Self {
        Self {
            server_name: server_name.into(),
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; the state is still
        // worth reading for the next assertion.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the call, then fails with a transport error if the homeserver is switched off.
    fn enter(&self, call: String) -> Result<MutexGuard<'_, State>, HomeserverError> {
        let mut state = self.state();
        state.calls.push(call);
        if state.unavailable {
            return Err(HomeserverError::Transport(
                "memory homeserver switched off".to_owned(),
            ));
        }
        Ok(state)
    }

    /// While `true`, every call is recorded and then fails with [`HomeserverError::Transport`].
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// While `true`, a `provision_user` that sets a display name, avatar or e-mails gets 400.
    pub fn set_refuse_profiles(&self, refuse: bool) {
        self.state().refuse_profiles = refuse;
    }

    /// Every call made so far, in order, e.g. `"upsert_device alice DEVICEID1234"` (calls made
    /// while unavailable included).
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The stored user, whether active or deactivated.
    pub fn user(&self, localpart: &Localpart) -> Option<MemoryUser> {
        self.state().users.get(localpart).cloned()
    }

    pub fn devices(&self, localpart: &Localpart) -> BTreeSet<DeviceId> {
        self.state()
            .users
            .get(localpart)
            .map(|user| user.devices.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A device's display name, when it has one.
    pub fn device_display_name(&self, localpart: &Localpart, device: &DeviceId) -> Option<String> {
        self.state()
            .users
            .get(localpart)
            .and_then(|user| user.devices.get(device).cloned().flatten())
    }

    /// Puts a user in place directly, without recording a call.
    pub fn insert_user(&self, localpart: Localpart, user: MemoryUser) {
        self.state().users.insert(localpart, user);
    }

    /// Marks a localpart as held by an account mxidp does not manage; taken case-insensitively,
    /// so `"Alice"` also blocks `alice`, as Synapse's `check_username` does.
    pub fn mark_taken(&self, localpart: &str) {
        self.state().taken.insert(localpart.to_lowercase());
    }

    /// Marks a localpart as inside an application service's exclusive namespace.
    pub fn mark_exclusive(&self, localpart: &str) {
        self.state().exclusive.insert(localpart.to_lowercase());
    }

    fn server_name_fits(&self, localpart: &Localpart) -> bool {
        localpart.check_length(&self.server_name).is_ok()
    }
}

impl State {
    fn user_mut(&mut self, localpart: &Localpart) -> Result<&mut MemoryUser, HomeserverError> {
        self.users
            .get_mut(localpart)
            .ok_or_else(|| HomeserverError::UserNotFound(localpart.to_string()))
    }

    fn unavailable_reason(&self, localpart: &Localpart, fits: bool) -> Option<Unavailable> {
        let lower = localpart.as_str().to_lowercase();
        if !fits {
            Some(Unavailable::Invalid)
        } else if self
            .users
            .keys()
            .any(|lp| lp.as_str().eq_ignore_ascii_case(&lower))
            || self.taken.contains(&lower)
        {
            // Deactivated users keep their row, so their localparts stay taken for good.
            Some(Unavailable::InUse)
        } else if self.exclusive.contains(&lower) {
            Some(Unavailable::Exclusive)
        } else {
            None
        }
    }
}

fn rejected(errcode: &str, message: &str) -> HomeserverError {
    HomeserverError::Rejected {
        status: 400,
        errcode: errcode.to_owned(),
        message: message.to_owned(),
    }
}

#[async_trait]
impl HomeserverConnection for MemoryHomeserver {
    fn server_name(&self) -> &str {
        &self.server_name
    }

    async fn query_user(
        &self,
        localpart: &Localpart,
    ) -> Result<Option<MatrixUser>, HomeserverError> {
        let state = self.enter(format!("query_user {localpart}"))?;
        Ok(state.users.get(localpart).map(|user| MatrixUser {
            user_id: localpart.user_id(&self.server_name),
            display_name: user.display_name.clone(),
            avatar_url: user.avatar_url.clone(),
            is_suspended: user.suspended,
            is_deactivated: user.deactivated,
        }))
    }

    async fn is_localpart_available(
        &self,
        localpart: &Localpart,
    ) -> Result<Result<(), Unavailable>, HomeserverError> {
        let fits = self.server_name_fits(localpart);
        let state = self.enter(format!("is_localpart_available {localpart}"))?;
        Ok(match state.unavailable_reason(localpart, fits) {
            Some(reason) => Err(reason),
            None => Ok(()),
        })
    }

    async fn provision_user(
        &self,
        request: &ProvisionRequest,
    ) -> Result<Provisioned, HomeserverError> {
        let localpart = &request.localpart;
        let fits = self.server_name_fits(localpart);
        let mut state = self.enter(format!("provision_user {localpart}"))?;
        let outcome = if state.users.contains_key(localpart) {
            Provisioned::Updated
        } else {
            // Synapse registers the user through the same checks as a free-localpart query.
            match state.unavailable_reason(localpart, fits) {
                Some(Unavailable::InUse) => {
                    return Err(rejected("M_USER_IN_USE", "User ID already taken."))
                }
                Some(Unavailable::Invalid) => {
                    return Err(rejected("M_INVALID_USERNAME", "User ID is too long"))
                }
                Some(Unavailable::Exclusive) => {
                    return Err(rejected(
                        "M_EXCLUSIVE",
                        "User ID is reserved by an application service",
                    ))
                }
                None => {}
            }
            // Synapse's registration makes the localpart the display name when none is given.
            let user = MemoryUser {
                display_name: Some(localpart.to_string()),
                ..MemoryUser::default()
            };
            state.users.insert(localpart.clone(), user);
            Provisioned::Created
        };
        if state.refuse_profiles && request.has_profile() {
            return Err(rejected("M_INVALID_PARAM", "profile refused (test)"));
        }
        // Synapse's canonicalise_email: exactly one `@`, else the whole call fails with 400.
        if let FieldAction::Set(emails) = &request.emails {
            if emails.iter().any(|e| e.trim().split('@').count() != 2) {
                return Err(rejected("M_UNKNOWN", "Unable to parse email address"));
            }
        }
        let user = state.user_mut(localpart)?;
        match &request.displayname {
            FieldAction::Keep => {}
            FieldAction::Set(name) => user.display_name = Some(name.clone()),
            FieldAction::Unset => user.display_name = None,
        }
        match &request.avatar_url {
            FieldAction::Keep => {}
            FieldAction::Set(url) => user.avatar_url = Some(url.clone()),
            FieldAction::Unset => user.avatar_url = None,
        }
        match &request.emails {
            FieldAction::Keep => {}
            FieldAction::Set(emails) => user.emails = emails.iter().cloned().collect(),
            FieldAction::Unset => user.emails.clear(),
        }
        if let Some(locked) = request.locked {
            user.locked = locked;
        }
        Ok(outcome)
    }

    async fn upsert_device(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!("upsert_device {localpart} {device_id}"))?;
        // Synapse's MAX_DEVICE_DISPLAY_NAME_LEN.
        if display_name.is_some_and(|n| n.chars().count() > 100) {
            return Err(HomeserverError::Rejected {
                status: 400,
                errcode: "M_INVALID_PARAM".into(),
                message: "Device display name is too long (max 100)".into(),
            });
        }
        let user = state.user_mut(localpart)?;
        let entry = user.devices.entry(device_id.clone()).or_default();
        if let Some(name) = display_name {
            *entry = Some(name.to_owned());
        }
        Ok(())
    }

    async fn update_device_display_name(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
        display_name: &str,
    ) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!(
            "update_device_display_name {localpart} {device_id}"
        ))?;
        // SynapseConnection cannot tell a missing user from a missing device here (both are
        // 404 M_NOT_FOUND), so both come back as the same rejection, with Synapse's messages.
        let not_found = |message: &str| HomeserverError::Rejected {
            status: 404,
            errcode: "M_NOT_FOUND".to_owned(),
            message: message.to_owned(),
        };
        let user = state
            .users
            .get_mut(localpart)
            .ok_or_else(|| not_found("User not found"))?;
        let name = user
            .devices
            .get_mut(device_id)
            .ok_or_else(|| not_found("Not found"))?;
        *name = Some(display_name.to_owned());
        Ok(())
    }

    async fn delete_device(
        &self,
        localpart: &Localpart,
        device_id: &DeviceId,
    ) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!("delete_device {localpart} {device_id}"))?;
        // Like SynapseConnection: a device that is gone, or a user that is, is the goal state.
        if let Some(user) = state.users.get_mut(localpart) {
            user.devices.remove(device_id);
        }
        Ok(())
    }

    async fn sync_devices(
        &self,
        localpart: &Localpart,
        devices: &BTreeSet<DeviceId>,
    ) -> Result<(), HomeserverError> {
        let listed: Vec<&str> = devices.iter().map(DeviceId::as_str).collect();
        let mut state = self.enter(format!("sync_devices {localpart} [{}]", listed.join(" ")))?;
        let user = state.user_mut(localpart)?;
        user.devices.retain(|id, _| devices.contains(id));
        for id in devices {
            user.devices.entry(id.clone()).or_default();
        }
        Ok(())
    }

    async fn delete_user(&self, localpart: &Localpart, erase: bool) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!("delete_user {localpart} erase={erase}"))?;
        let user = state.user_mut(localpart)?;
        // Synapse's deactivation logs out every device and removes the e-mail addresses, but
        // keeps the user row (and so the localpart).
        user.deactivated = true;
        user.devices.clear();
        user.emails.clear();
        if erase {
            user.erased = true;
            user.display_name = None;
            user.avatar_url = None;
        }
        Ok(())
    }

    async fn reactivate_user(&self, localpart: &Localpart) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!("reactivate_user {localpart}"))?;
        let user = state.user_mut(localpart)?;
        user.deactivated = false;
        user.erased = false;
        Ok(())
    }

    async fn set_displayname(
        &self,
        localpart: &Localpart,
        displayname: &str,
    ) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!("set_displayname {localpart}"))?;
        state.user_mut(localpart)?.display_name = Some(displayname.to_owned());
        Ok(())
    }

    async fn unset_displayname(&self, localpart: &Localpart) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!("unset_displayname {localpart}"))?;
        state.user_mut(localpart)?.display_name = None;
        Ok(())
    }

    async fn allow_cross_signing_reset(
        &self,
        localpart: &Localpart,
    ) -> Result<(), HomeserverError> {
        let mut state = self.enter(format!("allow_cross_signing_reset {localpart}"))?;
        state.user_mut(localpart)?.cross_signing_reset_allowed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(value: &str) -> Localpart {
        Localpart::parse(value).unwrap()
    }

    fn device(id: &str) -> DeviceId {
        DeviceId::parse(id).unwrap()
    }

    async fn with_alice() -> MemoryHomeserver {
        let hs = MemoryHomeserver::default();
        hs.provision_user(&ProvisionRequest::new(lp("alice")))
            .await
            .unwrap();
        hs
    }

    #[tokio::test]
    async fn provision_creates_then_updates() {
        let hs = MemoryHomeserver::new("example.org");
        let request = ProvisionRequest {
            displayname: FieldAction::Set("Alice".to_owned()),
            emails: FieldAction::Set(vec!["alice@example.org".to_owned()]),
            locked: Some(true),
            ..ProvisionRequest::new(lp("alice"))
        };
        assert_eq!(
            hs.provision_user(&request).await.unwrap(),
            Provisioned::Created
        );
        let user = hs.user(&lp("alice")).unwrap();
        assert_eq!(user.display_name.as_deref(), Some("Alice"));
        assert_eq!(user.emails, ["alice@example.org".to_owned()].into());
        assert!(user.locked);

        // Keep leaves everything, None leaves the lock.
        assert_eq!(
            hs.provision_user(&ProvisionRequest::new(lp("alice")))
                .await
                .unwrap(),
            Provisioned::Updated
        );
        assert_eq!(hs.user(&lp("alice")).unwrap(), user);

        let request = ProvisionRequest {
            displayname: FieldAction::Unset,
            avatar_url: FieldAction::Set("mxc://example.org/a".to_owned()),
            emails: FieldAction::Unset,
            locked: Some(false),
            ..ProvisionRequest::new(lp("alice"))
        };
        hs.provision_user(&request).await.unwrap();
        let user = hs.user(&lp("alice")).unwrap();
        assert_eq!(user.display_name, None);
        assert_eq!(user.avatar_url.as_deref(), Some("mxc://example.org/a"));
        assert!(user.emails.is_empty());
        assert!(!user.locked);

        let matrix = hs.query_user(&lp("alice")).await.unwrap().unwrap();
        assert_eq!(matrix.user_id, "@alice:example.org");
        assert_eq!(matrix.avatar_url.as_deref(), Some("mxc://example.org/a"));
        assert_eq!(hs.query_user(&lp("bob")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn new_user_without_display_name_gets_the_localpart() {
        let hs = with_alice().await;
        assert_eq!(
            hs.user(&lp("alice")).unwrap().display_name.as_deref(),
            Some("alice")
        );
    }

    #[tokio::test]
    async fn availability_mirrors_synapse() {
        let hs = with_alice().await;
        assert_eq!(hs.is_localpart_available(&lp("bob")).await.unwrap(), Ok(()));
        assert_eq!(
            hs.is_localpart_available(&lp("alice")).await.unwrap(),
            Err(Unavailable::InUse)
        );

        // Deactivated users keep their localpart.
        hs.delete_user(&lp("alice"), true).await.unwrap();
        assert_eq!(
            hs.is_localpart_available(&lp("alice")).await.unwrap(),
            Err(Unavailable::InUse)
        );

        // Case-insensitive: a legacy `Carol` blocks `carol`.
        hs.mark_taken("Carol");
        assert_eq!(
            hs.is_localpart_available(&lp("carol")).await.unwrap(),
            Err(Unavailable::InUse)
        );
        let error = hs
            .provision_user(&ProvisionRequest::new(lp("carol")))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, HomeserverError::Rejected { status: 400, errcode, .. } if errcode == "M_USER_IN_USE")
        );

        hs.mark_exclusive("irc_bridge");
        assert_eq!(
            hs.is_localpart_available(&lp("irc_bridge")).await.unwrap(),
            Err(Unavailable::Exclusive)
        );

        // `@lp:server` over 255 bytes.
        let long = lp(&"a".repeat(250));
        assert_eq!(
            hs.is_localpart_available(&long).await.unwrap(),
            Err(Unavailable::Invalid)
        );
    }

    #[tokio::test]
    async fn delete_user_deactivates_and_keeps_the_row() {
        let hs = with_alice().await;
        let alice = lp("alice");
        hs.upsert_device(&alice, &device("DEVICEID1234"), None)
            .await
            .unwrap();
        hs.delete_user(&alice, false).await.unwrap();
        let user = hs.user(&alice).unwrap();
        assert!(user.deactivated);
        assert!(!user.erased);
        assert_eq!(user.display_name.as_deref(), Some("alice"));
        assert!(hs.devices(&alice).is_empty());
        assert!(hs.query_user(&alice).await.unwrap().unwrap().is_deactivated);

        hs.delete_user(&alice, true).await.unwrap();
        let user = hs.user(&alice).unwrap();
        assert!(user.erased);
        assert_eq!(user.display_name, None);

        hs.reactivate_user(&alice).await.unwrap();
        let user = hs.user(&alice).unwrap();
        assert!(!user.deactivated);
        assert!(!user.erased);

        assert!(matches!(
            hs.delete_user(&lp("nobody"), false).await,
            Err(HomeserverError::UserNotFound(_))
        ));
        assert!(matches!(
            hs.reactivate_user(&lp("nobody")).await,
            Err(HomeserverError::UserNotFound(_))
        ));
    }

    #[tokio::test]
    async fn devices_follow_synapse_rules() {
        let hs = with_alice().await;
        let alice = lp("alice");
        let a = device("AAAAAAAAAA");
        let b = device("BBBBBBBBBB");
        let c = device("CCCCCCCCCC");

        assert!(matches!(
            hs.upsert_device(&lp("bob"), &a, None).await,
            Err(HomeserverError::UserNotFound(lp)) if lp == "bob"
        ));

        hs.upsert_device(&alice, &a, Some("Phone")).await.unwrap();
        // Upserting again without a name keeps the name.
        hs.upsert_device(&alice, &a, None).await.unwrap();
        assert_eq!(
            hs.user(&alice).unwrap().devices[&a].as_deref(),
            Some("Phone")
        );
        hs.update_device_display_name(&alice, &a, "Old phone")
            .await
            .unwrap();
        for (who, id) in [(lp("bob"), &a), (alice.clone(), &c)] {
            assert!(matches!(
                hs.update_device_display_name(&who, id, "x").await,
                Err(HomeserverError::Rejected { status: 404, .. })
            ));
        }
        assert_eq!(
            hs.user(&alice).unwrap().devices[&a].as_deref(),
            Some("Old phone")
        );
        hs.upsert_device(&alice, &b, None).await.unwrap();
        assert_eq!(hs.devices(&alice), [a.clone(), b.clone()].into());

        hs.delete_device(&alice, &a).await.unwrap();
        hs.delete_device(&alice, &a).await.unwrap();
        hs.delete_device(&lp("bob"), &a).await.unwrap();
        assert_eq!(hs.devices(&alice), [b.clone()].into());

        hs.sync_devices(&alice, &[c.clone()].into()).await.unwrap();
        assert_eq!(hs.devices(&alice), [c.clone()].into());
        assert!(matches!(
            hs.sync_devices(&lp("bob"), &BTreeSet::new()).await,
            Err(HomeserverError::UserNotFound(_))
        ));
        assert!(hs.devices(&lp("bob")).is_empty());
    }

    #[tokio::test]
    async fn records_calls_and_fails_while_unavailable() {
        let hs = with_alice().await;
        let alice = lp("alice");
        let shared: Arc<dyn HomeserverConnection> = Arc::new(hs.clone());
        shared
            .upsert_device(&alice, &device("DEVICEID1234"), None)
            .await
            .unwrap();

        hs.set_unavailable(true);
        let error = shared.set_displayname(&alice, "A").await.unwrap_err();
        assert!(matches!(error, HomeserverError::Transport(_)));
        assert!(error.is_transient());
        assert_eq!(
            hs.user(&alice).unwrap().display_name.as_deref(),
            Some("alice")
        );

        hs.set_unavailable(false);
        shared.set_displayname(&alice, "A").await.unwrap();
        shared.unset_displayname(&alice).await.unwrap();
        shared.allow_cross_signing_reset(&alice).await.unwrap();
        assert!(hs.user(&alice).unwrap().cross_signing_reset_allowed);
        shared
            .sync_devices(&alice, &[device("AAAAAAAAAA"), device("BBBBBBBBBB")].into())
            .await
            .unwrap();

        assert_eq!(
            hs.calls(),
            [
                "provision_user alice",
                "upsert_device alice DEVICEID1234",
                "set_displayname alice",
                "set_displayname alice",
                "unset_displayname alice",
                "allow_cross_signing_reset alice",
                "sync_devices alice [AAAAAAAAAA BBBBBBBBBB]",
            ]
        );
        hs.clear_calls();
        assert!(hs.calls().is_empty());
    }
}
