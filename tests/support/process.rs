//! A child process whose output is collected in memory and which is killed on `Drop`.

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Set `MXIDP_TEST_VERBOSE=1` to echo every child's output to stderr as it arrives.
fn verbose() -> bool {
    std::env::var_os("MXIDP_TEST_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

pub struct ChildProcess {
    name: String,
    child: Child,
    output: Arc<Mutex<String>>,
    stdout_lines: Option<mpsc::Receiver<String>>,
}

impl ChildProcess {
    /// Spawns `command` with stdout and stderr piped and collected.
    pub fn spawn(name: &str, mut command: Command) -> std::io::Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        collect(
            name,
            "stdout",
            child.stdout.take().expect("piped stdout"),
            output.clone(),
            Some(tx),
        );
        collect(
            name,
            "stderr",
            child.stderr.take().expect("piped stderr"),
            output.clone(),
            None,
        );
        Ok(Self {
            name: name.to_owned(),
            child,
            output,
            stdout_lines: Some(rx),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (polling, async-friendly) for a stdout line starting with `prefix`; returns it.
    pub async fn wait_for_stdout_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let rx = self.stdout_lines.take().expect("stdout receiver");
        let result = loop {
            match rx.try_recv() {
                Ok(line) if line.starts_with(prefix) => break Ok(line),
                Ok(_) => continue,
                Err(mpsc::TryRecvError::Disconnected) => {
                    // stdout closed: the process is gone (or closed stdout).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let exit = self.exited();
                    break Err(format!(
                        "{} closed stdout before printing {prefix:?} (exit: {exit:?})",
                        self.name
                    ));
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if let Some(status) = self.exited() {
                break Err(format!(
                    "{} exited with {status} before printing {prefix:?}",
                    self.name
                ));
            }
            if Instant::now() >= deadline {
                break Err(format!(
                    "{} did not print {prefix:?} within {timeout:?}",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.stdout_lines = Some(rx);
        result
    }

    /// Kills the child and reaps it.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect(
    name: &str,
    stream: &'static str,
    pipe: impl Read + Send + 'static,
    output: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) {
    let name = name.to_owned();
    thread::Builder::new()
        .name(format!("{name}-{stream}"))
        .spawn(move || {
            let echo = verbose();
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{name} {stream}] {line}");
                }
                {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
                if let Some(tx) = &lines {
                    let _ = tx.send(line);
                }
            }
        })
        .expect("spawn output collector thread");
}
