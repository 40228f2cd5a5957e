//! Limits and settings of the wasm host. Every bound has a unit in its name and a default.

use std::path::PathBuf;

/// Settings of one node's wasm host: shared by every machine instance it runs.
///
/// The fuel and output limits shape *replicated results* (a command that runs out of fuel fails
/// the same way everywhere only if every replica uses the same budget), so they must be identical
/// across a cluster; the others are node-local.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where precompiled components are cached (`<sha256>-<engine hash>.cwasm`). `None`: compile
    /// on every load. Default: `None`.
    pub cache_dir: Option<PathBuf>,
    /// Largest component accepted by `load`, in bytes. Default 64 MiB.
    pub module_bytes_max: usize,
    /// Largest linear memory a guest may grow to, in bytes (wasm32 caps it at 4 GiB).
    /// Default 1 GiB.
    pub guest_memory_bytes_max: usize,
    /// Largest table a guest may grow to, in elements. Default 100 000.
    pub guest_table_elements_max: usize,
    /// Largest wasm call stack, in bytes. Default 512 KiB.
    pub wasm_stack_bytes_max: usize,
    /// Fuel (≈ wasm instructions) for one entry's command, refilled at every entry of a batch.
    /// Replicated: must be equal on every node. Default 100 000 000.
    pub fuel_per_entry: u64,
    /// Fuel for the work of one call outside its entries (argument decoding, result encoding),
    /// and for each query. Replicated. Default 1 000 000 000.
    pub fuel_per_call: u64,
    /// Fuel for each snapshot or restore step (one chunk, or `finish`). Snapshots are node-local,
    /// so this is only a guard; the watchdog is the real bound. Default 100 000 000 000.
    pub fuel_per_snapshot_step: u64,
    /// Largest output of one entry or query, in bytes; a larger output becomes the
    /// deterministic application error [`crate::CODE_OUTPUT_TOO_LARGE`]. Replicated.
    /// Default 16 MiB.
    pub output_bytes_max: usize,
    /// Wall-clock watchdog per call, in milliseconds: a node-local safety net behind fuel; its
    /// trap is never a replicated result. Default 10 000.
    pub watchdog_ms: u64,
    /// Resolution of the watchdog, in milliseconds. Default 10.
    pub epoch_tick_ms: u64,
    /// Largest snapshot chunk the host asks a guest for, in bytes. Default 1 MiB.
    pub snapshot_chunk_bytes: u32,
    /// Calls that may wait for one machine's thread before callers are made to wait.
    /// Default 64.
    pub call_queue_len: usize,
    /// Guest log lines forwarded to `tracing` per second per instance; the rest are counted
    /// and reported as dropped. Default 100.
    pub log_lines_per_sec: u32,
    /// Longest guest log line kept, in bytes; longer ones are truncated. Default 4 KiB.
    pub log_line_bytes_max: usize,
    /// Largest input of the host `compress` import, in bytes. Default 16 MiB.
    pub compress_input_bytes_max: usize,
    /// Largest output of the host `decompress` import, in bytes. Default 16 MiB.
    pub decompress_output_bytes_max: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            module_bytes_max: 64 << 20,
            guest_memory_bytes_max: 1 << 30,
            guest_table_elements_max: 100_000,
            wasm_stack_bytes_max: 512 << 10,
            fuel_per_entry: 100_000_000,
            fuel_per_call: 1_000_000_000,
            fuel_per_snapshot_step: 100_000_000_000,
            output_bytes_max: 16 << 20,
            watchdog_ms: 10_000,
            epoch_tick_ms: 10,
            snapshot_chunk_bytes: 1 << 20,
            call_queue_len: 64,
            log_lines_per_sec: 100,
            log_line_bytes_max: 4 << 10,
            compress_input_bytes_max: 16 << 20,
            decompress_output_bytes_max: 16 << 20,
        }
    }
}
