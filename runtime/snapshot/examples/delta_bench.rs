//! Incremental snapshot catch-up next to a full transfer of the same file, measured alternately
//! in one run.
//!
//! Run: `cargo run --release -p wraft-snapshot --example delta_bench`
//!
//! The state is a key-value map (keys `user/0000000000`…, values of ~1 KiB of words and numbers,
//! which zstd compresses about 3.7:1, as it does text) of `BENCH_STATE_MIB` MiB of records
//! (default 1024), snapshotted by the guest SDK's default format (content-defined pieces, one
//! zstd frame each), natively: the bytes a wasm guest writes are the same. Snapshot A is the
//! state; snapshot B is the state after `BENCH_CHANGE_PERMILLE` (default 10 = 1 %) of the keys
//! were rewritten, either **clustered** (a contiguous run of keys: a hot range, time-ordered
//! keys) or **uniform** (keys drawn at random over the whole map). Each node snapshot file
//! holds a header frame, a 2 MiB module frame, a sessions frame and the machine's chunks, as
//! the node writes them.
//!
//! For each workload, on two in-process transports (mTLS, 127.0.0.1), durable syncs:
//! - **full**: B into an empty follower store (the whole file);
//! - **delta**: B into a follower store that holds A (it receives what A lacks and copies the
//!   rest from A),
//!
//! alternating full, delta, full, delta (`BENCH_REPS` pairs, default 2). It reports the bytes
//! sent and the time of each, and their ratios.
//!
//! Then, for each workload, **join** next to **full** (`BENCH_REPS` pairs): B into an empty
//! follower that may read segments from two other members (multi-source catch-up), one
//! holding A and one holding B's state at another index, as two followers that took their own
//! snapshots would. The members answer in process (no network) through the same calls a node
//! serves (`wraft_snapshot::peers`), each under its own copy of the sender's cap. It reports
//! the bytes each source sent. `BENCH_CAP_MIB_S` caps the sender (default: no
//! cap; loopback then moves ~500 MiB/s, so a full transfer is bound by the follower's disk, as
//! an incremental one is by writing the whole assembled file); a cap of 119 MiB/s is a 1 Gbit/s
//! link. `BENCH_DIR` chooses the file system (default: the working directory's).

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wraft_guest::{
    AppError, DefaultSnapshot, EntryCtx, Json, Records, SnapshotFormat, StateMachine,
};
use wraft_snapshot::format::FrameKind;
use wraft_snapshot::peers::{PeerHeld, PeerRead, SegmentIndex};
use wraft_snapshot::{
    BandwidthLimiter, IncomingSlots, SnapshotPeers, TransferConfig, receive_snapshot_from,
    send_snapshot,
};
use wraft_storage::{
    Membership, SnapshotId, SnapshotInfo, SnapshotMeta, SnapshotStore, StdFs, StorageConfig,
};
use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
use wraft_transport::{AddressBook, Inbound, Transport, TransportConfig};

#[derive(Default, Serialize, Deserialize)]
struct Map {
    map: std::collections::BTreeMap<String, String>,
}

impl StateMachine for Map {
    const NAME: &'static str = "kv";
    const VERSION: &'static str = "bench";
    type Codec = Json;
    type Snapshot = DefaultSnapshot;
    type Command = (String, String);
    type Output = ();
    type Query = ();
    type Reply = ();
    fn apply(&mut self, _: &EntryCtx, (k, v): (String, String)) -> Result<(), AppError> {
        self.map.insert(k, v);
        Ok(())
    }
    fn query(&self, _: ()) -> Result<(), AppError> {
        Ok(())
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

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];
const VALUE_BYTES: usize = 1024;

fn value(rng: &mut fastrand::Rng) -> String {
    let mut v = String::with_capacity(VALUE_BYTES + 16);
    while v.len() < VALUE_BYTES {
        v.push_str(WORDS[rng.usize(..WORDS.len())]);
        v.push_str(&rng.u32(..100_000).to_string());
        v.push(' ');
    }
    v.truncate(VALUE_BYTES);
    v
}

fn key(i: u64) -> String {
    format!("user/{i:010}")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// One frame, as one storage segment (shared if the writer shares and an older file has it).
fn frame(w: &mut wraft_storage::SnapshotWriter, kind: FrameKind, payload: &[u8]) {
    let mut h = Vec::with_capacity(9);
    h.push(kind as u8);
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    h.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    w.write_segment(&[&h, payload]).unwrap();
}

/// Write `state` as a node snapshot at `index` into `store`, sharing the frames older snapshots
/// there hold if `share` (as a node does); returns the file.
fn write_snapshot(
    store: &SnapshotStore,
    state: Rc<Map>,
    index: u64,
    module: &[u8],
    share: bool,
) -> SnapshotInfo {
    let id = SnapshotId {
        last_index: index,
        last_term: 1,
    };
    let meta = SnapshotMeta {
        id,
        membership: Membership {
            voters: vec![1, 2],
            learners: vec![],
        },
        format: "wraft-node/1".into(),
    };
    let mut w = if share {
        let cache = wraft_snapshot::manifest::SegmentCache::default();
        let shared = wraft_snapshot::manifest::shared_segments(store, &cache);
        store.begin_sharing(meta, Arc::new(shared)).unwrap()
    } else {
        store.begin(meta).unwrap()
    };
    frame(
        &mut w,
        FrameKind::Header,
        format!("header at {index}").as_bytes(),
    );
    frame(&mut w, FrameKind::Module, module);
    frame(
        &mut w,
        FrameKind::Sessions,
        format!("sessions at {index}").as_bytes(),
    );
    frame(&mut w, FrameKind::MachineBegin, &0u32.to_le_bytes());
    let mut r = <DefaultSnapshot as SnapshotFormat<Map>>::begin_snapshot(state).unwrap();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    while let Some(c) =
        <DefaultSnapshot as SnapshotFormat<Map>>::next_chunk(&mut r, 1 << 20).unwrap()
    {
        frame(&mut w, FrameKind::MachineChunk, &c);
        chunks += 1;
        bytes += c.len() as u64;
    }
    frame(
        &mut w,
        FrameKind::MachineEnd,
        &[chunks.to_le_bytes(), bytes.to_le_bytes()].concat(),
    );
    frame(&mut w, FrameKind::End, &1u32.to_le_bytes());
    w.finish().unwrap()
}

fn bind(
    ca: &ClusterCa,
    id: u64,
    m: &wraft_transport::Membership,
    book: &AddressBook,
) -> (Transport, Inbound) {
    let issued = ca.issue_node(id, &[], Validity::days_from_now(1)).unwrap();
    let tls = TlsIdentity::from_issued(ca.cert_pem(), &issued).unwrap();
    let cfg = TransportConfig::new(id, "127.0.0.1:0".parse().unwrap());
    let (t, inbound) = Transport::bind(cfg, &tls, m.clone(), book.clone()).unwrap();
    book.insert(id, t.local_addr().unwrap());
    (t, inbound)
}

fn open(dir: &Path) -> SnapshotStore {
    SnapshotStore::open(Arc::new(StdFs), dir, &StorageConfig::default())
        .unwrap()
        .0
}

/// A store keeping `retain` snapshots.
fn open_retaining(dir: &Path, retain: usize) -> SnapshotStore {
    let cfg = StorageConfig {
        snapshot_retain_count: retain,
        ..StorageConfig::default()
    };
    SnapshotStore::open(Arc::new(StdFs), dir, &cfg).unwrap().0
}

/// Bytes the files of `dir` take on disk (allocated blocks: holes cost nothing).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

/// Rewrite `changed` of the `keys` keys of `s`, as `workload` says; returns the undo list.
fn change(
    s: &mut Map,
    workload: &str,
    keys: u64,
    changed: u64,
    rng: &mut fastrand::Rng,
) -> Vec<(String, String)> {
    let start = rng.u64(..keys - changed);
    let mut undo = Vec::new();
    for n in 0..changed {
        let i = if workload == "clustered" {
            start + n
        } else {
            rng.u64(..keys)
        };
        if let Some(old) = s.map.insert(key(i), value(rng)) {
            undo.push((key(i), old));
        }
    }
    undo
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

struct Run {
    sent: u64,
    took: Duration,
    /// Bytes read from each member (join runs).
    from_members: Vec<(u64, u64)>,
}

/// Members answering in process from their stores, each under its own cap.
struct Members(Vec<(u64, SnapshotStore, Arc<BandwidthLimiter>, SegmentIndex)>);

impl SnapshotPeers for Members {
    fn candidates(&self, leader: u64) -> Vec<u64> {
        self.0
            .iter()
            .map(|m| m.0)
            .filter(|&id| id != leader)
            .collect()
    }
    fn held(&self, peer: u64, hashes: Vec<[u8; 32]>) -> PeerHeld {
        let m = self.0.iter().find(|m| m.0 == peer).cloned();
        Box::pin(async move {
            let (_, store, _, index) = m.ok_or("no such member")?;
            tokio::task::spawn_blocking(move || index.held(&store, &hashes))
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn read(&self, peer: u64, hash: [u8; 32], len: u32) -> PeerRead {
        let m = self.0.iter().find(|m| m.0 == peer).cloned();
        Box::pin(async move {
            let (_, store, limiter, index) = m.ok_or("no such member")?;
            limiter.acquire(u64::from(len)).await;
            tokio::task::spawn_blocking(move || index.read(&store, hash, len))
                .await
                .map_err(|e| e.to_string())??
                .ok_or_else(|| "not held".to_string())
        })
    }
    fn distrust(&self, peer: u64, why: &str) {
        panic!("member {peer} distrusted: {why}");
    }
}

fn cap() -> Option<u64> {
    Some(env_u64("BENCH_CAP_MIB_S", 0) << 20).filter(|c| *c > 0)
}

/// The leader's and the followers' transfer settings. Each keeps its segment cache across
/// transfers, as a node does (it names a snapshot's segments when it creates or receives it).
struct Cfgs {
    leader: TransferConfig,
    follower: TransferConfig,
}

#[allow(clippy::too_many_arguments)]
async fn transfer(
    t1: &Transport,
    in2: &mut Inbound,
    cfgs: &Cfgs,
    leader: &SnapshotStore,
    id: SnapshotId,
    follower_dir: &Path,
    members: Option<Arc<dyn SnapshotPeers>>,
) -> Run {
    let fstore = open(follower_dir);
    let (lcfg, fcfg) = (&cfgs.leader, &cfgs.follower);
    let slots = IncomingSlots::new(2);
    let limiter = BandwidthLimiter::new(cap());
    let out = t1.open_bulk(2).await.unwrap();
    let send = send_snapshot(
        out,
        leader,
        leader.pin(id).unwrap(),
        1,
        lcfg,
        &limiter,
        |_| {},
    );
    let recv = async {
        let inb = in2.bulk.recv().await.unwrap();
        receive_snapshot_from(inb, &fstore, fcfg, &slots, members, |_| {}).await
    };
    let (s, r) = tokio::join!(send, recv);
    let (s, r) = (s.unwrap(), r.unwrap());
    assert_eq!(
        r.info.digest,
        leader.list().iter().find(|i| i.id() == id).unwrap().digest
    );
    Run {
        sent: s.bytes_sent,
        took: s.duration,
        from_members: r.bytes_from_members,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let state_mib = env_u64("BENCH_STATE_MIB", 1024);
    let permille = env_u64("BENCH_CHANGE_PERMILLE", 10);
    let reps = env_u64("BENCH_REPS", 2).max(1);
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into());
    let root = tempfile::Builder::new()
        .prefix("wraft-delta-bench")
        .tempdir_in(&base)
        .unwrap();
    let record_bytes = (VALUE_BYTES + 16 + 4) as u64;
    let keys = (state_mib << 20) / record_bytes;
    let changed = keys * permille / 1000;
    println!(
        "state {state_mib} MiB: {keys} keys of {VALUE_BYTES}-byte values; {changed} keys ({permille}‰) rewritten; best of {reps} pairs; sender cap {} MiB/s; dir {}",
        env_u64("BENCH_CAP_MIB_S", 0),
        root.path().display()
    );

    let t = Instant::now();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut state = Map::default();
    for i in 0..keys {
        state.map.insert(key(i), value(&mut rng));
    }
    let mut module = vec![0u8; 2 << 20];
    rng.fill(&mut module);
    println!("built the state in {:.1} s", t.elapsed().as_secs_f64());

    let ca = ClusterCa::generate("bench", Validity::days_from_now(1)).unwrap();
    let membership = wraft_transport::Membership::new([1, 2]);
    let book = AddressBook::default();
    let (t1, _in1) = bind(&ca, 1, &membership, &book);
    let (t2, mut in2) = bind(&ca, 2, &membership, &book);

    // A, once, as the follower's snapshot.
    let held = root.path().join("held");
    let mut state = Rc::new(state);
    let t = Instant::now();
    let a = write_snapshot(&open(&held), state.clone(), 1000, &module, false);
    let cfgs = Cfgs {
        leader: TransferConfig::default(),
        follower: TransferConfig::default(),
    };
    wraft_snapshot::manifest::remember_segments(&open(&held), a.id(), &cfgs.follower.segments)
        .unwrap();
    println!(
        "snapshot A: {:.1} MiB file in {:.1} s",
        mib(a.file_len),
        t.elapsed().as_secs_f64()
    );

    for (wi, workload) in ["clustered", "uniform"].into_iter().enumerate() {
        let s = Rc::get_mut(&mut state).expect("no reader holds the state");
        let mut rng = fastrand::Rng::with_seed(100 + wi as u64);
        let undo = change(s, workload, keys, changed, &mut rng);
        let ldir = root.path().join(format!("leader-{workload}"));
        let leader = open(&ldir);
        let index = 2000 + wi as u64;
        let t = Instant::now();
        let b = write_snapshot(&leader, state.clone(), index, &module, false);
        let whole_took = t.elapsed();
        let id = b.id();
        wraft_snapshot::manifest::remember_segments(&leader, id, &cfgs.leader.segments).unwrap();

        // Retained snapshots: A, then B and C (another change of the same kind) written
        // sharing what the older files hold, as a node writes them, next to B written whole.
        let rdir = root.path().join(format!("retained-{workload}"));
        copy_dir(&held, &rdir);
        let one = disk_bytes(&rdir);
        let retained = open_retaining(&rdir, 3);
        let t = Instant::now();
        let b_shared = write_snapshot(&retained, state.clone(), index, &module, true);
        let shared_took = t.elapsed();
        let s = Rc::get_mut(&mut state).expect("no reader holds the state");
        let undo2 = change(s, workload, keys, changed, &mut rng);
        write_snapshot(&retained, state.clone(), index + 10, &module, true);
        let three = disk_bytes(&rdir);
        println!(
            "{workload} retained: one snapshot {:.1} MiB on disk, three {:.1} MiB = {:.3}x one | B written whole {:.2} s, sharing {:.2} s ({:.1} of {:.1} MiB shared)",
            mib(one),
            mib(three),
            three as f64 / one as f64,
            whole_took.as_secs_f64(),
            shared_took.as_secs_f64(),
            mib(b_shared.shared_bytes),
            mib(b_shared.file_len)
        );
        drop(retained);
        let _ = std::fs::remove_dir_all(&rdir);
        let s = Rc::get_mut(&mut state).expect("no reader holds the state");
        for (k, v) in undo2.into_iter().rev() {
            s.map.insert(k, v);
        }
        let (mut full, mut delta): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let fdir = root.path().join(format!("empty-{workload}-{rep}"));
            let r = transfer(&t1, &mut in2, &cfgs, &leader, id, &fdir, None).await;
            let _ = std::fs::remove_dir_all(&fdir);
            full.push(r);
            let ddir = root.path().join(format!("holding-a-{workload}-{rep}"));
            copy_dir(&held, &ddir);
            let before = disk_bytes(&ddir);
            let r = transfer(&t1, &mut in2, &cfgs, &leader, id, &ddir, None).await;
            if rep == 0 {
                println!(
                    "  {workload}: the follower's disk grew by {:.1} MiB for B",
                    mib(disk_bytes(&ddir) - before)
                );
            }
            let _ = std::fs::remove_dir_all(&ddir);
            delta.push(r);
            println!(
                "  {workload} pair {rep}: full {:.1} MiB in {:.2} s | delta {:.1} MiB in {:.2} s",
                mib(full[rep as usize].sent),
                full[rep as usize].took.as_secs_f64(),
                mib(delta[rep as usize].sent),
                delta[rep as usize].took.as_secs_f64()
            );
        }
        let best = |v: &[Run]| v.iter().map(|r| r.took).min().unwrap();
        let (f, d) = (best(&full), best(&delta));
        // What any verified delta costs at least: the follower reads every byte it keeps and
        // checks the whole-file digest (one pass of BLAKE3 over the file).
        let floor = (0..reps)
            .map(|_| {
                let t = Instant::now();
                let r = leader.open_reader(id).unwrap();
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut at = 0;
                while at < b.file_len {
                    let n = r.read_file_at(at, &mut buf).unwrap();
                    h.update(&buf[..n]);
                    at += n as u64;
                }
                std::hint::black_box(h.finalize());
                t.elapsed()
            })
            .min()
            .unwrap();
        println!(
            "{workload}: floor of a verified delta (read + BLAKE3 of the file, page cache) {:.2} s; delta / floor {:.2}",
            floor.as_secs_f64(),
            d.as_secs_f64() / floor.as_secs_f64()
        );
        let sent = delta.iter().map(|r| r.sent).max().unwrap();
        println!(
            "{workload}: file {:.1} MiB | delta sent {:.2} MiB = {:.2} % of full | best full {:.2} s, best delta {:.2} s: {:.1}x faster",
            mib(b.file_len),
            mib(sent),
            100.0 * sent as f64 / b.file_len as f64,
            f.as_secs_f64(),
            d.as_secs_f64(),
            f.as_secs_f64() / d.as_secs_f64()
        );
        // Join: an empty follower with two members to read from.
        let (mdir_a, mdir_b) = (
            root.path().join(format!("member-a-{workload}")),
            root.path().join(format!("member-b-{workload}")),
        );
        copy_dir(&held, &mdir_a);
        write_snapshot(&open(&mdir_b), state.clone(), index + 1, &module, false);
        let members: Arc<dyn SnapshotPeers> = Arc::new(Members(vec![
            (
                3,
                open(&mdir_a),
                Arc::new(BandwidthLimiter::new(cap())),
                SegmentIndex::default(),
            ),
            (
                4,
                open(&mdir_b),
                Arc::new(BandwidthLimiter::new(cap())),
                SegmentIndex::default(),
            ),
        ]));
        let (mut full, mut join): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let fdir = root.path().join(format!("empty-{workload}-{rep}"));
            full.push(transfer(&t1, &mut in2, &cfgs, &leader, id, &fdir, None).await);
            let _ = std::fs::remove_dir_all(&fdir);
            let jdir = root.path().join(format!("joining-{workload}-{rep}"));
            let r = transfer(
                &t1,
                &mut in2,
                &cfgs,
                &leader,
                id,
                &jdir,
                Some(members.clone()),
            )
            .await;
            let _ = std::fs::remove_dir_all(&jdir);
            println!(
                "  {workload} join pair {rep}: full {:.1} MiB in {:.2} s | join {:.1} MiB from the leader, {} in {:.2} s",
                mib(full[rep as usize].sent),
                full[rep as usize].took.as_secs_f64(),
                mib(r.sent),
                r.from_members
                    .iter()
                    .map(|(m, b)| format!("{:.1} MiB from member {m}", mib(*b)))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.took.as_secs_f64()
            );
            join.push(r);
        }
        let (f, j) = (best(&full), best(&join));
        let leader_max = join.iter().map(|r| r.sent).max().unwrap();
        println!(
            "{workload} join: at most {:.1} MiB = {:.1} % of the file from the leader | best full {:.2} s, best join {:.2} s: {:.2}x",
            mib(leader_max),
            100.0 * leader_max as f64 / b.file_len as f64,
            f.as_secs_f64(),
            j.as_secs_f64(),
            f.as_secs_f64() / j.as_secs_f64()
        );
        drop(members);
        let _ = std::fs::remove_dir_all(&mdir_a);
        let _ = std::fs::remove_dir_all(&mdir_b);
        drop(leader);
        let _ = std::fs::remove_dir_all(&ldir);
        // Back to A's state for the next workload.
        let s = Rc::get_mut(&mut state).expect("no reader holds the state");
        for (k, v) in undo.into_iter().rev() {
            s.map.insert(k, v);
        }
    }
    t1.shutdown().await;
    t2.shutdown().await;
}
