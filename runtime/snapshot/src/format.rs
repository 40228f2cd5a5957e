//! The node snapshot format: what goes inside the body of a `wraft_storage`
//! snapshot file.
//!
//! The storage layer already frames the file (magic, version, metadata,
//! whole-file BLAKE3 digest, atomic publish). Its body, written by this
//! module, is a sequence of self-describing frames, each with its own length
//! and CRC32C, so a reader can stream sections back one at a time and name the
//! exact frame that is damaged:
//!
//! ```text
//! frame   := kind u8 | payload_len u32 LE | crc32c(payload) u32 LE | payload
//! body    := Header Module{n} Sessions Limits (MachineBegin MachineChunk* MachineEnd){n} End
//!            (version 1 files have no Limits frame)
//! Header        postcard NodeSnapshotHeader (format version, index, term, membership,
//!               machine registry with module hashes, replicated address book, clock)
//! Module        machine index u32 LE ‖ the component bytes (the log entry that
//!               deployed it is compacted away; the module travels with the state)
//! Sessions      postcard SessionTable (client deduplication)
//! Limits        postcard Vec<Option<MachineLimits>>, one per machine: the replicated limits
//!               of its deploy (None: deployed before limits were replicated)
//! MachineBegin  postcard u32 machine index
//! MachineChunk  one opaque chunk of the guest's snapshot, exactly as the guest produced it
//! MachineEnd    postcard (chunks, bytes) — checked against what was read
//! End           postcard u32 number of machines; its absence means a truncated body
//! ```
//!
//! The file is a deterministic function of the replicated state at its
//! index (no local clock, hostname or path inside), so two replicas that
//! snapshot the same index produce the same bytes.
//!
//! Guest state is never held whole in memory on either side: the writer
//! appends each chunk as the guest yields it, and [`MachineChunks`] hands
//! them back one at a time to a restoring instance. Nothing here knows the wasm
//! host: `wraft-node` adapts [`MachineChunks::next_chunk`] to the host's `ChunkSource`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wraft_engine::{Membership, SessionTable};
use wraft_storage::{SnapshotId, SnapshotReader, SnapshotStore, SnapshotWriter};

use wraft_proto::digest::hex;
use wraft_proto::{MachineLimits, WasiProfile};

/// `SnapshotMeta::format` of every node snapshot file written by this version.
pub const NODE_SNAPSHOT_FORMAT: &str = "wraft-node/1";
/// Version of [`NodeSnapshotHeader`] and the frame layout written. Version 2 adds the
/// [`FrameKind::Limits`] frame (each machine's replicated limits); version 1 files are still
/// read, their machines running with the node's configured limits as they did.
pub const NODE_SNAPSHOT_VERSION: u32 = 2;
/// Bytes of a frame header (kind, length, CRC32C).
pub const FRAME_HEADER_BYTES: u64 = 9;
/// Largest frame payload accepted by the reader, bytes (a module or a guest
/// chunk); bounds the reader's memory on a damaged or hostile file.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 256 << 20;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// [`NodeSnapshotHeader`].
    Header = 1,
    /// A machine's component bytes.
    Module = 2,
    /// The client-session table.
    Sessions = 3,
    /// Each machine's replicated limits (version 2 on).
    Limits = 4,
    /// Start of a machine's guest snapshot.
    MachineBegin = 0x10,
    /// One chunk of guest snapshot.
    MachineChunk = 0x11,
    /// End of a machine's guest snapshot.
    MachineEnd = 0x12,
    /// End of the body.
    End = 0x7f,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Header,
            2 => Self::Module,
            3 => Self::Sessions,
            4 => Self::Limits,
            0x10 => Self::MachineBegin,
            0x11 => Self::MachineChunk,
            0x12 => Self::MachineEnd,
            0x7f => Self::End,
            _ => return None,
        })
    }
}

/// One machine in the registry at the snapshot's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// Machine name (what clients address).
    pub name: String,
    /// Guest kind (`info().name`).
    pub kind: String,
    /// Guest version (`info().version`).
    pub version: String,
    /// The guest's snapshot format; passed to `restore`.
    pub snapshot_format: u32,
    /// SHA-256 of the component, checked against the Module frame.
    pub module_sha256: [u8; 32],
    /// Length of the component, bytes.
    pub module_bytes: u64,
    /// Log index that deployed the running version.
    pub deployed_at: u64,
    /// Log index that deployed the first version of this incarnation of the
    /// machine (a removed and redeployed name is a new incarnation).
    pub created_at: u64,
    /// The WASI profile the machine was deployed with: a restore must link
    /// the same imports every replica linked when applying its log.
    pub wasi: WasiProfile,
}

/// The first frame: everything but the bulk data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshotHeader {
    /// [`NODE_SNAPSHOT_VERSION`].
    pub format_version: u32,
    /// Last log index covered.
    pub index: u64,
    /// Term of `index`.
    pub term: u64,
    /// Membership in effect at `index`.
    pub membership: Membership,
    /// The applier's monotonic entry clock at `index` (the leader-assigned
    /// timestamp guests saw last), ms since the Unix epoch. There is
    /// deliberately no local wall-clock creation time: every field is a
    /// function of the replicated state at `index`, so replicas that
    /// snapshot at the same index write byte-identical files (same digest),
    /// and a transfer interrupted by a leader change resumes from the new
    /// leader's copy.
    pub last_timestamp_ms: u64,
    /// Replicated node addresses (`SetAddress` commands), sorted by id.
    pub addresses: Vec<(u64, SocketAddr)>,
    /// The machine registry, in section order.
    pub machines: Vec<MachineRecord>,
}

/// Why a node snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Storage failed (I/O, limits, digest).
    #[error(transparent)]
    Storage(#[from] wraft_storage::StorageError),
    /// The body does not follow the format.
    #[error(
        "node snapshot {file}: {what} at body offset {offset}: expected {expected}, found {found}"
    )]
    Invalid {
        /// File (or snapshot id) being read.
        file: String,
        /// What was being checked.
        what: &'static str,
        /// Byte offset within the body.
        offset: u64,
        /// What the format requires.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// Reading the file failed.
    #[error("node snapshot {file}: {detail}")]
    Io {
        /// File being read.
        file: String,
        /// What failed.
        detail: String,
    },
}

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

/// A body read straight from a file (for `wraft snapshot inspect`).
pub struct FileBody {
    file: std::fs::File,
    path: String,
    offset: u64,
    len: u64,
}

impl FileBody {
    /// The body of the snapshot file at `path`, whose header storage verified
    /// (`body_offset`, `body_len` from [`wraft_storage::SnapshotInfo`]).
    pub fn open(path: &Path, body_offset: u64, body_len: u64) -> Result<Self, FormatError> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::Io {
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
        use std::os::unix::fs::FileExt;
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        self.file
            .read_exact_at(&mut buf[..n], self.offset + offset)
            .map_err(|e| e.to_string())?;
        Ok(n)
    }
    fn name(&self) -> String {
        self.path.clone()
    }
}

/// Writes a node snapshot into a storage [`SnapshotWriter`], frame by frame.
/// Shared between the creating task and machine threads (guest chunks are
/// written from the machine's thread, one at a time).
pub struct NodeSnapshotWriter {
    inner: Option<SnapshotWriter>,
    body_bytes: u64,
}

/// A [`NodeSnapshotWriter`] shared with machine threads.
pub type SharedWriter = Arc<Mutex<NodeSnapshotWriter>>;

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
        let inner = store.begin(meta)?;
        let mut w = Self {
            inner: Some(inner),
            body_bytes: 0,
        };
        w.frame(FrameKind::Header, &encode(header)?)?;
        Ok(w)
    }

    /// Append one frame. Cost: a CRC32C over `payload` and one `pwrite`.
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
        w.write_chunk(&head)?;
        w.write_chunk(payload)?;
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

    /// Body bytes written so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Write the End frame, then seal the file (fdatasync, rename, retention).
    pub fn finish(mut self, machines: u32) -> Result<wraft_storage::SnapshotInfo, FormatError> {
        self.frame(FrameKind::End, &encode(&machines)?)?;
        let w = self.inner.take().ok_or_else(|| FormatError::Io {
            file: "snapshot being written".into(),
            detail: "writer already finished".into(),
        })?;
        Ok(w.finish()?)
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, FormatError> {
    postcard::to_stdvec(v).map_err(|e| FormatError::Io {
        file: "snapshot being written".into(),
        detail: format!("encoding: {e}"),
    })
}

/// Where one machine's guest snapshot lives in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineSection {
    /// Body offset of the first frame after MachineBegin.
    pub first_frame: u64,
    /// Chunks, from the MachineEnd frame.
    pub chunks: u64,
    /// Guest snapshot bytes, from the MachineEnd frame.
    pub bytes: u64,
}

/// A parsed node snapshot: header, modules and sessions in memory, machine
/// sections indexed (not read) for streaming.
pub struct NodeSnapshot {
    /// The header frame.
    pub header: NodeSnapshotHeader,
    /// Component bytes per machine, in registry order (SHA-256 checked).
    pub modules: Vec<Bytes>,
    /// The client-session table.
    pub sessions: SessionTable,
    /// Replicated limits per machine, in registry order (`None`: the node's configured limits,
    /// for a machine deployed before limits were replicated, or a version 1 file).
    pub limits: Vec<Option<MachineLimits>>,
    /// Guest snapshot location per machine, in registry order.
    pub sections: Vec<MachineSection>,
    src: Arc<dyn BodySource>,
}

struct Frame {
    kind: FrameKind,
    len: u32,
    crc: u32,
    /// Offset of the payload.
    at: u64,
}

fn invalid(
    src: &dyn BodySource,
    what: &'static str,
    offset: u64,
    expected: impl ToString,
    found: impl ToString,
) -> FormatError {
    FormatError::Invalid {
        file: src.name(),
        what,
        offset,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

fn read_exact(src: &dyn BodySource, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
    let mut done = 0;
    while done < buf.len() {
        let n = src
            .read_at(offset + done as u64, &mut buf[done..])
            .map_err(|detail| FormatError::Io {
                file: src.name(),
                detail,
            })?;
        if n == 0 {
            return Err(invalid(
                src,
                "body length",
                offset,
                format!("{} more bytes", buf.len() - done),
                "end of body",
            ));
        }
        done += n;
    }
    Ok(())
}

fn frame_at(src: &dyn BodySource, offset: u64) -> Result<Frame, FormatError> {
    let mut h = [0u8; FRAME_HEADER_BYTES as usize];
    read_exact(src, offset, &mut h)?;
    let kind = FrameKind::from_u8(h[0])
        .ok_or_else(|| invalid(src, "frame kind", offset, "a known kind", h[0]))?;
    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
    let crc = u32::from_le_bytes([h[5], h[6], h[7], h[8]]);
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(invalid(
            src,
            "frame length",
            offset,
            format!("<= {FRAME_PAYLOAD_BYTES_MAX}"),
            len,
        ));
    }
    if offset + FRAME_HEADER_BYTES + u64::from(len) > src.body_len() {
        return Err(invalid(
            src,
            "frame length",
            offset,
            format!("<= {}", src.body_len() - offset - FRAME_HEADER_BYTES),
            len,
        ));
    }
    Ok(Frame {
        kind,
        len,
        crc,
        at: offset + FRAME_HEADER_BYTES,
    })
}

fn payload(src: &dyn BodySource, f: &Frame) -> Result<Vec<u8>, FormatError> {
    let mut buf = vec![0u8; f.len as usize];
    read_exact(src, f.at, &mut buf)?;
    let found = crc32c::crc32c(&buf);
    if found != f.crc {
        return Err(invalid(
            src,
            "frame CRC32C",
            f.at - FRAME_HEADER_BYTES,
            format!("{:#010x}", f.crc),
            format!("{found:#010x}"),
        ));
    }
    Ok(buf)
}

fn expect_kind(src: &dyn BodySource, f: &Frame, kind: FrameKind) -> Result<(), FormatError> {
    if f.kind != kind {
        return Err(invalid(
            src,
            "frame order",
            f.at - FRAME_HEADER_BYTES,
            format!("{kind:?}"),
            format!("{:?}", f.kind),
        ));
    }
    Ok(())
}

fn decode<T: for<'de> Deserialize<'de>>(
    src: &dyn BodySource,
    f: &Frame,
    what: &'static str,
    bytes: &[u8],
) -> Result<T, FormatError> {
    postcard::from_bytes(bytes).map_err(|e| invalid(src, what, f.at, "postcard", e))
}

impl NodeSnapshot {
    /// Open snapshot `id` from `store` (pinned against retention while the
    /// returned value lives) and parse it. Cost: reads the header, modules and
    /// sessions, and the 9-byte header of every guest chunk frame.
    pub fn open(store: &SnapshotStore, id: SnapshotId) -> Result<Self, FormatError> {
        let reader = store.open_reader(id)?;
        if reader.info().meta.format != NODE_SNAPSHOT_FORMAT {
            return Err(FormatError::Invalid {
                file: reader.info().path.display().to_string(),
                what: "snapshot format",
                offset: 0,
                expected: NODE_SNAPSHOT_FORMAT.into(),
                found: reader.info().meta.format.clone(),
            });
        }
        Self::parse(Arc::new(reader))
    }

    /// Parse a body. See [`NodeSnapshot::open`].
    pub fn parse(src: Arc<dyn BodySource>) -> Result<Self, FormatError> {
        let s = src.as_ref();
        let f = frame_at(s, 0)?;
        expect_kind(s, &f, FrameKind::Header)?;
        let header: NodeSnapshotHeader = decode(s, &f, "header", &payload(s, &f)?)?;
        if !(1..=NODE_SNAPSHOT_VERSION).contains(&header.format_version) {
            return Err(invalid(
                s,
                "format version",
                0,
                NODE_SNAPSHOT_VERSION,
                header.format_version,
            ));
        }
        let mut off = f.at + u64::from(f.len);
        let mut modules = Vec::with_capacity(header.machines.len());
        for (i, m) in header.machines.iter().enumerate() {
            let f = frame_at(s, off)?;
            expect_kind(s, &f, FrameKind::Module)?;
            let p = payload(s, &f)?;
            if p.len() < 4 || u32::from_le_bytes([p[0], p[1], p[2], p[3]]) != i as u32 {
                return Err(invalid(s, "module frame index", off, i, "another"));
            }
            let bytes = Bytes::from(p).slice(4..);
            let sha = wraft_proto::digest::sha256(&bytes);
            if sha != m.module_sha256 {
                return Err(invalid(
                    s,
                    "module SHA-256",
                    off,
                    hex(&m.module_sha256),
                    hex(&sha),
                ));
            }
            modules.push(bytes);
            off = f.at + u64::from(f.len);
        }
        let f = frame_at(s, off)?;
        expect_kind(s, &f, FrameKind::Sessions)?;
        let sessions: SessionTable = decode(s, &f, "session table", &payload(s, &f)?)?;
        off = f.at + u64::from(f.len);
        let limits: Vec<Option<MachineLimits>> = if header.format_version >= 2 {
            let f = frame_at(s, off)?;
            expect_kind(s, &f, FrameKind::Limits)?;
            let l: Vec<Option<MachineLimits>> = decode(s, &f, "limits", &payload(s, &f)?)?;
            if l.len() != header.machines.len() {
                return Err(invalid(
                    s,
                    "limits count",
                    off,
                    header.machines.len(),
                    l.len(),
                ));
            }
            off = f.at + u64::from(f.len);
            l
        } else {
            vec![None; header.machines.len()]
        };
        let mut sections = Vec::with_capacity(header.machines.len());
        for i in 0..header.machines.len() {
            let f = frame_at(s, off)?;
            expect_kind(s, &f, FrameKind::MachineBegin)?;
            let idx: u32 = decode(s, &f, "machine index", &payload(s, &f)?)?;
            if idx as usize != i {
                return Err(invalid(s, "machine section index", off, i, idx));
            }
            let first_frame = f.at + u64::from(f.len);
            off = first_frame;
            loop {
                let f = frame_at(s, off)?;
                off = f.at + u64::from(f.len);
                match f.kind {
                    FrameKind::MachineChunk => {}
                    FrameKind::MachineEnd => {
                        let (chunks, bytes): (u64, u64) =
                            decode(s, &f, "machine end", &payload(s, &f)?)?;
                        sections.push(MachineSection {
                            first_frame,
                            chunks,
                            bytes,
                        });
                        break;
                    }
                    other => {
                        return Err(invalid(
                            s,
                            "frame order",
                            f.at - FRAME_HEADER_BYTES,
                            "MachineChunk or MachineEnd",
                            format!("{other:?}"),
                        ));
                    }
                }
            }
        }
        let f = frame_at(s, off)?;
        expect_kind(s, &f, FrameKind::End)?;
        let n: u32 = decode(s, &f, "end frame", &payload(s, &f)?)?;
        if n as usize != header.machines.len() {
            return Err(invalid(s, "machine count", off, header.machines.len(), n));
        }
        let end = f.at + u64::from(f.len);
        if end != s.body_len() {
            return Err(invalid(s, "trailing bytes", end, 0, s.body_len() - end));
        }
        Ok(Self {
            header,
            modules,
            sessions,
            limits,
            sections,
            src,
        })
    }

    /// A chunk source for machine `idx`'s guest snapshot (CRC-checked chunk by
    /// chunk as it is read; suitable for `MachineHandle::restore`).
    pub fn machine_chunks(&self, idx: usize) -> Option<MachineChunks> {
        let sec = *self.sections.get(idx)?;
        Some(MachineChunks {
            src: self.src.clone(),
            next: sec.first_frame,
            section: sec,
            seen_chunks: 0,
            seen_bytes: 0,
            done: false,
        })
    }

    /// Index of machine `name` in the registry.
    pub fn machine_index(&self, name: &str) -> Option<usize> {
        self.header.machines.iter().position(|m| m.name == name)
    }
}

/// Streams one machine's guest snapshot back, chunk by chunk.
pub struct MachineChunks {
    src: Arc<dyn BodySource>,
    next: u64,
    section: MachineSection,
    seen_chunks: u64,
    seen_bytes: u64,
    done: bool,
}

impl MachineChunks {
    /// The next chunk of guest snapshot (its frame's CRC32C checked), or `None` after the
    /// section's end frame, whose chunk and byte counts must match what was read. An error
    /// names the file and what is wrong; the section cannot be read further.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.done {
            return Ok(None);
        }
        let s = self.src.as_ref();
        let f = frame_at(s, self.next).map_err(|e| e.to_string())?;
        self.next = f.at + u64::from(f.len);
        match f.kind {
            FrameKind::MachineChunk => {
                let p = payload(s, &f).map_err(|e| e.to_string())?;
                self.seen_chunks += 1;
                self.seen_bytes += p.len() as u64;
                Ok(Some(p))
            }
            FrameKind::MachineEnd => {
                self.done = true;
                if (self.seen_chunks, self.seen_bytes) != (self.section.chunks, self.section.bytes)
                {
                    return Err(format!(
                        "{}: machine section ended after {} chunks / {} bytes; its end frame says {} / {}",
                        s.name(),
                        self.seen_chunks,
                        self.seen_bytes,
                        self.section.chunks,
                        self.section.bytes
                    ));
                }
                Ok(None)
            }
            other => Err(format!(
                "{}: unexpected {other:?} frame inside a machine section",
                s.name()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> SnapshotStore {
        let cfg = wraft_storage::StorageConfig::default();
        wraft_storage::SnapshotStore::open(Arc::new(wraft_storage::StdFs), dir, &cfg)
            .unwrap()
            .0
    }

    fn header(index: u64, modules: &[&[u8]]) -> NodeSnapshotHeader {
        NodeSnapshotHeader {
            format_version: NODE_SNAPSHOT_VERSION,
            index,
            term: 2,
            membership: Membership::with_voters([1, 2, 3]),
            last_timestamp_ms: 77,
            addresses: vec![(4, "127.0.0.1:9".parse().unwrap())],
            machines: modules
                .iter()
                .enumerate()
                .map(|(i, m)| MachineRecord {
                    name: format!("m{i}"),
                    kind: "kv".into(),
                    version: "1".into(),
                    snapshot_format: 1,
                    module_sha256: wraft_proto::digest::sha256(m),
                    module_bytes: m.len() as u64,
                    deployed_at: 1,
                    created_at: 1,
                    wasi: WasiProfile::None,
                })
                .collect(),
        }
    }

    fn write(store: &SnapshotStore, h: &NodeSnapshotHeader, modules: &[&[u8]], chunks: &[Vec<u8>]) {
        let mut w = NodeSnapshotWriter::begin(store, h).unwrap();
        for (i, m) in modules.iter().enumerate() {
            w.module(i as u32, m).unwrap();
        }
        let mut st = SessionTable::new(10, 1000);
        let tag = wraft_engine::ClientTag {
            client_id: 9,
            seq: 1,
        };
        st.open(tag.client_id, 5);
        assert_eq!(st.admit(tag, 5), wraft_engine::SessionCheck::Fresh);
        st.complete(tag, Bytes::from_static(b"out"));
        w.sessions(&st).unwrap();
        if h.format_version >= 2 {
            let limits: Vec<_> = (0..modules.len()).map(|i| limits(i as u64)).collect();
            w.limits(&limits).unwrap();
        }
        for i in 0..modules.len() {
            w.frame(FrameKind::MachineBegin, &encode(&(i as u32)).unwrap())
                .unwrap();
            let mut bytes = 0;
            for c in chunks {
                w.frame(FrameKind::MachineChunk, c).unwrap();
                bytes += c.len() as u64;
            }
            w.frame(
                FrameKind::MachineEnd,
                &encode(&(chunks.len() as u64, bytes)).unwrap(),
            )
            .unwrap();
        }
        w.finish(modules.len() as u32).unwrap();
    }

    /// Machine `i`'s limits in the test files: none for even `i` (deployed before limits were
    /// replicated), distinct values for odd `i`.
    fn limits(i: u64) -> Option<MachineLimits> {
        (i % 2 == 1).then_some(MachineLimits {
            fuel_per_entry: 1000 + i,
            fuel_per_call: 2000 + i,
            memory_bytes_max: 3000 + i,
            output_bytes_max: 4000 + i,
        })
    }

    #[test]
    fn a_version_1_file_reads_with_every_machine_on_the_nodes_own_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let modules: [&[u8]; 2] = [b"module-zero", b"module-one!"];
        let mut h = header(10, &modules);
        h.format_version = 1;
        write(&s, &h, &modules, &[vec![1u8; 10]]);
        let id = SnapshotId {
            last_index: 10,
            last_term: 2,
        };
        let snap = NodeSnapshot::open(&s, id).unwrap();
        assert_eq!(snap.header, h);
        assert_eq!(snap.limits, vec![None, None]);
        assert_eq!(snap.sessions.len(), 1);
    }

    #[test]
    fn node_snapshot_round_trips_every_section() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let modules: [&[u8]; 2] = [b"module-zero", b"module-one!"];
        let chunks = vec![vec![1u8; 1000], vec![2u8; 10], vec![3u8; 5000]];
        let h = header(10, &modules);
        write(&s, &h, &modules, &chunks);
        let id = SnapshotId {
            last_index: 10,
            last_term: 2,
        };
        let snap = NodeSnapshot::open(&s, id).unwrap();
        assert_eq!(snap.header, h);
        assert_eq!(&snap.modules[1][..], modules[1]);
        assert_eq!(snap.sessions.len(), 1);
        assert_eq!(snap.limits, vec![limits(0), limits(1)]);
        for i in 0..2 {
            let mut src = snap.machine_chunks(i).unwrap();
            let mut got = Vec::new();
            while let Some(c) = src.next_chunk().unwrap() {
                got.push(c);
            }
            assert_eq!(got, chunks);
        }
    }

    #[test]
    fn damaged_guest_chunk_is_named_by_offset_and_crc() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let modules: [&[u8]; 1] = [b"m"];
        let chunks = vec![vec![7u8; 4096]];
        write(&s, &header(3, &modules), &modules, &chunks);
        let info = s.latest().unwrap();
        // Flip a byte in the middle of the guest chunk, behind storage's back.
        let raw = std::fs::read(&info.path).unwrap();
        let mut bad = raw.clone();
        let at = raw.len() - 100 - 20;
        bad[at] ^= 0xff;
        std::fs::write(&info.path, &bad).unwrap();
        let body = FileBody::open(&info.path, info.body_offset(), info.body_len).unwrap();
        let snap = NodeSnapshot::parse(Arc::new(body)).unwrap();
        let mut src = snap.machine_chunks(0).unwrap();
        let err = src.next_chunk().unwrap_err();
        assert!(err.contains("frame CRC32C"), "{err}");
    }

    #[test]
    fn truncated_body_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let modules: [&[u8]; 1] = [b"m"];
        write(&s, &header(3, &modules), &modules, &[vec![1u8; 64]]);
        let info = s.latest().unwrap();
        // A body cut before its End frame.
        let body = FileBody::open(&info.path, info.body_offset(), info.body_len - 12).unwrap();
        let err = NodeSnapshot::parse(Arc::new(body))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("node snapshot"), "{err}");
    }
}
