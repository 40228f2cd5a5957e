//! The disk index: where every live entry is on disk, rebuilt by replaying records.

use std::collections::VecDeque;

use crate::HardState;
use crate::record::Record;

#[derive(Debug, Clone, Copy)]
pub(super) struct Loc {
    pub(super) seg: u64,
    pub(super) off: u64,
    pub(super) len: u32,
    pub(super) term: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Summary {
    Entry { index: u64, term: u64 },
    Truncate(u64),
    Hs(HardState),
    Floor(u64, u64),
}

impl From<&Record> for Summary {
    fn from(r: &Record) -> Self {
        match r {
            Record::Entry { index, term, .. } => Summary::Entry {
                index: *index,
                term: *term,
            },
            Record::Truncate { last_kept } => Summary::Truncate(*last_kept),
            Record::HardState(hs) => Summary::Hs(*hs),
            Record::Floor { index, term } => Summary::Floor(*index, *term),
        }
    }
}

/// A rejected record: (detail, expected, found).
pub(super) type ApplyErr = (String, String, String);

/// Where every live entry is on disk, rebuilt by replaying records. Shared by recovery and the
/// writer so that both interpret records identically.
#[derive(Debug, Default)]
pub(super) struct DiskIndex {
    pub(super) floor: (u64, u64),
    pub(super) base: u64,
    pub(super) locs: VecDeque<Loc>,
    /// Index the next entry must have; `None` only before the first entry/truncation of a replay.
    pub(super) next: Option<u64>,
    pub(super) hs: HardState,
}

impl DiskIndex {
    pub(super) fn last(&self) -> u64 {
        if self.locs.is_empty() {
            self.next.map_or(self.floor.0, |n| n - 1)
        } else {
            self.base + self.locs.len() as u64 - 1
        }
    }

    pub(super) fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.floor.0 {
            return Some(self.floor.1);
        }
        let i = index.checked_sub(self.base)?;
        self.locs.get(usize::try_from(i).ok()?).map(|l| l.term)
    }

    pub(super) fn last_term(&self) -> u64 {
        self.locs.back().map_or(self.floor.1, |l| l.term)
    }

    pub(super) fn apply(&mut self, s: Summary, loc: Loc) -> Result<(), ApplyErr> {
        // Every index below is followed by `+ 1`; a record on disk naming u64::MAX is damage
        // (found by fuzz target wal_recovery, for entries and then for floors).
        let index = match s {
            Summary::Entry { index, .. } | Summary::Floor(index, _) => Some(index),
            Summary::Truncate(last_kept) => Some(last_kept),
            Summary::Hs(_) => None,
        };
        if index == Some(u64::MAX) {
            return Err((
                "log index out of range".into(),
                format!("< {}", u64::MAX),
                u64::MAX.to_string(),
            ));
        }
        match s {
            Summary::Entry { index, term } => {
                if index <= self.floor.0 {
                    return Err((
                        "entry at or below the compaction floor".into(),
                        format!("index > {}", self.floor.0),
                        index.to_string(),
                    ));
                }
                let expected = if self.locs.is_empty() {
                    self.next
                } else {
                    Some(self.last() + 1)
                };
                if let Some(exp) = expected
                    && exp != index
                {
                    return Err((
                        "entry index out of sequence".into(),
                        exp.to_string(),
                        index.to_string(),
                    ));
                }
                let prev_term = if let Some(b) = self.locs.back() {
                    Some(b.term)
                } else if index == self.floor.0 + 1 {
                    Some(self.floor.1)
                } else {
                    None
                };
                if let Some(pt) = prev_term
                    && term < pt
                {
                    return Err((
                        "entry term goes backwards".into(),
                        format!("term >= {pt}"),
                        term.to_string(),
                    ));
                }
                if self.locs.is_empty() {
                    self.base = index;
                }
                self.locs.push_back(Loc { term, ..loc });
                self.next = Some(index + 1);
            }
            Summary::Truncate(last_kept) => {
                if last_kept < self.floor.0 {
                    return Err((
                        "truncation below the compaction floor".into(),
                        format!(">= {}", self.floor.0),
                        last_kept.to_string(),
                    ));
                }
                if !self.locs.is_empty() {
                    // Truncating below the first replayed entry is legal: the entries it removed
                    // lived in segments since deleted by compaction, and a later floor record
                    // covers them (checked by `finish`).
                    let keep = (last_kept + 1)
                        .saturating_sub(self.base)
                        .min(self.locs.len() as u64);
                    self.locs.truncate(keep as usize);
                    if self.locs.is_empty() {
                        self.next = Some(last_kept + 1);
                    }
                }
                let last = self.last();
                if self.next.is_some() && last_kept > last {
                    return Err((
                        "truncation past the last entry".into(),
                        format!("<= {last}"),
                        last_kept.to_string(),
                    ));
                }
                self.next = Some(last_kept + 1);
            }
            Summary::Hs(hs) => self.hs = hs,
            Summary::Floor(index, term) => {
                if index < self.floor.0 || (index == self.floor.0 && term != self.floor.1) {
                    return Err((
                        "compaction floor goes backwards or changes term".into(),
                        format!(">= ({}, {})", self.floor.0, self.floor.1),
                        format!("({index}, {term})"),
                    ));
                }
                if self.locs.is_empty() {
                    if let Some(n) = self.next
                        && index + 1 >= n
                    {
                        self.next = Some(index + 1);
                    }
                } else if index + 1 >= self.base {
                    let last = self.last();
                    let matches = index <= last && self.term_at(index).is_none_or(|t| t == term);
                    if matches {
                        let drop = (index + 1 - self.base) as usize;
                        self.locs.drain(..drop);
                        self.base = index + 1;
                        if self.locs.is_empty() {
                            self.next = Some(index + 1);
                        }
                    } else {
                        self.locs.clear();
                        self.next = Some(index + 1);
                    }
                }
                self.floor = (index, term);
            }
        }
        Ok(())
    }

    /// After a replay: no gap between the floor and the first entry.
    pub(super) fn finish(&mut self) -> Result<(), ApplyErr> {
        let known_from = if self.locs.is_empty() {
            self.next.unwrap_or(self.floor.0 + 1)
        } else {
            self.base
        };
        if known_from > self.floor.0 + 1 {
            return Err((
                "log entries missing between the compaction floor and the first entry on disk"
                    .into(),
                format!("first entry {}", self.floor.0 + 1),
                format!("first entry {known_from}"),
            ));
        }
        self.next = Some(self.last() + 1);
        if self.locs.is_empty() {
            self.base = self.floor.0 + 1;
        }
        Ok(())
    }
}
