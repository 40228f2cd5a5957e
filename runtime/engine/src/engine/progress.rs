//! What a leader knows of one follower's log, and how that changes as
//! appends go out and answers come back (the per-follower state machine of
//! raft-rs's `tracker/progress.rs`).
//!
//! - **Probe**: the match point is unknown; one append at a time, walking
//!   `next_index` back on each rejection (by term, using the follower's hint).
//! - **Replicate**: the follower is in sync; appends are pipelined, at most
//!   `inflight_append_msgs_max` unacknowledged.
//! - **Snapshot**: what the follower needs is below the leader's log floor;
//!   the host streams a snapshot, and the follower returns to Replicate once
//!   it acknowledges the snapshot's index.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// Replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PrState {
    /// Looking for the point where the follower's log matches ours.
    Probe,
    /// Pipelining appends.
    Replicate,
    /// Being sent a snapshot.
    Snapshot,
}

/// What the leader knows of one follower. Invariants (checked by
/// `Engine::check_invariants`): `match_index < next_index`; `inflight` is
/// empty unless in Replicate, increasing, above `match_index` and below
/// `next_index`, at most `inflight_append_msgs_max` long.
#[derive(Clone, Debug)]
pub(super) struct Progress {
    /// Highest index known to match the leader's log (0: nothing known).
    pub(super) match_index: LogIndex,
    /// Next index to send.
    pub(super) next_index: LogIndex,
    /// Replication state.
    pub(super) state: PrState,
    /// Last index carried by each unacknowledged append, oldest first (Replicate only).
    pub(super) inflight: VecDeque<LogIndex>,
    /// Probe: an append is out and unanswered (no further one until it is,
    /// or until `append_retransmit_ticks` pass).
    pub(super) probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub(super) recent_active: bool,
    /// Newest heartbeat round (read context) the follower has answered.
    pub(super) acked_ctx: u64,
    /// Ticks without progress: since the last ack that moved `match_index`,
    /// the probe went out, or the snapshot stream last advanced.
    pub(super) ticks_since_progress: u32,
    /// Snapshot: index of the snapshot being streamed.
    pub(super) snap_index: LogIndex,
    /// Snapshot: bytes the follower holds durably; a resend resumes here.
    pub(super) snap_offset: u64,
    /// Snapshot: the stream broke; request it again at the next tick.
    pub(super) snap_retry: bool,
}

impl Progress {
    /// A follower of a new leader (or a new member): probing from `next`.
    pub(super) fn new(next: LogIndex) -> Self {
        Progress {
            match_index: 0,
            next_index: next,
            state: PrState::Probe,
            inflight: VecDeque::new(),
            probe_sent: false,
            recent_active: true,
            acked_ctx: 0,
            ticks_since_progress: 0,
            snap_index: 0,
            snap_offset: 0,
            snap_retry: false,
        }
    }

    /// Back to probing (lost appends, a rejection): forget what is in
    /// flight; `next_index` stays above `match_index`.
    pub(super) fn become_probe(&mut self) {
        self.state = PrState::Probe;
        self.inflight.clear();
        self.probe_sent = false;
        self.next_index = self.next_index.max(self.match_index + 1);
        self.ticks_since_progress = 0;
    }

    /// Streaming the snapshot at `index`: returns the byte offset to send
    /// from (where the follower got to, if it is the same snapshot).
    pub(super) fn become_snapshot(&mut self, index: LogIndex) -> u64 {
        let offset = if self.state == PrState::Snapshot && self.snap_index == index {
            self.snap_offset
        } else {
            0
        };
        self.state = PrState::Snapshot;
        self.inflight.clear();
        self.snap_index = index;
        self.snap_offset = offset;
        self.ticks_since_progress = 0;
        self.snap_retry = false;
        offset
    }

    /// No append may go out now: streaming a snapshot, a probe is
    /// unanswered, or the pipeline is full (`max_inflight` appends) or has
    /// nothing to send past `last`.
    pub(super) fn is_paused(&self, max_inflight: usize, last: LogIndex) -> bool {
        match self.state {
            PrState::Snapshot => true,
            PrState::Probe => self.probe_sent,
            PrState::Replicate => self.inflight.len() >= max_inflight || self.next_index > last,
        }
    }

    /// An append of `n` entries after `prev` went out.
    pub(super) fn sent_append(&mut self, prev: LogIndex, n: u64) {
        match self.state {
            PrState::Probe => {
                self.probe_sent = true;
                self.ticks_since_progress = 0;
            }
            _ => {
                if n > 0 {
                    if self.inflight.is_empty() {
                        self.ticks_since_progress = 0;
                    }
                    self.inflight.push_back(prev + n);
                    self.next_index = prev + n + 1;
                }
            }
        }
    }

    /// The follower holds our log up to `match_index`: a probe found the
    /// match point and a finished snapshot is caught up, so both switch to
    /// pipelining.
    pub(super) fn on_ack(&mut self, match_index: LogIndex) {
        if match_index > self.match_index {
            self.match_index = match_index;
            self.ticks_since_progress = 0;
        }
        if self.next_index <= match_index {
            self.next_index = match_index + 1;
        }
        while self.inflight.front().is_some_and(|&i| i <= match_index) {
            self.inflight.pop_front();
        }
        match self.state {
            PrState::Probe => {
                self.state = PrState::Replicate;
                self.inflight.clear();
                self.next_index = self.match_index + 1;
                self.probe_sent = false;
            }
            PrState::Snapshot if self.match_index >= self.snap_index => {
                self.state = PrState::Replicate;
                self.inflight.clear();
                self.next_index = self.match_index + 1;
            }
            _ => {}
        }
    }

    /// A rejection of the append after `rejected_prev` that says nothing
    /// new: already matched beyond it, not the probe we are waiting for, or
    /// a snapshot is being sent anyway.
    pub(super) fn is_stale_rejection(&self, rejected_prev: LogIndex) -> bool {
        match self.state {
            PrState::Replicate => rejected_prev <= self.match_index,
            PrState::Probe => rejected_prev + 1 != self.next_index,
            PrState::Snapshot => true,
        }
    }

    /// A rejection of the append after `rejected_prev`: probe again from
    /// `next` (the follower's hint), never beyond the rejected point nor at
    /// or below what is known to match.
    pub(super) fn back_off(&mut self, next: LogIndex, rejected_prev: LogIndex) {
        self.next_index = next.min(rejected_prev).max(self.match_index + 1);
        self.become_probe();
    }

    /// One tick of this follower's timers: pipelined appends without an ack
    /// for `retransmit_ticks` are presumed lost (probe again), an unanswered
    /// probe may be resent after as long. Returns true if the snapshot
    /// stream must be requested again (it broke, or made no progress for
    /// `snapshot_timeout_ticks`).
    pub(super) fn tick(&mut self, retransmit_ticks: u32, snapshot_timeout_ticks: u32) -> bool {
        match self.state {
            PrState::Replicate if !self.inflight.is_empty() => {
                self.ticks_since_progress += 1;
                if self.ticks_since_progress >= retransmit_ticks {
                    self.next_index = self.match_index + 1;
                    self.become_probe();
                }
            }
            PrState::Probe if self.probe_sent => {
                self.ticks_since_progress += 1;
                if self.ticks_since_progress >= retransmit_ticks {
                    self.probe_sent = false;
                    self.ticks_since_progress = 0;
                }
            }
            PrState::Snapshot => {
                self.ticks_since_progress += 1;
                if self.snap_retry || self.ticks_since_progress >= snapshot_timeout_ticks {
                    self.snap_retry = false;
                    self.ticks_since_progress = 0;
                    return true;
                }
            }
            _ => {}
        }
        false
    }

    /// Snapshot stream at `index`: the follower holds `durable_offset` bytes.
    pub(super) fn on_snapshot_progress(&mut self, index: LogIndex, durable_offset: u64) {
        if self.state == PrState::Snapshot && self.snap_index == index {
            self.snap_offset = durable_offset;
            self.ticks_since_progress = 0;
        }
    }

    /// Snapshot stream at `index` broke: request it again at the next tick.
    pub(super) fn on_snapshot_transfer_failed(&mut self, index: LogIndex) {
        if self.state == PrState::Snapshot && self.snap_index == index {
            self.snap_retry = true;
        }
    }

    /// The lowest index the leader must keep for this follower: what it is
    /// being sent a snapshot at, or what it has matched.
    pub(super) fn needed_index(&self) -> LogIndex {
        if self.state == PrState::Snapshot {
            self.snap_index
        } else {
            self.match_index
        }
    }
}
