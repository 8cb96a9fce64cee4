//! Broker roles: one RabbitMQ user per Baton process, each allowed only the exchanges,
//! queues and routing keys that process really touches (`baton broker setup`), and the
//! same users as a RabbitMQ definitions file for brokers that load one at boot
//! (`baton broker definitions`, `deploy/rabbitmq/definitions.json`).
//!
//! [`grant`] is the one place the permissions are written down: `setup` sends them to a
//! running broker through its management HTTP API, `definitions` writes them into a file,
//! and the tests check both against what each process does on a real broker.
//!
//! What it is not: it cannot stop a user who may publish to the default exchange
//! (services answering replies, the orchestrator sending commands) from publishing to any
//! queue by name; RabbitMQ has no per-queue write check there. Verified senders (the
//! AMQP `user_id` property, checked by the broker and by the receivers) close that gap.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use baton_amqp::{redact_url, BrokerError};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
pub use hyper::Method;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default administrator URL of the management API: the local broker as guest.
pub const DEFAULT_ADMIN_URL: &str = "http://guest:guest@127.0.0.1:15672";

/// How long one management API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(15);

/// The hashing algorithm RabbitMQ uses by default, and the one `password_hash` values
/// of this module are in.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

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
const NOTHING: &str = "^$";

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
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RabbitMQ's `rabbit_password_hashing_sha256` hash of `password` with `salt`:
/// base64(salt ++ sha256(salt ++ password)).
pub fn hash_password_with_salt(password: &str, salt: [u8; 4]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&hasher.finalize());
    BASE64.encode(bytes)
}

/// [`hash_password_with_salt`] with a random salt.
pub fn hash_password(password: &str) -> String {
    let random = uuid::Uuid::new_v4();
    let b = random.as_bytes();
    hash_password_with_salt(password, [b[0], b[1], b[2], b[3]])
}

/// Whether `hash` (in [`HASHING_ALGORITHM`]) is the hash of `password`.
pub fn verify_password_hash(hash: &str, password: &str) -> bool {
    match BASE64.decode(hash) {
        Ok(bytes) if bytes.len() == 4 + 32 => {
            let salt = [bytes[0], bytes[1], bytes[2], bytes[3]];
            hash_password_with_salt(password, salt) == hash
        }
        _ => false,
    }
}

/// A fresh password: 32 hex digits from a random v4 UUID (122 random bits), safe in URLs
/// and env files.
pub fn generate_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A password that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The password itself: only for URLs, files and the broker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The passwords [`setup`] sets: given ones replace a user's password; remembered ones
/// (from an earlier credentials file) are used for users that do not exist yet; any
/// other new user gets a generated one, and an existing user keeps its password.
#[derive(Clone, Debug, Default)]
pub struct Passwords {
    given: BTreeMap<Role, Password>,
    remembered: BTreeMap<Role, Password>,
}

impl Passwords {
    /// The passwords in `BATON_PASSWORD_<ROLE>` variables; an empty one is an error.
    pub fn from_env() -> Result<Self, BrokerSetupError> {
        let mut passwords = Self::default();
        for role in Role::ALL {
            let var = role.password_var();
            if let Some(value) = std::env::var_os(&var) {
                let value = value
                    .into_string()
                    .map_err(|_| BrokerSetupError::BadPassword {
                        var: var.clone(),
                        problem: "it is not UTF-8",
                    })?;
                if value.is_empty() {
                    return Err(BrokerSetupError::BadPassword {
                        var,
                        problem: "it is empty (unset it to have one generated)",
                    });
                }
                passwords.given.insert(role, Password(value));
            }
        }
        Ok(passwords)
    }

    /// Sets `role`'s password (replacing the user's current one).
    pub fn with(mut self, role: Role, password: &str) -> Self {
        self.given.insert(role, Password::new(password));
        self
    }

    /// Remembers the passwords of an earlier credentials file, for users created again.
    pub fn remember_file(&mut self, path: &Path) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if let Some(role) = Role::ALL.into_iter().find(|r| r.password_var() == key) {
                if !value.is_empty() {
                    self.remembered.insert(role, Password::new(value));
                }
            }
        }
    }
}

/// Where a user's password came from, for the summary `setup` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// `BATON_PASSWORD_<ROLE>` (or [`Passwords::with`]).
    Given,
    /// The earlier credentials file.
    Remembered,
    /// Generated now.
    Generated,
    /// The user existed and keeps the password it had (unknown to this run).
    Kept,
}

/// One user [`setup`] created or updated.
#[derive(Clone, Debug)]
pub struct UserCredential {
    /// Its role.
    pub role: Role,
    /// `<prefix>-<role>`.
    pub user: String,
    /// Its password, when this run knows it.
    pub password: Option<Password>,
    /// Where the password came from.
    pub source: PasswordSource,
}

/// The users of one prefix on one vhost.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The prefix.
    pub prefix: String,
    /// The vhost the permissions are on.
    pub vhost: String,
    /// One per role, in [`Role::ALL`] order.
    pub users: Vec<UserCredential>,
}

impl Credentials {
    /// `role`'s password, if known.
    pub fn password(&self, role: Role) -> Option<&str> {
        self.users
            .iter()
            .find(|u| u.role == role)
            .and_then(|u| u.password.as_ref())
            .map(Password::expose)
    }

    /// `amqp://<prefix>-<role>:<password>@<address>/<vhost>`, if the password is known.
    pub fn amqp_url(&self, role: Role, address: &str) -> Option<String> {
        let password = self.password(role)?;
        Some(format!(
            "amqp://{}:{}@{address}/{}",
            percent_encode(&role.user(&self.prefix)),
            percent_encode(password),
            percent_encode(&self.vhost)
        ))
    }

    /// The credentials file: `BATON_PASSWORD_<ROLE>=…` and `AMQP_URL_<ROLE>=…` lines,
    /// usable as a shell or compose env file.
    pub fn env_file(&self, amqp_address: &str, api_address: &str) -> String {
        let mut out = format!(
            "# RabbitMQ users of Baton prefix {} on vhost {}, written by `baton broker setup`.\n\
             # Secret: keep this file mode 0600. Re-running setup keeps these passwords.\n",
            self.prefix, self.vhost
        );
        for u in &self.users {
            let var = u.role.password_var();
            match &u.password {
                Some(password) => {
                    out.push_str(&format!("{var}={}\n", password.expose()));
                    let url = match u.role {
                        Role::Monitor => format!(
                            "http://{}:{}@{api_address}",
                            percent_encode(&u.user),
                            percent_encode(password.expose())
                        ),
                        _ => self.amqp_url(u.role, amqp_address).unwrap_or_default(),
                    };
                    out.push_str(&format!("{}={url}\n", u.role.url_var()));
                }
                None => out.push_str(&format!(
                    "# {}: password kept on the broker, unknown to this run (set {var} and run setup again to set one)\n",
                    u.user
                )),
            }
        }
        out
    }
}

/// Errors of `baton broker …`, each saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BrokerSetupError {
    /// The admin URL is not `http://user:password@host:port`.
    #[error("admin URL {url} is not valid ({problem}): give http://user:password@host:15672[/vhost] in --admin-url / BATON_ADMIN_URL")]
    BadAdminUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// Nothing answers HTTP there.
    #[error("cannot reach RabbitMQ's management API at {url} ({cause}): enable it with `rabbitmq-plugins enable rabbitmq_management` (it listens on port 15672) or point --admin-url / BATON_ADMIN_URL at it")]
    Unreachable {
        /// The URL, password removed.
        url: String,
        /// What failed.
        cause: String,
    },
    /// 401.
    #[error("RabbitMQ's management API at {url} refused the login (401): wrong administrator user or password in --admin-url / BATON_ADMIN_URL")]
    Unauthorized {
        /// The URL, password removed.
        url: String,
    },
    /// 403 on an admin call.
    #[error("the user of {url} may not manage users (403): use a user with the administrator tag")]
    NotAdministrator {
        /// The URL, password removed.
        url: String,
    },
    /// The vhost does not exist.
    #[error("virtual host {vhost:?} does not exist: create it (`rabbitmqctl add_vhost {vhost}`) or pass another --vhost")]
    NoVhost {
        /// The vhost.
        vhost: String,
    },
    /// Another answer the caller cannot fix by retrying.
    #[error("RabbitMQ's management API answered {status} to {method} {path}: {body}")]
    Api {
        /// The HTTP method.
        method: String,
        /// The path, no credentials.
        path: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A password variable is unusable.
    #[error("{var} cannot be used as a password: {problem}")]
    BadPassword {
        /// The variable.
        var: String,
        /// Why.
        problem: &'static str,
    },
    /// The credentials file could not be written.
    #[error("cannot write the credentials file {path}: {cause}")]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        cause: std::io::Error,
    },
}

/// RabbitMQ's management HTTP API, as an administrator.
#[derive(Clone)]
pub struct AdminApi {
    host: String,
    port: u16,
    /// `/api` below the URL's base path (management.path_prefix), never ending in `/`.
    base: String,
    authorization: String,
    /// The URL without its password, for messages.
    shown: String,
    /// The vhost named in the URL's path, if any.
    vhost: Option<String>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("url", &self.shown)
            .finish()
    }
}

impl AdminApi {
    /// Parses `http://user:password@host:port[/vhost]` (user and password
    /// percent-encoded; the vhost too, `%2f` is `/`).
    pub fn from_url(url: &str) -> Result<Self, BrokerSetupError> {
        let shown = redact_url(url);
        let bad = |problem: &str| BrokerSetupError::BadAdminUrl {
            url: shown.clone(),
            problem: problem.to_owned(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("it must start with http:// (the management API on port 15672)"))?;
        // The user information ends at the last '@' (a password may hold '/' or '@'); the
        // path starts at the first '/' after it.
        let at = rest
            .rfind('@')
            .ok_or_else(|| bad("it has no user:password@"))?;
        let (authority, path) = match rest[at..].find('/') {
            Some(slash) => rest.split_at(at + slash),
            None => (rest, ""),
        };
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| bad("it has no user:password@"))?;
        let (user, password) = userinfo
            .split_once(':')
            .ok_or_else(|| bad("it has no password after the user"))?;
        let (user, password) = (
            percent_decode(user).ok_or_else(|| bad("bad %-escape in the user"))?,
            percent_decode(password).ok_or_else(|| bad("bad %-escape in the password"))?,
        );
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            None => (hostport.to_owned(), 15672),
        };
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        let path = path.trim_start_matches('/');
        let vhost = if path.is_empty() {
            None
        } else {
            Some(percent_decode(path).ok_or_else(|| bad("bad %-escape in the vhost"))?)
        };
        Ok(Self {
            host,
            port,
            base: "/api".into(),
            authorization: format!("Basic {}", BASE64.encode(format!("{user}:{password}"))),
            shown,
            vhost,
        })
    }

    /// The host of the URL (default host of the AMQP URLs written).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `host:port` of the API.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The vhost named in the URL's path, if any.
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_deref()
    }

    /// One request; returns the status and body. 401/403 and unreachable are errors.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), BrokerSetupError> {
        let unreachable = |cause: String| BrokerSetupError::Unreachable {
            url: self.shown.clone(),
            cause,
        };
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            let driver = tokio::spawn(connection);
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let request = Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", self.base))
                .header(hyper::header::HOST, self.address())
                .header(hyper::header::AUTHORIZATION, &self.authorization)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| unreachable(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            driver.abort();
            Ok::<_, BrokerSetupError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(API_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {API_TIMEOUT:?}")))??;
        match status {
            StatusCode::UNAUTHORIZED => Err(BrokerSetupError::Unauthorized {
                url: self.shown.clone(),
            }),
            StatusCode::FORBIDDEN => Err(BrokerSetupError::NotAdministrator {
                url: self.shown.clone(),
            }),
            _ => Ok((status, bytes)),
        }
    }

    /// `method path` below `/api` with a JSON body: the answer's JSON, `None` on 404;
    /// any other non-2xx status is an error. For tests and tools that need more than
    /// [`setup`] and [`teardown`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, BrokerSetupError> {
        self.expect(method, path, body, true).await
    }

    /// A request that must succeed (2xx, or 404 when `missing_ok`).
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        missing_ok: bool,
    ) -> Result<Option<serde_json::Value>, BrokerSetupError> {
        let (status, bytes) = self.call(method.clone(), path, body).await?;
        if status.is_success() {
            return Ok(Some(
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            ));
        }
        if status == StatusCode::NOT_FOUND && missing_ok {
            return Ok(None);
        }
        Err(BrokerSetupError::Api {
            method: method.to_string(),
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        })
    }
}

/// Creates or updates the users `<prefix>-<role>` on `vhost` with [`grant`]'s
/// permissions (replacing any others they had there). Idempotent: an existing user keeps
/// its password unless `passwords` gives a new one.
pub async fn setup(
    api: &AdminApi,
    prefix: &str,
    vhost: &str,
    passwords: &Passwords,
) -> Result<Credentials, BrokerSetupError> {
    let v = percent_encode(vhost);
    if api
        .expect(Method::GET, &format!("/vhosts/{v}"), None, true)
        .await?
        .is_none()
    {
        return Err(BrokerSetupError::NoVhost {
            vhost: vhost.to_owned(),
        });
    }
    let mut users = Vec::new();
    for role in Role::ALL {
        let user = role.user(prefix);
        let u = percent_encode(&user);
        let grant = grant(role, prefix);
        let tags = grant.tags.join(",");
        let existing = api
            .expect(Method::GET, &format!("/users/{u}"), None, true)
            .await?;
        let (body, password, source) = match (passwords.given.get(&role), &existing) {
            (Some(given), _) => (
                json!({"password": given.expose(), "tags": tags}),
                Some(given.clone()),
                PasswordSource::Given,
            ),
            (None, Some(current)) => (
                json!({
                    "password_hash": current["password_hash"],
                    "hashing_algorithm": current["hashing_algorithm"],
                    "tags": tags,
                }),
                passwords.remembered.get(&role).cloned(),
                PasswordSource::Kept,
            ),
            (None, None) => {
                let (password, source) = match passwords.remembered.get(&role) {
                    Some(p) => (p.clone(), PasswordSource::Remembered),
                    None => (Password(generate_password()), PasswordSource::Generated),
                };
                (
                    json!({"password": password.expose(), "tags": tags}),
                    Some(password),
                    source,
                )
            }
        };
        api.expect(Method::PUT, &format!("/users/{u}"), Some(body), false)
            .await?;
        api.expect(
            Method::PUT,
            &format!("/permissions/{v}/{u}"),
            Some(json!({"configure": grant.configure, "write": grant.write, "read": grant.read})),
            false,
        )
        .await?;
        api.expect(
            Method::DELETE,
            &format!("/topic-permissions/{v}/{u}"),
            None,
            true,
        )
        .await?;
        api.expect(
            Method::PUT,
            &format!("/topic-permissions/{v}/{u}"),
            Some(json!({
                "exchange": grant.topic_exchange,
                "write": grant.topic_write,
                "read": grant.topic_read,
            })),
            false,
        )
        .await?;
        users.push(UserCredential {
            role,
            user,
            password,
            source,
        });
    }
    Ok(Credentials {
        prefix: prefix.to_owned(),
        vhost: vhost.to_owned(),
        users,
    })
}

/// Deletes the users `<prefix>-<role>`; returns how many existed.
pub async fn teardown(api: &AdminApi, prefix: &str) -> Result<usize, BrokerSetupError> {
    let mut deleted = 0;
    for role in Role::ALL {
        let path = format!("/users/{}", percent_encode(&role.user(prefix)));
        if api
            .expect(Method::DELETE, &path, None, true)
            .await?
            .is_some()
        {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The administrator user a definitions file adds (a broker that loads definitions
/// creates no default user): `<prefix>-admin`.
pub fn admin_user(prefix: &str) -> String {
    format!("{prefix}-admin")
}

/// A RabbitMQ definitions document with the users of every role under `prefix` on
/// `vhost` (and an administrator `<prefix>-admin`), their [`grant`]s, and the given
/// password hashes (`hashes` by user name, [`HASHING_ALGORITHM`]).
pub fn definitions(
    prefix: &str,
    vhost: &str,
    hashes: &BTreeMap<String, String>,
) -> serde_json::Value {
    let hash = |user: &str| hashes.get(user).cloned().unwrap_or_default();
    let admin = admin_user(prefix);
    let mut users = vec![json!({
        "name": admin,
        "password_hash": hash(&admin),
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": ["administrator"],
        "limits": {},
    })];
    let mut permissions = vec![json!({
        "user": admin, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*",
    })];
    let mut topic_permissions = Vec::new();
    for role in Role::ALL {
        let user = role.user(prefix);
        let g = grant(role, prefix);
        users.push(json!({
            "name": user,
            "password_hash": hash(&user),
            "hashing_algorithm": HASHING_ALGORITHM,
            "tags": g.tags,
            "limits": {},
        }));
        permissions.push(json!({
            "user": user, "vhost": vhost,
            "configure": g.configure, "write": g.write, "read": g.read,
        }));
        topic_permissions.push(json!({
            "user": user, "vhost": vhost, "exchange": g.topic_exchange,
            "write": g.topic_write, "read": g.topic_read,
        }));
    }
    json!({
        "rabbit_version": "3.13.0",
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
    })
}

/// Whether a broker error is RabbitMQ refusing the operation for lack of permission
/// (`ACCESS_REFUSED`, 403).
pub fn is_access_refused(error: &BrokerError) -> bool {
    match error {
        BrokerError::Channel(e) => lapin_access_refused(e),
        _ => false,
    }
}

/// [`is_access_refused`] for a lapin error.
pub fn lapin_access_refused(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
    )
}

/// `text` with everything but RFC 3986 unreserved characters %-encoded (for URL
/// user information and path segments: vhosts, user names).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `baton broker …`.
#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Create or update the users <prefix>-<role> with least-privilege permissions on a
    /// running broker (through its management API); passwords go to a 0600 file
    Setup(SetupArgs),
    /// Delete the users <prefix>-<role>
    Teardown(AdminArgs),
    /// Print a RabbitMQ definitions file (users with password hashes, permissions) for
    /// brokers that load one at boot; passwords as for setup, written to a 0600 file
    Definitions(DefinitionsArgs),
    /// Read a password on stdin and print its RabbitMQ password hash (sha256)
    HashPassword,
}

/// How to reach the management API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Management API URL of an administrator, http://user:password@host:15672[/vhost]
    /// [default: http://guest:***@127.0.0.1:15672]
    #[arg(
        long,
        env = "BATON_ADMIN_URL",
        default_value = DEFAULT_ADMIN_URL,
        hide_default_value = true,
        hide_env_values = true
    )]
    pub admin_url: String,
}

/// Options of `baton broker setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArgs,
    /// Virtual host of the permissions [default: the admin URL's path, else /]
    #[arg(long, env = "BATON_VHOST", hide_env_values = true)]
    pub vhost: Option<String>,
    /// Where to write the passwords and URLs [default: ./<prefix>-credentials.env]
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// host:port the AMQP URLs in the credentials file point at [default: <admin URL's host>:5672]
    #[arg(long)]
    pub amqp_address: Option<String>,
}

/// Options of `baton broker definitions`.
#[derive(Debug, Args)]
pub struct DefinitionsArgs {
    /// Virtual host of the permissions
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Where to write the passwords and URLs [default: ./<prefix>-credentials.env]
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// host:port the AMQP URLs in the credentials file point at
    #[arg(long, default_value = "rabbitmq:5672")]
    pub amqp_address: String,
}

/// Runs `baton broker …` for `prefix`; returns the exit code (2: management API
/// unreachable).
pub async fn run(prefix: &str, command: BrokerCommand) -> anyhow::Result<i32> {
    let outcome = match command {
        BrokerCommand::Setup(args) => run_setup(prefix, args).await,
        BrokerCommand::Teardown(args) => run_teardown(prefix, args).await,
        BrokerCommand::Definitions(args) => run_definitions(prefix, args),
        BrokerCommand::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!(
                    "no password on stdin: `printf %s \"$PASSWORD\" | baton broker hash-password`"
                );
            }
            println!("{}", hash_password(password));
            Ok(0)
        }
    };
    match outcome {
        Err(e) if matches!(e.downcast_ref(), Some(BrokerSetupError::Unreachable { .. })) => {
            eprintln!("error: {e:#}");
            Ok(crate::cli::EXIT_BROKER_UNREACHABLE)
        }
        other => other,
    }
}

async fn run_setup(prefix: &str, args: SetupArgs) -> anyhow::Result<i32> {
    let api = AdminApi::from_url(&args.admin.admin_url)?;
    let vhost = args
        .vhost
        .or_else(|| api.vhost().map(str::to_owned))
        .unwrap_or_else(|| "/".into());
    let file = args
        .credentials_file
        .unwrap_or_else(|| PathBuf::from(format!("{prefix}-credentials.env")));
    let mut passwords = Passwords::from_env()?;
    passwords.remember_file(&file);
    let credentials = setup(&api, prefix, &vhost, &passwords).await?;
    let amqp_address = args
        .amqp_address
        .unwrap_or_else(|| format!("{}:5672", api.host()));
    write_credentials(&file, &credentials.env_file(&amqp_address, &api.address()))?;
    println!(
        "{} users for prefix {prefix} on vhost {vhost} at {}:",
        credentials.users.len(),
        redact_url(&args.admin.admin_url)
    );
    for u in &credentials.users {
        let source = match u.source {
            PasswordSource::Given => format!("password from {}", u.role.password_var()),
            PasswordSource::Remembered => "password from the credentials file".into(),
            PasswordSource::Generated => "password generated".into(),
            PasswordSource::Kept => "existing password kept".into(),
        };
        println!("  {:<28} {source}", u.user);
    }
    println!("passwords and URLs: {} (mode 0600)", file.display());
    Ok(0)
}

async fn run_teardown(prefix: &str, args: AdminArgs) -> anyhow::Result<i32> {
    let api = AdminApi::from_url(&args.admin_url)?;
    let deleted = teardown(&api, prefix).await?;
    println!(
        "deleted {deleted} users of prefix {prefix} at {}",
        redact_url(&args.admin_url)
    );
    Ok(0)
}

fn run_definitions(prefix: &str, args: DefinitionsArgs) -> anyhow::Result<i32> {
    let file = args
        .credentials_file
        .unwrap_or_else(|| PathBuf::from(format!("{prefix}-credentials.env")));
    let mut passwords = Passwords::from_env()?;
    passwords.remember_file(&file);
    let admin_password = std::env::var("BATON_PASSWORD_ADMIN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(generate_password);
    let mut hashes = BTreeMap::new();
    hashes.insert(admin_user(prefix), hash_password(&admin_password));
    let mut users = Vec::new();
    for role in Role::ALL {
        let (password, source) = match (passwords.given.get(&role), passwords.remembered.get(&role))
        {
            (Some(p), _) => (p.clone(), PasswordSource::Given),
            (None, Some(p)) => (p.clone(), PasswordSource::Remembered),
            (None, None) => (Password(generate_password()), PasswordSource::Generated),
        };
        hashes.insert(role.user(prefix), hash_password(password.expose()));
        users.push(UserCredential {
            role,
            user: role.user(prefix),
            password: Some(password),
            source,
        });
    }
    let credentials = Credentials {
        prefix: prefix.to_owned(),
        vhost: args.vhost.clone(),
        users,
    };
    let api_host = args
        .amqp_address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&args.amqp_address);
    let mut env = credentials.env_file(&args.amqp_address, &format!("{api_host}:15672"));
    env.push_str(&format!("BATON_PASSWORD_ADMIN={admin_password}\n"));
    write_credentials(&file, &env)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&definitions(prefix, &args.vhost, &hashes))?
    );
    eprintln!("passwords and URLs: {} (mode 0600)", file.display());
    Ok(0)
}

/// Writes `text` to `path`, readable by its owner only.
fn write_credentials(path: &Path, text: &str) -> Result<(), BrokerSetupError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |cause| BrokerSetupError::CredentialsFile {
        path: path.to_owned(),
        cause,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(failed)?;
    // An existing file keeps its mode on open: tighten it before writing.
    #[cfg(unix)]
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    Ok(())
}

/// Declares the core topology unless it exists already. The orchestrator declares it; a
/// client-role user may not (declaring needs configure permission) and needs not, so
/// the client only checks that the request queue exists (a passive declare needs no
/// permission) and declares the topology only on a broker that has none yet.
/// Used by [`crate::client::Client::connect`].
pub async fn declare_core_if_missing(
    connection: &lapin::Connection,
    names: &baton_contract::Names,
) -> Result<(), BrokerError> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    let check = connection.create_channel().await?;
    let exists = check
        .queue_declare(
            names.requests_queue().as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = check.close(200, "checked".into()).await;
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    baton_amqp::declare_core(&channel, names).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_are_rabbitmqs_sha256() {
        // RabbitMQ's own hash of "guest" from a 3.10 broker (GET /api/users/guest).
        let guest = "DuZZm6lObZeeK1aPcCVnxbHfhQLzdzTLdLIEvli0tNXNPlBm";
        assert!(verify_password_hash(guest, "guest"));
        assert!(!verify_password_hash(guest, "guest2"));
        let salt = [1, 2, 3, 4];
        assert_eq!(
            hash_password_with_salt("x", salt),
            hash_password_with_salt("x", salt)
        );
        assert!(verify_password_hash(&hash_password("s3cret é"), "s3cret é"));
        assert_ne!(
            hash_password("a"),
            hash_password("a"),
            "a fresh salt each time"
        );
    }

    #[test]
    fn prefixes_are_escaped_in_regexes() {
        let g = grant(Role::Risk, "acme.eu");
        assert_eq!(g.read, r"^acme\.eu\.cmd\.risk(-[a-z0-9_-]+)?$");
        assert_eq!(g.configure, r"^acme\.eu\.(dead|cmd\.risk(-[a-z0-9_-]+)?)$");
        assert_eq!(grant(Role::Client, "a-b").write, r"^a-b\.payments$");
    }

    #[test]
    fn admin_urls_parse_without_showing_passwords() {
        let api = AdminApi::from_url("http://adm:p%40ss@broker:15673/%2f").unwrap();
        assert_eq!(api.address(), "broker:15673");
        assert_eq!(api.vhost(), Some("/"));
        assert_eq!(
            api.authorization,
            format!("Basic {}", BASE64.encode("adm:p@ss"))
        );
        assert!(!format!("{api:?}").contains("p%40ss"));
        let api = AdminApi::from_url("http://adm:p@s/s@broker/vh").unwrap();
        assert_eq!(
            (api.address().as_str(), api.vhost()),
            ("broker:15672", Some("vh"))
        );
        assert_eq!(
            api.authorization,
            format!("Basic {}", BASE64.encode("adm:p@s/s"))
        );
        let api = AdminApi::from_url(DEFAULT_ADMIN_URL).unwrap();
        assert_eq!((api.host(), api.vhost()), ("127.0.0.1", None));
        for bad in [
            "amqp://u:p@h",
            "http://host:15672",
            "http://u@h",
            "http://u:p@h:x",
        ] {
            let e = AdminApi::from_url(bad).unwrap_err();
            assert!(matches!(e, BrokerSetupError::BadAdminUrl { .. }), "{bad}");
        }
    }

    #[test]
    fn credentials_files_carry_urls_with_encoded_passwords() {
        let c = Credentials {
            prefix: "p".into(),
            vhost: "/".into(),
            users: vec![UserCredential {
                role: Role::Risk,
                user: "p-risk".into(),
                password: Some(Password::new("a/b@c")),
                source: PasswordSource::Given,
            }],
        };
        let env = c.env_file("h:5672", "h:15672");
        assert!(env.contains("BATON_PASSWORD_RISK=a/b@c\n"), "{env}");
        assert!(
            env.contains("AMQP_URL_RISK=amqp://p-risk:a%2fb%40c@h:5672/%2f\n"),
            "{env}"
        );
        assert!(!format!("{c:?}").contains("a/b@c"));
    }

    /// deploy/rabbitmq/definitions.json is what `baton broker definitions --prefix baton`
    /// writes (same users, tags, permissions and topic permissions), and its hashes are
    /// of the dev passwords docker-compose.yml uses.
    #[test]
    fn the_shipped_definitions_match_the_roles() {
        let shipped: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/rabbitmq/definitions.json"))
                .expect("definitions.json is JSON");
        let mut hashes = BTreeMap::new();
        for user in shipped["users"].as_array().expect("users") {
            hashes.insert(
                user["name"].as_str().unwrap().to_owned(),
                user["password_hash"].as_str().unwrap().to_owned(),
            );
        }
        assert_eq!(shipped, definitions("baton", "/", &hashes));
        let compose = include_str!("../docker-compose.yml");
        for (user, hash) in &hashes {
            let password = compose
                .split(&format!("{user}:"))
                .nth(1)
                .and_then(|rest| rest.split('@').next())
                .unwrap_or_else(|| panic!("docker-compose.yml has no URL or password for {user}"));
            assert!(
                verify_password_hash(hash, password),
                "definitions.json's hash of {user} is not of compose's password"
            );
        }
    }
}
