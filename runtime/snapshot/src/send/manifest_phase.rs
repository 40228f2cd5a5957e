//! Step 2b of a version 2 transfer on the leader's side: the file's manifest goes out as the
//! file is hashed, and the ranges the follower lacks come back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wraft_storage::{SnapshotReader, StorageError};
use wraft_transport::NodeId;
use wraft_transport::frame;
use wraft_transport::quinn;

use super::read_reply;
use crate::manifest::{Ranges, for_each_segment};
use crate::metrics::LOG;
use crate::wire::{
    CONTROL_FRAME_BYTES_MAX, KIND_MANIFEST, MANIFEST_PART_SEGMENTS_MAX, MANIFEST_SEGMENTS_MAX,
    ManifestPart, Reply,
};
use crate::{TransferConfig, TransferError};

/// Step 2b (version 2): send the file's manifest, then read the ranges the follower lacks
/// (checked: sorted, disjoint, within `[resume_from, file_len)`).
pub(super) async fn manifest_and_ranges(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reader: &Arc<SnapshotReader>,
    peer: NodeId,
    resume_from: u64,
    chunk_bytes: u64,
    cfg: &TransferConfig,
) -> Result<Ranges, TransferError> {
    let id = reader.info().id();
    let file_len = reader.info().file_len;
    let timeout_ms = cfg.progress_timeout_ms;
    let timeout = Duration::from_millis(timeout_ms);
    let timed_out = |during| TransferError::ProgressTimeout {
        peer,
        during,
        offset: resume_from,
        timeout_ms,
    };
    let frame_err = |during| {
        move |source| TransferError::Frame {
            peer,
            during,
            source,
        }
    };
    // The manifest goes out part by part as the file is hashed (a remembered file at once), so
    // the follower hears from this side while a large file is read.
    let (parts_tx, mut parts_rx) = mpsc::channel::<Vec<(u32, [u8; 32])>>(4);
    let (r, cache) = (reader.clone(), cfg.segments.clone());
    let hashing = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let send_part = |part: &mut Vec<(u32, [u8; 32])>| -> std::io::Result<()> {
            parts_tx
                .blocking_send(std::mem::take(part))
                .map_err(|_| std::io::Error::other("the transfer ended"))
        };
        let mut part = Vec::with_capacity(MANIFEST_PART_SEGMENTS_MAX);
        if let Some(known) = cache.get(&r.info().digest) {
            for s in known.iter() {
                part.push((s.len, s.hash));
                if part.len() == MANIFEST_PART_SEGMENTS_MAX {
                    send_part(&mut part)?;
                }
            }
            return send_part(&mut part);
        }
        let mut read_at = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
            match r.read_file_at(at, buf) {
                Ok(n) if n == buf.len() => Ok(()),
                Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        };
        let mut all = Vec::new();
        for_each_segment(file_len, &mut read_at, &mut |s| {
            all.push(s);
            part.push((s.len, s.hash));
            if part.len() == MANIFEST_PART_SEGMENTS_MAX {
                send_part(&mut part)?;
            }
            Ok(())
        })?;
        cache.insert(r.info().digest, Arc::new(all));
        send_part(&mut part)
    });
    let mut parts_sent = 0usize;
    while let Some(segments) = parts_rx.recv().await {
        // Parts are full until the last, which holds the rest (possibly nothing).
        let last = segments.len() < MANIFEST_PART_SEGMENTS_MAX;
        let msg = ManifestPart { segments, last };
        tokio::time::timeout(
            timeout,
            frame::write_msg(send, KIND_MANIFEST, &msg, CONTROL_FRAME_BYTES_MAX),
        )
        .await
        .map_err(|_| timed_out("sending the manifest"))?
        .map_err(frame_err("sending the manifest"))?;
        parts_sent += 1;
        if last {
            break;
        }
    }
    hashing
        .await
        .map_err(|e| TransferError::Storage {
            id,
            source: StorageError::Invalid(format!("manifest task: {e}")),
        })?
        .map_err(|e| TransferError::Storage {
            id,
            source: StorageError::Invalid(format!("reading the file for its manifest: {e}")),
        })?;
    tracing::debug!(target: LOG, %id, peer, parts_sent, "manifest sent");
    let mut ranges = Vec::new();
    loop {
        let reply = tokio::time::timeout(timeout, read_reply(recv))
            .await
            .map_err(|_| timed_out("waiting for the ranges to send"))?
            .map_err(frame_err("reading the ranges to send"))?;
        match reply {
            Some(Reply::Fetch { ranges: part, last }) => {
                if ranges.len() + part.len() > MANIFEST_SEGMENTS_MAX {
                    return Err(TransferError::Protocol {
                        peer,
                        detail: format!("more than {MANIFEST_SEGMENTS_MAX} ranges asked for"),
                    });
                }
                ranges.extend(part);
                if last {
                    break;
                }
            }
            // The follower indexes its own files meanwhile, and says it is alive.
            Some(Reply::Durable { offset }) if offset == resume_from => {}
            Some(Reply::Failed { reason }) => {
                return Err(TransferError::PeerFailed { peer, id, reason });
            }
            None => {
                return Err(TransferError::PeerClosed {
                    peer,
                    offset: resume_from,
                });
            }
            Some(other) => {
                return Err(TransferError::Protocol {
                    peer,
                    detail: format!(
                        "after the manifest: expected Fetch or Durable{{offset: {resume_from}}}, found {other:?}"
                    ),
                });
            }
        }
    }
    Ranges::checked(
        ranges,
        resume_from,
        file_len,
        chunk_bytes,
        MANIFEST_SEGMENTS_MAX,
    )
    .map_err(|detail| TransferError::Protocol { peer, detail })
}
