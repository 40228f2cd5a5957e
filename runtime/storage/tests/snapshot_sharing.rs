//! Snapshot files that share unchanged bytes with older ones: exact reads, only the changed
//! bytes written, owners kept as packs while borrowed and deleted after, crash safety, and a
//! missing owner caught.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wraft_storage::Vfs;
use wraft_storage::fault::{CrashMode, FaultFs};
use wraft_storage::{
    Membership, SNAPSHOT_HEADER_BYTES, SnapshotId, SnapshotInfo, SnapshotMeta, SnapshotStore,
    StorageConfig,
};

const DIR: &str = "/node/snap";
/// Bytes per piece of a test body (the unit a writer shares).
const PIECE: usize = 500;
const PIECES: usize = 12;

fn cfg() -> StorageConfig {
    StorageConfig {
        snapshot_sync_every_bytes: 1024,
        snapshot_io_chunk_bytes: 256,
        ..StorageConfig::default()
    }
}

fn open(fs: &FaultFs) -> (SnapshotStore, wraft_storage::SnapshotRecovery) {
    SnapshotStore::open(Arc::new(fs.clone()), Path::new(DIR), &cfg()).expect("open store")
}

fn id(index: u64) -> SnapshotId {
    SnapshotId {
        last_index: index,
        last_term: 3,
    }
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        id: id(index),
        membership: Membership {
            voters: vec![1, 2, 3],
            learners: vec![],
        },
        format: "kv/1".into(),
    }
}

/// Piece `i` of a body in `generation` `g`: pieces listed in `changed` differ from generation 0.
fn piece(i: usize, changed: bool, g: u64) -> Vec<u8> {
    let seed = if changed { g * 7919 + 1 } else { 0 };
    (0..PIECE)
        .map(|j| ((i * 31 + j * 7) as u64 ^ seed.wrapping_mul(0x9E37_79B9)) as u8)
        .collect()
}

fn body(changed: &[usize], g: u64) -> Vec<Vec<u8>> {
    (0..PIECES)
        .map(|i| piece(i, changed.contains(&i), g))
        .collect()
}

/// Where piece `i` lies in a snapshot file (the metadata is the same length in every test file).
fn piece_at(i: usize) -> u64 {
    SNAPSHOT_HEADER_BYTES + meta_len() + (i * PIECE) as u64
}

fn meta_len() -> u64 {
    postcard::to_allocvec(&meta(1)).expect("meta").len() as u64
}

/// Write snapshot `index` from `pieces`, sharing each piece `share_from` holds unchanged
/// (`unchanged(i)`) instead of writing it.
fn write(
    store: &SnapshotStore,
    index: u64,
    pieces: &[Vec<u8>],
    share_from: Option<u64>,
    unchanged: impl Fn(usize) -> bool,
) -> wraft_storage::Result<SnapshotInfo> {
    let mut w = store.begin(meta(index))?;
    for (i, p) in pieces.iter().enumerate() {
        let shared = match share_from {
            Some(owner) if unchanged(i) => {
                w.share(&[&p[..100], &p[100..]], id(owner), piece_at(i))?
            }
            _ => false,
        };
        if !shared {
            w.write_chunk(p)?;
        }
    }
    w.finish()
}

fn read_body(store: &SnapshotStore, index: u64) -> Vec<u8> {
    let mut r = store.open_reader(id(index)).expect("reader");
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk(333).expect("chunk") {
        out.extend(c);
    }
    out
}

/// Snapshot `index` passes a full verification (its whole-file digest over its logical bytes).
fn verify(store: &SnapshotStore, index: u64) {
    store
        .open_reader(id(index))
        .expect("reader")
        .verify()
        .unwrap_or_else(|e| panic!("snapshot {index}: {e}"));
}

fn names(fs: &FaultFs) -> Vec<String> {
    let mut n: Vec<String> = fs
        .paths()
        .iter()
        .filter(|p| p.starts_with(DIR))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    n.sort();
    n
}

fn name(index: u64, ext: &str) -> String {
    format!("{}{ext}", id(index))
}

/// Run `work` on a store over a copy of `base` cut off after each possible number of bytes
/// written (as many as `work` writes when not cut), crash each result in every mode, and hand
/// the reopened store to `check` with a description of the point, whether `work` finished,
/// and what opening found. Returns the number of points checked.
fn at_every_crash_point(
    base: &FaultFs,
    work: impl Fn(&SnapshotStore) -> bool,
    check: impl Fn(&str, bool, CrashMode, &FaultFs, SnapshotStore, wraft_storage::SnapshotRecovery),
) -> usize {
    let start = base.bytes_written();
    let probe = base.fork();
    assert!(work(&open(&probe).0), "the uncut run fails");
    let total = probe.bytes_written() - start;
    let mut checked = 0;
    for cut in 0..=total {
        let fs = base.fork();
        let (store, _) = open(&fs);
        fs.set_write_budget(Some(cut));
        let finished = work(&store);
        drop(store);
        for mode in [
            CrashMode::LoseUnsynced,
            CrashMode::KeepWritten,
            CrashMode::KeepDataLoseNames,
        ] {
            let crashed = fs.fork();
            crashed.crash(mode);
            let (store, rec) = open(&crashed);
            let ctx = format!("cut at byte {cut} of {total}, {mode:?}");
            check(&ctx, finished, mode, &crashed, store, rec);
            checked += 1;
        }
    }
    eprintln!("{checked} crash points over {total} bytes");
    checked
}

#[test]
fn a_sharing_snapshot_reads_back_exactly_and_writes_only_the_changed_pieces() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let first = body(&[], 0);
    write(&store, 10, &first, None, |_| false).expect("first");
    let changed = [3, 4, 9];
    let second = body(&changed, 1);
    let before = fs.bytes_written();
    let info = write(&store, 20, &second, Some(10), |i| !changed.contains(&i)).expect("second");
    let written = fs.bytes_written() - before;

    assert_eq!(read_body(&store, 20), second.concat());
    assert_eq!(read_body(&store, 10), first.concat());
    assert_eq!(info.shared_bytes, ((PIECES - changed.len()) * PIECE) as u64);
    // The header and metadata, the three changed pieces, the header patch and a trailer of two
    // runs: nowhere near the 6,000 bytes of the body.
    let floor = (changed.len() * PIECE) as u64;
    assert!(
        written >= floor && written < floor + 400,
        "wrote {written} bytes for {floor} changed bytes"
    );
    // A full verification (what opening does for the newest) reads the shared bytes from the
    // first file and checks the whole-file digest.
    verify(&store, 20);
    drop(store);
    let (store, rec) = open(&fs);
    let latest = rec.latest.expect("latest");
    assert_eq!(latest.id(), id(20));
    assert_eq!(latest.shared_bytes, info.shared_bytes);
    assert!(rec.quarantined.is_empty());
    assert_eq!(read_body(&store, 20), second.concat());
}

#[test]
fn a_range_the_owner_borrows_is_followed_to_the_file_that_holds_it() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    write(&store, 10, &body(&[], 0), None, |_| false).expect("s10");
    // s20 borrows every piece but 5 from s10.
    let s20 = body(&[5], 1);
    write(&store, 20, &s20, Some(10), |i| i != 5).expect("s20");
    // s30 names s20 for everything: pieces s20 borrowed resolve to s10, piece 5 to s20 itself.
    let s30 = body(&[5], 1);
    let info = write(&store, 30, &s30, Some(20), |_| true).expect("s30");
    assert_eq!(info.shared_bytes, (PIECES * PIECE) as u64);
    assert_eq!(read_body(&store, 30), s30.concat());
    verify(&store, 30);

    // A range straddling held and borrowed bytes is refused (the caller writes it).
    let mut w = store.begin(meta(40)).expect("begin");
    let straddling = [s20[4].clone(), s20[5].clone()].concat();
    assert!(
        !w.share(&[&straddling], id(20), piece_at(4)).expect("share"),
        "a range half borrowed by its owner must not be shared"
    );
    assert!(
        !w.share(&[&s20[0]], id(99), piece_at(0)).expect("share"),
        "no such owner"
    );
}

#[test]
fn retention_keeps_a_borrowed_owner_as_a_pack_and_deletes_it_when_nothing_borrows() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let s1 = body(&[], 0);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    let s2 = body(&[0], 2);
    write(&store, 2, &s2, Some(1), |i| i != 0).expect("s2");
    let s3 = body(&[0, 1], 3);
    write(&store, 3, &s3, Some(2), |i| i > 1).expect("s3");
    // Retain count 2: s1 is retired, but s2 and s3 borrow from it.
    assert_eq!(
        names(&fs),
        vec![name(1, ".pack"), name(2, ".snap"), name(3, ".snap")]
    );
    assert_eq!(store.packs(), vec![id(1)]);
    assert_eq!(read_body(&store, 3), s3.concat());

    // Reopened, the pack is still known and still read through.
    drop(store);
    let (store, rec) = open(&fs);
    assert!(rec.quarantined.is_empty());
    assert_eq!(store.packs(), vec![id(1)]);
    assert_eq!(read_body(&store, 3), s3.concat());
    assert_eq!(read_body(&store, 2), s2.concat());

    // A new snapshot holding everything itself retires s2: s3 still needs s1.
    let s4 = body(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 4);
    write(&store, 4, &s4, None, |_| false).expect("s4");
    assert_eq!(
        names(&fs),
        vec![name(1, ".pack"), name(3, ".snap"), name(4, ".snap")]
    );
    // And the next one retires s3, the last borrower: the pack goes.
    let s5 = write(&store, 5, &s4, Some(4), |_| true).expect("s5");
    assert_eq!(s5.shared_bytes, (PIECES * PIECE) as u64);
    assert_eq!(names(&fs), vec![name(4, ".snap"), name(5, ".snap")]);
    assert!(store.packs().is_empty());
    assert_eq!(read_body(&store, 5), s4.concat());
    verify(&store, 5);
}

#[test]
fn a_writer_in_progress_keeps_the_owner_it_borrows_from() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let s1 = body(&[], 0);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    let mut w = store.begin(meta(9)).expect("begin s9");
    assert!(w.share(&[&s1[0]], id(1), piece_at(0)).expect("share"));
    // Two newer snapshots retire s1 while the writer still needs it.
    write(&store, 2, &body(&[0], 2), None, |_| false).expect("s2");
    write(&store, 3, &body(&[0], 3), None, |_| false).expect("s3");
    assert_eq!(store.packs(), vec![id(1)]);
    for p in &s1[1..] {
        w.write_chunk(p).expect("write");
    }
    w.finish().expect("s9");
    assert_eq!(read_body(&store, 9), s1.concat());
    assert_eq!(store.packs(), vec![id(1)], "s9 borrows from it now");

    // A writer dropped unfinished releases its owner.
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    let mut w = store.begin(meta(9)).expect("begin s9");
    assert!(w.share(&[&s1[0]], id(1), piece_at(0)).expect("share"));
    write(&store, 2, &body(&[0], 2), None, |_| false).expect("s2");
    write(&store, 3, &body(&[0], 3), None, |_| false).expect("s3");
    assert_eq!(store.packs(), vec![id(1)]);
    drop(w);
    assert!(store.packs().is_empty());
    assert_eq!(names(&fs), vec![name(2, ".snap"), name(3, ".snap")]);
}

#[test]
fn a_crash_at_every_byte_of_a_sharing_write_and_its_retention_leaves_the_old_or_the_new_state() {
    let base = FaultFs::new();
    let (store, _) = open(&base);
    let s1 = body(&[], 0);
    let s2 = body(&[2], 2);
    let s3 = body(&[2, 7], 3);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    write(&store, 2, &s2, Some(1), |i| i != 2).expect("s2");
    drop(store);
    let work = |store: &SnapshotStore| write(store, 3, &s3, Some(2), |i| i != 2 && i != 7).is_ok();
    at_every_crash_point(&base, work, |ctx, finished, mode, crashed, store, rec| {
        assert!(rec.quarantined.is_empty(), "{ctx}: {:?}", rec.quarantined);
        let latest = rec.latest.unwrap_or_else(|| panic!("{ctx}: no snapshot"));
        let want = match latest.id().last_index {
            2 => &s2,
            3 => &s3,
            other => panic!("{ctx}: unexpected snapshot {other}"),
        };
        if finished && mode == CrashMode::LoseUnsynced {
            assert_eq!(latest.id(), id(3), "{ctx}: a finished snapshot was lost");
        }
        for info in store.list() {
            let expect = [(1, &s1), (2, &s2), (3, &s3)]
                .iter()
                .find(|(i, _)| *i == info.id().last_index)
                .map(|(_, b)| b.concat())
                .unwrap_or_else(|| panic!("{ctx}: unexpected {:?}", info.id()));
            assert_eq!(read_body(&store, info.id().last_index), expect, "{ctx}");
        }
        assert_eq!(
            read_body(&store, latest.id().last_index),
            want.concat(),
            "{ctx}"
        );
        // No pack nothing borrows: s1 is a pack only while s2 or s3 is a snapshot.
        let files = names(crashed);
        assert!(
            !files.contains(&name(1, ".pack")) || store.packs() == vec![id(1)],
            "{ctx}: {files:?}"
        );
        assert!(
            files.iter().all(|f| !f.ends_with(".tmp")),
            "{ctx}: {files:?}"
        );
    });
}

#[test]
fn a_snapshot_whose_owner_is_missing_is_quarantined() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let s1 = body(&[], 0);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    write(&store, 2, &body(&[1], 2), Some(1), |i| i != 1).expect("s2");
    drop(store);
    // Lose the owner behind the store's back (an operator's `rm`).
    let path = PathBuf::from(DIR).join(name(1, ".snap"));
    fs.remove_file(&path).expect("rm");
    fs.sync_dir(Path::new(DIR)).expect("sync");
    let (_, rec) = open(&fs);
    assert_eq!(rec.quarantined.len(), 1, "{:?}", rec.quarantined);
    assert!(rec.latest.is_none());
}

#[test]
fn a_sharing_file_reads_through_its_owners_outside_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) =
        SnapshotStore::open(Arc::new(wraft_storage::StdFs), dir.path(), &cfg()).expect("open");
    let s1 = body(&[], 0);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    let s2 = body(&[6], 2);
    let info = write(&store, 2, &s2, Some(1), |i| i != 6).expect("s2");
    let inspected = wraft_storage::inspect_snapshot_file(&info.path, true).expect("inspect");
    assert_eq!(inspected.digest, info.digest);
    assert_eq!(inspected.shared_bytes, info.shared_bytes);
    let file = wraft_storage::open_snapshot_file(&info.path).expect("open file");
    let mut bytes = vec![0u8; info.body_len as usize];
    wraft_storage::read_exact_at(file.as_ref(), &mut bytes, info.body_offset()).expect("read");
    assert_eq!(bytes, s2.concat());
    let on_disk = std::fs::metadata(&info.path).expect("stat").len();
    assert!(
        on_disk > info.file_len,
        "a trailer follows the logical bytes"
    );
    // Copied away from its owner, the file says what it misses.
    let alone = tempfile::tempdir().expect("tempdir");
    let copy = alone.path().join(info.path.file_name().expect("name"));
    std::fs::copy(&info.path, &copy).expect("copy");
    let e = wraft_storage::inspect_snapshot_file(&copy, false)
        .expect_err("owner missing")
        .to_string();
    assert!(
        e.contains(&id(1).to_string()) && e.contains("missing"),
        "{e}"
    );
}

/// The raw file bytes of snapshot `index` built from `pieces` in a store of its own (what a
/// leader ships).
fn sender_file(index: u64, pieces: &[Vec<u8>]) -> Vec<u8> {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let info = write(&store, index, pieces, None, |_| false).expect("sender snapshot");
    fs.read_file(&info.path).expect("sender bytes")
}

/// Receive `file` (snapshot `index` of `pieces`) into `store`, sharing every piece `unchanged`
/// says snapshot `owner` holds, writing the rest; `stop_after` pieces, then returns without
/// finalizing (a crash or an abandoned transfer). Returns whether it finalized, and the offset
/// it started (resumed) at.
fn receive_sharing(
    store: &SnapshotStore,
    index: u64,
    file: &[u8],
    owner: u64,
    unchanged: impl Fn(usize) -> bool,
    stop_after: usize,
) -> wraft_storage::Result<(bool, u64)> {
    let mut inc = store.incoming(id(index))?;
    let head = piece_at(0) as usize;
    let start = inc.durable_offset() as usize;
    if start < head {
        inc.write_at(start as u64, &file[start..head])?;
    }
    for i in 0..PIECES {
        let at = piece_at(i);
        let bytes = &file[at as usize..at as usize + PIECE];
        if at + PIECE as u64 <= inc.written_offset() {
            continue;
        }
        if i >= stop_after {
            return Ok((false, start as u64));
        }
        if !(unchanged(i) && inc.share_at(at, bytes, id(owner), piece_at(i))?) {
            inc.write_at(at, bytes)?;
        }
        if i % 3 == 2 {
            inc.sync()?;
        }
    }
    inc.finalize()?;
    Ok((true, start as u64))
}

#[test]
fn a_received_snapshot_shares_what_the_node_holds_and_resumes_after_a_crash_at_every_byte() {
    let base = FaultFs::new();
    let (store, _) = open(&base);
    let held = body(&[], 0);
    write(&store, 10, &held, None, |_| false).expect("s10");
    drop(store);
    let changed = [1, 6, 7];
    let pieces = body(&changed, 1);
    let file = sender_file(20, &pieces);
    let unchanged = |i: usize| !changed.contains(&i);
    let work = |store: &SnapshotStore| {
        receive_sharing(store, 20, &file, 10, unchanged, PIECES).is_ok_and(|(done, _)| done)
    };
    at_every_crash_point(&base, work, |ctx, _, _, _, store, rec| {
        assert!(rec.quarantined.is_empty(), "{ctx}: {:?}", rec.quarantined);
        // Whatever survived, the transfer completes (resumed or afresh) with the leader's
        // bytes, sharing what the node holds.
        if store.list().iter().all(|i| i.id() != id(20)) {
            let (done, start) = receive_sharing(&store, 20, &file, 10, unchanged, PIECES)
                .unwrap_or_else(|e| panic!("{ctx}: resuming: {e}"));
            assert!(done, "{ctx}");
            let durable = rec.resumable.first().map_or(0, |(_, d)| *d);
            assert_eq!(
                start, durable,
                "{ctx}: resumed elsewhere than its durable offset"
            );
        }
        let r = store.open_reader(id(20)).expect("reader");
        let mut got = vec![0u8; file.len()];
        r.read_file_at(0, &mut got).expect("read");
        assert_eq!(got, file, "{ctx}");
        r.verify().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert!(r.info().shared_bytes > 0, "{ctx}");
        assert_eq!(read_body(&store, 10), held.concat(), "{ctx}");
    });
}

#[test]
fn an_interrupted_sharing_transfer_keeps_its_owner_across_a_restart_until_it_is_abandoned() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let held = body(&[], 0);
    write(&store, 10, &held, None, |_| false).expect("s10");
    let pieces = body(&[2], 1);
    let file = sender_file(90, &pieces);
    // Half the pieces, made durable, then the process dies.
    assert!(
        !receive_sharing(&store, 90, &file, 10, |i| i != 2, 6)
            .expect("half")
            .0
    );
    drop(store);
    fs.crash(CrashMode::LoseUnsynced);
    let (store, rec) = open(&fs);
    let (resumable, durable) = rec.resumable.first().copied().expect("resumable");
    assert_eq!(resumable, id(90));
    assert!(durable > piece_at(3), "{durable}");
    // Two new snapshots retire s10; the partial still borrows from it, so it stays as a pack.
    write(&store, 20, &body(&[0], 2), None, |_| false).expect("s20");
    write(&store, 30, &body(&[0], 3), None, |_| false).expect("s30");
    assert_eq!(store.packs(), vec![id(10)]);
    // Resumed, it completes from its durable offset with the leader's bytes.
    let (done, start) = receive_sharing(&store, 90, &file, 10, |i| i != 2, PIECES).expect("resume");
    assert!(done);
    assert_eq!(start, durable, "resumed from its durable offset");
    let r = store.open_reader(id(90)).expect("reader");
    r.verify().expect("digest");
    assert!(r.info().shared_bytes >= (PIECES as u64 - 1) * PIECE as u64 - PIECE as u64);
    drop(r);

    // Abandoned instead, the partial's claim goes and so does the pack.
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    write(&store, 10, &held, None, |_| false).expect("s10");
    assert!(
        !receive_sharing(&store, 90, &file, 10, |i| i != 2, 6)
            .expect("half")
            .0
    );
    write(&store, 20, &body(&[0], 2), None, |_| false).expect("s20");
    write(&store, 30, &body(&[0], 3), None, |_| false).expect("s30");
    assert_eq!(store.packs(), vec![id(10)]);
    store.incoming(id(90)).expect("resume").abort();
    assert!(store.packs().is_empty());
    let files = names(&fs);
    assert!(files.iter().all(|f| !f.contains(".partial")), "{files:?}");
}

#[test]
fn an_owner_that_fails_its_header_check_is_kept_as_a_pack_for_the_good_snapshot_that_shares_it() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let s1 = body(&[], 0);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    let s2 = body(&[4], 2);
    write(&store, 2, &s2, Some(1), |i| i != 4).expect("s2");
    drop(store);
    // A bit of s1's header rots: s1 fails its (header-only) check at open, but s2, the newest,
    // verifies in full, reading the bytes it shares from s1.
    assert!(fs.flip_bit(&PathBuf::from(DIR).join(name(1, ".snap")), 20, 3));
    let (store, rec) = open(&fs);
    assert_eq!(rec.latest.expect("latest").id(), id(2));
    assert_eq!(
        rec.quarantined,
        vec![PathBuf::from(DIR).join(name(1, ".pack"))]
    );
    assert_eq!(store.packs(), vec![id(1)]);
    assert_eq!(read_body(&store, 2), s2.concat());
    assert!(store.list().iter().all(|i| i.id() != id(1)));
}

#[test]
fn a_writer_does_not_share_bytes_an_owner_no_longer_holds() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    let s1 = body(&[], 0);
    write(&store, 1, &s1, None, |_| false).expect("s1");
    // Piece 3 of s1 rots after an index named it.
    let at = piece_at(3) as usize + 10;
    assert!(fs.flip_bit(&PathBuf::from(DIR).join(name(1, ".snap")), at, 0));
    let info = write(&store, 2, &s1, Some(1), |_| true).expect("s2");
    assert_eq!(
        info.shared_bytes,
        ((PIECES - 1) * PIECE) as u64,
        "every piece but the rotted one shared"
    );
    assert_eq!(read_body(&store, 2), s1.concat());
    verify(&store, 2);
}

#[test]
fn an_interrupted_sharing_transfer_retired_by_another_keeps_its_prefix_only_if_mostly_fetched() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    write(&store, 10, &body(&[], 0), None, |_| false).expect("s10");
    // Mostly fetched: pieces 0 and 1 shared, 2..6 changed.
    let file = sender_file(90, &body(&[2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 1));
    assert!(
        !receive_sharing(&store, 90, &file, 10, |i| i < 2, 7)
            .expect("part")
            .0
    );
    // A transfer of another snapshot begins: the first partial's durable prefix is kept as a
    // source, its shared ranges filled in.
    let other = store.incoming(id(95)).expect("another transfer");
    let source = store.partial_source().expect("source").expect("kept");
    assert_eq!(source.id(), id(90));
    assert!(source.len() > piece_at(5), "{}", source.len());
    let mut got = vec![0u8; source.len() as usize];
    source.read_at(0, &mut got).expect("read");
    assert_eq!(got, file[..got.len()]);
    drop(other);
    let files = names(&fs);
    assert!(
        files.iter().all(|f| !f.ends_with(".partial.shares")),
        "{files:?}"
    );

    // Mostly shared, it is dropped instead: its shared bytes are in s10 anyway.
    let fs = FaultFs::new();
    let (store, _) = open(&fs);
    write(&store, 10, &body(&[], 0), None, |_| false).expect("s10");
    let file = sender_file(90, &body(&[2], 1));
    assert!(
        !receive_sharing(&store, 90, &file, 10, |i| i != 2, 7)
            .expect("part")
            .0
    );
    let _other = store.incoming(id(95)).expect("another transfer");
    assert!(store.partial_source().expect("source").is_none());
    let files = names(&fs);
    assert!(
        files.iter().all(|f| !f.contains(&id(90).to_string())),
        "{files:?}"
    );
}
