//! Persistence bookkeeping: what the next [`PersistBatch`] must carry, and
//! what the host has reported durable.

use super::*;

pub(super) struct InflightPersist {
    pub(super) seq: u64,
    pub(super) last: Option<(LogIndex, Term)>,
    pub(super) reset: Option<LogIndex>,
}

impl Engine {
    /// The bookkeeping that `take_persist_batch` relies on, whatever events
    /// were stepped since the last poll: the unwritten range starts inside
    /// the log (at most one past its end), and a pending truncation lies
    /// above the floor and at most one past what the host holds (the store
    /// refuses to truncate outside its log).
    pub(super) fn debug_check_persist_state(&self) {
        debug_assert!(
            self.unstable_from > self.log.floor_index()
                && self.unstable_from <= self.log.last_index() + 1,
            "unwritten range starts at {} outside the log {}..={}",
            self.unstable_from,
            self.log.floor_index() + 1,
            self.log.last_index() + 1
        );
        debug_assert!(
            self.trunc_pending
                .is_none_or(|t| t > self.log.floor_index() && t <= self.host_last + 1),
            "pending truncation {:?} outside {}..={} (floor, host's last index + 1)",
            self.trunc_pending,
            self.log.floor_index() + 1,
            self.host_last + 1
        );
    }

    pub(super) fn take_persist_batch(&mut self) -> Option<PersistBatch> {
        self.debug_check_persist_state();
        let last = self.log.last_index();
        let has_entries = self.unstable_from <= last;
        if !(has_entries
            || self.hs_dirty
            || self.trunc_pending.is_some()
            || self.reset_pending.is_some())
        {
            return None;
        }
        self.persist_seq += 1;
        let seq = self.persist_seq;
        let entries: Vec<Entry> = if has_entries {
            self.log.range(self.unstable_from, last).cloned().collect()
        } else {
            Vec::new()
        };
        let hard_state = if self.hs_dirty || self.commit != self.persisted_commit {
            self.persisted_commit = self.commit;
            Some(self.hard_state())
        } else {
            None
        };
        if self.hs_dirty {
            self.hs_seq = seq;
            self.hs_dirty = false;
        }
        let reset = self.reset_pending.take();
        self.inflight_persists.push_back(InflightPersist {
            seq,
            last: entries.last().map(|e| (e.index, e.term)),
            reset: reset.as_ref().map(|m| m.index),
        });
        self.unstable_from = last + 1;
        self.host_last = last;
        self.stats.persist_batches += 1;
        Some(PersistBatch {
            seq,
            hard_state,
            reset_to_snapshot: reset,
            truncate_from: self.trunc_pending.take(),
            entries,
        })
    }

    pub(super) fn on_persisted(&mut self, seq: u64) {
        if seq <= self.durable_seq {
            return;
        }
        self.durable_seq = seq;
        while let Some(p) = self.inflight_persists.front() {
            if p.seq > seq {
                break;
            }
            if let Some((i, t)) = p.last
                && self.log.term(i) == Some(t)
            {
                self.durable_index = self.durable_index.max(i);
            }
            if let Some(r) = p.reset
                && r >= self.log.floor_index()
                && r <= self.log.last_index()
            {
                self.durable_index = self.durable_index.max(r);
            }
            self.inflight_persists.pop_front();
        }
        while self.held.front().is_some_and(|(need, _)| *need <= seq) {
            let (_, msg) = self.held.pop_front().expect("front");
            // A message from an older term may describe state that a newer
            // leader has since truncated (e.g. an ack): drop it.
            if msg.term == self.term {
                self.imm.push(Action::Send { msg });
            }
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// True when term and vote as currently held are durable.
    pub(super) fn hs_durable(&self) -> bool {
        !self.hs_dirty && self.hs_seq <= self.durable_seq
    }

    /// True if some state changed since the last persist batch was cut.
    pub(super) fn has_unpersisted(&self) -> bool {
        self.hs_dirty
            || self.unstable_from <= self.log.last_index()
            || self.trunc_pending.is_some()
            || self.reset_pending.is_some()
    }
}
