//! A node's multiplexed client streams, against real `wraft node` processes: a client's
//! requests share one stream, and the bounds a stream per request has (a request's bytes
//! arrive in time, responses are taken in time, a malformed frame ends only its stream) hold
//! for a multiplexed stream too, as do the bounds on how many requests one stream and the whole
//! node hold, while the cluster goes on committing.

use std::time::{Duration, Instant};

use wraft_proto::{
    CODE_RESPONSE_WRITE_TIMEOUT, Consistency, KIND_REQUEST, KIND_RESPONSE, Request, RequestError,
    Response,
};
use wraft_tests::{Cluster, http_get, kv_get, kv_put};
use wraft_transport::client::{ClientConfig, ClientConnection};
use wraft_transport::mux::{self, FrameBuffer, KIND_MUX, KIND_MUX_OPEN, KIND_MUX_OPENED};
use wraft_transport::quinn;
use wraft_transport::{CODE_BAD_FRAME, frame};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const SERVE_TIMEOUT: Duration = Duration::from_secs(15);

async fn started(tweak: impl Fn(&mut wraft_config::NodeConfig)) -> (Cluster, u64) {
    let cluster = Cluster::start_with(3, tweak);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    (cluster, leader)
}

/// A raw multiplexed stream on `conn`, accepted by the node.
async fn open_mux(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write_frame(&mut send, KIND_MUX_OPEN, &[1], u32::MAX)
        .await
        .expect("open");
    let f = tokio::time::timeout(SERVE_TIMEOUT, frame::read_frame(&mut recv, 64))
        .await
        .expect("accepted in time")
        .expect("frame")
        .expect("not the end");
    assert_eq!(
        (f.kind, f.payload.as_slice()),
        (KIND_MUX_OPENED, &[1u8][..])
    );
    (send, recv)
}

/// The next tagged response on `recv`: `Ok((id, response))`, or `Err` with the stream's reset
/// code (or `None` if it ended or broke otherwise).
async fn next_response(
    recv: &mut quinn::RecvStream,
    buf: &mut FrameBuffer,
) -> Result<(u64, Response), Option<u64>> {
    loop {
        if let Some((kind, payload)) = buf.next_frame(u32::MAX).expect("a good frame") {
            assert_eq!(kind, KIND_MUX);
            let (id, inner, body) = mux::decode_tagged(&payload).expect("tag");
            assert_eq!(inner, KIND_RESPONSE);
            return Ok((id, frame::decode_payload(body).expect("a response")));
        }
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => buf.extend(&chunk.bytes),
            Ok(None) => return Err(None),
            Err(quinn::ReadError::Reset(code)) => return Err(Some(code.into_inner())),
            Err(_) => return Err(None),
        }
    }
}

fn tagged_request(id: u64, req: &Request) -> Vec<u8> {
    mux::encode_tagged(id, KIND_REQUEST, req, u32::MAX).expect("encode")
}

/// Tagged status requests `ids`, back to back, for one write.
fn status_burst(ids: std::ops::Range<u64>) -> Vec<u8> {
    ids.flat_map(|id| tagged_request(id, &Request::Status))
        .collect()
}

/// Hundreds of concurrent requests from one client connection share its multiplexed stream:
/// the node never has to grant the client more streams, and every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_concurrent_requests_share_one_multiplexed_stream() {
    const CALLS: usize = 400;
    let (cluster, leader) = started(|_| {}).await;
    cluster.assert_still_commits("before").await;
    let config = ClientConfig {
        multiplex: true,
        ..ClientConfig::default()
    };
    let conn = ClientConnection::connect(cluster.addr(leader), None, &cluster.admin_tls(), &config)
        .await
        .expect("connect");
    let deadline = Instant::now() + SERVE_TIMEOUT;
    while !conn.multiplexed() {
        assert!(
            Instant::now() < deadline,
            "the node never accepted the stream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let req = if i % 2 == 0 {
                    Request::Status
                } else {
                    Request::Query {
                        machine: "kv".into(),
                        request: kv_get("before"),
                        consistency: Consistency::Linearizable,
                    }
                };
                conn.request::<Request, Response>(KIND_REQUEST, &req).await
            })
        })
        .collect();
    for call in calls {
        let (kind, response) = tokio::time::timeout(SERVE_TIMEOUT, call)
            .await
            .expect("answered in time")
            .expect("join")
            .expect("answered");
        assert_eq!(kind, KIND_RESPONSE);
        response.expect("served");
    }
    assert!(conn.multiplexed());
    let stats = conn.connection().stats();
    assert_eq!(
        stats.frame_rx.max_streams_bidi, 0,
        "the node granted more streams: requests went a stream each"
    );
    conn.close().await;
}

/// On a multiplexed stream a request that does not decode is answered `Rejected` and the
/// stream serves on; a frame that is not a tagged request ends that stream (reset with
/// `CODE_BAD_FRAME`) and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_on_a_multiplexed_stream_ends_only_that_stream() {
    let (cluster, leader) = started(|_| {}).await;
    let (_endpoint, conn) = cluster.connect_stingy(leader, 1 << 20).await;
    let (mut send, mut recv) = open_mux(&conn).await;
    let mut buf = FrameBuffer::new();
    // A tagged request whose body is not a request (a newer client's, say).
    let mut garbage = Vec::new();
    mux::encode_tagged_into(&mut garbage, 1, KIND_REQUEST, &(250u8, "?"), u32::MAX).unwrap();
    send.write_all(&garbage).await.unwrap();
    send.write_all(&tagged_request(2, &Request::Status))
        .await
        .unwrap();
    let mut answers = vec![
        next_response(&mut recv, &mut buf).await.expect("answer"),
        next_response(&mut recv, &mut buf).await.expect("answer"),
    ];
    answers.sort_by_key(|(id, _)| *id);
    assert!(
        matches!(&answers[0], (1, Err(RequestError::Rejected(m))) if m.contains("cannot read the request")),
        "{answers:?}"
    );
    assert!(matches!(&answers[1], (2, Ok(_))), "{answers:?}");
    // A tagged frame of a kind that is not a request.
    let mut wrong = Vec::new();
    mux::encode_tagged_into(&mut wrong, 3, 0x55, &Request::Status, u32::MAX).unwrap();
    send.write_all(&wrong).await.unwrap();
    let ended = tokio::time::timeout(SERVE_TIMEOUT, next_response(&mut recv, &mut buf))
        .await
        .expect("ended in time");
    assert_eq!(
        ended.map(|(id, _)| id),
        Err(Some(u64::from(CODE_BAD_FRAME)))
    );
    // The connection serves on: a new multiplexed stream, and the cluster commits.
    let (mut send, mut recv) = open_mux(&conn).await;
    send.write_all(&tagged_request(1, &Request::Status))
        .await
        .unwrap();
    let (id, status) = next_response(&mut recv, &mut FrameBuffer::new())
        .await
        .expect("answered");
    assert_eq!(id, 1);
    status.expect("status");
    assert!(
        cluster
            .log(leader)
            .contains("closing a multiplexed client stream"),
        "the node says why it ended the stream"
    );
    cluster.assert_still_commits("after-bad-frame").await;
}

/// A request frame begun and never finished ends its multiplexed stream at the request
/// deadline, not before and not much after; the requests before it were answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_unfinished_on_a_multiplexed_stream_ends_it_at_the_deadline() {
    // Long enough for a deploy (a guest compile) on a loaded debug build.
    const DEADLINE_MS: u64 = 10_000;
    let (cluster, leader) = started(|c| c.client.request_timeout_ms = DEADLINE_MS).await;
    let (_endpoint, conn) = cluster.connect_stingy(leader, 1 << 20).await;
    let (mut send, mut recv) = open_mux(&conn).await;
    let mut buf = FrameBuffer::new();
    send.write_all(&tagged_request(1, &Request::Status))
        .await
        .unwrap();
    let (id, _) = next_response(&mut recv, &mut buf).await.expect("answered");
    assert_eq!(id, 1);
    // Cut inside the payload (the header is whole, its length promises more).
    let next = tagged_request(
        2,
        &Request::Query {
            machine: "kv".into(),
            request: kv_get(&"k".repeat(1000)),
            consistency: Consistency::Stale,
        },
    );
    let start = Instant::now();
    send.write_all(&next[..next.len() - 10]).await.unwrap();
    cluster
        .assert_still_commits("during-unfinished-request")
        .await;
    let ended = tokio::time::timeout(
        Duration::from_millis(DEADLINE_MS * 3),
        next_response(&mut recv, &mut buf),
    )
    .await
    .expect("the node ends the stream");
    let took = start.elapsed();
    assert_eq!(
        ended.map(|(id, _)| id),
        Err(Some(u64::from(CODE_BAD_FRAME)))
    );
    assert!(
        took >= Duration::from_millis(DEADLINE_MS),
        "ended before the deadline: {took:?}"
    );
    eprintln!("an unfinished request ended its stream after {took:?} (deadline {DEADLINE_MS} ms)");
}

/// Responses a client never takes off its multiplexed stream are given up at the write
/// deadline: the stream is reset with `CODE_RESPONSE_WRITE_TIMEOUT`, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_never_taken_off_a_multiplexed_stream_are_reset_at_the_write_deadline() {
    const WRITE_DEADLINE_MS: u64 = 3_000;
    const QUERIES: u64 = 20;
    let (cluster, leader) = started(|c| {
        c.client.response_write_timeout_ms = WRITE_DEADLINE_MS;
    })
    .await;
    cluster.assert_still_commits("before").await;
    let c = cluster.client().await;
    c.propose("kv", &kv_put("big", &"v".repeat(256 << 10)))
        .await
        .expect("put big");
    // 16 KiB of credit per stream, and the client never reads: 5 MiB of answers stay put.
    let (_endpoint, conn) = cluster.connect_stingy(leader, 16 << 10).await;
    let (mut send, mut recv) = open_mux(&conn).await;
    let start = Instant::now();
    for id in 0..QUERIES {
        let query = Request::Query {
            machine: "kv".into(),
            request: kv_get("big"),
            consistency: Consistency::Stale,
        };
        send.write_all(&tagged_request(id, &query)).await.unwrap();
    }
    let code = tokio::time::timeout(Duration::from_secs(60), recv.received_reset())
        .await
        .expect("reset within a minute")
        .expect("reset, not a lost connection");
    let took = start.elapsed();
    assert_eq!(
        code.map(|c| c.into_inner()),
        Some(u64::from(CODE_RESPONSE_WRITE_TIMEOUT))
    );
    assert!(
        took >= Duration::from_millis(WRITE_DEADLINE_MS),
        "given up before the deadline: {took:?}"
    );
    assert!(
        cluster
            .log(leader)
            .contains("responses not taken within client.response_write_timeout_ms")
    );
    eprintln!("unread responses reset after {took:?} (deadline {WRITE_DEADLINE_MS} ms)");
    cluster.assert_still_commits("after-unread-responses").await;
}

/// `wraft_client_requests_in_flight` of the node whose metrics are served at `addr`.
async fn requests_in_flight(addr: std::net::SocketAddr) -> u64 {
    let (status, body) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("join")
        .expect("scrape");
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with("wraft_client_requests_in_flight{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("wraft_client_requests_in_flight in the scrape") as u64
}

/// One multiplexed stream holds at most `SESSION_REQUESTS_IN_FLIGHT_MAX` (1,024) requests,
/// however many arrive at once: past it the node stops taking the stream's requests, so one
/// client cannot take the places the node keeps for all of them. The places come back when the
/// stream goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_stream_holds_at_most_its_bound_of_requests() {
    const SENT: u64 = 3_000;
    const STREAM_HELD_MAX: u64 = 1_024;
    let (cluster, leader) = started(|c| {
        c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.client.response_write_timeout_ms = 300_000;
    })
    .await;
    let metrics = cluster.metrics_addr(leader).await;
    assert_eq!(requests_in_flight(metrics).await, 0);
    // 1 KiB of credit per stream and never read: the answers stay in the node, so every
    // request taken keeps its place.
    let (_endpoint, conn) = cluster.connect_stingy(leader, 1 << 10).await;
    let (mut send, _recv) = open_mux(&conn).await;
    send.write_all(&status_burst(0..SENT))
        .await
        .expect("send the burst");
    // The count climbs to the bound and stays there.
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let mut highest = 0;
    let mut at_bound_since: Option<Instant> = None;
    loop {
        let held = requests_in_flight(metrics).await;
        highest = highest.max(held);
        if held >= STREAM_HELD_MAX {
            let since = *at_bound_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stream's requests never held their places: {held} in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        highest, STREAM_HELD_MAX,
        "one stream held more requests than its bound"
    );
    // The others are served meanwhile.
    cluster.assert_still_commits("beside-a-full-stream").await;
    // The stream goes: its requests give their places back.
    conn.close(0u32.into(), b"done");
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        let held = requests_in_flight(metrics).await;
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} places still held after the stream went"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `wraft_client_requests_in_flight` reaches `target` (within a minute: a debug build answers
/// thousands of status requests).
async fn wait_in_flight(addr: std::net::SocketAddr, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = requests_in_flight(addr).await;
        if held == target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{held} requests in flight, never {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When the node serves as many requests as it may (16,384), a request on a multiplexed stream
/// is answered `Busy` at once, as one on a stream of its own is; and clients that never take
/// their answers do not keep the node from stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_answers_busy_on_a_multiplexed_stream_and_still_stops_in_time() {
    const STREAMS: u64 = 16;
    const PER_STREAM: u64 = 1_100; // past the stream's bound of 1,024
    const NODE_HELD_MAX: u64 = 16_384;
    const SHUTDOWN_MS: u64 = 5_000;
    let (mut cluster, leader) = started(|c| {
        c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.node.shutdown_timeout_ms = SHUTDOWN_MS;
        c.client.response_write_timeout_ms = 300_000;
    })
    .await;
    let metrics = cluster.metrics_addr(leader).await;
    // Never read: every request taken keeps its place.
    let (_endpoint, conn) = cluster.connect_stingy(leader, 1 << 10).await;
    // A stream opened while there is room, used once there is none.
    let (mut send, mut recv) = open_mux(&conn).await;
    let mut held_streams = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, recv) = open_mux(&conn).await;
        send.write_all(&status_burst(0..PER_STREAM))
            .await
            .expect("send the burst");
        held_streams.push((send, recv));
    }
    wait_in_flight(metrics, NODE_HELD_MAX).await;
    // Its request finds no place.
    send.write_all(&tagged_request(7, &Request::Status))
        .await
        .expect("send");
    let (id, answer) = tokio::time::timeout(
        SERVE_TIMEOUT,
        next_response(&mut recv, &mut FrameBuffer::new()),
    )
    .await
    .expect("answered at once")
    .expect("answered");
    assert_eq!(id, 7);
    assert!(
        matches!(&answer, Err(RequestError::Busy(m)) if m.contains("requests in flight")),
        "{answer:?}"
    );
    // Nor does a new stream's opening: the client asks again later, sending its requests a
    // stream each meanwhile (`wraft_transport::client`).
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    frame::write_frame(&mut send, KIND_MUX_OPEN, &[1], u32::MAX)
        .await
        .expect("open");
    let refused = tokio::time::timeout(SERVE_TIMEOUT, frame::read_frame(&mut recv, 1 << 16))
        .await
        .expect("answered at once")
        .expect("frame")
        .expect("not the end");
    assert_eq!(refused.kind, KIND_RESPONSE);
    let refused: Response = refused.decode().expect("a response");
    assert!(matches!(refused, Err(RequestError::Busy(_))), "{refused:?}");
    assert_eq!(requests_in_flight(metrics).await, NODE_HELD_MAX);
    // Stopping: the answers nobody takes do not hold the node up.
    let start = Instant::now();
    cluster.signal(leader, libc::SIGTERM);
    let status = cluster
        .wait_exit(leader, Duration::from_millis(SHUTDOWN_MS * 2))
        .await;
    eprintln!(
        "stopped in {:?} with {NODE_HELD_MAX} answers untaken ({status})",
        start.elapsed()
    );
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_millis(SHUTDOWN_MS),
        "the node stopped only at its shutdown timeout"
    );
}

/// While a stream holds its bound of requests the node does not read it, so the deadline for
/// a request frame to arrive whole does not run: the part of a request read with the one that
/// reached the bound waits with the stream, however long its answers go untaken. When places
/// come back the requests already read are taken first, then the stream is read again: the
/// client's end of the stream finds no request left unread, and every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_read_past_a_full_streams_bound_wait_without_a_deadline_and_are_all_answered() {
    const STREAM_HELD_MAX: u64 = 1_024;
    const REQUEST_DEADLINE_MS: u64 = 1_000;
    let (cluster, leader) = started(|c| {
        c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.client.request_timeout_ms = REQUEST_DEADLINE_MS;
        c.client.response_write_timeout_ms = 300_000;
    })
    .await;
    let metrics = cluster.metrics_addr(leader).await;
    // 32 bytes of credit: less than one answer, so no place comes back until the test reads.
    let (_endpoint, conn) = cluster.connect_stingy(leader, 32).await;
    let (mut send, mut recv) = open_mux(&conn).await;
    let status = |id| tagged_request(id, &Request::Status);
    send.write_all(&status_burst(0..STREAM_HELD_MAX - 1))
        .await
        .expect("send the burst");
    wait_in_flight(metrics, STREAM_HELD_MAX - 1).await;
    // One small write, read at once: the request that fills the stream, one more whole, and
    // half of the next.
    let (filling, whole, cut) = (
        status(STREAM_HELD_MAX - 1),
        status(STREAM_HELD_MAX),
        status(STREAM_HELD_MAX + 1),
    );
    let half = cut.len() / 2;
    send.write_all(&[filling, whole, cut[..half].to_vec()].concat())
        .await
        .expect("send");
    wait_in_flight(metrics, STREAM_HELD_MAX).await;
    // Three request deadlines with the stream full and its answers untaken.
    tokio::time::sleep(Duration::from_millis(3 * REQUEST_DEADLINE_MS)).await;
    send.write_all(&cut[half..]).await.expect("send the rest");
    send.finish().expect("finish");
    let mut buf = FrameBuffer::new();
    let mut answered = std::collections::BTreeSet::new();
    let ended = loop {
        match tokio::time::timeout(SERVE_TIMEOUT, next_response(&mut recv, &mut buf))
            .await
            .expect("answered in time")
        {
            Ok((id, status)) => {
                status.expect("status");
                assert!(answered.insert(id), "request {id} answered twice");
            }
            Err(ended) => break ended,
        }
    };
    assert_eq!(
        (answered.len() as u64, ended),
        (STREAM_HELD_MAX + 2, None),
        "every request answered, then the stream ended cleanly (not reset)"
    );
}
