//! The quinn endpoint: the QUIC configurations for each ALPN, the restart-stable stateless-reset
//! and connection-id keys, binding the socket, and dialing a peer node.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint};

use super::{Shared, TransportConfig, TransportError};
use crate::certs::{NodeId, TlsIdentity};
use crate::tls::{self, Alpn, AuthCounters, Membership, TlsError};

/// The QUIC transport parameters, built once from the [`TransportConfig`] and reused when the
/// TLS configurations are rebuilt.
pub(super) struct QuicTransports {
    /// Every connection but raft links.
    common: Arc<quinn::TransportConfig>,
    /// Raft links (their acknowledgement frequency).
    raft_link: Arc<quinn::TransportConfig>,
}

impl QuicTransports {
    pub(super) fn new(config: &TransportConfig) -> Result<QuicTransports, TransportError> {
        Ok(QuicTransports {
            common: Arc::new(config.quinn_transport()?),
            raft_link: Arc::new(config.raft_link_transport()?),
        })
    }
}

/// What a node dials with, one configuration per node-to-node ALPN.
#[derive(Clone)]
pub(super) struct DialConfigs {
    /// Dialing raft links (`wraft-raft/1`), with the link's acknowledgement frequency.
    pub(super) raft: quinn::ClientConfig,
    /// Dialing bulk connections (`wraft-bulk/1`), with the common transport.
    pub(super) bulk: quinn::ClientConfig,
}

/// The QUIC configurations of one node: what it accepts with, and what it dials with.
pub(super) struct QuicConfigs {
    /// Accepting every ALPN, with the common transport.
    pub(super) server: quinn::ServerConfig,
    /// Dialing.
    pub(super) dialing: DialConfigs,
}

impl QuicConfigs {
    pub(super) fn new(
        transports: &QuicTransports,
        tls: &TlsIdentity,
        membership: &Membership,
        auth: &AuthCounters,
    ) -> Result<QuicConfigs, TransportError> {
        let transport = transports.common.clone();

        let server_tls = tls::server_config(tls, membership.clone(), auth)?;
        let quic_server = QuicServerConfig::try_from(server_tls)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(transport.clone());

        let client_cfg = |alpn: Alpn,
                          transport: Arc<quinn::TransportConfig>|
         -> Result<quinn::ClientConfig, TransportError> {
            let c = tls::client_config(tls, alpn, auth)?;
            let q = QuicClientConfig::try_from(c).map_err(|e| TlsError::Verifier(e.to_string()))?;
            let mut cc = quinn::ClientConfig::new(Arc::new(q));
            cc.transport_config(transport);
            Ok(cc)
        };
        let raft = client_cfg(Alpn::Raft, transports.raft_link.clone())?;
        let bulk = client_cfg(Alpn::Bulk, transport)?;
        Ok(QuicConfigs {
            server,
            dialing: DialConfigs { raft, bulk },
        })
    }
}

/// Bind the UDP socket at `listen_addr` and start the endpoint on it, serving with `server`.
/// Must run inside the tokio runtime (the caller enters it): the endpoint spawns its driver.
pub(super) fn bind_endpoint(
    config: &TransportConfig,
    tls: &TlsIdentity,
    server: quinn::ServerConfig,
) -> Result<Endpoint, TransportError> {
    let bind_err = |source| TransportError::Bind {
        addr: config.listen_addr,
        source,
    };
    let socket = crate::udp::bind(config.listen_addr, config.udp_buffer_bytes).map_err(bind_err)?;
    let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
    Endpoint::new(endpoint_config(tls), Some(server), socket, runtime).map_err(bind_err)
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

/// Dial node `to` at its address-book address (resolved now if it is a name) on `alpn` (raft
/// or bulk) with the current dial configuration, waiting at most `connect_timeout_ms` for the
/// handshake.
pub(super) async fn dial(
    shared: &Shared,
    to: NodeId,
    alpn: Alpn,
) -> Result<Connection, TransportError> {
    let cfg = {
        let dialing = shared.dialing.read().unwrap_or_else(|p| p.into_inner());
        match alpn {
            Alpn::Bulk => dialing.bulk.clone(),
            _ => dialing.raft.clone(),
        }
    };
    let sock = shared
        .addresses
        .resolve(
            to,
            shared.endpoint.local_addr().ok(),
            Duration::from_millis(shared.config.resolve_timeout_ms),
        )
        .await?;
    let err = |detail: String| TransportError::Connect {
        peer: to,
        addr: shared.addresses.get(to).unwrap_or(sock.into()),
        detail,
    };
    let connecting = shared
        .endpoint
        .connect_with(cfg, sock, &tls::server_name_for(to))
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
