//! Snapshot transfer throughput over loopback QUIC, next to the raw single-stream quinn rate
//! measured on the same bulk connection in the same run.
//!
//! Run: `cargo run --release -p wraft-snapshot --example transfer_bench`
//!
//! For each size (default 64 MiB and 1 GiB) it writes a snapshot of random bytes into a leader
//! store, then, on two in-process transports (node 1 and node 2, mTLS, 127.0.0.1):
//! - **raw**: one bulk stream, the same number of bytes written as 1 MiB chunks and discarded
//!   by the reader (the ceiling any protocol on this stream can reach);
//! - **transfer**: `send_snapshot` -> `receive_snapshot` into a fresh follower store with
//!   durable syncs (`FsyncPolicy::Durable`, `sync_every_bytes` 8 MiB), including the offer,
//!   the final whole-file BLAKE3 verification and the atomic publish.
//!
//! Env: `BENCH_SIZES_MIB` (default `64,1024`), `BENCH_CHUNK_KIB` (default 1024),
//! `BENCH_REPS` (default 2; best of each is reported), `BENCH_DIR` (default: a temp dir under
//! the working directory's file system), `BENCH_MTU` (transport `mtu_upper_bound_bytes`,
//! default 1452 = the transport default).

// The allocator a node runs with (the `wraft` binary's), so the figures are a node's.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wraft_snapshot::{
    BandwidthLimiter, IncomingSlots, TransferConfig, receive_snapshot, send_snapshot,
};
use wraft_storage::{Membership, SnapshotId, SnapshotMeta, SnapshotStore, StdFs, StorageConfig};
use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
use wraft_transport::{AddressBook, Inbound, Transport, TransportConfig};

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn bind(
    ca: &ClusterCa,
    id: u64,
    membership: &wraft_transport::Membership,
    book: &AddressBook,
    mtu: u16,
) -> (Transport, Inbound) {
    let issued = ca.issue_node(id, &[], Validity::days_from_now(1)).unwrap();
    let tls = TlsIdentity::from_issued(ca.cert_pem(), &issued).unwrap();
    let mut cfg = TransportConfig::new(id, "127.0.0.1:0".parse().unwrap());
    cfg.mtu_upper_bound_bytes = mtu;
    let (t, inbound) = Transport::bind(cfg, &tls, membership.clone(), book.clone()).unwrap();
    book.insert(id, t.local_addr().unwrap());
    (t, inbound)
}

/// Raw rate: `total` bytes on one bulk stream, reader discards, then acks one byte.
async fn raw_stream(t1: &Transport, inbound2: &mut Inbound, total: u64) -> Duration {
    let start = Instant::now();
    let mut out = t1.open_bulk(2).await.unwrap();
    let chunk = Bytes::from(vec![0xa5u8; 1 << 20]);
    let writer = async {
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            out.send.write_chunk(chunk.slice(..n)).await.unwrap();
            left -= n as u64;
        }
        out.send.finish().unwrap();
        let mut ack = [0u8; 1];
        out.recv.read_exact(&mut ack).await.unwrap();
    };
    let reader = async {
        let mut s = inbound2.bulk.recv().await.unwrap();
        let mut got = 0u64;
        while let Some(c) = s.recv.read_chunk(usize::MAX, true).await.unwrap() {
            got += c.bytes.len() as u64;
        }
        assert_eq!(got, total);
        s.send.write_all(&[1]).await.unwrap();
        s.send.finish().unwrap();
        // Keep the stream until the ack is read.
        let _ = s.send.stopped().await;
    };
    tokio::join!(writer, reader);
    start.elapsed()
}

/// fdatasync latency of an 8 MiB write on the bench file system (p50 of `n`), the unit of
/// the follower's durable acks.
fn fdatasync_p50(dir: &Path, n: usize) -> Duration {
    let path = dir.join("fsync-probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let buf = vec![7u8; 8 << 20];
    let mut v = Vec::new();
    for i in 0..n {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&buf, (i * buf.len()) as u64).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        v.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<u64> = env_str("BENCH_SIZES_MIB", "64,1024")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let chunk_kib = env_u64("BENCH_CHUNK_KIB", 1024) as u32;
    let reps = env_u64("BENCH_REPS", 2).max(1);
    let mtu = env_u64("BENCH_MTU", 1452) as u16;
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into());
    let root = tempfile::Builder::new()
        .prefix("wraft-transfer-bench")
        .tempdir_in(&base)
        .unwrap();

    let ca = ClusterCa::generate("bench", Validity::days_from_now(1)).unwrap();
    let membership = wraft_transport::Membership::new([1, 2]);
    let book = AddressBook::default();
    let (t1, _in1) = bind(&ca, 1, &membership, &book, mtu);
    let (t2, mut in2) = bind(&ca, 2, &membership, &book, mtu);

    println!(
        "fdatasync p50 after an 8 MiB write: {:.2} ms",
        fdatasync_p50(root.path(), 9).as_secs_f64() * 1e3
    );
    println!(
        "chunk {chunk_kib} KiB, mtu_upper_bound_bytes {mtu}, best of {reps}; dir {}",
        root.path().display()
    );

    for (si, &mib) in sizes.iter().enumerate() {
        let body_len = mib << 20;
        let ldir = root.path().join(format!("leader-{mib}"));
        let (lstore, _) =
            SnapshotStore::open(Arc::new(StdFs), &ldir, &StorageConfig::default()).unwrap();
        let id = SnapshotId {
            last_index: 1000 + si as u64,
            last_term: 1,
        };
        let mut w = lstore
            .begin(SnapshotMeta {
                id,
                membership: Membership {
                    voters: vec![1, 2],
                    learners: vec![],
                },
                format: "bench/1".into(),
            })
            .unwrap();
        let mut rng = fastrand::Rng::with_seed(mib);
        let mut buf = vec![0u8; 4 << 20];
        let mut left = body_len;
        while left > 0 {
            rng.fill(&mut buf);
            let n = left.min(buf.len() as u64) as usize;
            w.write_chunk(&buf[..n]).unwrap();
            left -= n as u64;
        }
        let info = w.finish().unwrap();

        let mut best_raw = Duration::MAX;
        let mut best_xfer = Duration::MAX;
        for rep in 0..reps {
            let d = raw_stream(&t1, &mut in2, info.file_len).await;
            best_raw = best_raw.min(d);

            let fdir = root.path().join(format!("follower-{mib}-{rep}"));
            let (fstore, _) =
                SnapshotStore::open(Arc::new(StdFs), &fdir, &StorageConfig::default()).unwrap();
            let cfg = TransferConfig {
                chunk_bytes: chunk_kib << 10,
                ..TransferConfig::default()
            };
            let slots = IncomingSlots::new(2);
            let limiter = BandwidthLimiter::new(None);
            let out = t1.open_bulk(2).await.unwrap();
            let send = send_snapshot(
                out,
                &lstore,
                lstore.pin(id).unwrap(),
                1,
                &cfg,
                &limiter,
                |_| {},
            );
            let recv = async {
                let inb = in2.bulk.recv().await.unwrap();
                receive_snapshot(inb, &fstore, &cfg, &slots, |_| {}).await
            };
            let (s, r) = tokio::join!(send, recv);
            let s = s.unwrap();
            let r = r.unwrap();
            assert_eq!(r.info.digest, info.digest);
            best_xfer = best_xfer.min(s.duration);
            println!(
                "  {mib} MiB rep {rep}: raw {:.0} MiB/s, transfer {:.0} MiB/s ({:.2} s)",
                mib_s(info.file_len, d),
                mib_s(info.file_len, s.duration),
                s.duration.as_secs_f64()
            );
            drop(fstore);
            let _ = std::fs::remove_dir_all(&fdir);
        }
        println!(
            "{mib} MiB: raw quinn stream {:.0} MiB/s | snapshot transfer {:.0} MiB/s ({:.0}% of raw)",
            mib_s(info.file_len, best_raw),
            mib_s(info.file_len, best_xfer),
            100.0 * best_raw.as_secs_f64() / best_xfer.as_secs_f64()
        );
        drop(lstore);
        let _ = std::fs::remove_dir_all(&ldir);
    }
    t1.shutdown().await;
    t2.shutdown().await;
}
