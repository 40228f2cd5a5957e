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
        BodyWriter::start(store.begin(storage_meta(header))?, header)
    }

    /// [`NodeSnapshotWriter::begin`], sharing every frame that `shared` says an older snapshot
    /// of `store` holds instead of writing it again (build it with
    /// [`crate::manifest::shared_segments`]): unchanged guest chunks cost no disk.
    pub fn begin_sharing(
        store: &SnapshotStore,
        header: &NodeSnapshotHeader,
        shared: std::sync::Arc<wraft_storage::SharedSegments>,
    ) -> Result<Self, FormatError> {
        BodyWriter::start(store.begin_sharing(storage_meta(header), shared)?, header)
    }

    /// Bytes shared with older snapshots so far.
    pub fn shared_bytes(&self) -> u64 {
        self.inner.as_ref().map_or(0, SnapshotWriter::shared_bytes)
    }
}

/// The storage metadata of a node snapshot file with `header`.
fn storage_meta(header: &NodeSnapshotHeader) -> wraft_storage::SnapshotMeta {
    wraft_storage::SnapshotMeta {
        id: SnapshotId {
            last_index: header.index,
            last_term: header.term,
        },
        membership: wraft_storage::Membership {
            voters: header.membership.voters.iter().copied().collect(),
            learners: header.membership.learners.iter().copied().collect(),
        },
        format: NODE_SNAPSHOT_FORMAT.to_owned(),
    }
}

impl NodeSnapshotWriter {
    /// Write the End frame, then seal the file (fdatasync, rename, retention).
    pub fn finish(mut self, machines: u32) -> Result<wraft_storage::SnapshotInfo, FormatError> {
        Ok(self.end(machines)?.finish()?)
    }

    /// Write a copy of the node snapshot body `src` into `store` under a new `header`: its
    /// header frame is replaced and every other frame (modules, sessions, limits, machine
    /// state, End) is copied byte for byte with its CRC, `io_chunk_bytes` at a time. What
    /// `wraft restore` uses to give a saved snapshot a new membership and address book; the
    /// caller checks that `header` keeps the source's index, term and machines. Nothing is
    /// visible in `store` unless the whole copy succeeds (the storage writer publishes by
    /// rename after fdatasync). Cost: one sequential read of `src`, one write.
    pub fn copy_with_header(
        store: &SnapshotStore,
        header: &NodeSnapshotHeader,
        src: &dyn super::BodySource,
        io_chunk_bytes: usize,
    ) -> Result<wraft_storage::SnapshotInfo, FormatError> {
        let mut w = Self::begin(store, header)?;
        let mut head = [0u8; FRAME_HEADER_BYTES as usize];
        let n = src
            .read_at(0, &mut head)
            .map_err(|detail| FormatError::Io {
                file: src.name(),
                detail,
            })?;
        if n != head.len() || head[0] != FrameKind::Header as u8 {
            return Err(FormatError::Invalid {
                file: src.name(),
                what: "header frame",
                offset: 0,
                expected: format!("a frame of kind {}", FrameKind::Header as u8),
                found: format!("{n} bytes, kind {}", head.first().copied().unwrap_or(0)),
            });
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        w.copy_rest(src, FRAME_HEADER_BYTES + u64::from(len), io_chunk_bytes)?;
        w.seal()
    }

    /// Write a self-contained copy of the node snapshot `src` into `store`: the same header,
    /// every module as a Module frame (`modules`, one per machine in registry order, for those
    /// `src` names by reference; each checked against its record's SHA-256 and size), and every
    /// frame after the modules copied byte for byte, `io_chunk_bytes` at a time. What a backup
    /// is made of: it restores on a node that holds none of its modules. Nothing is visible in
    /// `store` unless the whole copy succeeds.
    pub fn copy_inlining_modules(
        store: &SnapshotStore,
        src: &super::NodeSnapshot,
        modules: &[bytes::Bytes],
        io_chunk_bytes: usize,
    ) -> Result<wraft_storage::SnapshotInfo, FormatError> {
        let header = &src.header;
        let mut w = Self::begin(store, header)?;
        for (i, (record, carried)) in header.machines.iter().zip(&src.modules).enumerate() {
            let bytes = match (carried, modules.get(i)) {
                (Some(b), _) | (None, Some(b)) => b,
                (None, None) => {
                    return Err(FormatError::Io {
                        file: src.body().name(),
                        detail: format!("no bytes given for the module of machine {i}"),
                    });
                }
            };
            let sha = wraft_proto::digest::sha256(bytes);
            if sha != record.module_sha256 || bytes.len() as u64 != record.module_bytes {
                return Err(FormatError::Invalid {
                    file: src.body().name(),
                    what: "module given for a reference",
                    offset: 0,
                    expected: format!(
                        "{} bytes, SHA-256 {}",
                        record.module_bytes,
                        wraft_proto::digest::hex(&record.module_sha256)
                    ),
                    found: format!(
                        "{} bytes, SHA-256 {}",
                        bytes.len(),
                        wraft_proto::digest::hex(&sha)
                    ),
                });
            }
            w.module(i as u32, bytes)?;
        }
        w.copy_rest(src.body().as_ref(), src.modules_end, io_chunk_bytes)?;
        w.seal()
    }

    /// Copy `src`'s body from `at` to its end, as it is, after what was written so far.
    fn copy_rest(
        &mut self,
        src: &dyn super::BodySource,
        mut at: u64,
        io_chunk_bytes: usize,
    ) -> Result<(), FormatError> {
        let end = src.body_len();
        let mut buf = vec![0u8; io_chunk_bytes.max(4096)];
        while at < end {
            let want = buf.len().min((end - at) as usize);
            let n = src
                .read_at(at, &mut buf[..want])
                .map_err(|detail| FormatError::Io {
                    file: src.name(),
                    detail,
                })?;
            if n == 0 {
                return Err(FormatError::Io {
                    file: src.name(),
                    detail: format!("body ends at {at}, {end} expected"),
                });
            }
            let sink = self.inner.as_mut().ok_or_else(finished)?;
            sink.append(&buf[..n])?;
            self.body_bytes += n as u64;
            at += n as u64;
        }
        Ok(())
    }

    /// Seal a copy whose last bytes (its End frame) were copied.
    fn seal(mut self) -> Result<wraft_storage::SnapshotInfo, FormatError> {
        let sink = self.inner.take().ok_or_else(finished)?;
        Ok(sink.finish()?)
    }
}

fn finished() -> FormatError {
    FormatError::Io {
        file: "snapshot being written".into(),
        detail: "writer already finished".into(),
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
        let w = self.inner.as_mut().ok_or_else(finished)?;
        let mut head = [0u8; FRAME_HEADER_BYTES as usize];
        head[0] = kind as u8;
        head[1..5].copy_from_slice(&len.to_le_bytes());
        head[5..9].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        w.append_frame(&head, payload)?;
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

    /// Name machine `idx`'s module by reference: its record's SHA-256 and size (the header
    /// must be of version [`super::MODULE_REF_VERSION`] or later for a reader to accept it).
    pub fn module_ref(&mut self, idx: u32) -> Result<(), FormatError> {
        self.frame(FrameKind::ModuleRef, &idx.to_le_bytes())
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
        self.inner.take().ok_or_else(finished)
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, FormatError> {
    postcard::to_stdvec(v).map_err(|e| FormatError::Io {
        file: "snapshot being written".into(),
        detail: format!("encoding: {e}"),
    })
}
