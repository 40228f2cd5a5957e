//! The follower's side of a transfer.
//!
//! [`receive_snapshot`] runs these steps on the caller's task, answering the offer with the
//! first step that decides ([`decide`] holds every rule, without I/O):
//!
//! 1. **offer**: read and decode it, check it (`read_offer`) — `Reject`;
//! 2. **already here**: the store holds this id complete (`answer_already_have`) —
//!    `AlreadyHave`;
//! 3. **slot**: take one of the node's incoming slots, or take over the stream this snapshot
//!    is already arriving on, then wait until that stream has closed the partial file
//!    (`take_slot`) — `Busy` or `AlreadyArriving`; step 2 again if it waited;
//! 4. **spool**: open or resume the partial file (`open_spool`) — `Accept{resume_from}`;
//! 5. **stream**: a blocking disk thread (`disk`) owns the spool file; on this task, the
//!    chunk reader (`read_chunks`, each chunk judged by [`ChunkStream`]), the
//!    acknowledgement writer (`write_acks`: disk events and Nacks become replies, heartbeats
//!    whenever it has been quiet for `heartbeat_ms`), the disk thread's clock (`tick_disk`),
//!    the progress watchdog and the takeover signal run in one `select!`;
//! 6. **finish**: the published file, or `Failed{reason}` sent and the prefix kept
//!    (`finish`).

mod assemble;
pub mod decide;
mod disk;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wraft_proto::digest::hex;
use wraft_storage::{IncomingSnapshot, SnapshotInfo, SnapshotStore, StorageError};
use wraft_transport::frame::{self, FrameError};
use wraft_transport::quinn;
use wraft_transport::{BulkStream, NodeId};

use self::assemble::{Copies, assemble};
use self::decide::{ChunkStream, ChunkVerdict, OfferDecision, SyncPolicy, check_offer};
use self::disk::{DiskCmd, DiskEvent, Local, disk_loop};
use crate::limiter::{Claim, IncomingSlots, SlotPermit};
use crate::manifest::{Fill, fetch_ranges};
use crate::metrics::{InFlight, LOG, XferMetrics, outcome_label};
use crate::peers::{PeerReads, SnapshotPeers};
use crate::progress::Progress;
use crate::wire::{
    self, BusyReason, CHUNK_HEADER_BYTES, CODE_TRANSFER_ABORTED, CONTROL_FRAME_BYTES_MAX,
    KIND_REPLY, Offer, Reply, truncate_reason,
};
use crate::{TransferConfig, TransferError};

/// Bytes of members' segments read ahead of the disk thread at most (multi-source catch-up):
/// what a follower holds in memory for them. Small enough to arrive within the read timeout
/// (half of `progress_timeout_ms`) from a member capped at 1 MB/s.
const PEER_READ_AHEAD_BYTES: u64 = 4 << 20;

/// What [`receive_snapshot`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sending node (from its verified certificate).
    pub from: NodeId,
    /// The leader term named in the offer.
    pub leader_term: u64,
    /// The published snapshot (verified, renamed into place).
    pub info: SnapshotInfo,
    /// Offset this transfer resumed from (0: from scratch).
    pub resumed_from: u64,
    /// Chunk payload bytes received and written by this transfer.
    pub bytes_received: u64,
    /// Bytes copied from snapshots this node already held instead of being received
    /// (version 2).
    pub bytes_reused: u64,
    /// Bytes read from other members instead of the leader, by member (multi-source catch-up,
    /// [`receive_snapshot_from`]).
    pub bytes_from_members: Vec<(NodeId, u64)>,
    /// The snapshot was already complete here; nothing was transferred.
    pub already_had: bool,
    /// Wall time from offer to publication.
    pub duration: Duration,
}

/// Follower side: serve one inbound bulk stream carrying a snapshot offer. Answers `Busy`
/// (returning [`TransferError::Busy`]) beyond `slots`, or `AlreadyArriving` when the snapshot
/// arrives on another stream this offer may not take over; `AlreadyHave` if the snapshot is
/// complete here (returning `Ok` with [`Received::already_had`]), otherwise the offset held
/// durably for the same id *and digest* (0 if none; a partial of a different file with the same
/// id is discarded); spools to the store's partial file, syncs every `cfg.sync_every_bytes` or
/// `cfg.sync_interval_ms` and only then acknowledges the durable offset (also reported through
/// `on_durable`), verifies the whole-file BLAKE3, publishes atomically and acknowledges
/// *received*. An offer of the same snapshot that takes this stream over (see
/// [`decide`], step 3) ends it with [`TransferError::TakenOver`].
///
/// Memory: about `(receive_queue_chunks + 1) * chunk` bytes. Disk writes, syncs and the final
/// verification run on a blocking thread; the caller's task only moves and checks bytes. On
/// failure the received prefix is kept (synced) for the next transfer to resume.
pub async fn receive_snapshot(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: &TransferConfig,
    slots: &IncomingSlots,
    on_durable: impl FnMut(u64) + Send,
) -> Result<Received, TransferError> {
    receive_snapshot_from(stream, store, cfg, slots, None, on_durable).await
}

/// [`receive_snapshot`], also reading parts of the file from the other members that hold it
/// (multi-source catch-up, [`crate::peers`]): a version 2 offer is then answered with a manifest
/// request even by a node that holds no snapshot, and the segments to fetch are spread over the
/// leader and those members. [`Received::bytes_from_members`] says how much each sent.
pub async fn receive_snapshot_from(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: &TransferConfig,
    slots: &IncomingSlots,
    peers: Option<Arc<dyn SnapshotPeers>>,
    mut on_durable: impl FnMut(u64) + Send,
) -> Result<Received, TransferError> {
    cfg.validate()?;
    let m = XferMetrics::new(cfg.node_id, crate::Direction::Receive);
    let _in_flight = InFlight::new(m.in_flight());
    let start = Instant::now();
    let result = receive_inner(stream, store, cfg, slots, peers, &mut on_durable, &m).await;
    let duration = start.elapsed();
    m.finished(outcome_label(&result), duration);
    result.map(|mut r| {
        r.duration = duration;
        r
    })
}

async fn receive_inner(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: &TransferConfig,
    slots: &IncomingSlots,
    peers: Option<Arc<dyn SnapshotPeers>>,
    on_durable: &mut (impl FnMut(u64) + Send),
    m: &XferMetrics,
) -> Result<Received, TransferError> {
    let BulkStream {
        peer,
        mut send,
        mut recv,
    } = stream;

    // 1. The offer.
    let offer = read_offer(&mut send, &mut recv, peer, cfg).await?;
    let id = offer.id;

    // 2. Already complete here?
    let complete = || store.list().into_iter().find(|i| i.id() == id);
    if let Some(info) = complete() {
        return answer_already_have(&mut send, &offer, info, peer, cfg.progress_timeout_ms).await;
    }

    // 3. A slot (perhaps another stream's), and the partial file to this stream alone.
    let progress = Arc::new(Progress::new(0));
    let (permit, waited) = take_slot(&mut send, slots, &offer, peer, &progress, cfg).await?;
    if waited && let Some(info) = complete() {
        // The stream taken over had received every byte and published the file meanwhile.
        drop(permit);
        return answer_already_have(&mut send, &offer, info, peer, cfg.progress_timeout_ms).await;
    }
    let taken_over = permit.taken_over();

    // 4. Open (or resume) the spool file.
    let (incoming, permit, holds_any) = open_spool(store, &offer, peer, permit).await?;
    let resume_from = incoming.durable_offset();
    // Other members may hold segments of the file (version 2: they are checked against the
    // leader's manifest).
    let candidates = match &peers {
        Some(p) if resume_from < offer.file_len => p.candidates(peer),
        _ => Vec::new(),
    };
    // Version 2 pays off only with snapshots here to reuse or members to read from; without
    // either, the whole file from the durable offset is the version 1 answer, and the leader
    // need not hash its file.
    let planned = if offer.version >= 2 && (holds_any || !candidates.is_empty()) {
        // 4b. Version 2: what this node holds already, and what it must fetch. A newer offer
        // may take the stream over meanwhile, as it may later.
        let by = permit.taken_over();
        tokio::select! {
            r = assemble(&mut send, &mut recv, store, &offer, peer, resume_from,
                peers.as_ref().map(|p| (p, &candidates[..])), cfg) => r,
            by = by => Err(TransferError::TakenOver { peer, id, by: by.from, leader_term: by.leader_term }),
        }
    } else {
        let accept = OfferDecision::Accept { resume_from };
        let timeout_ms = cfg.progress_timeout_ms;
        let everything = (resume_from < offer.file_len).then_some(Fill::Fetch {
            at: resume_from,
            len: offer.file_len - resume_from,
        });
        answer(&mut send, &accept, peer, resume_from, timeout_ms)
            .await
            .map(|()| {
                (
                    Local::default(),
                    everything.into_iter().collect(),
                    Vec::new(),
                )
            })
    };
    let (local, fills, holders) = match planned {
        Ok(p) => p,
        Err(e) => {
            // The file first, then the slot and its lock: a stream waiting to take over must
            // find the file closed.
            drop(incoming);
            drop(permit);
            return Err(e);
        }
    };
    m.begin(&cfg.board, peer, id.last_index, offer.file_len, resume_from);
    if resume_from > 0 {
        m.resume();
    }
    let fetch = fetch_ranges(&fills);
    let fetch_bytes: u64 = fetch.iter().map(|r| r.1).sum();
    let member_bytes: u64 = fills
        .iter()
        .map(|f| match f {
            Fill::Peer { len, .. } => u64::from(*len),
            Fill::Copy { .. } | Fill::Fetch { .. } => 0,
        })
        .sum();
    let reuse_bytes = offer.file_len - resume_from - fetch_bytes - member_bytes;
    tracing::info!(target: LOG, %id, peer, file_len = offer.file_len, resume_from, fetch_bytes, reuse_bytes,
        member_bytes, members = ?holders.iter().map(|h| h.0).collect::<Vec<_>>(), version = offer.version,
        leader_term = offer.leader_term, "receiving snapshot");
    let reads = match peers {
        Some(p) if member_bytes > 0 => Some(PeerReads::new(
            p,
            holders,
            id,
            peer,
            &fills,
            PEER_READ_AHEAD_BYTES,
            // Half the progress timeout: a member that does not answer in time leaves room to
            // read its segment from another before either side's watchdog fires.
            Duration::from_millis((cfg.progress_timeout_ms / 2).max(1)),
        )),
        _ => None,
    };

    // 5. Stream.
    let r = Receiving {
        peer,
        offer: &offer,
        cfg,
        m,
        progress,
        bytes_received: AtomicU64::new(0),
        bytes_reused: AtomicU64::new(0),
        from_members: std::sync::Mutex::new(Vec::new()),
    };
    r.progress.advance(resume_from);
    let (cmd_tx, cmd_rx) = mpsc::channel::<DiskCmd>(cfg.receive_queue_chunks);
    let tick_tx = cmd_tx.clone();
    let (ev_tx, ev_rx) = mpsc::channel::<DiskEvent>(16);
    let (nack_tx, nack_rx) = mpsc::channel::<u64>(4);
    {
        let progress = r.progress.clone();
        let sync = SyncPolicy {
            every_bytes: cfg.sync_every_bytes,
            interval_ms: cfg.sync_interval_ms,
        };
        let file_len = offer.file_len;
        let (sources, cache) = (local.sources, cfg.segments.clone());
        tokio::task::spawn_blocking(move || {
            disk_loop(
                incoming, permit, sources, cache, cmd_rx, ev_tx, sync, file_len, progress,
            )
        });
    }
    let chunks = ChunkStream::with_ranges(
        fetch,
        offer.file_len,
        offer.chunk_bytes,
        cfg.chunk_retries_max,
    );
    let timeout_ms = cfg.progress_timeout_ms;
    let outcome: Result<SnapshotInfo, TransferError> = tokio::select! {
        r = write_acks(&r, &mut send, resume_from, ev_rx, nack_rx, on_durable) => r,
        r = read_chunks(&r, &mut recv, chunks, Copies::new(fills, reads), cmd_tx, nack_tx) => r.map(|never| match never {}),
        never = tick_disk(tick_tx, cfg.sync_interval_ms) => match never {},
        () = r.progress.stalled(timeout_ms) => Err(TransferError::ProgressTimeout {
            peer, during: "receiving chunks", offset: r.progress.offset(), timeout_ms,
        }),
        by = taken_over => Err(TransferError::TakenOver {
            peer, id, by: by.from, leader_term: by.leader_term,
        }),
    };

    // 6. The end.
    finish(&r, &mut send, &mut recv, outcome, resume_from).await
}

/// What the stream's futures share.
struct Receiving<'a> {
    peer: NodeId,
    offer: &'a Offer,
    cfg: &'a TransferConfig,
    m: &'a XferMetrics,
    progress: Arc<Progress>,
    bytes_received: AtomicU64,
    bytes_reused: AtomicU64,
    /// Bytes read from each member (multi-source catch-up).
    from_members: std::sync::Mutex<Vec<(NodeId, u64)>>,
}

impl Receiving<'_> {
    fn storage(&self, source: StorageError) -> TransferError {
        TransferError::Storage {
            id: self.offer.id,
            source,
        }
    }
}

fn frame_err(peer: NodeId, during: &'static str) -> impl Fn(FrameError) -> TransferError {
    move |source| TransferError::Frame {
        peer,
        during,
        source,
    }
}

/// Step 1: the first frame, as an acceptable offer. An undecodable or unacceptable offer is
/// answered `Reject{reason}` and returned as a protocol error with the same reason.
async fn read_offer(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    peer: NodeId,
    cfg: &TransferConfig,
) -> Result<Offer, TransferError> {
    let timeout_ms = cfg.progress_timeout_ms;
    let timeout = Duration::from_millis(timeout_ms);
    let first = tokio::time::timeout(timeout, frame::read_frame(recv, CONTROL_FRAME_BYTES_MAX))
        .await
        .map_err(|_| TransferError::ProgressTimeout {
            peer,
            during: "waiting for a snapshot offer",
            offset: 0,
            timeout_ms,
        })?
        .map_err(frame_err(peer, "reading the snapshot offer"))?
        .ok_or(TransferError::PeerClosed { peer, offset: 0 })?;
    let offer = match wire::decode_offer(first.kind, &first.payload) {
        Ok(o) => o,
        Err(reason) => {
            reject(send, &reason, timeout).await;
            return Err(TransferError::Protocol {
                peer,
                detail: reason,
            });
        }
    };
    if let Err(reason) = check_offer(&offer, cfg.chunk_bytes_max) {
        tracing::warn!(target: LOG, id = %offer.id, peer, %reason, "rejecting snapshot offer");
        reject(send, &reason, timeout).await;
        return Err(TransferError::Protocol {
            peer,
            detail: reason,
        });
    }
    Ok(offer)
}

/// Step 2: the snapshot is complete here (`info`); say so and report it.
async fn answer_already_have(
    send: &mut quinn::SendStream,
    offer: &Offer,
    info: SnapshotInfo,
    peer: NodeId,
    timeout_ms: u64,
) -> Result<Received, TransferError> {
    let id = offer.id;
    tracing::info!(target: LOG, %id, peer, "offered snapshot is already complete here");
    if info.digest != offer.digest {
        tracing::warn!(target: LOG, %id, peer, local = %hex(&info.digest), offered = %hex(&offer.digest),
            "the local snapshot with this id has other bytes than the leader's (taken independently); keeping the local one");
    }
    answer(send, &OfferDecision::AlreadyHave, peer, 0, timeout_ms).await?;
    let _ = send.finish();
    Ok(Received {
        from: peer,
        leader_term: offer.leader_term,
        info,
        resumed_from: offer.file_len,
        bytes_received: 0,
        bytes_reused: 0,
        bytes_from_members: Vec::new(),
        already_had: true,
        duration: Duration::ZERO,
    })
}

/// Step 3: one of `slots` for this offer — a free one, or that of the stream of the same
/// snapshot it takes over — and then the partial file to itself: a stream taken over first
/// syncs and closes it. Returns the permit and whether it had to wait for the file. A declined
/// offer is answered `Busy` or `AlreadyArriving` (best effort) and returned as
/// [`TransferError::Busy`].
async fn take_slot(
    send: &mut quinn::SendStream,
    slots: &IncomingSlots,
    offer: &Offer,
    peer: NodeId,
    progress: &Arc<Progress>,
    cfg: &TransferConfig,
) -> Result<(SlotPermit, bool), TransferError> {
    let (id, term, timeout_ms) = (offer.id, offer.leader_term, cfg.progress_timeout_ms);
    let declined = async |send: &mut quinn::SendStream, reason: BusyReason| {
        tracing::info!(target: LOG, %id, peer, leader_term = term, %reason, "declining snapshot offer for now");
        let reply = OfferDecision::Busy(reason).reply();
        let _ =
            tokio::time::timeout(Duration::from_millis(timeout_ms), send_reply(send, &reply)).await;
        let _ = send.finish();
        TransferError::Busy { peer, id, reason }
    };
    let Claim {
        mut permit,
        took_over,
    } = match slots.claim(id, peer, term, progress, cfg.takeover_idle_ms) {
        Ok(claim) => claim,
        Err(reason) => return Err(declined(send, reason).await),
    };
    if let Some(old) = took_over {
        tracing::info!(target: LOG, %id, peer, leader_term = term, old_from = old.from,
            old_leader_term = old.leader_term, old_idle_ms = old.idle_ms,
            "taking over the stream this snapshot was arriving on; it keeps what it made durable for this one");
    }
    let taken_over = permit.taken_over();
    let waited = took_over.is_some();
    tokio::select! {
        () = permit.lock_file() => Ok((permit, waited)),
        by = taken_over => {
            // A third offer took over while this one waited for the file.
            let reason = BusyReason::AlreadyArriving { from: by.from, leader_term: by.leader_term, idle_ms: 0 };
            Err(declined(send, reason).await)
        }
        () = tokio::time::sleep(Duration::from_millis(timeout_ms)) => {
            let during = "waiting for the stream it took over to close the partial file";
            reject(send, during, Duration::from_millis(timeout_ms)).await;
            Err(TransferError::ProgressTimeout { peer, during, offset: 0, timeout_ms })
        }
    }
}

/// Step 4: the spool file for the offer, off the async workers (see [`disk::open_spool`]), and
/// whether this node holds anything a version 2 transfer could reuse (a complete snapshot, or
/// the kept prefix of an interrupted one: a directory read, done there too).
/// The permit goes along and comes back with the file, so that it is released after the file
/// is closed however this ends (the blocking task outlives a cancelled caller).
async fn open_spool(
    store: &SnapshotStore,
    offer: &Offer,
    peer: NodeId,
    permit: SlotPermit,
) -> Result<(IncomingSnapshot, SlotPermit, bool), TransferError> {
    let storage = |source| TransferError::Storage {
        id: offer.id,
        source,
    };
    let s = store.clone();
    let o = offer.clone();
    let (opened, permit, holds_any) = tokio::task::spawn_blocking(move || {
        let opened = disk::open_spool(&s, &o, peer);
        // After the spool is open: opening it keeps another snapshot's partial as a source.
        let holds_any = !s.list().is_empty() || s.partial_source().is_ok_and(|p| p.is_some());
        (opened, permit, holds_any)
    })
    .await
    .map_err(|e| storage(StorageError::Invalid(format!("spool task: {e}"))))?;
    Ok((opened.map_err(storage)?, permit, holds_any))
}

/// Send the answer to the offer within `timeout_ms` (`offset`: where the transfer stands, for
/// the timeout error).
async fn answer(
    send: &mut quinn::SendStream,
    decision: &OfferDecision,
    peer: NodeId,
    offset: u64,
    timeout_ms: u64,
) -> Result<(), TransferError> {
    tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        send_reply(send, &decision.reply()),
    )
    .await
    .map_err(|_| TransferError::ProgressTimeout {
        peer,
        during: "answering the offer",
        offset,
        timeout_ms,
    })?
    .map_err(frame_err(peer, "answering the offer"))
}

/// Step 5a: read chunks, judge each ([`ChunkStream`]), queue the good ones for the disk
/// thread and ask again for the damaged ones. Returns only on an error; once every byte is
/// queued it waits (the disk thread finalizes and [`write_acks`] ends the transfer).
async fn read_chunks(
    r: &Receiving<'_>,
    recv: &mut quinn::RecvStream,
    mut chunks: ChunkStream,
    mut copies: Copies,
    cmd_tx: mpsc::Sender<DiskCmd>,
    nack_tx: mpsc::Sender<u64>,
) -> Result<Infallible, TransferError> {
    let (peer, id) = (r.peer, r.offer.id);
    // The segments held here, up to the first range to fetch, go first.
    if !copies.queue(r, &cmd_tx).await? {
        std::future::pending::<()>().await;
    }
    if chunks.is_complete() {
        // Everything was durable already; the disk thread finalizes on its own.
        std::future::pending::<()>().await;
    }
    loop {
        let read_err = |during, offset| {
            move |e: quinn::ReadExactError| match e {
                quinn::ReadExactError::FinishedEarly(_) => {
                    TransferError::PeerClosed { peer, offset }
                }
                quinn::ReadExactError::ReadError(e) => TransferError::Stream {
                    peer,
                    during,
                    offset,
                    detail: e.to_string(),
                },
            }
        };
        let mut hdr = [0u8; CHUNK_HEADER_BYTES];
        recv.read_exact(&mut hdr)
            .await
            .map_err(read_err("reading a chunk header", chunks.expected()))?;
        let h = chunks
            .on_header(&hdr)
            .map_err(|detail| TransferError::Protocol { peer, detail })?;
        let mut data = vec![0u8; h.len as usize];
        recv.read_exact(&mut data)
            .await
            .map_err(read_err("reading chunk data", chunks.expected()))?;
        match chunks.on_data(&h, &data) {
            ChunkVerdict::Write => {}
            ChunkVerdict::Stale => continue,
            ChunkVerdict::Protocol(detail) => {
                return Err(TransferError::Protocol { peer, detail });
            }
            ChunkVerdict::Nack {
                offset,
                expected_crc,
                found_crc,
                retries,
            } => {
                r.m.checksum_failure();
                tracing::warn!(target: LOG, %id, peer, offset = h.offset, len = h.len,
                    expected_crc = format_args!("{expected_crc:#010x}"), found_crc = format_args!("{found_crc:#010x}"),
                    retries, "snapshot chunk failed its CRC32C; rejected, asking for it again");
                // The acknowledgement writer always drains this channel.
                let _ = nack_tx.send(offset).await;
                continue;
            }
            ChunkVerdict::RetriesExhausted {
                offset,
                expected_crc,
                found_crc,
                failures,
            } => {
                r.m.checksum_failure();
                tracing::warn!(target: LOG, %id, peer, offset = h.offset, len = h.len,
                    expected_crc = format_args!("{expected_crc:#010x}"), found_crc = format_args!("{found_crc:#010x}"),
                    retries = failures, "snapshot chunk failed its CRC32C; rejected, asking for it again");
                return Err(TransferError::ChunkRetriesExhausted {
                    peer,
                    id,
                    offset,
                    failures,
                    retries_max: r.cfg.chunk_retries_max,
                });
            }
        }
        let len = u64::from(h.len);
        r.bytes_received.fetch_add(len, Ordering::Relaxed);
        r.m.bytes().increment(len);
        r.progress.advance(chunks.expected());
        r.m.progress(peer, chunks.expected(), r.offer.file_len);
        let queued = cmd_tx
            .send(DiskCmd::Write {
                offset: h.offset,
                data,
            })
            .await
            .is_ok();
        // A range complete: the held segments after it go next.
        if !queued || (chunks.ranges_done() == copies.entered && !copies.queue(r, &cmd_tx).await?) {
            // The disk thread stopped; its event says why.
            std::future::pending::<()>().await;
        }
        if chunks.is_complete() {
            std::future::pending::<()>().await;
        }
    }
}

/// Step 5d: nudge the disk thread every quarter of `sync_interval_ms`, so that bytes waiting
/// for a time-based sync do not wait for the next chunk (which a leader holding to its window
/// sends only after that sync's acknowledgement). A full queue skips the nudge: the disk thread
/// has chunks to write then. Never returns.
async fn tick_disk(tx: mpsc::Sender<DiskCmd>, sync_interval_ms: u64) -> Infallible {
    let period = Duration::from_millis((sync_interval_ms / 4).max(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let _ = tx.try_send(DiskCmd::Tick);
    }
}

/// Step 5b: turn disk events and Nacks into replies until the file is published (`Ok`) or
/// the disk fails. First it repeats `Durable{resume_from}`, which tells the leader that this
/// follower sends heartbeats (see [`crate::wire`]); then, whenever nothing was sent for
/// `heartbeat_ms`, the last durable offset again (or `Verifying` while the file is verified).
async fn write_acks(
    r: &Receiving<'_>,
    send: &mut quinn::SendStream,
    resume_from: u64,
    mut ev_rx: mpsc::Receiver<DiskEvent>,
    mut nack_rx: mpsc::Receiver<u64>,
    on_durable: &mut (impl FnMut(u64) + Send),
) -> Result<SnapshotInfo, TransferError> {
    let (peer, id, offer) = (r.peer, r.offer.id, r.offer);
    // Also a quarter of the progress timeout at most: verification heartbeats keep this
    // side's own watchdog quiet.
    let period_ms = r.cfg.heartbeat_ms.min(r.cfg.progress_timeout_ms / 4).max(1);
    let period = Duration::from_millis(period_ms);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut verifying = false;
    let mut durable = resume_from;
    let mut msg = Reply::Durable { offset: durable };
    loop {
        send_reply(send, &msg)
            .await
            .map_err(frame_err(peer, "sending an acknowledgement"))?;
        heartbeat.reset();
        msg = tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(DiskEvent::Durable(offset)) => {
                    durable = offset;
                    on_durable(offset);
                    Reply::Durable { offset }
                }
                Some(DiskEvent::Verifying) => {
                    verifying = true;
                    Reply::Verifying
                }
                Some(DiskEvent::Published(info)) => {
                    if info.digest != offer.digest {
                        let e = TransferError::DigestMismatch { peer, id, expected: hex(&offer.digest), found: hex(&info.digest) };
                        tracing::warn!(target: LOG, error = %e, "published snapshot does not match the offer's digest; keeping it (it verified against its own header)");
                    }
                    let _ = send_reply(send, &Reply::Received { digest: info.digest }).await;
                    let _ = send.finish();
                    on_durable(offer.file_len);
                    return Ok(*info);
                }
                Some(DiskEvent::Failed(e)) => return Err(r.storage(e)),
                None => return Err(r.storage(StorageError::Invalid("snapshot disk thread ended unexpectedly".into()))),
            },
            Some(offset) = nack_rx.recv() => Reply::Nack { offset },
            _ = heartbeat.tick() => {
                if verifying {
                    // The whole-file check moves no bytes: keep this side's watchdog quiet too.
                    r.progress.touch();
                    Reply::Verifying
                } else {
                    Reply::Durable { offset: durable }
                }
            }
        };
    }
}

/// Step 6: the report, or `Failed{reason}` sent (best effort) and the stream closed; the
/// received prefix stays on disk for the next offer.
async fn finish(
    r: &Receiving<'_>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    outcome: Result<SnapshotInfo, TransferError>,
    resume_from: u64,
) -> Result<Received, TransferError> {
    let (peer, id, file_len) = (r.peer, r.offer.id, r.offer.file_len);
    let bytes_received = r.bytes_received.load(Ordering::Relaxed);
    match outcome {
        Ok(info) => {
            let bytes_from_members = r
                .from_members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            tracing::info!(target: LOG, %id, peer, file_len, resume_from, bytes_received,
                bytes_reused = r.bytes_reused.load(Ordering::Relaxed), from_members = ?bytes_from_members,
                "snapshot received, verified and published");
            Ok(Received {
                from: peer,
                leader_term: r.offer.leader_term,
                info,
                resumed_from: resume_from,
                bytes_received,
                bytes_reused: r.bytes_reused.load(Ordering::Relaxed),
                bytes_from_members,
                already_had: false,
                duration: Duration::ZERO,
            })
        }
        Err(e) => {
            if matches!(e, TransferError::TakenOver { .. }) {
                tracing::info!(target: LOG, %id, peer, error = %e, bytes_received, "snapshot stream handed to a newer offer");
            } else {
                tracing::warn!(target: LOG, %id, peer, error = %e, bytes_received, "snapshot receive failed; the received prefix is kept for the next attempt");
            }
            let failed = Reply::Failed {
                reason: truncate_reason(e.to_string()),
            };
            let _ = tokio::time::timeout(
                Duration::from_millis(r.cfg.progress_timeout_ms.min(1000)),
                send_reply(send, &failed),
            )
            .await;
            let _ = send.finish();
            let _ = recv.stop(quinn::VarInt::from_u32(CODE_TRANSFER_ABORTED));
            Err(e)
        }
    }
}

/// Write one follower -> leader control frame.
pub(crate) async fn send_reply(send: &mut quinn::SendStream, r: &Reply) -> Result<(), FrameError> {
    frame::write_msg(send, KIND_REPLY, r, CONTROL_FRAME_BYTES_MAX).await
}

/// Answer `Reject{reason}` (best effort, within `timeout`) and close our side.
async fn reject(send: &mut quinn::SendStream, reason: &str, timeout: Duration) {
    let r = OfferDecision::Reject {
        reason: reason.to_owned(),
    }
    .reply();
    let _ = tokio::time::timeout(timeout, send_reply(send, &r)).await;
    let _ = send.finish();
}
