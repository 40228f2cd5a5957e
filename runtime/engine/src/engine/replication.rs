//! Log replication, both ends: a follower accepting appends, a leader
//! sending them, processing acknowledgements and advancing the commit index.

use super::*;

impl Engine {
    pub(super) fn heard_from_leader(&mut self, from: NodeId) {
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        self.ticks_since_leader_contact = 0;
    }

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
        let ap = !self.hs_durable();
        self.send(from, body, ap);
    }

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
                self.membership = cc.membership.clone();
                self.conf_entries.push((e.index, cc.membership.clone()));
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

    fn truncate_from(&mut self, index: LogIndex) {
        self.log.truncate_from(index);
        // Entries appended since the last poll and replaced before the next
        // one never reach the host: only what it holds needs truncating (a
        // store refuses a truncation beyond its last entry).
        if index <= self.host_last {
            self.trunc_pending = Some(self.trunc_pending.map_or(index, |t| t.min(index)));
        }
        self.unstable_from = self.unstable_from.min(index);
        self.durable_index = self.durable_index.min(index - 1);
        let before = self.conf_entries.len();
        self.conf_entries.retain(|(i, _)| *i < index);
        if self.conf_entries.len() != before {
            self.membership = self
                .conf_entries
                .last()
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| self.base_membership.clone());
            self.on_membership_changed();
        }
    }

    pub(super) fn on_heartbeat(&mut self, from: NodeId, commit: LogIndex, read_ctx: u64) {
        if self.role == Role::Leader {
            return;
        }
        self.heard_from_leader(from);
        let c = commit.min(self.log.last_index());
        if c > self.commit {
            self.commit = c;
        }
        let ap = !self.hs_durable();
        self.send(from, MessageBody::HeartbeatResponse { read_ctx }, ap);
    }

    pub(super) fn on_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let floor = self.log.floor_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if success {
            if match_index > last {
                return; // not from our log; ignore
            }
            if match_index > pr.match_index {
                pr.match_index = match_index;
                pr.ticks_since_progress = 0;
            }
            if pr.next_index <= match_index {
                pr.next_index = match_index + 1;
            }
            while pr.inflight.front().is_some_and(|&i| i <= match_index) {
                pr.inflight.pop_front();
            }
            match pr.state {
                PrState::Probe => {
                    pr.state = PrState::Replicate;
                    pr.inflight.clear();
                    pr.next_index = pr.match_index + 1;
                    pr.probe_sent = false;
                }
                PrState::Snapshot if pr.match_index >= pr.snap_index => {
                    pr.state = PrState::Replicate;
                    pr.inflight.clear();
                    pr.next_index = pr.match_index + 1;
                }
                _ => {}
            }
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
        match pr.state {
            PrState::Replicate if rejected_prev <= pr.match_index => return,
            PrState::Probe if rejected_prev + 1 != pr.next_index => return,
            PrState::Snapshot => return,
            _ => {}
        }
        let mut next = match hint_term {
            Some(t) => match self.log.last_index_with_term_at_most(t) {
                Some(i) if self.log.term(i) == Some(t) => i + 1,
                _ => hint_index,
            },
            None => hint_index,
        };
        next = next.min(rejected_prev).max(pr.match_index + 1);
        pr.next_index = next;
        pr.become_probe();
        pr.next_index = next.max(pr.match_index + 1);
        if pr.next_index <= floor {
            self.send_snapshot(from);
        }
    }

    pub(super) fn broadcast_append(&mut self) {
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            self.send_appends_to(id);
        }
    }

    fn send_appends_to(&mut self, id: NodeId) {
        let last = self.log.last_index();
        let floor = self.log.floor_index();
        loop {
            let Some(pr) = self.progress.get_mut(&id) else {
                return;
            };
            match pr.state {
                PrState::Snapshot => return,
                PrState::Probe if pr.probe_sent => return,
                PrState::Replicate
                    if pr.inflight.len() >= self.cfg.max_inflight_append_msgs
                        || pr.next_index > last =>
                {
                    return;
                }
                _ => {}
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
                    && (entries.len() >= self.cfg.max_append_entries
                        || bytes + b > self.cfg.max_append_bytes)
                {
                    break;
                }
                bytes += b;
                entries.push(e.clone());
            }
            let n = entries.len() as u64;
            let pr = self.progress.get_mut(&id).expect("present");
            match pr.state {
                PrState::Probe => {
                    pr.probe_sent = true;
                    pr.ticks_since_progress = 0;
                }
                _ => {
                    if n > 0 {
                        if pr.inflight.is_empty() {
                            pr.ticks_since_progress = 0;
                        }
                        pr.inflight.push_back(prev + n);
                        pr.next_index = prev + n + 1;
                    }
                }
            }
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

    pub(super) fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        // The leader counts itself only up to what it has made durable.
        let Some(candidate) = quorum::committed_index(
            &self.membership.voters,
            |id| {
                if id == self.id {
                    Some(self.durable_index)
                } else {
                    self.progress.get(&id).map(|p| p.match_index)
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

    fn on_leader_commit_advanced(&mut self) {
        self.release_reads();
        // Removal of the leader itself takes effect once committed.
        if !self.membership.voters.contains(&self.id) {
            let last_conf = self.conf_entries.last().map_or(0, |(i, _)| *i);
            if self.commit >= last_conf {
                self.become_follower(self.term, None);
            }
        }
    }

    /// Leader: per-follower timers. Unacknowledged pipelined appends fall
    /// back to probing after `append_retransmit_ticks`, an unanswered probe
    /// may be resent, and a stalled snapshot transfer is requested again.
    pub(super) fn tick_progress(&mut self) {
        let retransmit = self.cfg.append_retransmit_ticks;
        let snap_timeout = self.cfg.snapshot_transfer_timeout_ticks;
        let mut resend = Vec::new();
        for (id, pr) in self.progress.iter_mut() {
            match pr.state {
                PrState::Replicate if !pr.inflight.is_empty() => {
                    pr.ticks_since_progress += 1;
                    if pr.ticks_since_progress >= retransmit {
                        pr.next_index = pr.match_index + 1;
                        pr.become_probe();
                    }
                }
                PrState::Probe if pr.probe_sent => {
                    pr.ticks_since_progress += 1;
                    if pr.ticks_since_progress >= retransmit {
                        pr.probe_sent = false;
                        pr.ticks_since_progress = 0;
                    }
                }
                PrState::Snapshot => {
                    pr.ticks_since_progress += 1;
                    if pr.snap_retry || pr.ticks_since_progress >= snap_timeout {
                        pr.snap_retry = false;
                        pr.ticks_since_progress = 0;
                        resend.push(*id);
                    }
                }
                _ => {}
            }
        }
        for id in resend {
            self.send_snapshot(id);
        }
    }
}
