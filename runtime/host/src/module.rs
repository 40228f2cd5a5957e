//! A loaded module: the compiled component ready to instantiate, with what it says about itself
//! and the limits it runs with. Loading one is in `load.rs`; instances come from `instance.rs`
//! and `worker.rs`.

use std::sync::Arc;

use wraft_proto::digest::hex;
use wraft_proto::{MachineLimits, WasiProfile};

use crate::bindings;
use crate::config::HostConfig;
use crate::engine::HostEngine;
use crate::store::StoreState;

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
            ..m.engine.config().clone()
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
}
