//! Snapshot formats: the streaming default and the trait to write your own.
//!
//! # The default format, byte by byte
//!
//! The machine's records are serialized into one logical stream, the stream is cut at
//! **content-defined** boundaries (FastCDC over the serialized bytes: about 64 KiB apart, never
//! under 16 KiB or over 256 KiB), and each piece is compressed as an **independent zstd frame**.
//! A region of the state that did not change between two snapshots therefore produces
//! byte-identical chunks in both, wherever it sits in the stream: the host can recognise them by
//! their hash and keep or send them once (incremental snapshots).
//!
//! Each chunk handed to the host is one self-checking frame (all integers little-endian):
//!
//! | bytes   | field                                                        |
//! |---------|--------------------------------------------------------------|
//! | 0..4    | magic `WGS2`                                                 |
//! | 4       | flags: bit 0 = final chunk, bit 1 = the zstd frame continues in the next chunk |
//! | 5..9    | payload length                                               |
//! | 9..13   | CRC-32C of bytes 0..9 followed by the payload                |
//! | 13..    | payload: one whole zstd frame, or a piece of one (bit 1)     |
//!
//! A frame is split across chunks only when the host asks for chunks smaller than the frame
//! (it asks for 1 MiB by default; a frame is at most about 256 KiB), and the split depends only
//! on the frame and that size. There is no sequence number in a chunk, so that a chunk's bytes
//! do not depend on its position: order is the host's (each chunk sits in its own checksummed
//! frame of the node snapshot, in order), and the trailer checks the record count and the
//! stream's length.
//!
//! The frames decompress, concatenated, to: magic `WRAFTSNP`, stream version (u32, 2), the
//! machine's snapshot format (u32), the machine name (u16 length + UTF-8), then records, each a
//! u32 length and a `postcard` encoding of one [`Records::Record`], then `0xFFFF_FFFF`, the record
//! count (u64) and the number of stream bytes before the trailer (u64). A restore checks every
//! chunk's checksum, that every chunk not marked as continued ends a zstd frame, the header, each
//! record, the count, the length and the end of the last frame before `finish` may commit.
//!
//! # Version 1, still restored
//!
//! Snapshots written by SDKs before content-defined chunking (magic `WGS1`) restore unchanged:
//! a 17-byte chunk header (magic, sequence number u32, flags, length, CRC-32C) in front of
//! consecutive slices of **one** zstd frame, stream version 1, and a trailer of the record count
//! only. The first chunk's magic decides which version a restore reads.

use std::rc::Rc;

use fastcdc::v2020::FastCDC;
use serde::{Serialize, de::DeserializeOwned};
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use crate::StateMachine;

/// How a machine's state is written to and read from a snapshot, chunk by chunk.
///
/// Implement this only to use your own format; [`DefaultSnapshot`] suits almost every machine.
/// The host makes no other call on the instance while a reader is alive, and the SDK enforces it:
/// an `apply` while a reader still holds the state traps.
pub trait SnapshotFormat<M>: 'static {
    /// An in-progress snapshot read-out.
    type Reader: 'static;
    /// An in-progress restore.
    type Restorer: 'static;

    /// Start a snapshot of `state` (frozen for the reader's lifetime).
    fn begin_snapshot(state: Rc<M>) -> Result<Self::Reader, String>;
    /// The next chunk, at most `max_bytes` long, or `None` when complete.
    fn next_chunk(reader: &mut Self::Reader, max_bytes: usize) -> Result<Option<Vec<u8>>, String>;
    /// Start a restore of a snapshot written in `format`.
    fn begin_restore(format: u32) -> Result<Self::Restorer, String>;
    /// Take the next chunk, exactly as `next_chunk` produced it.
    fn write_chunk(restorer: &mut Self::Restorer, chunk: &[u8]) -> Result<(), String>;
    /// Validate everything received and return the restored state.
    fn finish(restorer: Self::Restorer) -> Result<M, String>;
}

/// A state seen as a sequence of serde records: what [`DefaultSnapshot`] needs.
///
/// A map-like state yields one record per entry, borrowed (`(&'a str, &'a str)`), and is rebuilt
/// from owned records (`(String, String)`); a small state can be a single record (`&'a Self`).
/// Records are produced lazily while the host pulls chunks, so a snapshot never needs a second copy
/// of the state.
pub trait Records: Sized {
    /// One record as written; typically borrows from the state.
    type Record<'a>: Serialize
    where
        Self: 'a;
    /// One record as read back; must decode what `Record` encodes with postcard.
    type OwnedRecord: DeserializeOwned;
    /// zstd level for this machine's snapshots (1..=19). Level 3 compresses roughly 200 MB/s.
    const ZSTD_LEVEL: i32 = 3;

    /// Every record of the state, in a deterministic order.
    fn records(&self) -> impl Iterator<Item = Self::Record<'_>>;
    /// Add one record to a state that started as `Default::default()`.
    fn restore_record(&mut self, record: Self::OwnedRecord) -> Result<(), String>;

    /// Add one record written by an older snapshot `format` (between
    /// [`StateMachine::OLDEST_SNAPSHOT_FORMAT`] and the current
    /// [`StateMachine::SNAPSHOT_FORMAT`], exclusive): the state migration of an upgrade.
    ///
    /// `record` is the record's postcard encoding as that older version wrote it; decode it with
    /// [`decode_record`] into the old record type and convert. The default refuses, which is right
    /// for a machine that never changed its snapshot format.
    ///
    /// ```
    /// # use serde::Deserialize;
    /// # #[derive(Deserialize)] struct V1 { key: String, value: String }
    /// # struct S { map: std::collections::BTreeMap<String, (String, u64)> }
    /// # impl S {
    /// fn restore_old_record(&mut self, format: u32, record: &[u8]) -> Result<(), String> {
    ///     match format {
    ///         // Format 1 had no version counter per key: start every key at version 1.
    ///         1 => {
    ///             let V1 { key, value } = wraft_guest::decode_record(record)?;
    ///             self.map.insert(key, (value, 1));
    ///             Ok(())
    ///         }
    ///         other => Err(format!("snapshot format {other} is not supported")),
    ///     }
    /// }
    /// # }
    /// ```
    fn restore_old_record(&mut self, format: u32, record: &[u8]) -> Result<(), String> {
        let _ = record;
        Err(format!(
            "snapshot format {format} is older than this machine's format and it has no \
             migration (implement Records::restore_old_record and lower \
             StateMachine::OLDEST_SNAPSHOT_FORMAT)"
        ))
    }
}

/// Decode one snapshot record from its postcard bytes: the helper for
/// [`Records::restore_old_record`]. Cost: linear in the record size. Fails with postcard's reason.
pub fn decode_record<T: DeserializeOwned>(record: &[u8]) -> Result<T, String> {
    postcard::from_bytes(record).map_err(|e| format!("cannot decode record: {e}"))
}

/// The default format: records → postcard → content-defined pieces → one zstd frame each →
/// checksummed chunks (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultSnapshot;

/// Bytes of chunk header in front of each chunk's payload (version 2).
pub const FRAME_HEADER_BYTES: usize = 13;
/// Largest single record the default format accepts on restore.
pub const RECORD_BYTES_MAX: usize = 256 << 20;
/// Content-defined cut points of the serialized stream: no piece is shorter (except the last)…
pub const CDC_MIN_BYTES: usize = 16 << 10;
/// …the average distance between cut points…
pub const CDC_AVG_BYTES: usize = 64 << 10;
/// …and no piece is longer. Each piece becomes one zstd frame.
pub const CDC_MAX_BYTES: usize = 256 << 10;

const MAGIC_V1: &[u8; 4] = b"WGS1";
const MAGIC_V2: &[u8; 4] = b"WGS2";
const HEADER_BYTES_V1: usize = 17;
const STREAM_MAGIC: &[u8; 8] = b"WRAFTSNP";
const STREAM_VERSION: u32 = 2;
const TRAILER_MARK: u32 = u32::MAX;
const FLAG_FINAL: u8 = 1;
const FLAG_CONTINUES: u8 = 2;
/// Decompression proceeds in steps of at most this many output bytes.
const DECOMPRESS_STEP_BYTES: usize = 128 << 10;

/// A snapshot being read out in the default format.
pub struct DefaultReader<M: Records + 'static> {
    // Field order matters: `records` borrows from `*state` and is dropped first.
    records: Option<Box<dyn Iterator<Item = M::Record<'static>>>>,
    state: Option<Rc<M>>,
    compressor: zstd::bulk::Compressor<'static>,
    /// The serialized stream not yet cut into a frame: `raw[raw_pos..]`.
    raw: Vec<u8>,
    raw_pos: usize,
    /// The current compressed frame; `frame[sent..]` is not handed out yet.
    frame: Vec<u8>,
    sent: usize,
    count: u64,
    /// Stream bytes serialized so far (header and records; the trailer states it).
    stream_bytes: u64,
    exhausted: bool,
    done: bool,
}

/// A restore in progress in the default format.
pub struct DefaultRestorer<M> {
    state: M,
    format: u32,
    decoder: Decoder<'static>,
    buf: Vec<u8>,
    /// Chunk format, from the first chunk's magic (1 or 2).
    version: Option<u8>,
    header_seen: bool,
    /// Chunks taken.
    seq: u32,
    final_seen: bool,
    /// The decoder has just finished a zstd frame.
    frame_done: bool,
    count: u64,
    /// Stream bytes parsed before the unparsed `buf`.
    parsed_bytes: u64,
    trailer_seen: bool,
}

impl<M: StateMachine + Records> SnapshotFormat<M> for DefaultSnapshot {
    type Reader = DefaultReader<M>;
    type Restorer = DefaultRestorer<M>;

    fn begin_snapshot(state: Rc<M>) -> Result<Self::Reader, String> {
        // SAFETY: the reference points into the `Rc` allocation, which `DefaultReader` keeps alive
        // in `state` for at least as long as `records` (declared first, so dropped first; and
        // `records` is also cleared before `state`). The state cannot be mutated meanwhile: the
        // runtime only mutates through `Rc::get_mut`, which fails while this clone exists. The
        // `'static` borrow never leaves this struct.
        let frozen: &'static M = unsafe { &*Rc::as_ptr(&state) };
        let records: Box<dyn Iterator<Item = M::Record<'static>>> = Box::new(frozen.records());
        let compressor = zstd::bulk::Compressor::new(M::ZSTD_LEVEL)
            .map_err(|e| format!("zstd compressor: {e}"))?;
        let mut raw = Vec::with_capacity(CDC_MAX_BYTES * 2);
        raw.extend_from_slice(STREAM_MAGIC);
        raw.extend_from_slice(&STREAM_VERSION.to_le_bytes());
        raw.extend_from_slice(&M::SNAPSHOT_FORMAT.to_le_bytes());
        let name = M::NAME.as_bytes();
        let name_len =
            u16::try_from(name.len()).map_err(|_| "machine name too long".to_string())?;
        raw.extend_from_slice(&name_len.to_le_bytes());
        raw.extend_from_slice(name);
        Ok(DefaultReader {
            records: Some(records),
            state: Some(state),
            compressor,
            stream_bytes: raw.len() as u64,
            raw,
            raw_pos: 0,
            frame: Vec::new(),
            sent: 0,
            count: 0,
            exhausted: false,
            done: false,
        })
    }

    fn next_chunk(r: &mut Self::Reader, max_bytes: usize) -> Result<Option<Vec<u8>>, String> {
        if r.done {
            return Ok(None);
        }
        if max_bytes <= FRAME_HEADER_BYTES {
            return Err(format!(
                "max chunk size {max_bytes} bytes is too small: the chunk header alone takes \
                 {FRAME_HEADER_BYTES}"
            ));
        }
        if r.sent == r.frame.len() {
            r.next_frame()?;
        }
        let cap = (max_bytes - FRAME_HEADER_BYTES).min(u32::MAX as usize);
        let n = cap.min(r.frame.len() - r.sent);
        let piece = &r.frame[r.sent..r.sent + n];
        r.sent += n;
        let continues = r.sent < r.frame.len();
        let last = !continues && r.exhausted && r.raw_pos == r.raw.len();
        let flags = if last { FLAG_FINAL } else { 0 } | if continues { FLAG_CONTINUES } else { 0 };
        let mut chunk = Vec::with_capacity(FRAME_HEADER_BYTES + n);
        chunk.extend_from_slice(MAGIC_V2);
        chunk.push(flags);
        chunk.extend_from_slice(&(n as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&chunk), piece);
        chunk.extend_from_slice(&crc.to_le_bytes());
        chunk.extend_from_slice(piece);
        r.done = last;
        Ok(Some(chunk))
    }

    fn begin_restore(format: u32) -> Result<Self::Restorer, String> {
        let oldest = M::OLDEST_SNAPSHOT_FORMAT.min(M::SNAPSHOT_FORMAT);
        if !(oldest..=M::SNAPSHOT_FORMAT).contains(&format) {
            return Err(format!(
                "{} {} restores snapshot formats {oldest}..={}, got format {format}",
                M::NAME,
                M::VERSION,
                M::SNAPSHOT_FORMAT
            ));
        }
        Ok(DefaultRestorer {
            state: M::default(),
            format,
            decoder: Decoder::new().map_err(|e| format!("zstd decoder: {e}"))?,
            buf: Vec::with_capacity(DECOMPRESS_STEP_BYTES),
            version: None,
            header_seen: false,
            seq: 0,
            final_seen: false,
            frame_done: false,
            count: 0,
            parsed_bytes: 0,
            trailer_seen: false,
        })
    }

    fn write_chunk(r: &mut Self::Restorer, chunk: &[u8]) -> Result<(), String> {
        let seq = r.seq;
        if r.final_seen {
            return Err(format!("chunk {seq} arrived after the final chunk"));
        }
        let magic = chunk.get(..4).unwrap_or(chunk);
        let version = match (r.version, magic) {
            (None | Some(1), m) if m == MAGIC_V1 => 1,
            (None | Some(2), m) if m == MAGIC_V2 => 2,
            (Some(v), m) if m == MAGIC_V1 || m == MAGIC_V2 => {
                return Err(format!(
                    "chunk {seq}: magic {m:02x?} in a snapshot whose first chunk was version {v}"
                ));
            }
            (_, m) => {
                return Err(format!(
                    "chunk {seq}: bad magic {m:02x?}, expected {MAGIC_V2:02x?} or {MAGIC_V1:02x?} \
                     (not a wraft-guest snapshot?)"
                ));
            }
        };
        r.version = Some(version);
        let header_bytes = if version == 1 {
            HEADER_BYTES_V1
        } else {
            FRAME_HEADER_BYTES
        };
        if chunk.len() < header_bytes {
            return Err(format!(
                "chunk {seq}: {} bytes, shorter than the {header_bytes}-byte chunk header",
                chunk.len()
            ));
        }
        let (head, payload) = chunk.split_at(header_bytes);
        // Version 1 has a sequence number at 4..8; the rest is the same, shifted.
        let at = if version == 1 {
            let got_seq = le_u32(&head[4..8]);
            if got_seq != seq {
                return Err(format!(
                    "chunk out of order: expected sequence {seq}, found {got_seq}"
                ));
            }
            8
        } else {
            4
        };
        let flags = head[at];
        let len = le_u32(&head[at + 1..at + 5]) as usize;
        if len != payload.len() {
            return Err(format!(
                "chunk {seq}: header says {len} payload bytes, chunk carries {}",
                payload.len()
            ));
        }
        let want = le_u32(&head[at + 5..at + 9]);
        let found = crc32c::crc32c_append(crc32c::crc32c(&head[..at + 5]), payload);
        if want != found {
            return Err(format!(
                "chunk {seq}: checksum mismatch (expected {want:08x}, computed {found:08x})"
            ));
        }
        r.seq += 1;
        r.final_seen = flags & FLAG_FINAL != 0;
        r.decompress(payload)?;
        if version == 2 && flags & FLAG_CONTINUES == 0 && !r.frame_done {
            return Err(format!(
                "chunk {seq}: ends inside a zstd frame but is not marked as continued"
            ));
        }
        Ok(())
    }

    fn finish(r: Self::Restorer) -> Result<M, String> {
        if !r.final_seen {
            return Err(format!(
                "snapshot incomplete: {} chunks received, no final chunk",
                r.seq
            ));
        }
        if !r.frame_done || !r.trailer_seen {
            return Err("snapshot truncated: the compressed stream ended early".into());
        }
        Ok(r.state)
    }
}

impl<M: StateMachine + Records> DefaultReader<M> {
    /// Cut the next content-defined piece off the stream and compress it into `frame`.
    fn next_frame(&mut self) -> Result<(), String> {
        // A cut point depends on at most CDC_MAX_BYTES ahead: with that much buffered (or the
        // whole rest of the stream) the cut is the one a scan of the whole stream would make.
        while self.raw.len() - self.raw_pos < CDC_MAX_BYTES && !self.exhausted {
            self.fill()?;
        }
        let rest = &self.raw[self.raw_pos..];
        let end = if rest.len() <= CDC_MIN_BYTES {
            rest.len()
        } else {
            FastCDC::new(rest, CDC_MIN_BYTES, CDC_AVG_BYTES, CDC_MAX_BYTES)
                .cut(0, rest.len())
                .1
        };
        self.frame.clear();
        // Room for the worst case (`reserve` counts from the length, now 0).
        self.frame.reserve(zstd::zstd_safe::compress_bound(end));
        self.compressor
            .compress_to_buffer(&rest[..end], &mut self.frame)
            .map_err(|e| format!("zstd: {e}"))?;
        self.sent = 0;
        self.raw_pos += end;
        // Drop what was cut once it is at least half the buffer: linear overall, even for a
        // record far larger than a piece.
        if self.raw_pos * 2 >= self.raw.len() {
            self.raw.drain(..self.raw_pos);
            self.raw_pos = 0;
        }
        Ok(())
    }

    /// Serialize records until a whole piece is buffered; at the end, write the trailer and
    /// release the state.
    fn fill(&mut self) -> Result<(), String> {
        let Some(records) = self.records.as_mut() else {
            return Err("snapshot reader used after it finished".into());
        };
        while self.raw.len() - self.raw_pos < CDC_MAX_BYTES {
            let Some(record) = records.next() else {
                self.raw.extend_from_slice(&TRAILER_MARK.to_le_bytes());
                self.raw.extend_from_slice(&self.count.to_le_bytes());
                self.raw.extend_from_slice(&self.stream_bytes.to_le_bytes());
                self.exhausted = true;
                self.records = None;
                self.state = None;
                return Ok(());
            };
            let at = self.raw.len();
            self.raw.extend_from_slice(&[0; 4]);
            let raw = std::mem::take(&mut self.raw);
            self.raw = postcard::to_extend(&record, raw)
                .map_err(|e| format!("record {}: postcard: {e}", self.count))?;
            let len = self.raw.len() - at - 4;
            let len = u32::try_from(len)
                .ok()
                .filter(|&l| l != TRAILER_MARK && (l as usize) <= RECORD_BYTES_MAX)
                .ok_or_else(|| {
                    format!(
                        "record {} is {len} bytes, over {RECORD_BYTES_MAX}",
                        self.count
                    )
                })?;
            self.raw[at..at + 4].copy_from_slice(&len.to_le_bytes());
            self.count += 1;
            self.stream_bytes += 4 + u64::from(len);
        }
        Ok(())
    }
}

impl<M: StateMachine + Records> DefaultRestorer<M> {
    fn decompress(&mut self, mut input: &[u8]) -> Result<(), String> {
        loop {
            if self.frame_done {
                if input.is_empty() {
                    return Ok(());
                }
                if self.version != Some(2) || self.trailer_seen {
                    return Err(format!(
                        "{} bytes of trailing data after the last zstd frame",
                        input.len()
                    ));
                }
                // Version 2: one independent frame per piece; the next one starts here.
                self.decoder
                    .reinit()
                    .map_err(|e| format!("zstd decoder: {e}"))?;
                self.frame_done = false;
            }
            // Decompress straight into the spare capacity behind the unparsed bytes: no
            // intermediate step buffer, no copy.
            let start = self.buf.len();
            self.buf.reserve(DECOMPRESS_STEP_BYTES);
            let room = self.buf.capacity() - start;
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around_pos(&mut self.buf, start);
            let hint = self
                .decoder
                .run(&mut inb, &mut outb)
                .map_err(|e| format!("chunk {}: corrupt zstd data: {e}", self.seq - 1))?;
            let written = outb.pos() - start;
            let read = inb.pos();
            input = &input[read..];
            self.parse()?;
            if hint == 0 {
                self.frame_done = true;
            }
            if input.is_empty() && written < room && !self.frame_done {
                return Ok(());
            }
        }
    }

    /// Consume every complete item at the front of `buf`.
    fn parse(&mut self) -> Result<(), String> {
        let mut pos = 0;
        let buf = &self.buf;
        if !self.header_seen {
            let fixed = STREAM_MAGIC.len() + 4 + 4 + 2;
            if buf.len() < fixed {
                return Ok(());
            }
            let name_len = u16::from_le_bytes([buf[16], buf[17]]) as usize;
            if buf.len() < fixed + name_len {
                return Ok(());
            }
            if &buf[..8] != STREAM_MAGIC {
                return Err("not a wraft-guest snapshot stream (bad stream magic)".into());
            }
            let version = le_u32(&buf[8..12]);
            let chunks = u32::from(self.version.unwrap_or(0));
            if version != chunks {
                return Err(format!(
                    "snapshot stream version {version} in chunks of version {chunks} (this SDK \
                     reads 1 and {STREAM_VERSION}, each in its own chunks)"
                ));
            }
            let format = le_u32(&buf[12..16]);
            if format != self.format {
                return Err(format!(
                    "snapshot stream says format {format}, the restore was begun for format {}",
                    self.format
                ));
            }
            let name = String::from_utf8_lossy(&buf[fixed..fixed + name_len]);
            if name != M::NAME {
                return Err(format!(
                    "snapshot is of machine {name:?}, cannot restore into {:?}",
                    M::NAME
                ));
            }
            pos = fixed + name_len;
            self.header_seen = true;
        }
        loop {
            let rest = &buf[pos..];
            if self.trailer_seen {
                if !rest.is_empty() {
                    return Err(format!("{} bytes after the snapshot trailer", rest.len()));
                }
                break;
            }
            if rest.len() < 4 {
                break;
            }
            let len = le_u32(&rest[..4]);
            if len == TRAILER_MARK {
                // Version 1: mark, count. Version 2: mark, count, stream bytes before it.
                let trailer_bytes = if self.version == Some(1) { 12 } else { 20 };
                if rest.len() < trailer_bytes {
                    break;
                }
                let count = le_u64(&rest[4..12]);
                if count != self.count {
                    return Err(format!(
                        "snapshot trailer says {count} records, stream carried {}",
                        self.count
                    ));
                }
                if trailer_bytes == 20 {
                    let (said, seen) = (le_u64(&rest[12..20]), self.parsed_bytes + pos as u64);
                    if said != seen {
                        return Err(format!(
                            "snapshot trailer says {said} stream bytes, stream carried {seen}"
                        ));
                    }
                }
                self.trailer_seen = true;
                pos += trailer_bytes;
                continue;
            }
            let len = len as usize;
            if len > RECORD_BYTES_MAX {
                return Err(format!(
                    "record {}: {len} bytes, over {RECORD_BYTES_MAX}",
                    self.count
                ));
            }
            if rest.len() < 4 + len {
                break;
            }
            let bytes = &rest[4..4 + len];
            if self.format == M::SNAPSHOT_FORMAT {
                let record: M::OwnedRecord = postcard::from_bytes(bytes)
                    .map_err(|e| format!("record {}: cannot decode: {e}", self.count))?;
                self.state.restore_record(record)
            } else {
                self.state.restore_old_record(self.format, bytes)
            }
            .map_err(|e| format!("record {}: {e}", self.count))?;
            self.count += 1;
            pos += 4 + len;
        }
        self.parsed_bytes += pos as u64;
        self.buf.drain(..pos);
        Ok(())
    }
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}
