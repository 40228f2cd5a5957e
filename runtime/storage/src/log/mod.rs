//! The segmented, group-committed Raft log (with hard state and compaction floor records).
//!
//! See the crate docs for the model. [`Log`] is the handle producers call; this module holds the
//! public types, and its parts are:
//! * `submit`: queueing a [`WriteBatch`] (validated against the logical log and readable at once)
//!   and waiting for it to be durable;
//! * `read`: entries and terms, from the tail cache or one positional read per run on disk;
//! * `writer`: the writer thread (`writer_main`), which turns everything queued since its last
//!   sync into one `pwrite` and one `fdatasync`;
//! * `segment`: segment files: naming, creation, rolling to the next, cutting, and deletion
//!   behind the compaction floor;
//! * `open` and `recovery`: opening the log; recovery (`recover`) replays segments into a
//!   [`DiskIndex`](disk_index::DiskIndex);
//! * `disk_index`: where every live entry is on disk, shared by recovery and the writer;
//! * `shared`: the state producers and the writer share (queue, logical log and tail cache,
//!   durability waiters).

mod disk_index;
mod open;
mod read;
mod recovery;
mod segment;
mod shared;
mod submit;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crate::error::{Result, StorageError};
use crate::record;
use crate::{HardState, LogEntry};

use self::shared::Shared;

/// Bytes of bookkeeping charged per cached entry on top of its payload.
const CACHE_ENTRY_OVERHEAD_BYTES: u64 = 64;

/// One durable write request: any of truncate, append, hard state, compaction, applied in that
/// order and made durable together.
///
/// Build it with the field initialisers or the `with_*` helpers:
/// `WriteBatch::default().with_entries(entries).with_hard_state(hs)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Drop every entry after this index first (a conflicting suffix). Must be `>=` the floor.
    pub truncate_after: Option<u64>,
    /// Entries to append; contiguous indexes, non-decreasing terms. If the first index is at or
    /// below the last index, the suffix from that index is truncated implicitly (Raft §5.3).
    pub entries: Vec<LogEntry>,
    /// New hard state (term must not go backwards).
    pub hard_state: Option<HardState>,
    /// Compact the prefix through `(index, term)` (see [`Log::compact`]).
    pub compact: Option<(u64, u64)>,
    /// The caller's own number for this batch (the Raft engine's persist `seq`), reported back
    /// in [`DurablePoint::tag`] once the batch is durable, so a caller needs no map from storage
    /// sequence numbers to its own. Tags must not decrease from one tagged batch to the next
    /// (checked); untagged batches leave the reported tag alone.
    pub tag: Option<u64>,
}

impl WriteBatch {
    /// Set the entries to append.
    pub fn with_entries(mut self, entries: Vec<LogEntry>) -> Self {
        self.entries = entries;
        self
    }
    /// Set the hard state.
    pub fn with_hard_state(mut self, hs: HardState) -> Self {
        self.hard_state = Some(hs);
        self
    }
    /// Set an explicit truncation point.
    pub fn with_truncate_after(mut self, index: u64) -> Self {
        self.truncate_after = Some(index);
        self
    }
    /// Set the caller's tag (see [`WriteBatch::tag`]).
    pub fn with_tag(mut self, tag: u64) -> Self {
        self.tag = Some(tag);
        self
    }
    /// True if the batch does nothing.
    pub fn is_empty(&self) -> bool {
        self.truncate_after.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.compact.is_none()
    }
    fn encoded_bytes(&self) -> u64 {
        let entries: usize = self
            .entries
            .iter()
            .map(|e| record::entry_record_len(e.payload.len()))
            .sum();
        (entries + 4 * 64) as u64
    }
}

/// What is durable on disk after a sync: every submission with `seq <= self.seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DurablePoint {
    /// Highest durable submission sequence number (see [`WriteTicket::seq`]).
    pub seq: u64,
    /// Highest [`WriteBatch::tag`] among durable batches (0 before the first tagged one).
    pub tag: u64,
    /// Last durable log index (it can go down after a truncation).
    pub last_index: u64,
    /// Term of `last_index` (the floor's term if the log is empty).
    pub last_term: u64,
    /// Durable hard state.
    pub hard_state: HardState,
    /// How long the `fdatasync` that made this point durable took (`None` when the writer did
    /// not sync: `FsyncPolicy::Relaxed`, or the point recovery starts from). For monitoring:
    /// the node exports it as the fsync latency histogram.
    pub sync_duration: Option<std::time::Duration>,
}

/// Notification from the writer thread, delivered to the callback given to [`Log::open`].
#[derive(Debug, Clone)]
pub enum WriterEvent {
    /// A sync completed; everything up to `DurablePoint::seq` is durable.
    Durable(DurablePoint),
    /// The writer failed and stopped; all pending and future writes fail with this error.
    Failed(Arc<StorageError>),
}

/// Callback invoked on the writer thread after every sync (and once on failure). It must not
/// block: forward it into the driver's event loop (e.g. a channel send or `Notify::notify_one`).
/// Never call the blocking [`Log::submit`] or [`WriteTicket::wait`] from it: the writer would wait
/// for itself. While it runs, the next batch is not started, so keep it to a few microseconds.
pub type EventCallback = Arc<dyn Fn(&WriterEvent) + Send + Sync>;

/// A completion handle for one submission.
#[derive(Clone)]
pub struct WriteTicket {
    seq: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTicket")
            .field("seq", &self.seq)
            .finish()
    }
}

impl WriteTicket {
    /// Submission sequence number; durable once a [`DurablePoint::seq`] reaches it.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Non-blocking: is it durable yet? Fails if the writer failed first.
    pub fn is_durable(&self) -> Result<bool> {
        if self.shared.durable_seq.load(Ordering::Acquire) >= self.seq {
            return Ok(true);
        }
        match &self.shared.lock().poisoned {
            Some(e) => Err(StorageError::Poisoned(e.clone())),
            None => Ok(false),
        }
    }
    /// Block the calling thread until durable (never call this on an async executor thread).
    pub fn wait(&self) -> Result<()> {
        self.shared.wait_durable(self.seq)
    }
}

/// Where the torn tail of the newest segment was cut during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment file.
    pub file: PathBuf,
    /// Offset the file was truncated to.
    pub offset: u64,
    /// Bytes discarded.
    pub bytes_dropped: u64,
}

/// What [`Log::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecovery {
    /// Last compacted index and its term (0, 0 if never compacted).
    pub floor: (u64, u64),
    /// First index in the log (`floor.0 + 1`).
    pub first_index: u64,
    /// Last index in the log (`floor.0` if empty).
    pub last_index: u64,
    /// Term of `last_index`.
    pub last_term: u64,
    /// Latest durable hard state.
    pub hard_state: HardState,
    /// Segment files replayed.
    pub segments_replayed: usize,
    /// Set if an incomplete record at the end of the newest segment was cut off.
    pub torn_tail: Option<TornTail>,
}

/// Counters for monitoring and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Write batches the writer has issued (one `pwrite` each).
    pub batches: u64,
    /// `fdatasync` calls on segment files by the writer.
    pub syncs: u64,
    /// Submissions currently queued.
    pub queued_ops: usize,
    /// Bytes currently queued (estimated encoded size).
    pub queued_bytes: u64,
    /// Entries in the tail cache.
    pub cache_entries: usize,
    /// Bytes charged to the tail cache.
    pub cache_bytes: u64,
    /// Segment files currently in use.
    pub segments: usize,
}

/// The Raft log: entries, hard state and compaction floor, persisted with group commit.
///
/// Thread-safe; share it by reference or `Arc`. All reads are answered from memory (tail cache)
/// or with one positional read per contiguous run of older entries; none wait for the writer.
pub struct Log {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Log {
    /// Flush everything queued, stop the writer and report its failure if it had one.
    pub fn close(mut self) -> Result<()> {
        self.stop();
        match &self.shared.lock().poisoned {
            Some(e) => Err(StorageError::Poisoned(e.clone())),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work_cv.notify_all();
        self.shared.space_cv.notify_all();
        if let Some(h) = self.writer.take()
            && h.join().is_err()
        {
            tracing::error!("storage writer thread panicked");
        }
        self.shared.failed.store(true, Ordering::Release);
        self.shared.wake_waiters();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.stop();
    }
}
