//! The leader's side of a transfer.
//!
//! [`send_snapshot`] runs these steps on the caller's task:
//!
//! 1. **open** the file (`open_reader`; the caller pinned it against retention at the offer);
//! 2. **offer** it and read the answer (`offer`), judged by [`judge_answer`] (pure):
//!    `Busy`, `AlreadyArriving` and `AlreadyHave` end here, `Accept{resume_from}` goes on;
//!    version 2, answered `SendManifest{resume_from}`: send the file's **manifest** and read
//!    the ranges the follower lacks (`manifest_and_ranges`); under a bandwidth cap the chunks
//!    are smaller ([`chunk_bytes_under_cap`]);
//! 3. **stream** the ranges (version 1: everything from `resume_from`): three futures in one
//!    `select!` — the chunk writer (`write_chunks`: one chunk read ahead on a blocking thread,
//!    at most a [`Window`] of bytes beyond the follower's durable offset, the bandwidth
//!    limiter, header + data), the acknowledgement reader (`read_acks`, each reply judged by
//!    [`Acks::on_reply`], pure; a follower that sends heartbeats and falls silent for
//!    `silence_timeout_ms` is presumed gone), and the progress watchdog;
//! 4. **finish**: a report, or the stream reset with the reason logged (`finish`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wraft_storage::{SnapshotId, SnapshotPin, SnapshotReader, SnapshotStore, StorageError};
use wraft_transport::frame::{self, FrameError};
use wraft_transport::quinn;
use wraft_transport::{BulkStream, NodeId};

mod judge;
mod manifest_phase;

pub use judge::{AckStep, Acks, OfferAnswer, judge_answer};
use manifest_phase::manifest_and_ranges;

use crate::limiter::BandwidthLimiter;
use crate::manifest::Ranges;
use crate::metrics::{InFlight, LOG, XferMetrics, outcome_label};
use crate::pacing::{Window, chunk_bytes_under_cap, may_write, window_bytes};
use crate::progress::Progress;
use crate::wire::{
    self, BusyReason, CODE_TRANSFER_ABORTED, CONTROL_FRAME_BYTES_MAX, KIND_OFFER, OFFER_MAGIC,
    Offer, Reply, encode_chunk_header,
};
use crate::{TransferConfig, TransferError};

/// How an offer ended, seen from the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// The follower has the whole file durably, verified and published.
    Completed,
    /// The follower declined for now: every incoming slot is taken, or this snapshot is
    /// already arriving there on a stream this offer may not take over. Offer again later,
    /// backing off ([`crate::pacing::ReofferBackoff`]).
    Busy(BusyReason),
    /// The follower already holds this snapshot complete; nothing was sent.
    AlreadyHave,
}

/// What [`send_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// How the offer ended.
    pub outcome: SendOutcome,
    /// Offset the follower already held durably (0: from scratch).
    pub resumed_from: u64,
    /// Chunk payload bytes written to the stream, resends included.
    pub bytes_sent: u64,
    /// Bytes after `resumed_from` the follower held already and copied from its own snapshots
    /// (version 2): not sent.
    pub bytes_reused: u64,
    /// Chunks sent again after the follower rejected one (go-back to the rejected offset).
    pub chunks_resent: u64,
    /// Wall time from offer to the follower's *received* acknowledgement.
    pub duration: Duration,
}

/// Leader side: offer the snapshot `offered` pins, from `store`, on `stream`, learn the follower's durable
/// offset, stream the file from there in CRC32C-checked chunks (re-sending any chunk the
/// follower rejects), report each durable acknowledgement through `on_durable(offset)`, and
/// return once the follower acknowledges the verified, published file.
///
/// The caller pins the snapshot when it decides to offer it ([`SnapshotStore::pin`]), before
/// anything is awaited (opening the stream takes a round trip, or a connect timeout): a newer
/// snapshot published meanwhile would otherwise let retention delete the offered one first.
/// The pin is released when this returns, on every path. Memory: about two chunks
/// (the one being written and one read ahead). Paced by QUIC flow control and `limiter`.
/// Fails on no progress for `cfg.progress_timeout_ms`, a stream error, or a protocol
/// violation; the follower keeps its durable prefix, so the next offer resumes.
/// `Busy` and `AlreadyHave` answers are `Ok` with the matching [`SendOutcome`].
pub async fn send_snapshot(
    stream: BulkStream,
    store: &SnapshotStore,
    offered: SnapshotPin,
    leader_term: u64,
    cfg: &TransferConfig,
    limiter: &BandwidthLimiter,
    mut on_durable: impl FnMut(u64) + Send,
) -> Result<SendReport, TransferError> {
    let id = offered.id();
    cfg.validate()?;
    let m = XferMetrics::new(cfg.node_id, crate::Direction::Send);
    let _in_flight = InFlight::new(m.in_flight());
    let start = Instant::now();
    let result = send_inner(
        stream,
        store,
        id,
        leader_term,
        cfg,
        limiter,
        &mut on_durable,
        &m,
    )
    .await;
    let duration = start.elapsed();
    let outcome = match &result {
        Ok(r) if matches!(r.outcome, SendOutcome::Busy(_)) => "busy",
        r => outcome_label(r),
    };
    m.finished(outcome, duration);
    // Releasing the last pin runs retention, which may delete files: off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(offered)).await;
    result.map(|mut r| {
        r.duration = duration;
        r
    })
}

#[allow(clippy::too_many_arguments)]
async fn send_inner(
    stream: BulkStream,
    store: &SnapshotStore,
    id: SnapshotId,
    leader_term: u64,
    cfg: &TransferConfig,
    limiter: &BandwidthLimiter,
    on_durable: &mut (impl FnMut(u64) + Send),
    m: &XferMetrics,
) -> Result<SendReport, TransferError> {
    let BulkStream {
        peer,
        mut send,
        mut recv,
    } = stream;
    let timeout_ms = cfg.progress_timeout_ms;

    // 1. The file.
    let reader = open_reader(store, id).await?;
    let info = reader.info().clone();
    let file_len = info.file_len;

    // 2. The offer.
    let chunk_bytes = chunk_bytes_under_cap(cfg.chunk_bytes, limiter.get());
    let version = cfg.peer_versions.offer_to(peer, id);
    let o = Offer {
        magic: OFFER_MAGIC,
        version,
        id,
        digest: info.digest,
        file_len,
        chunk_bytes,
        leader_term,
    };
    let answer = offer(&mut send, &mut recv, &o, peer, timeout_ms).await?;
    let declined = |outcome, resumed_from| SendReport {
        outcome,
        resumed_from,
        bytes_sent: 0,
        bytes_reused: 0,
        chunks_resent: 0,
        duration: Duration::ZERO,
    };
    let judged = judge_answer(answer, file_len, peer, id);
    if let Err(TransferError::Rejected { reason, .. }) = &judged
        && reason.starts_with("transfer protocol:")
    {
        tracing::info!(target: LOG, %id, peer, version, %reason, "follower refused the transfer protocol version; offering it this snapshot in the full-file version");
        cfg.peer_versions.refused(peer, version, id);
    }
    let chunk = u64::from(chunk_bytes);
    let (resume_from, ranges) = match judged? {
        OfferAnswer::Accept { resume_from } => (
            resume_from,
            Ranges::from_offset(resume_from, file_len, chunk),
        ),
        OfferAnswer::Manifest { resume_from } if version >= 2 => {
            let ranges =
                manifest_and_ranges(&mut send, &mut recv, &reader, peer, resume_from, chunk, cfg)
                    .await?;
            (resume_from, ranges)
        }
        OfferAnswer::Manifest { .. } => {
            return Err(TransferError::Protocol {
                peer,
                detail: format!("answer to a version {version} offer: SendManifest is version 2"),
            });
        }
        OfferAnswer::Busy(reason) => {
            // The caller logs it with the wait before the next offer (once per backoff step).
            tracing::debug!(target: LOG, %id, peer, %reason, "follower declined the snapshot offer for now");
            let _ = send.finish();
            return Ok(declined(SendOutcome::Busy(reason), 0));
        }
        OfferAnswer::AlreadyHave => {
            tracing::info!(target: LOG, %id, peer, "follower already has the snapshot");
            let _ = send.finish();
            return Ok(declined(SendOutcome::AlreadyHave, file_len));
        }
    };
    if resume_from > 0 {
        m.resume();
    }
    let bytes_reused = file_len - resume_from - ranges.bytes();
    m.reused(bytes_reused);
    tracing::info!(target: LOG, %id, peer, file_len, resume_from, send_bytes = ranges.bytes(), bytes_reused, version, chunk_bytes, "sending snapshot");
    m.begin(&cfg.board, peer, id.last_index, file_len, resume_from);

    // 3. The stream.
    let s = Sending {
        peer,
        id,
        reader: &reader,
        file_len,
        chunk_bytes: u64::from(chunk_bytes),
        cfg,
        limiter,
        m,
        progress: Progress::new(resume_from),
        ranges,
        rewind: Rewind::new(),
        acked: AtomicU64::new(resume_from),
        written: AtomicU64::new(resume_from),
        step_bytes: AtomicU64::new(0),
        acked_wake: tokio::sync::Notify::new(),
        bytes_sent: AtomicU64::new(0),
        chunks_resent: AtomicU64::new(0),
    };
    s.progress.touch();
    let acks = Acks::new(peer, id, resume_from, file_len, s.chunk_bytes, info.digest)
        .with_ranges(s.ranges.clone());
    let window = Window::new(s.chunk_bytes, cfg.sync_every_bytes);
    s.step_bytes.store(window.step_bytes(), Ordering::Relaxed);
    let outcome: Result<(), TransferError> = tokio::select! {
        r = read_acks(&s, &mut recv, acks, window, on_durable) => r,
        r = write_chunks(&s, &mut send, resume_from) => r,
        () = s.progress.stalled(timeout_ms) => Err(TransferError::ProgressTimeout {
            peer, during: "streaming chunks", offset: s.progress.offset(), timeout_ms,
        }),
    };

    // 4. The end.
    finish(&s, &mut send, outcome, resume_from, bytes_reused)
}

/// What the stream's futures share.
struct Sending<'a> {
    peer: NodeId,
    id: SnapshotId,
    reader: &'a Arc<SnapshotReader>,
    file_len: u64,
    chunk_bytes: u64,
    cfg: &'a TransferConfig,
    limiter: &'a BandwidthLimiter,
    m: &'a XferMetrics,
    progress: Progress,
    /// What to send: the ranges the follower asked for.
    ranges: Ranges,
    /// Go-back requests from the acknowledgement reader to the chunk writer.
    rewind: Rewind,
    /// Bytes the follower acknowledged durable; the writer waits on `acked_wake` for it to
    /// grow when the window is full.
    acked: AtomicU64,
    /// The furthest byte written to the stream (resends do not move it).
    written: AtomicU64,
    /// [`Window::step_bytes`] (the acknowledgement reader keeps the window's steps).
    step_bytes: AtomicU64,
    acked_wake: tokio::sync::Notify,
    bytes_sent: AtomicU64,
    chunks_resent: AtomicU64,
}

impl Sending<'_> {
    fn storage(&self, source: StorageError) -> TransferError {
        TransferError::Storage {
            id: self.id,
            source,
        }
    }
}

/// A go-back request: the offset the writer must resend from, and a wake-up for a writer that
/// sent everything and waits.
struct Rewind {
    /// The offset, or [`NO_REWIND`].
    to: AtomicU64,
    wake: tokio::sync::Notify,
}

/// No go-back pending (never a chunk offset).
const NO_REWIND: u64 = u64::MAX;

impl Rewind {
    fn new() -> Self {
        Rewind {
            to: AtomicU64::new(NO_REWIND),
            wake: tokio::sync::Notify::new(),
        }
    }
    fn request(&self, offset: u64) {
        self.to.store(offset, Ordering::Release);
        self.wake.notify_one();
    }
    fn take(&self) -> Option<u64> {
        Some(self.to.swap(NO_REWIND, Ordering::AcqRel)).filter(|r| *r != NO_REWIND)
    }
}

/// Step 1: open snapshot `id` for reading, off the async workers.
async fn open_reader(
    store: &SnapshotStore,
    id: SnapshotId,
) -> Result<Arc<SnapshotReader>, TransferError> {
    let storage = |source| TransferError::Storage { id, source };
    let s = store.clone();
    let reader = tokio::task::spawn_blocking(move || s.open_reader(id))
        .await
        .map_err(|e| storage(StorageError::Invalid(format!("reader task: {e}"))))?
        .map_err(storage)?;
    Ok(Arc::new(reader))
}

/// Step 2: send the offer and read the answer (`None`: the follower closed the stream), each
/// within `timeout_ms`.
async fn offer(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    offer: &Offer,
    peer: NodeId,
    timeout_ms: u64,
) -> Result<Option<Reply>, TransferError> {
    let timeout = Duration::from_millis(timeout_ms);
    let timed_out = |during| TransferError::ProgressTimeout {
        peer,
        during,
        offset: 0,
        timeout_ms,
    };
    let frame_err = |during| {
        move |source| TransferError::Frame {
            peer,
            during,
            source,
        }
    };
    tokio::time::timeout(
        timeout,
        frame::write_msg(send, KIND_OFFER, offer, CONTROL_FRAME_BYTES_MAX),
    )
    .await
    .map_err(|_| timed_out("sending the offer"))?
    .map_err(frame_err("sending the offer"))?;
    tokio::time::timeout(timeout, read_reply(recv))
        .await
        .map_err(|_| timed_out("waiting for the answer to the offer"))?
        .map_err(frame_err("reading the answer to the offer"))
}

/// Step 3a: write chunks from `resume_from` to the end, going back whenever the
/// acknowledgement reader asks; then wait for more go-backs. Returns only on an error.
async fn write_chunks(
    s: &Sending<'_>,
    send: &mut quinn::SendStream,
    resume_from: u64,
) -> Result<(), TransferError> {
    let file_len = s.file_len;
    let mut off = resume_from;
    let mut high_water = resume_from;
    let mut new_chunks: u64 = 0;
    let mut ahead: Option<(u64, tokio::task::JoinHandle<ReadResult>)> = None;
    loop {
        if let Some(r) = s.rewind.take() {
            off = r;
        }
        let Some((at, len)) = s.ranges.chunk_at(off) else {
            s.rewind.wake.notified().await;
            continue;
        };
        off = at;
        let acked = s.acked.load(Ordering::Acquire);
        let step = s.step_bytes.load(Ordering::Relaxed);
        // The cap of the moment: lifting it widens the window at once.
        let window = window_bytes(step, s.chunk_bytes, s.limiter.get());
        if !may_write(off + len, high_water, acked, window) {
            // Wait for an acknowledgement (or a go-back), then decide again.
            tokio::select! {
                () = s.acked_wake.notified() => {}
                () = s.rewind.wake.notified() => {}
            }
            continue;
        }
        let data = match ahead.take() {
            Some((o, h)) if o == off => h.await,
            _ => read_ahead(s.reader, off, len).await,
        }
        .map_err(|e| s.storage(StorageError::Invalid(format!("reader task: {e}"))))?
        .map_err(|e| s.storage(e))?;
        let next = off + len;
        if let Some((n, l)) = s.ranges.chunk_at(next) {
            ahead = Some((n, read_ahead_spawn(s.reader, n, l)));
        }
        s.limiter.acquire(len).await;
        let header = encode_chunk_header(off, &data);
        let first_transmission = off >= high_water;
        if first_transmission {
            new_chunks += 1;
        }
        let data = match s.cfg.corrupt_chunk_every {
            Some(n) if first_transmission && new_chunks.is_multiple_of(u64::from(n.get())) => {
                tracing::warn!(target: LOG, id = %s.id, peer = s.peer, offset = off, "TEST FAULT: corrupting outgoing chunk after its CRC32C");
                corrupt_for_test(&data, new_chunks)
            }
            _ => data,
        };
        let stream_err = |e: quinn::WriteError| TransferError::Stream {
            peer: s.peer,
            during: "writing a chunk",
            offset: off,
            detail: e.to_string(),
        };
        send.write_all(&header).await.map_err(stream_err)?;
        send.write_chunk(data).await.map_err(stream_err)?;
        s.bytes_sent.fetch_add(len, Ordering::Relaxed);
        s.m.bytes().increment(len);
        if off < high_water {
            s.chunks_resent.fetch_add(1, Ordering::Relaxed);
            s.m.chunks_resent(1);
        }
        high_water = high_water.max(next);
        s.written.store(high_water, Ordering::Relaxed);
        off = next;
        s.progress.advance(off);
        s.m.progress(s.peer, high_water, file_len);
    }
}

/// `data` with one bit flipped (which one depends on `nth`): the test fault of
/// [`TransferConfig::corrupt_chunk_every`]. `data` is never empty (a chunk has 1.. bytes).
fn corrupt_for_test(data: &[u8], nth: u64) -> Bytes {
    let mut bad = data.to_vec();
    let bit = (nth as usize * 7919) % (bad.len() * 8);
    bad[bit / 8] ^= 1 << (bit % 8);
    Bytes::from(bad)
}

type ReadResult = Result<Bytes, StorageError>;

fn read_ahead_spawn(
    reader: &Arc<SnapshotReader>,
    off: u64,
    len: u64,
) -> tokio::task::JoinHandle<ReadResult> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        let n = reader.read_file_at(off, &mut buf)?;
        if n != buf.len() {
            return Err(StorageError::Invalid(format!(
                "snapshot {}: read {n} bytes at offset {off}, expected {len} (file shorter than its header says)",
                reader.info().id()
            )));
        }
        Ok(Bytes::from(buf))
    })
}

async fn read_ahead(
    reader: &Arc<SnapshotReader>,
    off: u64,
    len: u64,
) -> Result<ReadResult, tokio::task::JoinError> {
    read_ahead_spawn(reader, off, len).await
}

/// Step 3b: read the follower's acknowledgements until it reports the file received
/// (`Ok`) or something goes wrong. Each step of the durable offset widens or narrows the
/// writer's [`Window`]; a follower that sends heartbeats is presumed gone after
/// `silence_timeout_ms` without a reply.
async fn read_acks(
    s: &Sending<'_>,
    recv: &mut quinn::RecvStream,
    mut acks: Acks,
    mut window: Window,
    on_durable: &mut (impl FnMut(u64) + Send),
) -> Result<(), TransferError> {
    let silence_ms = s.cfg.silence_timeout_ms;
    loop {
        let read = read_reply(recv);
        let reply = if acks.sends_heartbeats() {
            match tokio::time::timeout(Duration::from_millis(silence_ms), read).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(TransferError::PeerSilent {
                        peer: s.peer,
                        silent_ms: silence_ms,
                        acked: acks.acked(),
                        written: s.written.load(Ordering::Relaxed),
                    });
                }
            }
        } else {
            read.await
        }
        .map_err(|source| TransferError::Frame {
            peer: s.peer,
            during: "reading acknowledgements",
            source,
        })?;
        let before = acks.acked();
        match acks.on_reply(reply)? {
            AckStep::Durable(offset) if offset > before => {
                tracing::debug!(target: LOG, id = %s.id, peer = s.peer, offset, "follower made snapshot bytes durable");
                window.on_durable(offset - before);
                s.step_bytes.store(window.step_bytes(), Ordering::Relaxed);
                s.acked.store(offset, Ordering::Release);
                s.acked_wake.notify_one();
                on_durable(offset);
                s.progress.touch();
            }
            // A heartbeat: the follower is alive, nothing moved.
            AckStep::Durable(_) => {}
            AckStep::Resend(offset) => {
                tracing::warn!(target: LOG, id = %s.id, peer = s.peer, offset, "follower rejected a chunk (CRC32C mismatch); re-sending from it");
                s.rewind.request(offset);
            }
            AckStep::Verifying => s.progress.touch(),
            AckStep::Received => {
                on_durable(s.file_len);
                return Ok(());
            }
        }
    }
}

/// Step 4: the report, or the stream reset and the failure logged.
fn finish(
    s: &Sending<'_>,
    send: &mut quinn::SendStream,
    outcome: Result<(), TransferError>,
    resume_from: u64,
    bytes_reused: u64,
) -> Result<SendReport, TransferError> {
    let (peer, id, file_len) = (s.peer, s.id, s.file_len);
    let bytes_sent = s.bytes_sent.load(Ordering::Relaxed);
    let chunks_resent = s.chunks_resent.load(Ordering::Relaxed);
    match outcome {
        Ok(()) => {
            let _ = send.finish();
            tracing::info!(target: LOG, %id, peer, file_len, resume_from, bytes_sent, bytes_reused, chunks_resent, "snapshot sent and acknowledged");
            Ok(SendReport {
                outcome: SendOutcome::Completed,
                resumed_from: resume_from,
                bytes_sent,
                bytes_reused,
                chunks_resent,
                duration: Duration::ZERO,
            })
        }
        Err(e) => {
            let _ = send.reset(quinn::VarInt::from_u32(CODE_TRANSFER_ABORTED));
            tracing::warn!(target: LOG, %id, peer, error = %e, bytes_sent, "snapshot send failed; the next offer resumes from the follower's durable offset");
            Err(e)
        }
    }
}

/// Read one follower -> leader control frame (`None`: the stream ended cleanly).
pub(crate) async fn read_reply(recv: &mut quinn::RecvStream) -> Result<Option<Reply>, FrameError> {
    match frame::read_frame(recv, CONTROL_FRAME_BYTES_MAX).await? {
        None => Ok(None),
        Some(f) => wire::decode_reply(f.kind, &f.payload).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_fault_flips_exactly_one_bit() {
        let data = vec![0u8; 100];
        for nth in [1, 2, 3, 1000] {
            let bad = corrupt_for_test(&data, nth);
            let flipped: u32 = bad.iter().map(|b| b.count_ones()).sum();
            assert_eq!(flipped, 1);
        }
    }
}
