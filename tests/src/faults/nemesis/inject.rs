//! Choosing the next fault from the seeded schedule, injecting it, and healing afterwards with a
//! write that must succeed within the recovery bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wraft_client::Client;
use wraft_engine::lincheck::{KvInput, KvOutput};
use wraft_proto::Consistency;

use super::Nemesis;
use crate::faults::FaultKind;
use crate::faults::history::{OpKind, Outcome};
use crate::faults::proxy::LinkFault;
use crate::faults::workload::{bounded, client_options, json, key_name, record_get, write_outcome};

impl Nemesis {
    pub(in crate::faults) fn pick_fault(&mut self) -> FaultKind {
        let kinds: Vec<(FaultKind, u32)> = FaultKind::WEIGHTS
            .into_iter()
            .filter(|(k, _)| {
                self.opts.only.is_empty() || self.opts.only.iter().any(|o| o == k.slug())
            })
            .collect();
        assert!(
            !kinds.is_empty(),
            "WRAFT_FAULTS_ONLY={:?} names no fault kind; kinds: {:?}",
            self.opts.only,
            FaultKind::WEIGHTS.map(|(k, _)| k.slug())
        );
        let total: u32 = kinds.iter().map(|(_, w)| w).sum();
        let mut r = self.rng.u32(0..total);
        for (k, w) in kinds {
            if r < w {
                return k;
            }
            r -= w;
        }
        FaultKind::KillLeader
    }

    pub(in crate::faults) async fn inject(&mut self, kind: FaultKind) {
        *self.faults.entry(kind).or_default() += 1;
        match kind {
            FaultKind::KillLeader | FaultKind::KillFollower => {
                let Some((leader, follower)) = self.leader_and_follower().await else {
                    return self.note(format!("{}: no leader found, skipped", kind.name()));
                };
                let t = if kind == FaultKind::KillLeader {
                    leader
                } else {
                    follower
                };
                let down = self.hold(500, 3_000);
                self.note(format!(
                    "kill -9 node {t} (leader {leader}) for {} ms",
                    down.as_millis()
                ));
                self.cluster.kill(t);
                tokio::time::sleep(down).await;
                self.cluster.restart(t);
                self.note(format!("restarted node {t}"));
            }
            FaultKind::LaggingFollower => {
                let Some((leader, t)) = self.leader_and_follower().await else {
                    return self.note("lagging follower: no leader found, skipped".into());
                };
                let Some(s) = self.status(leader).await else {
                    return;
                };
                let lag = (3 * self.opts.snapshot_entries).max(300);
                self.note(format!(
                    "kill -9 node {t}; keep it down until the leader commits {lag} entries past {}",
                    s.commit_index
                ));
                self.cluster.kill(t);
                let target = s.commit_index + lag;
                let start = Instant::now();
                let fill = self.fill_writes(lag, target).await;
                self.note(format!(
                    "leader at commit {fill} after {} ms; restarting node {t}",
                    start.elapsed().as_millis()
                ));
                self.cluster.restart(t);
                self.wait_caught_up(t, "restarted lagging follower").await;
            }
            FaultKind::PauseLeader | FaultKind::PauseFollower => {
                let Some((leader, follower)) = self.leader_and_follower().await else {
                    return self.note(format!("{}: no leader found, skipped", kind.name()));
                };
                let t = if kind == FaultKind::PauseLeader {
                    leader
                } else {
                    follower
                };
                if t == leader && self.rng.bool() {
                    return self.pause_leader_with_lease_probe(leader).await;
                }
                let pause = self.hold(1_200, 3_500);
                self.note(format!(
                    "SIGSTOP node {t} (leader {leader}) for {} ms",
                    pause.as_millis()
                ));
                self.signal(t, libc::SIGSTOP);
                tokio::time::sleep(pause).await;
                self.signal(t, libc::SIGCONT);
                self.note(format!("SIGCONT node {t}"));
            }
            FaultKind::Partition => {
                let mut voters = self.voters_live();
                self.rng.shuffle(&mut voters);
                let k = self.rng.usize(1..=((voters.len() - 1) / 2).max(1));
                let minority: Vec<u64> = voters[..k].to_vec();
                let all = self.all_nodes();
                let hold = self.hold(1_500, 5_000);
                self.note(format!(
                    "partition {minority:?} | rest of {all:?} for {} ms",
                    hold.as_millis()
                ));
                self.proxy.partition(&minority, &all);
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::IsolateLeader => {
                let Some((leader, _)) = self.leader(Duration::from_secs(10)).await else {
                    return self.note("isolate leader: no leader found, skipped".into());
                };
                let all = self.all_nodes();
                let hold = self.hold(1_500, 5_000);
                self.note(format!(
                    "isolate leader {leader} for {} ms",
                    hold.as_millis()
                ));
                self.proxy.partition(&[leader], &all);
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::OneWayCut => {
                let Some((leader, _)) = self.leader(Duration::from_secs(10)).await else {
                    return self.note("one-way cut: no leader found, skipped".into());
                };
                let all = self.all_nodes();
                let others: Vec<u64> = all.iter().copied().filter(|n| *n != leader).collect();
                let hold = self.hold(1_500, 5_000);
                let what = match self.rng.u32(0..3) {
                    0 => {
                        for o in &others {
                            self.proxy.set(leader, *o, LinkFault::CUT);
                        }
                        format!("leader {leader} cannot send to {others:?}")
                    }
                    1 => {
                        for o in &others {
                            self.proxy.set(*o, leader, LinkFault::CUT);
                        }
                        format!("leader {leader} cannot hear {others:?}")
                    }
                    _ => {
                        let a = self.pick(&all).unwrap_or(leader);
                        let rest: Vec<u64> = all.iter().copied().filter(|n| *n != a).collect();
                        let b = self.pick(&rest).unwrap_or(leader);
                        self.proxy.set(a, b, LinkFault::CUT);
                        format!("link {a} -> {b} cut (leader {leader})")
                    }
                };
                self.note(format!("one-way: {what} for {} ms", hold.as_millis()));
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::LossyLinks => {
                let all = self.all_nodes();
                let drop_probability = 0.05 + self.rng.f64() * 0.25;
                let delay_ms = self.rng.u64(0..=30);
                let jitter_ms = self.rng.u64(0..=30);
                let hold = self.hold(3_000, 8_000);
                for a in &all {
                    for b in &all {
                        if a != b {
                            self.proxy.set(
                                *a,
                                *b,
                                LinkFault {
                                    drop_probability,
                                    delay_ms,
                                    jitter_ms,
                                },
                            );
                        }
                    }
                }
                self.note(format!(
                    "every link: drop {:.0} %, delay {delay_ms} ms + jitter {jitter_ms} ms, for {} ms",
                    drop_probability * 100.0,
                    hold.as_millis()
                ));
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::LeaderTransfer => {
                let Some((leader, to)) = self.leader_and_follower().await else {
                    return self.note("transfer: no leader found, skipped".into());
                };
                self.note(format!("transfer leadership {leader} -> {to}"));
                let c = self.admin_client().await;
                let r = bounded(c.transfer_leader(to)).await;
                let moved = self.leader(Duration::from_secs(5)).await.map(|(l, _)| l);
                self.note(format!(
                    "transfer answered {:?}; leader now {moved:?}",
                    r.map_err(|e| e.to_string())
                ));
            }
            FaultKind::MembershipChange => self.membership_change().await,
        }
    }

    /// Pause the leader; once the others have a new leader, write the probe
    /// key through it, then send a lease read of that key to the paused
    /// leader (it waits in that node's socket buffer) and resume it. A
    /// leader that trusts a lease its stall outlived answers the old value:
    /// the checker sees a read of an overwritten value after the write was
    /// acknowledged. Every operation goes into the history (probe key
    /// `k{keys}`, client ids from 1000).
    async fn pause_leader_with_lease_probe(&mut self, leader: u64) {
        let key = self.opts.keys;
        self.probe_n += 1;
        let client_id = 1000 + self.probe_n;
        let pinned = Arc::new(
            Client::connect(client_options(
                vec![self.cluster.addr(leader)],
                self.cluster.certs_dir(),
            ))
            .await
            .expect("client"),
        );
        // Warm the pinned connection (and record the read).
        record_get(&self.history, &pinned, client_id, key, Consistency::Lease).await;
        // Long enough for an election and a write (election timeout 500–1000
        // ms), short enough that the pinned client's 2 s idle timeout keeps
        // its connection.
        let pause = self.hold(1_700, 1_900);
        self.note(format!(
            "SIGSTOP leader {leader} for {} ms, with a lease read probe of k{key}",
            pause.as_millis()
        ));
        let stopped = Instant::now();
        self.signal(leader, libc::SIGSTOP);
        self.paused.insert(leader);
        let mut read = None;
        if let Some((new, _)) = self
            .leader(pause.saturating_sub(Duration::from_millis(350)))
            .await
            && new != leader
        {
            let value = 900_000_000_000 + self.probe_n;
            let c = self.admin_client().await;
            let input = KvInput::Put { key, value };
            let op = self.history.invoke(client_id, OpKind::Put, input);
            let cmd =
                json(serde_json::json!({"op":"put","key":key_name(key),"value":value.to_string()}));
            let r = bounded(c.propose("kv", &cmd)).await;
            let written = r.is_ok();
            match r {
                Ok(_) => self
                    .history
                    .complete(op, Outcome::Ok, Some(KvOutput::Put), String::new()),
                Err(e) => self
                    .history
                    .complete(op, write_outcome(&e), None, e.to_string()),
            }
            if written && stopped.elapsed() + Duration::from_millis(50) < pause {
                let (h, p) = (self.history.clone(), pinned.clone());
                read = Some(tokio::spawn(async move {
                    record_get(&h, &p, client_id, key, Consistency::Lease).await
                }));
                self.note(format!("new leader {new} acknowledged k{key} = {value}; lease read sent to the paused {leader}"));
            }
        }
        tokio::time::sleep(pause.saturating_sub(stopped.elapsed())).await;
        self.signal(leader, libc::SIGCONT);
        self.paused.remove(&leader);
        if let Some(r) = read {
            let got = r.await.ok().flatten();
            self.note(format!("SIGCONT {leader}; its lease read answered {got:?}"));
        } else {
            self.note(format!(
                "SIGCONT {leader} (no probe: no new leader in time)"
            ));
        }
    }

    /// Heal everything and require a successful write within the bound.
    pub(in crate::faults) async fn heal_and_probe(&mut self, after: &str) {
        self.proxy.heal();
        for id in self.voters.clone() {
            if !self.retired.contains(&id) && self.cluster.pid(id).is_none() {
                self.cluster.restart(id);
            }
        }
        let start = Instant::now();
        loop {
            self.probe_n += 1;
            let cmd = json(
                serde_json::json!({"op":"put","key":format!("probe/{}", self.probe_n),"value":"1"}),
            );
            let c = self.admin_client().await;
            let r = bounded(c.propose("kv", &cmd)).await;
            if r.is_ok() {
                let ms = start.elapsed().as_millis() as u64;
                self.recovery_ms_max = self.recovery_ms_max.max(ms);
                self.note(format!(
                    "progress after {after}: a write succeeded {ms} ms after healing"
                ));
                return;
            }
            if start.elapsed() > self.opts.recovery_bound {
                let d = self.cluster.describe().await;
                return self.anomaly(format!(
                    "no progress: no write succeeded within {} ms after healing ({after})\n{d}",
                    self.opts.recovery_bound.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
