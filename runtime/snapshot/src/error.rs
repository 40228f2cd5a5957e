//! Why a transfer failed ([`TransferError`]).

use wraft_storage::{SnapshotId, StorageError};
use wraft_transport::NodeId;
use wraft_transport::frame::FrameError;

use crate::wire::BusyReason;

/// Why a transfer failed. Every variant names what was expected, what was found and where.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A configuration bound is invalid.
    #[error("snapshot transfer config: {key}: {msg}")]
    Config {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// Local storage failed (opening, reading, writing, syncing or verifying the file).
    #[error("snapshot {id}: storage: {source}")]
    Storage {
        /// The snapshot being transferred.
        id: SnapshotId,
        /// The storage error (names the file).
        #[source]
        source: StorageError,
    },
    /// Reading or writing a control frame failed (stream reset, connection lost, bad frame).
    #[error("snapshot transfer with node {peer}: {during}: {source}")]
    Frame {
        /// The other node.
        peer: NodeId,
        /// What this side was doing.
        during: &'static str,
        /// The frame or stream error.
        #[source]
        source: FrameError,
    },
    /// The stream failed while moving chunk data.
    #[error("snapshot transfer with node {peer}: {during} at offset {offset}: {detail}")]
    Stream {
        /// The other node.
        peer: NodeId,
        /// What this side was doing.
        during: &'static str,
        /// File offset reached.
        offset: u64,
        /// The stream error.
        detail: String,
    },
    /// The other side broke the protocol (unexpected or malformed message).
    #[error("snapshot transfer with node {peer}: protocol violation: {detail}")]
    Protocol {
        /// The other node.
        peer: NodeId,
        /// What was expected and what was found.
        detail: String,
    },
    /// The other side closed the stream before the transfer finished.
    #[error("snapshot transfer with node {peer}: peer closed the stream at offset {offset}")]
    PeerClosed {
        /// The other node.
        peer: NodeId,
        /// File offset reached.
        offset: u64,
    },
    /// Receiver: no member could send a part of the snapshot this follower read from the
    /// members instead of the leader (multi-source catch-up); each failing member is
    /// distrusted, so the next transfer resumes from the durable offset without it.
    #[error(
        "snapshot {id} from node {leader}: the part at offset {offset} could not be read from any member holding it: {detail}"
    )]
    PeerSource {
        /// The leader sending the rest.
        leader: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// The part's offset.
        offset: u64,
        /// Each member asked and why it failed.
        detail: String,
    },
    /// The follower refused the offer (unsupported version, chunk size over its limit, ...).
    #[error("snapshot {id}: node {peer} rejected the offer: {reason}")]
    Rejected {
        /// The follower.
        peer: NodeId,
        /// The snapshot offered.
        id: SnapshotId,
        /// The follower's reason.
        reason: String,
    },
    /// The follower reported a failure (disk error, digest mismatch at the end).
    #[error("snapshot {id}: node {peer} failed to receive it: {reason}")]
    PeerFailed {
        /// The follower.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// The follower's reason.
        reason: String,
    },
    /// Receiver: the offer was declined for now — every slot is taken by other snapshots, or
    /// this one is already arriving on a stream the offer may not take over; the leader was
    /// told why and offers again later.
    #[error("snapshot {id} offered by node {peer}: declined for now: {reason}")]
    Busy {
        /// The leader.
        peer: NodeId,
        /// The snapshot offered.
        id: SnapshotId,
        /// Why (what the leader was told).
        reason: BusyReason,
    },
    /// Receiver: an offer of the same snapshot took this stream over (a newer leader term, the
    /// same node offering again, or this stream idle for `takeover_idle_ms`); the received
    /// prefix is synced and left to the new stream.
    #[error(
        "snapshot {id} from node {peer}: taken over by an offer from node {by} (leader term {leader_term}); the received prefix is kept for it"
    )]
    TakenOver {
        /// The node this stream came from.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// The node whose offer took over.
        by: NodeId,
        /// The leader term of that offer.
        leader_term: u64,
    },
    /// Sender: a follower that sends heartbeats sent nothing for `silence_timeout_ms`: it is
    /// presumed gone (killed, partitioned).
    #[error(
        "snapshot transfer with node {peer}: no reply for {silent_ms} ms (silence_timeout_ms) from a follower that sends heartbeats; presumed gone (killed or cut off) with {acked} bytes acknowledged durable of {written} written"
    )]
    PeerSilent {
        /// The follower.
        peer: NodeId,
        /// The configured `silence_timeout_ms`.
        silent_ms: u64,
        /// Bytes the follower acknowledged as durable.
        acked: u64,
        /// Bytes the leader had written to the stream.
        written: u64,
    },
    /// Nothing moved for `progress_timeout_ms`.
    #[error(
        "snapshot transfer with node {peer}: no progress for {timeout_ms} ms while {during} (offset {offset})"
    )]
    ProgressTimeout {
        /// The other node.
        peer: NodeId,
        /// What this side was waiting for.
        during: &'static str,
        /// File offset reached.
        offset: u64,
        /// The configured `progress_timeout_ms`.
        timeout_ms: u64,
    },
    /// The same chunk failed its checksum more than `chunk_retries_max` times in a row.
    #[error(
        "snapshot {id} from node {peer}: chunk at offset {offset} failed its CRC32C {failures} times (chunk_retries_max = {retries_max})"
    )]
    ChunkRetriesExhausted {
        /// The leader.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// Offset of the chunk.
        offset: u64,
        /// Consecutive checksum failures of this chunk.
        failures: u32,
        /// The configured `chunk_retries_max`.
        retries_max: u32,
    },
    /// The received file's digest is not the one offered.
    #[error(
        "snapshot {id} from node {peer}: digest mismatch: offered {expected}, received {found}"
    )]
    DigestMismatch {
        /// The other node.
        peer: NodeId,
        /// The snapshot.
        id: SnapshotId,
        /// Digest in the offer (hex).
        expected: String,
        /// Digest of the received file (hex).
        found: String,
    },
}
