//! Cluster certificates: a cluster CA, node and client certificates, and the
//! on-disk layout `wraft cert` writes and nodes/clients read.
//!
//! # Identity encoding
//! Every leaf certificate carries exactly one URI subject-alternative name in
//! the `wraft` scheme, and that SAN is the *only* thing the transport trusts
//! to name the peer:
//!
//! | identity | URI SAN | other SANs | EKU |
//! |---|---|---|---|
//! | node 3 | `wraft://node/3` | DNS `localhost`, IP `127.0.0.1`, plus caller extras | serverAuth + clientAuth |
//! | client `ops` | `wraft://client/ops` | none | clientAuth |
//!
//! The common name repeats the identity (`node-3`, `client-ops`) for humans
//! reading `openssl x509 -text`; it is never used for authorization.
//!
//! # Directory layout (what `wraft cert` writes)
//! ```text
//! <dir>/ca.crt              cluster CA certificate(s) (PEM); every node and client needs it.
//!                           May hold several CAs (a trust bundle): every one is trusted,
//!                           which is how a CA is rotated with overlapping trust
//! <dir>/ca.key              cluster CA private key (PEM, mode 0600); keep it off the nodes
//! <dir>/node-<id>.crt       node certificate (PEM)
//! <dir>/node-<id>.key       node private key (PKCS#8 PEM, mode 0600)
//! <dir>/client-<name>.crt   client certificate (PEM)
//! <dir>/client-<name>.key   client private key (PKCS#8 PEM, mode 0600)
//! ```
//! Files are written atomically (temp file, fsync, rename) and existing files
//! are never overwritten unless [`CertDir::overwrite`] is set.

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A Raft node id, as the engine numbers members.
pub type NodeId = u64;

/// Longest accepted client name, in bytes.
pub const CLIENT_NAME_BYTES_MAX: usize = 64;
/// Default validity of a freshly created cluster CA, in days (10 years).
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;
/// Default validity of node and client certificates, in days.
pub const DEFAULT_LEAF_VALIDITY_DAYS: u32 = 365;
/// How far into the past `not_before` is back-dated to tolerate clock skew, in seconds.
pub const CLOCK_SKEW_ALLOWANCE_SECS: u64 = 300;

const URI_PREFIX_NODE: &str = "wraft://node/";
const URI_PREFIX_CLIENT: &str = "wraft://client/";

/// Errors from generating, parsing, writing or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to generate or sign (bad parameters, key generation failure).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file or string did not hold what was expected.
    #[error("{what}: cannot parse PEM: {detail}")]
    Pem {
        /// What was being parsed (usually a path).
        what: String,
        /// The parser's complaint.
        detail: String,
    },
    /// The certificate is not a well-formed X.509 certificate.
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    /// The certificate has no (or more than one) `wraft://` URI SAN.
    #[error(
        "certificate carries no usable wraft identity: expected exactly one URI SAN \
         `wraft://node/<id>` or `wraft://client/<name>`, found {0}"
    )]
    NoIdentity(String),
    /// A client name outside `[A-Za-z0-9._-]{1,64}`.
    #[error(
        "invalid client name {0:?}: expected 1..={CLIENT_NAME_BYTES_MAX} characters from [A-Za-z0-9._-]"
    )]
    BadClientName(String),
    /// A validity window that ends before it starts.
    #[error("invalid validity window: not_after is not after not_before")]
    BadValidity,
    /// File-system failure, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Refused to overwrite an existing file.
    #[error("{0}: already exists (refusing to overwrite; remove it or enable overwrite)")]
    AlreadyExists(PathBuf),
}

/// Who a certificate says its holder is. Derived only from the `wraft://`
/// URI SAN of a certificate signed by the cluster CA.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// A cluster member (or would-be member) with this node id.
    Node(NodeId),
    /// An application or operator client with this name.
    Client(String),
}

impl Identity {
    /// The URI SAN that encodes this identity (`wraft://node/3`, `wraft://client/ops`).
    pub fn uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{URI_PREFIX_NODE}{id}"),
            Identity::Client(name) => format!("{URI_PREFIX_CLIENT}{name}"),
        }
    }

    /// Parse a `wraft://` URI; `None` for anything else (including node ids
    /// with leading `+`, signs or non-digits, and invalid client names).
    pub fn from_uri(uri: &str) -> Option<Identity> {
        if let Some(rest) = uri.strip_prefix(URI_PREFIX_NODE) {
            if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return rest.parse().ok().map(Identity::Node);
        }
        let name = uri.strip_prefix(URI_PREFIX_CLIENT)?;
        validate_client_name(name).ok()?;
        Some(Identity::Client(name.to_owned()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client(name) => write!(f, "client {name:?}"),
        }
    }
}

fn validate_client_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= CLIENT_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CertError::BadClientName(name.to_owned()))
    }
}

/// A certificate validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: SystemTime,
    /// Last instant the certificate is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from [`CLOCK_SKEW_ALLOWANCE_SECS`] ago until `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(CLOCK_SKEW_ALLOWANCE_SECS),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    /// An explicit window (tests use this to mint already-expired certificates).
    pub fn between(not_before: SystemTime, not_after: SystemTime) -> Result<Validity, CertError> {
        if not_after <= not_before {
            return Err(CertError::BadValidity);
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CertError> {
        if self.not_after <= self.not_before {
            return Err(CertError::BadValidity);
        }
        params.not_before = time::OffsetDateTime::from(self.not_before);
        params.not_after = time::OffsetDateTime::from(self.not_after);
        Ok(())
    }
}

/// A freshly issued leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// Who the certificate names.
    pub identity: Identity,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Secret.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The cluster certificate authority: signs node and client certificates.
///
/// Holding one means holding the CA private key; nodes only need the CA
/// *certificate* (see [`TlsIdentity`]).
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generate a new CA (ECDSA P-256) named `wraft cluster CA <cluster_name>`.
    /// Cost: one key generation and one signature (well under a millisecond).
    pub fn generate(cluster_name: &str, validity: Validity) -> Result<ClusterCa, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("wraft cluster CA {cluster_name}"),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wraft");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Load a CA from its certificate and private key (both PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
            what: "CA private key".into(),
            detail: e.to_string(),
        })?;
        // A key from another CA (ca.key left behind after ca.crt was replaced during a
        // rotation) would sign certificates that name this CA as issuer but verify nowhere.
        let first =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CertError::Pem {
                what: "CA certificate".into(),
                detail: e.to_string(),
            })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&first)
            .map_err(|e| CertError::X509(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(CertError::Pem {
                what: "CA private key".into(),
                detail: "it is not the key of the (first) CA certificate; after a CA rotation, \
                         issue with --ca-dir pointing at the new CA's directory, or copy its \
                         ca.key next to its ca.crt"
                    .into(),
            });
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| CertError::Pem {
            what: "CA certificate".into(),
            detail: e.to_string(),
        })?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issue a node certificate for `id`: URI SAN `wraft://node/<id>`, DNS
    /// `localhost`, IP `127.0.0.1`, plus `extra_sans` (each parsed as an IP
    /// address if it is one, else used as a DNS name). EKU serverAuth +
    /// clientAuth, since a node both accepts and dials.
    pub fn issue_node(
        &self,
        id: NodeId,
        extra_sans: &[String],
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        let identity = Identity::Node(id);
        let mut sans = vec![
            SanType::URI(identity.uri().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        for extra in extra_sans {
            sans.push(match extra.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(extra.as_str().try_into()?),
            });
        }
        self.issue(
            identity,
            format!("node-{id}"),
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity,
        )
    }

    /// Issue a client certificate: URI SAN `wraft://client/<name>`, EKU clientAuth.
    /// `name` must match `[A-Za-z0-9._-]{1,64}`.
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<IssuedCert, CertError> {
        validate_client_name(name)?;
        let identity = Identity::Client(name.to_owned());
        let sans = vec![SanType::URI(identity.uri().try_into()?)];
        self.issue(
            identity,
            format!("client-{name}"),
            sans,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    fn issue(
        &self,
        identity: Identity,
        common_name: String,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.extended_key_usages = ekus;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            identity,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Read the wraft identity out of a certificate's URI SAN. Pure parsing: this
/// does **not** check the signature or validity window (the TLS verifiers do).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, CertError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertError::X509(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| CertError::X509(e.to_string()))?;
    let mut found: Vec<&str> = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with("wraft://")
            {
                found.push(uri);
            }
        }
    }
    match found.as_slice() {
        [one] => Identity::from_uri(one)
            .ok_or_else(|| CertError::NoIdentity(format!("malformed URI SAN {one:?}"))),
        [] => Err(CertError::NoIdentity("no wraft:// URI SAN".into())),
        many => Err(CertError::NoIdentity(format!(
            "{} wraft:// URI SANs ({many:?})",
            many.len()
        ))),
    }
}

/// A certificate's validity window, `(not_before, not_after)`, as the certificate states it.
/// Pure parsing, like [`identity_of`]; for reports such as `wraft config check`.
pub fn validity_of(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CertError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertError::X509(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let v = x509.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

/// Everything one party needs to speak TLS in the cluster: the CA to trust,
/// its own certificate chain and key, and the identity that chain names.
#[derive(Debug)]
pub struct TlsIdentity {
    /// Who this party is (parsed from `cert_chain[0]`).
    pub identity: Identity,
    /// The cluster CA certificates, the only trust anchors: usually one, two while a CA
    /// rotation overlaps the old and the new (every certificate in `ca.crt`).
    pub cas: Vec<CertificateDer<'static>>,
    /// This party's certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// This party's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            identity: self.identity.clone(),
            cas: self.cas.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Build from PEM strings (CA certificate or bundle, leaf certificate or chain, private
    /// key). Fails if any PEM is unparsable or the leaf carries no wraft identity.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsIdentity, CertError> {
        let pem_err = |what: &str| {
            let what = what.to_owned();
            move |e: rustls_pki_types::pem::Error| CertError::Pem {
                what: what.clone(),
                detail: e.to_string(),
            }
        };
        let cas = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err("CA certificate"))?;
        if cas.is_empty() {
            return Err(CertError::Pem {
                what: "CA certificate".into(),
                detail: "no CERTIFICATE block found".into(),
            });
        }
        let cert_chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err("certificate"))?;
        let leaf = cert_chain.first().ok_or_else(|| CertError::Pem {
            what: "certificate".into(),
            detail: "no CERTIFICATE block found".into(),
        })?;
        let identity = identity_of(leaf)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("private key"))?;
        Ok(TlsIdentity {
            identity,
            cas,
            cert_chain,
            key,
        })
    }

    /// Build from a CA certificate PEM and a freshly issued leaf.
    pub fn from_issued(ca_pem: &str, issued: &IssuedCert) -> Result<TlsIdentity, CertError> {
        TlsIdentity::from_pem(ca_pem, &issued.cert_pem, &issued.key_pem)
    }
}

/// The certificate directory layout described in the [module docs](self).
#[derive(Clone, Debug)]
pub struct CertDir {
    root: PathBuf,
    overwrite: bool,
}

impl CertDir {
    /// A layout rooted at `root` (not created until something is written).
    pub fn new(root: impl Into<PathBuf>) -> CertDir {
        CertDir {
            root: root.into(),
            overwrite: false,
        }
    }

    /// Allow writes to replace existing files (default: refuse).
    pub fn overwrite(mut self, yes: bool) -> CertDir {
        self.overwrite = yes;
        self
    }

    /// The directory root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<dir>/ca.crt`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// `<dir>/ca.key`.
    pub fn ca_key_path(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// `<dir>/node-<id>.crt` or `<dir>/client-<name>.crt`.
    pub fn cert_path(&self, identity: &Identity) -> PathBuf {
        self.root.join(format!("{}.crt", file_stem(identity)))
    }

    /// `<dir>/node-<id>.key` or `<dir>/client-<name>.key`.
    pub fn key_path(&self, identity: &Identity) -> PathBuf {
        self.root.join(format!("{}.key", file_stem(identity)))
    }

    /// Write `ca.crt` and `ca.key` (key mode 0600), creating the directory.
    pub fn write_ca(&self, ca: &ClusterCa) -> Result<(), CertError> {
        self.ensure_root()?;
        write_atomic(
            &self.ca_key_path(),
            ca.key_pem().as_bytes(),
            true,
            self.overwrite,
        )?;
        write_atomic(
            &self.ca_cert_path(),
            ca.cert_pem().as_bytes(),
            false,
            self.overwrite,
        )
    }

    /// Replace `ca.crt` with `bundle_pem` (one or more CA certificates, PEM), atomically:
    /// nodes and clients trust every CA in it, which is how a CA rotation overlaps the old
    /// and the new. Refuses a bundle without a certificate or with an unparsable one.
    pub fn write_trust_bundle(&self, bundle_pem: &str) -> Result<(), CertError> {
        let certs = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::Pem {
                what: "CA bundle".into(),
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(CertError::Pem {
                what: "CA bundle".into(),
                detail: "no CERTIFICATE block found".into(),
            });
        }
        self.ensure_root()?;
        write_atomic(&self.ca_cert_path(), bundle_pem.as_bytes(), false, true)
    }

    /// Load the CA (certificate and key) to issue more certificates.
    pub fn load_ca(&self) -> Result<ClusterCa, CertError> {
        let cert = read_to_string(&self.ca_cert_path())?;
        let key = read_to_string(&self.ca_key_path())?;
        ClusterCa::from_pem(&cert, &key)
    }

    /// Write a leaf certificate and key at the paths its identity maps to.
    pub fn write_issued(&self, issued: &IssuedCert) -> Result<(), CertError> {
        self.ensure_root()?;
        write_atomic(
            &self.key_path(&issued.identity),
            issued.key_pem.as_bytes(),
            true,
            self.overwrite,
        )?;
        write_atomic(
            &self.cert_path(&issued.identity),
            issued.cert_pem.as_bytes(),
            false,
            self.overwrite,
        )
    }

    /// Load the TLS material for `identity` (CA cert + leaf cert + key), and
    /// check that the certificate actually names `identity`.
    pub fn load_tls(&self, identity: &Identity) -> Result<TlsIdentity, CertError> {
        let cert_path = self.cert_path(identity);
        let ca = read_to_string(&self.ca_cert_path())?;
        let cert = read_to_string(&cert_path)?;
        let key = read_to_string(&self.key_path(identity))?;
        let tls = TlsIdentity::from_pem(&ca, &cert, &key)?;
        if &tls.identity != identity {
            return Err(CertError::NoIdentity(format!(
                "{} names {} but was loaded as {identity}",
                cert_path.display(),
                tls.identity
            )));
        }
        Ok(tls)
    }

    fn ensure_root(&self) -> Result<(), CertError> {
        std::fs::create_dir_all(&self.root).map_err(|source| CertError::Io {
            path: self.root.clone(),
            source,
        })
    }
}

fn file_stem(identity: &Identity) -> String {
    match identity {
        Identity::Node(id) => format!("node-{id}"),
        Identity::Client(name) => format!("client-{name}"),
    }
}

fn read_to_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_atomic(path: &Path, bytes: &[u8], secret: bool, overwrite: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    if !overwrite && path.exists() {
        return Err(CertError::AlreadyExists(path.to_owned()));
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        // Best effort: make the rename durable.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_and_client_identities_round_trip_through_certificates() {
        let ca = ClusterCa::generate("t", Validity::days_from_now(1)).unwrap();
        let node = ca
            .issue_node(
                3,
                &["10.0.0.3".into(), "n3.example".into()],
                Validity::days_from_now(1),
            )
            .unwrap();
        let tls = TlsIdentity::from_issued(ca.cert_pem(), &node).unwrap();
        assert_eq!(tls.identity, Identity::Node(3));
        let client = ca
            .issue_client("ops-1", Validity::days_from_now(1))
            .unwrap();
        let tls = TlsIdentity::from_issued(ca.cert_pem(), &client).unwrap();
        assert_eq!(tls.identity, Identity::Client("ops-1".into()));
    }

    #[test]
    fn identity_uri_parsing_rejects_malformed_names() {
        assert_eq!(
            Identity::from_uri("wraft://node/7"),
            Some(Identity::Node(7))
        );
        assert_eq!(Identity::from_uri("wraft://node/+7"), None);
        assert_eq!(Identity::from_uri("wraft://node/"), None);
        assert_eq!(
            Identity::from_uri("wraft://node/99999999999999999999999"),
            None
        );
        assert_eq!(Identity::from_uri("wraft://client/a b"), None);
        assert_eq!(Identity::from_uri("https://node/1"), None);
        assert!(
            ClusterCa::generate("t", Validity::days_from_now(1))
                .unwrap()
                .issue_client("bad/name", Validity::days_from_now(1))
                .is_err()
        );
    }

    #[test]
    fn cert_dir_writes_layout_reloads_ca_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir::new(dir.path().join("certs"));
        let ca = ClusterCa::generate("t", Validity::days_from_now(10)).unwrap();
        certs.write_ca(&ca).unwrap();
        // A reloaded CA must issue certificates that chain to the original CA cert.
        let reloaded = certs.load_ca().unwrap();
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        let node = reloaded
            .issue_node(1, &[], Validity::days_from_now(1))
            .unwrap();
        certs.write_issued(&node).unwrap();
        let tls = certs.load_tls(&Identity::Node(1)).unwrap();
        assert_eq!(tls.identity, Identity::Node(1));
        assert!(certs.cert_path(&Identity::Node(1)).ends_with("node-1.crt"));
        assert!(matches!(
            certs.write_issued(&node),
            Err(CertError::AlreadyExists(_))
        ));
        certs.clone().overwrite(true).write_issued(&node).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(certs.key_path(&Identity::Node(1)))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(certs.load_tls(&Identity::Node(2)).is_err());
    }
}
