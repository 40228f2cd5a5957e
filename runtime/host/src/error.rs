//! Typed errors of the wasm host.

use std::path::PathBuf;

/// Why a component was refused by `load`. Deterministic for a given component and config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component is larger than `module_bytes_max`.
    #[error("component is {found} bytes, over the limit module_bytes_max = {max}")]
    TooLarge {
        /// Size of the component.
        found: usize,
        /// The configured limit.
        max: usize,
    },
    /// The bytes are a core wasm module, not a component.
    #[error(
        "this is a core wasm module, not a component: build guests with `wraft build` \
         (or componentize with wit-component)"
    )]
    CoreModule,
    /// The bytes do not parse or validate as a component.
    #[error("not a valid wasm component: {0}")]
    Malformed(String),
    /// The component imports something the host does not provide.
    #[error(
        "component imports `{name}`, which the machine's WASI profile `{profile}` does not \
         provide (allowed: {allowed})"
    )]
    ForbiddenImport {
        /// The offending import.
        name: String,
        /// The profile the module was checked against.
        profile: wraft_proto::WasiProfile,
        /// What is allowed.
        allowed: String,
    },
    /// The component does not export the machine interface.
    #[error("component does not export `{expected}` (it exports: {found})")]
    MissingExport {
        /// The export the world requires.
        expected: String,
        /// What it does export.
        found: String,
    },
    /// Names match but types do not match the `state-machine` world.
    #[error("component does not match the wraft:machine state-machine world: {0}")]
    WorldMismatch(String),
    /// Compilation failed.
    #[error("compiling component failed: {0}")]
    Compile(String),
    /// The component loaded but its `info` call failed.
    #[error("calling `info` on the component failed: {0}")]
    Info(String),
    /// Reading or writing the compile cache failed.
    #[error("compile cache {path}: {source}")]
    Cache {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading the component file failed.
    #[error("reading component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What kind of fault made a guest trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest panicked (or executed `unreachable`).
    Panic,
    /// The guest used up its fuel budget.
    FuelExhausted,
    /// The guest tried to grow its memory past `guest_memory_bytes_max`.
    MemoryLimit,
    /// The wasm call stack exceeded `wasm_stack_bytes_max`.
    StackOverflow,
    /// The guest accessed memory out of bounds.
    MemoryOutOfBounds,
    /// Any other wasm trap (division by zero, bad indirect call, ...).
    Other,
    /// The guest broke the calling contract (invalid UTF-8, bad resource handle, a host import
    /// refused to run, ...).
    Contract,
}

/// A call into a guest that did not produce a result. None of these is a replicated result:
/// the caller discards the instance (it is poisoned after a trap) and rebuilds it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The guest trapped. Deterministic for fuel, memory and panics: every replica traps too.
    #[error("guest {machine} trapped ({kind:?}) in {call}: {detail}")]
    Trap {
        /// Machine name.
        machine: String,
        /// The call that trapped.
        call: &'static str,
        /// What went wrong.
        kind: TrapKind,
        /// Details: the panic message, the wasm trap, a backtrace.
        detail: String,
    },
    /// The node-local wall-clock watchdog stopped the call. Not deterministic: never commit this.
    #[error("guest {machine} ran past the {watchdog_ms} ms watchdog in {call}")]
    Watchdog {
        /// Machine name.
        machine: String,
        /// The call that was stopped.
        call: &'static str,
        /// The configured watchdog.
        watchdog_ms: u64,
    },
    /// An earlier trap poisoned this instance; rebuild it (`reset`, then restore and replay).
    #[error("guest {machine} is poisoned by an earlier fault ({cause}); reset it")]
    Poisoned {
        /// Machine name.
        machine: String,
        /// The fault that poisoned it.
        cause: String,
    },
    /// The guest's snapshot code reported an error (the instance is still usable).
    #[error("guest {machine} failed to snapshot: {reason}")]
    Snapshot {
        /// Machine name.
        machine: String,
        /// Reason.
        reason: GuestMessage,
    },
    /// The guest refused a restore (the instance keeps its old state).
    #[error("guest {machine} refused the restore: {reason}")]
    Restore {
        /// Machine name.
        machine: String,
        /// Reason.
        reason: GuestMessage,
    },
    /// The snapshot sink or source supplied by the caller failed.
    #[error("snapshot {direction} failed: {reason}")]
    Io {
        /// `"sink"` or `"source"`.
        direction: &'static str,
        /// Reason.
        reason: String,
    },
    /// A guest chunk exceeded the requested size.
    #[error("guest {machine} returned a {found}-byte snapshot chunk, over the {max} asked for")]
    ChunkTooLarge {
        /// Machine name.
        machine: String,
        /// Chunk size.
        found: usize,
        /// Requested limit.
        max: u32,
    },
    /// Instantiating the component failed (e.g. its initial memory exceeds the limit).
    #[error("instantiating guest failed: {0}")]
    Instantiate(String),
    /// The machine's thread has stopped (handle shut down, or it panicked).
    #[error("the machine thread has stopped")]
    Stopped,
}

/// A message produced by a guest, kept apart so it is never mistaken for a host message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct GuestMessage(pub String);

impl CallError {
    /// True if this error left the instance poisoned: it must be reset before the next call.
    pub fn poisons(&self) -> bool {
        matches!(
            self,
            CallError::Trap { .. } | CallError::Watchdog { .. } | CallError::Poisoned { .. }
        )
    }
}

/// Creating the host engine failed.
#[derive(Debug, thiserror::Error)]
#[error("configuring the wasm engine failed: {0}")]
pub struct EngineError(pub String);
