//! Engine configuration: every bound is named with its unit.

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Engine configuration. Time is measured in *ticks* (one [`crate::Event::Tick`]);
/// the host decides how long a tick is (typically 10–100 ms).
///
/// Call [`Config::validate`] (done by [`crate::Engine::new`]) before use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Seed for the engine's private PRNG (randomized election timeouts).
    /// Use a different value per node and per restart.
    pub seed: u64,
    /// Leader heartbeat interval, ticks. Default 1.
    pub heartbeat_interval_ticks: u32,
    /// Lower bound of the randomized election timeout, ticks. Also the leader
    /// stickiness window (votes are refused this long after hearing from a
    /// leader) and the check-quorum period. Default 10.
    pub election_timeout_min_ticks: u32,
    /// Upper bound (exclusive) of the randomized election timeout, ticks. Default 20.
    pub election_timeout_max_ticks: u32,
    /// Run a pre-vote round before incrementing the term (thesis §9.6). Default true.
    pub pre_vote: bool,
    /// Leader steps down when it has not heard from a quorum for
    /// `election_timeout_min_ticks`. Default true. Required for lease reads.
    pub check_quorum: bool,
    /// Serve reads from a leader lease instead of a ReadIndex round when valid. Default false.
    pub lease_reads: bool,
    /// Lease length after a heartbeat round is acknowledged by a quorum,
    /// counted from when the round was *sent*, ticks. Must satisfy
    /// `(lease_ticks + 1) * (100 + clock_drift_bound_percent) <= (election_timeout_min_ticks - 1) * 100`.
    /// Default 7.
    pub lease_ticks: u32,
    /// Largest relative tick-rate difference between any two nodes, percent. Default 10.
    pub clock_drift_bound_percent: u32,
    /// Maximum AppendEntries messages in flight to one follower (pipelining window), messages. Default 64.
    pub inflight_append_msgs_max: usize,
    /// Maximum entries per AppendEntries message, entries. Default 4096.
    pub append_entries_max: usize,
    /// Soft cap on entry payload per AppendEntries, bytes (at least one entry is always sent). Default 1 MiB.
    pub append_bytes_max: usize,
    /// Maximum proposals accepted but not yet committed; beyond it proposals get `Busy`. Default 65536.
    pub pending_proposals_max: usize,
    /// Maximum reads waiting for a ReadIndex round; beyond it reads get `Busy`. Default 65536.
    pub pending_reads_max: usize,
    /// Largest command payload accepted by `Propose`, bytes. Default 8 MiB.
    pub command_bytes_max: usize,
    /// Maximum entries handed out in one `Apply` action, entries. Default 4096.
    pub apply_entries_max: usize,
    /// A follower in pipelined mode with unacknowledged appends and no progress
    /// for this long is reset to probing (lost messages), ticks. Default 5.
    pub append_retransmit_ticks: u32,
    /// A snapshot transfer with no reported progress for this long is restarted
    /// (resuming from the last durable offset), ticks. Default 50.
    pub snapshot_transfer_timeout_ticks: u32,
    /// A leadership transfer that has not completed within this is aborted, ticks. Default 20.
    pub transfer_timeout_ticks: u32,
    /// Hint a snapshot each time this many entries have been applied past the
    /// latest snapshot, entries (0 disables). Default 10000.
    pub snapshot_hint_threshold_entries: u64,
    /// Live-log guardrail: hint a snapshot when more than this many entries sit
    /// above the latest snapshot, entries (0 disables). Default 100000.
    pub log_entries_max: u64,
    /// Entries kept below a new snapshot for followers that are catching up
    /// from the log, entries. Default 1024.
    pub log_retention_margin_entries: u64,
    /// A learner may be promoted once its match index is within this many
    /// entries of the leader's commit index, entries. Default 0 (fully caught up).
    pub learner_promote_lag_entries: u64,
}

impl Config {
    /// A configuration with the documented defaults for node `id`.
    pub fn new(id: NodeId, seed: u64) -> Config {
        Config {
            id,
            seed,
            heartbeat_interval_ticks: 1,
            election_timeout_min_ticks: 10,
            election_timeout_max_ticks: 20,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            lease_ticks: 7,
            clock_drift_bound_percent: 10,
            inflight_append_msgs_max: 64,
            append_entries_max: 4096,
            append_bytes_max: 1 << 20,
            pending_proposals_max: 65536,
            pending_reads_max: 65536,
            command_bytes_max: 8 << 20,
            apply_entries_max: 4096,
            append_retransmit_ticks: 5,
            snapshot_transfer_timeout_ticks: 50,
            transfer_timeout_ticks: 20,
            snapshot_hint_threshold_entries: 10_000,
            log_entries_max: 100_000,
            log_retention_margin_entries: 1024,
            learner_promote_lag_entries: 0,
        }
    }

    /// Checks every bound and the relations between them.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending field, its value and what was expected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, found: u64, expected: String| {
            Err(ConfigError {
                field,
                found,
                expected,
            })
        };
        if self.id == 0 {
            return err("id", 0, "a non-zero node id".into());
        }
        if self.heartbeat_interval_ticks == 0 {
            return err("heartbeat_interval_ticks", 0, "≥ 1".into());
        }
        if self.election_timeout_min_ticks <= self.heartbeat_interval_ticks.saturating_mul(2) {
            return err(
                "election_timeout_min_ticks",
                self.election_timeout_min_ticks.into(),
                format!(
                    "> 2 × heartbeat_interval_ticks ({})",
                    self.heartbeat_interval_ticks
                ),
            );
        }
        if self.election_timeout_max_ticks <= self.election_timeout_min_ticks {
            return err(
                "election_timeout_max_ticks",
                self.election_timeout_max_ticks.into(),
                format!(
                    "> election_timeout_min_ticks ({})",
                    self.election_timeout_min_ticks
                ),
            );
        }
        if self.lease_reads {
            if !self.check_quorum {
                return err("check_quorum", 0, "true when lease_reads is on".into());
            }
            if self.clock_drift_bound_percent >= 100 {
                return err(
                    "clock_drift_bound_percent",
                    self.clock_drift_bound_percent.into(),
                    "< 100".into(),
                );
            }
            let lhs = (u64::from(self.lease_ticks) + 1)
                * (100 + u64::from(self.clock_drift_bound_percent));
            let rhs = (u64::from(self.election_timeout_min_ticks) - 1) * 100;
            if self.lease_ticks == 0 || lhs > rhs {
                return err(
                    "lease_ticks",
                    self.lease_ticks.into(),
                    format!(
                        "1 ≤ lease_ticks and (lease_ticks + 1) × (100 + clock_drift_bound_percent {}) ≤ \
                         (election_timeout_min_ticks {} − 1) × 100",
                        self.clock_drift_bound_percent, self.election_timeout_min_ticks
                    ),
                );
            }
        }
        let nonzero: [(&'static str, u64); 9] = [
            (
                "inflight_append_msgs_max",
                self.inflight_append_msgs_max as u64,
            ),
            ("append_entries_max", self.append_entries_max as u64),
            ("append_bytes_max", self.append_bytes_max as u64),
            ("pending_proposals_max", self.pending_proposals_max as u64),
            ("pending_reads_max", self.pending_reads_max as u64),
            ("command_bytes_max", self.command_bytes_max as u64),
            ("apply_entries_max", self.apply_entries_max as u64),
            (
                "append_retransmit_ticks",
                self.append_retransmit_ticks.into(),
            ),
            (
                "snapshot_transfer_timeout_ticks",
                self.snapshot_transfer_timeout_ticks.into(),
            ),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return err(field, 0, "≥ 1".into());
            }
        }
        if self.transfer_timeout_ticks == 0 {
            return err("transfer_timeout_ticks", 0, "≥ 1".into());
        }
        Ok(())
    }
}

/// A configuration value out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid engine config: {field} = {found}, expected {expected}")]
pub struct ConfigError {
    /// Field name as in [`Config`].
    pub field: &'static str,
    /// Value found (booleans as 0/1).
    pub found: u64,
    /// What would have been accepted.
    pub expected: String,
}
