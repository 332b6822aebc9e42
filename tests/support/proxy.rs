//! A TCP proxy between mxidp and Synapse that the test can take down and bring back up, and
//! that records the `/_synapse/mas/*` calls reaching Synapse: how the tests stop "Synapse"
//! without losing its state, and check what mxidp asked of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct Shared {
    up: AtomicBool,
    calls: Mutex<Vec<String>>,
    connections: Mutex<Vec<AbortHandle>>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Request lines (`POST /_synapse/mas/… HTTP/1.1`) in a chunk of a client's byte stream.
fn mas_request_lines(chunk: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(chunk)
        .split("\r\n")
        .filter(|l| {
            (l.starts_with("POST /_synapse/mas/") || l.starts_with("GET /_synapse/mas/"))
                && l.ends_with("HTTP/1.1")
        })
        .map(str::to_owned)
        .collect()
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to `target` (host:port).
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        shared.up.store(true, Ordering::SeqCst);
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !s.up.load(Ordering::SeqCst) {
                    // Down: closed at once, like a stopped server.
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let conn = s.clone();
                let handle = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match in_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            conn.calls
                                .lock()
                                .unwrap()
                                .extend(mas_request_lines(&buf[..n]));
                            if out_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let downstream = tokio::io::copy(&mut out_read, &mut in_write);
                    tokio::select! {
                        _ = upstream => {},
                        _ = downstream => {},
                    }
                });
                s.connections.lock().unwrap().push(handle.abort_handle());
            }
        });
        Proxy { port, shared, task }
    }

    pub fn url(&self) -> url::Url {
        format!("http://127.0.0.1:{}/", self.port).parse().unwrap()
    }

    /// Down also cuts the connections in use, so a pooled keep-alive connection cannot slip by.
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
        if !up {
            for c in self.shared.connections.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }

    /// Request lines of the `/_synapse/mas/*` calls that reached Synapse, in order.
    pub fn mas_calls(&self) -> Vec<String> {
        self.shared.calls.lock().unwrap().clone()
    }
}
