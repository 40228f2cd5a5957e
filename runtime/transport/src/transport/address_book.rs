//! Node id → address of its transport endpoint, shared with the node driver, and the resolver
//! that turns a DNS name into a socket address on every (re)connect.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tracing::{info, warn};
use wraft_proto::PeerAddr;

use super::{LOG, TransportError};
use crate::certs::NodeId;

/// What [`Resolve::resolve`] returns: every socket address the name has now.
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a [`PeerAddr`] into socket addresses. The transport asks again on every dial (a
/// name may move), never caches, and bounds each call by `resolve_timeout_ms`.
/// [`DnsResolver`] (the system resolver) is the default; tests inject their own.
pub trait Resolve: Send + Sync + fmt::Debug + 'static {
    /// Every address `addr` names now (an IP address names itself).
    fn resolve<'a>(&'a self, addr: &'a PeerAddr) -> ResolveFuture<'a>;
}

/// The system resolver (`getaddrinfo` through [`tokio::net::lookup_host`]): `/etc/hosts`,
/// DNS, whatever the host's NSS says.
#[derive(Clone, Copy, Debug, Default)]
pub struct DnsResolver;

impl Resolve for DnsResolver {
    fn resolve<'a>(&'a self, addr: &'a PeerAddr) -> ResolveFuture<'a> {
        Box::pin(async move {
            match addr {
                PeerAddr::Ip(a) => Ok(vec![*a]),
                PeerAddr::Name { host, port } => {
                    Ok(tokio::net::lookup_host((host.as_str(), *port))
                        .await?
                        .collect())
                }
            }
        })
    }
}

#[derive(Debug)]
struct Book {
    entries: RwLock<BTreeMap<NodeId, PeerAddr>>,
    resolver: Arc<dyn Resolve>,
    /// The last resolution of each name (address or error text), so a change is logged once.
    last: Mutex<HashMap<NodeId, Result<SocketAddr, String>>>,
}

/// Node id → address of its transport endpoint (an IP address or a DNS name). Shared with the
/// node driver, which updates it as membership changes; links read it and resolve the address
/// on every (re)connect.
#[derive(Clone, Debug)]
pub struct AddressBook(Arc<Book>);

impl Default for AddressBook {
    fn default() -> AddressBook {
        AddressBook::with_resolver(DnsResolver, std::iter::empty::<(NodeId, PeerAddr)>())
    }
}

impl AddressBook {
    /// A book holding `entries`, resolving names with the system resolver.
    pub fn new<A: Into<PeerAddr>>(entries: impl IntoIterator<Item = (NodeId, A)>) -> AddressBook {
        AddressBook::with_resolver(DnsResolver, entries)
    }

    /// A book holding `entries` that resolves names with `resolver`.
    pub fn with_resolver<A: Into<PeerAddr>>(
        resolver: impl Resolve,
        entries: impl IntoIterator<Item = (NodeId, A)>,
    ) -> AddressBook {
        AddressBook(Arc::new(Book {
            entries: RwLock::new(entries.into_iter().map(|(k, v)| (k, v.into())).collect()),
            resolver: Arc::new(resolver),
            last: Mutex::new(HashMap::new()),
        }))
    }

    /// Address of `id`, if known.
    pub fn get(&self, id: NodeId) -> Option<PeerAddr> {
        self.0
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Set (or replace) the address of `id`; used at the next (re)connect.
    pub fn insert(&self, id: NodeId, addr: impl Into<PeerAddr>) {
        self.0
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, addr.into());
    }

    /// Forget `id`.
    pub fn remove(&self, id: NodeId) {
        self.0
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// A copy of the whole book.
    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerAddr> {
        self.0
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolve the address of `id` now, within `timeout`, preferring an address of the
    /// family of `local` (the endpoint's socket: an IPv4 socket cannot reach an IPv6 peer).
    /// A change of the outcome for a name (new address, or failing) is logged once.
    pub(super) async fn resolve(
        &self,
        id: NodeId,
        local: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<SocketAddr, TransportError> {
        let addr = self.get(id).ok_or(TransportError::UnknownPeer(id))?;
        if let PeerAddr::Ip(a) = addr {
            return Ok(a);
        }
        let outcome = match tokio::time::timeout(timeout, self.0.resolver.resolve(&addr)).await {
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(found)) => {
                let same_family =
                    |a: &&SocketAddr| local.is_none_or(|l| l.is_ipv4() == a.is_ipv4());
                found
                    .iter()
                    .find(same_family)
                    .or(found.first())
                    .copied()
                    .ok_or_else(|| "the name has no addresses".to_owned())
            }
        };
        let changed = {
            let mut last = self.0.last.lock().unwrap_or_else(|p| p.into_inner());
            last.insert(id, outcome.clone()).as_ref() != Some(&outcome)
        };
        match outcome {
            Ok(sock) => {
                if changed {
                    info!(target: LOG, peer = id, name = %addr, resolved = %sock, "peer name resolves to a new address");
                }
                Ok(sock)
            }
            Err(detail) => {
                if changed {
                    warn!(target: LOG, peer = id, name = %addr, error = %detail, "cannot resolve peer name; retrying on every reconnect");
                }
                Err(TransportError::Resolve {
                    peer: id,
                    addr,
                    detail,
                })
            }
        }
    }
}
