//! The default snapshot format cuts the state at content-defined boundaries and compresses each
//! piece on its own: what did not change between two snapshots gives byte-identical chunks, which
//! is what lets the host keep and send each chunk once.

use std::collections::{BTreeMap, HashSet};

use wraft_guest::testing::Harness;
use wraft_guest::{
    AppError, CDC_MAX_BYTES, CDC_MIN_BYTES, DefaultSnapshot, EntryCtx, FRAME_HEADER_BYTES, Json,
    Records, StateMachine,
};

#[derive(Default)]
struct Map {
    map: BTreeMap<String, String>,
}

impl StateMachine for Map {
    const NAME: &'static str = "map";
    const VERSION: &'static str = "1";
    type Codec = Json;
    type Snapshot = DefaultSnapshot;
    type Command = (String, String);
    type Output = ();
    type Query = String;
    type Reply = Option<String>;

    fn apply(&mut self, _: &EntryCtx, (k, v): (String, String)) -> Result<(), AppError> {
        self.map.insert(k, v);
        Ok(())
    }

    fn query(&self, k: String) -> Result<Option<String>, AppError> {
        Ok(self.map.get(&k).cloned())
    }
}

impl Records for Map {
    type Record<'a> = (&'a str, &'a str);
    type OwnedRecord = (String, String);
    fn records(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    fn restore_record(&mut self, (k, v): (String, String)) -> Result<(), String> {
        self.map.insert(k, v);
        Ok(())
    }
}

/// A value that compresses about as real data does (hex of a pseudo-random stream: ~2:1).
fn value(seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..100).map(|_| format!("{:x}", rng.u8(..16))).collect()
}

fn put(h: &mut Harness<Map>, key: &str, seed: u64) {
    let cmd = serde_json::to_vec(&(key, value(seed))).unwrap();
    h.apply(&cmd).unwrap();
}

/// About 3.4 MB of serialized state: some fifty pieces.
fn filled(keys: u64) -> Harness<Map> {
    let mut h = Harness::<Map>::new();
    for i in 0..keys {
        put(&mut h, &format!("key-{i:08}"), i);
    }
    h
}

fn new_chunks(before: &[Vec<u8>], after: &[Vec<u8>]) -> usize {
    let old: HashSet<&[u8]> = before.iter().map(Vec::as_slice).collect();
    after.iter().filter(|c| !old.contains(c.as_slice())).count()
}

const HOST_CHUNK_BYTES: usize = 1 << 20;

#[test]
fn one_changed_value_changes_at_most_two_chunks_of_the_snapshot() {
    let mut h = filled(30_000);
    let before = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    assert!(before.len() >= 20, "{} chunks", before.len());
    put(&mut h, "key-00012345", 999_999);
    let after = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    let changed = new_chunks(&before, &after);
    assert!(
        (1..=2).contains(&changed),
        "{changed} of {} chunks changed",
        after.len()
    );
}

#[test]
fn an_inserted_key_shifts_the_stream_but_changes_only_the_chunks_around_it_and_the_last() {
    let mut h = filled(30_000);
    let before = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    // Sorts between key-00010000 and key-00010001: every byte after it moves.
    put(&mut h, "key-00010000a", 7);
    let after = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    let changed = new_chunks(&before, &after);
    // The piece holding the new record (and the cut point it may move), and the last piece,
    // whose trailer counts records and bytes.
    assert!(
        (2..=3).contains(&changed),
        "{changed} of {} chunks changed",
        after.len()
    );
}

#[test]
fn pieces_are_cut_between_the_minimum_and_maximum_and_each_is_one_chunk() {
    let h = filled(30_000);
    let chunks = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    let raw: usize = 30_000 * (4 + 1 + 12 + 1 + 100);
    assert!(
        chunks.len() >= raw / CDC_MAX_BYTES && chunks.len() <= raw / CDC_MIN_BYTES + 1,
        "{} chunks for {raw} stream bytes",
        chunks.len()
    );
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(&c[..4], b"WGS2", "chunk {i}");
        let last = i + 1 == chunks.len();
        assert_eq!(c[4], u8::from(last), "chunk {i}: flags");
        assert!(c.len() - FRAME_HEADER_BYTES < CDC_MAX_BYTES, "chunk {i}");
    }
}

#[test]
fn small_host_chunks_split_frames_and_restore_to_the_same_state_and_bytes() {
    let h = filled(3_000);
    let whole = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    let small = h.snapshot(4096).unwrap();
    assert!(small.len() > 2 * whole.len(), "{} chunks", small.len());
    assert!(small.iter().any(|c| c[4] & 2 != 0), "no continued frame");
    for chunks in [&whole, &small] {
        let r = Harness::<Map>::restore(chunks.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(r.snapshot(HOST_CHUNK_BYTES).unwrap(), whole);
        assert_eq!(
            r.query(br#""key-00002999""#).unwrap(),
            h.query(br#""key-00002999""#).unwrap()
        );
    }
}

fn resealed(mut chunk: Vec<u8>, flags: u8) -> Vec<u8> {
    chunk[4] = flags;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&chunk[..9]), &chunk[13..]);
    chunk[9..13].copy_from_slice(&crc.to_le_bytes());
    chunk
}

fn restore_err(chunks: &[Vec<u8>]) -> String {
    match Harness::<Map>::restore(chunks.iter().map(Vec::as_slice)) {
        Ok(_) => panic!("a damaged snapshot restored"),
        Err(e) => e,
    }
}

#[test]
fn a_missing_repeated_or_mislabelled_chunk_fails_the_restore_naming_it() {
    let h = filled(3_000);
    let chunks = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    let n = chunks.len();
    assert!(n >= 3, "{n} chunks");

    let e = restore_err(&chunks[..n - 1]);
    assert!(e.contains("no final chunk"), "{e}");

    let mut gap = chunks.clone();
    gap.remove(1);
    let e = restore_err(&gap);
    assert!(e.contains("record") || e.contains("trailer"), "{e}");

    let mut twice = chunks.clone();
    twice.insert(1, chunks[1].clone());
    let e = restore_err(&twice);
    assert!(e.contains("record") || e.contains("trailer"), "{e}");

    // A split frame whose first piece claims to be whole.
    let mut small = h.snapshot(4096).unwrap();
    let split = small.iter().position(|c| c[4] & 2 != 0).unwrap();
    small[split] = resealed(small[split].clone(), 0);
    let e = restore_err(&small);
    assert!(
        e.contains(&format!("chunk {split}: ends inside a zstd frame")),
        "{e}"
    );

    let mut flipped = chunks.clone();
    flipped[1][20] ^= 1;
    let e = restore_err(&flipped);
    assert!(e.contains("chunk 1: checksum mismatch"), "{e}");
}

#[test]
fn a_state_that_does_not_compress_snapshots_and_restores() {
    // Pieces of varying length whose frames are larger than their input: the compressor's
    // output buffer must fit each one, whatever the one before it needed.
    let mut h = Harness::<Map>::new();
    let mut rng = fastrand::Rng::with_seed(3);
    for i in 0..300 {
        let len = rng.usize(100..40_000);
        let noise: String = (0..len).map(|_| rng.alphanumeric()).collect();
        let cmd = serde_json::to_vec(&(format!("k{i:04}"), noise)).unwrap();
        h.apply(&cmd).unwrap();
    }
    let chunks = h.snapshot(HOST_CHUNK_BYTES).unwrap();
    assert!(chunks.len() >= 10, "{} chunks", chunks.len());
    let r = Harness::<Map>::restore(chunks.iter().map(Vec::as_slice)).unwrap();
    assert_eq!(r.snapshot(HOST_CHUNK_BYTES).unwrap(), chunks);
}
