//! The engine's in-memory copy of the log above the compaction floor.

use std::collections::VecDeque;

use crate::types::{Entry, LogIndex, Term};

/// Entries `floor_index + 1 ..= last_index()`, plus the term at `floor_index`.
///
/// Terms are non-decreasing along the log, which makes term searches binary.
#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    floor_index: LogIndex,
    floor_term: Term,
    entries: VecDeque<Entry>,
}

impl RaftLog {
    pub(crate) fn new(floor_index: LogIndex, floor_term: Term) -> Self {
        RaftLog {
            floor_index,
            floor_term,
            entries: VecDeque::new(),
        }
    }

    pub(crate) fn floor_index(&self) -> LogIndex {
        self.floor_index
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.floor_index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.floor_term, |e| e.term)
    }

    /// Term at `index`, if known (the floor or a retained entry).
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.floor_index {
            return Some(self.floor_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.floor_index {
            return None;
        }
        self.entries.get((index - self.floor_index - 1) as usize)
    }

    pub(crate) fn append(&mut self, e: Entry) {
        debug_assert_eq!(e.index, self.last_index() + 1);
        debug_assert!(e.term >= self.last_term());
        self.entries.push_back(e);
    }

    /// Drops entries `>= index` (index must be above the floor).
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        debug_assert!(index > self.floor_index);
        let keep = (index - self.floor_index - 1) as usize;
        self.entries.truncate(keep);
    }

    /// Drops entries `<= index`; the term of `index` becomes the floor term.
    /// `index` must be within `floor ..= last`.
    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        if index <= self.floor_index {
            return;
        }
        let Some(t) = self.term(index) else { return };
        let n = (index - self.floor_index) as usize;
        self.entries.drain(..n);
        self.floor_index = index;
        self.floor_term = t;
    }

    /// Discards everything and restarts the log at a snapshot floor.
    pub(crate) fn reset(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.floor_index = index;
        self.floor_term = term;
    }

    /// Entries `lo ..= hi` (clamped to what is retained).
    pub(crate) fn range(&self, lo: LogIndex, hi: LogIndex) -> impl Iterator<Item = &Entry> {
        let lo = lo.max(self.floor_index + 1);
        let hi = hi.min(self.last_index());
        let (a, b) = if lo > hi {
            (0, 0)
        } else {
            (
                (lo - self.floor_index - 1) as usize,
                (hi - self.floor_index) as usize,
            )
        };
        self.entries.range(a..b)
    }

    /// Largest index whose term is `<= term`, searching retained entries and
    /// the floor; `None` if even the floor's term is greater.
    pub(crate) fn last_index_with_term_at_most(&self, term: Term) -> Option<LogIndex> {
        let n = self.entries.partition_point(|e| e.term <= term);
        if n == 0 {
            if self.floor_term <= term {
                Some(self.floor_index)
            } else {
                None
            }
        } else {
            Some(self.floor_index + n as u64)
        }
    }

    /// First retained index whose term equals the term at `index`
    /// (the start of that term's run), bounded below by floor + 1.
    pub(crate) fn first_index_of_term_run(&self, index: LogIndex) -> LogIndex {
        let Some(t) = self.term(index) else {
            return index;
        };
        let n = self.entries.partition_point(|e| e.term < t);
        (self.floor_index + 1 + n as u64).min(index)
    }
}
