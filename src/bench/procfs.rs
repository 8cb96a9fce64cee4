//! CPU time and peak memory of a process, and which process listens on a port, from
//! `/proc`.

use std::process::Command;

pub(super) fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after the closing parenthesis are fixed.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Peak resident set size in MiB, from `/proc/<pid>/status` (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The RabbitMQ node serving `amqp_url`: the local `beam.smp` process that listens on the
/// URL's port. Several nodes may run on one machine (the chaos and TLS tests start their
/// own), so the first `beam.smp` found is not necessarily the one under load. `None` when
/// the URL's host is not this machine or no `beam.smp` listens on its port.
pub fn broker_pid(amqp_url: &str) -> Option<u32> {
    let uri: lapin::uri::AMQPUri = amqp_url.parse().ok()?;
    let host = uri.authority.host.as_str();
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local {
        return None;
    }
    let pid = listener_pid(uri.authority.port)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "beam.smp").then_some(pid)
}

/// The socket inodes listening on TCP `port` in a `/proc/net/tcp` or `/proc/net/tcp6`
/// table.
pub(super) fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listens =
                *fields.get(3)? == LISTEN && u16::from_str_radix(local_port, 16).ok()? == port;
            listens.then(|| fields.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// The process holding a socket that listens on TCP `port` on this machine, if it can be
/// seen (`/proc`, Linux).
pub(super) fn listener_pid(port: u16) -> Option<u32> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
                .then_some(pid)
        })
}
