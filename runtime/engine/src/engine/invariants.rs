//! [`Engine::check_invariants`]: the invariants stated on the engine's
//! fields, checked. The simulator calls it after every poll, and after every
//! step whose poll it defers, on every node it drives.
//!
//! Deliberately absent, because they do not hold: that the outbox holds no
//! message of an older term (a held message is dropped when released, not
//! when the term moves on); that pending proposals are ordered by index (a
//! leadership that starts below an earlier one's truncated proposals queues
//! behind them); that a node's commit index is durable on it (a follower
//! learns commit indexes beyond its durable log, and applies them: they are
//! durable on a majority); and that the log floor is at most the durable
//! index (a snapshot may cover entries this node never wrote).

use super::outbox::HELD_MSGS_MAX;
use super::reads::HB_ROUNDS_MAX;
use super::*;

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl Engine {
    /// Checks the engine's internal invariants, as stated on its fields:
    /// role and role-specific state agree; `floor <= snapshot <= applied <=
    /// commit <= last`; the log is contiguous with non-decreasing terms no
    /// newer than the current term; the recorded configuration entries are
    /// exactly the log's; the persist bookkeeping and
    /// the held messages are consistent with what was handed out and
    /// reported durable; proposals and (leader) reads, heartbeat rounds,
    /// transfer, timers and every follower's progress are within their
    /// bounds and orders.
    ///
    /// Returns a description of the first violation found. It holds after
    /// every [`Engine::step`] and [`Engine::poll_actions`], whatever the host
    /// does within its contract and whatever the network does to messages
    /// (loss, duplication, delay, reordering), as long as peers run this
    /// protocol; forged messages can break the bounds on a follower's
    /// progress.
    ///
    /// Cost: O(entries above the floor + members + pending proposals, reads
    /// and held messages). Meant for tests and simulators, not the hot path.
    ///
    /// # Errors
    /// The first invariant found violated, with the values involved.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_role_state()?;
        let conf_in_log = self.check_log()?;
        self.check_membership(conf_in_log)?;
        self.check_persist_and_outbox()?;
        self.check_proposals()?;
        if let Some(lead) = &self.leader {
            self.check_leader(lead)?;
        }
        Ok(())
    }

    fn check_role_state(&self) -> Result<(), String> {
        let (role, id) = (self.role, self.id);
        ensure!(
            self.leader.is_some() == (role == Role::Leader),
            "role {role:?} but leader state present: {}",
            self.leader.is_some()
        );
        let campaigning = matches!(role, Role::PreCandidate | Role::Candidate);
        ensure!(
            self.candidate.is_some() == campaigning,
            "role {role:?} but candidate state present: {}",
            self.candidate.is_some()
        );
        match role {
            Role::Leader => {
                ensure!(
                    self.leader_id == Some(id) && self.vote == Some(id),
                    "leader of term {} with known leader {:?} and vote {:?}",
                    self.term,
                    self.leader_id,
                    self.vote
                );
            }
            Role::Candidate | Role::PreCandidate => {
                ensure!(
                    self.leader_id.is_none(),
                    "{role:?} in term {} knows leader {:?}",
                    self.term,
                    self.leader_id
                );
                ensure!(
                    role == Role::PreCandidate || self.vote == Some(id),
                    "candidate in term {} voted for {:?}",
                    self.term,
                    self.vote
                );
                let own = self.candidate.as_ref().and_then(|c| c.votes.get(&id));
                ensure!(
                    own == Some(&true),
                    "{role:?} has not counted its own vote ({own:?})"
                );
            }
            Role::Follower => {}
        }
        if role != Role::Leader {
            let (min, max) = (
                self.cfg.election_timeout_min_ticks,
                self.cfg.election_timeout_max_ticks,
            );
            ensure!(
                (min..max).contains(&self.randomized_timeout),
                "election timeout {} outside {min}..{max}",
                self.randomized_timeout
            );
            ensure!(
                self.election_elapsed < self.randomized_timeout,
                "election timer at {} of {} without an election",
                self.election_elapsed,
                self.randomized_timeout
            );
        }
        Ok(())
    }

    /// Returns the number of configuration entries in the log.
    fn check_log(&self) -> Result<usize, String> {
        let floor = self.log.floor_index();
        let last = self.log.last_index();
        let (snap, applied, commit) = (self.snapshot.index, self.applied, self.commit);
        ensure!(
            floor <= snap && snap <= applied && applied <= commit && commit <= last,
            "expected floor {floor} <= snapshot {snap} <= applied {applied} <= commit {commit} <= last {last}"
        );
        if floor == snap {
            ensure!(
                self.log.term(floor) == Some(self.snapshot.term),
                "floor {floor} has term {:?} but the snapshot there has term {}",
                self.log.term(floor),
                self.snapshot.term
            );
        }
        let mut prev_term = self.log.term(floor).unwrap_or(0);
        let mut conf_in_log = 0;
        for (k, e) in self.log.range(floor + 1, last).enumerate() {
            let expected = floor + 1 + k as u64;
            ensure!(
                e.index == expected,
                "log entry {k} above floor {floor} has index {}, expected {expected}",
                e.index
            );
            ensure!(
                e.term >= prev_term && e.term <= self.term,
                "log entry {} has term {} (previous term {prev_term}, current term {})",
                e.index,
                e.term,
                self.term
            );
            prev_term = e.term;
            if matches!(e.kind, EntryKind::ConfChange(_)) {
                conf_in_log += 1;
            }
        }
        Ok(conf_in_log)
    }

    fn check_membership(&self, conf_in_log: usize) -> Result<(), String> {
        let floor = self.log.floor_index();
        let last = self.log.last_index();
        let mut prev = floor;
        for (i, m) in &self.conf_entries {
            ensure!(
                *i > prev && *i <= last,
                "configuration entry at {i} out of order or outside the log {}..={last} (previous {prev})",
                floor + 1
            );
            prev = *i;
            // The recorded membership is a copy of the entry's, made on
            // append; comparing the sets on every check would cost more
            // than all the other checks together.
            let in_log = matches!(
                self.log.entry(*i).map(|e| &e.kind),
                Some(EntryKind::ConfChange(_))
            );
            ensure!(
                in_log,
                "configuration recorded at {i} ({m:?}) is not a configuration entry in the log"
            );
        }
        ensure!(
            conf_in_log == self.conf_entries.len(),
            "the log holds {conf_in_log} configuration entries, {} recorded",
            self.conf_entries.len()
        );
        Ok(())
    }

    fn check_persist_and_outbox(&self) -> Result<(), String> {
        let p = &self.persist;
        let floor = self.log.floor_index();
        let last = self.log.last_index();
        ensure!(
            p.unstable_from > floor && p.unstable_from <= last + 1,
            "unwritten range starts at {} outside the log {}..={}",
            p.unstable_from,
            floor + 1,
            last + 1
        );
        ensure!(
            p.trunc_pending
                .is_none_or(|t| t > floor && t <= p.host_last + 1),
            "pending truncation {:?} outside {}..={} (floor + 1, host's last index + 1)",
            p.trunc_pending,
            floor + 1,
            p.host_last + 1
        );
        ensure!(
            p.durable_index <= last,
            "durable index {} beyond the last index {last}",
            p.durable_index
        );
        ensure!(
            p.hs_seq <= p.persist_seq,
            "hard state carried by batch {} but only {} were handed out",
            p.hs_seq,
            p.persist_seq
        );
        let mut prev = p.durable_seq;
        for b in &p.inflight {
            ensure!(
                b.seq > prev && b.seq <= p.persist_seq,
                "unacknowledged batch {} out of order or outside {}..={}",
                b.seq,
                p.durable_seq + 1,
                p.persist_seq
            );
            prev = b.seq;
        }
        let held = &self.outbox.held;
        ensure!(
            held.len() <= HELD_MSGS_MAX,
            "{} messages held, bound {HELD_MSGS_MAX}",
            held.len()
        );
        let mut prev = p.durable_seq + 1;
        for (need, msg) in held {
            ensure!(
                *need >= prev && *need <= p.persist_seq + 1,
                "message to {} held for batch {need}: out of order or outside {}..={} (durable {}, handed out {})",
                msg.to,
                p.durable_seq + 1,
                p.persist_seq + 1,
                p.durable_seq,
                p.persist_seq
            );
            prev = *need;
            ensure!(
                msg.from == self.id && msg.term <= self.term,
                "held message from {} in term {} (this node {}, term {})",
                msg.from,
                msg.term,
                self.id,
                self.term
            );
        }
        Ok(())
    }

    fn check_proposals(&self) -> Result<(), String> {
        let max = self.cfg.pending_proposals_max;
        ensure!(
            self.pending_props.len() <= max,
            "{} proposals pending, pending_proposals_max = {max}",
            self.pending_props.len()
        );
        // Ordered by index (and by term among proposals of one index), so each is decided
        // when its own index is handed out; every one still pending is above `applied`.
        let mut prev = (0, 0);
        for &(index, term, id) in &self.pending_props {
            ensure!(
                term <= self.term && (index, term) > prev,
                "proposal {id} at index {index} (term {term}) out of order (previous: index {} term {}; current term {})",
                prev.0,
                prev.1,
                self.term
            );
            ensure!(
                index > self.applied,
                "proposal {id} at index {index} (term {term}) is still pending but index {} was applied: its result would come after its Apply",
                self.applied
            );
            prev = (index, term);
        }
        Ok(())
    }

    fn check_leader(&self, lead: &LeaderState) -> Result<(), String> {
        let last = self.log.last_index();
        let floor = self.log.floor_index();
        ensure!(
            self.log.last_term() == self.term,
            "leader of term {} whose last entry has term {}",
            self.term,
            self.log.last_term()
        );
        let start = lead.term_start_index;
        ensure!(
            start <= last && (start <= floor || self.log.term(start) == Some(self.term)),
            "term start {start} (term {:?}) is not an entry of term {} in the log ..={last}",
            self.log.term(start),
            self.term
        );
        // Voters and learners are disjoint (`Membership::apply` keeps them
        // so), so this counts the other members.
        let m = &self.membership();
        let others = m.voters.len() + m.learners.len() - usize::from(m.contains(self.id));
        ensure!(
            lead.progress.len() == others
                && lead.progress.keys().all(|&k| k != self.id && m.contains(k)),
            "leader tracks {:?} but the other members are {:?}",
            lead.progress.keys().collect::<Vec<_>>(),
            m.members().filter(|k| *k != self.id).collect::<Vec<_>>()
        );
        let max_inflight = self.cfg.inflight_append_msgs_max;
        for (id, pr) in &lead.progress {
            ensure!(
                pr.match_index < pr.next_index
                    && pr.match_index <= last
                    && pr.next_index <= last + 1,
                "follower {id}: match {} next {} (leader's last index {last})",
                pr.match_index,
                pr.next_index
            );
            ensure!(
                pr.inflight.is_empty() || pr.state == PrState::Replicate,
                "follower {id}: {} appends in flight in state {:?}",
                pr.inflight.len(),
                pr.state
            );
            ensure!(
                pr.inflight.len() <= max_inflight,
                "follower {id}: {} appends in flight, inflight_append_msgs_max = {max_inflight}",
                pr.inflight.len()
            );
            let mut prev = pr.match_index;
            for &i in &pr.inflight {
                ensure!(
                    i > prev && i < pr.next_index,
                    "follower {id}: in-flight append up to {i} out of order or outside {}..{} ",
                    pr.match_index + 1,
                    pr.next_index
                );
                prev = i;
            }
            if pr.state == PrState::Snapshot {
                ensure!(
                    pr.snap_index <= self.snapshot.index,
                    "follower {id}: being sent snapshot {} but the latest is {}",
                    pr.snap_index,
                    self.snapshot.index
                );
            }
        }
        if let Some(t) = &lead.transfer {
            ensure!(
                t.to != self.id && self.membership().voters.contains(&t.to),
                "transfer to {} which is this node or not a voter",
                t.to
            );
            ensure!(
                t.elapsed < self.cfg.transfer_timeout_ticks,
                "transfer running for {} ticks, transfer_timeout_ticks = {}",
                t.elapsed,
                self.cfg.transfer_timeout_ticks
            );
        }
        ensure!(
            lead.heartbeat_elapsed < self.cfg.heartbeat_interval_ticks
                && lead.check_quorum_elapsed < self.cfg.election_timeout_min_ticks,
            "leader timers at heartbeat {} / {}, check-quorum {} / {}",
            lead.heartbeat_elapsed,
            self.cfg.heartbeat_interval_ticks,
            lead.check_quorum_elapsed,
            self.cfg.election_timeout_min_ticks
        );
        ensure!(
            lead.quorum_ctx <= self.read_ctx,
            "a majority answered heartbeat round {} but only {} were sent",
            lead.quorum_ctx,
            self.read_ctx
        );
        ensure!(
            lead.hb_rounds.len() <= HB_ROUNDS_MAX,
            "{} heartbeat rounds tracked, bound {HB_ROUNDS_MAX}",
            lead.hb_rounds.len()
        );
        let mut prev = lead.quorum_ctx;
        for &(ctx, sent) in &lead.hb_rounds {
            ensure!(
                ctx > prev && ctx <= self.read_ctx && sent <= self.now_ticks,
                "heartbeat round {ctx} (sent at tick {sent}) out of order or outside {}..={} (now {})",
                lead.quorum_ctx + 1,
                self.read_ctx,
                self.now_ticks
            );
            prev = ctx;
        }
        let max = self.cfg.pending_reads_max;
        ensure!(
            lead.pending_reads.len() <= max,
            "{} reads pending, pending_reads_max = {max}",
            lead.pending_reads.len()
        );
        let mut prev = 0;
        for r in &lead.pending_reads {
            ensure!(
                r.ctx >= prev && r.ctx <= self.read_ctx + 1 && r.index <= self.commit,
                "read {} waits for round {} at index {} (previous round {prev}, rounds sent {}, commit {})",
                r.id,
                r.ctx,
                r.index,
                self.read_ctx,
                self.commit
            );
            prev = r.ctx;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single voter that has elected itself and committed its no-op.
    fn single_voter_leader() -> Engine {
        let mut e = Engine::new(
            Config::new(1, 7),
            InitialState {
                snapshot: SnapshotMeta {
                    membership: Membership::with_voters([1]),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .expect("engine");
        let mut out = Vec::new();
        for _ in 0..30 {
            e.step(Event::Tick).expect("tick");
            e.poll_actions(&mut out);
            for a in out.drain(..) {
                if let Action::Persist(b) = a {
                    e.step(Event::Persisted { seq: b.seq }).expect("persisted");
                }
            }
        }
        assert_eq!(e.role(), Role::Leader);
        assert_eq!(e.commit_index(), 1);
        e
    }

    fn violation(e: &Engine) -> String {
        e.check_invariants()
            .expect_err("a broken invariant must be reported")
    }

    #[test]
    fn a_fresh_engine_and_an_elected_leader_satisfy_every_invariant() {
        let fresh = Engine::new(Config::new(2, 7), InitialState::default()).expect("engine");
        assert_eq!(fresh.check_invariants(), Ok(()));
        assert_eq!(single_voter_leader().check_invariants(), Ok(()));
    }

    #[test]
    fn leader_state_without_the_leader_role_is_reported() {
        let mut e = single_voter_leader();
        e.role = Role::Follower;
        assert!(
            violation(&e).contains("leader state present"),
            "{}",
            violation(&e)
        );
    }

    #[test]
    fn a_commit_index_beyond_the_log_is_reported() {
        let mut e = single_voter_leader();
        e.commit = e.log.last_index() + 1;
        assert!(violation(&e).contains("commit"), "{}", violation(&e));
    }

    #[test]
    fn an_entry_from_a_future_term_is_reported() {
        let mut e = single_voter_leader();
        e.log.append(Entry {
            index: e.log.last_index() + 1,
            term: e.term + 1,
            kind: EntryKind::Noop,
        });
        assert!(violation(&e).contains("has term"), "{}", violation(&e));
    }

    #[test]
    fn a_held_message_for_a_batch_already_durable_is_reported() {
        let mut e = single_voter_leader();
        let msg = Message {
            from: 1,
            to: 2,
            term: e.term,
            body: MessageBody::TimeoutNow,
        };
        e.outbox.held.push_back((e.persist.durable_seq, msg));
        assert!(
            violation(&e).contains("held for batch"),
            "{}",
            violation(&e)
        );
    }

    #[test]
    fn a_follower_progress_matching_beyond_the_log_is_reported() {
        let mut e = single_voter_leader();
        // Track a learner, then claim it holds more than the leader has.
        let m = e
            .membership()
            .apply(ConfChange::AddLearner(2))
            .expect("learner");
        let index = e.log.last_index() + 1;
        e.log.append(Entry {
            index,
            term: e.term,
            kind: EntryKind::ConfChange(ConfChangeEntry {
                change: ConfChange::AddLearner(2),
                membership: m.clone(),
            }),
        });
        e.record_conf_entry(index, m);
        e.on_membership_changed();
        assert_eq!(e.check_invariants(), Ok(()));
        let pr = e
            .leader
            .as_mut()
            .and_then(|l| l.progress.get_mut(&2))
            .expect("tracked");
        pr.match_index = index + 5;
        pr.next_index = index + 6;
        assert!(violation(&e).contains("follower 2"), "{}", violation(&e));
    }
}
