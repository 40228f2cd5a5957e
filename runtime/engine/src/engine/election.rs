//! Elections: the election timer, pre-vote, vote requests and answers,
//! leader stickiness, and leadership transfer.

use super::*;

pub(super) struct Transfer {
    pub(super) to: NodeId,
    pub(super) elapsed: u32,
    pub(super) timeout_now_sent: bool,
}

impl Engine {
    /// A follower's or candidate's tick: time since the leader was heard
    /// from, and a new (pre-)election when the randomized timeout runs out.
    pub(super) fn tick_election_timer(&mut self) {
        self.ticks_since_leader_contact = self.ticks_since_leader_contact.saturating_add(1);
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            if self.membership.voters.contains(&self.id) {
                if self.cfg.pre_vote {
                    self.become_pre_candidate();
                } else {
                    self.campaign(false);
                }
            }
        }
    }

    /// Leader: once every `election_timeout_min_ticks`, step down unless a
    /// quorum of voters was heard from since the previous round
    /// (check-quorum). Returns false if this ended the leadership.
    pub(super) fn tick_check_quorum(&mut self) -> bool {
        self.check_quorum_elapsed += 1;
        if self.check_quorum_elapsed < self.cfg.election_timeout_min_ticks {
            return true;
        }
        self.check_quorum_elapsed = 0;
        if self.cfg.check_quorum {
            let active = quorum::has_quorum(&self.membership.voters, |id| {
                id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active)
            });
            if !active {
                self.stats.check_quorum_step_downs += 1;
                self.become_follower(self.term, None);
                return false;
            }
        }
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        true
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_timeout = self
            .rng
            .u32(self.cfg.election_timeout_min_ticks..self.cfg.election_timeout_max_ticks);
    }

    pub(super) fn leader_recently_heard(&self) -> bool {
        self.role == Role::Leader
            || self.ticks_since_leader_contact < self.cfg.election_timeout_min_ticks
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.hs_dirty = true;
        }
        let was_leader = self.role == Role::Leader;
        self.role = Role::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.ticks_since_leader_contact = 0;
        }
        self.reset_election_timer();
        if was_leader {
            self.progress.clear();
            self.transfer = None;
            self.hb_rounds.clear();
            self.lease_until = 0;
            self.lease_revoked = false;
            self.read_broadcast_needed = false;
            let hint = self.leader;
            for r in std::mem::take(&mut self.pending_reads) {
                self.tail.push(Action::ReadFailed {
                    id: r.id,
                    error: ReadError::NotLeader { leader_hint: hint },
                });
            }
        }
        self.votes.clear();
    }

    pub(super) fn become_pre_candidate(&mut self) {
        self.stats.pre_votes_started += 1;
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.vote_result() == VoteResult::Won {
            self.campaign(false);
            return;
        }
        // A pre-vote asks for the prospective term and reveals no durable
        // state, so it is not held for a persist.
        self.request_votes(true, false);
    }

    pub(super) fn campaign(&mut self, transfer: bool) {
        self.stats.elections_started += 1;
        self.term += 1;
        self.vote = Some(self.id);
        self.hs_dirty = true;
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.vote_result() == VoteResult::Won {
            self.become_leader();
            return;
        }
        // A real vote request carries the new term and our own vote: it
        // must wait until both are durable.
        self.request_votes(false, transfer);
    }

    /// Ask every other voter for a (pre-)vote with our last log position.
    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let (lli, llt) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .membership
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
        quorum::vote_result(&self.membership.voters, &self.votes)
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.ticks_since_leader_contact = 0;
        self.heartbeat_elapsed = 0;
        self.check_quorum_elapsed = 0;
        self.transfer = None;
        self.lease_revoked = false;
        self.lease_until = 0;
        self.hb_rounds.clear();
        self.quorum_ctx = self.read_ctx;
        self.votes.clear();
        self.progress.clear();
        let next = self.log.last_index() + 1;
        let members: Vec<NodeId> = self
            .membership
            .members()
            .filter(|m| *m != self.id)
            .collect();
        for m in members {
            self.progress.insert(m, Progress::new(next));
        }
        let idx = self.log.last_index() + 1;
        self.term_start_index = idx;
        self.log.append(Entry {
            index: idx,
            term: self.term,
            kind: EntryKind::Noop,
        });
        self.maybe_commit();
    }

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
            let ap = !grant && !self.hs_durable();
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
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let grant = can_vote && self.log_up_to_date(lli, llt) && self.role != Role::Leader;
        if grant {
            if self.vote != Some(from) {
                self.vote = Some(from);
                self.hs_dirty = true;
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
                self.votes.insert(from, granted);
                match self.vote_result() {
                    VoteResult::Won => self.campaign(false),
                    VoteResult::Lost => self.become_follower(self.term, None),
                    VoteResult::Pending => {}
                }
            }
            // A refusal stamped with our current term rather than the
            // prospective one: it counts toward losing, never toward winning.
            Role::PreCandidate if pre_vote && !granted && term == self.term => {
                self.votes.insert(from, false);
                if self.vote_result() == VoteResult::Lost {
                    self.become_follower(self.term, None);
                }
            }
            Role::Candidate if !pre_vote && term == self.term => {
                self.votes.insert(from, granted);
                match self.vote_result() {
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => self.become_follower(self.term, None),
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
    }

    /// Leader: a transfer that has not completed in `transfer_timeout_ticks` is aborted.
    pub(super) fn tick_transfer(&mut self) {
        if let Some(t) = &mut self.transfer {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.transfer_timeout_ticks {
                // Abort; the lease stays revoked for this term (a late
                // TimeoutNow could still start an election).
                self.transfer = None;
            }
        }
    }

    pub(super) fn transfer_leadership(&mut self, to: NodeId) {
        if self.role != Role::Leader || to == self.id || !self.membership.voters.contains(&to) {
            return;
        }
        if self.transfer.as_ref().is_some_and(|t| t.to == to) {
            return;
        }
        self.lease_revoked = true;
        self.transfer = Some(Transfer {
            to,
            elapsed: 0,
            timeout_now_sent: false,
        });
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.maybe_send_timeout_now(to);
        }
    }

    pub(super) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let Some(t) = &mut self.transfer else { return };
        if t.to == from && !t.timeout_now_sent {
            t.timeout_now_sent = true;
            self.send(from, MessageBody::TimeoutNow, false);
        }
    }
}
