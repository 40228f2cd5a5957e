//! Every fuzz target over its committed corpus (and over any regression
//! inputs in `fuzz/regressions/<target>/`), on stable, without libFuzzer:
//! a crash found once stays fixed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wraft_fuzz_harness as h;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 13] = [
    ("frame_decode", h::frame_decode),
    ("frame_stream", h::frame_stream),
    ("raft_message", h::raft_message),
    ("wal_recovery", h::wal_recovery),
    ("snapshot_open", h::snapshot_open),
    ("snapshot_incoming", h::snapshot_incoming),
    ("client_proto", h::client_proto),
    ("config_toml", h::config_toml),
    ("node_snapshot_parse", h::node_snapshot_parse),
    ("transfer_offer", h::transfer_offer),
    ("transfer_reply", h::transfer_reply),
    ("transfer_chunk", h::transfer_chunk),
    ("transfer_manifest", h::transfer_manifest),
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
                // As the target does: the older snapshot a file may share bytes with.
                let owner = fs
                    .open(
                        &dir.join(format!("{}.snap", h::OWNER_ID)),
                        wraft_storage::OpenMode::CreateNew,
                    )
                    .unwrap();
                owner.write_all_at(&h::owner_snapshot().0, 0).unwrap();
                owner.sync_data().unwrap();
                fs.sync_dir(dir).unwrap();
                let (_s, rec) = SnapshotStore::open(fs, dir, &h::storage_config()).unwrap();
                assert_eq!(
                    rec.latest.map(|l| l.meta.id),
                    Some(h::SNAP_ID),
                    "seed {name} not recovered"
                );
            }
            _ => {}
        }
    }
}

/// The same for the node snapshot and transfer seeds: valid bodies parse and read back, a
/// valid offer is accepted, the reply sequence reaches `Received`, and the chunk streams are
/// written to their end (so the fuzzer starts past the checksums and the first checks).
#[test]
fn valid_node_snapshot_and_transfer_seeds_reach_the_deep_paths() {
    use wraft_snapshot::format::{MemoryBody, NodeSnapshot};
    use wraft_snapshot::receive::decide::{ChunkStream, ChunkVerdict, check_offer};
    use wraft_snapshot::send::{AckStep, Acks, OfferAnswer, judge_answer};
    use wraft_snapshot::wire::{self, CHUNK_HEADER_BYTES};
    let mut reached = 0;
    for (target, name, bytes) in h::seeds::all() {
        match (target, name.as_str()) {
            (
                "node_snapshot_parse",
                "two-machines"
                | "two-machines-resealed"
                | "version-1"
                | "no-machines"
                | "module-by-reference",
            ) => {
                let snap = NodeSnapshot::parse(Arc::new(MemoryBody::new(
                    bytes[1..].to_vec(),
                    name.clone(),
                )))
                .unwrap_or_else(|e| panic!("seed {name} does not parse: {e}"));
                for i in 0..snap.sections.len() {
                    let mut src = snap.machine_chunks(i).unwrap();
                    let mut n = 0;
                    while src.next_chunk().unwrap().is_some() {
                        n += 1;
                    }
                    assert_eq!(n, snap.sections[i].chunks, "seed {name}");
                }
                reached += 1;
            }
            ("transfer_offer", "offer") => {
                let offer = wire::decode_offer(bytes[0], &bytes[1..]).unwrap();
                check_offer(&offer, h::TRANSFER_CHUNK_BYTES_MAX).unwrap();
                reached += 1;
            }
            ("transfer_reply", "accept-acks-nack-received") => {
                let mut rest = &bytes[..];
                let mut replies = Vec::new();
                while let [kind, len, tail @ ..] = rest {
                    let (p, tail) = tail.split_at(usize::from(*len));
                    replies.push(wire::decode_reply(*kind, p).unwrap());
                    rest = tail;
                }
                let mut replies = replies.into_iter();
                let Ok(OfferAnswer::Accept { resume_from }) =
                    judge_answer(replies.next(), h::TRANSFER_FILE_BYTES, 2, h::TRANSFER_ID)
                else {
                    panic!("seed {name}: the first reply is not an accept");
                };
                let mut acks = Acks::new(
                    2,
                    h::TRANSFER_ID,
                    resume_from,
                    h::TRANSFER_FILE_BYTES,
                    u64::from(h::TRANSFER_CHUNK_BYTES),
                    h::TRANSFER_DIGEST,
                );
                let last = replies.map(|r| acks.on_reply(Some(r)).unwrap()).last();
                assert_eq!(last, Some(AckStep::Received), "seed {name}");
                reached += 1;
            }
            (
                "transfer_chunk",
                "resume-near-end-complete" | "nack-stale-resend" | "resealed-by-mode" | "flags-set",
            ) => {
                let (mode, resume) = (bytes[0], u64::from(bytes[2]));
                let limit = h::TRANSFER_CHUNK_BYTES;
                let from = resume * u64::from(limit);
                let mut s =
                    ChunkStream::new(from, h::TRANSFER_FILE_BYTES, limit, u32::from(bytes[1]));
                let mut rest = &bytes[3..];
                let mut written = 0;
                while let Some((hdr, tail)) = rest.split_first_chunk::<CHUNK_HEADER_BYTES>() {
                    let mut hdr = *hdr;
                    let len = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize;
                    let (data, tail) = tail.split_at(len);
                    rest = tail;
                    if mode & 2 != 0 {
                        hdr[16..20].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
                    }
                    if mode & 1 != 0 {
                        let c = crc32c::crc32c(&hdr[..20]);
                        hdr[20..24].copy_from_slice(&c.to_le_bytes());
                    }
                    let hd = s
                        .on_header(&hdr)
                        .unwrap_or_else(|e| panic!("seed {name}: {e}"));
                    if s.on_data(&hd, data) == ChunkVerdict::Write {
                        written += 1;
                    }
                }
                assert!(written >= 1, "seed {name} writes nothing");
                if name == "resume-near-end-complete" {
                    assert!(s.is_complete(), "seed {name}");
                }
                if name == "nack-stale-resend" {
                    assert_eq!(s.expected(), 2 * u64::from(limit), "seed {name}");
                }
                reached += 1;
            }
            ("transfer_manifest", "two-parts-two-held" | "many-small") => {
                use wraft_snapshot::manifest::{Fill, LocalSegments, ManifestIntake, plan};
                let held = &bytes[2..2 + usize::from(bytes[1])];
                let mut rest = &bytes[2 + held.len()..];
                let mut intake = ManifestIntake::new(h::MANIFEST_FILE_BYTES);
                let mut complete = false;
                while let [kind, l0, l1, tail @ ..] = rest {
                    let (p, tail) = tail.split_at(usize::from(u16::from_le_bytes([*l0, *l1])));
                    rest = tail;
                    complete = intake
                        .on_part(wire::decode_manifest_part(*kind, p).unwrap())
                        .unwrap_or_else(|e| panic!("seed {name}: {e}"));
                }
                assert!(complete, "seed {name}: manifest incomplete");
                let segments = intake.into_segments();
                let mut local = LocalSegments::default();
                let mine: Vec<_> = segments
                    .iter()
                    .filter(|s| held.contains(&s.hash[0]))
                    .copied()
                    .collect();
                local.add(0, &mine);
                let fills = plan(&segments, 0, &local);
                let copies = fills
                    .iter()
                    .filter(|f| matches!(f, Fill::Copy { .. }))
                    .count();
                assert!(copies > 0 && copies < fills.len(), "seed {name}: {fills:?}");
                reached += 1;
            }
            _ => {}
        }
    }
    assert_eq!(reached, 5 + 1 + 1 + 4 + 2, "a named seed is missing");
}
