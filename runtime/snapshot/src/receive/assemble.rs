//! Step 4b of a version 2 transfer on the follower's side: index this node's own snapshots,
//! take the leader's manifest, plan the file and ask for what is missing; then, during the
//! stream, the held segments to copy between the ranges that arrive ([`Copies`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use wraft_storage::{SnapshotStore, StorageError};
use wraft_transport::NodeId;
use wraft_transport::frame;
use wraft_transport::quinn;

use super::disk::{DiskCmd, Local, index_local};
use super::{Receiving, frame_err, send_reply};
use crate::manifest::{Fill, ManifestIntake, fetch_ranges, plan};
use crate::wire::{self, CONTROL_FRAME_BYTES_MAX, FETCH_PART_RANGES_MAX, Offer, Reply};
use crate::{TransferConfig, TransferError};

/// Step 4b (version 2): index this node's snapshots by segment while the leader sends the
/// file's manifest, plan the file (copy what is held, fetch the rest) and ask for the ranges to
/// fetch. Answers `SendManifest{resume_from}` first.
pub(super) async fn assemble(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    store: &SnapshotStore,
    offer: &Offer,
    peer: NodeId,
    resume_from: u64,
    cfg: &TransferConfig,
) -> Result<(Local, Vec<Fill>), TransferError> {
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
    let fills = plan(&intake.into_segments(), resume_from, &local.segments);
    let ranges = fetch_ranges(&fills);
    if let Err(e) = ask_for(send, &ranges, peer).await {
        // Releasing the pins may run retention (file deletes): off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(local)).await;
        return Err(e);
    }
    Ok((local, fills))
}

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

/// The held segments to copy, in file order between the ranges fetched (bookkeeping only; the
/// disk thread copies).
pub(super) struct Copies {
    fills: std::vec::IntoIter<Fill>,
    /// Ranges to fetch reached so far: the copies before the next one wait until this many
    /// ranges are complete.
    pub(super) entered: usize,
}

impl Copies {
    pub(super) fn new(fills: Vec<Fill>) -> Self {
        Copies {
            fills: fills.into_iter(),
            entered: 0,
        }
    }

    /// Queue the copies up to the next range to fetch, and enter it. `false`: the disk thread
    /// stopped.
    pub(super) async fn queue(
        &mut self,
        r: &Receiving<'_>,
        cmd_tx: &mpsc::Sender<DiskCmd>,
    ) -> bool {
        for f in self.fills.by_ref() {
            match f {
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
                        return false;
                    }
                }
                Fill::Fetch { .. } => {
                    self.entered += 1;
                    return true;
                }
            }
        }
        true
    }
}
