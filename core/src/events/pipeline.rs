//! The durable event pipeline (DESIGN §7): verify the sender (the receiver's job) → persist with
//! a dedupe key ([`EventPipeline::accept`]) → answer 2xx → apply through an outbox worker with
//! retries → audit record.

use std::sync::Arc;

use tokio::sync::Notify;

use super::ReceivedEvent;
use crate::ids::now_unix;
use crate::store::{Store, StoreError};

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
    /// Wakes the worker as soon as an event is stored.
    wake: Arc<Notify>,
}

impl EventPipeline {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Persists a verified event. Receivers answer 2xx only after this returned `Ok`.
    pub async fn accept(
        &self,
        source: &str,
        received: ReceivedEvent,
    ) -> Result<Acceptance, StoreError> {
        let stored = self
            .store
            .insert_event(
                source,
                &received.dedupe_key,
                received.occurred_at,
                &received.event,
                now_unix(),
            )
            .await?;
        Ok(match stored {
            Some(id) => {
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
                tracing::info!(
                    source,
                    kind = received.event.kind(),
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
