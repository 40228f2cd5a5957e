//! Loading a module: size cap, SHA-256, compile-cache lookup, validation, compilation, the
//! world check against the linker, and one `info` call in a throwaway instance to learn what
//! the guest is. This sits above `instance.rs` because reading the info needs an instance.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Component;
use wraft_proto::WasiProfile;

use crate::bindings;
use crate::cache;
use crate::engine::HostEngine;
use crate::error::{CallError, LoadError};
use crate::instance::Instance;
use crate::module::{MachineInfo, MachineModule, ModuleInner};
use crate::validate::validate_component_for;

impl HostEngine {
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
        self.load_capped(bytes, wasi, self.config().module_bytes_max)
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

    /// The checks of [`load_with`](Self::load_with) that need no compiling: the size cap, full
    /// validation, and the import and export names for `wasi`. Tens of milliseconds where a
    /// compile takes seconds: what a deploy checks before it sends the module to the members.
    pub fn check(&self, bytes: &[u8], wasi: WasiProfile) -> Result<(), LoadError> {
        validate_component_for(bytes, self.config().module_bytes_max, true, wasi).map(|_| ())
    }

    /// Compile `bytes` into the compile cache on a thread of its own at background priority
    /// (nice 10 on Linux, as background machine threads), unless the cache already holds it: a member
    /// does this for a module a deploy is about to name, so that applying the deploy finds it
    /// compiled, while the node's own threads keep the CPU they need. A load of the same module
    /// meanwhile waits for this compile instead of repeating it. Failures are only logged: the
    /// load that needs the module reports its own.
    pub fn precompile_in_background(&self, bytes: Arc<Vec<u8>>) {
        if self.config().cache_dir.is_none() {
            return;
        }
        let Some(slot) = self.try_precompile_slot() else {
            tracing::debug!(target: "wraft::host",
                "a precompile is running; this module compiles when it is loaded");
            return;
        };
        let engine = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wraft-precompile".into())
            .spawn(move || {
                let _slot = slot;
                crate::worker::lower_this_threads_priority();
                let sha256 = wraft_proto::digest::sha256(&bytes);
                let started = std::time::Instant::now();
                // The most permissive profile: this compiles; the deploy's load checks the
                // imports against the machine's own profile.
                match engine.compile_cached(&bytes, &sha256, WasiProfile::Deterministic, usize::MAX)
                {
                    Ok((_, true)) => {}
                    Ok((_, false)) => {
                        tracing::info!(target: "wraft::host",
                            module = %&wraft_proto::digest::hex(&sha256)[..16],
                            duration_ms = started.elapsed().as_millis() as u64,
                            "module compiled ahead of its deploy (background)")
                    }
                    Err(e) => tracing::info!(target: "wraft::host",
                        module = %&wraft_proto::digest::hex(&sha256)[..16], error = %e,
                        "compiling a module ahead of its deploy failed; its load will say why"),
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(target: "wraft::host", error = %e, "cannot start a precompile thread");
        }
    }

    fn load_capped(
        &self,
        bytes: &[u8],
        wasi: WasiProfile,
        module_bytes_max: usize,
    ) -> Result<MachineModule, LoadError> {
        let sha256 = wraft_proto::digest::sha256(bytes);
        let (component, from_cache) =
            self.compile_cached(bytes, &sha256, wasi, module_bytes_max)?;
        let pre = self
            .linker(wasi)
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
            config: Arc::clone(self.config_arc()),
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

    /// The compiled component for `bytes` (whose SHA-256 is `sha256`), and whether it came from
    /// the compile cache: a hit is deserialized; a miss is validated in full, compiled and
    /// written to the cache. Either way the size cap and the import and export names are checked.
    fn compile_cached(
        &self,
        bytes: &[u8],
        sha256: &[u8; 32],
        wasi: WasiProfile,
        module_bytes_max: usize,
    ) -> Result<(Component, bool), LoadError> {
        let cache_path = self
            .config()
            .cache_dir
            .as_ref()
            .map(|d| cache::entry_path(d, sha256, self.compat_hash()));
        let cached = match &cache_path {
            Some(p) => cache::read(self.wasmtime(), p),
            None => None,
        };
        // The cache key is the content hash, so a hit was fully validated when it was written;
        // the cheap name checks run regardless.
        validate_component_for(bytes, module_bytes_max, cached.is_none(), wasi)?;
        if let Some(c) = cached {
            return Ok((c, true));
        }
        // One compile of a module at a time; whoever waited finds the cache entry written
        // (without a cache there is nothing to wait for).
        let lock = cache_path.as_ref().map(|_| self.compile_lock(sha256));
        let _compiling = lock
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(c) = cache_path
            .as_ref()
            .and_then(|p| cache::read(self.wasmtime(), p))
        {
            return Ok((c, true));
        }
        let c = Component::new(self.wasmtime(), bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        // The cache only saves the next load's compile: failing to write it (a full
        // disk) costs time, never the load.
        if let Some(p) = &cache_path
            && let Err(e) = cache::write(p, &c)
        {
            tracing::warn!(error = %e, "could not write the compile cache; the module \
                loaded anyway and the next load compiles it again");
        }
        Ok((c, false))
    }
}
