//! Reading a node snapshot body: [`NodeSnapshot::parse`] indexes it, [`MachineChunks`] streams
//! a machine's guest snapshot back. Every length read from the body is checked against the
//! body's length before anything is allocated (`frame_at`): the body may come from a damaged
//! disk or, through a transfer, from another node.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use wraft_engine::SessionTable;
use wraft_proto::MachineLimits;
use wraft_proto::digest::hex;
use wraft_storage::{SnapshotId, SnapshotStore};

use super::{
    BodySource, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, FormatError, FrameKind,
    MODULE_REF_VERSION, NODE_SNAPSHOT_FORMAT, NODE_SNAPSHOT_VERSION, NodeSnapshotHeader,
};

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
    /// Component bytes per machine, in registry order (SHA-256 checked); `None` for a module
    /// the body names by reference (a ModuleRef frame: its record's SHA-256 and size), which
    /// the node's module store holds.
    pub modules: Vec<Option<Bytes>>,
    /// The client-session table.
    pub sessions: SessionTable,
    /// Replicated limits per machine, in registry order (`None`: the node's configured limits,
    /// for a machine deployed before limits were replicated, or a version 1 file).
    pub limits: Vec<Option<MachineLimits>>,
    /// Guest snapshot location per machine, in registry order.
    pub sections: Vec<MachineSection>,
    /// Body offset of the Sessions frame (the end of the modules).
    pub(super) modules_end: u64,
    src: Arc<dyn BodySource>,
}

/// A frame header read from the body (its payload not read yet).
struct Frame {
    kind: FrameKind,
    len: u32,
    crc: u32,
    /// Offset of the payload.
    at: u64,
}

impl Frame {
    /// Offset of the next frame.
    fn end(&self) -> u64 {
        self.at + u64::from(self.len)
    }
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

    /// Parse a body, in the order of its frames: the header, every module (SHA-256 checked),
    /// the session table, the limits (version 2 on), an index of the machine sections (only
    /// the 9-byte header of each guest chunk frame is read) and the End frame, which must end
    /// the body. Every length is checked against the body before anything is allocated.
    /// See [`NodeSnapshot::open`].
    pub fn parse(src: Arc<dyn BodySource>) -> Result<Self, FormatError> {
        let s = src.as_ref();
        let (header, off) = read_header(s)?;
        let machines = header.machines.len();
        let (modules, off) = read_modules(s, off, &header)?;
        let modules_end = off;
        let (sessions, off) = read_sessions(s, off)?;
        let (limits, off) = read_limits(s, off, &header)?;
        let (sections, off) = index_sections(s, off, machines)?;
        read_end(s, off, machines)?;
        Ok(Self {
            header,
            modules,
            sessions,
            limits,
            sections,
            modules_end,
            src,
        })
    }

    /// Read only the header frame of snapshot `id` in `store` (what a node's module collection
    /// needs of every retained snapshot: which modules it names). Cost: one small read.
    pub fn read_header(
        store: &SnapshotStore,
        id: SnapshotId,
    ) -> Result<NodeSnapshotHeader, FormatError> {
        let reader = store.open_reader(id)?;
        Ok(read_header(&reader)?.0)
    }

    /// Whether every module is carried in the body (a self-contained file, as a backup must
    /// be), not named by reference.
    pub fn self_contained(&self) -> bool {
        self.modules.iter().all(Option::is_some)
    }

    /// The body this snapshot was parsed from.
    pub fn body(&self) -> &Arc<dyn BodySource> {
        &self.src
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

/// Step 1: the Header frame at offset 0, of a version this build reads. Returns the header and
/// the offset after it.
fn read_header(s: &dyn BodySource) -> Result<(NodeSnapshotHeader, u64), FormatError> {
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
    Ok((header, f.end()))
}

/// Step 2: one Module frame per machine, in registry order, each matching its record's SHA-256;
/// from version 3 on, a ModuleRef frame (the machine's index alone) may stand for it.
fn read_modules(
    s: &dyn BodySource,
    mut off: u64,
    header: &NodeSnapshotHeader,
) -> Result<(Vec<Option<Bytes>>, u64), FormatError> {
    let mut modules = Vec::with_capacity(header.machines.len());
    for (i, m) in header.machines.iter().enumerate() {
        let f = frame_at(s, off)?;
        if f.kind == FrameKind::ModuleRef && header.format_version >= MODULE_REF_VERSION {
            let p = payload(s, &f)?;
            if p != (i as u32).to_le_bytes() {
                return Err(invalid(s, "module reference", off, i, hex(&p)));
            }
            modules.push(None);
            off = f.end();
            continue;
        }
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
        modules.push(Some(bytes));
        off = f.end();
    }
    Ok((modules, off))
}

/// Step 3: the Sessions frame.
fn read_sessions(s: &dyn BodySource, off: u64) -> Result<(SessionTable, u64), FormatError> {
    let f = frame_at(s, off)?;
    expect_kind(s, &f, FrameKind::Sessions)?;
    let sessions: SessionTable = decode(s, &f, "session table", &payload(s, &f)?)?;
    Ok((sessions, f.end()))
}

/// Step 4: the Limits frame (version 2 on), one entry per machine; a version 1 file has none
/// and every machine runs on the node's configured limits (`None`).
fn read_limits(
    s: &dyn BodySource,
    off: u64,
    header: &NodeSnapshotHeader,
) -> Result<(Vec<Option<MachineLimits>>, u64), FormatError> {
    let machines = header.machines.len();
    if header.format_version < 2 {
        return Ok((vec![None; machines], off));
    }
    let f = frame_at(s, off)?;
    expect_kind(s, &f, FrameKind::Limits)?;
    let l: Vec<Option<MachineLimits>> = decode(s, &f, "limits", &payload(s, &f)?)?;
    if l.len() != machines {
        return Err(invalid(s, "limits count", off, machines, l.len()));
    }
    Ok((l, f.end()))
}

/// Step 5: index `machines` sections (MachineBegin, MachineChunk*, MachineEnd), in registry
/// order, reading only the chunk frames' headers.
fn index_sections(
    s: &dyn BodySource,
    mut off: u64,
    machines: usize,
) -> Result<(Vec<MachineSection>, u64), FormatError> {
    let mut sections = Vec::with_capacity(machines);
    for i in 0..machines {
        let f = frame_at(s, off)?;
        expect_kind(s, &f, FrameKind::MachineBegin)?;
        let idx: u32 = decode(s, &f, "machine index", &payload(s, &f)?)?;
        if idx as usize != i {
            return Err(invalid(s, "machine section index", off, i, idx));
        }
        let first_frame = f.end();
        off = first_frame;
        loop {
            let f = frame_at(s, off)?;
            off = f.end();
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
    Ok((sections, off))
}

/// Step 6: the End frame, naming the machine count, and nothing after it.
fn read_end(s: &dyn BodySource, off: u64, machines: usize) -> Result<(), FormatError> {
    let f = frame_at(s, off)?;
    expect_kind(s, &f, FrameKind::End)?;
    let n: u32 = decode(s, &f, "end frame", &payload(s, &f)?)?;
    if n as usize != machines {
        return Err(invalid(s, "machine count", off, machines, n));
    }
    let end = f.end();
    if end != s.body_len() {
        return Err(invalid(s, "trailing bytes", end, 0, s.body_len() - end));
    }
    Ok(())
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
        self.next = f.end();
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
