//! The disk side of a receive: opening (or resuming) the spool file, and the blocking thread
//! that writes, syncs and acknowledges durable offsets, then verifies and publishes.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use wraft_storage::{IncomingSnapshot, SnapshotInfo, SnapshotStore, StorageError};
use wraft_transport::NodeId;

use super::decide::{SyncPolicy, partial_restart_reason};
use crate::limiter::SlotPermit;
use crate::metrics::LOG;
use crate::progress::Progress;
use crate::wire::Offer;

/// From the network task to the disk thread.
pub(super) enum DiskCmd {
    /// A checked chunk to write at `offset`.
    Write { offset: u64, data: Vec<u8> },
    /// Time passed (`tick_disk`): sync if bytes have waited `sync_interval_ms`. The disk thread
    /// only ever blocks in `blocking_recv`, so this is how time reaches it.
    Tick,
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

/// The disk side of a receive, on a blocking thread: write, sync as `sync` says and report the
/// durable offset, then verify and publish. Holds the slot until the file is closed.
pub(super) fn disk_loop(
    incoming: IncomingSnapshot,
    permit: SlotPermit,
    cmds: mpsc::Receiver<DiskCmd>,
    events: mpsc::Sender<DiskEvent>,
    sync: SyncPolicy,
    file_len: u64,
    progress: Arc<Progress>,
) {
    // `disk_work` consumes (closes) the spool file before the slot and the file lock are given
    // back, so a re-offer that finds a free slot also finds the file free.
    disk_work(incoming, cmds, events, sync, file_len, progress);
    drop(permit);
}

fn disk_work(
    mut incoming: IncomingSnapshot,
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
        if let DiskCmd::Write { offset, data } = cmd {
            if let Err(e) = incoming.write_at(offset, &data) {
                return fail(e);
            }
            unsynced += data.len() as u64;
            unsynced_since.get_or_insert_with(Instant::now);
            progress.touch();
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
        Err(e) => fail(e),
    }
}
