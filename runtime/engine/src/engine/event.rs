//! What the host hands the engine: the recovered state at startup and the
//! events it steps.

use serde::{Deserialize, Serialize};

use crate::types::*;

/// What the host recovered from storage at startup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialState {
    /// Last durable hard state (default for a fresh node).
    pub hard_state: HardState,
    /// Latest durable snapshot. A fresh cluster member uses index 0, term 0 and
    /// the initial voters; a node that will join later uses an empty membership.
    pub snapshot: SnapshotMeta,
    /// Durable log entries in index order. Entries at or below
    /// `snapshot.index` (kept by the retention margin) are accepted and dropped.
    pub entries: Vec<Entry>,
}

/// Input to [`Engine::step`](super::Engine::step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// One unit of time passed on this node's clock.
    Tick,
    /// A message from a peer arrived.
    Message(Message),
    /// Propose an entry. Answered by exactly one
    /// [`Action::ProposalResult`](super::Action::ProposalResult) (immediately when refused,
    /// otherwise once the index is decided).
    Propose {
        /// Echoed in the result.
        id: ProposalId,
        /// Payload (commands carry the leader host's timestamp).
        kind: EntryKind,
    },
    /// Linearizable read request. Answered by [`Action::ReadReady`](super::Action::ReadReady) or
    /// [`Action::ReadFailed`](super::Action::ReadFailed).
    Read {
        /// Echoed in the answer.
        id: ReadId,
    },
    /// The [`PersistBatch`](super::PersistBatch) with this `seq` and all earlier ones are durable.
    Persisted {
        /// Sequence number from [`PersistBatch::seq`](super::PersistBatch::seq).
        seq: u64,
    },
    /// Ask the leader to hand leadership to `to` (a voter).
    TransferLeadership {
        /// Target voter.
        to: NodeId,
    },
    /// The host made a durable snapshot (after an
    /// [`Action::SnapshotHint`](super::Action::SnapshotHint), or on its own). `meta` should come
    /// from [`Engine::snapshot_meta_at`](super::Engine::snapshot_meta_at).
    SnapshotCreated {
        /// What the snapshot covers.
        meta: SnapshotMeta,
    },
    /// The host's snapshot attempt failed; a new hint comes at the next band crossing.
    SnapshotFailed,
    /// Leader side: the follower `from` reported `durable_offset` bytes of the
    /// snapshot at `index` durable.
    SnapshotProgress {
        /// Follower.
        from: NodeId,
        /// Snapshot being streamed.
        index: LogIndex,
        /// Bytes the follower holds durably; a resend resumes here.
        durable_offset: u64,
    },
    /// Leader side: streaming to `to` broke; the engine re-requests it.
    SnapshotTransferFailed {
        /// Follower.
        to: NodeId,
        /// Snapshot that was being streamed.
        index: LogIndex,
    },
    /// Follower side: a complete snapshot from leader `from` (sent in `term`) is durably staged.
    /// The engine answers with [`Action::InstallSnapshot`](super::Action::InstallSnapshot) or
    /// ignores it.
    SnapshotReceived {
        /// Sending leader.
        from: NodeId,
        /// Leader's term when streaming started.
        term: Term,
        /// The snapshot.
        meta: SnapshotMeta,
    },
    /// Follower side: the host swapped its machines to the snapshot and keeps
    /// it as its latest durable snapshot.
    SnapshotInstalled {
        /// Must equal the meta of the pending
        /// [`Action::InstallSnapshot`](super::Action::InstallSnapshot).
        meta: SnapshotMeta,
    },
    /// Follower side: installing failed; the leader will resend later.
    SnapshotInstallFailed {
        /// The meta of the failed install.
        meta: SnapshotMeta,
    },
}
