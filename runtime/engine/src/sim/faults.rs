//! The fault schedule: clock jumps, partitions (node, random split, one
//! link one or both ways), heal, crashes (often the leader) and restarts,
//! membership changes, leadership transfers, broken snapshot streams.

use super::*;

impl Sim {
    pub(super) fn inject_fault(&mut self) -> Res<()> {
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        if self.cfg.clock_jumps && self.rng.u32(0..8) == 0 {
            // A node's clock jumps, often past the session expiry, forward or back.
            let x = ids[self.rng.usize(0..ids.len())];
            let reach = self.cfg.session_expiry_ms.min(1 << 20) as i64 * 3;
            self.hosts.get_mut(&x).expect("host").clock_offset = self.rng.i64(-reach..=reach);
        }
        let pick = |rng: &mut fastrand::Rng| ids[rng.usize(0..ids.len())];
        match self.rng.u32(0..100) {
            0..=11 if self.cfg.partitions => {
                let x = pick(&mut self.rng);
                self.isolate(x);
            }
            12..=19 if self.cfg.partitions => {
                // Split into two random groups.
                let group: BTreeSet<NodeId> =
                    ids.iter().copied().filter(|_| self.rng.bool()).collect();
                for &a in &ids {
                    for &b in &ids {
                        if group.contains(&a) != group.contains(&b) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
            20..=27 if self.cfg.partitions => {
                // One link: one direction (asymmetric) or both (a partial partition).
                let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                if a != b {
                    self.block(a, b);
                    if self.rng.bool() {
                        self.block(b, a);
                    }
                }
            }
            28..=45 => self.heal(),
            46..=55 if self.cfg.crashes => {
                let crashed = ids.iter().filter(|i| !self.alive(**i)).count();
                if crashed < 2 {
                    // Leaders are the interesting victims (unpersisted tail, in-flight commits).
                    let x = match self.leader() {
                        Some(l) if self.rng.bool() => l,
                        _ => pick(&mut self.rng),
                    };
                    self.crash(x);
                }
            }
            56..=67 if self.cfg.crashes => {
                let dead: Vec<NodeId> = ids.iter().copied().filter(|i| !self.alive(*i)).collect();
                if !dead.is_empty() {
                    let x = dead[self.rng.usize(0..dead.len())];
                    self.restart(x);
                }
            }
            68..=79 if self.cfg.membership_changes => {
                if let Some(l) = self.leader() {
                    let m = self.engine(l).expect("leader").membership().clone();
                    let non_members: Vec<NodeId> =
                        ids.iter().copied().filter(|i| !m.contains(*i)).collect();
                    let learners: Vec<NodeId> = m.learners.iter().copied().collect();
                    let voters: Vec<NodeId> = m.voters.iter().copied().collect();
                    let change = match self.rng.u32(0..3) {
                        0 if !non_members.is_empty() => Some(ConfChange::AddLearner(
                            non_members[self.rng.usize(0..non_members.len())],
                        )),
                        1 if !learners.is_empty() => Some(ConfChange::PromoteLearner(
                            learners[self.rng.usize(0..learners.len())],
                        )),
                        2 if voters.len() > 3 => Some(ConfChange::RemoveNode(
                            voters[self.rng.usize(0..voters.len())],
                        )),
                        2 if !learners.is_empty() => Some(ConfChange::RemoveNode(
                            learners[self.rng.usize(0..learners.len())],
                        )),
                        _ => None,
                    };
                    if let Some(ch) = change {
                        self.propose_conf_change(l, ch)?;
                    }
                }
            }
            80..=89 if self.cfg.transfers => {
                if let Some(l) = self.leader() {
                    let voters: Vec<NodeId> = self
                        .engine(l)
                        .expect("leader")
                        .membership()
                        .voters
                        .iter()
                        .copied()
                        .filter(|v| *v != l)
                        .collect();
                    if !voters.is_empty() {
                        let to = voters[self.rng.usize(0..voters.len())];
                        self.report.transfers += 1;
                        self.step_node(l, Event::TransferLeadership { to })?;
                    }
                }
            }
            90..=99 if self.cfg.snapshot_aborts => {
                let with_out: Vec<(NodeId, NodeId, LogIndex)> = self
                    .hosts
                    .values()
                    .flat_map(|h| {
                        h.outgoing
                            .iter()
                            .map(move |(to, o)| (h.id, *to, o.meta.index))
                    })
                    .collect();
                if !with_out.is_empty() {
                    let (from, to, index) = with_out[self.rng.usize(0..with_out.len())];
                    self.hosts
                        .get_mut(&from)
                        .expect("host")
                        .outgoing
                        .remove(&to);
                    self.step_node(from, Event::SnapshotTransferFailed { to, index })?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
