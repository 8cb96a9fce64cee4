//! The HTTP port, started for real on 127.0.0.1:0 and spoken to over raw TCP, so the
//! tests see exactly what Prometheus, a container probe or curl would.

use std::net::SocketAddr;
use std::time::Duration;

use baton_ops::{handler, AppRoutes, BearerToken, Health, HttpServer, OpsError, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A parsed HTTP/1.1 answer.
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request with `Connection: close` and reads the answer to the end.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    request_with(addr, method, path, "").await
}

/// [`request`] with `extra` header lines (each ending in `\r\n`).
async fn request_with(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line").to_owned();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Answer {
        status_line,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

/// A server on a free port with the given handler; it stops when the returned sender
/// fires or is dropped.
struct App {
    server: HttpServer,
    registry: prometheus::Registry,
    health: Health,
    _shutdown: oneshot::Sender<()>,
}

async fn spawn_app(handler: Option<baton_ops::Handler>) -> App {
    spawn_app_on("127.0.0.1:0", handler.map(AppRoutes::new)).await
}

async fn spawn_app_on(addr: &str, app: Option<AppRoutes>) -> App {
    let registry = prometheus::Registry::new();
    let health = Health::default();
    let (tx, rx) = oneshot::channel::<()>();
    let server = HttpServer::start(addr, registry.clone(), health.clone(), app, async move {
        let _ = rx.await;
    })
    .await
    .expect("start on a free port");
    App {
        server,
        registry,
        health,
        _shutdown: tx,
    }
}

#[tokio::test]
async fn metrics_show_the_application_registry() {
    let app = spawn_app(None).await;
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new("payments_received_total", "Payments received").namespace("baton"),
        &["kind"],
    )
    .expect("counter");
    app.registry
        .register(Box::new(counter.clone()))
        .expect("register");
    counter.with_label_values(&["card"]).inc_by(3);

    let answer = get(app.server.local_addr(), "/metrics").await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        answer
            .body
            .contains("# TYPE baton_payments_received_total counter"),
        "{}",
        answer.body
    );
    assert!(
        answer
            .body
            .contains("baton_payments_received_total{kind=\"card\"} 3\n"),
        "{}",
        answer.body
    );

    // Scraped again, the registry's current value shows: nothing is cached.
    counter.with_label_values(&["card"]).inc();
    let answer = get(app.server.local_addr(), "/metrics").await;
    assert!(answer
        .body
        .contains("baton_payments_received_total{kind=\"card\"} 4\n"));
}

#[tokio::test]
async fn healthz_is_ok_even_when_not_ready() {
    let app = spawn_app(None).await;
    let answer = get(app.server.local_addr(), "/healthz").await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_eq!(answer.body, "ok");
}

#[tokio::test]
async fn readyz_follows_health() {
    let app = spawn_app(None).await;
    let addr = app.server.local_addr();

    let answer = get(addr, "/readyz").await;
    assert_eq!(answer.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(answer.body, "not ready: starting");

    app.health.set_ready();
    let answer = get(addr, "/readyz").await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_eq!(answer.body, "ready");

    app.health.set_not_ready("broker disconnected");
    let answer = get(addr, "/readyz").await;
    assert_eq!(answer.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(answer.body, "not ready: broker disconnected");
}

#[tokio::test]
async fn other_paths_go_to_the_application_handler() {
    let payments = handler(|path: String| async move {
        match path.strip_prefix("/payments/") {
            Some("p-1") => Some(Response::json(
                200,
                br#"{"id":"p-1","status":"completed"}"#.to_vec(),
            )),
            Some(_) => Some(Response::json(
                404,
                br#"{"error":"unknown payment"}"#.to_vec(),
            )),
            None => None,
        }
    });
    let app = spawn_app(Some(payments)).await;
    let addr = app.server.local_addr();

    let answer = get(addr, "/payments/p-1").await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.body, r#"{"id":"p-1","status":"completed"}"#);

    let answer = get(addr, "/payments/p-2").await;
    assert_eq!(answer.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(answer.body, r#"{"error":"unknown payment"}"#);

    // The handler declines: 404 from the port itself.
    let answer = get(addr, "/elsewhere").await;
    assert_eq!(answer.status_line, "HTTP/1.1 404 Not Found");

    // Built-in paths are not handed to the application.
    let answer = get(addr, "/healthz").await;
    assert_eq!(answer.body, "ok");
}

#[tokio::test]
async fn unknown_path_without_handler_is_404() {
    let app = spawn_app(None).await;
    let answer = get(app.server.local_addr(), "/payments/p-1").await;
    assert_eq!(answer.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(answer.body, "not found");
}

#[tokio::test]
async fn only_get_is_allowed() {
    let app = spawn_app(None).await;
    for (method, path) in [
        ("POST", "/metrics"),
        ("PUT", "/payments/p-1"),
        ("DELETE", "/readyz"),
    ] {
        let answer = request(app.server.local_addr(), method, path).await;
        assert_eq!(
            answer.status_line, "HTTP/1.1 405 Method Not Allowed",
            "{method} {path}"
        );
        assert_eq!(answer.header("allow"), Some("GET"));
    }
}

#[tokio::test]
async fn a_taken_port_gives_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();

    let err = HttpServer::start(
        &addr,
        prometheus::Registry::new(),
        Health::default(),
        None,
        std::future::pending(),
    )
    .await
    .expect_err("port is taken");

    assert!(matches!(err, OpsError::Bind { .. }));
    assert!(err.is_addr_in_use());
    // The OS's own wording is not repeated as a cause (`{:#}` printed it twice).
    assert!(std::error::Error::source(&err).is_none());
    assert_eq!(
        err.to_string(),
        format!(
            "cannot listen on {addr}: address in use; choose another with --http-addr / BATON_HTTP_ADDR"
        )
    );
}

#[tokio::test]
async fn the_shutdown_future_stops_the_server() {
    let (tx, rx) = oneshot::channel::<()>();
    let server = HttpServer::start(
        "127.0.0.1:0",
        prometheus::Registry::new(),
        Health::default(),
        None,
        async move {
            let _ = rx.await;
        },
    )
    .await
    .expect("start");
    let addr = server.local_addr();
    assert_eq!(get(addr, "/healthz").await.body, "ok");

    tx.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("stops promptly");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn stop_ends_the_server() {
    let app = spawn_app(None).await;
    let addr = app.server.local_addr();
    tokio::time::timeout(Duration::from_secs(10), app.server.stop())
        .await
        .expect("stops promptly");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn dropping_the_handle_does_not_stop_the_server() {
    let app = spawn_app(None).await;
    let addr = app.server.local_addr();
    drop(app.server);
    // Give the accept loop time to notice, were it (wrongly) to stop on a dropped handle.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(addr, "/healthz").await.body, "ok");
}

#[tokio::test]
async fn stop_closes_idle_keep_alive_connections_without_waiting_for_the_drain_timeout() {
    let app = spawn_app(None).await;
    let mut idle = TcpStream::connect(app.server.local_addr())
        .await
        .expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));

    // The connection is kept alive and idle; stop must close it, not wait it out.
    tokio::time::timeout(baton_ops::DRAIN_TIMEOUT / 2, app.server.stop())
        .await
        .expect("idle connections are closed at once");
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest).await;
}

fn payments_handler() -> baton_ops::Handler {
    handler(|path: String| async move {
        path.strip_prefix("/payments/")
            .map(|_| Response::json(200, br#"{"customer":"c-42"}"#.to_vec()))
    })
}

/// A directory of the test's own holding `token` in its file `token`; removed on drop.
fn token_file(token: &str) -> baton_testkit::ScratchDir {
    let dir = baton_testkit::ScratchDir::new("ops-token");
    dir.file("token", token);
    dir
}

#[tokio::test]
async fn with_a_token_application_paths_need_it_and_probes_do_not() {
    let file = token_file("  0123456789abcdef0123456789abcdef\n");
    let token = BearerToken::from_file(&file.join("token")).expect("a good token file");
    assert_eq!(format!("{token:?}"), "BearerToken(***)", "never printed");
    let app = spawn_app_on(
        "127.0.0.1:0",
        Some(AppRoutes::new(payments_handler()).with_token(Some(token))),
    )
    .await;
    let addr = app.server.local_addr();

    let answer = get(addr, "/payments/p-1").await;
    assert_eq!(answer.status_line, "HTTP/1.1 401 Unauthorized");
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    assert!(!answer.body.contains("c-42"));
    for wrong in [
        "Authorization: Bearer 0123456789abcdef0123456789abcdeX\r\n",
        "Authorization: Bearer 0123456789abcdef\r\n",
        "Authorization: Basic 0123456789abcdef0123456789abcdef\r\n",
    ] {
        let answer = request_with(addr, "GET", "/payments/p-1", wrong).await;
        assert_eq!(answer.status_line, "HTTP/1.1 401 Unauthorized", "{wrong}");
    }
    let answer = request_with(
        addr,
        "GET",
        "/payments/p-1",
        "Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n",
    )
    .await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert!(answer.body.contains("c-42"));
    for open in ["/metrics", "/healthz", "/readyz"] {
        let answer = get(addr, open).await;
        assert!(
            !answer.status_line.contains("401"),
            "{open}: {}",
            answer.status_line
        );
    }
}

#[tokio::test]
async fn without_a_token_application_paths_are_served_on_loopback_only() {
    // Loopback: open, as before.
    let local = spawn_app_on("127.0.0.1:0", Some(AppRoutes::new(payments_handler()))).await;
    let answer = get(local.server.local_addr(), "/payments/p-1").await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");

    // Every interface: refused, probes still answered.
    let wide = spawn_app_on("0.0.0.0:0", Some(AppRoutes::new(payments_handler()))).await;
    let port = wide.server.local_addr().port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let answer = get(addr, "/payments/p-1").await;
    assert_eq!(answer.status_line, "HTTP/1.1 403 Forbidden");
    assert!(answer.body.contains("--http-token-file"), "{}", answer.body);
    assert!(!answer.body.contains("c-42"));
    assert_eq!(get(addr, "/healthz").await.body, "ok");
}

#[test]
fn short_or_missing_token_files_are_refused_with_the_reason() {
    let short = token_file("tooshort");
    let e = BearerToken::from_file(&short.join("token")).unwrap_err();
    assert!(e.to_string().contains("at least 16"), "{e}");
    let e = BearerToken::from_file(std::path::Path::new("/nonexistent/baton-token")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("--http-token-file /nonexistent/baton-token"),
        "{e}"
    );
}
