//! Every fuzz target over its committed corpus (and over any regression
//! inputs in `fuzz/regressions/<target>/`), on stable, without libFuzzer:
//! a crash found once stays fixed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wraft_fuzz_harness as h;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 8] = [
    ("frame_decode", h::frame_decode),
    ("frame_stream", h::frame_stream),
    ("raft_message", h::raft_message),
    ("wal_recovery", h::wal_recovery),
    ("snapshot_open", h::snapshot_open),
    ("snapshot_incoming", h::snapshot_incoming),
    ("client_proto", h::client_proto),
    ("config_toml", h::config_toml),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    v.sort();
    v
}

#[test]
fn every_target_survives_its_corpus_and_regressions() {
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty: run gen-corpus"
        );
        for f in corpus
            .iter()
            .chain(&files(&fuzz_dir().join("regressions").join(name)))
        {
            let bytes = std::fs::read(f).expect("read corpus file");
            eprintln!("{name}: {}", f.display());
            target(&bytes);
        }
    }
}

#[test]
fn generated_seeds_match_the_committed_corpus() {
    for (target, name, bytes) in h::seeds::all() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is stale or missing: rerun `cargo run --manifest-path fuzz/Cargo.toml -p wraft-fuzz-harness --bin gen-corpus`",
            path.display()
        );
    }
}

/// The seeds are only useful if they reach the deep code: valid logs and
/// snapshots must be recovered, not rejected at the first check.
#[test]
fn valid_seeds_reach_recovery_success_paths() {
    use wraft_storage::fault::FaultFs;
    use wraft_storage::{Log, SnapshotStore, Vfs};
    for (target, name, bytes) in h::seeds::all() {
        match (target, name.as_str()) {
            (
                "wal_recovery",
                "small"
                | "small-resealed"
                | "multi-segment"
                | "compacted"
                | "truncate-and-overwrite",
            ) => {
                let fs = Arc::new(FaultFs::new());
                let dir = Path::new(h::WAL_DIR);
                fs.create_dir_all(dir).unwrap();
                let segs = h::split_segments(&bytes[1..]);
                if name == "multi-segment" {
                    assert!(
                        segs.len() > 1,
                        "multi-segment seed has {} segments",
                        segs.len()
                    );
                }
                for (seq, seg) in segs {
                    let f = fs
                        .open(
                            &dir.join(format!("{seq:020}.wal")),
                            wraft_storage::OpenMode::CreateNew,
                        )
                        .unwrap();
                    f.write_all_at(seg, 0).unwrap();
                    f.sync_data().unwrap();
                }
                fs.sync_dir(dir).unwrap();
                let (_log, rec) = Log::open(fs, dir, &h::storage_config(), None)
                    .unwrap_or_else(|e| panic!("seed {name} does not recover: {e}"));
                assert!(rec.last_index >= 3, "seed {name}: {rec:?}");
            }
            ("snapshot_open", _) => {
                let fs = Arc::new(FaultFs::new());
                let dir = Path::new(h::SNAP_DIR);
                fs.create_dir_all(dir).unwrap();
                let file = if bytes[0] % 2 == 1 {
                    &bytes[1..bytes.len() - h::PROGRESS_FILE_BYTES]
                } else {
                    &bytes[1..]
                };
                let f = fs
                    .open(
                        &dir.join(format!("{}.snap", h::SNAP_ID)),
                        wraft_storage::OpenMode::CreateNew,
                    )
                    .unwrap();
                f.write_all_at(file, 0).unwrap();
                f.sync_data().unwrap();
                let (_s, rec) = SnapshotStore::open(fs, dir, &h::storage_config()).unwrap();
                assert!(rec.latest.is_some(), "seed {name} not recovered");
            }
            _ => {}
        }
    }
}
