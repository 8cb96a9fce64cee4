//! The HTTP port of an in-process service: `/metrics` counts its own commands (and
//! duplicates), `/readyz` says whether it consumes.

use crate::helpers::{command, Client, Scratch};
use baton_contract::ReplyOutcome;
use baton_services::{start, ServiceConfig, ServiceKind};
use baton_testkit::{http_get, Exposition};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_commands_and_duplicates() {
    let scratch = Scratch::new();
    let config = ServiceConfig {
        http_addr: Some("127.0.0.1:0".into()),
        ..scratch.config()
    };
    let service = start(ServiceKind::Authorization, config).await.unwrap();
    let addr = service.http_addr().expect("an HTTP port");
    assert_ne!(addr.port(), 0, "the bound port, not the requested 0");
    let queue = scratch.queue(ServiceKind::Authorization);
    let mut client = Client::connect().await;

    let first = command(ServiceKind::Authorization);
    for sent in [&first, &first, &command(ServiceKind::Authorization)] {
        let reply = client.ask(&queue, sent).await;
        assert_eq!(reply.outcome, ReplyOutcome::Approved, "{reply:?}");
    }

    let (status, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{metrics}");
    let samples = Exposition::parse(&metrics);
    let auth = ("service", "authorization");
    let approved = [("action", "execute"), ("outcome", "approved"), auth];
    let commands = samples.get("baton_service_commands_total", &approved);
    assert_eq!(commands, Some(3.0), "{metrics}");
    let duplicates = samples.get("baton_service_duplicate_commands_total", &[auth]);
    assert_eq!(duplicates, Some(1.0), "{metrics}");
    let handled = samples.get("baton_service_handle_duration_seconds_count", &[auth]);
    assert_eq!(handled, Some(3.0), "{metrics}");
    assert_eq!(samples.get("baton_broker_reconnects_total", &[]), Some(0.0));
    assert!(
        !metrics.contains(&first.payment_id.to_string()),
        "no payment ids in labels"
    );

    assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);

    service.shutdown().await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the HTTP port closes with the service"
    );
    client.clean_up(&scratch.names, &["authorization"]).await;
}

#[tokio::test]
async fn a_taken_http_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let scratch = Scratch::new();
    let config = ServiceConfig {
        http_addr: Some(taken.local_addr().unwrap().to_string()),
        ..scratch.config()
    };
    let error = start(ServiceKind::Risk, config).await.unwrap_err();
    assert!(format!("{error:#}").contains("--http-addr"), "{error:#}");
}
