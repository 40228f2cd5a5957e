//! Storage configuration: every bound has a unit in its name and a default.

use crate::error::{Result, StorageError};

/// Whether writes are made durable before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` before acknowledging (one per group-commit batch). The default; required for
    /// Raft's safety.
    #[default]
    Durable,
    /// Never sync. Acknowledged data survives a process crash (it is in the page cache) but NOT a
    /// power loss or kernel crash: a node may then forget votes and committed entries. Opening a
    /// store in this mode logs a warning saying so. For benchmarks only.
    Relaxed,
}

/// Tunables for [`crate::Storage`]. `StorageConfig::default()` is the production setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Sync policy (default [`FsyncPolicy::Durable`]).
    pub fsync: FsyncPolicy,
    /// A segment is sealed and a new one started once it reaches this size (default 64 MiB).
    /// A segment can exceed it by one write batch (at most `queue_bytes_max`), and its file by
    /// the preallocated space too until the segment is sealed.
    pub segment_bytes: u64,
    /// Zero-filled space written ahead of the log's end, in chunks of this size (default 1 MiB;
    /// 0 turns it off). Records are then written over blocks the file system has already
    /// allocated, so a batch's `fdatasync` flushes the data alone; an append that grows the file
    /// also commits the file system's journal (ext4 on the reference VM, three syncers:
    /// 0.29 → 0.20 ms). One journal commit per chunk remains. At most `segment_bytes`.
    pub preallocate_bytes: u64,
    /// Recent entries kept in memory for replication reads (default 64 MiB). Entries not yet
    /// written are always kept, so the cache can exceed this by what is queued.
    pub tail_cache_bytes: u64,
    /// Maximum submissions waiting for the writer (default 65 536).
    pub queue_ops_max: usize,
    /// Maximum encoded bytes waiting for the writer (default 64 MiB). Also the largest batch.
    pub queue_bytes_max: u64,
    /// Largest entry payload accepted (default 16 MiB).
    pub entry_bytes_max: u64,
    /// Complete snapshots kept (default 2); older ones are deleted unless pinned.
    pub snapshot_retain_count: usize,
    /// An incoming snapshot is synced, and its durable offset advanced, every this many bytes
    /// (default 8 MiB, the transfer's own acknowledgement interval: a smaller one would cost
    /// extra `fdatasync`s, two each, that no acknowledgement reports).
    pub snapshot_sync_every_bytes: u64,
    /// Largest snapshot file accepted from a peer (default 64 GiB).
    pub snapshot_file_bytes_max: u64,
    /// Largest encoded snapshot metadata (membership + format) (default 64 KiB).
    pub snapshot_meta_bytes_max: u32,
    /// Read size used when verifying or streaming snapshot files (default 1 MiB).
    pub snapshot_io_chunk_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Durable,
            segment_bytes: 64 << 20,
            preallocate_bytes: 1 << 20,
            tail_cache_bytes: 64 << 20,
            queue_ops_max: 65_536,
            queue_bytes_max: 64 << 20,
            entry_bytes_max: 16 << 20,
            snapshot_retain_count: 2,
            snapshot_sync_every_bytes: 8 << 20,
            snapshot_file_bytes_max: 64 << 30,
            snapshot_meta_bytes_max: 64 << 10,
            snapshot_io_chunk_bytes: 1 << 20,
        }
    }
}

impl StorageConfig {
    /// Reject settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(StorageError::Invalid(format!("configuration: {what}")));
        if self.segment_bytes < 128 {
            return bad("segment_bytes must be at least 128");
        }
        if self.preallocate_bytes == 1 || self.preallocate_bytes > self.segment_bytes {
            return bad("preallocate_bytes must be 0 (off) or 2..=segment_bytes");
        }
        if self.queue_ops_max == 0 {
            return bad("queue_ops_max must be at least 1");
        }
        if self.entry_bytes_max > u64::from(u32::MAX) - 1024 {
            return bad("entry_bytes_max must fit a 32-bit record length");
        }
        if self.queue_bytes_max < self.entry_bytes_max + 1024 {
            return bad("queue_bytes_max must exceed entry_bytes_max so that one entry fits");
        }
        if self.snapshot_retain_count == 0 {
            return bad("snapshot_retain_count must be at least 1");
        }
        if self.snapshot_io_chunk_bytes == 0 || self.snapshot_sync_every_bytes == 0 {
            return bad("snapshot_io_chunk_bytes and snapshot_sync_every_bytes must be positive");
        }
        Ok(())
    }
}
