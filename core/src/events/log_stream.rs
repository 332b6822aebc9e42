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
