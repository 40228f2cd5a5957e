//! Snapshot files that share bytes with older ones: unchanged segments are not written again.
//!
//! A snapshot of slowly changing state repeats most of its predecessor byte for byte (the guest
//! SDK's chunks are content-defined, so unchanged state gives identical frames). A writer that
//! is told where such a segment already lies ([`SnapshotWriter::share`]) leaves a hole in its
//! file instead of writing it, and lists the range in a trailer after the file's last byte:
//!
//! ```text
//! physical file := the logical file, with holes where bytes are borrowed
//!                  ‖ trailer: postcard Vec<Borrow>
//!                  ‖ trailer_len u64 LE ‖ crc32c(trailer) u32 LE ‖ magic "WRSNSHR1"
//! Borrow        := { at, len, owner: SnapshotId, owner_at }
//!                  logical bytes [at, at + len) are the owner's bytes [owner_at, owner_at + len)
//! ```
//!
//! The **logical** file (what the header's lengths and whole-file digest describe, what a
//! transfer ships and what a restore parses) is unchanged; only its storage differs. A file
//! without the trailer holds all its bytes, as before. Every reader in this crate goes through
//! [`open_logical`], which resolves borrowed ranges, so nothing above the store can tell.
//!
//! Rules that keep it simple and safe:
//! * **No chains.** A borrowed range always points at bytes its owner holds itself: a writer
//!   that is offered a range its owner borrowed follows it to that owner's owner, and one that
//!   straddles held and borrowed bytes is written out instead.
//! * **Owners outlive borrowers.** An owner is `<id>.snap` while it is a retained snapshot and
//!   is renamed `<id>.pack` when retention retires it while a complete snapshot (or a writer in
//!   progress) still borrows from it; a pack is deleted as soon as nothing borrows from it. A
//!   pack's own borrows do not count: nothing reads a pack as a whole.
//! * **Crash safety as before.** The trailer is written before the file is synced and renamed
//!   into place, so a crash leaves no file or the whole one. Renaming an owner to a pack is
//!   atomic, and a pack is deleted only after every borrower is gone, so a crash leaves at worst
//!   an unreferenced pack, which opening the store deletes. A file whose owner is missing fails
//!   to open with an error naming both, and the store quarantines it like any corrupt snapshot.
//!
//! Holes cost nothing on file systems with sparse files (ext4, xfs, btrfs, tmpfs): the disk
//! holds only written blocks, plus at most one partial block at each end of a borrowed run.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError, io_err};
use crate::record::{u32_at, u64_at};
use crate::vfs::{OpenMode, Vfs, VfsFile, read_exact_at};

use super::{SnapshotId, invalid};

/// Last bytes of a file with a trailer.
pub(super) const SHARED_MAGIC: &[u8; 8] = b"WRSNSHR1";
/// Trailer length, CRC32C, magic.
pub(super) const FOOTER_BYTES: u64 = 8 + 4 + 8;
/// Largest trailer accepted (a borrow is ~40 bytes: millions of segments).
const TRAILER_BYTES_MAX: u64 = 256 << 20;
/// Suffix of a retired snapshot kept only because newer files borrow from it.
pub(super) const PACK_SUFFIX: &str = ".pack";

/// A file's borrows, sorted by offset.
pub(super) type Borrows = Arc<Vec<Borrow>>;

/// Logical bytes `[at, at + len)` of a file are the owner's bytes `[owner_at, owner_at + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Borrow {
    /// Logical offset in the borrowing file.
    pub at: u64,
    /// Bytes.
    pub len: u64,
    /// The snapshot file holding them.
    pub owner: SnapshotId,
    /// Their offset there.
    pub owner_at: u64,
}

impl Borrow {
    /// Offset just past the range in the borrowing file.
    pub fn end(&self) -> u64 {
        self.at + self.len
    }
}

/// Pieces of the store's snapshots found by content, for a writer to share instead of writing
/// again ([`SnapshotStore::begin_sharing`](super::SnapshotStore::begin_sharing)): BLAKE3 of the
/// bytes → the snapshot, offset and length where they lie. The caller builds it from whatever
/// cut it uses (a node: the frames of its node snapshot files).
#[derive(Debug, Default, Clone)]
pub struct SharedSegments {
    by_hash: HashMap<[u8; 32], (SnapshotId, u64, u64)>,
}

impl SharedSegments {
    /// Record that snapshot `owner` holds `len` bytes hashing to `hash` at `at` (the first
    /// record of a hash wins).
    pub fn insert(&mut self, hash: [u8; 32], owner: SnapshotId, at: u64, len: u64) {
        self.by_hash.entry(hash).or_insert((owner, at, len));
    }

    /// Where bytes of `len` hashing to `hash` lie, if recorded.
    pub fn find(&self, hash: &[u8; 32], len: u64) -> Option<(SnapshotId, u64)> {
        self.by_hash
            .get(hash)
            .filter(|(_, _, l)| *l == len)
            .map(|(owner, at, _)| (*owner, *at))
    }

    /// Distinct pieces recorded.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The trailer's bytes, footer included.
pub(super) fn encode_trailer(borrows: &[Borrow]) -> Result<Vec<u8>> {
    let mut out = postcard::to_allocvec(borrows)
        .map_err(|e| StorageError::Invalid(format!("snapshot trailer: {e}")))?;
    let len = out.len() as u64;
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(SHARED_MAGIC);
    Ok(out)
}

/// Snapshot `owner`'s file in `dir`, open: its `.snap` if present, else its pack, else its
/// `.snap` again (retention may rename one to the other at any moment; the handle stays good).
pub(super) fn open_owner(
    vfs: &dyn Vfs,
    dir: &Path,
    owner: SnapshotId,
) -> Option<(PathBuf, Arc<dyn VfsFile>)> {
    [".snap", PACK_SUFFIX, ".snap"].iter().find_map(|ext| {
        let p = dir.join(format!("{owner}{ext}"));
        vfs.open(&p, OpenMode::Read).ok().map(|f| (p, f))
    })
}

/// Open the snapshot file at `path` as its logical bytes: the file itself if it has no trailer,
/// else a view that reads borrowed ranges from their owners next to it (all opened now, so a
/// later deletion of a name does not break a reader). Returns the view and the borrows.
/// Cost: a footer read, and for a sharing file the trailer and one open per owner.
pub(super) fn open_logical(vfs: &dyn Vfs, path: &Path) -> Result<(Arc<dyn VfsFile>, Borrows)> {
    let file = vfs
        .open(path, OpenMode::Read)
        .map_err(io_err("open snapshot", path))?;
    let Some((borrows, logical_len)) = read_trailer(file.as_ref(), path)? else {
        return Ok((file, Arc::new(Vec::new())));
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut owners = BTreeMap::new();
    for b in borrows.iter() {
        if owners.contains_key(&b.owner) {
            continue;
        }
        let Some((p, f)) = open_owner(vfs, dir, b.owner) else {
            return Err(invalid(
                path,
                "older snapshot file it shares bytes with (copy the whole directory, or make a \
                 self-contained file with `wraft snapshot save`)",
                format!("{}.snap or {}{PACK_SUFFIX} next to it", b.owner, b.owner),
                "missing",
            ));
        };
        if p == path {
            return Err(invalid(
                path,
                "owner of shared bytes",
                "another file",
                "itself",
            ));
        }
        owners.insert(b.owner, f);
    }
    let borrows = Arc::new(borrows);
    let view = SharedFile {
        file,
        logical_len,
        borrows: borrows.clone(),
        owners,
        path: path.to_path_buf(),
    };
    Ok((Arc::new(view), borrows))
}

/// The borrows listed in the trailer of the file at `path` (none for a file without one), without
/// opening their owners: for a pack, whose owners may be gone.
pub(super) fn borrows_in(vfs: &dyn Vfs, path: &Path) -> Result<Vec<Borrow>> {
    let file = vfs
        .open(path, OpenMode::Read)
        .map_err(io_err("open snapshot", path))?;
    Ok(read_trailer(file.as_ref(), path)?.map_or_else(Vec::new, |(b, _)| b))
}

/// The borrows and logical length of a file with a trailer; `None` for a file without one.
fn read_trailer(file: &dyn VfsFile, path: &Path) -> Result<Option<(Vec<Borrow>, u64)>> {
    let len = file.len().map_err(io_err("stat snapshot", path))?;
    if len < FOOTER_BYTES {
        return Ok(None);
    }
    let mut footer = [0u8; FOOTER_BYTES as usize];
    read_exact_at(file, &mut footer, len - FOOTER_BYTES)
        .map_err(io_err("read snapshot footer", path))?;
    if &footer[12..] != SHARED_MAGIC {
        return Ok(None);
    }
    let trailer_len = u64_at(&footer, 0);
    if trailer_len > TRAILER_BYTES_MAX || trailer_len > len - FOOTER_BYTES {
        return Err(invalid(
            path,
            "shared-bytes trailer length",
            format!("<= {}", TRAILER_BYTES_MAX.min(len - FOOTER_BYTES)),
            trailer_len,
        ));
    }
    let logical_len = len - FOOTER_BYTES - trailer_len;
    let mut raw = vec![0u8; trailer_len as usize];
    read_exact_at(file, &mut raw, logical_len).map_err(io_err("read snapshot trailer", path))?;
    let crc = crc32c::crc32c(&raw);
    let stored = u32_at(&footer, 8);
    if crc != stored {
        return Err(invalid(
            path,
            "shared-bytes trailer checksum",
            format!("{stored:#010x}"),
            format!("{crc:#010x}"),
        ));
    }
    let borrows: Vec<Borrow> = postcard::from_bytes(&raw)
        .map_err(|e| invalid(path, "shared-bytes trailer encoding", "postcard", e))?;
    let mut at = 0;
    for b in &borrows {
        // Checked: every field was read from the file.
        let end = b.at.checked_add(b.len);
        if b.len == 0 || b.at < at || end.is_none_or(|e| e > logical_len) {
            return Err(invalid(
                path,
                "shared range",
                format!("non-empty, in order, within {logical_len} bytes"),
                format!("{} bytes at {}", b.len, b.at),
            ));
        }
        at = b.end();
        if b.owner_at.checked_add(b.len).is_none() {
            return Err(invalid(
                path,
                "shared range in its owner",
                "no overflow",
                b.owner_at,
            ));
        }
    }
    Ok(Some((borrows, logical_len)))
}

/// The logical bytes of a sharing file (read only).
struct SharedFile {
    file: Arc<dyn VfsFile>,
    logical_len: u64,
    borrows: Arc<Vec<Borrow>>,
    owners: BTreeMap<SnapshotId, Arc<dyn VfsFile>>,
    path: PathBuf,
}

impl fmt::Debug for SharedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFile")
            .field("path", &self.path)
            .field("logical_len", &self.logical_len)
            .field("borrows", &self.borrows.len())
            .finish()
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a published snapshot is read only",
    )
}

impl VfsFile for SharedFile {
    /// One `pread` of this file or of one owner: at most up to the next boundary between held
    /// and borrowed bytes ([`read_exact_at`] loops).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.logical_len || buf.is_empty() {
            return Ok(0);
        }
        // The last borrow starting at or before `offset`.
        let i = self.borrows.partition_point(|b| b.at <= offset);
        let room = (self.logical_len - offset).min(buf.len() as u64);
        if let Some(b) = i.checked_sub(1).map(|i| &self.borrows[i])
            && offset < b.end()
        {
            let n = room.min(b.end() - offset) as usize;
            let owner = self
                .owners
                .get(&b.owner)
                .ok_or_else(|| io::Error::other("owner of shared bytes not open"))?;
            read_exact_at(owner.as_ref(), &mut buf[..n], b.owner_at + (offset - b.at))?;
            return Ok(n);
        }
        let next = self.borrows.get(i).map_or(self.logical_len, |b| b.at);
        let n = room.min(next - offset) as usize;
        self.file.read_at(&mut buf[..n], offset)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.logical_len)
    }
}

/// Append a borrow of `len` bytes at `at` (the end of `borrows`) from `holder` at `holder_at`,
/// extending the last one when it continues it in both files, unless that one is among the
/// first `frozen` (already recorded durably).
pub(super) fn push_borrow(
    borrows: &mut Vec<Borrow>,
    frozen: usize,
    at: u64,
    len: u64,
    holder: SnapshotId,
    holder_at: u64,
) {
    let n = borrows.len();
    match borrows.last_mut() {
        Some(b)
            if n > frozen
                && b.end() == at
                && b.owner == holder
                && b.owner_at + b.len == holder_at =>
        {
            b.len += len;
        }
        _ => borrows.push(Borrow {
            at,
            len,
            owner: holder,
            owner_at: holder_at,
        }),
    }
}

/// Where the `len` bytes at `owner_at` of `owner` are held: in `owner` itself, or (they lie
/// inside one of its borrows) in that borrow's owner. `None` if they straddle held and borrowed
/// bytes. `borrows_of(owner)` gives a file's borrows, sorted.
pub(super) fn resolve(
    owner: SnapshotId,
    owner_at: u64,
    len: u64,
    borrows_of: &[Borrow],
) -> Option<(SnapshotId, u64)> {
    let end = owner_at.checked_add(len)?;
    let i = borrows_of.partition_point(|b| b.end() <= owner_at);
    match borrows_of.get(i) {
        Some(b) if b.at <= owner_at && end <= b.end() => {
            Some((b.owner, b.owner_at + (owner_at - b.at)))
        }
        Some(b) if b.at < end => None,
        _ => Some((owner, owner_at)),
    }
}

/// Suffix of an incoming transfer's durable list of shared ranges.
pub(super) const SHARES_SUFFIX: &str = ".partial.shares";
const SHARE_RECORD_MAGIC: &[u8; 4] = b"WSSH";
/// magic, at, len, owner index, owner term, owner_at, crc32c of the first 44 bytes.
pub(super) const SHARE_RECORD_BYTES: u64 = 48;

/// Append `borrows` to the `.partial.shares` file `f` of `records` records so far: fixed records
/// with their own CRC32C, so a torn append loses only its own records.
pub(super) fn append_share_records(
    f: &dyn VfsFile,
    path: &Path,
    records: u64,
    borrows: &[Borrow],
) -> Result<()> {
    let mut out = Vec::with_capacity(borrows.len() * SHARE_RECORD_BYTES as usize);
    for b in borrows {
        let start = out.len();
        out.extend_from_slice(SHARE_RECORD_MAGIC);
        for v in [
            b.at,
            b.len,
            b.owner.last_index,
            b.owner.last_term,
            b.owner_at,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    f.write_all_at(&out, records * SHARE_RECORD_BYTES)
        .map_err(io_err("write shared ranges of an incoming snapshot", path))
}

/// The valid records of a `.partial.shares` file, in order, up to the first damaged one (a torn
/// append). A missing file holds none.
pub(super) fn read_share_records(vfs: &dyn Vfs, path: &Path) -> Vec<Borrow> {
    let Ok(f) = vfs.open(path, OpenMode::Read) else {
        return Vec::new();
    };
    let Ok(bytes) = crate::vfs::read_all(f.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<Borrow> = Vec::new();
    for r in bytes.chunks_exact(SHARE_RECORD_BYTES as usize) {
        if &r[..4] != SHARE_RECORD_MAGIC || crc32c::crc32c(&r[..44]) != u32_at(r, 44) {
            break;
        }
        let b = Borrow {
            at: u64_at(r, 4),
            len: u64_at(r, 12),
            owner: SnapshotId {
                last_index: u64_at(r, 20),
                last_term: u64_at(r, 28),
            },
            owner_at: u64_at(r, 36),
        };
        let in_order = out.last().is_none_or(|p| p.end() <= b.at);
        if b.len == 0 || !in_order || b.at.checked_add(b.len).is_none() {
            break;
        }
        out.push(b);
    }
    out
}
