//! What each Baton process may touch on the broker: the one place permissions are written.

/// One Baton process kind, and so one broker user `<prefix>-<role>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `baton run`: declares the topology, consumes requests and replies, sends commands,
    /// publishes results and events.
    Orchestrator,
    /// `baton-authorization`: consumes `cmd.authorization`, answers replies.
    Authorization,
    /// `baton-risk`.
    Risk,
    /// `baton-pci`.
    Pci,
    /// `baton-transaction`.
    Transaction,
    /// `baton pay`, `baton load`, a shop's backend: publishes requests, reads its own reply
    /// queue and the results queue.
    Client,
    /// `baton dead|attention list|show|replay`.
    Operator,
    /// Dashboards and alerting: the management API's numbers, no messages.
    Monitor,
}

impl Role {
    /// Every role, in the order files and tables list them.
    pub const ALL: [Role; 8] = [
        Role::Orchestrator,
        Role::Authorization,
        Role::Risk,
        Role::Pci,
        Role::Transaction,
        Role::Client,
        Role::Operator,
        Role::Monitor,
    ];

    /// `orchestrator`, `risk`, …
    pub fn name(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::Authorization => "authorization",
            Role::Risk => "risk",
            Role::Pci => "pci",
            Role::Transaction => "transaction",
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Monitor => "monitor",
        }
    }

    /// The role of the reference service named `service` (`authorization`, `risk`, `pci`,
    /// `transaction`), whose role bears its name.
    pub fn of_service(service: &str) -> Option<Role> {
        [
            Role::Authorization,
            Role::Risk,
            Role::Pci,
            Role::Transaction,
        ]
        .into_iter()
        .find(|role| role.name() == service)
    }

    /// The broker user of this role under `prefix`: `<prefix>-<role>`.
    pub fn user(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.name())
    }

    /// The environment variable that gives this role's password: `BATON_PASSWORD_RISK`.
    pub fn password_var(self) -> String {
        format!("BATON_PASSWORD_{}", self.name().to_uppercase())
    }

    /// The variable of this role's connection URL in a credentials file:
    /// `AMQP_URL_RISK` (the monitor gets `RABBITMQ_API_URL_MONITOR`: it has no AMQP use).
    pub fn url_var(self) -> String {
        match self {
            Role::Monitor => "RABBITMQ_API_URL_MONITOR".into(),
            _ => format!("AMQP_URL_{}", self.name().to_uppercase()),
        }
    }
}

/// What one role may do on one vhost: RabbitMQ's three permission regexes, its topic
/// permissions on the payments exchange, and its management tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Declare and delete these queues and exchanges.
    pub configure: String,
    /// Publish to these exchanges; bind these queues.
    pub write: String,
    /// Consume these queues; bind from these exchanges.
    pub read: String,
    /// The topic exchange the topic permissions are on (`<prefix>.payments`).
    pub topic_exchange: String,
    /// Routing keys this role may publish with on [`Grant::topic_exchange`].
    pub topic_write: String,
    /// Binding keys this role may bind with on [`Grant::topic_exchange`].
    pub topic_read: String,
    /// Management tags (`monitoring` for the monitor, none otherwise).
    pub tags: Vec<&'static str>,
}

/// Matches nothing a Baton deployment uses (the empty name).
pub(super) const NOTHING: &str = "^$";

/// The permissions of `role` under `prefix`: the narrowest RabbitMQ allows for what that
/// process does (README "Broker roles" explains each).
pub fn grant(role: Role, prefix: &str) -> Grant {
    let p = regex_escape(prefix);
    let service = "[a-z0-9_-]+";
    let (configure, write, read, topic_write, topic_read) = match role {
        Role::Orchestrator => (
            // Declares the whole topology (amqp::declare_*), its own reply queue.
            format!(
                r"^{p}\.(payments|requests|results|dead|attention|cmd\.{service}|retry\.[0-9]+ms|replies\..+)$"
            ),
            // Commands, parking, dead letters, attention items and client replies go
            // through the default exchange; results and events through payments; binding
            // requests and results needs write on those queues.
            format!(r"^(amq\.default|{p}\.(payments|requests|results))$"),
            // Consumes requests and its replies; binds from payments; declaring a queue
            // that dead-letters (requests, cmd.*, retry.*) needs read on it.
            format!(r"^{p}\.(payments|requests|cmd\.{service}|retry\.[0-9]+ms|replies\..+)$"),
            r"^(result|event)\..+$".to_owned(),
            r"^(request|result\.\*)$".to_owned(),
        ),
        Role::Authorization | Role::Risk | Role::Pci | Role::Transaction => {
            let s = role.name();
            (
                // declare_command_queue declares the dead queue its queue overflows to.
                // `cmd.<service>-<name>`: a second instance serving a workflow fallback
                // (`baton-risk --queue risk-lite`) runs as the same role.
                format!(r"^{p}\.(dead|cmd\.{s}(-[a-z0-9_-]+)?)$"),
                // Replies (to the orchestrator's reply queue) and malformed commands (to
                // the dead queue) go through the default exchange.
                r"^amq\.default$".to_owned(),
                format!(r"^{p}\.cmd\.{s}(-[a-z0-9_-]+)?$"),
                NOTHING.to_owned(),
                NOTHING.to_owned(),
            )
        }
        Role::Client => (
            // Its own exclusive reply queue only (client::Client names it).
            format!(r"^{p}\.client\.[0-9a-f]{{32}}$"),
            // Requests on the payments exchange; no default exchange, so no queue by name.
            format!(r"^{p}\.payments$"),
            format!(r"^{p}\.(client\.[0-9a-f]{{32}}|results)$"),
            "^request$".to_owned(),
            NOTHING.to_owned(),
        ),
        Role::Operator => (
            // `attention replay` waits for the service on a server-named reply queue;
            // every command holds its queue's lock, an exclusive `<queue>.lock`.
            format!(r"^({p}\.(dead|attention)\.lock|amq\.gen-.+)$"),
            // Replays go to requests / a command queue through the default exchange.
            r"^amq\.default$".to_owned(),
            format!(r"^({p}\.(dead|attention)|amq\.gen-.+)$"),
            NOTHING.to_owned(),
            NOTHING.to_owned(),
        ),
        Role::Monitor => (
            NOTHING.to_owned(),
            NOTHING.to_owned(),
            NOTHING.to_owned(),
            NOTHING.to_owned(),
            NOTHING.to_owned(),
        ),
    };
    Grant {
        configure,
        write,
        read,
        topic_exchange: format!("{prefix}.payments"),
        topic_write,
        topic_read,
        tags: match role {
            Role::Monitor => vec!["monitoring"],
            _ => Vec::new(),
        },
    }
}

/// `prefix` with the regex metacharacters it may contain escaped (a prefix is
/// `A-Z a-z 0-9 . _ -`; only `.` is special, but escape the rest of the class too).
pub(super) fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
