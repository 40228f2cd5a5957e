//! The follower's side of a transfer.
//!
//! [`receive_snapshot`] runs these steps on the caller's task, answering the offer with the
//! first step that decides ([`decide`] holds every rule, without I/O):
//!
//! 1. **offer**: read and decode it, check it (`read_offer`) — `Reject`;
//! 2. **already here**: the store holds this id complete (`answer_already_have`) —
//!    `AlreadyHave`;
//! 3. **slot**: take one of the node's incoming slots (`take_slot`) — `Busy`;
//! 4. **spool**: open or resume the partial file (`open_spool`) — `Accept{resume_from}`;
//! 5. **stream**: a blocking disk thread (`disk`) owns the spool file; on this task, the
//!    chunk reader (`read_chunks`, each chunk judged by [`ChunkStream`]), the
//!    acknowledgement writer (`write_acks`: disk events and Nacks become replies, heartbeats
//!    during verification) and the progress watchdog run in one `select!`;
//! 6. **finish**: the published file, or `Failed{reason}` sent and the prefix kept
//!    (`finish`).

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

use self::decide::{ChunkStream, ChunkVerdict, OfferDecision, check_offer};
use self::disk::{DiskEvent, WriteCmd, disk_loop};
use crate::limiter::{IncomingSlots, SlotPermit};
use crate::metrics::{InFlight, LOG, XferMetrics, outcome_label};
use crate::progress::Progress;
use crate::wire::{
    self, CHUNK_HEADER_BYTES, CODE_TRANSFER_ABORTED, CONTROL_FRAME_BYTES_MAX, KIND_REPLY, Offer,
    Reply, truncate_reason,
};
use crate::{TransferConfig, TransferError};

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
    /// The snapshot was already complete here; nothing was transferred.
    pub already_had: bool,
    /// Wall time from offer to publication.
    pub duration: Duration,
}

/// Follower side: serve one inbound bulk stream carrying a snapshot offer. Answers `Busy`
/// (returning [`TransferError::Busy`]) beyond `slots`, `AlreadyHave` if the snapshot is complete
/// here (returning `Ok` with [`Received::already_had`]), otherwise the offset held durably for
/// the same id *and digest* (0 if none; a partial of a different file with the same id is
/// discarded); spools to the store's partial file, syncs every `cfg.sync_every_bytes` and only
/// then acknowledges the durable offset (also reported through `on_durable`), verifies the
/// whole-file BLAKE3, publishes atomically and acknowledges *received*.
///
/// Memory: about `(receive_queue_chunks + 1) * chunk` bytes. Disk writes, syncs and the final
/// verification run on a blocking thread; the caller's task only moves and checks bytes. On
/// failure the received prefix is kept (synced) for the next transfer to resume.
pub async fn receive_snapshot(
    stream: BulkStream,
    store: &SnapshotStore,
    cfg: &TransferConfig,
    slots: &IncomingSlots,
    mut on_durable: impl FnMut(u64) + Send,
) -> Result<Received, TransferError> {
    cfg.validate()?;
    let m = XferMetrics::new(cfg.node_id, crate::Direction::Receive);
    let _in_flight = InFlight::new(m.in_flight());
    let start = Instant::now();
    let result = receive_inner(stream, store, cfg, slots, &mut on_durable, &m).await;
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
    if let Some(info) = store.list().into_iter().find(|i| i.id() == id) {
        return answer_already_have(&mut send, &offer, info, peer, cfg.progress_timeout_ms).await;
    }

    // 3. A slot.
    let permit = take_slot(&mut send, slots, &offer, peer, cfg.progress_timeout_ms).await?;

    // 4. Open (or resume) the spool file.
    let incoming = open_spool(store, &offer, peer).await?;
    let resume_from = incoming.durable_offset();
    let accept = OfferDecision::Accept { resume_from };
    answer(
        &mut send,
        &accept,
        peer,
        resume_from,
        cfg.progress_timeout_ms,
    )
    .await?;
    m.begin(&cfg.board, peer, id.last_index, offer.file_len, resume_from);
    if resume_from > 0 {
        m.resume();
    }
    tracing::info!(target: LOG, %id, peer, file_len = offer.file_len, resume_from, leader_term = offer.leader_term, "receiving snapshot");

    // 5. Stream.
    let r = Receiving {
        peer,
        offer: &offer,
        cfg,
        m,
        progress: Arc::new(Progress::new(resume_from)),
        bytes_received: AtomicU64::new(0),
    };
    r.progress.touch();
    let (cmd_tx, cmd_rx) = mpsc::channel::<WriteCmd>(cfg.receive_queue_chunks);
    let (ev_tx, ev_rx) = mpsc::channel::<DiskEvent>(16);
    let (nack_tx, nack_rx) = mpsc::channel::<u64>(4);
    {
        let progress = r.progress.clone();
        let sync_every = cfg.sync_every_bytes;
        let file_len = offer.file_len;
        tokio::task::spawn_blocking(move || {
            disk_loop(
                incoming, permit, cmd_rx, ev_tx, sync_every, file_len, progress,
            )
        });
    }
    let chunks = ChunkStream::new(
        resume_from,
        offer.file_len,
        offer.chunk_bytes,
        cfg.chunk_retries_max,
    );
    let timeout_ms = cfg.progress_timeout_ms;
    let outcome: Result<SnapshotInfo, TransferError> = tokio::select! {
        r = write_acks(&r, &mut send, ev_rx, nack_rx, on_durable) => r,
        r = read_chunks(&r, &mut recv, chunks, cmd_tx, nack_tx) => r.map(|never| match never {}),
        () = r.progress.stalled(timeout_ms) => Err(TransferError::ProgressTimeout {
            peer, during: "receiving chunks", offset: r.progress.offset(), timeout_ms,
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
        already_had: true,
        duration: Duration::ZERO,
    })
}

/// Step 3: one of `slots` for this offer, or `Busy` answered (best effort) and returned.
async fn take_slot(
    send: &mut quinn::SendStream,
    slots: &IncomingSlots,
    offer: &Offer,
    peer: NodeId,
    timeout_ms: u64,
) -> Result<SlotPermit, TransferError> {
    let id = offer.id;
    let (in_flight, limit) = match slots.try_acquire(id) {
        Ok(permit) => return Ok(permit),
        Err(busy) => busy,
    };
    tracing::info!(target: LOG, %id, peer, in_flight, limit, "declining snapshot offer: busy");
    let busy = OfferDecision::Busy { in_flight, limit }.reply();
    let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), send_reply(send, &busy)).await;
    let _ = send.finish();
    Err(TransferError::Busy {
        peer,
        id,
        in_flight,
        limit,
    })
}

/// Step 4: the spool file for the offer, off the async workers (see [`disk::open_spool`]).
async fn open_spool(
    store: &SnapshotStore,
    offer: &Offer,
    peer: NodeId,
) -> Result<IncomingSnapshot, TransferError> {
    let storage = |source| TransferError::Storage {
        id: offer.id,
        source,
    };
    let s = store.clone();
    let o = offer.clone();
    tokio::task::spawn_blocking(move || disk::open_spool(&s, &o, peer))
        .await
        .map_err(|e| storage(StorageError::Invalid(format!("spool task: {e}"))))?
        .map_err(storage)
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
    cmd_tx: mpsc::Sender<WriteCmd>,
    nack_tx: mpsc::Sender<u64>,
) -> Result<Infallible, TransferError> {
    let (peer, id) = (r.peer, r.offer.id);
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
        if cmd_tx
            .send(WriteCmd {
                offset: h.offset,
                data,
            })
            .await
            .is_err()
        {
            // The disk thread stopped; its event says why.
            std::future::pending::<()>().await;
        }
        if chunks.is_complete() {
            std::future::pending::<()>().await;
        }
    }
}

/// Step 5b: turn disk events and Nacks into replies (and heartbeats while the file is
/// verified) until the file is published (`Ok`) or the disk fails.
async fn write_acks(
    r: &Receiving<'_>,
    send: &mut quinn::SendStream,
    mut ev_rx: mpsc::Receiver<DiskEvent>,
    mut nack_rx: mpsc::Receiver<u64>,
    on_durable: &mut (impl FnMut(u64) + Send),
) -> Result<SnapshotInfo, TransferError> {
    let (peer, id, offer) = (r.peer, r.offer.id, r.offer);
    let heartbeat_ms = (r.cfg.progress_timeout_ms / 4).max(1);
    let mut verifying = false;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms));
    loop {
        let msg = tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(DiskEvent::Durable(offset)) => {
                    on_durable(offset);
                    Reply::Durable { offset }
                }
                Some(DiskEvent::Verifying) => {
                    verifying = true;
                    heartbeat.reset();
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
            _ = heartbeat.tick(), if verifying => {
                r.progress.touch();
                Reply::Verifying
            }
        };
        send_reply(send, &msg)
            .await
            .map_err(frame_err(peer, "sending an acknowledgement"))?;
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
            tracing::info!(target: LOG, %id, peer, file_len, resume_from, bytes_received, "snapshot received, verified and published");
            Ok(Received {
                from: peer,
                leader_term: r.offer.leader_term,
                info,
                resumed_from: resume_from,
                bytes_received,
                already_had: false,
                duration: Duration::ZERO,
            })
        }
        Err(e) => {
            tracing::warn!(target: LOG, %id, peer, error = %e, bytes_received, "snapshot receive failed; the received prefix is kept for the next attempt");
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
