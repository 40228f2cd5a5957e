//! Plain data types shared by the engine, the host and the wire/disk encodings.
//!
//! Everything here is `serde`-serializable; the host encodes it with postcard.
//! None of these types does any I/O.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identity of a node in the cluster. `0` is never a valid node id.
pub type NodeId = u64;
/// A Raft term (election epoch). Starts at 0 and only grows.
pub type Term = u64;
/// Position of an entry in the replicated log. The first real entry is 1;
/// index 0 is the empty prefix.
pub type LogIndex = u64;

/// Host-chosen handle for a proposal, echoed back in [`crate::Action::ProposalResult`].
pub type ProposalId = u64;
/// Host-chosen handle for a linearizable read, echoed back in
/// [`crate::Action::ReadReady`] / [`crate::Action::ReadFailed`].
pub type ReadId = u64;

/// Identifies one client request for at-most-once application (Raft dissertation §6.3).
///
/// A client numbers its requests `1, 2, 3, …` and keeps at most one request
/// outstanding; a retry reuses the same `seq`. See [`crate::SessionTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientTag {
    /// Random, unique per client session.
    pub client_id: u64,
    /// Request number within the session, starting at 1.
    pub seq: u64,
}

/// A single-server membership change (Raft dissertation §4.1). At most one is
/// uncommitted at a time; a change takes effect on each node as soon as it is
/// appended to that node's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChange {
    /// Add a non-voting learner that receives the full log.
    AddLearner(NodeId),
    /// Turn a caught-up learner into a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or learner (may be the leader itself).
    RemoveNode(NodeId),
    /// Make this node the only voter, dropping every other member: written offline by
    /// `wraft recover --force-new-cluster` on a surviving node after a quorum was lost for good
    /// (never proposed: a leader has a quorum and changes members one at a time). Its entry
    /// carries the next term, so it takes effect like any configuration on append and the node
    /// commits its whole log alone.
    ForceNewCluster(NodeId),
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// Appended by every new leader (§5.4.2 / §8); has no effect on machines.
    Noop,
    /// A client command for the state machines.
    Command {
        /// Deduplication tag; `None` for commands that need no at-most-once guarantee.
        client: Option<ClientTag>,
        /// Wall-clock time assigned by the leader's host when proposing. Machines
        /// must use this (never a local clock) so that replay is deterministic.
        timestamp_ms: u64,
        /// Opaque command bytes for the guest.
        data: Bytes,
    },
    /// A membership change together with the configuration it produces.
    ConfChange(ConfChangeEntry),
}

/// A membership change as stored in the log.
///
/// The entry carries the full resulting configuration, so a node that joins
/// later (and never saw the bootstrap configuration) can follow the log. The
/// leader fills `membership` when the change is proposed; whatever the
/// proposer put there is overwritten.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfChangeEntry {
    /// The requested change.
    pub change: ConfChange,
    /// Configuration after the change (set by the leader).
    pub membership: Membership,
}

impl ConfChangeEntry {
    /// A change to propose (`membership` is filled in by the leader).
    pub fn new(change: ConfChange) -> Self {
        ConfChangeEntry {
            change,
            membership: Membership::default(),
        }
    }
}

impl EntryKind {
    /// Approximate encoded size in bytes, used for the per-message byte cap.
    pub fn approx_bytes(&self) -> usize {
        match self {
            EntryKind::Noop => 16,
            EntryKind::ConfChange(c) => {
                24 + 8 * (c.membership.voters.len() + c.membership.learners.len())
            }
            EntryKind::Command { data, .. } => 32 + data.len(),
        }
    }
}

/// One replicated log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log (≥ 1).
    pub index: LogIndex,
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Payload.
    pub kind: EntryKind,
}

/// State that must be durable before the node reveals it (Raft Figure 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// Highest index known committed. Advisory: it lets a restarted node apply
    /// sooner; losing it is safe.
    pub commit: LogIndex,
}

/// Cluster configuration. Voters elect and commit; learners only replicate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Nodes that vote and count toward quorums.
    pub voters: BTreeSet<NodeId>,
    /// Nodes that receive the log but do not vote.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration with the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// True if `id` is a voter or learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Size of a majority of voters (0 voters → 1, so nothing ever commits).
    pub fn quorum(&self) -> usize {
        crate::engine::quorum::majority(self.voters.len())
    }

    /// All members (voters then learners), sorted within each group.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The configuration after applying `cc`, or why `cc` is not applicable.
    pub fn apply(&self, cc: ConfChange) -> Result<Membership, ConfChangeError> {
        let mut next = self.clone();
        match cc {
            ConfChange::AddLearner(id) => {
                if id == 0 {
                    return Err(ConfChangeError::InvalidNodeId);
                }
                if self.contains(id) {
                    return Err(ConfChangeError::AlreadyMember(id));
                }
                next.learners.insert(id);
            }
            ConfChange::PromoteLearner(id) => {
                if !next.learners.remove(&id) {
                    return Err(ConfChangeError::NotALearner(id));
                }
                next.voters.insert(id);
            }
            ConfChange::ForceNewCluster(id) => {
                if id == 0 {
                    return Err(ConfChangeError::InvalidNodeId);
                }
                next = Membership::with_voters([id]);
            }
            ConfChange::RemoveNode(id) => {
                if next.voters.remove(&id) {
                    if next.voters.is_empty() {
                        return Err(ConfChangeError::WouldRemoveLastVoter(id));
                    }
                } else if !next.learners.remove(&id) {
                    return Err(ConfChangeError::NotAMember(id));
                }
            }
        }
        Ok(next)
    }
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ConfChangeError {
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved and cannot join a cluster")]
    InvalidNodeId,
    /// AddLearner of an existing member.
    #[error("node {0} is already a member (voter or learner)")]
    AlreadyMember(NodeId),
    /// PromoteLearner of a node that is not a learner.
    #[error("node {0} is not a learner; add it with AddLearner first")]
    NotALearner(NodeId),
    /// RemoveNode of a non-member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// Removing the only voter.
    #[error("removing node {0} would leave the cluster without voters")]
    WouldRemoveLastVoter(NodeId),
    /// Another change is still uncommitted.
    #[error("membership change at index {0} is not committed yet; one change at a time")]
    ChangeInFlight(LogIndex),
    /// The leader has not committed an entry of its own term yet.
    #[error("leader has not committed its term's first entry yet; retry shortly")]
    LeaderNotReady,
    /// The learner lags too far behind to become a voter.
    #[error("learner {id} is not caught up: match index {match_index}, needs ≥ {needed}")]
    LearnerNotCaughtUp {
        /// The learner.
        id: NodeId,
        /// Its current match index.
        match_index: LogIndex,
        /// Required match index.
        needed: LogIndex,
    },
}

/// Describes a snapshot of the state machines (the bytes are the host's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last log index covered by the snapshot.
    pub index: LogIndex,
    /// Term of the entry at `index`.
    pub term: Term,
    /// Membership in effect at `index` (membership is part of every snapshot).
    pub membership: Membership,
}

/// A Raft message between two engines. The host frames and transports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Sender's term (for pre-vote requests: the prospective term).
    pub term: Term,
    /// Payload.
    pub body: MessageBody,
}

/// Payload of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Ask for a (pre-)vote.
    RequestVote {
        /// A pre-vote does not change anyone's term (thesis §9.6).
        pre_vote: bool,
        /// Candidate's last log index.
        last_log_index: LogIndex,
        /// Candidate's last log term.
        last_log_term: Term,
        /// Set when the election was triggered by a leadership transfer
        /// (`TimeoutNow`): voters disregard their leader stickiness.
        leadership_transfer: bool,
    },
    /// Answer to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Echoes the request.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Replicate entries (possibly none).
    AppendEntries {
        /// Index of the entry preceding `entries`.
        prev_log_index: LogIndex,
        /// Term of that entry.
        prev_log_term: Term,
        /// Entries to append; bounded by `append_entries_max` / `append_bytes_max`.
        entries: Vec<Entry>,
        /// Leader's commit index.
        leader_commit: LogIndex,
    },
    /// Answer to [`MessageBody::AppendEntries`] (also sent after a snapshot install).
    AppendEntriesResponse {
        /// True when the log now matches the leader's up to `match_index`.
        success: bool,
        /// On success: highest index known to match. On rejection: the
        /// rejected `prev_log_index`.
        match_index: LogIndex,
        /// On rejection: where the leader should retry (fast backoff).
        hint_index: LogIndex,
        /// On rejection: term of the follower's conflicting entry at
        /// `prev_log_index`, if it has one.
        hint_term: Option<Term>,
    },
    /// Leader liveness + commit propagation + ReadIndex/lease round.
    Heartbeat {
        /// `min(leader commit, follower match)`, always safe to adopt.
        commit: LogIndex,
        /// Round number echoed back; used for ReadIndex and leases.
        read_ctx: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// Echoed round number.
        read_ctx: u64,
    },
    /// Leadership transfer: start an election now, skipping pre-vote.
    TimeoutNow,
}

impl MessageBody {
    /// Short name for logs and statistics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}
