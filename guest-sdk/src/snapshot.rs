//! Snapshot formats: the streaming default and the trait to write your own.
//!
//! # The default format, byte by byte
//!
//! Each chunk handed to the host is one self-checking frame (all integers little-endian):
//!
//! | bytes   | field                                                        |
//! |---------|--------------------------------------------------------------|
//! | 0..4    | magic `WGS1`                                                 |
//! | 4..8    | chunk sequence number, from 0                                |
//! | 8       | flags: bit 0 = final chunk                                   |
//! | 9..13   | payload length                                               |
//! | 13..17  | CRC-32C of bytes 0..13 followed by the payload               |
//! | 17..    | payload: the next slice of one zstd stream                   |
//!
//! The zstd stream decompresses to: magic `WRAFTSNP`, stream version (u32, currently 1),
//! the machine's snapshot format (u32), the machine name (u16 length + UTF-8), then records, each a
//! u32 length and a `postcard` encoding of one [`Records::Record`], then `0xFFFF_FFFF` and the
//! record count (u64). A restore checks every frame's checksum and sequence, the header, each
//! record, the count and the end of the zstd frame before `finish` may commit.

use std::io::Write;
use std::rc::Rc;

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

/// The default format: records → postcard → zstd → checksummed frames (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultSnapshot;

/// Bytes of frame header in front of each chunk's payload.
pub const FRAME_HEADER_BYTES: usize = 17;
/// Largest single record the default format accepts on restore.
pub const RECORD_BYTES_MAX: usize = 256 << 20;

const FRAME_MAGIC: &[u8; 4] = b"WGS1";
const STREAM_MAGIC: &[u8; 8] = b"WRAFTSNP";
const STREAM_VERSION: u32 = 1;
const TRAILER_MARK: u32 = u32::MAX;
const FLAG_FINAL: u8 = 1;
/// Serialized records are batched to about this size before entering the compressor.
const BATCH_BYTES: usize = 256 << 10;
/// Decompression proceeds in steps of at most this many output bytes.
const DECOMPRESS_STEP_BYTES: usize = 128 << 10;

/// A snapshot being read out in the default format.
pub struct DefaultReader<M: Records + 'static> {
    // Field order matters: `records` borrows from `*state` and is dropped first.
    records: Option<Box<dyn Iterator<Item = M::Record<'static>>>>,
    state: Option<Rc<M>>,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
    batch: Vec<u8>,
    seq: u32,
    count: u64,
    finished: bool,
    done: bool,
}

/// A restore in progress in the default format.
pub struct DefaultRestorer<M> {
    state: M,
    format: u32,
    decoder: Decoder<'static>,
    buf: Vec<u8>,
    header_seen: bool,
    seq: u32,
    final_seen: bool,
    frame_done: bool,
    count: u64,
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
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), M::ZSTD_LEVEL)
            .map_err(|e| format!("zstd encoder: {e}"))?;
        let mut head = Vec::with_capacity(32);
        head.extend_from_slice(STREAM_MAGIC);
        head.extend_from_slice(&STREAM_VERSION.to_le_bytes());
        head.extend_from_slice(&M::SNAPSHOT_FORMAT.to_le_bytes());
        let name = M::NAME.as_bytes();
        let name_len =
            u16::try_from(name.len()).map_err(|_| "machine name too long".to_string())?;
        head.extend_from_slice(&name_len.to_le_bytes());
        head.extend_from_slice(name);
        encoder.write_all(&head).map_err(|e| format!("zstd: {e}"))?;
        Ok(DefaultReader {
            records: Some(records),
            state: Some(state),
            encoder,
            batch: Vec::with_capacity(BATCH_BYTES * 2),
            seq: 0,
            count: 0,
            finished: false,
            done: false,
        })
    }

    fn next_chunk(r: &mut Self::Reader, max_bytes: usize) -> Result<Option<Vec<u8>>, String> {
        if r.done {
            return Ok(None);
        }
        if max_bytes <= FRAME_HEADER_BYTES {
            return Err(format!(
                "max chunk size {max_bytes} bytes is too small: the frame header alone takes \
                 {FRAME_HEADER_BYTES}"
            ));
        }
        let cap = (max_bytes - FRAME_HEADER_BYTES).min(u32::MAX as usize);
        while r.encoder.get_ref().len() < cap && !r.finished {
            r.fill_batch()?;
        }
        let pending = r.encoder.get_mut();
        let n = cap.min(pending.len());
        let last = r.finished && n == pending.len();
        let mut chunk = Vec::with_capacity(FRAME_HEADER_BYTES + n);
        chunk.extend_from_slice(FRAME_MAGIC);
        chunk.extend_from_slice(&r.seq.to_le_bytes());
        chunk.push(if last { FLAG_FINAL } else { 0 });
        chunk.extend_from_slice(&(n as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&chunk), &pending[..n]);
        chunk.extend_from_slice(&crc.to_le_bytes());
        chunk.extend_from_slice(&pending[..n]);
        pending.drain(..n);
        r.seq = r.seq.checked_add(1).ok_or("more than 2^32 chunks")?;
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
            header_seen: false,
            seq: 0,
            final_seen: false,
            frame_done: false,
            count: 0,
            trailer_seen: false,
        })
    }

    fn write_chunk(r: &mut Self::Restorer, chunk: &[u8]) -> Result<(), String> {
        let seq = r.seq;
        if r.final_seen {
            return Err(format!("chunk {seq} arrived after the final chunk"));
        }
        if chunk.len() < FRAME_HEADER_BYTES {
            return Err(format!(
                "chunk {seq}: {} bytes, shorter than the {FRAME_HEADER_BYTES}-byte frame header",
                chunk.len()
            ));
        }
        let (head, payload) = chunk.split_at(FRAME_HEADER_BYTES);
        if &head[0..4] != FRAME_MAGIC {
            return Err(format!(
                "chunk {seq}: bad magic {:02x?}, expected {:02x?} (not a wraft-guest snapshot?)",
                &head[0..4],
                FRAME_MAGIC
            ));
        }
        let got_seq = le_u32(&head[4..8]);
        if got_seq != seq {
            return Err(format!(
                "chunk out of order: expected sequence {seq}, found {got_seq}"
            ));
        }
        let flags = head[8];
        let len = le_u32(&head[9..13]) as usize;
        if len != payload.len() {
            return Err(format!(
                "chunk {seq}: header says {len} payload bytes, chunk carries {}",
                payload.len()
            ));
        }
        let want = le_u32(&head[13..17]);
        let found = crc32c::crc32c_append(crc32c::crc32c(&head[..13]), payload);
        if want != found {
            return Err(format!(
                "chunk {seq}: checksum mismatch (expected {want:08x}, computed {found:08x})"
            ));
        }
        r.seq += 1;
        r.final_seen = flags & FLAG_FINAL != 0;
        r.decompress(payload)
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
    /// Serialize about `BATCH_BYTES` of records into the compressor; at the end, write the
    /// trailer, close the zstd frame and release the state.
    fn fill_batch(&mut self) -> Result<(), String> {
        self.batch.clear();
        let Some(records) = self.records.as_mut() else {
            return Err("snapshot reader used after it finished".into());
        };
        let mut exhausted = false;
        while self.batch.len() < BATCH_BYTES {
            let Some(record) = records.next() else {
                exhausted = true;
                break;
            };
            let at = self.batch.len();
            self.batch.extend_from_slice(&[0; 4]);
            let batch = std::mem::take(&mut self.batch);
            self.batch = postcard::to_extend(&record, batch)
                .map_err(|e| format!("record {}: postcard: {e}", self.count))?;
            let len = self.batch.len() - at - 4;
            let len = u32::try_from(len)
                .ok()
                .filter(|&l| l != TRAILER_MARK && (l as usize) <= RECORD_BYTES_MAX)
                .ok_or_else(|| {
                    format!(
                        "record {} is {len} bytes, over {RECORD_BYTES_MAX}",
                        self.count
                    )
                })?;
            self.batch[at..at + 4].copy_from_slice(&len.to_le_bytes());
            self.count += 1;
        }
        if exhausted {
            self.batch.extend_from_slice(&TRAILER_MARK.to_le_bytes());
            self.batch.extend_from_slice(&self.count.to_le_bytes());
        }
        self.encoder
            .write_all(&self.batch)
            .map_err(|e| format!("zstd: {e}"))?;
        if exhausted {
            self.encoder.do_finish().map_err(|e| format!("zstd: {e}"))?;
            self.finished = true;
            self.records = None;
            self.state = None;
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
                return Err(format!(
                    "{} bytes of trailing data after the zstd frame",
                    input.len()
                ));
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
            if version != STREAM_VERSION {
                return Err(format!(
                    "snapshot stream version {version}, this SDK reads {STREAM_VERSION}"
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
                if rest.len() < 12 {
                    break;
                }
                let count = u64::from_le_bytes(rest[4..12].try_into().unwrap_or([0; 8]));
                if count != self.count {
                    return Err(format!(
                        "snapshot trailer says {count} records, stream carried {}",
                        self.count
                    ));
                }
                self.trailer_seen = true;
                pos += 12;
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
        self.buf.drain(..pos);
        Ok(())
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}
