//! Elections: the election timer, pre-vote, vote requests and answers,
//! leader stickiness, check-quorum, and leadership transfer.

use super::*;

/// What only a (pre-)candidate holds. `Engine::candidate` is `Some` exactly
/// while the role is `PreCandidate` or `Candidate`.
pub(super) struct CandidateState {
    /// Answers so far, by node (`true`: granted), this node's own vote
    /// included. Answers from nodes that are not voters never count.
    pub(super) votes: BTreeMap<NodeId, bool>,
}

impl CandidateState {
    /// A fresh round in which `id` has voted for itself.
    fn new(id: NodeId) -> Self {
        CandidateState {
            votes: BTreeMap::from([(id, true)]),
        }
    }
}

/// A leadership transfer in progress (held in `LeaderState::transfer`).
pub(super) struct Transfer {
    /// The voter that is to become leader.
    pub(super) to: NodeId,
    /// Ticks since the transfer started (below `transfer_timeout_ticks`).
    pub(super) elapsed: u32,
    /// `TimeoutNow` went out (once the target had caught up).
    pub(super) timeout_now_sent: bool,
}

impl Engine {
    // ----- timer -----------------------------------------------------------

    /// A follower's or candidate's tick: time since the leader was heard
    /// from, and a new (pre-)election when the randomized timeout runs out.
    pub(super) fn tick_election_timer(&mut self) {
        self.ticks_since_leader_contact = self.ticks_since_leader_contact.saturating_add(1);
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            if self.membership().voters.contains(&self.id) {
                if self.cfg.pre_vote {
                    self.become_pre_candidate();
                } else {
                    self.campaign(false);
                }
            }
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_timeout = self
            .rng
            .u32(self.cfg.election_timeout_min_ticks..self.cfg.election_timeout_max_ticks);
    }

    /// Leader stickiness: a node that leads, or heard from a leader within
    /// `election_timeout_min_ticks`, refuses (pre-)votes that are not for a
    /// leadership transfer.
    pub(super) fn leader_recently_heard(&self) -> bool {
        self.role == Role::Leader
            || self.ticks_since_leader_contact < self.cfg.election_timeout_min_ticks
    }

    // ----- role changes ----------------------------------------------------

    /// Follows `leader` (if known) in `term` (if newer, the vote is cleared).
    /// A leader stepping down drops its leader state; the reads it was
    /// holding fail with a hint at the new leader.
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.persist.hs_dirty = true;
        }
        self.role = Role::Follower;
        self.leader_id = leader;
        if leader.is_some() {
            self.ticks_since_leader_contact = 0;
        }
        self.reset_election_timer();
        if let Some(lead) = self.leader.take() {
            let hint = self.leader_id;
            for r in lead.pending_reads {
                self.outbox.actions.push(Action::ReadFailed {
                    id: r.id,
                    error: ReadError::NotLeader { leader_hint: hint },
                });
            }
        }
        self.candidate = None;
    }

    /// Starts a pre-vote round for the next term (thesis §9.6); the term is
    /// not incremented until a majority would vote for us.
    pub(super) fn become_pre_candidate(&mut self) {
        self.stats.pre_votes_started += 1;
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.candidate = Some(CandidateState::new(self.id));
        self.reset_election_timer();
        if self.vote_result() == VoteResult::Won {
            self.campaign(false);
            return;
        }
        // A pre-vote asks for the prospective term and reveals no durable
        // state, so it is not held for a persist.
        self.request_votes(true, false);
    }

    /// Starts an election in a new term, voting for ourselves (`transfer`:
    /// asked for by the leader, so stickiness does not apply).
    pub(super) fn campaign(&mut self, transfer: bool) {
        self.stats.elections_started += 1;
        self.term += 1;
        self.vote = Some(self.id);
        self.persist.hs_dirty = true;
        self.role = Role::Candidate;
        self.leader_id = None;
        self.candidate = Some(CandidateState::new(self.id));
        self.reset_election_timer();
        if self.vote_result() == VoteResult::Won {
            self.become_leader();
            return;
        }
        // A real vote request carries the new term and our own vote: it
        // must wait until both are durable.
        self.request_votes(false, transfer);
    }

    /// Takes the leadership of the current term: fresh leader state, and a
    /// no-op entry so that entries of earlier terms commit (§5.4.2).
    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.ticks_since_leader_contact = 0;
        self.candidate = None;
        let index = self.log.last_index() + 1;
        self.leader = Some(LeaderState::new(
            self.id,
            self.membership(),
            index,
            self.read_ctx,
        ));
        self.log.append(Entry {
            index,
            term: self.term,
            kind: EntryKind::Noop,
        });
        self.maybe_commit();
    }

    // ----- voting ----------------------------------------------------------

    /// Ask every other voter for a (pre-)vote with our last log position.
    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let (lli, llt) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .collect();
        for v in voters {
            let body = MessageBody::RequestVote {
                pre_vote,
                last_log_index: lli,
                last_log_term: llt,
                leadership_transfer: transfer,
            };
            if pre_vote {
                self.send_with_term(v, self.term + 1, body, false);
            } else {
                self.send(v, body, true);
            }
        }
    }

    fn vote_result(&self) -> VoteResult {
        match &self.candidate {
            Some(c) => quorum::vote_result(&self.membership().voters, &c.votes),
            None => VoteResult::Pending,
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        if let Some(c) = &mut self.candidate {
            c.votes.insert(from, granted);
        }
    }

    /// §5.4.1: a candidate's log is at least as up to date as ours.
    fn log_up_to_date(&self, lli: LogIndex, llt: Term) -> bool {
        (llt, lli) >= (self.log.last_term(), self.log.last_index())
    }

    pub(super) fn on_request_vote(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        lli: LogIndex,
        llt: Term,
        transfer: bool,
    ) {
        if pre_vote {
            let sticky = !transfer && self.leader_recently_heard();
            if sticky {
                self.stats.votes_refused_sticky += 1;
            }
            let grant = term > self.term && !sticky && self.log_up_to_date(lli, llt);
            let t = if grant { term } else { self.term };
            let ap = !grant && !self.persist.hs_durable();
            self.send_with_term(
                from,
                t,
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: grant,
                },
                ap,
            );
            return;
        }
        // term == self.term here.
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader_id.is_none());
        let grant = can_vote && self.log_up_to_date(lli, llt) && self.role != Role::Leader;
        if grant {
            if self.vote != Some(from) {
                self.vote = Some(from);
                self.persist.hs_dirty = true;
            }
            self.reset_election_timer();
        }
        self.send(
            from,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: grant,
            },
            true,
        );
    }

    pub(super) fn on_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        granted: bool,
    ) {
        match self.role {
            Role::PreCandidate if pre_vote && term == self.term + 1 => {
                self.record_vote(from, granted);
                match self.vote_result() {
                    VoteResult::Won => self.campaign(false),
                    VoteResult::Lost => self.become_follower(self.term, None),
                    VoteResult::Pending => {}
                }
            }
            // A refusal stamped with our current term rather than the
            // prospective one: it counts toward losing, never toward winning.
            Role::PreCandidate if pre_vote && !granted && term == self.term => {
                self.record_vote(from, false);
                if self.vote_result() == VoteResult::Lost {
                    self.become_follower(self.term, None);
                }
            }
            Role::Candidate if !pre_vote && term == self.term => {
                self.record_vote(from, granted);
                match self.vote_result() {
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => self.become_follower(self.term, None),
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
    }

    // ----- check-quorum ----------------------------------------------------

    /// Leader: once every `election_timeout_min_ticks`, step down unless a
    /// quorum of voters was heard from since the previous round
    /// (check-quorum). Returns false if this ended the leadership.
    pub(super) fn tick_check_quorum(&mut self) -> bool {
        let Some(lead) = &mut self.leader else {
            return false;
        };
        lead.check_quorum_elapsed += 1;
        if lead.check_quorum_elapsed < self.cfg.election_timeout_min_ticks {
            return true;
        }
        lead.check_quorum_elapsed = 0;
        if self.cfg.check_quorum {
            let voters = &membership::effective(&self.conf_entries, &self.base_membership).voters;
            let active = quorum::has_quorum(voters, |id| {
                id == self.id || lead.progress.get(&id).is_some_and(|p| p.recent_active)
            });
            if !active {
                self.stats.check_quorum_step_downs += 1;
                self.become_follower(self.term, None);
                return false;
            }
        }
        for pr in lead.progress.values_mut() {
            pr.recent_active = false;
        }
        true
    }

    // ----- leadership transfer ---------------------------------------------

    /// Leader: hand the leadership to voter `to` (TimeoutNow once it has
    /// caught up). The lease is revoked for the rest of the term.
    pub(super) fn transfer_leadership(&mut self, to: NodeId) {
        let Some(lead) = &mut self.leader else {
            return;
        };
        let voters = &membership::effective(&self.conf_entries, &self.base_membership).voters;
        if to == self.id || !voters.contains(&to) {
            return;
        }
        if lead.transfer.as_ref().is_some_and(|t| t.to == to) {
            return;
        }
        lead.lease_revoked = true;
        lead.transfer = Some(Transfer {
            to,
            elapsed: 0,
            timeout_now_sent: false,
        });
        let caught_up = lead
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.maybe_send_timeout_now(to);
        }
    }

    /// Leader: a transfer that has not completed in `transfer_timeout_ticks` is aborted.
    pub(super) fn tick_transfer(&mut self) {
        let Some(lead) = &mut self.leader else {
            return;
        };
        if let Some(t) = &mut lead.transfer {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.transfer_timeout_ticks {
                // Abort; the lease stays revoked for this term (a late
                // TimeoutNow could still start an election).
                lead.transfer = None;
            }
        }
    }

    /// Leader: `from` has caught up; if it is the transfer target, tell it
    /// to campaign now (once).
    pub(super) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let Some(t) = self.leader.as_mut().and_then(|l| l.transfer.as_mut()) else {
            return;
        };
        if t.to == from && !t.timeout_now_sent {
            t.timeout_now_sent = true;
            self.send(from, MessageBody::TimeoutNow, false);
        }
    }
}
