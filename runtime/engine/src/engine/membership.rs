//! Membership changes. A configuration is a log entry carrying the whole
//! resulting [`Membership`]; it takes effect on append, on every node, and
//! is undone if the entry is truncated. A leader admits one uncommitted
//! change at a time, and only once its term's no-op is committed.

use super::*;

/// The effective membership: the last configuration entry's, else the one
/// at the floor. Over the two fields rather than `&Engine`, so that a caller
/// may hold other fields mutably meanwhile.
pub(super) fn effective<'a>(
    conf_entries: &'a [(LogIndex, Membership)],
    base: &'a Membership,
) -> &'a Membership {
    conf_entries.last().map_or(base, |(_, m)| m)
}

impl Engine {
    /// The membership in force at `index` (at or above the floor).
    pub(super) fn membership_at(&self, index: LogIndex) -> Membership {
        self.conf_entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone())
    }

    /// A configuration entry resulting in `membership` was appended at `index`.
    pub(super) fn record_conf_entry(&mut self, index: LogIndex, membership: Membership) {
        self.conf_entries.push((index, membership));
    }

    /// The log was truncated from `index` on: configurations there are
    /// undone.
    pub(super) fn truncate_conf_entries(&mut self, index: LogIndex) {
        let before = self.conf_entries.len();
        self.conf_entries.retain(|(i, _)| *i < index);
        if self.conf_entries.len() != before {
            self.on_membership_changed();
        }
    }

    /// The log was compacted up to `up_to`: configurations there fold into
    /// the membership at the floor.
    pub(super) fn compact_conf_entries(&mut self, up_to: LogIndex) {
        let mut base = self.base_membership.clone();
        self.conf_entries.retain(|(i, m)| {
            if *i <= up_to {
                base = m.clone();
                false
            } else {
                true
            }
        });
        self.base_membership = base;
    }

    /// Leader: the membership a proposed change leads to, or why it is
    /// refused now. At most one change is uncommitted at a time, and only
    /// once this term's no-op is committed; a learner is promoted only once
    /// it is within `learner_promote_lag_entries` of the commit index.
    pub(super) fn admit_conf_change(
        &self,
        lead: &LeaderState,
        cc: ConfChange,
    ) -> Result<Membership, ProposalError> {
        if self.commit < lead.term_start_index {
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
            && let Some(pr) = lead.progress.get(&l)
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
        self.membership()
            .apply(cc)
            .map_err(ProposalError::ConfChange)
    }

    /// The membership changed (on append, truncation or snapshot install):
    /// tell the host; a leader tracks exactly the new members and drops a
    /// transfer to a node that is no longer a voter; a candidate that is no
    /// longer a voter gives up.
    pub(super) fn on_membership_changed(&mut self) {
        let membership = self.membership().clone();
        self.outbox
            .actions
            .push(Action::MembershipChanged { membership });
        if let Some(lead) = &mut self.leader {
            let next = self.log.last_index() + 1;
            let current = effective(&self.conf_entries, &self.base_membership);
            let members: Vec<NodeId> = current.members().filter(|m| *m != self.id).collect();
            lead.progress.retain(|id, _| members.contains(id));
            for m in members {
                lead.progress
                    .entry(m)
                    .or_insert_with(|| Progress::new(next));
            }
            if let Some(t) = &lead.transfer
                && !current.voters.contains(&t.to)
            {
                lead.transfer = None;
            }
            self.maybe_commit();
        } else if !self.membership().voters.contains(&self.id)
            && matches!(self.role, Role::Candidate | Role::PreCandidate)
        {
            self.become_follower(self.term, None);
        }
    }
}
