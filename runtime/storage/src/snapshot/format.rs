//! The snapshot file format: layout, verification, and the whole-file digest.
//!
//! ```text
//! snapshot file:
//!   0  magic "WRAFTSNP"
//!   8  version u32 (= 1)
//!  12  meta_len u32               length of the postcard-encoded SnapshotMeta
//!  16  body_len u64               bytes of guest payload
//!  24  digest [32]                BLAKE3(bytes 0..16 ‖ meta ‖ body ‖ body_len as u64 LE)
//!  56  header_crc u32             crc32c(bytes 0..56 ‖ meta): cheap check without reading the body
//!  60  meta                       SnapshotMeta { last_index, last_term, membership, format }
//!  60+meta_len body               the guest's opaque chunks, concatenated
//! ```
//!
//! The digest covers every byte of the file except itself and the header CRC; it is hashed in
//! streaming order (the body length, unknown until the end, goes last), so a snapshot is written in
//! one pass with the header patched before the file is synced and renamed into place.
//!
//! This is the file's **logical** layout. A file may store some of its bytes as holes shared with
//! older snapshot files, listed in a trailer after its last logical byte (see `shared`); every
//! check here reads the logical bytes.

use std::path::Path;
use std::sync::Arc;

use crate::config::StorageConfig;
use crate::error::{Result, StorageError, io_err};
use crate::record::{u32_at, u64_at};
use crate::vfs::{Vfs, VfsFile, read_exact_at};

use super::shared::{Borrow, open_logical};
use super::{SnapshotInfo, SnapshotMeta, invalid};

pub(super) const SNAP_MAGIC: &[u8; 8] = b"WRAFTSNP";
pub(super) const SNAP_VERSION: u32 = 1;
/// Bytes before the metadata.
pub const SNAPSHOT_HEADER_BYTES: u64 = 60;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parse and check a snapshot file; with `full`, also stream the body through BLAKE3.
pub(super) fn verify_file(
    vfs: &dyn Vfs,
    path: &Path,
    cfg: &StorageConfig,
    full: bool,
) -> Result<SnapshotInfo> {
    verify_file_prehashed(vfs, path, cfg, full, None).map(|(info, _)| info)
}

/// [`verify_file`], where `prehashed` (if given) already holds the digest input for the whole
/// file as it was written — `file[..16]` then `file[SNAPSHOT_HEADER_BYTES..]` — and `len` says
/// how many file bytes it covers. It is used instead of re-reading the body only if `len` is the
/// file's length; otherwise the body is read and hashed as usual.
///
/// Everything is checked on the file's logical bytes (borrowed ranges read from their owners;
/// see `shared`), whose borrows are returned with the information.
pub(super) fn verify_file_prehashed(
    vfs: &dyn Vfs,
    path: &Path,
    cfg: &StorageConfig,
    full: bool,
    prehashed: Option<(blake3::Hasher, u64)>,
) -> Result<(SnapshotInfo, Arc<Vec<Borrow>>)> {
    let (file, borrows) = open_logical(vfs, path)?;
    let file_len = file.len().map_err(io_err("stat snapshot", path))?;
    if file_len < SNAPSHOT_HEADER_BYTES {
        return Err(invalid(
            path,
            "file shorter than the header",
            format!(">= {SNAPSHOT_HEADER_BYTES} bytes"),
            file_len,
        ));
    }
    let mut hdr = [0u8; SNAPSHOT_HEADER_BYTES as usize];
    read_exact_at(file.as_ref(), &mut hdr, 0).map_err(io_err("read snapshot header", path))?;
    if &hdr[..8] != SNAP_MAGIC {
        return Err(invalid(path, "magic", hex(SNAP_MAGIC), hex(&hdr[..8])));
    }
    let version = u32_at(&hdr, 8);
    let meta_len = u32_at(&hdr, 12);
    if meta_len > cfg.snapshot_meta_bytes_max
        || u64::from(meta_len) + SNAPSHOT_HEADER_BYTES > file_len
    {
        return Err(invalid(
            path,
            "metadata length",
            format!(
                "<= {}",
                cfg.snapshot_meta_bytes_max
                    .min((file_len - SNAPSHOT_HEADER_BYTES) as u32)
            ),
            meta_len,
        ));
    }
    let mut meta_raw = vec![0u8; meta_len as usize];
    read_exact_at(file.as_ref(), &mut meta_raw, SNAPSHOT_HEADER_BYTES)
        .map_err(io_err("read snapshot metadata", path))?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[..56]), &meta_raw);
    let stored_crc = u32_at(&hdr, 56);
    if crc != stored_crc {
        return Err(invalid(
            path,
            "header checksum",
            format!("{stored_crc:#010x}"),
            format!("{crc:#010x}"),
        ));
    }
    if version != SNAP_VERSION {
        return Err(StorageError::UnsupportedVersion {
            file: path.to_path_buf(),
            expected: SNAP_VERSION,
            found: version,
        });
    }
    let body_len = u64_at(&hdr, 16);
    let body_off = SNAPSHOT_HEADER_BYTES + u64::from(meta_len);
    // checked: `body_len` is read from the file and may be anything.
    let expected_len = body_off.checked_add(body_len);
    if expected_len != Some(file_len) {
        return Err(invalid(
            path,
            "file length (header + body)",
            expected_len.map_or_else(
                || format!("{body_off} + {body_len} (overflows)"),
                |l| l.to_string(),
            ),
            file_len,
        ));
    }
    let meta: SnapshotMeta = postcard::from_bytes(&meta_raw)
        .map_err(|e| invalid(path, "metadata encoding", "postcard SnapshotMeta", e))?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&hdr[24..56]);
    if full {
        let mut h = match prehashed.filter(|(_, len)| *len == file_len) {
            Some((h, _)) => h,
            None => {
                let mut h = blake3::Hasher::new();
                h.update(&hdr[..16]);
                h.update(&meta_raw);
                let mut buf = vec![0u8; cfg.snapshot_io_chunk_bytes];
                let mut off = body_off;
                while off < file_len {
                    let n = ((file_len - off) as usize).min(buf.len());
                    read_exact_at(file.as_ref(), &mut buf[..n], off)
                        .map_err(io_err("read snapshot body", path))?;
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                h
            }
        };
        h.update(&body_len.to_le_bytes());
        let found = h.finalize();
        if found.as_bytes() != &digest {
            return Err(invalid(
                path,
                "whole-file BLAKE3 digest",
                hex(&digest),
                hex(found.as_bytes()),
            ));
        }
    }
    let info = SnapshotInfo {
        meta,
        body_len,
        digest,
        file_len,
        path: path.to_path_buf(),
        shared_bytes: borrows.iter().map(|b| b.len).sum(),
    };
    Ok((info, borrows))
}

/// Read and check the snapshot file at `path` without opening a store (no retention, no
/// quarantine, nothing written): the header, its CRC, the lengths and, with `full`, the whole-file
/// BLAKE3 digest (one sequential read). For tools such as `wraft snapshot inspect`.
///
/// A file that shares bytes with older snapshots reads them from the files next to it, as the
/// store does; it fails, naming the missing file, if they are not there.
pub fn inspect_snapshot_file(path: &Path, full: bool) -> Result<SnapshotInfo> {
    verify_file(&crate::vfs::StdFs, path, &StorageConfig::default(), full)
}

/// The logical bytes of the snapshot file at `path` (header included), for reading it outside a
/// store: the file itself, or for a file that shares bytes with older snapshots, a read-only
/// view that takes them from the files next to it.
pub fn open_snapshot_file(path: &Path) -> Result<Arc<dyn VfsFile>> {
    open_logical(&crate::vfs::StdFs, path).map(|(file, _)| file)
}

/// Feed `data`, found at file offset `offset`, into a whole-file digest: every byte but the
/// header's `[16, SNAPSHOT_HEADER_BYTES)` (its lengths-and-digest tail, which the digest covers
/// separately or not at all).
pub(super) fn feed_digest(h: &mut blake3::Hasher, offset: u64, data: &[u8]) {
    let end = offset + data.len() as u64;
    let skip = 16..SNAPSHOT_HEADER_BYTES;
    if offset < skip.start {
        let n = (skip.start.min(end) - offset) as usize;
        h.update(&data[..n]);
    }
    if end > skip.end {
        let from = skip.end.saturating_sub(offset) as usize;
        h.update(&data[from..]);
    }
}
