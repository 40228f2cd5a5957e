//! Peers the transport must refuse, and streams it must close, each with the
//! reason in the log and in the counters — while it keeps serving others.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Fixture, Logs, eventually, raw_dial, recv};
use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
use wraft_transport::frame::{self, FRAME_HEADER_BYTES};
use wraft_transport::quinn::{self, VarInt};
use wraft_transport::tls::Alpn;
use wraft_transport::{CODE_BAD_FRAME, CODE_REFUSED};

/// A node-2 certificate signed by a *different* CA, presented by a party that
/// trusts the real cluster CA (so the server, not the dialer, must refuse).
fn foreign_ca_node_tls(f: &Fixture, id: u64) -> TlsIdentity {
    let other = ClusterCa::generate("test", Validity::days_from_now(1)).unwrap();
    let issued = other
        .issue_node(id, &[], Validity::days_from_now(1))
        .unwrap();
    let mut tls = TlsIdentity::from_issued(other.cert_pem(), &issued).unwrap();
    tls.cas = TlsIdentity::from_issued(
        f.ca.cert_pem(),
        &f.ca
            .issue_node(99, &[], Validity::days_from_now(1))
            .unwrap(),
    )
    .unwrap()
    .cas;
    tls
}

async fn assert_refused_close(conn: &quinn::Connection, needle: &str) {
    let err = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("connection not closed");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, VarInt::from_u32(CODE_REFUSED));
            let reason = String::from_utf8_lossy(&c.reason);
            assert!(
                reason.contains(needle),
                "close reason {reason:?} lacks {needle:?}"
            );
        }
        other => panic!("expected an application close with a reason, got {other}"),
    }
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_and_logged() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1, 2]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let (_ep, conn) = raw_dial(
        &foreign_ca_node_tls(&f, 2),
        Alpn::Raft,
        t1.local_addr().unwrap(),
        1,
    )
    .await;
    if let Ok(conn) = conn {
        // TLS 1.3: the client may finish before the server has judged its certificate.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
    eventually(5, "refusal counted", || t1.stats().refusals.unknown_ca == 1).await;
    assert!(
        logs.contains("not signed by this cluster's CA"),
        "log:\n{}",
        logs.text()
    );
    assert!(in1.raft.try_recv().is_err());
    t1.shutdown().await;
}

#[tokio::test]
async fn dialer_refuses_a_server_whose_certificate_is_from_another_ca() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1, 2]);
    let other = Fixture::new([1, 2]);
    // Node 2's address book points at an impostor serving a foreign-CA cert for node 2.
    let (impostor, _in) = other.bind(2, &other.node_tls(2));
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    f.book.insert(2, impostor.local_addr().unwrap());
    t1.send(2, Bytes::from_static(b"secret")).unwrap();
    eventually(5, "dialer refusal counted", || {
        t1.stats().refusals.unknown_ca >= 1
    })
    .await;
    assert!(
        logs.contains("refused server certificate while dialing"),
        "log:\n{}",
        logs.text()
    );
    assert_eq!(impostor.stats().raft_msgs_received, 0);
    t1.shutdown().await;
    impostor.shutdown().await;
}

#[tokio::test]
async fn expired_certificate_is_refused_and_logged() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1, 2]);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let (_ep, conn) = raw_dial(
        &f.expired_node_tls(2),
        Alpn::Raft,
        t1.local_addr().unwrap(),
        1,
    )
    .await;
    if let Ok(conn) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
    eventually(5, "refusal counted", || t1.stats().refusals.expired == 1).await;
    assert!(
        logs.contains("certificate has expired"),
        "log:\n{}",
        logs.text()
    );
    t1.shutdown().await;
}

#[tokio::test]
async fn certificate_naming_a_non_member_is_refused_until_it_joins_and_after_it_leaves() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1, 2]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let (t3, _in3) = f.bind(3, &f.node_tls(3));
    t3.send(1, Bytes::from_static(b"let me in")).unwrap();
    eventually(5, "refusal counted", || {
        t1.stats().refusals.not_a_member >= 1
    })
    .await;
    assert!(
        logs.contains("certificate names node 3, which is not a member of this cluster"),
        "log:\n{}",
        logs.text()
    );
    assert!(in1.raft.try_recv().is_err());
    // Membership is read on every handshake: once node 3 is added, its link comes up.
    f.membership.insert(3);
    let mut delivered = false;
    for _ in 0..300 {
        let _ = t3.send(1, Bytes::from_static(b"joined"));
        if let Ok(Some((from, p))) =
            tokio::time::timeout(Duration::from_millis(20), in1.raft.recv()).await
        {
            assert_eq!((from, &p[..]), (3, &b"joined"[..]));
            delivered = true;
            break;
        }
    }
    assert!(delivered, "node 3 never got through after joining");
    // Removed again: its established link is cut at its next message.
    f.membership.remove(3);
    t3.send(1, Bytes::from_static(b"after removal")).unwrap();
    eventually(5, "removed member refused", || {
        t1.stats().refusals.not_a_member >= 2
    })
    .await;
    while let Ok((from, p)) = in1.raft.try_recv() {
        assert_ne!((from, &p[..]), (3, &b"after removal"[..]));
    }
    t1.shutdown().await;
    t3.shutdown().await;
}

#[tokio::test]
async fn client_certificate_on_the_raft_alpn_is_refused() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1]);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let (_ep, conn) = raw_dial(
        &f.client_tls("app"),
        Alpn::Raft,
        t1.local_addr().unwrap(),
        1,
    )
    .await;
    let conn = conn.expect("handshake itself succeeds; the ALPN rule is applied right after");
    assert_refused_close(&conn, "wraft-raft/1").await;
    assert_eq!(t1.stats().refusals.wrong_alpn, 1);
    assert!(
        logs.contains("client certificate \"app\" presented on ALPN wraft-raft/1"),
        "log:\n{}",
        logs.text()
    );
    // ...and on the bulk ALPN too.
    let (_ep2, conn) = raw_dial(
        &f.client_tls("app"),
        Alpn::Bulk,
        t1.local_addr().unwrap(),
        1,
    )
    .await;
    assert_refused_close(&conn.unwrap(), "wraft-bulk/1").await;
    t1.shutdown().await;
}

#[tokio::test]
async fn node_claiming_an_id_other_than_its_certificate_is_refused() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1, 2, 7]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let (_ep, conn) = raw_dial(&f.node_tls(2), Alpn::Raft, t1.local_addr().unwrap(), 1).await;
    let conn = conn.unwrap();
    let mut s = conn.open_uni().await.unwrap();
    #[derive(serde::Serialize)]
    struct Hello {
        from: u64,
        to: u64,
    }
    frame::write_msg(&mut s, 0x01, &Hello { from: 7, to: 1 }, 1024)
        .await
        .unwrap();
    frame::write_frame(&mut s, 0x02, b"forged", 1024)
        .await
        .unwrap();
    assert_refused_close(
        &conn,
        "claims to be node 7 but its certificate names node 2",
    )
    .await;
    assert_eq!(t1.stats().refusals.id_mismatch, 1);
    assert!(
        logs.contains("claims to be node 7"),
        "log:\n{}",
        logs.text()
    );
    assert!(
        in1.raft.try_recv().is_err(),
        "a forged message was delivered"
    );
    t1.shutdown().await;
}

/// Open a raft stream as node 2, say hello, then write `junk`; return how the
/// server stopped the stream.
async fn stream_with_junk(conn: &quinn::Connection, junk: &[u8]) -> Option<VarInt> {
    let mut s = conn.open_uni().await.unwrap();
    #[derive(serde::Serialize)]
    struct Hello {
        from: u64,
        to: u64,
    }
    frame::write_msg(&mut s, 0x01, &Hello { from: 2, to: 1 }, 1024)
        .await
        .unwrap();
    frame::write_frame(&mut s, 0x02, b"valid before junk", 1024)
        .await
        .unwrap();
    let _ = s.write_all(junk).await;
    tokio::time::timeout(Duration::from_secs(5), s.stopped())
        .await
        .expect("stream was not stopped")
        .ok()
        .flatten()
}

#[tokio::test]
async fn garbage_oversized_and_corrupt_frames_close_only_their_stream() {
    let (logs, _g) = Logs::install();
    let f = Fixture::new([1, 2, 3]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let (t3, _in3) = f.bind(3, &f.node_tls(3));
    let (_ep, conn) = raw_dial(&f.node_tls(2), Alpn::Raft, t1.local_addr().unwrap(), 1).await;
    let conn = conn.unwrap();

    let garbage = b"\x00\xffGET / HTTP/1.1\r\n\r\n".to_vec();
    let mut oversized = frame::encode_frame(0x02, &[0u8; 64], u32::MAX).unwrap();
    oversized[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes()); // declares 1 GiB
    let mut corrupt = frame::encode_frame(0x02, b"flip me", 1024).unwrap();
    corrupt[FRAME_HEADER_BYTES + 2] ^= 0x20;

    for (i, (junk, reason)) in [
        (garbage, "bad frame magic"),
        (oversized, "exceeds max_frame_bytes"),
        (corrupt, "checksum mismatch"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            stream_with_junk(&conn, &junk).await,
            Some(VarInt::from_u32(CODE_BAD_FRAME))
        );
        // The valid frame written before the junk was delivered...
        let (from, p) = recv(&mut in1.raft, 5).await;
        assert_eq!((from, &p[..]), (2, &b"valid before junk"[..]));
        assert_eq!(t1.stats().bad_frames, i as u64 + 1);
        assert!(
            logs.contains(reason),
            "log lacks {reason:?}:\n{}",
            logs.text()
        );
        // ...and another peer's link is unaffected.
        t3.send(1, Bytes::from(format!("still here {i}"))).unwrap();
        let (from, p) = recv(&mut in1.raft, 5).await;
        assert_eq!((from, p), (3, Bytes::from(format!("still here {i}"))));
    }
    // The misbehaving peer's connection itself survives; only streams were closed.
    assert!(conn.close_reason().is_none());
    t1.shutdown().await;
    t3.shutdown().await;
}

#[tokio::test]
async fn udp_garbage_at_the_node_port_does_not_disturb_its_links() {
    let f = Fixture::new([1, 2]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let (t2, _in2) = f.bind(2, &f.node_tls(2));
    t2.send(1, Bytes::from_static(b"before")).unwrap();
    assert_eq!(&recv(&mut in1.raft, 5).await.1[..], b"before");
    let seed = 0x6a7b_u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = t1.local_addr().unwrap();
    for i in 0..2000 {
        let mut datagram: Vec<u8> = (0..rng.usize(1..1400)).map(|_| rng.u8(..)).collect();
        if i % 2 == 0 {
            // Half of them look like QUIC long-header (Initial) packets, version 1.
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
            if datagram.len() > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        let _ = sock.send_to(&datagram, addr);
    }
    for i in 0..10u32 {
        t2.send_msg(1, &i).unwrap();
        let (from, p) = recv(&mut in1.raft, 5).await;
        assert_eq!(
            (from, frame::decode_payload::<u32>(&p).unwrap()),
            (2, i),
            "seed {seed:#x}"
        );
    }
    t1.shutdown().await;
    t2.shutdown().await;
}
