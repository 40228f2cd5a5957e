//! Segment files: naming, creation (header, floor, hard state), rolling to the next, cutting, and
//! deletion behind the compaction floor. The byte layout is in [`crate::record`].

use std::path::Path;
use std::sync::Arc;

use crate::HardState;
use crate::config::FsyncPolicy;
use crate::error::{Result, io_err};
use crate::record::{self, Record};
use crate::vfs::{OpenMode, Vfs, VfsFile};

use super::shared::Shared;
use super::writer::Writer;

pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".wal")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Create segment `seq` holding the header, the floor and the hard state; durable before return.
pub(super) fn create_segment(
    vfs: &dyn Vfs,
    dir: &Path,
    seq: u64,
    floor: (u64, u64),
    hs: HardState,
    fsync: FsyncPolicy,
) -> Result<(Arc<dyn VfsFile>, u64)> {
    let path = dir.join(segment_name(seq));
    let file = vfs
        .open(&path, OpenMode::CreateNew)
        .map_err(io_err("create log segment", &path))?;
    let mut buf = Vec::new();
    record::encode_segment_header(seq, &mut buf);
    record::encode(
        &Record::Floor {
            index: floor.0,
            term: floor.1,
        },
        &mut buf,
    );
    record::encode(&Record::HardState(hs), &mut buf);
    file.write_all_at(&buf, 0)
        .map_err(io_err("write log segment header", &path))?;
    if fsync == FsyncPolicy::Durable {
        file.sync_data()
            .map_err(io_err("fdatasync new log segment", &path))?;
        vfs.sync_dir(dir)
            .map_err(io_err("fsync log directory", dir))?;
    }
    Ok((file, buf.len() as u64))
}

/// Seal the current segment (it is fully synced: rolls happen between batches) and start the next.
/// A sealed segment ends exactly after its last record: its preallocated tail is cut first,
/// durably, so recovery can hold every segment but the newest to "no bytes after the records".
pub(super) fn roll(shared: &Shared, w: &mut Writer) -> Result<()> {
    if w.allocated > w.len {
        let sync = shared.cfg.fsync == FsyncPolicy::Durable;
        cut_segment(w.file.as_ref(), w.len, &shared.seg_path(w.seq), sync)?;
        w.allocated = w.len;
    }
    let new_seq = w.seq + 1;
    // The disk index only changes on this thread, so floor and hard state cannot move under us.
    let (floor, hs) = {
        let st = shared.lock();
        (st.disk.floor, st.disk.hs)
    };
    let (file, len) = create_segment(
        shared.vfs.as_ref(),
        &shared.dir,
        new_seq,
        floor,
        hs,
        shared.cfg.fsync,
    )?;
    shared.lock().segments.insert(new_seq, file.clone());
    w.seq = new_seq;
    w.file = file;
    w.len = len;
    w.allocated = len;
    Ok(())
}

/// Delete segments that hold no live entry and are older than `current`; floor record first
/// (already durable when this runs), then unlink + directory fsync.
pub(super) fn delete_compacted_segments(shared: &Shared, current: u64) -> Result<()> {
    let doomed: Vec<u64> = {
        let mut st = shared.lock();
        let keep_from = st.disk.locs.front().map_or(current, |l| l.seg.min(current));
        let doomed: Vec<u64> = st.segments.range(..keep_from).map(|(s, _)| *s).collect();
        for s in &doomed {
            st.segments.remove(s);
        }
        doomed
    };
    if doomed.is_empty() {
        return Ok(());
    }
    // Oldest first: a crash part-way leaves a contiguous run of segments.
    for s in &doomed {
        let path = shared.seg_path(*s);
        shared
            .vfs
            .remove_file(&path)
            .map_err(io_err("remove compacted log segment", &path))?;
        if shared.cfg.fsync == FsyncPolicy::Durable {
            shared
                .vfs
                .sync_dir(&shared.dir)
                .map_err(io_err("fsync log directory", &shared.dir))?;
        }
    }
    tracing::debug!(
        segments = doomed.len(),
        "deleted log segments behind the compaction floor"
    );
    Ok(())
}

/// Cut segment file `file` (at `path`) to `len` bytes, durably if `sync`.
pub(super) fn cut_segment(file: &dyn VfsFile, len: u64, path: &Path, sync: bool) -> Result<()> {
    file.set_len(len).map_err(io_err("cut log segment", path))?;
    if sync {
        file.sync_data()
            .map_err(io_err("fdatasync cut log segment", path))?;
    }
    Ok(())
}
