//! Test helper for `tests/kill9.rs`: appends to a log in a loop and prints every index that is
//! acknowledged as durable, until it is killed.
//!
//! Usage: `storage-kill9-child <data-dir>`
//!
//! Output lines: `recovered <last_index>` once, then `ack <last_index>` for each durable batch.
//! Entry `i` has term `expected_term(i)` and payload `expected_payload(i)` (`tests/kill9.rs`
//! reimplements both so the check is independent). Every `SNAPSHOT_EVERY` entries it writes a
//! snapshot whose body is `snapshot_body(index)` and compacts the log to `KEEP_BEHIND` entries
//! below it, so kills also land in snapshot writes, renames and segment deletions.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;

use wraft_storage::{
    Bytes, HardState, LogEntry, Membership, SnapshotId, SnapshotMeta, Storage, StorageConfig,
    WriteBatch,
};

fn expected_term(index: u64) -> u64 {
    1 + index / 1000
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

const SNAPSHOT_EVERY: u64 = 5_000;
const KEEP_BEHIND: u64 = 2_000;

fn snapshot_body(index: u64) -> Vec<u8> {
    format!("snapshot through {index};")
        .repeat(200)
        .into_bytes()
}

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: storage-kill9-child <data-dir>");
        std::process::exit(2);
    };
    let cfg = StorageConfig {
        queue_ops_max: 256,
        segment_bytes: 256 << 10,
        preallocate_bytes: 64 << 10,
        ..StorageConfig::default()
    };
    let (storage, rec) = match Storage::open(&dir, &cfg, None) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(1);
        }
    };
    let mut next = rec.log.last_index + 1;
    println!("recovered {}", rec.log.last_index);
    let _ = std::io::stdout().flush();

    // The acknowledger prints in submission order, after each ticket is durable.
    let (tx, rx) = mpsc::sync_channel::<(wraft_storage::WriteTicket, u64)>(1024);
    let acker = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        for (ticket, last) in rx {
            if ticket.wait().is_err() {
                std::process::exit(1);
            }
            let _ = writeln!(out, "ack {last}");
            let _ = out.flush();
        }
    });
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ next;
    let mut next_snapshot = (next / SNAPSHOT_EVERY + 1) * SNAPSHOT_EVERY;
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = 1 + rng % 8;
        let entries: Vec<LogEntry> = (next..next + n)
            .map(|i| LogEntry {
                index: i,
                term: expected_term(i),
                payload: expected_payload(i),
            })
            .collect();
        let last = next + n - 1;
        let hs = HardState {
            term: expected_term(last),
            vote: Some(1),
            commit: last,
        };
        match storage.log.submit(
            WriteBatch::default()
                .with_entries(entries)
                .with_hard_state(hs),
        ) {
            Ok(t) => {
                if last >= next_snapshot {
                    // Single node: durable == committed, so the snapshot may cover `last`.
                    if let Err(e) = t.wait().and_then(|()| snapshot_and_compact(&storage, last)) {
                        eprintln!("snapshot failed: {e}");
                        std::process::exit(1);
                    }
                    next_snapshot = last + SNAPSHOT_EVERY;
                }
                if tx.send((t, last)).is_err() {
                    break;
                }
            }
            Err(e) => {
                eprintln!("submit failed: {e}");
                std::process::exit(1);
            }
        }
        next = last + 1;
    }
    drop(tx);
    let _ = acker.join();
}

fn snapshot_and_compact(storage: &Storage, index: u64) -> wraft_storage::Result<()> {
    let meta = SnapshotMeta {
        id: SnapshotId {
            last_index: index,
            last_term: expected_term(index),
        },
        membership: Membership {
            voters: vec![1],
            learners: vec![],
        },
        format: "kill9/1".into(),
    };
    let mut w = storage.snapshots.begin(meta)?;
    for chunk in snapshot_body(index).chunks(1000) {
        w.write_chunk(chunk)?;
    }
    w.finish()?;
    let floor = index - KEEP_BEHIND;
    storage.log.compact(floor, expected_term(floor))?.wait()
}
