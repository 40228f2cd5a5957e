//! Membership changes: configurations are log entries and take effect on append.

use super::*;

impl Engine {
    pub(super) fn membership_at(&self, index: LogIndex) -> Membership {
        self.conf_entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone())
    }

    /// Leader: the membership a proposed change leads to, or why it is
    /// refused now. At most one change is uncommitted at a time, and only
    /// once this term's no-op is committed; a learner is promoted only once
    /// it is within `learner_promote_lag_entries` of the commit index.
    pub(super) fn admit_conf_change(&self, cc: ConfChange) -> Result<Membership, ProposalError> {
        if self.commit < self.term_start_index {
            return Err(ProposalError::ConfChange(ConfChangeError::LeaderNotReady));
        }
        if let Some((i, _)) = self.conf_entries.last()
            && *i > self.commit
        {
            return Err(ProposalError::ConfChange(ConfChangeError::ChangeInFlight(
                *i,
            )));
        }
        if let ConfChange::PromoteLearner(l) = cc
            && let Some(pr) = self.progress.get(&l)
        {
            let needed = self
                .commit
                .saturating_sub(self.cfg.learner_promote_lag_entries);
            if pr.match_index < needed {
                return Err(ProposalError::ConfChange(
                    ConfChangeError::LearnerNotCaughtUp {
                        id: l,
                        match_index: pr.match_index,
                        needed,
                    },
                ));
            }
        }
        self.membership.apply(cc).map_err(ProposalError::ConfChange)
    }

    /// The membership changed (on append, truncation or snapshot install):
    /// tell the host; a leader tracks exactly the new members and drops a
    /// transfer to a node that is no longer a voter; a candidate that is no
    /// longer a voter gives up.
    pub(super) fn on_membership_changed(&mut self) {
        self.tail.push(Action::MembershipChanged {
            membership: self.membership.clone(),
        });
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let members: Vec<NodeId> = self
                .membership
                .members()
                .filter(|m| *m != self.id)
                .collect();
            self.progress.retain(|id, _| members.contains(id));
            for m in members {
                self.progress
                    .entry(m)
                    .or_insert_with(|| Progress::new(next));
            }
            if let Some(t) = &self.transfer
                && !self.membership.voters.contains(&t.to)
            {
                self.transfer = None;
            }
            self.maybe_commit();
        } else if !self.membership.voters.contains(&self.id)
            && matches!(self.role, Role::Candidate | Role::PreCandidate)
        {
            self.become_follower(self.term, None);
        }
    }
}
