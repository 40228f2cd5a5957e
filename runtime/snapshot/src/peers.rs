//! Multi-source catch-up: the other members a follower reads parts of an offered snapshot from,
//! next to the leader's stream.
//!
//! Segments are named by their BLAKE3 ([`crate::manifest`]), and unchanged machine state is the
//! same segments in every snapshot of every replica, whatever its index. So once the follower
//! has the leader's manifest and knows what it lacks, it asks the other members which of those
//! segments they hold ([`SnapshotPeers::held`]: one request each, all at once; a member answers
//! from an index of its own snapshots, [`SegmentIndex`]), spreads the segments to fetch over
//! the leader and those members ([`crate::manifest::spread_fetches`]), and asks the leader only
//! for its share. The members' segments are read ahead of the disk thread ([`PeerReads`], a
//! bounded number of bytes in flight) and each is checked against the manifest's BLAKE3 before
//! it is written. A member that fails or sends wrong bytes is reported
//! ([`SnapshotPeers::distrust`]) and the segment is read from another member holding it; with
//! none left the transfer fails, and the next one (resuming from the durable offset) goes without
//! that member.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use wraft_storage::SnapshotStore;
use wraft_transport::NodeId;

use crate::TransferError;
use crate::manifest::{Fill, SegmentCache};

/// One read from a member: the bytes, or why not.
pub type PeerRead = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;
/// A member's answer to which segments it holds: one flag per hash asked, or why not.
pub type PeerHeld = Pin<Box<dyn Future<Output = Result<Vec<bool>, String>> + Send>>;

/// The members a follower may read snapshot segments from, and how (the node implements it over
/// its client API; tests over other stores).
pub trait SnapshotPeers: Send + Sync + 'static {
    /// Members to ask, for a snapshot the leader `leader` offers: not this node, not the leader,
    /// none recently distrusted.
    fn candidates(&self, leader: NodeId) -> Vec<NodeId>;
    /// Which of `hashes` member `peer` holds (one flag each, in order).
    fn held(&self, peer: NodeId, hashes: Vec<[u8; 32]>) -> PeerHeld;
    /// The `len` bytes of the segment with BLAKE3 `hash`, from member `peer`.
    fn read(&self, peer: NodeId, hash: [u8; 32], len: u32) -> PeerRead;
    /// `peer` could not send a segment it said it holds, or sent wrong bytes: leave it out of
    /// the next transfers for a while.
    fn distrust(&self, peer: NodeId, why: &str);
}

/// Serving side: this node's complete snapshots indexed by segment, for the members' questions
/// ([`SnapshotPeers::held`], [`SnapshotPeers::read`]). The index (which snapshot holds each
/// segment, and where) is rebuilt only when the list of snapshots changed, from the per-file
/// segment lists of the node's [`SegmentCache`] (each file hashed once). It holds no reader, so
/// it never keeps retention from deleting a snapshot: a read opens (and pins) the snapshot for
/// the one segment. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct SegmentIndex {
    cache: SegmentCache,
    built: Arc<std::sync::Mutex<Option<Arc<Built>>>>,
}

/// One build of a [`SegmentIndex`].
struct Built {
    /// The store's snapshots when it was built (a snapshot that could not be indexed is listed
    /// here but not below, so it is not retried at every request).
    listed: Vec<(wraft_storage::SnapshotId, [u8; 32])>,
    /// The snapshots indexed, as listed then (id and digest).
    snapshots: Vec<(wraft_storage::SnapshotId, [u8; 32])>,
    /// Segment → (position in `snapshots`, offset, length).
    by_hash: std::collections::HashMap<[u8; 32], (usize, u64, u32)>,
}

impl SegmentIndex {
    /// An index over the per-file segment lists kept in `cache` (the node's transfers share it).
    pub fn new(cache: SegmentCache) -> Self {
        SegmentIndex {
            cache,
            built: Arc::default(),
        }
    }

    /// The index for `store`'s snapshots now: the last one if the list is unchanged. Blocking
    /// (hashes a file the cache does not know yet).
    fn current(&self, store: &SnapshotStore) -> Arc<Built> {
        let listed: Vec<(wraft_storage::SnapshotId, [u8; 32])> =
            store.list().iter().map(|i| (i.id(), i.digest)).collect();
        let mut slot = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = slot.as_ref()
            && b.listed == listed
        {
            return b.clone();
        }
        let mut built = Built {
            listed,
            snapshots: Vec::new(),
            by_hash: std::collections::HashMap::new(),
        };
        for info in store.list() {
            let Ok(reader) = store.open_reader(info.id()) else {
                continue; // retired meanwhile
            };
            let mut read_at = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
                match reader.read_file_at(at, buf) {
                    Ok(n) if n == buf.len() => Ok(()),
                    Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                }
            };
            let segments = match self.cache.get_or_compute(info.digest, || {
                crate::manifest::segments_of(info.file_len, &mut read_at)
            }) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target: crate::metrics::LOG, id = %info.id(), error = %e,
                        "cannot index a snapshot's segments for the members; not serving from it");
                    continue;
                }
            };
            let n = built.snapshots.len();
            built.snapshots.push((info.id(), info.digest));
            for seg in segments.iter() {
                built
                    .by_hash
                    .entry(seg.hash)
                    .or_insert((n, seg.offset, seg.len));
            }
        }
        let built = Arc::new(built);
        *slot = Some(built.clone());
        built
    }

    /// Which of `hashes` this node's snapshots hold. Blocking.
    pub fn held(&self, store: &SnapshotStore, hashes: &[[u8; 32]]) -> Vec<bool> {
        let built = self.current(store);
        hashes
            .iter()
            .map(|h| built.by_hash.contains_key(h))
            .collect()
    }

    /// The bytes of the segment with BLAKE3 `hash` (`len` bytes), checked against the hash (a
    /// rotted copy is not sent); `Ok(None)` if no snapshot here holds it (any more). Blocking:
    /// one read.
    pub fn read(
        &self,
        store: &SnapshotStore,
        hash: [u8; 32],
        len: u32,
    ) -> Result<Option<Vec<u8>>, String> {
        for attempt in 0..2 {
            let built = self.current(store);
            let Some(&(n, offset, seg_len)) = built.by_hash.get(&hash) else {
                return Ok(None);
            };
            if seg_len != len {
                return Err(format!(
                    "the segment with that hash is {seg_len} bytes here, not {len}"
                ));
            }
            let reader = match store.open_reader(built.snapshots[n].0) {
                Ok(r) => r,
                Err(_) if attempt == 0 => {
                    // Retired since the index was built: build it again.
                    *self.built.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            let mut buf = vec![0u8; len as usize];
            match reader.read_file_at(offset, &mut buf) {
                Ok(got) if got == buf.len() => {}
                Ok(got) => return Err(format!("read {got} of {len} bytes at offset {offset}")),
                Err(e) => return Err(e.to_string()),
            }
            if *blake3::hash(&buf).as_bytes() != hash {
                return Err(format!(
                    "this node's copy of the segment at offset {offset} of snapshot {} does not match its hash",
                    built.snapshots[n].0
                ));
            }
            return Ok(Some(buf));
        }
        Ok(None)
    }
}

/// Ask every candidate at once which of `hashes` it holds, within `timeout`: the members that
/// hold any, with what they hold (a member that fails or answers badly holds nothing).
pub(crate) async fn ask_held(
    peers: &Arc<dyn SnapshotPeers>,
    candidates: &[NodeId],
    hashes: &[[u8; 32]],
    timeout: Duration,
) -> Vec<(NodeId, HashSet<[u8; 32]>)> {
    let asks: Vec<_> = candidates
        .iter()
        .map(|&p| {
            let ask = peers.held(p, hashes.to_vec());
            tokio::spawn(async move { (p, tokio::time::timeout(timeout, ask).await) })
        })
        .collect();
    let mut found = Vec::new();
    for a in asks {
        let Ok((p, answer)) = a.await else { continue };
        match answer {
            Ok(Ok(flags)) if flags.len() == hashes.len() => {
                let held: HashSet<[u8; 32]> = hashes
                    .iter()
                    .zip(flags)
                    .filter_map(|(h, f)| f.then_some(*h))
                    .collect();
                if !held.is_empty() {
                    found.push((p, held));
                }
            }
            Ok(Ok(flags)) => {
                tracing::debug!(target: crate::metrics::LOG, peer = p, asked = hashes.len(), answered = flags.len(),
                    "a member answered for another number of segments; not reading from it")
            }
            Ok(Err(e)) => {
                tracing::debug!(target: crate::metrics::LOG, peer = p, error = %e, "a member could not say which segments it holds")
            }
            Err(_) => {
                tracing::debug!(target: crate::metrics::LOG, peer = p, timeout_ms = timeout.as_millis() as u64,
                    "a member did not say in time which segments it holds")
            }
        }
    }
    found
}

/// Most member reads in flight at once (besides the bytes bound): a segment is often a few
/// tens of KiB, and each read is a request the member serves.
const READS_IN_FLIGHT_MAX: usize = 8;

/// A read running on its own task.
type Reading = tokio::task::JoinHandle<Result<Vec<u8>, String>>;

/// One segment to read from a member.
#[derive(Clone, Copy)]
struct Wanted {
    at: u64,
    len: u32,
    hash: [u8; 32],
    /// Position in `PeerReads::holders` of the member asked first.
    peer: usize,
}

/// The [`Fill::Peer`] segments of a transfer, read ahead of the disk thread: reads run as tasks
/// of their own, at most `window_bytes` of them at once, and are taken in file order.
pub(crate) struct PeerReads {
    peers: Arc<dyn SnapshotPeers>,
    /// The members read from, with the segments each said it holds.
    holders: Vec<(NodeId, HashSet<[u8; 32]>)>,
    id: wraft_storage::SnapshotId,
    /// The sender (errors).
    leader: NodeId,
    waiting: VecDeque<Wanted>,
    running: VecDeque<(Wanted, Reading)>,
    window_bytes: u64,
    in_flight: u64,
    timeout: Duration,
    /// Members (by position) that failed in this transfer: not asked again.
    bad: HashSet<usize>,
}

impl PeerReads {
    /// Start reading the `Fill::Peer` segments of `fills` (members by position in `holders`).
    pub(crate) fn new(
        peers: Arc<dyn SnapshotPeers>,
        holders: Vec<(NodeId, HashSet<[u8; 32]>)>,
        id: wraft_storage::SnapshotId,
        leader: NodeId,
        fills: &[Fill],
        window_bytes: u64,
        timeout: Duration,
    ) -> Self {
        let waiting = fills
            .iter()
            .filter_map(|f| match *f {
                Fill::Peer {
                    at,
                    len,
                    hash,
                    peer,
                } => Some(Wanted {
                    at,
                    len,
                    hash,
                    peer,
                }),
                Fill::Copy { .. } | Fill::Fetch { .. } => None,
            })
            .collect();
        let mut reads = PeerReads {
            peers,
            holders,
            id,
            leader,
            waiting,
            running: VecDeque::new(),
            window_bytes,
            in_flight: 0,
            timeout,
            bad: HashSet::new(),
        };
        reads.refill();
        reads
    }

    /// Member `i`'s id.
    pub(crate) fn member(&self, i: usize) -> NodeId {
        self.holders[i].0
    }

    fn refill(&mut self) {
        while let Some(w) = self.waiting.front().copied() {
            if !self.running.is_empty()
                && (self.in_flight + u64::from(w.len) > self.window_bytes
                    || self.running.len() >= READS_IN_FLIGHT_MAX)
            {
                return;
            }
            self.waiting.pop_front();
            self.in_flight += u64::from(w.len);
            // A member that failed earlier in this transfer is not asked; another that holds
            // the segment is (with none, `take` reports it).
            let task = match self.good_holder(&w, None) {
                Some(peer) => {
                    let w = Wanted { peer, ..w };
                    let read =
                        checked_read(self.peers.clone(), self.holders[peer].0, w, self.timeout);
                    (w, tokio::spawn(read))
                }
                // Every member holding it failed earlier: `take` reports it.
                None => (
                    w,
                    tokio::spawn(async { Err("every member holding it failed".to_string()) }),
                ),
            };
            self.running.push_back(task);
        }
    }

    /// The checked bytes of the segment at `at` (the next one in file order), and the member
    /// (by position) that sent them. A member that fails is distrusted and the others that hold
    /// the segment are asked in turn.
    pub(crate) async fn take(&mut self, at: u64) -> Result<(usize, Vec<u8>), TransferError> {
        let Some((w, task)) = self.running.pop_front() else {
            return Err(self.failed(at, "no read was started for it".into()));
        };
        if w.at != at {
            return Err(self.failed(at, format!("the next read is for offset {}", w.at)));
        }
        self.in_flight -= u64::from(w.len);
        let mut why = Vec::new();
        let mut result = None;
        if self.bad.contains(&w.peer) {
            // Read before that member failed: its bytes are not taken.
            task.abort();
            why.push(format!(
                "node {}: failed earlier in this transfer",
                self.holders[w.peer].0
            ));
        } else {
            match task
                .await
                .unwrap_or_else(|e| Err(format!("read task: {e}")))
            {
                Ok(data) => result = Some((w.peer, data)),
                Err(e) => {
                    self.distrust(w.peer, &e);
                    why.push(format!("node {}: {e}", self.holders[w.peer].0));
                }
            }
        }
        let mut tried = w.peer;
        while result.is_none() {
            let Some(other) = self.good_holder(&w, Some(tried)) else {
                break;
            };
            tried = other;
            let read = checked_read(self.peers.clone(), self.holders[other].0, w, self.timeout);
            match read.await {
                Ok(data) => result = Some((other, data)),
                Err(e) => {
                    self.distrust(other, &e);
                    why.push(format!("node {}: {e}", self.holders[other].0));
                }
            }
        }
        self.refill();
        result.ok_or_else(|| self.failed(at, why.join("; ")))
    }

    /// A member (by position) that holds `w`'s segment and has not failed in this transfer:
    /// `w`'s own if it qualifies and is not `after`, else the next one after `after`'s position.
    fn good_holder(&self, w: &Wanted, after: Option<usize>) -> Option<usize> {
        let n = self.holders.len();
        let start = after.map_or(w.peer, |a| a + 1);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&p| Some(p) != after)
            .find(|&p| !self.bad.contains(&p) && self.holders[p].1.contains(&w.hash))
    }

    /// Leave member `p` out of this transfer, and tell the node (once).
    fn distrust(&mut self, p: usize, why: &str) {
        if !self.bad.insert(p) {
            return;
        }
        let peer = self.holders[p].0;
        tracing::warn!(target: crate::metrics::LOG, id = %self.id, peer, error = why,
            "a member could not send a segment of a snapshot it said it holds; asking the others");
        self.peers.distrust(peer, why);
    }

    fn failed(&self, offset: u64, detail: String) -> TransferError {
        TransferError::PeerSource {
            leader: self.leader,
            id: self.id,
            offset,
            detail,
        }
    }
}

impl Drop for PeerReads {
    /// Reads started ahead of a transfer that ended (an error, a takeover) stop with it.
    fn drop(&mut self) {
        for (_, task) in &self.running {
            task.abort();
        }
    }
}

/// Read segment `w` from `peer` and check its length and BLAKE3.
async fn checked_read(
    peers: Arc<dyn SnapshotPeers>,
    peer: NodeId,
    w: Wanted,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let data = tokio::time::timeout(timeout, peers.read(peer, w.hash, w.len))
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))??;
    if data.len() != w.len as usize {
        return Err(format!(
            "sent {} bytes for the segment at offset {} of {} bytes",
            data.len(),
            w.at,
            w.len
        ));
    }
    if *blake3::hash(&data).as_bytes() != w.hash {
        return Err(format!(
            "sent bytes for the segment at offset {} ({} bytes) whose BLAKE3 is not the manifest's",
            w.at, w.len
        ));
    }
    Ok(data)
}
