//! The sandboxed wasm host: loads guest components and runs machine instances.
//!
//! ```text
//! HostEngine::new(HostConfig)          one per node: deterministic wasmtime engine + watchdog
//!   .load(&bytes) -> MachineModule     validate, precompile (disk cache by SHA-256), read `info`
//!     .start() -> MachineHandle        instance on its own thread; async + blocking calls
//!       .apply / .apply_batch / .query / .snapshot(sink) / .restore(format, source) / .reset
//! ```
//!
//! Results: `Ok(EntryResult)` is the replicated result of a call (output bytes or a
//! deterministic [`AppError`]); `Err(CallError)` means there is no result. A trap poisons the
//! instance; the watchdog's stop is node-local and never to be committed.

mod config;
mod engine;
mod error;
mod instance;
mod validate;
mod wasi;
mod worker;

/// Host-side bindings generated from `wit/machine.wit`.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "state-machine",
    });
}

pub use config::HostConfig;
pub use engine::{HostEngine, MachineInfo, MachineModule};
pub use error::{CallError, EngineError, GuestMessage, LoadError, TrapKind};
pub use instance::{
    AppError, CODE_OUTPUT_TOO_LARGE, ChunkSink, ChunkSource, Entry, EntryResult, FnSink, Instance,
    SnapshotSummary,
};
pub use validate::{
    ALLOWED_IMPORTS, ComponentSummary, REQUIRED_EXPORT, validate_component, validate_component_for,
};
pub use wasi::{DETERMINISTIC_WASI_IMPORTS, WASI_RANDOM_BYTES_MAX, WasiProfile};
pub use worker::MachineHandle;
