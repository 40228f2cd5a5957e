//! Node snapshots, the part that needs the wasm host: taking a snapshot of the running
//! machines ([`create`]) and turning one back into instances ([`restore`]: restoring every
//! machine, rebuilding one at an index by replaying the log). The file format and the
//! transfer between nodes are `wraft-snapshot`'s, which knows nothing of wasmtime.
//!
//! A node snapshot is one `wraft_storage` snapshot file holding, at exactly one log index,
//! every machine's guest snapshot, the machine registry with the module bytes, the
//! client-session table, the replicated address book and the membership. Creation,
//! compaction, recovery and installation are driven by the applier (`apply.rs`) and the
//! driver (`lib.rs`). Notes, invariants and figures: `runtime/snapshot/SNAPSHOT_NOTES.md`.

mod create;
mod members;
mod restore;

use wraft_engine::SnapshotMeta;
use wraft_storage::SnapshotInfo;

pub(crate) use create::{ABANDONED, Cut, Source, export_snapshot, finish_snapshot};
pub(crate) use members::Members;
pub(crate) use restore::{
    BuildError, MachineCut, Restored, VersionCut, build_instance, migrate, open_base, restore_all,
};

/// What the snapshot machinery reports to the driver.
#[derive(Debug)]
pub enum SnapEvent {
    /// A local snapshot is durable.
    Created {
        /// Engine metadata of the snapshot.
        meta: SnapshotMeta,
        /// The file.
        info: SnapshotInfo,
        /// Where the machines' state came from.
        from: wraft_config::SnapshotExport,
    },
    /// A local snapshot attempt failed (logged); the engine re-hints later.
    Failed {
        /// The index that was attempted.
        index: u64,
        /// Why.
        error: String,
        /// Where the machines' state was to come from.
        from: wraft_config::SnapshotExport,
        /// The applier refused before exporting anything (it is halted, or not at the cut):
        /// another source would be refused too.
        refused: bool,
    },
    /// Follower: the machines now run from the snapshot.
    Installed {
        /// The installed snapshot.
        meta: SnapshotMeta,
    },
    /// Follower: the install failed; the old machines keep running.
    InstallFailed {
        /// The snapshot that could not be installed.
        meta: SnapshotMeta,
    },
    /// A node-local failure halted the applier (it re-derives its state by itself).
    ApplyHalted {
        /// What failed, for status.
        reason: String,
    },
    /// The applier applies again after a halt.
    ApplyResumed,
    /// This node's outcome digest after applied entry `index` (a leader proposes it as a
    /// divergence checkpoint).
    Checkpoint {
        /// The applied index.
        index: u64,
        /// The digest after it.
        digest: [u8; 32],
    },
    /// Follower: a snapshot file was received and published.
    Received {
        /// Leader that sent it.
        from: u64,
        /// Leader's term.
        term: u64,
        /// What it covers.
        meta: SnapshotMeta,
    },
    /// Leader: the follower holds `durable_offset` bytes of snapshot `index`.
    Progress {
        /// Follower.
        from: u64,
        /// Snapshot index.
        index: u64,
        /// Bytes durably held by the follower.
        durable_offset: u64,
    },
    /// Leader: a transfer ended (finished or failed).
    TransferDone {
        /// Follower.
        to: u64,
        /// Snapshot index.
        index: u64,
        /// `Ok` if the follower holds the whole file.
        ok: bool,
    },
}
