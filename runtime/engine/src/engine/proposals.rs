//! Proposals, from admission at the leader to their outcome at commit, and
//! handing committed entries out for apply.

use super::*;

impl Engine {
    // ----- admission -------------------------------------------------------

    /// A proposal: appended to the leader's log, or refused at once with an
    /// [`Action::ProposalResult`].
    pub(super) fn propose(&mut self, id: ProposalId, kind: EntryKind) {
        let r = self.try_propose(id, kind);
        if let Err(e) = r {
            self.outbox
                .actions
                .push(Action::ProposalResult { id, result: Err(e) });
        }
    }

    fn try_propose(&mut self, id: ProposalId, mut kind: EntryKind) -> Result<(), ProposalError> {
        let Some(lead) = &self.leader else {
            return Err(ProposalError::NotLeader {
                leader_hint: self.leader_id,
            });
        };
        if lead.transfer.is_some() {
            return Err(ProposalError::TransferInProgress);
        }
        if self.pending_props.len() >= self.cfg.pending_proposals_max {
            return Err(ProposalError::Busy {
                pending: self.pending_props.len(),
                max: self.cfg.pending_proposals_max,
            });
        }
        let mut new_membership = None;
        match &mut kind {
            EntryKind::Command { data, .. } if data.len() > self.cfg.command_bytes_max => {
                return Err(ProposalError::TooLarge {
                    bytes: data.len(),
                    max: self.cfg.command_bytes_max,
                });
            }
            EntryKind::ConfChange(ce) => {
                let m = self.admit_conf_change(lead, ce.change)?;
                ce.membership = m.clone();
                new_membership = Some(m);
            }
            _ => {}
        }
        let index = self.log.last_index() + 1;
        self.log.append(Entry {
            index,
            term: self.term,
            kind,
        });
        // In index order, whatever an earlier leadership left pending: a leadership that starts
        // below proposals of an earlier one (whose entries were truncated) must not queue its
        // own behind them, or their results would come after their `Apply`. Almost always
        // this is the back.
        let at = self
            .pending_props
            .partition_point(|&(i, t, _)| (i, t) <= (index, self.term));
        self.pending_props.insert(at, (index, self.term, id));
        if let Some(m) = new_membership {
            self.record_conf_entry(index, m);
            self.on_membership_changed();
        }
        Ok(())
    }

    // ----- outcome and apply -----------------------------------------------

    /// Hands out committed entries (at most `apply_entries_max` per
    /// [`Action::Apply`]), each proposal's outcome just before the batch
    /// holding its index: `Ok` if the entry committed there is the one
    /// proposed (same term), else `Superseded`. Nothing while a snapshot is
    /// being installed.
    pub(super) fn emit_apply(&mut self) {
        if self.installing.is_some() {
            return;
        }
        while self.applied < self.commit {
            let hi = self
                .commit
                .min(self.applied + self.cfg.apply_entries_max as u64);
            while let Some(&(idx, t, id)) = self.pending_props.front() {
                if idx > hi {
                    break;
                }
                self.pending_props.pop_front();
                let result = if self.log.term(idx) == Some(t) {
                    Ok(idx)
                } else {
                    Err(ProposalError::Superseded { index: idx })
                };
                self.outbox
                    .actions
                    .push(Action::ProposalResult { id, result });
            }
            let entries: Vec<Entry> = self.log.range(self.applied + 1, hi).cloned().collect();
            debug_assert_eq!(
                entries.len() as u64,
                hi - self.applied,
                "committed entries missing from log"
            );
            if entries.is_empty() {
                return;
            }
            self.applied = hi;
            self.outbox.actions.push(Action::Apply { entries });
        }
    }

    /// A snapshot installed at `index` decides the proposals it covers:
    /// with the log's suffix kept, by the term of the entry at each index;
    /// otherwise the outcome is unknown (the entries are gone).
    pub(super) fn resolve_proposals_covered_by(&mut self, index: LogIndex, keep_suffix: bool) {
        while let Some(&(idx, t, id)) = self.pending_props.front() {
            if idx > index {
                break;
            }
            self.pending_props.pop_front();
            let result = if keep_suffix {
                if self.log.term(idx) == Some(t) {
                    Ok(idx)
                } else {
                    Err(ProposalError::Superseded { index: idx })
                }
            } else {
                Err(ProposalError::OutcomeUnknown { index: idx })
            };
            self.outbox
                .actions
                .push(Action::ProposalResult { id, result });
        }
    }
}
