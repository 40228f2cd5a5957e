//! `wraft-transport`: QUIC (quinn) with mutual TLS (rustls) for wraft nodes
//! and clients. It carries **opaque payloads**: it knows nothing of Raft
//! messages, snapshots or client requests beyond their bytes.
//!
//! * [`certs`] — the cluster CA, node/client certificates (identity in a
//!   `wraft://node/<id>` / `wraft://client/<name>` URI SAN) and the on-disk
//!   layout `wraft cert` writes.
//! * [`tls`] — TLS 1.3-only rustls configs, ALPNs (`wraft-raft/1`,
//!   `wraft-bulk/1`, `wraft-client/1`), and the refusal rules: foreign CA,
//!   expired, non-member node, client cert on a node ALPN, id mismatch.
//! * [`frame`] — length-prefixed, versioned, CRC32C-checksummed frames with a
//!   pure decoder.
//! * [`Transport`] — one endpoint per node: non-blocking [`Transport::send`]
//!   over bounded per-peer queues and long-lived raft links that reconnect
//!   with jittered backoff; separate bulk connections
//!   ([`Transport::open_bulk`]); accepted client streams.
//! * [`client`] — the client side of `wraft-client/1`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wraft_transport::{AddressBook, Membership, Transport, TransportConfig};
//! use wraft_transport::certs::{ClusterCa, TlsIdentity, Validity};
//!
//! let ca = ClusterCa::generate("demo", Validity::days_from_now(30))?;
//! let tls1 = TlsIdentity::from_issued(ca.cert_pem(), &ca.issue_node(1, &[], Validity::days_from_now(30))?)?;
//! let membership = Membership::new([1, 2]);
//! let book = AddressBook::default();
//! let (t1, mut inbound1) = Transport::bind(
//!     TransportConfig::new(1, "127.0.0.1:0".parse()?), &tls1, membership.clone(), book.clone())?;
//! book.insert(1, t1.local_addr()?);
//! // ... bind node 2 the same way, then:
//! t1.send(2, bytes::Bytes::from_static(b"append entries"))?;   // never blocks
//! if let Some((from, payload)) = inbound1.raft.recv().await { let _ = (from, payload); }
//! # Ok(()) }
//! ```

pub mod certs;
pub mod client;
pub mod frame;
pub mod mux;
pub mod tls;
mod transport;
mod udp;

pub use certs::{Identity, NodeId};
pub use tls::Membership;
pub use transport::{
    AddressBook, BulkStream, CODE_ABANDONED, CODE_BAD_FRAME, CODE_LINK_CLOSED, CODE_REFUSED,
    CODE_SHUTDOWN, ClientStream, DnsResolver, Inbound, LinkState, PeerStats, Resolve,
    ResolveFuture, SendOutcome, Transport, TransportConfig, TransportError, TransportStats,
};
pub use wraft_proto::PeerAddr;

/// Re-exported so callers can use quinn's stream types without pinning a second copy.
pub use quinn;
