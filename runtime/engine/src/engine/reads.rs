//! Heartbeat rounds, linearizable reads (ReadIndex) and leader leases.

use super::*;

const HB_ROUNDS_MAX: usize = 256;

pub(super) struct PendingRead {
    pub(super) id: ReadId,
    pub(super) index: LogIndex,
    pub(super) ctx: u64,
}

impl Engine {
    /// Leader: a heartbeat round every `heartbeat_interval_ticks`.
    pub(super) fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        self.read_broadcast_needed = false;
        self.read_ctx += 1;
        if self.hb_rounds.len() >= HB_ROUNDS_MAX {
            self.hb_rounds.pop_front();
        }
        self.hb_rounds.push_back((self.read_ctx, self.now_ticks));
        let ids: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index))
            .collect();
        for (id, m) in ids {
            let body = MessageBody::Heartbeat {
                commit: self.commit.min(m),
                read_ctx: self.read_ctx,
            };
            self.send(id, body, false);
        }
        self.check_read_quorum();
    }

    pub(super) fn on_heartbeat_response(&mut self, from: NodeId, read_ctx: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_ctx = pr.acked_ctx.max(read_ctx);
        if pr.state == PrState::Probe {
            pr.probe_sent = false;
        }
        let caught_up = pr.match_index == last;
        self.check_read_quorum();
        if caught_up {
            self.maybe_send_timeout_now(from);
        }
    }

    pub(super) fn read(&mut self, id: ReadId) {
        if self.role != Role::Leader {
            self.tail.push(Action::ReadFailed {
                id,
                error: ReadError::NotLeader {
                    leader_hint: self.leader,
                },
            });
            return;
        }
        if self.pending_reads.len() >= self.cfg.max_pending_reads {
            self.tail.push(Action::ReadFailed {
                id,
                error: ReadError::Busy {
                    max: self.cfg.max_pending_reads,
                },
            });
            return;
        }
        let ready = self.commit >= self.term_start_index;
        if ready && self.cfg.lease_reads && !self.lease_revoked && self.now_ticks < self.lease_until
        {
            self.stats.lease_reads += 1;
            self.tail.push(Action::ReadReady {
                id,
                index: self.commit,
            });
            return;
        }
        self.pending_reads.push_back(PendingRead {
            id,
            index: self.commit,
            ctx: self.read_ctx + 1,
        });
        self.read_broadcast_needed = true;
    }

    fn check_read_quorum(&mut self) {
        // The newest heartbeat round a majority has answered (the leader
        // has "answered" every round it sent).
        let Some(acked) = quorum::committed_index(
            &self.membership.voters,
            |id| {
                if id == self.id {
                    Some(self.read_ctx)
                } else {
                    self.progress.get(&id).map(|p| p.acked_ctx)
                }
            },
            &mut self.scratch,
        ) else {
            return;
        };
        if acked <= self.quorum_ctx {
            return;
        }
        self.quorum_ctx = acked;
        while let Some(&(ctx, sent)) = self.hb_rounds.front() {
            if ctx > acked {
                break;
            }
            if ctx == acked && !self.lease_revoked {
                self.lease_until = self.lease_until.max(sent + u64::from(self.cfg.lease_ticks));
            }
            self.hb_rounds.pop_front();
        }
        self.release_reads();
    }

    pub(super) fn release_reads(&mut self) {
        if self.commit < self.term_start_index {
            return;
        }
        while let Some(r) = self.pending_reads.front() {
            if r.ctx > self.quorum_ctx {
                break;
            }
            let index = r.index.max(self.term_start_index);
            self.tail.push(Action::ReadReady { id: r.id, index });
            self.pending_reads.pop_front();
        }
    }
}
