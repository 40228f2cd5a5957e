//! Receiving a snapshot from a leader: spooled to `<id>.partial` with a crash-safe durable offset,
//! resumable after a restart, verified and published on `finalize`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Result, StorageError, io_err};
use crate::vfs::{OpenMode, VfsFile, read_exact_at};

use super::format::{feed_digest, verify_file_prehashed};
use super::progress::{read_progress, read_progress_seq, write_progress_slot};
use super::shared::{
    Borrow, SHARE_RECORD_BYTES, SHARES_SUFFIX, append_share_records, encode_trailer, push_borrow,
    read_share_records,
};
use super::source::{remove_sources, retire_partial};
use super::{SnapshotId, SnapshotInfo, SnapshotStore, invalid, parse_id};

impl SnapshotStore {
    /// Start or resume receiving snapshot `id` as raw file bytes (what
    /// [`SnapshotReader::read_file_at`](super::SnapshotReader::read_file_at) yields on the
    /// sender). If a partial for `id` survives from before a crash, it resumes at its durable
    /// offset ([`IncomingSnapshot::durable_offset`]); any other partial is deleted.
    pub fn incoming(&self, id: SnapshotId) -> Result<IncomingSnapshot> {
        let inner = &self.inner;
        {
            let mut st = inner.lock();
            if st.complete.contains_key(&id) || st.packs.contains(&id) {
                return Err(StorageError::Invalid(format!(
                    "snapshot {id} already exists here"
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
        // Only one partial per transfer running: the partial of another id whose transfer is
        // not running keeps its durable prefix as the source of segments (see `source`).
        let mut others = Vec::new();
        for name in vfs
            .list(&inner.dir)
            .map_err(io_err("list snapshot directory", &inner.dir))?
        {
            let other = name
                .strip_suffix(".partial")
                .or_else(|| name.strip_suffix(".partial.progress"))
                .and_then(parse_id);
            if let Some(o) = other
                && o != id
                && !inner.lock().incoming_open.contains(&o)
                && !others.contains(&o)
            {
                others.push(o);
            }
        }
        let retired = !others.is_empty();
        for o in others {
            retire_partial(inner, o)?;
        }
        if retired {
            // Their claims went: owners only they kept may be packs nothing needs.
            self.gc()?;
        }
        let spath = inner.path(id, SHARES_SUFFIX);
        let mut borrows = Vec::new();
        let resumed = match (
            vfs.open(&path, OpenMode::ReadWrite),
            read_progress(vfs, &ppath),
        ) {
            (Ok(file), Ok(durable)) => {
                let len = file
                    .len()
                    .map_err(io_err("stat incoming snapshot", &path))?;
                // Shared ranges below the durable offset hold; those above it were not covered
                // by a durable progress record.
                borrows = read_share_records(vfs, &spath);
                borrows.retain(|b| b.end() <= durable);
                let missing = {
                    let st = inner.lock();
                    borrows
                        .iter()
                        .find(|b| {
                            !st.complete.contains_key(&b.owner) && !st.packs.contains(&b.owner)
                        })
                        .map(|b| b.owner)
                };
                let durable = if len < durable {
                    tracing::warn!(file = %path.display(), durable, len, "incoming snapshot shorter than its recorded durable offset; restarting from 0");
                    0
                } else if let Some(owner) = missing {
                    tracing::warn!(file = %path.display(), %owner, "a snapshot the incoming one shares bytes with is gone; restarting from 0");
                    0
                } else {
                    durable
                };
                if durable == 0 {
                    borrows.clear();
                }
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
                borrows.clear();
                let _ = vfs.remove_file(&path);
                let _ = vfs.remove_file(&ppath);
                // Gone before the directory sync below: records of an older partial must never
                // come back next to this one.
                let _ = vfs.remove_file(&spath);
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
        // The shares file holds exactly the ranges kept (or goes).
        let shares = if borrows.is_empty() {
            let _ = vfs.remove_file(&spath);
            if inner.lock().incoming_claims.remove(&id).is_some() {
                self.gc()?;
            }
            None
        } else {
            let f = vfs
                .open(&spath, OpenMode::ReadWrite)
                .map_err(io_err("open shared ranges of an incoming snapshot", &spath))?;
            f.set_len(borrows.len() as u64 * SHARE_RECORD_BYTES)
                .map_err(io_err("cut shared ranges of an incoming snapshot", &spath))?;
            inner.sync_file(f.as_ref(), &spath)?;
            inner
                .lock()
                .incoming_claims
                .insert(id, borrows.iter().map(|b| b.owner).collect());
            Some(f)
        };
        // Bytes below the durable offset include holes: `finalize` re-reads the file through
        // them instead of resuming the running digest from the partial's own bytes.
        let hasher = borrows.is_empty().then(blake3::Hasher::new);
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
            hasher,
            hashed_end: 0,
            borrows_recorded: borrows.len(),
            borrows,
            shares,
            spath,
        })
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
    /// Ranges left as holes, their bytes held by this node's snapshots (see `shared`).
    borrows: Vec<Borrow>,
    /// How many of `borrows` the shares file holds durably.
    borrows_recorded: usize,
    /// The `.partial.shares` file, once a range was shared.
    shares: Option<Arc<dyn VfsFile>>,
    spath: PathBuf,
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
        self.check_room(end)?;
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

    /// Take `data`, the next bytes of the file (at [`IncomingSnapshot::written_offset`]), from
    /// this node's complete snapshot `owner`, which holds them at `owner_at`, without writing
    /// them: the file borrows them (a hole, listed in its trailer when published; see
    /// `shared`). The caller read `data` there and checked it against the segment's hash; it
    /// still goes into the running digest. The range is recorded durably with the next sync,
    /// and `owner` stays on disk while this partial exists.
    ///
    /// Returns `false`, having done nothing, if the bytes cannot be borrowed (not at the end of
    /// what was received, `owner` gone, or a range its owner half borrows itself): write them.
    /// Cost: no I/O.
    pub fn share_at(
        &mut self,
        offset: u64,
        data: &[u8],
        owner: SnapshotId,
        owner_at: u64,
    ) -> Result<bool> {
        let len = data.len() as u64;
        if offset != self.written_end || len == 0 {
            return Ok(false);
        }
        let end = offset + len;
        self.check_room(end)?;
        {
            let mut st = self.store.inner.lock();
            let Some((holder, holder_at)) = st.lendable(owner, owner_at, len, self.id) else {
                return Ok(false);
            };
            st.incoming_claims
                .entry(self.id)
                .or_default()
                .insert(holder);
            push_borrow(
                &mut self.borrows,
                self.borrows_recorded,
                offset,
                len,
                holder,
                holder_at,
            );
        }
        self.hash_written(offset, data)?;
        self.written_end = end;
        Ok(true)
    }

    /// A file of `end` bytes is within `snapshot_file_bytes_max`.
    fn check_room(&self, end: u64) -> Result<()> {
        let max = self.store.inner.cfg.snapshot_file_bytes_max;
        if end > max {
            return Err(StorageError::LimitExceeded {
                what: "incoming snapshot",
                limit_name: "snapshot_file_bytes_max",
                limit: max,
                found: end,
            });
        }
        Ok(())
    }

    /// Bytes taken from this node's snapshots instead of written ([`IncomingSnapshot::share_at`]).
    pub fn shared_bytes(&self) -> u64 {
        self.borrows.iter().map(|b| b.len).sum()
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
        if !self.borrows.is_empty() {
            // Bytes shared at the end leave the file shorter than what was received: give it
            // its length (a hole), which a resumed transfer checks against its durable offset.
            let len = self
                .file
                .len()
                .map_err(io_err("stat incoming snapshot", &self.path))?;
            if len < self.written_end {
                self.file
                    .set_len(self.written_end)
                    .map_err(io_err("extend incoming snapshot", &self.path))?;
            }
        }
        inner.sync_file(self.file.as_ref(), &self.path)?;
        // The shared ranges below the new durable offset are durable before it is.
        if self.borrows.len() > self.borrows_recorded {
            let f = match &self.shares {
                Some(f) => f.clone(),
                None => {
                    let vfs = inner.vfs.as_ref();
                    let _ = vfs.remove_file(&self.spath);
                    let f = vfs.open(&self.spath, OpenMode::CreateNew).map_err(io_err(
                        "create shared ranges of an incoming snapshot",
                        &self.spath,
                    ))?;
                    inner.sync_dir()?;
                    self.shares = Some(f.clone());
                    f
                }
            };
            append_share_records(
                f.as_ref(),
                &self.spath,
                self.borrows_recorded as u64,
                &self.borrows[self.borrows_recorded..],
            )?;
            inner.sync_file(f.as_ref(), &self.spath)?;
            self.borrows_recorded = self.borrows.len();
        }
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
        if !self.borrows.is_empty() {
            let trailer = encode_trailer(&self.borrows)?;
            self.file
                .write_all_at(&trailer, self.written_end)
                .map_err(io_err("write incoming snapshot trailer", &self.path))?;
        }
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
            Ok((info, borrows)) if info.meta.id == self.id => (info, borrows),
            Ok((info, _)) => {
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
        let _ = inner.vfs.remove_file(&self.spath);
        inner.sync_dir()?;
        self.finished = true;
        let (info, borrows) = info;
        let info = SnapshotInfo { path, ..info };
        // Published (its borrows now keep their owners) before the partial's claim goes; the
        // claim goes even if the retention pass inside failed (the snapshot is complete).
        let published = self.store.publish(info.clone(), true, borrows);
        inner.lock().incoming_claims.remove(&self.id);
        published?;
        // A prefix kept from an interrupted transfer has served (or is of an older snapshot).
        remove_sources(&inner, false)?;
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
        let _ = vfs.remove_file(&self.spath);
        self.finished = true;
        let claimed = self.store.inner.lock().incoming_claims.remove(&self.id);
        if claimed.is_some()
            && let Err(e) = self.store.gc()
        {
            tracing::warn!(error = %e, "snapshot retention after an abandoned transfer failed");
        }
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        // Unfinished transfers keep their files so a restarted transfer can resume.
        self.store.inner.lock().incoming_open.remove(&self.id);
    }
}
