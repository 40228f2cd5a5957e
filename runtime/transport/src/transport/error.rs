//! [`TransportError`]: the failures the transport surfaces to its callers.

use std::net::SocketAddr;

use wraft_proto::PeerAddr;

use crate::certs::{Identity, NodeId};
use crate::frame::FrameError;
use crate::tls::TlsError;

/// Transport failures surfaced to callers.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A configuration bound is invalid.
    #[error("transport config: {key}: {msg}")]
    Config {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        msg: String,
    },
    /// TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node certificate does not name this node.
    #[error("node certificate names {found} but this transport is node {expected}")]
    WrongCertificate {
        /// `TransportConfig::node_id`.
        expected: NodeId,
        /// What the certificate names.
        found: Identity,
    },
    /// Binding the UDP socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Must be called inside a tokio runtime.
    #[error("the transport must be created inside a tokio runtime")]
    NoRuntime,
    /// No address known for the peer.
    #[error("no address known for node {0} (add it to the address book)")]
    UnknownPeer(NodeId),
    /// `send` addressed to this node itself (the driver should loop it back locally).
    #[error("node {0} cannot send to itself over the transport")]
    SendToSelf(NodeId),
    /// Dialing failed.
    #[error("connect to node {peer} at {addr}: {detail}")]
    Connect {
        /// Target node.
        peer: NodeId,
        /// Target address.
        addr: PeerAddr,
        /// What went wrong.
        detail: String,
    },
    /// A client (which dials any node of the cluster, not a particular one) could not complete
    /// a handshake with `addr`.
    #[error("cannot reach {addr}: {detail}")]
    Unreachable {
        /// The address dialed.
        addr: PeerAddr,
        /// What went wrong (`handshake timed out after 1000 ms`, a TLS refusal…).
        detail: String,
    },
    /// The peer's DNS name could not be resolved (the dial is retried with the link's backoff).
    #[error("resolve {}{addr}: {detail}", if *peer == 0 { String::new() } else { format!("node {peer}'s address ") })]
    Resolve {
        /// Target node (0 when a client resolves an endpoint).
        peer: NodeId,
        /// The name.
        addr: PeerAddr,
        /// What went wrong.
        detail: String,
    },
    /// The connection failed after it was established.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be encoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The transport has been shut down.
    #[error("transport is shut down")]
    ShutDown,
}
