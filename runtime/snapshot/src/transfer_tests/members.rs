//! Multi-source catch-up: a follower reads parts of the offered file from other members that
//! hold it, checks each part against the leader's manifest, and leaves out a member that fails.

use std::sync::Mutex;

use super::*;
use crate::SnapshotPeers;
use crate::format::FrameKind;
use crate::manifest::SegmentCache;
use crate::peers::{PeerHeld, PeerRead, SegmentIndex};
use crate::receive::receive_snapshot_from;

const FRAME_PAYLOAD: usize = 64 << 10;

/// A body of `n` guest-chunk frames of random bytes.
fn framed(n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for seed in 0..n {
        let p = body(seed, FRAME_PAYLOAD);
        b.push(FrameKind::MachineChunk as u8);
        b.extend_from_slice(&(p.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
        b.extend_from_slice(&p);
    }
    b
}

/// How a fake member answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Reads from its store, as a real member does.
    Honest,
    /// Flips a byte of every segment it sends.
    Corrupting,
    /// Says which segments it holds, then never answers a read.
    Silent,
}

/// Members backed by snapshot stores in this process.
struct Fake {
    members: Vec<(NodeId, SnapshotStore, Behaviour)>,
    distrusted: Mutex<Vec<NodeId>>,
}

impl SnapshotPeers for Fake {
    fn candidates(&self, leader: NodeId) -> Vec<NodeId> {
        let out = self.distrusted.lock().unwrap();
        self.members
            .iter()
            .map(|m| m.0)
            .filter(|&id| id != leader && !out.contains(&id))
            .collect()
    }

    fn held(&self, peer: NodeId, hashes: Vec<[u8; 32]>) -> PeerHeld {
        let m = self.members.iter().find(|m| m.0 == peer).cloned();
        Box::pin(async move {
            let (_, store, _) = m.ok_or("no such member")?;
            Ok(SegmentIndex::new(SegmentCache::default()).held(&store, &hashes))
        })
    }

    fn read(&self, peer: NodeId, hash: [u8; 32], len: u32) -> PeerRead {
        let m = self.members.iter().find(|m| m.0 == peer).cloned();
        Box::pin(async move {
            let (_, store, behaviour) = m.ok_or("no such member")?;
            if behaviour == Behaviour::Silent {
                std::future::pending::<()>().await;
            }
            let mut data = SegmentIndex::new(SegmentCache::default())
                .read(&store, hash, len)?
                .ok_or("not held")?;
            if behaviour == Behaviour::Corrupting {
                data[0] ^= 1;
            }
            Ok(data)
        })
    }

    fn distrust(&self, peer: NodeId, _why: &str) {
        self.distrusted.lock().unwrap().push(peer);
    }
}

/// A leader holding a `frames`-frame snapshot, members holding the same file (written the same
/// way, as replicas do), and an empty follower.
struct Cluster {
    leader: Leader,
    _dirs: Vec<tempfile::TempDir>,
    follower: SnapshotStore,
    /// The follower's slots, shared by its transfers as a node's are (a re-offer waits for the
    /// previous stream to close the partial file).
    slots: IncomingSlots,
    peers: Arc<Fake>,
}

fn cluster(frames: u64, members: &[(NodeId, Behaviour)]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(Arc::new(StdFs), dir.path());
    let body = framed(frames);
    let info = make_snapshot(&store, ID, &body);
    let mut dirs = Vec::new();
    let mut fake = Vec::new();
    for &(id, behaviour) in members {
        let d = tempfile::tempdir().unwrap();
        let s = open_store(Arc::new(StdFs), d.path());
        assert_eq!(make_snapshot(&s, ID, &body).digest, info.digest);
        fake.push((id, s, behaviour));
        dirs.push(d);
    }
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    dirs.push(fdir);
    Cluster {
        leader: Leader {
            _dir: dir,
            store,
            info,
        },
        _dirs: dirs,
        follower,
        slots: IncomingSlots::new(2),
        peers: Arc::new(Fake {
            members: fake,
            distrusted: Mutex::new(Vec::new()),
        }),
    }
}

async fn transfer(
    n: &mut Net,
    c: &Cluster,
) -> (
    Result<SendReport, TransferError>,
    Result<Received, TransferError>,
) {
    let out = n.open().await;
    let (send, _) = spawn_send(
        out,
        &c.leader.store,
        ID,
        cfg(LEADER),
        BandwidthLimiter::new(None),
    );
    let inb = n.accept().await;
    let (store, peers, slots) = (c.follower.clone(), c.peers.clone(), c.slots.clone());
    let recv = tokio::spawn(async move {
        let peers: Arc<dyn SnapshotPeers> = peers;
        receive_snapshot_from(inb, &store, &cfg(FOLLOWER), &slots, Some(peers), |_| {}).await
    });
    (send.await.unwrap(), recv.await.unwrap())
}

const M1: NodeId = 21;
const M2: NodeId = 22;

/// An empty follower with two members holding the snapshot takes about a third of the file from
/// the leader and a third from each member, and ends with the leader's exact bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_follower_takes_a_third_from_the_leader_and_the_rest_from_two_members() {
    let mut n = net();
    let c = cluster(200, &[(M1, Behaviour::Honest), (M2, Behaviour::Honest)]);
    let (report, got) = transfer(&mut n, &c).await;
    let (report, got) = (report.unwrap(), got.unwrap());
    assert_eq!(report.outcome, SendOutcome::Completed);
    let file_len = c.leader.info.file_len;
    assert_eq!(file_bytes(&got.info.path), file_bytes(&c.leader.info.path));
    let members: u64 = got.bytes_from_members.iter().map(|m| m.1).sum();
    assert_eq!(got.bytes_received + members, file_len);
    assert_eq!(report.bytes_sent, got.bytes_received);
    let ids: Vec<NodeId> = got.bytes_from_members.iter().map(|m| m.0).collect();
    assert_eq!(ids.len(), 2, "{:?}", got.bytes_from_members);
    assert!(ids.contains(&M1) && ids.contains(&M2));
    for (id, b) in &got.bytes_from_members {
        assert!(
            b * 4 > file_len && b * 2 < file_len,
            "node {id}: {b} of {file_len}"
        );
    }
    assert!(
        report.bytes_sent * 2 < file_len,
        "leader sent {} of {file_len}",
        report.bytes_sent
    );
    assert!(c.peers.distrusted.lock().unwrap().is_empty());
    n.shutdown().await;
}

/// A member that sends wrong bytes is caught by the manifest's hashes, distrusted, and its parts
/// read from the other member; the file is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_wrong_bytes_is_caught_left_out_and_its_parts_read_elsewhere() {
    let mut n = net();
    let c = cluster(120, &[(M1, Behaviour::Honest), (M2, Behaviour::Corrupting)]);
    let (report, got) = transfer(&mut n, &c).await;
    let (report, got) = (report.unwrap(), got.unwrap());
    assert_eq!(report.outcome, SendOutcome::Completed);
    assert_eq!(file_bytes(&got.info.path), file_bytes(&c.leader.info.path));
    assert_eq!(*c.peers.distrusted.lock().unwrap(), vec![M2]);
    let from: Vec<(NodeId, u64)> = got.bytes_from_members.clone();
    assert!(from.iter().all(|m| m.0 == M1), "{from:?}");
    let file_len = c.leader.info.file_len;
    assert_eq!(
        got.bytes_received + from.iter().map(|m| m.1).sum::<u64>(),
        file_len
    );
    n.shutdown().await;
}

/// With every member sending wrong bytes the transfer fails naming them, keeps its durable
/// prefix, and the next one (the members now left out) completes from the leader alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_member_sending_right_bytes_the_transfer_fails_and_the_next_goes_without_them() {
    let mut n = net();
    let c = cluster(120, &[(M1, Behaviour::Corrupting)]);
    let (_, got) = transfer(&mut n, &c).await;
    let e = got.unwrap_err();
    assert!(matches!(e, TransferError::PeerSource { .. }), "{e}");
    assert!(e.to_string().contains("BLAKE3"), "{e}");
    assert!(e.to_string().contains("node 21"), "{e}");
    assert_eq!(*c.peers.distrusted.lock().unwrap(), vec![M1]);
    let (report, got) = transfer(&mut n, &c).await;
    let (report, got) = match (report, got) {
        (Ok(r), Ok(g)) => (r, g),
        (r, g) => panic!("second transfer: sent {r:?}, received {g:?}"),
    };
    assert_eq!(report.outcome, SendOutcome::Completed);
    assert!(got.bytes_from_members.is_empty());
    assert_eq!(file_bytes(&got.info.path), file_bytes(&c.leader.info.path));
    n.shutdown().await;
}

/// A member that says it holds segments and then never sends them costs one read timeout (half
/// the progress timeout): it is left out, its segments come from the other member, and the
/// transfer completes before either side's watchdog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_answers_is_timed_out_left_out_and_its_parts_read_elsewhere() {
    let mut n = net();
    let c = cluster(120, &[(M1, Behaviour::Silent), (M2, Behaviour::Honest)]);
    let started = std::time::Instant::now();
    let (report, got) = transfer(&mut n, &c).await;
    let (report, got) = (report.unwrap(), got.unwrap());
    assert_eq!(report.outcome, SendOutcome::Completed);
    assert_eq!(file_bytes(&got.info.path), file_bytes(&c.leader.info.path));
    assert_eq!(*c.peers.distrusted.lock().unwrap(), vec![M1]);
    assert!(got.bytes_from_members.iter().all(|m| m.0 == M2));
    assert!(!got.bytes_from_members.is_empty());
    let timeout = Duration::from_millis(cfg(FOLLOWER).progress_timeout_ms / 2);
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    n.shutdown().await;
}
