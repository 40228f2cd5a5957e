//! Persistence bookkeeping: what the next [`PersistBatch`] must carry, and
//! what the host has reported durable.
//!
//! Three views of the log matter here: the engine's own (`Engine::log`), the
//! host's once every batch cut so far has been executed
//! ([`PersistTracker::host_last`]), and what the host has reported durable
//! ([`PersistTracker::durable_index`]). Events may append, truncate, or
//! replace the log with a snapshot any number of times between two polls;
//! the tracker is restated whenever the log's floor moves, so the batch cut
//! at the next poll writes every entry the engine will acknowledge and never
//! truncates below the floor nor beyond what the host holds.

use super::*;

/// A batch handed to the host and not yet reported durable.
pub(super) struct InflightPersist {
    /// The batch's [`PersistBatch::seq`].
    pub(super) seq: u64,
    /// Index and term of its last entry, if it carried entries.
    pub(super) last: Option<(LogIndex, Term)>,
    /// Index of the snapshot it reset the log to, if any.
    pub(super) reset: Option<LogIndex>,
}

/// What has been handed to the host to write, and what it has reported
/// durable. Invariants (checked by `Engine::check_invariants`):
/// `floor < unstable_from <= last + 1`; `trunc_pending` within
/// `floor + 1 ..= host_last + 1`; `inflight` seqs increasing, above
/// `durable_seq` and at most `persist_seq`; `durable_index <= last`.
pub(super) struct PersistTracker {
    /// First log index not yet handed to the host in a batch.
    pub(super) unstable_from: LogIndex,
    /// Last index of the log as the host holds it once every batch cut so
    /// far is executed (before `trunc_pending`): a truncation above it
    /// concerns entries the host never received and needs no store write.
    pub(super) host_last: LogIndex,
    /// The next batch drops the host's entries from this index on.
    pub(super) trunc_pending: Option<LogIndex>,
    /// The next batch first resets the host's log to this snapshot (after
    /// an install, or at startup when the recovered log does not continue
    /// right above the snapshot).
    pub(super) reset_pending: Option<SnapshotMeta>,
    /// Term or vote changed since the last batch was cut.
    pub(super) hs_dirty: bool,
    /// Seq of the batch that carries the current term and vote (when not `hs_dirty`).
    pub(super) hs_seq: u64,
    /// Commit index in the last hard state handed out; a batch carries the
    /// hard state whenever it differs.
    pub(super) persisted_commit: LogIndex,
    /// Seq of the last batch handed out (0: none yet). Batches are numbered from 1.
    pub(super) persist_seq: u64,
    /// Highest seq the host has reported durable (covers every earlier batch).
    pub(super) durable_seq: u64,
    /// Batches handed out and not yet reported durable, oldest first.
    pub(super) inflight: VecDeque<InflightPersist>,
    /// Highest index of this node's own log known to be durable. A leader
    /// counts itself in the commit quorum only up to here.
    pub(super) durable_index: LogIndex,
}

impl PersistTracker {
    /// True when term and vote as currently held are durable.
    pub(super) fn hs_durable(&self) -> bool {
        !self.hs_dirty && self.hs_seq <= self.durable_seq
    }

    /// True if some state changed since the last batch was cut (`last_index`:
    /// the engine's last log index).
    fn has_unwritten(&self, last_index: LogIndex) -> bool {
        self.hs_dirty
            || self.unstable_from <= last_index
            || self.trunc_pending.is_some()
            || self.reset_pending.is_some()
    }

    /// The log was truncated from `index` on (above the floor).
    pub(super) fn truncated_from(&mut self, index: LogIndex) {
        // Entries appended since the last poll and replaced before the next
        // one never reach the host: only what it holds needs truncating (a
        // store refuses a truncation beyond its last entry).
        if index <= self.host_last {
            self.trunc_pending = Some(self.trunc_pending.map_or(index, |t| t.min(index)));
        }
        self.unstable_from = self.unstable_from.min(index);
        self.durable_index = self.durable_index.min(index - 1);
    }

    /// An installed snapshot at `index` becomes the log's floor; the log
    /// kept its entries above it (`keep_suffix`) or was discarded. Events
    /// stepped since the last poll may have appended, truncated or replaced
    /// entries without a batch being cut, so the unwritten range and a
    /// pending truncation are both restated relative to the new floor.
    pub(super) fn restate_for_snapshot(&mut self, index: LogIndex, keep_suffix: bool) {
        if keep_suffix {
            // Unwritten entries at or below the snapshot are covered by it;
            // the ones above it are still to be written.
            self.unstable_from = self.unstable_from.max(index + 1);
            // A truncation not yet handed to the host may reach below the
            // snapshot (an append replaced entries the snapshot now covers):
            // the reset drops those already, and the store refuses to
            // truncate below its floor.
            self.trunc_pending = self.trunc_pending.map(|t| t.max(index + 1));
        } else {
            self.trunc_pending = Some(index + 1);
            self.durable_index = index;
            // Everything above the snapshot is gone: whatever is appended from
            // here on is unwritten, even if the discarded log was longer than
            // what an append stepped before the next poll brings.
            self.unstable_from = index + 1;
        }
        // Only what the host holds above the snapshot needs truncating; once
        // the reset runs, it holds the snapshot's index at least.
        self.trunc_pending = self.trunc_pending.filter(|t| *t <= self.host_last);
        self.host_last = self.host_last.max(index);
        self.durable_index = self.durable_index.max(index);
    }

    /// Seq of the batch that carries the state as it is now: the next one if
    /// something is unwritten, else the last one cut. A message that reveals
    /// the current state may leave once this seq is durable.
    pub(super) fn seq_covering_now(&self, last_index: LogIndex) -> u64 {
        if self.has_unwritten(last_index) {
            self.persist_seq + 1
        } else {
            self.persist_seq
        }
    }
}

impl Engine {
    /// The bookkeeping that `take_persist_batch` relies on, whatever events
    /// were stepped since the last poll: the unwritten range starts inside
    /// the log (at most one past its end), and a pending truncation lies
    /// above the floor and at most one past what the host holds (the store
    /// refuses to truncate outside its log).
    pub(super) fn debug_check_persist_state(&self) {
        debug_assert!(
            self.persist.unstable_from > self.log.floor_index()
                && self.persist.unstable_from <= self.log.last_index() + 1,
            "unwritten range starts at {} outside the log {}..={}",
            self.persist.unstable_from,
            self.log.floor_index() + 1,
            self.log.last_index() + 1
        );
        debug_assert!(
            self.persist
                .trunc_pending
                .is_none_or(|t| t > self.log.floor_index() && t <= self.persist.host_last + 1),
            "pending truncation {:?} outside {}..={} (floor, host's last index + 1)",
            self.persist.trunc_pending,
            self.log.floor_index() + 1,
            self.persist.host_last + 1
        );
    }

    /// Cuts the batch for this poll: the pending reset and truncation, the
    /// unwritten entries, and the hard state if it changed. `None` when
    /// nothing changed since the last batch.
    pub(super) fn take_persist_batch(&mut self) -> Option<PersistBatch> {
        self.debug_check_persist_state();
        let last = self.log.last_index();
        let p = &mut self.persist;
        if !p.has_unwritten(last) {
            return None;
        }
        let has_entries = p.unstable_from <= last;
        p.persist_seq += 1;
        let seq = p.persist_seq;
        let entries: Vec<Entry> = if has_entries {
            self.log.range(p.unstable_from, last).cloned().collect()
        } else {
            Vec::new()
        };
        let hard_state = if p.hs_dirty || self.commit != p.persisted_commit {
            p.persisted_commit = self.commit;
            Some(HardState {
                term: self.term,
                vote: self.vote,
                commit: self.commit,
            })
        } else {
            None
        };
        if p.hs_dirty {
            p.hs_seq = seq;
            p.hs_dirty = false;
        }
        let reset = p.reset_pending.take();
        p.inflight.push_back(InflightPersist {
            seq,
            last: entries.last().map(|e| (e.index, e.term)),
            reset: reset.as_ref().map(|m| m.index),
        });
        p.unstable_from = last + 1;
        p.host_last = last;
        self.stats.persist_batches += 1;
        Some(PersistBatch {
            seq,
            hard_state,
            reset_to_snapshot: reset,
            truncate_from: p.trunc_pending.take(),
            entries,
        })
    }

    /// The host made batch `seq` and every earlier one durable: advance the
    /// durable index (for entries still in the log as written), release the
    /// messages that waited for it, and let a leader count itself further.
    pub(super) fn on_persisted(&mut self, seq: u64) {
        let p = &mut self.persist;
        if seq <= p.durable_seq {
            return;
        }
        p.durable_seq = seq;
        while let Some(b) = p.inflight.front() {
            if b.seq > seq {
                break;
            }
            if let Some((i, t)) = b.last
                && self.log.term(i) == Some(t)
            {
                p.durable_index = p.durable_index.max(i);
            }
            if let Some(r) = b.reset
                && r >= self.log.floor_index()
                && r <= self.log.last_index()
            {
                p.durable_index = p.durable_index.max(r);
            }
            p.inflight.pop_front();
        }
        self.outbox.release(seq, self.term);
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }
}
