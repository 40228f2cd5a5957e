//! Client side of `wraft-client/1`: connect to any cluster node with a client
//! certificate and run framed request/response exchanges on bidirectional
//! streams, or tagged on one multiplexed stream ([`crate::mux`]) where the node accepts it.
//! Request and response types are the caller's (postcard).

mod mux;

use futures_util::FutureExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::certs::{Identity, NodeId, TlsIdentity};
use crate::frame::{self, FrameError};
use crate::tls::{self, Alpn, AuthCounters, TlsError};
use crate::transport::{CODE_ABANDONED, CODE_SHUTDOWN, TransportError};

/// Bounds for a client connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Largest request/response frame payload, bytes. Default 16 MiB.
    pub max_frame_bytes: u32,
    /// Handshake deadline, ms. Default 3000.
    pub connect_timeout_ms: u64,
    /// Keep-alive interval, ms. Default 1000.
    pub keep_alive_interval_ms: u64,
    /// Idle timeout, ms. Default 10000.
    pub idle_timeout_ms: u64,
    /// Kernel send/receive buffer asked for on the connection's UDP socket, bytes. Default 4 MiB
    /// (capped by the kernel's `net.core.rmem_max`).
    pub udp_buffer_bytes: usize,
    /// Ask the node for one multiplexed stream for the connection's requests (a wraft node's
    /// client service accepts it) instead of opening a stream per request. Until the node
    /// accepts, and for good if it does not, each request takes a stream of its own. Default
    /// false: a server that is not a wraft node may not understand the request.
    pub multiplex: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            connect_timeout_ms: 3000,
            keep_alive_interval_ms: 1000,
            idle_timeout_ms: 10_000,
            udp_buffer_bytes: crate::udp::DEFAULT_UDP_BUFFER_BYTES,
            multiplex: false,
        }
    }
}

/// An authenticated `wraft-client/1` connection to one node.
#[derive(Debug, Clone)]
pub struct ClientConnection {
    endpoint: Endpoint,
    conn: Connection,
    max_frame_bytes: u32,
    lane: mpsc::Sender<LaneItem>,
    /// The server's identity, read from its verified certificate once at connect: a client
    /// names the node that answered after every call, and parsing the X.509 each time cost
    /// about 1 % of a loaded machine's CPU.
    server: Option<Identity>,
    /// The multiplexed stream, once the node has accepted it.
    mux: mux::MuxSlot,
}

fn server_identity(conn: &Connection) -> Option<Identity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    crate::certs::identity_of(certs.first()?).ok()
}

/// Largest request frame that goes through the connection's send lane, bytes. Bigger ones (a
/// module deploy) are written by their caller, so they never hold up the small ones behind
/// their flow-control waits.
const LANE_FRAME_BYTES_MAX: usize = 64 << 10;
/// Requests a send lane holds before callers wait for room.
const LANE_QUEUE_MAX: usize = 4096;

/// A request frame for the send lane, and where its stream's receiving half goes.
type LaneItem = (Vec<u8>, oneshot::Sender<Result<RecvStream, TransportError>>);

/// Opens a stream per request and writes its frame, for every request waiting, in one poll of
/// one task: then quinn packs the frames of a burst of requests (callers woken by the same
/// incoming packet) into a few packets instead of one each. Ends when every handle to the
/// connection is gone.
async fn send_lane(conn: Connection, mut rx: mpsc::Receiver<LaneItem>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        gather(first, &mut rx, &mut batch).await;
        for (frame, reply) in batch.drain(..) {
            // A caller that gave up (timed out, dropped its future) must not have its request
            // sent after all: check before taking a stream and again before writing.
            if reply.is_closed() {
                continue;
            }
            let opened = async {
                let (mut send, recv) = conn.open_bi().await?;
                if reply.is_closed() {
                    let _ = send.reset(VarInt::from_u32(0));
                    return Err(TransportError::Connection(
                        quinn::ConnectionError::LocallyClosed,
                    ));
                }
                send.write_all(&frame)
                    .await
                    .map_err(|e| FrameError::Io(e.into()))?;
                let _ = send.finish();
                Ok::<_, TransportError>(recv)
            };
            let opened = opened.await;
            let _ = reply.send(opened);
        }
    }
}

/// Put `first` and every request queued behind it on `rx` (up to [`LANE_QUEUE_MAX`]) in
/// `batch`, for one write. The caller that woke the lane usually has siblings that are runnable
/// too (their responses arrived in the same packet): they get to queue their requests first.
async fn gather<T>(first: T, rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
    tokio::task::yield_now().await;
    batch.push(first);
    while batch.len() < LANE_QUEUE_MAX {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}

/// Consume the end of `recv` if it has already arrived, without waiting; true if it had.
///
/// Call it after reading the last frame of a one-request or one-response stream. A peer that
/// finishes its send side right after writing puts the end (FIN) in the same packet as the
/// frame, so it is normally there. quinn answers the drop of a receive stream whose end was not
/// read with a STOP_SENDING frame even when every byte has arrived, and that frame goes out in
/// a packet of its own, which wakes the peer's process once per request for nothing.
pub fn take_stream_end(recv: &mut RecvStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(recv.read(&mut byte).now_or_never(), Some(Ok(None)))
}

impl ClientConnection {
    /// Connect to the node at `addr` presenting `tls` (a client certificate,
    /// or a node certificate for node-to-node forwarding). If `node` is
    /// given, the server's certificate must name that node; otherwise any
    /// node of the cluster is accepted. Binds an ephemeral UDP port.
    pub async fn connect(
        addr: SocketAddr,
        node: Option<NodeId>,
        tls: &TlsIdentity,
        config: &ClientConfig,
    ) -> Result<ClientConnection, TransportError> {
        // A client dials whichever node listens at `addr`: name the address, not a node id.
        let err = |detail: String| match node {
            Some(peer) => TransportError::Connect {
                peer,
                addr: addr.into(),
                detail,
            },
            None => TransportError::Unreachable {
                addr: addr.into(),
                detail,
            },
        };
        let rustls_cfg = tls::client_config(tls, Alpn::Client, &AuthCounters::new())?;
        let quic = QuicClientConfig::try_from(rustls_cfg)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cc = quinn::ClientConfig::new(Arc::new(quic));
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(Duration::from_millis(config.keep_alive_interval_ms)));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms)).map_err(
                |_| TransportError::Config {
                    key: "idle_timeout_ms",
                    msg: "too large".into(),
                },
            )?,
        ));
        cc.transport_config(Arc::new(t));
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let bind_err = |source| TransportError::Bind { addr: bind, source };
        let socket = crate::udp::bind(bind, config.udp_buffer_bytes).map_err(bind_err)?;
        let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
        let endpoint = Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(bind_err)?;
        let name = match node {
            Some(id) => tls::server_name_for(id),
            None => tls::ANY_NODE_SERVER_NAME.to_owned(),
        };
        let connecting = endpoint
            .connect_with(cc, addr, &name)
            .map_err(|e| err(e.to_string()))?;
        // If the handshake times out, fails, or this future is dropped (a client racing several
        // nodes keeps the first to answer), tell the node at once: it then ends its half of the
        // handshake quietly instead of waiting it out.
        let mut abandon = AbandonOnDrop(Some(endpoint.clone()));
        let conn = match tokio::time::timeout(
            Duration::from_millis(config.connect_timeout_ms),
            connecting,
        )
        .await
        {
            Err(_) => {
                return Err(err(format!(
                    "handshake timed out after {} ms",
                    config.connect_timeout_ms
                )));
            }
            Ok(Err(e)) => return Err(err(e.to_string())),
            Ok(Ok(c)) => c,
        };
        abandon.0 = None;
        let (lane, lane_rx) = mpsc::channel(LANE_QUEUE_MAX);
        tokio::spawn(send_lane(conn.clone(), lane_rx));
        let server = server_identity(&conn);
        let mux = mux::MuxSlot::default();
        if config.multiplex {
            // Opened in the background: the first requests need not wait for it.
            tokio::spawn(mux::open(
                conn.clone(),
                mux.clone(),
                Duration::from_millis(config.connect_timeout_ms),
                config.max_frame_bytes,
            ));
        }
        Ok(ClientConnection {
            endpoint,
            conn,
            max_frame_bytes: config.max_frame_bytes,
            lane,
            server,
            mux,
        })
    }

    /// The server's identity, from its (verified) certificate. Cheap: read once at connect.
    pub fn server(&self) -> Option<&Identity> {
        self.server.as_ref()
    }

    /// Open a raw bidirectional stream (for streaming exchanges).
    pub async fn open_stream(&self) -> Result<(SendStream, RecvStream), TransportError> {
        Ok(self.conn.open_bi().await?)
    }

    /// One request/response exchange: `req` as one frame of `kind`, answered by one response
    /// frame. On the multiplexed stream if the connection has one and the request is small;
    /// otherwise on a fresh stream whose send side is finished after the request. Fails on
    /// connection loss, a malformed response, or a stream that ends without a response.
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: u8,
        req: &Req,
    ) -> Result<(u8, Resp), TransportError> {
        if let Some(mux) = self.mux.get()
            && let Some(answer) = mux.request(kind, req, self.max_frame_bytes).await
        {
            return answer;
        }
        let buf =
            frame::encode_msg_frame(kind, req, self.max_frame_bytes, frame::MSG_CAPACITY_DEFAULT)?;
        let mut recv = if buf.len() <= LANE_FRAME_BYTES_MAX {
            let (tx, rx) = oneshot::channel();
            let closed = || TransportError::Connection(quinn::ConnectionError::LocallyClosed);
            self.lane.send((buf, tx)).await.map_err(|_| closed())?;
            rx.await.map_err(|_| closed())??
        } else {
            let (mut send, recv) = self.open_stream().await?;
            tokio::io::AsyncWriteExt::write_all(&mut send, &buf)
                .await
                .map_err(FrameError::from)?;
            let _ = send.finish();
            recv
        };
        match frame::read_msg(&mut recv, self.max_frame_bytes).await? {
            Some(r) => {
                take_stream_end(&mut recv);
                Ok(r)
            }
            None => Err(FrameError::Truncated {
                needed: frame::FRAME_HEADER_BYTES,
            }
            .into()),
        }
    }

    /// True once the node has accepted a multiplexed stream for this connection's requests
    /// (and it has not ended since).
    pub fn multiplexed(&self) -> bool {
        self.mux.get().is_some_and(|m| m.is_open())
    }

    /// The underlying quinn connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Close the connection now with `CODE_ABANDONED` (a client keeping another node's
    /// connection), without waiting for the peer to be told.
    pub fn abandon(&self) {
        self.conn.close(
            VarInt::from_u32(CODE_ABANDONED),
            b"another node answered first",
        );
    }

    /// Close the connection and wait (briefly) for the peer to be told.
    pub async fn close(self) {
        self.conn
            .close(VarInt::from_u32(CODE_SHUTDOWN), b"client closing");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Closes a client endpoint whose handshake was not completed, with [`CODE_ABANDONED`], when
/// dropped armed. quinn would otherwise close it implicitly (code 0) only once the endpoint
/// driver notices, or not at all if the process exits first; the node then waits out its
/// handshake timeout.
struct AbandonOnDrop(Option<Endpoint>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(endpoint) = self.0.take() {
            endpoint.close(VarInt::from_u32(CODE_ABANDONED), b"handshake abandoned");
        }
    }
}

/// Resolve `addr` (an IP address, or a DNS name through the system resolver) to the socket
/// addresses to try, in the resolver's order, waiting at most `timeout_ms`. Clients call it
/// before every new connection, so a node whose name moved is found at its new address.
pub async fn resolve(
    addr: &wraft_proto::PeerAddr,
    timeout_ms: u64,
) -> Result<Vec<SocketAddr>, TransportError> {
    use crate::transport::Resolve;
    if let Some(a) = addr.socket_addr() {
        return Ok(vec![a]);
    }
    let err = |detail: String| TransportError::Resolve {
        peer: 0,
        addr: addr.clone(),
        detail,
    };
    let found = tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        crate::transport::DnsResolver.resolve(addr),
    )
    .await
    .map_err(|_| err(format!("no answer within {timeout_ms} ms")))?
    .map_err(|e| err(e.to_string()))?;
    if found.is_empty() {
        return Err(err("the name has no addresses".into()));
    }
    Ok(found)
}
