//! Bounds shared by the applier and the snapshot code. They live here, not in either user,
//! so that `apply/` (which drives snapshots) and `snapshot/` (whose rebuilds replay entries
//! exactly as the applier applied them) both import them without importing each other.

/// Most entries sent to a guest in one `apply-batch` call, by the applier and by a replay.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;
