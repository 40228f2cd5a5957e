//! Writing a node snapshot body, frame by frame.

use serde::Serialize;
use wraft_engine::SessionTable;
use wraft_proto::MachineLimits;
use wraft_storage::{SnapshotId, SnapshotStore, SnapshotWriter};

use super::{
    BodySink, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, FormatError, FrameKind,
    NODE_SNAPSHOT_FORMAT, NodeSnapshotHeader,
};

/// Writes a node snapshot body into a [`BodySink`], frame by frame.
///
/// In a node it is a [`NodeSnapshotWriter`], shared between the creating task and
/// machine threads (guest chunks are written from the machine's thread, one at a time).
pub struct BodyWriter<S: BodySink> {
    inner: Option<S>,
    body_bytes: u64,
}

/// Writes a node snapshot into a storage snapshot file.
pub type NodeSnapshotWriter = BodyWriter<SnapshotWriter>;

impl NodeSnapshotWriter {
    /// Start a snapshot file in `store` for `header` and write the header
    /// frame. Nothing is visible until [`NodeSnapshotWriter::finish`].
    pub fn begin(store: &SnapshotStore, header: &NodeSnapshotHeader) -> Result<Self, FormatError> {
        let meta = wraft_storage::SnapshotMeta {
            id: SnapshotId {
                last_index: header.index,
                last_term: header.term,
            },
            membership: wraft_storage::Membership {
                voters: header.membership.voters.iter().copied().collect(),
                learners: header.membership.learners.iter().copied().collect(),
            },
            format: NODE_SNAPSHOT_FORMAT.to_owned(),
        };
        BodyWriter::start(store.begin(meta)?, header)
    }

    /// Write the End frame, then seal the file (fdatasync, rename, retention).
    pub fn finish(mut self, machines: u32) -> Result<wraft_storage::SnapshotInfo, FormatError> {
        Ok(self.end(machines)?.finish()?)
    }
}

impl BodyWriter<Vec<u8>> {
    /// Start a body in memory for `header` and write the header frame.
    pub fn in_memory(header: &NodeSnapshotHeader) -> Result<Self, FormatError> {
        BodyWriter::start(Vec::new(), header)
    }

    /// Write the End frame and return the whole body.
    pub fn into_body(mut self, machines: u32) -> Result<Vec<u8>, FormatError> {
        self.end(machines)
    }
}

impl<S: BodySink> BodyWriter<S> {
    fn start(sink: S, header: &NodeSnapshotHeader) -> Result<Self, FormatError> {
        let mut w = Self {
            inner: Some(sink),
            body_bytes: 0,
        };
        w.frame(FrameKind::Header, &encode(header)?)?;
        Ok(w)
    }

    /// Append one frame. Cost: a CRC32C over `payload` and two appends to the sink (one
    /// `pwrite` each for a file).
    pub fn frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), FormatError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= FRAME_PAYLOAD_BYTES_MAX)
            .ok_or_else(|| {
                FormatError::Storage(wraft_storage::StorageError::LimitExceeded {
                    what: "node snapshot frame",
                    limit_name: "FRAME_PAYLOAD_BYTES_MAX",
                    limit: u64::from(FRAME_PAYLOAD_BYTES_MAX),
                    found: payload.len() as u64,
                })
            })?;
        let w = self.inner.as_mut().ok_or_else(|| FormatError::Io {
            file: "snapshot being written".into(),
            detail: "writer already finished".into(),
        })?;
        let mut head = [0u8; FRAME_HEADER_BYTES as usize];
        head[0] = kind as u8;
        head[1..5].copy_from_slice(&len.to_le_bytes());
        head[5..9].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        w.append(&head)?;
        w.append(payload)?;
        self.body_bytes += FRAME_HEADER_BYTES + payload.len() as u64;
        Ok(())
    }

    /// Write machine `idx`'s component bytes.
    pub fn module(&mut self, idx: u32, bytes: &[u8]) -> Result<(), FormatError> {
        let mut p = Vec::with_capacity(4 + bytes.len());
        p.extend_from_slice(&idx.to_le_bytes());
        p.extend_from_slice(bytes);
        self.frame(FrameKind::Module, &p)
    }

    /// Write the session table.
    pub fn sessions(&mut self, t: &SessionTable) -> Result<(), FormatError> {
        self.frame(FrameKind::Sessions, &encode(t)?)
    }

    /// Write each machine's replicated limits, in registry order (after the session table).
    pub fn limits(&mut self, limits: &[Option<MachineLimits>]) -> Result<(), FormatError> {
        self.frame(FrameKind::Limits, &encode(&limits)?)
    }

    /// Open machine `idx`'s guest snapshot section.
    pub fn machine_begin(&mut self, idx: u32) -> Result<(), FormatError> {
        self.frame(FrameKind::MachineBegin, &encode(&idx)?)
    }

    /// Append one chunk of guest snapshot, exactly as the guest produced it.
    pub fn machine_chunk(&mut self, chunk: &[u8]) -> Result<(), FormatError> {
        self.frame(FrameKind::MachineChunk, chunk)
    }

    /// Close the open machine section: it held `chunks` chunks of `bytes` bytes in all
    /// (a reader checks both).
    pub fn machine_end(&mut self, chunks: u64, bytes: u64) -> Result<(), FormatError> {
        self.frame(FrameKind::MachineEnd, &encode(&(chunks, bytes))?)
    }

    /// Body bytes written so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Write the End frame and hand back the sink.
    fn end(&mut self, machines: u32) -> Result<S, FormatError> {
        self.frame(FrameKind::End, &encode(&machines)?)?;
        self.inner.take().ok_or_else(|| FormatError::Io {
            file: "snapshot being written".into(),
            detail: "writer already finished".into(),
        })
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, FormatError> {
    postcard::to_stdvec(v).map_err(|e| FormatError::Io {
        file: "snapshot being written".into(),
        detail: format!("encoding: {e}"),
    })
}
