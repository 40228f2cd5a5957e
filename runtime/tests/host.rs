//! The wasm host against freshly built example guests.
//!
//! Guests are built by `wraft::build::build_guest` into `<target>/guests` and compiled once per
//! test run into a shared cache directory (compiling with a debug build of Cranelift is slow).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde_json::{Value, json};
use wraft_host::{
    CODE_OUTPUT_TOO_LARGE, CallError, Entry, EntryResult, FnSink, HostConfig, HostEngine,
    LoadError, MachineModule, TrapKind,
};

fn target_root() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors().nth(3).expect("target dir").to_owned()
}

/// Build an example guest (once per process) and return its component bytes.
fn guest(name: &str) -> Vec<u8> {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let path = match built.iter().find(|(n, _)| n == name) {
        Some((_, p)) => p.clone(),
        None => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples")
                .join(name);
            let g = wraft::build::build_guest(&dir, Some(&target_root().join("guests")))
                .unwrap_or_else(|e| panic!("building guest {name}: {e}"));
            built.push((name.to_string(), g.component.clone()));
            g.component
        }
    };
    std::fs::read(&path).unwrap()
}

fn config() -> HostConfig {
    HostConfig {
        cache_dir: Some(target_root().join("guests").join("wasm-cache")),
        ..HostConfig::default()
    }
}

/// Load `name` with `cfg`; loads are serialized so parallel tests share one compile via the cache.
fn load(name: &str, cfg: HostConfig) -> MachineModule {
    static LOADING: Mutex<()> = Mutex::new(());
    let bytes = guest(name);
    let _g = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    HostEngine::new(cfg).unwrap().load(&bytes).unwrap()
}

fn kv() -> MachineModule {
    static KV: OnceLock<MachineModule> = OnceLock::new();
    KV.get_or_init(|| load("kv", config())).clone()
}

fn entry(index: u64, cmd: Value) -> Entry {
    Entry {
        index,
        term: 1,
        timestamp_ms: 1_700_000_000_000 + index,
        command: serde_json::to_vec(&cmd).unwrap().into(),
    }
}

fn ok_json(r: EntryResult) -> Value {
    serde_json::from_slice(&r.expect("application result")).unwrap()
}

fn q(key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"op":"get","key":key})).unwrap()
}

#[test]
fn kv_round_trip_through_apply_batch_query_snapshot_and_restore() {
    let m = kv();
    assert_eq!(m.info().name, "kv");
    let h = m.start().unwrap();
    let r = h
        .apply_blocking(entry(1, json!({"op":"put","key":"a","value":"1"})))
        .unwrap();
    assert_eq!(ok_json(r), json!({"prev":null}));
    let batch: Vec<Entry> = (0..500)
        .map(|i| {
            entry(
                2 + i,
                json!({"op":"put","key":format!("k{i:04}"),"value":"v".repeat(i as usize % 40)}),
            )
        })
        .chain([
            entry(502, json!({"op":"cas","key":"a","expected":"1","new":"2"})),
            entry(503, json!({"op":"cas","key":"a","expected":"1","new":"3"})),
            entry(504, json!({"op":"delete","key":"k0000"})),
            entry(505, json!({"op":"put","key":"","value":"x"})),
        ])
        .collect();
    let rs = h.apply_batch_blocking(batch).unwrap();
    assert_eq!(rs.len(), 504);
    assert_eq!(
        ok_json(rs[500].clone()),
        json!({"swapped":true,"current":"2"})
    );
    assert_eq!(
        ok_json(rs[501].clone()),
        json!({"swapped":false,"current":"2"})
    );
    assert_eq!(ok_json(rs[502].clone()), json!({"prev":""}));
    assert_eq!(
        rs[503].as_ref().unwrap_err().code,
        1,
        "empty key is an application error"
    );

    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let summary = h.snapshot_blocking(FnSink(|_c: Vec<u8>| Ok(()))).unwrap();
    assert!(summary.chunks >= 1);
    let sink = std::sync::Arc::new(Mutex::new(Vec::new()));
    let s2 = sink.clone();
    let summary2 = h
        .snapshot_blocking(FnSink(move |c: Vec<u8>| {
            s2.lock().unwrap().push(c);
            Ok(())
        }))
        .unwrap();
    assert_eq!(
        summary, summary2,
        "snapshots of the same state are identical"
    );
    chunks.extend(sink.lock().unwrap().drain(..));

    let restored = m.start().unwrap();
    restored
        .restore_blocking(summary.format, chunks.clone().into_iter())
        .unwrap();
    let queries: Vec<Vec<u8>> = ["a", "k0000", "k0001", "k0499", "missing"]
        .iter()
        .map(|k| q(k))
        .chain((0..5).map(|p| {
            serde_json::to_vec(&json!({"op":"scan","prefix":format!("k0{p}"),"limit":1000}))
                .unwrap()
        }))
        .chain([serde_json::to_vec(&json!({"op":"scan","prefix":""})).unwrap()])
        .collect();
    for query in &queries {
        let a = h.query_blocking(query.clone()).unwrap();
        let b = restored.query_blocking(query.clone()).unwrap();
        assert_eq!(a, b, "query {}", String::from_utf8_lossy(query));
    }
    // The restored instance snapshots to the very same bytes.
    let again = std::sync::Arc::new(Mutex::new(Vec::new()));
    let a2 = again.clone();
    restored
        .snapshot_blocking(FnSink(move |c: Vec<u8>| {
            a2.lock().unwrap().push(c);
            Ok(())
        }))
        .unwrap();
    assert_eq!(*again.lock().unwrap(), chunks);
}

#[test]
fn corrupted_snapshot_chunk_is_refused_and_old_state_survives() {
    let h = kv().start().unwrap();
    for i in 0..50 {
        h.apply_blocking(entry(
            i + 1,
            json!({"op":"put","key":format!("k{i}"),"value":"x"}),
        ))
        .unwrap()
        .unwrap();
    }
    let mut chunks = Vec::new();
    let cfg = HostConfig {
        snapshot_chunk_bytes: 64,
        ..config()
    };
    let small = load("kv", cfg).start().unwrap();
    small
        .apply_batch_blocking(
            (0..50)
                .map(|i| entry(i + 1, json!({"op":"put","key":format!("z{i}"),"value":"y"})))
                .collect(),
        )
        .unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1000);
    small.snapshot_blocking(tx).unwrap();
    chunks.extend(rx.try_iter());
    assert!(chunks.len() > 3, "{} chunks", chunks.len());
    chunks[2][20] ^= 1;
    let err = h.restore_blocking(1, chunks.into_iter()).unwrap_err();
    assert!(matches!(err, CallError::Restore { .. }), "{err:?}");
    assert!(
        err.to_string().contains("chunk 2: checksum mismatch"),
        "{err}"
    );
    assert!(!err.poisons());
    // All or nothing: the old state is intact.
    assert_eq!(
        ok_json(h.query_blocking(q("k7")).unwrap()),
        json!({"value":"x"})
    );
    assert_eq!(
        ok_json(h.query_blocking(q("z7")).unwrap()),
        json!({"value":null})
    );
}

#[test]
fn batch_fuel_is_charged_per_entry_not_pooled() {
    // Budget for about one put per entry; a batch of 200 puts must succeed anyway, and the
    // very same entries one by one must succeed too (the outcome cannot depend on batching).
    let cfg = HostConfig {
        fuel_per_entry: 200_000,
        ..config()
    };
    let h = load("kv", cfg).start().unwrap();
    let es: Vec<Entry> = (0..200)
        .map(|i| {
            entry(
                i + 1,
                json!({"op":"put","key":format!("k{i}"),"value":"v".repeat(100)}),
            )
        })
        .collect();
    for r in h.apply_batch_blocking(es.clone()).unwrap() {
        r.unwrap();
    }
    for e in es {
        h.apply_blocking(e).unwrap().unwrap();
    }
    // One entry that needs far more than its budget fails alone, batched or not.
    let big = entry(
        999,
        json!({"op":"put","key":"big","value":"v".repeat(2_000_000)}),
    );
    let err = h.apply_blocking(big).unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Trap {
                kind: TrapKind::FuelExhausted,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("fuel_per_entry = 200000"), "{err}");
}

fn misbehave(cfg: HostConfig) -> wraft_host::MachineHandle {
    load("misbehave", cfg).start().unwrap()
}

fn expect_trap(h: &wraft_host::MachineHandle, cmd: Value, kind: TrapKind) -> CallError {
    let err = h.apply_blocking(entry(1, cmd.clone())).unwrap_err();
    match &err {
        CallError::Trap { kind: k, .. } if *k == kind => {}
        other => panic!("{cmd}: expected a {kind:?} trap, got {other:?}"),
    }
    assert!(err.poisons());
    // Poisoned until reset; then the host carries on with a fresh instance.
    let again = h.apply_blocking(entry(2, json!("Ok"))).unwrap_err();
    assert!(matches!(again, CallError::Poisoned { .. }), "{again:?}");
    h.reset_blocking().unwrap();
    assert_eq!(
        h.apply_blocking(entry(3, json!("Ok"))).unwrap().unwrap(),
        b"\"1\""
    );
    err
}

#[test]
fn guest_panic_is_a_panic_trap_with_its_message() {
    let h = misbehave(config());
    let err = expect_trap(&h, json!({"Panic":"boom"}), TrapKind::Panic);
    assert!(err.to_string().contains("misbehave: boom"), "{err}");
}

/// The Rust SDK's half of issue #16 case 7 (JavaScript and Python: `tests/tests/polyglot.rs`):
/// a panic after a write traps in `apply` and in `apply-batch` alike, never an application error.
#[test]
fn a_panic_after_a_write_traps_in_apply_and_in_apply_batch() {
    let h = misbehave(config());
    let buggy = json!({"CountThenPanic": "after a write"});
    assert_eq!(
        h.apply_blocking(entry(1, json!("Ok"))).unwrap().unwrap(),
        b"\"1\""
    );
    let single = h.apply_blocking(entry(2, buggy.clone())).unwrap_err();
    assert!(
        matches!(&single, CallError::Trap { kind: TrapKind::Panic, detail, .. }
            if detail.contains("after a write")),
        "{single:?}"
    );
    h.reset_blocking().unwrap();
    let batch = h
        .apply_batch_blocking(vec![entry(1, json!("Ok")), entry(2, buggy)])
        .unwrap_err();
    assert!(
        matches!(&batch, CallError::Trap { kind: TrapKind::Panic, detail, .. }
            if detail.contains("after a write")),
        "{batch:?}"
    );
}

#[test]
fn infinite_loop_exhausts_fuel() {
    let h = misbehave(HostConfig {
        fuel_per_entry: 10_000_000,
        ..config()
    });
    expect_trap(&h, json!("Loop"), TrapKind::FuelExhausted);
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let h = misbehave(HostConfig {
        guest_memory_bytes_max: 64 << 20,
        ..config()
    });
    let err = expect_trap(&h, json!("GrowMemory"), TrapKind::MemoryLimit);
    assert!(
        err.to_string()
            .contains("guest_memory_bytes_max = 67108864"),
        "{err}"
    );
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let h = misbehave(config());
    expect_trap(
        &h,
        json!({"Recurse": 10_000_000u64}),
        TrapKind::StackOverflow,
    );
}

#[test]
fn enormous_output_becomes_a_deterministic_app_error() {
    let h = misbehave(HostConfig {
        output_bytes_max: 1 << 20,
        ..config()
    });
    let r = h
        .apply_blocking(entry(1, json!({"HugeOutput": 4u64 << 20})))
        .unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.code, CODE_OUTPUT_TOO_LARGE);
    assert!(
        e.message.contains("output_bytes_max = 1048576"),
        "{}",
        e.message
    );
    // Not a fault: the instance carries on.
    assert_eq!(
        h.apply_blocking(entry(2, json!("Ok"))).unwrap().unwrap(),
        b"\"1\""
    );
}

#[test]
fn watchdog_stops_a_call_that_fuel_would_allow() {
    let h = misbehave(HostConfig {
        fuel_per_entry: u64::MAX / 4,
        watchdog_ms: 200,
        ..config()
    });
    let err = h.apply_blocking(entry(1, json!("Loop"))).unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Watchdog {
                watchdog_ms: 200,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.poisons());
    h.reset_blocking().unwrap();
}

#[test]
fn failing_snapshot_is_reported_and_instance_carries_on() {
    let h = misbehave(config());
    h.apply_blocking(entry(1, json!({"FailSnapshot": true})))
        .unwrap()
        .unwrap();
    let err = h.snapshot_blocking(Vec::new()).unwrap_err();
    assert!(matches!(err, CallError::Snapshot { .. }), "{err:?}");
    assert!(err.to_string().contains("refused on purpose"), "{err}");
    assert_eq!(
        h.apply_blocking(entry(2, json!("Ok"))).unwrap().unwrap(),
        b"\"1\""
    );
}

#[test]
fn corrupting_restore_traps_and_poisons_only_that_instance() {
    let src = misbehave(config());
    src.apply_blocking(entry(1, json!({"CorruptRestore": true})))
        .unwrap()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(100);
    let s = src.snapshot_blocking(tx).unwrap();
    let chunks: Vec<Vec<u8>> = rx.try_iter().collect();
    let dst = misbehave(config());
    let err = dst
        .restore_blocking(s.format, chunks.into_iter())
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Trap {
                kind: TrapKind::Panic,
                call: "finish",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("corrupting restore"), "{err}");
    dst.reset_blocking().unwrap();
    assert_eq!(
        src.apply_blocking(entry(2, json!("Ok"))).unwrap().unwrap(),
        b"\"1\""
    );
}

/// A zstd frame (RFC 8878) of `blocks` RLE blocks, each 128 KiB of zeros: `6 + 4 * blocks`
/// bytes. It declares the largest window the zstd decoder accepts by default (128 MiB) and no
/// content size, so nothing in the header lets a decoder see the size coming.
fn zstd_zero_bomb(blocks: usize) -> Vec<u8> {
    const BLOCK_BYTES: u32 = 128 << 10;
    // Magic, frame header descriptor (no content size, not single-segment, no checksum),
    // window descriptor (exponent 17, mantissa 0: 2^27 bytes).
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 17 << 3];
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        // Block header: last-block bit, block type 1 (RLE), size = the repeat count.
        let header = (BLOCK_BYTES << 3) | (1 << 1) | last;
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// `wraft_example_misbehave::CODE_DECOMPRESS_REFUSED` (the crate is built as a guest, not linked).
const MISBEHAVE_DECOMPRESS_REFUSED: u32 = 1;

fn decompress_cmd(data: &[u8], max_output_bytes: u64) -> Value {
    json!({"Decompress": {"data": data, "max_output_bytes": max_output_bytes}})
}

#[test]
fn zstd_bomb_through_decompress_is_refused_in_bounded_memory() {
    // 1 GiB of zeros in 32 KiB.
    let bomb = zstd_zero_bomb(8192);
    assert!(bomb.len() < 40 << 10, "{}", bomb.len());
    // It is a real bomb: a plain zstd decoder inflates it to 1 GiB (streamed, not held).
    let mut plain = zstd::stream::read::Decoder::new(&bomb[..]).unwrap();
    assert_eq!(
        std::io::copy(&mut plain, &mut std::io::sink()).unwrap(),
        1 << 30
    );

    let h = misbehave(config());
    // The import works: a frame of the same make within the cap inflates in full (1 MiB).
    let one_mib = zstd_zero_bomb(8);
    assert_eq!(
        ok_json(
            h.apply_blocking(entry(1, decompress_cmd(&one_mib, 1 << 20)))
                .unwrap()
        ),
        json!("1048576")
    );
    // Bytes that are not zstd are an error, not a trap.
    let e = h
        .apply_blocking(entry(2, decompress_cmd(b"not zstd", 1 << 20)))
        .unwrap()
        .unwrap_err();
    assert!(e.message.starts_with("zstd: "), "{e:?}");

    let (rss_before, _) = rss();
    // Reset the peak so VmHWM measures the bombs alone (Linux >= 4.0; per process under nextest).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    // The guest's cap is under the host's: the guest's applies.
    // A refusal is the guest's app error, naming the cap that applied.
    let refused = |result: &EntryResult, cap: &str, which: &str| {
        let e = result.clone().unwrap_err();
        assert_eq!(e.code, MISBEHAVE_DECOMPRESS_REFUSED);
        assert!(
            e.message.contains(&format!("exceeds {cap} bytes"))
                && e.message.contains(&format!("{which} = {cap}")),
            "{}",
            e.message
        );
    };
    let guest_capped = h
        .apply_blocking(entry(3, decompress_cmd(&bomb, 1 << 20)))
        .unwrap();
    refused(&guest_capped, "1048576", "max-output-bytes");
    // The guest asks for everything: the host's decompress_output_bytes_max (16 MiB) applies.
    let host_capped = h
        .apply_blocking(entry(4, decompress_cmd(&bomb, u64::MAX)))
        .unwrap();
    refused(&host_capped, "16777216", "decompress_output_bytes_max");
    let (_, peak) = rss();
    let extra = peak.saturating_sub(rss_before);
    eprintln!(
        "1 GiB zstd bomb ({} bytes) refused twice; RSS {} MiB, peak extra {} MiB",
        bomb.len(),
        rss_before >> 20,
        extra >> 20
    );
    // The cap is 16 MiB: the output stops one byte past it and the decoder's window is only
    // touched as far as it writes. 1 GiB would show as ≥ 1024 MiB.
    assert!(
        extra < 96 << 20,
        "refusing a 1 GiB bomb cost {} MiB of host memory",
        extra >> 20
    );
    // Not a fault: the instance carries on.
    assert_eq!(
        h.apply_blocking(entry(5, json!("Ok"))).unwrap().unwrap(),
        b"\"1\""
    );
    // Deterministic: another replica's instance gets byte-identical results.
    let replica = misbehave(config());
    assert_eq!(
        replica
            .apply_blocking(entry(3, decompress_cmd(&bomb, 1 << 20)))
            .unwrap(),
        guest_capped
    );
    assert_eq!(
        replica
            .apply_blocking(entry(4, decompress_cmd(&bomb, u64::MAX)))
            .unwrap(),
        host_capped
    );
}

fn bad_component(extra_wit: &str, world: &str) -> Vec<u8> {
    use wit_parser::{ManglingAndAbi, Resolve};
    let mut resolve = Resolve::default();
    resolve
        .push_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit"))
        .unwrap();
    let pkg = resolve.push_str("bad.wit", extra_wit).unwrap();
    let w = resolve.select_world(&[pkg], Some(world)).unwrap();
    let mut module = wit_component::dummy_module(&resolve, w, ManglingAndAbi::Standard32);
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        w,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wraft::build::componentize(&module).unwrap()
}

#[test]
fn component_with_a_forbidden_import_is_rejected_naming_it() {
    let bytes = bad_component(
        "package evil:clock; interface wall { now: func() -> u64; }
         world sneaky { include wraft:machine/state-machine@0.1.0; import wall; }",
        "sneaky",
    );
    let engine = HostEngine::new(HostConfig::default()).unwrap();
    let err = engine.load(&bytes).err().expect("must be rejected");
    assert!(
        matches!(err, LoadError::ForbiddenImport { ref name, .. } if name == "evil:clock/wall"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("imports `evil:clock/wall`"),
        "{err}"
    );
}

#[test]
fn component_without_the_machine_export_is_rejected() {
    let bytes = bad_component(
        "package lazy:m; world idle { import wraft:machine/host@0.1.0; }",
        "idle",
    );
    let err = HostEngine::new(HostConfig::default())
        .unwrap()
        .load(&bytes)
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::MissingExport { .. }), "{err:?}");
    assert!(
        err.to_string().contains("wraft:machine/machine@0.1.0"),
        "{err}"
    );
}

#[test]
fn malformed_files_are_rejected_with_the_cause() {
    let engine = HostEngine::new(HostConfig {
        module_bytes_max: 1 << 20,
        ..HostConfig::default()
    })
    .unwrap();
    let err = engine.load(b"\0asm\x0d\0\x01\0garbage").err().unwrap();
    assert!(matches!(err, LoadError::Malformed(_)), "{err:?}");
    let err = engine.load(b"hello, world").err().unwrap();
    assert!(matches!(err, LoadError::Malformed(_)), "{err:?}");
    // A core module (the output of cargo, before componentizing).
    let err = engine.load(b"\0asm\x01\0\0\0").err().unwrap();
    assert!(matches!(err, LoadError::CoreModule), "{err:?}");
    assert!(err.to_string().contains("wraft build"), "{err}");
    let err = engine.load(&vec![0u8; 2 << 20]).err().unwrap();
    assert!(
        err.to_string().contains("module_bytes_max = 1048576"),
        "{err}"
    );
    // A real component cut short.
    let kv = guest("kv");
    let err = engine.load(&kv[..kv.len() / 2]).err().unwrap();
    assert!(matches!(err, LoadError::Malformed(_)), "{err:?}");
}

#[test]
fn second_load_comes_from_the_cache_and_a_corrupt_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let shared = config();
    // Seed the private cache from the shared one (avoids a second slow debug-mode compile).
    let bytes = guest("counter");
    let _ = load("counter", shared.clone());
    for e in std::fs::read_dir(shared.cache_dir.unwrap()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let engine = HostEngine::new(HostConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..HostConfig::default()
    })
    .unwrap();
    let m = engine.load(&bytes).unwrap();
    assert!(m.from_cache());
    let path = dir.path().join(format!("{}-", m.sha256_hex()));
    let entry_path = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_string_lossy()
                .starts_with(path.to_string_lossy().as_ref())
        })
        .unwrap();
    let mut f = std::fs::read(&entry_path).unwrap();
    let mid = f.len() / 2;
    f[mid] ^= 0xff;
    std::fs::write(&entry_path, f).unwrap();
    let m2 = engine.load(&bytes).unwrap();
    assert!(!m2.from_cache(), "corrupt cache entry must not be used");
    assert!(
        engine.load(&bytes).unwrap().from_cache(),
        "and is rewritten"
    );
    let h = m2.start().unwrap();
    assert_eq!(
        h.apply_blocking(entry(1, json!({"Add": 7})))
            .unwrap()
            .unwrap(),
        b"7"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn async_calls_do_not_block_the_runtime() {
    let h = kv().start().unwrap();
    let ticker = tokio::spawn(async {
        let mut n = 0;
        for _ in 0..5 {
            tokio::task::yield_now().await;
            n += 1;
        }
        n
    });
    let r = h
        .apply(entry(1, json!({"op":"put","key":"a","value":"b"})))
        .await
        .unwrap();
    assert_eq!(ok_json(r), json!({"prev":null}));
    assert_eq!(
        ok_json(h.query(q("a")).await.unwrap()),
        json!({"value":"b"})
    );
    assert_eq!(ticker.await.unwrap(), 5);
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let snap = tokio::spawn(async move { h.snapshot(tx).await.map(|s| (s, h)) });
    let mut chunks = Vec::new();
    while let Some(c) = rx.recv().await {
        chunks.push(c);
    }
    let (s, h) = snap.await.unwrap().unwrap();
    assert_eq!(s.chunks as usize, chunks.len());
    h.shutdown();
}

/// Resident set size and its peak, in bytes, from /proc/self/status.
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn large_state_snapshots_and_restores_in_bounded_extra_memory() {
    // WRAFT_BIG_STATE_MB sets the raw state size (default 200).
    let mb: usize = std::env::var("WRAFT_BIG_STATE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let value_bytes = 1000;
    let keys = mb * 1_000_000 / value_bytes;
    let cfg = HostConfig {
        guest_memory_bytes_max: 3 << 30,
        ..config()
    };
    let h = load("kv", cfg.clone()).start().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut index = 0;
    for batch in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let es = batch
            .iter()
            .map(|i| {
                // Pseudo-random hex: compressible about 2:1, like real text.
                let mut v = String::with_capacity(value_bytes);
                while v.len() < value_bytes {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    v.push_str(&format!("{seed:016x}"));
                }
                v.truncate(value_bytes);
                index += 1;
                entry(
                    index,
                    json!({"op":"put","key":format!("key/{i:09}"),"value":v}),
                )
            })
            .collect();
        for r in h.apply_batch_blocking(es).unwrap() {
            r.unwrap();
        }
    }
    // Stream the snapshot to a file, counting what the host ever holds at once.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let max_chunk = cfg.snapshot_chunk_bytes as usize;
    let (rss_before, _) = rss();
    // Reset the peak so VmHWM measures the snapshot alone (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let summary = h
        .snapshot_blocking(FnSink(move |c: Vec<u8>| {
            use std::io::Write;
            assert!(c.len() <= max_chunk);
            out.write_all(&(c.len() as u32).to_le_bytes())
                .map_err(|e| e.to_string())?;
            out.write_all(&c).map_err(|e| e.to_string())
        }))
        .unwrap();
    let (_, peak) = rss();
    let extra = peak.saturating_sub(rss_before);
    eprintln!(
        "state {mb} MB in {keys} keys -> snapshot {} bytes in {} chunks; RSS {} MB, peak extra during snapshot {} MB",
        summary.bytes,
        summary.chunks,
        rss_before >> 20,
        extra >> 20
    );
    assert!(
        summary.bytes < (mb as u64 * 1_000_000),
        "zstd must compress hex values"
    );
    assert!(
        extra < 64 << 20,
        "snapshot of a {mb} MB state needed {} MB extra memory: not streaming",
        extra >> 20
    );
    drop(h);

    // Restore from the file one chunk at a time into a fresh instance.
    struct FileSource(std::io::BufReader<std::fs::File>);
    impl wraft_host::ChunkSource for FileSource {
        fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
            use std::io::Read;
            let mut len = [0u8; 4];
            match self.0.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
            let mut c = vec![0; u32::from_le_bytes(len) as usize];
            self.0.read_exact(&mut c).map_err(|e| e.to_string())?;
            Ok(Some(c))
        }
    }
    let r = load("kv", cfg).start().unwrap();
    let src = FileSource(std::io::BufReader::new(std::fs::File::open(&file).unwrap()));
    r.restore_blocking(summary.format, src).unwrap();
    for i in [0, keys / 3, keys - 1] {
        let v = ok_json(r.query_blocking(q(&format!("key/{i:09}"))).unwrap());
        assert_eq!(
            v["value"].as_str().map(str::len),
            Some(value_bytes),
            "key {i}"
        );
    }
    let scan = serde_json::to_vec(
        &json!({"op":"scan","prefix":"key/","after":format!("key/{:09}", keys - 3)}),
    )
    .unwrap();
    let v = ok_json(r.query_blocking(scan).unwrap());
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(2));
}

#[test]
fn guest_snapshot_bytes_are_identical_to_native_sdk_output() {
    // The same SDK and zstd code compiled natively and to wasm (C zstd built by clang for
    // wasm32) must produce byte-identical snapshots from the same state: the content-defined
    // cut points too, so the state spans several pieces.
    let cmds: Vec<Value> = (0..20_000)
        .map(|i| json!({"op":"put","key":format!("k{i:05}"),"value":format!("{}", i * 7919 % 10007).repeat(i % 13)}))
        .collect();
    let h = kv().start().unwrap();
    let es = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, c.clone()))
        .collect();
    h.apply_batch_blocking(es).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(10_000);
    h.snapshot_blocking(tx).unwrap();
    let wasm: Vec<Vec<u8>> = rx.try_iter().collect();

    let mut native = wraft_guest::testing::Harness::<wraft_example_kv::Kv>::new();
    for c in &cmds {
        native.apply(&serde_json::to_vec(c).unwrap()).unwrap();
    }
    let native = native
        .snapshot(HostConfig::default().snapshot_chunk_bytes as usize)
        .unwrap();
    assert!(wasm.len() >= 3, "{} chunks", wasm.len());
    assert_eq!(wasm, native);
}

#[test]
fn kv_component_takes_binary_and_json_commands_and_answers_each_in_its_form() {
    // The binary form (a 0 byte, then postcard) decided inside wasm exactly as natively: the
    // component's answers are byte-identical to the native SDK's, command by command.
    use wraft_example_kv::{Command, Output, Query, Reply};
    use wraft_guest::JsonOrPostcard;
    let commands: Vec<Vec<u8>> = vec![
        bin(&Command::Put {
            key: "a".into(),
            value: "1".into(),
            prev_kv: true,
        }),
        serde_json::to_vec(&json!({"op":"put","key":"a","value":"2"})).unwrap(),
        bin(&Command::Put {
            key: "b".into(),
            value: "3".into(),
            prev_kv: false,
        }),
        bin(&Command::Cas {
            key: "a".into(),
            expected: Some("2".into()),
            new: None,
        }),
        vec![JsonOrPostcard::BINARY_TAG, 7], // no such command: a replicated error
    ];
    // The answers: binary for binary commands, JSON for the JSON one, an error for the last.
    let expected: Vec<Option<Vec<u8>>> = vec![
        Some(bin(&Output::Prev { prev: None })),
        Some(br#"{"prev":"1"}"#.to_vec()),
        Some(bin(&Output::Written)),
        Some(bin(&Output::Cas {
            swapped: true,
            current: None,
        })),
        None,
    ];
    let h = kv().start().unwrap();
    let mut native = wraft_guest::testing::Harness::<wraft_example_kv::Kv>::new();
    for (i, (c, want)) in commands.iter().zip(&expected).enumerate() {
        let wasm = h
            .apply_blocking(raw_entry(i as u64 + 1, c.clone()))
            .unwrap();
        let here = native.apply(c);
        match (&wasm, &here, want) {
            (Ok(w), Ok(n), Some(want)) => {
                assert_eq!(w, want, "command {i}");
                assert_eq!(n, want, "command {i} natively");
            }
            (Err(w), Err(n), None) => {
                assert_eq!(w.code, wraft_guest::AppError::CODE_BAD_COMMAND, "{w:?}");
                assert_eq!((w.code, &w.message), (n.code, &n.message));
            }
            _ => panic!("command {i}: component {wasm:?}, native {here:?}, wanted {want:?}"),
        }
    }
    let first = h
        .apply_blocking(raw_entry(9, commands[0].clone()))
        .unwrap()
        .unwrap();
    assert_eq!(first[0], JsonOrPostcard::BINARY_TAG);
    let get = bin(&Query::Get { key: "b".into() });
    let reply = h.query_blocking(get).unwrap().unwrap();
    assert_eq!(
        postcard::from_bytes::<Reply>(&reply[1..]).unwrap(),
        Reply::Value {
            value: Some("3".into())
        }
    );
}

fn bin(value: &impl serde::Serialize) -> Vec<u8> {
    wraft_guest::JsonOrPostcard::encode_binary(value).unwrap()
}

fn raw_entry(index: u64, command: Vec<u8>) -> Entry {
    Entry {
        index,
        term: 1,
        timestamp_ms: 1_700_000_000_000 + index,
        command: command.into(),
    }
}
