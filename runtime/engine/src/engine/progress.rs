//! What a leader knows of one follower's log.

use std::collections::VecDeque;

use crate::types::LogIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PrState {
    Probe,
    Replicate,
    Snapshot,
}

#[derive(Clone, Debug)]
pub(super) struct Progress {
    pub(super) match_index: LogIndex,
    pub(super) next_index: LogIndex,
    pub(super) state: PrState,
    /// Last index carried by each unacknowledged append (Replicate only).
    pub(super) inflight: VecDeque<LogIndex>,
    pub(super) probe_sent: bool,
    pub(super) recent_active: bool,
    pub(super) acked_ctx: u64,
    pub(super) ticks_since_progress: u32,
    pub(super) snap_index: LogIndex,
    pub(super) snap_offset: u64,
    pub(super) snap_retry: bool,
}

impl Progress {
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

    pub(super) fn become_probe(&mut self) {
        self.state = PrState::Probe;
        self.inflight.clear();
        self.probe_sent = false;
        self.next_index = self.next_index.max(self.match_index + 1);
        self.ticks_since_progress = 0;
    }
}
