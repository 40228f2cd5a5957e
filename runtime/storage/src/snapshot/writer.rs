//! Writing a snapshot locally from the guest's chunks, published by rename when finished.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Result, StorageError, io_err};
use crate::vfs::{OpenMode, VfsFile, read_exact_at};

use super::format::{SNAP_MAGIC, SNAP_VERSION, SNAPSHOT_HEADER_BYTES};
use super::shared::{Borrow, SharedSegments, encode_trailer, open_owner, push_borrow};
use super::{SnapshotId, SnapshotInfo, SnapshotMeta, SnapshotStore};

impl SnapshotStore {
    /// Start writing a snapshot locally (from the guest's chunks). Nothing is visible until
    /// [`SnapshotWriter::finish`]; dropping the writer deletes the temporary file.
    pub fn begin(&self, meta: SnapshotMeta) -> Result<SnapshotWriter> {
        self.begin_with(meta, None)
    }

    /// [`SnapshotStore::begin`], for a writer whose [`SnapshotWriter::write_segment`] looks each
    /// segment up in `shared` and shares it with the snapshot holding it instead of writing it
    /// again (see `shared`): a snapshot of slowly changing state then costs the disk only what
    /// changed.
    pub fn begin_sharing(
        &self,
        meta: SnapshotMeta,
        shared: Arc<SharedSegments>,
    ) -> Result<SnapshotWriter> {
        self.begin_with(meta, Some(shared))
    }

    fn begin_with(
        &self,
        meta: SnapshotMeta,
        shared: Option<Arc<SharedSegments>>,
    ) -> Result<SnapshotWriter> {
        let inner = &self.inner;
        let id = meta.id;
        {
            let st = inner.lock();
            if st.complete.contains_key(&id) || st.packs.contains(&id) {
                return Err(StorageError::Invalid(format!(
                    "snapshot {id} already exists"
                )));
            }
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
        let number = {
            let mut st = inner.lock();
            st.next_writer += 1;
            st.next_writer
        };
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
            number,
            borrows: Vec::new(),
            shared,
            holders: HashMap::new(),
            scratch: Vec::new(),
            mismatches: 0,
            published: false,
        })
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
    /// This writer's number in the store's table of owners in use.
    number: u64,
    /// Ranges left as holes, their bytes held by older snapshots (see `shared`).
    borrows: Vec<Borrow>,
    /// Where segments already lie ([`SnapshotStore::begin_sharing`]).
    shared: Option<Arc<SharedSegments>>,
    /// Open files of the snapshots borrowed from, to check their bytes.
    holders: HashMap<SnapshotId, Arc<dyn VfsFile>>,
    scratch: Vec<u8>,
    /// Segments an index placed in an older file that holds other bytes there.
    mismatches: u64,
    /// Published: the store's table now keeps the owners this writer claimed.
    published: bool,
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
        self.check_room(chunk.len() as u64)?;
        self.file
            .write_all_at(chunk, self.pos)
            .map_err(io_err("write snapshot body", &self.tmp))?;
        self.hasher.update(chunk);
        self.pos += chunk.len() as u64;
        self.body_len += chunk.len() as u64;
        Ok(())
    }

    /// Append one segment, given in parts (a frame's header and payload): shared with the
    /// snapshot that holds the same bytes if the writer was begun with
    /// [`SnapshotStore::begin_sharing`] and one does, else written. Cost: without sharing, as
    /// [`SnapshotWriter::write_chunk`]; with it, one more BLAKE3 pass over the bytes and a
    /// lookup, and no write for a shared segment.
    pub fn write_segment(&mut self, parts: &[&[u8]]) -> Result<()> {
        if let Some(shared) = self.shared.clone() {
            let mut h = blake3::Hasher::new();
            for p in parts {
                h.update(p);
            }
            let len = parts.iter().map(|p| p.len() as u64).sum();
            if let Some((owner, at)) = shared.find(h.finalize().as_bytes(), len)
                && self.share(parts, owner, at)?
            {
                return Ok(());
            }
        }
        for p in parts {
            self.write_chunk(p)?;
        }
        Ok(())
    }

    /// Append `bytes` (given in parts, e.g. a frame's header and payload) without writing them,
    /// if snapshot `owner` holds the same bytes at `owner_at`: the file then borrows them (a hole
    /// and an entry in its trailer; see `shared`). The bytes there are read and compared first,
    /// so an owner damaged since an index named it is never shared from.
    ///
    /// Returns `false`, having done nothing, when the bytes cannot be borrowed: `owner` is no
    /// longer on disk, the range straddles bytes the owner holds and bytes it borrows itself, or
    /// the file there holds other bytes (counted and logged at [`SnapshotWriter::finish`]) or
    /// cannot be read. The caller then writes them ([`SnapshotWriter::write_chunk`]). From a
    /// `true` until this writer is finished or dropped, `owner` (or whichever snapshot holds the
    /// range) stays on disk. Cost: one read of the range, a comparison, and hashing `bytes` for
    /// the digest; no write.
    pub fn share(&mut self, bytes: &[&[u8]], owner: SnapshotId, owner_at: u64) -> Result<bool> {
        let len: u64 = bytes.iter().map(|b| b.len() as u64).sum();
        if len == 0 {
            return Ok(true);
        }
        self.check_room(len)?;
        let id = self.meta.id;
        let Some((holder, holder_at)) = self.store.inner.lock().lendable(owner, owner_at, len, id)
        else {
            return Ok(false);
        };
        // The bytes there must be these bytes, whatever a hash index said: an owner that rotted
        // since it was indexed would otherwise make this snapshot's logical bytes differ from its
        // digest. Cost: one read of the range (no write).
        match self.holder_has(holder, holder_at, bytes) {
            Some(true) => {}
            Some(false) => {
                self.mismatches += 1;
                return Ok(false);
            }
            None => return Ok(false),
        }
        {
            let mut st = self.store.inner.lock();
            // Claimed only if retention did not retire it meanwhile.
            if st.lendable(owner, owner_at, len, id) != Some((holder, holder_at)) {
                self.holders.remove(&holder);
                return Ok(false);
            }
            st.writing.entry(self.number).or_default().insert(holder);
            push_borrow(&mut self.borrows, 0, self.pos, len, holder, holder_at);
        }
        for b in bytes {
            self.hasher.update(b);
        }
        self.pos += len;
        self.body_len += len;
        Ok(true)
    }

    /// Whether snapshot `holder`'s file holds `bytes` at `at`; `None` if it cannot be opened or
    /// read there.
    fn holder_has(&mut self, holder: SnapshotId, at: u64, bytes: &[&[u8]]) -> Option<bool> {
        let inner = self.store.inner.clone();
        let file = match self.holders.get(&holder) {
            Some(f) => f.clone(),
            None => match open_owner(inner.vfs.as_ref(), &inner.dir, holder) {
                Some((_, f)) => {
                    self.holders.insert(holder, f.clone());
                    f
                }
                None => return None,
            },
        };
        let len: usize = bytes.iter().map(|b| b.len()).sum();
        self.scratch.resize(len, 0);
        read_exact_at(file.as_ref(), &mut self.scratch, at).ok()?;
        let mut from = 0;
        for b in bytes {
            if self.scratch[from..from + b.len()] != **b {
                return Some(false);
            }
            from += b.len();
        }
        Some(true)
    }

    fn check_room(&self, len: u64) -> Result<()> {
        let max = self.store.inner.cfg.snapshot_file_bytes_max;
        if self.pos + len > max {
            return Err(StorageError::LimitExceeded {
                what: "snapshot file",
                limit_name: "snapshot_file_bytes_max",
                limit: max,
                found: self.pos + len,
            });
        }
        Ok(())
    }

    /// Bytes borrowed so far ([`SnapshotWriter::share`]).
    pub fn shared_bytes(&self) -> u64 {
        self.borrows.iter().map(|b| b.len).sum()
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
        if !self.borrows.is_empty() {
            // The trailer starts at the logical end, which also gives a file that ends in a
            // hole its full logical length.
            let trailer = encode_trailer(&self.borrows)?;
            self.file
                .write_all_at(&trailer, self.pos)
                .map_err(io_err("write snapshot trailer", &self.tmp))?;
        }
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
            shared_bytes: self.shared_bytes(),
        };
        if self.mismatches > 0 {
            tracing::warn!(id = %self.meta.id, segments = self.mismatches,
                "older snapshot files did not hold the bytes their index named (damaged since they were indexed?); those segments were written instead of shared");
        }
        let borrows = std::sync::Arc::new(std::mem::take(&mut self.borrows));
        // Published (its borrows now count) before this writer's own claim goes (on drop).
        // Once in the table of complete snapshots (even if the retention pass inside failed),
        // its borrows keep the owners and this writer's claim may go.
        let published = self.store.publish(info.clone(), false, borrows);
        self.published = true;
        published?;
        Ok(info)
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.store.inner.vfs.remove_file(&self.tmp);
        }
        // Renamed into place but never published (an error in between): its file still borrows
        // from the owners, so the claim stays until a restart reads the file's trailer.
        if self.done && !self.published {
            return;
        }
        let claimed = self.store.inner.lock().writing.remove(&self.number);
        // Owners only this writer kept may now be retired packs nothing needs.
        if claimed.is_some()
            && let Err(e) = self.store.gc()
        {
            tracing::warn!(error = %e, "snapshot retention after a writer finished failed");
        }
    }
}
