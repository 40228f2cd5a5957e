//! The membership-change fault: add a fresh node as a learner, catch it up and promote it, then
//! remove an old voter (sometimes the leader) and stop its process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wraft_client::{Client, ClientError};
use wraft_proto::Status;

use super::Nemesis;
use crate::faults::workload::{bounded, lock};

impl Nemesis {
    /// Retry `step` (a membership request) until the leader's status shows
    /// `done`, for up to 30 s.
    async fn membership_step(
        &mut self,
        what: &str,
        step: impl AsyncFn(&Client) -> Result<String, ClientError>,
        done: impl Fn(&Status) -> bool,
    ) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let c = self.admin_client().await;
            let r = bounded(step(&c)).await;
            if let Some((_, s)) = self.leader(Duration::from_secs(5)).await
                && done(&s)
            {
                self.note(format!("{what}: done ({:?})", r.map_err(|e| e.to_string())));
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let d = self.cluster.describe().await;
        self.anomaly(format!(
            "{what}: not done within 30 s with no fault active\n{d}"
        ));
        false
    }

    pub(super) async fn membership_change(&mut self) {
        let Some((leader, _)) = self.leader(Duration::from_secs(10)).await else {
            return self.note("membership change: no leader found, skipped".into());
        };
        let id = self.next_id;
        self.next_id += 1;
        let proxy = self.proxy.clone();
        let addr = self.cluster.add_node_with(id, |cfg| {
            let front = proxy.front(cfg.node.id, cfg.node.listen);
            let mut peers = proxy.fronts();
            peers.insert(cfg.node.id, front);
            cfg.cluster.peers = peers.into_iter().map(|(k, v)| (k, v.into())).collect();
        });
        let front = self.proxy.front(id, addr);
        self.note(format!(
            "membership: started node {id} (front {front}); leader {leader}"
        ));
        if !self
            .membership_step(
                &format!("add learner {id}"),
                async |c| c.add_learner(id, front).await,
                |s| s.learners.contains(&id) || s.voters.contains(&id),
            )
            .await
        {
            return;
        }
        self.wait_caught_up(id, "new learner").await;
        if !self
            .membership_step(
                &format!("promote {id}"),
                async |c| c.promote(id).await,
                |s| s.voters.contains(&id),
            )
            .await
        {
            return;
        }
        self.voters.push(id);
        let victim = if self.rng.u32(0..3) == 0 {
            self.leader(Duration::from_secs(10)).await.map(|(l, _)| l)
        } else {
            None
        };
        let old: Vec<u64> = self.voters.iter().copied().filter(|v| *v != id).collect();
        let victim = match victim {
            Some(v) if v != id => v,
            _ => self.pick(&old).expect("an old voter"),
        };
        self.note(format!("membership: removing node {victim}"));
        if !self
            .membership_step(
                &format!("remove {victim}"),
                async |c| c.remove_member(victim).await,
                |s| !s.voters.contains(&victim) && !s.learners.contains(&victim) && s.id != victim,
            )
            .await
        {
            return;
        }
        self.cluster.kill(victim);
        self.retired.insert(victim);
        self.voters.retain(|v| *v != victim);
        let eps: Vec<SocketAddr> = self.live().iter().map(|i| self.cluster.addr(*i)).collect();
        let mut e = lock(&self.endpoints);
        e.0 += 1;
        e.1 = eps;
    }
}
