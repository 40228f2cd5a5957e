//! Snapshot orchestration: hints, created snapshots and log compaction,
//! streaming to followers, installs on a follower.

use super::*;

impl Engine {
    // ----- hints, created snapshots, compaction ----------------------------

    /// At each poll: hint a snapshot when applied entries past the latest
    /// snapshot cross another `snapshot_hint_threshold_entries` band, or the
    /// log another `log_entries_max` band (once per band).
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
        let max = self.cfg.log_entries_max;
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
        self.outbox.actions.push(Action::SnapshotHint {
            reason,
            applied_index: self.applied,
        });
    }

    /// The host made a durable snapshot: it becomes the latest, and the
    /// log is compacted below it.
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
        // Keep the retention margin below the snapshot, and (leader) what a
        // follower still needs from the log unless it is behind the snapshot.
        let up_to = match &self.leader {
            Some(lead) => {
                let needed = lead
                    .progress
                    .values()
                    .map(Progress::needed_index)
                    .min()
                    .unwrap_or(s);
                margin_floor.max(needed.min(s))
            }
            None => margin_floor,
        };
        if up_to > self.log.floor_index() {
            self.compact_to(up_to);
            self.outbox.actions.push(Action::CompactLog { up_to });
        }
        Ok(())
    }

    /// A `SendSnapshot` requested since the last poll names the snapshot
    /// that was latest then; the host has just superseded it (and may delete
    /// it). Point it, and the follower's progress, at the new one from byte 0,
    /// so an action always names the host's latest snapshot when handed out.
    fn retarget_unpolled_snapshot_sends(&mut self) {
        let latest = &self.snapshot;
        for a in &mut self.outbox.actions {
            if let Action::SendSnapshot { to, meta, offset } = a
                && meta.index < latest.index
            {
                *meta = latest.clone();
                *offset = 0;
                if let Some(pr) = self.leader.as_mut().and_then(|l| l.progress.get_mut(to))
                    && pr.state == PrState::Snapshot
                {
                    pr.snap_index = latest.index;
                    pr.snap_offset = 0;
                }
            }
        }
    }

    /// Drops the log up to `up_to` (at most the latest snapshot's index).
    fn compact_to(&mut self, up_to: LogIndex) {
        self.log.compact_to(up_to);
        self.compact_conf_entries(up_to);
    }

    // ----- leader: streaming to a follower -----------------------------------

    /// Leader: stream our latest snapshot to `id` (resuming where it got
    /// to, if it is the same snapshot).
    pub(super) fn send_snapshot(&mut self, id: NodeId) {
        let meta = self.snapshot.clone();
        let Some(pr) = self.leader.as_mut().and_then(|l| l.progress.get_mut(&id)) else {
            return;
        };
        let offset = pr.become_snapshot(meta.index);
        self.stats.snapshot_sends += 1;
        self.outbox.actions.push(Action::SendSnapshot {
            to: id,
            meta,
            offset,
        });
    }

    /// Leader: the follower `from` holds `durable_offset` bytes of the
    /// snapshot at `index`; a resend resumes there.
    pub(super) fn on_snapshot_progress(
        &mut self,
        from: NodeId,
        index: LogIndex,
        durable_offset: u64,
    ) {
        if let Some(pr) = self.leader.as_mut().and_then(|l| l.progress.get_mut(&from)) {
            pr.on_snapshot_progress(index, durable_offset);
        }
    }

    /// Leader: streaming to `to` broke; it is requested again at the next tick.
    pub(super) fn on_snapshot_transfer_failed(&mut self, to: NodeId, index: LogIndex) {
        if let Some(pr) = self.leader.as_mut().and_then(|l| l.progress.get_mut(&to)) {
            pr.on_snapshot_transfer_failed(index);
        }
    }

    // ----- follower: installing ----------------------------------------------

    /// Follower: a complete snapshot from `from` (sent in `term`) is staged.
    /// Install it unless we already hold what it covers (then acknowledge)
    /// or are installing another.
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
        self.outbox.actions.push(Action::InstallSnapshot { meta });
    }

    /// Follower: the host swapped its machines to the snapshot. The log
    /// keeps its suffix if it holds the snapshot's entry, else restarts at
    /// the snapshot; proposals it covers are decided, and the leader is told.
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
        self.resolve_proposals_covered_by(meta.index, keep_suffix);
        let membership_before = self.membership().clone();
        // The host's log restarts above the snapshot (`reset_to_snapshot`).
        if keep_suffix {
            self.compact_to(meta.index);
        } else {
            self.log.reset(meta.index, meta.term);
            self.conf_entries.clear();
            self.base_membership = meta.membership.clone();
        }
        self.persist.restate_for_snapshot(meta.index, keep_suffix);
        if *self.membership() != membership_before {
            self.on_membership_changed();
        }
        self.commit = self.commit.max(meta.index);
        self.applied = meta.index;
        self.snapshot = meta.clone();
        self.hinted_band_applied = 0;
        self.hinted_band_log = 0;
        self.persist.reset_pending = Some(meta.clone());
        self.persist.hs_dirty = true;
        if let Some(l) = self.leader_id {
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
