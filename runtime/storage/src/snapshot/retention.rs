//! Listing, pinning, accepting received snapshots, and retention (deleting old ones).

use std::sync::Arc;

use crate::error::{Result, StorageError, io_err};

use super::shared::{Borrow, PACK_SUFFIX};
use super::{SnapshotId, SnapshotInfo, SnapshotStore};

impl SnapshotStore {
    /// Complete snapshots, oldest first, including received ones not yet accepted.
    pub fn list(&self) -> Vec<SnapshotInfo> {
        self.inner.lock().complete.values().cloned().collect()
    }

    /// The newest complete snapshot (possibly a received one not yet accepted).
    pub fn latest(&self) -> Option<SnapshotInfo> {
        self.inner.lock().complete.values().next_back().cloned()
    }

    /// Make a received snapshot (published by
    /// [`IncomingSnapshot::finalize`](super::IncomingSnapshot::finalize)) one of the node's
    /// own: from now on it counts toward `snapshot_retain_count` like a local one. Call it once
    /// the node has installed it; a received snapshot never accepted does not push out the node's
    /// own snapshots, and is deleted by retention once a newer one arrives or the node's own
    /// snapshots reach its index. A no-op for a snapshot that is already the node's. Cheap: no
    /// I/O but the retention pass it runs.
    ///
    /// # Errors
    /// [`StorageError::SnapshotNotFound`] if `id` is not complete here (retention deleted it).
    pub fn accept(&self, id: SnapshotId) -> Result<()> {
        {
            let mut st = self.inner.lock();
            if !st.complete.contains_key(&id) {
                return Err(StorageError::SnapshotNotFound(id));
            }
            st.received.remove(&id);
        }
        self.gc().map(|_| ())
    }

    /// Pin a snapshot so retention never deletes it while the pin lives (a running transfer).
    pub fn pin(&self, id: SnapshotId) -> Result<SnapshotPin> {
        let mut st = self.inner.lock();
        if !st.complete.contains_key(&id) {
            return Err(StorageError::SnapshotNotFound(id));
        }
        *st.pins.entry(id).or_insert(0) += 1;
        Ok(SnapshotPin {
            store: self.clone(),
            id,
        })
    }

    /// Delete, skipping pinned ones: the node's own snapshots beyond the newest
    /// `snapshot_retain_count`, and received snapshots not accepted yet ([`SnapshotStore::accept`])
    /// except the newest one above all of the node's own. So received snapshots the node ignores
    /// never push out the snapshot it works from, and at most one of them is kept. Runs
    /// automatically after each new snapshot, acceptance, and release of a pin.
    ///
    /// A deleted snapshot whose bytes a remaining one (or a writer in progress) borrows is kept
    /// as `<id>.pack` instead, and a pack is deleted once nothing borrows from it (see `shared`).
    /// Returns the snapshots that stopped being snapshots (deleted or kept as packs).
    pub fn gc(&self) -> Result<Vec<SnapshotId>> {
        let inner = &self.inner;
        // One pass at a time: a second pass must not delete a pack whose last borrower the
        // first has doomed but not yet removed durably.
        let _one = inner.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<SnapshotInfo> = {
            let mut st = inner.lock();
            let own: Vec<SnapshotId> = st
                .complete
                .keys()
                .rev()
                .filter(|id| !st.received.contains(id))
                .copied()
                .collect();
            let newest_own = own.first().copied();
            let mut received: Vec<SnapshotId> = st.received.iter().copied().collect();
            received.sort_unstable_by(|a, b| b.cmp(a));
            let keep_received = received.first().copied().filter(|r| newest_own < Some(*r));
            let ids: Vec<SnapshotId> = own
                .into_iter()
                .skip(inner.cfg.snapshot_retain_count)
                .chain(received.into_iter().filter(|r| Some(*r) != keep_received))
                .collect();
            let mut out = Vec::new();
            for id in ids {
                if st.pins.get(&id).copied().unwrap_or(0) == 0
                    && let Some(info) = st.complete.remove(&id)
                {
                    st.received.remove(&id);
                    out.push(info);
                }
            }
            out
        };
        // Owners the doomed files borrow from are kept as packs for now too: they go (below)
        // only once those borrowers' deletion is durable.
        let doomed_owners: std::collections::BTreeSet<SnapshotId> = {
            let st = inner.lock();
            doomed
                .iter()
                .filter_map(|i| st.shares.get(&i.id()))
                .flat_map(|b| b.iter().map(|b| b.owner))
                .collect()
        };
        let mut changed = false;
        for info in &doomed {
            let id = info.id();
            // Decided and recorded under the lock, so a writer cannot start borrowing from a
            // snapshot between the check and the deletion.
            let keep = {
                let mut st = inner.lock();
                let keep = doomed_owners.contains(&id) || st.owners_in_use().contains(&id);
                if keep {
                    st.packs.insert(id);
                } else {
                    st.shares.remove(&id);
                }
                keep
            };
            if keep {
                let pack = inner.path(id, PACK_SUFFIX);
                inner
                    .vfs
                    .rename(&info.path, &pack)
                    .map_err(io_err("keep old snapshot as a pack", &info.path))?;
                tracing::debug!(file = %pack.display(), "old snapshot kept as a pack: newer snapshots share its bytes");
            } else {
                inner
                    .vfs
                    .remove_file(&info.path)
                    .map_err(io_err("remove old snapshot", &info.path))?;
            }
            changed = true;
        }
        // The borrowers' deletion is made durable before a pack they used goes: a crash never
        // leaves a snapshot whose owner is gone.
        if changed {
            inner.sync_dir()?;
        }
        if self.drop_unused_packs()? {
            inner.sync_dir()?;
        }
        Ok(doomed.iter().map(SnapshotInfo::id).collect())
    }

    /// Delete the packs nothing borrows from any more. Returns whether any was deleted (the
    /// caller syncs the directory).
    pub(super) fn drop_unused_packs(&self) -> Result<bool> {
        let inner = &self.inner;
        let unused: Vec<SnapshotId> = {
            let mut st = inner.lock();
            let used = st.owners_in_use();
            let unused: Vec<SnapshotId> = st
                .packs
                .iter()
                .filter(|p| !used.contains(p))
                .copied()
                .collect();
            for id in &unused {
                st.packs.remove(id);
                st.shares.remove(id);
                st.unlendable.remove(id);
            }
            unused
        };
        for id in &unused {
            let path = inner.path(*id, PACK_SUFFIX);
            inner
                .vfs
                .remove_file(&path)
                .map_err(io_err("remove unused pack", &path))?;
        }
        Ok(!unused.is_empty())
    }

    /// Snapshots kept only as packs (retired, their bytes still shared by newer ones), oldest
    /// first.
    pub fn packs(&self) -> Vec<SnapshotId> {
        self.inner.lock().packs.iter().copied().collect()
    }

    pub(super) fn publish(
        &self,
        info: SnapshotInfo,
        received: bool,
        borrows: Arc<Vec<Borrow>>,
    ) -> Result<()> {
        {
            let mut st = self.inner.lock();
            if received {
                st.received.insert(info.id());
            }
            if !borrows.is_empty() {
                st.shares.insert(info.id(), borrows);
            }
            st.complete.insert(info.id(), info);
        }
        self.gc().map(|_| ())
    }
}

/// Keeps a snapshot from being deleted by retention while alive.
#[derive(Debug)]
pub struct SnapshotPin {
    store: SnapshotStore,
    id: SnapshotId,
}

impl SnapshotPin {
    /// The pinned snapshot.
    pub fn id(&self) -> SnapshotId {
        self.id
    }
}

impl Drop for SnapshotPin {
    fn drop(&mut self) {
        let release = {
            let mut st = self.store.inner.lock();
            match st.pins.get_mut(&self.id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    st.pins.remove(&self.id);
                    true
                }
            }
        };
        if release && let Err(e) = self.store.gc() {
            tracing::warn!(error = %e, "snapshot retention after releasing a pin failed");
        }
    }
}
