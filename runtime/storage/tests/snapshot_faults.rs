//! Snapshot store: atomic publication under crashes, digest fallback, retention and pins, and
//! resumable incoming transfers.

use std::path::Path;
use std::sync::Arc;

use wraft_storage::fault::{CrashMode, FaultFs};
use wraft_storage::{
    Membership, SnapshotId, SnapshotMeta, SnapshotStore, StorageConfig, StorageError,
};

const MODES: [CrashMode; 3] = [
    CrashMode::LoseUnsynced,
    CrashMode::KeepWritten,
    CrashMode::KeepDataLoseNames,
];
const DIR: &str = "/node/snap";

fn cfg() -> StorageConfig {
    StorageConfig {
        snapshot_sync_every_bytes: 1024,
        snapshot_io_chunk_bytes: 256,
        ..StorageConfig::default()
    }
}

fn open(fs: &FaultFs) -> wraft_storage::Result<(SnapshotStore, wraft_storage::SnapshotRecovery)> {
    SnapshotStore::open(Arc::new(fs.clone()), Path::new(DIR), &cfg())
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        id: SnapshotId {
            last_index: index,
            last_term: 2,
        },
        membership: Membership {
            voters: vec![1, 2, 3],
            learners: vec![9],
        },
        format: "kv/1".into(),
    }
}

fn body(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ index.wrapping_mul(0x9E37)) as u8)
        .collect()
}

fn write(
    store: &SnapshotStore,
    index: u64,
    len: usize,
) -> wraft_storage::Result<wraft_storage::SnapshotInfo> {
    let data = body(index, len);
    let mut w = store.begin(meta(index))?;
    for chunk in data.chunks(700) {
        w.write_chunk(chunk)?;
    }
    w.finish()
}

fn read_body(store: &SnapshotStore, id: SnapshotId) -> Vec<u8> {
    let mut r = store.open_reader(id).expect("reader");
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk(333).expect("chunk") {
        out.extend(c);
    }
    out
}

#[test]
fn a_crash_at_every_byte_of_a_snapshot_write_leaves_the_previous_or_the_new_snapshot() {
    let base = FaultFs::new();
    let (store, _) = open(&base).expect("open");
    write(&store, 10, 1500).expect("first snapshot");
    drop(store);
    let start = base.bytes_written();
    let probe = base.fork();
    write(&open(&probe).expect("open").0, 20, 3000).expect("probe");
    let total = probe.bytes_written() - start;
    let mut checked = 0;
    for cut in 0..=total {
        let fs = base.fork();
        let (store, _) = open(&fs).expect("open");
        fs.set_write_budget(Some(cut));
        let finished = write(&store, 20, 3000).is_ok();
        drop(store);
        for mode in MODES {
            let crashed = fs.fork();
            crashed.crash(mode);
            let ctx = format!("cut at byte {cut} of {total}, {mode:?}");
            let (store, rec) = open(&crashed).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
            let latest = rec
                .latest
                .unwrap_or_else(|| panic!("{ctx}: lost every snapshot"));
            let idx = latest.meta.id.last_index;
            assert!(idx == 10 || idx == 20, "{ctx}: unexpected snapshot {idx}");
            if finished && mode == CrashMode::LoseUnsynced {
                assert_eq!(
                    idx, 20,
                    "{ctx}: a finished snapshot must survive power loss"
                );
            }
            assert!(
                rec.quarantined.is_empty(),
                "{ctx}: a crash must never leave a corrupt visible snapshot"
            );
            let want = if idx == 10 {
                body(10, 1500)
            } else {
                body(20, 3000)
            };
            assert_eq!(
                read_body(&store, latest.meta.id),
                want,
                "{ctx}: wrong bytes served"
            );
            assert!(
                crashed
                    .paths()
                    .iter()
                    .all(|p| !p.to_string_lossy().ends_with(".tmp")),
                "{ctx}: temp file not cleaned up"
            );
            checked += 1;
        }
    }
    eprintln!("{checked} crash points over {total} bytes");
}

#[test]
fn a_flipped_bit_anywhere_in_the_newest_snapshot_falls_back_to_the_previous_one() {
    let base = FaultFs::new();
    let (store, _) = open(&base).expect("open");
    write(&store, 10, 800).expect("older");
    let newest = write(&store, 20, 900).expect("newest");
    drop(store);
    let len = base.read_file(&newest.path).expect("file").len();
    for offset in 0..len {
        let fs = base.fork();
        fs.flip_bit(&newest.path, offset, (offset % 8) as u8);
        let ctx = format!("bit flip at byte {offset} of {len}");
        let (store, rec) = match open(&fs) {
            Ok(x) => x,
            Err(e) => panic!("{ctx}: open must fall back, not fail: {e}"),
        };
        assert_eq!(
            rec.latest.as_ref().map(|i| i.meta.id.last_index),
            Some(10),
            "{ctx}"
        );
        assert_eq!(rec.quarantined.len(), 1, "{ctx}");
        assert!(
            store.open_reader(newest.meta.id).is_err(),
            "{ctx}: corrupt snapshot still served"
        );
        assert_eq!(
            read_body(&store, rec.latest.expect("latest").meta.id),
            body(10, 800),
            "{ctx}"
        );
    }
}

#[test]
fn retention_keeps_the_newest_n_and_never_deletes_a_pinned_snapshot() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs).expect("open");
    write(&store, 1, 10).expect("s1");
    let pin = store
        .pin(SnapshotId {
            last_index: 1,
            last_term: 2,
        })
        .expect("pin");
    let reader = {
        write(&store, 2, 10).expect("s2");
        store
            .open_reader(SnapshotId {
                last_index: 2,
                last_term: 2,
            })
            .expect("reader pins s2")
    };
    write(&store, 3, 10).expect("s3");
    write(&store, 4, 10).expect("s4");
    let ids = |s: &SnapshotStore| {
        s.list()
            .iter()
            .map(|i| i.meta.id.last_index)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&store),
        vec![1, 2, 3, 4],
        "pinned 1 and 2 must survive retention"
    );
    assert_eq!(pin.id().last_index, 1);
    drop(pin);
    assert_eq!(ids(&store), vec![2, 3, 4]);
    drop(reader);
    assert_eq!(
        ids(&store),
        vec![3, 4],
        "snapshot_retain_count = 2 once nothing is pinned"
    );
}

/// A leader's complete snapshot at index 42 with a `body_bytes` body, and its raw file bytes (what
/// a transfer ships).
fn sender_file(body_bytes: usize) -> (wraft_storage::SnapshotInfo, Vec<u8>) {
    sender_file_at(42, body_bytes)
}

/// A leader's complete snapshot at `index`, and its raw file bytes.
fn sender_file_at(index: u64, body_bytes: usize) -> (wraft_storage::SnapshotInfo, Vec<u8>) {
    let sender_fs = FaultFs::new();
    let sender = SnapshotStore::open(
        Arc::new(sender_fs.clone()),
        Path::new("/leader/snap"),
        &cfg(),
    )
    .expect("open")
    .0;
    let info = write(&sender, index, body_bytes).expect("sender snapshot");
    let file = sender_fs.read_file(&info.path).expect("file");
    (info, file)
}

#[test]
fn an_incoming_snapshot_resumes_from_its_durable_offset_after_power_loss() {
    // The sender's snapshot file, shipped as raw file bytes.
    let (info, file) = sender_file(10_000);
    let id = info.meta.id;
    let mut cuts = 0;
    for cut in (0..file.len() as u64 + 200).step_by(97) {
        let fs = FaultFs::new();
        let (store, _) = open(&fs).expect("open");
        let mut inc = store.incoming(id).expect("incoming");
        fs.set_write_budget(Some(cut));
        let mut reported_durable = 0;
        for (i, chunk) in file.chunks(300).enumerate() {
            if inc.write_at((i * 300) as u64, chunk).is_err() {
                break;
            }
            reported_durable = inc.durable_offset();
        }
        drop(inc);
        drop(store);
        fs.crash(CrashMode::LoseUnsynced);
        let ctx = format!("cut at byte {cut}");
        let (store, rec) = open(&fs).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
        let inc = store.incoming(id).expect("resume");
        let durable = inc.durable_offset();
        assert!(
            durable >= reported_durable,
            "{ctx}: durable offset went back from {reported_durable} to {durable}"
        );
        if let Some(&(rid, d)) = rec.resumable.first() {
            assert_eq!((rid, d), (id, durable), "{ctx}");
        }
        // Resume exactly where the receiver says, then finalize with digest verification.
        let mut inc = inc;
        for (i, chunk) in file[durable as usize..].chunks(300).enumerate() {
            inc.write_at(durable + (i * 300) as u64, chunk)
                .expect("resume write");
        }
        let got = inc
            .finalize()
            .unwrap_or_else(|e| panic!("{ctx}: finalize failed: {e}"));
        assert_eq!(got.digest, info.digest, "{ctx}");
        assert_eq!(read_body(&store, id), body(42, 10_000), "{ctx}");
        cuts += 1;
    }
    assert!(cuts > 50);
}

#[test]
fn an_incoming_snapshot_with_a_damaged_byte_fails_finalize_with_a_digest_error() {
    let (info, mut file) = sender_file(5000);
    file[3000] ^= 0x10;
    let fs = FaultFs::new();
    let (store, _) = open(&fs).expect("open");
    let mut inc = store.incoming(info.meta.id).expect("incoming");
    assert!(matches!(
        inc.write_at(10, &file[..5]),
        Err(StorageError::OffsetGap {
            expected_at_most: 0,
            found: 10
        })
    ));
    inc.write_at(0, &file).expect("write");
    match inc.finalize() {
        Err(StorageError::SnapshotInvalid {
            detail,
            expected,
            found,
            ..
        }) => {
            assert!(detail.contains("BLAKE3"), "{detail}");
            assert_ne!(expected, found);
        }
        other => panic!("expected a digest failure, got {other:?}"),
    }
    assert!(store.latest().is_none());
    assert!(
        fs.paths()
            .iter()
            .all(|p| !p.to_string_lossy().contains(".partial")),
        "bad partial must be deleted"
    );
}

#[test]
fn partials_superseded_by_a_complete_snapshot_and_temp_files_are_deleted_on_open() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs).expect("open");
    let mut inc = store
        .incoming(SnapshotId {
            last_index: 5,
            last_term: 1,
        })
        .expect("incoming");
    inc.write_at(0, b"partial").expect("write");
    inc.sync().expect("sync");
    drop(inc);
    let mut unfinished = store.begin(meta(7)).expect("begin");
    unfinished.write_chunk(b"never finished").expect("chunk");
    std::mem::forget(unfinished); // simulate a crash: no cleanup
    write(&store, 6, 100).expect("complete snapshot at 6");
    drop(store);
    let (_, rec) = open(&fs).expect("reopen");
    assert!(
        rec.resumable.is_empty(),
        "partial at 5 is superseded by the snapshot at 6"
    );
    assert_eq!(
        rec.removed.len(),
        3,
        "tmp, partial and progress removed: {:?}",
        rec.removed
    );
    let names: Vec<String> = fs.paths().iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        names,
        vec![format!(
            "{DIR}/{}.snap",
            SnapshotId {
                last_index: 6,
                last_term: 2
            }
        )]
    );
}

#[test]
fn an_incoming_snapshot_verifies_whether_written_in_order_resumed_or_with_repeats() {
    let (info, file) = sender_file(5000);
    // Split points inside the header's skipped tail, the metadata and the body.
    for (name, pieces) in [
        (
            "in order",
            vec![(0, 7), (7, 20), (20, 61), (61, file.len())],
        ),
        ("one write", vec![(0, file.len())]),
        ("repeats", vec![(0, 3000), (2000, 4000), (4000, file.len())]),
    ] {
        let fs = FaultFs::new();
        let (store, _) = open(&fs).expect("open");
        let mut inc = store.incoming(info.meta.id).expect("incoming");
        for (a, b) in pieces {
            inc.write_at(a as u64, &file[a..b]).expect("write");
        }
        let got = inc.finalize().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.digest, info.digest, "{name}");
    }
    // Resumed: the durable prefix is read back and hashed before new bytes.
    let fs = FaultFs::new();
    let (store, _) = open(&fs).expect("open");
    let mut inc = store.incoming(info.meta.id).expect("incoming");
    inc.write_at(0, &file[..2500]).expect("write");
    inc.sync().expect("sync");
    drop(inc);
    let mut inc = store.incoming(info.meta.id).expect("resume");
    assert_eq!(inc.durable_offset(), 2500);
    inc.write_at(2500, &file[2500..]).expect("write rest");
    assert_eq!(inc.finalize().expect("finalize").digest, info.digest);
}

/// Receive a leader's snapshot file completely (what a finished transfer does).
fn receive(store: &SnapshotStore, index: u64) -> SnapshotId {
    let (info, file) = sender_file_at(index, 500);
    let mut inc = store.incoming(info.meta.id).expect("incoming");
    inc.write_at(0, &file).expect("write");
    inc.finalize().expect("finalize").meta.id
}

fn indexes(s: &SnapshotStore) -> Vec<u64> {
    s.list().iter().map(|i| i.meta.id.last_index).collect()
}

#[test]
fn received_snapshots_the_node_never_accepts_do_not_push_out_its_own() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs).expect("open");
    write(&store, 5, 100).expect("own snapshot");
    write(&store, 10, 100).expect("own snapshot: the engine's and applier's base");
    // Two snapshots arrive from leaders and the engine ignores both (already
    // committed here, or sent in a stale term): nobody accepts them.
    receive(&store, 20);
    receive(&store, 30);
    assert_eq!(
        indexes(&store),
        vec![5, 10, 30],
        "the node's own snapshots stay (snapshot_retain_count = 2); of the received ones only the newest is kept"
    );
}

#[test]
fn an_accepted_received_snapshot_counts_toward_retention_like_the_nodes_own() {
    let fs = FaultFs::new();
    let (store, _) = open(&fs).expect("open");
    write(&store, 10, 100).expect("own");
    let below = receive(&store, 8);
    assert_eq!(
        indexes(&store),
        vec![10],
        "a received snapshot at or below the node's own is deleted at once"
    );
    assert!(matches!(
        store.accept(below),
        Err(StorageError::SnapshotNotFound(_))
    ));
    let installed = receive(&store, 30);
    // Pinned while the node installs it: a newer offer does not delete it.
    let pin = store.pin(installed).expect("pin");
    receive(&store, 40);
    assert_eq!(indexes(&store), vec![10, 30, 40]);
    store.accept(installed).expect("accept");
    drop(pin);
    assert_eq!(
        indexes(&store),
        vec![10, 30, 40],
        "own: 30 (accepted) and 10; received: 40, the newest, above them"
    );
    write(&store, 50, 100).expect("own");
    assert_eq!(
        indexes(&store),
        vec![30, 50],
        "retention counts the accepted 30 as the node's own; 40 is now below the node's newest"
    );
    // After a restart every complete file is the node's own (recovery may start from it).
    receive(&store, 60);
    drop(store);
    let (store, rec) = open(&fs).expect("reopen");
    assert_eq!(rec.latest.map(|i| i.meta.id.last_index), Some(60));
    write(&store, 70, 100).expect("own");
    assert_eq!(indexes(&store), vec![60, 70]);
}

#[test]
fn an_interrupted_partial_of_another_snapshot_is_kept_as_a_source_until_a_transfer_completes() {
    let (old_info, old_file) = sender_file_at(30, 20_000);
    let (new_info, new_file) = sender_file_at(40, 20_000);
    let fs = FaultFs::new();
    let (store, _) = open(&fs).expect("open");
    assert!(store.partial_source().expect("look").is_none());

    // A transfer of snapshot 30 makes 12 000 bytes durable, writes 500 more (under
    // `snapshot_sync_every_bytes`: not synced), and stops.
    let mut inc = store.incoming(old_info.meta.id).expect("incoming");
    inc.write_at(0, &old_file[..12_000]).expect("write");
    inc.sync().expect("sync");
    inc.write_at(12_000, &old_file[12_000..12_500])
        .expect("write");
    assert_eq!(inc.durable_offset(), 12_000);
    drop(inc);

    // A transfer of snapshot 40 begins: the durable prefix of 30's stays, as a source.
    let inc = store.incoming(new_info.meta.id).expect("incoming");
    let src = store
        .partial_source()
        .expect("look")
        .expect("a kept prefix");
    assert_eq!((src.id(), src.len()), (old_info.meta.id, 12_000));
    let mut got = vec![0u8; 100];
    src.read_at(11_900, &mut got).expect("read");
    assert_eq!(got, old_file[11_900..12_000]);
    assert!(
        src.read_at(11_950, &mut got).is_err(),
        "past the kept prefix"
    );
    assert!(
        fs.paths().iter().all(|p| !p
            .to_string_lossy()
            .contains(&format!("{}.partial.progress", old_info.meta.id))),
        "its progress file goes"
    );

    // A crash and a reopen keep it (power loss: only what was synced).
    drop(inc);
    fs.crash(wraft_storage::fault::CrashMode::LoseUnsynced);
    let (store, _) = open(&fs).expect("reopen");
    let src = store
        .partial_source()
        .expect("look")
        .expect("kept across a crash");
    assert_eq!(src.len(), 12_000);

    // The transfer of 40 completes: the source has served and goes.
    let mut inc = store.incoming(new_info.meta.id).expect("resume");
    let from = inc.durable_offset() as usize;
    inc.write_at(from as u64, &new_file[from..]).expect("write");
    inc.finalize().expect("finalize");
    assert!(store.partial_source().expect("look").is_none());
    assert!(
        fs.paths()
            .iter()
            .all(|p| !p.to_string_lossy().contains(".partial")),
        "{:?}",
        fs.paths()
    );
}
