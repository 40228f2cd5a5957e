//! The segmented, group-committed Raft log (with hard state and compaction floor records).
//!
//! See the crate docs for the model; this module holds three pieces:
//! * [`Log`], the handle producers call (`try_submit`/`submit`, reads);
//! * the writer thread (`writer_main`), which turns everything queued since its last sync into one
//!   `pwrite` and one `fdatasync`;
//! * recovery (`recover`), which replays segments into a [`DiskIndex`].

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::config::{FsyncPolicy, StorageConfig};
use crate::error::{Result, StorageError, io_err};
use crate::record::{self, Decoded, Record, SegHeader};
use crate::vfs::{OpenMode, Vfs, VfsFile, read_all, read_exact_at};
use crate::{HardState, LogEntry};

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
    /// Last durable log index (it can go down after a truncation).
    pub last_index: u64,
    /// Term of `last_index` (the floor's term if the log is empty).
    pub last_term: u64,
    /// Durable hard state.
    pub hard_state: HardState,
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

#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u64,
    off: u64,
    len: u32,
    term: u64,
}

#[derive(Debug, Clone, Copy)]
enum Summary {
    Entry { index: u64, term: u64 },
    Truncate(u64),
    Hs(HardState),
    Floor(u64, u64),
}

impl From<&Record> for Summary {
    fn from(r: &Record) -> Self {
        match r {
            Record::Entry { index, term, .. } => Summary::Entry {
                index: *index,
                term: *term,
            },
            Record::Truncate { last_kept } => Summary::Truncate(*last_kept),
            Record::HardState(hs) => Summary::Hs(*hs),
            Record::Floor { index, term } => Summary::Floor(*index, *term),
        }
    }
}

/// A rejected record: (detail, expected, found).
type ApplyErr = (String, String, String);

/// Where every live entry is on disk, rebuilt by replaying records. Shared by recovery and the
/// writer so that both interpret records identically.
#[derive(Debug, Default)]
struct DiskIndex {
    floor: (u64, u64),
    base: u64,
    locs: VecDeque<Loc>,
    /// Index the next entry must have; `None` only before the first entry/truncation of a replay.
    next: Option<u64>,
    hs: HardState,
}

impl DiskIndex {
    fn last(&self) -> u64 {
        if self.locs.is_empty() {
            self.next.map_or(self.floor.0, |n| n - 1)
        } else {
            self.base + self.locs.len() as u64 - 1
        }
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.floor.0 {
            return Some(self.floor.1);
        }
        let i = index.checked_sub(self.base)?;
        self.locs.get(usize::try_from(i).ok()?).map(|l| l.term)
    }

    fn last_term(&self) -> u64 {
        self.locs.back().map_or(self.floor.1, |l| l.term)
    }

    fn apply(&mut self, s: Summary, loc: Loc) -> Result<(), ApplyErr> {
        // Every index below is followed by `+ 1`; a record on disk naming u64::MAX is damage
        // (found by fuzz target wal_recovery, for entries and then for floors).
        let index = match s {
            Summary::Entry { index, .. } | Summary::Floor(index, _) => Some(index),
            Summary::Truncate(last_kept) => Some(last_kept),
            Summary::Hs(_) => None,
        };
        if index == Some(u64::MAX) {
            return Err((
                "log index out of range".into(),
                format!("< {}", u64::MAX),
                u64::MAX.to_string(),
            ));
        }
        match s {
            Summary::Entry { index, term } => {
                if index <= self.floor.0 {
                    return Err((
                        "entry at or below the compaction floor".into(),
                        format!("index > {}", self.floor.0),
                        index.to_string(),
                    ));
                }
                let expected = if self.locs.is_empty() {
                    self.next
                } else {
                    Some(self.last() + 1)
                };
                if let Some(exp) = expected
                    && exp != index
                {
                    return Err((
                        "entry index out of sequence".into(),
                        exp.to_string(),
                        index.to_string(),
                    ));
                }
                let prev_term = if let Some(b) = self.locs.back() {
                    Some(b.term)
                } else if index == self.floor.0 + 1 {
                    Some(self.floor.1)
                } else {
                    None
                };
                if let Some(pt) = prev_term
                    && term < pt
                {
                    return Err((
                        "entry term goes backwards".into(),
                        format!("term >= {pt}"),
                        term.to_string(),
                    ));
                }
                if self.locs.is_empty() {
                    self.base = index;
                }
                self.locs.push_back(Loc { term, ..loc });
                self.next = Some(index + 1);
            }
            Summary::Truncate(last_kept) => {
                if last_kept < self.floor.0 {
                    return Err((
                        "truncation below the compaction floor".into(),
                        format!(">= {}", self.floor.0),
                        last_kept.to_string(),
                    ));
                }
                if !self.locs.is_empty() {
                    // Truncating below the first replayed entry is legal: the entries it removed
                    // lived in segments since deleted by compaction, and a later floor record
                    // covers them (checked by `finish`).
                    let keep = (last_kept + 1)
                        .saturating_sub(self.base)
                        .min(self.locs.len() as u64);
                    self.locs.truncate(keep as usize);
                    if self.locs.is_empty() {
                        self.next = Some(last_kept + 1);
                    }
                }
                let last = self.last();
                if self.next.is_some() && last_kept > last {
                    return Err((
                        "truncation past the last entry".into(),
                        format!("<= {last}"),
                        last_kept.to_string(),
                    ));
                }
                self.next = Some(last_kept + 1);
            }
            Summary::Hs(hs) => self.hs = hs,
            Summary::Floor(index, term) => {
                if index < self.floor.0 || (index == self.floor.0 && term != self.floor.1) {
                    return Err((
                        "compaction floor goes backwards or changes term".into(),
                        format!(">= ({}, {})", self.floor.0, self.floor.1),
                        format!("({index}, {term})"),
                    ));
                }
                if self.locs.is_empty() {
                    if let Some(n) = self.next
                        && index + 1 >= n
                    {
                        self.next = Some(index + 1);
                    }
                } else if index + 1 >= self.base {
                    let last = self.last();
                    let matches = index <= last && self.term_at(index).is_none_or(|t| t == term);
                    if matches {
                        let drop = (index + 1 - self.base) as usize;
                        self.locs.drain(..drop);
                        self.base = index + 1;
                        if self.locs.is_empty() {
                            self.next = Some(index + 1);
                        }
                    } else {
                        self.locs.clear();
                        self.next = Some(index + 1);
                    }
                }
                self.floor = (index, term);
            }
        }
        Ok(())
    }

    /// After a replay: no gap between the floor and the first entry.
    fn finish(&mut self) -> Result<(), ApplyErr> {
        let known_from = if self.locs.is_empty() {
            self.next.unwrap_or(self.floor.0 + 1)
        } else {
            self.base
        };
        if known_from > self.floor.0 + 1 {
            return Err((
                "log entries missing between the compaction floor and the first entry on disk"
                    .into(),
                format!("first entry {}", self.floor.0 + 1),
                format!("first entry {known_from}"),
            ));
        }
        self.next = Some(self.last() + 1);
        if self.locs.is_empty() {
            self.base = self.floor.0 + 1;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Cached {
    seq: u64,
    entry: LogEntry,
}

fn cache_cost(e: &LogEntry) -> u64 {
    e.payload.len() as u64 + CACHE_ENTRY_OVERHEAD_BYTES
}

/// The log as producers see it: includes submissions not yet written.
#[derive(Debug)]
struct Logical {
    floor: (u64, u64),
    last_index: u64,
    cache: VecDeque<Cached>,
    cache_first: u64,
    cache_bytes: u64,
    hs: HardState,
}

impl Logical {
    fn truncate(&mut self, last_kept: u64) {
        if last_kept + 1 >= self.cache_first {
            let keep = (last_kept + 1 - self.cache_first) as usize;
            while self.cache.len() > keep {
                if let Some(c) = self.cache.pop_back() {
                    self.cache_bytes -= cache_cost(&c.entry);
                }
            }
        } else {
            self.cache.clear();
            self.cache_bytes = 0;
            self.cache_first = last_kept + 1;
        }
        self.last_index = last_kept;
    }

    fn evict(&mut self, written_seq: u64, limit_bytes: u64) {
        while self.cache_bytes > limit_bytes {
            match self.cache.front() {
                Some(c) if c.seq <= written_seq => {
                    self.cache_bytes -= cache_cost(&c.entry);
                    self.cache.pop_front();
                    self.cache_first += 1;
                }
                _ => break,
            }
        }
    }
}

struct Pending {
    seq: u64,
    truncate: Option<u64>,
    entries: Vec<LogEntry>,
    hs: Option<HardState>,
    compact: Option<(u64, u64)>,
}

struct State {
    queue: VecDeque<Pending>,
    queued_bytes: u64,
    next_seq: u64,
    written_seq: u64,
    durable: DurablePoint,
    poisoned: Option<Arc<StorageError>>,
    shutdown: bool,
    logical: Logical,
    disk: DiskIndex,
    segments: BTreeMap<u64, Arc<dyn VfsFile>>,
    batches: u64,
    syncs: u64,
}

impl State {
    fn term(&self, index: u64) -> Result<u64> {
        let l = &self.logical;
        if index == l.floor.0 {
            return Ok(l.floor.1);
        }
        if index < l.floor.0 {
            return Err(StorageError::Compacted {
                index,
                first_index: l.floor.0 + 1,
            });
        }
        if index > l.last_index {
            return Err(StorageError::Unavailable {
                index,
                last_index: l.last_index,
            });
        }
        if index >= l.cache_first {
            return Ok(l.cache[(index - l.cache_first) as usize].entry.term);
        }
        self.disk
            .term_at(index)
            .ok_or_else(|| internal(format!("index {index} neither cached nor on disk")))
    }
}

struct Shared {
    state: Mutex<State>,
    work_cv: Condvar,
    space_cv: Condvar,
    durable_seq: AtomicU64,
    failed: AtomicBool,
    waiters: Mutex<()>,
    durable_cv: Condvar,
    cfg: StorageConfig,
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    on_event: Option<EventCallback>,
}

fn internal(msg: String) -> StorageError {
    StorageError::Invalid(format!("internal storage invariant violated: {msg}"))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this crate; the state is still
        // structurally valid, so keep serving rather than cascading panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waiters park on their own small mutex, not the state mutex, so that waking hundreds of
    /// them after a sync does not stall submitters or the writer.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let mut g = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.durable_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if self.failed.load(Ordering::Acquire) {
                drop(g);
                return match &self.lock().poisoned {
                    Some(e) => Err(StorageError::Poisoned(e.clone())),
                    None => Err(StorageError::Closed),
                };
            }
            g = self.durable_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wake every waiter. Taking the waiter lock orders this after any waiter's last check.
    fn wake_waiters(&self) {
        drop(self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        self.durable_cv.notify_all();
    }

    fn body_max(&self) -> usize {
        self.cfg.entry_bytes_max as usize + record::ENTRY_PREFIX
    }

    fn seg_path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
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
    /// Open (or create) the log in `dir`, recover it, and start the writer thread.
    ///
    /// Recovery replays every segment (cost: one sequential read of the log), cuts a torn tail
    /// off the newest segment with a warning, fails with [`StorageError::Corrupt`] on damage
    /// anywhere else, starts a fresh segment, and deletes segments wholly behind the floor.
    /// `on_event` is called on the writer thread after every sync.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        cfg: &StorageConfig,
        on_event: Option<EventCallback>,
    ) -> Result<(Log, LogRecovery)> {
        cfg.validate()?;
        vfs.create_dir_all(dir)
            .map_err(io_err("create_dir_all", dir))?;
        if cfg.fsync == FsyncPolicy::Relaxed {
            tracing::warn!(
                dir = %dir.display(),
                "storage fsync policy is RELAXED: writes are acknowledged without fdatasync. A power \
                 loss or kernel crash can lose acknowledged entries and votes, which breaks Raft's \
                 safety (a node may vote twice or forget committed entries). Use only for benchmarks."
            );
        }
        let rec = recover(vfs.as_ref(), dir, cfg)?;
        let segments_replayed = rec.segments.len();
        let disk = rec.disk;
        let mut segments = rec.segments;
        let torn_tail = rec.torn;

        // Always start a fresh segment: it restates floor and hard state, so older segments can be
        // deleted by compaction without losing them, and it never appends after a cut tail.
        let new_seq = segments.keys().next_back().map_or(1, |s| s + 1);
        let (file, len) =
            create_segment(vfs.as_ref(), dir, new_seq, disk.floor, disk.hs, cfg.fsync)?;
        segments.insert(new_seq, file.clone());

        let durable = DurablePoint {
            seq: 0,
            last_index: disk.last(),
            last_term: disk.last_term(),
            hard_state: disk.hs,
        };
        let logical = Logical {
            floor: disk.floor,
            last_index: disk.last(),
            cache: VecDeque::new(),
            cache_first: disk.last() + 1,
            cache_bytes: 0,
            hs: disk.hs,
        };
        let recovery = LogRecovery {
            floor: disk.floor,
            first_index: disk.floor.0 + 1,
            last_index: disk.last(),
            last_term: disk.last_term(),
            hard_state: disk.hs,
            segments_replayed,
            torn_tail,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                next_seq: 1,
                written_seq: 0,
                durable,
                poisoned: None,
                shutdown: false,
                logical,
                disk,
                segments,
                batches: 0,
                syncs: 0,
            }),
            work_cv: Condvar::new(),
            space_cv: Condvar::new(),
            durable_seq: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            waiters: Mutex::new(()),
            durable_cv: Condvar::new(),
            cfg: cfg.clone(),
            vfs,
            dir: dir.to_path_buf(),
            on_event,
        });
        delete_compacted_segments(&shared, new_seq)?;
        warm_cache(&shared)?;
        let w_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("wraft-storage-writer".into())
            .spawn(move || {
                writer_main(
                    w_shared,
                    Writer {
                        seq: new_seq,
                        file,
                        len,
                        allocated: len,
                        buf: Vec::new(),
                    },
                )
            })
            .map_err(io_err("spawn writer thread", dir))?;
        Ok((
            Log {
                shared,
                writer: Some(writer),
            },
            recovery,
        ))
    }

    /// Queue a batch without blocking. Returns [`StorageError::QueueFull`] (nothing queued) when
    /// the queue is at its bound; retry after the next [`WriterEvent::Durable`].
    ///
    /// The batch is visible to reads (`entries`, `term`, `last_index`) as soon as this returns,
    /// before it is durable, so a leader can replicate while its own sync is in flight.
    /// Cost: a mutex acquisition and validation; O(entries).
    pub fn try_submit(&self, batch: WriteBatch) -> Result<WriteTicket> {
        self.submit_inner(batch, false)
    }

    /// Queue a batch, blocking the calling thread while the queue is full.
    pub fn submit(&self, batch: WriteBatch) -> Result<WriteTicket> {
        self.submit_inner(batch, true)
    }

    /// Compact the prefix through `index` (whose term is `term`) behind a snapshot that is already
    /// durable. If the log holds `index` with `term`, later entries are kept; otherwise (the
    /// snapshot is ahead of or conflicts with the log) every entry is discarded and the log
    /// continues at `index + 1` (Raft §7). Whole segments behind the floor are deleted after the
    /// floor record is durable. A no-op if `index` is at or below the current floor. Blocks only
    /// while the queue is full.
    pub fn compact(&self, index: u64, term: u64) -> Result<WriteTicket> {
        self.submit(WriteBatch {
            compact: Some((index, term)),
            ..WriteBatch::default()
        })
    }

    fn submit_inner(&self, batch: WriteBatch, block: bool) -> Result<WriteTicket> {
        let cfg = &self.shared.cfg;
        for e in &batch.entries {
            if e.payload.len() as u64 > cfg.entry_bytes_max {
                return Err(StorageError::LimitExceeded {
                    what: "log entry payload",
                    limit_name: "entry_bytes_max",
                    limit: cfg.entry_bytes_max,
                    found: e.payload.len() as u64,
                });
            }
        }
        let bytes = batch.encoded_bytes();
        if bytes > cfg.queue_bytes_max {
            return Err(StorageError::LimitExceeded {
                what: "write batch",
                limit_name: "queue_bytes_max",
                limit: cfg.queue_bytes_max,
                found: bytes,
            });
        }
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = &st.poisoned {
                return Err(StorageError::Poisoned(e.clone()));
            }
            if st.shutdown {
                return Err(StorageError::Closed);
            }
            if st.queue.len() < cfg.queue_ops_max && st.queued_bytes + bytes <= cfg.queue_bytes_max
            {
                break;
            }
            if !block {
                return Err(StorageError::QueueFull {
                    queued_ops: st.queue.len(),
                    queued_bytes: st.queued_bytes,
                    queue_ops_max: cfg.queue_ops_max,
                    queue_bytes_max: cfg.queue_bytes_max,
                });
            }
            st = self
                .shared
                .space_cv
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        let truncate = validate(&st, &batch)?;
        let seq = st.next_seq;
        st.next_seq += 1;
        let l = &mut st.logical;
        if let Some(t) = truncate {
            l.truncate(t);
        }
        for e in &batch.entries {
            l.cache_bytes += cache_cost(e);
            l.cache.push_back(Cached {
                seq,
                entry: e.clone(),
            });
            l.last_index = e.index;
        }
        if let Some(hs) = batch.hard_state {
            l.hs = hs;
        }
        let mut compact = batch.compact;
        if let Some((index, term)) = compact {
            if index <= st.logical.floor.0 {
                compact = None;
            } else {
                let matches = index <= st.logical.last_index && st.term(index).ok() == Some(term);
                let l = &mut st.logical;
                if matches {
                    while l.cache_first <= index {
                        match l.cache.pop_front() {
                            Some(c) => l.cache_bytes -= cache_cost(&c.entry),
                            None => break,
                        }
                        l.cache_first += 1;
                    }
                } else {
                    l.cache.clear();
                    l.cache_bytes = 0;
                    l.last_index = index;
                    l.cache_first = index + 1;
                }
                if l.cache.is_empty() {
                    l.cache_first = l.cache_first.max(l.last_index + 1);
                }
                l.floor = (index, term);
            }
        }
        let limit = cfg.tail_cache_bytes;
        let written = st.written_seq;
        st.logical.evict(written, limit);
        st.queued_bytes += bytes;
        st.queue.push_back(Pending {
            seq,
            truncate,
            entries: batch.entries,
            hs: batch.hard_state,
            compact,
        });
        drop(st);
        self.shared.work_cv.notify_one();
        Ok(WriteTicket {
            seq,
            shared: self.shared.clone(),
        })
    }

    /// Block until submission `seq` is durable.
    pub fn wait_durable(&self, seq: u64) -> Result<()> {
        self.shared.wait_durable(seq)
    }

    /// The latest durable point (cheap: one mutex acquisition).
    pub fn durable(&self) -> DurablePoint {
        self.shared.lock().durable.clone()
    }

    /// Entries `[lo, hi)`, stopping early once the payloads reach `max_bytes` (always at least one
    /// entry if the range is non-empty). Includes submitted-but-not-yet-durable entries.
    /// Recent entries come from the tail cache (no I/O); older ones cost one positional read per
    /// contiguous run, checksum-verified.
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>> {
        let (disk_runs, cached) = {
            let st = self.shared.lock();
            let l = &st.logical;
            if lo <= l.floor.0 {
                return Err(StorageError::Compacted {
                    index: lo,
                    first_index: l.floor.0 + 1,
                });
            }
            if hi > l.last_index + 1 {
                return Err(StorageError::Unavailable {
                    index: hi - 1,
                    last_index: l.last_index,
                });
            }
            if lo >= hi {
                return Ok(Vec::new());
            }
            let mut budget = 0u64;
            let mut disk: Vec<(u64, Loc, Arc<dyn VfsFile>)> = Vec::new();
            let mut cached = Vec::new();
            for index in lo..hi {
                if index >= l.cache_first {
                    let e = &l.cache[(index - l.cache_first) as usize].entry;
                    if budget > 0 && budget + e.payload.len() as u64 > max_bytes {
                        break;
                    }
                    budget += e.payload.len() as u64;
                    cached.push(e.clone());
                } else {
                    let loc = st
                        .disk
                        .locs
                        .get((index.wrapping_sub(st.disk.base)) as usize)
                        .copied()
                        .filter(|_| index >= st.disk.base)
                        .ok_or_else(|| internal(format!("index {index} not in the disk index")))?;
                    let payload_len = (loc.len as usize)
                        .saturating_sub(record::REC_OVERHEAD + record::ENTRY_PREFIX);
                    if budget > 0 && budget + payload_len as u64 > max_bytes {
                        break;
                    }
                    budget += payload_len as u64;
                    let file = st
                        .segments
                        .get(&loc.seg)
                        .cloned()
                        .ok_or_else(|| internal(format!("segment {} not open", loc.seg)))?;
                    disk.push((index, loc, file));
                }
            }
            (disk, cached)
        };
        let mut out = Vec::with_capacity(disk_runs.len() + cached.len());
        read_disk(
            &self.shared.dir,
            self.shared.body_max(),
            &disk_runs,
            &mut out,
        )?;
        out.extend(cached);
        Ok(out)
    }

    /// One entry (see [`Log::entries`]).
    pub fn entry(&self, index: u64) -> Result<LogEntry> {
        self.entries(index, index + 1, u64::MAX)?
            .pop()
            .ok_or(StorageError::Unavailable {
                index,
                last_index: self.last_index(),
            })
    }

    /// Term of `index` (the floor index included). No I/O.
    pub fn term(&self, index: u64) -> Result<u64> {
        self.shared.lock().term(index)
    }

    /// First index in the log (floor + 1), including submitted compactions.
    pub fn first_index(&self) -> u64 {
        self.shared.lock().logical.floor.0 + 1
    }

    /// Last index, including submitted-but-not-durable entries.
    pub fn last_index(&self) -> u64 {
        self.shared.lock().logical.last_index
    }

    /// Compaction floor `(index, term)`, including submitted compactions.
    pub fn floor(&self) -> (u64, u64) {
        self.shared.lock().logical.floor
    }

    /// Latest submitted hard state (durable or not; see [`DurablePoint::hard_state`]).
    pub fn hard_state(&self) -> HardState {
        self.shared.lock().logical.hs
    }

    /// Monitoring counters.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.lock();
        LogStats {
            batches: st.batches,
            syncs: st.syncs,
            queued_ops: st.queue.len(),
            queued_bytes: st.queued_bytes,
            cache_entries: st.logical.cache.len(),
            cache_bytes: st.logical.cache_bytes,
            segments: st.segments.len(),
        }
    }

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

fn read_disk(
    dir: &Path,
    body_max: usize,
    locs: &[(u64, Loc, Arc<dyn VfsFile>)],
    out: &mut Vec<LogEntry>,
) -> Result<()> {
    let mut i = 0;
    while i < locs.len() {
        // Extend the run while records are adjacent in the same segment.
        let (_, first, _) = &locs[i];
        let mut j = i + 1;
        let mut end = first.off + u64::from(first.len);
        while j < locs.len() && locs[j].1.seg == first.seg && locs[j].1.off == end {
            end += u64::from(locs[j].1.len);
            j += 1;
        }
        let path = dir.join(segment_name(first.seg));
        let mut buf = vec![0u8; (end - first.off) as usize];
        read_exact_at(locs[i].2.as_ref(), &mut buf, first.off)
            .map_err(io_err("read log entries", &path))?;
        let buf = Bytes::from(buf);
        let mut off = 0usize;
        for (index, loc, _) in &locs[i..j] {
            let corrupt = |detail: &str, expected: String, found: String| StorageError::Corrupt {
                file: path.clone(),
                offset: loc.off,
                detail: detail.into(),
                expected,
                found,
            };
            match record::decode(&buf, off, body_max) {
                Decoded::Ok(
                    Record::Entry {
                        index: got,
                        term,
                        payload,
                    },
                    next,
                ) => {
                    if got != *index || term != loc.term {
                        return Err(corrupt(
                            "entry read back does not match the index",
                            format!("index {index} term {}", loc.term),
                            format!("index {got} term {term}"),
                        ));
                    }
                    out.push(LogEntry {
                        index: got,
                        term,
                        payload,
                    });
                    off = next;
                }
                other => {
                    return Err(corrupt(
                        "entry read back failed validation",
                        "valid entry".into(),
                        format!("{other:?}"),
                    ));
                }
            }
        }
        i = j;
    }
    Ok(())
}

/// Check a batch against the logical log; returns the effective truncation point.
fn validate(st: &State, b: &WriteBatch) -> Result<Option<u64>> {
    let l = &st.logical;
    let mut truncate = None;
    let mut last = l.last_index;
    if let Some(t) = b.truncate_after {
        if t < l.floor.0 || t > l.last_index {
            return Err(StorageError::Invalid(format!(
                "truncate_after {t} outside the log [{}, {}]",
                l.floor.0, l.last_index
            )));
        }
        truncate = Some(t);
        last = t;
    }
    if let Some(first) = b.entries.first() {
        if first.index <= l.floor.0 {
            return Err(StorageError::Invalid(format!(
                "append at index {} is at or below the compaction floor {}",
                first.index, l.floor.0
            )));
        }
        if first.index > last + 1 {
            return Err(StorageError::Invalid(format!(
                "append at index {} leaves a gap: the log ends at {last}",
                first.index
            )));
        }
        if first.index <= last {
            truncate = Some(first.index - 1);
        }
        let mut prev_term = st.term(first.index - 1)?;
        for (expect, e) in (first.index..).zip(&b.entries) {
            if e.index != expect {
                return Err(StorageError::Invalid(format!(
                    "entries are not contiguous: expected index {expect}, found {}",
                    e.index
                )));
            }
            if e.term < prev_term {
                return Err(StorageError::Invalid(format!(
                    "entry {} has term {} below the previous entry's term {prev_term}",
                    e.index, e.term
                )));
            }
            prev_term = e.term;
        }
    }
    if let Some(hs) = &b.hard_state
        && hs.term < l.hs.term
    {
        return Err(StorageError::Invalid(format!(
            "hard state term goes backwards from {} to {}",
            l.hs.term, hs.term
        )));
    }
    Ok(truncate)
}

struct Writer {
    seq: u64,
    file: Arc<dyn VfsFile>,
    /// End of the records written so far.
    len: u64,
    /// Length of the segment file: `len` plus the zero-filled space written ahead of it.
    allocated: u64,
    buf: Vec<u8>,
}

fn writer_main(shared: Arc<Shared>, mut w: Writer) {
    loop {
        let batch: Vec<Pending> = {
            let mut st = shared.lock();
            while st.queue.is_empty() {
                if st.shutdown {
                    return;
                }
                st = shared.work_cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.queued_bytes = 0;
            st.queue.drain(..).collect()
        };
        shared.space_cv.notify_all();
        if let Err(e) = write_batch(&shared, &mut w, batch) {
            let e = Arc::new(e);
            tracing::error!(error = %e, "storage writer failed; refusing further writes");
            shared.lock().poisoned = Some(e.clone());
            shared.failed.store(true, Ordering::Release);
            shared.wake_waiters();
            shared.space_cv.notify_all();
            if let Some(cb) = &shared.on_event {
                cb(&WriterEvent::Failed(e));
            }
            return;
        }
    }
}

fn write_batch(shared: &Shared, w: &mut Writer, batch: Vec<Pending>) -> Result<()> {
    let cfg = &shared.cfg;
    if w.len >= cfg.segment_bytes {
        roll(shared, w)?;
    }
    let Some(seq_hi) = batch.last().map(|p| p.seq) else {
        return Ok(());
    };
    w.buf.clear();
    let mut summaries: Vec<(Summary, Loc)> = Vec::new();
    let mut compacted = false;
    for p in &batch {
        let mut push = |rec: Record, buf: &mut Vec<u8>| {
            let start = buf.len();
            record::encode(&rec, buf);
            let loc = Loc {
                seg: w.seq,
                off: w.len + start as u64,
                len: (buf.len() - start) as u32,
                term: 0,
            };
            summaries.push((Summary::from(&rec), loc));
        };
        if let Some(t) = p.truncate {
            push(Record::Truncate { last_kept: t }, &mut w.buf);
        }
        for e in &p.entries {
            push(
                Record::Entry {
                    index: e.index,
                    term: e.term,
                    payload: e.payload.clone(),
                },
                &mut w.buf,
            );
        }
        if let Some(hs) = p.hs {
            push(Record::HardState(hs), &mut w.buf);
        }
        if let Some((index, term)) = p.compact {
            push(Record::Floor { index, term }, &mut w.buf);
            compacted = true;
        }
    }
    let path = shared.seg_path(w.seq);
    w.file
        .write_all_at(&w.buf, w.len)
        .map_err(io_err("write log segment", &path))?;
    w.len += w.buf.len() as u64;
    w.allocated = w.allocated.max(w.len);
    if cfg.preallocate_bytes > 0 && w.allocated - w.len < cfg.preallocate_bytes / 2 {
        // Zeros after the records, made durable by this batch's sync. A crash cutting this
        // write leaves the records whole and a shorter zero tail, which recovery trims.
        let zeros = vec![0u8; cfg.preallocate_bytes as usize];
        w.file
            .write_all_at(&zeros, w.allocated)
            .map_err(io_err("preallocate log segment", &path))?;
        w.allocated += cfg.preallocate_bytes;
    }
    {
        let mut st = shared.lock();
        for (s, loc) in summaries {
            st.disk.apply(s, loc).map_err(|(d, _, _)| {
                internal(format!("writer produced a record the index rejects: {d}"))
            })?;
        }
        st.written_seq = seq_hi;
        st.batches += 1;
        let written = st.written_seq;
        st.logical.evict(written, cfg.tail_cache_bytes);
    }
    if cfg.fsync == FsyncPolicy::Durable {
        w.file
            .sync_data()
            .map_err(io_err("fdatasync log segment", &path))?;
    }
    let point = {
        let mut st = shared.lock();
        shared.durable_seq.store(seq_hi, Ordering::Release);
        if cfg.fsync == FsyncPolicy::Durable {
            st.syncs += 1;
        }
        st.durable = DurablePoint {
            seq: seq_hi,
            last_index: st.disk.last(),
            last_term: st.disk.last_term(),
            hard_state: st.disk.hs,
        };
        st.durable.clone()
    };
    shared.wake_waiters();
    if compacted {
        delete_compacted_segments(shared, w.seq)?;
    }
    if let Some(cb) = &shared.on_event {
        cb(&WriterEvent::Durable(point));
    }
    Ok(())
}

/// Create segment `seq` holding the header, the floor and the hard state; durable before return.
fn create_segment(
    vfs: &dyn Vfs,
    dir: &Path,
    seq: u64,
    floor: (u64, u64),
    hs: HardState,
    fsync: FsyncPolicy,
) -> Result<(Arc<dyn VfsFile>, u64)> {
    let path = dir.join(segment_name(seq));
    let file = vfs
        .open(&path, OpenMode::CreateNew)
        .map_err(io_err("create log segment", &path))?;
    let mut buf = Vec::new();
    record::encode_segment_header(seq, &mut buf);
    record::encode(
        &Record::Floor {
            index: floor.0,
            term: floor.1,
        },
        &mut buf,
    );
    record::encode(&Record::HardState(hs), &mut buf);
    file.write_all_at(&buf, 0)
        .map_err(io_err("write log segment header", &path))?;
    if fsync == FsyncPolicy::Durable {
        file.sync_data()
            .map_err(io_err("fdatasync new log segment", &path))?;
        vfs.sync_dir(dir)
            .map_err(io_err("fsync log directory", dir))?;
    }
    Ok((file, buf.len() as u64))
}

/// Seal the current segment (it is fully synced: rolls happen between batches) and start the next.
/// A sealed segment ends exactly after its last record: its preallocated tail is cut first,
/// durably, so recovery can hold every segment but the newest to "no bytes after the records".
fn roll(shared: &Shared, w: &mut Writer) -> Result<()> {
    if w.allocated > w.len {
        let sync = shared.cfg.fsync == FsyncPolicy::Durable;
        cut_segment(w.file.as_ref(), w.len, &shared.seg_path(w.seq), sync)?;
        w.allocated = w.len;
    }
    let new_seq = w.seq + 1;
    // The disk index only changes on this thread, so floor and hard state cannot move under us.
    let (floor, hs) = {
        let st = shared.lock();
        (st.disk.floor, st.disk.hs)
    };
    let (file, len) = create_segment(
        shared.vfs.as_ref(),
        &shared.dir,
        new_seq,
        floor,
        hs,
        shared.cfg.fsync,
    )?;
    shared.lock().segments.insert(new_seq, file.clone());
    w.seq = new_seq;
    w.file = file;
    w.len = len;
    w.allocated = len;
    Ok(())
}

/// Delete segments that hold no live entry and are older than `current`; floor record first
/// (already durable when this runs), then unlink + directory fsync.
fn delete_compacted_segments(shared: &Shared, current: u64) -> Result<()> {
    let doomed: Vec<u64> = {
        let mut st = shared.lock();
        let keep_from = st.disk.locs.front().map_or(current, |l| l.seg.min(current));
        let doomed: Vec<u64> = st.segments.range(..keep_from).map(|(s, _)| *s).collect();
        for s in &doomed {
            st.segments.remove(s);
        }
        doomed
    };
    if doomed.is_empty() {
        return Ok(());
    }
    // Oldest first: a crash part-way leaves a contiguous run of segments.
    for s in &doomed {
        let path = shared.seg_path(*s);
        shared
            .vfs
            .remove_file(&path)
            .map_err(io_err("remove compacted log segment", &path))?;
        if shared.cfg.fsync == FsyncPolicy::Durable {
            shared
                .vfs
                .sync_dir(&shared.dir)
                .map_err(io_err("fsync log directory", &shared.dir))?;
        }
    }
    tracing::debug!(
        segments = doomed.len(),
        "deleted log segments behind the compaction floor"
    );
    Ok(())
}

/// Fill the tail cache from disk after recovery, newest entries first, up to `tail_cache_bytes`.
fn warm_cache(shared: &Shared) -> Result<()> {
    let locs: Vec<(u64, Loc, Arc<dyn VfsFile>)> = {
        let st = shared.lock();
        let mut budget = 0u64;
        let mut out = Vec::new();
        for (i, loc) in st.disk.locs.iter().enumerate().rev() {
            let cost = u64::from(loc.len) + CACHE_ENTRY_OVERHEAD_BYTES;
            if budget + cost > shared.cfg.tail_cache_bytes {
                break;
            }
            budget += cost;
            let file = st
                .segments
                .get(&loc.seg)
                .cloned()
                .ok_or_else(|| internal("segment of live entry not open".into()))?;
            out.push((st.disk.base + i as u64, *loc, file));
        }
        out.reverse();
        out
    };
    if locs.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::new();
    read_disk(&shared.dir, shared.body_max(), &locs, &mut entries)?;
    let mut st = shared.lock();
    let l = &mut st.logical;
    l.cache_first = entries.first().map_or(l.last_index + 1, |e| e.index);
    for e in entries {
        l.cache_bytes += cache_cost(&e);
        l.cache.push_back(Cached { seq: 0, entry: e });
    }
    Ok(())
}

/// Cut segment file `file` (at `path`) to `len` bytes, durably if `sync`.
fn cut_segment(file: &dyn VfsFile, len: u64, path: &Path, sync: bool) -> Result<()> {
    file.set_len(len).map_err(io_err("cut log segment", path))?;
    if sync {
        file.sync_data()
            .map_err(io_err("fdatasync cut log segment", path))?;
    }
    Ok(())
}

/// Whether every byte of `data` from `from` on is zero (true past the end). In the newest
/// segment, zeros are the writer's preallocated space: a record cut by a crash can only be
/// followed by them, never by another record.
fn zeros_from(data: &[u8], from: usize) -> bool {
    data.get(from..)
        .is_none_or(|rest| rest.iter().all(|b| *b == 0))
}

struct Recovery {
    disk: DiskIndex,
    segments: BTreeMap<u64, Arc<dyn VfsFile>>,
    torn: Option<TornTail>,
}

fn recover(vfs: &dyn Vfs, dir: &Path, cfg: &StorageConfig) -> Result<Recovery> {
    let mut seqs: Vec<u64> = Vec::new();
    for name in vfs.list(dir).map_err(io_err("list log directory", dir))? {
        match parse_segment_name(&name) {
            Some(s) => seqs.push(s),
            None => {
                tracing::warn!(file = %dir.join(&name).display(), "ignoring unexpected file in the log directory")
            }
        }
    }
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(StorageError::Corrupt {
                file: dir.join(segment_name(w[0] + 1)),
                offset: 0,
                detail: "log segment missing (segments must be consecutive)".into(),
                expected: segment_name(w[0] + 1),
                found: format!("next segment is {}", segment_name(w[1])),
            });
        }
    }
    let mut disk = DiskIndex::default();
    let mut segments = BTreeMap::new();
    let mut torn = None;
    let body_max = cfg.entry_bytes_max as usize + record::ENTRY_PREFIX;
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = dir.join(segment_name(seq));
        let file = vfs
            .open(&path, OpenMode::ReadWrite)
            .map_err(io_err("open log segment", &path))?;
        let data = Bytes::from(read_all(file.as_ref()).map_err(io_err("read log segment", &path))?);
        let corrupt = |offset: usize, detail: String, expected: String, found: String| {
            StorageError::Corrupt {
                file: path.clone(),
                offset: offset as u64,
                detail,
                expected,
                found,
            }
        };
        match record::check_segment_header(&data, seq) {
            SegHeader::Ok => {}
            SegHeader::Torn
                if is_last
                    && (data.len() < record::SEG_HEADER_LEN || data.iter().all(|b| *b == 0)) =>
            {
                tracing::warn!(
                    file = %path.display(),
                    bytes = data.len(),
                    "newest log segment has an incomplete header (crash while creating it); removing it"
                );
                vfs.remove_file(&path)
                    .map_err(io_err("remove torn log segment", &path))?;
                vfs.sync_dir(dir)
                    .map_err(io_err("fsync log directory", dir))?;
                torn = Some(TornTail {
                    file: path.clone(),
                    offset: 0,
                    bytes_dropped: data.len() as u64,
                });
                break;
            }
            SegHeader::Torn => {
                return Err(corrupt(
                    0,
                    "segment header is zeroed or short".into(),
                    "valid header".into(),
                    format!("{} bytes", data.len()),
                ));
            }
            SegHeader::Bad {
                detail,
                expected,
                found,
            } => return Err(corrupt(0, detail.into(), expected, found)),
            SegHeader::Version(v) => {
                return Err(StorageError::UnsupportedVersion {
                    file: path,
                    expected: record::SEG_VERSION,
                    found: v,
                });
            }
        }
        let mut off = record::SEG_HEADER_LEN;
        loop {
            if is_last && off < data.len() && zeros_from(&data, off) {
                // The writer's preallocated space (or a crash cut the write of it): no record
                // was ever there. Trimmed, so that once this segment is no longer the newest it
                // ends exactly after its records, like every sealed one.
                let dropped = (data.len() - off) as u64;
                tracing::debug!(file = %path.display(), offset = off, bytes = dropped,
                    "trimming the zero-filled (preallocated) tail of the newest log segment");
                cut_segment(file.as_ref(), off as u64, &path, true)?;
                break;
            }
            let torn_here = match record::decode(&data, off, body_max) {
                Decoded::End => break,
                Decoded::Ok(rec, next) => {
                    let loc = Loc {
                        seg: seq,
                        off: off as u64,
                        len: (next - off) as u32,
                        term: 0,
                    };
                    disk.apply(Summary::from(&rec), loc)
                        .map_err(|(d, e, f)| corrupt(off, d, e, f))?;
                    off = next;
                    continue;
                }
                Decoded::Incomplete if is_last => "record runs past the end of the file",
                Decoded::BadHeader { .. }
                    if is_last && zeros_from(&data, off + record::REC_HEADER_LEN) =>
                {
                    "the last record's header was cut by a crash"
                }
                Decoded::BadBody { end, .. } if is_last && zeros_from(&data, end) => {
                    "last record fails its checksum"
                }
                Decoded::Incomplete => {
                    return Err(corrupt(
                        off,
                        "record runs past the end of a sealed segment".into(),
                        "complete record".into(),
                        format!("{} bytes left", data.len() - off),
                    ));
                }
                Decoded::BadHeader {
                    expected, found, ..
                } => {
                    return Err(corrupt(
                        off,
                        "record header checksum".into(),
                        format!("{expected:#010x}"),
                        format!("{found:#010x}"),
                    ));
                }
                Decoded::BadBody {
                    expected, found, ..
                } => {
                    return Err(corrupt(
                        off,
                        "record body checksum".into(),
                        format!("{expected:#010x}"),
                        format!("{found:#010x}"),
                    ));
                }
                Decoded::Invalid(why) => {
                    return Err(corrupt(
                        off,
                        why,
                        "valid record".into(),
                        "invalid record".into(),
                    ));
                }
            };
            let dropped = (data.len() - off) as u64;
            tracing::warn!(
                file = %path.display(),
                offset = off,
                bytes_dropped = dropped,
                reason = torn_here,
                "truncating torn tail of the newest log segment (crash mid-write); the dropped bytes were never acknowledged as durable"
            );
            cut_segment(file.as_ref(), off as u64, &path, true)?;
            torn = Some(TornTail {
                file: path.clone(),
                offset: off as u64,
                bytes_dropped: dropped,
            });
            break;
        }
        segments.insert(seq, file);
    }
    let first = seqs
        .first()
        .map(|s| dir.join(segment_name(*s)))
        .unwrap_or_else(|| dir.to_path_buf());
    disk.finish()
        .map_err(|(detail, expected, found)| StorageError::Corrupt {
            file: first,
            offset: 0,
            detail,
            expected,
            found,
        })?;
    Ok(Recovery {
        disk,
        segments,
        torn,
    })
}
