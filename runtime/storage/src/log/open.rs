//! Opening the log: recover the segments, start a fresh segment, delete segments behind the
//! floor, warm the tail cache, and start the writer thread.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};

use crate::config::{FsyncPolicy, StorageConfig};
use crate::error::{Result, io_err};
use crate::vfs::{Vfs, VfsFile};

use super::disk_index::Loc;
use super::read::read_disk;
use super::recovery::recover;
use super::segment::{create_segment, delete_compacted_segments};
use super::shared::{Cached, Logical, Shared, State, cache_cost, internal};
use super::writer::{Writer, writer_main};
use super::{CACHE_ENTRY_OVERHEAD_BYTES, DurablePoint, EventCallback, Log, LogRecovery};

impl Log {
    /// Open (or create) the log in `dir`, recover it, and start the writer thread.
    ///
    /// Recovery replays every segment (cost: one sequential read of the log), cuts a torn tail
    /// off the newest segment with a warning, fails with
    /// [`StorageError::Corrupt`](crate::StorageError::Corrupt) on damage anywhere else, starts a
    /// fresh segment, and deletes segments wholly behind the floor.
    /// `on_event` is called on the writer thread after every sync.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        cfg: &StorageConfig,
        on_event: Option<EventCallback>,
    ) -> Result<(Log, LogRecovery)> {
        cfg.validate()?;
        vfs.create_dir_all(dir)
            .map_err(io_err("create_dir_all", dir))?;
        if cfg.fsync == FsyncPolicy::Relaxed {
            tracing::warn!(
                dir = %dir.display(),
                "storage fsync policy is RELAXED: writes are acknowledged without fdatasync. A power \
                 loss or kernel crash can lose acknowledged entries and votes, which breaks Raft's \
                 safety (a node may vote twice or forget committed entries). Use only for benchmarks."
            );
        }
        let rec = recover(vfs.as_ref(), dir, cfg)?;
        let segments_replayed = rec.segments.len();
        let disk = rec.disk;
        let mut segments = rec.segments;
        let torn_tail = rec.torn;

        // Always start a fresh segment: it restates floor and hard state, so older segments can be
        // deleted by compaction without losing them, and it never appends after a cut tail.
        let new_seq = segments.keys().next_back().map_or(1, |s| s + 1);
        let (file, len) =
            create_segment(vfs.as_ref(), dir, new_seq, disk.floor, disk.hs, cfg.fsync)?;
        segments.insert(new_seq, file.clone());

        let durable = DurablePoint {
            seq: 0,
            tag: 0,
            last_index: disk.last(),
            last_term: disk.last_term(),
            hard_state: disk.hs,
            sync_duration: None,
        };
        let logical = Logical {
            floor: disk.floor,
            last_index: disk.last(),
            cache: VecDeque::new(),
            cache_first: disk.last() + 1,
            cache_bytes: 0,
            hs: disk.hs,
        };
        let recovery = LogRecovery {
            floor: disk.floor,
            first_index: disk.floor.0 + 1,
            last_index: disk.last(),
            last_term: disk.last_term(),
            hard_state: disk.hs,
            segments_replayed,
            torn_tail,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                next_seq: 1,
                last_tag: 0,
                written_seq: 0,
                durable,
                poisoned: None,
                shutdown: false,
                logical,
                disk,
                segments,
                batches: 0,
                syncs: 0,
            }),
            work_cv: Condvar::new(),
            space_cv: Condvar::new(),
            durable_seq: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            waiters: Mutex::new(()),
            durable_cv: Condvar::new(),
            cfg: cfg.clone(),
            vfs,
            dir: dir.to_path_buf(),
            on_event,
        });
        delete_compacted_segments(&shared, new_seq)?;
        warm_cache(&shared)?;
        let w_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("wraft-storage-writer".into())
            .spawn(move || {
                writer_main(
                    w_shared,
                    Writer {
                        seq: new_seq,
                        file,
                        len,
                        allocated: len,
                        buf: Vec::new(),
                    },
                )
            })
            .map_err(io_err("spawn writer thread", dir))?;
        Ok((
            Log {
                shared,
                writer: Some(writer),
            },
            recovery,
        ))
    }
}

/// Fill the tail cache from disk after recovery, newest entries first, up to `tail_cache_bytes`.
fn warm_cache(shared: &Shared) -> Result<()> {
    let locs: Vec<(u64, Loc, Arc<dyn VfsFile>)> = {
        let st = shared.lock();
        let mut budget = 0u64;
        let mut out = Vec::new();
        for (i, loc) in st.disk.locs.iter().enumerate().rev() {
            let cost = u64::from(loc.len) + CACHE_ENTRY_OVERHEAD_BYTES;
            if budget + cost > shared.cfg.tail_cache_bytes {
                break;
            }
            budget += cost;
            let file = st
                .segments
                .get(&loc.seg)
                .cloned()
                .ok_or_else(|| internal("segment of live entry not open".into()))?;
            out.push((st.disk.base + i as u64, *loc, file));
        }
        out.reverse();
        out
    };
    if locs.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::new();
    read_disk(&shared.dir, shared.body_max(), &locs, &mut entries)?;
    let mut st = shared.lock();
    let l = &mut st.logical;
    l.cache_first = entries.first().map_or(l.last_index + 1, |e| e.index);
    for e in entries {
        l.cache_bytes += cache_cost(&e);
        l.cache.push_back(Cached { seq: 0, entry: e });
    }
    Ok(())
}
