//! The per-node wasmtime engine: its deterministic configuration, the two linkers (the host
//! imports alone, and with the deterministic WASI profile), the compatibility hash that names
//! compile-cache files, and the watchdog thread that ticks the epoch. Loading modules is in
//! `load.rs`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, OptLevel};
use wraft_proto::WasiProfile;
use wraft_proto::digest::hex;

use crate::config::HostConfig;
use crate::error::EngineError;
use crate::store::{StoreState, add_host_imports};
use crate::wasi::add_deterministic_wasi;

/// One node's wasm host: a deterministic wasmtime engine, its watchdog, and its compile cache.
///
/// Cheap to clone (shared). Create one per node. Dropping the last clone stops the watchdog
/// thread.
#[derive(Clone)]
pub struct HostEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    config: Arc<HostConfig>,
    linker: Linker<StoreState>,
    /// `linker` plus the deterministic WASI profile.
    linker_wasi: Linker<StoreState>,
    compat_hash: String,
    stop: Arc<AtomicBool>,
    /// One lock per module compiled since start: a second load of a module being compiled
    /// (a deploy's apply while its background precompile runs) waits for the first and then
    /// reads the compile cache, instead of compiling it again.
    compiling: std::sync::Mutex<std::collections::HashMap<[u8; 32], Arc<std::sync::Mutex<()>>>>,
    /// Background precompiles running (at most [`PRECOMPILES_MAX`]).
    precompiling: std::sync::atomic::AtomicUsize,
}

/// Most background precompiles at once; a module pushed while they run is compiled when it
/// is loaded instead.
pub const PRECOMPILES_MAX: usize = 1;

/// A background precompile slot, given back on drop.
pub(crate) struct PrecompileSlot(Arc<EngineInner>);

impl Drop for PrecompileSlot {
    fn drop(&mut self) {
        self.0.precompiling.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash is stable across
/// processes (unlike `DefaultHasher`, which is not specified to be).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl HostEngine {
    /// Build the engine: NaN canonicalization, deterministic relaxed SIMD, no threads, fuel,
    /// epoch interruption, a stack limit; and start the watchdog ticker thread.
    ///
    /// Fails if wasmtime rejects the configuration or the cache directory cannot be created.
    pub fn new(config: HostConfig) -> Result<Self, EngineError> {
        let mut c = Config::new();
        // Threads are off by construction: wasmtime is built without its `threads` feature.
        c.wasm_component_model(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.wasm_stack_bytes_max)
            .cranelift_opt_level(OptLevel::Speed)
            // Initialize guest memory by copying the data segments, not from a copy-on-write
            // image: on Linux that image is a memfd wasmtime seals read-only, and sealing fails
            // (EBUSY) while the kernel holds a reference to one of its pages, as a memory
            // monitor sampling pages does; instantiating then failed at random. A node
            // instantiates a machine only at deploy, start and restore, where a copy of the
            // data segments costs little.
            .memory_init_cow(false);
        // Diagnostics only: with `WRAFT_WASM_PERFMAP` set, wasmtime writes `/tmp/perf-<pid>.map`
        // so that `perf report` names guest functions (no effect on compiled code).
        if std::env::var_os("WRAFT_WASM_PERFMAP").is_some() {
            c.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&c).map_err(|e| EngineError(format!("{e:#}")))?;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| EngineError(format!("cache dir {}: {e}", dir.display())))?;
        }
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat_hash = hex(&h.0.finalize()[..8]);
        let mut linker = Linker::new(&engine);
        add_host_imports(&mut linker).map_err(|e| EngineError(format!("{e:#}")))?;
        let mut linker_wasi = linker.clone();
        add_deterministic_wasi(&mut linker_wasi).map_err(|e| EngineError(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tick = Duration::from_millis(config.epoch_tick_ms.max(1));
        let (ticker_engine, ticker_stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wraft-wasm-watchdog".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| EngineError(format!("spawning watchdog thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(EngineInner {
                engine,
                config: Arc::new(config),
                linker,
                linker_wasi,
                compat_hash,
                stop,
                compiling: Default::default(),
                precompiling: Default::default(),
            }),
        })
    }

    /// The settings this engine was built with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// The lock held while module `sha256` is compiled (see `EngineInner::compiling`).
    pub(crate) fn compile_lock(&self, sha256: &[u8; 32]) -> Arc<std::sync::Mutex<()>> {
        self.inner
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*sha256)
            .or_default()
            .clone()
    }

    /// Take a background precompile slot, if one of [`PRECOMPILES_MAX`] is free.
    pub(crate) fn try_precompile_slot(&self) -> Option<PrecompileSlot> {
        let n = &self.inner.precompiling;
        n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
            (c < PRECOMPILES_MAX).then_some(c + 1)
        })
        .ok()
        .map(|_| PrecompileSlot(self.inner.clone()))
    }

    /// The wasmtime engine underneath: for stores and compiling.
    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.inner.engine
    }

    /// Watchdog deadline in epoch ticks.
    pub(crate) fn watchdog_ticks(&self) -> u64 {
        let c = &self.inner.config;
        c.watchdog_ms.div_ceil(c.epoch_tick_ms.max(1)).max(1)
    }

    /// The engine's config, shared with the modules loaded under it.
    pub(crate) fn config_arc(&self) -> &Arc<HostConfig> {
        &self.inner.config
    }

    /// The linker for a module loaded under `wasi`: `wraft:machine/host` (and `types`), plus the
    /// WASI 0.2 interfaces for [`WasiProfile::Deterministic`].
    pub(crate) fn linker(&self, wasi: WasiProfile) -> &Linker<StoreState> {
        match wasi {
            WasiProfile::None => &self.inner.linker,
            WasiProfile::Deterministic => &self.inner.linker_wasi,
        }
    }

    /// Short hex digest of wasmtime's precompile compatibility hash: part of every compile-cache
    /// file name, so code compiled by a differently configured engine is never loaded.
    pub(crate) fn compat_hash(&self) -> &str {
        &self.inner.compat_hash
    }
}
