//! The HTTP port: an HTTP/1 server over a [`tokio::net::TcpListener`], one task per
//! connection, serving `/metrics`, `/healthz`, `/readyz` and an optional application
//! handler for any other `GET` path.
//!
//! Routing, in order:
//!
//! | request | answer |
//! |---|---|
//! | not `GET` | 405, `Allow: GET` |
//! | `GET /metrics` | 200, Prometheus text format of the registry |
//! | `GET /healthz` | 200 `ok` |
//! | `GET /readyz` | 200 `ready`, or 503 `not ready: <reason>` |
//! | other `GET` | the [`Handler`]'s [`Response`], or 404 when it returns `None` or there is none; 401/403 when [`AppRoutes`]' access rule says no |
//!
//! Shutdown is a future handed to [`HttpServer::start`] (or [`HttpServer::stop`]): the
//! listener closes at once, open connections finish the response in progress and close,
//! and any still open after [`DRAIN_TIMEOUT`] are dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::{Health, OpsError};

/// At most this many connections are served at once; further ones wait in the listen
/// backlog. A scrape port needs few, and a bound keeps a misbehaving client from
/// exhausting file descriptors the broker connection needs.
const MAX_CONNECTIONS: usize = 64;

/// A client must send its request headers within this time, so idle or slow connections
/// do not hold one of the [`MAX_CONNECTIONS`] slots.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for open connections to finish before dropping them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the application handler answers for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code; an invalid code is answered as 500.
    pub status: u16,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// The body, sent as is.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response (`application/json`) with an already serialised body.
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A plain-text response (`text/plain; charset=utf-8`).
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    /// An HTML page (`text/html; charset=utf-8`); the caller escapes what it puts in.
    pub fn html(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// What the application handler is told about one `GET` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppRequest {
    /// The path without the query string (`/payments/p-1`).
    pub path: String,
    /// The client asked for HTML (its `Accept` header names `text/html`), as a browser
    /// does; API clients and `curl` do not.
    pub wants_html: bool,
}

/// The application's handler for `GET` paths other than the built-in ones.
///
/// It receives the [`AppRequest`] and returns `None` for "no such resource" (answered
/// 404). Build one from an `async` closure with [`handler`] (the path only) or
/// [`request_handler`].
pub type Handler =
    Arc<dyn Fn(AppRequest) -> Pin<Box<dyn Future<Output = Option<Response>> + Send>> + Send + Sync>;

/// Wraps an `async` function of the path into a [`Handler`], so callers do not have to
/// box futures themselves:
///
/// ```
/// let h = baton_ops::handler(|path: String| async move {
///     path.strip_prefix("/payments/")
///         .map(|id| baton_ops::Response::json(200, format!("{{\"id\":\"{id}\"}}").into_bytes()))
/// });
/// # let _ = h;
/// ```
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Response>> + Send + 'static,
{
    Arc::new(move |request: AppRequest| Box::pin(f(request.path)))
}

/// [`handler`] for a function of the whole [`AppRequest`] (to answer a browser with HTML).
pub fn request_handler<F, Fut>(f: F) -> Handler
where
    F: Fn(AppRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Response>> + Send + 'static,
{
    Arc::new(move |request| Box::pin(f(request)))
}

/// The application's own paths (a [`Handler`]) and who may read them.
///
/// The rule, in one place for every binary: with a [`BearerToken`], every application
/// path needs `Authorization: Bearer <token>`; without one, they are served only when the
/// port is bound to a loopback address, and answered `403` otherwise (they show payment
/// details). `/metrics`, `/healthz` and `/readyz` are always open: Prometheus and
/// container probes do not carry tokens, and they show no payment.
#[derive(Clone)]
pub struct AppRoutes {
    handler: Handler,
    token: Option<BearerToken>,
}

impl AppRoutes {
    /// `handler`'s paths, open on loopback only.
    pub fn new(handler: Handler) -> Self {
        Self {
            handler,
            token: None,
        }
    }

    /// Requires `token` (when `Some`) on every application path, on any address.
    pub fn with_token(mut self, token: Option<BearerToken>) -> Self {
        self.token = token;
        self
    }
}

/// A secret that guards the application paths; never printed.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

impl BearerToken {
    /// The shortest token accepted: shorter ones are guessable.
    pub const MIN_LEN: usize = 16;

    /// Reads the token from `path`: its content with surrounding white space removed, at
    /// least [`BearerToken::MIN_LEN`] visible ASCII characters.
    pub fn from_file(path: &std::path::Path) -> Result<Self, OpsError> {
        let problem = |problem: String| OpsError::Token {
            path: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
        let token = text.trim();
        if token.len() < Self::MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(problem(format!(
                "the token must be at least {} visible ASCII characters (e.g. `openssl rand -hex 32`)",
                Self::MIN_LEN
            )));
        }
        Ok(Self(token.into()))
    }

    /// Whether an `Authorization` header value carries this token. The comparison takes
    /// the same time wherever the first difference is.
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(given) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (given, wanted) = (given.trim().as_bytes(), self.0.as_bytes());
        given.len() == wanted.len()
            && given
                .iter()
                .zip(wanted)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A running HTTP port.
///
/// Dropping it does **not** stop the server: it runs until the shutdown future given to
/// [`HttpServer::start`] resolves, or [`HttpServer::stop`] is called.
#[derive(Debug)]
pub struct HttpServer {
    /// The address actually bound, which differs from the requested one with port 0.
    local_addr: SocketAddr,
    /// Lets [`HttpServer::stop`] end the server without the shutdown future. Kept (not
    /// sent) while the handle lives; the accept loop ignores its being dropped.
    stop: oneshot::Sender<()>,
    /// The accept loop; it returns once connections are drained.
    task: JoinHandle<()>,
}

/// What every connection needs to answer requests.
struct State {
    /// The application's metrics, gathered on each scrape.
    registry: prometheus::Registry,
    /// Readiness, as the application last set it.
    health: Health,
    /// Paths beyond the built-in ones, and their access rule.
    app: Option<AppRoutes>,
    /// Whether the port is bound to a loopback address (see [`AppRoutes`]).
    loopback: bool,
}

impl HttpServer {
    /// Binds `addr` (`"127.0.0.1:0"` picks a free port), logs the bound address at info,
    /// and serves in a background task until `shutdown` resolves.
    ///
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`OpsError::Bind`] when the address cannot be bound (taken, privileged, unknown
    /// host); its message names the address and the `--http-addr` / `BATON_HTTP_ADDR`
    /// setting.
    pub async fn start(
        addr: &str,
        registry: prometheus::Registry,
        health: Health,
        app: Option<AppRoutes>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<HttpServer, OpsError> {
        let bind_error = |cause| OpsError::Bind {
            addr: addr.to_owned(),
            cause,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        tracing::info!(addr = %local_addr, "HTTP port listening (/metrics, /healthz, /readyz)");

        let state = Arc::new(State {
            registry,
            health,
            app,
            loopback: local_addr.ip().is_loopback(),
        });
        let (stop, stop_rx) = oneshot::channel();
        let stopped = async move {
            tokio::select! {
                () = shutdown => {}
                // A dropped handle is not a stop request: keep serving until `shutdown`.
                Ok(()) = stop_rx => {}
            }
        };
        let task = tokio::spawn(accept_loop(listener, state, stopped));
        Ok(HttpServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open connections finish (up to [`DRAIN_TIMEOUT`]) and
    /// returns when the server is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        join(self.task).await;
    }

    /// Waits until the server has stopped because the shutdown future resolved, and its
    /// connections are drained. For `main`: start, mark ready, run, then `wait()`.
    pub async fn wait(self) {
        let HttpServer { stop, task, .. } = self;
        let _keep_running = stop;
        join(task).await;
    }
}

async fn join(task: JoinHandle<()>) {
    if let Err(e) = task.await {
        tracing::error!(error = %e, "HTTP port task failed");
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    stopped: impl Future<Output = ()> + Send,
) {
    tokio::pin!(stopped);
    // Tells connections to finish their current response and close.
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));

    loop {
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}

        let slot = tokio::select! {
            biased;
            () = &mut stopped => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed; stop rather than spin
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "HTTP port cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let closing = closing_rx.clone();
        connections.spawn(async move {
            serve_connection(stream, state, closing).await;
            drop(slot);
        });
    }

    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTP port closing connections that did not finish in time"
        );
        connections.shutdown().await;
    }
    tracing::info!("HTTP port stopped");
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<State>,
    mut closing: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(route(&state, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        // Mapped to `()` at once: the watch guard must not live across the await below.
        _ = async { closing.wait_for(|closing| *closing).await.map(|_| ()) } => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Client resets and header timeouts are routine; not worth more than debug.
        tracing::debug!(error = %e, "HTTP port connection ended with an error");
    }
}

type HttpResponse = hyper::Response<Full<Bytes>>;

async fn route(state: &State, request: Request<Incoming>) -> HttpResponse {
    if request.method() != Method::GET {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => metrics(&state.registry),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok"),
        "/readyz" => match state.health.reason() {
            None => reply(StatusCode::OK, TEXT, "ready"),
            Some(reason) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {reason}"),
            ),
        },
        path => {
            let answer = match &state.app {
                Some(app) => {
                    let allowed = match &app.token {
                        Some(token) => token.admits(request.headers().get(AUTHORIZATION)),
                        None => state.loopback,
                    };
                    if !allowed {
                        return forbidden(app.token.is_some());
                    }
                    let wants_html = request
                        .headers()
                        .get(ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|accept| accept.contains("text/html"));
                    (app.handler)(AppRequest {
                        path: path.to_owned(),
                        wants_html,
                    })
                    .await
                }
                None => None,
            };
            match answer {
                Some(r) => reply(
                    StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    r.content_type,
                    r.body,
                ),
                None => reply(StatusCode::NOT_FOUND, TEXT, "not found"),
            }
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The answer to an application path without the right to read it.
fn forbidden(token_required: bool) -> HttpResponse {
    if token_required {
        let mut response = reply(
            StatusCode::UNAUTHORIZED,
            TEXT,
            "a bearer token is required: Authorization: Bearer <token of --http-token-file>",
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    } else {
        reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "this path shows payment details: it is served on a loopback address only, \
             unless the process is started with --http-token-file",
        )
    }
}

fn metrics(registry: &prometheus::Registry) -> HttpResponse {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&registry.gather()) {
        Ok(text) => reply(StatusCode::OK, prometheus::TEXT_FORMAT, text),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "cannot encode metrics",
            )
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = hyper::Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    // The handler chooses the content type; a malformed one must not panic the task.
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}
