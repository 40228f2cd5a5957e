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
mod tests {
    use super::*;
    use crate::format::FrameKind;

    /// A storage header with `meta` bytes of metadata, then frames with these payloads.
    fn file(meta: usize, payloads: &[&[u8]]) -> Vec<u8> {
        let mut f = vec![0u8; wraft_storage::SNAPSHOT_HEADER_BYTES as usize];
        f[12..16].copy_from_slice(&(meta as u32).to_le_bytes());
        f.extend(std::iter::repeat_n(0xee, meta));
        for p in payloads {
            f.push(FrameKind::MachineChunk as u8);
            f.extend_from_slice(&(p.len() as u32).to_le_bytes());
            f.extend_from_slice(&crc32c::crc32c(p).to_le_bytes());
            f.extend_from_slice(p);
        }
        f
    }

    fn reader(f: &[u8]) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
        move |at, buf| {
            let at = at as usize;
            buf.copy_from_slice(
                f.get(at..at + buf.len())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?,
            );
            Ok(())
        }
    }

    fn segs(f: &[u8]) -> Vec<Segment> {
        segments_of(f.len() as u64, &mut reader(f)).unwrap()
    }

    #[test]
    fn the_header_each_frame_and_each_mebibyte_of_a_long_frame_are_segments() {
        let big = vec![7u8; (SEGMENT_BYTES_MAX as usize) + 100];
        let f = file(40, &[b"abc", &big, b""]);
        let cuts = cut_points(f.len() as u64, &mut reader(&f)).unwrap();
        let head = 60 + 40;
        assert_eq!(
            cuts,
            vec![
                (0, head as u32),
                (head, 9 + 3),
                (head + 12, SEGMENT_BYTES_MAX as u32),
                (head + 12 + SEGMENT_BYTES_MAX, 9 + 100),
                (head + 12 + SEGMENT_BYTES_MAX + 109, 9),
            ]
        );
    }

    #[test]
    fn a_body_that_stops_parsing_is_cut_in_fixed_pieces_from_there() {
        let mut f = file(0, &[b"abc", b"defgh"]);
        let whole = f.len() as u64;
        // Truncated inside the second frame: the first frame is a segment, the rest one piece.
        f.truncate(f.len() - 2);
        let cuts = cut_points(f.len() as u64, &mut reader(&f)).unwrap();
        assert_eq!(cuts, vec![(0, 60), (60, 12), (72, (whole - 2 - 72) as u32)]);
        // A frame length past the end, and a file shorter than a header.
        let mut bad = file(0, &[b"abc"]);
        bad[61..65].copy_from_slice(&u32::MAX.to_le_bytes());
        let cuts = cut_points(bad.len() as u64, &mut reader(&bad)).unwrap();
        assert_eq!(cuts, vec![(0, 60), (60, 12)]);
        let tiny = vec![1u8; 10];
        assert_eq!(cut_points(10, &mut reader(&tiny)).unwrap(), vec![(0, 10)]);
    }

    #[test]
    fn a_frame_moved_to_another_offset_keeps_its_hash() {
        let a = segs(&file(10, &[b"one", b"two", b"three"]));
        let b = segs(&file(25, &[b"zero", b"one", b"two", b"three"]));
        let hashes = |s: &[Segment]| s.iter().map(|s| s.hash).collect::<Vec<_>>();
        assert_eq!(hashes(&a)[1..], hashes(&b)[2..]);
        assert_ne!(a[0].hash, b[0].hash);
        assert_ne!(a[1].offset, b[2].offset);
    }

    #[test]
    fn a_plan_copies_what_is_held_fetches_the_rest_and_covers_the_file_exactly() {
        let old = file(10, &[b"one", b"two", b"three", b"four"]);
        let new = file(12, &[b"one", b"TWO", b"three", b"five", b"six", b"four"]);
        let mut local = LocalSegments::default();
        local.add(3, &segs(&old));
        let s = segs(&new);
        let fills = plan(&s, 0, &local);
        let kinds: Vec<char> = fills
            .iter()
            .map(|f| match f {
                Fill::Copy { .. } => 'c',
                Fill::Fetch { .. } => 'f',
                Fill::Peer { .. } => 'p',
            })
            .collect();
        // header (new meta: fetched), one, TWO, three, five+six (merged), four
        assert_eq!(kinds, ['f', 'c', 'f', 'c', 'f', 'c']);
        assert_eq!(fills[0].at(), 0);
        assert_eq!(fills.last().unwrap().end(), new.len() as u64);
        for w in fills.windows(2) {
            assert_eq!(w[0].end(), w[1].at());
        }
        // A copy names bytes that really are the same.
        for f in &fills {
            if let Fill::Copy {
                at,
                len,
                source,
                from,
                hash,
            } = *f
            {
                assert_eq!(source, 3);
                let (at, from, len) = (at as usize, from as usize, len as usize);
                assert_eq!(new[at..at + len], old[from..from + len]);
                assert_eq!(hash, *blake3::hash(&new[at..at + len]).as_bytes());
            }
        }
        let fetched: u64 = fetch_ranges(&fills).iter().map(|r| r.1).sum();
        assert_eq!(fetched, 72 + (9 + 3) + (9 + 4) + (9 + 3));
    }

    /// Fetches spread over the sender and two members in turn, by blocks of whole segments:
    /// copies stay where they were, the fills still cover the file in order, each member's
    /// segment carries its hash and is one it holds, the sender keeps about a third, and a
    /// segment no member holds stays the sender's.
    #[test]
    fn fetches_spread_over_the_sender_and_the_members_holding_each_segment() {
        use std::collections::HashSet;
        let payloads: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        let new = file(8, &refs);
        let s = segs(&new);
        // This node holds frames 10..15 already.
        let mut local = LocalSegments::default();
        local.add(0, &s[11..16]);
        let planned = plan(&s, 0, &local);
        let wanted = fetched_segments(&planned, &s);
        assert_eq!(wanted.len(), s.len() - 5);
        let all: HashSet<[u8; 32]> = s.iter().map(|x| x.hash).collect();
        assert_eq!(spread_fetches(planned.clone(), &s, &[], 300), planned);
        // Member 1 lacks frame 25.
        let mut lacks = all.clone();
        lacks.remove(&s[26].hash);
        let fills = spread_fetches(planned.clone(), &s, &[all.clone(), lacks.clone()], 300);
        assert_eq!(fills.first().unwrap().at(), 0);
        assert_eq!(fills.last().unwrap().end(), new.len() as u64);
        for w in fills.windows(2) {
            assert_eq!(w[0].end(), w[1].at());
        }
        let copies = |f: &[Fill]| f.iter().filter(|f| matches!(f, Fill::Copy { .. })).count();
        assert_eq!(copies(&fills), copies(&planned));
        let mut by = [0u64; 3];
        for f in &fills {
            match *f {
                Fill::Fetch { len, .. } => by[0] += len,
                Fill::Peer {
                    at,
                    len,
                    hash,
                    peer,
                } => {
                    let (a, l) = (at as usize, len as usize);
                    assert_eq!(hash, *blake3::hash(&new[a..a + l]).as_bytes());
                    assert!(s.iter().any(|x| x.offset == at && x.len == len));
                    assert!(peer == 0 || hash != s[26].hash);
                    by[1 + peer] += u64::from(len);
                }
                Fill::Copy { .. } => {}
            }
        }
        let fetched: u64 = fetch_ranges(&planned).iter().map(|r| r.1).sum();
        assert_eq!(by.iter().sum::<u64>(), fetched);
        for b in by {
            assert!(b * 5 > fetched && b * 2 < fetched, "{by:?} of {fetched}");
        }
        // Members holding nothing leave everything to the sender.
        let none = spread_fetches(planned.clone(), &s, &[HashSet::new()], 300);
        assert_eq!(fetch_ranges(&none), fetch_ranges(&planned));
        // A transfer resumed inside a segment fetches the rest of it from the sender.
        let resume = s[3].offset + 5;
        let fills = spread_fetches(plan(&s, resume, &local), &s, &[all.clone(), all], 300);
        assert!(matches!(fills[0], Fill::Fetch { at, .. } if at == resume));
        assert!(fills[0].end() >= s[3].end());
        assert_eq!(fills.last().unwrap().end(), new.len() as u64);
    }

    #[test]
    fn the_segment_cache_keeps_the_most_recently_used_files_and_forgets_on_demand() {
        let c = SegmentCache::with_capacity(2);
        let seg = |n: u32| {
            Arc::new(vec![Segment {
                offset: 0,
                len: n,
                hash: [n as u8; 32],
            }])
        };
        let computed = std::cell::Cell::new(0);
        let get = |d: u8, n: u32| {
            c.get_or_compute([d; 32], || {
                computed.set(computed.get() + 1);
                Ok(seg(n).to_vec())
            })
            .unwrap()[0]
                .len
        };
        assert_eq!(get(1, 10), 10);
        assert_eq!(get(2, 20), 20);
        assert_eq!(get(1, 99), 10, "remembered");
        // 1 was used last: 2 leaves for 3.
        assert_eq!(get(3, 30), 30);
        assert!(c.get(&[1; 32]).is_some() && c.get(&[2; 32]).is_none());
        assert_eq!(computed.get(), 3);
        c.forget(&[1; 32]);
        assert_eq!(get(1, 11), 11, "computed again after forget");
        assert_eq!(manifest_segments_max(0), 1024);
        assert_eq!(manifest_segments_max(64 << 10), 2048);
        assert_eq!(
            manifest_segments_max(u64::MAX),
            crate::wire::MANIFEST_SEGMENTS_MAX
        );
    }

    #[test]
    fn a_snapshot_of_the_store_is_remembered_with_the_segments_its_file_has() {
        let dir = tempfile::tempdir().unwrap();
        let store = wraft_storage::SnapshotStore::open(
            Arc::new(wraft_storage::StdFs),
            dir.path(),
            &wraft_storage::StorageConfig::default(),
        )
        .unwrap()
        .0;
        let id = wraft_storage::SnapshotId {
            last_index: 7,
            last_term: 1,
        };
        let mut w = store
            .begin(wraft_storage::SnapshotMeta {
                id,
                membership: wraft_storage::Membership {
                    voters: vec![1],
                    learners: vec![],
                },
                format: "test/1".into(),
            })
            .unwrap();
        let body = file(0, &[b"one", b"two"]);
        w.write_chunk(&body[60..]).unwrap();
        let info = w.finish().unwrap();
        let cache = SegmentCache::default();
        remember_segments(&store, id, &cache).unwrap();
        let bytes = std::fs::read(&info.path).unwrap();
        let want = segs(&bytes);
        assert_eq!(*cache.get(&info.digest).expect("remembered"), want);
        assert_eq!(want.len(), 3, "header, and one per frame");
        let missing = wraft_storage::SnapshotId {
            last_index: 8,
            last_term: 1,
        };
        assert!(remember_segments(&store, missing, &cache).is_err());
    }

    #[test]
    fn a_resumed_plan_starts_at_the_durable_offset_even_inside_a_segment() {
        let f = file(0, &[b"aaaa", b"bbbb"]);
        let s = segs(&f);
        let mut local = LocalSegments::default();
        local.add(0, &s);
        // Everything is held, but the segment holding the resume point is fetched from there.
        let fills = plan(&s, 65, &local);
        assert_eq!(
            fills[0],
            Fill::Fetch {
                at: 65,
                len: 73 - 65
            }
        );
        assert!(matches!(
            fills[1],
            Fill::Copy {
                at: 73,
                len: 13,
                ..
            }
        ));
        assert_eq!(fills.len(), 2);
        assert!(plan(&s, f.len() as u64, &local).is_empty());
    }

    #[test]
    fn a_manifest_is_taken_part_by_part_and_must_cover_the_file_exactly() {
        use crate::wire::ManifestPart;
        let part = |segments: Vec<u32>, last| ManifestPart {
            segments: segments.into_iter().map(|l| (l, [l as u8; 32])).collect(),
            last,
        };
        let mut m = ManifestIntake::new(100);
        assert_eq!(m.on_part(part(vec![60, 30], false)), Ok(false));
        assert_eq!(m.on_part(part(vec![10], true)), Ok(true));
        let s = m.into_segments();
        assert_eq!(s.iter().map(|s| s.offset).collect::<Vec<_>>(), [0, 60, 90]);
        for (parts, why) in [
            (
                vec![part(vec![60, 30], true)],
                "covers 90 of the file's 100",
            ),
            (vec![part(vec![60, 50], true)], "ending at or before 100"),
            (vec![part(vec![0], false)], "expected 1..="),
            (
                vec![part(vec![100], true), part(vec![], true)],
                "after the last",
            ),
        ] {
            let mut m = ManifestIntake::new(100);
            let e = parts
                .into_iter()
                .map(|p| m.on_part(p))
                .find_map(Result::err)
                .expect("a bad manifest was taken");
            assert!(e.contains(why), "{e}");
        }
        let mut m = ManifestIntake::new(u64::MAX);
        let huge = part(vec![1; crate::wire::MANIFEST_PART_SEGMENTS_MAX + 1], false);
        assert!(m.on_part(huge).unwrap_err().contains("more than"));
    }

    #[test]
    fn chunks_walk_the_asked_ranges_and_a_nack_must_name_a_chunk_start() {
        let r = Ranges::checked(vec![(10, 25), (50, 5)], 5, 100, 10, 8).unwrap();
        let mut at = 0;
        let mut chunks = Vec::new();
        while let Some((o, l)) = r.chunk_at(at) {
            chunks.push((o, l));
            at = o + l;
        }
        assert_eq!(chunks, [(10, 10), (20, 10), (30, 5), (50, 5)]);
        assert_eq!(r.bytes(), 30);
        assert!(r.is_chunk_start(20) && r.is_chunk_start(50));
        assert!(!r.is_chunk_start(25) && !r.is_chunk_start(40) && !r.is_chunk_start(0));
        for (ranges, why) in [
            (vec![(4, 1)], "starting at or after 5"),
            (vec![(10, 5), (12, 5)], "starting at or after 15"),
            (vec![(10, 0)], "non-empty"),
            (vec![(90, 11)], "ending at or before 100"),
            (vec![(u64::MAX, 2)], "ending at or before"),
            (vec![(10, 1); 9], "at most 8"),
        ] {
            let e = Ranges::checked(ranges, 5, 100, 10, 8).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let v1 = Ranges::from_offset(30, 45, 10);
        assert_eq!(v1.chunk_at(0), Some((30, 10)));
        assert_eq!(v1.chunk_at(40), Some((40, 5)));
        assert_eq!(v1.chunk_at(45), None);
        assert!(Ranges::from_offset(45, 45, 10).chunk_at(0).is_none());
    }
}
