//! The other members a follower reads segments of an offered snapshot from (multi-source
//! catch-up, `wraft_snapshot::peers`), over the client API's `SnapshotSegmentsHeld` and
//! `SnapshotSegment` (a node's certificate has the admin role). Which members: every one in the address book but this node
//! and the leader, less the ones that recently failed or sent wrong bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wraft_proto::{Reply, Request};
use wraft_snapshot::SnapshotPeers;
use wraft_snapshot::peers::{PeerHeld, PeerRead};
use wraft_transport::{AddressBook, NodeId};

use crate::modules::Modules;

/// How long a member that failed a read is left out.
const DISTRUST_FOR: Duration = Duration::from_secs(300);
/// How long a member that could not say which segments it holds is left out.
const UNABLE_FOR: Duration = Duration::from_secs(60);

/// [`SnapshotPeers`] for a node.
pub(crate) struct Members {
    node: NodeId,
    book: AddressBook,
    modules: Arc<Modules>,
    /// Members that failed a read or sent wrong bytes, since when.
    distrusted: Mutex<HashMap<NodeId, Instant>>,
    /// Members that could not say which segments they hold (down, or an older version), since
    /// when.
    unable: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Members {
    pub(crate) fn new(node: NodeId, book: AddressBook, modules: Arc<Modules>) -> Members {
        Members {
            node,
            book,
            modules,
            distrusted: Mutex::new(HashMap::new()),
            unable: Arc::default(),
        }
    }
}

impl SnapshotPeers for Members {
    fn candidates(&self, leader: NodeId) -> Vec<NodeId> {
        let mut distrusted = self.distrusted.lock().unwrap_or_else(|p| p.into_inner());
        distrusted.retain(|_, since| since.elapsed() < DISTRUST_FOR);
        let mut unable = self.unable.lock().unwrap_or_else(|p| p.into_inner());
        unable.retain(|_, since| since.elapsed() < UNABLE_FOR);
        self.book
            .snapshot()
            .into_keys()
            .filter(|&id| {
                id != self.node
                    && id != leader
                    && !distrusted.contains_key(&id)
                    && !unable.contains_key(&id)
            })
            .collect()
    }

    fn held(&self, peer: NodeId, hashes: Vec<[u8; 32]>) -> PeerHeld {
        let (modules, unable) = (self.modules.clone(), self.unable.clone());
        Box::pin(async move {
            let request = Request::SnapshotSegmentsHeld { hashes };
            let answer = match modules.forwarder().call_member(peer, &request).await {
                Ok(Ok(Reply::SegmentsHeld { held })) => return Ok(held),
                Ok(Ok(other)) => format!("node {peer} answered {other:?}"),
                Ok(Err(e)) => format!("node {peer}: {e}"),
                Err(e) => e.to_string(),
            };
            // Down, or a version that cannot take the question: not asked again for a while
            // (each failed call also drops the connection shared with the module calls).
            unable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer, Instant::now());
            Err(answer)
        })
    }

    fn read(&self, peer: NodeId, hash: [u8; 32], len: u32) -> PeerRead {
        let modules = self.modules.clone();
        Box::pin(async move {
            let request = Request::SnapshotSegment { hash, len };
            match modules.forwarder().call_member(peer, &request).await {
                Ok(Ok(Reply::Segment { data })) => Ok(data),
                Ok(Ok(other)) => Err(format!("node {peer} answered {other:?}")),
                Ok(Err(e)) => Err(format!("node {peer}: {e}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn distrust(&self, peer: NodeId, why: &str) {
        tracing::warn!(target: "wraft::snapshot", node = self.node, peer, error = why,
            "leaving a member out of snapshot reads for {} s", DISTRUST_FOR.as_secs());
        self.distrusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }
}
