//! The nemesis and its view of the cluster: live members, the leader, statuses, signals to node
//! processes, and waiting for a node to catch up. Choosing, injecting and healing faults is in
//! `inject`; the membership-change fault in `membership`.

mod inject;
mod membership;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wraft_client::Client;
use wraft_proto::Status;

use crate::Cluster;

use super::history::History;
use super::proxy::FaultProxy;
use super::workload::{Endpoints, bounded, client_options, json};
use super::{CATCH_UP_TIMEOUT_MS, FaultKind, FaultOptions};

/// The nemesis and its view of the cluster.
pub(super) struct Nemesis {
    pub(super) opts: FaultOptions,
    pub(super) cluster: Cluster,
    pub(super) proxy: Arc<FaultProxy>,
    pub(super) rng: fastrand::Rng,
    pub(super) history: Arc<History>,
    pub(super) endpoints: Endpoints,
    /// Voters as the nemesis last learned them.
    pub(super) voters: Vec<u64>,
    /// Nodes removed from the cluster (process stopped for good).
    pub(super) retired: BTreeSet<u64>,
    pub(super) next_id: u64,
    pub(super) faults: BTreeMap<FaultKind, u64>,
    pub(super) anomalies: Vec<String>,
    pub(super) recovery_ms_max: u64,
    pub(super) snapshot_index_max: u64,
    pub(super) timeline: Vec<String>,
    pub(super) probe_n: u64,
    /// Nodes stopped with SIGSTOP right now.
    pub(super) paused: BTreeSet<u64>,
}

impl Nemesis {
    pub(super) fn note(&mut self, what: String) {
        let t = self.history.len();
        let line = format!("[{:>8.3} s, op #{t}] {what}", self.started_secs());
        eprintln!("faults: {line}");
        self.timeline.push(line);
    }

    fn started_secs(&self) -> f64 {
        // The history clock started with the clients.
        self.history_elapsed().as_secs_f64()
    }

    fn history_elapsed(&self) -> Duration {
        self.history.elapsed()
    }

    /// Members whose process should be running.
    pub(super) fn live(&self) -> Vec<u64> {
        self.cluster
            .running()
            .into_iter()
            .filter(|id| !self.retired.contains(id) && !self.paused.contains(id))
            .collect()
    }

    pub(super) fn anomaly(&mut self, what: String) {
        self.note(format!("ANOMALY: {what}"));
        self.anomalies.push(what);
    }

    pub(super) async fn status(&mut self, id: u64) -> Option<Status> {
        let s = self.cluster.status(id).await?;
        self.snapshot_index_max = self.snapshot_index_max.max(s.snapshot_index);
        Some(s)
    }

    /// The leader with the highest term among the live nodes, polling up to
    /// `timeout`.
    async fn leader(&mut self, timeout: Duration) -> Option<(u64, Status)> {
        let start = Instant::now();
        loop {
            let mut best: Option<Status> = None;
            for id in self.live() {
                if let Some(s) = self.status(id).await
                    && s.role == "leader"
                    && best.as_ref().is_none_or(|b| s.term > b.term)
                {
                    best = Some(s);
                }
            }
            if let Some(s) = best {
                return Some((s.id, s));
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.usize(0..from.len())])
    }

    pub(super) fn hold(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.rng.u64(lo_ms..=hi_ms))
    }

    fn signal(&mut self, id: u64, sig: libc::c_int) {
        if let Some(pid) = self.cluster.pid(id) {
            // SAFETY: plain kill(2) on a child process this harness owns.
            let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
            assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
        }
    }

    fn voters_live(&self) -> Vec<u64> {
        let live = self.live();
        self.voters
            .iter()
            .copied()
            .filter(|v| live.contains(v))
            .collect()
    }

    async fn leader_and_follower(&mut self) -> Option<(u64, u64)> {
        let (leader, _) = self.leader(Duration::from_secs(10)).await?;
        let followers: Vec<u64> = self
            .voters_live()
            .into_iter()
            .filter(|v| *v != leader)
            .collect();
        Some((leader, self.pick(&followers)?))
    }

    /// Every node the proxy knows that is not retired.
    fn all_nodes(&self) -> Vec<u64> {
        self.proxy
            .fronts()
            .into_keys()
            .filter(|id| !self.retired.contains(id))
            .collect()
    }

    pub(super) async fn admin_client(&self) -> Client {
        let eps: Vec<SocketAddr> = self
            .live()
            .iter()
            .map(|id| self.cluster.addr(*id))
            .collect();
        Client::connect(client_options(eps, self.cluster.certs_dir()))
            .await
            .expect("client")
    }

    /// Write `count` extra puts (8 at a time) until the leader's commit
    /// reaches `target` or 30 s pass; returns the last commit index seen.
    async fn fill_writes(&mut self, count: u64, target: u64) -> u64 {
        let c = Arc::new(self.admin_client().await);
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..count.div_ceil(8) {
                    let cmd = json(serde_json::json!({"op":"put","key":format!("fill/{w}"),"value":i.to_string()}));
                    let _ = bounded(c.propose("kv", &cmd)).await;
                }
            }));
        }
        let start = Instant::now();
        let mut commit = 0;
        while start.elapsed() < Duration::from_secs(30) {
            if let Some((_, s)) = self.leader(Duration::from_secs(5)).await {
                commit = s.commit_index;
                if commit >= target {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for t in tasks {
            t.abort();
        }
        commit
    }

    /// Wait until node `id` has applied the leader's commit index (as read
    /// when the wait starts); an anomaly after [`CATCH_UP_TIMEOUT_MS`].
    pub(super) async fn wait_caught_up(&mut self, id: u64, what: &str) {
        let start = Instant::now();
        let Some((_, ls)) = self.leader(Duration::from_secs(20)).await else {
            return self.anomaly(format!("{what}: no leader within 20 s"));
        };
        let target = ls.commit_index;
        loop {
            if let Some(s) = self.status(id).await
                && s.applied_index >= target
                && s.machines.iter().any(|m| m.name == "kv" && m.healthy)
            {
                self.note(format!(
                    "node {id} caught up to {target} in {} ms (snapshot index {})",
                    start.elapsed().as_millis(),
                    s.snapshot_index
                ));
                return;
            }
            if start.elapsed() > Duration::from_millis(CATCH_UP_TIMEOUT_MS) {
                let d = self.cluster.describe().await;
                return self.anomaly(format!(
                    "{what}: node {id} did not apply index {target} within {CATCH_UP_TIMEOUT_MS} ms\n{d}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) fn check_processes(&mut self) {
        for id in self.cluster.ids() {
            if let Some(how) = self.cluster.exited(id) {
                self.anomaly(format!("node {id} exited by itself: {how}"));
            }
        }
    }
}
