//! The node transport: one quinn endpoint on one UDP socket, which both accepts and dials, under
//! mutual TLS against the cluster CA. Three ALPNs, each on connections of its own:
//!
//! ```text
//!   node 1                                                            node 2
//!   send(2, m) ─▶ link to 2 ══ wraft-raft/1: one uni stream ═══════▶ accept ─▶ Inbound::raft
//!                             hello {from: 1, to: 2}, raft, raft …
//!   Inbound::raft ◀─ accept ◀═══════════════════ wraft-raft/1 ══ link to 1 ◀─ send(1, m)
//!   open_bulk(2) ═════════════ wraft-bulk/1: a bidi stream per open ═══▶ accept ─▶ Inbound::bulk
//!   ClientConnection ═══════ wraft-client/1: a bidi stream per request ═▶ accept ─▶ Inbound::clients
//! ```
//!
//! Each direction between two nodes has its own raft connection, dialed by the sender, so there
//! are no dial races to resolve, and bulk data never shares a flow-control window with raft
//! messages.
//!
//! Invariants:
//! * [`Transport::send`] never awaits: it takes one short mutex and queues; the link's task does
//!   the network I/O.
//! * Every queue, window and channel has a bound named in [`TransportConfig`].
//! * A peer is named only by its CA-verified certificate; a raft link's hello must agree with it.
//! * Tasks hold `Shared`, never the handle's `Inner`, so dropping the last [`Transport`] shuts
//!   everything down.
//!
//! Where things are: the handle, `bind` and `shutdown` here; `address_book`, `config`, `error`;
//! sending on raft links in `send` and `link`; opening bulk streams in `bulk`; the quinn
//! endpoint and dialing in `endpoint`; everything accepted in `accept`, delivered through
//! `inbound`; counters in `stats`. The client side of `wraft-client/1` is [`crate::client`].

mod accept;
mod address_book;
mod bulk;
mod config;
mod endpoint;
mod error;
mod inbound;
mod link;
mod send;
mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, Endpoint, VarInt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::certs::{Identity, NodeId, TlsIdentity};
use crate::tls::{AuthCounters, Membership};

pub use address_book::{AddressBook, DnsResolver, Resolve, ResolveFuture};
pub use config::TransportConfig;
pub use error::TransportError;
pub use inbound::{BulkStream, ClientStream, Inbound};
pub use link::LinkState;
pub use send::SendOutcome;
pub use stats::{PeerStats, TransportStats};

use endpoint::{DialConfigs, QuicConfigs, QuicTransports};
use link::PeerLink;
use stats::Counters;

/// QUIC application error code: normal shutdown.
pub const CODE_SHUTDOWN: u32 = 0;
/// QUIC application error code: peer refused (see the reason text).
pub const CODE_REFUSED: u32 = 1;
/// QUIC application error code (stream STOP_SENDING): malformed frame on this stream.
pub const CODE_BAD_FRAME: u32 = 2;
/// QUIC application error code: link replaced or torn down by this side.
pub const CODE_LINK_CLOSED: u32 = 3;

/// QUIC application error code: a client gave up on a handshake it started (it raced several
/// nodes and another answered first, or its connect deadline passed). Not a refusal.
pub const CODE_ABANDONED: u32 = 4;

const LOG: &str = "wraft_transport";

/// State shared by the transport handle and its tasks (no back-pointer to
/// `Inner`, so dropping the last `Transport` shuts everything down).
#[derive(Clone)]
struct Shared {
    config: Arc<TransportConfig>,
    endpoint: Endpoint,
    /// What new dials use; replaced whole by [`Transport::reload_tls`].
    dialing: Arc<std::sync::RwLock<DialConfigs>>,
    /// The QUIC transport parameters every config is built with (kept for reloads).
    quic_transport: Arc<QuicTransports>,
    addresses: AddressBook,
    membership: Membership,
    auth: AuthCounters,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
}

struct Inner {
    shared: Shared,
    links: Mutex<HashMap<NodeId, Arc<PeerLink>>>,
    /// One slot per peer, so a slow dial to one peer never delays bulk opens to another.
    bulk_conns: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        for link in self
            .links
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            link.stop();
        }
        self.shared
            .endpoint
            .close(VarInt::from_u32(CODE_SHUTDOWN), b"shutdown");
    }
}

/// A node's QUIC transport: one endpoint that accepts and dials raft links
/// (`wraft-raft/1`), bulk connections (`wraft-bulk/1`) and client connections
/// (`wraft-client/1`), all under mutual TLS against the cluster CA.
///
/// Cheap to clone (an `Arc`). Dropping the last clone closes the endpoint;
/// prefer [`Transport::shutdown`] to also wait for the socket to be released.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.inner.shared.config.node_id)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Bind the endpoint and start accepting. Must run inside a tokio runtime.
    ///
    /// `membership` and `addresses` are shared handles the node driver keeps
    /// updating; they are read on every handshake / dial. Fails on an invalid
    /// config, a certificate that is not this node's, TLS setup errors or a
    /// bind error (address in use...).
    pub fn bind(
        config: TransportConfig,
        tls: &TlsIdentity,
        membership: Membership,
        addresses: AddressBook,
    ) -> Result<(Transport, Inbound), TransportError> {
        config.validate()?;
        if tls.identity != Identity::Node(config.node_id) {
            return Err(TransportError::WrongCertificate {
                expected: config.node_id,
                found: tls.identity.clone(),
            });
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let auth = AuthCounters::new();
        let transports = Arc::new(QuicTransports::new(&config)?);
        let quic = QuicConfigs::new(&transports, tls, &membership, &auth)?;
        let endpoint = {
            let _guard = rt.enter();
            endpoint::bind_endpoint(&config, tls, quic.server)?
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Shared {
            config: Arc::new(config),
            endpoint,
            dialing: Arc::new(std::sync::RwLock::new(quic.dialing)),
            quic_transport: transports,
            addresses,
            membership,
            auth,
            counters: Arc::new(Counters::default()),
            shutdown,
        };
        let (sinks, inbound) = inbound::channels(&shared.config);
        let accept = rt.spawn(accept::accept_loop(shared.clone(), sinks));
        info!(target: LOG, node = shared.config.node_id, addr = ?shared.endpoint.local_addr().ok(), "transport listening");
        let inner = Arc::new(Inner {
            shared,
            links: Mutex::new(HashMap::new()),
            bulk_conns: Mutex::new(HashMap::new()),
            shutdown_tx,
            tasks: Mutex::new(vec![accept]),
        });
        Ok((Transport { inner }, inbound))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.shared.config.node_id
    }

    /// The bound UDP address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.shared.endpoint.local_addr()
    }

    /// Swap in new TLS material (a renewed certificate and key, a new CA bundle) without
    /// dropping anything: handshakes accepted from now on use the new server configuration
    /// ([`quinn::Endpoint::set_server_config`]) and dials from now on the new client
    /// configurations; connections already open keep running on what they were established
    /// with. Refused, with nothing changed, if `tls` names another identity than this node
    /// or [`crate::tls::check_usable`] refuses it (key does not fit, expired, not signed by
    /// a CA of its own bundle).
    ///
    /// The QUIC stateless-reset key stays derived from the key the endpoint was bound with
    /// until the next restart (it only has to be stable across restarts, not secret-bound).
    pub fn reload_tls(&self, tls: &TlsIdentity) -> Result<(), TransportError> {
        let shared = &self.inner.shared;
        if tls.identity != Identity::Node(shared.config.node_id) {
            return Err(TransportError::WrongCertificate {
                expected: shared.config.node_id,
                found: tls.identity.clone(),
            });
        }
        crate::tls::check_usable(tls)?;
        let quic = QuicConfigs::new(
            &shared.quic_transport,
            tls,
            &shared.membership,
            &shared.auth,
        )?;
        shared.endpoint.set_server_config(Some(quic.server));
        *shared.dialing.write().unwrap_or_else(|p| p.into_inner()) = quic.dialing;
        info!(target: LOG, node = shared.config.node_id, "TLS configuration reloaded; new handshakes use it");
        Ok(())
    }

    /// The shared address book this transport dials from.
    pub fn addresses(&self) -> &AddressBook {
        &self.inner.shared.addresses
    }

    /// Stop all links, close the endpoint (peers see `CODE_SHUTDOWN`), and
    /// wait (bounded by `idle_timeout_ms`) until the socket is released, so
    /// the same port can be bound again.
    pub async fn shutdown(self) {
        let limit = Duration::from_millis(self.inner.shared.config.idle_timeout_ms);
        self.shutdown_within(limit).await;
    }

    /// [`Transport::shutdown`], waiting at most `wait` for the link tasks to end and the
    /// closed connections to drain. QUIC keeps a closed connection draining for three probe
    /// timeouts (a second or more on a slow or loaded network); a process about to exit only
    /// needs its close frames sent, which takes one turn of the endpoint's driver, and may
    /// give a short `wait`. The port may stay bound for the rest of the draining.
    pub async fn shutdown_within(self, wait: Duration) {
        let inner = &self.inner;
        let _ = inner.shutdown_tx.send(true);
        for link in inner
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            link.stop();
        }
        let slots: Vec<_> = inner
            .bulk_conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            if let Some(c) = slot.lock().await.take() {
                c.close(VarInt::from_u32(CODE_SHUTDOWN), b"shutdown");
            }
        }
        let endpoint = inner.shared.endpoint.clone();
        endpoint.close(VarInt::from_u32(CODE_SHUTDOWN), b"shutdown");
        let tasks: Vec<_> =
            std::mem::take(&mut *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::time::timeout(wait, async {
            for t in tasks {
                let _ = t.await;
            }
            endpoint.wait_idle().await;
        })
        .await;
    }
}
