//! Connections: which node to dial (suspects last, the leader first), the staggered race
//! between endpoints, and one request/response exchange on a connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wraft_proto::{KIND_REQUEST, PeerAddr, Request, Response};
use wraft_transport::certs::TlsIdentity;
use wraft_transport::client::{ClientConfig, ClientConnection};
use wraft_transport::frame::FrameError;
use wraft_transport::{CODE_REFUSED, TransportError};

use crate::{
    CONNECT_TIMEOUT_MS, CONNECTION_IDLE_TIMEOUT_MS, CONNECTION_KEEP_ALIVE_MS, Client, ClientError,
    FRAME_BYTES_MAX, NodeRef, SUSPECT_NODE_MS,
};

impl Client {
    /// `node 2 (127.0.0.1:7002)`: the node behind `conn`, dialed at `addr`.
    pub(crate) fn name(&self, addr: &PeerAddr, conn: &ClientConnection) -> NodeRef {
        let id = match conn.server() {
            Some(wraft_transport::Identity::Node(id)) => Some(*id),
            _ => None,
        };
        NodeRef {
            id,
            addr: addr.clone(),
        }
    }

    pub(crate) fn set_answered_by(&self, addr: &PeerAddr, conn: &ClientConnection) {
        let who = self.name(addr, conn);
        if let Ok(mut a) = self.answered_by.lock() {
            *a = Some(who);
        }
    }

    /// The index after `addr` among the endpoints (`fallback + 1` if it is not one: a leader
    /// reached through a redirect).
    pub(crate) fn position_after(&self, addr: &PeerAddr, fallback: usize) -> usize {
        match self.opts.endpoints.iter().position(|a| a == addr) {
            Some(p) => p + 1,
            None => fallback + 1,
        }
    }

    /// The cached connection if it is alive and not to `skip`; otherwise race the endpoints
    /// (see the crate docs) from index `rotate` on, `skip` left out (unless it is the only
    /// one), suspects last, and cache the winner. Every dial ends by `deadline`. On failure,
    /// every address dialed with why.
    pub(crate) async fn any_connection(
        &self,
        rotate: usize,
        skip: Option<&PeerAddr>,
        deadline: Instant,
    ) -> Result<(PeerAddr, ClientConnection), Vec<(PeerAddr, String)>> {
        let usable = |(a, _): &(PeerAddr, ClientConnection)| Some(a) != skip;
        if let Some(found) = self.live_connection(usable) {
            return Ok(found);
        }
        let _dialing = self.dialing.lock().await;
        // Another call may have connected while this one waited.
        if let Some(found) = self.live_connection(usable) {
            return Ok(found);
        }
        let eps = &self.opts.endpoints;
        let rotated: Vec<&PeerAddr> = (0..eps.len())
            .map(|i| &eps[(rotate + i) % eps.len()])
            .collect();
        let mut candidates: Vec<&PeerAddr> = rotated
            .iter()
            .copied()
            .filter(|a| Some(*a) != skip)
            .collect();
        if candidates.is_empty() {
            candidates = rotated;
        }
        // Stable: the given order within each group.
        candidates.sort_by_key(|a| self.is_suspect(a));
        let mut order: VecDeque<PeerAddr> = VecDeque::new();
        for a in candidates {
            if !order.contains(a) {
                order.push_back(a.clone());
            }
        }
        let (winner, failures) = race(
            order,
            Duration::from_millis(self.opts.connect_stagger_ms),
            deadline,
            &self.tls,
        )
        .await;
        for (addr, _) in &failures {
            self.set_suspect(addr, true);
        }
        match winner {
            Some((addr, conn)) => {
                self.set_suspect(&addr, false);
                self.set_connection(Some((addr.clone(), conn.clone())));
                Ok((addr, conn))
            }
            None => Err(failures),
        }
    }

    /// `addr`, or the first endpoint.
    pub(crate) fn target(&self, addr: Option<impl Into<PeerAddr>>) -> PeerAddr {
        addr.map(Into::into)
            .unwrap_or_else(|| self.opts.endpoints[0].clone())
    }

    pub(crate) fn is_suspect(&self, addr: &PeerAddr) -> bool {
        self.suspects.lock().is_ok_and(|s| {
            s.get(addr)
                .is_some_and(|t| t.elapsed() < Duration::from_millis(SUSPECT_NODE_MS))
        })
    }

    pub(crate) fn set_suspect(&self, addr: &PeerAddr, failed: bool) {
        if let Ok(mut s) = self.suspects.lock() {
            if failed {
                s.insert(addr.clone(), Instant::now());
            } else if !s.is_empty() {
                // Every answered call clears its node: skip hashing the address when no node
                // is suspect, as in a healthy cluster.
                s.remove(addr);
            }
        }
    }

    /// The cached connection and its address, if it is still open and `usable`.
    pub(crate) fn live_connection(
        &self,
        usable: impl Fn(&(PeerAddr, ClientConnection)) -> bool,
    ) -> Option<(PeerAddr, ClientConnection)> {
        let guard = self.conn.lock().ok()?;
        guard
            .as_ref()
            .filter(|found| usable(found) && found.1.connection().close_reason().is_none())
            .cloned()
    }

    /// Replace the cached connection.
    pub(crate) fn set_connection(&self, to: Option<(PeerAddr, ClientConnection)>) {
        if let Ok(mut guard) = self.conn.lock() {
            *guard = to;
        }
    }

    /// Drop `broken` from the cache so that the next call dials, unless another call has
    /// already replaced it.
    pub(crate) fn forget_connection(&self, broken: &ClientConnection) {
        if let Ok(mut guard) = self.conn.lock()
            && guard
                .as_ref()
                .is_some_and(|(_, c)| c.connection().stable_id() == broken.connection().stable_id())
        {
            *guard = None;
        }
    }

    pub(crate) fn set_hint(&self, hint: Option<PeerAddr>) {
        if let Ok(mut h) = self.leader_hint.lock() {
            *h = hint;
        }
    }

    /// The cached connection to `addr`, or a new one (replacing the cached one).
    pub(crate) async fn connection_to(
        &self,
        addr: &PeerAddr,
    ) -> Result<ClientConnection, ClientError> {
        let started = Instant::now();
        self.connection_to_within(addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
            .await
            .map_err(|tried| ClientError::Unreachable {
                waited_ms: started.elapsed().as_millis() as u64,
                tried,
            })
    }

    /// [`Client::connection_to`], the handshake bounded by `left` too.
    pub(crate) async fn connection_to_within(
        &self,
        addr: &PeerAddr,
        left: Duration,
    ) -> Result<ClientConnection, String> {
        let to_addr = |(a, _): &(PeerAddr, ClientConnection)| a == addr;
        if let Some((_, c)) = self.live_connection(to_addr) {
            return Ok(c);
        }
        let _dialing = self.dialing.lock().await;
        if let Some((_, c)) = self.live_connection(to_addr) {
            return Ok(c);
        }
        let conn = dial(addr.clone(), self.tls.clone(), connect_timeout_ms(left)).await?;
        self.set_connection(Some((addr.clone(), conn.clone())));
        Ok(conn)
    }
}

/// The handshake deadline of a dial with `left` of the call's budget remaining, milliseconds.
fn connect_timeout_ms(left: Duration) -> u64 {
    (left.as_millis() as u64).clamp(1, CONNECT_TIMEOUT_MS)
}

/// Sleep `d`, or until `deadline` if that comes first.
pub(crate) async fn sleep_within(d: Duration, deadline: Instant) {
    let d = d.min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(d).await;
}

/// Connect to `addr` (every address its name resolves to, in turn: the first that answers
/// wins), each handshake bounded by `timeout_ms`. The error names the address and why:
/// `cannot reach 127.0.0.1:7001: handshake timed out after 1000 ms`.
async fn dial(
    addr: PeerAddr,
    tls: Arc<TlsIdentity>,
    timeout_ms: u64,
) -> Result<ClientConnection, String> {
    let cfg = ClientConfig {
        keep_alive_interval_ms: CONNECTION_KEEP_ALIVE_MS,
        idle_timeout_ms: CONNECTION_IDLE_TIMEOUT_MS,
        connect_timeout_ms: timeout_ms,
        max_frame_bytes: FRAME_BYTES_MAX,
        multiplex: true,
        ..ClientConfig::default()
    };
    let socks = wraft_transport::client::resolve(&addr, timeout_ms)
        .await
        .map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    for sock in socks {
        match ClientConnection::connect(sock, None, &tls, &cfg).await {
            Ok(c) => return Ok(c),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(failures.join("; "))
}

/// Dial `order` happy-eyeballs style: the first at once, each next one `stagger` later (or as
/// soon as every dial started so far has failed); the first handshake to complete wins and the
/// others are dropped, which closes them (the node logs that at debug). Every dial ends by
/// `deadline`. Returns the winner, and the dials that failed with why.
async fn race(
    mut order: VecDeque<PeerAddr>,
    stagger: Duration,
    deadline: Instant,
    tls: &Arc<TlsIdentity>,
) -> (
    Option<(PeerAddr, ClientConnection)>,
    Vec<(PeerAddr, String)>,
) {
    let mut dials = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    let start_next = |dials: &mut tokio::task::JoinSet<_>, order: &mut VecDeque<PeerAddr>| {
        if let Some(addr) = order.pop_front() {
            let tls = tls.clone();
            let left = deadline.saturating_duration_since(Instant::now());
            dials.spawn(async move {
                let r = dial(addr.clone(), tls, connect_timeout_ms(left)).await;
                (addr, r)
            });
        }
    };
    start_next(&mut dials, &mut order);
    let winner = loop {
        if dials.is_empty() {
            if order.is_empty() {
                break None;
            }
            start_next(&mut dials, &mut order);
        }
        tokio::select! {
            done = dials.join_next() => match done {
                Some(Ok((addr, Ok(conn)))) => break Some((addr, conn)),
                Some(Ok((addr, Err(e)))) => failures.push((addr, e)),
                // A dial task panicked or was cancelled: nothing to learn from it.
                Some(Err(_)) | None => {}
            },
            _ = tokio::time::sleep(stagger), if !order.is_empty() => {
                start_next(&mut dials, &mut order);
            }
        }
    };
    // The losers: a dial still in its handshake is cancelled (its endpoint closes with
    // CODE_ABANDONED); one that completed meanwhile is closed the same way.
    dials.abort_all();
    while let Some(done) = dials.join_next().await {
        if let Ok((_, Ok(conn))) = done {
            conn.abandon();
        }
    }
    (winner, failures)
}

impl From<Exchange> for ClientError {
    fn from(e: Exchange) -> Self {
        match e {
            Exchange::Connection(e) => ClientError::Internal(e),
            Exchange::Permanent(e) => e,
        }
    }
}

/// Why one request/response exchange failed.
pub(crate) enum Exchange {
    /// The connection or stream broke: try again, maybe elsewhere. What happened, naming the
    /// connection.
    Connection(String),
    /// The request or its answer cannot cross the wire (too large for a
    /// frame, does not encode or decode): retrying cannot help.
    Permanent(ClientError),
}

pub(crate) async fn exchange(conn: &ClientConnection, req: &Request) -> Result<Response, Exchange> {
    match conn.request::<Request, Response>(KIND_REQUEST, req).await {
        Ok((_, r)) => Ok(r),
        Err(TransportError::Frame(FrameError::TooLarge { len, max })) => {
            Err(Exchange::Permanent(ClientError::Rejected(format!(
                "a request or its answer of {len} bytes exceeds the client's frame limit of \
                 {max} bytes"
            ))))
        }
        Err(
            e @ TransportError::Frame(
                FrameError::Encode { .. }
                | FrameError::Decode { .. }
                | FrameError::UnsupportedVersion { .. }
                | FrameError::BadMagic { .. }
                | FrameError::UnexpectedKind { .. },
            ),
        ) => Err(Exchange::Permanent(ClientError::Internal(e.to_string()))),
        Err(e) => {
            let remote = conn.connection().remote_address();
            // A node that refuses this client (its certificate is not from the cluster's CA,
            // it expired…) closes the connection saying why: no other node will differ.
            use wraft_transport::quinn::{ConnectionError as C, VarInt};
            let refusal = match conn.connection().close_reason() {
                Some(C::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(CODE_REFUSED) => {
                    Some(String::from_utf8_lossy(&c.reason).into_owned())
                }
                // A TLS alert (QUIC crypto error codes 0x100–0x1ff) just after the handshake
                // completed on our side: TLS 1.3 lets the node judge our certificate last.
                Some(C::ConnectionClosed(c))
                    if (0x100..0x200).contains(&u64::from(c.error_code)) =>
                {
                    Some(c.to_string())
                }
                _ => None,
            };
            if let Some(why) = refusal {
                return Err(Exchange::Permanent(ClientError::Rejected(format!(
                    "the node at {remote} refused this client: {why}"
                ))));
            }
            Err(Exchange::Connection(format!(
                "connection to {remote} broke: {e}"
            )))
        }
    }
}
