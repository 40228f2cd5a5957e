//! Raft links, bulk streams and client streams over loopback QUIC.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Fixture, Logs, config, eventually, recv};
use wraft_transport::client::{ClientConfig, ClientConnection};
use wraft_transport::frame;
use wraft_transport::{Identity, Inbound, LinkState, SendOutcome, Transport};

#[tokio::test]
async fn two_nodes_exchange_frames_both_ways_in_order() {
    let f = Fixture::new([1, 2]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let (t2, mut in2) = f.bind(2, &f.node_tls(2));
    for i in 0u32..200 {
        t1.send_msg(2, &("to-2", i)).unwrap();
        t2.send_msg(1, &("to-1", i)).unwrap();
    }
    for i in 0u32..200 {
        let (from, p) = recv(&mut in2.raft, 5).await;
        assert_eq!(from, 1);
        assert_eq!(
            frame::decode_payload::<(String, u32)>(&p).unwrap(),
            ("to-2".into(), i)
        );
        let (from, p) = recv(&mut in1.raft, 5).await;
        assert_eq!(from, 2);
        assert_eq!(
            frame::decode_payload::<(String, u32)>(&p).unwrap(),
            ("to-1".into(), i)
        );
    }
    assert_eq!(t2.stats().raft_msgs_received, 200);
    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test]
async fn three_nodes_deliver_every_message_with_the_sender_id() {
    let f = Fixture::new([1, 2, 3]);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(f.bind(id, &f.node_tls(id)));
    }
    for (i, (t, _)) in nodes.iter().enumerate() {
        let me = i as u64 + 1;
        for to in (1..=3).filter(|&to| to != me) {
            for seq in 0u32..50 {
                t.send_msg(to, &(me, to, seq)).unwrap();
            }
        }
    }
    for (i, (_, inbound)) in nodes.iter_mut().enumerate() {
        let me = i as u64 + 1;
        let mut next = std::collections::BTreeMap::new();
        for _ in 0..100 {
            let (from, p) = recv(&mut inbound.raft, 5).await;
            let (src, dst, seq): (u64, u64, u32) = frame::decode_payload(&p).unwrap();
            assert_eq!((src, dst), (from, me));
            let want = next.entry(from).or_insert(0u32);
            assert_eq!(seq, *want, "per-peer order from node {from}");
            *want += 1;
        }
        assert_eq!(next.values().copied().collect::<Vec<_>>(), vec![50, 50]);
    }
    for (t, _) in nodes {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn link_reconnects_after_peer_restarts_on_same_port_without_replaying_stale_messages() {
    let f = Fixture::new([1, 2]);
    let tls2 = f.node_tls(2);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let (t2, mut in2) = f.bind(2, &tls2);
    let addr2 = t2.local_addr().unwrap();
    t1.send(2, Bytes::from_static(b"before")).unwrap();
    assert_eq!(&recv(&mut in2.raft, 5).await.1[..], b"before");

    t2.shutdown().await;
    drop(in2);
    // Messages sent while node 2 is gone must be discarded, not replayed later.
    eventually(10, "link to node 2 noticed the restart", || {
        t1.peer_stats(2)
            .is_some_and(|s| s.state != LinkState::Connected)
    })
    .await;
    let mut stale = 0;
    for i in 0..20 {
        t1.send(2, Bytes::from(format!("stale-{i}"))).unwrap();
        stale += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(10, "stale messages dropped", || {
        t1.peer_stats(2)
            .is_some_and(|s| s.queued_msgs == 0 && s.dropped_link_down_msgs >= stale)
    })
    .await;

    let (t2b, mut in2b) = f.bind_with(config(2, addr2), &tls2);
    assert_eq!(t2b.local_addr().unwrap(), addr2);
    // Wait for the link to come back (it probes with backoff), then send fresh data.
    let mut got = None;
    for i in 0..500 {
        let _ = t1.send(2, Bytes::from(format!("fresh-{i}")));
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), in2b.raft.recv()).await
        {
            got = Some(m);
            break;
        }
    }
    let (from, first) = got.expect("link never re-established");
    assert_eq!(from, 1);
    assert!(
        first.starts_with(b"fresh-"),
        "first message after restart was {first:?}"
    );
    let s = t1.peer_stats(2).unwrap();
    assert!(s.connects >= 2, "expected a reconnect, stats {s:?}");
    t1.shutdown().await;
    t2b.shutdown().await;
}

#[tokio::test]
async fn send_never_blocks_on_a_dead_peer_and_counts_overflow_drops() {
    let f = Fixture::new([1, 2]);
    let mut cfg = config(1, "127.0.0.1:0".parse().unwrap());
    cfg.peer_queue_msgs_max = 100;
    cfg.connect_timeout_ms = 60_000; // the first connect attempt hangs for the whole test
    let (t1, _in1) = f.bind_with(cfg, &f.node_tls(1));
    // A black hole: a bound UDP socket that never answers.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    f.book.insert(2, hole.local_addr().unwrap());
    let mut overflows = 0;
    for i in 0u32..10_000 {
        // `send` is synchronous: it cannot wait for the network by construction.
        match t1.send_msg(2, &i).unwrap() {
            SendOutcome::Queued => {}
            SendOutcome::QueueOverflowed { dropped_msgs } => {
                assert_eq!(dropped_msgs, 100);
                overflows += 1;
            }
            SendOutcome::DroppedLinkDown => panic!("link should still be connecting"),
        }
    }
    let s = t1.peer_stats(2).unwrap();
    assert_eq!(s.state, LinkState::Connecting);
    assert_eq!(overflows, 99);
    assert_eq!(s.dropped_overflow_msgs, 9_900);
    assert_eq!(s.queued_msgs, 100);
    t1.shutdown().await;
}

#[tokio::test]
async fn slow_peer_backs_up_into_a_bounded_queue_that_drops_and_then_recovers() {
    let f = Fixture::new([1, 2]);
    let mut c1 = config(1, "127.0.0.1:0".parse().unwrap());
    c1.peer_queue_msgs_max = 64;
    let (t1, _in1) = f.bind_with(c1, &f.node_tls(1));
    let mut c2 = config(2, "127.0.0.1:0".parse().unwrap());
    c2.inbound_msgs_max = 4; // node 2's driver is "slow": it does not read at first
    c2.stream_receive_window_bytes = 64 * 1024;
    c2.connection_receive_window_bytes = 64 * 1024;
    let (t2, mut in2) = f.bind_with(c2, &f.node_tls(2));
    t1.send(2, Bytes::from_static(b"up")).unwrap();
    assert_eq!(&recv(&mut in2.raft, 5).await.1[..], b"up");
    let payload = Bytes::from(vec![7u8; 4096]);
    // Keep sending until flow control has backed up into the queue and it overflowed.
    let mut sends = 0u64;
    while t1.peer_stats(2).map_or(0, |s| s.dropped_overflow_msgs) == 0 {
        t1.send(2, payload.clone()).unwrap();
        sends += 1;
        assert!(sends < 1_000_000, "queue never overflowed");
        if sends.is_multiple_of(64) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let s = t1.peer_stats(2).unwrap();
    assert_eq!(
        s.state,
        LinkState::Connected,
        "a slow peer is not a dead peer"
    );
    assert!(s.queued_msgs <= 64);
    // Once node 2 drains, a marker sent now still arrives: the link survived.
    t1.send(2, Bytes::from_static(b"marker")).unwrap();
    let mut seen = 0u64;
    loop {
        let (_, p) = recv(&mut in2.raft, 10).await;
        seen += 1;
        if &p[..] == b"marker" {
            break;
        }
    }
    let s = t1.peer_stats(2).unwrap();
    assert_eq!(
        seen + s.dropped_overflow_msgs + s.dropped_link_down_msgs,
        sends + 1,
        "every message delivered or counted as dropped"
    );
    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test]
async fn raft_frames_keep_flowing_while_a_bulk_stream_saturates_its_connection() {
    let f = Fixture::new([1, 2]);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let (t2, in2) = f.bind(2, &f.node_tls(2));
    let Inbound {
        raft: mut raft2,
        bulk: mut bulk2,
        ..
    } = in2;
    const TOTAL: u64 = 32 << 20;
    let received = Arc::new(AtomicU64::new(0));

    // Receiver: reads the bulk stream slowly (at most 64 KiB per ms), so the
    // bulk connection's flow-control window stays full for the whole transfer.
    let rx_progress = received.clone();
    let bulk_reader = tokio::spawn(async move {
        let mut s = bulk2.recv().await.expect("bulk stream");
        assert_eq!(s.peer, 1, "bulk stream carries the verified peer id");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Some(n) = s.recv.read(&mut buf).await.unwrap() else {
                break;
            };
            rx_progress.fetch_add(n as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        s.send.write_all(b"done").await.unwrap();
        s.send.finish().unwrap();
    });

    let mut bulk = t1.open_bulk(2).await.unwrap();
    assert_eq!(bulk.peer, 2);
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![0xabu8; 1 << 20]);
        for _ in 0..(TOTAL >> 20) {
            bulk.send.write_chunk(chunk.clone()).await.unwrap();
        }
        bulk.send.finish().unwrap();
        let ack = bulk.recv.read_to_end(16).await.unwrap();
        assert_eq!(ack, b"done");
    });

    // Ping-pong raft frames during the transfer; count the pings that were
    // delivered while the bulk transfer was still incomplete.
    let mut delivered_mid_transfer = 0u32;
    let mut ping = 0u32;
    while received.load(Ordering::Relaxed) < TOTAL {
        t1.send_msg(2, &ping).unwrap();
        let (from, p) = recv(&mut raft2, 5).await;
        assert_eq!((from, frame::decode_payload::<u32>(&p).unwrap()), (1, ping));
        if received.load(Ordering::Relaxed) < TOTAL {
            delivered_mid_transfer += 1;
        }
        ping += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bulk_reader.await.unwrap();
    writer.await.unwrap();
    assert!(
        delivered_mid_transfer >= 10,
        "only {delivered_mid_transfer} raft frames were delivered while the bulk stream was busy"
    );
    assert_eq!(received.load(Ordering::Relaxed), TOTAL);
    t1.shutdown().await;
    t2.shutdown().await;
}

#[tokio::test]
async fn client_with_client_certificate_gets_framed_responses_with_its_identity() {
    let (_logs, _guard) = Logs::install();
    let f = Fixture::new([1]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let mut s = in1.clients.recv().await.unwrap();
            let (kind, req): (u8, String) = frame::read_msg(&mut s.recv, 1 << 20)
                .await
                .unwrap()
                .unwrap();
            let who = match &s.identity {
                Identity::Client(n) => n.clone(),
                other => format!("{other}"),
            };
            frame::write_msg(&mut s.send, kind + 1, &format!("{who}:{req}"), 1 << 20)
                .await
                .unwrap();
            s.send.finish().unwrap();
        }
        in1
    });
    let addr = t1.local_addr().unwrap();
    let client = ClientConnection::connect(
        addr,
        Some(1),
        &f.client_tls("app"),
        &ClientConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(client.server(), Some(&Identity::Node(1)));
    let (kind, resp): (u8, String) = client.request(0x40, &"get k".to_string()).await.unwrap();
    assert_eq!((kind, resp.as_str()), (0x41, "app:get k"));
    let (_, resp): (u8, String) = client.request(0x40, &"put k v".to_string()).await.unwrap();
    assert_eq!(resp, "app:put k v");
    // Dialing with the wrong expected node id is refused by the client itself.
    let wrong = ClientConnection::connect(
        addr,
        Some(9),
        &f.client_tls("app"),
        &ClientConfig::default(),
    )
    .await;
    assert!(wrong.is_err(), "server cert names node 1, not 9");
    client.close().await;
    let _in1 = server.await.unwrap();
    t1.shutdown().await;
}

/// A request and its response each end with the stream's FIN in the same packet, and both ends
/// take it: no side answers a finished exchange with STOP_SENDING, which quinn would send in a
/// packet of its own (a wake-up of the other process per request, for nothing).
#[tokio::test]
async fn request_response_exchanges_end_without_stop_sending() {
    const REQUESTS: u32 = 40;
    let f = Fixture::new([1]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let server = tokio::spawn(async move {
        for _ in 0..REQUESTS {
            let mut s = in1.clients.recv().await.unwrap();
            let (kind, req): (u8, u32) = frame::read_msg(&mut s.recv, 1 << 20)
                .await
                .unwrap()
                .unwrap();
            assert!(wraft_transport::client::take_stream_end(&mut s.recv));
            frame::write_msg(&mut s.send, kind + 1, &(req + 1), 1 << 20)
                .await
                .unwrap();
            s.send.finish().unwrap();
        }
        in1
    });
    let client = ClientConnection::connect(
        t1.local_addr().unwrap(),
        Some(1),
        &f.client_tls("app"),
        &ClientConfig::default(),
    )
    .await
    .unwrap();
    for i in 0..REQUESTS {
        let (_, resp): (u8, u32) = client.request(0x40, &i).await.unwrap();
        assert_eq!(resp, i + 1);
    }
    let _in1 = server.await.unwrap();
    // Let anything queued after the last exchange go out before reading the counters.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = client.connection().stats();
    assert_eq!(stats.frame_tx.stop_sending, 0, "client sent STOP_SENDING");
    assert_eq!(stats.frame_rx.stop_sending, 0, "server sent STOP_SENDING");
    client.close().await;
    t1.shutdown().await;
}

/// A peer that crashes (no CONNECTION_CLOSE ever leaves it) and comes back on
/// the same address must be noticed at the first packet, through a QUIC
/// stateless reset the new process can issue for its predecessor's
/// connection ids — not at the idle timeout, which is set far out of reach
/// here.
#[tokio::test]
async fn crashed_peer_restarted_on_same_port_is_detected_by_stateless_reset_not_idle_timeout() {
    let f = Fixture::new([1, 2]);
    let tls2 = f.node_tls(2);
    let mut cfg1 = config(1, "127.0.0.1:0".parse().unwrap());
    cfg1.keep_alive_interval_ms = 500;
    cfg1.idle_timeout_ms = 60_000;
    let (t1, _in1) = f.bind_with(cfg1, &f.node_tls(1));

    // Node 2 lives on its own runtime so it can die like a killed process:
    // shutting that runtime down drops every task unpolled, so nothing (no
    // CONNECTION_CLOSE) is ever sent for its connections.
    let rt2 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (t2, mut in2) = {
        let _enter = rt2.enter();
        let mut cfg2 = config(2, "127.0.0.1:0".parse().unwrap());
        cfg2.idle_timeout_ms = 60_000; // QUIC uses the smaller of both sides' values
        f.bind_with(cfg2, &tls2)
    };
    let addr2 = t2.local_addr().unwrap();
    t1.send(2, Bytes::from_static(b"before")).unwrap();
    assert_eq!(&recv(&mut in2.raft, 5).await.1[..], b"before");
    rt2.shutdown_background();
    drop((t2, in2));

    // The new incarnation binds the same port once the old socket is gone.
    let mut rebound = None;
    for _ in 0..200 {
        let mut cfg = config(2, addr2);
        cfg.idle_timeout_ms = 60_000;
        match Transport::bind(cfg, &tls2, f.membership.clone(), f.book.clone()) {
            Ok(t) => {
                rebound = Some(t);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let (t2b, mut in2b) = rebound.expect("port of the crashed node never became free");

    // Node 1 still believes its connection is up; it must learn otherwise from
    // the first reset and deliver over a fresh connection well before the
    // 60 s idle timeout would have fired.
    let started = tokio::time::Instant::now();
    let mut got = None;
    while started.elapsed() < Duration::from_secs(15) {
        let _ = t1.send(2, Bytes::from_static(b"after"));
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), in2b.raft.recv()).await
        {
            got = Some(m);
            break;
        }
    }
    let (from, msg) = got.expect("restart not detected within 15 s (idle timeout is 60 s)");
    assert_eq!((from, &msg[..]), (1, &b"after"[..]));
    assert!(t1.peer_stats(2).unwrap().connects >= 2);
    t1.shutdown().await;
    t2b.shutdown().await;
}

#[tokio::test]
async fn a_closed_bulk_connection_ends_its_streams_and_the_next_stream_dials_afresh() {
    let f = Fixture::new([1, 2]);
    let (t1, _in1) = f.bind(1, &f.node_tls(1));
    let (t2, in2) = f.bind(2, &f.node_tls(2));
    let mut bulk2 = in2.bulk;
    let mut old = t1.open_bulk(2).await.unwrap();
    old.send.write_all(b"first").await.unwrap();
    let mut accepted = bulk2.recv().await.expect("a bulk stream");
    let mut buf = [0u8; 5];
    accepted.recv.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"first");

    // What the leader does when a follower falls silent: the connection goes, and with it
    // the stream on it.
    t1.close_bulk(2);
    let e = tokio::time::timeout(Duration::from_secs(5), accepted.recv.read_to_end(16))
        .await
        .expect("the stream ends when its connection is closed")
        .unwrap_err();
    assert!(
        matches!(
            &e,
            wraft_transport::quinn::ReadToEndError::Read(wraft_transport::quinn::ReadError::ConnectionLost(
                wraft_transport::quinn::ConnectionError::ApplicationClosed(c)
            )) if c.error_code == wraft_transport::quinn::VarInt::from_u32(wraft_transport::CODE_LINK_CLOSED)
        ),
        "{e:?}"
    );
    assert!(old.send.write_all(b"more").await.is_err());
    t1.close_bulk(2); // nothing open: a no-op

    let mut new = t1.open_bulk(2).await.unwrap();
    new.send.write_all(b"second").await.unwrap();
    new.send.finish().unwrap();
    let mut s = bulk2
        .recv()
        .await
        .expect("a bulk stream on a new connection");
    assert_eq!(s.recv.read_to_end(16).await.unwrap(), b"second");
    t1.shutdown().await;
    t2.shutdown().await;
}
