//! Receiving a snapshot from a leader: spooled to `<id>.partial` with a crash-safe durable offset,
//! resumable after a restart, verified and published on `finalize`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Result, StorageError, io_err};
use crate::vfs::{OpenMode, VfsFile, read_exact_at};

use super::format::{feed_digest, verify_file_prehashed};
use super::progress::{read_progress, read_progress_seq, write_progress_slot};
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
        for o in others {
            retire_partial(inner, o)?;
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
        )
        .map(|(info, _)| info)
        {
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
        self.store.publish(info.clone(), true, Arc::default())?;
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
        self.finished = true;
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        // Unfinished transfers keep their files so a restarted transfer can resume.
        self.store.inner.lock().incoming_open.remove(&self.id);
    }
}
