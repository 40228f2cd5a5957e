//! Ranges and cross-field rules: every problem of a configuration, each naming its key.

use crate::{
    ConfigError, FsyncPolicy, NodeConfig, SHUTDOWN_TIMEOUT_MS_MAX, WATCH_HISTORY_BYTES_MAX_MAX,
    WATCH_HISTORY_BYTES_MAX_MIN, WATCH_HISTORY_ENTRIES_MAX_MAX, WORKER_THREADS_MAX,
};

impl NodeConfig {
    /// Check ranges and cross-field rules; the error names the key (the first problem of
    /// [`NodeConfig::problems`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(first) = self.problems().into_iter().next() {
            return Err(first);
        }
        if self.storage.fsync == FsyncPolicy::Relaxed {
            tracing::warn!(
                target: "wraft::config",
                "storage.fsync = \"relaxed\": writes are acknowledged before they reach the disk; \
                 a crash can lose acknowledged writes and, on a majority, break Raft's safety. \
                 Use only for benchmarks."
            );
        }
        Ok(())
    }

    /// Every range and cross-field problem of this configuration, each naming its key, in
    /// the order of the file's sections (`wraft config check` lists them all; empty when the
    /// configuration is valid).
    pub fn problems(&self) -> Vec<ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: message.into(),
            }
        }
        let range = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Some(invalid(key, format!("{v} is outside {lo}..={hi}")))
            } else {
                None
            }
        };
        let mut out: Vec<Option<ConfigError>> = Vec::new();
        if self.node.id == 0 {
            out.push(Some(invalid("node.id", "node ids start at 1")));
        }
        if self.cluster.members.contains_key(&0) {
            out.push(Some(invalid("cluster.members", "node ids start at 1")));
        }
        out.push(range(
            "node.worker_threads",
            self.node.worker_threads,
            0,
            WORKER_THREADS_MAX,
        ));
        out.push(range(
            "node.shutdown_timeout_ms",
            self.node.shutdown_timeout_ms,
            1,
            SHUTDOWN_TIMEOUT_MS_MAX,
        ));
        out.push(range(
            "node.watch_history_entries_max",
            self.node.watch_history_entries_max,
            1,
            WATCH_HISTORY_ENTRIES_MAX_MAX,
        ));
        out.push(range(
            "node.watch_history_bytes_max",
            self.node.watch_history_bytes_max,
            WATCH_HISTORY_BYTES_MAX_MIN,
            WATCH_HISTORY_BYTES_MAX_MAX,
        ));
        out.push(range(
            "node.readyz_lag_entries_max",
            self.node.readyz_lag_entries_max,
            0,
            1 << 40,
        ));
        out.push(range(
            "node.readyz_leader_contact_ms_max",
            self.node.readyz_leader_contact_ms_max,
            self.raft.heartbeat_interval_ms,
            3_600_000,
        ));
        if self.cluster.members.is_empty() {
            out.push(Some(invalid(
                "cluster.members",
                "list the initial voting members (id = \"host:port\")",
            )));
        }
        let r = &self.raft;
        out.push(range("raft.tick_interval_ms", r.tick_interval_ms, 1, 1_000));
        // Upper bounds keep `3 × heartbeat` from overflowing and the engine's
        // u32 tick counts from truncating (regression input:
        // fuzz/regressions/config_toml/heartbeat-times-3-overflows).
        out.push(range(
            "raft.heartbeat_interval_ms",
            r.heartbeat_interval_ms,
            1,
            60_000,
        ));
        out.push(range(
            "raft.election_timeout_ms",
            r.election_timeout_ms,
            3,
            600_000,
        ));
        if r.heartbeat_interval_ms < r.tick_interval_ms {
            out.push(Some(invalid(
                "raft.heartbeat_interval_ms",
                format!(
                    "{} is shorter than one tick ({} ms)",
                    r.heartbeat_interval_ms, r.tick_interval_ms
                ),
            )));
        }
        if r.election_timeout_ms < r.heartbeat_interval_ms.saturating_mul(3) {
            out.push(Some(invalid(
                "raft.election_timeout_ms",
                format!(
                    "{} must be at least 3 × raft.heartbeat_interval_ms ({})",
                    r.election_timeout_ms,
                    r.heartbeat_interval_ms.saturating_mul(3)
                ),
            )));
        }
        out.push(range(
            "raft.inflight_append_msgs_max",
            r.inflight_append_msgs_max,
            1,
            4096,
        ));
        out.push(range(
            "raft.append_entries_max",
            r.append_entries_max,
            1,
            1 << 20,
        ));
        out.push(range(
            "raft.append_bytes_max",
            r.append_bytes_max,
            1024,
            256 << 20,
        ));
        out.push(range(
            "raft.pending_proposals_max",
            r.pending_proposals_max,
            1,
            1 << 24,
        ));
        out.push(range(
            "raft.divergence_check_entries",
            r.divergence_check_entries,
            0,
            1 << 30,
        ));
        out.push(range(
            "storage.segment_bytes",
            self.storage.segment_bytes,
            1 << 20,
            4 << 30,
        ));
        out.push(range(
            "storage.preallocate_bytes",
            self.storage.preallocate_bytes,
            0,
            self.storage.segment_bytes.min(1 << 30),
        ));
        if self.storage.preallocate_bytes == 1 {
            out.push(Some(invalid(
                "storage.preallocate_bytes",
                "must be 0 (off) or at least 2",
            )));
        }
        let s = &self.snapshot;
        out.push(range("snapshot.retain_count", s.retain_count, 1, 64));
        out.push(range(
            "snapshot.chunk_bytes",
            s.chunk_bytes,
            4 << 10,
            64 << 20,
        ));
        out.push(range(
            "snapshot.transfer_progress_timeout_ms",
            s.transfer_progress_timeout_ms,
            100,
            3_600_000,
        ));
        out.push(range(
            "snapshot.incoming_transfers_max",
            s.incoming_transfers_max,
            1,
            64,
        ));
        let g = &self.guest;
        out.push(range(
            "guest.module_bytes_max",
            g.module_bytes_max,
            1 << 10,
            1 << 30,
        ));
        out.push(range(
            "guest.memory_bytes_max",
            g.memory_bytes_max,
            1 << 20,
            4 << 30,
        ));
        out.push(range(
            "guest.fuel_per_call",
            g.fuel_per_call,
            1_000,
            u64::MAX / 2,
        ));
        out.push(range(
            "guest.fuel_per_entry",
            g.fuel_per_entry,
            1_000,
            u64::MAX / 2,
        ));
        out.push(range(
            "guest.output_bytes_max",
            g.output_bytes_max,
            1 << 10,
            1 << 30,
        ));
        out.push(range("guest.watchdog_ms", g.watchdog_ms, 10, 3_600_000));
        let c = &self.client;
        out.push(range(
            "client.command_bytes_max",
            c.command_bytes_max,
            1,
            64 << 20,
        ));
        out.push(range(
            "client.connections_max",
            c.connections_max,
            1,
            1 << 20,
        ));
        out.push(range(
            "client.request_timeout_ms",
            c.request_timeout_ms,
            10,
            3_600_000,
        ));
        out.push(range(
            "client.deploy_timeout_ms",
            c.deploy_timeout_ms,
            10,
            3_600_000,
        ));
        out.push(range(
            "client.response_write_timeout_ms",
            c.response_write_timeout_ms,
            10,
            3_600_000,
        ));
        if let Some(both) = c
            .read_only_clients
            .iter()
            .find(|n| c.admin_clients.contains(n))
        {
            out.push(Some(invalid(
                "client.read_only_clients",
                format!("{both:?} is also in client.admin_clients; a client has one role"),
            )));
        }
        let h = &self.http;
        out.push(range(
            "http.connections_max",
            h.connections_max,
            1,
            1_000_000,
        ));
        out.push(range(
            "http.header_read_timeout_ms",
            h.header_read_timeout_ms,
            100,
            3_600_000,
        ));
        out.push(range(
            "http.body_read_timeout_ms",
            h.body_read_timeout_ms,
            100,
            3_600_000,
        ));
        if let (Some(l), Some(m)) = (h.listen, self.node.metrics_listen)
            && l == m
            && l.port() != 0
        {
            out.push(Some(invalid(
                "http.listen",
                format!("{l} is also node.metrics_listen; give the API its own address"),
            )));
        }
        out.into_iter().flatten().collect()
    }
}
