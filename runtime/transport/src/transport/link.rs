//! Outgoing raft links: one per peer, created by the first [`Transport::send`] to it, each
//! driven by its own [`link_task`].
//!
//! ```text
//! Transport::send ─push─▶ LinkQueue ─notify─▶ link_task: dial wraft-raft/1, open one uni stream,
//!   (one short mutex,     (bounded by                   write hello {from, to}, then pump:
//!    never awaits)         msgs and bytes)              drain the queue as raft frames
//! ```
//!
//! A link is `Connecting` → `Connected` → `Backoff` (link down or dial failed) → `Connecting` ….
//! Entering `Backoff` clears the queue and sends during `Backoff` are dropped, so stale messages
//! are never replayed after a reconnect; Raft resynchronises the peer from its acks. Reconnect
//! delays double from `reconnect_backoff_min_ms` to `reconnect_backoff_max_ms`, each jittered.
//!
//! [`Transport::send`]: super::Transport::send

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, SendStream, VarInt};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::endpoint::dial;
use super::{CODE_LINK_CLOSED, LOG, PeerStats, SendOutcome, Shared, TransportError};
use crate::certs::NodeId;
use crate::frame::{self, FrameError, KIND_HELLO, KIND_RAFT};

/// Per-link state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Dialing; messages queue (up to the bounds) and go out once connected.
    Connecting,
    /// Connected; the link task drains the queue onto the stream.
    Connected,
    /// Last attempt failed or the link dropped; waiting to retry. Sends are discarded.
    Backoff,
}

/// The first frame on a raft link's stream. The receiver checks `from` against the dialer's
/// certificate and `to` against itself (a stale address book can point at another node).
#[derive(Serialize, Deserialize, Debug)]
pub(super) struct Hello {
    pub(super) from: NodeId,
    pub(super) to: NodeId,
}

/// A link's queue and counters. `bytes` is the payload bytes in `msgs`.
pub(super) struct LinkQueue {
    msgs: VecDeque<Bytes>,
    bytes: usize,
    state: LinkState,
    sent: u64,
    dropped_overflow: u64,
    dropped_down: u64,
    connects: u64,
}

impl LinkQueue {
    /// Queue `payload` under the overflow policy [`Transport::send`] describes: dropped while
    /// backing off; if it would exceed `msgs_max` or `bytes_max`, every queued message is
    /// discarded and it is queued alone.
    ///
    /// [`Transport::send`]: super::Transport::send
    pub(super) fn push(
        &mut self,
        payload: Bytes,
        msgs_max: usize,
        bytes_max: usize,
    ) -> SendOutcome {
        if self.state == LinkState::Backoff {
            self.dropped_down += 1;
            return SendOutcome::DroppedLinkDown;
        }
        let over = self.msgs.len() + 1 > msgs_max || self.bytes + payload.len() > bytes_max;
        let outcome = if over {
            let dropped = self.msgs.len();
            self.dropped_overflow += dropped as u64;
            self.msgs.clear();
            self.bytes = 0;
            SendOutcome::QueueOverflowed {
                dropped_msgs: dropped,
            }
        } else {
            SendOutcome::Queued
        };
        self.bytes += payload.len();
        self.msgs.push_back(payload);
        outcome
    }

    pub(super) fn stats(&self) -> PeerStats {
        PeerStats {
            state: self.state,
            queued_msgs: self.msgs.len(),
            queued_bytes: self.bytes,
            sent_msgs: self.sent,
            dropped_overflow_msgs: self.dropped_overflow,
            dropped_link_down_msgs: self.dropped_down,
            connects: self.connects,
        }
    }

    fn clear_as_down(&mut self) {
        self.dropped_down += self.msgs.len() as u64;
        self.msgs.clear();
        self.bytes = 0;
    }
}

/// One outbound link, shared by the transport handle (which queues and stops) and its task.
pub(super) struct PeerLink {
    id: NodeId,
    queue: Mutex<LinkQueue>,
    /// Wakes the task when a message is queued.
    pub(super) notify: Notify,
    stop: AtomicBool,
    stop_notify: Notify,
}

impl PeerLink {
    /// A link to `id` with an empty queue, `Connecting`.
    pub(super) fn new(id: NodeId) -> PeerLink {
        PeerLink {
            id,
            queue: Mutex::new(LinkQueue {
                msgs: VecDeque::new(),
                bytes: 0,
                state: LinkState::Connecting,
                sent: 0,
                dropped_overflow: 0,
                dropped_down: 0,
                connects: 0,
            }),
            notify: Notify::new(),
            stop: AtomicBool::new(false),
            stop_notify: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, LinkQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the link task to exit. `notify_waiters` wakes a task already
    /// waiting; the stored `notify_one` permit catches one about to wait.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
        self.stop_notify.notify_one();
    }

    fn set_state(&self, s: LinkState) {
        let mut q = self.lock();
        q.state = s;
        if s == LinkState::Backoff {
            q.clear_as_down();
        }
    }
}

/// Why [`pump`] stopped: the link was stopped, or it is down and the task reconnects.
#[derive(Debug, thiserror::Error)]
enum LinkDown {
    #[error("stopped")]
    Stopped,
    #[error("connection closed: {0}")]
    ConnectionClosed(quinn::ConnectionError),
    #[error("peer stopped the stream: {0:?}")]
    StreamStopped(Result<Option<VarInt>, quinn::StoppedError>),
    #[error("encode: {0}")]
    Encode(FrameError),
    #[error("write failed: {0}")]
    Write(quinn::WriteError),
}

fn jittered(ms: u64) -> Duration {
    // Uniform in [ms/2, ms]: spreads reconnect storms after a partition heals.
    let lo = ms / 2;
    Duration::from_millis(fastrand::u64(lo..=ms.max(lo)))
}

/// Connect, pump until the link goes down, back off, reconnect; until the link is stopped or
/// the transport shuts down.
pub(super) async fn link_task(shared: Shared, link: Arc<PeerLink>) {
    let cfg = shared.config.clone();
    let mut backoff_ms = cfg.reconnect_backoff_min_ms;
    let mut failures: u32 = 0;
    loop {
        if link.stop.load(Ordering::Acquire) || *shared.shutdown.borrow() {
            break;
        }
        link.set_state(LinkState::Connecting);
        match connect_link(&shared, link.id).await {
            Ok((conn, stream)) => {
                {
                    let mut q = link.lock();
                    q.state = LinkState::Connected;
                    q.connects += 1;
                }
                if failures > 0 {
                    info!(target: LOG, peer = link.id, after_failures = failures, "raft link re-established");
                } else {
                    debug!(target: LOG, peer = link.id, "raft link established");
                }
                failures = 0;
                backoff_ms = cfg.reconnect_backoff_min_ms;
                let reason = pump(&link, &conn, stream).await;
                conn.close(VarInt::from_u32(CODE_LINK_CLOSED), b"link closed");
                if link.stop.load(Ordering::Acquire) || *shared.shutdown.borrow() {
                    break;
                }
                warn!(target: LOG, peer = link.id, %reason, "raft link down; dropping its queue and reconnecting");
            }
            Err(e) => {
                failures += 1;
                // Log the first failure and then every 16th, to bound log volume for a dead peer.
                if failures == 1 || failures.is_multiple_of(16) {
                    warn!(target: LOG, peer = link.id, failures, error = %e, "raft link connect failed");
                } else {
                    debug!(target: LOG, peer = link.id, failures, error = %e, "raft link connect failed");
                }
            }
        }
        link.set_state(LinkState::Backoff);
        let delay = jittered(backoff_ms);
        backoff_ms = (backoff_ms.saturating_mul(2)).min(cfg.reconnect_backoff_max_ms);
        let mut shutdown = shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = link.stop_notify.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    link.set_state(LinkState::Backoff);
}

/// Dial `to` on `wraft-raft/1`, open the link's stream and write the hello.
async fn connect_link(
    shared: &Shared,
    to: NodeId,
) -> Result<(Connection, SendStream), TransportError> {
    let conn = dial(shared, to, crate::tls::Alpn::Raft).await?;
    let mut stream = conn.open_uni().await?;
    let hello = frame::encode_payload(&Hello {
        from: shared.config.node_id,
        to,
    })?;
    frame::write_frame(
        &mut stream,
        KIND_HELLO,
        &hello,
        shared.config.max_frame_bytes,
    )
    .await?;
    Ok((conn, stream))
}

/// Drain the queue onto the stream until the link fails or is stopped.
async fn pump(link: &PeerLink, conn: &Connection, mut stream: SendStream) -> LinkDown {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        if link.stop.load(Ordering::Acquire) {
            return LinkDown::Stopped;
        }
        let notified = link.notify.notified();
        let batch: Vec<Bytes> = {
            let mut q = link.lock();
            q.bytes = 0;
            q.msgs.drain(..).collect()
        };
        if batch.is_empty() {
            tokio::select! {
                _ = notified => continue,
                _ = link.stop_notify.notified() => return LinkDown::Stopped,
                e = conn.closed() => return LinkDown::ConnectionClosed(e),
                r = stream.stopped() => return LinkDown::StreamStopped(r),
            }
        }
        chunks.clear();
        for payload in &batch {
            // Payload sizes were checked in `send`, so encoding cannot fail here.
            match frame::encode_header(KIND_RAFT, payload, u32::MAX) {
                Ok(h) => chunks.push(Bytes::copy_from_slice(&h)),
                Err(e) => return LinkDown::Encode(e),
            }
            chunks.push(payload.clone());
        }
        tokio::select! {
            r = stream.write_all_chunks(&mut chunks) => {
                if let Err(e) = r {
                    return LinkDown::Write(e);
                }
                link.lock().sent += batch.len() as u64;
            }
            _ = link.stop_notify.notified() => return LinkDown::Stopped,
            e = conn.closed() => return LinkDown::ConnectionClosed(e),
        }
    }
}
