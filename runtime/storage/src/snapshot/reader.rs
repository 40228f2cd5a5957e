//! Streaming a complete snapshot out: guest payload for restoring, raw file bytes for a transfer.

use std::fmt;
use std::sync::Arc;

use crate::config::StorageConfig;
use crate::error::{Result, StorageError, io_err};
use crate::vfs::{Vfs, VfsFile, read_exact_at};

use super::format::verify_file;
use super::retention::SnapshotPin;
use super::shared::open_logical;
use super::{SnapshotId, SnapshotInfo, SnapshotStore};

impl SnapshotStore {
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
        let (file, _) = open_logical(self.inner.vfs.as_ref(), &info.path)?;
        Ok(SnapshotReader {
            info,
            file,
            pos: 0,
            cfg: self.inner.cfg.clone(),
            vfs: self.inner.vfs.clone(),
            _pin: pin,
        })
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
    /// [`IncomingSnapshot::write_at`](super::IncomingSnapshot::write_at). Returns bytes read (0 at
    /// the end).
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
