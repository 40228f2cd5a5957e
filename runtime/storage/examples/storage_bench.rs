//! Group-commit benchmark for `wraft-storage`.
//!
//! ```text
//! cargo run --release -p wraft-storage --example storage_bench -- [--dir DIR] [--secs N] [--raw-syncs N]
//! ```
//!
//! Measures, in one run and on one disk:
//! 1. the raw serial `fdatasync` rate (append 100 bytes + `fdatasync`, repeated), before and after;
//! 2. durable appends/s and submit-to-durable latency (p50/p99/p99.9) with 1, 16 and 256 concurrent
//!    proposers, each proposing one 100-byte entry (one `WriteBatch` per proposal) and waiting for it
//!    to be durable, in two harnesses:
//!    * `threads`: one OS thread per proposer, blocking in `WriteTicket::wait`;
//!    * `driver`: one event-loop thread keeps N proposals in flight with `try_submit` and completes
//!      them from the `WriterEvent::Durable` callback — how the node driver uses the log;
//! 3. the same at 256 proposers with `FsyncPolicy::Relaxed`, to show the CPU ceiling.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wraft_storage::{Bytes, FsyncPolicy, Log, LogEntry, StdFs, StorageConfig, WriteBatch};

const ENTRY_BYTES: usize = 100;

struct Args {
    dir: PathBuf,
    secs: u64,
    raw_syncs: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: std::env::temp_dir(),
        secs: 5,
        raw_syncs: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--dir" => args.dir = PathBuf::from(v),
            "--secs" => args.secs = v.parse().expect("--secs N"),
            "--raw-syncs" => args.raw_syncs = v.parse().expect("--raw-syncs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Raw serial fdatasync: returns (syncs/s, histogram in ns).
fn raw_fdatasync(dir: &Path, n: u64) -> (f64, Histogram<u64>) {
    let path = dir.join("raw-fdatasync.bin");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("open raw file");
    let buf = [0xA5u8; ENTRY_BYTES];
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&buf, i * ENTRY_BYTES as u64).expect("write");
        f.sync_data().expect("fdatasync");
        h.record(t.elapsed().as_nanos() as u64).expect("record");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    (rate, h)
}

struct RunResult {
    harness: &'static str,
    proposers: usize,
    policy: FsyncPolicy,
    entries: u64,
    secs: f64,
    hist: Histogram<u64>,
    syncs: u64,
    batches: u64,
}

fn run(dir: &Path, proposers: usize, policy: FsyncPolicy, secs: u64) -> RunResult {
    let _ = std::fs::remove_dir_all(dir);
    let cfg = StorageConfig {
        fsync: policy,
        ..StorageConfig::default()
    };
    let (log, _) = Log::open(Arc::new(StdFs), dir, &cfg, None).expect("open log");
    let log = Arc::new(log);
    let next = Arc::new(Mutex::new(1u64));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(vec![0x5Au8; ENTRY_BYTES]);
    let base_stats = log.stats();
    let start = Instant::now();
    let threads: Vec<_> = (0..proposers)
        .map(|_| {
            let (log, next, stop, payload) =
                (log.clone(), next.clone(), stop.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    // Index assignment and submission must be in the same order, as in a Raft
                    // leader; the lock is held only for the non-blocking part.
                    let ticket = {
                        let mut next = next.lock().expect("index lock");
                        let e = LogEntry {
                            index: *next,
                            term: 1,
                            payload: payload.clone(),
                        };
                        let ticket = log
                            .submit(WriteBatch::default().with_entries(vec![e]))
                            .expect("submit");
                        *next += 1;
                        ticket
                    };
                    ticket.wait().expect("durable");
                    h.record(t.elapsed().as_nanos() as u64).expect("record");
                    n += 1;
                }
                (n, h)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut entries = 0;
    for t in threads {
        let (n, h) = t.join().expect("proposer thread");
        entries += n;
        hist.add(h).expect("merge");
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = log.stats();
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
    RunResult {
        harness: "threads",
        proposers,
        policy,
        entries,
        secs,
        hist,
        syncs: stats.syncs - base_stats.syncs,
        batches: stats.batches - base_stats.batches,
    }
}

/// One event-loop thread keeps `inflight` single-entry proposals outstanding; completions arrive
/// through the durability callback.
fn run_driver(dir: &Path, inflight: usize, policy: FsyncPolicy, secs: u64) -> RunResult {
    let _ = std::fs::remove_dir_all(dir);
    let cfg = StorageConfig {
        fsync: policy,
        ..StorageConfig::default()
    };
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let tx = Mutex::new(tx);
    let cb: wraft_storage::EventCallback = Arc::new(move |e: &wraft_storage::WriterEvent| {
        if let wraft_storage::WriterEvent::Durable(p) = e {
            let _ = tx.lock().expect("tx").send(p.seq);
        }
    });
    let (log, _) = Log::open(Arc::new(StdFs), dir, &cfg, Some(cb)).expect("open log");
    let payload = Bytes::from(vec![0x5Au8; ENTRY_BYTES]);
    let mut next = 1u64;
    let mut pending: std::collections::VecDeque<(u64, Instant)> = std::collections::VecDeque::new();
    let propose = |pending: &mut std::collections::VecDeque<(u64, Instant)>, next: &mut u64| {
        let t = Instant::now();
        let e = LogEntry {
            index: *next,
            term: 1,
            payload: payload.clone(),
        };
        let ticket = log
            .try_submit(WriteBatch::default().with_entries(vec![e]))
            .expect("submit");
        *next += 1;
        pending.push_back((ticket.seq(), t));
    };
    let base_stats = log.stats();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    for _ in 0..inflight {
        propose(&mut pending, &mut next);
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut entries = 0u64;
    while Instant::now() < deadline {
        let Ok(durable) = rx.recv_timeout(Duration::from_secs(10)) else {
            break;
        };
        let mut done = 0;
        while pending.front().is_some_and(|(seq, _)| *seq <= durable) {
            let (_, t) = pending.pop_front().expect("front");
            hist.record(t.elapsed().as_nanos() as u64).expect("record");
            entries += 1;
            done += 1;
        }
        for _ in 0..done {
            propose(&mut pending, &mut next);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = log.stats();
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
    RunResult {
        harness: "driver",
        proposers: inflight,
        policy,
        entries,
        secs,
        hist,
        syncs: stats.syncs - base_stats.syncs,
        batches: stats.batches - base_stats.batches,
    }
}

fn main() {
    let args = parse_args();
    let root = args
        .dir
        .join(format!("wraft-storage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("create bench dir");
    println!("# wraft-storage group-commit benchmark");
    println!(
        "dir: {} | {} s per scenario | {}-byte entries",
        root.display(),
        args.secs,
        ENTRY_BYTES
    );

    let (raw_before, raw_h) = raw_fdatasync(&root, args.raw_syncs);
    println!(
        "raw serial fdatasync (before): {:.0} syncs/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us ({} syncs)",
        raw_before,
        us(&raw_h, 0.5),
        us(&raw_h, 0.99),
        us(&raw_h, 0.999),
        args.raw_syncs
    );
    let raw_p50_us = us(&raw_h, 0.5);

    let mut results = Vec::new();
    let scenarios = [
        ("driver", 1, FsyncPolicy::Durable),
        ("driver", 16, FsyncPolicy::Durable),
        ("driver", 256, FsyncPolicy::Durable),
        ("threads", 1, FsyncPolicy::Durable),
        ("threads", 16, FsyncPolicy::Durable),
        ("threads", 256, FsyncPolicy::Durable),
        ("driver", 256, FsyncPolicy::Relaxed),
        ("threads", 256, FsyncPolicy::Relaxed),
    ];
    for (harness, p, policy) in scenarios {
        let dir = root.join(format!("run-{harness}-{p}-{policy:?}"));
        let r = if harness == "driver" {
            run_driver(&dir, p, policy, args.secs)
        } else {
            run(&dir, p, policy, args.secs)
        };
        eprintln!("done: {harness} {p} proposers {policy:?}");
        results.push(r);
    }
    let (raw_after, raw_h2) = raw_fdatasync(&root, args.raw_syncs);
    println!(
        "raw serial fdatasync (after):  {:.0} syncs/s, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        raw_after,
        us(&raw_h2, 0.5),
        us(&raw_h2, 0.99),
        us(&raw_h2, 0.999)
    );
    let raw = (raw_before + raw_after) / 2.0;
    println!();
    println!(
        "| harness | proposers | mode | entries/s | x raw sync rate | entries/sync | p50 us | p99 us | p99.9 us | p50 / raw p50 |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let rate = r.entries as f64 / r.secs;
        let per_sync = if r.syncs > 0 {
            r.entries as f64 / r.syncs as f64
        } else {
            r.entries as f64 / r.batches.max(1) as f64
        };
        println!(
            "| {} | {} | {:?} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.2} |",
            r.harness,
            r.proposers,
            r.policy,
            rate,
            rate / raw,
            per_sync,
            us(&r.hist, 0.5),
            us(&r.hist, 0.99),
            us(&r.hist, 0.999),
            us(&r.hist, 0.5) / raw_p50_us
        );
    }
    println!();
    println!("raw sync rate used for ratios: {raw:.0} syncs/s (mean of before/after)");
    let _ = std::fs::remove_dir_all(&root);
}
