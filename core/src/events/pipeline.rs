//! The durable event pipeline (docs/events.md): verify the sender (the receiver's job) → persist with
//! a dedupe key ([`EventPipeline::accept`]) → answer 2xx → apply through an outbox worker with
//! retries ([`run_due`], [`spawn_worker`]) → audit record.
//!
//! Delivery is at least once and the actions are idempotent (see [`super::actions`]): an event
//! stays `pending` until its actions ran, so a crash after the 2xx loses nothing; a duplicate
//! delivery is refused at the door by its dedupe key. Status events (lock, deactivation,
//! deletion…) carry the IdP's own time, and an older one never undoes a newer one for the same
//! subject.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Mutex, Notify};

use super::actions::{Action, Outcome};
use super::{ReceivedEvent, StoredEvent};
use crate::app::{App, AppState};
use crate::audit::AuditEntry;
use crate::config::EventsConfig;
use crate::ids::now_unix;
use crate::store::{Store, StoreError};

/// How often the worker looks for due retries when nothing woke it.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Events read per store query in a round.
const BATCH: i64 = 200;

/// What [`EventPipeline::accept`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Stored durably under this id; the worker will apply it.
    Stored(i64),
    /// Already received (same source and dedupe key): nothing stored, nothing will be done twice.
    Duplicate,
}

pub struct EventPipeline {
    store: Arc<dyn Store>,
    settings: EventsConfig,
    /// Wakes the worker as soon as an event is stored.
    wake: Arc<Notify>,
    /// One round at a time: the worker, and tests or start-up calling [`run_due`] directly.
    round: Mutex<()>,
}

impl EventPipeline {
    /// A pipeline with the default retry settings.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_settings(store, EventsConfig::default())
    }

    pub fn with_settings(store: Arc<dyn Store>, settings: EventsConfig) -> Self {
        Self {
            store,
            settings,
            wake: Arc::new(Notify::new()),
            round: Mutex::new(()),
        }
    }

    pub fn settings(&self) -> &EventsConfig {
        &self.settings
    }

    /// Persists a verified event. Receivers answer 2xx only after this returned `Ok`.
    pub async fn accept(
        &self,
        source: &str,
        received: ReceivedEvent,
    ) -> Result<Acceptance, StoreError> {
        let target = audit_target(&received.event);
        let details = serde_json::json!({
            "kind": received.event.kind(),
            "dedupe_key": received.dedupe_key,
            "occurred_at": received.occurred_at,
        });
        let now = now_unix();
        // Written with the event, in its transaction: a stored event always has its record.
        let mut record = AuditEntry {
            actor: actor(source),
            action: "event.received".into(),
            target,
            source: source.into(),
            outcome: "ok".into(),
            correlation_id: String::new(),
            details,
        };
        let stored = self
            .store
            .insert_event(
                source,
                &received.dedupe_key,
                received.occurred_at,
                &received.event,
                now,
                &record,
            )
            .await?;
        Ok(match stored {
            Some(id) => {
                crate::metrics::event_received(source, received.event.kind(), false);
                tracing::info!(
                    event_id = id,
                    source,
                    kind = received.event.kind(),
                    "IdP event accepted"
                );
                self.wake.notify_one();
                Acceptance::Stored(id)
            }
            None => {
                // The first duplicate is audited (with its count, in one transaction); later
                // ones are only counted on the event, so that replaying a captured token cannot
                // flood the audit log.
                record.outcome = "ignored: duplicate".into();
                record.correlation_id = format!("{source}:{}", received.dedupe_key);
                let duplicates = self
                    .store
                    .count_duplicate(source, &received.dedupe_key, &record, now)
                    .await?;
                crate::metrics::event_received(source, received.event.kind(), true);
                tracing::info!(
                    source,
                    kind = received.event.kind(),
                    duplicates,
                    "duplicate IdP event ignored"
                );
                Acceptance::Duplicate
            }
        })
    }

    /// The worker waits on this between rounds.
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The delay before attempt `attempts + 1` after `attempts` failures: doubling from
    /// `retry_initial_seconds`, capped at `retry_max_seconds`, plus up to half again of jitter
    /// (within the cap) so that a backlog does not retry in lockstep when the homeserver returns.
    pub fn retry_delay(&self, attempts: i64) -> i64 {
        let initial = self.settings.retry_initial_seconds.max(1);
        let max = self.settings.retry_max_seconds.max(initial);
        let doublings = attempts.saturating_sub(1).clamp(0, 62) as u32;
        let base = initial.saturating_mul(1u64 << doublings.min(40)).min(max);
        let jitter = rand::thread_rng().gen_range(0..=base / 2);
        base.saturating_add(jitter).min(max) as i64
    }
}

/// Applies every event due at `now`, in the order of the IdP's own time; returns how many were
/// processed (applied, ignored, failed or given up). Rounds never overlap.
pub async fn run_due(app: &AppState, now: i64) -> Result<usize, StoreError> {
    let _round = app.events.round.lock().await;
    let homeserver_down = AtomicBool::new(false);
    let mut processed = std::collections::HashSet::new();
    loop {
        let batch = app.store.due_events(now, BATCH).await?;
        // Every outcome takes an event out of the due set; should a store ever fail to record
        // one, skipping what this round did already keeps the round from looping forever.
        let fresh: Vec<&StoredEvent> = batch
            .iter()
            .filter(|e| !processed.contains(&e.id))
            .collect();
        if fresh.is_empty() {
            if !batch.is_empty() {
                return Err(StoreError::Database(
                    "processed IdP events are still due: their outcome was not recorded".into(),
                ));
            }
            break;
        }
        for event in fresh {
            process(app, event, now, &homeserver_down).await?;
            processed.insert(event.id);
        }
    }
    Ok(processed.len())
}

/// Applies one just-stored event in the caller's task, when no round is running: a client that
/// revokes its token finds the device gone when the answer arrives, as long as the homeserver
/// answers. Otherwise (a round is running, the homeserver is down) the event stays with the
/// worker, durable as any other. Returns whether it ran.
pub async fn apply_now(app: &AppState, id: i64) -> Result<bool, StoreError> {
    let Ok(_round) = app.events.round.try_lock() else {
        return Ok(false);
    };
    let Some(event) = app.store.event(id).await? else {
        return Ok(false);
    };
    if event.state != super::EventState::Pending {
        return Ok(false);
    }
    process(app, &event, now_unix(), &AtomicBool::new(false)).await?;
    Ok(true)
}

/// Applies one event and records the outcome on it and in the audit log, in one transaction.
async fn process(
    app: &AppState,
    event: &StoredEvent,
    now: i64,
    homeserver_down: &AtomicBool,
) -> Result<(), StoreError> {
    let store = app.store.as_ref();
    // Counted before the actions run: an attempt that a crash cuts short leaves its mark, and
    // the next one is audited as the retry it is.
    let attempt = store.begin_attempt(event.id).await?;
    let interrupted = attempt > event.attempts + 1;
    let action = Action {
        app,
        event,
        now,
        homeserver_down,
        attempt,
    };
    let settings = app.events.settings();
    let target = target(event);
    let details = |extra: serde_json::Value| {
        let mut details = serde_json::json!({ "attempt": attempt });
        if interrupted {
            details["after_interrupted_attempt"] = true.into();
        }
        if let (Some(map), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
            map.extend(extra);
        }
        details
    };
    let record = |name: &str, outcome: String, extra: serde_json::Value| AuditEntry {
        details: details(extra),
        ..action.entry(name, &target, outcome, serde_json::Value::Null)
    };
    match action.apply().await {
        Ok(Outcome::Applied) => {
            store
                .mark_event_applied(
                    event.id,
                    event.event.is_status(),
                    now,
                    &record("event.applied", "ok".into(), serde_json::Value::Null),
                )
                .await?;
            crate::metrics::event_outcome(event.event.kind(), "applied");
            tracing::info!(
                event_id = event.id,
                kind = event.event.kind(),
                attempt,
                "IdP event applied"
            );
        }
        Ok(Outcome::Ignored(reason)) => {
            let entry = record(
                "event.ignored",
                format!("ignored: {reason}"),
                serde_json::Value::Null,
            );
            store
                .mark_event_ignored(event.id, &reason, now, &entry)
                .await?;
            crate::metrics::event_outcome(event.event.kind(), "ignored");
            tracing::info!(event_id = event.id, kind = event.event.kind(), %reason, "IdP event ignored");
        }
        Err(error) if error.is_transient() => {
            let deadline = event
                .queued_at
                .saturating_add(settings.max_age_seconds as i64);
            let error = error.to_string();
            if now >= deadline {
                let reason = format!("gave up after the maximum age: {error}");
                let entry = record(
                    "event.dead",
                    format!("failed: {reason}"),
                    serde_json::Value::Null,
                );
                store
                    .mark_event_dead(event.id, &reason, now, &entry)
                    .await?;
                crate::metrics::event_outcome(event.event.kind(), "dead");
                tracing::error!(event_id = event.id, kind = event.event.kind(), error = %reason, "IdP event dead");
            } else {
                // The last attempt happens at the deadline rather than after it.
                let next = now
                    .saturating_add(app.events.retry_delay(event.attempts + 1))
                    .min(deadline);
                let entry = record(
                    "event.failed",
                    format!("failed: {error}"),
                    serde_json::json!({ "next_attempt_at": next, "attempts": event.attempts + 1 }),
                );
                store
                    .mark_event_failed(event.id, &error, next, now, &entry)
                    .await?;
                crate::metrics::event_outcome(event.event.kind(), "failed");
                tracing::warn!(event_id = event.id, kind = event.event.kind(), %error, retry_at = next, "IdP event failed, will retry");
            }
        }
        Err(error) => {
            let error = error.to_string();
            let entry = record(
                "event.dead",
                format!("failed: {error}"),
                serde_json::Value::Null,
            );
            store.mark_event_dead(event.id, &error, now, &entry).await?;
            crate::metrics::event_outcome(event.event.kind(), "dead");
            tracing::error!(event_id = event.id, kind = event.event.kind(), %error, "IdP event failed for good");
        }
    }
    Ok(())
}

/// Who raised an event: the IdP, or mxidp itself for the session ends it notices.
fn actor(source: &str) -> String {
    if crate::sessions::EndCause::is_own_source(source) {
        "mxidp".into()
    } else {
        format!("idp:{source}")
    }
}

fn target(event: &StoredEvent) -> String {
    audit_target(&event.event)
}

/// What an event concerns, for the audit log: its subject, or the IdP session.
fn audit_target(event: &super::IdpEvent) -> String {
    match event {
        super::IdpEvent::SessionEnded { sid } => format!("sid:{sid}"),
        other => other.subject().unwrap_or_default().to_owned(),
    }
}

/// The outbox worker: a round at start (events accepted before a crash or a restart), then one
/// whenever a receiver stores an event, and at least every second for due retries.
pub fn spawn_worker(app: App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let wake = app.events.wake_handle();
        loop {
            match run_due(&app, now_unix()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(processed = n, "IdP event round"),
                Err(e) => tracing::warn!(error = %e, "IdP event round failed; retrying"),
            }
            // Revocations at the IdP left over by a crash or an IdP outage.
            if let Err(e) = crate::sessions::revoke_due(&app, now_unix()).await {
                tracing::warn!(error = %e, "IdP revocation round failed; retrying");
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::IdpEvent;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn accept_stores_once_per_dedupe_key_and_source() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
        let pipeline = EventPipeline::new(store);
        let event = ReceivedEvent {
            dedupe_key: "jti-1".into(),
            occurred_at: 100,
            event: IdpEvent::SessionEnded {
                sid: "sid-1".into(),
            },
        };
        assert!(matches!(
            pipeline
                .accept("backchannel_logout", event.clone())
                .await
                .unwrap(),
            Acceptance::Stored(_)
        ));
        assert_eq!(
            pipeline
                .accept("backchannel_logout", event.clone())
                .await
                .unwrap(),
            Acceptance::Duplicate
        );
        // The same key from another source is another event.
        assert!(matches!(
            pipeline.accept("ssf", event).await.unwrap(),
            Acceptance::Stored(_)
        ));
    }
}
