//! Functional behaviour of the log: group commit, notifications, bounds, reads, truncation,
//! compaction, and `Storage::open` consistency with snapshots.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Model, open_log, small_config};
use wraft_storage::fault::{CrashMode, FaultFs};
use wraft_storage::{
    Bytes, EventCallback, HardState, Log, LogEntry, Membership, SnapshotId, SnapshotMeta, Storage,
    StorageConfig, StorageError, WriteBatch, WriterEvent,
};

fn entry(index: u64, term: u64) -> LogEntry {
    LogEntry {
        index,
        term,
        payload: Bytes::from(format!("entry-{index}-{term}")),
    }
}

fn entries(lo: u64, hi: u64, term: u64) -> Vec<LogEntry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}

fn append(log: &Log, lo: u64, hi: u64, term: u64) {
    log.submit(WriteBatch::default().with_entries(entries(lo, hi, term)))
        .and_then(|t| t.wait())
        .expect("append");
}

/// A callback that blocks the writer thread after each sync until the test releases it, so that
/// the test controls exactly what is queued behind an in-flight batch.
struct Gate {
    entered: mpsc::Receiver<WriterEvent>,
    release: mpsc::Sender<()>,
}

fn gated() -> (EventCallback, Gate) {
    let (ev_tx, ev_rx) = mpsc::channel();
    let (rel_tx, rel_rx) = mpsc::channel::<()>();
    let rel_rx = Mutex::new(rel_rx);
    let cb: EventCallback = Arc::new(move |e: &WriterEvent| {
        let _ = ev_tx.send(e.clone());
        let _ = rel_rx
            .lock()
            .expect("gate")
            .recv_timeout(Duration::from_secs(30));
    });
    (
        cb,
        Gate {
            entered: ev_rx,
            release: rel_tx,
        },
    )
}

#[test]
fn entries_and_hard_state_survive_reopen() {
    let fs = FaultFs::new();
    let dir = Path::new("/n/wal");
    let (log, rec) = open_log(&fs, dir, &small_config()).expect("open");
    assert_eq!((rec.first_index, rec.last_index), (1, 0));
    let hs = HardState {
        term: 3,
        vote: Some(2),
        commit: 5,
    };
    log.submit(
        WriteBatch::default()
            .with_entries(entries(1, 40, 3))
            .with_hard_state(hs),
    )
    .and_then(|t| t.wait())
    .expect("write");
    drop(log);
    fs.crash(CrashMode::LoseUnsynced);
    let (log, rec) = open_log(&fs, dir, &small_config()).expect("reopen");
    assert_eq!((rec.last_index, rec.last_term, rec.hard_state), (40, 3, hs));
    assert_eq!(
        log.entries(1, 41, u64::MAX).expect("read"),
        entries(1, 40, 3)
    );
}

/// Lengths of the segment files in `dir`, oldest first, and whether each ends in 16 zero bytes.
fn segment_files(fs: &FaultFs, dir: &Path) -> Vec<(String, u64, bool)> {
    use wraft_storage::{OpenMode, Vfs};
    let mut names = fs.list(dir).expect("list");
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let f = fs.open(&dir.join(&n), OpenMode::Read).expect("open");
            let mut data = vec![0u8; f.len().expect("len") as usize];
            let got = f.read_at(&mut data, 0).expect("read");
            assert_eq!(got, data.len(), "short read of {n}");
            let zero_end = data.len() >= 16 && data[data.len() - 16..].iter().all(|b| *b == 0);
            (n, data.len() as u64, zero_end)
        })
        .collect()
}

/// The writer keeps zero-filled space ahead of the newest record, so that a batch overwrites
/// blocks the file system has already allocated. A segment that fills up is cut back to its
/// records before the next one starts; at a restart the newest segment is cut back quietly (it
/// is not a torn tail), and every entry is still there.
#[test]
fn preallocated_space_stays_ahead_of_the_log_and_is_cut_from_sealed_and_recovered_segments() {
    let fs = FaultFs::new();
    let dir = Path::new("/n/wal");
    let cfg = StorageConfig {
        segment_bytes: 1024,
        preallocate_bytes: 512,
        ..small_config()
    };
    let (log, _) = open_log(&fs, dir, &cfg).expect("open");
    for i in 1..=60 {
        append(&log, i, i, 1);
    }
    let files = segment_files(&fs, dir);
    assert!(
        files.len() >= 3,
        "60 entries fill several 1 KiB segments: {files:?}"
    );
    let (sealed, newest) = files.split_at(files.len() - 1);
    for (name, len, zero_end) in sealed {
        assert!(
            !zero_end && *len < 1024 + 512,
            "sealed {name} ({len} bytes) keeps zeros"
        );
    }
    let (newest_name, newest_len, zero_end) = newest[0].clone();
    assert!(
        zero_end,
        "newest segment {newest_name} has no zero-filled space ahead"
    );
    drop(log);
    fs.crash(CrashMode::LoseUnsynced);
    let (log, rec) = open_log(&fs, dir, &cfg).expect("reopen");
    assert_eq!(rec.torn_tail, None, "preallocated space is not a torn tail");
    assert_eq!(rec.last_index, 60);
    assert_eq!(
        log.entries(1, 61, u64::MAX).expect("read"),
        entries(1, 60, 1)
    );
    let after = segment_files(&fs, dir);
    let (_, len, zero_end) = after
        .iter()
        .find(|(n, _, _)| *n == newest_name)
        .expect("segment kept")
        .clone();
    assert!(
        !zero_end && len < newest_len,
        "{newest_name} not cut back: {len} bytes"
    );
    // The newest segment now is a fresh one, with its own zeros ahead.
    append(&log, 61, 61, 1);
    assert!(segment_files(&fs, dir).last().expect("segments").2);
}

/// A fresh log whose writer parks after each sync until the test releases it.
fn open_gated() -> (Log, Gate) {
    let (cb, gate) = gated();
    let (log, _) = Log::open(
        Arc::new(FaultFs::new()),
        Path::new("/n/wal"),
        &small_config(),
        Some(cb),
    )
    .expect("open");
    (log, gate)
}

#[test]
fn one_sync_covers_every_submission_queued_behind_an_in_flight_batch() {
    let (log, gate) = open_gated();
    let first = log
        .try_submit(WriteBatch::default().with_entries(entries(1, 1, 1)))
        .expect("submit");
    // The writer has synced batch 1 and is now parked in the callback.
    assert!(
        matches!(gate.entered.recv().expect("event"), WriterEvent::Durable(p) if p.seq == first.seq())
    );
    let tickets: Vec<_> = (2..=101)
        .map(|i| {
            log.try_submit(WriteBatch::default().with_entries(vec![entry(i, 1)]))
                .expect("submit")
        })
        .collect();
    assert!(
        tickets.iter().all(|t| !t.is_durable().expect("no failure")),
        "nothing may be durable before its sync"
    );
    let syncs_before = log.stats().syncs;
    gate.release.send(()).expect("release");
    match gate.entered.recv().expect("event") {
        WriterEvent::Durable(p) => {
            assert_eq!(p.seq, tickets.last().expect("tickets").seq());
            assert_eq!(p.last_index, 101);
        }
        WriterEvent::Failed(e) => panic!("writer failed: {e}"),
    }
    assert_eq!(
        log.stats().syncs,
        syncs_before + 1,
        "100 queued submissions must share one fdatasync"
    );
    assert!(tickets.iter().all(|t| t.is_durable().expect("durable")));
    gate.release.send(()).expect("release");
}

#[test]
fn a_durable_point_reports_the_callers_highest_durable_tag_and_tags_may_not_decrease() {
    let (log, gate) = open_gated();
    log.try_submit(
        WriteBatch::default()
            .with_entries(entries(1, 1, 1))
            .with_tag(7),
    )
    .expect("submit");
    match gate.entered.recv().expect("event") {
        WriterEvent::Durable(p) => assert_eq!(p.tag, 7),
        WriterEvent::Failed(e) => panic!("writer failed: {e}"),
    }
    // Behind the parked writer: a tagged batch, then an untagged one (a compaction, say).
    log.try_submit(
        WriteBatch::default()
            .with_entries(entries(2, 3, 1))
            .with_tag(9),
    )
    .expect("submit");
    log.try_submit(WriteBatch::default().with_entries(entries(4, 4, 1)))
        .expect("submit");
    let refused = log.try_submit(
        WriteBatch::default()
            .with_entries(entries(5, 5, 1))
            .with_tag(8),
    );
    assert!(
        matches!(&refused, Err(StorageError::Invalid(m)) if m.contains("tag 8")),
        "{refused:?}"
    );
    gate.release.send(()).expect("release");
    match gate.entered.recv().expect("event") {
        WriterEvent::Durable(p) => {
            assert_eq!(p.last_index, 4, "the refused batch wrote nothing");
            assert_eq!(p.tag, 9, "an untagged batch leaves the tag alone");
        }
        WriterEvent::Failed(e) => panic!("writer failed: {e}"),
    }
    assert_eq!(log.durable().tag, 9);
    gate.release.send(()).expect("release");
}

#[test]
fn try_submit_on_a_full_queue_fails_fast_and_queues_nothing() {
    let fs = FaultFs::new();
    let (cb, gate) = gated();
    let cfg = StorageConfig {
        queue_ops_max: 2,
        ..small_config()
    };
    let (log, _) = Log::open(Arc::new(fs), Path::new("/n/wal"), &cfg, Some(cb)).expect("open");
    log.try_submit(WriteBatch::default().with_entries(entries(1, 1, 1)))
        .expect("submit");
    gate.entered.recv().expect("writer parked");
    log.try_submit(WriteBatch::default().with_entries(entries(2, 2, 1)))
        .expect("queued 1/2");
    log.try_submit(WriteBatch::default().with_entries(entries(3, 3, 1)))
        .expect("queued 2/2");
    match log.try_submit(WriteBatch::default().with_entries(entries(4, 4, 1))) {
        Err(StorageError::QueueFull {
            queued_ops: 2,
            queue_ops_max: 2,
            ..
        }) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert_eq!(
        log.last_index(),
        3,
        "a rejected submission must not change the log"
    );
    gate.release.send(()).expect("release");
    gate.entered.recv().expect("second sync");
    gate.release.send(()).expect("release");
    let t = log
        .try_submit(WriteBatch::default().with_entries(entries(4, 4, 1)))
        .expect("space again");
    gate.entered.recv().expect("third sync");
    gate.release.send(()).expect("release");
    t.wait().expect("durable");
}

#[test]
fn recent_entries_are_served_from_memory_and_older_ones_from_disk() {
    let fs = FaultFs::new();
    let cfg = StorageConfig {
        tail_cache_bytes: 1024,
        ..small_config()
    };
    let (log, _) = open_log(&fs, Path::new("/n/wal"), &cfg).expect("open");
    append(&log, 1, 200, 1);
    let stats = log.stats();
    assert!(
        stats.cache_bytes <= 1024 && stats.cache_entries > 0,
        "{stats:?}"
    );
    let cached_from = 201 - stats.cache_entries as u64;
    assert_eq!(
        log.entries(1, 201, u64::MAX).expect("disk + cache"),
        entries(1, 200, 1)
    );
    // Kill every file handle: the cache must still answer, the disk path must fail.
    fs.crash(CrashMode::KeepWritten);
    assert_eq!(
        log.entries(cached_from, 201, u64::MAX)
            .expect("from memory"),
        entries(cached_from, 200, 1)
    );
    assert!(
        log.entries(1, 2, u64::MAX).is_err(),
        "old entries really come from disk"
    );
}

#[test]
fn entries_respect_max_bytes_but_always_return_one() {
    let fs = FaultFs::new();
    let (log, _) = open_log(&fs, Path::new("/n/wal"), &small_config()).expect("open");
    append(&log, 1, 50, 1);
    let one = log.entries(1, 51, 1).expect("read");
    assert_eq!(one.len(), 1);
    let some = log.entries(1, 51, 40).expect("read");
    assert!(some.len() > 1 && some.len() < 50);
    assert!(some.iter().map(|e| e.payload.len()).sum::<usize>() <= 40);
}

#[test]
fn conflicting_suffix_is_replaced_and_stays_replaced_after_reopen() {
    let fs = FaultFs::new();
    let dir = Path::new("/n/wal");
    let (log, _) = open_log(&fs, dir, &small_config()).expect("open");
    append(&log, 1, 30, 1);
    // New leader at term 2 overwrites from 21 (implicit truncation), then an explicit truncation.
    append(&log, 21, 25, 2);
    assert_eq!(log.last_index(), 25);
    log.submit(WriteBatch::default().with_truncate_after(23))
        .and_then(|t| t.wait())
        .expect("truncate");
    drop(log);
    fs.crash(CrashMode::LoseUnsynced);
    let (log, _) = open_log(&fs, dir, &small_config()).expect("reopen");
    let mut want = entries(1, 20, 1);
    want.extend(entries(21, 23, 2));
    assert_eq!(Model::read(&log).entries, want);
}

#[test]
fn compaction_deletes_whole_segments_and_the_floor_survives_reopen() {
    let fs = FaultFs::new();
    let dir = Path::new("/n/wal");
    let (log, _) = open_log(&fs, dir, &small_config()).expect("open");
    for k in 0..10 {
        append(&log, k * 10 + 1, k * 10 + 10, 1);
    }
    let segs_before = log.stats().segments;
    log.compact(90, 1).and_then(|t| t.wait()).expect("compact");
    // Deletion runs after the floor is durable; give the writer a moment by issuing another write.
    append(&log, 101, 101, 1);
    let segs_after = log.stats().segments;
    assert!(
        segs_after < segs_before,
        "segments behind the floor must be deleted ({segs_before} -> {segs_after})"
    );
    assert!(matches!(
        log.entry(90),
        Err(StorageError::Compacted {
            first_index: 91,
            ..
        })
    ));
    assert_eq!(log.term(90).expect("floor term"), 1);
    drop(log);
    fs.crash(CrashMode::LoseUnsynced);
    let (log, rec) = open_log(&fs, dir, &small_config()).expect("reopen");
    assert_eq!(
        (rec.floor, rec.first_index, rec.last_index),
        ((90, 1), 91, 101)
    );
    assert_eq!(
        log.entries(91, 102, u64::MAX).expect("read"),
        entries(91, 101, 1)
    );
}

#[test]
fn compacting_to_a_snapshot_ahead_of_the_log_discards_it_and_continues_after() {
    let fs = FaultFs::new();
    let dir = Path::new("/n/wal");
    let (log, _) = open_log(&fs, dir, &small_config()).expect("open");
    append(&log, 1, 10, 1);
    log.compact(500, 4)
        .and_then(|t| t.wait())
        .expect("install snapshot");
    assert_eq!(
        (
            log.first_index(),
            log.last_index(),
            log.term(500).expect("term")
        ),
        (501, 500, 4)
    );
    append(&log, 501, 505, 4);
    drop(log);
    fs.crash(CrashMode::LoseUnsynced);
    let (log, rec) = open_log(&fs, dir, &small_config()).expect("reopen");
    assert_eq!((rec.floor, rec.last_index), ((500, 4), 505));
    assert_eq!(
        log.entries(501, 506, u64::MAX).expect("read"),
        entries(501, 505, 4)
    );
}

#[test]
fn invalid_requests_are_rejected_without_changing_the_log() {
    let fs = FaultFs::new();
    let cfg = StorageConfig {
        entry_bytes_max: 64,
        ..small_config()
    };
    let (log, _) = open_log(&fs, Path::new("/n/wal"), &cfg).expect("open");
    append(&log, 1, 5, 2);
    let cases = [
        ("gap", WriteBatch::default().with_entries(entries(7, 7, 2))),
        (
            "term goes backwards",
            WriteBatch::default().with_entries(entries(6, 6, 1)),
        ),
        (
            "not contiguous",
            WriteBatch::default().with_entries(vec![entry(6, 2), entry(8, 2)]),
        ),
        (
            "truncate past end",
            WriteBatch::default().with_truncate_after(9),
        ),
        (
            "hard state term backwards",
            WriteBatch::default().with_hard_state(HardState {
                term: 1,
                vote: None,
                commit: 0,
            }),
        ),
    ];
    log.submit(WriteBatch::default().with_hard_state(HardState {
        term: 2,
        vote: None,
        commit: 0,
    }))
    .and_then(|t| t.wait())
    .expect("hs");
    for (what, b) in cases {
        assert!(
            matches!(log.try_submit(b), Err(StorageError::Invalid(_))),
            "{what} must be rejected"
        );
    }
    let big = LogEntry {
        index: 6,
        term: 2,
        payload: Bytes::from(vec![0u8; 65]),
    };
    match log.try_submit(WriteBatch::default().with_entries(vec![big])) {
        Err(StorageError::LimitExceeded {
            limit_name: "entry_bytes_max",
            limit: 64,
            found: 65,
            ..
        }) => {}
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    assert_eq!(log.last_index(), 5);
}

#[test]
fn a_failed_write_poisons_the_log_and_reports_through_callback_and_tickets() {
    let fs = FaultFs::new();
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cb: EventCallback = Arc::new(move |e: &WriterEvent| {
        let _ = tx.lock().expect("events").send(e.clone());
    });
    let (log, _) = Log::open(
        Arc::new(fs.clone()),
        Path::new("/n/wal"),
        &small_config(),
        Some(cb),
    )
    .expect("open");
    append(&log, 1, 3, 1);
    fs.set_write_budget(Some(5));
    let t = log
        .submit(WriteBatch::default().with_entries(entries(4, 4, 1)))
        .expect("queued");
    assert!(matches!(t.wait(), Err(StorageError::Poisoned(_))));
    assert!(matches!(
        log.try_submit(WriteBatch::default().with_entries(entries(5, 5, 1))),
        Err(StorageError::Poisoned(_))
    ));
    // The callback hears about the failure too (after the durable event for entries 1..=3).
    let failed = std::iter::from_fn(|| events.recv_timeout(Duration::from_secs(10)).ok())
        .find(|e| matches!(e, WriterEvent::Failed(_)));
    assert!(failed.is_some(), "the callback must report the failure");
}

#[test]
fn storage_open_compacts_a_log_that_is_behind_the_newest_snapshot() {
    let fs = FaultFs::new();
    let root = Path::new("/node");
    let cfg = small_config();
    let (st, _) = Storage::open_with_vfs(Arc::new(fs.clone()), root, &cfg, None).expect("open");
    append(&st.log, 1, 10, 1);
    // Snapshot received from a leader at index 50 is durable, then a crash before compacting.
    let meta = SnapshotMeta {
        id: SnapshotId {
            last_index: 50,
            last_term: 3,
        },
        membership: Membership {
            voters: vec![1, 2, 3],
            learners: vec![],
        },
        format: "kv/1".into(),
    };
    let mut w = st.snapshots.begin(meta).expect("begin");
    w.write_chunk(b"state").expect("chunk");
    w.finish().expect("finish");
    drop(st);
    fs.crash(CrashMode::LoseUnsynced);
    let (st, rec) = Storage::open_with_vfs(Arc::new(fs), root, &cfg, None).expect("reopen");
    assert_eq!(rec.replay_from(), 51);
    assert_eq!((rec.log.floor, rec.log.last_index), ((50, 3), 50));
    assert_eq!(st.log.first_index(), 51);
}

#[test]
fn storage_open_refuses_a_log_compacted_past_every_valid_snapshot() {
    let fs = FaultFs::new();
    let root = Path::new("/node");
    let cfg = small_config();
    let (st, _) = Storage::open_with_vfs(Arc::new(fs.clone()), root, &cfg, None).expect("open");
    append(&st.log, 1, 10, 1);
    st.log
        .compact(8, 1)
        .and_then(|t| t.wait())
        .expect("compact without a snapshot");
    drop(st);
    match Storage::open_with_vfs(Arc::new(fs), root, &cfg, None) {
        Err(StorageError::SnapshotBehindLogFloor {
            floor_index: 8,
            snapshot_index: 0,
        }) => {}
        other => panic!("expected SnapshotBehindLogFloor, got {other:?}"),
    }
}

#[test]
fn relaxed_mode_issues_no_fsync() {
    let fs = FaultFs::new();
    let cfg = StorageConfig {
        fsync: wraft_storage::FsyncPolicy::Relaxed,
        ..small_config()
    };
    let (log, _) = open_log(&fs, Path::new("/n/wal"), &cfg).expect("open");
    let before = fs.syncs();
    append(&log, 1, 100, 1);
    assert_eq!(fs.syncs(), before, "relaxed mode must not sync");
    assert_eq!(log.stats().syncs, 0);
}

#[test]
fn a_data_directory_in_use_is_refused_until_its_storage_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = Storage::open(dir.path(), &StorageConfig::default(), None).unwrap();
    let err = Storage::open(dir.path(), &StorageConfig::default(), None).unwrap_err();
    assert!(
        matches!(&err, StorageError::Locked { dir: d } if d == dir.path()),
        "a second open of a directory in use must be refused, got: {err}"
    );
    assert!(err.to_string().contains("in use"), "{err}");
    let released = first
        .release_signal()
        .expect("a locked directory has a release signal");
    let shared = std::sync::Arc::new(first);
    let other = shared.clone();
    drop(shared);
    assert!(
        !released.is_released(),
        "another handle still holds the storage"
    );
    drop(other);
    assert!(
        released.is_released(),
        "the last handle's drop releases the lock"
    );
    Storage::open(dir.path(), &StorageConfig::default(), None)
        .expect("the lock is released when the first Storage is dropped");
}
