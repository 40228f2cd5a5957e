//! The bounds of a snapshot transfer ([`TransferConfig`]), each with its unit, checked by
//! [`TransferConfig::validate`].

use std::num::NonZeroU32;

use wraft_transport::NodeId;

use crate::TransferError;
use crate::board::TransferBoard;

/// Environment variable read by [`TransferConfig::with_test_faults_from_env`]: corrupt every
/// N-th outgoing chunk on the wire (testing only; see [`TransferConfig::corrupt_chunk_every`]).
pub const CORRUPT_CHUNK_EVERY_ENV: &str = "WRAFT_TEST_CORRUPT_CHUNK_EVERY";

/// Bounds for snapshot transfers, from the node config's `[snapshot]` section (units in names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferConfig {
    /// This node's id; labels metrics and log lines.
    pub node_id: NodeId,
    /// Sender: payload bytes per chunk (default 1 MiB). Each chunk carries its own CRC32C.
    pub chunk_bytes: u32,
    /// Receiver: largest chunk it accepts in an offer (default 16 MiB); bounds its memory per chunk.
    pub chunk_bytes_max: u32,
    /// Receiver: `fdatasync` the spool file and acknowledge the durable offset every this many
    /// received bytes (default 8 MiB), or after [`TransferConfig::sync_interval_ms`], whichever
    /// comes first. The store's own `snapshot_sync_every_bytes` also applies; the smaller
    /// interval wins. A crash loses at most this much received data.
    pub sync_every_bytes: u64,
    /// Receiver: sync and acknowledge bytes received at most this long ago (default 100 ms), so
    /// that a slow (rate-capped) transfer makes small steps durable often: a crash then loses,
    /// and the leader's window ([`crate::send`]) lets it send ahead, only about two intervals'
    /// worth of the rate instead of `sync_every_bytes`. Uncapped transfers reach
    /// `sync_every_bytes` first and are unaffected.
    pub sync_interval_ms: u64,
    /// Either side aborts when nothing moves for this long (default 10 000 ms): no chunk written
    /// to or read from the stream, no acknowledgement, no verification heartbeat. There is no
    /// per-chunk or per-snapshot deadline.
    pub progress_timeout_ms: u64,
    /// Receiver: send a heartbeat (the last durable offset again, or `Verifying`) when nothing
    /// else was sent to the leader for this long (default 250 ms), so that the leader can tell a
    /// live follower from a dead one within [`TransferConfig::silence_timeout_ms`].
    pub heartbeat_ms: u64,
    /// Sender: a follower that sends heartbeats and has sent nothing for this long is presumed
    /// gone (killed, partitioned) and the transfer is abandoned (default 1000 ms): a dead peer
    /// is otherwise noticed only at the QUIC idle timeout or the progress timeout, and the
    /// window of unacknowledged bytes is what it lost. Followers before heartbeats are watched
    /// by the progress timeout alone.
    pub silence_timeout_ms: u64,
    /// Receiver: concurrent incoming transfers; an offer beyond this is answered `Busy`
    /// (default 2; the node's `snapshot.incoming_transfers_max`).
    pub incoming_transfers_max: usize,
    /// Receiver: an offer of a snapshot that is already arriving from another node in the same
    /// or a newer leader term takes that stream over once it has made no progress for this long
    /// (default 1000 ms); before that it is answered `AlreadyArriving`. An offer from a newer
    /// term, or from the node that sends the stream, takes it over at once: a leader runs one
    /// transfer per follower, and a deposed leader's transfer is of no use.
    pub takeover_idle_ms: u64,
    /// Receiver: verified chunks queued between the network and the disk writer (default 4).
    /// Bounds the receiver's memory to about `(receive_queue_chunks + 1) * chunk_bytes`; when
    /// full, the receiver stops reading and QUIC flow control slows the sender.
    pub receive_queue_chunks: usize,
    /// Receiver: rejections (checksum failures) of the same chunk before the transfer is
    /// abandoned (default 8).
    pub chunk_retries_max: u32,
    /// TESTING ONLY — wire fault injection on the sending side: flip one bit in the data of the
    /// first transmission of every N-th chunk *after* its CRC32C was computed, so the receiver
    /// must detect and reject it and the leader re-send it (resends go out intact, so the
    /// transfer always completes; `N = 1` corrupts every chunk once). `None` (the default) in
    /// production.
    pub corrupt_chunk_every: Option<NonZeroU32>,
    /// Where this node's transfers show their progress while they run (status pages, the
    /// console). Not a bound: clones of one configuration share the board.
    pub board: TransferBoard,
    /// Sender: which peers refused a version 2 offer of which snapshot (that snapshot is
    /// offered to them in version 1; a newer one in version 2 again). Clones share it.
    pub peer_versions: PeerVersions,
    /// Both sides: the segments of recently seen snapshot files (version 2), so a file is
    /// hashed once. Clones share it.
    pub segments: crate::manifest::SegmentCache,
}

/// Which peers refused a version 2 offer, and of which snapshot: that snapshot is offered to
/// them in version 1 from then on; a newer snapshot is offered in version 2 again, so a peer
/// upgraded in a rolling upgrade gets incremental transfers back without the leader
/// restarting. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct PeerVersions(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<NodeId, wraft_storage::SnapshotId>>>,
);

/// Clones are equal (they share what they learn), like [`TransferBoard`]'s.
impl PartialEq for PeerVersions {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PeerVersions {}

impl PeerVersions {
    /// The version to offer `peer` for snapshot `id`.
    pub fn offer_to(&self, peer: NodeId, id: wraft_storage::SnapshotId) -> u16 {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&peer) {
            Some(refused) if *refused >= id => crate::wire::TRANSFER_PROTOCOL_VERSION_FULL,
            _ => crate::TRANSFER_PROTOCOL_VERSION,
        }
    }

    /// `peer` refused `version` for snapshot `id`: offer it that snapshot (and older ones) in
    /// the full-file version.
    pub fn refused(&self, peer: NodeId, version: u16, id: wraft_storage::SnapshotId) {
        if version > crate::wire::TRANSFER_PROTOCOL_VERSION_FULL {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(peer, id);
        }
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            node_id: 0,
            chunk_bytes: 1 << 20,
            chunk_bytes_max: 16 << 20,
            sync_every_bytes: 8 << 20,
            sync_interval_ms: 100,
            progress_timeout_ms: 10_000,
            heartbeat_ms: 250,
            silence_timeout_ms: 1000,
            incoming_transfers_max: 2,
            takeover_idle_ms: 1000,
            receive_queue_chunks: 4,
            chunk_retries_max: 8,
            corrupt_chunk_every: None,
            board: TransferBoard::default(),
            peer_versions: PeerVersions::default(),
            segments: crate::manifest::SegmentCache::default(),
        }
    }
}

impl TransferConfig {
    /// Check every bound; the error names the offending key.
    pub fn validate(&self) -> Result<(), TransferError> {
        let bad = |key: &'static str, msg: String| Err(TransferError::Config { key, msg });
        if self.chunk_bytes == 0 || self.chunk_bytes > self.chunk_bytes_max {
            return bad(
                "chunk_bytes",
                format!(
                    "must be in 1..=chunk_bytes_max ({}), found {}",
                    self.chunk_bytes_max, self.chunk_bytes
                ),
            );
        }
        if self.sync_every_bytes == 0 {
            return bad("sync_every_bytes", "must be > 0".into());
        }
        if self.sync_interval_ms == 0 {
            return bad("sync_interval_ms", "must be > 0".into());
        }
        if self.progress_timeout_ms == 0 {
            return bad("progress_timeout_ms", "must be > 0".into());
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms.saturating_mul(2) > self.silence_timeout_ms {
            return bad(
                "heartbeat_ms",
                format!(
                    "must be in 1..=silence_timeout_ms / 2 ({}), found {}",
                    self.silence_timeout_ms / 2,
                    self.heartbeat_ms
                ),
            );
        }
        if self.incoming_transfers_max == 0 {
            return bad("incoming_transfers_max", "must be > 0".into());
        }
        if self.receive_queue_chunks == 0 {
            return bad("receive_queue_chunks", "must be > 0".into());
        }
        Ok(())
    }

    /// Set [`TransferConfig::corrupt_chunk_every`] from the environment variable
    /// [`CORRUPT_CHUNK_EVERY_ENV`] if it holds a positive integer (end-to-end fault tests).
    pub fn with_test_faults_from_env(mut self) -> Self {
        if let Some(n) = std::env::var(CORRUPT_CHUNK_EVERY_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<NonZeroU32>().ok())
        {
            self.corrupt_chunk_every = Some(n);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds_are_checked_with_the_key_named() {
        assert!(TransferConfig::default().validate().is_ok());
        let c = TransferConfig {
            chunk_bytes: 32 << 20,
            ..TransferConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(TransferError::Config {
                key: "chunk_bytes",
                ..
            })
        ));
        let c = TransferConfig {
            progress_timeout_ms: 0,
            ..TransferConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(TransferError::Config {
                key: "progress_timeout_ms",
                ..
            })
        ));
        let c = TransferConfig {
            heartbeat_ms: 600,
            silence_timeout_ms: 1000,
            ..TransferConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("heartbeat_ms: must be in 1..=silence_timeout_ms / 2 (500), found 600"),
            "{e}"
        );
    }
}
