//! The `<id>.partial.progress` file: an incoming transfer's durable offset, in two 24-byte slots
//! (magic `WSPG`, seq u64, durable offset u64, crc32c of the first 20 bytes). Slot `seq % 2` is
//! written each time, so a torn write leaves the other slot; the valid slot with the highest seq
//! wins.

use std::path::Path;

use crate::error::{Result, io_err};
use crate::record::{u32_at, u64_at};
use crate::vfs::{OpenMode, Vfs, VfsFile};

use super::invalid;

const PROGRESS_MAGIC: &[u8; 4] = b"WSPG";
const PROGRESS_SLOT_BYTES: usize = 24;

pub(super) fn write_progress_slot(
    f: &dyn VfsFile,
    path: &Path,
    seq: u64,
    durable: u64,
) -> Result<()> {
    let mut slot = [0u8; PROGRESS_SLOT_BYTES];
    slot[..4].copy_from_slice(PROGRESS_MAGIC);
    slot[4..12].copy_from_slice(&seq.to_le_bytes());
    slot[12..20].copy_from_slice(&durable.to_le_bytes());
    let crc = crc32c::crc32c(&slot[..20]);
    slot[20..24].copy_from_slice(&crc.to_le_bytes());
    let off = (seq % 2) * PROGRESS_SLOT_BYTES as u64;
    f.write_all_at(&slot, off)
        .map_err(io_err("write snapshot progress", path))
}

/// Best valid progress slot: (seq, durable offset).
fn read_progress_slots(vfs: &dyn Vfs, path: &Path) -> Result<(u64, u64)> {
    let f = vfs
        .open(path, OpenMode::Read)
        .map_err(io_err("open snapshot progress", path))?;
    let mut buf = [0u8; 2 * PROGRESS_SLOT_BYTES];
    let n = f
        .read_at(&mut buf, 0)
        .map_err(io_err("read snapshot progress", path))?;
    let mut best: Option<(u64, u64)> = None;
    for slot in buf[..n].chunks_exact(PROGRESS_SLOT_BYTES) {
        if &slot[..4] == PROGRESS_MAGIC && crc32c::crc32c(&slot[..20]) == u32_at(slot, 20) {
            let (seq, durable) = (u64_at(slot, 4), u64_at(slot, 12));
            if best.is_none_or(|(s, _)| seq > s) {
                best = Some((seq, durable));
            }
        }
    }
    best.ok_or_else(|| {
        invalid(
            path,
            "progress record",
            "a slot with a valid checksum",
            "none",
        )
    })
}

pub(super) fn read_progress(vfs: &dyn Vfs, path: &Path) -> Result<u64> {
    read_progress_slots(vfs, path).map(|(_, d)| d)
}

pub(super) fn read_progress_seq(vfs: &dyn Vfs, path: &Path) -> Result<u64> {
    read_progress_slots(vfs, path).map(|(s, _)| s)
}
