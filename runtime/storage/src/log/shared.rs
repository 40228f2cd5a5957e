//! The state producers ([`Log`](super::Log)) and the writer thread share: the submission queue,
//! the logical log with its tail cache, the disk index, and the durability waiters.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::config::StorageConfig;
use crate::error::{Result, StorageError};
use crate::record;
use crate::vfs::{Vfs, VfsFile};
use crate::{HardState, LogEntry};

use super::disk_index::DiskIndex;
use super::segment::segment_name;
use super::{CACHE_ENTRY_OVERHEAD_BYTES, DurablePoint, EventCallback};

#[derive(Debug, Clone)]
pub(super) struct Cached {
    pub(super) seq: u64,
    pub(super) entry: LogEntry,
}

pub(super) fn cache_cost(e: &LogEntry) -> u64 {
    e.payload.len() as u64 + CACHE_ENTRY_OVERHEAD_BYTES
}

/// The log as producers see it: includes submissions not yet written.
#[derive(Debug)]
pub(super) struct Logical {
    pub(super) floor: (u64, u64),
    pub(super) last_index: u64,
    pub(super) cache: VecDeque<Cached>,
    pub(super) cache_first: u64,
    pub(super) cache_bytes: u64,
    pub(super) hs: HardState,
}

impl Logical {
    pub(super) fn truncate(&mut self, last_kept: u64) {
        if last_kept + 1 >= self.cache_first {
            let keep = (last_kept + 1 - self.cache_first) as usize;
            while self.cache.len() > keep {
                if let Some(c) = self.cache.pop_back() {
                    self.cache_bytes -= cache_cost(&c.entry);
                }
            }
        } else {
            self.cache.clear();
            self.cache_bytes = 0;
            self.cache_first = last_kept + 1;
        }
        self.last_index = last_kept;
    }

    pub(super) fn evict(&mut self, written_seq: u64, limit_bytes: u64) {
        while self.cache_bytes > limit_bytes {
            match self.cache.front() {
                Some(c) if c.seq <= written_seq => {
                    self.cache_bytes -= cache_cost(&c.entry);
                    self.cache.pop_front();
                    self.cache_first += 1;
                }
                _ => break,
            }
        }
    }
}

pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) tag: Option<u64>,
    pub(super) truncate: Option<u64>,
    pub(super) entries: Vec<LogEntry>,
    pub(super) hs: Option<HardState>,
    pub(super) compact: Option<(u64, u64)>,
}

pub(super) struct State {
    pub(super) queue: VecDeque<Pending>,
    pub(super) queued_bytes: u64,
    pub(super) next_seq: u64,
    /// Highest tag submitted so far (tags must not decrease).
    pub(super) last_tag: u64,
    pub(super) written_seq: u64,
    pub(super) durable: DurablePoint,
    pub(super) poisoned: Option<Arc<StorageError>>,
    pub(super) shutdown: bool,
    pub(super) logical: Logical,
    pub(super) disk: DiskIndex,
    pub(super) segments: BTreeMap<u64, Arc<dyn VfsFile>>,
    pub(super) batches: u64,
    pub(super) syncs: u64,
}

impl State {
    pub(super) fn term(&self, index: u64) -> Result<u64> {
        let l = &self.logical;
        if index == l.floor.0 {
            return Ok(l.floor.1);
        }
        if index < l.floor.0 {
            return Err(StorageError::Compacted {
                index,
                first_index: l.floor.0 + 1,
            });
        }
        if index > l.last_index {
            return Err(StorageError::Unavailable {
                index,
                last_index: l.last_index,
            });
        }
        if index >= l.cache_first {
            return Ok(l.cache[(index - l.cache_first) as usize].entry.term);
        }
        self.disk
            .term_at(index)
            .ok_or_else(|| internal(format!("index {index} neither cached nor on disk")))
    }
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) work_cv: Condvar,
    pub(super) space_cv: Condvar,
    pub(super) durable_seq: AtomicU64,
    pub(super) failed: AtomicBool,
    pub(super) waiters: Mutex<()>,
    pub(super) durable_cv: Condvar,
    pub(super) cfg: StorageConfig,
    pub(super) vfs: Arc<dyn Vfs>,
    pub(super) dir: PathBuf,
    pub(super) on_event: Option<EventCallback>,
}

pub(super) fn internal(msg: String) -> StorageError {
    StorageError::Invalid(format!("internal storage invariant violated: {msg}"))
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this crate; the state is still
        // structurally valid, so keep serving rather than cascading panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waiters park on their own small mutex, not the state mutex, so that waking hundreds of
    /// them after a sync does not stall submitters or the writer.
    pub(super) fn wait_durable(&self, seq: u64) -> Result<()> {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let mut g = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.durable_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if self.failed.load(Ordering::Acquire) {
                drop(g);
                return match &self.lock().poisoned {
                    Some(e) => Err(StorageError::Poisoned(e.clone())),
                    None => Err(StorageError::Closed),
                };
            }
            g = self.durable_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wake every waiter. Taking the waiter lock orders this after any waiter's last check.
    pub(super) fn wake_waiters(&self) {
        drop(self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        self.durable_cv.notify_all();
    }

    pub(super) fn body_max(&self) -> usize {
        self.cfg.entry_bytes_max as usize + record::ENTRY_PREFIX
    }

    pub(super) fn seg_path(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(seq))
    }
}
