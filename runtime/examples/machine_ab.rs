//! A/B of kv components on `wraft bench`'s put workload, applied in-process on one thread: the
//! guest's cost per put (decode, apply, encode, and the host's call into it) without the rest of
//! a cluster, whose run-to-run swings on a shared 2-vCPU VM hide a few percent of the whole.
//!
//! Run: `MODULES=/tmp/a.wasm,/tmp/b.wasm cargo run --release -p wraft --example machine_ab`
//!
//! Each component gets its own instance and the same stream of puts: the benchmark's binary
//! (postcard) command with a 256-byte value, its 256 workers' keys taken in turn (the etcd kit's
//! pattern, so most puts overwrite one of some tens of thousands of keys), in batches of
//! `BATCH` entries. After `WARM` puts each, the components take turns applying `CHUNK` puts
//! each, `REPS` times; each turn is timed. Prints each component's median and best ns per put
//! and the ratio of medians to the first component's.
//!
//! Env: `MODULES` (comma-separated paths, required), `BATCH` (16), `WARM` (200 000), `CHUNK`
//! (50 000), `REPS` (8).

use std::time::Instant;

use wraft::bench::{KvCodec, put_command, put_key};
use wraft_host::{Entry, HostConfig, HostEngine};

/// The benchmark's worker count: keys are taken from 256 workers in turn.
const WORKERS: usize = 256;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `k`-th put of the benchmark's stream, as a log entry at index `k + 1`.
fn entry(k: usize, value: &str) -> Entry {
    let (worker, n) = (k % WORKERS, (k / WORKERS) as u64);
    Entry {
        index: k as u64 + 1,
        term: 1,
        timestamp_ms: 0,
        command: put_command(KvCodec::Postcard, &put_key(worker, n), value).into(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::var("MODULES")
        .map_err(|_| "set MODULES to a comma-separated list of kv components")?
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let (batch, warm, chunk, reps) = (
        env("BATCH", 16).max(1),
        env("WARM", 200_000),
        env("CHUNK", 50_000).max(1),
        env("REPS", 8).max(1),
    );
    let value = "v".repeat(256);
    let cache = tempfile::tempdir()?;
    let engine = HostEngine::new(HostConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..HostConfig::default()
    })?;
    let mut instances = Vec::new();
    for p in &paths {
        let module = engine.load(&std::fs::read(p).map_err(|e| format!("{p}: {e}"))?)?;
        instances.push(module.instantiate()?);
    }
    // Apply puts `from..to` to `inst` in batches; the time it took.
    let run = |inst: &mut wraft_host::Instance, from: usize, to: usize| -> Result<f64, String> {
        // Build the entries before the clock starts: only the host call and the guest count.
        let batches: Vec<Vec<Entry>> = (from..to)
            .step_by(batch)
            .map(|b| (b..(b + batch).min(to)).map(|k| entry(k, &value)).collect())
            .collect();
        let t = Instant::now();
        for b in batches {
            for r in inst.apply_batch(b).map_err(|e| e.to_string())? {
                r.map_err(|e| format!("{e:?}"))?;
            }
        }
        Ok(t.elapsed().as_secs_f64())
    };
    for inst in instances.iter_mut() {
        run(inst, 0, warm)?;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for rep in 0..reps {
        let from = warm + rep * chunk;
        // Alternate which component goes first, so neither always follows the other.
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let secs = run(&mut instances[i], from, from + chunk)?;
            times[i].push(secs * 1e9 / chunk as f64);
        }
    }
    println!(
        "kv puts, postcard, 256-byte values, batches of {batch}, {warm} warm-up puts, {reps} turns \
         of {chunk} puts each (ns per put)"
    );
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let base = median(&times[0]);
    for (p, t) in paths.iter().zip(&times) {
        let best = t.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "  {p}: median {:.0}, best {best:.0}, {:.3}x the first",
            median(t),
            median(t) / base
        );
    }
    Ok(())
}
