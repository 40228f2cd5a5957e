//! Log replication, both ends: a follower accepting appends, a leader
//! sending them, processing acknowledgements and advancing the commit index.

use super::*;

impl Engine {
    // ----- follower side ---------------------------------------------------

    /// A message from the leader of our term: follow it, and restart the
    /// election timer and the stickiness window.
    pub(super) fn heard_from_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        self.ticks_since_leader_contact = 0;
    }

    /// Refuse an append whose `prev` we do not hold, with a hint where to
    /// retry: one past our last entry, or the start of our conflicting term.
    fn reject_append(&mut self, from: NodeId, prev: LogIndex) {
        let (hint_index, hint_term) = if prev > self.log.last_index() {
            (self.log.last_index() + 1, None)
        } else {
            let t = self.log.term(prev);
            (self.log.first_index_of_term_run(prev), t)
        };
        let body = MessageBody::AppendEntriesResponse {
            success: false,
            match_index: prev,
            hint_index,
            hint_term,
        };
        let ap = !self.persist.hs_durable();
        self.send(from, body, ap);
    }

    /// An append from the leader: check that our log matches at `prev`,
    /// drop a conflicting suffix, append what is new, learn the commit
    /// index, and acknowledge once the entries are durable (the outbox holds
    /// the ack).
    pub(super) fn on_append(
        &mut self,
        from: NodeId,
        prev: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        if self.role == Role::Leader {
            return; // impossible by election safety; ignore defensively
        }
        self.heard_from_leader(from);
        let floor = self.log.floor_index();
        let mut prev = prev;
        let mut entries = entries;
        if prev < floor {
            // Everything at or below our floor is committed and matches.
            let skip = entries.iter().take_while(|e| e.index <= floor).count();
            let covered = prev + entries.len() as u64;
            if skip == entries.len() {
                let body = MessageBody::AppendEntriesResponse {
                    success: true,
                    match_index: covered.min(floor).max(prev),
                    hint_index: 0,
                    hint_term: None,
                };
                self.send(from, body, true);
                return;
            }
            entries.drain(..skip);
            prev = floor;
        } else if prev > self.log.last_index() || self.log.term(prev) != Some(prev_term) {
            self.reject_append(from, prev);
            return;
        }
        let n = entries.len() as u64;
        // Find first conflict.
        let mut first_new = entries.len();
        for (k, e) in entries.iter().enumerate() {
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    if e.index <= self.commit {
                        debug_assert!(
                            false,
                            "leader tried to overwrite committed entry {}",
                            e.index
                        );
                        return;
                    }
                    self.truncate_from(e.index);
                    first_new = k;
                    break;
                }
                None => {
                    first_new = k;
                    break;
                }
            }
        }
        let mut conf_changed = false;
        for e in entries.drain(first_new..) {
            if let EntryKind::ConfChange(cc) = &e.kind {
                self.record_conf_entry(e.index, cc.membership.clone());
                conf_changed = true;
            }
            self.log.append(e);
        }
        if conf_changed {
            self.on_membership_changed();
        }
        let match_index = prev + n;
        let new_commit = leader_commit.min(match_index);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        let body = MessageBody::AppendEntriesResponse {
            success: true,
            match_index,
            hint_index: 0,
            hint_term: None,
        };
        self.send(from, body, true);
    }

    /// Drops our entries from `index` on (a conflict with the leader's
    /// log), keeping the persist bookkeeping and the membership in step.
    fn truncate_from(&mut self, index: LogIndex) {
        self.log.truncate_from(index);
        self.persist.truncated_from(index);
        self.truncate_conf_entries(index);
    }

    /// A heartbeat: learn the commit index (as far as our log goes) and
    /// answer with its read context.
    pub(super) fn on_heartbeat(&mut self, from: NodeId, commit: LogIndex, read_ctx: u64) {
        if self.role == Role::Leader {
            return;
        }
        self.heard_from_leader(from);
        let c = commit.min(self.log.last_index());
        if c > self.commit {
            self.commit = c;
        }
        let ap = !self.persist.hs_durable();
        self.send(from, MessageBody::HeartbeatResponse { read_ctx }, ap);
    }

    // ----- leader side -----------------------------------------------------

    /// Leader: `from` answered an append. Success moves its progress on
    /// (and may commit); a rejection that is news backs it off to probing
    /// from its hint, or to a snapshot if that is below our floor.
    pub(super) fn on_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    ) {
        let last = self.log.last_index();
        let floor = self.log.floor_index();
        let Some(pr) = self.leader.as_mut().and_then(|l| l.progress.get_mut(&from)) else {
            return;
        };
        pr.recent_active = true;
        if success {
            if match_index > last {
                return; // not from our log; ignore
            }
            pr.on_ack(match_index);
            let caught_up = pr.match_index == last;
            self.maybe_commit();
            if caught_up {
                self.maybe_send_timeout_now(from);
            }
            return;
        }
        // Rejection.
        if match_index == 0 && hint_index == 0 {
            return; // a higher-term notice handled earlier, or garbage
        }
        let rejected_prev = match_index;
        if pr.is_stale_rejection(rejected_prev) {
            return;
        }
        // Skip the follower's whole conflicting term if we hold that term
        // too, else go to where its log ends (or its term run starts).
        let next = match hint_term {
            Some(t) => match self.log.last_index_with_term_at_most(t) {
                Some(i) if self.log.term(i) == Some(t) => i + 1,
                _ => hint_index,
            },
            None => hint_index,
        };
        pr.back_off(next, rejected_prev);
        if pr.next_index <= floor {
            self.send_snapshot(from);
        }
    }

    /// Leader: send every follower what it is missing, as far as its
    /// progress state allows (called at every poll).
    pub(super) fn broadcast_append(&mut self) {
        let Some(lead) = &self.leader else {
            return;
        };
        let ids: Vec<NodeId> = lead.progress.keys().copied().collect();
        for id in ids {
            self.send_appends_to(id);
        }
    }

    /// Leader: appends to `id`, each within `append_entries_max` and
    /// `append_bytes_max` (but at least one entry): one while probing, as
    /// many as the in-flight window allows while replicating; a snapshot if
    /// what it needs is below our floor.
    fn send_appends_to(&mut self, id: NodeId) {
        let last = self.log.last_index();
        let floor = self.log.floor_index();
        loop {
            let Some(pr) = self.leader.as_mut().and_then(|l| l.progress.get_mut(&id)) else {
                return;
            };
            if pr.is_paused(self.cfg.inflight_append_msgs_max, last) {
                return;
            }
            if pr.next_index <= floor {
                self.send_snapshot(id);
                return;
            }
            let next = pr.next_index;
            let prev = next - 1;
            let Some(prev_term) = self.log.term(prev) else {
                self.send_snapshot(id);
                return;
            };
            let mut bytes = 0usize;
            let mut entries = Vec::new();
            for e in self.log.range(next, last) {
                let b = e.kind.approx_bytes();
                if !entries.is_empty()
                    && (entries.len() >= self.cfg.append_entries_max
                        || bytes + b > self.cfg.append_bytes_max)
                {
                    break;
                }
                bytes += b;
                entries.push(e.clone());
            }
            let n = entries.len() as u64;
            pr.sent_append(prev, n);
            let is_probe = pr.state == PrState::Probe;
            self.stats.appends_sent += 1;
            self.stats.entries_sent += n;
            let body = MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: self.commit,
            };
            self.send(id, body, false);
            if is_probe || n == 0 {
                return;
            }
        }
    }

    /// Leader: commit the highest index a majority of voters holds, if it
    /// is of the current term (§5.4.2: earlier terms' entries commit only
    /// under one of ours). The leader counts itself only up to what it has
    /// made durable.
    pub(super) fn maybe_commit(&mut self) {
        let Some(lead) = &self.leader else {
            return;
        };
        let Some(candidate) = quorum::committed_index(
            &membership::effective(&self.conf_entries, &self.base_membership).voters,
            |id| {
                if id == self.id {
                    Some(self.persist.durable_index)
                } else {
                    lead.progress.get(&id).map(|p| p.match_index)
                }
            },
            &mut self.scratch,
        ) else {
            return;
        };
        if candidate > self.commit && self.log.term(candidate) == Some(self.term) {
            self.commit = candidate;
            self.on_leader_commit_advanced();
        }
    }

    /// Leader: the commit index moved; serve reads that waited for it, and
    /// step down once our own removal is committed.
    fn on_leader_commit_advanced(&mut self) {
        self.release_reads();
        // Removal of the leader itself takes effect once committed.
        if !self.membership().voters.contains(&self.id) {
            let last_conf = self.conf_entries.last().map_or(0, |(i, _)| *i);
            if self.commit >= last_conf {
                self.become_follower(self.term, None);
            }
        }
    }

    /// Leader: per-follower timers (see [`Progress::tick`]); stalled
    /// snapshot streams are requested again.
    pub(super) fn tick_progress(&mut self) {
        let Some(lead) = &mut self.leader else {
            return;
        };
        let retransmit = self.cfg.append_retransmit_ticks;
        let snap_timeout = self.cfg.snapshot_transfer_timeout_ticks;
        let mut resend = Vec::new();
        for (id, pr) in lead.progress.iter_mut() {
            if pr.tick(retransmit, snap_timeout) {
                resend.push(*id);
            }
        }
        for id in resend {
            self.send_snapshot(id);
        }
    }
}
