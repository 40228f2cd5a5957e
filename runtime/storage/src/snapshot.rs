//! The snapshot store: one self-describing, digest-protected file per snapshot.
//!
//! ```text
//! snapshot file:
//!   0  magic "WRAFTSNP"
//!   8  version u32 (= 1)
//!  12  meta_len u32               length of the postcard-encoded SnapshotMeta
//!  16  body_len u64               bytes of guest payload
//!  24  digest [32]                BLAKE3(bytes 0..16 ‖ meta ‖ body ‖ body_len as u64 LE)
//!  56  header_crc u32             crc32c(bytes 0..56 ‖ meta): cheap check without reading the body
//!  60  meta                       SnapshotMeta { last_index, last_term, membership, format }
//!  60+meta_len body               the guest's opaque chunks, concatenated
//! ```
//!
//! The digest covers every byte of the file except itself and the header CRC; it is hashed in
//! streaming order (the body length, unknown until the end, goes last), so a snapshot is written in
//! one pass with the header patched before the file is synced and renamed into place.
//!
//! Files in the directory: `<index:020>-<term:020>.snap` (complete), `.snap.tmp` (being written
//! locally; deleted on open), `.partial` + `.partial.progress` (being received; resumable),
//! `.snap.corrupt` (failed verification; kept for the operator, never read).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::config::{FsyncPolicy, StorageConfig};
use crate::error::{Result, StorageError, io_err};
use crate::record::{u32_at, u64_at};
use crate::vfs::{OpenMode, Vfs, VfsFile, read_exact_at};

const SNAP_MAGIC: &[u8; 8] = b"WRAFTSNP";
const SNAP_VERSION: u32 = 1;
/// Bytes before the metadata.
pub const SNAPSHOT_HEADER_BYTES: u64 = 60;
const PROGRESS_MAGIC: &[u8; 4] = b"WSPG";
const PROGRESS_SLOT_BYTES: usize = 24;

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
    /// Newer snapshots that failed verification, renamed to `*.snap.corrupt`.
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
}

#[derive(Debug)]
struct Inner {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    cfg: StorageConfig,
    state: Mutex<SnapState>,
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parse and check a snapshot file; with `full`, also stream the body through BLAKE3.
fn verify_file(
    vfs: &dyn Vfs,
    path: &Path,
    cfg: &StorageConfig,
    full: bool,
) -> Result<SnapshotInfo> {
    verify_file_prehashed(vfs, path, cfg, full, None)
}

/// [`verify_file`], where `prehashed` (if given) already holds the digest input for the whole
/// file as it was written — `file[..16]` then `file[SNAPSHOT_HEADER_BYTES..]` — and `len` says
/// how many file bytes it covers. It is used instead of re-reading the body only if `len` is the
/// file's length; otherwise the body is read and hashed as usual.
fn verify_file_prehashed(
    vfs: &dyn Vfs,
    path: &Path,
    cfg: &StorageConfig,
    full: bool,
    prehashed: Option<(blake3::Hasher, u64)>,
) -> Result<SnapshotInfo> {
    let file = vfs
        .open(path, OpenMode::Read)
        .map_err(io_err("open snapshot", path))?;
    let file_len = file.len().map_err(io_err("stat snapshot", path))?;
    if file_len < SNAPSHOT_HEADER_BYTES {
        return Err(invalid(
            path,
            "file shorter than the header",
            format!(">= {SNAPSHOT_HEADER_BYTES} bytes"),
            file_len,
        ));
    }
    let mut hdr = [0u8; SNAPSHOT_HEADER_BYTES as usize];
    read_exact_at(file.as_ref(), &mut hdr, 0).map_err(io_err("read snapshot header", path))?;
    if &hdr[..8] != SNAP_MAGIC {
        return Err(invalid(path, "magic", hex(SNAP_MAGIC), hex(&hdr[..8])));
    }
    let version = u32_at(&hdr, 8);
    let meta_len = u32_at(&hdr, 12);
    if meta_len > cfg.snapshot_meta_bytes_max
        || u64::from(meta_len) + SNAPSHOT_HEADER_BYTES > file_len
    {
        return Err(invalid(
            path,
            "metadata length",
            format!(
                "<= {}",
                cfg.snapshot_meta_bytes_max
                    .min((file_len - SNAPSHOT_HEADER_BYTES) as u32)
            ),
            meta_len,
        ));
    }
    let mut meta_raw = vec![0u8; meta_len as usize];
    read_exact_at(file.as_ref(), &mut meta_raw, SNAPSHOT_HEADER_BYTES)
        .map_err(io_err("read snapshot metadata", path))?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[..56]), &meta_raw);
    let stored_crc = u32_at(&hdr, 56);
    if crc != stored_crc {
        return Err(invalid(
            path,
            "header checksum",
            format!("{stored_crc:#010x}"),
            format!("{crc:#010x}"),
        ));
    }
    if version != SNAP_VERSION {
        return Err(StorageError::UnsupportedVersion {
            file: path.to_path_buf(),
            expected: SNAP_VERSION,
            found: version,
        });
    }
    let body_len = u64_at(&hdr, 16);
    let body_off = SNAPSHOT_HEADER_BYTES + u64::from(meta_len);
    // checked: `body_len` is read from the file and may be anything.
    let expected_len = body_off.checked_add(body_len);
    if expected_len != Some(file_len) {
        return Err(invalid(
            path,
            "file length (header + body)",
            expected_len.map_or_else(
                || format!("{body_off} + {body_len} (overflows)"),
                |l| l.to_string(),
            ),
            file_len,
        ));
    }
    let meta: SnapshotMeta = postcard::from_bytes(&meta_raw)
        .map_err(|e| invalid(path, "metadata encoding", "postcard SnapshotMeta", e))?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&hdr[24..56]);
    if full {
        let mut h = match prehashed.filter(|(_, len)| *len == file_len) {
            Some((h, _)) => h,
            None => {
                let mut h = blake3::Hasher::new();
                h.update(&hdr[..16]);
                h.update(&meta_raw);
                let mut buf = vec![0u8; cfg.snapshot_io_chunk_bytes];
                let mut off = body_off;
                while off < file_len {
                    let n = ((file_len - off) as usize).min(buf.len());
                    read_exact_at(file.as_ref(), &mut buf[..n], off)
                        .map_err(io_err("read snapshot body", path))?;
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                h
            }
        };
        h.update(&body_len.to_le_bytes());
        let found = h.finalize();
        if found.as_bytes() != &digest {
            return Err(invalid(
                path,
                "whole-file BLAKE3 digest",
                hex(&digest),
                hex(found.as_bytes()),
            ));
        }
    }
    Ok(SnapshotInfo {
        meta,
        body_len,
        digest,
        file_len,
        path: path.to_path_buf(),
    })
}

/// Read and check the snapshot file at `path` without opening a store (no retention, no
/// quarantine, nothing written): the header, its CRC, the lengths and, with `full`, the whole-file
/// BLAKE3 digest (one sequential read). For tools such as `wraft snapshot inspect`.
pub fn inspect_snapshot_file(path: &Path, full: bool) -> Result<SnapshotInfo> {
    verify_file(&crate::vfs::StdFs, path, &StorageConfig::default(), full)
}

impl SnapshotStore {
    /// Open (or create) the store in `dir`: find the newest snapshot whose digest verifies
    /// (quarantining newer corrupt ones with a warning naming file and digests), delete
    /// unfinished local writes and superseded partials, and apply retention.
    /// Cost: one full read of the newest snapshot (plus one per corrupt newer one).
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        cfg: &StorageConfig,
    ) -> Result<(SnapshotStore, SnapshotRecovery)> {
        cfg.validate()?;
        vfs.create_dir_all(dir)
            .map_err(io_err("create snapshot directory", dir))?;
        let inner = Arc::new(Inner {
            vfs,
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            state: Mutex::new(SnapState::default()),
        });
        let store = SnapshotStore { inner };
        let rec = store.recover()?;
        store.gc()?;
        Ok((store, rec))
    }

    fn recover(&self) -> Result<SnapshotRecovery> {
        let inner = &self.inner;
        let (vfs, dir) = (inner.vfs.as_ref(), inner.dir.as_path());
        let mut rec = SnapshotRecovery::default();
        let mut candidates = Vec::new();
        let mut partials = Vec::new();
        let mut progress = Vec::new();
        for name in vfs
            .list(dir)
            .map_err(io_err("list snapshot directory", dir))?
        {
            let path = dir.join(&name);
            if let Some(stem) = name.strip_suffix(".snap") {
                match parse_id(stem) {
                    Some(id) => candidates.push(id),
                    None => {
                        tracing::warn!(file = %path.display(), "ignoring unexpected file in the snapshot directory")
                    }
                }
            } else if name.ends_with(".snap.tmp") {
                tracing::info!(file = %path.display(), "removing unfinished snapshot write");
                vfs.remove_file(&path)
                    .map_err(io_err("remove unfinished snapshot", &path))?;
                rec.removed.push(path);
            } else if let Some(id) = name.strip_suffix(".partial").and_then(parse_id) {
                partials.push(id);
            } else if let Some(id) = name.strip_suffix(".partial.progress").and_then(parse_id) {
                progress.push(id);
            } else if !name.ends_with(".snap.corrupt") {
                tracing::warn!(file = %path.display(), "ignoring unexpected file in the snapshot directory");
            }
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut st = inner.lock();
        for id in candidates {
            let path = inner.path(id, ".snap");
            let full = rec.latest.is_none();
            match verify_file(vfs, &path, &inner.cfg, full) {
                Ok(info) if info.meta.id == id => {
                    if full {
                        rec.latest = Some(info.clone());
                    }
                    st.complete.insert(id, info);
                }
                result => {
                    let why = match result {
                        Ok(info) => format!(
                            "header names snapshot {} but the file name says {id}",
                            info.meta.id
                        ),
                        Err(e) => e.to_string(),
                    };
                    let bad = inner.path(id, ".snap.corrupt");
                    tracing::warn!(
                        file = %path.display(),
                        error = %why,
                        quarantined_as = %bad.display(),
                        "snapshot failed verification; falling back to the previous snapshot"
                    );
                    vfs.rename(&path, &bad)
                        .map_err(io_err("quarantine corrupt snapshot", &path))?;
                    rec.quarantined.push(bad);
                }
            }
        }
        let newest = rec.latest.as_ref().map(|i| i.id());
        partials.sort_unstable_by(|a, b| b.cmp(a));
        let mut keep: Option<SnapshotId> = None;
        for id in partials {
            let resumable =
                keep.is_none() && newest.is_none_or(|n| id > n) && progress.contains(&id);
            let path = inner.path(id, ".partial");
            if resumable {
                keep = Some(id);
                continue;
            }
            tracing::info!(file = %path.display(), "removing stale incoming snapshot");
            vfs.remove_file(&path)
                .map_err(io_err("remove stale incoming snapshot", &path))?;
            rec.removed.push(path);
        }
        for id in progress {
            if Some(id) != keep {
                let path = inner.path(id, ".partial.progress");
                vfs.remove_file(&path)
                    .map_err(io_err("remove stale snapshot progress", &path))?;
                rec.removed.push(path);
            }
        }
        drop(st);
        if let Some(id) = keep {
            match read_progress(vfs, &inner.path(id, ".partial.progress")) {
                Ok(d) => {
                    // Report what `incoming` will do: a partial shorter than its recorded
                    // durable offset restarts from 0 (found by fuzz target snapshot_open).
                    let path = inner.path(id, ".partial");
                    let len = vfs
                        .open(&path, OpenMode::Read)
                        .and_then(|f| f.len())
                        .map_err(io_err("stat incoming snapshot", &path))?;
                    rec.resumable.push((id, if len < d { 0 } else { d }));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "incoming snapshot progress unreadable; it will restart from 0")
                }
            }
        }
        if !rec.removed.is_empty() || !rec.quarantined.is_empty() {
            inner.sync_dir()?;
        }
        Ok(rec)
    }

    /// Complete snapshots, oldest first, including received ones not yet accepted.
    pub fn list(&self) -> Vec<SnapshotInfo> {
        self.inner.lock().complete.values().cloned().collect()
    }

    /// The newest complete snapshot (possibly a received one not yet accepted).
    pub fn latest(&self) -> Option<SnapshotInfo> {
        self.inner.lock().complete.values().next_back().cloned()
    }

    /// Start writing a snapshot locally (from the guest's chunks). Nothing is visible until
    /// [`SnapshotWriter::finish`]; dropping the writer deletes the temporary file.
    pub fn begin(&self, meta: SnapshotMeta) -> Result<SnapshotWriter> {
        let inner = &self.inner;
        let id = meta.id;
        if inner.lock().complete.contains_key(&id) {
            return Err(StorageError::Invalid(format!(
                "snapshot {id} already exists"
            )));
        }
        let meta_bytes = postcard::to_allocvec(&meta)
            .map_err(|e| StorageError::Invalid(format!("snapshot metadata: {e}")))?;
        if meta_bytes.len() as u64 > u64::from(inner.cfg.snapshot_meta_bytes_max) {
            return Err(StorageError::LimitExceeded {
                what: "snapshot metadata",
                limit_name: "snapshot_meta_bytes_max",
                limit: u64::from(inner.cfg.snapshot_meta_bytes_max),
                found: meta_bytes.len() as u64,
            });
        }
        let tmp = inner.path(id, ".snap.tmp");
        let _ = inner.vfs.remove_file(&tmp);
        let file = inner
            .vfs
            .open(&tmp, OpenMode::CreateNew)
            .map_err(io_err("create snapshot temp file", &tmp))?;
        let mut hdr = [0u8; SNAPSHOT_HEADER_BYTES as usize];
        hdr[..8].copy_from_slice(SNAP_MAGIC);
        hdr[8..12].copy_from_slice(&SNAP_VERSION.to_le_bytes());
        hdr[12..16].copy_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
        let mut head = hdr.to_vec();
        head.extend_from_slice(&meta_bytes);
        file.write_all_at(&head, 0)
            .map_err(io_err("write snapshot header", &tmp))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&hdr[..16]);
        hasher.update(&meta_bytes);
        Ok(SnapshotWriter {
            store: self.clone(),
            meta,
            meta_bytes,
            hdr,
            file,
            tmp,
            pos: head.len() as u64,
            body_len: 0,
            hasher,
            done: false,
        })
    }

    /// Make a received snapshot (published by [`IncomingSnapshot::finalize`]) one of the node's
    /// own: from now on it counts toward `snapshot_retain_count` like a local one. Call it once
    /// the node has installed it; a received snapshot never accepted does not push out the node's
    /// own snapshots, and is deleted by retention once a newer one arrives or the node's own
    /// snapshots reach its index. A no-op for a snapshot that is already the node's. Cheap: no
    /// I/O but the retention pass it runs.
    ///
    /// # Errors
    /// [`StorageError::SnapshotNotFound`] if `id` is not complete here (retention deleted it).
    pub fn accept(&self, id: SnapshotId) -> Result<()> {
        {
            let mut st = self.inner.lock();
            if !st.complete.contains_key(&id) {
                return Err(StorageError::SnapshotNotFound(id));
            }
            st.received.remove(&id);
        }
        self.gc().map(|_| ())
    }

    /// Pin a snapshot so retention never deletes it while the pin lives (a running transfer).
    pub fn pin(&self, id: SnapshotId) -> Result<SnapshotPin> {
        let mut st = self.inner.lock();
        if !st.complete.contains_key(&id) {
            return Err(StorageError::SnapshotNotFound(id));
        }
        *st.pins.entry(id).or_insert(0) += 1;
        Ok(SnapshotPin {
            store: self.clone(),
            id,
        })
    }

    /// Open a complete snapshot for streaming. Pins it for the reader's lifetime. Does not
    /// re-verify the digest (the newest was verified on open; call [`SnapshotReader::verify`]).
    pub fn open_reader(&self, id: SnapshotId) -> Result<SnapshotReader> {
        let pin = self.pin(id)?;
        let info = self
            .inner
            .lock()
            .complete
            .get(&id)
            .cloned()
            .ok_or(StorageError::SnapshotNotFound(id))?;
        let file = self
            .inner
            .vfs
            .open(&info.path, OpenMode::Read)
            .map_err(io_err("open snapshot", &info.path))?;
        Ok(SnapshotReader {
            info,
            file,
            pos: 0,
            cfg: self.inner.cfg.clone(),
            vfs: self.inner.vfs.clone(),
            _pin: pin,
        })
    }

    /// Start or resume receiving snapshot `id` as raw file bytes (what [`SnapshotReader::read_file_at`]
    /// yields on the sender). If a partial for `id` survives from before a crash, it resumes at its
    /// durable offset ([`IncomingSnapshot::durable_offset`]); any other partial is deleted.
    pub fn incoming(&self, id: SnapshotId) -> Result<IncomingSnapshot> {
        let inner = &self.inner;
        {
            let mut st = inner.lock();
            if st.complete.contains_key(&id) {
                return Err(StorageError::Invalid(format!(
                    "snapshot {id} is already complete"
                )));
            }
            if !st.incoming_open.insert(id) {
                return Err(StorageError::Invalid(format!(
                    "snapshot {id} is already being received"
                )));
            }
        }
        let result = self.open_incoming(id);
        if result.is_err() {
            inner.lock().incoming_open.remove(&id);
        }
        result
    }

    fn open_incoming(&self, id: SnapshotId) -> Result<IncomingSnapshot> {
        let inner = &self.inner;
        let vfs = inner.vfs.as_ref();
        let path = inner.path(id, ".partial");
        let ppath = inner.path(id, ".partial.progress");
        // Only one transfer at a time: remove partials of other ids.
        for name in vfs
            .list(&inner.dir)
            .map_err(io_err("list snapshot directory", &inner.dir))?
        {
            let other = name
                .strip_suffix(".partial")
                .or_else(|| name.strip_suffix(".partial.progress"))
                .and_then(parse_id);
            if other.is_some_and(|o| o != id && !inner.lock().incoming_open.contains(&o)) {
                let p = inner.dir.join(&name);
                vfs.remove_file(&p)
                    .map_err(io_err("remove other incoming snapshot", &p))?;
            }
        }
        let resumed = match (
            vfs.open(&path, OpenMode::ReadWrite),
            read_progress(vfs, &ppath),
        ) {
            (Ok(file), Ok(durable)) => {
                let len = file
                    .len()
                    .map_err(io_err("stat incoming snapshot", &path))?;
                let durable = if len < durable {
                    tracing::warn!(file = %path.display(), durable, len, "incoming snapshot shorter than its recorded durable offset; restarting from 0");
                    0
                } else {
                    durable
                };
                file.set_len(durable)
                    .map_err(io_err("truncate incoming snapshot", &path))?;
                let progress = vfs
                    .open(&ppath, OpenMode::ReadWrite)
                    .map_err(io_err("open snapshot progress", &ppath))?;
                Some((file, progress, durable))
            }
            _ => None,
        };
        let (file, progress, durable) = match resumed {
            Some(r) => r,
            None => {
                let _ = vfs.remove_file(&path);
                let _ = vfs.remove_file(&ppath);
                let file = vfs
                    .open(&path, OpenMode::CreateNew)
                    .map_err(io_err("create incoming snapshot", &path))?;
                let progress = vfs
                    .open(&ppath, OpenMode::CreateNew)
                    .map_err(io_err("create snapshot progress", &ppath))?;
                write_progress_slot(progress.as_ref(), &ppath, 0, 0)?;
                write_progress_slot(progress.as_ref(), &ppath, 1, 0)?;
                inner.sync_file(file.as_ref(), &path)?;
                inner.sync_file(progress.as_ref(), &ppath)?;
                inner.sync_dir()?;
                (file, progress, 0)
            }
        };
        let progress_seq = read_progress_seq(vfs, &ppath).unwrap_or(1);
        Ok(IncomingSnapshot {
            store: self.clone(),
            id,
            file,
            progress,
            path,
            ppath,
            written_end: durable,
            durable,
            unsynced_bytes: 0,
            progress_seq,
            finished: false,
            hasher: Some(blake3::Hasher::new()),
            hashed_end: 0,
        })
    }

    /// Delete, skipping pinned ones: the node's own snapshots beyond the newest
    /// `snapshot_retain_count`, and received snapshots not accepted yet ([`SnapshotStore::accept`])
    /// except the newest one above all of the node's own. So received snapshots the node ignores
    /// never push out the snapshot it works from, and at most one of them is kept. Runs
    /// automatically after each new snapshot, acceptance, and release of a pin.
    pub fn gc(&self) -> Result<Vec<SnapshotId>> {
        let inner = &self.inner;
        let doomed: Vec<SnapshotInfo> = {
            let mut st = inner.lock();
            let own: Vec<SnapshotId> = st
                .complete
                .keys()
                .rev()
                .filter(|id| !st.received.contains(id))
                .copied()
                .collect();
            let newest_own = own.first().copied();
            let mut received: Vec<SnapshotId> = st.received.iter().copied().collect();
            received.sort_unstable_by(|a, b| b.cmp(a));
            let keep_received = received.first().copied().filter(|r| newest_own < Some(*r));
            let ids: Vec<SnapshotId> = own
                .into_iter()
                .skip(inner.cfg.snapshot_retain_count)
                .chain(received.into_iter().filter(|r| Some(*r) != keep_received))
                .collect();
            let mut out = Vec::new();
            for id in ids {
                if st.pins.get(&id).copied().unwrap_or(0) == 0
                    && let Some(info) = st.complete.remove(&id)
                {
                    st.received.remove(&id);
                    out.push(info);
                }
            }
            out
        };
        for info in &doomed {
            inner
                .vfs
                .remove_file(&info.path)
                .map_err(io_err("remove old snapshot", &info.path))?;
        }
        if !doomed.is_empty() {
            inner.sync_dir()?;
        }
        Ok(doomed.iter().map(SnapshotInfo::id).collect())
    }

    fn publish(&self, info: SnapshotInfo, received: bool) -> Result<()> {
        {
            let mut st = self.inner.lock();
            if received {
                st.received.insert(info.id());
            }
            st.complete.insert(info.id(), info);
        }
        self.gc().map(|_| ())
    }
}

/// Streams a snapshot into the store. See [`SnapshotStore::begin`].
pub struct SnapshotWriter {
    store: SnapshotStore,
    meta: SnapshotMeta,
    meta_bytes: Vec<u8>,
    hdr: [u8; SNAPSHOT_HEADER_BYTES as usize],
    file: Arc<dyn VfsFile>,
    tmp: PathBuf,
    pos: u64,
    body_len: u64,
    hasher: blake3::Hasher,
    done: bool,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("id", &self.meta.id)
            .field("body_len", &self.body_len)
            .finish()
    }
}

impl SnapshotWriter {
    /// Append a chunk of guest payload. Cost: one `pwrite` and hashing (~4 GB/s).
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        let max = self.store.inner.cfg.snapshot_file_bytes_max;
        if self.pos + chunk.len() as u64 > max {
            return Err(StorageError::LimitExceeded {
                what: "snapshot file",
                limit_name: "snapshot_file_bytes_max",
                limit: max,
                found: self.pos + chunk.len() as u64,
            });
        }
        self.file
            .write_all_at(chunk, self.pos)
            .map_err(io_err("write snapshot body", &self.tmp))?;
        self.hasher.update(chunk);
        self.pos += chunk.len() as u64;
        self.body_len += chunk.len() as u64;
        Ok(())
    }

    /// Seal the snapshot: patch the header (length, digest, checksum), `fdatasync`, rename into
    /// place, `fsync` the directory, then apply retention. A crash at any point leaves either no
    /// new snapshot or the complete one.
    pub fn finish(mut self) -> Result<SnapshotInfo> {
        let inner = self.store.inner.clone();
        self.hasher.update(&self.body_len.to_le_bytes());
        let digest = *self.hasher.finalize().as_bytes();
        self.hdr[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        self.hdr[24..56].copy_from_slice(&digest);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.hdr[..56]), &self.meta_bytes);
        self.hdr[56..60].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&self.hdr, 0)
            .map_err(io_err("write snapshot header", &self.tmp))?;
        inner.sync_file(self.file.as_ref(), &self.tmp)?;
        let path = inner.path(self.meta.id, ".snap");
        inner
            .vfs
            .rename(&self.tmp, &path)
            .map_err(io_err("rename snapshot into place", &path))?;
        self.done = true;
        inner.sync_dir()?;
        let info = SnapshotInfo {
            meta: self.meta.clone(),
            body_len: self.body_len,
            digest,
            file_len: self.pos,
            path,
        };
        self.store.publish(info.clone(), false)?;
        Ok(info)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.store.inner.vfs.remove_file(&self.tmp);
        }
    }
}

/// Keeps a snapshot from being deleted by retention while alive.
#[derive(Debug)]
pub struct SnapshotPin {
    store: SnapshotStore,
    id: SnapshotId,
}

impl SnapshotPin {
    /// The pinned snapshot.
    pub fn id(&self) -> SnapshotId {
        self.id
    }
}

impl Drop for SnapshotPin {
    fn drop(&mut self) {
        let release = {
            let mut st = self.store.inner.lock();
            match st.pins.get_mut(&self.id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    st.pins.remove(&self.id);
                    true
                }
            }
        };
        if release && let Err(e) = self.store.gc() {
            tracing::warn!(error = %e, "snapshot retention after releasing a pin failed");
        }
    }
}

/// Streams a complete snapshot out (pinned while alive). Never loads the whole file.
pub struct SnapshotReader {
    info: SnapshotInfo,
    file: Arc<dyn VfsFile>,
    pos: u64,
    cfg: StorageConfig,
    vfs: Arc<dyn Vfs>,
    _pin: SnapshotPin,
}

impl fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("id", &self.info.id())
            .field("pos", &self.pos)
            .finish()
    }
}

impl SnapshotReader {
    /// Header information.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// Read guest payload at `offset` into `buf`; returns bytes read (0 at the end).
    pub fn read_body_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.info.body_len {
            return Ok(0);
        }
        let n = buf.len().min((self.info.body_len - offset) as usize);
        read_exact_at(
            self.file.as_ref(),
            &mut buf[..n],
            self.info.body_offset() + offset,
        )
        .map_err(io_err("read snapshot body", &self.info.path))?;
        Ok(n)
    }

    /// Next chunk of guest payload of at most `max_bytes`, or `None` at the end.
    pub fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; max_bytes.min((self.info.body_len - self.pos) as usize)];
        if buf.is_empty() {
            return Ok(None);
        }
        let n = self.read_body_at(self.pos, &mut buf)?;
        buf.truncate(n);
        self.pos += n as u64;
        Ok(Some(buf))
    }

    /// Read raw file bytes (header included) at `offset`: what a sender ships to a receiver's
    /// [`IncomingSnapshot::write_at`]. Returns bytes read (0 at the end).
    pub fn read_file_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.info.file_len {
            return Ok(0);
        }
        let n = buf.len().min((self.info.file_len - offset) as usize);
        read_exact_at(self.file.as_ref(), &mut buf[..n], offset)
            .map_err(io_err("read snapshot file", &self.info.path))?;
        Ok(n)
    }

    /// Re-read the whole file and check its digest. Cost: one sequential read of the file.
    pub fn verify(&self) -> Result<()> {
        verify_file(self.vfs.as_ref(), &self.info.path, &self.cfg, true).map(|_| ())
    }
}

/// A snapshot being received, spooled to `<id>.partial` with a crash-safe durable offset.
pub struct IncomingSnapshot {
    store: SnapshotStore,
    id: SnapshotId,
    file: Arc<dyn VfsFile>,
    progress: Arc<dyn VfsFile>,
    path: PathBuf,
    ppath: PathBuf,
    written_end: u64,
    durable: u64,
    unsynced_bytes: u64,
    progress_seq: u64,
    finished: bool,
    /// The digest input of `[0, hashed_end)` (see [`verify_file_prehashed`]), fed as bytes are
    /// written in order, so `finalize` need not read the file back. `None` once a write landed
    /// below `hashed_end` (a repeat): `finalize` then re-reads the whole file.
    hasher: Option<blake3::Hasher>,
    hashed_end: u64,
}

impl fmt::Debug for IncomingSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingSnapshot")
            .field("id", &self.id)
            .field("written_end", &self.written_end)
            .field("durable", &self.durable)
            .finish()
    }
}

impl IncomingSnapshot {
    /// The snapshot being received.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// Bytes `[0, durable_offset)` survive a crash; a resumed transfer restarts here.
    pub fn durable_offset(&self) -> u64 {
        self.durable
    }

    /// Bytes `[0, written_offset)` have been received (not necessarily durable).
    pub fn written_offset(&self) -> u64 {
        self.written_end
    }

    /// The whole-file digest named in the received header, once its bytes (24..56) have been
    /// written; `None` before. A resumed transfer compares it with the sender's digest: two
    /// snapshots with the same id taken on different nodes need not be byte-identical, and only
    /// a prefix of the *same* file may be resumed. Cost: one 32-byte `pread`.
    pub fn received_digest(&self) -> Result<Option<[u8; 32]>> {
        if self.written_end < 56 {
            return Ok(None);
        }
        let mut digest = [0u8; 32];
        read_exact_at(self.file.as_ref(), &mut digest, 24)
            .map_err(io_err("read incoming snapshot header", &self.path))?;
        Ok(Some(digest))
    }

    /// Store `data` at `offset` of the snapshot file. `offset` may repeat received bytes but must
    /// not skip any ([`StorageError::OffsetGap`]). Syncs (and advances the durable offset) every
    /// `snapshot_sync_every_bytes`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset > self.written_end {
            return Err(StorageError::OffsetGap {
                expected_at_most: self.written_end,
                found: offset,
            });
        }
        let end = offset + data.len() as u64;
        let max = self.store.inner.cfg.snapshot_file_bytes_max;
        if end > max {
            return Err(StorageError::LimitExceeded {
                what: "incoming snapshot",
                limit_name: "snapshot_file_bytes_max",
                limit: max,
                found: end,
            });
        }
        self.file
            .write_all_at(data, offset)
            .map_err(io_err("write incoming snapshot", &self.path))?;
        self.hash_written(offset, data)?;
        if end > self.written_end {
            self.unsynced_bytes += end - self.written_end;
            self.written_end = end;
        }
        if self.unsynced_bytes >= self.store.inner.cfg.snapshot_sync_every_bytes {
            self.sync()?;
        }
        Ok(())
    }

    /// Feed the digest with `data` just written at `offset`. A resumed transfer first hashes the
    /// prefix it already holds (one read of it, as `finalize` would have done); a write below what
    /// was hashed (a repeat, which could differ) drops the running digest for a full re-read.
    fn hash_written(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let Some(h) = self.hasher.as_mut() else {
            return Ok(());
        };
        if offset < self.hashed_end {
            self.hasher = None;
            return Ok(());
        }
        if offset > self.hashed_end {
            let mut buf = vec![0u8; self.store.inner.cfg.snapshot_io_chunk_bytes.max(1)];
            while self.hashed_end < offset {
                let n = ((offset - self.hashed_end) as usize).min(buf.len());
                read_exact_at(self.file.as_ref(), &mut buf[..n], self.hashed_end)
                    .map_err(io_err("read incoming snapshot", &self.path))?;
                feed_digest(h, self.hashed_end, &buf[..n]);
                self.hashed_end += n as u64;
            }
        }
        feed_digest(h, offset, data);
        self.hashed_end = offset + data.len() as u64;
        Ok(())
    }

    /// Make everything written durable and record the new durable offset.
    pub fn sync(&mut self) -> Result<()> {
        let inner = self.store.inner.clone();
        inner.sync_file(self.file.as_ref(), &self.path)?;
        self.progress_seq += 1;
        write_progress_slot(
            self.progress.as_ref(),
            &self.ppath,
            self.progress_seq,
            self.written_end,
        )?;
        inner.sync_file(self.progress.as_ref(), &self.ppath)?;
        self.durable = self.written_end;
        self.unsynced_bytes = 0;
        Ok(())
    }

    /// Verify the received file (header, length, whole-file digest, id) and publish it as a
    /// complete *received* snapshot: readable and listed, but not counted toward
    /// `snapshot_retain_count` until [`SnapshotStore::accept`] (the node may ignore it; see
    /// [`SnapshotStore::gc`]). After a restart every complete file is the node's own. On a
    /// verification failure the partial is deleted (the next attempt starts from 0) and the error
    /// says what did not match.
    pub fn finalize(mut self) -> Result<SnapshotInfo> {
        self.sync()?;
        let inner = self.store.inner.clone();
        let prehashed = self.hasher.take().map(|h| (h, self.hashed_end));
        let info = match verify_file_prehashed(
            inner.vfs.as_ref(),
            &self.path,
            &inner.cfg,
            true,
            prehashed,
        ) {
            Ok(info) if info.meta.id == self.id => info,
            Ok(info) => {
                let e = invalid(
                    &self.path,
                    "snapshot id in received header",
                    self.id,
                    info.meta.id,
                );
                self.discard();
                return Err(e);
            }
            Err(e) => {
                self.discard();
                return Err(e);
            }
        };
        let path = inner.path(self.id, ".snap");
        inner
            .vfs
            .rename(&self.path, &path)
            .map_err(io_err("rename received snapshot into place", &path))?;
        inner.sync_dir()?;
        let _ = inner.vfs.remove_file(&self.ppath);
        inner.sync_dir()?;
        self.finished = true;
        let info = SnapshotInfo { path, ..info };
        self.store.publish(info.clone(), true)?;
        Ok(info)
    }

    /// Give up on this transfer and delete its files.
    pub fn abort(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        let vfs = &self.store.inner.vfs;
        let _ = vfs.remove_file(&self.path);
        let _ = vfs.remove_file(&self.ppath);
        self.finished = true;
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        // Unfinished transfers keep their files so a restarted transfer can resume.
        self.store.inner.lock().incoming_open.remove(&self.id);
    }
}

/// Feed `data`, found at file offset `offset`, into a whole-file digest: every byte but the
/// header's `[16, SNAPSHOT_HEADER_BYTES)` (its lengths-and-digest tail, which the digest covers
/// separately or not at all).
fn feed_digest(h: &mut blake3::Hasher, offset: u64, data: &[u8]) {
    let end = offset + data.len() as u64;
    let skip = 16..SNAPSHOT_HEADER_BYTES;
    if offset < skip.start {
        let n = (skip.start.min(end) - offset) as usize;
        h.update(&data[..n]);
    }
    if end > skip.end {
        let from = skip.end.saturating_sub(offset) as usize;
        h.update(&data[from..]);
    }
}

fn write_progress_slot(f: &dyn VfsFile, path: &Path, seq: u64, durable: u64) -> Result<()> {
    let mut slot = [0u8; PROGRESS_SLOT_BYTES];
    slot[..4].copy_from_slice(PROGRESS_MAGIC);
    slot[4..12].copy_from_slice(&seq.to_le_bytes());
    slot[12..20].copy_from_slice(&durable.to_le_bytes());
    let crc = crc32c::crc32c(&slot[..20]);
    slot[20..24].copy_from_slice(&crc.to_le_bytes());
    let off = (seq % 2) * PROGRESS_SLOT_BYTES as u64;
    f.write_all_at(&slot, off)
        .map_err(io_err("write snapshot progress", path))
}

/// Best valid progress slot: (seq, durable offset).
fn read_progress_slots(vfs: &dyn Vfs, path: &Path) -> Result<(u64, u64)> {
    let f = vfs
        .open(path, OpenMode::Read)
        .map_err(io_err("open snapshot progress", path))?;
    let mut buf = [0u8; 2 * PROGRESS_SLOT_BYTES];
    let n = f
        .read_at(&mut buf, 0)
        .map_err(io_err("read snapshot progress", path))?;
    let mut best: Option<(u64, u64)> = None;
    for slot in buf[..n].chunks_exact(PROGRESS_SLOT_BYTES) {
        if &slot[..4] == PROGRESS_MAGIC && crc32c::crc32c(&slot[..20]) == u32_at(slot, 20) {
            let (seq, durable) = (u64_at(slot, 4), u64_at(slot, 12));
            if best.is_none_or(|(s, _)| seq > s) {
                best = Some((seq, durable));
            }
        }
    }
    best.ok_or_else(|| {
        invalid(
            path,
            "progress record",
            "a slot with a valid checksum",
            "none",
        )
    })
}

fn read_progress(vfs: &dyn Vfs, path: &Path) -> Result<u64> {
    read_progress_slots(vfs, path).map(|(_, d)| d)
}

fn read_progress_seq(vfs: &dyn Vfs, path: &Path) -> Result<u64> {
    read_progress_slots(vfs, path).map(|(s, _)| s)
}
