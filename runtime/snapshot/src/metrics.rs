//! The transfer metrics (every series carries `node`; the crate docs list them) and the log
//! target.

use std::time::Duration;

use wraft_transport::NodeId;

use crate::TransferError;

/// Log target of every transfer line. It keeps the name it had when the transfer lived in
/// `wraft-node`, so operators' log filters (`RUST_LOG=wraft::snapshot=debug`) still work.
pub(crate) const LOG: &str = "wraft::snapshot";

/// Metric names (all carry `node`; see the crate docs).
pub(crate) struct XferMetrics {
    node: String,
    direction: &'static str,
}

impl XferMetrics {
    pub(crate) fn new(node: NodeId, direction: &'static str) -> Self {
        XferMetrics {
            node: node.to_string(),
            direction,
        }
    }
    pub(crate) fn in_flight(&self) -> metrics::Gauge {
        metrics::gauge!("wraft_snapshot_transfers_in_flight", "node" => self.node.clone(), "direction" => self.direction)
    }
    pub(crate) fn bytes(&self) -> metrics::Counter {
        if self.direction == "send" {
            metrics::counter!("wraft_snapshot_sent_bytes_total", "node" => self.node.clone())
        } else {
            metrics::counter!("wraft_snapshot_received_bytes_total", "node" => self.node.clone())
        }
    }
    pub(crate) fn resume(&self) {
        metrics::counter!("wraft_snapshot_transfer_resumes_total", "node" => self.node.clone(), "direction" => self.direction).increment(1);
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
        metrics::histogram!("wraft_snapshot_transfer_seconds", "node" => self.node.clone(), "direction" => self.direction, "outcome" => outcome).record(d.as_secs_f64());
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
        Err(TransferError::ProgressTimeout { .. }) => "timeout",
        Err(_) => "error",
    }
}
