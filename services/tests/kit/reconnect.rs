//! Connection recovery: the broker closes a service's connection; the service reconnects,
//! declares its queue again and answers the next command.

use crate::helpers::{command, Client, Scratch, DEADLINE};
use baton_contract::ReplyOutcome;
use baton_services::{start, ServiceConfig, ServiceKind};
use std::process::Command;

/// `rabbitmqctl`'s pid of the connection named `name` (the services name their connection
/// uniquely, so exactly one matches).
fn connection_pid(name: &str) -> Option<String> {
    let output = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl must be installed to test connection recovery");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

fn close_connection(name: &str) {
    let pid = connection_pid(name).unwrap_or_else(|| panic!("no connection named {name}"));
    let output = Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "closed by the reconnect test"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reconnects_after_the_broker_closes_its_connection() {
    let scratch = Scratch::new();
    let service = start(ServiceKind::Risk, scratch.config()).await.unwrap();
    let queue = scratch.queue(ServiceKind::Risk);
    let mut client = Client::connect().await;
    let reply = client.ask(&queue, &command(ServiceKind::Risk)).await;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    assert_eq!(service.health().reconnects, 0);
    assert!(service.health().ready);

    let mut health = service.watch_health();
    close_connection(service.connection_name());
    // Readiness drops while it reconnects, then it is back with one reconnect counted.
    tokio::time::timeout(DEADLINE, health.wait_for(|h| !h.ready || h.reconnects > 0))
        .await
        .expect("the service notices the closed connection")
        .unwrap();
    tokio::time::timeout(DEADLINE, health.wait_for(|h| h.ready && h.reconnects == 1))
        .await
        .expect("the service reconnects")
        .unwrap();
    assert!(
        connection_pid(service.connection_name()).is_some(),
        "a new connection, under the same name"
    );

    let reply = client.ask(&queue, &command(ServiceKind::Risk)).await;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");

    service
        .shutdown()
        .await
        .expect("graceful shutdown after a reconnect");
    client.clean_up(&scratch.names, &["risk"]).await;
}

/// `GET path` on the HTTP port: the status code.
async fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
    baton_testkit::http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_not_ready_until_its_queue_can_be_declared_again() {
    // Deleting the queue cancels the consumer; a classic queue of the same name makes
    // every re-declaration fail, so the service stays in its reconnect loop, not ready
    // (and not exited), until the queue can be declared again.
    let scratch = Scratch::new();
    let config = ServiceConfig {
        http_addr: Some("127.0.0.1:0".into()),
        ..scratch.config()
    };
    let service = start(ServiceKind::Pci, config).await.unwrap();
    let addr = service.http_addr().unwrap();
    assert_eq!(status(addr, "/readyz").await, 200);
    let queue = scratch.queue(ServiceKind::Pci);
    let mut client = Client::connect().await;
    let mut health = service.watch_health();

    let blocker = client.connection.create_channel().await.unwrap();
    blocker
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    blocker
        .queue_declare(
            queue.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("the classic queue is declared before the service can reconnect");
    tokio::time::timeout(DEADLINE, health.wait_for(|h| !h.ready))
        .await
        .expect("the service notices the lost consumer")
        .unwrap();
    assert_eq!(
        status(addr, "/readyz").await,
        503,
        "not ready while reconnecting"
    );
    assert_eq!(status(addr, "/healthz").await, 200, "alive all the same");

    blocker
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, health.wait_for(|h| h.ready && h.reconnects == 1))
        .await
        .expect("the service recovers once the queue can be declared")
        .unwrap();
    assert_eq!(status(addr, "/readyz").await, 200);
    let reply = client.ask(&queue, &command(ServiceKind::Pci)).await;
    assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    let metrics = baton_testkit::Exposition::of(service.registry());
    assert_eq!(metrics.get("baton_broker_reconnects_total", &[]), Some(1.0));
    service.shutdown().await.unwrap();
    client.clean_up(&scratch.names, &["pci"]).await;
}
