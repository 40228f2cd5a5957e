//! The per-node wasmtime engine, the watchdog ticker, and loading (validate, compile, cache).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, OptLevel};
use wraft_proto::digest::hex;

use super::instance::{Instance, StoreState, add_host_imports};
use super::validate::validate_component_for;
use super::wasi::add_deterministic_wasi;
use super::{CallError, EngineError, HostConfig, LoadError, WasiProfile, bindings};
use wraft_proto::MachineLimits;

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
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A validated, compiled component, ready to start instances. Cheap to clone.
#[derive(Clone)]
pub struct MachineModule {
    pub(crate) inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) engine: HostEngine,
    pub(crate) pre: bindings::StateMachinePre<StoreState>,
    pub(crate) sha256: [u8; 32],
    pub(crate) info: MachineInfo,
    pub(crate) from_cache: bool,
    pub(crate) wasi: WasiProfile,
    /// The engine's config with the module's replicated limits, if it has any.
    pub(crate) config: Arc<HostConfig>,
    /// The replicated limits of the deploy that loaded it (`None`: this node's configuration).
    pub(crate) limits: Option<MachineLimits>,
}

/// What a guest says about itself (`info` in the WIT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    /// Machine kind, e.g. `"kv"`.
    pub name: String,
    /// Version of the guest code.
    pub version: String,
    /// Snapshot format the guest writes.
    pub snapshot_format: u32,
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
            .cranelift_opt_level(OptLevel::Speed);
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
            }),
        })
    }

    /// The settings this engine was built with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.inner.engine
    }

    /// Watchdog deadline in epoch ticks.
    pub(crate) fn watchdog_ticks(&self) -> u64 {
        let c = &self.inner.config;
        c.watchdog_ms.div_ceil(c.epoch_tick_ms.max(1)).max(1)
    }

    /// Load a component file; see [`HostEngine::load`].
    pub fn load_file(&self, path: &Path) -> Result<MachineModule, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load(&bytes)
    }

    /// [`HostEngine::load_with`] under [`WasiProfile::None`] (no WASI).
    pub fn load(&self, bytes: &[u8]) -> Result<MachineModule, LoadError> {
        self.load_with(bytes, WasiProfile::None)
    }

    /// Validate, compile (or fetch from the cache) and describe a component that may import what
    /// `wasi` provides (besides `wraft:machine/host`).
    ///
    /// Steps: size cap; SHA-256; on a cache hit (same module hash and engine compatibility hash,
    /// file checksum intact) deserialize the precompiled code — milliseconds; otherwise parse and
    /// validate fully, check imports (only `wraft:machine/host` and `types`) and exports, compile
    /// with Cranelift (seconds for a large guest) and write the cache atomically. Then check
    /// the exports' types against the world and call `info` once in a throwaway instance.
    /// An import the profile does not provide fails with [`LoadError::ForbiddenImport`] naming
    /// it, before anything is compiled.
    pub fn load_with(&self, bytes: &[u8], wasi: WasiProfile) -> Result<MachineModule, LoadError> {
        self.load_capped(bytes, wasi, self.inner.config.module_bytes_max)
    }

    /// [`load_with`](Self::load_with) for a module that is already committed to the log: no
    /// size cap (`module_bytes_max` is this node's configuration, checked when a deploy is
    /// proposed; a replica configured differently must not refuse what the others accept).
    pub fn load_committed(
        &self,
        bytes: &[u8],
        wasi: WasiProfile,
    ) -> Result<MachineModule, LoadError> {
        self.load_capped(bytes, wasi, usize::MAX)
    }

    fn load_capped(
        &self,
        bytes: &[u8],
        wasi: WasiProfile,
        module_bytes_max: usize,
    ) -> Result<MachineModule, LoadError> {
        let cfg = &self.inner.config;
        let sha256 = wraft_proto::digest::sha256(bytes);
        let cache_path = cfg
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}.cwasm", hex(&sha256), self.inner.compat_hash)));
        let cached = match &cache_path {
            Some(p) => self.read_cache(p),
            None => None,
        };
        // The cache key is the content hash, so a hit was fully validated when it was written;
        // the cheap name checks run regardless.
        validate_component_for(bytes, module_bytes_max, cached.is_none(), wasi)?;
        let from_cache = cached.is_some();
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&self.inner.engine, bytes)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                // The cache only saves the next load's compile: failing to write it (a full
                // disk) costs time, never the load.
                if let Some(p) = &cache_path
                    && let Err(e) = self.write_cache(p, &c)
                {
                    tracing::warn!(error = %e, "could not write the compile cache; the module \
                        loaded anyway and the next load compiles it again");
                }
                c
            }
        };
        let linker = match wasi {
            WasiProfile::None => &self.inner.linker,
            WasiProfile::Deterministic => &self.inner.linker_wasi,
        };
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::StateMachinePre::new)
            .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let mut module = ModuleInner {
            engine: self.clone(),
            pre,
            sha256,
            info: MachineInfo {
                name: "?".into(),
                version: String::new(),
                snapshot_format: 0,
            },
            from_cache,
            wasi,
            config: Arc::clone(&self.inner.config),
            limits: None,
        };
        let info = Instance::new_raw(&module)
            .and_then(|mut i| i.info())
            .map_err(|e: CallError| LoadError::Info(e.to_string()))?;
        module.info = info;
        Ok(MachineModule {
            inner: Arc::new(module),
        })
    }

    fn read_cache(&self, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let body_len = bytes.len().checked_sub(CACHE_TRAILER_BYTES)?;
        let (body, trailer) = bytes.split_at(body_len);
        let ok = trailer[32..] == *CACHE_MAGIC && trailer[..32] == *blake3::hash(body).as_bytes();
        if !ok {
            tracing::warn!(path = %path.display(), "compile cache entry is corrupt; recompiling");
            return None;
        }
        // SAFETY: `deserialize` trusts the bytes to be wasmtime's own output. They are: this
        // node's cache directory is written only by `write_cache`, and the BLAKE3 trailer
        // guarantees the file is exactly what it wrote. wasmtime checks version and engine
        // settings itself.
        match unsafe { Component::deserialize(&self.inner.engine, body) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compile cache entry unusable; recompiling");
                None
            }
        }
    }

    fn write_cache(&self, path: &Path, component: &Component) -> Result<(), LoadError> {
        let cache_err = |source| LoadError::Cache {
            path: path.to_owned(),
            source,
        };
        let mut body = component
            .serialize()
            .map_err(|e| cache_err(std::io::Error::other(format!("{e:#}"))))?;
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());
        body.extend_from_slice(CACHE_MAGIC);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        write_synced(&tmp, &body).map_err(cache_err)?;
        std::fs::rename(&tmp, path).map_err(cache_err)?;
        Ok(())
    }
}

const CACHE_MAGIC: &[u8; 8] = b"WRFTCWM1";
const CACHE_TRAILER_BYTES: usize = 32 + 8;

fn write_synced(path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl MachineModule {
    /// SHA-256 of the component bytes: the module's identity in logs, caches and Raft config.
    pub fn sha256(&self) -> [u8; 32] {
        self.inner.sha256
    }

    /// [`MachineModule::sha256`] as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex(&self.inner.sha256)
    }

    /// The guest's self-description.
    pub fn info(&self) -> &MachineInfo {
        &self.inner.info
    }

    /// The WASI profile the module was loaded with (part of its deployment).
    pub fn wasi_profile(&self) -> WasiProfile {
        self.inner.wasi
    }

    /// This module, to run with `limits` (the replicated limits of its deploy) instead of the
    /// node's configured ones. Cheap: the compiled code is shared.
    pub fn with_limits(&self, limits: MachineLimits) -> MachineModule {
        let m = &self.inner;
        let config = HostConfig {
            fuel_per_entry: limits.fuel_per_entry,
            fuel_per_call: limits.fuel_per_call,
            guest_memory_bytes_max: usize::try_from(limits.memory_bytes_max).unwrap_or(usize::MAX),
            output_bytes_max: usize::try_from(limits.output_bytes_max).unwrap_or(usize::MAX),
            ..(*m.engine.inner.config).clone()
        };
        MachineModule {
            inner: Arc::new(ModuleInner {
                engine: m.engine.clone(),
                pre: m.pre.clone(),
                sha256: m.sha256,
                info: m.info.clone(),
                from_cache: m.from_cache,
                wasi: m.wasi,
                config: Arc::new(config),
                limits: Some(limits),
            }),
        }
    }

    /// The replicated limits it runs with (`None`: this node's configured limits, as for a
    /// machine deployed before limits were replicated).
    pub fn limits(&self) -> Option<MachineLimits> {
        self.inner.limits
    }

    /// True if the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.inner.from_cache
    }

    /// Start an instance with the machine's default (empty) state on its own OS thread.
    ///
    /// Cost: one thread and one instantiation (tens of µs plus the guest's initial memory).
    pub fn start(&self) -> Result<super::MachineHandle, CallError> {
        super::worker::MachineHandle::spawn(self.clone(), false)
    }

    /// [`start`](Self::start) for background work that must not compete with live machines and
    /// the node's consensus threads for CPU (snapshot creation from a shadow instance): the
    /// thread runs at nice [`BACKGROUND_NICE`](super::worker::BACKGROUND_NICE) on Linux, so it
    /// gets spare cycles at full speed but about a tenth of a normal thread's share when the CPUs
    /// are busy. Determinism is unaffected: only scheduling changes.
    pub fn start_background(&self) -> Result<super::MachineHandle, CallError> {
        super::worker::MachineHandle::spawn(self.clone(), true)
    }

    /// A synchronous instance owned by the caller's thread, for embedders that run their own
    /// thread (and for benchmarks). Calls block; never use it from async code.
    pub fn instantiate(&self) -> Result<Instance, CallError> {
        Instance::new(self.clone())
    }
}
