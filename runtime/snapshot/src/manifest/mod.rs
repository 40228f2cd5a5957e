//! Content addresses of a snapshot file's parts, and the plan that assembles a file from parts a
//! node already holds plus what it must fetch.
//!
//! A node snapshot file is cut into **segments** at places both sides find on their own, without
//! talking: the storage header and metadata (unique to each snapshot) are one segment, and then
//! every frame of the body (module, sessions, one guest chunk, …) is one segment, cut further into
//! pieces of at most [`SEGMENT_BYTES_MAX`] from the frame's start. Guest chunks of the default
//! format are content-defined, so the part of a machine's state that did not change between two
//! snapshots is the same frames with the same bytes in both files, at whatever offset: the same
//! segments. A segment is named by the BLAKE3 of its bytes.
//!
//! ```text
//! file     | storage header + meta | Header | Module ............ | Sessions | Begin | Chunk | Chunk | … | End |
//! segments | 0                     | 1      | 2 (1 MiB) | 3 | 4   | 5        | 6     | 7     | 8     | … | n   |
//! ```
//!
//! A body that does not parse as frames (a damaged file, or a prefix that ends inside a frame) is
//! cut into fixed [`SEGMENT_BYTES_MAX`] pieces from the point where parsing stopped: the cut is
//! still deterministic, and a receiver never trusts it anyway — what it assembles is checked
//! against the whole-file digest before it is published.
//!
//! [`plan`] decides, for each segment of an offered file, whether a local copy of the same bytes
//! exists ([`LocalSegments`]) or the bytes must be fetched, and merges neighbouring fetches into
//! ranges. Nothing here does I/O except through the `read_at` closure the caller passes.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use crate::format::{FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX};

/// Longest segment, bytes (a frame longer than this, such as a module, is cut into pieces).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 20;
/// Offset of the metadata length in a storage snapshot header (`wraft_storage` format).
const META_LEN_AT: u64 = 12;

/// One part of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// File offset of its first byte.
    pub offset: u64,
    /// Bytes (at most [`SEGMENT_BYTES_MAX`]).
    pub len: u32,
    /// BLAKE3 of those bytes.
    pub hash: [u8; 32],
}

impl Segment {
    /// Offset just past it.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Where the segments of a file of `file_len` bytes begin and end, in order, covering it.
/// `read_at(offset, buf)` fills `buf` from the file. Cost: one 9-byte read per body frame.
pub fn cut_points(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<Vec<(u64, u32)>> {
    let mut cuts = Vec::new();
    let mut push = |at: u64, end: u64| {
        let mut at = at;
        while at < end {
            let len = (end - at).min(SEGMENT_BYTES_MAX);
            cuts.push((at, len as u32));
            at += len;
        }
    };
    let body_at = if file_len >= wraft_storage::SNAPSHOT_HEADER_BYTES {
        let mut b = [0u8; 4];
        read_at(META_LEN_AT, &mut b)?;
        (wraft_storage::SNAPSHOT_HEADER_BYTES + u64::from(u32::from_le_bytes(b))).min(file_len)
    } else {
        file_len
    };
    push(0, body_at);
    let mut at = body_at;
    while at + FRAME_HEADER_BYTES <= file_len {
        let mut h = [0u8; FRAME_HEADER_BYTES as usize];
        read_at(at, &mut h)?;
        let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
        let end = at + FRAME_HEADER_BYTES + u64::from(len);
        if len > FRAME_PAYLOAD_BYTES_MAX || end > file_len {
            break;
        }
        push(at, end);
        at = end;
    }
    push(at, file_len);
    Ok(cuts)
}

/// The segments of a file, hashed: [`cut_points`], then each segment read once.
/// Cost: one read of the file, BLAKE3 (~4 GB/s).
pub fn segments_of(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for_each_segment(file_len, read_at, &mut |s| {
        out.push(s);
        Ok(())
    })?;
    Ok(out)
}

/// [`segments_of`], handing each segment to `each` as soon as it is hashed (a sender streams the
/// manifest while it is computed).
pub fn for_each_segment(
    file_len: u64,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    each: &mut dyn FnMut(Segment) -> io::Result<()>,
) -> io::Result<()> {
    let cuts = cut_points(file_len, read_at)?;
    let mut buf = vec![0u8; SEGMENT_BYTES_MAX as usize];
    for (offset, len) in cuts {
        let b = &mut buf[..len as usize];
        read_at(offset, b)?;
        each(Segment {
            offset,
            len,
            hash: *blake3::hash(b).as_bytes(),
        })?;
    }
    Ok(())
}

/// Most segments a manifest of a `file_len`-byte file may have: every frame is at least 9
/// bytes, and honest files average kilobytes per segment, so a sixty-fourth of the length (and
/// at most [`crate::wire::MANIFEST_SEGMENTS_MAX`]) bounds the receiver's memory by what the
/// file itself would take.
pub fn manifest_segments_max(file_len: u64) -> usize {
    let by_len = usize::try_from(file_len / 64).unwrap_or(usize::MAX);
    by_len
        .saturating_add(1024)
        .min(crate::wire::MANIFEST_SEGMENTS_MAX)
}

/// Segments of recently seen snapshot files, by the file's whole-file digest: a file is cut and
/// hashed once, not at every offer or every transfer that reuses it. Holds at most its
/// capacity of files, the least recently used leaving first; give it at least the snapshots a
/// node retains plus a few, or every index pass evicts its own entries. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct SegmentCache(Arc<Mutex<(usize, VecDeque<CachedFile>)>>);

impl Default for SegmentCache {
    fn default() -> Self {
        Self::with_capacity(Self::ENTRIES_DEFAULT)
    }
}

/// A file's digest and its segments.
type CachedFile = ([u8; 32], Arc<Vec<Segment>>);

/// Clones are equal (they share their entries).
impl PartialEq for SegmentCache {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SegmentCache {}

impl SegmentCache {
    /// Files remembered by default.
    pub const ENTRIES_DEFAULT: usize = 16;

    /// A cache of at most `capacity` files (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        SegmentCache(Arc::new(Mutex::new((capacity.max(1), VecDeque::new()))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, VecDeque<CachedFile>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The segments of the file with `digest`, if remembered (it becomes the most recent).
    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<Vec<Segment>>> {
        let mut c = self.lock();
        let i = c.1.iter().position(|(d, _)| d == digest)?;
        let hit = c.1.remove(i)?;
        let s = hit.1.clone();
        c.1.push_back(hit);
        Some(s)
    }

    /// Remember `segments` as those of the file with `digest`.
    pub fn insert(&self, digest: [u8; 32], segments: Arc<Vec<Segment>>) {
        let mut c = self.lock();
        c.1.retain(|(d, _)| *d != digest);
        if c.1.len() >= c.0 {
            c.1.pop_front();
        }
        c.1.push_back((digest, segments));
    }

    /// Forget the file with `digest` (its bytes were found not to be what was remembered).
    pub fn forget(&self, digest: &[u8; 32]) {
        self.lock().1.retain(|(d, _)| d != digest);
    }

    /// The segments of the file with `digest`, computed by `compute` if not remembered.
    /// `compute` runs without the lock held.
    pub fn get_or_compute(
        &self,
        digest: [u8; 32],
        compute: impl FnOnce() -> io::Result<Vec<Segment>>,
    ) -> io::Result<Arc<Vec<Segment>>> {
        if let Some(s) = self.get(&digest) {
            return Ok(s);
        }
        let segments = Arc::new(compute()?);
        self.insert(digest, segments.clone());
        Ok(segments)
    }
}

/// Name the segments of this node's complete snapshot `id` now and remember them in `cache`:
/// called when a snapshot is created or received, off the consensus path, so that the first
/// incremental transfer it takes part in (as the file sent, or as one a follower copies from)
/// does not wait for its hashing. Blocking: one read of the file and BLAKE3.
pub fn remember_segments(
    store: &wraft_storage::SnapshotStore,
    id: wraft_storage::SnapshotId,
    cache: &SegmentCache,
) -> io::Result<()> {
    let reader = store
        .open_reader(id)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let info = reader.info().clone();
    let mut read_at = |at: u64, buf: &mut [u8]| -> io::Result<()> {
        match reader.read_file_at(at, buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(io::ErrorKind::UnexpectedEof.into()),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    };
    cache
        .get_or_compute(info.digest, || segments_of(info.file_len, &mut read_at))
        .map(|_| ())
}

/// Where every segment of `store`'s complete snapshots lies, by hash, for a new snapshot to
/// share instead of writing again ([`crate::format::NodeSnapshotWriter::begin_sharing`]):
/// newest snapshots first, so a segment is taken from the most recent file that has it (the
/// store follows it to the file that holds its bytes). Segments come from `cache`, computed and
/// remembered for a file not seen yet. Blocking: for each file not in `cache`, one read and
/// BLAKE3.
///
/// A snapshot that cannot be read is left out (its segments are written again) with a warning.
pub fn shared_segments(
    store: &wraft_storage::SnapshotStore,
    cache: &SegmentCache,
) -> wraft_storage::SharedSegments {
    let mut shared = wraft_storage::SharedSegments::default();
    for info in store.list().iter().rev() {
        if let Err(e) = remember_segments(store, info.id(), cache) {
            tracing::warn!(target: "wraft::snapshot", id = %info.id(), error = %e,
                "cannot index an older snapshot: the new one will not share its bytes");
            continue;
        }
        if let Some(segments) = cache.get(&info.digest) {
            for s in segments.iter() {
                shared.insert(s.hash, info.id(), s.offset, u64::from(s.len));
            }
        }
    }
    shared
}

/// Segments a node holds locally, by hash: where to copy each from.
#[derive(Debug, Default)]
pub struct LocalSegments {
    by_hash: HashMap<[u8; 32], (usize, u64)>,
}

impl LocalSegments {
    /// Index the `segments` of local file number `source` (the caller's numbering).
    pub fn add(&mut self, source: usize, segments: &[Segment]) {
        for s in segments {
            self.by_hash.entry(s.hash).or_insert((source, s.offset));
        }
    }

    /// Where a segment with `hash` can be copied from: `(source, offset)`.
    pub fn find(&self, hash: &[u8; 32]) -> Option<(usize, u64)> {
        self.by_hash.get(hash).copied()
    }

    /// Distinct segments indexed.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Nothing indexed.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// One step of assembling a file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Copy `len` bytes from local file `source` at `from` to file offset `at`.
    Copy {
        /// Destination offset.
        at: u64,
        /// Bytes.
        len: u32,
        /// The caller's local file number.
        source: usize,
        /// Offset in that file.
        from: u64,
        /// BLAKE3 the bytes must have (checked when copied: a local file may have rotted).
        hash: [u8; 32],
    },
    /// Receive `len` bytes at `at` from the sender.
    Fetch {
        /// Destination offset.
        at: u64,
        /// Bytes.
        len: u64,
    },
    /// Read one whole segment from another member that holds the same file (multi-source
    /// catch-up; see [`spread_fetches`]).
    Peer {
        /// Destination offset (and the offset in the member's copy: the same file).
        at: u64,
        /// Bytes.
        len: u32,
        /// BLAKE3 the bytes must have (a member may send wrong ones).
        hash: [u8; 32],
        /// Which of the caller's members, by position.
        peer: usize,
    },
}

impl Fill {
    /// Destination offset.
    pub fn at(&self) -> u64 {
        match *self {
            Fill::Copy { at, .. } | Fill::Fetch { at, .. } | Fill::Peer { at, .. } => at,
        }
    }

    /// Offset just past it.
    pub fn end(&self) -> u64 {
        match *self {
            Fill::Copy { at, len, .. } | Fill::Peer { at, len, .. } => at + u64::from(len),
            Fill::Fetch { at, len } => at + len,
        }
    }
}

/// How to assemble `[resume_from, end of the last segment)` of a file whose contiguous
/// `segments` start at 0: copy every segment found in `local`, fetch the rest, neighbouring
/// fetches merged. A segment that straddles `resume_from` is fetched from there. The fills are in
/// order and cover the range exactly.
pub fn plan(segments: &[Segment], resume_from: u64, local: &LocalSegments) -> Vec<Fill> {
    let mut fills: Vec<Fill> = Vec::new();
    let fetch = |fills: &mut Vec<Fill>, at: u64, len: u64| match fills.last_mut() {
        Some(Fill::Fetch { at: a, len: l }) if *a + *l == at => *l += len,
        _ => fills.push(Fill::Fetch { at, len }),
    };
    for s in segments {
        if s.end() <= resume_from {
            continue;
        }
        if s.offset < resume_from {
            fetch(&mut fills, resume_from, s.end() - resume_from);
            continue;
        }
        match local.find(&s.hash) {
            Some((source, from)) => fills.push(Fill::Copy {
                at: s.offset,
                len: s.len,
                source,
                from,
                hash: s.hash,
            }),
            None => fetch(&mut fills, s.offset, u64::from(s.len)),
        }
    }
    fills
}

/// The byte ranges `(at, len)` of `fills` that must be fetched from the sender, in order.
pub fn fetch_ranges(fills: &[Fill]) -> Vec<(u64, u64)> {
    fills
        .iter()
        .filter_map(|f| match *f {
            Fill::Fetch { at, len } => Some((at, len)),
            Fill::Copy { .. } | Fill::Peer { .. } => None,
        })
        .collect()
}

/// Spread what `fills` fetches over the sender and other members (multi-source catch-up):
/// in file order, blocks of about `block_bytes` of whole segments go to the sender, member 0,
/// member 1, …, in turn. A segment whose block is a member's goes to that member if it holds it
/// (`held[i]` is what member `i` said it holds), else to whichever of the sender and the members
/// holding it has been given the fewest bytes so far. A member's segment becomes a [`Fill::Peer`] (checked by its BLAKE3 on arrival); the
/// sender's stay `Fetch`es, neighbouring ones merged, and so does any part of a range that is
/// not a whole segment (the piece from a resumed transfer's durable offset). With no members the
/// fills come back as they were. The fills stay in order and cover the same bytes. Pure.
pub fn spread_fetches(
    fills: Vec<Fill>,
    segments: &[Segment],
    held: &[std::collections::HashSet<[u8; 32]>],
    block_bytes: u64,
) -> Vec<Fill> {
    let members = held.len();
    if members == 0 {
        return fills;
    }
    let mut out: Vec<Fill> = Vec::with_capacity(fills.len());
    let fetch = |out: &mut Vec<Fill>, at: u64, len: u64| match out.last_mut() {
        Some(Fill::Fetch { at: a, len: l }) if *a + *l == at => *l += len,
        _ => out.push(Fill::Fetch { at, len }),
    };
    // Whose block it is (0: the sender, 1 + i: member i), and how full the block is.
    let (mut owner, mut used) = (0usize, 0u64);
    // Bytes given to each source so far (same numbering).
    let mut given = vec![0u64; members + 1];
    for f in fills {
        let Fill::Fetch { at, len } = f else {
            out.push(f);
            continue;
        };
        let end = at + len;
        let mut pos = at;
        let first = segments.partition_point(|s| s.end() <= at);
        for s in segments[first..].iter().take_while(|s| s.offset < end) {
            if s.offset < pos || s.end() > end {
                // Not a whole segment of this range: the sender's.
                let to = s.end().min(end);
                fetch(&mut out, pos, to - pos);
                pos = to;
                continue;
            }
            let member = match owner {
                0 => None,
                o if held[o - 1].contains(&s.hash) => Some(o - 1),
                // The block's member lacks it: whoever of the sender and the members holding it
                // has been given the least so far.
                _ => (0..members)
                    .filter(|&m| held[m].contains(&s.hash))
                    .min_by_key(|&m| given[1 + m])
                    .filter(|&m| given[1 + m] < given[0]),
            };
            given[member.map_or(0, |m| 1 + m)] += u64::from(s.len);
            match member {
                Some(peer) => out.push(Fill::Peer {
                    at: s.offset,
                    len: s.len,
                    hash: s.hash,
                    peer,
                }),
                None => fetch(&mut out, s.offset, u64::from(s.len)),
            }
            pos = s.end();
            used += u64::from(s.len);
            if used >= block_bytes {
                owner = (owner + 1) % (members + 1);
                used = 0;
            }
        }
        if pos < end {
            // Past the last segment (a manifest always covers the file; defensive).
            fetch(&mut out, pos, end - pos);
        }
    }
    out
}

/// The hashes of the whole segments `fills` fetches (what to ask other members for), in order.
pub fn fetched_segments(fills: &[Fill], segments: &[Segment]) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for f in fills {
        let Fill::Fetch { at, len } = *f else {
            continue;
        };
        let end = at + len;
        let first = segments.partition_point(|s| s.end() <= at);
        for s in segments[first..].iter().take_while(|s| s.offset < end) {
            if s.offset >= at && s.end() <= end {
                out.push(s.hash);
            }
        }
    }
    out
}

/// The follower's side of receiving a manifest: parts checked and put together (pure).
#[derive(Debug)]
pub struct ManifestIntake {
    file_len: u64,
    segments: Vec<Segment>,
    next: u64,
    done: bool,
}

impl ManifestIntake {
    /// Expect the manifest of a `file_len`-byte file.
    pub fn new(file_len: u64) -> Self {
        ManifestIntake {
            file_len,
            segments: Vec::new(),
            next: 0,
            done: false,
        }
    }

    /// Take the next part: `Ok(true)` once the last one is in. `Err(detail)`: the manifest
    /// breaks the protocol (an empty or oversized segment, segments past the file's end or
    /// short of it at the last part, more than [`crate::wire::MANIFEST_SEGMENTS_MAX`] segments,
    /// a part after the last).
    pub fn on_part(&mut self, part: crate::wire::ManifestPart) -> Result<bool, String> {
        use crate::wire::{MANIFEST_PART_SEGMENTS_MAX, MANIFEST_SEGMENTS_MAX};
        if self.done {
            return Err("manifest part after the last one".into());
        }
        let max = manifest_segments_max(self.file_len);
        debug_assert!(max <= MANIFEST_SEGMENTS_MAX);
        if part.segments.len() > MANIFEST_PART_SEGMENTS_MAX
            || self.segments.len() + part.segments.len() > max
        {
            return Err(format!(
                "manifest of more than {max} segments for a file of {} bytes, or a part of more \
                 than {MANIFEST_PART_SEGMENTS_MAX}",
                self.file_len
            ));
        }
        for (len, hash) in part.segments {
            let end = self.next + u64::from(len);
            if len == 0 || u64::from(len) > SEGMENT_BYTES_MAX || end > self.file_len {
                return Err(format!(
                    "manifest segment at offset {} of {len} bytes: expected 1..={SEGMENT_BYTES_MAX} \
                     bytes ending at or before {}",
                    self.next, self.file_len
                ));
            }
            self.segments.push(Segment {
                offset: self.next,
                len,
                hash,
            });
            self.next = end;
        }
        if part.last {
            if self.next != self.file_len {
                return Err(format!(
                    "manifest covers {} of the file's {} bytes",
                    self.next, self.file_len
                ));
            }
            self.done = true;
        }
        Ok(self.done)
    }

    /// The segments, once complete.
    pub fn into_segments(self) -> Vec<Segment> {
        self.segments
    }
}

/// The byte ranges a sender sends, in order, and how chunks of at most `chunk_bytes` walk them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    /// `(offset, len)`, sorted, disjoint, none empty.
    ranges: Vec<(u64, u64)>,
    chunk_bytes: u64,
}

impl Ranges {
    /// Everything from `resume_from` to `file_len` (version 1).
    pub fn from_offset(resume_from: u64, file_len: u64, chunk_bytes: u64) -> Self {
        let ranges = if resume_from < file_len {
            vec![(resume_from, file_len - resume_from)]
        } else {
            Vec::new()
        };
        Ranges {
            ranges,
            chunk_bytes,
        }
    }

    /// The ranges a follower asked for, checked: each non-empty, sorted and disjoint, within
    /// `[resume_from, file_len)`, at most `ranges_max` of them. `Err(detail)` names the first
    /// that is not.
    pub fn checked(
        ranges: Vec<(u64, u64)>,
        resume_from: u64,
        file_len: u64,
        chunk_bytes: u64,
        ranges_max: usize,
    ) -> Result<Self, String> {
        if ranges.len() > ranges_max {
            return Err(format!(
                "{} ranges asked for, at most {ranges_max}",
                ranges.len()
            ));
        }
        let mut floor = resume_from;
        for &(at, len) in &ranges {
            let end = at.checked_add(len);
            if len == 0 || at < floor || end.is_none_or(|e| e > file_len) {
                return Err(format!(
                    "range ({at}, {len}): expected a non-empty range starting at or after {floor} \
                     and ending at or before {file_len}"
                ));
            }
            floor = at + len;
        }
        Ok(Ranges {
            ranges,
            chunk_bytes,
        })
    }

    /// The ranges.
    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes in all ranges.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// The chunk to send at or after `offset`: `(offset, len)`, or `None` past the last range.
    /// Chunks start at a range's start and every `chunk_bytes` after it, and never cross the
    /// range's end.
    pub fn chunk_at(&self, offset: u64) -> Option<(u64, u64)> {
        let i = self.ranges.partition_point(|&(at, len)| at + len <= offset);
        let &(at, len) = self.ranges.get(i)?;
        let start = offset.max(at);
        Some((start, self.chunk_bytes.min(at + len - start)))
    }

    /// Whether `offset` is where a chunk starts (a Nack must name one).
    pub fn is_chunk_start(&self, offset: u64) -> bool {
        let i = self.ranges.partition_point(|&(at, len)| at + len <= offset);
        self.ranges
            .get(i)
            .is_some_and(|&(at, _)| offset >= at && (offset - at).is_multiple_of(self.chunk_bytes))
    }
}

#[cfg(test)]
mod tests;
