//! `/readyz` follows the broker connection, cut by a proxy: 503 with a reason while the
//! broker is unreachable, ready again once it is back, alive all along.

use crate::app::{spawn_services, Store};
use baton::testcards::TestCard;
use baton_contract::Status;
use baton_services::ServiceKind;
use baton_testkit::{amqp_url, http_get, http_get_ok, Exposition};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use uuid::Uuid;

/// A TCP proxy to the broker that can be cut: every forwarded connection dropped, and
/// new ones accepted and closed at once, until it is restored.
struct CuttableProxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    /// Connections closed on arrival while cut (reconnect attempts).
    refused: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let (open, open_rx) = watch::channel(true);
        let (refused_tx, refused) = watch::channel(0);
        let task = tokio::spawn(async move {
            // Dropped with the task: aborting the proxy drops every forwarded connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                if !*open_rx.borrow() {
                    refused_tx.send_modify(|n| *n += 1);
                    drop(client);
                    continue;
                }
                let mut open = open_rx.clone();
                let upstream = upstream.clone();
                connections.spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Cut: both sockets are closed as this task ends.
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self {
            addr,
            open,
            refused,
            task,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's `host:port` in an AMQP URL.
fn broker_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// Polls `/readyz` until its status is `want` (there is no event across HTTP).
async fn readyz_until(addr: SocketAddr, want: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(addr, "/readyz").await.expect("/readyz answers");
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} ({body}) after {limit:?}, wanted {want}"
        );
        assert_eq!(http_get_ok(addr, "/healthz").await, "ok", "alive meanwhile");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn readyz_turns_503_with_a_reason_while_the_broker_is_unreachable_and_back() {
    let mut app = spawn_services(Store::Sqlite, &ServiceKind::ALL).await;
    let proxy = CuttableProxy::start(broker_authority(&amqp_url())).await;
    let mut settings = app.orchestrator_settings();
    settings.amqp_url = proxy.url_through(&settings.amqp_url);
    app.start_orchestrator(settings).await;
    let http = app.orchestrator().http_addr().expect("an HTTP port");

    assert_eq!(http_get_ok(http, "/readyz").await, "ready");
    assert_eq!(http_get_ok(http, "/healthz").await, "ok");
    let (result, body) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed, "{body}");

    proxy.cut();
    let reason = readyz_until(http, 503, Duration::from_secs(30)).await;
    assert!(
        reason.starts_with("not ready: ") && reason.len() > "not ready: ".len(),
        "503 with a reason: {reason}"
    );
    // It keeps trying, and a failed attempt does not make it ready.
    let mut refused = proxy.refused.clone();
    let before = *refused.borrow_and_update();
    tokio::time::timeout(
        Duration::from_secs(30),
        refused.wait_for(|n| *n >= before + 2),
    )
    .await
    .expect("the orchestrator tries to reconnect")
    .expect("the proxy runs");
    let (status, body) = http_get(http, "/readyz").await.unwrap();
    assert_eq!(
        status, 503,
        "still not ready after failed reconnects: {body}"
    );
    assert_eq!(http_get_ok(http, "/healthz").await, "ok");

    // A request published meanwhile waits in the queue.
    let waiting = Uuid::new_v4();
    let request = serde_json::to_vec(&TestCard::Good.request_with_id(waiting)).unwrap();
    app.send(&request, &waiting.to_string()).await;

    proxy.restore();
    assert_eq!(
        readyz_until(http, 200, Duration::from_secs(30)).await,
        "ready"
    );
    assert_eq!(http_get_ok(http, "/healthz").await, "ok");
    let received = app.result_for(&waiting.to_string()).await;
    let result = received.result.expect("a well-formed result");
    assert_eq!(
        (result.payment_id, result.status),
        (waiting, Status::Completed)
    );
    let (result, body) = app.pay(TestCard::Good).await;
    assert_eq!(result.status, Status::Completed, "{body}");

    let metrics = Exposition::parse(&http_get_ok(http, "/metrics").await);
    assert!(metrics.value("baton_broker_reconnects_total", &[]) >= 1.0);
    app.cleanup().await;
    drop(proxy);
}
