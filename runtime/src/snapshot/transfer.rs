//! InstallSnapshot over QUIC: moving a snapshot file from a leader to a follower.
//!
//! STATUS: public API committed first so the node can be wired against it; the
//! bodies of [`send_snapshot`] and [`receive_snapshot`] are NOT DONE yet (`todo!()`).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use wraft_storage::{SnapshotId, SnapshotInfo, SnapshotStore, StorageError};
use wraft_transport::frame::FrameError;
use wraft_transport::{BulkStream, NodeId};

/// Environment variable read by [`TransferConfig::with_test_faults_from_env`]: corrupt every
/// N-th outgoing chunk on the wire (testing only; see [`TransferConfig::corrupt_chunk_every`]).
pub const CORRUPT_CHUNK_EVERY_ENV: &str = "WRAFT_TEST_CORRUPT_CHUNK_EVERY";

/// Bounds for snapshot transfers, from the node config's `[snapshot]` section (units in names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferConfig {
    /// This node's id; labels metrics and log lines.
    pub node_id: NodeId,
    /// Sender: payload bytes per chunk (default 1 MiB). Each chunk carries its own CRC32C.
    pub chunk_bytes: u32,
    /// Receiver: largest chunk it accepts in an offer (default 16 MiB); bounds its memory per chunk.
    pub chunk_bytes_max: u32,
    /// Receiver: `fdatasync` the spool file and acknowledge the durable offset every this many
    /// received bytes (default 8 MiB). The store's own `snapshot_sync_every_bytes` also applies;
    /// the smaller interval wins. A crash loses at most this much received data.
    pub sync_every_bytes: u64,
    /// Either side aborts when nothing moves for this long (default 10 000 ms): no chunk written
    /// to or read from the stream, no acknowledgement, no verification heartbeat. There is no
    /// per-chunk or per-snapshot deadline.
    pub progress_timeout_ms: u64,
    /// Receiver: concurrent incoming transfers; an offer beyond this is answered `Busy`
    /// (default 2).
    pub max_incoming_transfers: usize,
    /// Receiver: verified chunks queued between the network and the disk writer (default 4).
    /// Bounds the receiver's memory to about `(receive_queue_chunks + 1) * chunk_bytes`; when
    /// full, the receiver stops reading and QUIC flow control slows the sender.
    pub receive_queue_chunks: usize,
    /// Receiver: rejections (checksum failures) of the same chunk before the transfer is
    /// abandoned (default 8).
    pub chunk_retries_max: u32,
    /// TESTING ONLY — wire fault injection on the sending side: flip one bit in the payload of
    /// every N-th chunk sent (counting resends) *after* its CRC32C was computed, so the receiver
    /// must detect, reject and get it re-sent. `None` (the default) in production. With `N = 1`
    /// every chunk is corrupt and the transfer fails after `chunk_retries_max` rejections.
    pub corrupt_chunk_every: Option<NonZeroU32>,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            node_id: 0,
            chunk_bytes: 1 << 20,
            chunk_bytes_max: 16 << 20,
            sync_every_bytes: 8 << 20,
            progress_timeout_ms: 10_000,
            max_incoming_transfers: 2,
            receive_queue_chunks: 4,
            chunk_retries_max: 8,
            corrupt_chunk_every: None,
        }
    }
}

impl TransferConfig {
    /// Check every bound; the error names the offending key.
    pub fn validate(&self) -> Result<(), TransferError> {
        let bad = |key: &'static str, msg: String| Err(TransferError::Config { key, msg });
        if self.chunk_bytes == 0 || self.chunk_bytes > self.chunk_bytes_max {
            return bad(
                "chunk_bytes",
                format!(
                    "must be in 1..=chunk_bytes_max ({}), found {}",
                    self.chunk_bytes_max, self.chunk_bytes
                ),
            );
        }
        if self.sync_every_bytes == 0 {
            return bad("sync_every_bytes", "must be > 0".into());
        }
        if self.progress_timeout_ms == 0 {
            return bad("progress_timeout_ms", "must be > 0".into());
        }
        if self.max_incoming_transfers == 0 {
            return bad("max_incoming_transfers", "must be > 0".into());
        }
        if self.receive_queue_chunks == 0 {
            return bad("receive_queue_chunks", "must be > 0".into());
        }
        Ok(())
    }

    /// Set [`TransferConfig::corrupt_chunk_every`] from the environment variable
    /// [`CORRUPT_CHUNK_EVERY_ENV`] if it holds a positive integer (end-to-end fault tests).
    pub fn with_test_faults_from_env(mut self) -> Self {
        if let Some(n) = std::env::var(CORRUPT_CHUNK_EVERY_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<NonZeroU32>().ok())
        {
            self.corrupt_chunk_every = Some(n);
        }
        self
    }
}

/// Runtime-adjustable send-side bandwidth cap shared by all outgoing transfers of a node
/// (a `governor` GCRA limiter). Cheap to clone; clones share the cap.
#[derive(Debug, Clone)]
pub struct BandwidthLimiter {
    inner: Arc<RwLock<Option<Arc<Cap>>>>,
}

#[derive(Debug)]
struct Cap {
    bytes_per_sec: u64,
    burst_cells: NonZeroU32,
    limiter: governor::DefaultDirectRateLimiter,
}

/// Bytes per limiter cell: the limiter counts KiB so that rates up to 4 TiB/s fit its `u32`.
const CELL_BYTES: u64 = 1024;

impl BandwidthLimiter {
    /// A limiter capping the summed rate of all transfers at `bytes_per_sec` (`None`: no cap).
    /// Rates below 1 KiB/s are raised to 1 KiB/s.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        let l = BandwidthLimiter {
            inner: Arc::new(RwLock::new(None)),
        };
        l.set(bytes_per_sec);
        l
    }

    /// Change the cap; takes effect from the next chunk of every running transfer.
    pub fn set(&self, bytes_per_sec: Option<u64>) {
        let cap = bytes_per_sec.map(|bps| {
            let kib = (bps / CELL_BYTES).clamp(1, u64::from(u32::MAX)) as u32;
            // Allow 50 ms worth of burst (at least 64 KiB) so pacing is smooth.
            let burst = (kib / 20).max(64).min(kib.max(64));
            let per_sec = NonZeroU32::new(kib).unwrap_or(NonZeroU32::MIN);
            let burst_cells = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Arc::new(Cap {
                bytes_per_sec: u64::from(kib) * CELL_BYTES,
                burst_cells,
                limiter: governor::RateLimiter::direct(
                    governor::Quota::per_second(per_sec).allow_burst(burst_cells),
                ),
            })
        });
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = cap;
    }

    /// The current cap in bytes per second, if any.
    pub fn get(&self) -> Option<u64> {
        self.current().map(|c| c.bytes_per_sec)
    }

    fn current(&self) -> Option<Arc<Cap>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until `bytes` may be sent under the current cap (returns at once without a cap).
    pub async fn acquire(&self, bytes: u64) {
        let Some(cap) = self.current() else { return };
        let mut cells = bytes.div_ceil(CELL_BYTES);
        while cells > 0 {
            let n = cells.min(u64::from(cap.burst_cells.get())) as u32;
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            // `n <= burst`, so capacity is never insufficient.
            let _ = cap.limiter.until_n_ready(n).await;
            cells -= u64::from(n.get());
        }
    }
}

/// Counts a follower's concurrent incoming transfers (at most one per snapshot id); an offer
/// beyond the limit is answered `Busy`. Cheap to clone; clones share the count.
#[derive(Debug, Clone)]
pub struct IncomingSlots {
    inner: Arc<Mutex<SlotState>>,
}

#[derive(Debug)]
struct SlotState {
    limit: usize,
    ids: Vec<SnapshotId>,
}

impl IncomingSlots {
    /// Allow `limit` concurrent incoming transfers (`TransferConfig::max_incoming_transfers`).
    pub fn new(limit: usize) -> Self {
        IncomingSlots {
            inner: Arc::new(Mutex::new(SlotState {
                limit: limit.max(1),
                ids: Vec::new(),
            })),
        }
    }

    /// Transfers currently holding a slot (a slot is released once the transfer's spool file
    /// is closed, slightly after `receive_snapshot` returns).
    pub fn in_flight(&self) -> usize {
        self.lock().ids.len()
    }

    /// The limit given to [`IncomingSlots::new`].
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How an offer ended, seen from the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// The follower has the whole file durably, verified and published.
    Completed,
    /// The follower is at its limit of concurrent incoming transfers (or is already receiving
    /// this snapshot on another stream); re-offer later with backoff.
    Busy,
    /// The follower already holds this snapshot complete; nothing was sent.
    AlreadyHave,
}

/// What [`send_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// How the offer ended.
    pub outcome: SendOutcome,
    /// Offset the follower already held durably (0: from scratch).
    pub resumed_from: u64,
    /// Chunk payload bytes written to the stream, resends included.
    pub bytes_sent: u64,
    /// Chunks sent again after the follower rejected one (go-back to the rejected offset).
    pub chunks_resent: u64,
    /// Wall time from offer to the follower's *received* acknowledgement.
    pub duration: Duration,
}

/// What [`receive_snapshot`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sending node (from its verified certificate).
    pub from: NodeId,
    /// The leader term named in the offer.
    pub leader_term: u64,
    /// The published snapshot (verified, renamed into place).
    pub info: SnapshotInfo,
    /// Offset this transfer resumed from (0: from scratch).
    pub resumed_from: u64,
    /// Chunk payload bytes received and written by this transfer.
    pub bytes_received: u64,
    /// The snapshot was already complete here; nothing was transferred.
    pub already_had: bool,
    /// Wall time from offer to publication.
    pub duration: Duration,
}

/// Why a transfer failed. Every variant names what was expected, what was found and where.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A configuration bound is invalid.
    #[error("snapshot transfer config: {key}: {msg}")]
    Config {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// Local storage failed (opening, reading, writing, syncing or verifying the file).
    #[error("snapshot {id}: storage: {source}")]
    Storage {
        /// The snapshot being transferred.
        id: SnapshotId,
        /// The storage error (names the file).
        #[source]
        source: StorageError,
    },
    /// Reading or writing a control frame failed (stream reset, connection lost, bad frame).
    #[error("snapshot transfer with node {peer}: {during}: {source}")]
    Frame {
        /// The other node.
        peer: NodeId,
        /// What this side was doing.
        during: &'static str,
        /// The frame or stream error.
        #[source]
        source: FrameError,
    },
    /// The stream failed while moving chunk data.
    #[error("snapshot transfer with node {peer}: {during} at offset {offset}: {detail}")]
    Stream {
        /// The other node.
        peer: NodeId,
        /// What this side was doing.
        during: &'static str,
        /// File offset reached.
        offset: u64,
        /// The stream error.
        detail: String,
    },
    /// The other side broke the protocol (unexpected or malformed message).
    #[error("snapshot transfer with node {peer}: protocol violation: {detail}")]
    Protocol {
        /// The other node.
        peer: NodeId,
        /// What was expected and what was found.
        detail: String,
    },
    /// The other side closed the stream before the transfer finished.
    #[error("snapshot transfer with node {peer}: peer closed the stream at offset {offset}")]
    PeerClosed {
        /// The other node.
        peer: NodeId,
        /// File offset reached.
        offset: u64,
    },
    /// The follower refused the offer (unsupported version, chunk size over its limit, ...).
    #[error("snapshot {id}: node {peer} rejected the offer: {reason}")]
    Rejected {
        /// The follower.
        peer: NodeId,
        /// The snapshot offered.
        id: SnapshotId,
        /// The follower's reason.
        reason: String,
    },
    /// The follower reported a failure (disk error, digest mismatch at the end).
    #[error("snapshot {id}: node {peer} failed to receive it: {reason}")]
    PeerFailed {
        /// The follower.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// The follower's reason.
        reason: String,
    },
    /// Receiver: every slot is taken (or this snapshot is already arriving on another stream);
    /// the leader was told `Busy`.
    #[error(
        "snapshot {id} offered by node {peer}: busy ({in_flight} incoming transfers, max_incoming_transfers = {limit})"
    )]
    Busy {
        /// The leader.
        peer: NodeId,
        /// The snapshot offered.
        id: SnapshotId,
        /// Transfers in flight.
        in_flight: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing moved for `progress_timeout_ms`.
    #[error(
        "snapshot transfer with node {peer}: no progress for {timeout_ms} ms while {during} (offset {offset})"
    )]
    ProgressTimeout {
        /// The other node.
        peer: NodeId,
        /// What this side was waiting for.
        during: &'static str,
        /// File offset reached.
        offset: u64,
        /// The configured `progress_timeout_ms`.
        timeout_ms: u64,
    },
    /// The same chunk failed its checksum too often.
    #[error(
        "snapshot {id} from node {peer}: chunk at offset {offset} failed its CRC32C {retries} times (chunk_retries_max = {retries})"
    )]
    ChunkRetriesExhausted {
        /// The leader.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// Offset of the chunk.
        offset: u64,
        /// Rejections.
        retries: u32,
    },
    /// The received file's digest is not the one offered.
    #[error(
        "snapshot {id} from node {peer}: digest mismatch: offered {expected}, received {found}"
    )]
    DigestMismatch {
        /// The other node.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// Digest in the offer (hex).
        expected: String,
        /// Digest of the received file (hex).
        found: String,
    },
}

/// Leader side: offer snapshot `id` from `store` on `stream`, learn the follower's durable
/// offset, stream the file from there in CRC32C-checked chunks (re-sending any chunk the
/// follower rejects), report each durable acknowledgement through `on_durable(offset)`, and
/// return once the follower acknowledges the verified, published file.
///
/// The snapshot is pinned (kept by retention) for the duration. Memory: about two chunks.
/// Paced by QUIC flow control and `limiter`. Fails on no progress for
/// `cfg.progress_timeout_ms`, a stream error, or a protocol violation; the follower keeps
/// its durable prefix, so the next offer resumes.
pub async fn send_snapshot(
    stream: BulkStream,
    store: &SnapshotStore,
    id: SnapshotId,
    leader_term: u64,
    cfg: &TransferConfig,
    limiter: &BandwidthLimiter,
    on_durable: impl FnMut(u64) + Send,
) -> Result<SendReport, TransferError> {
    let _ = (stream, store, id, leader_term, cfg, limiter, on_durable);
    todo!("NOT DONE: send_snapshot")
}

/// Follower side: serve one inbound bulk stream carrying a snapshot offer. Answers `Busy`
/// (returning [`TransferError::Busy`]) beyond `slots`, `AlreadyHave` if the snapshot is complete
/// here, otherwise the offset held durably for the same id *and digest* (0 if none); spools to
/// the store's partial file, syncs every `cfg.sync_every_bytes` and only then acknowledges the
/// durable offset (also reported through `on_durable`), verifies the whole-file BLAKE3,
/// publishes atomically and acknowledges *received*.
///
/// Memory: about `(receive_queue_chunks + 1) * chunk` bytes. Disk writes and syncs run on a
/// blocking thread; the caller's task only moves and checks bytes.
pub async fn receive_snapshot(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: &TransferConfig,
    slots: &IncomingSlots,
    on_durable: impl FnMut(u64) + Send,
) -> Result<Received, TransferError> {
    let _ = (stream, store, cfg, slots, on_durable);
    todo!("NOT DONE: receive_snapshot")
}
