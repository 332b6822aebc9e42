//! A fake `/_synapse/mas/*` for crash tests: it records every call with the status it answered,
//! and answers 503 until it is switched up, then 200.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

#[derive(Clone, Default)]
pub struct FakeMas {
    pub up: Arc<AtomicBool>,
    /// (call, status answered).
    pub calls: Arc<Mutex<Vec<(String, u16)>>>,
}

impl FakeMas {
    /// Serves it on loopback; returns it and its base URL (Synapse's client listener URL).
    pub async fn start() -> (Self, String) {
        let fake = FakeMas::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/_synapse/mas/{call}", post(answer))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, url)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// The calls answered 200, in order.
    pub fn successes(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == 200)
            .map(|(c, _)| c.clone())
            .collect()
    }
}

async fn answer(State(fake): State<FakeMas>, Path(call): Path<String>) -> StatusCode {
    let status = if fake.up.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    fake.calls.lock().unwrap().push((call, status.as_u16()));
    status
}
