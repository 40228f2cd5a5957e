//! One machine instance: a wasmtime store, the guest's exports, fuel and fault accounting.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::ResourceAny;
use wasmtime::{Store, Trap};
use wraft_proto::WasiProfile;

use crate::bindings;
use crate::bindings::wraft::machine::types as wtypes;
use crate::chunks::{ChunkSink, ChunkSource};
use crate::config::HostConfig;
use crate::engine::HostEngine;
use crate::error::{CallError, GuestMessage, TrapKind};
use crate::module::{MachineInfo, MachineModule, ModuleInner};
use crate::store::{StoreState, new_store};

/// Application error code the host substitutes for an output over `output_bytes_max`.
pub const CODE_OUTPUT_TOO_LARGE: u32 = 0xFFFF_FF01;

/// One committed log entry to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Log index.
    pub index: u64,
    /// Term in which it was proposed.
    pub term: u64,
    /// Leader-assigned timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The client's command bytes (usually a slice of the log entry's own buffer: lowering
    /// copies them into guest memory, and nothing else does).
    pub command: Bytes,
}

/// A deterministic application error returned by a guest: a replicated result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("application error {code}: {message}")]
pub struct AppError {
    /// Application-defined code (`0xFFFF_0000..` reserved for wraft).
    pub code: u32,
    /// Reason.
    pub message: String,
}

/// The replicated result of one entry or query: the output bytes or an application error.
pub type EntryResult = Result<Vec<u8>, AppError>;

/// What a finished snapshot read-out produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Snapshot format (the guest's `snapshot-format`); pass it to restore.
    pub format: u32,
    /// Number of chunks handed to the sink.
    pub chunks: u64,
    /// Total bytes handed to the sink.
    pub bytes: u64,
}

/// A running machine, owned by one thread. Calls block that thread.
///
/// Usually wrapped by [`MachineHandle`](crate::MachineHandle), which gives it a thread of its own.
/// After a trap or watchdog stop every call fails with [`CallError::Poisoned`] until
/// [`Instance::reset`].
pub struct Instance {
    engine: HostEngine,
    /// The module's effective limits: the engine's, with the replicated ones of its deploy.
    config: Arc<HostConfig>,
    pre: bindings::StateMachinePre<StoreState>,
    info: MachineInfo,
    store: Store<StoreState>,
    exports: bindings::StateMachine,
    poisoned: Option<String>,
    wasi: WasiProfile,
    /// (index, timestamp) of the last entry applied: the "now" of queries and snapshots under a
    /// WASI profile.
    last_entry: (u64, u64),
}

impl Instance {
    pub(crate) fn new(module: MachineModule) -> Result<Self, CallError> {
        Self::new_raw(&module.inner)
    }

    pub(crate) fn new_raw(module: &ModuleInner) -> Result<Self, CallError> {
        let engine = module.engine.clone();
        let config = Arc::clone(&module.config);
        let mut store = new_store(engine.wasmtime(), &config, &module.info.name);
        store
            .set_fuel(config.fuel_per_call)
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        store.set_epoch_deadline(engine.watchdog_ticks());
        let exports = module.pre.instantiate(&mut store).map_err(|e| {
            if store.data().memory_limit_hit() {
                CallError::Instantiate(format!(
                    "initial memory exceeds guest_memory_bytes_max = {}",
                    config.guest_memory_bytes_max
                ))
            } else {
                CallError::Instantiate(format!("{e:#}"))
            }
        })?;
        Ok(Self {
            engine,
            config,
            pre: module.pre.clone(),
            info: module.info.clone(),
            store,
            exports,
            poisoned: None,
            wasi: module.wasi,
            last_entry: (0, 0),
        })
    }

    /// The guest's self-description, as reported at load.
    pub fn machine_info(&self) -> &MachineInfo {
        &self.info
    }

    /// True if a fault poisoned this instance.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Discard the guest's state and start over from its default state (after a trap, before
    /// restoring a snapshot and replaying the log). Cost: one instantiation.
    pub fn reset(&mut self) -> Result<(), CallError> {
        self.store = new_store(self.engine.wasmtime(), &self.config, &self.info.name);
        self.poisoned = None;
        self.last_entry = (0, 0);
        self.enter("instantiate", self.config.fuel_per_call)?;
        self.exports = self
            .pre
            .instantiate(&mut self.store)
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        Ok(())
    }

    fn enter(&mut self, call: &'static str, fuel: u64) -> Result<(), CallError> {
        if let Some(cause) = &self.poisoned {
            let _ = call;
            return Err(CallError::Poisoned {
                machine: self.info.name.clone(),
                cause: cause.clone(),
            });
        }
        let ticks = self.engine.watchdog_ticks();
        let d = self.store.data_mut();
        if self.wasi != WasiProfile::None {
            // Calls other than `apply` see the last applied entry; randomness restarts from
            // its seed, so they are pure functions of the state.
            let (index, timestamp_ms) = self.last_entry;
            d.set_entry(index, timestamp_ms);
        }
        d.begin_call();
        self.store.set_epoch_deadline(ticks);
        self.store
            .set_fuel(fuel)
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        Ok(())
    }

    /// Turn a failed call into a typed error and poison the instance.
    fn fault(&mut self, call: &'static str, err: wasmtime::Error) -> CallError {
        let machine = self.info.name.clone();
        let d = self.store.data();
        let e = match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Watchdog {
                machine,
                call,
                watchdog_ms: self.config.watchdog_ms,
            },
            Some(trap) => {
                let kind = match trap {
                    _ if d.memory_limit_hit() => TrapKind::MemoryLimit,
                    Trap::OutOfFuel => TrapKind::FuelExhausted,
                    Trap::StackOverflow => TrapKind::StackOverflow,
                    Trap::UnreachableCodeReached => TrapKind::Panic,
                    Trap::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
                    _ => TrapKind::Other,
                };
                let detail = match kind {
                    TrapKind::MemoryLimit => format!(
                        "memory.grow past guest_memory_bytes_max = {} bytes",
                        self.config.guest_memory_bytes_max
                    ),
                    TrapKind::FuelExhausted => {
                        let budget = if d.in_entry() {
                            format!("fuel_per_entry = {}", self.config.fuel_per_entry)
                        } else {
                            format!("fuel_per_call = {}", self.config.fuel_per_call)
                        };
                        format!("used its whole budget ({budget})")
                    }
                    _ => match d.last_panic() {
                        Some(p) => format!("{p} ({trap})"),
                        None => format!("{err:?}"),
                    },
                };
                CallError::Trap {
                    machine,
                    call,
                    kind,
                    detail,
                }
            }
            None => CallError::Trap {
                machine,
                call,
                kind: TrapKind::Contract,
                detail: format!("{err:#}"),
            },
        };
        self.poisoned = Some(e.to_string());
        e
    }

    fn check_output(&self, r: Result<Vec<u8>, wtypes::AppError>) -> EntryResult {
        let max = self.config.output_bytes_max;
        match r {
            Ok(out) if out.len() > max => Err(AppError {
                code: CODE_OUTPUT_TOO_LARGE,
                message: format!(
                    "output is {} bytes, over output_bytes_max = {max}",
                    out.len()
                ),
            }),
            Ok(out) => Ok(out),
            Err(e) => Err(AppError {
                code: e.code,
                message: e.message,
            }),
        }
    }

    /// Call `info` on the guest.
    pub fn info(&mut self) -> Result<MachineInfo, CallError> {
        self.enter("info", self.config.fuel_per_call)?;
        match self
            .exports
            .wraft_machine_machine()
            .call_info(&mut self.store)
        {
            Ok(i) => Ok(MachineInfo {
                name: i.name,
                version: i.version,
                snapshot_format: i.snapshot_format,
            }),
            Err(e) => Err(self.fault("info", e)),
        }
    }

    /// Apply one committed entry. `Ok(result)` is the replicated result (output or application
    /// error); `Err` means the call produced no result (trap, watchdog, poisoned).
    ///
    /// Fuel: the entry gets `fuel_per_entry`; the call around it `fuel_per_call`.
    pub fn apply(&mut self, entry: Entry) -> Result<EntryResult, CallError> {
        if self.wasi != WasiProfile::None {
            self.last_entry = (entry.index, entry.timestamp_ms);
        }
        self.enter("apply", self.config.fuel_per_call)?;
        let e = to_wit(&entry);
        match self
            .exports
            .wraft_machine_machine()
            .call_apply(&mut self.store, e)
        {
            Ok(r) => Ok(self.check_output(r)),
            Err(err) => Err(self.fault("apply", err)),
        }
    }

    /// Apply committed entries in log order in one call; one result per entry. Semantically the
    /// same as `apply` on each (each entry gets its own `fuel_per_entry`), at a fraction of the
    /// per-call cost. A trap anywhere discards the whole batch's results: reset, restore, and
    /// replay the entries one by one to find the faulty one.
    ///
    /// A machine with a WASI profile is given one `apply` call per entry instead, so that its
    /// clocks and randomness follow each entry whatever the batching.
    pub fn apply_batch(&mut self, entries: Vec<Entry>) -> Result<Vec<EntryResult>, CallError> {
        if self.wasi != WasiProfile::None {
            return entries.into_iter().map(|e| self.apply(e)).collect();
        }
        self.enter("apply-batch", self.config.fuel_per_call)?;
        let n = entries.len();
        let es: Vec<wtypes::Entry<'_>> = entries.iter().map(to_wit).collect();
        match self
            .exports
            .wraft_machine_machine()
            .call_apply_batch(&mut self.store, &es)
        {
            Ok(rs) if rs.len() == n => Ok(rs.into_iter().map(|r| self.check_output(r)).collect()),
            Ok(rs) => Err(self.fault(
                "apply-batch",
                wasmtime::Error::msg(format!(
                    "guest returned {} results for {n} entries",
                    rs.len()
                )),
            )),
            Err(err) => Err(self.fault("apply-batch", err)),
        }
    }

    /// Run a read-only query. Fuel: `fuel_per_call`.
    pub fn query(&mut self, request: &[u8]) -> Result<EntryResult, CallError> {
        self.enter("query", self.config.fuel_per_call)?;
        match self
            .exports
            .wraft_machine_machine()
            .call_query(&mut self.store, request)
        {
            Ok(r) => Ok(self.check_output(r)),
            Err(err) => Err(self.fault("query", err)),
        }
    }

    /// Read a snapshot of the current state out of the guest, chunk by chunk (each at most
    /// `snapshot_chunk_bytes`), into `sink`. Host memory: one chunk at a time.
    /// Fuel: `fuel_per_snapshot_step` per chunk.
    pub fn snapshot(&mut self, sink: &mut dyn ChunkSink) -> Result<SnapshotSummary, CallError> {
        let fuel = self.config.fuel_per_snapshot_step;
        let max = self.config.snapshot_chunk_bytes;
        self.enter("begin-snapshot", fuel)?;
        let m = self.exports.wraft_machine_machine();
        let reader = match m.call_begin_snapshot(&mut self.store) {
            Ok(Ok(r)) => r,
            Ok(Err(msg)) => {
                return Err(CallError::Snapshot {
                    machine: self.info.name.clone(),
                    reason: GuestMessage(msg),
                });
            }
            Err(e) => return Err(self.fault("begin-snapshot", e)),
        };
        let mut summary = SnapshotSummary {
            format: self.info.snapshot_format,
            chunks: 0,
            bytes: 0,
        };
        let result = loop {
            self.enter("next-chunk", fuel)?;
            let m = self.exports.wraft_machine_machine();
            match m
                .snapshot_reader()
                .call_next_chunk(&mut self.store, reader, max)
            {
                Ok(Ok(Some(chunk))) => {
                    if chunk.len() > max as usize {
                        break Err(CallError::ChunkTooLarge {
                            machine: self.info.name.clone(),
                            found: chunk.len(),
                            max,
                        });
                    }
                    summary.chunks += 1;
                    summary.bytes += chunk.len() as u64;
                    if let Err(reason) = sink.write_chunk(chunk) {
                        break Err(CallError::Io {
                            direction: "sink",
                            reason,
                        });
                    }
                }
                Ok(Ok(None)) => break Ok(summary),
                Ok(Err(msg)) => {
                    break Err(CallError::Snapshot {
                        machine: self.info.name.clone(),
                        reason: GuestMessage(msg),
                    });
                }
                Err(e) => return Err(self.fault("next-chunk", e)),
            }
        };
        self.drop_resource("drop snapshot-reader", reader)?;
        result
    }

    /// Replace the guest's state with a snapshot read from `source`, all or nothing: on any
    /// error before `finish` succeeds the guest keeps its old state (unless it trapped, which
    /// poisons it). `format` is [`SnapshotSummary::format`] of the snapshot.
    /// Fuel: `fuel_per_snapshot_step` per chunk and for `finish`.
    pub fn restore(&mut self, format: u32, source: &mut dyn ChunkSource) -> Result<(), CallError> {
        let fuel = self.config.fuel_per_snapshot_step;
        self.enter("begin-restore", fuel)?;
        let m = self.exports.wraft_machine_machine();
        let restorer = match m.call_begin_restore(&mut self.store, format) {
            Ok(Ok(r)) => r,
            Ok(Err(msg)) => return Err(self.refused(msg)),
            Err(e) => return Err(self.fault("begin-restore", e)),
        };
        let result = loop {
            let chunk = match source.next_chunk() {
                Ok(Some(c)) => c,
                Ok(None) => break Ok(()),
                Err(reason) => {
                    break Err(CallError::Io {
                        direction: "source",
                        reason,
                    });
                }
            };
            self.enter("write-chunk", fuel)?;
            let m = self.exports.wraft_machine_machine();
            match m
                .restorer()
                .call_write_chunk(&mut self.store, restorer, &chunk)
            {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => break Err(self.refused(msg)),
                Err(e) => return Err(self.fault("write-chunk", e)),
            }
        };
        let result = match result {
            Ok(()) => {
                self.enter("finish", fuel)?;
                let m = self.exports.wraft_machine_machine();
                match m.restorer().call_finish(&mut self.store, restorer) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(msg)) => Err(self.refused(msg)),
                    Err(e) => return Err(self.fault("finish", e)),
                }
            }
            Err(e) => Err(e),
        };
        self.drop_resource("drop restorer", restorer)?;
        result
    }

    fn refused(&self, msg: String) -> CallError {
        CallError::Restore {
            machine: self.info.name.clone(),
            reason: GuestMessage(msg),
        }
    }

    fn drop_resource(&mut self, call: &'static str, r: ResourceAny) -> Result<(), CallError> {
        self.enter(call, self.config.fuel_per_call)?;
        r.resource_drop(&mut self.store)
            .map_err(|e| self.fault(call, e))
    }
}

fn to_wit(e: &Entry) -> wtypes::Entry<'_> {
    wtypes::Entry {
        meta: wtypes::EntryMeta {
            index: e.index,
            term: e.term,
            timestamp_ms: e.timestamp_ms,
        },
        command: &e.command,
    }
}

impl MachineModule {
    /// A synchronous instance owned by the caller's thread, for embedders that run their own
    /// thread (and for benchmarks). Calls block; never use it from async code.
    pub fn instantiate(&self) -> Result<Instance, CallError> {
        Instance::new(self.clone())
    }
}
