//! Snapshot benchmarks on an in-process 3-node cluster (durable fsync):
//!
//! 1. client write latency (closed-loop 256-byte kv puts) without a snapshot
//!    vs while the leader creates one of ~`STATE_MB` of kv state;
//! 2. time for an empty node to join (add learner → applied the leader's
//!    commit index), which goes through InstallSnapshot over QUIC;
//! 3. restart-to-serving of a follower holding the snapshot plus `LOG_ENTRIES`
//!    log entries above it.
//!
//! ```text
//! cargo run --release -p wraft --example snapshot_bench
//! STATE_MB=100 LOG_ENTRIES=100000 SECS=8 WORKERS=8 cargo run --release -p wraft --example snapshot_bench
//! ```

// The allocator the `wraft` binary runs nodes with, so the figures are a node's.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wraft_client::{Client, ClientOptions};
use wraft_node::Node;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn put(key: &str, value: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"op": "put", "key": key, "value": value})).expect("json")
}

/// A deterministic `len`-byte value that compresses like application data rather than like a
/// run of one byte: JSON-ish records of words from a small vocabulary with random numbers and
/// ids (zstd level 3 gets roughly 3-4x on it, not 1000x).
fn kv_like(seed: u64, len: usize) -> String {
    const WORDS: [&str; 16] = [
        "alpha", "order", "customer", "status", "shipped", "pending", "amount", "currency", "EUR",
        "USD", "region", "north", "south", "sku", "quantity", "note",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::with_capacity(len + 64);
    while out.len() < len {
        let r = next();
        let w = WORDS[(r % 16) as usize];
        out.push_str(&format!(
            "{{\"{w}\":{},\"id\":\"{:016x}\"}},",
            (r >> 8) % 100_000,
            next()
        ));
    }
    out.truncate(len);
    out
}

/// Closed-loop writers; latency recorded only while `measure` is set.
async fn writers(
    client: Arc<Client>,
    workers: u64,
    stop: Arc<AtomicBool>,
    measure: Arc<AtomicBool>,
    prefix: &'static str,
) -> Histogram<u64> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, stop, measure) = (client.clone(), stop.clone(), measure.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let value = "v".repeat(256);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{prefix}-{w}-{}", i % 10_000);
                i += 1;
                let t = Instant::now();
                if client.propose("kv", &put(&key, &value)).await.is_ok()
                    && measure.load(Ordering::Relaxed)
                {
                    let _ = h.record(t.elapsed().as_micros() as u64);
                }
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(&h);
        }
    }
    all
}

fn pct(h: &Histogram<u64>) -> String {
    format!(
        "n={} p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

async fn applied(c: &Client, addr: std::net::SocketAddr) -> u64 {
    c.status_of(Some(addr))
        .await
        .map(|s| s.applied_index)
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), AnyError> {
    let state_mb = env("STATE_MB", 100);
    let log_entries = env("LOG_ENTRIES", 100_000);
    let secs = env("SECS", 6);
    let workers = env("WORKERS", 8);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average before: {}", load.trim());

    let dir = tempfile::tempdir()?;
    let layout = wraft::local::layout(dir.path(), 3, |c| {
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = 1000;
    })?;
    let mut nodes = Vec::new();
    for (cfg, _) in &layout.nodes {
        nodes.push(Some(Node::start(cfg.clone()).await?));
    }
    let opts = ClientOptions::from_cert_dir(layout.endpoints(), &layout.certs, "admin")?;
    let client = Arc::new(Client::connect(opts).await?);
    let start = Instant::now();
    let leader = loop {
        if let Ok(s) = client.status().await
            && let Some(l) = s.leader
        {
            break l;
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err("no leader".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let leader_addr = layout.nodes[(leader - 1) as usize].0.node.listen;
    let kv = wraft::build::build_guest(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kv"),
        None,
    )?;
    client.deploy("kv", std::fs::read(&kv.component)?).await?;

    // Preload ~STATE_MB of state: 16 KiB KV-like values (see `kv_like`), 16 at a time.
    let t = Instant::now();
    let n = state_mb * 64;
    let mut i = 0;
    while i < n {
        let mut batch = Vec::new();
        for j in i..(i + 16).min(n) {
            let (c, v) = (client.clone(), kv_like(j, 16 << 10));
            batch.push(tokio::spawn(async move {
                c.propose("kv", &put(&format!("state-{j:08}"), &v)).await
            }));
        }
        for b in batch {
            b.await??;
        }
        i += 16;
    }
    eprintln!(
        "preloaded {state_mb} MB ({n} puts) in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // 1. Write latency without and during snapshot creation.
    let stop = Arc::new(AtomicBool::new(false));
    let measure = Arc::new(AtomicBool::new(true));
    let w = tokio::spawn(writers(
        client.clone(),
        workers,
        stop.clone(),
        measure.clone(),
        "base",
    ));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let base = w.await?;
    eprintln!("writes without snapshot:  {}", pct(&base));

    let stop = Arc::new(AtomicBool::new(false));
    let measure = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writers(
        client.clone(),
        workers,
        stop.clone(),
        measure.clone(),
        "snap",
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut creations = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) || creations.is_empty() {
        measure.store(true, Ordering::Relaxed);
        let c0 = Instant::now();
        let l = client
            .snapshot_trigger_and_wait(Some(leader_addr), Duration::from_secs(600))
            .await?;
        measure.store(false, Ordering::Relaxed);
        creations.push(c0.elapsed());
        eprintln!(
            "  snapshot at {} ({} bytes) in {:.0} ms",
            l.index,
            l.file_bytes,
            c0.elapsed().as_secs_f64() * 1000.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let during = w.await?;
    eprintln!("writes during creation:   {}", pct(&during));
    eprintln!(
        "p99 ratio during/without: {:.2}x over {} snapshot creations",
        during.value_at_quantile(0.99) as f64 / base.value_at_quantile(0.99).max(1) as f64,
        creations.len()
    );

    // 2. An empty node joins: learner → applied the leader's commit.
    let id = 4;
    wraft::local::issue_certs(&layout.certs, &[id], &[], wraft::local::LOCAL_CERT_DAYS)?;
    let mut cfg = layout.nodes[0].0.clone();
    cfg.node.id = id;
    cfg.node.listen = wraft::local::free_udp_port()?;
    cfg.node.data_dir = dir.path().join("node-4");
    cfg.cluster.peers = layout
        .nodes
        .iter()
        .map(|(c, _)| (c.node.id, c.node.listen.into()))
        .collect();
    let new_addr = cfg.node.listen;
    let t = Instant::now();
    let joiner = Node::start(cfg).await?;
    client.add_learner(id, new_addr).await?;
    let target = client.status().await?.commit_index;
    while applied(&client, new_addr).await < target {
        if t.elapsed() > Duration::from_secs(300) {
            return Err("the new node did not catch up in 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "empty node joined (applied {target}) in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    joiner.shutdown().await;

    // 3. Restart-to-serving: snapshot + LOG_ENTRIES above it on a follower.
    let follower = (1..=3u64).find(|i| *i != leader).unwrap_or(2);
    let faddr = layout.nodes[(follower - 1) as usize].0.node.listen;
    client
        .snapshot_trigger_and_wait(Some(faddr), Duration::from_secs(600))
        .await?;
    let t = Instant::now();
    let mut i = 0;
    let small = "l".repeat(64);
    while i < log_entries {
        let mut batch = Vec::new();
        for j in i..(i + 64).min(log_entries) {
            let (c, v) = (client.clone(), small.clone());
            batch.push(tokio::spawn(async move {
                c.propose("kv", &put(&format!("log-{j:08}"), &v)).await
            }));
        }
        for b in batch {
            b.await??;
        }
        i += 64;
    }
    eprintln!(
        "appended {log_entries} entries in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let target = client.status().await?.commit_index;
    while applied(&client, faddr).await < target {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let node = nodes[(follower - 1) as usize].take().ok_or("node")?;
    let released = node.dir_released();
    node.shutdown().await;
    if let Some(r) = released
        && !wraft_node::wait_dir_released(&r, Duration::from_secs(30)).await
    {
        return Err("the stopped follower still holds its data directory after 30 s".into());
    }
    let cfg = layout.nodes[(follower - 1) as usize].0.clone();
    let t = Instant::now();
    let node = Node::start(cfg).await?;
    let started = t.elapsed();
    while applied(&client, faddr).await < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "restart to serving: {:.2}s (Node::start incl. snapshot restore {:.2}s, then replay to {target})",
        t.elapsed().as_secs_f64(),
        started.as_secs_f64()
    );
    nodes[(follower - 1) as usize] = Some(node);
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("load average after: {}", load.trim());
    Ok(())
}
