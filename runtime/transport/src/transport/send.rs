//! Sending raft messages: [`Transport::send`] queues on the peer's outbound link (creating it on
//! first use) and never waits on the network; [`Transport::disconnect_peer`] tears a link down.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tracing::debug;

use super::link::{self, PeerLink};
use super::{LOG, Transport, TransportError};
use crate::certs::NodeId;
use crate::frame::{self, FrameError};

/// What [`Transport::send`] did with a message. `send` never blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Appended to the peer's queue.
    Queued,
    /// The queue was full: its `dropped_msgs` older messages were discarded and
    /// this message queued alone (newest wins). The peer will need to be
    /// resynchronised from its acks.
    QueueOverflowed {
        /// How many queued messages were discarded.
        dropped_msgs: usize,
    },
    /// The link is down and backing off before reconnecting; the message was
    /// discarded (it would be stale by the time the link is back).
    DroppedLinkDown,
}

impl Transport {
    /// Queue `payload` for node `to` and return immediately; never waits on
    /// the network. Cost: one short mutex section and, on the first send to a
    /// peer, spawning its link task.
    ///
    /// Overflow policy (see [`SendOutcome`]): when adding the message would
    /// exceed `peer_queue_msgs_max` or `peer_queue_bytes_max`, every queued
    /// message is discarded and this one is queued alone. While the link is
    /// backing off, messages are discarded. Raft tolerates both: it
    /// resynchronises a peer from its acks.
    ///
    /// Fails if the payload exceeds `max_frame_bytes`, `to` is this node or
    /// has no address, or the transport is shut down.
    pub fn send(&self, to: NodeId, payload: Bytes) -> Result<SendOutcome, TransportError> {
        let cfg = &self.inner.shared.config;
        if payload.len() > cfg.max_frame_bytes as usize {
            return Err(FrameError::TooLarge {
                len: payload.len() as u64,
                max: cfg.max_frame_bytes,
            }
            .into());
        }
        if *self.inner.shared.shutdown.borrow() {
            return Err(TransportError::ShutDown);
        }
        if to == cfg.node_id {
            return Err(TransportError::SendToSelf(to));
        }
        if self.inner.shared.addresses.get(to).is_none() {
            return Err(TransportError::UnknownPeer(to));
        }
        let link = self.link(to);
        let outcome = link
            .lock()
            .push(payload, cfg.peer_queue_msgs_max, cfg.peer_queue_bytes_max);
        match outcome {
            SendOutcome::DroppedLinkDown => return Ok(outcome),
            SendOutcome::QueueOverflowed { dropped_msgs } => {
                debug!(target: LOG, peer = to, dropped_msgs, "peer queue overflowed; dropped queued messages");
            }
            SendOutcome::Queued => {}
        }
        link.notify.notify_one();
        Ok(outcome)
    }

    /// [`send`](Self::send) a postcard-encoded message.
    pub fn send_msg<T: Serialize>(
        &self,
        to: NodeId,
        msg: &T,
    ) -> Result<SendOutcome, TransportError> {
        let payload = frame::encode_payload(msg)?;
        self.send(to, Bytes::from(payload))
    }

    /// The outbound link to `to`, created (and its task spawned) on first use.
    fn link(&self, to: NodeId) -> Arc<PeerLink> {
        let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = links.get(&to) {
            return l.clone();
        }
        let link = Arc::new(PeerLink::new(to));
        links.insert(to, link.clone());
        let task = tokio::spawn(link::link_task(self.inner.shared.clone(), link.clone()));
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        link
    }

    /// Tear down the outbound link to `to` (e.g. after it left the cluster);
    /// queued messages are discarded. A later `send` creates a fresh link.
    pub fn disconnect_peer(&self, to: NodeId) {
        let link = self
            .inner
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&to);
        if let Some(link) = link {
            link.stop();
        }
    }
}
