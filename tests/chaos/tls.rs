//! TLS to RabbitMQ (`amqps://`) with the real binaries, on a throw-away RabbitMQ node of
//! our own: TLS listeners only (no plain port), its certificate signed by a throw-away CA
//! made here with the `openssl` command line. The shared broker on 5672 is not touched
//! (only connected to, by the no-fallback test).
//!
//! The node boots in about 6 s; the tests running at the same time share it, and the last
//! one to finish stops it.

use crate::harness::BROKER;
use crate::node::RabbitNode;
use baton_testkit::{
    free_port, localhost, scratch_name, workspace_binary, Process, ScratchDir, READY_WAIT,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// What a connect may take before "fails fast" is a lie: the handshake is local and the
/// process does not retry at start.
const FAST: Duration = Duration::from_secs(10);

/// A scratch directory `baton-tls-<what>-…`, removed when dropped.
fn temp_dir(what: &str) -> ScratchDir {
    ScratchDir::new(&format!("tls-{what}"))
}

/// Runs `openssl` in `dir` with `args`, split on whitespace (none has a space).
fn run_openssl(dir: &Path, args: &str) {
    let output = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the `openssl` command line (Debian package openssl) makes the test CA");
    assert!(
        output.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A self-signed CA `<name>.pem` with its key `<name>.key` in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    run_openssl(
        dir,
        &format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {name}.key -out {name}.pem -days 2 -subj /CN=baton-test-{name} \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    );
    dir.join(format!("{name}.pem"))
}

/// `server.pem`/`server.key`, signed by the CA `ca`, for localhost and 127.0.0.1 only.
fn make_server_cert(dir: &Path, ca: &str) {
    run_openssl(
        dir,
        "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout server.key -out server.csr -subj /CN=localhost",
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_openssl(
        dir,
        &format!(
            "x509 -req -in server.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
             -out server.pem -days 2 -extfile server.ext"
        ),
    );
}

/// A RabbitMQ node with TLS listeners on 127.0.0.1 and 127.0.0.2 (same port) and no plain
/// one. Stopped when dropped.
struct TlsNode {
    node: RabbitNode,
    port: u16,
    /// The CA that signed the node's certificate.
    ca: PathBuf,
    /// Another CA, which signed nothing the node has.
    other_ca: PathBuf,
}

impl TlsNode {
    fn start() -> Self {
        let dir = temp_dir("node");
        let ca = make_ca(&dir, "ca");
        let other_ca = make_ca(&dir, "other-ca");
        make_server_cert(&dir, "ca");
        let port = free_port();
        let config = format!(
            "listeners.tcp = none\n\
             listeners.ssl.1 = 127.0.0.1:{port}\n\
             listeners.ssl.2 = 127.0.0.2:{port}\n\
             ssl_options.cacertfile = {dir}/ca.pem\n\
             ssl_options.certfile = {dir}/server.pem\n\
             ssl_options.keyfile = {dir}/server.key\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            dir = dir.display()
        );
        // No plugins: the shared node's management plugin already has port 15672.
        let node = RabbitNode::start("tls", dir, free_port(), None, &config, &[]);
        Self {
            node,
            port,
            ca,
            other_ca,
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.node.ctl(args)
    }

    /// The URL of its TLS listener, by `host` (which the certificate may or may not name).
    fn url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.port)
    }
}

/// The node shared by the TLS tests running now; started by the first of them.
fn tls_node() -> Arc<TlsNode> {
    static NODE: Mutex<Weak<TlsNode>> = Mutex::new(Weak::new());
    let mut shared = NODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(node) = shared.upgrade() {
        return node;
    }
    let node = Arc::new(TlsNode::start());
    *shared = Arc::downgrade(&node);
    node
}

/// A binary of the workspace next to `baton` (the services' are built by
/// `cargo test --workspace`).
fn binary(name: &str) -> PathBuf {
    workspace_binary(env!("CARGO_BIN_EXE_baton"), name)
}

/// A command for `binary` against `url` (given in the environment, as a password
/// belongs), with `ca_file`, working in `dir`.
fn command(binary: &Path, url: &str, ca_file: &Path, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .env("AMQP_URL", url)
        .env("AMQP_CA_FILE", ca_file)
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

/// Runs a command that must fail at connect: (exit code, stderr, how long it took).
fn run_to_failure(mut command: Command) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a process that retries forever is killed and fails the test below.
    while child.try_wait().unwrap().is_none() && started.elapsed() < 3 * FAST {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The one line that says why the connect failed; fails the test unless there is exactly
/// one, it is the process's last word, exit code 2, quickly, and no password shows.
fn one_connect_error(what: &str, (code, stderr, took): (Option<i32>, String, Duration)) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("cannot connect to RabbitMQ"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: one error line expected:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().last(),
        Some(errors[0]),
        "{what}: the error is the last line:\n{stderr}"
    );
    assert_eq!(code, Some(2), "{what}: exit code 2 expected:\n{stderr}");
    assert!(took < FAST, "{what}: took {took:?} to fail:\n{stderr}");
    assert!(
        !stderr.contains("guest:guest"),
        "{what}: the password is shown:\n{stderr}"
    );
    errors[0].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_over_tls_completes_through_the_orchestrator_and_the_four_service_binaries() {
    let node = tls_node();
    let dir = temp_dir("pay");
    let prefix = scratch_name("tls");
    let url = node.url("localhost");
    let ledger = format!("sqlite://{}", dir.join("ledger.db").display());

    // The orchestrator first: it makes the card key file the risk service reads from the
    // same directory.
    let mut processes = Vec::new();
    let http = free_port();
    let mut run = command(Path::new(env!("CARGO_BIN_EXE_baton")), &url, &node.ca, &dir);
    run.args(["run", "--prefix", &prefix])
        .args([
            "--journal-url",
            &format!("sqlite://{}", dir.join("journal.db").display()),
        ])
        .args(["--http-addr", &format!("127.0.0.1:{http}")]);
    let mut orchestrator = Process::spawn("baton-run", run, dir.join("baton-run.log"));
    // Ready means connected over TLS.
    orchestrator.wait_ready(localhost(http), READY_WAIT).await;
    processes.push(orchestrator);
    for service in ["authorization", "risk", "pci", "transaction"] {
        let name = format!("baton-{service}");
        let http = free_port();
        let mut serve = command(&binary(&name), &url, &node.ca, &dir);
        serve
            .args(["--prefix", &prefix])
            .args(["--http-addr", &format!("127.0.0.1:{http}")]);
        if service == "authorization" || service == "transaction" {
            serve.args(["--ledger-url", &ledger]);
        }
        let mut process = Process::spawn(&name, serve, dir.join(format!("{name}.log")));
        process.wait_ready(localhost(http), READY_WAIT).await;
        processes.push(process);
    }

    let mut pay = command(Path::new(env!("CARGO_BIN_EXE_baton")), &url, &node.ca, &dir);
    pay.args(["pay", "--prefix", &prefix, "--timeout", "60"]);
    let paid = pay.output().unwrap();
    let stdout = String::from_utf8_lossy(&paid.stdout);
    assert!(
        paid.status.success() && stdout.contains("completed"),
        "baton pay over TLS: {}\n{stdout}\n{}",
        paid.status,
        String::from_utf8_lossy(&paid.stderr)
    );

    // Every connection of this prefix is one of the node's, and the node has only TLS
    // listeners; ask it anyway.
    let listing = node.ctl(&["-q", "list_connections", "ssl", "client_properties"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    let ours: Vec<&str> = listing.lines().filter(|l| l.contains(&prefix)).collect();
    assert!(
        ours.len() >= 5 && ours.iter().all(|l| l.starts_with("true")),
        "connections of {prefix} on the TLS node:\n{listing}"
    );

    drop(processes);
}

#[test]
fn a_wrong_ca_fails_fast_with_one_clear_line_and_exit_2_in_every_binary() {
    let node = tls_node();
    let dir = temp_dir("wrong-ca");
    let url = node.url("localhost");
    let prefix = scratch_name("tls");
    let baton = Path::new(env!("CARGO_BIN_EXE_baton"));

    let mut pay = command(baton, &url, &node.other_ca, &dir);
    pay.args(["pay", "--prefix", &prefix, "--timeout", "60"]);
    let mut run = command(baton, &url, &node.other_ca, &dir);
    run.args(["run", "--prefix", &prefix, "--http-addr", "off"])
        .args([
            "--journal-url",
            &format!("sqlite://{}", dir.join("journal.db").display()),
        ]);
    let mut risk = command(&binary("baton-risk"), &url, &node.other_ca, &dir);
    risk.args(["--prefix", &prefix, "--http-addr", "127.0.0.1:0"]);

    for (what, command) in [("baton pay", pay), ("baton run", run), ("baton-risk", risk)] {
        let line = one_connect_error(what, run_to_failure(command));
        assert!(
            line.contains("TLS certificate not trusted (UnknownIssuer)")
                && line.contains("--amqp-ca-file")
                && line.contains("amqps://guest:***@localhost"),
            "{what}: {line}"
        );
    }

    // The system's CA store does not know the throw-away CA either.
    let mut pay = command(baton, &url, &node.other_ca, &dir);
    pay.env_remove("AMQP_CA_FILE")
        .args(["pay", "--prefix", &prefix, "--timeout", "60"]);
    let line = one_connect_error("baton pay, system CAs", run_to_failure(pay));
    assert!(
        line.contains("not trusted (UnknownIssuer) by the system's CA store"),
        "{line}"
    );
}

#[test]
fn a_host_name_the_certificate_does_not_name_is_refused() {
    let node = tls_node();
    let dir = temp_dir("host");
    let prefix = scratch_name("tls");
    // The right CA, and a listener on 127.0.0.2, an address the certificate does not name.
    let mut pay = command(
        Path::new(env!("CARGO_BIN_EXE_baton")),
        &node.url("127.0.0.2"),
        &node.ca,
        &dir,
    );
    pay.args(["pay", "--prefix", &prefix, "--timeout", "60"]);
    let line = one_connect_error("baton pay to 127.0.0.2", run_to_failure(pay));
    assert!(
        line.contains("TLS certificate is for another host"),
        "{line}"
    );
}

#[test]
fn amqps_to_the_plain_port_fails_instead_of_falling_back_to_plain_tcp() {
    let _broker = BROKER.blocking_read();
    let dir = temp_dir("plain");
    let prefix = scratch_name("tls");
    let ca_dir = temp_dir("plain-ca");
    let ca = make_ca(&ca_dir, "ca");
    let mut pay = command(
        Path::new(env!("CARGO_BIN_EXE_baton")),
        "amqps://guest:guest@127.0.0.1:5672/%2f",
        &ca,
        &dir,
    );
    pay.args(["pay", "--prefix", &prefix, "--timeout", "60"]);
    let line = one_connect_error("amqps:// to 5672", run_to_failure(pay));
    assert!(
        line.contains("does not speak TLS there") && line.contains("never falls back"),
        "{line}"
    );

    // And plain amqp:// with a CA file is refused rather than silently unencrypted.
    let mut pay = command(
        Path::new(env!("CARGO_BIN_EXE_baton")),
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        &ca,
        &dir,
    );
    pay.args(["pay", "--prefix", &prefix, "--timeout", "60"])
        .stdout(Stdio::null());
    let refused = pay.output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("the AMQP URL is amqp://, plain TCP"),
        "{}: {stderr}",
        refused.status
    );
}
