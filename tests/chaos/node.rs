//! A throw-away RabbitMQ node of a test's own: its own node name, ports and data
//! directory, so a test may stop, restart or reconfigure it without touching the shared
//! broker on 5672. Stopped, and its directory removed, when dropped (on panic too).

use crate::harness::BrokerAddr;
use baton_testkit::{free_port, scratch_name, ScratchDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// RabbitMQ's own scripts run the node as the calling user; Debian's `/usr/sbin` ones
/// switch to the `rabbitmq` user, who could not read our temporary files.
pub fn rabbitmq_tool(name: &str) -> PathBuf {
    let own = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if own.is_file() {
        own
    } else {
        PathBuf::from(name)
    }
}

/// A RabbitMQ node running from `dir`.
pub struct RabbitNode {
    /// `baton-<what>-<scratch id>@localhost`.
    pub node: String,
    /// Configuration, data (`mnesia/`), log (`log/`) and pid file; removed on drop.
    pub dir: ScratchDir,
    /// The plain AMQP listener (127.0.0.1), unless the configuration turns it off.
    pub amqp_port: u16,
    /// The management HTTP API (127.0.0.1), when the node runs `rabbitmq_management`.
    pub management_port: Option<u16>,
    /// Erlang distribution port: fixed, so a restarted node is the same node.
    dist_port: u16,
}

impl RabbitNode {
    /// A node with a plain AMQP listener and the management API on 127.0.0.1 (the
    /// management API is how the kit creates the prefix's broker users).
    pub fn with_management(what: &str) -> Self {
        let dir = ScratchDir::new(what);
        let (amqp, management) = (free_port(), free_port());
        let config = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             management.tcp.ip = 127.0.0.1\n\
             management.tcp.port = {management}\n"
        );
        Self::start(
            what,
            dir,
            amqp,
            Some(management),
            &config,
            &["rabbitmq_management"],
        )
    }

    /// Starts a node from `dir` with `config` (rabbitmq.conf) and `plugins` (never the
    /// prometheus plugin: the shared node has its port) and waits until it has booted.
    /// `amqp_port` is the plain listener the configuration names (or a free port if it
    /// turns plain AMQP off).
    pub fn start(
        what: &str,
        dir: ScratchDir,
        amqp_port: u16,
        management_port: Option<u16>,
        config: &str,
        plugins: &[&str],
    ) -> Self {
        dir.file("rabbitmq.conf", config);
        dir.file("enabled_plugins", &format!("[{}].\n", plugins.join(",")));
        let node = Self {
            node: format!("baton-{}@localhost", scratch_name(what)),
            dir,
            amqp_port,
            management_port,
            dist_port: free_port(),
        };
        node.boot();
        node
    }

    /// Starts the node process (again, after [`RabbitNode::stop`]: same name, ports and
    /// data) and waits until it has booted.
    pub fn boot(&self) {
        let dir = &self.dir;
        let status = Command::new(rabbitmq_tool("rabbitmq-server"))
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("rabbitmq-server (Debian package rabbitmq-server)");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        // `wait` blocks until the node has booted (or failed to); `await_startup` until
        // its plugins (the management API) are up.
        let pid = dir.join("pid").display().to_string();
        for args in [
            &["wait", pid.as_str(), "--timeout", "120"][..],
            &["await_startup", "--timeout", "120"][..],
        ] {
            let waited = self.ctl(args);
            assert!(
                waited.status.success(),
                "RabbitMQ node {} did not start ({args:?}): {}\nits log:\n{}",
                self.node,
                String::from_utf8_lossy(&waited.stderr),
                self.log_tail()
            );
        }
    }

    /// Stops the whole node (the Erlang VM) and waits until its process has exited.
    pub fn stop(&self) {
        let pid = self.dir.join("pid").display().to_string();
        let stopped = self.ctl(&["stop", &pid]);
        assert!(
            stopped.status.success(),
            "rabbitmqctl stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }

    /// `rabbitmqctl -n <node> args…`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(rabbitmq_tool("rabbitmqctl"))
            .args(["-n", &self.node])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl")
    }

    /// The last 4,000 bytes of the node's log.
    pub fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.node));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text[text.len().saturating_sub(4000)..].to_owned()
    }

    /// Where a [`crate::harness::Cluster`] finds this node (guest, which RabbitMQ lets
    /// in from localhost only). Needs the management API.
    pub fn addr(&self) -> BrokerAddr {
        let management = self
            .management_port
            .expect("a node started with the management plugin");
        BrokerAddr {
            amqp: format!("127.0.0.1:{}", self.amqp_port),
            admin_url: format!("http://guest:guest@127.0.0.1:{management}"),
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let stopped = self.ctl(&["stop"]).status.success();
        if !stopped {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}
