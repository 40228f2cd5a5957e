//! Target `node_snapshot_parse`: the node snapshot body decoder of `wraft-snapshot`.
//!
//! A node snapshot body arrives from a disk that may be damaged, or from another node through
//! a transfer (whose whole-file digest only proves the leader wrote it), and is parsed by every
//! recovery, install, rebuild and `wraft snapshot inspect`.

use std::sync::Arc;

use wraft_snapshot::format::{BodyWriter, FRAME_HEADER_BYTES, MemoryBody, NodeSnapshot};

/// Bytes of guest snapshot [`node_snapshot_parse`] reads back per input at most (the body is
/// in memory, so this only bounds the time of a pathological input).
pub const NODE_SNAPSHOT_READBACK_BYTES_MAX: usize = 1 << 20;

/// Recompute the CRC32C of every frame of a node snapshot body from its own (possibly
/// mutated) length fields, so that mutations reach the postcard decoders and the structural
/// checks instead of stopping at the first frame checksum. Stops at the first frame whose
/// length runs past the end.
pub fn reseal_frames(body: &mut [u8]) {
    let head = FRAME_HEADER_BYTES as usize;
    let mut off = 0usize;
    while off + head <= body.len() {
        let len = u32::from_le_bytes([body[off + 1], body[off + 2], body[off + 3], body[off + 4]]);
        let Some(end) = (off + head).checked_add(len as usize) else {
            return;
        };
        if end > body.len() {
            return;
        }
        let crc = crc32c::crc32c(&body[off + head..end]);
        body[off + 5..off + 9].copy_from_slice(&crc.to_le_bytes());
        off = end;
    }
}

/// Every machine's guest snapshot, read back chunk by chunk; `None` if a section does not
/// read back (a damaged chunk frame, counts that disagree with its end frame).
fn read_sections(snap: &NodeSnapshot) -> Option<Vec<Vec<Vec<u8>>>> {
    let mut out = Vec::with_capacity(snap.sections.len());
    let mut total = 0usize;
    for i in 0..snap.sections.len() {
        let mut src = snap
            .machine_chunks(i)
            .unwrap_or_else(|| panic!("section {i} of {} is missing", snap.sections.len()));
        let mut chunks = Vec::new();
        while let Some(c) = src.next_chunk().ok()? {
            total += c.len();
            if total > NODE_SNAPSHOT_READBACK_BYTES_MAX {
                return None;
            }
            chunks.push(c);
        }
        let bytes: usize = chunks.iter().map(Vec::len).sum();
        assert_eq!(
            (chunks.len() as u64, bytes as u64),
            (snap.sections[i].chunks, snap.sections[i].bytes),
            "section {i} read back to its end with other counts than its end frame"
        );
        out.push(chunks);
    }
    Some(out)
}

/// Write `snap` (with its guest snapshots `sections`) again with the format's own writer.
fn rewrite(snap: &NodeSnapshot, sections: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let h = &snap.header;
    let mut w = BodyWriter::in_memory(h).expect("a parsed header re-encodes");
    for (i, m) in snap.modules.iter().enumerate() {
        match m {
            Some(m) => w.module(i as u32, m).expect("module frame"),
            None => w.module_ref(i as u32).expect("module reference frame"),
        }
    }
    w.sessions(&snap.sessions).expect("sessions frame");
    if h.format_version >= 2 {
        w.limits(&snap.limits).expect("limits frame");
    }
    for (i, chunks) in sections.iter().enumerate() {
        w.machine_begin(i as u32).expect("machine begin");
        for c in chunks {
            w.machine_chunk(c).expect("machine chunk");
        }
        let bytes = chunks.iter().map(|c| c.len() as u64).sum();
        w.machine_end(chunks.len() as u64, bytes)
            .expect("machine end");
    }
    w.into_body(sections.len() as u32).expect("end frame")
}

fn parse(body: Vec<u8>) -> Result<NodeSnapshot, wraft_snapshot::format::FormatError> {
    NodeSnapshot::parse(Arc::new(MemoryBody::new(body, "fuzzed body")))
}

/// Target `node_snapshot_parse`: [`NodeSnapshot::parse`] over an in-memory body, then every
/// machine section streamed back. Input: `[mode][body…]`; an odd mode first recomputes every
/// frame's CRC32C ([`reseal_frames`]).
///
/// Oracle: no panic and no allocation beyond the input; an accepted body whose sections read
/// back re-encodes with the format's writer to a body that parses to the same snapshot, and
/// encoding that again gives the same bytes.
pub fn node_snapshot_parse(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut body = body.to_vec();
    if mode % 2 == 1 {
        reseal_frames(&mut body);
    }
    let Ok(snap) = parse(body) else {
        return;
    };
    let machines = snap.header.machines.len();
    assert_eq!(snap.modules.len(), machines);
    assert_eq!(snap.limits.len(), machines);
    assert_eq!(snap.sections.len(), machines);
    assert!(snap.machine_chunks(machines).is_none());
    for (i, m) in snap.header.machines.iter().enumerate() {
        assert_eq!(snap.machine_index(&m.name).map(|j| j <= i), Some(true));
        match &snap.modules[i] {
            Some(carried) => assert_eq!(
                wraft_proto::digest::sha256(carried),
                m.module_sha256,
                "accepted a module whose SHA-256 is not its record's"
            ),
            None => assert!(
                snap.header.format_version >= wraft_snapshot::format::MODULE_REF_VERSION,
                "accepted a module reference in a version {} body",
                snap.header.format_version
            ),
        }
    }
    let Some(sections) = read_sections(&snap) else {
        return;
    };
    let again = rewrite(&snap, &sections);
    let snap2 = parse(again.clone())
        .unwrap_or_else(|e| panic!("an accepted snapshot, written again, does not parse: {e}"));
    assert_eq!(snap2.header, snap.header, "header changed in a round trip");
    assert_eq!(
        snap2.modules, snap.modules,
        "modules changed in a round trip"
    );
    assert_eq!(
        snap2.sessions, snap.sessions,
        "sessions changed in a round trip"
    );
    assert_eq!(snap2.limits, snap.limits, "limits changed in a round trip");
    let sections2 = read_sections(&snap2).expect("a rewritten body reads back");
    assert_eq!(
        sections2, sections,
        "guest snapshots changed in a round trip"
    );
    assert_eq!(rewrite(&snap2, &sections2), again, "unstable encoding");
}
