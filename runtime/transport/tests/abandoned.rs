//! A handshake the client gives up on is not a refusal: the node counts it and logs it at
//! debug, so an operator's WARN lines are the ones worth acting on. And a client that cannot
//! reach an address says which address, not "node 0".

mod common;

use std::net::SocketAddr;

use common::{Fixture, Logs, eventually};
use tokio::net::UdpSocket;
use wraft_transport::client::{ClientConfig, ClientConnection};

/// A one-way relay to `to`: what the client sends reaches the node, the node's answers are
/// dropped, so the node is mid-handshake when the client gives up. Returns its address.
async fn one_way_relay(to: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
    let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = front.local_addr().expect("relay address");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = front.recv_from(&mut buf).await {
            let _ = back.send_to(&buf[..n], to).await;
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_client_that_abandons_its_handshake_is_counted_not_warned_about() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1]);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let (relay, relay_task) = one_way_relay(t1.local_addr().expect("node address")).await;

    let cfg = ClientConfig {
        connect_timeout_ms: 300,
        ..ClientConfig::default()
    };
    let err = ClientConnection::connect(relay, None, &f.client_tls("app"), &cfg)
        .await
        .expect_err("the node's answers never arrive");
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!("cannot reach {relay}: handshake timed out after 300 ms")
    );

    eventually(5, "the abandoned handshake counted", || {
        t1.stats().handshakes_abandoned == 1
    })
    .await;
    let text = logs.text();
    // The client said it was leaving (it did not just go silent).
    assert!(
        text.contains("incoming handshake abandoned by the peer")
            && text.contains("aborted by peer"),
        "log:\n{text}"
    );
    assert!(!text.contains(" WARN "), "a WARN line:\n{text}");
    assert_eq!(t1.stats().refusals.total(), 0);
    relay_task.abort();
    t1.shutdown().await;
}
