//! Reloading the node's TLS material without a restart: the CA bundle (`ca.crt`), the node's
//! certificate and its key, re-read from the certificate directory on demand
//! ([`Node::reload_tls`](crate::Node::reload_tls), SIGHUP in `wraft node`) and whenever a file
//! in that directory changes (a `notify` watcher, debounced).
//!
//! A reload builds the new rustls configurations first and swaps them in only if the new
//! material is usable (parses, names this node, the key fits the certificate, the certificate
//! is valid now and accepted by the new bundle); otherwise it is refused, logged on
//! `wraft::node` with the file at fault, and the configuration in force stays. New handshakes
//! use the new configuration; open connections keep theirs (see
//! [`Transport::reload_tls`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use wraft_transport::Transport;
use wraft_transport::certs::{CertDir, CertError, TlsIdentity};
use wraft_transport::{Identity, TransportError};

const LOG: &str = "wraft::node";

/// Quiet time after the last change in the certificate directory before reloading, ms: a
/// rotation writes several files (certificate, key) and each write is several events.
pub const TLS_WATCH_DEBOUNCE_MS: u64 = 500;

/// What a successful [`TlsReloader::reload`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsReload {
    /// The CA bundle (`ca.crt`) differs from the one in force.
    pub ca_changed: bool,
    /// The node certificate differs.
    pub cert_changed: bool,
    /// The private key differs.
    pub key_changed: bool,
}

impl TlsReload {
    /// True if anything changed (and new handshakes use it).
    pub fn changed(&self) -> bool {
        self.ca_changed || self.cert_changed || self.key_changed
    }
}

impl std::fmt::Display for TlsReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<&str> = [
            (self.ca_changed, "CA bundle"),
            (self.cert_changed, "certificate"),
            (self.key_changed, "key"),
        ]
        .into_iter()
        .filter_map(|(c, what)| c.then_some(what))
        .collect();
        if parts.is_empty() {
            f.write_str("nothing changed")
        } else {
            write!(f, "new {}", parts.join(", "))
        }
    }
}

/// Why a reload was refused. The configuration in force stays.
#[derive(Debug, thiserror::Error)]
#[error("TLS reload refused: {file}: {detail}; the previous TLS configuration stays in force")]
pub struct TlsReloadError {
    /// The file at fault (or the directory, when several are).
    pub file: PathBuf,
    /// What is wrong with it.
    pub detail: String,
}

/// BLAKE3 digests of the DER of what is in force, to tell what a reload changes (digests, so
/// no second copy of the private key is kept).
#[derive(Clone, Default, PartialEq, Eq)]
struct InForce {
    cas: [u8; 32],
    chain: [u8; 32],
    key: [u8; 32],
}

impl InForce {
    fn of(tls: &TlsIdentity) -> InForce {
        let digest = |parts: &mut dyn Iterator<Item = &[u8]>| {
            let mut h = blake3::Hasher::new();
            for p in parts {
                h.update(&(p.len() as u64).to_le_bytes());
                h.update(p);
            }
            *h.finalize().as_bytes()
        };
        InForce {
            cas: digest(&mut tls.cas.iter().map(|c| c.as_ref())),
            chain: digest(&mut tls.cert_chain.iter().map(|c| c.as_ref())),
            key: digest(&mut std::iter::once(tls.key.secret_der())),
        }
    }
}

/// Re-reads a node's TLS files and swaps them into its transport. Cheap to clone.
#[derive(Clone)]
pub struct TlsReloader {
    id: u64,
    certs: CertDir,
    transport: Transport,
    /// The HTTPS listener and its forwarder, when the node serves the HTTP API.
    http: Option<Arc<crate::http::HttpTls>>,
    in_force: Arc<Mutex<InForce>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("node", &self.id)
            .field("dir", &self.certs.root())
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    pub(crate) fn new(
        id: u64,
        certs: CertDir,
        transport: Transport,
        tls: &TlsIdentity,
        http: Option<Arc<crate::http::HttpTls>>,
    ) -> Self {
        TlsReloader {
            id,
            certs,
            transport,
            http,
            in_force: Arc::new(Mutex::new(InForce::of(tls))),
        }
    }

    /// The certificate directory read.
    pub fn dir(&self) -> &Path {
        self.certs.root()
    }

    /// Read `ca.crt`, `node-<id>.crt` and `node-<id>.key` again; if they differ from what is
    /// in force and are usable, swap them in. Logs the outcome on `wraft::node`.
    pub fn reload(&self) -> Result<TlsReload, TlsReloadError> {
        let outcome = self.try_reload();
        match &outcome {
            Ok(r) if r.changed() => {
                tracing::info!(target: LOG, node = self.id, dir = %self.dir().display(), "TLS reloaded: {r}")
            }
            Ok(_) => {
                tracing::debug!(target: LOG, node = self.id, "TLS reload: nothing changed")
            }
            Err(e) => tracing::error!(target: LOG, node = self.id, file = %e.file.display(), "{e}"),
        }
        outcome
    }

    fn try_reload(&self) -> Result<TlsReload, TlsReloadError> {
        let me = Identity::Node(self.id);
        let cert_path = self.certs.cert_path(&me);
        let key_path = self.certs.key_path(&me);
        let ca_path = self.certs.ca_cert_path();
        let refused = |file: &Path, detail: String| TlsReloadError {
            file: file.to_owned(),
            detail,
        };
        let tls = self.certs.load_tls(&me).map_err(|e| match &e {
            CertError::Io { path, source } => refused(path, source.to_string()),
            CertError::Pem { what, detail } => {
                let file = match what.as_str() {
                    "CA certificate" => &ca_path,
                    "private key" => &key_path,
                    _ => &cert_path,
                };
                refused(file, format!("cannot parse PEM: {detail}"))
            }
            _ => refused(&cert_path, e.to_string()),
        })?;
        let new = InForce::of(&tls);
        let mut in_force = self.in_force.lock().unwrap_or_else(|p| p.into_inner());
        let change = TlsReload {
            ca_changed: new.cas != in_force.cas,
            cert_changed: new.chain != in_force.chain,
            key_changed: new.key != in_force.key,
        };
        if !change.changed() {
            return Ok(change);
        }
        // The file a TLS library's complaint is about.
        let file_of = |msg: &str| {
            if msg.contains("private key") {
                &key_path
            } else if msg.contains("CA") {
                &ca_path
            } else {
                &cert_path
            }
        };
        // Built first, so that material HTTPS cannot use changes nothing anywhere.
        let http_server = match &self.http {
            Some(_) => Some(crate::http::tls_config(&tls).map_err(|e| {
                let msg = e.to_string();
                refused(file_of(&msg), msg)
            })?),
            None => None,
        };
        self.transport.reload_tls(&tls).map_err(|e| {
            let file = match &e {
                TransportError::Tls(t) => file_of(&t.to_string()),
                _ => &cert_path,
            };
            refused(file, e.to_string())
        })?;
        if let (Some(http), Some(server)) = (&self.http, http_server) {
            http.install(server, &tls);
        }
        *in_force = new;
        Ok(change)
    }

    /// Watch the certificate directory and reload after each burst of changes
    /// ([`TLS_WATCH_DEBOUNCE_MS`] quiet), until `shutdown` turns true. A directory that
    /// cannot be watched is logged and left to SIGHUP / explicit reloads.
    pub(crate) fn spawn_watch(self, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut changes) = mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            notify::Watcher::watch(&mut w, self.dir(), notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(target: LOG, node = self.id, dir = %self.dir().display(), error = %e,
                    "cannot watch the certificate directory; reload with SIGHUP instead");
                return;
            }
        };
        tokio::spawn(async move {
            let _watcher = watcher;
            loop {
                tokio::select! {
                    c = changes.recv() => if c.is_none() { return },
                    _ = shutdown.changed() => return,
                }
                // Debounce: wait until the directory has been quiet for a while.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(TLS_WATCH_DEBOUNCE_MS)) => break,
                        c = changes.recv() => if c.is_none() { return },
                        _ = shutdown.changed() => return,
                    }
                }
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            }
        });
    }
}
