//! The Raft state machine: [`Engine::step`] takes events, [`Engine::poll_actions`]
//! hands out actions. No I/O, no clock, no threads.
//!
//! One struct, [`Engine`], whose behaviour is written in one file per concern,
//! each an `impl Engine` block (a reader who wants "how does commit work?"
//! opens `replication.rs`):
//!
//! | file | concern |
//! |---|---|
//! | `event.rs`, `action.rs`, `error.rs` | what the host and the engine exchange |
//! | `mod.rs` | the struct, construction from recovered state, queries, `step`, `poll_actions`, time |
//! | `messages.rs` | the term rules every incoming message passes, then dispatch |
//! | `election.rs` | election timer, pre-vote, votes, stickiness, check-quorum, leadership transfer |
//! | `replication.rs` | appends and their acknowledgements (both ends), commit |
//! | `leader.rs` | the state only a leader holds |
//! | `progress.rs` | what the leader knows of one follower (Probe / Replicate / Snapshot) |
//! | `reads.rs` | heartbeat rounds, ReadIndex and leases |
//! | `membership.rs` | membership changes as log entries |
//! | `proposals.rs` | proposals from admission to outcome, handing out committed entries |
//! | `snapshot.rs` | snapshot hints, creation, streaming to followers, installs |
//! | `invariants.rs` | `check_invariants`: the invariants stated on the fields, checked |
//! | `persist.rs` | what the host must write next and what it has made durable |
//! | `outbox.rs` | outgoing messages, held until the writes they reveal are durable |

mod action;
mod election;
mod error;
mod event;
mod invariants;
mod leader;
mod membership;
mod messages;
mod outbox;
mod persist;
mod progress;
mod proposals;
pub(crate) mod quorum;
mod reads;
mod replication;
mod snapshot;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::log::RaftLog;
use crate::types::*;

pub use action::{Action, PersistBatch, SnapshotReason};
use election::{CandidateState, Transfer};
pub use error::{EngineError, ProposalError, ReadError};
pub use event::{Event, InitialState};
use leader::LeaderState;
use outbox::Outbox;
use persist::PersistTracker;
use progress::{PrState, Progress};
use quorum::VoteResult;
use reads::PendingRead;

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
///
/// The invariants stated on the fields are checked by
/// [`Engine::check_invariants`].
pub struct Engine {
    /// The configuration, validated at construction; never changes.
    cfg: Config,
    /// This node's id (`cfg.id`).
    id: NodeId,
    /// The engine's only source of randomness (election timeouts), seeded
    /// from `cfg.seed` and `id`.
    rng: fastrand::Rng,

    // ----- Raft state
    /// Current term. Never decreases; at least the snapshot's term, and at
    /// least the term of every entry in the log.
    term: Term,
    /// The candidate this node voted for in `term` (cleared when the term grows).
    vote: Option<NodeId>,
    /// Highest index known to be committed. Never decreases;
    /// `applied <= commit <= log.last_index()`.
    commit: LogIndex,
    /// Role in `term`.
    role: Role,
    /// The leader of `term`, if known (this node while it leads; `None`
    /// while campaigning).
    leader_id: Option<NodeId>,
    /// The log above the compaction floor, plus the floor's index and term:
    /// contiguous, terms non-decreasing; `floor <= snapshot.index`.
    log: RaftLog,
    /// Highest index handed out in [`Action::Apply`] (or restored by a
    /// snapshot): `snapshot.index <= applied <= commit`.
    applied: LogIndex,
    /// Proposals this node accepted as leader and has not resolved, as
    /// `(index, term, id)`, at most
    /// `pending_proposals_max`. They survive losing the leadership: each is
    /// decided when its index is applied (or a snapshot covers it), from the
    /// front. Kept in index order (then term): a later leadership may start
    /// below proposals of an earlier one whose entries were truncated, and its
    /// own are decided first all the same. Every one is above `applied`.
    pending_props: VecDeque<(LogIndex, Term, ProposalId)>,

    // ----- membership
    /// The membership in force at the log floor (the snapshot's, or the
    /// last configuration entry compacted away).
    base_membership: Membership,
    /// Every configuration entry in the log above the floor, as `(index,
    /// resulting membership)`, indexes increasing. The effective membership
    /// is the last of these, else `base_membership` (a configuration takes
    /// effect on append); it is not stored separately, so it cannot disagree.
    conf_entries: Vec<(LogIndex, Membership)>,

    // ----- snapshots
    /// The latest snapshot the host holds (created here or installed). Its
    /// index never decreases and is at most `applied`.
    snapshot: SnapshotMeta,
    /// The snapshot the host is installing ([`Action::InstallSnapshot`]
    /// handed out, not yet answered). Nothing is applied meanwhile.
    installing: Option<SnapshotMeta>,
    /// A [`Action::SnapshotHint`] is out and unanswered: further hints are
    /// coalesced into it.
    snapshot_in_flight: bool,
    /// The applied-threshold band last hinted for (`(applied -
    /// snapshot.index) / snapshot_hint_threshold_entries`); 0 after a new snapshot.
    hinted_band_applied: u64,
    /// The log-guardrail band last hinted for (`(last - snapshot.index) /
    /// log_entries_max`); 0 after a new snapshot.
    hinted_band_log: u64,

    // ----- time
    /// Ticks stepped since construction: the clock leases are measured on.
    now_ticks: u64,
    /// Ticks since the election timer was reset. Below `randomized_timeout`
    /// when not leading (a leader does not run the timer).
    election_elapsed: u32,
    /// The current election timeout, drawn from `election_timeout_min_ticks
    /// .. election_timeout_max_ticks` at each reset.
    randomized_timeout: u32,
    /// Ticks since a leader was last heard from (0 when this node became
    /// leader). Below `election_timeout_min_ticks` the node is sticky: it
    /// refuses (pre-)votes that are not for a leadership transfer.
    ticks_since_leader_contact: u32,

    // ----- role-specific state
    /// Present exactly while the role is [`Role::PreCandidate`] or
    /// [`Role::Candidate`]: the answers collected.
    candidate: Option<CandidateState>,
    /// Present exactly while the role is [`Role::Leader`]: everything that
    /// only means something while leading. Stepping down drops it.
    leader: Option<LeaderState>,
    /// Heartbeat round counter (the ReadIndex context). Grows across terms,
    /// so this node never reuses a context.
    read_ctx: u64,

    // ----- host interface
    /// What has been handed to the host to write and what is durable.
    persist: PersistTracker,
    /// Actions for the next poll, including messages held until durable.
    outbox: Outbox,
    /// The `(role, term, leader)` last reported in [`Action::RoleChanged`].
    last_role_report: (Role, Term, Option<NodeId>),
    /// Working space for quorum arithmetic (kept to avoid an allocation per ack).
    scratch: Vec<u64>,
    /// Counters.
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("role", &self.role)
            .field("term", &self.term)
            .field("leader", &self.leader_id)
            .field("commit", &self.commit)
            .field("last_index", &self.log.last_index())
            .finish_non_exhaustive()
    }
}

/// The log as `Engine::new` rebuilds it from the recovered snapshot and
/// entries, with what the first persist batch must restate.
struct RecoveredLog {
    log: RaftLog,
    conf_entries: Vec<(LogIndex, Membership)>,
    reset_pending: Option<SnapshotMeta>,
    trunc_pending: Option<LogIndex>,
}

impl RecoveredLog {
    /// Entries at or below the snapshot are dropped (a retention margin);
    /// if the snapshot's own entry has another term the whole log is stale
    /// and discarded. The rest must be contiguous with non-decreasing terms.
    fn rebuild(snap: &SnapshotMeta, entries: Vec<Entry>) -> Result<RecoveredLog, EngineError> {
        let recovered_last = entries.last().map(|e| e.index);
        let mut log = RaftLog::new(snap.index, snap.term);
        let mut conf_entries = Vec::new();
        let mut discard_all = false;
        for e in entries {
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
                conf_entries.push((e.index, cc.membership.clone()));
            }
            log.append(e);
        }
        let mut reset_pending = None;
        let mut trunc_pending = None;
        if discard_all {
            log.reset(snap.index, snap.term);
            conf_entries.clear();
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
        Ok(RecoveredLog {
            log,
            conf_entries,
            reset_pending,
            trunc_pending,
        })
    }
}

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
        let RecoveredLog {
            log,
            conf_entries,
            reset_pending,
            trunc_pending,
        } = RecoveredLog::rebuild(&snap, init.entries)?;
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
            leader_id: None,
            log,
            applied: snap.index,
            pending_props: VecDeque::new(),
            base_membership: snap.membership.clone(),
            conf_entries,
            snapshot: snap.clone(),
            installing: None,
            snapshot_in_flight: false,
            hinted_band_applied: 0,
            hinted_band_log: 0,
            now_ticks: 0,
            election_elapsed: 0,
            randomized_timeout,
            ticks_since_leader_contact: 0,
            candidate: None,
            leader: None,
            read_ctx: 0,
            persist: PersistTracker {
                unstable_from: last + 1,
                host_last,
                trunc_pending,
                reset_pending,
                hs_dirty: term != hs.term,
                hs_seq: 0,
                persisted_commit: hs.commit,
                persist_seq: 0,
                durable_seq: 0,
                inflight: VecDeque::new(),
                durable_index: last,
            },
            outbox: Outbox::default(),
            last_role_report: (Role::Follower, term, None),
            scratch: Vec::new(),
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
        self.leader_id
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
        membership::effective(&self.conf_entries, &self.base_membership)
    }

    /// Latest snapshot known to the engine (created or installed).
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// Highest index of this node's own log that is durable.
    pub fn durable_index(&self) -> LogIndex {
        self.persist.durable_index
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
        self.leader
            .as_ref()?
            .progress
            .get(&peer)
            .map(|p| p.match_index)
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
            } => self.on_snapshot_progress(from, index, durable_offset),
            Event::SnapshotTransferFailed { to, index } => {
                self.on_snapshot_transfer_failed(to, index)
            }
            Event::SnapshotReceived { from, term, meta } => {
                self.on_snapshot_received(from, term, meta)
            }
            Event::SnapshotInstalled { meta } => return self.on_snapshot_installed(meta),
            Event::SnapshotInstallFailed { meta } => self.on_snapshot_install_failed(&meta),
        }
        Ok(())
    }

    /// Moves all pending actions into `out` (appending), in execution order:
    /// immediate sends, one [`Action::Persist`] (if anything changed), sends that
    /// depend on it, then applies, results and snapshot/compaction actions.
    pub fn poll_actions(&mut self, out: &mut Vec<Action>) {
        if let Some(lead) = &self.leader {
            if lead.read_broadcast_needed {
                self.broadcast_heartbeat();
            }
            self.broadcast_append();
        }
        self.report_role();
        out.append(&mut self.outbox.sends);
        if let Some(b) = self.take_persist_batch() {
            out.push(Action::Persist(b));
        }
        self.emit_apply();
        self.maybe_hint();
        out.append(&mut self.outbox.actions);
    }

    // ----- time ------------------------------------------------------------

    fn tick(&mut self) {
        self.now_ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
            return;
        }
        self.tick_election_timer();
    }

    /// A leader's tick: heartbeat, check-quorum (which may end the
    /// leadership), transfer timeout, then the per-follower timers.
    fn tick_leader(&mut self) {
        self.tick_heartbeat();
        if !self.tick_check_quorum() {
            return;
        }
        self.tick_transfer();
        self.tick_progress();
    }
}
