//! Prometheus metrics. Names are stable; every series carries a `node` label
//! so several in-process nodes (the demo, tests) stay apart.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `wraft_raft_term` | gauge | current term |
//! | `wraft_raft_is_leader` | gauge | 1 on the leader |
//! | `wraft_raft_role_changes_total` | counter | role transitions, by `role` |
//! | `wraft_raft_commit_index` / `wraft_raft_last_index` | gauge | log positions |
//! | `wraft_apply_applied_index` | gauge | highest applied index |
//! | `wraft_proposal_commit_seconds` | histogram | propose → committed, on the leader |
//! | `wraft_apply_batch_seconds` | histogram | one guest `apply-batch` call |
//! | `wraft_apply_entries_total` | counter | entries applied to guests |
//! | `wraft_pending_proposals` / `wraft_pending_reads` | gauge | driver queue depths |
//! | `wraft_apply_backlog_entries` | gauge | committed but not yet applied |
//! | `wraft_persist_batches_total` / `wraft_persist_entries_total` | counter | group-commit submissions |
//! | `wraft_guest_traps_total` | counter | guest traps, by `machine` |
//! | `wraft_deploys_total` | counter | deploys and upgrades applied, by `outcome` |
//! | `wraft_transport_dropped_msgs_total` | gauge | raft messages dropped by full or down peer queues |
//! | `wraft_snapshot_created_total` | counter | local snapshots, by `outcome` (ok / failed) |
//! | `wraft_snapshot_create_seconds` | histogram | cut → durable file, local snapshots |
//! | `wraft_snapshot_bytes` | gauge | size of the newest local snapshot file |
//! | `wraft_snapshot_index` | gauge | index of the newest snapshot (created or installed) |
//! | `wraft_snapshot_install_seconds` | histogram | follower: restore + swap of a received snapshot |
//! | `wraft_snapshot_installs_total` | counter | follower installs, by `outcome` |
//! | `wraft_snapshot_transfer_*` | various | InstallSnapshot streams (see the `wraft-snapshot` crate docs) |

use std::net::SocketAddr;
use std::sync::OnceLock;

static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Serve `/metrics` on `addr` (once per process; later calls are no-ops and
/// return the first outcome). Must be called inside a tokio runtime.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    INSTALLED
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
        })
        .clone()
}

/// Handles for the driver's metrics, created once per node.
pub(crate) struct DriverMetrics {
    pub term: metrics::Gauge,
    pub is_leader: metrics::Gauge,
    pub commit_index: metrics::Gauge,
    pub last_index: metrics::Gauge,
    pub pending_proposals: metrics::Gauge,
    pub pending_reads: metrics::Gauge,
    pub apply_backlog: metrics::Gauge,
    pub transport_dropped: metrics::Gauge,
    pub proposal_commit_seconds: metrics::Histogram,
    pub persist_batches: metrics::Counter,
    pub persist_entries: metrics::Counter,
    pub snapshot_bytes: metrics::Gauge,
    pub snapshot_index: metrics::Gauge,
    node: String,
}

impl DriverMetrics {
    pub fn new(node: u64) -> Self {
        let n = node.to_string();
        DriverMetrics {
            term: metrics::gauge!("wraft_raft_term", "node" => n.clone()),
            is_leader: metrics::gauge!("wraft_raft_is_leader", "node" => n.clone()),
            commit_index: metrics::gauge!("wraft_raft_commit_index", "node" => n.clone()),
            last_index: metrics::gauge!("wraft_raft_last_index", "node" => n.clone()),
            pending_proposals: metrics::gauge!("wraft_pending_proposals", "node" => n.clone()),
            pending_reads: metrics::gauge!("wraft_pending_reads", "node" => n.clone()),
            apply_backlog: metrics::gauge!("wraft_apply_backlog_entries", "node" => n.clone()),
            transport_dropped: metrics::gauge!("wraft_transport_dropped_msgs_total", "node" => n.clone()),
            proposal_commit_seconds: metrics::histogram!("wraft_proposal_commit_seconds", "node" => n.clone()),
            persist_batches: metrics::counter!("wraft_persist_batches_total", "node" => n.clone()),
            persist_entries: metrics::counter!("wraft_persist_entries_total", "node" => n.clone()),
            snapshot_bytes: metrics::gauge!("wraft_snapshot_bytes", "node" => n.clone()),
            snapshot_index: metrics::gauge!("wraft_snapshot_index", "node" => n.clone()),
            node: n,
        }
    }

    pub fn snapshot_created(&self, outcome: &'static str) {
        metrics::counter!("wraft_snapshot_created_total", "node" => self.node.clone(), "outcome" => outcome)
            .increment(1);
    }

    pub fn snapshot_installed(&self, outcome: &'static str) {
        metrics::counter!("wraft_snapshot_installs_total", "node" => self.node.clone(), "outcome" => outcome)
            .increment(1);
    }

    pub fn role_change(&self, role: &'static str) {
        metrics::counter!("wraft_raft_role_changes_total", "node" => self.node.clone(), "role" => role)
            .increment(1);
    }
}

/// Handles for the applier's metrics.
pub(crate) struct ApplyMetrics {
    pub applied_index: metrics::Gauge,
    pub install_seconds: metrics::Histogram,
    pub batch_seconds: metrics::Histogram,
    pub entries: metrics::Counter,
    /// 1 while a node-local failure keeps this node from applying (see `node::apply`).
    pub halted: metrics::Gauge,
    node: String,
}

impl ApplyMetrics {
    pub fn new(node: u64) -> Self {
        let n = node.to_string();
        ApplyMetrics {
            applied_index: metrics::gauge!("wraft_apply_applied_index", "node" => n.clone()),
            install_seconds: metrics::histogram!("wraft_snapshot_install_seconds", "node" => n.clone()),
            batch_seconds: metrics::histogram!("wraft_apply_batch_seconds", "node" => n.clone()),
            entries: metrics::counter!("wraft_apply_entries_total", "node" => n.clone()),
            halted: metrics::gauge!("wraft_apply_halted", "node" => n.clone()),
            node: n,
        }
    }

    pub fn trap(&self, machine: &str) {
        metrics::counter!("wraft_guest_traps_total", "node" => self.node.clone(), "machine" => machine.to_owned())
            .increment(1);
    }

    pub fn deploy(&self, outcome: &'static str) {
        metrics::counter!("wraft_deploys_total", "node" => self.node.clone(), "outcome" => outcome)
            .increment(1);
    }
}
