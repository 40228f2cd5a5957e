//! The `<id>.partial.source` file: the durable prefix of an interrupted transfer of *another*
//! snapshot, kept when a transfer of a new snapshot begins, so that the bytes it already holds
//! (frames the new snapshot shares with it) are copied, not fetched again. At most one is kept
//! (the longest); it is only a cache: nothing reads it but a transfer indexing what the node
//! holds, every byte taken from it is checked by the new file's digest, and it is deleted when
//! any transfer completes. A crash at any point leaves the partial, the source, or neither.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Result, io_err};
use crate::vfs::{OpenMode, VfsFile, read_exact_at};

use super::progress::read_progress;
use super::shared::{Borrow, SHARES_SUFFIX, open_owner, read_share_records};
use super::{Inner, SnapshotId, SnapshotStore, parse_id};

/// Suffix of the kept prefix.
pub(super) const SOURCE_SUFFIX: &str = ".partial.source";

/// A kept prefix, open for reading ([`SnapshotStore::partial_source`]).
#[derive(Debug, Clone)]
pub struct PartialSource {
    id: SnapshotId,
    len: u64,
    file: Arc<dyn VfsFile>,
    path: PathBuf,
}

impl PartialSource {
    /// The snapshot whose transfer was interrupted.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// Bytes held (the prefix `[0, len)` of that snapshot's file).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fill `buf` from `offset`; fails past `len`. Cost: one `pread`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(crate::error::StorageError::Invalid(format!(
                "{}: read of {} bytes at {offset} past its {} bytes",
                self.path.display(),
                buf.len(),
                self.len
            )));
        }
        read_exact_at(self.file.as_ref(), buf, offset)
            .map_err(io_err("read kept partial snapshot", &self.path))
    }
}

impl SnapshotStore {
    /// The kept prefix of an interrupted transfer of another snapshot, if there is one.
    pub fn partial_source(&self) -> Result<Option<PartialSource>> {
        let inner = &self.inner;
        let Some((id, path)) = sources(inner)?.into_iter().next() else {
            return Ok(None);
        };
        let file = inner
            .vfs
            .open(&path, OpenMode::Read)
            .map_err(io_err("open kept partial snapshot", &path))?;
        let len = file
            .len()
            .map_err(io_err("stat kept partial snapshot", &path))?;
        Ok(Some(PartialSource {
            id,
            len,
            file,
            path,
        }))
    }
}

/// The kept prefixes in the directory (normally at most one), longest first.
pub(super) fn sources(inner: &Inner) -> Result<Vec<(SnapshotId, PathBuf)>> {
    let vfs = inner.vfs.as_ref();
    let mut found = Vec::new();
    for name in vfs
        .list(&inner.dir)
        .map_err(io_err("list snapshot directory", &inner.dir))?
    {
        if let Some(id) = name.strip_suffix(SOURCE_SUFFIX).and_then(parse_id) {
            let path = inner.dir.join(&name);
            let len = vfs
                .open(&path, OpenMode::Read)
                .and_then(|f| f.len())
                .unwrap_or(0);
            found.push((len, id, path));
        }
    }
    found.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    Ok(found.into_iter().map(|(_, id, p)| (id, p)).collect())
}

/// Keep the durable prefix of the partial of `other` (whose transfer is not running) as the
/// source, instead of deleting it: cut the file to its durable offset, make that durable, rename
/// it, and drop its progress file. An empty prefix is simply removed. Then only the longest
/// source stays.
pub(super) fn retire_partial(inner: &Inner, other: SnapshotId) -> Result<()> {
    let vfs = inner.vfs.as_ref();
    let path = inner.path(other, ".partial");
    let ppath = inner.path(other, ".partial.progress");
    let spath = inner.path(other, SHARES_SUFFIX);
    let durable = read_progress(vfs, &ppath).unwrap_or(0);
    let mut shared = read_share_records(vfs, &spath);
    shared.retain(|b| b.end() <= durable);
    let kept = match vfs.open(&path, OpenMode::ReadWrite) {
        Ok(f) if durable > 0 && f.len().is_ok_and(|l| l >= durable) => {
            // Its shared ranges are holes. Worth filling from their owners (which the partial's
            // claim kept) only when they are the smaller part: a prefix mostly shared holds
            // few fetched bytes, and the shared ones are in this node's snapshots, which the
            // next transfer indexes anyway; filling would rewrite them (up to the whole file)
            // before the follower answers the offer.
            let shared_len: u64 = shared.iter().map(|b| b.len).sum();
            let fill = if shared_len > durable - shared_len {
                Err(format!(
                    "{shared_len} of its {durable} bytes are shared with this node's snapshots"
                ))
            } else {
                fill_holes(inner, f.as_ref(), &path, &shared).map_err(|e| e.to_string())
            };
            if let Err(why) = fill {
                tracing::info!(file = %path.display(), why = %why, "not keeping the prefix of an interrupted transfer as a source");
                false
            } else {
                f.set_len(durable)
                    .map_err(io_err("cut partial snapshot to its durable offset", &path))?;
                inner.sync_file(f.as_ref(), &path)?;
                drop(f);
                let source = inner.path(other, SOURCE_SUFFIX);
                vfs.rename(&path, &source)
                    .map_err(io_err("keep partial snapshot as a source", &path))?;
                inner.sync_dir()?;
                tracing::info!(file = %source.display(), durable, "keeping the durable prefix of an interrupted transfer as a source for the next one");
                true
            }
        }
        _ => false,
    };
    if !kept {
        let _ = vfs.remove_file(&path);
    }
    let _ = vfs.remove_file(&ppath);
    // Last: a crash before this leaves records next to no partial, which opening removes.
    let _ = vfs.remove_file(&spath);
    inner.lock().incoming_claims.remove(&other);
    for (_, extra) in sources(inner)?.into_iter().skip(1) {
        vfs.remove_file(&extra)
            .map_err(io_err("remove kept partial snapshot", &extra))?;
    }
    inner.sync_dir()
}

/// Delete every kept prefix (a transfer completed; or recovery found more than one).
pub(super) fn remove_sources(inner: &Inner, keep_longest: bool) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (_, path) in sources(inner)?.into_iter().skip(usize::from(keep_longest)) {
        inner
            .vfs
            .remove_file(&path)
            .map_err(io_err("remove kept partial snapshot", &path))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        inner.sync_dir()?;
    }
    Ok(removed)
}

/// Copy each shared range of a partial from its owner into the partial at its offset, then make
/// it durable. Blocking: one read and one write of the ranges.
fn fill_holes(
    inner: &Inner,
    f: &dyn VfsFile,
    path: &std::path::Path,
    shared: &[Borrow],
) -> Result<()> {
    if shared.is_empty() {
        return Ok(());
    }
    let mut buf = vec![0u8; 1 << 20];
    for b in shared {
        let Some((opath, owner)) = open_owner(inner.vfs.as_ref(), &inner.dir, b.owner) else {
            return Err(crate::error::StorageError::Invalid(format!(
                "snapshot {} (shared by {}) is gone",
                b.owner,
                path.display()
            )));
        };
        let mut done = 0;
        while done < b.len {
            let n = (b.len - done).min(buf.len() as u64) as usize;
            read_exact_at(owner.as_ref(), &mut buf[..n], b.owner_at + done)
                .map_err(io_err("read shared range", &opath))?;
            f.write_all_at(&buf[..n], b.at + done)
                .map_err(io_err("fill shared range", path))?;
            done += n as u64;
        }
    }
    inner.sync_file(f, path)
}
