//! Transfer tests: two real transports on 127.0.0.1:0 with generated certificates, real
//! snapshot stores (temp dirs, or the in-memory `FaultFs` where a crash matters), and raw bulk
//! streams playing a misbehaving peer where the protocol itself is under test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wraft_storage::fault::{CrashMode, FaultFs};
use wraft_storage::{
    Membership, SnapshotId, SnapshotInfo, SnapshotMeta, SnapshotPin, SnapshotStore, StdFs,
    StorageConfig, Vfs,
};
use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
use wraft_transport::{AddressBook, BulkStream, Inbound, Transport, TransportConfig};

use std::num::NonZeroU32;

use wraft_transport::NodeId;
use wraft_transport::frame::{self, FrameError};

use crate::receive::send_reply;
use crate::send::read_reply;
use crate::wire::{
    BusyReason, CONTROL_FRAME_BYTES_MAX, KIND_OFFER, KIND_REPLY, OFFER_MAGIC, Offer, Reply,
    TRANSFER_PROTOCOL_VERSION_FULL, encode_chunk_header,
};
use crate::{
    BandwidthLimiter, IncomingSlots, Received, SendOutcome, SendReport, TransferConfig,
    TransferError, receive_snapshot, send_snapshot,
};

const LEADER: NodeId = 1;
const FOLLOWER: NodeId = 2;
/// A second leader (of a newer term, or a rival of the same one) in [`net3`]'s tests.
const OTHER_LEADER: NodeId = 3;

/// Transports on loopback: nodes 1 and 2 (and 3 with [`net3`]); node 2's inbound bulk streams
/// in `bulk2`. With [`net_relayed`], nodes reach node 2 through a [`Relay`].
struct Net {
    t1: Transport,
    t2: Transport,
    t3: Option<Transport>,
    _in1: Inbound,
    bulk2: mpsc::Receiver<BulkStream>,
    _rest2: (mpsc::Receiver<(NodeId, bytes::Bytes)>,),
    _in3: Option<Inbound>,
    relay: Option<Relay>,
}

fn tls(ca: &ClusterCa, id: NodeId) -> TlsIdentity {
    let issued = ca.issue_node(id, &[], Validity::days_from_now(1)).unwrap();
    TlsIdentity::from_issued(ca.cert_pem(), &issued).unwrap()
}

/// What [`build_net`] builds: the stream window, a third node, a relay in front of node 2.
struct NetSpec {
    stream_window_bytes: u32,
    third_node: bool,
    relay: bool,
}

fn build_net(spec: NetSpec) -> Net {
    // `RUST_LOG=wraft::snapshot=debug` shows the transfer's log lines in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ca = ClusterCa::generate("xfer-test", Validity::days_from_now(1)).unwrap();
    let membership = wraft_transport::Membership::new([LEADER, FOLLOWER, OTHER_LEADER]);
    let book = AddressBook::default();
    let bind = |id| {
        let mut cfg = TransportConfig::new(id, "127.0.0.1:0".parse().unwrap());
        cfg.stream_receive_window_bytes = spec.stream_window_bytes;
        cfg.connection_receive_window_bytes = spec.stream_window_bytes.max(1 << 20) * 4;
        let (t, inbound) =
            Transport::bind(cfg, &tls(&ca, id), membership.clone(), book.clone()).unwrap();
        book.insert(id, t.local_addr().unwrap());
        (t, inbound)
    };
    let (t1, in1) = bind(LEADER);
    let (t2, in2) = bind(FOLLOWER);
    let (t3, in3) = if spec.third_node {
        let (t, i) = bind(OTHER_LEADER);
        (Some(t), Some(i))
    } else {
        (None, None)
    };
    let relay = if spec.relay {
        let r = Relay::to(t2.local_addr().unwrap());
        book.insert(FOLLOWER, r.addr);
        Some(r)
    } else {
        None
    };
    Net {
        t1,
        t2,
        t3,
        _in1: in1,
        bulk2: in2.bulk,
        _rest2: (in2.raft,),
        _in3: in3,
        relay,
    }
}

fn net_with(stream_window_bytes: u32) -> Net {
    let spec = NetSpec {
        stream_window_bytes,
        third_node: false,
        relay: false,
    };
    build_net(spec)
}

fn net() -> Net {
    net_with(8 << 20)
}

/// Nodes 1, 2 and 3 on loopback.
fn net3() -> Net {
    build_net(NetSpec {
        stream_window_bytes: 8 << 20,
        third_node: true,
        relay: false,
    })
}

/// Nodes 1 and 2, node 2 reached through a [`Relay`] that a test can cut.
fn net_relayed() -> Net {
    build_net(NetSpec {
        stream_window_bytes: 8 << 20,
        third_node: false,
        relay: true,
    })
}

impl Net {
    async fn shutdown(self) {
        if let Some(r) = &self.relay {
            r.task.abort();
        }
        self.t1.shutdown().await;
        self.t2.shutdown().await;
        if let Some(t3) = self.t3 {
            t3.shutdown().await;
        }
    }
    /// Open a bulk stream 1 -> 2.
    async fn open(&self) -> BulkStream {
        self.t1.open_bulk(FOLLOWER).await.unwrap()
    }
    /// Open a bulk stream 3 -> 2 (only with [`net3`]).
    async fn open_from_other_leader(&self) -> BulkStream {
        let t3 = self.t3.as_ref().expect("a net with node 3");
        t3.open_bulk(FOLLOWER).await.unwrap()
    }
    /// Accept the next bulk stream on node 2. A QUIC stream becomes visible to the peer with
    /// its first byte (the offer), so call this after the sender started.
    async fn accept(&mut self) -> BulkStream {
        tokio::time::timeout(Duration::from_secs(10), self.bulk2.recv())
            .await
            .expect("an inbound bulk stream")
            .expect("transport alive")
    }
}

/// A UDP relay in front of node 2: forwards every datagram until [`Relay::cut`], then drops
/// every one in both directions, as a `kill -9` of node 2 looks from the network (no
/// connection close, no stream reset: silence).
struct Relay {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Needs a tokio runtime (the relay is a task).
    fn to(target: std::net::SocketAddr) -> Relay {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let sock = tokio::net::UdpSocket::from_std(sock).unwrap();
        let addr = sock.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_cut = cut.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            let mut client = None;
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if is_cut.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let to = if from == target {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    target
                };
                let _ = sock.send_to(&buf[..n], to).await;
            }
        });
        Relay { addr, cut, task }
    }
    /// Drop every datagram from now on (`true`), or forward them again (`false`).
    fn cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }
}

fn storage_cfg() -> StorageConfig {
    StorageConfig {
        // The transfer's own sync_every_bytes drives the syncs under test.
        snapshot_sync_every_bytes: 1 << 40,
        ..StorageConfig::default()
    }
}

fn open_store(vfs: Arc<dyn Vfs>, dir: &Path) -> SnapshotStore {
    SnapshotStore::open(vfs, dir, &storage_cfg()).unwrap().0
}

fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

const ID: SnapshotId = SnapshotId {
    last_index: 1000,
    last_term: 3,
};

fn make_snapshot(store: &SnapshotStore, id: SnapshotId, body: &[u8]) -> SnapshotInfo {
    let meta = SnapshotMeta {
        id,
        membership: Membership {
            voters: vec![LEADER, FOLLOWER],
            learners: vec![],
        },
        format: "test/1".into(),
    };
    let mut w = store.begin(meta).unwrap();
    for c in body.chunks(1 << 20) {
        w.write_chunk(c).unwrap();
    }
    w.finish().unwrap()
}

fn cfg(node_id: NodeId) -> TransferConfig {
    TransferConfig {
        node_id,
        chunk_bytes: 256 << 10,
        sync_every_bytes: 1 << 20,
        progress_timeout_ms: 5_000,
        ..TransferConfig::default()
    }
}

fn partial_path(dir: &Path, id: SnapshotId) -> PathBuf {
    dir.join(format!("{id}.partial"))
}

struct Leader {
    _dir: tempfile::TempDir,
    store: SnapshotStore,
    info: SnapshotInfo,
}

fn leader_with(seed: u64, len: usize) -> Leader {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(Arc::new(StdFs), dir.path());
    let info = make_snapshot(&store, ID, &body(seed, len));
    Leader {
        _dir: dir,
        store,
        info,
    }
}

type SendTask = tokio::task::JoinHandle<Result<SendReport, TransferError>>;

/// Run `send_snapshot` on its own task; durable acks seen by the leader go to the returned
/// vector.
fn spawn_send(
    stream: BulkStream,
    store: &SnapshotStore,
    id: SnapshotId,
    cfg: TransferConfig,
    limiter: BandwidthLimiter,
) -> (SendTask, Arc<std::sync::Mutex<Vec<u64>>>) {
    let offered = store.pin(id).expect("the snapshot to send exists");
    spawn_send_pinned(stream, store, offered, cfg, limiter)
}

/// [`spawn_send`] of a snapshot the caller pinned earlier (at its offer).
fn spawn_send_pinned(
    stream: BulkStream,
    store: &SnapshotStore,
    offered: SnapshotPin,
    cfg: TransferConfig,
    limiter: BandwidthLimiter,
) -> (SendTask, Arc<std::sync::Mutex<Vec<u64>>>) {
    let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = acks.clone();
    let store = store.clone();
    let h = tokio::spawn(async move {
        send_snapshot(stream, &store, offered, 7, &cfg, &limiter, move |o| {
            a.lock().unwrap().push(o)
        })
        .await
    });
    (h, acks)
}

/// One whole transfer of `id` from `leader` to `follower` on a new stream: what each end
/// returned.
#[allow(clippy::too_many_arguments)]
async fn transfer_between(
    n: &mut Net,
    leader: &SnapshotStore,
    id: SnapshotId,
    lcfg: TransferConfig,
    limiter: BandwidthLimiter,
    follower: &SnapshotStore,
    fcfg: TransferConfig,
    slots: &IncomingSlots,
) -> (
    Result<SendReport, TransferError>,
    Result<Received, TransferError>,
) {
    let out = n.open().await;
    let (send, _) = spawn_send(out, leader, id, lcfg, limiter);
    let inb = n.accept().await;
    let recv = spawn_receive(inb, follower, fcfg, slots, None);
    (send.await.unwrap(), recv.await.unwrap())
}

fn spawn_receive(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: TransferConfig,
    slots: &IncomingSlots,
    durable_tx: Option<mpsc::UnboundedSender<u64>>,
) -> tokio::task::JoinHandle<Result<Received, TransferError>> {
    let store = store.clone();
    let slots = slots.clone();
    tokio::spawn(async move {
        receive_snapshot(stream, &store, &cfg, &slots, move |o| {
            if let Some(tx) = &durable_tx {
                let _ = tx.send(o);
            }
        })
        .await
    })
}

/// The logical bytes of complete snapshot `id` of `store` (whatever file system it is on).
fn stored_bytes(store: &SnapshotStore, id: SnapshotId) -> Vec<u8> {
    let r = store.open_reader(id).unwrap();
    let mut b = vec![0u8; r.info().file_len as usize];
    assert_eq!(r.read_file_at(0, &mut b).unwrap(), b.len());
    b
}

/// The logical bytes of the snapshot file at `path` (a file sharing bytes with older ones
/// reads them from there).
fn file_bytes(path: &Path) -> Vec<u8> {
    let f = wraft_storage::open_snapshot_file(path).unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    wraft_storage::read_exact_at(f.as_ref(), &mut b, 0).unwrap();
    b
}

/// The next reply that is not a heartbeat: a follower repeats `Durable{durable}` right after
/// `Accept` and whenever it has been quiet for `heartbeat_ms`.
async fn read_reply_past_heartbeats(
    recv: &mut wraft_transport::quinn::RecvStream,
    durable: u64,
) -> Result<Option<Reply>, FrameError> {
    loop {
        match read_reply(recv).await? {
            Some(Reply::Durable { offset }) if offset == durable => {}
            other => return Ok(other),
        }
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_boards_show_a_running_transfer_and_let_it_go_when_it_ends() {
    let mut n = net();
    let leader = leader_with(4, 3 << 20);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(2);
    let (lcfg, fcfg) = (cfg(LEADER), cfg(FOLLOWER));
    let (leader_board, follower_board) = (lcfg.board.clone(), fcfg.board.clone());

    // 4 MiB/s: the 3 MiB file takes most of a second, long enough to watch.
    let limiter = BandwidthLimiter::new(Some(4 << 20));
    let out = n.open().await;
    let (send, _) = spawn_send(out, &leader.store, ID, lcfg, limiter);
    let inb = n.accept().await;
    let recv = spawn_receive(inb, &follower, fcfg, &slots, None);

    let file_len = leader.info.file_len;
    let mid = |b: &crate::TransferBoard| {
        b.live()
            .first()
            .is_some_and(|t| t.done > 0 && t.done < file_len)
    };
    wait_until("both sides show the transfer part-way", || {
        mid(&leader_board) && mid(&follower_board)
    })
    .await;
    let sent = leader_board.live();
    let got = follower_board.live();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (
            sent[0].direction,
            sent[0].peer,
            sent[0].index,
            sent[0].file_len
        ),
        (crate::Direction::Send, FOLLOWER, ID.last_index, file_len)
    );
    assert_eq!(
        (got[0].direction, got[0].peer, got[0].index, got[0].file_len),
        (crate::Direction::Receive, LEADER, ID.last_index, file_len)
    );

    assert_eq!(send.await.unwrap().unwrap().outcome, SendOutcome::Completed);
    recv.await.unwrap().unwrap();
    assert!(leader_board.live().is_empty(), "{:?}", leader_board.live());
    assert!(
        follower_board.live().is_empty(),
        "{:?}",
        follower_board.live()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_transfer_is_byte_identical_verified_and_then_already_have() {
    let mut n = net();
    let leader = leader_with(1, 5 << 20 | 12345);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(2);

    let out = n.open().await;
    let (send, acks) = spawn_send(
        out,
        &leader.store,
        ID,
        cfg(LEADER),
        BandwidthLimiter::new(None),
    );
    let inb = n.accept().await;
    let recv = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, None);
    let report = send.await.unwrap().unwrap();
    let got = recv.await.unwrap().unwrap();

    let file_len = leader.info.file_len;
    assert_eq!(report.outcome, SendOutcome::Completed);
    assert_eq!(
        (report.resumed_from, report.bytes_sent, report.chunks_resent),
        (0, file_len, 0)
    );
    assert_eq!(
        (
            got.from,
            got.leader_term,
            got.resumed_from,
            got.bytes_received
        ),
        (LEADER, 7, 0, file_len)
    );
    assert!(!got.already_had);
    assert_eq!(got.info.digest, leader.info.digest);
    assert_eq!(
        file_bytes(&got.info.path),
        file_bytes(&leader.info.path),
        "received file differs from the leader's"
    );
    let acks = acks.lock().unwrap().clone();
    assert!(
        acks.windows(2).all(|w| w[0] < w[1]),
        "durable acks must increase: {acks:?}"
    );
    assert!(
        acks.len() >= 5,
        "expected a durable ack about every sync_every_bytes (1 MiB) of {file_len}: {acks:?}"
    );
    assert_eq!(acks.last(), Some(&file_len));
    assert_eq!(follower.latest().map(|i| i.id()), Some(ID));
    wait_until("the slot is released", || slots.in_flight() == 0).await;

    // Offered again: nothing moves.
    let out = n.open().await;
    let (send, _) = spawn_send(
        out,
        &leader.store,
        ID,
        cfg(LEADER),
        BandwidthLimiter::new(None),
    );
    let inb = n.accept().await;
    let recv = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, None);
    assert_eq!(
        send.await.unwrap().unwrap().outcome,
        SendOutcome::AlreadyHave
    );
    let again = recv.await.unwrap().unwrap();
    assert!(again.already_had);
    assert_eq!(again.bytes_received, 0);
    n.shutdown().await;
}

/// The race behind `snapshot transfer failed … not found`: the leader decides to offer its
/// snapshot, and before the stream to the follower is open (a connection to set up, a slow
/// peer) two newer snapshots are published and retention retires the offered one. The offer
/// pins the snapshot, so it is still sent whole; once the transfer ends retention removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_retired_by_retention_between_offer_and_stream_is_still_sent() {
    let mut n = net();
    let leader = leader_with(11, 1 << 20);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());

    // The offer (what the node's driver does when the engine says "send snapshot ID").
    let offered = leader.store.pin(ID).unwrap();
    let offered_bytes = file_bytes(&leader.info.path);
    // Before the stream opens: two newer snapshots; retention keeps 2 of the node's own.
    for (i, index) in [2000u64, 3000].into_iter().enumerate() {
        let id = SnapshotId {
            last_index: index,
            last_term: 3,
        };
        make_snapshot(&leader.store, id, &body(20 + i as u64, 4096));
    }

    let out = n.open().await;
    let (send, _) = spawn_send_pinned(
        out,
        &leader.store,
        offered,
        cfg(LEADER),
        BandwidthLimiter::new(None),
    );
    let recv = tokio::spawn(async move {
        let inb = n.accept().await;
        let got = spawn_receive(inb, &follower, cfg(FOLLOWER), &IncomingSlots::new(2), None)
            .await
            .unwrap();
        (n, got)
    });
    let report = send.await.unwrap().expect("the offered snapshot is sent");
    assert_eq!(report.outcome, SendOutcome::Completed);
    let (n, got) = recv.await.unwrap();
    let got = got.unwrap();
    n.shutdown().await;
    assert_eq!(got.info.id(), ID);
    assert_eq!(file_bytes(&got.info.path), offered_bytes);
    // The pin is gone with the transfer: retention has now retired the offered snapshot.
    wait_until("retention retires the sent snapshot", || {
        !leader.store.list().iter().any(|i| i.id() == ID)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_crash_mid_transfer_resumes_from_its_durable_offset() {
    let mut n = net();
    let leader = leader_with(2, 8 << 20);
    let file_len = leader.info.file_len;
    let fs = FaultFs::new();
    let fdir = PathBuf::from("/snap");
    let follower = open_store(Arc::new(fs.clone()), &fdir);
    let c = cfg(FOLLOWER);

    // Throttle so the crash lands mid-transfer.
    let limiter = BandwidthLimiter::new(Some(8 << 20));
    let out = n.open().await;
    let (send1, leader_acks) = spawn_send(out, &leader.store, ID, cfg(LEADER), limiter.clone());
    let (tx, mut durable_rx) = mpsc::unbounded_channel();
    let inb = n.accept().await;
    let recv1 = spawn_receive(inb, &follower, c.clone(), &IncomingSlots::new(2), Some(tx));
    let mut last_durable = 0;
    while last_durable < 3 << 20 {
        last_durable = durable_rx.recv().await.expect("durable ack");
    }
    // Power loss: the receiving process dies, unsynced bytes are gone.
    recv1.abort();
    let written_before_crash = fs
        .read_file(&partial_path(&fdir, ID))
        .map_or(0, |f| f.len() as u64);
    fs.crash(CrashMode::LoseUnsynced);
    let err = send1.await.unwrap().unwrap_err();
    eprintln!("first attempt ended on the leader with: {err}");
    let acked_to_leader = leader_acks.lock().unwrap().last().copied().unwrap_or(0);

    // Restart: reopen the store on what the disk kept.
    let (follower, rec) = SnapshotStore::open(Arc::new(fs.clone()), &fdir, &storage_cfg()).unwrap();
    let (rid, durable) = rec.resumable.first().copied().expect("a resumable partial");
    assert_eq!(rid, ID);
    assert!(
        durable >= last_durable && durable >= acked_to_leader,
        "durable offset {durable} after the crash is below an acknowledged one ({last_durable} to the receiver's caller, {acked_to_leader} to the leader)"
    );

    limiter.set(None);
    let out = n.open().await;
    let (send2, _) = spawn_send(out, &leader.store, ID, cfg(LEADER), limiter);
    let inb = n.accept().await;
    let recv2 = spawn_receive(inb, &follower, c.clone(), &IncomingSlots::new(2), None);
    let report = send2.await.unwrap().unwrap();
    let got = recv2.await.unwrap().unwrap();
    assert_eq!(report.resumed_from, durable);
    assert_eq!(got.resumed_from, durable);
    assert_eq!(report.bytes_sent, file_len - durable);
    let rewritten = written_before_crash.saturating_sub(durable);
    assert!(
        rewritten <= c.sync_every_bytes + u64::from(c.chunk_bytes),
        "{rewritten} bytes the follower had written were sent again (durable {durable}, written {written_before_crash}); bound is sync_every_bytes + chunk_bytes"
    );
    let received = fs.read_file(&got.info.path).unwrap();
    assert_eq!(received, file_bytes(&leader.info.path));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunks_on_the_wire_are_rejected_and_resent_never_written() {
    let mut n = net();
    let leader = leader_with(3, 4 << 20);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let mut lc = cfg(LEADER);
    lc.corrupt_chunk_every = NonZeroU32::new(3);

    let out = n.open().await;
    let (send, _) = spawn_send(out, &leader.store, ID, lc, BandwidthLimiter::new(None));
    let inb = n.accept().await;
    let recv = spawn_receive(inb, &follower, cfg(FOLLOWER), &IncomingSlots::new(2), None);
    let report = send.await.unwrap().unwrap();
    let got = recv.await.unwrap().unwrap();
    assert!(
        report.chunks_resent >= 5,
        "16 chunks with every 3rd sent corrupted must need resends: {report:?}"
    );
    assert!(report.bytes_sent > leader.info.file_len);
    assert_eq!(got.bytes_received, leader.info.file_len);
    assert_eq!(file_bytes(&got.info.path), file_bytes(&leader.info.path));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chunk_corrupted_once_still_completes_with_each_resent() {
    let mut n = net();
    let leader = leader_with(4, 1 << 20);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let mut lc = cfg(LEADER);
    lc.corrupt_chunk_every = NonZeroU32::new(1);
    let out = n.open().await;
    let (send, _) = spawn_send(out, &leader.store, ID, lc, BandwidthLimiter::new(None));
    let inb = n.accept().await;
    let recv = spawn_receive(inb, &follower, cfg(FOLLOWER), &IncomingSlots::new(2), None);
    let report = send.await.unwrap().unwrap();
    let got = recv.await.unwrap().unwrap();
    let chunks = leader.info.file_len.div_ceil(256 << 10);
    assert!(report.chunks_resent >= chunks, "{report:?}");
    assert_eq!(file_bytes(&got.info.path), file_bytes(&leader.info.path));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_failing_its_crc_more_than_chunk_retries_max_aborts_the_transfer() {
    let mut n = net();
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let mut out = n.open().await;
    let offer = Offer {
        magic: OFFER_MAGIC,
        version: TRANSFER_PROTOCOL_VERSION_FULL,
        id: ID,
        digest: [3; 32],
        file_len: 1 << 20,
        chunk_bytes: 64 << 10,
        leader_term: 4,
    };
    frame::write_msg(&mut out.send, KIND_OFFER, &offer, CONTROL_FRAME_BYTES_MAX)
        .await
        .unwrap();
    let inb = n.accept().await;
    let recv = spawn_receive(inb, &follower, cfg(FOLLOWER), &IncomingSlots::new(2), None);
    assert_eq!(
        read_reply(&mut out.recv).await.unwrap(),
        Some(Reply::Accept { resume_from: 0 })
    );
    // A leader that keeps sending the same damaged chunk in answer to every rejection.
    let data = vec![0x42u8; 64 << 10];
    let hdr = encode_chunk_header(0, &data);
    let mut bad = data.clone();
    bad[100] ^= 4;
    let mut nacks = 0;
    loop {
        if out.send.write_all(&hdr).await.is_err() || out.send.write_all(&bad).await.is_err() {
            break;
        }
        match read_reply_past_heartbeats(&mut out.recv, 0).await {
            Ok(Some(Reply::Nack { offset: 0 })) => nacks += 1,
            Ok(Some(Reply::Failed { reason })) => {
                assert!(reason.contains("failed its CRC32C 9 times"), "{reason}");
                break;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        nacks, 8,
        "one rejection per damaged copy up to chunk_retries_max"
    );
    let err = recv.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::ChunkRetriesExhausted {
                offset: 0,
                failures: 9,
                retries_max: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(follower.latest().is_none());
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_beyond_the_incoming_limit_is_answered_busy_and_the_cap_is_adjustable() {
    let mut n = net();
    let dir = tempfile::tempdir().unwrap();
    let lstore = open_store(Arc::new(StdFs), dir.path());
    let id_b = SnapshotId {
        last_index: 2000,
        last_term: 3,
    };
    let a = make_snapshot(&lstore, ID, &body(5, 2 << 20));
    let _b = make_snapshot(&lstore, id_b, &body(6, 1 << 20));
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(1);

    // A crawls at 1 MiB/s, holding the only slot.
    let limiter = BandwidthLimiter::new(Some(1 << 20));
    assert_eq!(limiter.get(), Some(1 << 20));
    let out = n.open().await;
    let (send_a, _) = spawn_send(out, &lstore, ID, cfg(LEADER), limiter.clone());
    let (tx, mut durable_rx) = mpsc::unbounded_channel();
    let inb = n.accept().await;
    let recv_a = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, Some(tx));
    durable_rx.recv().await.expect("first durable ack of A");
    assert_eq!(slots.in_flight(), 1);

    let out = n.open().await;
    let (send_b, _) = spawn_send(out, &lstore, id_b, cfg(LEADER), BandwidthLimiter::new(None));
    let inb = n.accept().await;
    let recv_b = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, None);
    let slots_full = BusyReason::SlotsFull {
        in_flight: 1,
        limit: 1,
    };
    assert_eq!(
        send_b.await.unwrap().unwrap().outcome,
        SendOutcome::Busy(slots_full)
    );
    let err = recv_b.await.unwrap().unwrap_err();
    assert!(
        matches!(err, TransferError::Busy { reason, .. } if reason == slots_full),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "all 1 incoming transfer slots are taken by other snapshots (1 arriving; snapshot.incoming_transfers_max = 1)"
        ),
        "{err}"
    );

    // Lift the cap at runtime: A finishes promptly.
    limiter.set(None);
    let report = tokio::time::timeout(Duration::from_secs(20), send_a)
        .await
        .expect("A finishes once the cap is lifted")
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, SendOutcome::Completed);
    let got = recv_a.await.unwrap().unwrap();
    assert_eq!(file_bytes(&got.info.path), file_bytes(&a.path));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_of_another_leaders_different_file_with_the_same_id_restarts_from_zero() {
    let mut n = net();
    // Two leaders took snapshot ID independently: same id, different bytes.
    let old_leader = leader_with(7, 4 << 20);
    let new_leader = leader_with(8, 4 << 20);
    assert_ne!(old_leader.info.digest, new_leader.info.digest);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(2);

    let limiter = BandwidthLimiter::new(Some(4 << 20));
    let out = n.open().await;
    let (send1, _) = spawn_send(out, &old_leader.store, ID, cfg(LEADER), limiter);
    let (tx, mut durable_rx) = mpsc::unbounded_channel();
    let inb = n.accept().await;
    let recv1 = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, Some(tx));
    durable_rx
        .recv()
        .await
        .expect("a durable prefix of the old leader's file");
    recv1.abort();
    let _ = send1.await;
    wait_until("the aborted transfer closed its spool file", || {
        slots.in_flight() == 0
    })
    .await;

    let none = BandwidthLimiter::new(None);
    let (report, got) = transfer_between(
        &mut n,
        &new_leader.store,
        ID,
        cfg(LEADER),
        none,
        &follower,
        cfg(FOLLOWER),
        &slots,
    )
    .await;
    let (report, got) = (report.unwrap(), got.unwrap());
    assert_eq!(
        report.resumed_from, 0,
        "a prefix of another file must not be resumed"
    );
    assert_eq!(got.info.digest, new_leader.info.digest);
    assert_eq!(
        file_bytes(&got.info.path),
        file_bytes(&new_leader.info.path)
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_that_stops_reading_trips_the_senders_progress_timeout() {
    // Small windows so flow control blocks the sender quickly.
    let mut n = net_with(256 << 10);
    let leader = leader_with(9, 4 << 20);
    let out = n.open().await;
    let mut lc = cfg(LEADER);
    lc.progress_timeout_ms = 300;
    lc.chunk_bytes = 64 << 10;
    let (send, _) = spawn_send(out, &leader.store, ID, lc, BandwidthLimiter::new(None));
    // A follower that accepts and then never reads.
    let mut inb = n.accept().await;
    let f = frame::read_frame(&mut inb.recv, CONTROL_FRAME_BYTES_MAX)
        .await
        .unwrap()
        .unwrap();
    let offer: Offer = f.decode().unwrap();
    assert_eq!(offer.file_len, leader.info.file_len);
    send_reply(&mut inb.send, &Reply::Accept { resume_from: 0 })
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), send)
        .await
        .expect("the watchdog fires")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::ProgressTimeout {
                timeout_ms: 300,
                offset,
                ..
            } if offset > 0 && offset < leader.info.file_len
        ),
        "{err}"
    );
    drop(inb);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_that_stalls_after_the_offer_trips_the_receivers_progress_timeout() {
    let mut n = net();
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(2);
    let mut out = n.t1.open_bulk(FOLLOWER).await.unwrap();
    let offer = Offer {
        magic: OFFER_MAGIC,
        version: TRANSFER_PROTOCOL_VERSION_FULL,
        id: ID,
        digest: [9; 32],
        file_len: 1 << 20,
        chunk_bytes: 64 << 10,
        leader_term: 4,
    };
    frame::write_msg(&mut out.send, KIND_OFFER, &offer, CONTROL_FRAME_BYTES_MAX)
        .await
        .unwrap();
    let inb = n.bulk2.recv().await.unwrap();
    let mut c = cfg(FOLLOWER);
    c.progress_timeout_ms = 300;
    let recv = spawn_receive(inb, &follower, c, &slots, None);
    assert_eq!(
        read_reply(&mut out.recv).await.unwrap(),
        Some(Reply::Accept { resume_from: 0 })
    );
    let err = recv.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::ProgressTimeout {
                timeout_ms: 300,
                offset: 0,
                ..
            }
        ),
        "{err}"
    );
    // The leader is told why.
    assert!(matches!(
        read_reply_past_heartbeats(&mut out.recv, 0).await.unwrap(),
        Some(Reply::Failed { reason }) if reason.contains("no progress for 300 ms")
    ));
    wait_until("the slot is released", || slots.in_flight() == 0).await;
    n.shutdown().await;
}

mod dead_receiver;
mod delta;
mod malformed;
mod members;
mod takeover;
