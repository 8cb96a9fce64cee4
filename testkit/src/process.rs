//! Other processes a test runs (`baton run`, the service binaries, a Prometheus server):
//! spawned with their log in a file, waited for through their HTTP port, killed (and
//! reaped) when dropped, on panic too.
//!
//! Across processes there is no event to await: readiness is polled on the HTTP port
//! and an exit on the child, each with a bound.

use crate::http::http_get;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// How long a process may take to become ready before the test calls it stuck.
pub const READY_WAIT: Duration = Duration::from_secs(60);

/// A child process with its standard error in a log file; killed when dropped.
#[derive(Debug)]
pub struct Process {
    /// What the test calls it, in its failures.
    pub name: String,
    /// The process.
    pub child: Child,
    /// The file its standard error goes to.
    pub log: PathBuf,
}

impl Process {
    /// Starts `command` with no standard input, standard output discarded and standard
    /// error written to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("create the log {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The whole log so far.
    pub fn log_all(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 4,000 bytes of the log, for a failure message.
    pub fn log_text(&self) -> String {
        tail(&self.log_all())
    }

    /// Whether the log holds `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        self.log_all().contains(needle)
    }

    /// Asks `probe` every `every` until it gives a value, up to `within`; fails the test
    /// if the process exits first or the value does not come, naming `waiting_for` and
    /// showing the log.
    async fn wait_for<T, F, Fut>(
        &mut self,
        waiting_for: &str,
        within: Duration,
        every: Duration,
        mut probe: F,
    ) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("ask the child's status") {
                panic!(
                    "{} exited with {status} while the test waited for {waiting_for}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if let Some(value) = probe().await {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {waiting_for} within {within:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until `/readyz` on `addr` answers 200, up to `within`; fails the test if the
    /// process exits first or is not ready by then.
    pub async fn wait_ready(&mut self, addr: SocketAddr, within: Duration) {
        let waiting_for = format!("200 from /readyz on {addr}");
        let every = Duration::from_millis(50);
        self.wait_for(&waiting_for, within, every, || async move {
            matches!(http_get(addr, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await;
    }

    /// Waits until the process has logged the address of its HTTP port (it was started
    /// on port 0) and is ready there, up to `within`: the address.
    pub async fn wait_logged_ready(&mut self, within: Duration) -> SocketAddr {
        let deadline = Instant::now() + within;
        let log = self.log.clone();
        let every = Duration::from_millis(20);
        let addr = self
            .wait_for("an HTTP address in its log", within, every, || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                std::future::ready(logged_http_addr(&text))
            })
            .await;
        self.wait_ready(addr, deadline.saturating_duration_since(Instant::now()))
            .await;
        addr
    }

    /// Waits for the process to exit, up to `limit`: its status, or `None` if it still
    /// runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = &mut self.child;
        crate::wait::poll(limit, crate::wait::POLL_EVERY, || {
            std::future::ready(child.try_wait().expect("ask the child's status"))
        })
        .await
    }

    /// Sends `signal` (`TERM`, `KILL`, `INT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end on a blocking thread, so that the test's in-process
/// services and clients keep running meanwhile: its output (status, stdout, stderr).
pub async fn output(mut command: Command) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the blocking thread")
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// The address in Baton's log line `HTTP port listening … addr=127.0.0.1:PORT` (the text
/// log format).
pub fn logged_http_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("HTTP port listening"))?;
    let (_, after) = line.split_once("addr=")?;
    after
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()?
        .parse()
        .ok()
}

/// The binary `name` of the workspace, next to `beside` in the target directory (pass
/// `env!("CARGO_BIN_EXE_baton")`); fails the test if it is not built.
pub fn workspace_binary(beside: &str, name: &str) -> PathBuf {
    let path = Path::new(beside).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: the service binaries are built by `cargo build --workspace` \
         (or `cargo test --workspace`), not by `cargo test -p baton`",
        path.display()
    );
    path
}

/// The last 4,000 bytes of `text` (from a character boundary), for a failure message.
pub fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_address_is_read_from_the_text_log() {
        let text = "2026-01-01T00:00:00Z  INFO baton_ops: HTTP port listening addr=127.0.0.1:4321";
        let json = r#"{"fields":{"message":"HTTP port listening","addr":"127.0.0.1:4321"}}"#;
        assert_eq!(logged_http_addr(text), Some(crate::localhost(4321)));
        assert_eq!(logged_http_addr("nothing"), None);
        // The JSON format writes `"addr":"…"`: the processes of a test log text.
        assert_eq!(logged_http_addr(json), None);
    }

    fn shell(script: &str) -> Process {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let log = crate::scratch_path("process-test", ".log");
        Process::spawn("sh", command, log)
    }

    #[tokio::test]
    async fn an_exit_is_seen_with_its_status_and_the_log_is_read() {
        let mut process = shell("echo said >&2; exit 3");
        let status = process.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        assert!(process.log_contains("said"));
        let _ = std::fs::remove_file(&process.log);
    }

    #[tokio::test]
    #[should_panic(expected = "sh exited with exit status: 0 while the test waited for")]
    async fn a_process_that_exits_is_never_ready() {
        let mut process = shell("exit 0");
        let _ = std::fs::remove_file(&process.log);
        process
            .wait_ready(
                crate::localhost(crate::free_port()),
                Duration::from_secs(10),
            )
            .await;
    }

    #[test]
    fn a_tail_starts_on_a_character() {
        let text = format!("é{}", "x".repeat(3999));
        assert_eq!(tail(&text), "x".repeat(3999));
        assert_eq!(tail("short"), "short");
    }
}
