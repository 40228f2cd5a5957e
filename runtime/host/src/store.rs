//! What one wasmtime store carries for its guest, and the `wraft:machine/host` imports that read
//! and write it: limits and fault flags, the `begin-entry`/`end-entry` fuel bracket, the guest
//! log's rate limit, capped `compress`/`decompress`, and the WASI state of a WASI guest.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime::{Engine, ResourceLimiter, Store, StoreContextMut};
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::bindings::wraft::machine::host::LogLevel;
use crate::config::HostConfig;
use crate::wasi::{EntryEnv, WasiState};

/// Per-store data: limits, fault flags, the fuel bracket, the log bucket.
pub(crate) struct StoreState {
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

/// A fresh store for one instance of `machine` under `config`'s limits (memory and tables
/// through its [`ResourceLimiter`]). No fuel and no epoch deadline are set yet.
pub(crate) fn new_store(
    engine: &Engine,
    config: &Arc<HostConfig>,
    machine: &str,
) -> Store<StoreState> {
    let config = Arc::clone(config);
    let rate = f64::from(config.log_lines_per_sec);
    let mut store = Store::new(
        engine,
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

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi_state().view()
    }
}

impl StoreState {
    /// Forget what the previous call left behind (fault flags, an open fuel bracket), before a
    /// new call into the guest.
    pub(crate) fn begin_call(&mut self) {
        self.memory_limit_hit = false;
        self.last_panic = None;
        self.saved_fuel = None;
        self.entries_bracketed = 0;
    }

    /// Point a WASI guest's clocks and randomness at log entry `index`, applied at
    /// `timestamp_ms`.
    pub(crate) fn set_entry(&self, index: u64, timestamp_ms: u64) {
        self.entry_env.set(index, timestamp_ms);
    }

    /// True if the guest asked to grow its memory past `guest_memory_bytes_max` in this call.
    pub(crate) fn memory_limit_hit(&self) -> bool {
        self.memory_limit_hit
    }

    /// True between the guest's `begin-entry` and `end-entry`: it is spending `fuel_per_entry`.
    pub(crate) fn in_entry(&self) -> bool {
        self.saved_fuel.is_some()
    }

    /// The last `panic: …` line the guest logged at error level in this call.
    pub(crate) fn last_panic(&self) -> Option<&str> {
        self.last_panic.as_deref()
    }

    fn wasi_state(&mut self) -> &mut WasiState {
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

/// The `compress` import: zstd at `level` (1..=19), refusing input over
/// `cfg.compress_input_bytes_max`.
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
