//! Connecting to RabbitMQ, over TCP or TLS, with errors that say what to fix.

use crate::{url_user, BrokerError};
use baton_contract::redact_url;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::{AsyncTcpStream, RustlsConnector, RustlsConnectorConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, RootCertStore};
use std::path::{Path, PathBuf};

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
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
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
