//! The Raft state machine: [`Engine::step`] takes events, [`Engine::poll_actions`]
//! hands out actions. No I/O, no clock, no threads.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::log::RaftLog;
use crate::types::*;

/// A node's role in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one). Learners and non-members are always followers.
    Follower,
    /// Collecting pre-votes; the term has not been incremented.
    PreCandidate,
    /// Collecting votes for `term`.
    Candidate,
    /// Leader of `term`.
    Leader,
}

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

/// Input to [`Engine::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// One unit of time passed on this node's clock.
    Tick,
    /// A message from a peer arrived.
    Message(Message),
    /// Propose an entry. Answered by exactly one [`Action::ProposalResult`]
    /// (immediately when refused, otherwise once the index is decided).
    Propose {
        /// Echoed in the result.
        id: ProposalId,
        /// Payload (commands carry the leader host's timestamp).
        kind: EntryKind,
    },
    /// Linearizable read request. Answered by [`Action::ReadReady`] or [`Action::ReadFailed`].
    Read {
        /// Echoed in the answer.
        id: ReadId,
    },
    /// The [`PersistBatch`] with this `seq` and all earlier ones are durable.
    Persisted {
        /// Sequence number from [`PersistBatch::seq`].
        seq: u64,
    },
    /// Ask the leader to hand leadership to `to` (a voter).
    TransferLeadership {
        /// Target voter.
        to: NodeId,
    },
    /// The host made a durable snapshot (after an [`Action::SnapshotHint`], or on its own).
    /// `meta` should come from [`Engine::snapshot_meta_at`].
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
    /// Follower side: a complete snapshot from leader `from` (sent in `term`)
    /// is durably staged. The engine answers with [`Action::InstallSnapshot`] or ignores it.
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
        /// Must equal the meta of the pending [`Action::InstallSnapshot`].
        meta: SnapshotMeta,
    },
    /// Follower side: installing failed; the leader will resend later.
    SnapshotInstallFailed {
        /// The meta of the failed install.
        meta: SnapshotMeta,
    },
}

/// Everything the host must make durable, in this order: drop log entries at
/// or below `reset_to_snapshot.index` (the snapshot itself is already durable),
/// drop entries `>= truncate_from`, append `entries`, write `hard_state`.
/// Then report [`Event::Persisted`] with `seq`.
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

/// Why a proposal was not committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposalError {
    /// This node is not the leader.
    #[error("not the leader; try node {leader_hint:?}")]
    NotLeader {
        /// Best guess of the current leader.
        leader_hint: Option<NodeId>,
    },
    /// `max_pending_proposals` reached; retry later.
    #[error("busy: {pending} proposals pending, max_pending_proposals = {max}")]
    Busy {
        /// Proposals pending.
        pending: usize,
        /// Configured bound.
        max: usize,
    },
    /// Command larger than `max_command_bytes`.
    #[error("command is {bytes} bytes, max_command_bytes = {max}")]
    TooLarge {
        /// Size of the refused command.
        bytes: usize,
        /// Configured bound.
        max: usize,
    },
    /// A leadership transfer is in progress.
    #[error("leadership transfer in progress; retry at the new leader")]
    TransferInProgress,
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    ConfChange(ConfChangeError),
    /// Another entry was committed at this index: the proposal was definitely not applied.
    #[error("another entry was committed at index {index}; the proposal was not applied")]
    Superseded {
        /// Index the proposal had.
        index: LogIndex,
    },
    /// A snapshot replaced this node's log before the outcome was known.
    /// The command may or may not have been applied; retry with the same
    /// [`ClientTag`] to find out safely.
    #[error("outcome of the proposal at index {index} is unknown (log replaced by a snapshot)")]
    OutcomeUnknown {
        /// Index the proposal had.
        index: LogIndex,
    },
}

/// Why a read could not be served here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ReadError {
    /// This node is not (or no longer) the leader.
    #[error("not the leader; try node {leader_hint:?}")]
    NotLeader {
        /// Best guess of the current leader.
        leader_hint: Option<NodeId>,
    },
    /// `max_pending_reads` reached.
    #[error("busy: max_pending_reads = {max} reached")]
    Busy {
        /// Configured bound.
        max: usize,
    },
}

/// Why the engine asks for a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnapshotReason {
    /// `snapshot_hint_threshold_entries` applied entries past the latest snapshot.
    AppliedThreshold,
    /// More than `max_log_entries` entries above the latest snapshot.
    LogGuardrail,
}

/// Output of [`Engine::poll_actions`]. The host executes actions in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message now. Messages that reveal state (a vote, an
    /// acknowledgement, a term) are held *inside the engine* until the
    /// [`Action::Persist`] they depend on is reported durable with
    /// [`Event::Persisted`], and are dropped if the term moved on meanwhile;
    /// so the host never delays a `Send`. Leader appends go out before the
    /// leader's own persist (Raft thesis §10.2.1).
    Send {
        /// The message.
        msg: Message,
    },
    /// Make this batch durable (group commit is fine), then report [`Event::Persisted`].
    Persist(PersistBatch),
    /// Committed entries to apply to the machines, in order, off the consensus path.
    /// Does not wait for any persist (committed entries are durable on a quorum).
    Apply {
        /// Contiguous committed entries.
        entries: Vec<Entry>,
    },
    /// Outcome of a [`Event::Propose`]. `Ok(index)` is emitted just before the
    /// [`Action::Apply`] containing that index; the machine output for it is the answer.
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
    /// Follower side: swap the machines to the staged snapshot, keep it as the
    /// latest durable snapshot, then report [`Event::SnapshotInstalled`].
    InstallSnapshot {
        /// The staged snapshot.
        meta: SnapshotMeta,
    },
    /// Consider taking a snapshot of the machines (at their applied index);
    /// answer with [`Event::SnapshotCreated`] or [`Event::SnapshotFailed`].
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

/// Engine-level misuse by the host (never caused by network input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Recovered log entries are not contiguous.
    #[error("recovered log is not contiguous: expected index {expected}, found {found}")]
    NonContiguousLog {
        /// Expected index.
        expected: LogIndex,
        /// Found index.
        found: LogIndex,
    },
    /// Recovered log has a term going backwards.
    #[error("recovered log entry {index} has term {term} below previous term {prev_term}")]
    TermRegression {
        /// Index of the offending entry.
        index: LogIndex,
        /// Its term.
        term: Term,
        /// Preceding term.
        prev_term: Term,
    },
    /// A snapshot event that does not match the engine's state.
    #[error("snapshot event rejected: {0}")]
    Snapshot(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrState {
    Probe,
    Replicate,
    Snapshot,
}

#[derive(Clone, Debug)]
struct Progress {
    match_index: LogIndex,
    next_index: LogIndex,
    state: PrState,
    /// Last index carried by each unacknowledged append (Replicate only).
    inflight: VecDeque<LogIndex>,
    probe_sent: bool,
    recent_active: bool,
    acked_ctx: u64,
    ticks_since_progress: u32,
    snap_index: LogIndex,
    snap_offset: u64,
    snap_retry: bool,
}

impl Progress {
    fn new(next: LogIndex) -> Self {
        Progress {
            match_index: 0,
            next_index: next,
            state: PrState::Probe,
            inflight: VecDeque::new(),
            probe_sent: false,
            recent_active: true,
            acked_ctx: 0,
            ticks_since_progress: 0,
            snap_index: 0,
            snap_offset: 0,
            snap_retry: false,
        }
    }

    fn become_probe(&mut self) {
        self.state = PrState::Probe;
        self.inflight.clear();
        self.probe_sent = false;
        self.next_index = self.next_index.max(self.match_index + 1);
        self.ticks_since_progress = 0;
    }
}

struct PendingRead {
    id: ReadId,
    index: LogIndex,
    ctx: u64,
}

struct Transfer {
    to: NodeId,
    elapsed: u32,
    timeout_now_sent: bool,
}

struct InflightPersist {
    seq: u64,
    last: Option<(LogIndex, Term)>,
    reset: Option<LogIndex>,
}

/// Counters for tests and metrics. Cheap to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Elections started (real, not pre-vote).
    pub elections_started: u64,
    /// Pre-vote rounds started.
    pub pre_votes_started: u64,
    /// Appends sent.
    pub appends_sent: u64,
    /// Entries sent in appends.
    pub entries_sent: u64,
    /// Persist batches handed out.
    pub persist_batches: u64,
    /// Snapshot sends requested.
    pub snapshot_sends: u64,
    /// Snapshot hints emitted.
    pub snapshot_hints: u64,
    /// Reads answered from the lease.
    pub lease_reads: u64,
    /// Times the leader stepped down by check-quorum.
    pub check_quorum_step_downs: u64,
    /// Vote/pre-vote requests refused because a leader was heard recently.
    pub votes_refused_sticky: u64,
}

/// The sans-IO Raft engine for one node.
///
/// Costs: `step` is O(1) amortized for most events, O(members) for ticks and
/// acknowledgements; the engine keeps every log entry above the compaction floor
/// in memory (entries share payloads via [`bytes::Bytes`]).
pub struct Engine {
    cfg: Config,
    id: NodeId,
    rng: fastrand::Rng,

    term: Term,
    vote: Option<NodeId>,
    commit: LogIndex,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,

    base_membership: Membership,
    conf_entries: Vec<(LogIndex, Membership)>,
    membership: Membership,
    snapshot: SnapshotMeta,

    now_ticks: u64,
    election_elapsed: u32,
    randomized_timeout: u32,
    ticks_since_leader_contact: u32,
    heartbeat_elapsed: u32,
    check_quorum_elapsed: u32,
    votes: BTreeMap<NodeId, bool>,

    progress: BTreeMap<NodeId, Progress>,
    term_start_index: LogIndex,
    transfer: Option<Transfer>,
    lease_revoked: bool,
    lease_until: u64,
    read_ctx: u64,
    quorum_ctx: u64,
    hb_rounds: VecDeque<(u64, u64)>,
    pending_reads: VecDeque<PendingRead>,
    read_broadcast_needed: bool,
    pending_props: VecDeque<(LogIndex, Term, ProposalId)>,
    applied: LogIndex,

    unstable_from: LogIndex,
    /// Last index of the log as the host holds it once every batch cut so
    /// far is executed (before `trunc_pending`): a truncation above it
    /// concerns entries the host never received and needs no store write.
    host_last: LogIndex,
    trunc_pending: Option<LogIndex>,
    reset_pending: Option<SnapshotMeta>,
    hs_dirty: bool,
    hs_seq: u64,
    persisted_commit: LogIndex,
    persist_seq: u64,
    durable_seq: u64,
    inflight_persists: VecDeque<InflightPersist>,
    durable_index: LogIndex,

    installing: Option<SnapshotMeta>,
    snapshot_in_flight: bool,
    hinted_band_applied: u64,
    hinted_band_log: u64,

    imm: Vec<Action>,
    held: VecDeque<(u64, Message)>,
    tail: Vec<Action>,
    scratch: Vec<u64>,
    last_role_report: (Role, Term, Option<NodeId>),
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("term", &self.term)
            .field("leader", &self.leader)
            .field("commit", &self.commit)
            .field("last_index", &self.log.last_index())
            .finish_non_exhaustive()
    }
}

const HB_ROUNDS_MAX: usize = 256;
/// Messages held back waiting for persists (beyond this the oldest is dropped).
const HELD_MSGS_MAX: usize = 65_536;

impl Engine {
    /// Builds an engine from its configuration and the state recovered from storage.
    ///
    /// # Errors
    /// [`EngineError::Config`] for an invalid config; [`EngineError::NonContiguousLog`]
    /// / [`EngineError::TermRegression`] for a damaged recovered log.
    pub fn new(cfg: Config, init: InitialState) -> Result<Engine, EngineError> {
        cfg.validate()?;
        let snap = init.snapshot;
        let recovered_last = init.entries.last().map(|e| e.index);
        let host_last = recovered_last.map_or(snap.index, |l| l.max(snap.index));
        let mut log = RaftLog::new(snap.index, snap.term);
        let mut conf_entries = Vec::new();
        let mut membership = snap.membership.clone();
        let mut discard_all = false;
        for e in init.entries {
            if e.index < snap.index {
                continue;
            }
            if e.index == snap.index {
                if e.term != snap.term {
                    discard_all = true;
                    break;
                }
                continue;
            }
            if e.index != log.last_index() + 1 {
                return Err(EngineError::NonContiguousLog {
                    expected: log.last_index() + 1,
                    found: e.index,
                });
            }
            if e.term < log.last_term() {
                return Err(EngineError::TermRegression {
                    index: e.index,
                    term: e.term,
                    prev_term: log.last_term(),
                });
            }
            if let EntryKind::ConfChange(cc) = &e.kind {
                membership = cc.membership.clone();
                conf_entries.push((e.index, membership.clone()));
            }
            log.append(e);
        }
        let mut reset_pending = None;
        let mut trunc_pending = None;
        if discard_all {
            log.reset(snap.index, snap.term);
            conf_entries.clear();
            membership = snap.membership.clone();
            reset_pending = Some(snap.clone());
            trunc_pending = Some(snap.index + 1);
        } else if snap.index > 0 && recovered_last.is_none_or(|l| l < snap.index) {
            // The host's log must continue right above the snapshot. Recovered
            // entries that stop below it mean the install's log reset was lost
            // in a crash (the snapshot was durable first); with none recovered
            // the store's floor may still lie below it. Restate the reset (a
            // no-op for a store already compacted there), or the next append
            // would leave a gap the store refuses.
            reset_pending = Some(snap.clone());
        }
        let hs = init.hard_state;
        let commit = hs.commit.max(snap.index).min(log.last_index());
        let id = cfg.id;
        let mut rng = fastrand::Rng::with_seed(cfg.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let randomized_timeout =
            rng.u32(cfg.election_timeout_min_ticks..cfg.election_timeout_max_ticks);
        let term = hs.term.max(snap.term);
        let last = log.last_index();
        Ok(Engine {
            id,
            rng,
            term,
            vote: if term == hs.term { hs.vote } else { None },
            commit,
            role: Role::Follower,
            leader: None,
            log,
            base_membership: snap.membership.clone(),
            conf_entries,
            membership,
            snapshot: snap.clone(),
            now_ticks: 0,
            election_elapsed: 0,
            randomized_timeout,
            ticks_since_leader_contact: 0,
            heartbeat_elapsed: 0,
            check_quorum_elapsed: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: 0,
            transfer: None,
            lease_revoked: false,
            lease_until: 0,
            read_ctx: 0,
            quorum_ctx: 0,
            hb_rounds: VecDeque::new(),
            pending_reads: VecDeque::new(),
            read_broadcast_needed: false,
            pending_props: VecDeque::new(),
            applied: snap.index,
            unstable_from: last + 1,
            host_last,
            trunc_pending,
            reset_pending,
            hs_dirty: term != hs.term,
            hs_seq: 0,
            persisted_commit: hs.commit,
            persist_seq: 0,
            durable_seq: 0,
            inflight_persists: VecDeque::new(),
            durable_index: last,
            installing: None,
            snapshot_in_flight: false,
            hinted_band_applied: 0,
            hinted_band_log: 0,
            imm: Vec::new(),
            held: VecDeque::new(),
            tail: Vec::new(),
            scratch: Vec::new(),
            last_role_report: (Role::Follower, term, None),
            stats: EngineStats::default(),
            cfg,
        })
    }

    // ----- queries ---------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Known leader of the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Current hard state (possibly not yet durable).
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        }
    }
    /// Highest committed index known.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
    /// Highest index handed out in [`Action::Apply`] (or restored by snapshot).
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }
    /// Last index in the log.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    /// Entries at or below this index are compacted away.
    pub fn log_floor(&self) -> LogIndex {
        self.log.floor_index()
    }
    /// Term of the entry at `index` if retained (or at the floor).
    pub fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }
    /// The retained entry at `index`.
    pub fn log_entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }
    /// Effective membership (latest appended configuration).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// Latest snapshot known to the engine (created or installed).
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }
    /// Highest index of this node's own log that is durable.
    pub fn durable_index(&self) -> LogIndex {
        self.durable_index
    }
    /// Number of uncommitted membership changes in the log (≤ 1 on a correct leader).
    pub fn uncommitted_conf_changes(&self) -> usize {
        self.conf_entries
            .iter()
            .filter(|(i, _)| *i > self.commit)
            .count()
    }
    /// Proposals accepted and not yet resolved.
    pub fn pending_proposals(&self) -> usize {
        self.pending_props.len()
    }
    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    /// True if a follower snapshot install is in progress.
    pub fn is_installing_snapshot(&self) -> bool {
        self.installing.is_some()
    }
    /// Leader only: match index of `peer`, if tracked.
    pub fn peer_match_index(&self, peer: NodeId) -> Option<LogIndex> {
        self.progress.get(&peer).map(|p| p.match_index)
    }

    /// The [`SnapshotMeta`] for a snapshot of the machines at `index`
    /// (term and membership at that index), or `None` if `index` is not
    /// committed or no longer in the log.
    pub fn snapshot_meta_at(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index > self.commit {
            return None;
        }
        let term = self.log.term(index)?;
        Some(SnapshotMeta {
            index,
            term,
            membership: self.membership_at(index),
        })
    }

    fn membership_at(&self, index: LogIndex) -> Membership {
        self.conf_entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone())
    }

    // ----- driving ---------------------------------------------------------

    /// Feeds one event. State changes immediately; resulting actions are
    /// collected until [`Engine::poll_actions`]. Feeding many proposals before
    /// polling batches them into one persist and one append per follower.
    ///
    /// # Errors
    /// [`EngineError::Snapshot`] when a snapshot event contradicts the engine's
    /// state (a host bug; the event is ignored). Messages never produce errors:
    /// malformed or stale messages are dropped.
    pub fn step(&mut self, event: Event) -> Result<(), EngineError> {
        let r = self.step_event(event);
        self.debug_check_persist_state();
        r
    }

    fn step_event(&mut self, event: Event) -> Result<(), EngineError> {
        match event {
            Event::Tick => self.tick(),
            Event::Message(m) => self.step_message(m),
            Event::Propose { id, kind } => self.propose(id, kind),
            Event::Read { id } => self.read(id),
            Event::Persisted { seq } => self.on_persisted(seq),
            Event::TransferLeadership { to } => self.transfer_leadership(to),
            Event::SnapshotCreated { meta } => return self.on_snapshot_created(meta),
            Event::SnapshotFailed => self.snapshot_in_flight = false,
            Event::SnapshotProgress {
                from,
                index,
                durable_offset,
            } => {
                if let Some(pr) = self.progress.get_mut(&from)
                    && pr.state == PrState::Snapshot
                    && pr.snap_index == index
                {
                    pr.snap_offset = durable_offset;
                    pr.ticks_since_progress = 0;
                }
            }
            Event::SnapshotTransferFailed { to, index } => {
                if let Some(pr) = self.progress.get_mut(&to)
                    && pr.state == PrState::Snapshot
                    && pr.snap_index == index
                {
                    pr.snap_retry = true;
                }
            }
            Event::SnapshotReceived { from, term, meta } => {
                self.on_snapshot_received(from, term, meta)
            }
            Event::SnapshotInstalled { meta } => return self.on_snapshot_installed(meta),
            Event::SnapshotInstallFailed { meta } => {
                if self.installing.as_ref() == Some(&meta) {
                    self.installing = None;
                }
            }
        }
        Ok(())
    }

    /// Moves all pending actions into `out` (appending), in execution order:
    /// immediate sends, one [`Action::Persist`] (if anything changed), sends that
    /// depend on it, then applies, results and snapshot/compaction actions.
    pub fn poll_actions(&mut self, out: &mut Vec<Action>) {
        if self.role == Role::Leader {
            if self.read_broadcast_needed {
                self.broadcast_heartbeat();
            }
            self.broadcast_append();
        }
        self.report_role();
        out.append(&mut self.imm);
        if let Some(b) = self.take_persist_batch() {
            out.push(Action::Persist(b));
        }
        self.emit_apply();
        self.maybe_hint();
        out.append(&mut self.tail);
    }

    // ----- persistence -----------------------------------------------------

    /// The bookkeeping that `take_persist_batch` relies on, whatever events
    /// were stepped since the last poll: the unwritten range starts inside
    /// the log (at most one past its end), and a pending truncation lies
    /// above the floor and at most one past what the host holds (the store
    /// refuses to truncate outside its log).
    fn debug_check_persist_state(&self) {
        debug_assert!(
            self.unstable_from > self.log.floor_index()
                && self.unstable_from <= self.log.last_index() + 1,
            "unwritten range starts at {} outside the log {}..={}",
            self.unstable_from,
            self.log.floor_index() + 1,
            self.log.last_index() + 1
        );
        debug_assert!(
            self.trunc_pending
                .is_none_or(|t| t > self.log.floor_index() && t <= self.host_last + 1),
            "pending truncation {:?} outside {}..={} (floor, host's last index + 1)",
            self.trunc_pending,
            self.log.floor_index() + 1,
            self.host_last + 1
        );
    }

    fn take_persist_batch(&mut self) -> Option<PersistBatch> {
        self.debug_check_persist_state();
        let last = self.log.last_index();
        let has_entries = self.unstable_from <= last;
        if !(has_entries
            || self.hs_dirty
            || self.trunc_pending.is_some()
            || self.reset_pending.is_some())
        {
            return None;
        }
        self.persist_seq += 1;
        let seq = self.persist_seq;
        let entries: Vec<Entry> = if has_entries {
            self.log.range(self.unstable_from, last).cloned().collect()
        } else {
            Vec::new()
        };
        let hard_state = if self.hs_dirty || self.commit != self.persisted_commit {
            self.persisted_commit = self.commit;
            Some(self.hard_state())
        } else {
            None
        };
        if self.hs_dirty {
            self.hs_seq = seq;
            self.hs_dirty = false;
        }
        let reset = self.reset_pending.take();
        self.inflight_persists.push_back(InflightPersist {
            seq,
            last: entries.last().map(|e| (e.index, e.term)),
            reset: reset.as_ref().map(|m| m.index),
        });
        self.unstable_from = last + 1;
        self.host_last = last;
        self.stats.persist_batches += 1;
        Some(PersistBatch {
            seq,
            hard_state,
            reset_to_snapshot: reset,
            truncate_from: self.trunc_pending.take(),
            entries,
        })
    }

    fn on_persisted(&mut self, seq: u64) {
        if seq <= self.durable_seq {
            return;
        }
        self.durable_seq = seq;
        while let Some(p) = self.inflight_persists.front() {
            if p.seq > seq {
                break;
            }
            if let Some((i, t)) = p.last
                && self.log.term(i) == Some(t)
            {
                self.durable_index = self.durable_index.max(i);
            }
            if let Some(r) = p.reset
                && r >= self.log.floor_index()
                && r <= self.log.last_index()
            {
                self.durable_index = self.durable_index.max(r);
            }
            self.inflight_persists.pop_front();
        }
        while self.held.front().is_some_and(|(need, _)| *need <= seq) {
            let (_, msg) = self.held.pop_front().expect("front");
            // A message from an older term may describe state that a newer
            // leader has since truncated (e.g. an ack): drop it.
            if msg.term == self.term {
                self.imm.push(Action::Send { msg });
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// True when term and vote as currently held are durable.
    fn hs_durable(&self) -> bool {
        !self.hs_dirty && self.hs_seq <= self.durable_seq
    }

    // ----- sending ---------------------------------------------------------

    /// Queues a message. Anything carrying our term waits for the term to be
    /// durable even if the caller did not ask for it (a single-voter leader
    /// elects itself before its term is on disk).
    fn send(&mut self, to: NodeId, body: MessageBody, needs_durable: bool) {
        let msg = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.emit(msg, needs_durable || !self.hs_durable());
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody, needs_durable: bool) {
        let msg = Message {
            from: self.id,
            to,
            term,
            body,
        };
        self.emit(msg, needs_durable);
    }

    /// True if some state changed since the last persist batch was cut.
    fn has_unpersisted(&self) -> bool {
        self.hs_dirty
            || self.unstable_from <= self.log.last_index()
            || self.trunc_pending.is_some()
            || self.reset_pending.is_some()
    }

    /// Sends now, or holds the message until everything it may reveal is durable.
    fn emit(&mut self, msg: Message, needs_durable: bool) {
        if !needs_durable {
            self.imm.push(Action::Send { msg });
            return;
        }
        let need = if self.has_unpersisted() {
            self.persist_seq + 1
        } else {
            self.persist_seq
        };
        if need <= self.durable_seq {
            self.imm.push(Action::Send { msg });
        } else {
            if self.held.len() >= HELD_MSGS_MAX {
                // Messages may be lost anyway; keep memory bounded.
                self.held.pop_front();
            }
            self.held.push_back((need, msg));
        }
    }

    fn report_role(&mut self) {
        let now = (self.role, self.term, self.leader);
        if now != self.last_role_report {
            self.last_role_report = now;
            self.tail.push(Action::RoleChanged {
                role: self.role,
                term: self.term,
                leader: self.leader,
            });
        }
    }

    // ----- time ------------------------------------------------------------

    fn tick(&mut self) {
        self.now_ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
            return;
        }
        self.ticks_since_leader_contact = self.ticks_since_leader_contact.saturating_add(1);
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            if self.membership.voters.contains(&self.id) {
                if self.cfg.pre_vote {
                    self.become_pre_candidate();
                } else {
                    self.campaign(false);
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        self.check_quorum_elapsed += 1;
        if self.check_quorum_elapsed >= self.cfg.election_timeout_min_ticks {
            self.check_quorum_elapsed = 0;
            if self.cfg.check_quorum {
                let q = self.membership.quorum();
                let mut active = usize::from(self.membership.voters.contains(&self.id));
                for (id, pr) in &self.progress {
                    if self.membership.voters.contains(id) && pr.recent_active {
                        active += 1;
                    }
                }
                if active < q {
                    self.stats.check_quorum_step_downs += 1;
                    self.become_follower(self.term, None);
                    return;
                }
            }
            for pr in self.progress.values_mut() {
                pr.recent_active = false;
            }
        }
        if let Some(t) = &mut self.transfer {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.transfer_timeout_ticks {
                // Abort; the lease stays revoked for this term (a late
                // TimeoutNow could still start an election).
                self.transfer = None;
            }
        }
        let retransmit = self.cfg.append_retransmit_ticks;
        let snap_timeout = self.cfg.snapshot_transfer_timeout_ticks;
        let mut resend = Vec::new();
        for (id, pr) in self.progress.iter_mut() {
            match pr.state {
                PrState::Replicate if !pr.inflight.is_empty() => {
                    pr.ticks_since_progress += 1;
                    if pr.ticks_since_progress >= retransmit {
                        pr.next_index = pr.match_index + 1;
                        pr.become_probe();
                    }
                }
                PrState::Probe if pr.probe_sent => {
                    pr.ticks_since_progress += 1;
                    if pr.ticks_since_progress >= retransmit {
                        pr.probe_sent = false;
                        pr.ticks_since_progress = 0;
                    }
                }
                PrState::Snapshot => {
                    pr.ticks_since_progress += 1;
                    if pr.snap_retry || pr.ticks_since_progress >= snap_timeout {
                        pr.snap_retry = false;
                        pr.ticks_since_progress = 0;
                        resend.push(*id);
                    }
                }
                _ => {}
            }
        }
        for id in resend {
            self.send_snapshot(id);
        }
    }

    // ----- elections -------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_timeout = self
            .rng
            .u32(self.cfg.election_timeout_min_ticks..self.cfg.election_timeout_max_ticks);
    }

    fn leader_recently_heard(&self) -> bool {
        self.role == Role::Leader
            || self.ticks_since_leader_contact < self.cfg.election_timeout_min_ticks
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.hs_dirty = true;
        }
        let was_leader = self.role == Role::Leader;
        self.role = Role::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.ticks_since_leader_contact = 0;
        }
        self.reset_election_timer();
        if was_leader {
            self.progress.clear();
            self.transfer = None;
            self.hb_rounds.clear();
            self.lease_until = 0;
            self.lease_revoked = false;
            self.read_broadcast_needed = false;
            let hint = self.leader;
            for r in std::mem::take(&mut self.pending_reads) {
                self.tail.push(Action::ReadFailed {
                    id: r.id,
                    error: ReadError::NotLeader { leader_hint: hint },
                });
            }
        }
        self.votes.clear();
    }

    fn become_pre_candidate(&mut self) {
        self.stats.pre_votes_started += 1;
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.votes_won() {
            self.campaign(false);
            return;
        }
        // A pre-vote asks for the prospective term and reveals no durable
        // state, so it is not held for a persist.
        self.request_votes(true, false);
    }

    fn campaign(&mut self, transfer: bool) {
        self.stats.elections_started += 1;
        self.term += 1;
        self.vote = Some(self.id);
        self.hs_dirty = true;
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.votes_won() {
            self.become_leader();
            return;
        }
        // A real vote request carries the new term and our own vote: it
        // must wait until both are durable.
        self.request_votes(false, transfer);
    }

    /// Ask every other voter for a (pre-)vote with our last log position.
    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let (lli, llt) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .collect();
        for v in voters {
            let body = MessageBody::RequestVote {
                pre_vote,
                last_log_index: lli,
                last_log_term: llt,
                leadership_transfer: transfer,
            };
            if pre_vote {
                self.send_with_term(v, self.term + 1, body, false);
            } else {
                self.send(v, body, true);
            }
        }
    }

    fn votes_won(&self) -> bool {
        let granted = self
            .votes
            .iter()
            .filter(|(id, g)| **g && self.membership.voters.contains(id))
            .count();
        granted >= self.membership.quorum()
    }

    fn votes_lost(&self) -> bool {
        let rejected = self
            .votes
            .iter()
            .filter(|(id, g)| !**g && self.membership.voters.contains(id))
            .count();
        rejected >= self.membership.quorum()
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.ticks_since_leader_contact = 0;
        self.heartbeat_elapsed = 0;
        self.check_quorum_elapsed = 0;
        self.transfer = None;
        self.lease_revoked = false;
        self.lease_until = 0;
        self.hb_rounds.clear();
        self.quorum_ctx = self.read_ctx;
        self.votes.clear();
        self.progress.clear();
        let next = self.log.last_index() + 1;
        let members: Vec<NodeId> = self
            .membership
            .members()
            .filter(|m| *m != self.id)
            .collect();
        for m in members {
            self.progress.insert(m, Progress::new(next));
        }
        let idx = self.log.last_index() + 1;
        self.term_start_index = idx;
        self.log.append(Entry {
            index: idx,
            term: self.term,
            kind: EntryKind::Noop,
        });
        self.maybe_commit();
    }

    // ----- message handling ------------------------------------------------

    fn step_message(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id {
            return;
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::RequestVote {
                    leadership_transfer,
                    ..
                } if !*leadership_transfer && self.leader_recently_heard() => {
                    // Leader stickiness: a healthy leader exists; do not let a
                    // disruptive candidate raise our term.
                    self.stats.votes_refused_sticky += 1;
                    return;
                }
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::TimeoutNow => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } => {
                    // Tell the stale leader about the newer term.
                    let body = MessageBody::AppendEntriesResponse {
                        success: false,
                        match_index: 0,
                        hint_index: 0,
                        hint_term: None,
                    };
                    let ap = !self.hs_durable();
                    self.send(m.from, body, ap);
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    let ap = !self.hs_durable();
                    self.send(
                        m.from,
                        MessageBody::RequestVoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                        ap,
                    );
                }
                _ => {}
            }
            return;
        }
        let from = m.from;
        let term = m.term;
        match m.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                leadership_transfer,
            } => self.on_request_vote(
                from,
                term,
                pre_vote,
                last_log_index,
                last_log_term,
                leadership_transfer,
            ),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.on_vote_response(from, term, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => self.on_append(from, prev_log_index, prev_log_term, entries, leader_commit),
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                hint_index,
                hint_term,
            } => self.on_append_response(from, success, match_index, hint_index, hint_term),
            MessageBody::Heartbeat { commit, read_ctx } => {
                self.on_heartbeat(from, commit, read_ctx)
            }
            MessageBody::HeartbeatResponse { read_ctx } => {
                self.on_heartbeat_response(from, read_ctx)
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.membership.voters.contains(&self.id) {
                    self.campaign(true);
                }
            }
        }
    }

    fn log_up_to_date(&self, lli: LogIndex, llt: Term) -> bool {
        (llt, lli) >= (self.log.last_term(), self.log.last_index())
    }

    fn on_request_vote(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        lli: LogIndex,
        llt: Term,
        transfer: bool,
    ) {
        if pre_vote {
            let sticky = !transfer && self.leader_recently_heard();
            if sticky {
                self.stats.votes_refused_sticky += 1;
            }
            let grant = term > self.term && !sticky && self.log_up_to_date(lli, llt);
            let t = if grant { term } else { self.term };
            let ap = !grant && !self.hs_durable();
            self.send_with_term(
                from,
                t,
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: grant,
                },
                ap,
            );
            return;
        }
        // term == self.term here.
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let grant = can_vote && self.log_up_to_date(lli, llt) && self.role != Role::Leader;
        if grant {
            if self.vote != Some(from) {
                self.vote = Some(from);
                self.hs_dirty = true;
            }
            self.reset_election_timer();
        }
        self.send(
            from,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: grant,
            },
            true,
        );
    }

    fn on_vote_response(&mut self, from: NodeId, term: Term, pre_vote: bool, granted: bool) {
        match self.role {
            Role::PreCandidate if pre_vote && term == self.term + 1 => {
                self.votes.insert(from, granted);
                if self.votes_won() {
                    self.campaign(false);
                } else if self.votes_lost() {
                    self.become_follower(self.term, None);
                }
            }
            Role::PreCandidate if pre_vote && !granted && term == self.term => {
                self.votes.insert(from, false);
                if self.votes_lost() {
                    self.become_follower(self.term, None);
                }
            }
            Role::Candidate if !pre_vote && term == self.term => {
                self.votes.insert(from, granted);
                if self.votes_won() {
                    self.become_leader();
                } else if self.votes_lost() {
                    self.become_follower(self.term, None);
                }
            }
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        self.ticks_since_leader_contact = 0;
    }

    fn reject_append(&mut self, from: NodeId, prev: LogIndex) {
        let (hint_index, hint_term) = if prev > self.log.last_index() {
            (self.log.last_index() + 1, None)
        } else {
            let t = self.log.term(prev);
            (self.log.first_index_of_term_run(prev), t)
        };
        let body = MessageBody::AppendEntriesResponse {
            success: false,
            match_index: prev,
            hint_index,
            hint_term,
        };
        let ap = !self.hs_durable();
        self.send(from, body, ap);
    }

    fn on_append(
        &mut self,
        from: NodeId,
        prev: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        if self.role == Role::Leader {
            return; // impossible by election safety; ignore defensively
        }
        self.heard_from_leader(from);
        let floor = self.log.floor_index();
        let mut prev = prev;
        let mut entries = entries;
        if prev < floor {
            // Everything at or below our floor is committed and matches.
            let skip = entries.iter().take_while(|e| e.index <= floor).count();
            let covered = prev + entries.len() as u64;
            if skip == entries.len() {
                let body = MessageBody::AppendEntriesResponse {
                    success: true,
                    match_index: covered.min(floor).max(prev),
                    hint_index: 0,
                    hint_term: None,
                };
                self.send(from, body, true);
                return;
            }
            entries.drain(..skip);
            prev = floor;
        } else if prev > self.log.last_index() || self.log.term(prev) != Some(prev_term) {
            self.reject_append(from, prev);
            return;
        }
        let n = entries.len() as u64;
        // Find first conflict.
        let mut first_new = entries.len();
        for (k, e) in entries.iter().enumerate() {
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    if e.index <= self.commit {
                        debug_assert!(
                            false,
                            "leader tried to overwrite committed entry {}",
                            e.index
                        );
                        return;
                    }
                    self.truncate_from(e.index);
                    first_new = k;
                    break;
                }
                None => {
                    first_new = k;
                    break;
                }
            }
        }
        let mut conf_changed = false;
        for e in entries.drain(first_new..) {
            if let EntryKind::ConfChange(cc) = &e.kind {
                self.membership = cc.membership.clone();
                self.conf_entries.push((e.index, cc.membership.clone()));
                conf_changed = true;
            }
            self.log.append(e);
        }
        if conf_changed {
            self.on_membership_changed();
        }
        let match_index = prev + n;
        let new_commit = leader_commit.min(match_index);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        let body = MessageBody::AppendEntriesResponse {
            success: true,
            match_index,
            hint_index: 0,
            hint_term: None,
        };
        self.send(from, body, true);
    }

    fn truncate_from(&mut self, index: LogIndex) {
        self.log.truncate_from(index);
        // Entries appended since the last poll and replaced before the next
        // one never reach the host: only what it holds needs truncating (a
        // store refuses a truncation beyond its last entry).
        if index <= self.host_last {
            self.trunc_pending = Some(self.trunc_pending.map_or(index, |t| t.min(index)));
        }
        self.unstable_from = self.unstable_from.min(index);
        self.durable_index = self.durable_index.min(index - 1);
        let before = self.conf_entries.len();
        self.conf_entries.retain(|(i, _)| *i < index);
        if self.conf_entries.len() != before {
            self.membership = self
                .conf_entries
                .last()
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| self.base_membership.clone());
            self.on_membership_changed();
        }
    }

    fn on_membership_changed(&mut self) {
        self.tail.push(Action::MembershipChanged {
            membership: self.membership.clone(),
        });
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let members: Vec<NodeId> = self
                .membership
                .members()
                .filter(|m| *m != self.id)
                .collect();
            self.progress.retain(|id, _| members.contains(id));
            for m in members {
                self.progress
                    .entry(m)
                    .or_insert_with(|| Progress::new(next));
            }
            if let Some(t) = &self.transfer
                && !self.membership.voters.contains(&t.to)
            {
                self.transfer = None;
            }
            self.maybe_commit();
        } else if !self.membership.voters.contains(&self.id)
            && matches!(self.role, Role::Candidate | Role::PreCandidate)
        {
            self.become_follower(self.term, None);
        }
    }

    fn on_heartbeat(&mut self, from: NodeId, commit: LogIndex, read_ctx: u64) {
        if self.role == Role::Leader {
            return;
        }
        self.heard_from_leader(from);
        let c = commit.min(self.log.last_index());
        if c > self.commit {
            self.commit = c;
        }
        let ap = !self.hs_durable();
        self.send(from, MessageBody::HeartbeatResponse { read_ctx }, ap);
    }

    fn on_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let floor = self.log.floor_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if success {
            if match_index > last {
                return; // not from our log; ignore
            }
            if match_index > pr.match_index {
                pr.match_index = match_index;
                pr.ticks_since_progress = 0;
            }
            if pr.next_index <= match_index {
                pr.next_index = match_index + 1;
            }
            while pr.inflight.front().is_some_and(|&i| i <= match_index) {
                pr.inflight.pop_front();
            }
            match pr.state {
                PrState::Probe => {
                    pr.state = PrState::Replicate;
                    pr.inflight.clear();
                    pr.next_index = pr.match_index + 1;
                    pr.probe_sent = false;
                }
                PrState::Snapshot if pr.match_index >= pr.snap_index => {
                    pr.state = PrState::Replicate;
                    pr.inflight.clear();
                    pr.next_index = pr.match_index + 1;
                }
                _ => {}
            }
            let caught_up = pr.match_index == last;
            self.maybe_commit();
            if caught_up {
                self.maybe_send_timeout_now(from);
            }
            return;
        }
        // Rejection.
        if match_index == 0 && hint_index == 0 {
            return; // a higher-term notice handled earlier, or garbage
        }
        let rejected_prev = match_index;
        match pr.state {
            PrState::Replicate if rejected_prev <= pr.match_index => return,
            PrState::Probe if rejected_prev + 1 != pr.next_index => return,
            PrState::Snapshot => return,
            _ => {}
        }
        let mut next = match hint_term {
            Some(t) => match self.log.last_index_with_term_at_most(t) {
                Some(i) if self.log.term(i) == Some(t) => i + 1,
                _ => hint_index,
            },
            None => hint_index,
        };
        next = next.min(rejected_prev).max(pr.match_index + 1);
        pr.next_index = next;
        pr.become_probe();
        pr.next_index = next.max(pr.match_index + 1);
        if pr.next_index <= floor {
            self.send_snapshot(from);
        }
    }

    fn on_heartbeat_response(&mut self, from: NodeId, read_ctx: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_ctx = pr.acked_ctx.max(read_ctx);
        if pr.state == PrState::Probe {
            pr.probe_sent = false;
        }
        let caught_up = pr.match_index == last;
        self.check_read_quorum();
        if caught_up {
            self.maybe_send_timeout_now(from);
        }
    }

    // ----- leader: replication --------------------------------------------

    fn broadcast_heartbeat(&mut self) {
        self.read_broadcast_needed = false;
        self.read_ctx += 1;
        if self.hb_rounds.len() >= HB_ROUNDS_MAX {
            self.hb_rounds.pop_front();
        }
        self.hb_rounds.push_back((self.read_ctx, self.now_ticks));
        let ids: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index))
            .collect();
        for (id, m) in ids {
            let body = MessageBody::Heartbeat {
                commit: self.commit.min(m),
                read_ctx: self.read_ctx,
            };
            self.send(id, body, false);
        }
        self.check_read_quorum();
    }

    fn broadcast_append(&mut self) {
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            self.send_appends_to(id);
        }
    }

    fn send_appends_to(&mut self, id: NodeId) {
        let last = self.log.last_index();
        let floor = self.log.floor_index();
        loop {
            let Some(pr) = self.progress.get_mut(&id) else {
                return;
            };
            match pr.state {
                PrState::Snapshot => return,
                PrState::Probe if pr.probe_sent => return,
                PrState::Replicate
                    if pr.inflight.len() >= self.cfg.max_inflight_append_msgs
                        || pr.next_index > last =>
                {
                    return;
                }
                _ => {}
            }
            if pr.next_index <= floor {
                self.send_snapshot(id);
                return;
            }
            let next = pr.next_index;
            let prev = next - 1;
            let Some(prev_term) = self.log.term(prev) else {
                self.send_snapshot(id);
                return;
            };
            let mut bytes = 0usize;
            let mut entries = Vec::new();
            for e in self.log.range(next, last) {
                let b = e.kind.approx_bytes();
                if !entries.is_empty()
                    && (entries.len() >= self.cfg.max_append_entries
                        || bytes + b > self.cfg.max_append_bytes)
                {
                    break;
                }
                bytes += b;
                entries.push(e.clone());
            }
            let n = entries.len() as u64;
            let pr = self.progress.get_mut(&id).expect("present");
            match pr.state {
                PrState::Probe => {
                    pr.probe_sent = true;
                    pr.ticks_since_progress = 0;
                }
                _ => {
                    if n > 0 {
                        if pr.inflight.is_empty() {
                            pr.ticks_since_progress = 0;
                        }
                        pr.inflight.push_back(prev + n);
                        pr.next_index = prev + n + 1;
                    }
                }
            }
            let is_probe = pr.state == PrState::Probe;
            self.stats.appends_sent += 1;
            self.stats.entries_sent += n;
            let body = MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: self.commit,
            };
            self.send(id, body, false);
            if is_probe || n == 0 {
                return;
            }
        }
    }

    fn send_snapshot(&mut self, id: NodeId) {
        let meta = self.snapshot.clone();
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        let offset = if pr.state == PrState::Snapshot && pr.snap_index == meta.index {
            pr.snap_offset
        } else {
            0
        };
        pr.state = PrState::Snapshot;
        pr.inflight.clear();
        pr.snap_index = meta.index;
        pr.snap_offset = offset;
        pr.ticks_since_progress = 0;
        pr.snap_retry = false;
        self.stats.snapshot_sends += 1;
        self.tail.push(Action::SendSnapshot {
            to: id,
            meta,
            offset,
        });
    }

    fn self_match(&self) -> Option<LogIndex> {
        if self.membership.voters.contains(&self.id) {
            Some(self.durable_index)
        } else {
            None
        }
    }

    fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        self.scratch.clear();
        if let Some(m) = self.self_match() {
            self.scratch.push(m);
        }
        for (id, pr) in &self.progress {
            if self.membership.voters.contains(id) {
                self.scratch.push(pr.match_index);
            }
        }
        let q = self.membership.quorum();
        if self.scratch.len() < q {
            return;
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = self.scratch[q - 1];
        if candidate > self.commit && self.log.term(candidate) == Some(self.term) {
            self.commit = candidate;
            self.on_leader_commit_advanced();
        }
    }

    fn on_leader_commit_advanced(&mut self) {
        self.release_reads();
        // Removal of the leader itself takes effect once committed.
        if !self.membership.voters.contains(&self.id) {
            let last_conf = self.conf_entries.last().map_or(0, |(i, _)| *i);
            if self.commit >= last_conf {
                self.become_follower(self.term, None);
            }
        }
    }

    fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let Some(t) = &mut self.transfer else { return };
        if t.to == from && !t.timeout_now_sent {
            t.timeout_now_sent = true;
            self.send(from, MessageBody::TimeoutNow, false);
        }
    }

    // ----- leader: proposals, transfer, reads -----------------------------

    fn propose(&mut self, id: ProposalId, kind: EntryKind) {
        let r = self.try_propose(id, kind);
        if let Err(e) = r {
            self.tail
                .push(Action::ProposalResult { id, result: Err(e) });
        }
    }

    fn try_propose(&mut self, id: ProposalId, mut kind: EntryKind) -> Result<(), ProposalError> {
        if self.role != Role::Leader {
            return Err(ProposalError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposalError::TransferInProgress);
        }
        if self.pending_props.len() >= self.cfg.max_pending_proposals {
            return Err(ProposalError::Busy {
                pending: self.pending_props.len(),
                max: self.cfg.max_pending_proposals,
            });
        }
        let mut new_membership = None;
        match &mut kind {
            EntryKind::Command { data, .. } if data.len() > self.cfg.max_command_bytes => {
                return Err(ProposalError::TooLarge {
                    bytes: data.len(),
                    max: self.cfg.max_command_bytes,
                });
            }
            EntryKind::ConfChange(ce) => {
                let cc = &ce.change;
                if self.commit < self.term_start_index {
                    return Err(ProposalError::ConfChange(ConfChangeError::LeaderNotReady));
                }
                if let Some((i, _)) = self.conf_entries.last()
                    && *i > self.commit
                {
                    return Err(ProposalError::ConfChange(ConfChangeError::ChangeInFlight(
                        *i,
                    )));
                }
                if let ConfChange::PromoteLearner(l) = cc
                    && let Some(pr) = self.progress.get(l)
                {
                    let needed = self
                        .commit
                        .saturating_sub(self.cfg.learner_promote_lag_entries);
                    if pr.match_index < needed {
                        return Err(ProposalError::ConfChange(
                            ConfChangeError::LearnerNotCaughtUp {
                                id: *l,
                                match_index: pr.match_index,
                                needed,
                            },
                        ));
                    }
                }
                let m = self
                    .membership
                    .apply(*cc)
                    .map_err(ProposalError::ConfChange)?;
                ce.membership = m.clone();
                new_membership = Some(m);
            }
            _ => {}
        }
        let index = self.log.last_index() + 1;
        self.log.append(Entry {
            index,
            term: self.term,
            kind,
        });
        self.pending_props.push_back((index, self.term, id));
        if let Some(m) = new_membership {
            self.membership = m.clone();
            self.conf_entries.push((index, m));
            self.on_membership_changed();
        }
        Ok(())
    }

    fn transfer_leadership(&mut self, to: NodeId) {
        if self.role != Role::Leader || to == self.id || !self.membership.voters.contains(&to) {
            return;
        }
        if self.transfer.as_ref().is_some_and(|t| t.to == to) {
            return;
        }
        self.lease_revoked = true;
        self.transfer = Some(Transfer {
            to,
            elapsed: 0,
            timeout_now_sent: false,
        });
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.maybe_send_timeout_now(to);
        }
    }

    fn read(&mut self, id: ReadId) {
        if self.role != Role::Leader {
            self.tail.push(Action::ReadFailed {
                id,
                error: ReadError::NotLeader {
                    leader_hint: self.leader,
                },
            });
            return;
        }
        if self.pending_reads.len() >= self.cfg.max_pending_reads {
            self.tail.push(Action::ReadFailed {
                id,
                error: ReadError::Busy {
                    max: self.cfg.max_pending_reads,
                },
            });
            return;
        }
        let ready = self.commit >= self.term_start_index;
        if ready && self.cfg.lease_reads && !self.lease_revoked && self.now_ticks < self.lease_until
        {
            self.stats.lease_reads += 1;
            self.tail.push(Action::ReadReady {
                id,
                index: self.commit,
            });
            return;
        }
        self.pending_reads.push_back(PendingRead {
            id,
            index: self.commit,
            ctx: self.read_ctx + 1,
        });
        self.read_broadcast_needed = true;
    }

    fn check_read_quorum(&mut self) {
        self.scratch.clear();
        if self.membership.voters.contains(&self.id) {
            self.scratch.push(self.read_ctx);
        }
        for (id, pr) in &self.progress {
            if self.membership.voters.contains(id) {
                self.scratch.push(pr.acked_ctx);
            }
        }
        let q = self.membership.quorum();
        if self.scratch.len() < q {
            return;
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        let acked = self.scratch[q - 1];
        if acked <= self.quorum_ctx {
            return;
        }
        self.quorum_ctx = acked;
        while let Some(&(ctx, sent)) = self.hb_rounds.front() {
            if ctx > acked {
                break;
            }
            if ctx == acked && !self.lease_revoked {
                self.lease_until = self.lease_until.max(sent + u64::from(self.cfg.lease_ticks));
            }
            self.hb_rounds.pop_front();
        }
        self.release_reads();
    }

    fn release_reads(&mut self) {
        if self.commit < self.term_start_index {
            return;
        }
        while let Some(r) = self.pending_reads.front() {
            if r.ctx > self.quorum_ctx {
                break;
            }
            let index = r.index.max(self.term_start_index);
            self.tail.push(Action::ReadReady { id: r.id, index });
            self.pending_reads.pop_front();
        }
    }

    // ----- apply, snapshots -------------------------------------------------

    fn emit_apply(&mut self) {
        if self.installing.is_some() {
            return;
        }
        while self.applied < self.commit {
            let hi = self
                .commit
                .min(self.applied + self.cfg.max_apply_entries as u64);
            while let Some(&(idx, t, id)) = self.pending_props.front() {
                if idx > hi {
                    break;
                }
                self.pending_props.pop_front();
                let result = if self.log.term(idx) == Some(t) {
                    Ok(idx)
                } else {
                    Err(ProposalError::Superseded { index: idx })
                };
                self.tail.push(Action::ProposalResult { id, result });
            }
            let entries: Vec<Entry> = self.log.range(self.applied + 1, hi).cloned().collect();
            debug_assert_eq!(
                entries.len() as u64,
                hi - self.applied,
                "committed entries missing from log"
            );
            if entries.is_empty() {
                return;
            }
            self.applied = hi;
            self.tail.push(Action::Apply { entries });
        }
    }

    fn maybe_hint(&mut self) {
        if self.installing.is_some() {
            return;
        }
        let snap = self.snapshot.index;
        let thr = self.cfg.snapshot_hint_threshold_entries;
        if let Some(band) = self.applied.saturating_sub(snap).checked_div(thr)
            && band > self.hinted_band_applied
        {
            self.hinted_band_applied = band;
            self.hint(SnapshotReason::AppliedThreshold);
        }
        let max = self.cfg.max_log_entries;
        if max > 0 {
            let above = self.log.last_index().saturating_sub(snap);
            if above > max {
                let band = above / max;
                if band > self.hinted_band_log {
                    self.hinted_band_log = band;
                    self.hint(SnapshotReason::LogGuardrail);
                }
            }
        }
    }

    fn hint(&mut self, reason: SnapshotReason) {
        if self.snapshot_in_flight {
            return; // coalesced into the snapshot already being taken
        }
        self.snapshot_in_flight = true;
        self.stats.snapshot_hints += 1;
        self.tail.push(Action::SnapshotHint {
            reason,
            applied_index: self.applied,
        });
    }

    fn on_snapshot_created(&mut self, meta: SnapshotMeta) -> Result<(), EngineError> {
        self.snapshot_in_flight = false;
        if meta.index <= self.snapshot.index {
            return Ok(()); // older than what we have; nothing to do
        }
        if meta.index > self.applied {
            return Err(EngineError::Snapshot(format!(
                "snapshot at index {} is beyond the applied index {}",
                meta.index, self.applied
            )));
        }
        if self.log.term(meta.index) != Some(meta.term) {
            return Err(EngineError::Snapshot(format!(
                "snapshot at index {} has term {}, log has {:?}",
                meta.index,
                meta.term,
                self.log.term(meta.index)
            )));
        }
        self.snapshot = meta;
        self.hinted_band_applied = 0;
        self.hinted_band_log = 0;
        self.retarget_unpolled_snapshot_sends();
        let s = self.snapshot.index;
        let margin_floor = s.saturating_sub(self.cfg.log_retention_margin_entries);
        let up_to = if self.role == Role::Leader {
            let needed = self
                .progress
                .values()
                .map(|p| {
                    if p.state == PrState::Snapshot {
                        p.snap_index
                    } else {
                        p.match_index
                    }
                })
                .min()
                .unwrap_or(s);
            margin_floor.max(needed.min(s))
        } else {
            margin_floor
        };
        if up_to > self.log.floor_index() {
            self.compact_to(up_to);
            self.tail.push(Action::CompactLog { up_to });
        }
        Ok(())
    }

    /// A `SendSnapshot` requested since the last poll names the snapshot
    /// that was latest then; the host has just superseded it (and may delete
    /// it). Point it, and the follower's progress, at the new one from byte 0,
    /// so an action always names the host's latest snapshot when handed out.
    fn retarget_unpolled_snapshot_sends(&mut self) {
        let latest = &self.snapshot;
        for a in &mut self.tail {
            if let Action::SendSnapshot { to, meta, offset } = a
                && meta.index < latest.index
            {
                *meta = latest.clone();
                *offset = 0;
                if let Some(pr) = self.progress.get_mut(to)
                    && pr.state == PrState::Snapshot
                {
                    pr.snap_index = latest.index;
                    pr.snap_offset = 0;
                }
            }
        }
    }

    fn compact_to(&mut self, up_to: LogIndex) {
        self.log.compact_to(up_to);
        let mut base = self.base_membership.clone();
        self.conf_entries.retain(|(i, m)| {
            if *i <= up_to {
                base = m.clone();
                false
            } else {
                true
            }
        });
        self.base_membership = base;
    }

    fn on_snapshot_received(&mut self, from: NodeId, term: Term, meta: SnapshotMeta) {
        if term < self.term || self.role == Role::Leader && term == self.term {
            return;
        }
        if term > self.term {
            self.become_follower(term, Some(from));
        }
        self.heard_from_leader(from);
        if self.installing.is_some() {
            return;
        }
        if meta.index <= self.commit {
            let body = MessageBody::AppendEntriesResponse {
                success: true,
                match_index: meta.index,
                hint_index: 0,
                hint_term: None,
            };
            self.send(from, body, true);
            return;
        }
        self.installing = Some(meta.clone());
        self.tail.push(Action::InstallSnapshot { meta });
    }

    fn on_snapshot_installed(&mut self, meta: SnapshotMeta) -> Result<(), EngineError> {
        if self.installing.as_ref() != Some(&meta) {
            return Err(EngineError::Snapshot(format!(
                "SnapshotInstalled for index {} but the pending install is {:?}",
                meta.index,
                self.installing.as_ref().map(|m| m.index)
            )));
        }
        self.installing = None;
        let keep_suffix = self.log.term(meta.index) == Some(meta.term);
        // Resolve proposals the snapshot covers.
        while let Some(&(idx, t, id)) = self.pending_props.front() {
            if idx > meta.index {
                break;
            }
            self.pending_props.pop_front();
            let result = if keep_suffix {
                if self.log.term(idx) == Some(t) {
                    Ok(idx)
                } else {
                    Err(ProposalError::Superseded { index: idx })
                }
            } else {
                Err(ProposalError::OutcomeUnknown { index: idx })
            };
            self.tail.push(Action::ProposalResult { id, result });
        }
        // The host's log restarts above the snapshot (`reset_to_snapshot`).
        // Events stepped since the last poll may have appended, truncated or
        // replaced entries without a batch being cut, so the unwritten range
        // and a pending truncation are both restated relative to the new floor.
        if keep_suffix {
            self.compact_to(meta.index);
            // Unwritten entries at or below the snapshot are covered by it;
            // the ones above it are still to be written.
            self.unstable_from = self.unstable_from.max(meta.index + 1);
            // A truncation not yet handed to the host may reach below the
            // snapshot (an append replaced entries the snapshot now covers):
            // the reset drops those already, and the store refuses to
            // truncate below its floor.
            self.trunc_pending = self.trunc_pending.map(|t| t.max(meta.index + 1));
        } else {
            self.log.reset(meta.index, meta.term);
            self.conf_entries.clear();
            self.base_membership = meta.membership.clone();
            self.trunc_pending = Some(meta.index + 1);
            self.durable_index = meta.index;
            // Everything above the snapshot is gone: whatever is appended from
            // here on is unwritten, even if the discarded log was longer than
            // what an append stepped before the next poll brings.
            self.unstable_from = meta.index + 1;
        }
        // Only what the host holds above the snapshot needs truncating; once
        // the reset runs, it holds the snapshot's index at least.
        self.trunc_pending = self.trunc_pending.filter(|t| *t <= self.host_last);
        self.host_last = self.host_last.max(meta.index);
        self.durable_index = self.durable_index.max(meta.index);
        let new_membership = self
            .conf_entries
            .last()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone());
        if new_membership != self.membership {
            self.membership = new_membership;
            self.on_membership_changed();
        }
        self.commit = self.commit.max(meta.index);
        self.applied = meta.index;
        self.snapshot = meta.clone();
        self.hinted_band_applied = 0;
        self.hinted_band_log = 0;
        self.reset_pending = Some(meta.clone());
        self.hs_dirty = true;
        if let Some(l) = self.leader {
            let body = MessageBody::AppendEntriesResponse {
                success: true,
                match_index: meta.index,
                hint_index: 0,
                hint_term: None,
            };
            self.send(l, body, true);
        }
        Ok(())
    }
}
