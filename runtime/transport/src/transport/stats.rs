//! Counters: per outbound link ([`PeerStats`]) and transport-wide ([`TransportStats`]), and the
//! [`Transport`] methods that read them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{LinkState, Transport};
use crate::certs::NodeId;
use crate::tls;

/// Counters for one outbound peer link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// Current state.
    pub state: LinkState,
    /// Messages waiting in the queue.
    pub queued_msgs: usize,
    /// Payload bytes waiting in the queue.
    pub queued_bytes: usize,
    /// Messages written to the stream (handed to QUIC) since the link was created.
    pub sent_msgs: u64,
    /// Messages discarded by queue overflow.
    pub dropped_overflow_msgs: u64,
    /// Messages discarded because the link was down (queue cleared, or sent during backoff).
    pub dropped_link_down_msgs: u64,
    /// Handshakes that completed locally (1 + reconnects). With TLS 1.3 the
    /// peer may still refuse our certificate just after; that shows up as a
    /// quick link-down and a refusal in the peer's log.
    pub connects: u64,
}

/// Transport-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Refused handshakes / peers, by reason.
    pub refusals: tls::RefusalCounts,
    /// Raft frames received and delivered to the inbound channel.
    pub raft_msgs_received: u64,
    /// Streams closed because of a malformed, oversized or corrupt frame.
    pub bad_frames: u64,
    /// Incoming handshakes the peer gave up on, or that went silent, before they completed
    /// (a client that raced several nodes and kept another, a dial from before a restart):
    /// logged at debug, not refusals.
    pub handshakes_abandoned: u64,
}

/// The transport-wide counters the accepting side bumps; [`Transport::stats`] reads them.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) raft_msgs_received: AtomicU64,
    pub(super) bad_frames: AtomicU64,
    pub(super) handshakes_abandoned: AtomicU64,
}

impl Transport {
    /// Counters of the outbound link to `to`, if one exists.
    pub fn peer_stats(&self, to: NodeId) -> Option<PeerStats> {
        let link = self
            .inner
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .cloned()?;
        let stats = link.lock().stats();
        Some(stats)
    }

    /// Transport-wide counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.shared.counters;
        TransportStats {
            refusals: self.inner.shared.auth.snapshot(),
            raft_msgs_received: c.raft_msgs_received.load(Ordering::Relaxed),
            bad_frames: c.bad_frames.load(Ordering::Relaxed),
            handshakes_abandoned: c.handshakes_abandoned.load(Ordering::Relaxed),
        }
    }
}
