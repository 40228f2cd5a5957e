//! Crash-safety of the log under the `FaultFs` fault model.
//!
//! Every test derives its workload from a seed and prints the seed and a replay command on failure.
//! More seeds: `WRAFT_STORAGE_CRASH_SEEDS=20 cargo test -p wraft-storage --test crash_safety`;
//! one seed: `WRAFT_STORAGE_CRASH_SEED=0x5eed0003 ...`.

mod common;

use std::path::Path;

use common::{Model, Scenario, open_log, scenario, small_config};
use wraft_storage::StorageError;
use wraft_storage::fault::{CrashMode, FaultFs};

const MODES: [CrashMode; 3] = [
    CrashMode::LoseUnsynced,
    CrashMode::KeepWritten,
    CrashMode::KeepDataLoseNames,
];

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("WRAFT_STORAGE_CRASH_SEED")
        .ok()
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("WRAFT_STORAGE_CRASH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    (0..n).map(|i| 0x5EED_0000 + i).collect()
}

fn replay_hint(test: &str, seed: u64) -> String {
    format!(
        "seed {seed:#x}; replay: WRAFT_STORAGE_CRASH_SEEDS=<n covering it> cargo test -p wraft-storage --test crash_safety {test}"
    )
}

/// Run the scenario, waiting for each batch. Returns the number of steps acknowledged durable.
fn run_until_failure(fs: &FaultFs, dir: &Path, sc: &Scenario) -> usize {
    let Ok((log, _)) = open_log(fs, dir, &small_config()) else {
        return 0;
    };
    let mut acked = 0;
    for (k, b) in sc.batches.iter().enumerate() {
        let Ok(ticket) = log.submit(b.clone()) else {
            break;
        };
        if ticket.wait().is_err() {
            break;
        }
        acked = sc.steps_before[k + 1];
    }
    acked
}

/// Recovery must succeed and produce exactly a model state between `acked` and `hi` steps.
fn check_recovery(fs: &FaultFs, dir: &Path, sc: &Scenario, acked: usize, hi: usize, ctx: &str) {
    let (log, rec) = match open_log(fs, dir, &small_config()) {
        Ok(x) => x,
        Err(e) => panic!("{ctx}: recovery failed after a crash (must only cut the torn tail): {e}"),
    };
    let got = Model::read(&log);
    let ok = (acked..=hi).any(|j| sc.states[j] == got);
    if !ok {
        panic!(
            "{ctx}: recovered state is not a state between the acknowledged step {acked} and the last written step {hi}\n\
             recovered: {got:?}\nacknowledged state: {:?}\nrecovery: {rec:?}",
            sc.states[acked]
        );
    }
    // The recovered log must be writable, and what it writes must survive.
    let next = got.last_index() + 1;
    let e = wraft_storage::LogEntry {
        index: next,
        term: got
            .hs
            .term
            .max(got.entries.last().map_or(got.floor.1, |e| e.term)),
        payload: "after".into(),
    };
    log.submit(wraft_storage::WriteBatch::default().with_entries(vec![e.clone()]))
        .and_then(|t| t.wait())
        .unwrap_or_else(|err| panic!("{ctx}: append after recovery failed: {err}"));
    drop(log);
    fs.crash(CrashMode::LoseUnsynced);
    let (log, _) = open_log(fs, dir, &small_config())
        .unwrap_or_else(|err| panic!("{ctx}: second recovery failed: {err}"));
    assert_eq!(
        log.entry(next).ok(),
        Some(e),
        "{ctx}: entry appended after recovery was lost"
    );
}

#[test]
fn a_crash_at_every_byte_of_every_write_recovers_an_acknowledged_or_later_state() {
    let dir = Path::new("/data/wal");
    for seed in seeds() {
        let sc = scenario(seed, 24);
        // Measure how many bytes the full run writes.
        let probe = FaultFs::new();
        run_until_failure(&probe, dir, &sc);
        let total = probe.bytes_written();
        let mut checked = 0;
        for cut in 0..=total {
            let fs = FaultFs::new();
            fs.set_write_budget(Some(cut));
            let acked = run_until_failure(&fs, dir, &sc);
            // A cut can land at most one batch past the acknowledged one (batches are waited).
            let k = sc
                .steps_before
                .iter()
                .position(|&s| s == acked)
                .unwrap_or(0);
            let hi = sc.steps_before[(k + 1).min(sc.batches.len())];
            for mode in MODES {
                let crashed = fs.fork();
                crashed.crash(mode);
                let ctx = format!(
                    "cut at byte {cut} of {total}, {mode:?}, {}",
                    replay_hint("a_crash_at_every_byte", seed)
                );
                check_recovery(&crashed, dir, &sc, acked, hi, &ctx);
                checked += 1;
            }
        }
        eprintln!("seed {seed:#x}: {checked} crash points checked over {total} written bytes");
        assert!(
            checked as u64 >= 3 * total,
            "every byte offset must be exercised"
        );
    }
}

#[test]
fn power_loss_with_group_commit_in_flight_never_loses_an_acknowledged_batch() {
    let dir = Path::new("/data/wal");
    for seed in seeds() {
        let sc = scenario(seed ^ 0xA5, 40);
        let probe = FaultFs::new();
        run_until_failure(&probe, dir, &sc);
        let total = probe.bytes_written();
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..60 {
            let cut = rng.u64(0..=total);
            let fs = FaultFs::new();
            fs.set_write_budget(Some(cut));
            // Submit everything without waiting so batches coalesce; then collect acknowledgements.
            let mut acked = 0;
            if let Ok((log, _)) = open_log(&fs, dir, &small_config()) {
                let tickets: Vec<_> = sc
                    .batches
                    .iter()
                    .map_while(|b| log.submit(b.clone()).ok())
                    .collect();
                for (k, t) in tickets.iter().enumerate() {
                    if t.wait().is_err() {
                        break;
                    }
                    acked = sc.steps_before[k + 1];
                }
            }
            for mode in MODES {
                let crashed = fs.fork();
                crashed.crash(mode);
                let ctx = format!(
                    "cut at byte {cut}, {mode:?}, {}",
                    replay_hint("power_loss_with_group_commit", seed)
                );
                check_recovery(&crashed, dir, &sc, acked, sc.states.len() - 1, &ctx);
            }
        }
    }
}

#[test]
fn a_flipped_bit_anywhere_in_the_log_is_reported_or_only_drops_the_unverifiable_last_record() {
    let dir = Path::new("/data/wal");
    for seed in seeds() {
        let sc = scenario(seed ^ 0xF1, 24);
        let fs = FaultFs::new();
        let acked = run_until_failure(&fs, dir, &sc);
        assert_eq!(
            acked,
            sc.states.len() - 1,
            "fault-free run must acknowledge everything"
        );
        let full = sc.states.len() - 1;
        let (mut reported, mut torn, mut flips) = (0, 0, 0);
        let files: Vec<_> = fs
            .paths()
            .into_iter()
            .filter(|p| p.starts_with(dir))
            .collect();
        let last_file = files.last().cloned();
        for file in &files {
            let len = fs.read_file(file).map_or(0, |d| d.len());
            for offset in 0..len {
                let bad = fs.fork();
                assert!(bad.flip_bit(file, offset, (offset % 8) as u8));
                flips += 1;
                let ctx = format!(
                    "bit flip in {} at byte {offset}, {}",
                    file.display(),
                    replay_hint("a_flipped_bit", seed)
                );
                match open_log(&bad, dir, &small_config()) {
                    Err(StorageError::Corrupt { file: f, .. }) => {
                        assert!(
                            f.starts_with(dir),
                            "{ctx}: error names a file outside the log: {}",
                            f.display()
                        );
                        reported += 1;
                    }
                    Err(e) => panic!("{ctx}: expected a Corrupt error, got {e}"),
                    Ok((log, rec)) => {
                        // Only a flip in the very last record can pass as a torn write; then
                        // exactly that record is dropped, nothing else changes.
                        let got = Model::read(&log);
                        let tail = rec
                            .torn_tail
                            .as_ref()
                            .unwrap_or_else(|| panic!("{ctx}: corruption went unnoticed"));
                        assert_eq!(Some(&tail.file), last_file.as_ref(), "{ctx}");
                        assert!(
                            offset as u64 >= tail.offset,
                            "{ctx}: bytes before the cut were dropped"
                        );
                        assert!(
                            got == sc.states[full] || got == sc.states[full - 1],
                            "{ctx}: served a state that was never written: {got:?}"
                        );
                        torn += 1;
                    }
                }
            }
        }
        eprintln!(
            "seed {seed:#x}: {flips} bit flips: {reported} reported as corruption, {torn} treated as a torn last record"
        );
        assert!(reported > 0 && flips > 0);
    }
}

#[test]
fn mid_log_corruption_error_names_file_offset_checksums_and_the_operator_path() {
    let dir = Path::new("/data/wal");
    let sc = scenario(7, 30);
    let fs = FaultFs::new();
    run_until_failure(&fs, dir, &sc);
    let first = fs
        .paths()
        .into_iter()
        .find(|p| p.starts_with(dir))
        .expect("a segment");
    // Byte 40 is inside the first record's body (header is 24 bytes, record header 12).
    assert!(fs.flip_bit(&first, 40, 3));
    let err = open_log(&fs, dir, &small_config()).expect_err("corruption must be reported");
    let msg = err.to_string();
    assert!(msg.contains(&first.display().to_string()), "{msg}");
    assert!(msg.contains("offset 24"), "{msg}");
    assert!(
        msg.contains("checksum") && msg.contains("expected 0x") && msg.contains("found 0x"),
        "{msg}"
    );
    assert!(
        msg.contains("empty data directory") && msg.contains("new member"),
        "{msg}"
    );
}

#[test]
fn a_missing_middle_segment_is_reported_not_skipped() {
    let dir = Path::new("/data/wal");
    let sc = scenario(11, 40);
    let fs = FaultFs::new();
    run_until_failure(&fs, dir, &sc);
    let segs: Vec<_> = fs
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    assert!(
        segs.len() >= 3,
        "scenario should span several segments, got {}",
        segs.len()
    );
    use wraft_storage::Vfs;
    fs.remove_file(&segs[1]).expect("remove");
    fs.sync_dir(dir).expect("sync");
    match open_log(&fs, dir, &small_config()) {
        Err(StorageError::Corrupt { detail, .. }) => {
            assert!(detail.contains("missing"), "{detail}")
        }
        other => panic!("expected a missing-segment error, got {other:?}"),
    }
}
