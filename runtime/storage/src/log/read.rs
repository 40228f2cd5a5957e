//! Reads: entries from the tail cache or the segments (one positional read per contiguous run,
//! checksum-verified), terms, bounds, and the monitoring counters.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Result, StorageError, io_err};
use crate::record::{self, Decoded, Record};
use crate::vfs::{VfsFile, read_exact_at};
use crate::{HardState, LogEntry};

use super::disk_index::Loc;
use super::segment::segment_name;
use super::shared::internal;
use super::{Log, LogStats};

impl Log {
    /// Entries `[lo, hi)`, stopping early once the payloads reach `max_bytes` (always at least one
    /// entry if the range is non-empty). Includes submitted-but-not-yet-durable entries.
    /// Recent entries come from the tail cache (no I/O); older ones cost one positional read per
    /// contiguous run, checksum-verified.
    pub fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>> {
        let (disk_runs, cached) = {
            let st = self.shared.lock();
            let l = &st.logical;
            if lo <= l.floor.0 {
                return Err(StorageError::Compacted {
                    index: lo,
                    first_index: l.floor.0 + 1,
                });
            }
            if hi > l.last_index + 1 {
                return Err(StorageError::Unavailable {
                    index: hi - 1,
                    last_index: l.last_index,
                });
            }
            if lo >= hi {
                return Ok(Vec::new());
            }
            let mut budget = 0u64;
            let mut disk: Vec<(u64, Loc, Arc<dyn VfsFile>)> = Vec::new();
            let mut cached = Vec::new();
            for index in lo..hi {
                if index >= l.cache_first {
                    let e = &l.cache[(index - l.cache_first) as usize].entry;
                    if budget > 0 && budget + e.payload.len() as u64 > max_bytes {
                        break;
                    }
                    budget += e.payload.len() as u64;
                    cached.push(e.clone());
                } else {
                    let loc = st
                        .disk
                        .locs
                        .get((index.wrapping_sub(st.disk.base)) as usize)
                        .copied()
                        .filter(|_| index >= st.disk.base)
                        .ok_or_else(|| internal(format!("index {index} not in the disk index")))?;
                    let payload_len = (loc.len as usize)
                        .saturating_sub(record::REC_OVERHEAD + record::ENTRY_PREFIX);
                    if budget > 0 && budget + payload_len as u64 > max_bytes {
                        break;
                    }
                    budget += payload_len as u64;
                    let file = st
                        .segments
                        .get(&loc.seg)
                        .cloned()
                        .ok_or_else(|| internal(format!("segment {} not open", loc.seg)))?;
                    disk.push((index, loc, file));
                }
            }
            (disk, cached)
        };
        let mut out = Vec::with_capacity(disk_runs.len() + cached.len());
        read_disk(
            &self.shared.dir,
            self.shared.body_max(),
            &disk_runs,
            &mut out,
        )?;
        out.extend(cached);
        Ok(out)
    }

    /// One entry (see [`Log::entries`]).
    pub fn entry(&self, index: u64) -> Result<LogEntry> {
        self.entries(index, index + 1, u64::MAX)?
            .pop()
            .ok_or(StorageError::Unavailable {
                index,
                last_index: self.last_index(),
            })
    }

    /// Term of `index` (the floor index included). No I/O.
    pub fn term(&self, index: u64) -> Result<u64> {
        self.shared.lock().term(index)
    }

    /// First index in the log (floor + 1), including submitted compactions.
    pub fn first_index(&self) -> u64 {
        self.shared.lock().logical.floor.0 + 1
    }

    /// Last index, including submitted-but-not-durable entries.
    pub fn last_index(&self) -> u64 {
        self.shared.lock().logical.last_index
    }

    /// Compaction floor `(index, term)`, including submitted compactions.
    pub fn floor(&self) -> (u64, u64) {
        self.shared.lock().logical.floor
    }

    /// Latest submitted hard state (durable or not; see
    /// [`DurablePoint::hard_state`](super::DurablePoint::hard_state)).
    pub fn hard_state(&self) -> HardState {
        self.shared.lock().logical.hs
    }

    /// Monitoring counters.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.lock();
        LogStats {
            batches: st.batches,
            syncs: st.syncs,
            queued_ops: st.queue.len(),
            queued_bytes: st.queued_bytes,
            cache_entries: st.logical.cache.len(),
            cache_bytes: st.logical.cache_bytes,
            segments: st.segments.len(),
        }
    }
}

pub(super) fn read_disk(
    dir: &Path,
    body_max: usize,
    locs: &[(u64, Loc, Arc<dyn VfsFile>)],
    out: &mut Vec<LogEntry>,
) -> Result<()> {
    let mut i = 0;
    while i < locs.len() {
        // Extend the run while records are adjacent in the same segment.
        let (_, first, _) = &locs[i];
        let mut j = i + 1;
        let mut end = first.off + u64::from(first.len);
        while j < locs.len() && locs[j].1.seg == first.seg && locs[j].1.off == end {
            end += u64::from(locs[j].1.len);
            j += 1;
        }
        let path = dir.join(segment_name(first.seg));
        let mut buf = vec![0u8; (end - first.off) as usize];
        read_exact_at(locs[i].2.as_ref(), &mut buf, first.off)
            .map_err(io_err("read log entries", &path))?;
        let buf = Bytes::from(buf);
        let mut off = 0usize;
        for (index, loc, _) in &locs[i..j] {
            let corrupt = |detail: &str, expected: String, found: String| StorageError::Corrupt {
                file: path.clone(),
                offset: loc.off,
                detail: detail.into(),
                expected,
                found,
            };
            match record::decode(&buf, off, body_max) {
                Decoded::Ok(
                    Record::Entry {
                        index: got,
                        term,
                        payload,
                    },
                    next,
                ) => {
                    if got != *index || term != loc.term {
                        return Err(corrupt(
                            "entry read back does not match the index",
                            format!("index {index} term {}", loc.term),
                            format!("index {got} term {term}"),
                        ));
                    }
                    out.push(LogEntry {
                        index: got,
                        term,
                        payload,
                    });
                    off = next;
                }
                other => {
                    return Err(corrupt(
                        "entry read back failed validation",
                        "valid entry".into(),
                        format!("{other:?}"),
                    ));
                }
            }
        }
        i = j;
    }
    Ok(())
}
