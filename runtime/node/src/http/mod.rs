//! The HTTP/JSON API and the web console, over HTTPS on `http.listen`.
//!
//! Every node serves it. Requests become the same [`Request`]s QUIC clients send and go
//! through the same [`Api`] (authorisation, bounds, deadlines, metrics); what only the
//! leader can answer is forwarded to it over the cluster's QUIC client protocol
//! ([`forward`]), so a plain HTTP client can talk to any node. The routes, bodies and error
//! codes are in `docs/openapi.json` (served at `/v1/openapi.json`, checked against
//! [`routes::ROUTES`] by a test).
//!
//! Authentication, on every route that reads or changes data: a client certificate of the
//! cluster CA (asked for in the TLS handshake, optional there so that browsers without one can
//! connect) or `Authorization: Bearer <token>` ([`crate::tokens`]). The role decides the rest
//! ([`crate::auth`]). Without either: 401.
//!
//! Bounds: at most `http.connections_max` connections (one over is closed at once); a
//! request's headers must arrive within `http.header_read_timeout_ms` (which also closes idle
//! keep-alive connections), its body within `http.body_read_timeout_ms`, and the body may not
//! exceed `client.command_bytes_max` (a deploy: `guest.module_bytes_max`), else 413. The TLS
//! handshake shares the header deadline. HTTP/1.1 with keep-alive.
//!
//! TLS reloads ([`crate::TlsReloader`]) reach the API too ([`HttpTls`]): new HTTPS handshakes
//! use the new certificate and CA bundle, and the forwarder's new connections to the leader
//! present the new certificate; open connections keep theirs, as on the QUIC side.

mod body;
mod forward;
#[cfg(test)]
mod openapi_tests;
mod reply;
pub(crate) mod routes;
mod sessions;
mod watch_route;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use wraft_config::{ClientSection, HttpSection};
use wraft_transport::certs::TlsIdentity;

use crate::server::Api;
use crate::tokens::TokenKey;

pub(crate) use forward::{Forwarder, MemberCallError};

/// Everything a request handler needs; shared by every connection of one node.
pub(crate) struct HttpState {
    pub(crate) node: u64,
    pub(crate) api: Api,
    pub(crate) forward: Forwarder,
    pub(crate) sessions: sessions::SessionPool,
    pub(crate) token_key: Option<TokenKey>,
    pub(crate) http: HttpSection,
    pub(crate) limits: Arc<ClientSection>,
    /// Largest deploy body, bytes (`guest.module_bytes_max`).
    pub(crate) module_bytes_max: u64,
    /// Applied results, for `watch`.
    pub(crate) watch: crate::watch::WatchHub,
}

/// Why the HTTPS listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Binding `http.listen` failed.
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bearer-token key (`http.token_key_file`) exists but cannot be used.
    #[error("bearer tokens: {0}")]
    TokenKey(#[from] crate::tokens::TokenError),
    /// The node's certificate or the CA bundle cannot serve TLS.
    #[error("HTTPS with the node's certificate: {0}")]
    Tls(String),
}

/// Connections the kernel queues for the HTTPS listener before it accepts them (the kernel caps
/// it at `net.core.somaxconn`). The standard library's `bind` asks for 128: a burst of new
/// clients beyond that had its SYNs dropped and retried a second later.
pub const HTTP_LISTEN_BACKLOG: i32 = 1024;

/// Bind `addr` now (so a port conflict fails the start and port 0 is known at once).
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, HttpError> {
    use socket2::{Domain, Socket, Type};
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(HTTP_LISTEN_BACKLOG)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    };
    bind().map_err(|source| HttpError::Bind { addr, source })
}

/// What a TLS reload swaps on the HTTP side: the listener's server configuration and the
/// identity the forwarder presents to the leader, with a generation that tells the forwarder
/// to drop the connections it opened under the old one.
pub(crate) struct HttpTls {
    server: RwLock<Arc<rustls::ServerConfig>>,
    identity: RwLock<(u64, TlsIdentity)>,
}

impl HttpTls {
    pub(crate) fn new(tls: &TlsIdentity) -> Result<Arc<HttpTls>, HttpError> {
        Ok(Arc::new(HttpTls {
            server: RwLock::new(tls_config(tls)?),
            identity: RwLock::new((0, tls.clone())),
        }))
    }

    /// The server configuration new handshakes use.
    pub(crate) fn server(&self) -> Arc<rustls::ServerConfig> {
        self.server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The identity new forwarding connections present, and its generation.
    pub(crate) fn identity(&self) -> (u64, TlsIdentity) {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swap in `server` (from [`tls_config`] of `tls`, built before anything else was swapped)
    /// and `tls`.
    pub(crate) fn install(&self, server: Arc<rustls::ServerConfig>, tls: &TlsIdentity) {
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = server;
        let mut identity = self.identity.write().unwrap_or_else(|p| p.into_inner());
        *identity = (identity.0 + 1, tls.clone());
    }
}

/// The TLS server configuration: the node's certificate; a client certificate of the cluster
/// CA is asked for but optional (a browser presents none and uses a token).
pub(crate) fn tls_config(tls: &TlsIdentity) -> Result<Arc<rustls::ServerConfig>, HttpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in &tls.cas {
        roots
            .add(ca.clone())
            .map_err(|e| HttpError::Tls(format!("CA certificate: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| HttpError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(|e| HttpError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serve the API on `listener` until `shutdown`; then connections in progress get a graceful
/// close (a response being written finishes, a watch stream ends).
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<HttpTls>,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = state.node;
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(target: "wraft::client", node, error = %e, "cannot serve the HTTP API");
            return;
        }
    };
    let open = Arc::new(AtomicUsize::new(0));
    let max = state.http.connections_max as usize;
    let header_timeout = Duration::from_millis(state.http.header_read_timeout_ms);
    let mut refused_over_bound: u64 = 0;
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    tracing::warn!(target: "wraft::client", node, error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.load(Ordering::Relaxed) >= max {
            refused_over_bound += 1;
            if refused_over_bound == 1 || refused_over_bound.is_multiple_of(1000) {
                tracing::warn!(target: "wraft::client", node, open = max, refused = refused_over_bound,
                    "HTTP connection refused: http.connections_max connections are open");
            }
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard(open.clone());
        let acceptor = TlsAcceptor::from(tls.server());
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let tls = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(target: "wraft::client", node, %remote, error = %e, "HTTPS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(target: "wraft::client", node, %remote, "HTTPS handshake timed out");
                    return;
                }
            };
            let peer = routes::Peer::from_tls(tls.get_ref().1, &state.limits);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let peer = peer.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(routes::handle(&state, &peer, req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_millis(250), conn).await;
                }
            }
        });
    }
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
