//! The client half of a multiplexed stream, against hand-written servers: one that speaks it
//! (answers matched to callers by id whatever their order, a caller that gives up, a stream
//! that breaks under waiting callers) and one that does not (the client goes on with a stream
//! per request).

mod common;

use std::time::Duration;

use common::{Fixture, eventually};
use wraft_transport::client::{ClientConfig, ClientConnection};
use wraft_transport::frame;
use wraft_transport::mux::{self, FrameBuffer, KIND_MUX, KIND_MUX_OPEN, KIND_MUX_OPENED};
use wraft_transport::{ClientStream, Inbound, Transport};

const MAX: u32 = 1 << 20;

fn multiplexing() -> ClientConfig {
    ClientConfig {
        multiplex: true,
        ..ClientConfig::default()
    }
}

/// Accept the client's multiplexed stream: read its opening, acknowledge it.
async fn accept_mux(inbound: &mut Inbound) -> ClientStream {
    let mut s = inbound.clients.recv().await.expect("a client stream");
    let f = frame::read_frame(&mut s.recv, MAX)
        .await
        .expect("frame")
        .expect("not the end");
    assert_eq!((f.kind, f.payload.as_slice()), (KIND_MUX_OPEN, &[1u8][..]));
    frame::write_frame(&mut s.send, KIND_MUX_OPENED, &[1], MAX)
        .await
        .expect("ack");
    s
}

/// A multiplexing client connected to `t1`, with a client certificate from `f`.
async fn dial(f: &Fixture, t1: &Transport) -> ClientConnection {
    ClientConnection::connect(
        t1.local_addr().unwrap(),
        Some(1),
        &f.client_tls("app"),
        &multiplexing(),
    )
    .await
    .expect("connect")
}

/// A client connected to node 1 of `f`, its multiplexed stream accepted by the test.
async fn connected(f: &Fixture) -> (Transport, Inbound, ClientConnection, ClientStream) {
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let client = dial(f, &t1).await;
    let s = accept_mux(&mut in1).await;
    eventually(5, "the stream accepted", || client.multiplexed()).await;
    (t1, in1, client, s)
}

/// Read tagged requests off `s` until `n` have arrived: `(id, kind, u32 body)`.
async fn read_requests(
    s: &mut ClientStream,
    buf: &mut FrameBuffer,
    n: usize,
) -> Vec<(u64, u8, u32)> {
    let mut got = Vec::new();
    while got.len() < n {
        while let Some((kind, payload)) = buf.next_frame(MAX).expect("good frame") {
            assert_eq!(kind, KIND_MUX);
            let (id, inner, body) = mux::decode_tagged(&payload).expect("tag");
            got.push((id, inner, frame::decode_payload::<u32>(body).expect("u32")));
        }
        if got.len() >= n {
            break;
        }
        let chunk = s
            .recv
            .read_chunk(usize::MAX, true)
            .await
            .expect("read")
            .expect("not the end");
        buf.extend(&chunk.bytes);
    }
    got
}

/// Answers written in the reverse of the requests' order reach the callers that asked, each
/// its own; all of it on the one stream.
#[tokio::test]
async fn answers_in_any_order_reach_the_callers_that_asked() {
    const CALLS: u32 = 50;
    let f = Fixture::new([1]);
    let (t1, mut in1, client, mut s) = connected(&f).await;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.request::<u32, u32>(0x40, &i).await })
        })
        .collect();
    let mut buf = FrameBuffer::new();
    let mut asked = read_requests(&mut s, &mut buf, CALLS as usize).await;
    asked.reverse();
    let mut out = Vec::new();
    for (id, kind, body) in asked {
        assert_eq!(kind, 0x40);
        mux::encode_tagged_into(&mut out, id, 0x41, &(body * 10), MAX).expect("encode");
    }
    s.send.write_all(&out).await.expect("answers");
    for (i, call) in calls.into_iter().enumerate() {
        let (kind, answer) = call.await.expect("join").expect("answered");
        assert_eq!((kind, answer), (0x41, i as u32 * 10));
    }
    // No stream but the multiplexed one was opened.
    assert!(in1.clients.try_recv().is_err());
    client.close().await;
    t1.shutdown().await;
}

/// A caller that gives up before its answer comes is forgotten: its late answer is dropped,
/// and the stream goes on serving the others.
#[tokio::test]
async fn a_caller_that_gives_up_is_forgotten_and_the_others_are_answered() {
    let f = Fixture::new([1]);
    let (t1, _in1, client, mut s) = connected(&f).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        client.request::<u32, u32>(0x40, &1),
    )
    .await;
    assert!(gave_up.is_err(), "nothing answered it");
    let mut buf = FrameBuffer::new();
    let first = read_requests(&mut s, &mut buf, 1).await;
    assert_eq!(first[0].2, 1);
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.request::<u32, u32>(0x40, &3).await })
    };
    let next = read_requests(&mut s, &mut buf, 1).await;
    assert_eq!(next[0].2, 3);
    let mut out = Vec::new();
    // The late answer to the caller that gave up, then the waiting caller's.
    mux::encode_tagged_into(&mut out, first[0].0, 0x41, &100u32, MAX).unwrap();
    mux::encode_tagged_into(&mut out, next[0].0, 0x41, &300u32, MAX).unwrap();
    s.send.write_all(&out).await.unwrap();
    let (_, answer) = waiting.await.unwrap().expect("answered");
    assert_eq!(answer, 300);
    assert!(
        client.multiplexed(),
        "a late answer does not break the stream"
    );
    client.close().await;
    t1.shutdown().await;
}

/// When the server breaks the stream, every caller waiting on it gets an error at once (not
/// its timeout), and the next requests go a stream each.
#[tokio::test]
async fn a_broken_stream_fails_its_waiting_callers_and_requests_go_a_stream_each() {
    let f = Fixture::new([1]);
    let (t1, mut in1, client, mut s) = connected(&f).await;
    let calls: Vec<_> = (0..5u32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.request::<u32, u32>(0x40, &i).await })
        })
        .collect();
    read_requests(&mut s, &mut FrameBuffer::new(), 5).await;
    // Garbage where a tagged answer should be.
    s.send.write_all(b"not a frame at all").await.unwrap();
    for call in calls {
        let err = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("failed at once")
            .expect("join")
            .expect_err("no answer");
        assert!(err.to_string().contains("multiplexed"), "{err}");
    }
    assert!(!client.multiplexed());
    // The client resets its half at once, so the server frees the stream now, not when the
    // connection goes.
    let reset = tokio::time::timeout(Duration::from_secs(5), s.recv.read_chunk(usize::MAX, true))
        .await
        .expect("the client's half ends at once");
    assert!(
        matches!(reset, Err(wraft_transport::quinn::ReadError::Reset(_))),
        "{reset:?}"
    );
    let asked = tokio::spawn({
        let client = client.clone();
        async move { client.request::<u32, u32>(0x40, &7).await }
    });
    let mut one = in1.clients.recv().await.expect("a stream of its own");
    let (kind, req): (u8, u32) = frame::read_msg(&mut one.recv, MAX).await.unwrap().unwrap();
    assert_eq!((kind, req), (0x40, 7));
    frame::write_msg(&mut one.send, 0x41, &8u32, MAX)
        .await
        .unwrap();
    one.send.finish().unwrap();
    assert_eq!(asked.await.unwrap().expect("answered").1, 8);
    client.close().await;
    t1.shutdown().await;
}

/// A server that does not multiplex (every wraft node before it did) reads the opening as an
/// unknown request and ends the stream: the client asks nothing more of it and every request
/// takes a stream of its own, from the first.
#[tokio::test]
async fn against_a_server_that_does_not_multiplex_requests_go_a_stream_each() {
    let f = Fixture::new([1]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let server = tokio::spawn(async move {
        let mut served = 0;
        let mut refused = 0;
        while served < 3 {
            let mut s = in1.clients.recv().await.expect("stream");
            let f = frame::read_frame(&mut s.recv, MAX).await.unwrap().unwrap();
            if f.kind != 0x40 {
                // What an old node does with the opening: its payload does not decode as a
                // request, so it stops the stream as a bad frame and drops its sending half.
                let _ = s.recv.stop(wraft_transport::CODE_BAD_FRAME.into());
                refused += 1;
                continue;
            }
            let req: u32 = f.decode().unwrap();
            frame::write_msg(&mut s.send, 0x41, &(req + 1), MAX)
                .await
                .unwrap();
            s.send.finish().unwrap();
            served += 1;
        }
        (in1, refused)
    });
    let client = dial(&f, &t1).await;
    for i in 0..3u32 {
        let (_, answer) = client
            .request::<u32, u32>(0x40, &i)
            .await
            .expect("answered");
        assert_eq!(answer, i + 1);
    }
    let (_in1, refused) = server.await.unwrap();
    assert_eq!(refused, 1, "the opening was asked once");
    assert!(!client.multiplexed());
    client.close().await;
    t1.shutdown().await;
}

/// A node that answers the opening with something else (a refusal while it is saturated) is
/// asked again a little later, and then the requests go on the multiplexed stream.
#[tokio::test]
async fn an_opening_refused_for_now_is_asked_again() {
    let f = Fixture::new([1]);
    let (t1, mut in1) = f.bind(1, &f.node_tls(1));
    let client = dial(&f, &t1).await;
    let mut first = in1.clients.recv().await.expect("the opening");
    let f0 = frame::read_frame(&mut first.recv, MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f0.kind, KIND_MUX_OPEN);
    frame::write_msg(&mut first.send, 0x21, &"busy", MAX)
        .await
        .unwrap();
    first.send.finish().unwrap();
    let asked_again = tokio::time::Instant::now();
    let mut s = accept_mux(&mut in1).await;
    assert!(
        asked_again.elapsed() >= Duration::from_millis(400),
        "asked again after a pause"
    );
    eventually(5, "the stream accepted", || client.multiplexed()).await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.request::<u32, u32>(0x40, &5).await })
    };
    let asked = read_requests(&mut s, &mut FrameBuffer::new(), 1).await;
    let mut out = Vec::new();
    mux::encode_tagged_into(&mut out, asked[0].0, 0x41, &6u32, MAX).unwrap();
    s.send.write_all(&out).await.unwrap();
    assert_eq!(call.await.unwrap().expect("answered").1, 6);
    client.close().await;
    t1.shutdown().await;
}
