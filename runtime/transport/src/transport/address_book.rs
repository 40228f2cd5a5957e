//! Node id → address of its transport endpoint, shared with the node driver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::certs::NodeId;

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
