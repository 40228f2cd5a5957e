//! The safety properties checked while the simulation runs: persist before
//! send, Log Matching, Leader Completeness, committed entries and state
//! machine digests that agree across nodes, Election Safety, at most one
//! uncommitted membership change on a leader, and every engine's own
//! invariants.

use super::*;

impl Sim {
    /// Persist-before-send: nothing leaves that reveals non-durable state.
    pub(super) fn check_send(&self, id: NodeId, m: &Message) -> Res<()> {
        let h = &self.hosts[&id];
        let prospective = matches!(
            m.body,
            MessageBody::RequestVote { pre_vote: true, .. }
                | MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true
                }
        );
        if !prospective && m.term > h.d_hs.term {
            return Err(self.fail(format!(
                "persist-before-send: node {id} sent {} with term {} but its durable term is {}",
                m.body.kind_name(),
                m.term,
                h.d_hs.term
            )));
        }
        match &m.body {
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } if !(h.d_hs.term > m.term
                || (h.d_hs.term == m.term && h.d_hs.vote == Some(m.to))) =>
            {
                // Durable means: this vote, or a later term (which can never vote in m.term again).
                return Err(self.fail(format!(
                        "persist-before-send: node {id} granted its vote to {} in term {} but durable state is {:?}",
                        m.to, m.term, h.d_hs
                    )));
            }
            MessageBody::AppendEntriesResponse {
                success: true,
                match_index,
                ..
            } => {
                let mi = *match_index;
                let durable = mi <= h.d_floor.max(h.d_snap.0.index) || h.d_log.contains_key(&mi);
                if !durable {
                    return Err(self.fail(format!(
                        "persist-before-send: node {id} acknowledged index {mi} to {} in term {} which is not durable (durable log ends at {:?}, durable floor {}, durable snapshot {}; engine commit {:?} durable_index {:?})",
                        m.to,
                        m.term,
                        h.d_log.keys().next_back(),
                        h.d_floor,
                        h.d_snap.0.index,
                        h.engine.as_ref().map(|e| e.commit_index()),
                        h.engine.as_ref().map(|e| e.durable_index()),
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn check_digest(&mut self, id: NodeId, index: LogIndex, d: u64) -> Res<()> {
        match self.digests.get(&index) {
            Some(&x) if x != d => Err(self.fail(format!(
                "state machine safety: node {id} has a different state digest at index {index}"
            ))),
            Some(_) => Ok(()),
            None => {
                self.digests.insert(index, d);
                Ok(())
            }
        }
    }

    pub(super) fn check_log_matching(&mut self, id: NodeId, b: &PersistBatch) -> Res<()> {
        let e = self.hosts[&id].engine.as_ref().expect("alive");
        let mut checks = Vec::with_capacity(b.entries.len());
        for (k, en) in b.entries.iter().enumerate() {
            let prev_term = if k > 0 {
                b.entries[k - 1].term
            } else {
                e.log_term(en.index - 1).unwrap_or(u64::MAX)
            };
            checks.push(((en.index, en.term), (hash_of(en), prev_term)));
        }
        for (key, val) in checks {
            match self.entries_seen.get(&key) {
                Some(&(h, pt))
                    if h != val.0 || (pt != val.1 && pt != u64::MAX && val.1 != u64::MAX) =>
                {
                    return Err(self.fail(format!(
                        "log matching: node {id} persisted entry (index {}, term {}) that differs from another node's",
                        key.0, key.1
                    )));
                }
                Some(_) => {}
                None => {
                    self.entries_seen.insert(key, val);
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_leader_completeness(&mut self, id: NodeId, term: Term) -> Res<()> {
        let e = self.hosts[&id].engine.as_ref().expect("alive");
        if let Some((&max, _)) = self.committed.last_key_value()
            && e.last_index() < max
        {
            return Err(self.fail(format!(
                    "leader completeness: node {id} became leader of term {term} with last index {} < committed {max}",
                    e.last_index()
                )));
        }
        for (&i, &(t, h)) in self.committed.range(e.log_floor() + 1..) {
            let ok = e
                .log_entry(i)
                .is_some_and(|en| en.term == t && hash_of(en) == h);
            if !ok {
                return Err(self.fail(format!(
                    "leader completeness: node {id} leader of term {term} lacks committed entry {i} (term {t})"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn check_node(&mut self, id: NodeId) -> Res<()> {
        let Some(e) = self.hosts[&id].engine.as_ref() else {
            return Ok(());
        };
        let commit = e.commit_index();
        let from = self.hosts[&id].checked_commit.max(e.log_floor());
        let mut found = Vec::new();
        for i in from + 1..=commit {
            if let Some(en) = e.log_entry(i) {
                found.push((i, en.term, hash_of(en)));
            }
        }
        let (role, term, unc) = (e.role(), e.term(), e.uncommitted_conf_changes());
        self.report.max_commit = self.report.max_commit.max(commit);
        self.report.max_term = self.report.max_term.max(term);
        self.hosts.get_mut(&id).expect("host").checked_commit = commit;
        for (i, t, h) in found {
            match self.committed.get(&i) {
                Some(&(t2, h2)) if (t2, h2) != (t, h) => {
                    return Err(self.fail(format!(
                        "state machine safety: node {id} committed (index {i}, term {t}) but (term {t2}) was committed before"
                    )));
                }
                Some(_) => {}
                None => {
                    self.committed.insert(i, (t, h));
                }
            }
        }
        if role == Role::Leader {
            match self.leaders.get(&term) {
                Some(&l) if l != id => {
                    return Err(self.fail(format!(
                        "election safety: nodes {l} and {id} are both leaders of term {term}"
                    )));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                }
            }
            if unc > 1 {
                return Err(self.fail(format!(
                    "leader {id} has {unc} uncommitted membership changes"
                )));
            }
        }
        Ok(())
    }

    /// The engine's own invariants ([`Engine::check_invariants`]) on node
    /// `id`: after every poll, and after every step whose poll is deferred
    /// (a step polled at once is checked after that poll; nothing can see
    /// the state in between).
    pub(super) fn check_engine_invariants(&self, id: NodeId) -> Res<()> {
        if let Some(e) = self.hosts.get(&id).and_then(|h| h.engine.as_ref())
            && let Err(v) = e.check_invariants()
        {
            return Err(self.fail(format!("node {id}: engine invariant violated: {v}")));
        }
        Ok(())
    }
}
