//! The processes of one run: started, logged, waited for, read, stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Child processes that are killed when dropped.
pub(super) struct Processes {
    pub(super) children: Vec<(String, Child)>,
    /// `TOKIO_WORKER_THREADS` of every child; 0: not set (tokio's default).
    pub(super) worker_threads: usize,
}

impl Processes {
    pub(super) fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let mut command = Command::new(program);
        if self.worker_threads > 0 {
            command.env("TOKIO_WORKER_THREADS", self.worker_threads.to_string());
        }
        let child = command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited with {status}");
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        anyhow::bail!(
            "{} not found next to {}: build every binary first (cargo build --release --workspace)",
            name,
            exe.display()
        );
    }
    Ok(path)
}

/// The sum of every series of the counter `name` on the `/metrics` of the orchestrator
/// whose HTTP port is `port` (0 when it cannot be read).
pub(super) fn counter(port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    counter_sum(&text, name)
}

/// Whether the orchestrator whose HTTP port is `port` answers `/readyz` with 200: it has
/// declared its topology and consumes requests.
pub(super) fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200")
}

/// Waits until every orchestrator is ready, so that the first request is not published
/// before the request queue is bound to the payments exchange (it would be unroutable).
pub(super) async fn wait_ready(
    ports: &[u16],
    processes: &mut Processes,
    logs: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for &port in ports {
        // Another process: nothing to await but its answer, asked every 50 ms.
        while !ready(port) {
            processes.check_alive()?;
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the orchestrator on port {port} was not ready within 60 s; see the logs in {}",
                    logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The sum of every series of `name` in a Prometheus exposition.
pub(super) fn counter_sum(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What the orchestrators' counters say about one level: how the payments spread over
/// the replicas, and how many step attempts timed out and payments were parked.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Counters {
    pub(super) received: Vec<u64>,
    pub(super) timeouts: u64,
    pub(super) parked: u64,
}

impl Counters {
    pub(super) fn read(ports: &[u16]) -> Self {
        Self {
            received: ports
                .iter()
                .map(|p| counter(*p, "baton_payments_received_total"))
                .collect(),
            timeouts: ports
                .iter()
                .map(|p| counter(*p, "baton_step_timeouts_total"))
                .sum(),
            parked: ports
                .iter()
                .map(|p| counter(*p, "baton_parked_total"))
                .sum(),
        }
    }
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
