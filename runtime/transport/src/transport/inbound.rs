//! What arrives from peers and clients: the [`Inbound`] receivers a node reads, and the
//! [`Sinks`] the accepting side feeds them through. Every channel is bounded
//! (`inbound_msgs_max`, `inbound_streams_max`): when one is full its readers stop reading and
//! QUIC flow control pushes back on the senders.

use std::net::SocketAddr;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

use super::TransportConfig;
use crate::certs::{Identity, NodeId};

/// A bidirectional stream on a bulk connection with a verified peer node.
/// The opener must write before the peer's accept sees the stream (QUIC
/// streams are announced by their first byte).
#[derive(Debug)]
pub struct BulkStream {
    /// The peer node, from its certificate.
    pub peer: NodeId,
    /// Our sending half.
    pub send: SendStream,
    /// Our receiving half.
    pub recv: RecvStream,
}

/// A request stream opened by an authenticated client.
#[derive(Debug)]
pub struct ClientStream {
    /// Who the client is (from its certificate): usually `Identity::Client`,
    /// or `Identity::Node` for node-to-node forwarding.
    pub identity: Identity,
    /// The client's address.
    pub remote: SocketAddr,
    /// Our sending half (responses).
    pub send: SendStream,
    /// Our receiving half (requests).
    pub recv: RecvStream,
}

/// The receiving ends of a transport: raft messages, bulk streams, client streams.
#[derive(Debug)]
pub struct Inbound {
    /// `(from, payload)` for every raft frame received, in per-peer order.
    pub raft: mpsc::Receiver<(NodeId, Bytes)>,
    /// Bulk streams opened by peers.
    pub bulk: mpsc::Receiver<BulkStream>,
    /// Client request streams.
    pub clients: mpsc::Receiver<ClientStream>,
}

/// The sending ends of [`Inbound`], held by the accepting side.
#[derive(Clone)]
pub(super) struct Sinks {
    pub(super) raft: mpsc::Sender<(NodeId, Bytes)>,
    pub(super) bulk: mpsc::Sender<BulkStream>,
    pub(super) clients: mpsc::Sender<ClientStream>,
}

/// The inbound channels, sized by `config`: the accepting side's ends and the node's ends.
pub(super) fn channels(config: &TransportConfig) -> (Sinks, Inbound) {
    let (raft_tx, raft) = mpsc::channel(config.inbound_msgs_max);
    let (bulk_tx, bulk) = mpsc::channel(config.inbound_streams_max);
    let (client_tx, clients) = mpsc::channel(config.inbound_streams_max);
    (
        Sinks {
            raft: raft_tx,
            bulk: bulk_tx,
            clients: client_tx,
        },
        Inbound {
            raft,
            bulk,
            clients,
        },
    )
}
