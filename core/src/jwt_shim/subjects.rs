//! Revocation for tokens the IdP cannot revoke: a user's JWTs issued at or before the moment
//! their sessions were all ended are inactive, and none is active while the user is locked,
//! deactivated or deleted. The event worker records these moments ([`SubjectRules::restrict`],
//! persisted first); introspection reads them from memory.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::store::{Store, StoreError, SubjectTokens};

#[derive(Default)]
pub struct SubjectRules {
    rules: RwLock<HashMap<String, SubjectTokens>>,
}

impl SubjectRules {
    pub async fn load(&self, store: &dyn Store, provider: &str) -> Result<usize, StoreError> {
        let rules = store.subject_token_rules(provider).await?;
        let count = rules.len();
        let mut map = self.rules.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        map.extend(rules.into_iter().map(|r| (r.subject.clone(), r)));
        Ok(count)
    }

    /// Whether a token of `subject` issued at `issued_at` may be active.
    pub fn allows(&self, subject: &str, issued_at: i64) -> bool {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner());
        rules
            .get(subject)
            .is_none_or(|r| !r.disabled && issued_at > r.not_before)
    }

    /// Persists the restriction, then applies it in memory.
    pub async fn restrict(
        &self,
        store: &dyn Store,
        provider: &str,
        subject: &str,
        not_before: Option<i64>,
        disabled: Option<bool>,
        now: i64,
    ) -> Result<(), StoreError> {
        let rule = store
            .restrict_subject_tokens(provider, subject, not_before, disabled, now)
            .await?;
        self.rules
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject.to_owned(), rule);
        Ok(())
    }
}
