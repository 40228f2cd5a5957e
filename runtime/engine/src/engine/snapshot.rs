//! Snapshot orchestration: hints, created snapshots and log compaction,
//! streaming to followers, installs on a follower.

use super::*;

impl Engine {
    pub(super) fn send_snapshot(&mut self, id: NodeId) {
        let meta = self.snapshot.clone();
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        let offset = if pr.state == PrState::Snapshot && pr.snap_index == meta.index {
            pr.snap_offset
        } else {
            0
        };
        pr.state = PrState::Snapshot;
        pr.inflight.clear();
        pr.snap_index = meta.index;
        pr.snap_offset = offset;
        pr.ticks_since_progress = 0;
        pr.snap_retry = false;
        self.stats.snapshot_sends += 1;
        self.tail.push(Action::SendSnapshot {
            to: id,
            meta,
            offset,
        });
    }

    pub(super) fn maybe_hint(&mut self) {
        if self.installing.is_some() {
            return;
        }
        let snap = self.snapshot.index;
        let thr = self.cfg.snapshot_hint_threshold_entries;
        if let Some(band) = self.applied.saturating_sub(snap).checked_div(thr)
            && band > self.hinted_band_applied
        {
            self.hinted_band_applied = band;
            self.hint(SnapshotReason::AppliedThreshold);
        }
        let max = self.cfg.max_log_entries;
        if max > 0 {
            let above = self.log.last_index().saturating_sub(snap);
            if above > max {
                let band = above / max;
                if band > self.hinted_band_log {
                    self.hinted_band_log = band;
                    self.hint(SnapshotReason::LogGuardrail);
                }
            }
        }
    }

    fn hint(&mut self, reason: SnapshotReason) {
        if self.snapshot_in_flight {
            return; // coalesced into the snapshot already being taken
        }
        self.snapshot_in_flight = true;
        self.stats.snapshot_hints += 1;
        self.tail.push(Action::SnapshotHint {
            reason,
            applied_index: self.applied,
        });
    }

    pub(super) fn on_snapshot_created(&mut self, meta: SnapshotMeta) -> Result<(), EngineError> {
        self.snapshot_in_flight = false;
        if meta.index <= self.snapshot.index {
            return Ok(()); // older than what we have; nothing to do
        }
        if meta.index > self.applied {
            return Err(EngineError::Snapshot(format!(
                "snapshot at index {} is beyond the applied index {}",
                meta.index, self.applied
            )));
        }
        if self.log.term(meta.index) != Some(meta.term) {
            return Err(EngineError::Snapshot(format!(
                "snapshot at index {} has term {}, log has {:?}",
                meta.index,
                meta.term,
                self.log.term(meta.index)
            )));
        }
        self.snapshot = meta;
        self.hinted_band_applied = 0;
        self.hinted_band_log = 0;
        self.retarget_unpolled_snapshot_sends();
        let s = self.snapshot.index;
        let margin_floor = s.saturating_sub(self.cfg.log_retention_margin_entries);
        let up_to = if self.role == Role::Leader {
            let needed = self
                .progress
                .values()
                .map(|p| {
                    if p.state == PrState::Snapshot {
                        p.snap_index
                    } else {
                        p.match_index
                    }
                })
                .min()
                .unwrap_or(s);
            margin_floor.max(needed.min(s))
        } else {
            margin_floor
        };
        if up_to > self.log.floor_index() {
            self.compact_to(up_to);
            self.tail.push(Action::CompactLog { up_to });
        }
        Ok(())
    }

    /// A `SendSnapshot` requested since the last poll names the snapshot
    /// that was latest then; the host has just superseded it (and may delete
    /// it). Point it, and the follower's progress, at the new one from byte 0,
    /// so an action always names the host's latest snapshot when handed out.
    fn retarget_unpolled_snapshot_sends(&mut self) {
        let latest = &self.snapshot;
        for a in &mut self.tail {
            if let Action::SendSnapshot { to, meta, offset } = a
                && meta.index < latest.index
            {
                *meta = latest.clone();
                *offset = 0;
                if let Some(pr) = self.progress.get_mut(to)
                    && pr.state == PrState::Snapshot
                {
                    pr.snap_index = latest.index;
                    pr.snap_offset = 0;
                }
            }
        }
    }

    fn compact_to(&mut self, up_to: LogIndex) {
        self.log.compact_to(up_to);
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

    /// Leader: the follower `from` holds `durable_offset` bytes of the
    /// snapshot at `index`; a resend resumes there.
    pub(super) fn on_snapshot_progress(
        &mut self,
        from: NodeId,
        index: LogIndex,
        durable_offset: u64,
    ) {
        if let Some(pr) = self.progress.get_mut(&from)
            && pr.state == PrState::Snapshot
            && pr.snap_index == index
        {
            pr.snap_offset = durable_offset;
            pr.ticks_since_progress = 0;
        }
    }

    /// Leader: streaming to `to` broke; it is requested again at the next tick.
    pub(super) fn on_snapshot_transfer_failed(&mut self, to: NodeId, index: LogIndex) {
        if let Some(pr) = self.progress.get_mut(&to)
            && pr.state == PrState::Snapshot
            && pr.snap_index == index
        {
            pr.snap_retry = true;
        }
    }

    pub(super) fn on_snapshot_received(&mut self, from: NodeId, term: Term, meta: SnapshotMeta) {
        if term < self.term || self.role == Role::Leader && term == self.term {
            return;
        }
        if term > self.term {
            self.become_follower(term, Some(from));
        }
        self.heard_from_leader(from);
        if self.installing.is_some() {
            return;
        }
        if meta.index <= self.commit {
            let body = MessageBody::AppendEntriesResponse {
                success: true,
                match_index: meta.index,
                hint_index: 0,
                hint_term: None,
            };
            self.send(from, body, true);
            return;
        }
        self.installing = Some(meta.clone());
        self.tail.push(Action::InstallSnapshot { meta });
    }

    pub(super) fn on_snapshot_installed(&mut self, meta: SnapshotMeta) -> Result<(), EngineError> {
        if self.installing.as_ref() != Some(&meta) {
            return Err(EngineError::Snapshot(format!(
                "SnapshotInstalled for index {} but the pending install is {:?}",
                meta.index,
                self.installing.as_ref().map(|m| m.index)
            )));
        }
        self.installing = None;
        let keep_suffix = self.log.term(meta.index) == Some(meta.term);
        // Resolve proposals the snapshot covers.
        while let Some(&(idx, t, id)) = self.pending_props.front() {
            if idx > meta.index {
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
            self.tail.push(Action::ProposalResult { id, result });
        }
        // The host's log restarts above the snapshot (`reset_to_snapshot`).
        // Events stepped since the last poll may have appended, truncated or
        // replaced entries without a batch being cut, so the unwritten range
        // and a pending truncation are both restated relative to the new floor.
        if keep_suffix {
            self.compact_to(meta.index);
            // Unwritten entries at or below the snapshot are covered by it;
            // the ones above it are still to be written.
            self.unstable_from = self.unstable_from.max(meta.index + 1);
            // A truncation not yet handed to the host may reach below the
            // snapshot (an append replaced entries the snapshot now covers):
            // the reset drops those already, and the store refuses to
            // truncate below its floor.
            self.trunc_pending = self.trunc_pending.map(|t| t.max(meta.index + 1));
        } else {
            self.log.reset(meta.index, meta.term);
            self.conf_entries.clear();
            self.base_membership = meta.membership.clone();
            self.trunc_pending = Some(meta.index + 1);
            self.durable_index = meta.index;
            // Everything above the snapshot is gone: whatever is appended from
            // here on is unwritten, even if the discarded log was longer than
            // what an append stepped before the next poll brings.
            self.unstable_from = meta.index + 1;
        }
        // Only what the host holds above the snapshot needs truncating; once
        // the reset runs, it holds the snapshot's index at least.
        self.trunc_pending = self.trunc_pending.filter(|t| *t <= self.host_last);
        self.host_last = self.host_last.max(meta.index);
        self.durable_index = self.durable_index.max(meta.index);
        let new_membership = self
            .conf_entries
            .last()
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| self.base_membership.clone());
        if new_membership != self.membership {
            self.membership = new_membership;
            self.on_membership_changed();
        }
        self.commit = self.commit.max(meta.index);
        self.applied = meta.index;
        self.snapshot = meta.clone();
        self.hinted_band_applied = 0;
        self.hinted_band_log = 0;
        self.reset_pending = Some(meta.clone());
        self.hs_dirty = true;
        if let Some(l) = self.leader {
            let body = MessageBody::AppendEntriesResponse {
                success: true,
                match_index: meta.index,
                hint_index: 0,
                hint_term: None,
            };
            self.send(l, body, true);
        }
        Ok(())
    }

    /// Follower: the install failed; the leader will send the snapshot again.
    pub(super) fn on_snapshot_install_failed(&mut self, meta: &SnapshotMeta) {
        if self.installing.as_ref() == Some(meta) {
            self.installing = None;
        }
    }
}
