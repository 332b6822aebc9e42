//! The IdP's event log as a second path for its events ([`Provider::poll_event_log`]): some
//! IdPs deliver webhooks best-effort (Okta retries an Event Hook once, and never pushes some
//! event types) and keep the record in a log that can be read from a cursor.
//!
//! One read: the adapter returns a page of normalised events and the cursor after it; every
//! event is stored durably under the webhook's source (the same dedupe keys as the adapter's
//! webhook, so an event seen by both paths is stored, and applied, once), then the cursor is
//! saved in the settings table. A crash between the two reads the page again, which the dedupe
//! keys absorb.
//!
//! [`Provider::poll_event_log`]: crate::provider::Provider::poll_event_log

use std::time::Duration;

use crate::app::App;
use crate::receivers::webhook::source;

/// Wait after a failed read (the IdP unreachable, the store unwritable).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(30);

/// The settings-table name of the provider's cursor.
pub fn cursor_setting(provider: &str) -> String {
    format!("event_log_cursor:{provider}")
}

/// What one read did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// The provider has no event log.
    NoLog,
    /// `stored` new events (duplicates not counted); read again after `next_poll`.
    Read { stored: usize, next_poll: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("reading the IdP's event log failed: {0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("storing the event log failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// One read of the provider's event log from the saved cursor.
pub async fn poll_once(app: &App) -> Result<PollOutcome, PollError> {
    let provider = app.provider.as_ref();
    let setting = cursor_setting(provider.name());
    let cursor = app.store.setting(&setting).await?;
    let Some(page) = provider.poll_event_log(cursor.as_deref()).await? else {
        return Ok(PollOutcome::NoLog);
    };
    let source = source(provider);
    let mut stored = 0;
    for received in page.events {
        if let super::Acceptance::Stored(_) = app.events.accept(&source, received).await? {
            stored += 1;
        }
    }
    // Only now: a cursor saved before its events were durable could skip them for good.
    if cursor.as_deref() != Some(page.cursor.as_str()) {
        app.store.put_setting(&setting, &page.cursor).await?;
    }
    Ok(PollOutcome::Read {
        stored,
        next_poll: page.next_poll,
    })
}

/// Reads the log for as long as the provider has one.
pub fn spawn(app: App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let wait = match poll_once(&app).await {
                Ok(PollOutcome::NoLog) => return,
                Ok(PollOutcome::Read { stored, next_poll }) => {
                    if stored > 0 {
                        tracing::info!(stored, "IdP event log read");
                    }
                    next_poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, "IdP event log: will try again");
                    RETRY_AFTER_ERROR
                }
            };
            tokio::time::sleep(wait).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use super::*;
    use crate::events::{IdpEvent, ReceivedEvent};
    use crate::provider::{EventLogPage, Provider};
    use crate::receivers::test_env::{Env, Options};
    use crate::store::Store;
    use crate::upstream::UpstreamError;

    /// A log of lockings, read two at a time; the cursor is the index of the next entry. Also
    /// remembers the cursors it was asked with.
    struct Log {
        entries: Vec<&'static str>,
        asked: Mutex<Vec<Option<String>>>,
    }

    #[async_trait]
    impl Provider for Log {
        fn name(&self) -> &'static str {
            "test"
        }

        async fn poll_event_log(
            &self,
            cursor: Option<&str>,
        ) -> Result<Option<EventLogPage>, UpstreamError> {
            self.asked.lock().unwrap().push(cursor.map(str::to_owned));
            let from: usize = cursor.map_or(0, |c| c.parse().unwrap());
            let to = (from + 2).min(self.entries.len());
            let events = self.entries[from..to]
                .iter()
                .map(|id| ReceivedEvent {
                    dedupe_key: (*id).into(),
                    occurred_at: 1_700_000_000,
                    event: IdpEvent::UserLocked {
                        subject: format!("user-{id}"),
                    },
                })
                .collect();
            Ok(Some(EventLogPage {
                events,
                cursor: to.to_string(),
                next_poll: Duration::from_secs(if to < self.entries.len() { 0 } else { 60 }),
            }))
        }
    }

    #[tokio::test]
    async fn pages_are_stored_under_the_webhook_source_then_the_cursor_moves() {
        let log = Arc::new(Log {
            entries: vec!["e1", "e2", "e3"],
            asked: Mutex::new(Vec::new()),
        });
        let env = Env::with(Options {
            provider: log.clone(),
            ..Options::default()
        })
        .await;
        // e2 came by webhook first: the log's copy is a duplicate.
        env.app
            .events
            .accept(
                "webhook:test",
                ReceivedEvent {
                    dedupe_key: "e2".into(),
                    occurred_at: 1_700_000_000,
                    event: IdpEvent::UserLocked {
                        subject: "user-e2".into(),
                    },
                },
            )
            .await
            .unwrap();
        assert_eq!(
            poll_once(&env.app).await.unwrap(),
            PollOutcome::Read {
                stored: 1,
                next_poll: Duration::ZERO
            }
        );
        assert_eq!(
            poll_once(&env.app).await.unwrap(),
            PollOutcome::Read {
                stored: 1,
                next_poll: Duration::from_secs(60)
            }
        );
        assert_eq!(*log.asked.lock().unwrap(), vec![None, Some("2".to_owned())]);
        assert_eq!(
            env.store.setting("event_log_cursor:test").await.unwrap(),
            Some("3".into())
        );
        let keys: Vec<_> = env
            .events()
            .await
            .into_iter()
            .map(|r| (r.source, r.dedupe_key))
            .collect();
        assert_eq!(
            keys,
            [
                ("webhook:test", "e2"),
                ("webhook:test", "e1"),
                ("webhook:test", "e3")
            ]
            .map(|(s, k)| (s.to_owned(), k.to_owned()))
        );
    }

    #[tokio::test]
    async fn a_provider_without_a_log_stops_the_task() {
        let env = Env::start().await;
        assert_eq!(poll_once(&env.app).await.unwrap(), PollOutcome::NoLog);
        spawn(env.app.clone()).await.unwrap();
    }
}
