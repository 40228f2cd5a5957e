//! Typed errors for every storage operation.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// The operator procedure printed with every unrecoverable-corruption error.
///
/// Kept in one place so the log message, the docs and `NOTES.md` agree.
pub const OPERATOR_RECOVERY: &str = "operator action: stop this node, move its data directory aside \
(keep it for analysis), start the node with an empty data directory and add it back to the cluster \
as a new member; it will catch up from the leader's snapshot and log. Do not delete files by hand to \
\"fix\" the log: a skipped record can lose committed entries. See runtime/storage/NOTES.md, \
\"Operator recovery\".";

/// Everything that can go wrong in `wraft-storage`.
///
/// Errors carry the file and offset involved and, for checksum failures, the expected and found
/// values, so that an operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system I/O call failed.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What the storage layer was doing (`"fdatasync"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    /// Durable data failed validation in a place where it cannot be a torn write.
    ///
    /// Never silently skipped: skipping could lose committed entries. See [`OPERATOR_RECOVERY`].
    #[error(
        "corrupt data in {} at byte offset {offset}: {detail} (expected {expected}, found {found}); {}",
        file.display(),
        OPERATOR_RECOVERY
    )]
    Corrupt {
        /// File in which corruption was found.
        file: PathBuf,
        /// Byte offset of the damaged record or header within `file`.
        offset: u64,
        /// What failed (`"record body checksum"`, `"entry index out of sequence"`, ...).
        detail: String,
        /// The value the format required.
        expected: String,
        /// The value on disk.
        found: String,
    },

    /// A file was written by a newer (or unknown) format version.
    #[error("{} has format version {found}, this build reads version {expected}", file.display())]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// Version this build supports.
        expected: u32,
        /// Version found on disk.
        found: u32,
    },

    /// The write queue is at `queue_ops_max` / `queue_bytes_max`. Nothing was queued.
    ///
    /// Wait for the next [`crate::WriterEvent::Durable`] (which frees space) and retry.
    #[error(
        "write queue full: {queued_ops} ops / {queued_bytes} bytes queued \
         (queue_ops_max={queue_ops_max}, queue_bytes_max={queue_bytes_max}); retry after the next durability notification"
    )]
    QueueFull {
        /// Ops in the queue.
        queued_ops: usize,
        /// Bytes in the queue.
        queued_bytes: u64,
        /// Configured op bound.
        queue_ops_max: usize,
        /// Configured byte bound.
        queue_bytes_max: u64,
    },

    /// A configured limit was exceeded by a single request.
    #[error("{what} is {found} bytes, above the limit {limit_name}={limit}")]
    LimitExceeded {
        /// What was too large.
        what: &'static str,
        /// Name of the configuration knob.
        limit_name: &'static str,
        /// Configured limit.
        limit: u64,
        /// Size of the request.
        found: u64,
    },

    /// The request contradicts the current log (non-contiguous indexes, term going backwards, ...).
    #[error("invalid storage request: {0}")]
    Invalid(String),

    /// The entry was compacted into a snapshot and is no longer in the log.
    #[error("log index {index} is compacted; the first index still in the log is {first_index}")]
    Compacted {
        /// Requested index.
        index: u64,
        /// First index still available.
        first_index: u64,
    },

    /// The entry is past the end of the log.
    #[error("log index {index} is past the last index {last_index}")]
    Unavailable {
        /// Requested index.
        index: u64,
        /// Last index in the log.
        last_index: u64,
    },

    /// The writer hit an I/O error earlier. After a failed `fdatasync` the page cache can no longer
    /// be trusted (the kernel may have dropped the dirty pages), so the log refuses all further
    /// writes; restart the process to recover from what is on disk.
    #[error("storage writer failed and refuses further writes (restart to recover from disk): {0}")]
    Poisoned(Arc<StorageError>),

    /// The log was closed.
    #[error("storage is closed")]
    Closed,

    /// The newest valid snapshot does not reach the log's compaction floor, so entries are missing.
    #[error(
        "log is compacted through index {floor_index} but the newest valid snapshot ends at index \
         {snapshot_index}; entries {} to {floor_index} exist nowhere on this node. {}",
        snapshot_index + 1,
        OPERATOR_RECOVERY
    )]
    SnapshotBehindLogFloor {
        /// Log floor (last compacted index).
        floor_index: u64,
        /// Last index covered by the newest valid snapshot (0 if none).
        snapshot_index: u64,
    },

    /// No snapshot with this id exists in the store.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(crate::SnapshotId),

    /// A snapshot failed verification (header or digest).
    #[error("snapshot {} is invalid: {detail} (expected {expected}, found {found})", file.display())]
    SnapshotInvalid {
        /// The snapshot file.
        file: PathBuf,
        /// What failed.
        detail: String,
        /// Required value.
        expected: String,
        /// Value found.
        found: String,
    },

    /// An incoming snapshot write skipped over bytes not yet received.
    #[error(
        "incoming snapshot write at offset {found} leaves a gap: bytes are only present up to {expected_at_most}"
    )]
    OffsetGap {
        /// Highest offset a write may start at.
        expected_at_most: u64,
        /// Offset requested.
        found: u64,
    },

    /// Another process (or another `Storage` in this one) holds the data directory's lock.
    #[error(
        "data directory {} is in use: another process holds its lock file {} \
         (a second wraft node or `wraft recover` on the same directory); stop it first",
        dir.display(),
        dir.join(crate::LOCK_FILE).display()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },

    /// [`crate::ModuleStore::put`] was handed bytes that do not hash to the name they were
    /// given. Nothing was written.
    #[error(
        "refusing to store module {expected}: the {len} bytes given have SHA-256 {found}, so they \
         were damaged in transit or belong to another module; nothing was written, fetch the \
         module again"
    )]
    ModuleHashMismatch {
        /// The SHA-256 the module was to be stored under (lowercase hex).
        expected: String,
        /// The SHA-256 of the bytes given (lowercase hex).
        found: String,
        /// Length of the bytes given.
        len: u64,
    },

    /// A module file failed verification (magic, version, hash field, length or body SHA-256).
    ///
    /// [`crate::ModuleStore::get`] logs this error in a warning, removes the file and reports the
    /// module absent, so the caller fetches it again; it does not return it.
    #[error(
        "module file {} is invalid: {detail} (expected {expected}, found {found})",
        file.display()
    )]
    ModuleInvalid {
        /// The module file.
        file: PathBuf,
        /// What failed (`"magic"`, `"body SHA-256"`, ...).
        detail: &'static str,
        /// The value the format required.
        expected: String,
        /// The value on disk.
        found: String,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { op, path, source }
}
