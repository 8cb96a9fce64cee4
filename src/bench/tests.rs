//! Tests of the bench's readings.

use super::processes::*;
use super::procfs::*;

#[test]
fn a_listening_socket_is_found_by_its_port_only_when_it_listens() {
    // Two rows of /proc/net/tcp: 127.0.0.1:5672 listening (0A), and a connection
    // from port 5672's neighbour 5691 (01, established), as the kernel prints them.
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:163B 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 20 4 30 10 -1
";
    assert_eq!(listening_inodes(table, 5672), vec![41234]);
    assert_eq!(listening_inodes(table, 5691), Vec::<u64>::new());
    assert_eq!(listening_inodes("", 5672), Vec::<u64>::new());
}

#[test]
fn the_process_listening_on_a_port_is_found() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(listener_pid(port), Some(std::process::id()));
    drop(listener);
    assert_eq!(listener_pid(port), None, "nobody listens there any more");
    // This test process is not a RabbitMQ node, so it is no broker either.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert_eq!(
        broker_pid(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")),
        None
    );
    assert_eq!(
        broker_pid("amqp://guest:guest@broker.example:5672/%2f"),
        None
    );
}

#[test]
fn counters_sum_every_series_of_one_name_only() {
    let exposition = "\
# HELP baton_parked_total Payments parked
# TYPE baton_parked_total counter
baton_parked_total{step=\"authorization\"} 3
baton_parked_total{step=\"risk\"} 4
baton_parked_totally_other 100
baton_step_timeouts_total{step=\"risk\"} 7
baton_payments_received_total 12
";
    assert_eq!(counter_sum(exposition, "baton_parked_total"), 7);
    assert_eq!(counter_sum(exposition, "baton_step_timeouts_total"), 7);
    assert_eq!(counter_sum(exposition, "baton_payments_received_total"), 12);
    assert_eq!(counter_sum(exposition, "baton_dead_lettered_total"), 0);
}
