//! One machine instance: a wasmtime store, the guest's exports, fuel and fault accounting.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Linker, ResourceAny};
use wasmtime::{ResourceLimiter, Store, StoreContextMut, Trap};

use super::bindings::wraft::machine::host::LogLevel;
use super::bindings::wraft::machine::types as wtypes;
use super::engine::{MachineInfo, MachineModule, ModuleInner};
use super::wasi::{EntryEnv, WasiState};
use super::{CallError, GuestMessage, HostConfig, HostEngine, TrapKind, WasiProfile, bindings};

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
    /// The client's command bytes.
    pub command: Vec<u8>,
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

/// Where snapshot chunks go, in order. Runs on the machine's thread.
pub trait ChunkSink: Send {
    /// Take one chunk. An error aborts the snapshot.
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String>;
}

/// Where restore chunks come from, in order. Runs on the machine's thread.
pub trait ChunkSource: Send {
    /// The next chunk, or `None` at the end. An error aborts the restore.
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String>;
}

impl ChunkSink for Vec<Vec<u8>> {
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.push(chunk);
        Ok(())
    }
}

impl ChunkSink for std::sync::mpsc::SyncSender<Vec<u8>> {
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.send(chunk).map_err(|_| "receiver dropped".to_string())
    }
}

impl ChunkSink for tokio::sync::mpsc::Sender<Vec<u8>> {
    /// Blocks the machine thread (never an async task) while the channel is full.
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.blocking_send(chunk)
            .map_err(|_| "receiver dropped".to_string())
    }
}

impl ChunkSource for std::vec::IntoIter<Vec<u8>> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.next())
    }
}

impl ChunkSource for std::sync::mpsc::Receiver<Vec<u8>> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.recv().ok())
    }
}

impl ChunkSource for tokio::sync::mpsc::Receiver<Vec<u8>> {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(self.blocking_recv())
    }
}

/// Adapts a closure into a [`ChunkSink`].
pub struct FnSink<F>(pub F);

impl<F: FnMut(Vec<u8>) -> Result<(), String> + Send> ChunkSink for FnSink<F> {
    fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        (self.0)(chunk)
    }
}

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

/// Per-store data: limits, fault flags, the fuel bracket, the log bucket.
pub struct StoreState {
    config: Arc<HostConfig>,
    machine: String,
    memory_limit_hit: bool,
    last_panic: Option<String>,
    saved_fuel: Option<u64>,
    entries_bracketed: u64,
    log_tokens: f64,
    log_refilled: Instant,
    log_dropped: u64,
    /// What a WASI guest's clocks and RNG read (set per entry); unused without WASI.
    entry_env: Arc<EntryEnv>,
    /// WASI context and handle table, created on first use (only a WASI guest uses it).
    wasi: Option<Box<WasiState>>,
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.config.guest_memory_bytes_max {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.config.guest_table_elements_max)
    }
}

impl StoreState {
    pub(crate) fn wasi_state(&mut self) -> &mut WasiState {
        let (env, machine) = (&self.entry_env, &self.machine);
        self.wasi
            .get_or_insert_with(|| Box::new(WasiState::deterministic(env.clone(), machine)))
    }

    fn log(&mut self, level: LogLevel, mut message: String) {
        if message.len() > self.config.log_line_bytes_max {
            let mut cut = self.config.log_line_bytes_max;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        if matches!(level, LogLevel::Error) && message.starts_with("panic: ") {
            self.last_panic = Some(message.clone());
        }
        let rate = f64::from(self.config.log_lines_per_sec.max(1));
        let now = Instant::now();
        self.log_tokens = (self.log_tokens
            + now.duration_since(self.log_refilled).as_secs_f64() * rate)
            .min(rate);
        self.log_refilled = now;
        if self.log_tokens < 1.0 {
            self.log_dropped += 1;
            return;
        }
        self.log_tokens -= 1.0;
        let dropped = std::mem::take(&mut self.log_dropped);
        let m = self.machine.as_str();
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "wraft::guest", machine = m, dropped, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "wraft::guest", machine = m, dropped, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "wraft::guest", machine = m, dropped, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "wraft::guest", machine = m, dropped, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "wraft::guest", machine = m, dropped, "{message}")
            }
        }
    }
}

fn compress(cfg: &HostConfig, data: &[u8], level: i32) -> Result<Vec<u8>, String> {
    if data.len() > cfg.compress_input_bytes_max {
        return Err(format!(
            "compress input is {} bytes, over compress_input_bytes_max = {}",
            data.len(),
            cfg.compress_input_bytes_max
        ));
    }
    if !(1..=19).contains(&level) {
        return Err(format!("compression level {level} is outside 1..=19"));
    }
    zstd::bulk::compress(data, level).map_err(|e| format!("zstd: {e}"))
}

/// The `decompress` import: inflate one zstd stream, refusing past
/// `min(max_output_bytes, cfg.decompress_output_bytes_max)` bytes.
///
/// Costs at most `cap + 1` output bytes (the `Vec` may reserve up to twice that) plus the zstd
/// window the frame declares (the decoder refuses windows over 128 MiB and only touches as much
/// of it as it writes), whatever the frame claims to inflate to: a bomb is refused after reading
/// one byte past the cap. The outcome depends only on the bytes and the two caps, so every
/// replica gets the same answer (pinned by `host: zstd_bomb_through_decompress_is_refused_in_bounded_memory`).
fn decompress(cfg: &HostConfig, data: &[u8], max_output_bytes: u64) -> Result<Vec<u8>, String> {
    let host_max = cfg.decompress_output_bytes_max;
    let cap = usize::try_from(max_output_bytes)
        .unwrap_or(usize::MAX)
        .min(host_max);
    let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::new();
    decoder
        .take((cap as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() > cap {
        return Err(format!(
            "decompressed output exceeds {cap} bytes (the smaller of max-output-bytes = \
             {max_output_bytes} and the host's decompress_output_bytes_max = {host_max}); \
             stopped there"
        ));
    }
    Ok(out)
}

/// Define the `wraft:machine/host` imports (and the type-only `types` instance) in `linker`.
pub(crate) fn add_host_imports(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.instance("wraft:machine/types@0.1.0")?;
    let mut host = linker.instance("wraft:machine/host@0.1.0")?;
    host.func_wrap(
        "log",
        |mut s: StoreContextMut<'_, StoreState>, (level, msg): (LogLevel, String)| {
            s.data_mut().log(level, msg);
            Ok(())
        },
    )?;
    host.func_wrap(
        "compress",
        |s: StoreContextMut<'_, StoreState>, (data, level): (Vec<u8>, i32)| {
            Ok((compress(&s.data().config, &data, level),))
        },
    )?;
    host.func_wrap(
        "decompress",
        |s: StoreContextMut<'_, StoreState>, (data, max): (Vec<u8>, u64)| {
            Ok((decompress(&s.data().config, &data, max),))
        },
    )?;
    host.func_wrap(
        "begin-entry",
        |mut s: StoreContextMut<'_, StoreState>, (): ()| {
            if s.data().saved_fuel.is_some() {
                wasmtime::bail!("begin-entry called twice without end-entry");
            }
            let remaining = s.get_fuel()?;
            let per_entry = s.data().config.fuel_per_entry;
            s.data_mut().saved_fuel = Some(remaining);
            s.data_mut().entries_bracketed += 1;
            s.set_fuel(per_entry)?;
            Ok(())
        },
    )?;
    host.func_wrap(
        "end-entry",
        |mut s: StoreContextMut<'_, StoreState>, (): ()| {
            let Some(saved) = s.data_mut().saved_fuel.take() else {
                wasmtime::bail!("end-entry called without begin-entry");
            };
            s.set_fuel(saved)?;
            Ok(())
        },
    )?;
    Ok(())
}

/// A running machine, owned by one thread. Calls block that thread.
///
/// Usually wrapped by [`MachineHandle`](super::MachineHandle), which gives it a thread of its own.
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

fn new_store(engine: &HostEngine, config: &Arc<HostConfig>, machine: &str) -> Store<StoreState> {
    let config = Arc::clone(config);
    let rate = f64::from(config.log_lines_per_sec);
    let mut store = Store::new(
        engine.wasmtime(),
        StoreState {
            config,
            machine: machine.to_string(),
            memory_limit_hit: false,
            last_panic: None,
            saved_fuel: None,
            entries_bracketed: 0,
            log_tokens: rate,
            log_refilled: Instant::now(),
            log_dropped: 0,
            entry_env: Arc::default(),
            wasi: None,
        },
    );
    store.limiter(|s| s as &mut dyn ResourceLimiter);
    store
}

impl Instance {
    pub(crate) fn new(module: MachineModule) -> Result<Self, CallError> {
        Self::new_raw(&module.inner)
    }

    pub(crate) fn new_raw(module: &ModuleInner) -> Result<Self, CallError> {
        let engine = module.engine.clone();
        let config = Arc::clone(&module.config);
        let mut store = new_store(&engine, &config, &module.info.name);
        store
            .set_fuel(config.fuel_per_call)
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        store.set_epoch_deadline(engine.watchdog_ticks());
        let exports = module.pre.instantiate(&mut store).map_err(|e| {
            if store.data().memory_limit_hit {
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
        self.store = new_store(&self.engine, &self.config, &self.info.name);
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
            d.entry_env.set(index, timestamp_ms);
        }
        d.memory_limit_hit = false;
        d.last_panic = None;
        d.saved_fuel = None;
        d.entries_bracketed = 0;
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
                    _ if d.memory_limit_hit => TrapKind::MemoryLimit,
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
                        let budget = if d.saved_fuel.is_some() {
                            format!("fuel_per_entry = {}", self.config.fuel_per_entry)
                        } else {
                            format!("fuel_per_call = {}", self.config.fuel_per_call)
                        };
                        format!("used its whole budget ({budget})")
                    }
                    _ => match &d.last_panic {
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
        let e = to_wit(entry);
        match self
            .exports
            .wraft_machine_machine()
            .call_apply(&mut self.store, &e)
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
        let es: Vec<wtypes::Entry> = entries.into_iter().map(to_wit).collect();
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

fn to_wit(e: Entry) -> wtypes::Entry {
    wtypes::Entry {
        meta: wtypes::EntryMeta {
            index: e.index,
            term: e.term,
            timestamp_ms: e.timestamp_ms,
        },
        command: e.command,
    }
}
