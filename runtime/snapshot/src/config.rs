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
    /// received bytes (default 8 MiB). The store's own `snapshot_sync_every_bytes` also applies;
    /// the smaller interval wins. A crash loses at most this much received data.
    pub sync_every_bytes: u64,
    /// Either side aborts when nothing moves for this long (default 10 000 ms): no chunk written
    /// to or read from the stream, no acknowledgement, no verification heartbeat. There is no
    /// per-chunk or per-snapshot deadline.
    pub progress_timeout_ms: u64,
    /// Receiver: concurrent incoming transfers; an offer beyond this is answered `Busy`
    /// (default 2).
    pub max_incoming_transfers: usize,
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
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            node_id: 0,
            chunk_bytes: 1 << 20,
            chunk_bytes_max: 16 << 20,
            sync_every_bytes: 8 << 20,
            progress_timeout_ms: 10_000,
            max_incoming_transfers: 2,
            receive_queue_chunks: 4,
            chunk_retries_max: 8,
            corrupt_chunk_every: None,
            board: TransferBoard::default(),
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
        if self.progress_timeout_ms == 0 {
            return bad("progress_timeout_ms", "must be > 0".into());
        }
        if self.max_incoming_transfers == 0 {
            return bad("max_incoming_transfers", "must be > 0".into());
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
    }
}
