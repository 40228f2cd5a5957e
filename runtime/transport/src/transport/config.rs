//! [`TransportConfig`]: every bound of the transport with its unit, its validation, and what it
//! means to quinn (the common transport, and the raft link's acknowledgement frequency).

use std::net::SocketAddr;
use std::time::Duration;

use quinn::VarInt;

use super::TransportError;
use crate::certs::NodeId;
use crate::frame;

/// Every bound of the transport, with its unit.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id; must match the node certificate.
    pub node_id: NodeId,
    /// UDP address to bind (tests: `127.0.0.1:0`).
    pub listen_addr: SocketAddr,
    /// Largest frame payload accepted or sent, bytes. Default 16 MiB.
    pub max_frame_bytes: u32,
    /// Messages queued per peer before the queue overflows and is dropped. Default 4096.
    pub peer_queue_msgs_max: usize,
    /// Payload bytes queued per peer before the queue overflows and is dropped. Default 64 MiB.
    pub peer_queue_bytes_max: usize,
    /// Capacity of the inbound raft channel, messages. When full, readers stop
    /// reading and QUIC flow control pushes back on senders. Default 8192.
    pub inbound_msgs_max: usize,
    /// Capacity of the accepted bulk / client stream channels, streams. Default 64.
    pub inbound_streams_max: usize,
    /// First reconnect delay, ms (doubled per failure, ±50 % jitter). Default 50.
    pub reconnect_backoff_min_ms: u64,
    /// Largest reconnect delay, ms. Default 2000.
    pub reconnect_backoff_max_ms: u64,
    /// Handshake deadline for a dial, ms. Default 3000.
    pub connect_timeout_ms: u64,
    /// Deadline for resolving a peer's DNS name before each dial, ms. Default 2000. A name
    /// that does not resolve in time fails the dial, which is retried with the link's backoff.
    pub resolve_timeout_ms: u64,
    /// QUIC keep-alive (PING) interval on idle connections, ms. Default 1000.
    pub keep_alive_interval_ms: u64,
    /// Connection closed after this long without hearing from the peer, ms. Default 5000.
    pub idle_timeout_ms: u64,
    /// Per-stream receive window, bytes (how much a peer may send ahead on one stream). Default 8 MiB.
    pub stream_receive_window_bytes: u32,
    /// Per-connection receive window, bytes. Default 32 MiB.
    pub connection_receive_window_bytes: u32,
    /// Per-connection send window, bytes. Default 32 MiB.
    pub send_window_bytes: u64,
    /// Concurrent incoming bidirectional streams per connection (bulk transfers or
    /// client requests in flight). Default 64.
    pub max_concurrent_bidi_streams: u32,
    /// Upper bound for path-MTU discovery, bytes (1200..=65527). Default 1452
    /// (quinn's). Loopback or jumbo-frame deployments can raise it.
    pub mtu_upper_bound_bytes: u16,
    /// Kernel send and receive buffer asked for on the UDP socket, bytes. Default 4 MiB. The
    /// kernel caps it at `net.core.rmem_max` / `wmem_max`. Linux's 208 KiB default overflows
    /// under a few thousand requests per second and every dropped datagram costs a QUIC
    /// retransmission.
    pub udp_buffer_bytes: usize,
}

impl TransportConfig {
    /// Defaults for `node_id` bound at `listen_addr`.
    pub fn new(node_id: NodeId, listen_addr: SocketAddr) -> TransportConfig {
        TransportConfig {
            node_id,
            listen_addr,
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            peer_queue_msgs_max: 4096,
            peer_queue_bytes_max: 64 << 20,
            inbound_msgs_max: 8192,
            inbound_streams_max: 64,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 2000,
            connect_timeout_ms: 3000,
            resolve_timeout_ms: 2000,
            keep_alive_interval_ms: 1000,
            idle_timeout_ms: 5000,
            stream_receive_window_bytes: 8 << 20,
            connection_receive_window_bytes: 32 << 20,
            send_window_bytes: 32 << 20,
            max_concurrent_bidi_streams: 64,
            mtu_upper_bound_bytes: 1452,
            udp_buffer_bytes: crate::udp::DEFAULT_UDP_BUFFER_BYTES,
        }
    }

    /// Check every bound; the error names the offending key.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |key: &'static str, msg: String| Err(TransportError::Config { key, msg });
        if self.max_frame_bytes == 0 {
            return bad("max_frame_bytes", "must be > 0".into());
        }
        if self.peer_queue_msgs_max == 0
            || self.inbound_msgs_max == 0
            || self.inbound_streams_max == 0
        {
            return bad(
                "peer_queue_msgs_max/inbound_msgs_max/inbound_streams_max",
                "must be > 0".into(),
            );
        }
        if self.peer_queue_bytes_max < self.max_frame_bytes as usize {
            return bad(
                "peer_queue_bytes_max",
                format!(
                    "{} is smaller than max_frame_bytes = {}; one maximal message must fit",
                    self.peer_queue_bytes_max, self.max_frame_bytes
                ),
            );
        }
        if self.reconnect_backoff_min_ms == 0
            || self.reconnect_backoff_min_ms > self.reconnect_backoff_max_ms
        {
            return bad(
                "reconnect_backoff_min_ms",
                format!(
                    "must be in 1..=reconnect_backoff_max_ms ({}), found {}",
                    self.reconnect_backoff_max_ms, self.reconnect_backoff_min_ms
                ),
            );
        }
        if self.keep_alive_interval_ms == 0 || self.keep_alive_interval_ms >= self.idle_timeout_ms {
            return bad(
                "keep_alive_interval_ms",
                format!(
                    "must be > 0 and below idle_timeout_ms ({}), found {}",
                    self.idle_timeout_ms, self.keep_alive_interval_ms
                ),
            );
        }
        if self.resolve_timeout_ms == 0 {
            return bad("resolve_timeout_ms", "must be > 0".into());
        }
        if !(1200..=65527).contains(&self.mtu_upper_bound_bytes) {
            return bad(
                "mtu_upper_bound_bytes",
                format!(
                    "must be in 1200..=65527, found {}",
                    self.mtu_upper_bound_bytes
                ),
            );
        }
        Ok(())
    }

    pub(crate) fn quinn_transport(&self) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|_| TransportError::Config {
                key: "idle_timeout_ms",
                msg: format!("{} is too large", self.idle_timeout_ms),
            })?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(Some(Duration::from_millis(self.keep_alive_interval_ms)));
        t.stream_receive_window(VarInt::from_u32(self.stream_receive_window_bytes));
        t.receive_window(VarInt::from_u32(self.connection_receive_window_bytes));
        t.send_window(self.send_window_bytes);
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams));
        // A raft link needs one uni stream; a few spare allow a quick re-open.
        t.max_concurrent_uni_streams(VarInt::from_u32(4));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.mtu_upper_bound_bytes);
        t.mtu_discovery_config(Some(mtu));
        Ok(t)
    }

    /// Transport of the connection a raft link opens to send on. A link carries one direction
    /// only (the peer answers on its own link), so the receiver's ACKs never ride on data and
    /// each is a datagram of its own, which wakes the sender's process. By default a receiver
    /// acknowledges every second packet; the link asks for an ACK after more than
    /// [`RAFT_ACK_ELICITING_THRESHOLD`] packets or [`RAFT_MAX_ACK_DELAY`], whichever is first.
    /// The delay bounds what a sender held by its congestion window waits for an ACK, and it is
    /// below quinn's 25 ms default, so loss probes fire no later than before.
    pub(crate) fn raft_link_transport(&self) -> Result<quinn::TransportConfig, TransportError> {
        let mut t = self.quinn_transport()?;
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(RAFT_ACK_ELICITING_THRESHOLD))
            .max_ack_delay(Some(RAFT_MAX_ACK_DELAY));
        t.ack_frequency_config(Some(ack));
        Ok(t)
    }
}

/// Packets a raft link's receiver takes before it must acknowledge (it acknowledges the next).
/// Four packets of 1,452 bytes stay under quinn's initial congestion window (14,720 bytes), so
/// a sender does not stall on its window waiting for a delayed ACK in normal operation.
const RAFT_ACK_ELICITING_THRESHOLD: u32 = 3;
/// Longest a raft link's receiver holds an acknowledgement.
const RAFT_MAX_ACK_DELAY: Duration = Duration::from_millis(5);
