//! Heartbeat rounds, linearizable reads (ReadIndex, thesis §6.4) and leader
//! leases.
//!
//! Every heartbeat round carries a new read context (`Engine::read_ctx`).
//! A read waits for the first round sent after it arrived; once a majority
//! of voters has answered that round (`LeaderState::quorum_ctx`) and this
//! term's no-op is committed, the leader was still the leader when the read
//! arrived, and the read may be served at the commit index it saw. With
//! `lease_reads`, the send time of a round a majority answered also starts
//! a lease of `lease_ticks`, during which reads are served at once (safe by
//! the inequality `Config::validate` checks and by leader stickiness).

use super::*;

/// Heartbeat rounds a leader tracks while waiting for a majority to answer
/// (beyond this the oldest is forgotten; it only costs a lease extension).
pub(super) const HB_ROUNDS_MAX: usize = 256;

/// A read waiting for its heartbeat round.
pub(super) struct PendingRead {
    /// The host's id for it.
    pub(super) id: ReadId,
    /// Commit index when it arrived: it is served at this index (or at the
    /// term's start, if that is later).
    pub(super) index: LogIndex,
    /// The heartbeat round that must be answered by a majority first.
    pub(super) ctx: u64,
}

impl Engine {
    // ----- heartbeat rounds ------------------------------------------------

    /// Leader: a heartbeat round every `heartbeat_interval_ticks`.
    pub(super) fn tick_heartbeat(&mut self) {
        let Some(lead) = &mut self.leader else {
            return;
        };
        lead.heartbeat_elapsed += 1;
        if lead.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            lead.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Leader: a new heartbeat round to every follower, carrying the commit
    /// index (as far as the follower's log is known to match) and a new
    /// read context.
    pub(super) fn broadcast_heartbeat(&mut self) {
        let Some(lead) = &mut self.leader else {
            return;
        };
        lead.read_broadcast_needed = false;
        self.read_ctx += 1;
        if lead.hb_rounds.len() >= HB_ROUNDS_MAX {
            lead.hb_rounds.pop_front();
        }
        lead.hb_rounds.push_back((self.read_ctx, self.now_ticks));
        let ids: Vec<(NodeId, LogIndex)> = lead
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

    /// Leader: `from` answered heartbeat round `read_ctx`.
    pub(super) fn on_heartbeat_response(&mut self, from: NodeId, read_ctx: u64) {
        let last = self.log.last_index();
        let Some(pr) = self.leader.as_mut().and_then(|l| l.progress.get_mut(&from)) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_ctx = pr.acked_ctx.max(read_ctx);
        if pr.state == PrState::Probe {
            // The probe or its answer was probably lost: resend at once.
            pr.probe_sent = false;
        }
        let caught_up = pr.match_index == last;
        self.check_read_quorum();
        if caught_up {
            self.maybe_send_timeout_now(from);
        }
    }

    // ----- reads -----------------------------------------------------------

    /// A linearizable read: served from the lease if it is valid, else
    /// after the next heartbeat round (started at the next poll).
    pub(super) fn read(&mut self, id: ReadId) {
        let Some(lead) = &mut self.leader else {
            self.outbox.actions.push(Action::ReadFailed {
                id,
                error: ReadError::NotLeader {
                    leader_hint: self.leader_id,
                },
            });
            return;
        };
        if lead.pending_reads.len() >= self.cfg.pending_reads_max {
            self.outbox.actions.push(Action::ReadFailed {
                id,
                error: ReadError::Busy {
                    max: self.cfg.pending_reads_max,
                },
            });
            return;
        }
        let ready = self.commit >= lead.term_start_index;
        if ready && self.cfg.lease_reads && !lead.lease_revoked && self.now_ticks < lead.lease_until
        {
            self.stats.lease_reads += 1;
            self.outbox.actions.push(Action::ReadReady {
                id,
                index: self.commit,
            });
            return;
        }
        lead.pending_reads.push_back(PendingRead {
            id,
            index: self.commit,
            ctx: self.read_ctx + 1,
        });
        lead.read_broadcast_needed = true;
    }

    /// Leader: a majority may have answered a newer round: extend the lease
    /// from that round's send time, and serve the reads that waited for it.
    fn check_read_quorum(&mut self) {
        let Some(lead) = &mut self.leader else {
            return;
        };
        // The newest round a majority has answered (the leader has
        // "answered" every round it sent).
        let Some(acked) = quorum::committed_index(
            &membership::effective(&self.conf_entries, &self.base_membership).voters,
            |id| {
                if id == self.id {
                    Some(self.read_ctx)
                } else {
                    lead.progress.get(&id).map(|p| p.acked_ctx)
                }
            },
            &mut self.scratch,
        ) else {
            return;
        };
        if acked <= lead.quorum_ctx {
            return;
        }
        lead.quorum_ctx = acked;
        while let Some(&(ctx, sent)) = lead.hb_rounds.front() {
            if ctx > acked {
                break;
            }
            if ctx == acked && !lead.lease_revoked {
                lead.lease_until = lead.lease_until.max(sent + u64::from(self.cfg.lease_ticks));
            }
            lead.hb_rounds.pop_front();
        }
        self.release_reads();
    }

    /// Leader: serve, in order, the reads whose round a majority answered,
    /// once this term's no-op is committed.
    pub(super) fn release_reads(&mut self) {
        let Some(lead) = &mut self.leader else {
            return;
        };
        if self.commit < lead.term_start_index {
            return;
        }
        while let Some(r) = lead.pending_reads.front() {
            if r.ctx > lead.quorum_ctx {
                break;
            }
            let index = r.index.max(lead.term_start_index);
            self.outbox
                .actions
                .push(Action::ReadReady { id: r.id, index });
            lead.pending_reads.pop_front();
        }
    }
}
