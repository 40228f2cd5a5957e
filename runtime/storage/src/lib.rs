//! Durable storage for a wraft node: the Raft log, the hard state, the snapshot store and the
//! module store.
//!
//! # Model
//!
//! A node's data directory holds two subdirectories:
//!
//! * `wal/` — the **log**: numbered segment files of checksummed records. Besides entries, the log
//!   carries *hard state* records (term, vote, commit) and *floor* records (the compaction point),
//!   so that one `fdatasync` makes a whole batch of entries and the vote durable together. Every
//!   segment starts by restating the floor and hard state, so deleting old segments never loses
//!   them. See [`Log`].
//! * `snap/` — the **snapshot store**: one file per snapshot, header + guest payload, protected by
//!   a whole-file BLAKE3 digest and published by rename. A file may leave out the segments an
//!   older file holds (holes plus a trailer naming where they lie), so retained snapshots of
//!   slowly changing state share their unchanged bytes; a retired snapshot others still borrow
//!   from stays as a `.pack`. See [`SnapshotStore`].
//!
//! Apart from those, a [`ModuleStore`] (opened on its own, in a directory of the caller's choosing)
//! keeps WebAssembly modules named by their SHA-256, so that a deploy log entry can carry only the
//! hash.
//!
//! # Group commit
//!
//! Producers (the node driver, possibly several threads) call [`Log::try_submit`] (never blocks) or
//! [`Log::submit`] (blocks only while the bounded queue is full). A dedicated writer thread takes
//! *everything* queued since its last sync, writes it with one `pwrite`, issues one `fdatasync`, and
//! then completes all of it at once: [`WriteTicket::wait`] returns, [`WriteTicket::is_durable`]
//! turns true, and the [`EventCallback`] receives [`WriterEvent::Durable`] with the new
//! [`DurablePoint`]. While a sync is in flight, new submissions queue up for the next batch and
//! reads (replication) proceed from the in-memory tail cache.
//!
//! From an async driver: submit with `try_submit`, keep the ticket's `seq`, and turn the callback
//! into an event (e.g. send the `DurablePoint` on a channel); an entry may be acknowledged to the
//! leader once `DurablePoint::seq >= ticket.seq()`.
//!
//! ```
//! use bytes::Bytes;
//! use wraft_storage::{HardState, LogEntry, Storage, StorageConfig, WriteBatch};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (storage, recovered) = Storage::open(dir.path(), &StorageConfig::default(), None).unwrap();
//! assert_eq!(recovered.log.last_index, 0);
//!
//! let batch = WriteBatch::default()
//!     .with_entries(vec![LogEntry { index: 1, term: 1, payload: Bytes::from_static(b"put x=1") }])
//!     .with_hard_state(HardState { term: 1, vote: Some(7), commit: 0 });
//! let ticket = storage.log.try_submit(batch).unwrap(); // queued, readable now
//! assert_eq!(storage.log.entry(1).unwrap().payload, Bytes::from_static(b"put x=1"));
//! ticket.wait().unwrap(); // durable
//! ```
//!
//! # Recovery
//!
//! [`Storage::open`] verifies the newest snapshot (falling back to the previous one with a warning
//! that names the file and both digests), replays the log, cuts a torn tail record off the newest
//! segment with a warning, and fails with [`StorageError::Corrupt`] on damage anywhere else. That
//! error carries the file, offset, expected and found values, and the operator procedure
//! ([`OPERATOR_RECOVERY`]): wipe the node and rejoin it as a fresh member to catch up by snapshot.
//!
//! # Fault injection
//!
//! All I/O goes through the [`Vfs`] trait. [`fault::FaultFs`] is an in-memory implementation that
//! models power loss (unsynced data and directory entries lost), torn writes at any byte, and bit
//! flips; the crate's crash tests and the engine simulator drive storage through it.

#![warn(missing_docs)]

mod config;
mod error;
pub mod fault;
mod log;
mod modules;
mod record;
mod snapshot;
mod vfs;

use std::path::Path;
use std::sync::Arc;

use crate::error::io_err;

pub use bytes::Bytes;

pub use crate::config::{FsyncPolicy, StorageConfig};
pub use crate::error::{OPERATOR_RECOVERY, Result, StorageError};
pub use crate::log::{
    DurablePoint, EventCallback, Log, LogRecovery, LogStats, TornTail, WriteBatch, WriteTicket,
    WriterEvent,
};
pub use crate::modules::{MODULE_HEADER_BYTES, ModuleStore, StoredModule};
pub use crate::snapshot::{
    IncomingSnapshot, Membership, PartialSource, SNAPSHOT_HEADER_BYTES, SharedSegments, SnapshotId,
    SnapshotInfo, SnapshotMeta, SnapshotPin, SnapshotReader, SnapshotRecovery, SnapshotStore,
    SnapshotWriter, inspect_snapshot_file, open_snapshot_file,
};
pub use crate::vfs::{OpenMode, StdFs, Vfs, VfsFile, read_exact_at};

/// One Raft log entry as stored. The node driver encodes the engine's entry kind into `payload`
/// (postcard); storage treats it as opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Log index (1-based).
    pub index: u64,
    /// Term in which the entry was created.
    pub term: u64,
    /// Opaque payload; cloning is a reference-count increment.
    pub payload: Bytes,
}

/// Raft's persistent per-node state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term`, if any.
    pub vote: Option<u64>,
    /// Highest index known committed (persisted opportunistically; may lag).
    pub commit: u64,
}

/// The log and the snapshot store of one node.
#[derive(Debug)]
pub struct Storage {
    /// The group-committed log (entries, hard state, floor).
    pub log: Log,
    /// Snapshot files.
    pub snapshots: SnapshotStore,
    /// The data directory's exclusive lock (real file system only), released on drop (after
    /// the log, whose drop joins its writer thread, and the snapshot store: fields drop in order).
    lock: Option<DirLock>,
}

/// Name of the lock file [`Storage::open`] holds in a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive advisory lock (`flock`) on `DIR/LOCK`: two writers on one log would interleave
/// records and lose acknowledged entries, so a second [`Storage::open`] of a directory in use is
/// refused with [`StorageError::Locked`] instead. The kernel drops the lock when the process dies,
/// so a crash never leaves a stale lock behind.
#[derive(Debug)]
struct DirLock {
    #[allow(dead_code)]
    file: std::fs::File,
    /// Dropped after `file` (fields drop in order), so a [`DirReleased`] sees the lock gone.
    alive: Arc<()>,
}

/// Tells whether the lock a [`Storage`] held on its data directory has been released: every
/// handle to that `Storage` is dropped and the lock file is closed ([`Storage::release_signal`]).
/// A process that stops a node and opens its directory again waits for this. Other handles to
/// the node's snapshot files (a snapshot pin, a transfer still winding down) may outlive it.
#[derive(Debug, Clone)]
pub struct DirReleased(std::sync::Weak<()>);

impl DirReleased {
    /// Whether the lock has been released.
    pub fn is_released(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(io_err("create_dir_all", dir))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock {
                file,
                alive: Arc::new(()),
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
                dir: dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err("flock", &path)(e)),
        }
    }
}

/// Everything [`Storage::open`] recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Log state (floor, last index, hard state, torn tail if any).
    pub log: LogRecovery,
    /// Snapshot state (newest valid snapshot, quarantined and removed files, resumable transfers).
    pub snapshots: SnapshotRecovery,
}

impl Recovered {
    /// Newest valid snapshot to restore the state machine from.
    pub fn snapshot(&self) -> Option<&SnapshotInfo> {
        self.snapshots.latest.as_ref()
    }

    /// First log index to apply after restoring [`Recovered::snapshot`].
    pub fn replay_from(&self) -> u64 {
        self.snapshot()
            .map_or(self.log.first_index, |s| s.meta.id.last_index + 1)
    }
}

impl Storage {
    /// Open `dir` on the real file system, holding its lock file (see [`LOCK_FILE`]) for as long
    /// as the returned `Storage` lives; fails with [`StorageError::Locked`] if another process or
    /// another `Storage` holds it. See [`Storage::open_with_vfs`].
    pub fn open(
        dir: &Path,
        cfg: &StorageConfig,
        on_event: Option<EventCallback>,
    ) -> Result<(Storage, Recovered)> {
        let lock = DirLock::acquire(dir)?;
        let (mut storage, recovered) = Self::open_with_vfs(Arc::new(StdFs), dir, cfg, on_event)?;
        storage.lock = Some(lock);
        Ok((storage, recovered))
    }

    /// What tells when this storage's directory lock is released: after the last handle to the
    /// `Storage` is dropped, its log closed and the lock file closed. `None` for storage without
    /// a lock (opened through another VFS).
    pub fn release_signal(&self) -> Option<DirReleased> {
        self.lock
            .as_ref()
            .map(|l| DirReleased(Arc::downgrade(&l.alive)))
    }

    /// Open (or create) a node's storage under `dir` through `vfs` and recover it.
    ///
    /// Fails with [`StorageError::SnapshotBehindLogFloor`] if the log was compacted past the newest
    /// valid snapshot (entries would be missing), and with [`StorageError::Corrupt`] on damage that
    /// is not a torn tail. If the newest snapshot is ahead of the log (a crash between installing a
    /// snapshot and compacting the log) or conflicts with it, the log is compacted to the snapshot
    /// before returning, so [`Recovered::replay_from`] always points at entries that exist.
    pub fn open_with_vfs(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        cfg: &StorageConfig,
        on_event: Option<EventCallback>,
    ) -> Result<(Storage, Recovered)> {
        cfg.validate()?;
        let (snapshots, snap_rec) = SnapshotStore::open(vfs.clone(), &dir.join("snap"), cfg)?;
        let (log, mut log_rec) = Log::open(vfs, &dir.join("wal"), cfg, on_event)?;
        let snap_index = snap_rec.latest.as_ref().map_or(0, |s| s.meta.id.last_index);
        if log_rec.floor.0 > snap_index {
            return Err(StorageError::SnapshotBehindLogFloor {
                floor_index: log_rec.floor.0,
                snapshot_index: snap_index,
            });
        }
        if let Some(s) = &snap_rec.latest {
            let id = s.meta.id;
            let consistent = log.term(id.last_index).ok() == Some(id.last_term);
            if !consistent {
                tracing::info!(
                    snapshot = %id,
                    log_last_index = log_rec.last_index,
                    "log is behind or conflicts with the newest snapshot; compacting it to the snapshot"
                );
                log.compact(id.last_index, id.last_term)?.wait()?;
                log_rec.floor = log.floor();
                log_rec.first_index = log.first_index();
                log_rec.last_index = log.last_index();
                log_rec.last_term = log.term(log_rec.last_index)?;
            }
        }
        Ok((
            Storage {
                log,
                snapshots,
                lock: None,
            },
            Recovered {
                log: log_rec,
                snapshots: snap_rec,
            },
        ))
    }
}
