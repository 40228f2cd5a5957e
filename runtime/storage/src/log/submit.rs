//! Submitting write batches: validation against the logical log, the bounded queue, and waiting
//! for durability.

use crate::error::{Result, StorageError};

use super::shared::{Cached, Pending, State, cache_cost};
use super::{DurablePoint, Log, WriteBatch, WriteTicket};

impl Log {
    /// Queue a batch without blocking. Returns [`StorageError::QueueFull`] (nothing queued) when
    /// the queue is at its bound; retry after the next
    /// [`WriterEvent::Durable`](super::WriterEvent::Durable).
    ///
    /// The batch is visible to reads (`entries`, `term`, `last_index`) as soon as this returns,
    /// before it is durable, so a leader can replicate while its own sync is in flight.
    /// Cost: a mutex acquisition and validation; O(entries).
    pub fn try_submit(&self, batch: WriteBatch) -> Result<WriteTicket> {
        self.submit_inner(batch, false)
    }

    /// Queue a batch, blocking the calling thread while the queue is full.
    pub fn submit(&self, batch: WriteBatch) -> Result<WriteTicket> {
        self.submit_inner(batch, true)
    }

    /// Compact the prefix through `index` (whose term is `term`) behind a snapshot that is already
    /// durable. If the log holds `index` with `term`, later entries are kept; otherwise (the
    /// snapshot is ahead of or conflicts with the log) every entry is discarded and the log
    /// continues at `index + 1` (Raft §7). Whole segments behind the floor are deleted after the
    /// floor record is durable. A no-op if `index` is at or below the current floor. Blocks only
    /// while the queue is full.
    pub fn compact(&self, index: u64, term: u64) -> Result<WriteTicket> {
        self.submit(WriteBatch {
            compact: Some((index, term)),
            ..WriteBatch::default()
        })
    }

    fn submit_inner(&self, batch: WriteBatch, block: bool) -> Result<WriteTicket> {
        let cfg = &self.shared.cfg;
        for e in &batch.entries {
            if e.payload.len() as u64 > cfg.entry_bytes_max {
                return Err(StorageError::LimitExceeded {
                    what: "log entry payload",
                    limit_name: "entry_bytes_max",
                    limit: cfg.entry_bytes_max,
                    found: e.payload.len() as u64,
                });
            }
        }
        let bytes = batch.encoded_bytes();
        if bytes > cfg.queue_bytes_max {
            return Err(StorageError::LimitExceeded {
                what: "write batch",
                limit_name: "queue_bytes_max",
                limit: cfg.queue_bytes_max,
                found: bytes,
            });
        }
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = &st.poisoned {
                return Err(StorageError::Poisoned(e.clone()));
            }
            if st.shutdown {
                return Err(StorageError::Closed);
            }
            if st.queue.len() < cfg.queue_ops_max && st.queued_bytes + bytes <= cfg.queue_bytes_max
            {
                break;
            }
            if !block {
                return Err(StorageError::QueueFull {
                    queued_ops: st.queue.len(),
                    queued_bytes: st.queued_bytes,
                    queue_ops_max: cfg.queue_ops_max,
                    queue_bytes_max: cfg.queue_bytes_max,
                });
            }
            st = self
                .shared
                .space_cv
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        let truncate = validate(&st, &batch)?;
        let seq = st.next_seq;
        st.next_seq += 1;
        if let Some(tag) = batch.tag {
            st.last_tag = tag;
        }
        let l = &mut st.logical;
        if let Some(t) = truncate {
            l.truncate(t);
        }
        for e in &batch.entries {
            l.cache_bytes += cache_cost(e);
            l.cache.push_back(Cached {
                seq,
                entry: e.clone(),
            });
            l.last_index = e.index;
        }
        if let Some(hs) = batch.hard_state {
            l.hs = hs;
        }
        let mut compact = batch.compact;
        if let Some((index, term)) = compact {
            if index <= st.logical.floor.0 {
                compact = None;
            } else {
                let matches = index <= st.logical.last_index && st.term(index).ok() == Some(term);
                let l = &mut st.logical;
                if matches {
                    while l.cache_first <= index {
                        match l.cache.pop_front() {
                            Some(c) => l.cache_bytes -= cache_cost(&c.entry),
                            None => break,
                        }
                        l.cache_first += 1;
                    }
                } else {
                    l.cache.clear();
                    l.cache_bytes = 0;
                    l.last_index = index;
                    l.cache_first = index + 1;
                }
                if l.cache.is_empty() {
                    l.cache_first = l.cache_first.max(l.last_index + 1);
                }
                l.floor = (index, term);
            }
        }
        let limit = cfg.tail_cache_bytes;
        let written = st.written_seq;
        st.logical.evict(written, limit);
        st.queued_bytes += bytes;
        st.queue.push_back(Pending {
            seq,
            tag: batch.tag,
            truncate,
            entries: batch.entries,
            hs: batch.hard_state,
            compact,
        });
        drop(st);
        self.shared.work_cv.notify_one();
        Ok(WriteTicket {
            seq,
            shared: self.shared.clone(),
        })
    }

    /// Block until submission `seq` is durable.
    pub fn wait_durable(&self, seq: u64) -> Result<()> {
        self.shared.wait_durable(seq)
    }

    /// The latest durable point (cheap: one mutex acquisition).
    pub fn durable(&self) -> DurablePoint {
        self.shared.lock().durable.clone()
    }
}

/// Check a batch against the logical log; returns the effective truncation point.
fn validate(st: &State, b: &WriteBatch) -> Result<Option<u64>> {
    let l = &st.logical;
    if let Some(tag) = b.tag
        && tag < st.last_tag
    {
        return Err(StorageError::Invalid(format!(
            "write batch tag {tag} is below the previous tag {}: tags must not decrease",
            st.last_tag
        )));
    }
    let mut truncate = None;
    let mut last = l.last_index;
    if let Some(t) = b.truncate_after {
        if t < l.floor.0 || t > l.last_index {
            return Err(StorageError::Invalid(format!(
                "truncate_after {t} outside the log [{}, {}]",
                l.floor.0, l.last_index
            )));
        }
        truncate = Some(t);
        last = t;
    }
    if let Some(first) = b.entries.first() {
        if first.index <= l.floor.0 {
            return Err(StorageError::Invalid(format!(
                "append at index {} is at or below the compaction floor {}",
                first.index, l.floor.0
            )));
        }
        if first.index > last + 1 {
            return Err(StorageError::Invalid(format!(
                "append at index {} leaves a gap: the log ends at {last}",
                first.index
            )));
        }
        if first.index <= last {
            truncate = Some(first.index - 1);
        }
        let mut prev_term = st.term(first.index - 1)?;
        for (expect, e) in (first.index..).zip(&b.entries) {
            if e.index != expect {
                return Err(StorageError::Invalid(format!(
                    "entries are not contiguous: expected index {expect}, found {}",
                    e.index
                )));
            }
            if e.term < prev_term {
                return Err(StorageError::Invalid(format!(
                    "entry {} has term {} below the previous entry's term {prev_term}",
                    e.index, e.term
                )));
            }
            prev_term = e.term;
        }
    }
    if let Some(hs) = &b.hard_state
        && hs.term < l.hs.term
    {
        return Err(StorageError::Invalid(format!(
            "hard state term goes backwards from {} to {}",
            l.hs.term, hs.term
        )));
    }
    Ok(truncate)
}
