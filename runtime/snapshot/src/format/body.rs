//! Where a node snapshot body comes from ([`BodySource`]: a storage reader, a file, memory)
//! and where it goes ([`BodySink`]: a storage writer, memory).

use std::path::Path;

use bytes::Bytes;
use wraft_storage::{SnapshotReader, SnapshotWriter};

use super::FormatError;

/// Random access to a snapshot body (bytes after the storage header).
pub trait BodySource: Send + Sync {
    /// Body length, bytes.
    fn body_len(&self) -> u64;
    /// Read at `offset` into `buf`; returns bytes read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, String>;
    /// Name for error messages.
    fn name(&self) -> String;
}

impl BodySource for SnapshotReader {
    fn body_len(&self) -> u64 {
        self.info().body_len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        self.read_body_at(offset, buf).map_err(|e| e.to_string())
    }
    fn name(&self) -> String {
        self.info().path.display().to_string()
    }
}

/// A body read straight from a file (for `wraft snapshot inspect`). A file that shares bytes
/// with older snapshots reads them from the files next to it, as the store does.
pub struct FileBody {
    file: std::sync::Arc<dyn wraft_storage::VfsFile>,
    path: String,
    offset: u64,
    len: u64,
}

impl FileBody {
    /// The body of the snapshot file at `path`, whose header storage verified
    /// (`body_offset`, `body_len` from [`wraft_storage::SnapshotInfo`]).
    pub fn open(path: &Path, body_offset: u64, body_len: u64) -> Result<Self, FormatError> {
        let file = wraft_storage::open_snapshot_file(path).map_err(|e| FormatError::Io {
            file: path.display().to_string(),
            detail: format!("open: {e}"),
        })?;
        Ok(Self {
            file,
            path: path.display().to_string(),
            offset: body_offset,
            len: body_len,
        })
    }
}

impl BodySource for FileBody {
    fn body_len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        wraft_storage::read_exact_at(self.file.as_ref(), &mut buf[..n], self.offset + offset)
            .map_err(|e| e.to_string())?;
        Ok(n)
    }
    fn name(&self) -> String {
        self.path.clone()
    }
}

/// A body held in memory (tests, the fuzz harness). Reads past the end return 0 bytes.
pub struct MemoryBody {
    bytes: Bytes,
    name: String,
}

impl MemoryBody {
    /// The body `bytes`, called `name` in error messages.
    pub fn new(bytes: impl Into<Bytes>, name: impl Into<String>) -> Self {
        Self {
            bytes: bytes.into(),
            name: name.into(),
        }
    }
}

impl BodySource for MemoryBody {
    fn body_len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, String> {
        let Some(rest) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..))
        else {
            return Ok(0);
        };
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

/// Where a body's bytes go, in order: a storage [`SnapshotWriter`] (a snapshot file) or a
/// `Vec<u8>` (memory).
pub trait BodySink {
    /// Append `bytes` to the body.
    fn append(&mut self, bytes: &[u8]) -> Result<(), FormatError>;

    /// Append one whole frame, its header and its payload: the unit a sink may share with an
    /// older snapshot instead of writing it. By default two appends.
    fn append_frame(&mut self, head: &[u8], payload: &[u8]) -> Result<(), FormatError> {
        self.append(head)?;
        self.append(payload)
    }
}

impl BodySink for SnapshotWriter {
    /// One `pwrite` (the storage writer also feeds its whole-file digest).
    fn append(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        Ok(self.write_chunk(bytes)?)
    }

    /// A storage segment: shared with an older snapshot holding the same frame if the writer
    /// was begun sharing ([`super::NodeSnapshotWriter::begin_sharing`]), else written.
    fn append_frame(&mut self, head: &[u8], payload: &[u8]) -> Result<(), FormatError> {
        Ok(self.write_segment(&[head, payload])?)
    }
}

impl BodySink for Vec<u8> {
    fn append(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}
