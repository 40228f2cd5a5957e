//! Step 4b of a version 2 transfer on the follower's side: index this node's own snapshots,
//! take the leader's manifest, plan the file and ask for what is missing; then, during the
//! stream, the held segments to copy between the ranges that arrive ([`Copies`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use wraft_storage::{SnapshotStore, StorageError};
use wraft_transport::NodeId;
use wraft_transport::frame;
use wraft_transport::quinn;

use super::disk::{DiskCmd, Local, index_local};
use super::{Receiving, frame_err, send_reply};
use crate::manifest::{Fill, ManifestIntake, fetch_ranges, fetched_segments, plan, spread_fetches};
use crate::peers::{PeerReads, SnapshotPeers, ask_held};
use crate::wire::{self, CONTROL_FRAME_BYTES_MAX, FETCH_PART_RANGES_MAX, Offer, Reply};
use crate::{TransferConfig, TransferError};

/// Most bytes of whole segments given to one source in turn when the fetches are spread over
/// the leader and other members: small enough that every source is busy from the start, large
/// enough that the leader's ranges stay few.
const MEMBER_BLOCK_BYTES: u64 = 4 << 20;

/// Step 4b (version 2): index this node's snapshots by segment while the leader sends the
/// file's manifest, plan the file (copy what is held, fetch the rest) and ask for the ranges to
/// fetch. Answers `SendManifest{resume_from}` first.
// The stream's two halves, what the leader offers and who else to ask: one step's inputs.
#[allow(clippy::too_many_arguments)]
pub(super) async fn assemble(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    store: &SnapshotStore,
    offer: &Offer,
    peer: NodeId,
    resume_from: u64,
    members: Option<(&Arc<dyn SnapshotPeers>, &[NodeId])>,
    cfg: &TransferConfig,
) -> Result<(Local, Vec<Fill>, Vec<Holder>), TransferError> {
    let timeout_ms = cfg.progress_timeout_ms;
    let timeout = Duration::from_millis(timeout_ms);
    let (s, cache) = (store.clone(), cfg.segments.clone());
    let indexing = tokio::task::spawn_blocking(move || index_local(&s, &cache));
    tokio::time::timeout(
        timeout,
        send_reply(send, &Reply::SendManifest { resume_from }),
    )
    .await
    .map_err(|_| TransferError::ProgressTimeout {
        peer,
        during: "answering the offer",
        offset: resume_from,
        timeout_ms,
    })?
    .map_err(frame_err(peer, "answering the offer"))?;
    let mut intake = ManifestIntake::new(offer.file_len);
    loop {
        let f = tokio::time::timeout(timeout, frame::read_frame(recv, CONTROL_FRAME_BYTES_MAX))
            .await
            .map_err(|_| TransferError::ProgressTimeout {
                peer,
                during: "receiving the manifest",
                offset: resume_from,
                timeout_ms,
            })?
            .map_err(frame_err(peer, "reading the manifest"))?
            .ok_or(TransferError::PeerClosed {
                peer,
                offset: resume_from,
            })?;
        let part = wire::decode_manifest_part(f.kind, &f.payload)
            .map_err(frame_err(peer, "decoding the manifest"))?;
        if intake
            .on_part(part)
            .map_err(|detail| TransferError::Protocol { peer, detail })?
        {
            break;
        }
    }
    // Indexing large snapshots takes seconds: the leader hears from this side meanwhile (it
    // takes a repeated `Durable{resume_from}` for what it is in the stream: a heartbeat).
    let heartbeat = Duration::from_millis(cfg.heartbeat_ms.max(1));
    let mut indexing = indexing;
    let local = loop {
        tokio::select! {
            r = &mut indexing => break r.map_err(|e| TransferError::Storage {
                id: offer.id,
                source: StorageError::Invalid(format!("indexing task: {e}")),
            })?,
            () = tokio::time::sleep(heartbeat) => {
                send_reply(send, &Reply::Durable { offset: resume_from })
                    .await
                    .map_err(frame_err(peer, "sending a heartbeat while indexing"))?;
            }
        }
    };
    let segments = intake.into_segments();
    let planned = plan(&segments, resume_from, &local.segments);
    // Which of the segments to fetch the other members hold (they answer while the leader
    // hears heartbeats from here, as while indexing).
    let holders = match members {
        Some((peers, candidates)) if !candidates.is_empty() => {
            let mut wanted = fetched_segments(&planned, &segments);
            wanted.sort_unstable();
            wanted.dedup();
            if wanted.len() > wraft_proto::SEGMENTS_ASKED_MAX {
                tracing::info!(target: crate::metrics::LOG, id = %offer.id, peer, segments = wanted.len(),
                    asked = wraft_proto::SEGMENTS_ASKED_MAX,
                    "more segments to fetch than one question to the members holds; the rest come from the leader");
                wanted.truncate(wraft_proto::SEGMENTS_ASKED_MAX);
            }
            if wanted.is_empty() {
                Vec::new()
            } else {
                let wait = Duration::from_millis((timeout_ms / 4).max(1));
                let ask = ask_held(peers, candidates, &wanted, wait);
                tokio::pin!(ask);
                loop {
                    tokio::select! {
                        h = &mut ask => break h,
                        () = tokio::time::sleep(heartbeat) => {
                            if let Err(e) = send_reply(send, &Reply::Durable { offset: resume_from }).await {
                                let _ = tokio::task::spawn_blocking(move || drop(local)).await;
                                return Err(frame_err(peer, "sending a heartbeat while asking the members")(e));
                            }
                        }
                    }
                }
            }
        }
        _ => Vec::new(),
    };
    let held: Vec<_> = holders.iter().map(|h| h.1.clone()).collect();
    // Blocks of at most 4 MiB, and at least eight per source so a small transfer spreads too.
    let fetch_bytes: u64 = fetch_ranges(&planned).iter().map(|r| r.1).sum();
    let block = (fetch_bytes / (8 * (held.len() as u64 + 1))).clamp(64 << 10, MEMBER_BLOCK_BYTES);
    let fills = spread_fetches(planned, &segments, &held, block);
    let ranges = fetch_ranges(&fills);
    if let Err(e) = ask_for(send, &ranges, peer).await {
        // Releasing the pins may run retention (file deletes): off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(local)).await;
        return Err(e);
    }
    Ok((local, fills, holders))
}

/// A member read from, with the segments it said it holds.
pub(super) type Holder = (NodeId, HashSet<[u8; 32]>);

/// Send `ranges` to fetch, in `Fetch` parts of at most [`FETCH_PART_RANGES_MAX`] (one empty
/// part if there is none).
async fn ask_for(
    send: &mut quinn::SendStream,
    ranges: &[(u64, u64)],
    peer: NodeId,
) -> Result<(), TransferError> {
    let mut parts = ranges.chunks(FETCH_PART_RANGES_MAX).peekable();
    loop {
        let part = parts.next().unwrap_or(&[]);
        let last = parts.peek().is_none();
        let msg = Reply::Fetch {
            ranges: part.to_vec(),
            last,
        };
        send_reply(send, &msg)
            .await
            .map_err(frame_err(peer, "asking for ranges"))?;
        if last {
            return Ok(());
        }
    }
}

/// The held segments to copy and the members' segments to write, in file order between the
/// ranges fetched from the leader (bookkeeping only; the disk thread copies and writes).
pub(super) struct Copies {
    fills: std::vec::IntoIter<Fill>,
    /// Ranges to fetch reached so far: the copies before the next one wait until this many
    /// ranges are complete.
    pub(super) entered: usize,
    /// The members' segments, read ahead ([`Fill::Peer`]).
    reads: Option<PeerReads>,
}

impl Copies {
    pub(super) fn new(fills: Vec<Fill>, reads: Option<PeerReads>) -> Self {
        Copies {
            fills: fills.into_iter(),
            entered: 0,
            reads,
        }
    }

    /// Queue the copies (and the members' segments) up to the next range to fetch, and enter
    /// it. `Ok(false)`: the disk thread stopped. `Err`: no member could send a segment.
    pub(super) async fn queue(
        &mut self,
        r: &Receiving<'_>,
        cmd_tx: &mpsc::Sender<DiskCmd>,
    ) -> Result<bool, TransferError> {
        for f in self.fills.by_ref() {
            match f {
                Fill::Peer { at, len, .. } => {
                    let Some(reads) = self.reads.as_mut() else {
                        return Err(TransferError::PeerSource {
                            leader: r.peer,
                            id: r.offer.id,
                            offset: at,
                            detail: "no member to read it from".into(),
                        });
                    };
                    let (sent_by, data) = reads.take(at).await?;
                    let from = reads.member(sent_by);
                    let len = u64::from(len);
                    {
                        let mut m = r.from_members.lock().unwrap_or_else(|p| p.into_inner());
                        match m.iter_mut().find(|(n, _)| *n == from) {
                            Some((_, b)) => *b += len,
                            None => m.push((from, len)),
                        }
                    }
                    r.m.member_bytes(from, len);
                    r.progress.advance(at + len);
                    if cmd_tx
                        .send(DiskCmd::Write { offset: at, data })
                        .await
                        .is_err()
                    {
                        return Ok(false);
                    }
                }
                Fill::Copy {
                    at,
                    len,
                    source,
                    from,
                    hash,
                } => {
                    r.bytes_reused.fetch_add(u64::from(len), Ordering::Relaxed);
                    r.m.reused(u64::from(len));
                    let cmd = DiskCmd::Copy {
                        at,
                        len,
                        source,
                        from,
                        hash,
                    };
                    if cmd_tx.send(cmd).await.is_err() {
                        return Ok(false);
                    }
                }
                Fill::Fetch { .. } => {
                    self.entered += 1;
                    return Ok(true);
                }
            }
        }
        Ok(true)
    }
}
