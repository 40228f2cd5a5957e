//! Benchmarks of the wasm host. Run: `cargo run --release -p wraft --example host_bench`
//!
//! Measures, with the `kv` example guest built fresh:
//! - a small kv put applied natively (the guest's own code via `wraft_guest::testing::Harness`)
//!   vs through the host, single and batched (ns per entry);
//! - snapshot and restore throughput of a 1M-key kv state (MB/s of raw key+value bytes) and the
//!   compression ratio, next to native zstd level 3 on comparable bytes measured in the same run;
//! - loading a precompiled component from the disk cache.
//!
//! Env: `BENCH_KEYS` (default 1 000 000), `BENCH_OPS` (default 200 000), `BENCH_REPS` (default 3:
//! native and batched runs are interleaved this many times; the best of each is compared).

use std::path::Path;
use std::time::{Duration, Instant};

use wraft_example_kv::Kv;
use wraft_guest::testing::Harness;
use wraft_host::{Entry, FnSink, HostConfig, HostEngine};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn put(i: usize) -> Vec<u8> {
    format!(r#"{{"op":"put","key":"key/{i:010}","value":"value-{i:010}-0123456789abcdef"}}"#)
        .into_bytes()
}

fn entries(from: usize, n: usize) -> Vec<Entry> {
    (from..from + n)
        .map(|i| Entry {
            index: i as u64 + 1,
            term: 1,
            timestamp_ms: 0,
            command: put(i).into(),
        })
        .collect()
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ops = env("BENCH_OPS", 200_000);
    let keys = env("BENCH_KEYS", 1_000_000);
    let guest_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kv");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let built = wraft::build::build_guest(&guest_dir, Some(&target.join("guests")))?;
    let bytes = std::fs::read(&built.component)?;
    let cache = tempfile::tempdir()?;
    let cfg = HostConfig {
        cache_dir: Some(cache.path().to_owned()),
        guest_memory_bytes_max: 3 << 30,
        ..HostConfig::default()
    };
    let engine = HostEngine::new(cfg.clone())?;

    // --- load
    let t = Instant::now();
    let module = engine.load(&bytes)?;
    let cold = t.elapsed();
    let mut samples = Vec::new();
    for _ in 0..50 {
        let e = HostEngine::new(cfg.clone())?;
        let t = Instant::now();
        let m = e.load(&bytes)?;
        samples.push(t.elapsed());
        assert!(m.from_cache());
    }
    samples.sort();
    println!(
        "component: {} bytes, sha256 {}",
        bytes.len(),
        module.sha256_hex()
    );
    println!(
        "load: cold compile {:.0} ms; cached load p50 {:.2} ms, p90 {:.2} ms (50 fresh engines)",
        cold.as_secs_f64() * 1e3,
        samples[25].as_secs_f64() * 1e3,
        samples[45].as_secs_f64() * 1e3
    );

    // --- apply: native vs host
    let cmds: Vec<Vec<u8>> = (0..ops).map(put).collect();
    let run_native = || -> Result<f64, Box<dyn std::error::Error>> {
        let mut h = Harness::<Kv>::new();
        let t = Instant::now();
        for c in &cmds {
            h.apply(c).map_err(|e| e.to_string())?;
        }
        Ok(per_op(t.elapsed(), ops))
    };
    let run_batch = |batch: usize| -> Result<f64, Box<dyn std::error::Error>> {
        let mut inst = module.instantiate()?;
        let batches: Vec<Vec<Entry>> = (0..ops / batch)
            .map(|b| entries(b * batch, batch))
            .collect();
        let n = batches.len() * batch;
        let t = Instant::now();
        for b in batches {
            for r in inst.apply_batch(b)? {
                r.map_err(|e| e.to_string())?;
            }
        }
        Ok(per_op(t.elapsed(), n))
    };
    // The machine is shared: interleave native and wasm runs and keep each one's best and worst.
    let reps = env("BENCH_REPS", 3);
    let mut native_runs = Vec::new();
    let mut batch_runs: Vec<(usize, Vec<f64>)> = [16usize, 128, 1024]
        .iter()
        .map(|&b| (b, Vec::new()))
        .collect();
    for _ in 0..reps {
        native_runs.push(run_native()?);
        for (b, runs) in batch_runs.iter_mut() {
            runs.push(run_batch(*b)?);
        }
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let native = best(&native_runs);

    let mut inst = module.instantiate()?;
    let single_entries = entries(0, ops);
    let t = Instant::now();
    for e in single_entries {
        inst.apply(e)?.map_err(|e| e.to_string())?;
    }
    let single = per_op(t.elapsed(), ops);

    let handle = module.start()?;
    let n_thread = ops / 4;
    let thread_entries = entries(0, n_thread);
    let t = Instant::now();
    for e in thread_entries {
        handle.apply_blocking(e)?.map_err(|e| e.to_string())?;
    }
    let single_thread = per_op(t.elapsed(), n_thread);

    println!("apply kv put ({ops} distinct keys):");
    println!(
        "  native (same guest code, Harness)    {native:8.0} ns/op  (best of {reps}; worst {:.0})",
        worst(&native_runs)
    );
    println!(
        "  host apply, caller's thread          {single:8.0} ns/op  ({:.2}x native)",
        single / native
    );
    println!(
        "  host apply via MachineHandle thread  {single_thread:8.0} ns/op  ({:.2}x native)",
        single_thread / native
    );
    for (b, runs) in &batch_runs {
        let ns = best(runs);
        println!(
            "  host apply_batch({b:4})               {ns:8.0} ns/entry ({:.2}x best native; worst {:.0} ns = {:.2}x worst native)",
            ns / native,
            worst(runs),
            worst(runs) / worst(&native_runs)
        );
    }

    // --- snapshot / restore of `keys` keys
    let mut inst = module.instantiate()?;
    let mut raw: u64 = 0;
    let batch = 4096;
    let mut i = 0;
    while i < keys {
        let n = batch.min(keys - i);
        let es = entries(i, n);
        // Raw state bytes: key ("key/" + 10 digits) plus value (6 + 10 + 1 + 16).
        raw += n as u64 * (14 + 33);
        for r in inst.apply_batch(es)? {
            r.map_err(|e| e.to_string())?;
        }
        i += n;
    }
    let mut compressed = 0u64;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let t = Instant::now();
    let summary = inst.snapshot(&mut FnSink(|c: Vec<u8>| {
        compressed += c.len() as u64;
        chunks.push(c);
        Ok(())
    }))?;
    let snap = t.elapsed();
    let mut fresh = module.instantiate()?;
    let t = Instant::now();
    fresh.restore(summary.format, &mut chunks.into_iter())?;
    let restore = t.elapsed();
    let mb = raw as f64 / 1e6;

    // The same snapshot and restore natively (the guest's code via `Harness`), same state.
    let mut h = Harness::<Kv>::new();
    for c in (0..keys).map(put) {
        h.apply(&c).map_err(|e| e.to_string())?;
    }
    let max_chunk = cfg.snapshot_chunk_bytes as usize;
    let t = Instant::now();
    let native_chunks = h.snapshot(max_chunk)?;
    let native_snap = t.elapsed();
    let t = Instant::now();
    let native_restored = Harness::<Kv>::restore(native_chunks.iter().map(Vec::as_slice))?;
    let native_restore = t.elapsed();
    assert_eq!(native_restored.state().len(), keys);
    drop((h, native_restored));
    println!(
        "snapshot {keys} keys, {mb:.1} MB raw key+value bytes -> {:.1} MB in {} chunks (ratio {:.2}):",
        compressed as f64 / 1e6,
        summary.chunks,
        raw as f64 / compressed as f64
    );
    println!(
        "  snapshot {:.0} ms = {:.0} MB/s raw; restore {:.0} ms = {:.0} MB/s raw",
        snap.as_secs_f64() * 1e3,
        mb / snap.as_secs_f64(),
        restore.as_secs_f64() * 1e3,
        mb / restore.as_secs_f64()
    );
    println!(
        "  native (same guest code, Harness): snapshot {:.0} ms = {:.0} MB/s raw; restore {:.0} ms = {:.0} MB/s raw",
        native_snap.as_secs_f64() * 1e3,
        mb / native_snap.as_secs_f64(),
        native_restore.as_secs_f64() * 1e3,
        mb / native_restore.as_secs_f64()
    );
    println!(
        "  wasm / native time: snapshot {:.2}x, restore {:.2}x",
        snap.as_secs_f64() / native_snap.as_secs_f64(),
        restore.as_secs_f64() / native_restore.as_secs_f64()
    );

    // --- machine facts: native zstd level 3 on a comparable stream (records as the SDK writes them)
    let mut stream = Vec::with_capacity(raw as usize * 2);
    for i in 0..keys {
        let k = format!("key/{i:010}");
        let v = format!("value-{i:010}-0123456789abcdef");
        stream.extend_from_slice(&((k.len() + v.len() + 2) as u32).to_le_bytes());
        stream.push(k.len() as u8);
        stream.extend_from_slice(k.as_bytes());
        stream.push(v.len() as u8);
        stream.extend_from_slice(v.as_bytes());
    }
    let t = Instant::now();
    let z = zstd::bulk::compress(&stream, 3)?;
    let zc = t.elapsed();
    let t = Instant::now();
    let back = zstd::bulk::decompress(&z, stream.len())?;
    let zd = t.elapsed();
    assert_eq!(back.len(), stream.len());
    println!(
        "machine: native zstd -3 on the same {:.1} MB record stream: compress {:.0} MB/s, decompress {:.0} MB/s, ratio {:.2}",
        stream.len() as f64 / 1e6,
        stream.len() as f64 / 1e6 / zc.as_secs_f64(),
        stream.len() as f64 / 1e6 / zd.as_secs_f64(),
        stream.len() as f64 / z.len() as f64
    );
    handle.shutdown();
    Ok(())
}
