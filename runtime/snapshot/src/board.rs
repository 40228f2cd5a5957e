//! The live transfers of one node, for status pages and the web console: which snapshot moves
//! to or from which peer, how big it is and how far it has got.
//!
//! Metrics carry the same progress as gauges ([`crate::metrics`]); the board adds what a
//! person watching one transfer wants and a gauge cannot say: the snapshot's index, where the
//! transfer resumed from and when it started, so that a rate can be shown. One entry per
//! direction and peer: [`Entry`] removes its own on drop, however the transfer ends, and a
//! newer transfer with the same peer takes the place of an older one still winding down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wraft_transport::NodeId;

/// Which way a transfer moves, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// This node (the leader) sends the snapshot.
    Send,
    /// This node (a follower) receives it.
    Receive,
}

impl Direction {
    /// `"send"` or `"receive"`, as the metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Receive => "receive",
        }
    }
}

/// One transfer in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTransfer {
    /// Which way it moves.
    pub direction: Direction,
    /// The other node.
    pub peer: NodeId,
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Size of the snapshot file, bytes.
    pub file_len: u64,
    /// Where this transfer started: the follower's durable offset when it accepted the offer
    /// (0 for a transfer from scratch).
    pub resumed_from: u64,
    /// Bytes done: written to the stream (send) or received and checked (receive).
    pub done: u64,
    /// How long ago the offer was accepted.
    pub elapsed: Duration,
}

impl LiveTransfer {
    /// Bytes per second since the offer was accepted (the resumed prefix does not count);
    /// `None` before a millisecond has passed.
    pub fn bytes_per_sec(&self) -> Option<u64> {
        let secs = self.elapsed.as_secs_f64();
        (self.elapsed >= Duration::from_millis(1))
            .then(|| (self.done.saturating_sub(self.resumed_from) as f64 / secs) as u64)
    }
}

/// A node's live transfers. Cloning shares the board; two configurations are equal when they
/// report to the same board.
#[derive(Clone, Default)]
pub struct TransferBoard {
    inner: Arc<Mutex<BTreeMap<(Direction, NodeId), Slot>>>,
    next_token: Arc<AtomicU64>,
}

struct Slot {
    /// Which [`Entry`] owns it: a newer transfer with the same peer replaces the slot, and the
    /// older entry's drop must then leave it alone.
    token: u64,
    index: u64,
    file_len: u64,
    resumed_from: u64,
    done: u64,
    started: Instant,
}

impl TransferBoard {
    /// A new, empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every transfer in flight, sends first, each direction by peer.
    pub fn live(&self) -> Vec<LiveTransfer> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|((direction, peer), s)| LiveTransfer {
                direction: *direction,
                peer: *peer,
                index: s.index,
                file_len: s.file_len,
                resumed_from: s.resumed_from,
                done: s.done,
                elapsed: s.started.elapsed(),
            })
            .collect()
    }

    /// Put a transfer on the board; it stays there while the returned [`Entry`] lives.
    pub(crate) fn begin(
        &self,
        direction: Direction,
        peer: NodeId,
        index: u64,
        file_len: u64,
        resumed_from: u64,
    ) -> Entry {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            token,
            index,
            file_len,
            resumed_from,
            done: resumed_from,
            started: Instant::now(),
        };
        self.lock().insert((direction, peer), slot);
        Entry {
            board: self.clone(),
            key: (direction, peer),
            token,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Direction, NodeId), Slot>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for TransferBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferBoard")
            .field("live", &self.lock().len())
            .finish()
    }
}

impl PartialEq for TransferBoard {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for TransferBoard {}

/// One transfer's place on the board; removed when dropped.
pub(crate) struct Entry {
    board: TransferBoard,
    key: (Direction, NodeId),
    token: u64,
}

impl Entry {
    /// The transfer has done `done` bytes.
    pub(crate) fn done(&self, done: u64) {
        if let Some(s) = self.board.lock().get_mut(&self.key)
            && s.token == self.token
        {
            s.done = done;
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut map = self.board.lock();
        if map.get(&self.key).is_some_and(|s| s.token == self.token) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_shows_its_progress_and_leaves_the_board_when_dropped() {
        let board = TransferBoard::new();
        let e = board.begin(Direction::Send, 2, 40, 1000, 100);
        e.done(600);
        let live = board.live();
        assert_eq!(live.len(), 1);
        let t = &live[0];
        assert_eq!(
            (
                t.direction,
                t.peer,
                t.index,
                t.file_len,
                t.resumed_from,
                t.done
            ),
            (Direction::Send, 2, 40, 1000, 100, 600)
        );
        drop(e);
        assert!(board.live().is_empty());
    }

    #[test]
    fn an_older_transfers_end_does_not_remove_a_newer_one_with_the_same_peer() {
        let board = TransferBoard::new();
        let old = board.begin(Direction::Receive, 1, 10, 500, 0);
        let new = board.begin(Direction::Receive, 1, 20, 800, 0);
        old.done(400);
        drop(old);
        let live = board.live();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!((live[0].index, live[0].done), (20, 0));
        new.done(800);
        assert_eq!(board.live()[0].done, 800);
    }

    #[test]
    fn the_rate_counts_only_what_this_transfer_moved() {
        let t = LiveTransfer {
            direction: Direction::Send,
            peer: 2,
            index: 1,
            file_len: 4000,
            resumed_from: 1000,
            done: 3000,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(t.bytes_per_sec(), Some(1000));
        let fresh = LiveTransfer {
            elapsed: Duration::ZERO,
            ..t
        };
        assert_eq!(fresh.bytes_per_sec(), None);
    }

    #[test]
    fn clones_share_one_board() {
        let a = TransferBoard::new();
        let b = a.clone();
        let _e = a.begin(Direction::Send, 3, 1, 1, 0);
        assert_eq!(b.live().len(), 1);
        assert_eq!(a, b);
        assert_ne!(a, TransferBoard::new());
    }
}
