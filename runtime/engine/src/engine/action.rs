//! What the engine hands the host from [`Engine::poll_actions`](super::Engine::poll_actions).

use serde::{Deserialize, Serialize};

use super::{ProposalError, ReadError, Role};
use crate::types::*;

/// Everything the host must make durable, in this order: drop log entries at
/// or below `reset_to_snapshot.index` (the snapshot itself is already durable),
/// drop entries `>= truncate_from`, append `entries`, write `hard_state`.
/// Then report [`Event::Persisted`](super::Event::Persisted) with `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistBatch {
    /// Monotone sequence number (starts at 1 per engine instance).
    pub seq: u64,
    /// New hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Set after a snapshot install: the log now starts above this snapshot.
    pub reset_to_snapshot: Option<SnapshotMeta>,
    /// Drop entries with index `>=` this before appending. Always above
    /// `reset_to_snapshot.index` and the compaction floor, and at most one
    /// past the last entry the host holds (a store may refuse to truncate
    /// outside its log), however many events were stepped since the
    /// previous poll.
    pub truncate_from: Option<LogIndex>,
    /// Entries to append (contiguous).
    pub entries: Vec<Entry>,
}

/// Why the engine asks for a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnapshotReason {
    /// `snapshot_hint_threshold_entries` applied entries past the latest snapshot.
    AppliedThreshold,
    /// More than `log_entries_max` entries above the latest snapshot.
    LogGuardrail,
}

/// Output of [`Engine::poll_actions`](super::Engine::poll_actions). The host executes actions in
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message now. Messages that reveal state (a vote, an acknowledgement, a term) are held
    /// *inside the engine* until the [`Action::Persist`] they depend on is reported durable with
    /// [`Event::Persisted`](super::Event::Persisted), and are dropped if the term moved on
    /// meanwhile; so the host never delays a `Send`. Leader appends go out before the leader's own
    /// persist (Raft thesis §10.2.1).
    Send {
        /// The message.
        msg: Message,
    },
    /// Make this batch durable (group commit is fine), then report
    /// [`Event::Persisted`](super::Event::Persisted).
    Persist(PersistBatch),
    /// Committed entries to apply to the machines, in order, off the consensus path.
    /// Does not wait for any persist (committed entries are durable on a quorum).
    Apply {
        /// Contiguous committed entries.
        entries: Vec<Entry>,
    },
    /// Outcome of a [`Event::Propose`](super::Event::Propose). `Ok(index)` is emitted just before
    /// the [`Action::Apply`] containing that index; the machine output for it is the answer.
    ProposalResult {
        /// The proposal.
        id: ProposalId,
        /// Committed index or why not.
        result: Result<LogIndex, ProposalError>,
    },
    /// Serve read `id` once the machines have applied `index`.
    ReadReady {
        /// The read.
        id: ReadId,
        /// Apply at least up to here, then read.
        index: LogIndex,
    },
    /// The read cannot be served by this node.
    ReadFailed {
        /// The read.
        id: ReadId,
        /// Why.
        error: ReadError,
    },
    /// Leader side: stream the snapshot described by `meta` to `to`, starting at byte `offset`.
    SendSnapshot {
        /// Follower.
        to: NodeId,
        /// Which snapshot (the host's latest durable one).
        meta: SnapshotMeta,
        /// Resume offset, bytes.
        offset: u64,
    },
    /// Follower side: swap the machines to the staged snapshot, keep it as the latest durable
    /// snapshot, then report [`Event::SnapshotInstalled`](super::Event::SnapshotInstalled).
    InstallSnapshot {
        /// The staged snapshot.
        meta: SnapshotMeta,
    },
    /// Consider taking a snapshot of the machines (at their applied index); answer with
    /// [`Event::SnapshotCreated`](super::Event::SnapshotCreated) or
    /// [`Event::SnapshotFailed`](super::Event::SnapshotFailed).
    SnapshotHint {
        /// Why.
        reason: SnapshotReason,
        /// Engine's applied (handed-out) index when hinting.
        applied_index: LogIndex,
    },
    /// Log entries `<= up_to` may be deleted from storage (executed in order
    /// after earlier persists).
    CompactLog {
        /// Inclusive upper bound.
        up_to: LogIndex,
    },
    /// Role, term or known leader changed.
    RoleChanged {
        /// New role.
        role: Role,
        /// Current term.
        term: Term,
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// The effective membership changed (on append, truncation or snapshot install).
    MembershipChanged {
        /// New membership.
        membership: Membership,
    },
}
