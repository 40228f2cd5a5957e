//! Bodies and oracles of wraft's fuzz targets.
//!
//! Each public function here is one libFuzzer target (`fuzz/fuzz_targets/<name>.rs`
//! is a one-line wrapper): it feeds the bytes to one decoder that reads untrusted
//! input and checks an oracle stronger than "does not panic" where one exists —
//! round trips, a differential check between two decoders of the same format, or
//! the invariants recovery promises. A violated oracle panics, which libFuzzer
//! reports as a crash with the input saved.
//!
//! The crate deliberately does not depend on `wraft` (wasmtime): the client
//! protocol comes from `wraft-proto`, the config from `wraft-config`, the node
//! snapshot format and the transfer protocol from `wraft-snapshot`, none of
//! which pulls the host.
//!
//! | target | decoder | oracle |
//! |---|---|---|
//! | [`frame_decode`] | `frame::decode_frame` | frames re-encode to the bytes they came from |
//! | [`frame_stream`] | `frame::read_frame` (async, split reads) | same frames and same error as `decode_frame` |
//! | [`raft_message`] | postcard `Message` stream | decode/encode is stable |
//! | [`wal_recovery`] | `Log::open` over fuzzed segment files | every recovered index is readable; recovery is idempotent |
//! | [`snapshot_open`] | `SnapshotStore::open` over a fuzzed `.snap` + progress file | a recovered snapshot reads back and re-verifies |
//! | [`snapshot_incoming`] | `IncomingSnapshot::write_at`/`finalize` driven by fuzzed chunks | a finalized snapshot re-verifies |
//! | [`client_proto`] | postcard `Request`, `Response`, `Command`, `EntryKind` | decode/encode is stable |
//! | [`config_toml`] | `NodeConfig::parse` (TOML + validate) | an accepted config renders to TOML that parses to the same config |
//! | [`node_snapshot_parse`] | `NodeSnapshot::parse` over an in-memory body, then every machine section | an accepted body re-encodes with the format's writer to the same snapshot, stably |
//! | [`transfer_offer`] | `wire::decode_offer`, then the follower's offer rules | decode/encode is stable; accepted offers are within bounds; only the same file resumes |
//! | [`transfer_reply`] | `wire::decode_reply`, then the leader's judgement of the answer and the acks | decode/encode is stable; acked offsets never go back; resends only at chunk boundaries |
//! | [`transfer_chunk`] | `wire::decode_chunk_header` through the follower's `ChunkStream` | headers re-encode; chunks are written only contiguously, within the file; Nacks bounded |
//!
//! Every function costs one decode of at most the input (plus, for the storage
//! targets, one in-memory file system and a writer thread per call) and panics
//! only when an oracle is violated.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};
use wraft_storage::fault::FaultFs;
use wraft_storage::{Log, OpenMode, SnapshotId, SnapshotStore, StorageConfig, Vfs};
use wraft_transport::frame::{self, Decoded, FrameError};

mod node_snapshot;
pub mod seeds;
mod transfer;

pub use node_snapshot::{NODE_SNAPSHOT_READBACK_BYTES_MAX, node_snapshot_parse, reseal_frames};
pub use transfer::{
    MANIFEST_FILE_BYTES, TRANSFER_CHUNK_BYTES, TRANSFER_CHUNK_BYTES_MAX, TRANSFER_DIGEST,
    TRANSFER_FILE_BYTES, TRANSFER_ID, transfer_chunk, transfer_manifest, transfer_offer,
    transfer_reply,
};

/// The `max_frame_bytes` values the frame targets choose between (first input byte).
pub const FRAME_MAX_CHOICES: [u32; 4] = [16, 1024, 1 << 16, frame::DEFAULT_MAX_FRAME_BYTES];

/// Directory of the fuzzed log inside the in-memory file system.
pub const WAL_DIR: &str = "/node/wal";
/// Directory of the fuzzed snapshot store inside the in-memory file system.
pub const SNAP_DIR: &str = "/node/snap";
/// The snapshot id the snapshot targets name their files after (seeds use it too).
pub const SNAP_ID: SnapshotId = SnapshotId {
    last_index: 100,
    last_term: 3,
};
/// An older snapshot that [`snapshot_open`] always places next to the fuzzed one, whole and
/// valid: a fuzzed file may share bytes with it (see `wraft_storage`'s shared snapshot files).
pub const OWNER_ID: SnapshotId = SnapshotId {
    last_index: 60,
    last_term: 3,
};
/// Size of the progress file of an incoming snapshot (two 24-byte slots).
pub const PROGRESS_FILE_BYTES: usize = 48;
/// Most log indexes [`wal_recovery`] reads back after a successful open.
pub const WAL_READBACK_MAX: u64 = 4096;

/// Storage limits for the fuzzed stores: small, so that a hostile length field
/// is rejected by a limit rather than by running out of memory.
pub fn storage_config() -> StorageConfig {
    StorageConfig {
        segment_bytes: 4096,
        preallocate_bytes: 512,
        entry_bytes_max: 1 << 16,
        queue_bytes_max: 1 << 20,
        tail_cache_bytes: 1 << 20,
        snapshot_file_bytes_max: 1 << 20,
        snapshot_meta_bytes_max: 4096,
        snapshot_io_chunk_bytes: 4096,
        snapshot_sync_every_bytes: 8192,
        ..StorageConfig::default()
    }
}

// ---------------------------------------------------------------- frames

/// How a sequence of frames ended, comparable between the two frame decoders.
#[derive(Debug, PartialEq, Eq)]
enum FrameEnd {
    /// Clean end exactly between frames.
    Eof,
    /// The bytes ended inside a frame, this many bytes short.
    Truncated(usize),
    /// A typed error (its `Display`, which names the variant's fields).
    Error(String),
}

fn frame_error_key(e: &FrameError) -> String {
    e.to_string()
}

/// All frames at the front of `bytes`, decoded with [`frame::decode_frame`],
/// and how the sequence ended. Checks every frame re-encodes to its bytes.
fn decode_all(bytes: &[u8], max: u32) -> (Vec<(u8, Vec<u8>)>, FrameEnd) {
    let mut out = Vec::new();
    let mut off = 0;
    loop {
        let rest = &bytes[off..];
        match frame::decode_frame(rest, max) {
            Ok(Decoded::Frame {
                kind,
                payload,
                consumed,
            }) => {
                assert!(
                    (frame::FRAME_HEADER_BYTES..=rest.len()).contains(&consumed),
                    "consumed {consumed} of {} bytes",
                    rest.len()
                );
                assert!(payload.len() as u64 <= u64::from(max));
                let again = frame::encode_frame(kind, payload, max)
                    .unwrap_or_else(|e| panic!("a decoded frame does not re-encode: {e}"));
                assert_eq!(again, &rest[..consumed], "re-encoded frame differs");
                out.push((kind, payload.to_vec()));
                off += consumed;
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed > 0, "Incomplete with needed = 0");
                let end = if rest.is_empty() {
                    FrameEnd::Eof
                } else {
                    FrameEnd::Truncated(needed)
                };
                return (out, end);
            }
            Err(e) => return (out, FrameEnd::Error(frame_error_key(&e))),
        }
    }
}

/// Target `frame_decode`: [`frame::decode_frame`] over arbitrary bytes.
/// Input: `[max selector][bytes…]`.
pub fn frame_decode(data: &[u8]) {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let max = FRAME_MAX_CHOICES[usize::from(sel) % FRAME_MAX_CHOICES.len()];
    let _ = decode_all(bytes, max);
}

/// An [`AsyncRead`] over a byte slice that is always ready and returns reads
/// of varying sizes (1..=17 bytes, from `seed`), to exercise every split of a
/// frame across reads.
struct SplitReader<'a> {
    data: &'a [u8],
    pos: usize,
    seed: u8,
    reads: usize,
}

impl AsyncRead for SplitReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let step = 1 + (usize::from(self.seed).wrapping_mul(self.reads + 7) % 17);
        let n = step.min(buf.remaining()).min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        self.reads += 1;
        Poll::Ready(Ok(()))
    }
}

/// Drive a future whose I/O is always ready to completion.
fn complete<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a reader that is always ready left the future pending"),
    }
}

/// Target `frame_stream`: the async stream reader [`frame::read_frame`], fed
/// in reads of fuzzer-chosen sizes, must yield exactly the frames
/// [`frame::decode_frame`] finds and end the same way (clean EOF, truncated
/// by the same number of bytes, or the same typed error).
/// Input: `[max selector][split seed][bytes…]`.
pub fn frame_stream(data: &[u8]) {
    let [sel, seed, bytes @ ..] = data else {
        return;
    };
    let max = FRAME_MAX_CHOICES[usize::from(*sel) % FRAME_MAX_CHOICES.len()];
    let (expected, expected_end) = decode_all(bytes, max);
    let mut r = SplitReader {
        data: bytes,
        pos: 0,
        seed: *seed,
        reads: 0,
    };
    let mut got = Vec::new();
    let end = loop {
        match complete(frame::read_frame(&mut r, max)) {
            Ok(Some(f)) => got.push((f.kind, f.payload)),
            Ok(None) => break FrameEnd::Eof,
            Err(FrameError::Truncated { needed }) => break FrameEnd::Truncated(needed),
            Err(e) => break FrameEnd::Error(frame_error_key(&e)),
        }
    };
    assert_eq!(got, expected, "stream reader and decode_frame disagree");
    assert_eq!(
        end, expected_end,
        "stream reader and decode_frame end differently"
    );
}

// ---------------------------------------------------------------- postcard

/// Decode `bytes` as `T`; if that works, check that encoding is stable under
/// a decode/encode round trip (`encode(decode(encode(v))) == encode(v)`).
fn postcard_round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let v: T = postcard::from_bytes(bytes).ok()?;
    let enc = postcard::to_stdvec(&v).expect("a decoded value re-encodes");
    let v2: T = postcard::from_bytes(&enc).unwrap_or_else(|e| {
        panic!(
            "re-encoding of a decoded {} does not decode: {e}",
            std::any::type_name::<T>()
        )
    });
    let enc2 = postcard::to_stdvec(&v2).expect("re-encodes");
    assert_eq!(
        enc,
        enc2,
        "unstable encoding of {}",
        std::any::type_name::<T>()
    );
    Some(v)
}

/// Target `client_proto`: the postcard decoders of the client protocol and of
/// log payloads. Input: `[type selector][postcard bytes…]`; the selector picks
/// `Request` (node side), `Response` (client side), `Command` (a replicated
/// command, decoded by every replica's apply loop) or the engine's `EntryKind`
/// (a log entry's payload, decoded on recovery).
pub fn client_proto(data: &[u8]) {
    use wraft_proto::{Command, Request, Response};
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => drop(postcard_round_trip::<Request>(bytes)),
        1 => drop(postcard_round_trip::<Response>(bytes)),
        2 => drop(postcard_round_trip::<Command>(bytes)),
        _ => drop(postcard_round_trip::<wraft_engine::EntryKind>(bytes)),
    }
}

/// Target `raft_message`: a stream of postcard [`wraft_engine::Message`]s, as
/// a peer link delivers them (each frame payload is one message), decoded one
/// after another. Oracle: every decoded message round-trips.
///
/// The decoded messages are deliberately *not* stepped into an engine: the
/// engine asserts Raft's invariants (`leader tried to overwrite committed
/// entry 2` is what the first such run found from a hand-made message), and a
/// member that violates the protocol is outside the trust model (SECURITY.md:
/// members are trusted). Input: `[ctl][message][ctl][message]…`.
pub fn raft_message(data: &[u8]) {
    use wraft_engine::Message;
    let mut rest = data;
    // Bounded by the input: every iteration consumes at least one byte.
    while let Some((_, tail)) = rest.split_first() {
        let Ok((_msg, after)) = postcard::take_from_bytes::<Message>(tail) else {
            return;
        };
        let used = &tail[..tail.len() - after.len()];
        let _ = postcard_round_trip::<Message>(used);
        rest = after;
    }
}

// ---------------------------------------------------------------- config

/// Target `config_toml`: [`wraft_config::NodeConfig::parse`] over
/// arbitrary text. An accepted config must render to TOML that parses and
/// validates again to the same rendering.
pub fn config_toml(data: &[u8]) {
    use wraft_config::NodeConfig;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = NodeConfig::parse(text) else {
        return;
    };
    let rendered = cfg.to_toml();
    let again = NodeConfig::parse(&rendered).unwrap_or_else(|e| {
        panic!("an accepted config renders to TOML that is refused: {e}\n{rendered}")
    });
    assert_eq!(again.to_toml(), rendered, "config rendering is not stable");
}

// ---------------------------------------------------------------- storage

fn create_durable(fs: &FaultFs, path: &Path, bytes: &[u8]) {
    let f = fs
        .open(path, OpenMode::CreateNew)
        .expect("create in the in-memory fs");
    f.write_all_at(bytes, 0).expect("write in the in-memory fs");
    f.sync_data().expect("sync in the in-memory fs");
}

/// Split fuzz input into segment files: a new segment starts at every
/// occurrence of the segment magic (at most 4 segments). Each is named by the
/// sequence number in its header when that is readable and unused, otherwise
/// by its position, so seeds taken from real logs keep their real names.
pub fn split_segments(data: &[u8]) -> Vec<(u64, &[u8])> {
    const MAGIC: &[u8; 8] = b"WRAFTWAL";
    const SEGMENTS_MAX: usize = 4;
    let mut starts = vec![0];
    let mut i = 1;
    while i + MAGIC.len() <= data.len() && starts.len() < SEGMENTS_MAX {
        if &data[i..i + MAGIC.len()] == MAGIC {
            starts.push(i);
            i += MAGIC.len();
        } else {
            i += 1;
        }
    }
    let mut out: Vec<(u64, &[u8])> = Vec::new();
    for (n, &s) in starts.iter().enumerate() {
        let e = starts.get(n + 1).copied().unwrap_or(data.len());
        let seg = &data[s..e];
        let from_header = seg
            .get(12..20)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .filter(|&q| (1..1 << 40).contains(&q) && out.iter().all(|(o, _)| *o != q));
        let seq = from_header.unwrap_or(n as u64 + 1 + (1 << 40));
        out.push((seq, seg));
    }
    out
}

/// Recompute the checksums of a segment (header CRC, then each record's
/// header and body CRC, walking the length fields), so that a mutated
/// segment is *well-formed* and recovery has to judge its content. Stops at
/// the first record whose length runs past the end.
pub fn reseal_segment(seg: &mut [u8]) {
    const SEG_HEADER: usize = 24;
    const REC_HEADER: usize = 12;
    if seg.len() < SEG_HEADER {
        return;
    }
    let c = crc32c::crc32c(&seg[..20]);
    seg[20..24].copy_from_slice(&c.to_le_bytes());
    let mut off = SEG_HEADER;
    while off + REC_HEADER <= seg.len() {
        let len = u32::from_le_bytes([seg[off + 4], seg[off + 5], seg[off + 6], seg[off + 7]]);
        let hcrc = crc32c::crc32c(&seg[off + 4..off + REC_HEADER]);
        seg[off..off + 4].copy_from_slice(&hcrc.to_le_bytes());
        let Some(end) = (off + REC_HEADER).checked_add(len as usize) else {
            return;
        };
        if end + 4 > seg.len() {
            return;
        }
        let bcrc = crc32c::crc32c_append(hcrc, &seg[off + REC_HEADER..end]);
        seg[end..end + 4].copy_from_slice(&bcrc.to_le_bytes());
        off = end + 4;
    }
}

/// Recompute a snapshot file's header CRC and whole-file BLAKE3 digest from
/// its own (possibly mutated) fields, so that mutations reach the metadata
/// decoder and the id and length checks. Leaves files too short, or whose
/// metadata length runs past the end, alone.
pub fn reseal_snapshot(file: &mut [u8]) {
    const HDR: usize = 60;
    if file.len() < HDR {
        return;
    }
    let meta_len = u32::from_le_bytes([file[12], file[13], file[14], file[15]]) as usize;
    let Some(body_off) = HDR.checked_add(meta_len).filter(|&o| o <= file.len()) else {
        return;
    };
    let mut body_len = [0u8; 8];
    body_len.copy_from_slice(&file[16..24]);
    let mut h = blake3::Hasher::new();
    h.update(&file[..16]);
    h.update(&file[HDR..body_off]);
    h.update(&file[body_off..]);
    h.update(&body_len);
    let digest = h.finalize();
    file[24..56].copy_from_slice(digest.as_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&file[..56]), &file[HDR..body_off]);
    file[56..60].copy_from_slice(&crc.to_le_bytes());
}

/// Target `wal_recovery`: open a log directory whose segment files are the
/// fuzz input ([`split_segments`]) on the in-memory [`FaultFs`]. Input:
/// `[mode][segments…]`; an odd mode first recomputes every checksum
/// ([`reseal_segment`]) so that mutations reach the replay logic instead of
/// stopping at a CRC mismatch. Whatever the
/// bytes, `Log::open` must return a typed error or a log in which every index
/// from `first_index` to `last_index` reads back with the term `term()`
/// reports, terms never decrease, and a second open of the recovered
/// directory succeeds with the same state and no torn tail.
pub fn wal_recovery(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let fs = Arc::new(FaultFs::new());
    let dir = Path::new(WAL_DIR);
    fs.create_dir_all(dir).expect("mkdir in the in-memory fs");
    for (seq, seg) in split_segments(data) {
        let mut seg = seg.to_vec();
        if mode % 2 == 1 {
            reseal_segment(&mut seg);
        }
        create_durable(&fs, &dir.join(format!("{seq:020}.wal")), &seg);
    }
    fs.sync_dir(dir).expect("sync dir");
    let cfg = storage_config();
    let Ok((log, rec)) = Log::open(fs.clone(), dir, &cfg, None) else {
        return;
    };
    assert_eq!(rec.first_index, rec.floor.0 + 1);
    assert!(
        rec.last_index >= rec.floor.0,
        "last index below the floor: {rec:?}"
    );
    assert_eq!(log.last_index(), rec.last_index);
    assert_eq!(log.hard_state(), rec.hard_state);
    let upto = rec
        .last_index
        .min(rec.floor.0.saturating_add(WAL_READBACK_MAX));
    let mut prev_term = rec.floor.1;
    for i in rec.first_index..=upto {
        let e = log
            .entry(i)
            .unwrap_or_else(|e| panic!("recovered index {i} unreadable: {e} ({rec:?})"));
        assert_eq!(e.index, i);
        assert_eq!(
            log.term(i).ok(),
            Some(e.term),
            "term({i}) disagrees with the entry"
        );
        assert!(e.term >= prev_term, "term decreases at index {i}: {rec:?}");
        prev_term = e.term;
    }
    if rec.last_index <= upto {
        assert_eq!(
            prev_term, rec.last_term,
            "last_term disagrees with the last entry"
        );
    }
    drop(log);
    let (_log2, rec2) = Log::open(fs, dir, &cfg, None)
        .unwrap_or_else(|e| panic!("reopening a recovered log fails: {e} (first open: {rec:?})"));
    assert_eq!(rec2.torn_tail, None, "a torn tail survived recovery");
    assert_eq!(
        (rec2.floor, rec2.last_index, rec2.last_term, rec2.hard_state),
        (rec.floor, rec.last_index, rec.last_term, rec.hard_state),
        "recovery is not idempotent"
    );
}

fn snap_path(ext: &str) -> PathBuf {
    Path::new(SNAP_DIR).join(format!("{SNAP_ID}{ext}"))
}

/// Read a recovered snapshot back through the public reader and check it.
fn read_back(store: &SnapshotStore, id: SnapshotId) {
    let mut reader = store
        .open_reader(id)
        .unwrap_or_else(|e| panic!("recovered snapshot {id} cannot be opened: {e}"));
    let body_len = reader.info().body_len;
    let mut total = 0u64;
    while let Some(chunk) = reader
        .next_chunk(4096)
        .unwrap_or_else(|e| panic!("recovered snapshot {id} unreadable: {e}"))
    {
        assert!(!chunk.is_empty() && chunk.len() <= 4096);
        total += chunk.len() as u64;
    }
    assert_eq!(total, body_len, "body length disagrees with the header");
    reader
        .verify()
        .unwrap_or_else(|e| panic!("recovered snapshot {id} fails verify(): {e}"));
}

/// The bytes of [`OWNER_ID`]'s file, and its body: made once.
pub fn owner_snapshot() -> &'static (Vec<u8>, Vec<u8>) {
    static OWNER: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    OWNER.get_or_init(|| {
        let body: Vec<u8> = (0..6000u32).map(|i| (i * 13 % 241) as u8).collect();
        let fs = Arc::new(FaultFs::new());
        let (store, _) =
            SnapshotStore::open(fs.clone(), Path::new(SNAP_DIR), &storage_config()).expect("open");
        let mut w = store
            .begin(wraft_storage::SnapshotMeta {
                id: OWNER_ID,
                membership: wraft_storage::Membership {
                    voters: vec![1, 2, 3],
                    learners: vec![],
                },
                format: "wraft-machines/1".into(),
            })
            .expect("begin");
        for chunk in body.chunks(1000) {
            w.write_chunk(chunk).expect("write");
        }
        let info = w.finish().expect("finish");
        (fs.read_file(&info.path).expect("owner file"), body)
    })
}

/// Target `snapshot_open`: a snapshot directory holding a fuzzed
/// `<SNAP_ID>.snap` (next to a valid older snapshot [`OWNER_ID`] it may share bytes with) and,
/// when the first input byte is odd, also a fuzzed
/// incoming transfer (`.partial` + `.partial.progress` of a newer id, the
/// progress file being the last 48 input bytes). `SnapshotStore::open` must
/// return a typed error or a store whose newest snapshot reads back and
/// verifies (the fuzzed one, or the owner when the fuzzed one is refused); a snapshot it accepts
/// must carry the id its file name says.
/// Input: `[mode][file bytes…]`; mode bit 1 (value 2) first recomputes the
/// header CRC and the digest ([`reseal_snapshot`]).
pub fn snapshot_open(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let fs = Arc::new(FaultFs::new());
    let dir = Path::new(SNAP_DIR);
    fs.create_dir_all(dir).expect("mkdir");
    let newer = SnapshotId {
        last_index: SNAP_ID.last_index + 50,
        last_term: SNAP_ID.last_term,
    };
    let (snap, progress) = if mode % 2 == 1 && bytes.len() >= PROGRESS_FILE_BYTES {
        let (s, p) = bytes.split_at(bytes.len() - PROGRESS_FILE_BYTES);
        (s, Some(p))
    } else {
        (bytes, None)
    };
    let mut snap = snap.to_vec();
    if mode & 2 != 0 {
        reseal_snapshot(&mut snap);
    }
    create_durable(&fs, &snap_path(".snap"), &snap);
    create_durable(
        &fs,
        &dir.join(format!("{OWNER_ID}.snap")),
        &owner_snapshot().0,
    );
    if let Some(progress) = progress {
        create_durable(&fs, &dir.join(format!("{newer}.partial")), &snap);
        create_durable(
            &fs,
            &dir.join(format!("{newer}.partial.progress")),
            progress,
        );
    }
    fs.sync_dir(dir).expect("sync dir");
    let Ok((store, rec)) = SnapshotStore::open(fs.clone(), dir, &storage_config()) else {
        return;
    };
    if let Some(latest) = &rec.latest {
        assert!(
            latest.meta.id == SNAP_ID || latest.meta.id == OWNER_ID,
            "accepted a snapshot under another id's name: {}",
            latest.meta.id
        );
        read_back(&store, latest.meta.id);
    }
    for info in store.list() {
        read_back(&store, info.id());
    }
    for (id, durable) in &rec.resumable {
        assert_eq!(*id, newer);
        let inc = store
            .incoming(*id)
            .unwrap_or_else(|e| panic!("a resumable transfer cannot be resumed: {e}"));
        assert_eq!(inc.durable_offset(), *durable, "resumed at another offset");
    }
}

/// Target `snapshot_incoming`: the receiving side of a snapshot transfer,
/// driven by a fuzzed sequence of operations: write a chunk at an offset,
/// sync, crash-and-resume (drop the transfer and reopen it), finalize.
/// Whatever the chunks, `write_at` refuses gaps and oversize files with typed
/// errors, and a snapshot that `finalize` accepts re-verifies and reads back.
///
/// Input: a sequence of ops, each `[op]` then, for a write,
/// `[offset back-off u16 LE][len u16 LE][len bytes]`: the chunk is written at
/// `written_offset - back-off` (clamped at 0), so most writes are contiguous
/// and the fuzzer can still produce overlaps, rewrites and (with op 4) gaps.
pub fn snapshot_incoming(data: &[u8]) {
    let fs = Arc::new(FaultFs::new());
    let dir = Path::new(SNAP_DIR);
    let cfg = storage_config();
    let Ok((store, _)) = SnapshotStore::open(fs.clone(), dir, &cfg) else {
        panic!("an empty snapshot store does not open");
    };
    let mut inc = store.incoming(SNAP_ID).expect("start an incoming snapshot");
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 5 {
            0 | 4 => {
                let Some((hdr, tail)) = rest.split_first_chunk::<4>() else {
                    return;
                };
                let back = u64::from(u16::from_le_bytes([hdr[0], hdr[1]]));
                let len = usize::from(u16::from_le_bytes([hdr[2], hdr[3]])).min(tail.len());
                let (chunk, tail) = tail.split_at(len);
                rest = tail;
                let offset = if op % 5 == 4 {
                    inc.written_offset() + back // a gap unless back == 0
                } else {
                    inc.written_offset().saturating_sub(back)
                };
                let before = inc.written_offset();
                match inc.write_at(offset, chunk) {
                    Ok(()) => assert!(offset <= before, "write_at accepted a gap"),
                    Err(_) => assert_eq!(inc.written_offset(), before),
                }
            }
            1 => {
                let _ = inc.sync();
            }
            2 => {
                let durable = inc.durable_offset();
                drop(inc);
                inc = store
                    .incoming(SNAP_ID)
                    .expect("resume an incoming snapshot");
                assert_eq!(inc.durable_offset(), durable, "resumed at another offset");
            }
            _ => {
                if let Ok(info) = inc.finalize() {
                    assert_eq!(info.meta.id, SNAP_ID);
                    read_back(&store, SNAP_ID);
                }
                return;
            }
        }
    }
}
