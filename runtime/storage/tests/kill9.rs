//! `kill -9` a process appending in a loop, many times; every acknowledged entry must survive.
//!
//! Cycles: 25 by default, `WRAFT_STORAGE_KILL9_CYCLES=N` to change. The seed for kill timings is
//! printed; `WRAFT_STORAGE_KILL9_SEED=S` replays it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wraft_storage::{Bytes, Storage, StorageConfig};

// Independent re-statement of the child's payload rule (see src/bin/storage-kill9-child.rs).
fn expected_term(index: u64) -> u64 {
    1 + index / 1000
}

fn snapshot_body(index: u64) -> Vec<u8> {
    format!("snapshot through {index};")
        .repeat(200)
        .into_bytes()
}

fn expected_payload(index: u64) -> Bytes {
    let len = (index % 300) as usize;
    let seed = index.to_le_bytes();
    Bytes::from(
        (0..len)
            .map(|i| seed[i % 8] ^ (i as u8))
            .collect::<Vec<u8>>(),
    )
}

/// Kills the child if the test panics mid-cycle, so no process outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_acknowledged_entry_survives_repeated_sigkill() {
    let cycles: u32 = std::env::var("WRAFT_STORAGE_KILL9_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("WRAFT_STORAGE_KILL9_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!(
        "kill9 seed {seed} (replay: WRAFT_STORAGE_KILL9_SEED={seed} cargo test -p wraft-storage --test kill9)"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut max_acked = 0u64;
    let mut total_acks = 0usize;
    let mut snapshots_seen = 0u64;
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_storage-kill9-child"))
                .arg(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child"),
        );
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for recovery to finish, then let it append for a random while.
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child reports recovery");
        let recovered: u64 = first
            .strip_prefix("recovered ")
            .and_then(|v| v.parse().ok())
            .expect("recovered line");
        assert!(
            recovered >= max_acked,
            "cycle {cycle}: child recovered {recovered} < acknowledged {max_acked} (seed {seed})"
        );
        std::thread::sleep(Duration::from_millis(rng.u64(20..250)));
        child.0.kill().expect("SIGKILL");
        child.0.wait().expect("reap");
        reader.join().expect("reader");
        for line in rx.try_iter() {
            if let Some(v) = line
                .strip_prefix("ack ")
                .and_then(|v| v.parse::<u64>().ok())
            {
                max_acked = max_acked.max(v);
                total_acks += 1;
            }
        }
        // Verify in-process: every acknowledged entry is there with the right term and bytes.
        let (st, rec) = Storage::open(dir.path(), &StorageConfig::default(), None)
            .unwrap_or_else(|e| panic!("cycle {cycle}: recovery failed (seed {seed}): {e}"));
        assert!(
            rec.log.last_index >= max_acked,
            "cycle {cycle}: acknowledged index {max_acked} lost, log ends at {} (seed {seed})",
            rec.log.last_index
        );
        assert!(
            rec.log.hard_state.commit >= max_acked,
            "cycle {cycle}: hard state lost (seed {seed})"
        );
        // Entries at or below the floor live in the snapshot, which must be intact.
        if let Some(snap) = rec.snapshot() {
            let id = snap.meta.id;
            assert!(
                id.last_index >= rec.log.floor.0,
                "cycle {cycle}: snapshot behind the floor (seed {seed})"
            );
            assert_eq!(id.last_term, expected_term(id.last_index));
            let mut r = st.snapshots.open_reader(id).expect("snapshot reader");
            let mut body = Vec::new();
            while let Some(c) = r.next_chunk(4096).expect("snapshot chunk") {
                body.extend(c);
            }
            assert_eq!(
                body,
                snapshot_body(id.last_index),
                "cycle {cycle}: snapshot body wrong (seed {seed})"
            );
            snapshots_seen = snapshots_seen.max(id.last_index);
        } else {
            assert_eq!(
                rec.log.floor.0, 0,
                "cycle {cycle}: compacted log without a snapshot (seed {seed})"
            );
        }
        let mut next = rec.log.first_index;
        while next <= rec.log.last_index {
            let batch = st
                .log
                .entries(next, rec.log.last_index + 1, 1 << 20)
                .expect("read");
            for e in batch {
                assert_eq!(e.index, next);
                assert_eq!(
                    e.term,
                    expected_term(e.index),
                    "cycle {cycle}: wrong term at {} (seed {seed})",
                    e.index
                );
                assert_eq!(
                    e.payload,
                    expected_payload(e.index),
                    "cycle {cycle}: wrong payload at {} (seed {seed})",
                    e.index
                );
                next += 1;
            }
        }
    }
    eprintln!(
        "{cycles} SIGKILL cycles, {total_acks} acknowledgements, {max_acked} entries acknowledged, \
         newest snapshot at {snapshots_seen}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(max_acked > 0, "the child must have acknowledged something");
}
