//! The whole scenario: the random phase, then heal, liveness, final reads
//! of every key and the linearizability check of the client history.

use super::clients::ClientOp;
use super::*;
use crate::lincheck::{self, CheckResult, KvModel};

impl Sim {
    /// Runs the whole scenario: random phase, heal, liveness, final reads and
    /// the linearizability check.
    ///
    /// # Errors
    /// The first violated property.
    pub fn run(mut self) -> Res<SimReport> {
        let first_fault = self.rng.u64(TICK..5 * TICK);
        self.schedule(first_fault, Ev::Fault);
        self.run_for(self.cfg.duration_ticks)?;
        // Heal everything and stop injecting faults.
        self.faults_on = false;
        self.heal();
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        for id in ids {
            self.restart(id);
        }
        self.new_ops = false;
        let bound = self.cfg.liveness_bound_ticks;
        let ok = self.run_until(bound, |s| {
            s.leader().is_some_and(|l| {
                s.engine(l)
                    .is_some_and(|e| e.commit_index() >= e.last_index() && e.commit_index() > 0)
            }) && s.clients.iter().all(|c| c.op.is_none())
        })?;
        if !ok {
            let open = self.clients.iter().filter(|c| c.op.is_some()).count();
            return Err(self.fail(format!(
                "liveness: {bound} ticks after healing, leader = {:?}, {open} client operations still open\n{}",
                self.leader(),
                self.describe()
            )));
        }
        // Final reads of every key: every acknowledged write must be visible.
        for c in &mut self.clients {
            c.active = false;
        }
        let reader = self.clients.len();
        self.clients.push(Client {
            session: None,
            seq: 0,
            target: self.leader().unwrap_or(1),
            op: None,
            active: false,
        });
        for key in 0..self.cfg.keys {
            let hist = self.history.len();
            let input = KvInput::Get { key };
            self.history.push(Operation {
                client: 999,
                input,
                call: self.now,
                ret: None,
                output: None,
            });
            self.clients[reader].op = Some(ClientOp {
                hist,
                input,
                tag: None,
                opening: false,
                deadline: self.now,
                attempts: 0,
            });
            self.submit(reader)?;
            let ok = self.run_until(bound, |s| s.clients[reader].op.is_none())?;
            if !ok {
                return Err(self.fail(format!(
                    "liveness: final read of key {key} did not finish in {bound} ticks"
                )));
            }
        }
        self.report.ops_completed = self.history.iter().filter(|o| o.ret.is_some()).count() as u64;
        self.report.ops_unknown = self.history.len() as u64 - self.report.ops_completed;
        self.report.lease_reads = self
            .hosts
            .values()
            .filter_map(|h| h.engine.as_ref())
            .map(|e| e.stats().lease_reads)
            .sum();
        // Values are unique, so abandoned writes nobody observed can be pruned.
        let history = lincheck::prune_unobserved_pending(&self.history);
        if self.trace {
            let mut per_key: BTreeMap<u64, (usize, usize, u64)> = BTreeMap::new();
            for o in &history {
                let e = per_key.entry(o.input.key()).or_default();
                e.0 += 1;
                if o.ret.is_none() {
                    e.1 += 1;
                }
                e.2 = e.2.max(o.ret.unwrap_or(self.now) - o.call);
            }
            eprintln!("history per key (ops, unknown, longest op): {per_key:?}");
        }
        match lincheck::check(&KvModel, &history, self.cfg.lincheck_max_steps) {
            CheckResult::Linearizable => Ok(self.report),
            CheckResult::Unknown => {
                Err(self.fail("linearizability check ran out of budget".into()))
            }
            CheckResult::NotLinearizable { partition } => {
                let ops: Vec<String> = partition
                    .iter()
                    .map(|&i| format!("{:?}", history[i]))
                    .collect();
                Err(self.fail(format!(
                    "history is not linearizable; offending key's operations:\n  {}",
                    ops.join("\n  ")
                )))
            }
        }
    }

    /// Human-readable state of every node and open client operation (for failure reports).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for h in self.hosts.values() {
            match &h.engine {
                Some(e) => s.push_str(&format!(
                    "  node {}: {:?} term {} leader {:?} commit {} applied {} last {} floor {} durable {} snap {} members {:?} installing {} machine.applied {} waiting {:?} reads {:?}\n",
                    h.id,
                    e.role(),
                    e.term(),
                    e.leader(),
                    e.commit_index(),
                    e.applied_index(),
                    e.last_index(),
                    e.log_floor(),
                    e.durable_index(),
                    e.snapshot().index,
                    e.membership(),
                    e.is_installing_snapshot(),
                    h.machine.applied,
                    h.waiting_apply,
                    h.pending_reads,
                )),
                None => s.push_str(&format!("  node {}: down\n", h.id)),
            }
        }
        for c in &self.clients {
            if let Some(op) = &c.op {
                s.push_str(&format!(
                    "  client session {:?}: target {} op {:?} tag {:?} attempts {} deadline {}\n",
                    c.session, c.target, op.input, op.tag, op.attempts, op.deadline
                ));
            }
        }
        s
    }
}
