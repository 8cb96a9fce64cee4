//! The RabbitMQ management HTTP API, as `baton broker` and `baton doctor` use it.

use super::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use baton_amqp::redact_url;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;

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
    pub(super) authorization: String,
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
    pub(super) async fn call(
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
    pub(super) async fn expect(
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
