//! The writer thread: takes everything queued since its last sync, writes it with one `pwrite`,
//! issues one `fdatasync`, and completes all of it at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::FsyncPolicy;
use crate::error::{Result, io_err};
use crate::record::{self, Record};
use crate::vfs::VfsFile;

use super::disk_index::{Loc, Summary};
use super::segment::{delete_compacted_segments, roll};
use super::shared::{Pending, Shared, internal};
use super::{DurablePoint, WriterEvent};

pub(super) struct Writer {
    pub(super) seq: u64,
    pub(super) file: Arc<dyn VfsFile>,
    /// End of the records written so far.
    pub(super) len: u64,
    /// Length of the segment file: `len` plus the zero-filled space written ahead of it.
    pub(super) allocated: u64,
    pub(super) buf: Vec<u8>,
}

pub(super) fn writer_main(shared: Arc<Shared>, mut w: Writer) {
    loop {
        let batch: Vec<Pending> = {
            let mut st = shared.lock();
            while st.queue.is_empty() {
                if st.shutdown {
                    return;
                }
                st = shared.work_cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.queued_bytes = 0;
            st.queue.drain(..).collect()
        };
        shared.space_cv.notify_all();
        if let Err(e) = write_batch(&shared, &mut w, batch) {
            let e = Arc::new(e);
            tracing::error!(error = %e, "storage writer failed; refusing further writes");
            shared.lock().poisoned = Some(e.clone());
            shared.failed.store(true, Ordering::Release);
            shared.wake_waiters();
            shared.space_cv.notify_all();
            if let Some(cb) = &shared.on_event {
                cb(&WriterEvent::Failed(e));
            }
            return;
        }
    }
}

fn write_batch(shared: &Shared, w: &mut Writer, batch: Vec<Pending>) -> Result<()> {
    let cfg = &shared.cfg;
    if w.len >= cfg.segment_bytes {
        roll(shared, w)?;
    }
    let Some(seq_hi) = batch.last().map(|p| p.seq) else {
        return Ok(());
    };
    let tag_hi = batch.iter().filter_map(|p| p.tag).max();
    w.buf.clear();
    let mut summaries: Vec<(Summary, Loc)> = Vec::new();
    let mut compacted = false;
    for p in &batch {
        let mut push = |rec: Record, buf: &mut Vec<u8>| {
            let start = buf.len();
            record::encode(&rec, buf);
            let loc = Loc {
                seg: w.seq,
                off: w.len + start as u64,
                len: (buf.len() - start) as u32,
                term: 0,
            };
            summaries.push((Summary::from(&rec), loc));
        };
        if let Some(t) = p.truncate {
            push(Record::Truncate { last_kept: t }, &mut w.buf);
        }
        for e in &p.entries {
            push(
                Record::Entry {
                    index: e.index,
                    term: e.term,
                    payload: e.payload.clone(),
                },
                &mut w.buf,
            );
        }
        if let Some(hs) = p.hs {
            push(Record::HardState(hs), &mut w.buf);
        }
        if let Some((index, term)) = p.compact {
            push(Record::Floor { index, term }, &mut w.buf);
            compacted = true;
        }
    }
    let path = shared.seg_path(w.seq);
    w.file
        .write_all_at(&w.buf, w.len)
        .map_err(io_err("write log segment", &path))?;
    w.len += w.buf.len() as u64;
    w.allocated = w.allocated.max(w.len);
    if cfg.preallocate_bytes > 0 && w.allocated - w.len < cfg.preallocate_bytes / 2 {
        // Zeros after the records, made durable by this batch's sync. A crash cutting this
        // write leaves the records whole and a shorter zero tail, which recovery trims.
        let zeros = vec![0u8; cfg.preallocate_bytes as usize];
        w.file
            .write_all_at(&zeros, w.allocated)
            .map_err(io_err("preallocate log segment", &path))?;
        w.allocated += cfg.preallocate_bytes;
    }
    {
        let mut st = shared.lock();
        for (s, loc) in summaries {
            st.disk.apply(s, loc).map_err(|(d, _, _)| {
                internal(format!("writer produced a record the index rejects: {d}"))
            })?;
        }
        st.written_seq = seq_hi;
        st.batches += 1;
        let written = st.written_seq;
        st.logical.evict(written, cfg.tail_cache_bytes);
    }
    let mut sync_duration = None;
    if cfg.fsync == FsyncPolicy::Durable {
        let started = std::time::Instant::now();
        w.file
            .sync_data()
            .map_err(io_err("fdatasync log segment", &path))?;
        sync_duration = Some(started.elapsed());
    }
    let point = {
        let mut st = shared.lock();
        shared.durable_seq.store(seq_hi, Ordering::Release);
        if cfg.fsync == FsyncPolicy::Durable {
            st.syncs += 1;
        }
        st.durable = DurablePoint {
            seq: seq_hi,
            tag: tag_hi.unwrap_or(st.durable.tag).max(st.durable.tag),
            last_index: st.disk.last(),
            last_term: st.disk.last_term(),
            hard_state: st.disk.hs,
            sync_duration,
        };
        st.durable.clone()
    };
    shared.wake_waiters();
    if compacted {
        delete_compacted_segments(shared, w.seq)?;
    }
    if let Some(cb) = &shared.on_event {
        cb(&WriterEvent::Durable(point));
    }
    Ok(())
}
