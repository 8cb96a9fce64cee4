//! RabbitMQ plumbing every Baton binary shares: connecting with a useful error, declaring
//! the topology idempotently, and publishing with publisher confirms.
//!
//! One function per part of the topology, so each binary declares exactly what it uses and
//! can simply call it again after a reconnect.

use crate::names::{headers, Names, CONTENT_TYPE, KNOWN_SCHEMA_VERSIONS, SCHEMA_VERSION};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::{AsyncTcpStream, RustlsConnector, RustlsConnectorConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, RootCertStore};
use std::path::{Path, PathBuf};

/// How many times RabbitMQ delivers a request or command before dead-lettering it, by
/// default: a poison backstop only. A message that crashes its consumer every time ends in
/// `<prefix>.dead` instead of looping. RabbitMQ counts every return, a closed channel's
/// too (a restart, a reconnect), so it is high: a payment's own retries are counted in
/// the journal (parkings), and a saga whose request is dead-lettered mid-way is finished
/// by the orchestrator's sweeper.
pub const DELIVERY_LIMIT: i64 = 100;

/// The delivery limit queues are declared with: `BATON_DELIVERY_LIMIT` if set (every
/// process of a deployment must use the same value: a queue declared with another one is
/// refused with `PRECONDITION_FAILED`), else [`DELIVERY_LIMIT`].
pub fn delivery_limit() -> i64 {
    static LIMIT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("BATON_DELIVERY_LIMIT")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(DELIVERY_LIMIT)
    })
}

/// Default broker URL.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Errors of the shared broker plumbing. Each variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached, refused the login, or its TLS certificate was not
    /// trusted.
    #[error("cannot connect to RabbitMQ at {url}: {cause}; {hint}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// What went wrong, in a few words (the client library's words for plain errors).
        cause: String,
        /// What to do about it.
        hint: String,
    },
    /// The CA file given for `amqps://` cannot be used (or is given with a plain URL).
    #[error("cannot use the CA file {path} (--amqp-ca-file / AMQP_CA_FILE): {problem}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The URL is not an AMQP URL.
    #[error("AMQP_URL {url} is not a valid amqp:// URL: {problem}")]
    BadUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The broker refused the message (negative confirm): retry later.
    #[error("RabbitMQ refused the message published to {target} (nack)")]
    PublishNacked {
        /// Exchange/routing key.
        target: String,
    },
    /// No queue is bound where the message was published: retrying will not help until
    /// the topology changes.
    #[error("message published to {target} was unroutable: no queue is bound there")]
    Unroutable {
        /// Exchange/routing key.
        target: String,
    },
    /// A queue exists with other arguments than this version declares (made by an older
    /// Baton, or by hand): RabbitMQ refuses to change them, so nothing starts until the
    /// queue is recreated (README "Upgrading queue arguments").
    #[error(
        "queue {queue} exists with other arguments than this Baton declares ({detail}); \
         recreate it as README \"Upgrading queue arguments\" says"
    )]
    QueueArguments {
        /// The queue.
        queue: String,
        /// RabbitMQ's words: which argument differs, and its two values.
        detail: String,
    },
    /// The channel or connection failed underneath.
    #[error("RabbitMQ channel error: {0}")]
    Channel(#[from] lapin::Error),
}

impl BrokerError {
    /// Whether trying again later (after a reconnect, if needed) may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            BrokerError::BadUrl { .. }
                | BrokerError::Unroutable { .. }
                | BrokerError::CaFile { .. }
                | BrokerError::QueueArguments { .. }
        )
    }
}

/// `amqp://guest:***@host/…`: the URL without its password, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last `@` (a password may contain `/`, `?` or
    // `@`); without an `@` there is no password to hide.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host_and_path) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host_and_path}"),
        None => format!("{scheme}://{userinfo}@{host_and_path}"),
    }
}

/// Where a database URL points, for start-up lines and wiring errors: for `sqlite:` the
/// file's absolute path (relative paths resolve against the working directory, which is
/// what the operator must see when two processes run in different ones); for anything
/// else the URL without its password.
pub fn database_location(url: &str) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return redact_url(url);
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.starts_with(':') {
        return url.split('?').next().unwrap_or(url).to_owned();
    }
    let path = std::path::Path::new(path);
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_owned())
    };
    // Resolves `..` and symbolic links once the file exists (it does after an open).
    std::fs::canonicalize(&absolute)
        .unwrap_or(absolute)
        .display()
        .to_string()
}

/// How an `amqps://` connection checks the broker's certificate (`amqp://` is plain TCP
/// and uses none of this).
///
/// The default trusts the system's CA store (what `update-ca-certificates` manages on
/// Debian; `SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere). With a CA file, only the CA
/// certificates in that file are trusted. Either way the certificate must name the URL's
/// host (a DNS name or an IP address in its subjectAltName).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) that signed the broker's certificate
    /// (`--amqp-ca-file` / `AMQP_CA_FILE`). Read at every connect, so a replaced file
    /// takes effect at the next reconnect.
    pub ca_file: Option<PathBuf>,
}

impl TlsOptions {
    /// Trust `ca_file` if given, the system's CA store otherwise.
    pub fn with_ca_file(ca_file: Option<PathBuf>) -> Self {
        Self { ca_file }
    }
}

fn plain_url_with_ca_file(path: &Path) -> BrokerError {
    BrokerError::CaFile {
        path: path.display().to_string(),
        problem: "the AMQP URL is amqp://, plain TCP, which would send the password and card \
                  data unencrypted and ignore the CA: use an amqps:// URL (RabbitMQ's TLS \
                  port, usually 5671), or drop the CA file"
            .into(),
    }
}

/// The CA certificates of a PEM file, each checked to be usable as a trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let problem = |problem: String| BrokerError::CaFile {
        path: path.display().to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| problem(format!("cannot read it ({e})")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("it is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(problem(
            "it holds no certificate: it must be PEM with one or more \
             `-----BEGIN CERTIFICATE-----` blocks (the CA's, not the broker's key)"
                .into(),
        ));
    }
    let (_, unusable) = RootCertStore::empty().add_parsable_certificates(certs.iter().cloned());
    if unusable > 0 {
        return Err(problem(format!(
            "{unusable} of its {} certificate(s) cannot be parsed as X.509",
            certs.len()
        )));
    }
    Ok(certs)
}

/// The TLS client for one connect to `url` (shown, without its password): the CA file's
/// certificates, or the system's store.
fn tls_connector(url: &str, tls: &TlsOptions) -> Result<RustlsConnector, BrokerError> {
    let (config, source) = match &tls.ca_file {
        Some(path) => (
            RustlsConnectorConfig::default().with_parsable_certificates(read_ca_file(path)?),
            format!("the CA file {}", path.display()),
        ),
        None => (
            RustlsConnectorConfig::new_with_native_certs().map_err(|e| BrokerError::Connect {
                url: url.to_owned(),
                cause: format!("the system's CA store yields no certificate ({e})"),
                hint: "install ca-certificates, or pass the broker's CA with --amqp-ca-file \
                       (AMQP_CA_FILE)"
                    .into(),
            })?,
            "the system's CA store".into(),
        ),
    };
    config
        .connector_with_no_client_auth()
        .map_err(|e| BrokerError::CaFile {
            path: source,
            problem: format!("no TLS client can be built from it ({e})"),
        })
}

/// Connects to `url`, naming the connection `name` in the management UI.
///
/// `amqps://` always speaks TLS, checks the broker's certificate against `tls` and its
/// host name against the URL's, and never falls back to plain TCP. `amqp://` is plain TCP
/// and refuses a CA file: a URL without the `s` next to a CA file is more likely a
/// mistake than a choice. Nothing is retried here: the long-running processes fail at
/// start and retry after a loss.
pub async fn connect(url: &str, name: &str, tls: &TlsOptions) -> Result<Connection, BrokerError> {
    let shown = redact_url(url);
    let uri: AMQPUri = if url.starts_with("amqp://") || url.starts_with("amqps://") {
        url.parse().map_err(|problem: String| BrokerError::BadUrl {
            url: shown.clone(),
            problem,
        })?
    } else {
        return Err(BrokerError::BadUrl {
            url: shown,
            problem: "it must start with amqp:// (plain TCP) or amqps:// (TLS)".into(),
        });
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connected = match uri.scheme {
        AMQPScheme::AMQP => {
            if let Some(path) = &tls.ca_file {
                return Err(plain_url_with_ca_file(path));
            }
            Connection::connect_uri(uri, properties).await
        }
        AMQPScheme::AMQPS => {
            let connector = tls_connector(&shown, tls)?;
            let runtime = lapin::runtime::default_runtime().map_err(|e| BrokerError::Connect {
                url: shown.clone(),
                cause: root_cause(&e),
                hint: "lapin needs a tokio runtime".into(),
            })?;
            // TCP, then the TLS handshake on it: an error in either fails the connect.
            Connection::connector(
                uri,
                runtime,
                async move |uri, runtime| {
                    let host = uri.authority.host.clone();
                    let addrs = runtime.to_socket_addrs((host.clone(), uri.authority.port));
                    let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
                    Ok(stream.into_rustls(&connector, &host).await?)
                },
                properties,
            )
            .await
        }
    };
    connected.map_err(|e| connect_error(shown, tls, &e))
}

/// A connect failure in one line: what happened, and what to do about it.
fn connect_error(url: String, tls: &TlsOptions, error: &lapin::Error) -> BrokerError {
    let not_running = "is it running? Start it with `rabbitmq-server -detached` (or \
                       `docker compose up -d rabbitmq`), or point AMQP_URL / --amqp-url at it";
    let cause = root_cause(error);
    if cause.contains("ACCESS_REFUSED") {
        let user = url_user(&url).unwrap_or_else(|_| "?".into());
        return BrokerError::Connect {
            url,
            cause: format!("the broker refused the login of user {user} (ACCESS_REFUSED)"),
            hint: "the broker is running: check the user and password in AMQP_URL / \
                   --amqp-url (`baton broker setup` writes them to its credentials file)"
                .into(),
        };
    }
    let Some(tls_error) = tls_cause(error) else {
        return BrokerError::Connect {
            url,
            cause: root_cause(error),
            hint: not_running.into(),
        };
    };
    let trusted_by = match &tls.ca_file {
        Some(path) => format!("the CA file {}", path.display()),
        None => "the system's CA store".into(),
    };
    let (cause, hint) = match tls_error {
        rustls::Error::InvalidCertificate(
            reason @ (CertificateError::UnknownIssuer | CertificateError::BadSignature),
        ) => (
            format!("TLS certificate not trusted ({reason:?}) by {trusted_by}"),
            "pass the CA that signed the broker's certificate with --amqp-ca-file \
             (AMQP_CA_FILE)"
                .to_owned(),
        ),
        rustls::Error::InvalidCertificate(
            reason @ (CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }),
        ) => (
            format!("TLS certificate is for another host ({reason})"),
            "use a host name in the URL that the broker's certificate names (its \
             subjectAltName), or have the certificate reissued for this name"
                .to_owned(),
        ),
        rustls::Error::InvalidCertificate(reason) => (
            format!("TLS certificate rejected ({reason})"),
            "the broker's certificate must be valid now and signed for serving TLS".to_owned(),
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
            format!("the server does not speak TLS there ({tls_error})"),
            "amqps:// needs RabbitMQ's TLS listener (usually port 5671); it never falls back \
             to plain TCP"
                .to_owned(),
        ),
        rustls::Error::AlertReceived(alert) => (
            format!("the broker refused the TLS handshake (alert {alert:?})"),
            "see the broker's log; if it asks for a client certificate, Baton does not \
             send one"
                .to_owned(),
        ),
        other => (
            format!("TLS handshake failed ({other})"),
            "check the broker's TLS listener and its log".to_owned(),
        ),
    };
    BrokerError::Connect { url, cause, hint }
}

/// The rustls error under a lapin error, if the connect failed in the TLS handshake.
fn tls_cause(error: &lapin::Error) -> Option<&rustls::Error> {
    let lapin::ErrorKind::IOError(io) = error.kind() else {
        return None;
    };
    // io::Error's `source` skips the error it wraps, so look inside each level by hand.
    let mut inner: &(dyn std::error::Error + 'static) = io.get_ref()?;
    loop {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner = match inner.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref()?,
            None => inner.source()?,
        };
    }
}

/// The innermost message of an error chain, which is the one that says what happened
/// (lapin repeats it at each level).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A channel in confirm mode, for publishing.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Bounds of the queues nobody but a person or an optional consumer empties. They are
/// queue arguments, the same in every binary (a queue declared twice with different
/// arguments is refused); a deployment that needs lower ones sets a `max-length` policy
/// (RabbitMQ applies the smaller of policy and argument). README "Queue bounds".
pub mod bounds {
    /// `<prefix>.results` keeps at most this many results; past it the oldest is dropped
    /// (`drop-head`). Every result is also in the journal and went to its `reply_to`.
    pub const RESULTS_MAX_LENGTH: i64 = 100_000;
    /// A result unconsumed for 7 days leaves `<prefix>.results`.
    pub const RESULTS_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
    /// `<prefix>.dead` refuses more than this (`reject-publish`): nothing is dropped;
    /// RabbitMQ keeps what it could not dead-letter in the source queue, Baton's own
    /// dead-letter publishes are refused and retried. Alert `BatonDeadLettersFilling`
    /// fires at 80 %.
    pub const DEAD_MAX_LENGTH: i64 = 100_000;
    /// `<prefix>.attention` refuses more than this (`reject-publish`), as `.dead`. Alert
    /// `BatonAttentionFilling` fires at 80 %.
    pub const ATTENTION_MAX_LENGTH: i64 = 10_000;
}

/// Arguments of a durable quorum queue, built one concern at a time.
struct QueueArgs(FieldTable);

impl QueueArgs {
    fn quorum() -> Self {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        Self(args)
    }

    fn text(mut self, key: &str, value: &str) -> Self {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
        self
    }

    fn number(mut self, key: &str, value: i64) -> Self {
        self.0.insert(key.into(), AMQPValue::LongLongInt(value));
        self
    }

    /// Dead-letters to the queue `target` (through the default exchange), at least once.
    ///
    /// Quorum queues dead-letter at most once by default: a message whose target is
    /// unavailable at that instant is dropped. Baton's dead letters are payments (a parked
    /// request on its way back, a request or command past its delivery limit), so
    /// RabbitMQ (3.10+) keeps each in the source queue until the target has confirmed it.
    /// That strategy requires `reject-publish` overflow (with any other, RabbitMQ falls
    /// back to at-most-once); none of these queues has a length bound, so it never
    /// refuses a publish. The target must exist: every `declare_*` declares it first.
    fn dead_letter_to(self, target: &str) -> Self {
        self.text("x-dead-letter-exchange", "")
            .text("x-dead-letter-routing-key", target)
            .text("x-dead-letter-strategy", "at-least-once")
            .text("x-overflow", "reject-publish")
    }

    /// A message delivered [`delivery_limit`] times is dead-lettered to `dead`.
    fn delivery_limit_to(self, dead: &str) -> Self {
        self.number("x-delivery-limit", delivery_limit())
            .dead_letter_to(dead)
    }
}

/// Declares a durable queue; a queue that exists with other arguments (an older Baton's,
/// or a hand-made one) is [`BrokerError::QueueArguments`].
async fn declare(channel: &Channel, queue: &str, args: QueueArgs) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel.queue_declare(queue.into(), options, args.0).await {
        Ok(_) => Ok(()),
        Err(e) => Err(queue_arguments_error(queue, e)),
    }
}

/// `PRECONDITION_FAILED` on a declare means the queue exists with other arguments.
fn queue_arguments_error(queue: &str, error: lapin::Error) -> BrokerError {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e)
            if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
        {
            BrokerError::QueueArguments {
                queue: queue.to_owned(),
                detail: e.get_message().as_str().to_owned(),
            }
        }
        _ => BrokerError::Channel(error),
    }
}

/// Declares what requests, results and dead letters need: the payments exchange, the
/// request queue (bound to `request`), the results queue (bound to `result.*`) and the
/// dead-letter queue. Idempotent.
pub async fn declare_core(channel: &Channel, names: &Names) -> Result<(), BrokerError> {
    let exchange = names.payments_exchange();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    declare_dead(channel, names).await?;
    let requests = names.requests_queue();
    declare(
        channel,
        &requests,
        QueueArgs::quorum().delivery_limit_to(&names.dead_queue()),
    )
    .await?;
    channel
        .queue_bind(
            requests.as_str().into(),
            exchange.as_str().into(),
            names.request_routing_key().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let results = names.results_queue();
    // Dropping the oldest, not refusing the newest: a refused result would hold up the
    // payment that produced it (its request stays unacked until the result is confirmed),
    // and a results queue nobody reads would stop every payment.
    let bounded = QueueArgs::quorum()
        .number("x-max-length", bounds::RESULTS_MAX_LENGTH)
        .text("x-overflow", "drop-head")
        .number("x-message-ttl", bounds::RESULTS_TTL_MS);
    declare(channel, &results, bounded).await?;
    channel
        .queue_bind(
            results.as_str().into(),
            exchange.as_str().into(),
            "result.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The dead-letter queue: bounded, refusing rather than dropping at the bound.
async fn declare_dead(channel: &Channel, names: &Names) -> Result<(), BrokerError> {
    let args = QueueArgs::quorum()
        .number("x-max-length", bounds::DEAD_MAX_LENGTH)
        .text("x-overflow", "reject-publish");
    declare(channel, &names.dead_queue(), args).await
}

/// Declares the operators' attention queue: bounded, refusing rather than dropping at
/// the bound. Idempotent.
pub async fn declare_attention(channel: &Channel, names: &Names) -> Result<String, BrokerError> {
    let queue = names.attention_queue();
    let args = QueueArgs::quorum()
        .number("x-max-length", bounds::ATTENTION_MAX_LENGTH)
        .text("x-overflow", "reject-publish");
    declare(channel, &queue, args).await?;
    Ok(queue)
}

/// Declares a parking queue: messages wait `delay_ms`, then RabbitMQ dead-letters them
/// back to the request queue, at least once. Plain TTL and dead-lettering: no plugin
/// needed. The request queue must exist ([`declare_core`] first). Idempotent.
pub async fn declare_parking(
    channel: &Channel,
    names: &Names,
    delay_ms: u64,
) -> Result<String, BrokerError> {
    let queue = names.retry_queue(delay_ms);
    let args = QueueArgs::quorum()
        .number("x-message-ttl", i64::try_from(delay_ms).unwrap_or(i64::MAX))
        .dead_letter_to(&names.requests_queue());
    declare(channel, &queue, args).await?;
    Ok(queue)
}

/// Declares one service's command queue (and the dead-letter queue it overflows to).
/// Idempotent.
pub async fn declare_command_queue(
    channel: &Channel,
    names: &Names,
    service: &str,
) -> Result<String, BrokerError> {
    declare_dead(channel, names).await?;
    let queue = names.command_queue(service);
    declare(
        channel,
        &queue,
        QueueArgs::quorum().delivery_limit_to(&names.dead_queue()),
    )
    .await?;
    Ok(queue)
}

/// Deletes every queue and the exchange of a deployment: for demos and tests that run on
/// a throw-away prefix. Never called by the orchestrator or the services themselves.
pub async fn delete_topology(
    channel: &Channel,
    names: &Names,
    services: &[&str],
) -> Result<(), BrokerError> {
    delete_topology_with_parking(channel, names, services, &[]).await
}

/// [`delete_topology`], plus the parking queues of the given delays.
pub async fn delete_topology_with_parking(
    channel: &Channel,
    names: &Names,
    services: &[&str],
    parking_delays_ms: &[u64],
) -> Result<(), BrokerError> {
    let mut queues = vec![
        names.requests_queue(),
        names.results_queue(),
        names.dead_queue(),
        names.attention_queue(),
    ];
    queues.extend(services.iter().map(|s| names.command_queue(s)));
    queues.extend(parking_delays_ms.iter().map(|d| names.retry_queue(*d)));
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            names.payments_exchange().as_str().into(),
            Default::default(),
        )
        .await?;
    Ok(())
}

/// Declares an exclusive, auto-deleted queue named `name` (the broker picks a name when
/// `name` is empty) and consumes it without acks: the reply queue of one process, which
/// disappears with its connection. Returns the queue's name and the consumer.
pub async fn consume_exclusive(
    channel: &Channel,
    name: &str,
) -> Result<(String, lapin::Consumer), BrokerError> {
    let queue = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let name = queue.name().as_str().to_owned();
    let consumer = channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..lapin::options::BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((name, consumer))
}

/// Properties of a persistent JSON message with Baton's schema header and `extra` headers.
pub fn json_properties(extra: &[(&str, &str)]) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(
        headers::SCHEMA.into(),
        AMQPValue::LongLongInt(i64::from(SCHEMA_VERSION)),
    );
    for (key, value) in extra {
        table.insert((*key).into(), AMQPValue::LongString((*value).into()));
    }
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_headers(table)
}

/// The broker user a connection to `url` logs in as: the URL's user name, percent-decoded,
/// or `guest` when the URL names none (the client library's default). RabbitMQ accepts a
/// message's `user_id` property only when it equals this name, so it is what every Baton
/// binary stamps on what it publishes ([`with_sender`]).
pub fn url_user(url: &str) -> Result<String, BrokerError> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .map_err(|problem| BrokerError::BadUrl {
            url: redact_url(url),
            problem,
        })
}

/// `properties` with `user_id` set to `user`: RabbitMQ refuses the publish unless `user`
/// is the connection's own user, so a receiver that checks `user_id` knows who sent it.
/// A user name over AMQP's 255-byte limit cannot be stamped (nor exist in RabbitMQ).
pub fn with_sender(properties: BasicProperties, user: &str) -> BasicProperties {
    match short(user) {
        Some(user) => properties.with_user_id(user),
        None => properties,
    }
}

/// The broker-validated sender of a delivery: its `user_id` property, if set.
pub fn sender(properties: &BasicProperties) -> Option<&str> {
    properties.user_id().as_ref().map(|u| u.as_str())
}

/// Checks a request's `baton-schema` header: absent means version 1; present, it must
/// name one of [`KNOWN_SCHEMA_VERSIONS`], as an integer of any AMQP width or as decimal
/// text (clients' AMQP libraries differ in how they send a number). Anything else is
/// refused naming the versions known, never guessed at: a body of another version may
/// mean something else under the same field names.
pub fn check_schema(properties: &BasicProperties) -> Result<(), crate::InvalidRequest> {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get(headers::SCHEMA))
    else {
        return Ok(());
    };
    let version: Option<i128> = match value {
        AMQPValue::ShortShortInt(v) => Some(i128::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i128::from(*v)),
        AMQPValue::ShortInt(v) => Some(i128::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i128::from(*v)),
        AMQPValue::LongInt(v) => Some(i128::from(*v)),
        AMQPValue::LongUInt(v) => Some(i128::from(*v)),
        AMQPValue::LongLongInt(v) => Some(i128::from(*v)),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            let text = header_text(properties, headers::SCHEMA).unwrap_or_default();
            let digits =
                !text.is_empty() && text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| text.parse().ok()).flatten()
        }
        _ => None,
    };
    if version.is_some_and(|v| KNOWN_SCHEMA_VERSIONS.iter().any(|&k| i128::from(k) == v)) {
        return Ok(());
    }
    let known = KNOWN_SCHEMA_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // The value is described, not quoted, beyond a number: a header can hold anything.
    let got = match version {
        Some(v) => format!("version {v}"),
        None => "not a version number".to_owned(),
    };
    Err(crate::InvalidRequest::new(
        None,
        headers::SCHEMA,
        &format!(
            "is {got}; this orchestrator reads schema version(s) {known} (an absent header \
             means 1): send it as the integer or text of a known version"
        ),
    ))
}

/// A header's text value, if present and textual.
pub fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(key)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A string as an AMQP short string, or `None` if over AMQP's 255-byte limit.
pub fn short(text: &str) -> Option<ShortString> {
    ShortString::try_new(text).ok()
}

/// A string as an AMQP long string header value.
pub fn long(text: &str) -> LongString {
    text.into()
}

/// Publishes on a confirm-mode channel with `mandatory` set and waits for the broker's
/// confirm: `Ok` means the message is routed to at least one queue and, for persistent
/// messages on durable queues, safely stored.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    // Names only, never the body: the error reaches logs. Masked and capped, since a
    // routing key can be a client's `reply_to`.
    let target = || {
        let key = crate::mask::bounded(routing_key, 128);
        if exchange.is_empty() {
            format!("queue {key}")
        } else {
            format!("{}/{key}", crate::mask::bounded(exchange, 128))
        }
    };
    let (Some(exchange_name), Some(key)) = (short(exchange), short(routing_key)) else {
        return Err(BrokerError::Unroutable { target: target() });
    };
    let confirm = channel
        .basic_publish(
            exchange_name,
            key,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(BrokerError::PublishNacked { target: target() });
    }
    if confirm.take_message().is_some() {
        return Err(BrokerError::Unroutable { target: target() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://u:p@ss@host"),
            "amqp://u:***@host",
            "an @ inside the password is still hidden"
        );
        assert_eq!(redact_url("amqp://host:5672/vh"), "amqp://host:5672/vh");
        assert_eq!(
            redact_url("amqp://svc:ab/cd+ef==@broker:5672/%2f"),
            "amqp://svc:***@broker:5672/%2f",
            "a base64 password with a slash"
        );
        assert_eq!(
            redact_url("postgres://u:p?x@db/baton"),
            "postgres://u:***@db/baton"
        );
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
    }

    #[test]
    fn database_locations_are_absolute_paths_or_redacted_urls() {
        let cwd = std::env::current_dir().unwrap();
        let relative = database_location("sqlite://no-such-dir-xyz/ledger.db?mode=rwc");
        assert_eq!(
            relative,
            cwd.join("no-such-dir-xyz/ledger.db").display().to_string()
        );
        assert_eq!(
            database_location("sqlite:///var/lib/baton/j.db"),
            "/var/lib/baton/j.db"
        );
        assert_eq!(database_location("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(
            database_location("postgres://baton:hunter2@db:5432/ledger"),
            "postgres://baton:***@db:5432/ledger"
        );
    }

    #[test]
    fn the_sender_is_the_urls_user() {
        assert_eq!(
            url_user("amqp://baton-risk:pw@h:5672/%2f").unwrap(),
            "baton-risk"
        );
        assert_eq!(url_user("amqps://a%40b:pw@h/").unwrap(), "a@b");
        assert_eq!(url_user("amqp://127.0.0.1:5672/%2f").unwrap(), "guest");
        let props = with_sender(BasicProperties::default(), "baton-orchestrator");
        assert_eq!(sender(&props), Some("baton-orchestrator"));
        assert_eq!(sender(&BasicProperties::default()), None);
    }

    /// `read_ca_file` on a file holding `contents`: the error's problem text.
    fn ca_file_problem(contents: &str) -> String {
        let path = std::env::temp_dir().join(format!("baton-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        let read = read_ca_file(&path);
        let _ = std::fs::remove_file(&path);
        match read {
            Err(BrokerError::CaFile { problem, .. }) => problem,
            other => panic!("a CaFile error expected, got {other:?}"),
        }
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_a_clear_error() {
        let missing = Path::new("/nonexistent/baton-ca.pem");
        let error = read_ca_file(missing).unwrap_err().to_string();
        assert!(
            error.contains("/nonexistent/baton-ca.pem")
                && error.contains("--amqp-ca-file")
                && error.contains("cannot read it"),
            "{error}"
        );
        assert!(
            ca_file_problem("listeners.ssl.default = 5671\n").contains("holds no certificate"),
            "not PEM at all"
        );
        let key_only =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(
            ca_file_problem(key_only).contains("holds no certificate"),
            "a key is not a CA"
        );
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(ca_file_problem(bad_base64).contains("not valid PEM"));
        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert!(ca_file_problem(not_x509).contains("cannot be parsed as X.509"));
        assert!(!BrokerError::CaFile {
            path: String::new(),
            problem: String::new()
        }
        .is_transient());
    }

    fn with_schema(value: AMQPValue) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(headers::SCHEMA.into(), value);
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn known_schema_versions_pass_in_any_integer_width_or_as_text() {
        assert!(
            check_schema(&BasicProperties::default()).is_ok(),
            "absent is 1"
        );
        assert!(
            check_schema(&json_properties(&[])).is_ok(),
            "what Baton sends"
        );
        for ok in [
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(1),
            AMQPValue::LongInt(1),
            AMQPValue::LongUInt(1),
            AMQPValue::LongLongInt(1),
            AMQPValue::LongString("1".into()),
            AMQPValue::ShortString("1".into()),
        ] {
            assert!(check_schema(&with_schema(ok.clone())).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn unknown_schema_versions_are_refused_naming_the_known_ones() {
        for (bad, got) in [
            (AMQPValue::LongLongInt(99), "is version 99"),
            (AMQPValue::LongString("99".into()), "is version 99"),
            (AMQPValue::LongLongInt(0), "is version 0"),
            (AMQPValue::LongLongInt(-1), "is version -1"),
            (
                AMQPValue::LongString("1.0".into()),
                "is not a version number",
            ),
            (
                AMQPValue::LongString(" 1".into()),
                "is not a version number",
            ),
            (AMQPValue::LongString("".into()), "is not a version number"),
            (AMQPValue::Boolean(true), "is not a version number"),
            (AMQPValue::Double(1.0), "is not a version number"),
            (
                AMQPValue::LongLongInt(4242424242424242),
                "is version ****4242",
            ),
        ] {
            let e = check_schema(&with_schema(bad.clone())).unwrap_err();
            assert_eq!(e.field, "baton-schema", "{bad:?}");
            assert!(e.problem.starts_with(got), "{bad:?}: {e}");
            assert!(e.problem.contains("reads schema version(s) 1"), "{e}");
            assert_eq!(e.payment_id, None);
        }
    }
}
