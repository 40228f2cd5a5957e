//! The opt-in deterministic WASI profile, for guests whose toolchain links a WASI libc
//! (componentize-py's CPython, for one).
//!
//! A machine deployed with [`WasiProfile::Deterministic`] may import the WASI 0.2 interfaces
//! listed in [`DETERMINISTIC_WASI_IMPORTS`]. They are `wasmtime-wasi`'s implementations with
//! every source of non-determinism replaced:
//!
//! | interface | what the guest sees |
//! |---|---|
//! | `wasi:clocks/wall-clock` | the current log entry's timestamp (leader-assigned, never going backwards) |
//! | `wasi:clocks/monotonic-clock` | the same instant, in ns |
//! | `wasi:random/*` | SplitMix64 seeded from the current entry's log index (and a per-interface stream id) |
//! | `wasi:cli/environment` | no arguments, no variables, no cwd |
//! | `wasi:cli/stdin`, `stdout`, `stderr` | stdin is empty; output goes line by line into the node's `tracing` log (target `wraft::guest`, capped and rate-limited) |
//! | `wasi:filesystem/*` | no preopened directories: nothing can be opened |
//! | `wasi:sockets/*` | every socket and name lookup is refused |
//!
//! "Current entry": during `apply`, the entry being applied (the host applies a WASI machine's
//! batch one entry per call, so this never depends on how the log was batched); during
//! `query`, snapshot and restore, the last entry this instance applied (none after a fresh start
//! or a restore: timestamp 0, index 0). Randomness restarts from its seed at every call, so a
//! query is a pure function of the state and the request.
//!
//! The random numbers are *not* secret: every replica computes the same ones, by design.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

pub use wraft_proto::{DETERMINISTIC_WASI_IMPORTS, WasiProfile};

/// Largest `get-random-bytes` request, bytes. A guest asking for more traps (deterministically).
pub const WASI_RANDOM_BYTES_MAX: u64 = 1 << 20;

/// The fixed answer of `wasi:random/insecure-seed` (it must not vary between replicas).
const INSECURE_SEED: u128 = 0x7772_6166_742d_7761_7369_2d73_6565_6401;

/// The log entry a WASI guest is working on: what its clocks and random numbers derive from.
/// Shared by the instance (which sets it before each call) and the store's clock/RNG objects.
#[derive(Debug, Default)]
pub(crate) struct EntryEnv {
    timestamp_ms: AtomicU64,
    index: AtomicU64,
    /// Bumped by every `set`; an RNG whose generation is stale restarts from the new seed.
    generation: AtomicU64,
}

impl EntryEnv {
    /// Point the clocks at `timestamp_ms` and reseed randomness from `index`.
    pub(crate) fn set(&self, index: u64, timestamp_ms: u64) {
        self.index.store(index, Ordering::Relaxed);
        self.timestamp_ms.store(timestamp_ms, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

struct EntryWallClock(Arc<EntryEnv>);

impl HostWallClock for EntryWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.timestamp_ms.load(Ordering::Relaxed))
    }
}

struct EntryMonotonicClock(Arc<EntryEnv>);

impl HostMonotonicClock for EntryMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0
            .timestamp_ms
            .load(Ordering::Relaxed)
            .saturating_mul(1_000_000)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014), a fixed, fully specified generator: the stream must be
/// bit-identical on every replica and across wraft versions, which a library RNG whose algorithm
/// may change between releases (`StdRng`) does not promise.
struct EntryRng {
    env: Arc<EntryEnv>,
    stream: u64,
    generation: u64,
    state: u64,
}

impl EntryRng {
    fn new(env: Arc<EntryEnv>, stream: u64) -> Self {
        EntryRng {
            env,
            stream,
            generation: u64::MAX,
            state: 0,
        }
    }

    fn next(&mut self) -> u64 {
        let generation = self.env.generation.load(Ordering::Relaxed);
        if generation != self.generation {
            self.generation = generation;
            let index = self.env.index.load(Ordering::Relaxed);
            self.state = index ^ self.stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        }
        splitmix64(&mut self.state)
    }
}

/// One SplitMix64 step: advance `state` and return the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl rand_core::TryRng for EntryRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.next() >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// Longest stdout/stderr line logged, bytes (the rest of the line is cut).
const OUTPUT_LINE_BYTES_MAX: usize = 4096;
/// Most stdout/stderr lines logged per second per stream; the excess is counted and dropped.
const OUTPUT_LINES_PER_SEC: u32 = 100;

/// A guest's stdout or stderr: complete lines go to `tracing` (target `wraft::guest`).
/// Node-local output only; it never affects replicated state.
#[derive(Clone)]
struct GuestOutput {
    machine: Arc<str>,
    stream: &'static str,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger {
            out: self.clone(),
            line: Vec::new(),
            window_start: Instant::now(),
            lines_in_window: 0,
            dropped: 0,
        })
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this; none are linked.
        Box::new(tokio::io::sink())
    }
}

struct LineLogger {
    out: GuestOutput,
    line: Vec<u8>,
    window_start: Instant,
    lines_in_window: u32,
    dropped: u64,
}

impl LineLogger {
    fn emit(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.lines_in_window = 0;
        }
        if self.lines_in_window >= OUTPUT_LINES_PER_SEC {
            self.dropped += 1;
        } else {
            self.lines_in_window += 1;
            let dropped = std::mem::take(&mut self.dropped);
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(target: "wraft::guest", machine = &*self.out.machine,
                stream = self.out.stream, dropped, "{}", text.trim_end());
        }
        self.line.clear();
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineLogger {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        for part in bytes.split_inclusive(|b| *b == b'\n') {
            let room = OUTPUT_LINE_BYTES_MAX.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if part.ends_with(b"\n") {
                self.emit();
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

/// A store's WASI state: the context (deterministic clocks and RNGs, nothing else) and the
/// resource table WASI handles live in.
pub(crate) struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiState {
    /// The deterministic context reading `env`. Cost: a few small allocations (per instance).
    pub(crate) fn deterministic(env: Arc<EntryEnv>, machine: &str) -> Self {
        let machine: Arc<str> = machine.into();
        let ctx = WasiCtx::builder()
            .stdout(GuestOutput {
                machine: machine.clone(),
                stream: "stdout",
            })
            .stderr(GuestOutput {
                machine,
                stream: "stderr",
            })
            .wall_clock(EntryWallClock(env.clone()))
            .monotonic_clock(EntryMonotonicClock(env.clone()))
            .secure_random(EntryRng::new(env.clone(), 1))
            .insecure_random(EntryRng::new(env, 2))
            .insecure_random_seed(INSECURE_SEED)
            .max_random_size(WASI_RANDOM_BYTES_MAX)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        WasiState {
            ctx,
            table: ResourceTable::new(),
        }
    }

    /// What a store's [`WasiView`] hands to `wasmtime-wasi`: the context and the table.
    pub(crate) fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Add the deterministic profile's WASI interfaces to `linker` (synchronous bindings). `T` is the
/// store's data (for the host, `StoreState`, whose [`WasiView`] hands out its [`WasiState`]).
pub(crate) fn add_deterministic_wasi<T: WasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::TryRng;

    #[test]
    fn entry_rng_is_a_function_of_the_index_and_restarts_per_entry() {
        let env = Arc::new(EntryEnv::default());
        let mut a = EntryRng::new(env.clone(), 1);
        env.set(42, 1000);
        let first: Vec<u64> = (0..4).map(|_| a.try_next_u64().unwrap_or(0)).collect();
        env.set(43, 1001);
        let other = a.try_next_u64().unwrap_or(0);
        env.set(42, 1000);
        let again: Vec<u64> = (0..4).map(|_| a.try_next_u64().unwrap_or(0)).collect();
        assert_eq!(first, again, "the same entry must draw the same numbers");
        assert_ne!(
            first[0], other,
            "a different index must draw different numbers"
        );
        let mut b = EntryRng::new(env.clone(), 2);
        env.set(42, 1000);
        assert_ne!(
            b.try_next_u64().unwrap_or(0),
            first[0],
            "streams are independent"
        );
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Vigna's splitmix64.c seeded with 1234567. Pins the algorithm: a change here would
        // silently fork every deployed WASI machine.
        let mut state = 1_234_567u64;
        let got: Vec<u64> = (0..3).map(|_| splitmix64(&mut state)).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn profile_names_round_trip_and_only_wasi_0_2_is_provided() {
        for p in WasiProfile::ALL {
            assert_eq!(p.name().parse::<WasiProfile>(), Ok(p));
        }
        assert!("wasi".parse::<WasiProfile>().is_err());
        let d = WasiProfile::Deterministic;
        assert!(d.provides_wasi("wasi:io/poll@0.2.0"));
        assert!(d.provides_wasi("wasi:random/random@0.2.12"));
        assert!(!d.provides_wasi("wasi:io/poll@0.3.0"));
        assert!(!d.provides_wasi("wasi:http/outgoing-handler@0.2.0"));
        assert!(!d.provides_wasi("wasi:io/poll"));
        assert!(!WasiProfile::None.provides_wasi("wasi:io/poll@0.2.0"));
    }
}
