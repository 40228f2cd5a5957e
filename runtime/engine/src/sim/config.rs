//! Simulation parameters, and what a run reports.

use super::TICK;
use crate::*;

/// Simulation parameters. [`SimConfig::new`] gives a faulty 5-voter schedule.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed for everything random.
    pub seed: u64,
    /// Initial voters (ids `1..=voters`).
    pub voters: usize,
    /// Extra nodes, not members at start, available for AddLearner.
    pub spares: usize,
    /// Length of the random (faulty) phase, nominal ticks.
    pub duration_ticks: u64,
    /// Concurrent clients (each with one outstanding operation).
    pub clients: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Inject crashes/restarts.
    pub crashes: bool,
    /// Inject partitions (symmetric and asymmetric).
    pub partitions: bool,
    /// Message drop probability, per mille.
    pub drop_per_mille: u32,
    /// Message duplication probability, per mille.
    pub dup_per_mille: u32,
    /// Inject membership changes.
    pub membership_changes: bool,
    /// Inject leadership transfers.
    pub transfers: bool,
    /// Inject snapshot-transfer interruptions.
    pub snapshot_aborts: bool,
    /// Engine option.
    pub pre_vote: bool,
    /// Engine option.
    pub lease_reads: bool,
    /// Engine `snapshot_hint_threshold_entries`.
    pub snapshot_threshold: u64,
    /// Engine `log_retention_margin_entries`.
    pub retention_margin: u64,
    /// Snapshot stream chunk size, bytes.
    pub snapshot_chunk_bytes: u64,
    /// Probability, per mille, that a host defers its poll after stepping an
    /// event: everything that reaches the node until the poll runs (within
    /// `multi_step_poll_delay_max`, virtual time units) is stepped before one
    /// `poll_actions`. 0 polls after every event (and draws no randomness for it).
    pub multi_step_per_mille: u32,
    /// Longest deferral of a poll, virtual time units ([`TICK`] per tick).
    pub multi_step_poll_delay_max: u64,
    /// After healing, a leader must emerge and all operations finish within this, ticks.
    pub liveness_bound_ticks: u64,
    /// Search budget for the linearizability checker, steps per key.
    pub lincheck_max_steps: u64,
    /// Most client sessions a replica's table keeps (LRU eviction past it).
    pub session_cap: usize,
    /// A session idle this long in entry time is expired (entry time is the
    /// proposing leader's clock, in virtual ticks).
    pub session_expiry_ms: u64,
    /// Per mille of completed writes after which the client abandons its
    /// session and opens a new one for its next write (short-lived clients).
    pub session_churn_per_mille: u32,
    /// Leaders' clocks jump forward and back (entry timestamps disagree
    /// between leaders; a jump past the expiry expires every session).
    pub clock_jumps: bool,
    /// Replicas end apply batches at random points inside each `Apply`, so
    /// no two replicas (nor one replica across restarts) cut them alike.
    pub batch_cuts: bool,
}

impl SimConfig {
    /// All faults on, 5 voters + 2 spares, 400 ticks.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            voters: 5,
            spares: 2,
            duration_ticks: 400,
            clients: 4,
            keys: 3,
            crashes: true,
            partitions: true,
            drop_per_mille: 30,
            dup_per_mille: 20,
            membership_changes: true,
            transfers: true,
            snapshot_aborts: true,
            pre_vote: true,
            lease_reads: false,
            snapshot_threshold: 20,
            retention_margin: 5,
            snapshot_chunk_bytes: 64,
            multi_step_per_mille: 200,
            multi_step_poll_delay_max: TICK / 2,
            liveness_bound_ticks: 400,
            lincheck_max_steps: 20_000_000,
            session_cap: 6,
            session_expiry_ms: 60,
            session_churn_per_mille: 150,
            clock_jumps: true,
            batch_cuts: true,
        }
    }
}

/// What a finished run observed.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Events processed.
    pub events: u64,
    /// Client operations completed with an answer.
    pub ops_completed: u64,
    /// Client operations left with an unknown outcome.
    pub ops_unknown: u64,
    /// Highest committed index seen.
    pub max_commit: LogIndex,
    /// Highest term seen.
    pub max_term: Term,
    /// Snapshots installed on followers.
    pub snapshots_installed: u64,
    /// Snapshot chunks delivered.
    pub chunks_delivered: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Membership changes committed (applied by the first node).
    pub conf_changes_applied: u64,
    /// Leadership transfers requested.
    pub transfers: u64,
    /// Duplicate client commands suppressed by the session table.
    pub duplicates_suppressed: u64,
    /// Commands refused because their session was unknown (expired or evicted).
    pub unknown_sessions: u64,
    /// Client sessions opened through the log.
    pub sessions_opened: u64,
    /// Reads served from a lease.
    pub lease_reads: u64,
    /// Polls that collected the actions of two or more stepped events.
    pub multi_event_polls: u64,
}

/// A violated property, with the seed to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// Seed of the run.
    pub seed: u64,
    /// Virtual time of the failure.
    pub time: u64,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} at t={}: {}", self.seed, self.time, self.message)
    }
}
