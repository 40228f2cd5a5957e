//! Why a proposal or a read was refused, and host misuse of the engine.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::types::*;

/// Why a proposal was not committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposalError {
    /// This node is not the leader.
    #[error("not the leader; try node {leader_hint:?}")]
    NotLeader {
        /// Best guess of the current leader.
        leader_hint: Option<NodeId>,
    },
    /// `pending_proposals_max` reached; retry later.
    #[error("busy: {pending} proposals pending, pending_proposals_max = {max}")]
    Busy {
        /// Proposals pending.
        pending: usize,
        /// Configured bound.
        max: usize,
    },
    /// Command larger than `command_bytes_max`.
    #[error("command is {bytes} bytes, command_bytes_max = {max}")]
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
    /// `pending_reads_max` reached.
    #[error("busy: pending_reads_max = {max} reached")]
    Busy {
        /// Configured bound.
        max: usize,
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
