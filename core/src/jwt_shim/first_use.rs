//! The first-use audit records of service-account tokens, written behind the introspection
//! answer: the record describes a use, not a change of state, so Synapse need not wait for the
//! database. A bounded queue feeds one writer task; when the queue is full, or before the
//! writer runs, the record is written inline instead, so none is ever dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::app::App;
use crate::audit::{self, AuditEntry};
use crate::store::Store;

const QUEUE: usize = 1_024;

pub(super) struct FirstUseAudit {
    tx: mpsc::Sender<AuditEntry>,
    rx: Mutex<Option<mpsc::Receiver<AuditEntry>>>,
    running: AtomicBool,
}

impl FirstUseAudit {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            running: AtomicBool::new(false),
        }
    }

    /// Starts the writer (once; with the shim's other background work).
    pub(super) fn start(&self, app: App) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        tokio::spawn(async move {
            while let Some(entry) = rx.recv().await {
                audit::record(app.store.as_ref(), entry).await;
            }
        });
        self.running.store(true, Ordering::Release);
    }

    pub(super) async fn record(&self, store: &dyn Store, entry: AuditEntry) {
        let entry = if self.running.load(Ordering::Acquire) {
            match self.tx.try_send(entry) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(entry))
                | Err(mpsc::error::TrySendError::Closed(entry)) => entry,
            }
        } else {
            entry
        };
        audit::record(store, entry).await;
    }
}
