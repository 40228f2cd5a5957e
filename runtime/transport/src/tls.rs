//! rustls configurations for mutual TLS against the cluster CA (TLS 1.3 only),
//! ALPN protocol ids, peer-identity checks and the reasons a peer is refused.
//!
//! Who is checked where:
//! * **Accepting side** ([`server_config`]): the client certificate must chain
//!   to the cluster CA and be inside its validity window (webpki), must carry a
//!   wraft identity, and if it names a node that node must be in the current
//!   [`Membership`]. The ALPN-dependent rule (client certificates may not use
//!   `wraft-raft/1` or `wraft-bulk/1`) is checked right after the handshake by
//!   [`check_alpn_identity`], because rustls verifiers do not see the ALPN.
//! * **Dialing side** ([`client_config`]): the server certificate must chain to
//!   the cluster CA, be valid, and name a node. If the dialer used
//!   [`server_name_for`] (`wraft-node-<id>`), the certificate must name exactly
//!   that node; otherwise (clients that do not care which node answers) any
//!   node of the cluster is accepted. Host names are deliberately not used:
//!   the URI SAN is the identity.
//!
//! Every refusal is logged at `warn` on target `wraft_transport::auth` with its
//! [`Refusal`] reason, and counted in [`crate::TransportStats`].

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::certs::{Identity, NodeId, TlsIdentity, identity_of};

/// ALPN for long-lived Raft message links (node certificates only).
pub const ALPN_RAFT: &[u8] = b"wraft-raft/1";
/// ALPN for bulk (snapshot) connections (node certificates only).
pub const ALPN_BULK: &[u8] = b"wraft-bulk/1";
/// ALPN for client request/response connections (client or node certificates).
pub const ALPN_CLIENT: &[u8] = b"wraft-client/1";

/// Log target of every authentication refusal.
pub const AUTH_LOG_TARGET: &str = "wraft_transport::auth";

/// The three wraft application protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// `wraft-raft/1`
    Raft,
    /// `wraft-bulk/1`
    Bulk,
    /// `wraft-client/1`
    Client,
}

impl Alpn {
    /// The wire id.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Alpn::Raft => ALPN_RAFT,
            Alpn::Bulk => ALPN_BULK,
            Alpn::Client => ALPN_CLIENT,
        }
    }

    /// Parse a negotiated ALPN id.
    pub fn from_bytes(b: &[u8]) -> Option<Alpn> {
        [Alpn::Raft, Alpn::Bulk, Alpn::Client]
            .into_iter()
            .find(|a| a.as_bytes() == b)
    }
}

impl fmt::Display for Alpn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(String::from_utf8_lossy(self.as_bytes()).as_ref())
    }
}

/// The current voting + learner membership, shared with the node driver,
/// which updates it as configuration changes commit. Cheap to clone (an `Arc`).
/// Read on every incoming handshake (one uncontended `RwLock` read).
#[derive(Clone, Debug, Default)]
pub struct Membership(Arc<RwLock<BTreeSet<NodeId>>>);

impl Membership {
    /// A membership holding `ids`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership(Arc::new(RwLock::new(ids.into_iter().collect())))
    }

    /// Is `id` currently a member?
    pub fn contains(&self, id: NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Replace the whole set.
    pub fn set(&self, ids: impl IntoIterator<Item = NodeId>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ids.into_iter().collect();
    }

    /// Add one member.
    pub fn insert(&self, id: NodeId) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    /// Remove one member. Existing connections are not torn down by this call.
    pub fn remove(&self, id: NodeId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// A copy of the current set.
    pub fn snapshot(&self) -> BTreeSet<NodeId> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The certificate does not chain to this cluster's CA.
    #[error("certificate is not signed by this cluster's CA ({0})")]
    UnknownCa(String),
    /// The certificate's `not_after` has passed.
    #[error("certificate has expired ({0})")]
    Expired(String),
    /// The certificate's `not_before` is in the future.
    #[error("certificate is not valid yet ({0})")]
    NotYetValid(String),
    /// A node certificate for a node not in the current membership.
    #[error("certificate names node {0}, which is not a member of this cluster")]
    NotAMember(NodeId),
    /// A client certificate on a node-only protocol.
    #[error(
        "client certificate {name:?} presented on ALPN {alpn}, which only node certificates may use"
    )]
    ClientOnPeerAlpn {
        /// The client's name.
        name: String,
        /// The protocol it tried.
        alpn: Alpn,
    },
    /// The peer claims (or was dialed as) one node but its certificate names another.
    #[error("peer claims to be node {claimed} but its certificate names {cert}")]
    IdMismatch {
        /// The id claimed (in its hello, or the id we dialed).
        claimed: NodeId,
        /// The identity its certificate names.
        cert: Identity,
    },
    /// The certificate carries no usable `wraft://` identity.
    #[error("{0}")]
    NoIdentity(String),
    /// No or an unknown ALPN protocol.
    #[error("no wraft ALPN protocol negotiated")]
    NoAlpn,
    /// Any other certificate problem reported by webpki.
    #[error("certificate rejected: {0}")]
    Invalid(String),
}

/// Counters of refusals by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    /// [`Refusal::UnknownCa`]
    pub unknown_ca: u64,
    /// [`Refusal::Expired`] and [`Refusal::NotYetValid`]
    pub expired: u64,
    /// [`Refusal::NotAMember`]
    pub not_a_member: u64,
    /// [`Refusal::ClientOnPeerAlpn`] and [`Refusal::NoAlpn`]
    pub wrong_alpn: u64,
    /// [`Refusal::IdMismatch`]
    pub id_mismatch: u64,
    /// [`Refusal::NoIdentity`] and [`Refusal::Invalid`]
    pub other: u64,
}

impl RefusalCounts {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.unknown_ca
            + self.expired
            + self.not_a_member
            + self.wrong_alpn
            + self.id_mismatch
            + self.other
    }
}

/// Shared refusal counters (one per transport).
#[derive(Debug, Default)]
pub(crate) struct RefusalCounters([AtomicU64; 6]);

impl RefusalCounters {
    pub(crate) fn record(&self, r: &Refusal, context: &str) {
        let i = match r {
            Refusal::UnknownCa(_) => 0,
            Refusal::Expired(_) | Refusal::NotYetValid(_) => 1,
            Refusal::NotAMember(_) => 2,
            Refusal::ClientOnPeerAlpn { .. } | Refusal::NoAlpn => 3,
            Refusal::IdMismatch { .. } => 4,
            Refusal::NoIdentity(_) | Refusal::Invalid(_) => 5,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: AUTH_LOG_TARGET, reason = %r, "refused {context}: {r}");
    }

    pub(crate) fn snapshot(&self) -> RefusalCounts {
        let g = |i: usize| self.0[i].load(Ordering::Relaxed);
        RefusalCounts {
            unknown_ca: g(0),
            expired: g(1),
            not_a_member: g(2),
            wrong_alpn: g(3),
            id_mismatch: g(4),
            other: g(5),
        }
    }
}

/// Map a rustls verification error to a refusal reason.
pub fn refusal_from_rustls(e: &rustls::Error) -> Refusal {
    match e {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Refusal::UnknownCa(format!("{ce:?}"))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Refusal::Expired(format!("{ce:?}"))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Refusal::NotYetValid(format!("{ce:?}"))
            }
            other => Refusal::Invalid(format!("{other:?}")),
        },
        other => Refusal::Invalid(other.to_string()),
    }
}

/// The TLS server name a node dials node `id` with; the dialer's verifier
/// then insists the certificate names exactly that node.
pub fn server_name_for(id: NodeId) -> String {
    format!("wraft-node-{id}")
}

/// The server name clients use when any cluster node may answer.
pub const ANY_NODE_SERVER_NAME: &str = "wraft-node-any";

fn expected_node(server_name: &ServerName<'_>) -> Option<NodeId> {
    let ServerName::DnsName(dns) = server_name else {
        return None;
    };
    let rest = dns.as_ref().strip_prefix("wraft-node-")?;
    if rest.bytes().all(|b| b.is_ascii_digit()) {
        rest.parse().ok()
    } else {
        None
    }
}

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls rejected the configuration (bad key, unsupported version...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificate could not be used as a trust anchor.
    #[error("cluster CA certificate unusable as trust anchor: {0}")]
    BadCa(String),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// Certificate, key and CA bundle do not make a usable identity (see [`check_usable`]).
    #[error("{0}")]
    Unusable(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(tls: &TlsIdentity) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in &tls.cas {
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::BadCa(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// Check that `tls` can be used as it is now: its key matches its certificate, and the
/// certificate chains to one of its own trust anchors and is inside its validity window (so
/// peers trusting the same CAs accept it). Run before a reload swaps new material in.
pub fn check_usable(tls: &TlsIdentity) -> Result<(), TlsError> {
    let provider = provider();
    rustls::sign::CertifiedKey::from_der(tls.cert_chain.clone(), tls.key.clone_key(), &provider)
        .map_err(|e| {
            TlsError::Unusable(format!("the private key does not fit the certificate: {e}"))
        })?;
    let leaf = tls
        .cert_chain
        .first()
        .ok_or_else(|| TlsError::Unusable("no certificate".into()))?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)
        .map_err(|e| TlsError::Unusable(format!("unparsable certificate: {e}")))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &*roots(tls)?,
        &tls.cert_chain[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| {
        TlsError::Unusable(format!(
            "the certificate is not accepted by the CA bundle: {}",
            refusal_from_rustls(&e)
        ))
    })?;
    Ok(())
}

/// Count and log a refusal (`context` says which side of which handshake),
/// and turn it into the TLS alert the peer sees.
fn refusal_error(counters: &RefusalCounters, r: Refusal, context: &'static str) -> rustls::Error {
    counters.record(&r, context);
    let e = match r {
        Refusal::UnknownCa(_) => CertificateError::UnknownIssuer,
        Refusal::Expired(_) => CertificateError::Expired,
        Refusal::NotYetValid(_) => CertificateError::NotValidYet,
        _ => CertificateError::ApplicationVerificationFailure,
    };
    rustls::Error::InvalidCertificate(e)
}

#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    membership: Membership,
    counters: Arc<RefusalCounters>,
}

impl ClusterClientVerifier {
    fn refuse(&self, r: Refusal) -> rustls::Error {
        refusal_error(&self.counters, r, "incoming handshake")
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            return Err(self.refuse(refusal_from_rustls(&e)));
        }
        match identity_of(end_entity) {
            Err(e) => Err(self.refuse(Refusal::NoIdentity(e.to_string()))),
            Ok(Identity::Node(id)) if !self.membership.contains(id) => {
                Err(self.refuse(Refusal::NotAMember(id)))
            }
            Ok(_) => Ok(ClientCertVerified::assertion()),
        }
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    counters: Arc<RefusalCounters>,
}

impl ClusterServerVerifier {
    fn refuse(&self, r: Refusal) -> rustls::Error {
        refusal_error(&self.counters, r, "server certificate while dialing")
    }
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)
            .map_err(|e| self.refuse(Refusal::Invalid(e.to_string())))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| self.refuse(refusal_from_rustls(&e)))?;
        let identity =
            identity_of(end_entity).map_err(|e| self.refuse(Refusal::NoIdentity(e.to_string())))?;
        match (expected_node(server_name), &identity) {
            (Some(want), Identity::Node(got)) if want == *got => Ok(ServerCertVerified::assertion()),
            (None, Identity::Node(_)) => Ok(ServerCertVerified::assertion()),
            (Some(want), _) => Err(self.refuse(Refusal::IdMismatch {
                claimed: want,
                cert: identity,
            })),
            (None, Identity::Client(name)) => Err(self.refuse(Refusal::NoIdentity(format!(
                "server presented client certificate {name:?}; servers must present a node certificate"
            )))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Handle for refusal counters, created by the caller and shared by the
/// configs it builds (the [`crate::Transport`] does this for you).
#[derive(Clone, Debug, Default)]
pub struct AuthCounters(pub(crate) Arc<RefusalCounters>);

impl AuthCounters {
    /// Fresh zeroed counters.
    pub fn new() -> AuthCounters {
        AuthCounters::default()
    }

    /// Current counts.
    pub fn snapshot(&self) -> RefusalCounts {
        self.0.snapshot()
    }

    /// Count and log a refusal decided outside the verifiers.
    pub fn record(&self, r: &Refusal, context: &str) {
        self.0.record(r, context)
    }
}

/// Build the accepting-side config: TLS 1.3 only, mandatory client
/// certificates verified as described in the [module docs](self), and ALPN
/// offering all three wraft protocols. Cost: parses the CA once.
pub fn server_config(
    tls: &TlsIdentity,
    membership: Membership,
    counters: &AuthCounters,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(tls)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(ClusterClientVerifier {
        inner,
        membership,
        counters: counters.0.clone(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_RAFT.to_vec(), ALPN_BULK.to_vec(), ALPN_CLIENT.to_vec()];
    Ok(cfg)
}

/// Build a dialing-side config for one ALPN protocol: TLS 1.3 only, presents
/// `tls`'s certificate, verifies the server as described in the
/// [module docs](self).
pub fn client_config(
    tls: &TlsIdentity,
    alpn: Alpn,
    counters: &AuthCounters,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ClusterServerVerifier {
        roots: roots(tls)?,
        provider: provider.clone(),
        counters: counters.0.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    Ok(cfg)
}

/// The post-handshake rule the verifiers cannot express: node-only ALPNs
/// refuse client certificates. Returns the parsed ALPN on success.
pub fn check_alpn_identity(alpn: Option<&[u8]>, identity: &Identity) -> Result<Alpn, Refusal> {
    let alpn = alpn.and_then(Alpn::from_bytes).ok_or(Refusal::NoAlpn)?;
    match (alpn, identity) {
        (Alpn::Raft | Alpn::Bulk, Identity::Client(name)) => Err(Refusal::ClientOnPeerAlpn {
            name: name.clone(),
            alpn,
        }),
        _ => Ok(alpn),
    }
}
