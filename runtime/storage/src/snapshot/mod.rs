//! The snapshot store: one self-describing, digest-protected file per snapshot.
//!
//! Files in the directory: `<index:020>-<term:020>.snap` (complete), `.snap.tmp` (being written
//! locally; deleted on open), `.partial` + `.partial.progress` (being received; resumable),
//! `.partial.source` (at most one: the durable prefix of an interrupted transfer of another
//! snapshot, a source of segments for the next transfer), `.snap.corrupt` (failed verification;
//! kept for the operator, never read), `.pack` (a retired snapshot whose bytes newer ones still
//! share; see `shared`).
//!
//! Its parts:
//! * `format`: the file layout (drawn there), its verification, and the whole-file digest;
//! * `recovery`: [`SnapshotStore::open`], which verifies the newest snapshot, quarantines corrupt
//!   ones and removes leftovers;
//! * `writer`: [`SnapshotWriter`], a snapshot written locally from the guest's chunks;
//! * `reader`: [`SnapshotReader`], a complete snapshot streamed out;
//! * `retention`: listing, pins, acceptance of received snapshots, and deletion of old ones;
//! * `incoming`: [`IncomingSnapshot`], a snapshot being received, resumable after a crash;
//! * `progress`: the `.partial.progress` file holding a transfer's durable offset;
//! * `source`: [`PartialSource`], the `.partial.source` file;
//! * `shared`: files that borrow unchanged bytes from older ones instead of repeating them
//!   (trailer, logical view, `.pack` files of retired owners).

mod format;
mod incoming;
mod progress;
mod reader;
mod recovery;
mod retention;
mod shared;
mod source;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::config::{FsyncPolicy, StorageConfig};
use crate::error::{Result, StorageError, io_err};
use crate::vfs::{Vfs, VfsFile};

pub use self::format::{SNAPSHOT_HEADER_BYTES, inspect_snapshot_file, open_snapshot_file};
pub use self::incoming::IncomingSnapshot;
pub use self::reader::SnapshotReader;
pub use self::retention::SnapshotPin;
pub use self::shared::{Borrow, SharedSegments};
pub use self::source::PartialSource;
pub use self::writer::SnapshotWriter;

/// Identity of a snapshot: the last log index it covers and that entry's term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnapshotId {
    /// Last log index included in the snapshot.
    pub last_index: u64,
    /// Term of `last_index`.
    pub last_term: u64,
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}-{:020}", self.last_index, self.last_term)
    }
}

/// Cluster membership as of the snapshot's last index. Node ids are opaque `u64`s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members that receive the log.
    pub learners: Vec<u64>,
}

/// Metadata stored in a snapshot's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index and term covered.
    pub id: SnapshotId,
    /// Membership at `id.last_index`.
    pub membership: Membership,
    /// Format of the guest payload (e.g. the machine's name and snapshot-format version), checked
    /// by the host before restoring.
    pub format: String,
}

/// A complete snapshot on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Header metadata.
    pub meta: SnapshotMeta,
    /// Guest payload length in bytes.
    pub body_len: u64,
    /// Whole-file BLAKE3 digest from the header.
    pub digest: [u8; 32],
    /// Total file length (header + meta + body); what a transfer ships.
    pub file_len: u64,
    /// Path of the file.
    pub path: PathBuf,
    /// Bytes of the file that are not written in it but shared with (borrowed from) an older
    /// snapshot file: the disk it saves.
    pub shared_bytes: u64,
}

impl SnapshotInfo {
    /// The snapshot's identity.
    pub fn id(&self) -> SnapshotId {
        self.meta.id
    }
    /// Offset of the body within the file.
    pub fn body_offset(&self) -> u64 {
        self.file_len - self.body_len
    }
}

/// What [`SnapshotStore::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotRecovery {
    /// Newest snapshot whose digest verified.
    pub latest: Option<SnapshotInfo>,
    /// Snapshots that failed verification, renamed to `*.snap.corrupt` (or to `*.pack` when a
    /// good snapshot shares bytes with them).
    pub quarantined: Vec<PathBuf>,
    /// Leftover files deleted (unfinished local writes, superseded or orphaned partials).
    pub removed: Vec<PathBuf>,
    /// Incoming snapshots that can be resumed with [`SnapshotStore::incoming`].
    pub resumable: Vec<(SnapshotId, u64)>,
}

#[derive(Debug, Default)]
struct SnapState {
    complete: BTreeMap<SnapshotId, SnapshotInfo>,
    /// Received from a leader and not (yet) accepted by the node: complete and readable, but
    /// outside `snapshot_retain_count` (see [`SnapshotStore::accept`]).
    received: HashSet<SnapshotId>,
    pins: HashMap<SnapshotId, usize>,
    incoming_open: HashSet<SnapshotId>,
    /// Borrows of every complete file and pack that has any (see `shared`).
    shares: HashMap<SnapshotId, Arc<Vec<Borrow>>>,
    /// Retired snapshots kept as `.pack` files because newer ones borrow from them.
    packs: BTreeSet<SnapshotId>,
    /// Packs whose own borrows are unknown (their trailer could not be read at open): nothing new
    /// borrows from them, as a range of theirs might be a hole.
    unlendable: BTreeSet<SnapshotId>,
    /// Owners each snapshot writer in progress borrows from, by writer number.
    writing: HashMap<u64, BTreeSet<SnapshotId>>,
    /// Owners each incoming snapshot borrows from, by its id, for as long as its partial file
    /// exists (a resumed transfer reads them again).
    incoming_claims: HashMap<SnapshotId, BTreeSet<SnapshotId>>,
    /// Number of the next writer.
    next_writer: u64,
}

impl SnapState {
    /// Snapshots whose bytes a complete snapshot or a writer in progress borrows: they must stay
    /// on disk (as `.snap` or `.pack`). Packs' own borrows do not count.
    fn owners_in_use(&self) -> BTreeSet<SnapshotId> {
        let mut used: BTreeSet<SnapshotId> = self
            .writing
            .values()
            .chain(self.incoming_claims.values())
            .flatten()
            .copied()
            .collect();
        for (id, borrows) in &self.shares {
            if self.complete.contains_key(id) {
                used.extend(borrows.iter().map(|b| b.owner));
            }
        }
        used
    }

    /// Where `borrower` can borrow the `len` bytes at `owner_at` of `owner` from: the file that
    /// holds them (following one of `owner`'s own borrows), if it is on disk and is not the
    /// borrower. `None`: write them instead.
    fn lendable(
        &self,
        owner: SnapshotId,
        owner_at: u64,
        len: u64,
        borrower: SnapshotId,
    ) -> Option<(SnapshotId, u64)> {
        let on_disk = |id: &SnapshotId| {
            (self.complete.contains_key(id) || self.packs.contains(id))
                && !self.unlendable.contains(id)
        };
        if !on_disk(&owner) {
            return None;
        }
        let theirs = self.shares.get(&owner).map_or(&[][..], |b| b.as_slice());
        let (holder, at) = shared::resolve(owner, owner_at, len, theirs)?;
        (holder != borrower && on_disk(&holder)).then_some((holder, at))
    }
}

#[derive(Debug)]
struct Inner {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    cfg: StorageConfig,
    state: Mutex<SnapState>,
    /// Held by a retention pass ([`SnapshotStore::gc`]) from start to end.
    gc_lock: Mutex<()>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, SnapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn path(&self, id: SnapshotId, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}{ext}"))
    }
    fn sync_dir(&self) -> Result<()> {
        if self.cfg.fsync == FsyncPolicy::Durable {
            self.vfs
                .sync_dir(&self.dir)
                .map_err(io_err("fsync snapshot directory", &self.dir))?;
        }
        Ok(())
    }
    fn sync_file(&self, f: &dyn VfsFile, path: &Path) -> Result<()> {
        if self.cfg.fsync == FsyncPolicy::Durable {
            f.sync_data()
                .map_err(io_err("fdatasync snapshot file", path))?;
        }
        Ok(())
    }
}

/// Directory of snapshots with retention and pinning. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    inner: Arc<Inner>,
}

fn parse_id(stem: &str) -> Option<SnapshotId> {
    let (i, t) = stem.split_once('-')?;
    if i.len() != 20 || t.len() != 20 {
        return None;
    }
    Some(SnapshotId {
        last_index: i.parse().ok()?,
        last_term: t.parse().ok()?,
    })
}

fn invalid(
    file: &Path,
    detail: &str,
    expected: impl fmt::Display,
    found: impl fmt::Display,
) -> StorageError {
    StorageError::SnapshotInvalid {
        file: file.to_path_buf(),
        detail: detail.into(),
        expected: expected.to_string(),
        found: found.to_string(),
    }
}
