//! Forwarding what only the leader answers: a follower's HTTP API sends the request to the
//! leader over the cluster's QUIC client protocol, presenting this node's certificate (a
//! member's certificate has the `admin` role there: the request was authorised here, for the
//! HTTP caller, before it was forwarded). One cached connection per leader.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use wraft_proto::{KIND_REQUEST, PeerAddr, Request, RequestError, Response, UNREADABLE_REQUEST};
use wraft_transport::AddressBook;
use wraft_transport::client::{ClientConfig, ClientConnection};
use wraft_transport::frame::FrameError;

/// Handshake deadline for a connection to the leader, milliseconds.
const FORWARD_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Largest forwarded frame: a deploy carries the module.
const FORWARD_FRAME_BYTES_MAX: u32 = (64 << 20) + (64 << 10);

/// Why [`Forwarder::call_member`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemberCallError {
    /// The member closed the stream without answering: it could not decode the request
    /// (a version from before it), or it stopped meanwhile.
    Unanswered(String),
    /// No connection, or it failed.
    Unreachable(String),
}

impl std::fmt::Display for MemberCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberCallError::Unanswered(s) => {
                write!(f, "{s} (closed the stream without an answer)")
            }
            MemberCallError::Unreachable(s) => f.write_str(s),
        }
    }
}

pub(crate) struct Forwarder {
    /// The node's identity, swapped by TLS reloads.
    tls: Arc<super::HttpTls>,
    /// Where every member is (the transport's book, kept current from the log).
    book: AddressBook,
    resolve_timeout_ms: u64,
    /// Open connections per leader, opened under the identity of the generation kept with them.
    conns: Mutex<(u64, HashMap<u64, ClientConnection>)>,
    /// Largest request or answer frame, bytes.
    frame_bytes_max: u32,
}

impl Forwarder {
    pub(crate) fn new(
        tls: Arc<super::HttpTls>,
        book: AddressBook,
        resolve_timeout_ms: u64,
    ) -> Forwarder {
        Forwarder {
            tls,
            book,
            resolve_timeout_ms,
            conns: Mutex::new((0, HashMap::new())),
            frame_bytes_max: FORWARD_FRAME_BYTES_MAX,
        }
    }

    /// Frames up to `bytes` (at least the forwarding default): for calls that carry a whole
    /// module, up to `guest.module_bytes_max` plus the message around it.
    pub(crate) fn with_frame_bytes_max(mut self, bytes: u64) -> Forwarder {
        self.frame_bytes_max =
            bytes.clamp(u64::from(FORWARD_FRAME_BYTES_MAX), u64::from(u32::MAX)) as u32;
        self
    }

    /// Node `id`'s address, if known.
    pub(crate) fn address_of(&self, id: u64) -> Option<PeerAddr> {
        self.book.get(id)
    }

    /// Record where node `id` is (a replicated address, from a snapshot being restored: the
    /// book otherwise learns it only once the snapshot is swapped in).
    pub(crate) fn learn(&self, id: u64, addr: PeerAddr) {
        self.book.insert(id, addr);
    }

    /// Send `request` to node `leader` at `addr` and return its answer. A connection that
    /// fails before an answer makes a command's outcome unknown (`Timeout`, safe to retry
    /// with the same tag) and anything else retryable (`Busy`).
    pub(crate) async fn send(&self, leader: u64, addr: &PeerAddr, request: &Request) -> Response {
        let conn = self.connection(leader, addr).await.map_err(|e| match e {
            RequestError::Busy(m) => {
                RequestError::Busy(format!("cannot forward to the leader: {m}"))
            }
            other => other,
        })?;
        match conn
            .request::<Request, Response>(KIND_REQUEST, request)
            .await
        {
            Ok((_, response)) => response,
            Err(e) => {
                self.conns.lock().await.1.remove(&leader);
                let what =
                    format!("forwarding to the leader, node {leader} at {addr}, failed: {e}");
                Err(match request {
                    Request::Propose { .. }
                    | Request::Deploy { .. }
                    | Request::DeployWith { .. }
                    | Request::RemoveMachine { .. } => {
                        RequestError::Timeout(format!("{what}; the outcome is unknown"))
                    }
                    _ => RequestError::Busy(what),
                })
            }
        }
    }

    /// Send `request` to member `id`, at the address the book has for it, and return its
    /// answer; `Err` says why no answer came (the cached connection is dropped then). For the
    /// module store's calls between members (`crate::modules`).
    pub(crate) async fn call_member(
        &self,
        id: u64,
        request: &Request,
    ) -> Result<Response, MemberCallError> {
        let Some(addr) = self.book.get(id) else {
            return Err(MemberCallError::Unreachable(format!(
                "no address known for node {id}"
            )));
        };
        let conn = self
            .connection(id, &addr)
            .await
            .map_err(|e| MemberCallError::Unreachable(e.to_string()))?;
        match conn
            .request::<Request, Response>(KIND_REQUEST, request)
            .await
        {
            // A node answering on a multiplexed stream says so when it cannot decode the
            // request, rather than closing a stream of its own without an answer.
            Ok((_, Err(RequestError::Rejected(why)))) if why.starts_with(UNREADABLE_REQUEST) => {
                Err(MemberCallError::Unanswered(format!(
                    "node {id} at {addr}: {why}"
                )))
            }
            Ok((_, response)) => Ok(response),
            Err(e) => {
                self.conns.lock().await.1.remove(&id);
                // A node that cannot decode a request (a version older than the request)
                // closes the stream without an answer.
                let unanswered = matches!(
                    &e,
                    wraft_transport::TransportError::Frame(FrameError::Truncated { needed })
                        if *needed == wraft_transport::frame::FRAME_HEADER_BYTES
                );
                let what = format!("node {id} at {addr}: {e}");
                Err(if unanswered {
                    MemberCallError::Unanswered(what)
                } else {
                    MemberCallError::Unreachable(what)
                })
            }
        }
    }

    async fn connection(
        &self,
        leader: u64,
        addr: &PeerAddr,
    ) -> Result<ClientConnection, RequestError> {
        let mut cached = self.conns.lock().await;
        // Read under the lock: a task that read an older identity before a reload must not
        // replace connections made under the newer one.
        let (generation, identity) = self.tls.identity();
        if cached.0 != generation {
            // A TLS reload since these were opened: new connections present the new identity.
            *cached = (generation, HashMap::new());
        }
        let conns = &mut cached.1;
        if let Some(c) = conns.get(&leader) {
            if c.connection().close_reason().is_none() {
                return Ok(c.clone());
            }
            conns.remove(&leader);
        }
        let unreachable = |detail: String| {
            RequestError::Busy(format!("cannot reach node {leader} at {addr}: {detail}"))
        };
        let targets = wraft_transport::client::resolve(addr, self.resolve_timeout_ms)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let config = ClientConfig {
            max_frame_bytes: self.frame_bytes_max,
            connect_timeout_ms: FORWARD_CONNECT_TIMEOUT_MS,
            multiplex: true,
            ..ClientConfig::default()
        };
        let mut last = String::from("no address");
        for target in targets {
            match ClientConnection::connect(target, Some(leader), &identity, &config).await {
                Ok(c) => {
                    conns.insert(leader, c.clone());
                    return Ok(c);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(unreachable(last))
    }
}
