//! Opening the store: verify the newest snapshot (quarantining newer corrupt ones), remove
//! unfinished writes and stale partials, and find the transfer that can be resumed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::config::StorageConfig;
use crate::error::{Result, io_err};
use crate::vfs::{OpenMode, Vfs};

use super::format::verify_file_prehashed;
use super::progress::read_progress;
use super::shared::{PACK_SUFFIX, SHARES_SUFFIX, borrows_in, read_share_records};
use super::{Inner, SnapState, SnapshotId, SnapshotRecovery, SnapshotStore, parse_id};

impl SnapshotStore {
    /// Open (or create) the store in `dir`: find the newest snapshot whose digest verifies
    /// (quarantining newer corrupt ones with a warning naming file and digests), delete
    /// unfinished local writes and superseded partials, and apply retention.
    /// Cost: one full read of the newest snapshot (plus one per corrupt newer one).
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        cfg: &StorageConfig,
    ) -> Result<(SnapshotStore, SnapshotRecovery)> {
        cfg.validate()?;
        vfs.create_dir_all(dir)
            .map_err(io_err("create snapshot directory", dir))?;
        let inner = Arc::new(Inner {
            vfs,
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
            state: Mutex::new(SnapState::default()),
            gc_lock: Mutex::new(()),
        });
        let store = SnapshotStore { inner };
        let rec = store.recover()?;
        store.gc()?;
        Ok((store, rec))
    }

    fn recover(&self) -> Result<SnapshotRecovery> {
        let inner = &self.inner;
        let (vfs, dir) = (inner.vfs.as_ref(), inner.dir.as_path());
        let mut rec = SnapshotRecovery::default();
        let mut candidates = Vec::new();
        let mut partials = Vec::new();
        let mut progress = Vec::new();
        let mut packs = Vec::new();
        let mut shares = Vec::new();
        for name in vfs
            .list(dir)
            .map_err(io_err("list snapshot directory", dir))?
        {
            let path = dir.join(&name);
            if let Some(id) = name.strip_suffix(PACK_SUFFIX).and_then(parse_id) {
                packs.push(id);
            } else if let Some(stem) = name.strip_suffix(".snap") {
                match parse_id(stem) {
                    Some(id) => candidates.push(id),
                    None => {
                        tracing::warn!(file = %path.display(), "ignoring unexpected file in the snapshot directory")
                    }
                }
            } else if name.ends_with(".snap.tmp") {
                tracing::info!(file = %path.display(), "removing unfinished snapshot write");
                vfs.remove_file(&path)
                    .map_err(io_err("remove unfinished snapshot", &path))?;
                rec.removed.push(path);
            } else if let Some(id) = name.strip_suffix(".partial").and_then(parse_id) {
                partials.push(id);
            } else if let Some(id) = name.strip_suffix(".partial.progress").and_then(parse_id) {
                progress.push(id);
            } else if let Some(id) = name.strip_suffix(SHARES_SUFFIX).and_then(parse_id) {
                shares.push(id);
            } else if name
                .strip_suffix(super::source::SOURCE_SUFFIX)
                .and_then(parse_id)
                .is_some()
            {
                // Kept prefixes: only the longest stays (below).
            } else if !name.ends_with(".snap.corrupt") {
                tracing::warn!(file = %path.display(), "ignoring unexpected file in the snapshot directory");
            }
        }
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        let mut st = inner.lock();
        let mut failed = Vec::new();
        for id in candidates {
            let path = inner.path(id, ".snap");
            let full = rec.latest.is_none();
            match verify_file_prehashed(vfs, &path, &inner.cfg, full, None) {
                Ok((info, borrows)) if info.meta.id == id => {
                    if full {
                        rec.latest = Some(info.clone());
                    }
                    if !borrows.is_empty() {
                        st.shares.insert(id, borrows);
                    }
                    st.complete.insert(id, info);
                }
                result => {
                    let why = match result {
                        Ok((info, _)) => format!(
                            "header names snapshot {} but the file name says {id}",
                            info.meta.id
                        ),
                        Err(e) => e.to_string(),
                    };
                    failed.push((id, path, why));
                }
            }
        }
        // A failed file that a good one borrows from stays, as a pack: the borrower's own
        // checks vouch for the bytes it reads there, and quarantining it would lose the
        // borrower too. The others are quarantined.
        let mut used = st.owners_in_use();
        // Also what an interrupted transfer's shared ranges name (read again below for the
        // partial that resumes; a stale one's extra pack goes with the next retention pass).
        for id in &shares {
            used.extend(
                read_share_records(vfs, &inner.path(*id, SHARES_SUFFIX))
                    .iter()
                    .map(|b| b.owner),
            );
        }
        for (id, path, why) in failed {
            if used.contains(&id) {
                let pack = inner.path(id, PACK_SUFFIX);
                tracing::warn!(file = %path.display(), error = %why, kept_as = %pack.display(),
                    "snapshot failed verification; kept as a pack since newer snapshots share bytes with it");
                vfs.rename(&path, &pack)
                    .map_err(io_err("keep failed snapshot as a pack", &path))?;
                packs.push(id);
                rec.quarantined.push(pack);
                continue;
            }
            let bad = inner.path(id, ".snap.corrupt");
            tracing::warn!(
                file = %path.display(),
                error = %why,
                quarantined_as = %bad.display(),
                "snapshot failed verification; falling back to the previous snapshot"
            );
            vfs.rename(&path, &bad)
                .map_err(io_err("quarantine corrupt snapshot", &path))?;
            rec.quarantined.push(bad);
        }
        // Packs: their borrows only serve to follow a range to the file that holds it. One
        // whose trailer cannot be read lends nothing (a snapshot borrowing from it fails its
        // digest and falls back like any damaged file).
        for id in packs {
            let path = inner.path(id, PACK_SUFFIX);
            match borrows_in(vfs, &path) {
                Ok(b) if !b.is_empty() => {
                    st.shares.insert(id, Arc::new(b));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "pack trailer unreadable: nothing new borrows from it");
                    st.unlendable.insert(id);
                }
            }
            st.packs.insert(id);
        }
        let newest = rec.latest.as_ref().map(|i| i.id());
        partials.sort_unstable_by(|a, b| b.cmp(a));
        let mut keep: Option<SnapshotId> = None;
        for id in partials {
            let resumable =
                keep.is_none() && newest.is_none_or(|n| id > n) && progress.contains(&id);
            let path = inner.path(id, ".partial");
            if resumable {
                keep = Some(id);
                continue;
            }
            tracing::info!(file = %path.display(), "removing stale incoming snapshot");
            vfs.remove_file(&path)
                .map_err(io_err("remove stale incoming snapshot", &path))?;
            rec.removed.push(path);
        }
        for id in progress {
            if Some(id) != keep {
                let path = inner.path(id, ".partial.progress");
                vfs.remove_file(&path)
                    .map_err(io_err("remove stale snapshot progress", &path))?;
                rec.removed.push(path);
            }
        }
        drop(st);
        if let Some(id) = keep {
            match read_progress(vfs, &inner.path(id, ".partial.progress")) {
                Ok(d) => {
                    // Report what `incoming` will do: a partial shorter than its recorded
                    // durable offset restarts from 0 (found by fuzz target snapshot_open).
                    let path = inner.path(id, ".partial");
                    let len = vfs
                        .open(&path, OpenMode::Read)
                        .and_then(|f| f.len())
                        .map_err(io_err("stat incoming snapshot", &path))?;
                    let d = if len < d { 0 } else { d };
                    rec.resumable.push((id, d));
                    // What its shared ranges borrow stays on disk until it resumes.
                    let owners: std::collections::BTreeSet<SnapshotId> =
                        read_share_records(vfs, &inner.path(id, SHARES_SUFFIX))
                            .into_iter()
                            .filter(|b| b.end() <= d)
                            .map(|b| b.owner)
                            .collect();
                    if !owners.is_empty() {
                        inner.lock().incoming_claims.insert(id, owners);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "incoming snapshot progress unreadable; it will restart from 0")
                }
            }
        }
        for id in shares {
            if Some(id) != keep {
                let path = inner.path(id, SHARES_SUFFIX);
                vfs.remove_file(&path)
                    .map_err(io_err("remove stale shared ranges", &path))?;
                rec.removed.push(path);
            }
        }
        rec.removed
            .extend(super::source::remove_sources(inner, true)?);
        if !rec.removed.is_empty() || !rec.quarantined.is_empty() {
            inner.sync_dir()?;
        }
        Ok(rec)
    }
}
