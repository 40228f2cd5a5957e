//! Prometheus metrics. Names are stable; every series carries a `node` label
//! so several in-process nodes (the demo, tests) stay apart.
//!
//! The registry is process-wide ([`install`], once per process); each node serves it, with its
//! own `/livez` and `/readyz`, on its own `node.metrics_listen` (see `health`).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `wraft_build_info` | gauge | 1, with the `version` of the `wraft` build |
//! | `wraft_raft_term` | gauge | current term |
//! | `wraft_raft_is_leader` | gauge | 1 on the leader |
//! | `wraft_raft_has_leader` | gauge | 1 while this node knows a leader |
//! | `wraft_raft_leader_changes_total` | counter | times this node saw a new leader |
//! | `wraft_raft_role_changes_total` | counter | role transitions, by `role` |
//! | `wraft_raft_commit_index` / `wraft_raft_last_index` | gauge | log positions |
//! | `wraft_raft_peer_lag_entries` | gauge | leader only: entries a `peer` is behind the leader's last index (0 elsewhere) |
//! | `wraft_apply_applied_index` | gauge | highest applied index |
//! | `wraft_apply_halted` | gauge | 1 while a node-local failure keeps this node from applying |
//! | `wraft_machine_healthy` | gauge | 1 while `machine`'s instance is healthy on this node |
//! | `wraft_proposal_commit_seconds` | histogram | propose → committed, on the leader |
//! | `wraft_apply_batch_seconds` | histogram | one guest `apply-batch` call |
//! | `wraft_apply_entries_total` | counter | entries applied to guests |
//! | `wraft_pending_proposals` / `wraft_pending_reads` | gauge | driver queue depths |
//! | `wraft_apply_backlog_entries` | gauge | committed but not yet applied |
//! | `wraft_persist_batches_total` / `wraft_persist_entries_total` | counter | group-commit submissions |
//! | `wraft_storage_fsync_seconds` | histogram | one `fdatasync` of the log writer |
//! | `wraft_storage_disk_free_bytes` / `wraft_storage_disk_size_bytes` | gauge | space available to the node / size of the file system holding `node.data_dir` |
//! | `wraft_client_requests_total` | counter | client requests answered, by `request` kind and `outcome` (`ok` or the error kind) |
//! | `wraft_client_request_seconds` | histogram | a client request's time in the node, by `request` kind |
//! | `wraft_client_requests_in_flight` | gauge | client requests being served, until their answers are written (at most 16,384; past it, `Busy`) |
//! | `wraft_watch_history_entries` / `wraft_watch_history_bytes` | gauge | results held for watch subscribers (`node.watch_history_*_max`) |
//! | `wraft_watch_history_evicted_total` | counter | results that fell out of the watch history |
//! | `wraft_watch_subscriptions` | gauge | live watch subscriptions |
//! | `wraft_watch_compacted_total` | counter | watches answered "compacted" (asked for, or fell behind, results no longer held) |
//! | `wraft_guest_traps_total` | counter | guest traps, by `machine` |
//! | `wraft_deploys_total` | counter | deploys and upgrades applied, by `outcome` |
//! | `wraft_deploys_placed_total` | counter | leader: deploys about to be proposed, by `placement` (`by_hash`; `in_log`: a member of an older or unknown version) |
//! | `wraft_module_bytes_total` | counter | module bytes between members, by `direction` (`pushed`, `received`, `fetched`, `served`) |
//! | `wraft_module_store_bytes` / `wraft_module_store_modules` | gauge | what the node's module store (`DIR/module-store`) holds |
//! | `wraft_transport_dropped_msgs_total` | counter | raft messages dropped by full or down peer queues |
//! | `wraft_snapshot_created_total` | counter | local snapshots, by `outcome` (ok / failed) and `from` (live / shadow: `snapshot.follower_export`) |
//! | `wraft_snapshot_create_seconds` | histogram | cut → durable file, local snapshots |
//! | `wraft_snapshot_bytes` | gauge | size of the newest local snapshot file |
//! | `wraft_snapshot_index` | gauge | index of the newest snapshot (created or installed) |
//! | `wraft_snapshot_install_seconds` | histogram | follower: restore + swap of a received snapshot |
//! | `wraft_snapshot_installs_total` | counter | follower installs, by `outcome` |
//! | `wraft_snapshot_transfers_total` | counter | InstallSnapshot streams, by `direction` and `outcome` |
//! | `wraft_snapshot_transfer_size_bytes` / `wraft_snapshot_transfer_done_bytes` | gauge | progress of the newest transfer with each `peer`, by `direction` |
//! | `wraft_snapshot_transfer_*` | various | the rest of the InstallSnapshot streams (see the `wraft-snapshot` crate docs) |
//!
//! Every `*_seconds` metric is a Prometheus histogram (buckets: [`LATENCY_BUCKETS`] and the
//! per-metric sets below), so it can be aggregated across nodes.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of every `*_seconds` histogram without its own set: 100 µs … 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of `wraft_apply_batch_seconds`: a guest call, 10 µs … 1 s.
pub const APPLY_BATCH_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];
/// Buckets of `wraft_storage_fsync_seconds`: 50 µs … 5 s (a healthy SSD syncs in well under a
/// millisecond; tens of milliseconds is a disk in trouble).
pub const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];
/// Buckets of snapshot creation, install and transfer times: 10 ms … 30 min.
pub const SNAPSHOT_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// How often the process-wide registry is maintained (histogram data drained, idle series
/// handled), milliseconds.
pub const UPKEEP_INTERVAL_MS: u64 = 5_000;

static INSTALLED: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once per process; later calls return the
/// first outcome) and return a handle that renders it. Metrics recorded before this call, or
/// in a process that never calls it, go nowhere.
pub fn install() -> Result<PrometheusHandle, String> {
    INSTALLED
        .get_or_init(|| {
            let handle = builder()
                .map_err(|e| format!("metric buckets: {e}"))?
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("wraft-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_millis(UPKEEP_INTERVAL_MS));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
            Ok(handle)
        })
        .clone()
}

/// The recorder's configuration: real histograms for every `*_seconds` metric.
fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let full = |name: &str| Matcher::Full(name.to_owned());
    let mut b = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(full("wraft_apply_batch_seconds"), APPLY_BATCH_BUCKETS)?
        .set_buckets_for_metric(full("wraft_storage_fsync_seconds"), FSYNC_BUCKETS)?;
    for name in [
        "wraft_snapshot_create_seconds",
        "wraft_snapshot_install_seconds",
        "wraft_snapshot_transfer_seconds",
    ] {
        b = b.set_buckets_for_metric(full(name), SNAPSHOT_BUCKETS)?;
    }
    Ok(b)
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
    pub transport_dropped: metrics::Counter,
    pub has_leader: metrics::Gauge,
    pub leader_changes: metrics::Counter,
    /// `wraft_raft_peer_lag_entries` by peer, for the peers it was last set for.
    peer_lag: std::collections::BTreeMap<u64, metrics::Gauge>,
    pub proposal_commit_seconds: metrics::Histogram,
    pub persist_batches: metrics::Counter,
    pub persist_entries: metrics::Counter,
    pub snapshot_bytes: metrics::Gauge,
    pub snapshot_index: metrics::Gauge,
    pub snapshot_create_seconds: metrics::Histogram,
    /// When the snapshot being created was asked for.
    pub snapshot_create_started: Option<std::time::Instant>,
    node: String,
}

impl DriverMetrics {
    pub fn new(node: u64) -> Self {
        let n = node.to_string();
        metrics::gauge!("wraft_build_info", "node" => n.clone(), "version" => env!("CARGO_PKG_VERSION"))
            .set(1.0);
        // Labelled counters start at zero, so their first increase is seen.
        for outcome in ["ok", "failed"] {
            for from in [
                wraft_config::SnapshotExport::Live,
                wraft_config::SnapshotExport::Shadow,
            ] {
                metrics::counter!("wraft_snapshot_created_total", "node" => n.clone(), "outcome" => outcome, "from" => from.name()).increment(0);
            }
            metrics::counter!("wraft_snapshot_installs_total", "node" => n.clone(), "outcome" => outcome).increment(0);
        }
        DriverMetrics {
            term: metrics::gauge!("wraft_raft_term", "node" => n.clone()),
            is_leader: metrics::gauge!("wraft_raft_is_leader", "node" => n.clone()),
            commit_index: metrics::gauge!("wraft_raft_commit_index", "node" => n.clone()),
            last_index: metrics::gauge!("wraft_raft_last_index", "node" => n.clone()),
            pending_proposals: metrics::gauge!("wraft_pending_proposals", "node" => n.clone()),
            pending_reads: metrics::gauge!("wraft_pending_reads", "node" => n.clone()),
            apply_backlog: metrics::gauge!("wraft_apply_backlog_entries", "node" => n.clone()),
            transport_dropped: metrics::counter!("wraft_transport_dropped_msgs_total", "node" => n.clone()),
            has_leader: metrics::gauge!("wraft_raft_has_leader", "node" => n.clone()),
            leader_changes: metrics::counter!("wraft_raft_leader_changes_total", "node" => n.clone()),
            peer_lag: std::collections::BTreeMap::new(),
            proposal_commit_seconds: metrics::histogram!("wraft_proposal_commit_seconds", "node" => n.clone()),
            persist_batches: metrics::counter!("wraft_persist_batches_total", "node" => n.clone()),
            persist_entries: metrics::counter!("wraft_persist_entries_total", "node" => n.clone()),
            snapshot_bytes: metrics::gauge!("wraft_snapshot_bytes", "node" => n.clone()),
            snapshot_index: metrics::gauge!("wraft_snapshot_index", "node" => n.clone()),
            snapshot_create_seconds: metrics::histogram!("wraft_snapshot_create_seconds", "node" => n.clone()),
            snapshot_create_started: None,
            node: n,
        }
    }

    pub fn snapshot_created(&self, outcome: &'static str, from: wraft_config::SnapshotExport) {
        metrics::counter!("wraft_snapshot_created_total", "node" => self.node.clone(), "outcome" => outcome, "from" => from.name())
            .increment(1);
    }

    pub fn snapshot_installed(&self, outcome: &'static str) {
        metrics::counter!("wraft_snapshot_installs_total", "node" => self.node.clone(), "outcome" => outcome)
            .increment(1);
    }

    /// Set each peer's lag (entries behind the leader's last index); peers no longer listed
    /// (this node stopped leading, or they left) drop to 0.
    pub fn peer_lag(&mut self, lags: impl Iterator<Item = (u64, u64)>) {
        let mut seen = std::collections::BTreeSet::new();
        for (peer, lag) in lags {
            seen.insert(peer);
            let node = &self.node;
            self.peer_lag
                .entry(peer)
                .or_insert_with(|| {
                    metrics::gauge!("wraft_raft_peer_lag_entries", "node" => node.clone(), "peer" => peer.to_string())
                })
                .set(lag as f64);
        }
        for (peer, g) in &self.peer_lag {
            if !seen.contains(peer) {
                g.set(0.0);
            }
        }
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
    /// The health last published per machine (see [`ApplyMetrics::machines`]).
    machine_health: std::sync::Mutex<std::collections::BTreeMap<String, bool>>,
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
            machine_health: Default::default(),
            node: n,
        }
    }

    pub fn trap(&self, machine: &str) {
        metrics::counter!("wraft_guest_traps_total", "node" => self.node.clone(), "machine" => machine.to_owned())
            .increment(1);
    }

    /// Publish each machine's health on this node, when it changed. A machine no longer
    /// deployed reads 1 (nothing to act on), since a series cannot be withdrawn.
    pub fn machines(&self, machines: &[wraft_proto::MachineInfo]) {
        let Ok(mut known) = self.machine_health.lock() else {
            return;
        };
        let now: std::collections::BTreeMap<&str, bool> = machines
            .iter()
            .map(|m| (m.name.as_str(), m.healthy))
            .collect();
        let gone: Vec<String> = known
            .keys()
            .filter(|k| !now.contains_key(k.as_str()))
            .cloned()
            .collect();
        for name in gone {
            known.remove(&name);
            metrics::gauge!("wraft_machine_healthy", "node" => self.node.clone(), "machine" => name)
                .set(1.0);
        }
        for (name, healthy) in now {
            if known.get(name) != Some(&healthy) {
                if !known.contains_key(name) {
                    metrics::counter!("wraft_guest_traps_total", "node" => self.node.clone(), "machine" => name.to_owned())
                        .increment(0);
                }
                known.insert(name.to_owned(), healthy);
                metrics::gauge!("wraft_machine_healthy", "node" => self.node.clone(), "machine" => name.to_owned())
                    .set(if healthy { 1.0 } else { 0.0 });
            }
        }
    }

    pub fn deploy(&self, outcome: &'static str) {
        metrics::counter!("wraft_deploys_total", "node" => self.node.clone(), "outcome" => outcome)
            .increment(1);
    }
}

/// Handles for the client server's metrics.
#[derive(Clone)]
pub(crate) struct ClientMetrics {
    node: String,
    /// Requests holding a place among the node's `CLIENT_REQUESTS_IN_FLIGHT_MAX`.
    pub in_flight: metrics::Gauge,
}

impl ClientMetrics {
    pub fn new(node: u64) -> Self {
        ClientMetrics {
            node: node.to_string(),
            in_flight: metrics::gauge!("wraft_client_requests_in_flight", "node" => node.to_string()),
        }
    }

    /// One request of kind `request` answered with `outcome` after `elapsed`.
    pub fn answered(&self, request: &'static str, outcome: &'static str, elapsed: Duration) {
        metrics::counter!("wraft_client_requests_total", "node" => self.node.clone(),
            "request" => request, "outcome" => outcome)
        .increment(1);
        metrics::histogram!("wraft_client_request_seconds", "node" => self.node.clone(), "request" => request)
            .record(elapsed);
    }
}

/// Handles for the watch history's metrics, created once per node.
pub(crate) struct WatchMetrics {
    pub entries: metrics::Gauge,
    pub bytes: metrics::Gauge,
    pub dropped: metrics::Counter,
    pub subscriptions: metrics::Gauge,
    pub compacted: metrics::Counter,
}

impl WatchMetrics {
    pub fn new(node: u64) -> Self {
        let n = node.to_string();
        WatchMetrics {
            entries: metrics::gauge!("wraft_watch_history_entries", "node" => n.clone()),
            bytes: metrics::gauge!("wraft_watch_history_bytes", "node" => n.clone()),
            dropped: metrics::counter!("wraft_watch_history_evicted_total", "node" => n.clone()),
            subscriptions: metrics::gauge!("wraft_watch_subscriptions", "node" => n.clone()),
            compacted: metrics::counter!("wraft_watch_compacted_total", "node" => n),
        }
    }
}
