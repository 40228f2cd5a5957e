//! The transfer metrics (every series carries `node`; the crate docs list them) and the log
//! target.

use std::sync::OnceLock;
use std::time::Duration;

use wraft_transport::NodeId;

use crate::TransferError;
use crate::board::{Direction, Entry, TransferBoard};

/// Log target of every transfer line. It keeps the name it had when the transfer lived in
/// `wraft-node`, so operators' log filters (`RUST_LOG=wraft::snapshot=debug`) still work.
pub(crate) const LOG: &str = "wraft::snapshot";

/// Register node `node`'s transfer counters at zero, for every direction and outcome, so that
/// the first failure is an increase Prometheus sees (`increase()` misses a series that is born
/// at 1). Call once at start.
pub fn register_metrics(node: NodeId) {
    for direction in ["send", "receive"] {
        for outcome in ["ok", "busy", "timeout", "error"] {
            metrics::counter!("wraft_snapshot_transfers_total", "node" => node.to_string(), "direction" => direction, "outcome" => outcome).increment(0);
        }
        metrics::gauge!("wraft_snapshot_transfers_in_flight", "node" => node.to_string(), "direction" => direction).increment(0.0);
        metrics::counter!("wraft_snapshot_transfer_resumes_total", "node" => node.to_string(), "direction" => direction).increment(0);
        metrics::counter!("wraft_snapshot_reused_bytes_total", "node" => node.to_string(), "direction" => direction).increment(0);
    }
    metrics::counter!("wraft_snapshot_checksum_failures_total", "node" => node.to_string())
        .increment(0);
    metrics::counter!("wraft_snapshot_chunks_resent_total", "node" => node.to_string())
        .increment(0);
    metrics::counter!("wraft_snapshot_sent_bytes_total", "node" => node.to_string()).increment(0);
    metrics::counter!("wraft_snapshot_received_bytes_total", "node" => node.to_string())
        .increment(0);
}

/// Metric names (all carry `node`; see the crate docs), and the transfer's place on the
/// node's [`TransferBoard`] once it has begun.
pub(crate) struct XferMetrics {
    node: String,
    direction: Direction,
    entry: OnceLock<Entry>,
}

impl XferMetrics {
    pub(crate) fn new(node: NodeId, direction: Direction) -> Self {
        XferMetrics {
            node: node.to_string(),
            direction,
            entry: OnceLock::new(),
        }
    }
    /// The follower accepted the offer of snapshot `index` (`file_len` bytes) from
    /// `resumed_from`: the transfer goes on `board` until it ends.
    pub(crate) fn begin(
        &self,
        board: &TransferBoard,
        peer: NodeId,
        index: u64,
        file_len: u64,
        resumed_from: u64,
    ) {
        let _ = self
            .entry
            .set(board.begin(self.direction, peer, index, file_len, resumed_from));
        self.progress(peer, resumed_from, file_len);
    }
    pub(crate) fn in_flight(&self) -> metrics::Gauge {
        metrics::gauge!("wraft_snapshot_transfers_in_flight", "node" => self.node.clone(), "direction" => self.direction.as_str())
    }
    pub(crate) fn bytes(&self) -> metrics::Counter {
        if self.direction == Direction::Send {
            metrics::counter!("wraft_snapshot_sent_bytes_total", "node" => self.node.clone())
        } else {
            metrics::counter!("wraft_snapshot_received_bytes_total", "node" => self.node.clone())
        }
    }
    /// Bytes of the file the follower took from its own snapshots instead of the stream
    /// (version 2): not sent (send), copied locally (receive).
    pub(crate) fn reused(&self, bytes: u64) {
        metrics::counter!("wraft_snapshot_reused_bytes_total", "node" => self.node.clone(), "direction" => self.direction.as_str()).increment(bytes);
    }
    /// Bytes of the file a follower read from member `from` instead of the leader (multi-source
    /// catch-up).
    pub(crate) fn member_bytes(&self, from: NodeId, bytes: u64) {
        metrics::counter!("wraft_snapshot_member_bytes_total", "node" => self.node.clone(), "from" => from.to_string()).increment(bytes);
    }
    pub(crate) fn resume(&self) {
        metrics::counter!("wraft_snapshot_transfer_resumes_total", "node" => self.node.clone(), "direction" => self.direction.as_str()).increment(1);
    }
    pub(crate) fn checksum_failure(&self) {
        metrics::counter!("wraft_snapshot_checksum_failures_total", "node" => self.node.clone())
            .increment(1);
    }
    pub(crate) fn chunks_resent(&self, n: u64) {
        metrics::counter!("wraft_snapshot_chunks_resent_total", "node" => self.node.clone())
            .increment(n);
    }
    pub(crate) fn finished(&self, outcome: &'static str, d: Duration) {
        metrics::histogram!("wraft_snapshot_transfer_seconds", "node" => self.node.clone(), "direction" => self.direction.as_str(), "outcome" => outcome).record(d.as_secs_f64());
        metrics::counter!("wraft_snapshot_transfers_total", "node" => self.node.clone(), "direction" => self.direction.as_str(), "outcome" => outcome).increment(1);
    }
    /// The transfer with `peer` moves `file_len` bytes and has `done` of them (durable on the
    /// follower's side for a receive, written to the stream for a send).
    pub(crate) fn progress(&self, peer: NodeId, done: u64, file_len: u64) {
        let peer = peer.to_string();
        metrics::gauge!("wraft_snapshot_transfer_size_bytes", "node" => self.node.clone(), "direction" => self.direction.as_str(), "peer" => peer.clone()).set(file_len as f64);
        metrics::gauge!("wraft_snapshot_transfer_done_bytes", "node" => self.node.clone(), "direction" => self.direction.as_str(), "peer" => peer).set(done as f64);
        if let Some(e) = self.entry.get() {
            e.done(done);
        }
    }
}

/// Keeps `wraft_snapshot_transfers_in_flight` up while alive.
pub(crate) struct InFlight(metrics::Gauge);

impl InFlight {
    pub(crate) fn new(g: metrics::Gauge) -> Self {
        g.increment(1.0);
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

pub(crate) fn outcome_label<T>(r: &Result<T, TransferError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(TransferError::Busy { .. }) => "busy",
        Err(TransferError::ProgressTimeout { .. } | TransferError::PeerSilent { .. }) => "timeout",
        Err(_) => "error",
    }
}
