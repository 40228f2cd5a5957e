//! The node transport: one quinn endpoint serving and dialing raft links,
//! bulk connections and client connections.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::certs::{Identity, NodeId, TlsIdentity, identity_of};
use crate::frame::{self, FrameError, KIND_HELLO, KIND_RAFT};
use crate::tls::{self, Alpn, AuthCounters, Membership, Refusal, TlsError};

/// QUIC application error code: normal shutdown.
pub const CODE_SHUTDOWN: u32 = 0;
/// QUIC application error code: peer refused (see the reason text).
pub const CODE_REFUSED: u32 = 1;
/// QUIC application error code (stream STOP_SENDING): malformed frame on this stream.
pub const CODE_BAD_FRAME: u32 = 2;
/// QUIC application error code: link replaced or torn down by this side.
pub const CODE_LINK_CLOSED: u32 = 3;

const LOG: &str = "wraft_transport";

/// Node id → address of its transport endpoint. Shared with the node driver,
/// which updates it as membership changes; links read it on every (re)connect.
#[derive(Clone, Debug, Default)]
pub struct AddressBook(Arc<RwLock<BTreeMap<NodeId, SocketAddr>>>);

impl AddressBook {
    /// A book holding `entries`.
    pub fn new(entries: impl IntoIterator<Item = (NodeId, SocketAddr)>) -> AddressBook {
        AddressBook(Arc::new(RwLock::new(entries.into_iter().collect())))
    }

    /// Address of `id`, if known.
    pub fn get(&self, id: NodeId) -> Option<SocketAddr> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    /// Set (or replace) the address of `id`; used at the next (re)connect.
    pub fn insert(&self, id: NodeId, addr: SocketAddr) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, addr);
    }

    /// Forget `id`.
    pub fn remove(&self, id: NodeId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// A copy of the whole book.
    pub fn snapshot(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

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
        addr: SocketAddr,
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

/// What [`Transport::send`] did with a message. `send` never blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Appended to the peer's queue.
    Queued,
    /// The queue was full: its `dropped_msgs` older messages were discarded and
    /// this message queued alone (newest wins). The peer will need to be
    /// resynchronised from its acks.
    QueueOverflowed {
        /// How many queued messages were discarded.
        dropped_msgs: usize,
    },
    /// The link is down and backing off before reconnecting; the message was
    /// discarded (it would be stale by the time the link is back).
    DroppedLinkDown,
}

/// Per-link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Dialing; messages queue (up to the bounds) and go out once connected.
    Connecting,
    /// Connected; the link task drains the queue onto the stream.
    Connected,
    /// Last attempt failed or the link dropped; waiting to retry. Sends are discarded.
    Backoff,
}

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
}

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

/// The endpoint configuration, with a stateless-reset key that survives restarts.
///
/// A node killed without closing its connections (crash, `kill -9`) leaves its
/// peers holding connections to a process that no longer exists. When it comes
/// back on the same address, the new process answers their packets with QUIC
/// stateless resets — but a peer only honours a reset whose token was derived
/// from the key that issued the connection ids, so with quinn's default (a
/// random key per process) the peers ignore them and notice the restart only
/// at the idle timeout. Deriving the key from the node's private key (through
/// a BLAKE3 KDF with its own context, so the key itself is never used twice)
/// makes every incarnation of a node issue the same tokens. The connection-id
/// generator's key is derived the same way: quinn silently drops packets whose
/// connection id its generator does not recognise, so a new process with a
/// random generator key would never answer the old ids at all. Together, peers
/// drop the dead connection at their first packet and reconnect at once
/// (measured: ~50 ms instead of the idle timeout). Both keys are KDF outputs
/// with distinct contexts; learning one (the connection-id key is only a
/// keyed FxHash) reveals neither the other nor the node's private key.
fn endpoint_config(tls: &TlsIdentity) -> quinn::EndpointConfig {
    let reset = blake3::derive_key(
        "wraft-transport 2026-11 QUIC stateless reset key",
        tls.key.secret_der(),
    );
    let cid = blake3::derive_key(
        "wraft-transport 2026-11 QUIC connection id key",
        tls.key.secret_der(),
    );
    let cid_key = u64::from_le_bytes([
        cid[0], cid[1], cid[2], cid[3], cid[4], cid[5], cid[6], cid[7],
    ]);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

#[derive(Serialize, Deserialize, Debug)]
struct Hello {
    from: NodeId,
    to: NodeId,
}

struct LinkQueue {
    msgs: VecDeque<Bytes>,
    bytes: usize,
    state: LinkState,
    sent: u64,
    dropped_overflow: u64,
    dropped_down: u64,
    connects: u64,
}

impl LinkQueue {
    fn clear_as_down(&mut self) {
        self.dropped_down += self.msgs.len() as u64;
        self.msgs.clear();
        self.bytes = 0;
    }
}

struct PeerLink {
    id: NodeId,
    queue: Mutex<LinkQueue>,
    notify: Notify,
    stop: AtomicBool,
    stop_notify: Notify,
}

impl PeerLink {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the link task to exit. `notify_waiters` wakes a task already
    /// waiting; the stored `notify_one` permit catches one about to wait.
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
        self.stop_notify.notify_one();
    }

    fn set_state(&self, s: LinkState) {
        let mut q = self.lock();
        q.state = s;
        if s == LinkState::Backoff {
            q.clear_as_down();
        }
    }
}

#[derive(Default)]
struct Counters {
    raft_msgs_received: AtomicU64,
    bad_frames: AtomicU64,
}

/// State shared by the transport handle and its tasks (no back-pointer to
/// `Inner`, so dropping the last `Transport` shuts everything down).
#[derive(Clone)]
struct Shared {
    config: Arc<TransportConfig>,
    endpoint: Endpoint,
    raft_client: quinn::ClientConfig,
    bulk_client: quinn::ClientConfig,
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
        let transport = Arc::new(config.quinn_transport()?);

        let server_tls = tls::server_config(tls, membership.clone(), &auth)?;
        let quic_server = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(transport.clone());

        let client_cfg = |alpn: Alpn,
                          transport: Arc<quinn::TransportConfig>|
         -> Result<quinn::ClientConfig, TransportError> {
            let c = tls::client_config(tls, alpn, &auth)?;
            let q = QuicClientConfig::try_from(c).map_err(|e| TlsError::Verifier(e.to_string()))?;
            let mut cc = quinn::ClientConfig::new(Arc::new(q));
            cc.transport_config(transport);
            Ok(cc)
        };
        let raft_client = client_cfg(Alpn::Raft, Arc::new(config.raft_link_transport()?))?;
        let bulk_client = client_cfg(Alpn::Bulk, transport.clone())?;

        let endpoint = {
            let _guard = rt.enter();
            let bind_err = |source| TransportError::Bind {
                addr: config.listen_addr,
                source,
            };
            let socket =
                crate::udp::bind(config.listen_addr, config.udp_buffer_bytes).map_err(bind_err)?;
            let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
            Endpoint::new(endpoint_config(tls), Some(server), socket, runtime).map_err(bind_err)?
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Shared {
            config: Arc::new(config),
            endpoint,
            raft_client,
            bulk_client,
            addresses,
            membership,
            auth,
            counters: Arc::new(Counters::default()),
            shutdown,
        };
        let (raft_tx, raft) = mpsc::channel(shared.config.inbound_msgs_max);
        let (bulk_tx, bulk) = mpsc::channel(shared.config.inbound_streams_max);
        let (client_tx, clients) = mpsc::channel(shared.config.inbound_streams_max);
        let accept = rt.spawn(accept_loop(
            shared.clone(),
            Sinks {
                raft: raft_tx,
                bulk: bulk_tx,
                clients: client_tx,
            },
        ));
        info!(target: LOG, node = shared.config.node_id, addr = ?shared.endpoint.local_addr().ok(), "transport listening");
        let inner = Arc::new(Inner {
            shared,
            links: Mutex::new(HashMap::new()),
            bulk_conns: Mutex::new(HashMap::new()),
            shutdown_tx,
            tasks: Mutex::new(vec![accept]),
        });
        Ok((
            Transport { inner },
            Inbound {
                raft,
                bulk,
                clients,
            },
        ))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.shared.config.node_id
    }

    /// The bound UDP address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.shared.endpoint.local_addr()
    }

    /// The shared address book this transport dials from.
    pub fn addresses(&self) -> &AddressBook {
        &self.inner.shared.addresses
    }

    /// Queue `payload` for node `to` and return immediately; never waits on
    /// the network. Cost: one short mutex section and, on the first send to a
    /// peer, spawning its link task.
    ///
    /// Overflow policy (see [`SendOutcome`]): when adding the message would
    /// exceed `peer_queue_msgs_max` or `peer_queue_bytes_max`, every queued
    /// message is discarded and this one is queued alone. While the link is
    /// backing off, messages are discarded. Raft tolerates both: it
    /// resynchronises a peer from its acks.
    ///
    /// Fails if the payload exceeds `max_frame_bytes`, `to` is this node or
    /// has no address, or the transport is shut down.
    pub fn send(&self, to: NodeId, payload: Bytes) -> Result<SendOutcome, TransportError> {
        let cfg = &self.inner.shared.config;
        if payload.len() > cfg.max_frame_bytes as usize {
            return Err(FrameError::TooLarge {
                len: payload.len() as u64,
                max: cfg.max_frame_bytes,
            }
            .into());
        }
        if *self.inner.shared.shutdown.borrow() {
            return Err(TransportError::ShutDown);
        }
        if to == cfg.node_id {
            return Err(TransportError::SendToSelf(to));
        }
        if self.inner.shared.addresses.get(to).is_none() {
            return Err(TransportError::UnknownPeer(to));
        }
        let link = self.link(to);
        let outcome = {
            let mut q = link.lock();
            if q.state == LinkState::Backoff {
                q.dropped_down += 1;
                return Ok(SendOutcome::DroppedLinkDown);
            }
            let over = q.msgs.len() + 1 > cfg.peer_queue_msgs_max
                || q.bytes + payload.len() > cfg.peer_queue_bytes_max;
            let outcome = if over {
                let dropped = q.msgs.len();
                q.dropped_overflow += dropped as u64;
                q.msgs.clear();
                q.bytes = 0;
                SendOutcome::QueueOverflowed {
                    dropped_msgs: dropped,
                }
            } else {
                SendOutcome::Queued
            };
            q.bytes += payload.len();
            q.msgs.push_back(payload);
            outcome
        };
        if let SendOutcome::QueueOverflowed { dropped_msgs } = outcome {
            debug!(target: LOG, peer = to, dropped_msgs, "peer queue overflowed; dropped queued messages");
        }
        link.notify.notify_one();
        Ok(outcome)
    }

    /// [`send`](Self::send) a postcard-encoded message.
    pub fn send_msg<T: Serialize>(
        &self,
        to: NodeId,
        msg: &T,
    ) -> Result<SendOutcome, TransportError> {
        let payload = frame::encode_payload(msg)?;
        self.send(to, Bytes::from(payload))
    }

    fn link(&self, to: NodeId) -> Arc<PeerLink> {
        let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = links.get(&to) {
            return l.clone();
        }
        let link = Arc::new(PeerLink {
            id: to,
            queue: Mutex::new(LinkQueue {
                msgs: VecDeque::new(),
                bytes: 0,
                state: LinkState::Connecting,
                sent: 0,
                dropped_overflow: 0,
                dropped_down: 0,
                connects: 0,
            }),
            notify: Notify::new(),
            stop: AtomicBool::new(false),
            stop_notify: Notify::new(),
        });
        links.insert(to, link.clone());
        let task = tokio::spawn(link_task(self.inner.shared.clone(), link.clone()));
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        link
    }

    /// Tear down the outbound link to `to` (e.g. after it left the cluster);
    /// queued messages are discarded. A later `send` creates a fresh link.
    pub fn disconnect_peer(&self, to: NodeId) {
        let link = self
            .inner
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&to);
        if let Some(link) = link {
            link.stop();
        }
    }

    /// Counters of the outbound link to `to`, if one exists.
    pub fn peer_stats(&self, to: NodeId) -> Option<PeerStats> {
        let link = self
            .inner
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .cloned()?;
        let q = link.lock();
        Some(PeerStats {
            state: q.state,
            queued_msgs: q.msgs.len(),
            queued_bytes: q.bytes,
            sent_msgs: q.sent,
            dropped_overflow_msgs: q.dropped_overflow,
            dropped_link_down_msgs: q.dropped_down,
            connects: q.connects,
        })
    }

    /// Transport-wide counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.shared.counters;
        TransportStats {
            refusals: self.inner.shared.auth.snapshot(),
            raft_msgs_received: c.raft_msgs_received.load(Ordering::Relaxed),
            bad_frames: c.bad_frames.load(Ordering::Relaxed),
        }
    }

    /// Open a bidirectional stream to `to` on the bulk connection (dialed on
    /// first use with ALPN `wraft-bulk/1`, separate from the raft link so
    /// bulk data never shares its flow-control window). Waits for the
    /// handshake on first use, and for a stream credit if the peer's
    /// `max_concurrent_bidi_streams` are in use.
    pub async fn open_bulk(&self, to: NodeId) -> Result<BulkStream, TransportError> {
        let conn = self.bulk_connection(to).await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(BulkStream {
            peer: to,
            send,
            recv,
        })
    }

    async fn bulk_connection(&self, to: NodeId) -> Result<Connection, TransportError> {
        if *self.inner.shared.shutdown.borrow() {
            return Err(TransportError::ShutDown);
        }
        let slot = self
            .inner
            .bulk_conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(to)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = dial(&self.inner.shared, to, &self.inner.shared.bulk_client).await?;
        info!(target: LOG, peer = to, "bulk connection established");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Stop all links, close the endpoint (peers see `CODE_SHUTDOWN`), and
    /// wait (bounded by `idle_timeout_ms`) until the socket is released, so
    /// the same port can be bound again.
    pub async fn shutdown(self) {
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
        let limit = Duration::from_millis(inner.shared.config.idle_timeout_ms);
        let _ = tokio::time::timeout(limit, async {
            for t in tasks {
                let _ = t.await;
            }
            endpoint.wait_idle().await;
        })
        .await;
    }
}

async fn dial(
    shared: &Shared,
    to: NodeId,
    cfg: &quinn::ClientConfig,
) -> Result<Connection, TransportError> {
    let addr = shared
        .addresses
        .get(to)
        .ok_or(TransportError::UnknownPeer(to))?;
    let err = |detail: String| TransportError::Connect {
        peer: to,
        addr,
        detail,
    };
    let connecting = shared
        .endpoint
        .connect_with(cfg.clone(), addr, &tls::server_name_for(to))
        .map_err(|e| err(e.to_string()))?;
    match tokio::time::timeout(
        Duration::from_millis(shared.config.connect_timeout_ms),
        connecting,
    )
    .await
    {
        Err(_) => Err(err(format!(
            "handshake timed out after {} ms",
            shared.config.connect_timeout_ms
        ))),
        Ok(Err(e)) => Err(err(e.to_string())),
        Ok(Ok(c)) => Ok(c),
    }
}

fn jittered(ms: u64) -> Duration {
    // Uniform in [ms/2, ms]: spreads reconnect storms after a partition heals.
    let lo = ms / 2;
    Duration::from_millis(fastrand::u64(lo..=ms.max(lo)))
}

async fn link_task(shared: Shared, link: Arc<PeerLink>) {
    let cfg = shared.config.clone();
    let mut backoff_ms = cfg.reconnect_backoff_min_ms;
    let mut failures: u32 = 0;
    loop {
        if link.stop.load(Ordering::Acquire) || *shared.shutdown.borrow() {
            break;
        }
        link.set_state(LinkState::Connecting);
        match connect_link(&shared, link.id).await {
            Ok((conn, stream)) => {
                {
                    let mut q = link.lock();
                    q.state = LinkState::Connected;
                    q.connects += 1;
                }
                if failures > 0 {
                    info!(target: LOG, peer = link.id, after_failures = failures, "raft link re-established");
                } else {
                    debug!(target: LOG, peer = link.id, "raft link established");
                }
                failures = 0;
                backoff_ms = cfg.reconnect_backoff_min_ms;
                let reason = pump(&link, &conn, stream).await;
                conn.close(VarInt::from_u32(CODE_LINK_CLOSED), b"link closed");
                if link.stop.load(Ordering::Acquire) || *shared.shutdown.borrow() {
                    break;
                }
                warn!(target: LOG, peer = link.id, %reason, "raft link down; dropping its queue and reconnecting");
            }
            Err(e) => {
                failures += 1;
                // Log the first failure and then every 16th, to bound log volume for a dead peer.
                if failures == 1 || failures.is_multiple_of(16) {
                    warn!(target: LOG, peer = link.id, failures, error = %e, "raft link connect failed");
                } else {
                    debug!(target: LOG, peer = link.id, failures, error = %e, "raft link connect failed");
                }
            }
        }
        link.set_state(LinkState::Backoff);
        let delay = jittered(backoff_ms);
        backoff_ms = (backoff_ms.saturating_mul(2)).min(cfg.reconnect_backoff_max_ms);
        let mut shutdown = shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = link.stop_notify.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    link.set_state(LinkState::Backoff);
}

async fn connect_link(
    shared: &Shared,
    to: NodeId,
) -> Result<(Connection, SendStream), TransportError> {
    let conn = dial(shared, to, &shared.raft_client).await?;
    let mut stream = conn.open_uni().await?;
    let hello = frame::encode_payload(&Hello {
        from: shared.config.node_id,
        to,
    })?;
    frame::write_frame(
        &mut stream,
        KIND_HELLO,
        &hello,
        shared.config.max_frame_bytes,
    )
    .await?;
    Ok((conn, stream))
}

/// Drain the queue onto the stream until the link fails or is stopped.
async fn pump(link: &PeerLink, conn: &Connection, mut stream: SendStream) -> String {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        if link.stop.load(Ordering::Acquire) {
            return "stopped".into();
        }
        let notified = link.notify.notified();
        let batch: Vec<Bytes> = {
            let mut q = link.lock();
            q.bytes = 0;
            q.msgs.drain(..).collect()
        };
        if batch.is_empty() {
            tokio::select! {
                _ = notified => continue,
                _ = link.stop_notify.notified() => return "stopped".into(),
                e = conn.closed() => return format!("connection closed: {e}"),
                r = stream.stopped() => return format!("peer stopped the stream: {r:?}"),
            }
        }
        chunks.clear();
        for payload in &batch {
            // Payload sizes were checked in `send`, so encoding cannot fail here.
            match frame::encode_header(KIND_RAFT, payload, u32::MAX) {
                Ok(h) => chunks.push(Bytes::copy_from_slice(&h)),
                Err(e) => return format!("encode: {e}"),
            }
            chunks.push(payload.clone());
        }
        tokio::select! {
            r = stream.write_all_chunks(&mut chunks) => {
                if let Err(e) = r {
                    return format!("write failed: {e}");
                }
                link.lock().sent += batch.len() as u64;
            }
            _ = link.stop_notify.notified() => return "stopped".into(),
            e = conn.closed() => return format!("connection closed: {e}"),
        }
    }
}

struct Sinks {
    raft: mpsc::Sender<(NodeId, Bytes)>,
    bulk: mpsc::Sender<BulkStream>,
    clients: mpsc::Sender<ClientStream>,
}

impl Clone for Sinks {
    fn clone(&self) -> Self {
        Sinks {
            raft: self.raft.clone(),
            bulk: self.bulk.clone(),
            clients: self.clients.clone(),
        }
    }
}

async fn accept_loop(shared: Shared, sinks: Sinks) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.changed() => None,
        };
        let Some(incoming) = incoming else { break };
        let shared = shared.clone();
        let sinks = sinks.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(shared, sinks, conn).await,
                // The verifier already logged the certificate reason, if that was it.
                Err(e) => {
                    warn!(target: tls::AUTH_LOG_TARGET, %remote, error = %e, "incoming handshake failed")
                }
            }
        });
    }
}

fn peer_identity(conn: &Connection) -> Option<Identity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    identity_of(certs.first()?).ok()
}

fn negotiated_alpn(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

fn refuse(shared: &Shared, conn: &Connection, r: Refusal) {
    let context = format!("connection from {}", conn.remote_address());
    shared.auth.record(&r, &context);
    let reason = r.to_string();
    conn.close(VarInt::from_u32(CODE_REFUSED), reason.as_bytes());
}

async fn serve_connection(shared: Shared, sinks: Sinks, conn: Connection) {
    let Some(identity) = peer_identity(&conn) else {
        refuse(
            &shared,
            &conn,
            Refusal::NoIdentity("no verified peer certificate".into()),
        );
        return;
    };
    let alpn = match tls::check_alpn_identity(negotiated_alpn(&conn).as_deref(), &identity) {
        Ok(a) => a,
        Err(r) => return refuse(&shared, &conn, r),
    };
    let remote = conn.remote_address();
    debug!(target: LOG, %remote, %identity, %alpn, "accepted connection");
    match (alpn, identity) {
        (Alpn::Raft, Identity::Node(from)) => serve_raft(shared, sinks.raft, conn, from).await,
        (Alpn::Bulk, Identity::Node(from)) => loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    if sinks
                        .bulk
                        .send(BulkStream {
                            peer: from,
                            send,
                            recv,
                        })
                        .await
                        .is_err()
                    {
                        conn.close(VarInt::from_u32(CODE_SHUTDOWN), b"bulk receiver gone");
                        return;
                    }
                }
                Err(e) => {
                    debug!(target: LOG, peer = from, error = %e, "bulk connection ended");
                    return;
                }
            }
        },
        (Alpn::Client, identity) => loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let s = ClientStream {
                        identity: identity.clone(),
                        remote,
                        send,
                        recv,
                    };
                    if sinks.clients.send(s).await.is_err() {
                        conn.close(VarInt::from_u32(CODE_SHUTDOWN), b"client receiver gone");
                        return;
                    }
                }
                Err(e) => {
                    debug!(target: LOG, %identity, error = %e, "client connection ended");
                    return;
                }
            }
        },
        // check_alpn_identity refused clients on Raft/Bulk.
        (Alpn::Raft | Alpn::Bulk, Identity::Client(_)) => {}
    }
}

async fn serve_raft(
    shared: Shared,
    sink: mpsc::Sender<(NodeId, Bytes)>,
    conn: Connection,
    from: NodeId,
) {
    loop {
        let recv = match conn.accept_uni().await {
            Ok(r) => r,
            Err(e) => {
                debug!(target: LOG, peer = from, error = %e, "incoming raft connection ended");
                return;
            }
        };
        let shared = shared.clone();
        let sink = sink.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            read_raft_stream(shared, sink, conn, from, recv).await;
        });
    }
}

async fn read_raft_stream(
    shared: Shared,
    sink: mpsc::Sender<(NodeId, Bytes)>,
    conn: Connection,
    from: NodeId,
    mut recv: RecvStream,
) {
    let max = shared.config.max_frame_bytes;
    let bad_frame = |recv: &mut RecvStream, e: &FrameError| {
        shared.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
        warn!(target: LOG, peer = from, remote = %conn.remote_address(), error = %e, "closing raft stream: bad frame");
        let _ = recv.stop(VarInt::from_u32(CODE_BAD_FRAME));
    };
    // The first frame must be a hello naming the certificate's node and us.
    let hello = match frame::read_frame(&mut recv, max).await {
        Ok(Some(f)) if f.kind == KIND_HELLO => match f.decode::<Hello>() {
            Ok(h) => h,
            Err(e) => return bad_frame(&mut recv, &e),
        },
        Ok(Some(f)) => {
            return bad_frame(
                &mut recv,
                &FrameError::UnexpectedKind {
                    expected: "hello",
                    found: f.kind,
                },
            );
        }
        Ok(None) => return,
        Err(e) => return bad_frame(&mut recv, &e),
    };
    if hello.from != from {
        return refuse(
            &shared,
            &conn,
            Refusal::IdMismatch {
                claimed: hello.from,
                cert: Identity::Node(from),
            },
        );
    }
    if hello.to != shared.config.node_id {
        warn!(target: LOG, peer = from, addressed_to = hello.to, me = shared.config.node_id,
            "raft link addressed to another node (stale address book?); closing");
        conn.close(VarInt::from_u32(CODE_REFUSED), b"wrong destination node");
        return;
    }
    loop {
        match frame::read_frame(&mut recv, max).await {
            Ok(Some(_)) if !shared.membership.contains(from) => {
                // Removed from the cluster after the handshake: stop listening to it.
                return refuse(&shared, &conn, Refusal::NotAMember(from));
            }
            Ok(Some(f)) if f.kind == KIND_RAFT => {
                shared
                    .counters
                    .raft_msgs_received
                    .fetch_add(1, Ordering::Relaxed);
                if sink.send((from, Bytes::from(f.payload))).await.is_err() {
                    let _ = recv.stop(VarInt::from_u32(CODE_SHUTDOWN));
                    return;
                }
            }
            Ok(Some(f)) => {
                return bad_frame(
                    &mut recv,
                    &FrameError::UnexpectedKind {
                        expected: "raft",
                        found: f.kind,
                    },
                );
            }
            Ok(None) => return,
            Err(FrameError::Io(e)) => {
                debug!(target: LOG, peer = from, error = %e, "raft stream ended");
                return;
            }
            Err(e) => return bad_frame(&mut recv, &e),
        }
    }
}
