//! The disk side of a receive: opening (or resuming) the spool file, and the blocking thread
//! that writes, syncs and acknowledges durable offsets, then verifies and publishes.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use wraft_storage::{
    IncomingSnapshot, PartialSource, SnapshotInfo, SnapshotReader, SnapshotStore, StorageError,
};
use wraft_transport::NodeId;

use super::decide::{SyncPolicy, partial_restart_reason};
use crate::limiter::SlotPermit;
use crate::manifest::{LocalSegments, SegmentCache, segments_of};
use crate::metrics::LOG;
use crate::progress::Progress;
use crate::wire::Offer;

/// From the network task to the disk thread, in file order.
pub(super) enum DiskCmd {
    /// A checked chunk to write at `offset`.
    Write { offset: u64, data: Vec<u8> },
    /// A segment this node holds already (version 2): copy `len` bytes at `from` of local
    /// snapshot `source` (an index into [`Local::sources`]) to `at`.
    Copy {
        at: u64,
        len: u32,
        source: usize,
        from: u64,
        hash: [u8; 32],
    },
    /// Time passed (`tick_disk`): sync if bytes have waited `sync_interval_ms`. The disk thread
    /// only ever blocks in `blocking_recv`, so this is how time reaches it.
    Tick,
}

/// The snapshots this node holds, indexed by segment (version 2 transfers). Each reader pins
/// its file until the transfer ends, so retention cannot delete a file being copied from.
#[derive(Default)]
pub(super) struct Local {
    pub(super) sources: Vec<Source>,
    pub(super) segments: LocalSegments,
}

/// A file held segments are copied from.
pub(super) enum Source {
    /// A complete snapshot (pinned while read).
    Snapshot(Arc<SnapshotReader>),
    /// The durable prefix of an interrupted transfer of another snapshot.
    Partial(PartialSource),
}

impl Source {
    fn read_exact_at(&self, at: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        match self {
            Source::Snapshot(r) => match r.read_file_at(at, buf)? {
                n if n == buf.len() => Ok(()),
                n => Err(StorageError::Invalid(format!(
                    "local snapshot {}: read {n} bytes at offset {at}, expected {}",
                    r.info().id(),
                    buf.len()
                ))),
            },
            Source::Partial(p) => p.read_at(at, buf),
        }
    }
}

/// Index every complete snapshot in `store` by segment. Blocking: reads and hashes each file
/// (BLAKE3, ~4 GB/s). A file that cannot be read is skipped (its segments are fetched).
pub(super) fn index_local(store: &SnapshotStore, cache: &SegmentCache) -> Local {
    let mut local = Local::default();
    for info in store.list() {
        let id = info.id();
        let reader = match store.open_reader(id) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!(target: LOG, %id, error = %e, "cannot read a local snapshot to reuse its segments; skipping it");
                continue;
            }
        };
        let mut read_at = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
            match reader.read_file_at(at, buf) {
                Ok(n) if n == buf.len() => Ok(()),
                Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        };
        match cache.get_or_compute(info.digest, || segments_of(info.file_len, &mut read_at)) {
            Ok(segments) => {
                local.segments.add(local.sources.len(), &segments);
                local.sources.push(Source::Snapshot(reader));
            }
            Err(e) => {
                tracing::warn!(target: LOG, %id, error = %e, "cannot read a local snapshot to reuse its segments; skipping it");
            }
        }
    }
    // What an interrupted transfer of another snapshot made durable (not cached: it is a
    // prefix, with no digest of its own).
    match store.partial_source() {
        Ok(Some(p)) => {
            let mut read_at = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
                p.read_at(at, buf)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            match segments_of(p.len(), &mut read_at) {
                Ok(segments) => {
                    local.segments.add(local.sources.len(), &segments);
                    local.sources.push(Source::Partial(p));
                }
                Err(e) => {
                    tracing::warn!(target: LOG, id = %p.id(), error = %e, "cannot read the kept prefix of an interrupted transfer; skipping it");
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(target: LOG, error = %e, "cannot look for the kept prefix of an interrupted transfer; skipping it");
        }
    }
    local
}

/// From the disk thread to the network task.
pub(super) enum DiskEvent {
    Durable(u64),
    Verifying,
    Published(Box<SnapshotInfo>),
    Failed(StorageError),
}

/// Open the partial file for `offer.id`, keeping its durable prefix only if it is a prefix of
/// the *same* file ([`partial_restart_reason`]). Blocking: file opens and a header read.
pub(super) fn open_spool(
    store: &SnapshotStore,
    offer: &Offer,
    peer: NodeId,
) -> Result<IncomingSnapshot, StorageError> {
    let incoming = store.incoming(offer.id)?;
    let durable = incoming.durable_offset();
    match partial_restart_reason(durable, offer, || incoming.received_digest())? {
        None => Ok(incoming),
        Some(why) => {
            tracing::info!(target: LOG, id = %offer.id, peer, durable, "partial snapshot {why}; restarting the transfer from 0");
            incoming.abort();
            store.incoming(offer.id)
        }
    }
}

/// The disk side of a receive, on a blocking thread: write (or copy from `sources`), sync as
/// `sync` says and report the durable offset, then verify and publish. Holds the slot, and the
/// readers of the local snapshots copied from, until the file is closed.
#[allow(clippy::too_many_arguments)]
pub(super) fn disk_loop(
    incoming: IncomingSnapshot,
    permit: SlotPermit,
    sources: Vec<Source>,
    cache: SegmentCache,
    cmds: mpsc::Receiver<DiskCmd>,
    events: mpsc::Sender<DiskEvent>,
    sync: SyncPolicy,
    file_len: u64,
    progress: Arc<Progress>,
) {
    // `disk_work` consumes (closes) the spool file before the slot and the file lock are given
    // back, so a re-offer that finds a free slot also finds the file free.
    disk_work(
        incoming, &sources, &cache, cmds, events, sync, file_len, progress,
    );
    drop(sources);
    drop(permit);
}

#[allow(clippy::too_many_arguments)]
fn disk_work(
    mut incoming: IncomingSnapshot,
    sources: &[Source],
    cache: &SegmentCache,
    mut cmds: mpsc::Receiver<DiskCmd>,
    events: mpsc::Sender<DiskEvent>,
    sync: SyncPolicy,
    file_len: u64,
    progress: Arc<Progress>,
) {
    let mut unsynced: u64 = 0;
    // When the oldest unsynced byte was written.
    let mut unsynced_since: Option<Instant> = None;
    let mut reported = incoming.durable_offset();
    let mut copy_buf = Vec::new();
    let fail = |e| {
        let _ = events.blocking_send(DiskEvent::Failed(e));
    };
    while incoming.written_offset() < file_len {
        let Some(cmd) = cmds.blocking_recv() else {
            // The transfer was abandoned (or taken over): make what arrived durable for the
            // next attempt.
            if let Err(e) = incoming.sync() {
                tracing::warn!(target: LOG, id = %incoming.id(), error = %e, "could not sync the partial snapshot of an abandoned transfer");
            }
            return;
        };
        let written = match cmd {
            DiskCmd::Write { offset, data } => {
                incoming.write_at(offset, &data).map(|()| data.len())
            }
            DiskCmd::Copy {
                at,
                len,
                source,
                from,
                hash,
            } => {
                let copy = Copy {
                    at,
                    len,
                    source,
                    from,
                    hash,
                };
                copy_local(&mut incoming, sources, cache, &copy, &mut copy_buf)
            }
            DiskCmd::Tick => Ok(0),
        };
        match written {
            Err(e) => return fail(e),
            Ok(0) => {}
            Ok(n) => {
                unsynced += n as u64;
                unsynced_since.get_or_insert_with(Instant::now);
                progress.touch();
            }
        }
        let age_ms = unsynced_since.map_or(0, |t| t.elapsed().as_millis() as u64);
        if sync.due(unsynced, age_ms)
            && let Err(e) = incoming.sync()
        {
            return fail(e);
        }
        let durable = incoming.durable_offset();
        if durable > reported {
            // The store may also sync on its own (`snapshot_sync_every_bytes`).
            progress.touch();
            unsynced = incoming.written_offset() - durable;
            unsynced_since = (unsynced > 0).then(Instant::now);
            reported = durable;
            if events.blocking_send(DiskEvent::Durable(durable)).is_err() {
                return;
            }
        }
    }
    let _ = events.blocking_send(DiskEvent::Verifying);
    match incoming.finalize() {
        Ok(info) => {
            let _ = events.blocking_send(DiskEvent::Published(Box::new(info)));
        }
        Err(e) => {
            // Shared bytes are checked only by this digest: forget what was remembered of the
            // files they came from, so the next attempt hashes them afresh.
            for s in sources {
                if let Source::Snapshot(r) = s {
                    cache.forget(&r.info().digest);
                }
            }
            fail(e)
        }
    }
}

/// Shared bytes count this much less than written ones toward the next sync: a sync after
/// only shared bytes costs the records and the progress (two `fdatasync`s) and writes no data,
/// but it still moves the durable offset the leader's window follows. Measured on a 1 %
/// delta of 1 GiB of state (`delta_bench`): 4 takes 0.24–0.28 s, 1 takes 0.29–0.32 s, 16
/// 0.26–0.28 s, and syncing on time alone (64) 0.36–0.37 s.
const SHARED_SYNC_DIVISOR: usize = 4;

/// A held segment to copy ([`DiskCmd::Copy`]).
struct Copy {
    at: u64,
    len: u32,
    source: usize,
    from: u64,
    hash: [u8; 32],
}

/// Take a segment this node holds into the file being received: shared with the complete
/// snapshot that holds it (no write; checked only by the whole-file digest, whose failure
/// discards the partial and makes the next attempt hash the local files afresh), or copied from
/// a kept prefix (or when it cannot be shared) after checking it still has the hash it was
/// indexed with (a local file may have rotted since: the transfer then fails before writing the
/// bytes, keeping what it made durable, and the file is hashed afresh next time, so the next
/// attempt fetches that segment). Returns what the bytes count toward the next sync. Blocking:
/// one read; to copy, a BLAKE3 and one write.
fn copy_local(
    incoming: &mut IncomingSnapshot,
    sources: &[Source],
    cache: &SegmentCache,
    c: &Copy,
    buf: &mut Vec<u8>,
) -> Result<usize, StorageError> {
    let reader = sources.get(c.source).ok_or_else(|| {
        StorageError::Invalid(format!("local snapshot source {} does not exist", c.source))
    })?;
    buf.resize(c.len as usize, 0);
    reader.read_exact_at(c.from, buf)?;
    // A complete snapshot's bytes are shared, not written again: the received file leaves a
    // hole there (see `wraft_storage`'s `shared`). They are not hashed here: they stay where
    // they are, and the whole-file digest checked before publication covers them (a mismatch
    // makes the cache forget the sources, so the next attempt hashes them afresh and fetches
    // what rotted). This saves a BLAKE3 pass over everything a delta reuses.
    if let Source::Snapshot(r) = reader
        && incoming.share_at(c.at, buf, r.info().id(), c.from)?
    {
        return Ok((buf.len() / SHARED_SYNC_DIVISOR).max(1));
    }
    let found = blake3::hash(buf);
    if *found.as_bytes() != c.hash {
        let what = match reader {
            Source::Snapshot(r) => {
                cache.forget(&r.info().digest);
                format!("local snapshot {}", r.info().path.display())
            }
            Source::Partial(p) => format!("the kept prefix of snapshot {}", p.id()),
        };
        return Err(StorageError::Invalid(format!(
            "{what}: the {} bytes at offset {} no longer hash to what they did when indexed \
             (expected {}, found {}); they will be fetched next time",
            c.len,
            c.from,
            wraft_proto::digest::hex(&c.hash),
            found.to_hex()
        )));
    }
    incoming.write_at(c.at, buf)?;
    Ok(buf.len())
}
