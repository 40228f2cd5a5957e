//! InstallSnapshot over QUIC: moving a snapshot file from a leader to a follower, resumably.
//!
//! One transfer is one bidirectional stream on the bulk connection
//! ([`wraft_transport::Transport::open_bulk`] / [`wraft_transport::Inbound::bulk`]), so a
//! snapshot never shares flow control with the raft link.
//!
//! ```text
//! leader                                             follower
//!   Offer{magic,version,id,digest,file_len,chunk_bytes,leader_term} ->
//!                              <- Accept{resume_from} | Busy | AlreadyHave | Reject{reason}
//!   Chunk{offset,len,data_crc,header_crc}+data  ->   (CRC32C checked, queued to the disk thread)
//!   ...                                          <- Durable{offset}   after each fdatasync
//!                                                <- Nack{offset}      chunk failed its CRC32C:
//!   Chunk at offset again, and everything after  ->   go back to it (nothing bad is written)
//!                                                <- Verifying         heartbeats during BLAKE3
//!                                                <- Received{digest}  verified + renamed
//! ```
//!
//! * Control messages are postcard in `wraft_transport::frame` frames (magic, version, CRC32C).
//!   Chunks use their own 24-byte header (magic `WC`, version, offset, length, CRC32C of the data,
//!   CRC32C of the header): a corrupt chunk is rejected *by offset* and re-sent; a corrupt header
//!   is fatal for the stream (the next offer resumes from the durable offset).
//! * **Durability before acknowledgement.** The follower spools into
//!   [`SnapshotStore::incoming`], syncs every `sync_every_bytes`, and only then sends
//!   `Durable{offset}`. A crash loses at most the unsynced tail.
//! * **Resume** needs the same id *and* the same file: snapshots of one id taken on different
//!   nodes need not be byte-identical (guest export order, compression), so the follower compares
//!   the digest in its partial file's header with the offer's and restarts from 0 on mismatch.
//! * **Pacing**: QUIC flow control only (stream window, bounded disk queue on the follower,
//!   one chunk read ahead on the leader); nothing buffers the whole snapshot. An optional
//!   [`BandwidthLimiter`] (governor) caps the send rate and can be changed at runtime.
//! * **Timeouts are progress-based**: either side aborts after `progress_timeout_ms` without a
//!   chunk moving, an acknowledgement, or a verification heartbeat.
//!
//! Metrics (every series has `node`): `wraft_snapshot_transfers_in_flight{direction}` (gauge),
//! `wraft_snapshot_sent_bytes_total`, `wraft_snapshot_received_bytes_total`,
//! `wraft_snapshot_transfer_resumes_total{direction}`, `wraft_snapshot_checksum_failures_total`,
//! `wraft_snapshot_chunks_resent_total` (counters), `wraft_snapshot_transfer_seconds{direction,
//! outcome}` (histogram; outcome `ok|busy|timeout|error`). Logs use target `wraft_node::snapshot`.
//!
//! Fault injection for end-to-end tests: [`TransferConfig::corrupt_chunk_every`], settable from
//! the environment variable [`CORRUPT_CHUNK_EVERY_ENV`] via
//! [`TransferConfig::with_test_faults_from_env`].

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use wraft_proto::digest::hex;
use wraft_storage::{
    IncomingSnapshot, SnapshotId, SnapshotInfo, SnapshotReader, SnapshotStore, StorageError,
};
use wraft_transport::frame::{self, FrameError};
use wraft_transport::quinn;
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
    /// TESTING ONLY — wire fault injection on the sending side: flip one bit in the data of the
    /// first transmission of every N-th chunk *after* its CRC32C was computed, so the receiver
    /// must detect and reject it and the leader re-send it (resends go out intact, so the
    /// transfer always completes; `N = 1` corrupts every chunk once). `None` (the default) in
    /// production.
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
    /// The same chunk failed its checksum more than `chunk_retries_max` times in a row.
    #[error(
        "snapshot {id} from node {peer}: chunk at offset {offset} failed its CRC32C {failures} times (chunk_retries_max = {retries_max})"
    )]
    ChunkRetriesExhausted {
        /// The leader.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// Offset of the chunk.
        offset: u64,
        /// Consecutive checksum failures of this chunk.
        failures: u32,
        /// The configured `chunk_retries_max`.
        retries_max: u32,
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

// ---------------------------------------------------------------------------------------------
// Wire protocol
// ---------------------------------------------------------------------------------------------

/// Magic at the start of every offer: "wraft snapshot transfer".
const OFFER_MAGIC: [u8; 4] = *b"WSXF";
/// The transfer protocol version this build speaks.
pub const TRANSFER_PROTOCOL_VERSION: u16 = 1;
/// Transport frame kind of the offer (leader -> follower, first frame of the stream).
const KIND_OFFER: u8 = 0x20;
/// Transport frame kind of every follower -> leader message.
const KIND_REPLY: u8 = 0x21;
/// Largest control frame payload either side reads, bytes.
const CONTROL_FRAME_BYTES_MAX: u32 = 64 << 10;
/// Longest reason string put in a reply, bytes.
const REASON_BYTES_MAX: usize = 1024;

/// Chunk frame magic, version and header size. Layout (little-endian):
///
/// ```text
/// 0   magic b"WC"
/// 2   version u8 (1)
/// 3   flags u8 (0, reserved)
/// 4   offset u64     file offset of the first data byte
/// 12  len u32        data bytes (<= the offer's chunk_bytes)
/// 16  data_crc u32   CRC32C of the data
/// 20  header_crc u32 CRC32C of bytes 0..20
/// 24  data
/// ```
///
/// The header has its own CRC so that a corrupt chunk is rejected *by offset* without losing
/// the stream's framing; a corrupt header is fatal for the stream (the next transfer resumes).
const CHUNK_MAGIC: [u8; 2] = *b"WC";
const CHUNK_VERSION: u8 = 1;
const CHUNK_HEADER_BYTES: usize = 24;

/// Offset of the whole-file digest inside a snapshot file header (see `wraft_storage`).
/// Files shorter than this cannot be snapshots.
const MIN_SNAPSHOT_FILE_BYTES: u64 = wraft_storage::SNAPSHOT_HEADER_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Offer {
    magic: [u8; 4],
    version: u16,
    id: SnapshotId,
    digest: [u8; 32],
    file_len: u64,
    chunk_bytes: u32,
    leader_term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Reply {
    /// Send from this offset (what the follower holds durably for this id and digest).
    Accept { resume_from: u64 },
    /// At the limit of concurrent incoming transfers.
    Busy { in_flight: u32, limit: u32 },
    /// The snapshot is already complete here.
    AlreadyHave,
    /// The offer is unacceptable.
    Reject { reason: String },
    /// Bytes `[0, offset)` are durable.
    Durable { offset: u64 },
    /// The chunk at `offset` failed its CRC32C: resend from there.
    Nack { offset: u64 },
    /// All bytes are here; whole-file verification is running (a progress heartbeat).
    Verifying,
    /// Verified and published.
    Received { digest: [u8; 32] },
    /// The receiver gave up.
    Failed { reason: String },
}

fn encode_chunk_header(offset: u64, data: &[u8]) -> [u8; CHUNK_HEADER_BYTES] {
    let mut h = [0u8; CHUNK_HEADER_BYTES];
    h[..2].copy_from_slice(&CHUNK_MAGIC);
    h[2] = CHUNK_VERSION;
    h[4..12].copy_from_slice(&offset.to_le_bytes());
    h[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[16..20].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
    let hc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&hc.to_le_bytes());
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkHeader {
    offset: u64,
    len: u32,
    data_crc: u32,
}

/// Validate a chunk header. Pure; never panics.
fn decode_chunk_header(h: &[u8; CHUNK_HEADER_BYTES]) -> Result<ChunkHeader, String> {
    let le32 = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[..2] != CHUNK_MAGIC {
        return Err(format!(
            "chunk magic: expected {CHUNK_MAGIC:02x?}, found {:02x?}",
            &h[..2]
        ));
    }
    let (stored, found) = (le32(20), crc32c::crc32c(&h[..20]));
    if stored != found {
        return Err(format!(
            "chunk header checksum: header says {stored:#010x}, bytes hash to {found:#010x}"
        ));
    }
    if h[2] != CHUNK_VERSION {
        return Err(format!(
            "chunk version: expected {CHUNK_VERSION}, found {}",
            h[2]
        ));
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&h[4..12]);
    Ok(ChunkHeader {
        offset: u64::from_le_bytes(off),
        len: le32(12),
        data_crc: le32(16),
    })
}

fn truncate_reason(mut s: String) -> String {
    if s.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Progress, metrics
// ---------------------------------------------------------------------------------------------

const LOG: &str = "wraft_node::snapshot";

/// Last time anything moved, shared by the futures (and the receiver's disk thread) of one
/// transfer. The watchdog fires `progress_timeout_ms` after the last touch.
#[derive(Debug)]
struct Progress {
    base: Instant,
    last_ms: AtomicU64,
    offset: AtomicU64,
}

impl Progress {
    fn new(offset: u64) -> Self {
        Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            offset: AtomicU64::new(offset),
        }
    }
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
    fn advance(&self, offset: u64) {
        self.offset.store(offset, Ordering::Relaxed);
        self.touch();
    }
    fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }
    /// Resolves once nothing was touched for `timeout_ms`.
    async fn stalled(&self, timeout_ms: u64) {
        loop {
            let deadline = self.last_ms.load(Ordering::Relaxed) + timeout_ms;
            let now = self.now_ms();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}

/// Metric names (all carry `node`; see the module docs).
struct XferMetrics {
    node: String,
    direction: &'static str,
}

impl XferMetrics {
    fn new(node: NodeId, direction: &'static str) -> Self {
        XferMetrics {
            node: node.to_string(),
            direction,
        }
    }
    fn in_flight(&self) -> metrics::Gauge {
        metrics::gauge!("wraft_snapshot_transfers_in_flight", "node" => self.node.clone(), "direction" => self.direction)
    }
    fn bytes(&self) -> metrics::Counter {
        if self.direction == "send" {
            metrics::counter!("wraft_snapshot_sent_bytes_total", "node" => self.node.clone())
        } else {
            metrics::counter!("wraft_snapshot_received_bytes_total", "node" => self.node.clone())
        }
    }
    fn resume(&self) {
        metrics::counter!("wraft_snapshot_transfer_resumes_total", "node" => self.node.clone(), "direction" => self.direction).increment(1);
    }
    fn checksum_failure(&self) {
        metrics::counter!("wraft_snapshot_checksum_failures_total", "node" => self.node.clone())
            .increment(1);
    }
    fn chunks_resent(&self, n: u64) {
        metrics::counter!("wraft_snapshot_chunks_resent_total", "node" => self.node.clone())
            .increment(n);
    }
    fn finished(&self, outcome: &'static str, d: Duration) {
        metrics::histogram!("wraft_snapshot_transfer_seconds", "node" => self.node.clone(), "direction" => self.direction, "outcome" => outcome).record(d.as_secs_f64());
    }
}

/// Keeps `wraft_snapshot_transfers_in_flight` up while alive.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn new(g: metrics::Gauge) -> Self {
        g.increment(1.0);
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn outcome_label<T>(r: &Result<T, TransferError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(TransferError::Busy { .. }) => "busy",
        Err(TransferError::ProgressTimeout { .. }) => "timeout",
        Err(_) => "error",
    }
}

// ---------------------------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------------------------

/// Leader side: offer snapshot `id` from `store` on `stream`, learn the follower's durable
/// offset, stream the file from there in CRC32C-checked chunks (re-sending any chunk the
/// follower rejects), report each durable acknowledgement through `on_durable(offset)`, and
/// return once the follower acknowledges the verified, published file.
///
/// The snapshot is pinned (kept by retention) for the duration. Memory: about two chunks
/// (the one being written and one read ahead). Paced by QUIC flow control and `limiter`.
/// Fails on no progress for `cfg.progress_timeout_ms`, a stream error, or a protocol
/// violation; the follower keeps its durable prefix, so the next offer resumes.
/// `Busy` and `AlreadyHave` answers are `Ok` with the matching [`SendOutcome`].
pub async fn send_snapshot(
    stream: BulkStream,
    store: &SnapshotStore,
    id: SnapshotId,
    leader_term: u64,
    cfg: &TransferConfig,
    limiter: &BandwidthLimiter,
    mut on_durable: impl FnMut(u64) + Send,
) -> Result<SendReport, TransferError> {
    cfg.validate()?;
    let m = XferMetrics::new(cfg.node_id, "send");
    let _in_flight = InFlight::new(m.in_flight());
    let start = Instant::now();
    let result = send_inner(
        stream,
        store,
        id,
        leader_term,
        cfg,
        limiter,
        &mut on_durable,
        &m,
    )
    .await;
    let duration = start.elapsed();
    m.finished(outcome_label(&result), duration);
    result.map(|mut r| {
        r.duration = duration;
        r
    })
}

#[allow(clippy::too_many_arguments)]
async fn send_inner(
    stream: BulkStream,
    store: &SnapshotStore,
    id: SnapshotId,
    leader_term: u64,
    cfg: &TransferConfig,
    limiter: &BandwidthLimiter,
    on_durable: &mut (impl FnMut(u64) + Send),
    m: &XferMetrics,
) -> Result<SendReport, TransferError> {
    let BulkStream {
        peer,
        mut send,
        mut recv,
    } = stream;
    let storage = |source| TransferError::Storage { id, source };
    let s = store.clone();
    let reader = tokio::task::spawn_blocking(move || s.open_reader(id))
        .await
        .map_err(|e| storage(StorageError::Invalid(format!("reader task: {e}"))))?
        .map_err(storage)?;
    let reader = Arc::new(reader);
    let info = reader.info().clone();
    let file_len = info.file_len;
    let timeout_ms = cfg.progress_timeout_ms;
    let timeout = Duration::from_millis(timeout_ms);
    let timed_out = |during, offset| TransferError::ProgressTimeout {
        peer,
        during,
        offset,
        timeout_ms,
    };
    let frame_err = |during| {
        move |source| TransferError::Frame {
            peer,
            during,
            source,
        }
    };

    let offer = Offer {
        magic: OFFER_MAGIC,
        version: TRANSFER_PROTOCOL_VERSION,
        id,
        digest: info.digest,
        file_len,
        chunk_bytes: cfg.chunk_bytes,
        leader_term,
    };
    tokio::time::timeout(
        timeout,
        frame::write_msg(&mut send, KIND_OFFER, &offer, CONTROL_FRAME_BYTES_MAX),
    )
    .await
    .map_err(|_| timed_out("sending the offer", 0))?
    .map_err(frame_err("sending the offer"))?;
    let reply = tokio::time::timeout(timeout, read_reply(&mut recv))
        .await
        .map_err(|_| timed_out("waiting for the answer to the offer", 0))?
        .map_err(frame_err("reading the answer to the offer"))?;
    let report = |outcome, resumed_from| SendReport {
        outcome,
        resumed_from,
        bytes_sent: 0,
        chunks_resent: 0,
        duration: Duration::ZERO,
    };
    let resume_from = match reply {
        None => return Err(TransferError::PeerClosed { peer, offset: 0 }),
        Some(Reply::Accept { resume_from }) if resume_from <= file_len => resume_from,
        Some(Reply::Busy { in_flight, limit }) => {
            tracing::info!(target: LOG, %id, peer, in_flight, limit, "follower is busy; snapshot offer declined");
            let _ = send.finish();
            return Ok(report(SendOutcome::Busy, 0));
        }
        Some(Reply::AlreadyHave) => {
            tracing::info!(target: LOG, %id, peer, "follower already has the snapshot");
            let _ = send.finish();
            return Ok(report(SendOutcome::AlreadyHave, file_len));
        }
        Some(Reply::Reject { reason }) => {
            return Err(TransferError::Rejected { peer, id, reason });
        }
        Some(other) => {
            return Err(TransferError::Protocol {
                peer,
                detail: format!(
                    "answer to an offer of {file_len} bytes: expected Accept{{resume_from <= {file_len}}}, Busy, AlreadyHave or Reject, found {other:?}"
                ),
            });
        }
    };
    if resume_from > 0 {
        m.resume();
    }
    tracing::info!(target: LOG, %id, peer, file_len, resume_from, chunk_bytes = cfg.chunk_bytes, "sending snapshot");

    let progress = Progress::new(resume_from);
    progress.touch();
    // Go-back requests from the control loop to the writer loop.
    let rewind = AtomicU64::new(NO_REWIND);
    let wake = tokio::sync::Notify::new();
    let bytes_sent = AtomicU64::new(0);
    let chunks_resent = AtomicU64::new(0);
    let chunk_bytes = u64::from(cfg.chunk_bytes);

    let writer = async {
        let mut off = resume_from;
        let mut high_water = resume_from;
        let mut new_chunks: u64 = 0;
        let mut ahead: Option<(u64, tokio::task::JoinHandle<ReadResult>)> = None;
        loop {
            let r = rewind.swap(NO_REWIND, Ordering::AcqRel);
            if r != NO_REWIND {
                off = r;
            }
            if off >= file_len {
                wake.notified().await;
                continue;
            }
            let len = chunk_bytes.min(file_len - off);
            let data = match ahead.take() {
                Some((o, h)) if o == off => h.await,
                _ => read_ahead(&reader, off, len).await,
            }
            .map_err(|e| storage(StorageError::Invalid(format!("reader task: {e}"))))?
            .map_err(storage)?;
            let next = off + len;
            if next < file_len {
                let l = chunk_bytes.min(file_len - next);
                ahead = Some((next, read_ahead_spawn(&reader, next, l)));
            }
            limiter.acquire(len).await;
            let header = encode_chunk_header(off, &data);
            let first_transmission = off >= high_water;
            if first_transmission {
                new_chunks += 1;
            }
            let data = match cfg.corrupt_chunk_every {
                Some(n) if first_transmission && new_chunks.is_multiple_of(u64::from(n.get())) => {
                    let mut bad = data.to_vec();
                    let bit = (new_chunks as usize * 7919) % (bad.len() * 8);
                    bad[bit / 8] ^= 1 << (bit % 8);
                    tracing::warn!(target: LOG, %id, peer, offset = off, "TEST FAULT: corrupting outgoing chunk after its CRC32C");
                    Bytes::from(bad)
                }
                _ => data,
            };
            let stream_err = |e: quinn::WriteError| TransferError::Stream {
                peer,
                during: "writing a chunk",
                offset: off,
                detail: e.to_string(),
            };
            send.write_all(&header).await.map_err(stream_err)?;
            send.write_chunk(data).await.map_err(stream_err)?;
            bytes_sent.fetch_add(len, Ordering::Relaxed);
            m.bytes().increment(len);
            if off < high_water {
                chunks_resent.fetch_add(1, Ordering::Relaxed);
                m.chunks_resent(1);
            }
            high_water = high_water.max(next);
            off = next;
            progress.advance(off);
        }
    };

    let control = async {
        let mut acked = resume_from;
        loop {
            let msg = read_reply(&mut recv)
                .await
                .map_err(frame_err("reading acknowledgements"))?;
            match msg {
                None => {
                    return Err(TransferError::PeerClosed {
                        peer,
                        offset: acked,
                    });
                }
                Some(Reply::Durable { offset }) if offset >= acked && offset <= file_len => {
                    acked = offset;
                    tracing::debug!(target: LOG, %id, peer, offset, "follower made snapshot bytes durable");
                    on_durable(offset);
                    progress.touch();
                }
                Some(Reply::Nack { offset })
                    if offset >= resume_from
                        && offset < file_len
                        && (offset - resume_from).is_multiple_of(chunk_bytes) =>
                {
                    tracing::warn!(target: LOG, %id, peer, offset, "follower rejected a chunk (CRC32C mismatch); re-sending from it");
                    rewind.store(offset, Ordering::Release);
                    wake.notify_one();
                }
                Some(Reply::Verifying) => progress.touch(),
                Some(Reply::Received { digest }) => {
                    if digest != info.digest {
                        return Err(TransferError::DigestMismatch {
                            peer,
                            id,
                            expected: hex(&info.digest),
                            found: hex(&digest),
                        });
                    }
                    on_durable(file_len);
                    return Ok(());
                }
                Some(Reply::Failed { reason }) => {
                    return Err(TransferError::PeerFailed { peer, id, reason });
                }
                Some(other) => {
                    return Err(TransferError::Protocol {
                        peer,
                        detail: format!(
                            "during the transfer (acked {acked} of {file_len} bytes, chunk_bytes {chunk_bytes}, resumed from {resume_from}): expected Durable{{offset in {acked}..={file_len}}}, Nack at a chunk boundary, Verifying, Received or Failed, found {other:?}"
                        ),
                    });
                }
            }
        }
    };

    let outcome: Result<(), TransferError> = tokio::select! {
        r = control => r,
        r = writer => r,
        () = progress.stalled(timeout_ms) => Err(timed_out("streaming chunks", progress.offset())),
    };
    let bytes_sent = bytes_sent.load(Ordering::Relaxed);
    let chunks_resent = chunks_resent.load(Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            let _ = send.finish();
            tracing::info!(target: LOG, %id, peer, file_len, resume_from, bytes_sent, chunks_resent, "snapshot sent and acknowledged");
            Ok(SendReport {
                outcome: SendOutcome::Completed,
                resumed_from: resume_from,
                bytes_sent,
                chunks_resent,
                duration: Duration::ZERO,
            })
        }
        Err(e) => {
            let _ = send.reset(quinn::VarInt::from_u32(CODE_TRANSFER_ABORTED));
            tracing::warn!(target: LOG, %id, peer, error = %e, bytes_sent, "snapshot send failed; the next offer resumes from the follower's durable offset");
            Err(e)
        }
    }
}

/// Stream reset code when a side abandons a transfer.
const CODE_TRANSFER_ABORTED: u32 = 0x5e;
const NO_REWIND: u64 = u64::MAX;

type ReadResult = Result<Bytes, StorageError>;

fn read_ahead_spawn(
    reader: &Arc<SnapshotReader>,
    off: u64,
    len: u64,
) -> tokio::task::JoinHandle<ReadResult> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        let n = reader.read_file_at(off, &mut buf)?;
        if n != buf.len() {
            return Err(StorageError::Invalid(format!(
                "snapshot {}: read {n} bytes at offset {off}, expected {len} (file shorter than its header says)",
                reader.info().id()
            )));
        }
        Ok(Bytes::from(buf))
    })
}

async fn read_ahead(
    reader: &Arc<SnapshotReader>,
    off: u64,
    len: u64,
) -> Result<ReadResult, tokio::task::JoinError> {
    read_ahead_spawn(reader, off, len).await
}

async fn read_reply(recv: &mut quinn::RecvStream) -> Result<Option<Reply>, FrameError> {
    match frame::read_frame(recv, CONTROL_FRAME_BYTES_MAX).await? {
        None => Ok(None),
        Some(f) if f.kind == KIND_REPLY => f.decode().map(Some),
        Some(f) => Err(FrameError::UnexpectedKind {
            expected: "snapshot transfer reply (0x21)",
            found: f.kind,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------------

/// A held incoming-transfer slot; released when dropped (after the spool file is closed).
struct SlotPermit {
    slots: IncomingSlots,
    id: SnapshotId,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        let mut st = self.slots.lock();
        if let Some(i) = st.ids.iter().position(|x| *x == self.id) {
            st.ids.swap_remove(i);
        }
    }
}

impl IncomingSlots {
    /// Take a slot for `id`, or `Err((in_flight, limit))`.
    fn try_acquire(&self, id: SnapshotId) -> Result<SlotPermit, (usize, usize)> {
        let mut st = self.lock();
        if st.ids.len() >= st.limit || st.ids.contains(&id) {
            return Err((st.ids.len(), st.limit));
        }
        st.ids.push(id);
        Ok(SlotPermit {
            slots: self.clone(),
            id,
        })
    }
}

/// From the network task to the disk thread.
struct WriteCmd {
    offset: u64,
    data: Vec<u8>,
}

/// From the disk thread to the network task.
enum DiskEvent {
    Durable(u64),
    Verifying,
    Published(Box<SnapshotInfo>),
    Failed(StorageError),
}

/// Follower side: serve one inbound bulk stream carrying a snapshot offer. Answers `Busy`
/// (returning [`TransferError::Busy`]) beyond `slots`, `AlreadyHave` if the snapshot is complete
/// here (returning `Ok` with [`Received::already_had`]), otherwise the offset held durably for
/// the same id *and digest* (0 if none; a partial of a different file with the same id is
/// discarded); spools to the store's partial file, syncs every `cfg.sync_every_bytes` and only
/// then acknowledges the durable offset (also reported through `on_durable`), verifies the
/// whole-file BLAKE3, publishes atomically and acknowledges *received*.
///
/// Memory: about `(receive_queue_chunks + 1) * chunk` bytes. Disk writes, syncs and the final
/// verification run on a blocking thread; the caller's task only moves and checks bytes. On
/// failure the received prefix is kept (synced) for the next transfer to resume.
pub async fn receive_snapshot(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: &TransferConfig,
    slots: &IncomingSlots,
    mut on_durable: impl FnMut(u64) + Send,
) -> Result<Received, TransferError> {
    cfg.validate()?;
    let m = XferMetrics::new(cfg.node_id, "receive");
    let _in_flight = InFlight::new(m.in_flight());
    let start = Instant::now();
    let result = receive_inner(stream, store, cfg, slots, &mut on_durable, &m).await;
    let duration = start.elapsed();
    m.finished(outcome_label(&result), duration);
    result.map(|mut r| {
        r.duration = duration;
        r
    })
}

async fn receive_inner(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: &TransferConfig,
    slots: &IncomingSlots,
    on_durable: &mut (impl FnMut(u64) + Send),
    m: &XferMetrics,
) -> Result<Received, TransferError> {
    let BulkStream {
        peer,
        mut send,
        mut recv,
    } = stream;
    let timeout_ms = cfg.progress_timeout_ms;
    let timeout = Duration::from_millis(timeout_ms);
    let frame_err = |during| {
        move |source| TransferError::Frame {
            peer,
            during,
            source,
        }
    };

    // 1. The offer.
    let first = tokio::time::timeout(
        timeout,
        frame::read_frame(&mut recv, CONTROL_FRAME_BYTES_MAX),
    )
    .await
    .map_err(|_| TransferError::ProgressTimeout {
        peer,
        during: "waiting for a snapshot offer",
        offset: 0,
        timeout_ms,
    })?
    .map_err(frame_err("reading the snapshot offer"))?
    .ok_or(TransferError::PeerClosed { peer, offset: 0 })?;
    let offer: Offer = match (first.kind, first.decode::<Offer>()) {
        (KIND_OFFER, Ok(o)) => o,
        (KIND_OFFER, Err(e)) => {
            let reason = format!(
                "offer does not decode (this node speaks transfer protocol version {TRANSFER_PROTOCOL_VERSION}): {e}"
            );
            reject(&mut send, &reason, timeout).await;
            return Err(TransferError::Protocol {
                peer,
                detail: reason,
            });
        }
        (kind, _) => {
            let reason = format!(
                "first frame of a bulk stream: expected a snapshot offer (kind {KIND_OFFER:#04x}), found kind {kind:#04x}"
            );
            reject(&mut send, &reason, timeout).await;
            return Err(TransferError::Protocol {
                peer,
                detail: reason,
            });
        }
    };
    let id = offer.id;
    let problem = if offer.magic != OFFER_MAGIC || offer.version != TRANSFER_PROTOCOL_VERSION {
        Some(format!(
            "transfer protocol: expected magic {OFFER_MAGIC:02x?} version {TRANSFER_PROTOCOL_VERSION}, found magic {:02x?} version {}",
            offer.magic, offer.version
        ))
    } else if offer.chunk_bytes == 0 || offer.chunk_bytes > cfg.chunk_bytes_max {
        Some(format!(
            "chunk size {} bytes is outside 1..={} (chunk_bytes_max)",
            offer.chunk_bytes, cfg.chunk_bytes_max
        ))
    } else if offer.file_len < MIN_SNAPSHOT_FILE_BYTES {
        Some(format!(
            "file length {} is shorter than a snapshot header ({MIN_SNAPSHOT_FILE_BYTES} bytes)",
            offer.file_len
        ))
    } else {
        None
    };
    if let Some(reason) = problem {
        tracing::warn!(target: LOG, %id, peer, %reason, "rejecting snapshot offer");
        reject(&mut send, &reason, timeout).await;
        return Err(TransferError::Protocol {
            peer,
            detail: reason,
        });
    }

    // 2. Already complete here?
    if let Some(info) = store.list().into_iter().find(|i| i.id() == id) {
        tracing::info!(target: LOG, %id, peer, "offered snapshot is already complete here");
        if info.digest != offer.digest {
            tracing::warn!(target: LOG, %id, peer, local = %hex(&info.digest), offered = %hex(&offer.digest),
                "the local snapshot with this id has other bytes than the leader's (taken independently); keeping the local one");
        }
        tokio::time::timeout(timeout, send_reply(&mut send, &Reply::AlreadyHave))
            .await
            .map_err(|_| TransferError::ProgressTimeout {
                peer,
                during: "answering the offer",
                offset: 0,
                timeout_ms,
            })?
            .map_err(frame_err("answering the offer"))?;
        let _ = send.finish();
        return Ok(Received {
            from: peer,
            leader_term: offer.leader_term,
            info,
            resumed_from: offer.file_len,
            bytes_received: 0,
            already_had: true,
            duration: Duration::ZERO,
        });
    }

    // 3. A slot.
    let permit = match slots.try_acquire(id) {
        Ok(p) => p,
        Err((in_flight, limit)) => {
            tracing::info!(target: LOG, %id, peer, in_flight, limit, "declining snapshot offer: busy");
            let busy = Reply::Busy {
                in_flight: in_flight as u32,
                limit: limit as u32,
            };
            let _ = tokio::time::timeout(timeout, send_reply(&mut send, &busy)).await;
            let _ = send.finish();
            return Err(TransferError::Busy {
                peer,
                id,
                in_flight,
                limit,
            });
        }
    };

    // 4. Open (or resume) the spool file.
    let storage = |source| TransferError::Storage { id, source };
    let s = store.clone();
    let offer2 = offer.clone();
    let incoming = tokio::task::spawn_blocking(move || open_spool(&s, &offer2, peer))
        .await
        .map_err(|e| storage(StorageError::Invalid(format!("spool task: {e}"))))?
        .map_err(storage)?;
    let resume_from = incoming.durable_offset();
    tokio::time::timeout(
        timeout,
        send_reply(&mut send, &Reply::Accept { resume_from }),
    )
    .await
    .map_err(|_| TransferError::ProgressTimeout {
        peer,
        during: "answering the offer",
        offset: resume_from,
        timeout_ms,
    })?
    .map_err(frame_err("answering the offer"))?;
    if resume_from > 0 {
        m.resume();
    }
    tracing::info!(target: LOG, %id, peer, file_len = offer.file_len, resume_from, leader_term = offer.leader_term, "receiving snapshot");

    // 5. Stream.
    let progress = Arc::new(Progress::new(resume_from));
    progress.touch();
    let (cmd_tx, cmd_rx) = mpsc::channel::<WriteCmd>(cfg.receive_queue_chunks);
    let (ev_tx, mut ev_rx) = mpsc::channel::<DiskEvent>(16);
    let (nack_tx, mut nack_rx) = mpsc::channel::<u64>(4);
    {
        let progress = progress.clone();
        let sync_every = cfg.sync_every_bytes;
        let file_len = offer.file_len;
        tokio::task::spawn_blocking(move || {
            disk_loop(
                incoming, permit, cmd_rx, ev_tx, sync_every, file_len, progress,
            )
        });
    }
    let bytes_received = AtomicU64::new(0);
    let chunk_limit = offer.chunk_bytes;
    let file_len = offer.file_len;

    let network = async {
        let mut expected = resume_from;
        let mut retries: u32 = 0;
        let mut nack_pending = false;
        if expected == file_len {
            // Everything was durable already; the disk thread finalizes on its own.
            std::future::pending::<()>().await;
        }
        loop {
            let mut hdr = [0u8; CHUNK_HEADER_BYTES];
            recv.read_exact(&mut hdr).await.map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => TransferError::PeerClosed {
                    peer,
                    offset: expected,
                },
                quinn::ReadExactError::ReadError(e) => TransferError::Stream {
                    peer,
                    during: "reading a chunk header",
                    offset: expected,
                    detail: e.to_string(),
                },
            })?;
            let h = decode_chunk_header(&hdr).map_err(|detail| TransferError::Protocol {
                peer,
                detail: format!("chunk header after offset {expected}: {detail}"),
            })?;
            let end = h.offset.checked_add(u64::from(h.len));
            if h.len == 0 || h.len > chunk_limit || end.is_none_or(|e| e > file_len) {
                return Err(TransferError::Protocol {
                    peer,
                    detail: format!(
                        "chunk at offset {} of {} bytes: expected 1..={chunk_limit} bytes ending at or before {file_len}",
                        h.offset, h.len
                    ),
                });
            }
            let mut data = vec![0u8; h.len as usize];
            recv.read_exact(&mut data).await.map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => TransferError::PeerClosed {
                    peer,
                    offset: expected,
                },
                quinn::ReadExactError::ReadError(e) => TransferError::Stream {
                    peer,
                    during: "reading chunk data",
                    offset: expected,
                    detail: e.to_string(),
                },
            })?;
            if h.offset != expected {
                if nack_pending && h.offset > expected {
                    // Sent before our rejection reached the leader; it will come again.
                    continue;
                }
                return Err(TransferError::Protocol {
                    peer,
                    detail: format!("chunk at offset {}, expected {expected}", h.offset),
                });
            }
            let found = crc32c::crc32c(&data);
            if found != h.data_crc {
                m.checksum_failure();
                retries += 1;
                tracing::warn!(target: LOG, %id, peer, offset = h.offset, len = h.len,
                    expected_crc = format_args!("{:#010x}", h.data_crc), found_crc = format_args!("{found:#010x}"),
                    retries, "snapshot chunk failed its CRC32C; rejected, asking for it again");
                if retries > cfg.chunk_retries_max {
                    return Err(TransferError::ChunkRetriesExhausted {
                        peer,
                        id,
                        offset: h.offset,
                        failures: retries,
                        retries_max: cfg.chunk_retries_max,
                    });
                }
                nack_pending = true;
                // The control loop always drains this channel.
                let _ = nack_tx.send(expected).await;
                continue;
            }
            nack_pending = false;
            retries = 0;
            expected += u64::from(h.len);
            bytes_received.fetch_add(u64::from(h.len), Ordering::Relaxed);
            m.bytes().increment(u64::from(h.len));
            progress.advance(expected);
            if cmd_tx
                .send(WriteCmd {
                    offset: h.offset,
                    data,
                })
                .await
                .is_err()
            {
                // The disk thread stopped; its event says why.
                std::future::pending::<()>().await;
            }
            if expected == file_len {
                std::future::pending::<()>().await;
            }
        }
    };

    let control = async {
        let heartbeat_ms = (timeout_ms / 4).max(1);
        let mut verifying = false;
        let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms));
        loop {
            let msg = tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(DiskEvent::Durable(offset)) => {
                        on_durable(offset);
                        Reply::Durable { offset }
                    }
                    Some(DiskEvent::Verifying) => {
                        verifying = true;
                        heartbeat.reset();
                        Reply::Verifying
                    }
                    Some(DiskEvent::Published(info)) => {
                        if info.digest != offer.digest {
                            let e = TransferError::DigestMismatch { peer, id, expected: hex(&offer.digest), found: hex(&info.digest) };
                            tracing::warn!(target: LOG, error = %e, "published snapshot does not match the offer's digest; keeping it (it verified against its own header)");
                        }
                        let _ = frame::write_msg(&mut send, KIND_REPLY, &Reply::Received { digest: info.digest }, CONTROL_FRAME_BYTES_MAX).await;
                        let _ = send.finish();
                        on_durable(file_len);
                        return Ok(*info);
                    }
                    Some(DiskEvent::Failed(e)) => return Err(storage(e)),
                    None => return Err(storage(StorageError::Invalid("snapshot disk thread ended unexpectedly".into()))),
                },
                Some(offset) = nack_rx.recv() => Reply::Nack { offset },
                _ = heartbeat.tick(), if verifying => {
                    progress.touch();
                    Reply::Verifying
                }
            };
            frame::write_msg(&mut send, KIND_REPLY, &msg, CONTROL_FRAME_BYTES_MAX)
                .await
                .map_err(frame_err("sending an acknowledgement"))?;
        }
    };

    let outcome: Result<SnapshotInfo, TransferError> = tokio::select! {
        r = control => r,
        r = network => r,
        () = progress.stalled(timeout_ms) => Err(TransferError::ProgressTimeout {
            peer, during: "receiving chunks", offset: progress.offset(), timeout_ms,
        }),
    };
    let bytes_received = bytes_received.load(Ordering::Relaxed);
    match outcome {
        Ok(info) => {
            tracing::info!(target: LOG, %id, peer, file_len, resume_from, bytes_received, "snapshot received, verified and published");
            Ok(Received {
                from: peer,
                leader_term: offer.leader_term,
                info,
                resumed_from: resume_from,
                bytes_received,
                already_had: false,
                duration: Duration::ZERO,
            })
        }
        Err(e) => {
            tracing::warn!(target: LOG, %id, peer, error = %e, bytes_received, "snapshot receive failed; the received prefix is kept for the next attempt");
            let failed = Reply::Failed {
                reason: truncate_reason(e.to_string()),
            };
            let _ = tokio::time::timeout(
                Duration::from_millis(timeout_ms.min(1000)),
                frame::write_msg(&mut send, KIND_REPLY, &failed, CONTROL_FRAME_BYTES_MAX),
            )
            .await;
            let _ = send.finish();
            let _ = recv.stop(quinn::VarInt::from_u32(CODE_TRANSFER_ABORTED));
            Err(e)
        }
    }
}

async fn send_reply(send: &mut quinn::SendStream, r: &Reply) -> Result<(), FrameError> {
    frame::write_msg(send, KIND_REPLY, r, CONTROL_FRAME_BYTES_MAX).await
}

async fn reject(send: &mut quinn::SendStream, reason: &str, timeout: Duration) {
    let r = Reply::Reject {
        reason: truncate_reason(reason.to_owned()),
    };
    let _ = tokio::time::timeout(
        timeout,
        frame::write_msg(send, KIND_REPLY, &r, CONTROL_FRAME_BYTES_MAX),
    )
    .await;
    let _ = send.finish();
}

/// Open the partial file for `offer.id`, keeping its durable prefix only if it is a prefix of
/// the *same* file (same digest in its header) and not longer than the offer.
fn open_spool(
    store: &SnapshotStore,
    offer: &Offer,
    peer: NodeId,
) -> Result<IncomingSnapshot, StorageError> {
    let incoming = store.incoming(offer.id)?;
    let durable = incoming.durable_offset();
    if durable == 0 {
        return Ok(incoming);
    }
    let why = if durable > offer.file_len {
        Some(format!(
            "holds {durable} bytes but the offered file has {}",
            offer.file_len
        ))
    } else {
        match incoming.received_digest()? {
            Some(d) if d == offer.digest => None,
            Some(d) => Some(format!(
                "is a prefix of another file with the same id (digest {}, offered {}); snapshots taken on different nodes may differ",
                hex(&d),
                hex(&offer.digest)
            )),
            // Not even the digest is durable yet: too little to be worth checking otherwise.
            None => Some(format!("holds only {durable} bytes")),
        }
    };
    match why {
        None => Ok(incoming),
        Some(why) => {
            tracing::info!(target: LOG, id = %offer.id, peer, durable, "partial snapshot {why}; restarting the transfer from 0");
            incoming.abort();
            store.incoming(offer.id)
        }
    }
}

/// The disk side of a receive, on a blocking thread: write, sync every `sync_every` bytes and
/// report the durable offset, then verify and publish. Holds the slot until the file is closed.
fn disk_loop(
    incoming: IncomingSnapshot,
    permit: SlotPermit,
    cmds: mpsc::Receiver<WriteCmd>,
    events: mpsc::Sender<DiskEvent>,
    sync_every: u64,
    file_len: u64,
    progress: Arc<Progress>,
) {
    // `disk_work` consumes (closes) the spool file before the slot is given back, so a
    // re-offer that finds a free slot also finds the file free.
    disk_work(incoming, cmds, events, sync_every, file_len, progress);
    drop(permit);
}

fn disk_work(
    mut incoming: IncomingSnapshot,
    mut cmds: mpsc::Receiver<WriteCmd>,
    events: mpsc::Sender<DiskEvent>,
    sync_every: u64,
    file_len: u64,
    progress: Arc<Progress>,
) {
    let mut unsynced: u64 = 0;
    let mut reported = incoming.durable_offset();
    let fail = |e| {
        let _ = events.blocking_send(DiskEvent::Failed(e));
    };
    while incoming.written_offset() < file_len {
        let Some(cmd) = cmds.blocking_recv() else {
            // The transfer was abandoned: make what arrived durable for the next attempt.
            if let Err(e) = incoming.sync() {
                tracing::warn!(target: LOG, id = %incoming.id(), error = %e, "could not sync the partial snapshot of an abandoned transfer");
            }
            return;
        };
        let len = cmd.data.len() as u64;
        if let Err(e) = incoming.write_at(cmd.offset, &cmd.data) {
            return fail(e);
        }
        unsynced += len;
        if unsynced >= sync_every {
            if let Err(e) = incoming.sync() {
                return fail(e);
            }
            unsynced = 0;
        }
        progress.touch();
        let durable = incoming.durable_offset();
        if durable > reported {
            // The store may also sync on its own (`snapshot_sync_every_bytes`).
            unsynced = incoming.written_offset() - durable;
            reported = durable;
            if events.blocking_send(DiskEvent::Durable(durable)).is_err() {
                return;
            }
        }
    }
    let _ = events.blocking_send(DiskEvent::Verifying);
    match incoming.finalize() {
        Ok(info) => {
            let _ = events.blocking_send(DiskEvent::Published(Box::new(info)));
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
#[path = "transfer_tests.rs"]
mod tests;
