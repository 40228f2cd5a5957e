//! Watch: a bounded, in-memory history of the results this node applied, and subscriptions
//! to one machine's results from a given index, first from the history and then live.
//!
//! ```text
//!  applier ──publish(events, applied)──▶ History (ring, bounded by entries and bytes)
//!                                          floor: every event above it is still here
//!  subscriber ──next()──▶ scans from its position; woken by a `watch` channel
//! ```
//!
//! Invariants:
//! - **Node-local, never replicated.** The history is derived from what the applier applied;
//!   nothing here feeds back into machines, the session table or snapshots.
//! - **The applier never waits for a subscriber.** Publishing takes one short lock, pushes,
//!   drops the oldest events past the bounds and bumps a counter; a subscriber that does not
//!   read holds nothing but its position. One that falls behind the floor gets
//!   [`WatchError::Compacted`], never a silent gap.
//! - **Every event above the floor is in the history, in index order, once.** The floor starts
//!   at the index the applier starts from (its snapshot), rises to the index of every event
//!   that falls out, and jumps to a snapshot installed from the leader. An index published
//!   again (a re-derivation after a node-local failure replays entries it had applied) is
//!   ignored: replicas check that a replay gives the same results.
//!
//! What is published, per machine: every `Apply` entry that reached the guest (its output, its
//! application error, or the trap recorded as its result), and the machine's lifecycle:
//! [`WatchOutcome::Deployed`] (a first deploy or an upgrade, with the applier's summary) and
//! [`WatchOutcome::Removed`]. A subscription survives both: after `Removed`, a later deploy
//! under the same name starts from an empty state and its events follow in the same stream.
//! Not published: duplicates answered from the session table (the first application was
//! published), refused entries (unknown session, stale sequence, no such machine), and entries
//! that are not commands for a machine (sessions, membership, checkpoints).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

/// Events a subscription looks at under the history's lock before it lets go and yields
/// (a machine with few events among many of other machines' costs the publisher no more than
/// this per wake-up of each subscriber).
pub const WATCH_SCAN_EVENTS_MAX: usize = 4096;
/// Live subscriptions per node; more are refused with [`WatchError::TooManySubscriptions`].
pub const WATCH_SUBSCRIPTIONS_MAX: usize = 10_000;
/// What one event costs the history besides its bytes (index, names, bookkeeping), for
/// `node.watch_history_bytes_max`.
pub const WATCH_EVENT_OVERHEAD_BYTES: u64 = 64;

/// One result of one machine, as applied on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchEvent {
    /// The log index of the entry.
    pub index: u64,
    /// The machine it was applied to (shared by its events: naming it costs no allocation per
    /// applied entry).
    #[serde(serialize_with = "as_str")]
    pub machine: Arc<str>,
    /// The command's bytes as the client proposed them (empty for lifecycle events).
    #[serde(serialize_with = "as_bytes")]
    pub command: Bytes,
    /// What applying it gave.
    pub outcome: WatchOutcome,
}

/// What an entry gave, as every replica records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchOutcome {
    /// The guest's output.
    Output(#[serde(serialize_with = "as_bytes")] Bytes),
    /// The guest's deterministic application error.
    AppError {
        /// Application-defined code.
        code: u32,
        /// Its message.
        message: String,
    },
    /// The guest trapped on this command (panic, fuel, stack); the trap is the recorded
    /// result and the machine goes on without the entry.
    MachineFault(String),
    /// The machine was deployed (first version, or after a removal: an empty state) or
    /// upgraded (its state carried across); `summary` says which and what runs now.
    Deployed {
        /// The applier's answer to the deploy, e.g. `deployed "kv" runs kv 0.1.0 (sha256 …)`.
        summary: String,
    },
    /// The machine was removed with its state. A later deploy under the name starts empty.
    Removed,
}

fn as_bytes<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

fn as_str<S: serde::Serializer>(text: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(text)
}

impl WatchEvent {
    /// What the event counts for against `node.watch_history_bytes_max`.
    fn cost_bytes(&self) -> u64 {
        let outcome = match &self.outcome {
            WatchOutcome::Output(b) => b.len(),
            WatchOutcome::AppError { message, .. } => message.len(),
            WatchOutcome::MachineFault(m) => m.len(),
            WatchOutcome::Deployed { summary } => summary.len(),
            WatchOutcome::Removed => 0,
        };
        WATCH_EVENT_OVERHEAD_BYTES + (self.machine.len() + self.command.len() + outcome) as u64
    }
}

/// Why a subscription cannot start or go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// Events at or after `from` may no longer be in this node's history (it keeps the newest
    /// `node.watch_history_entries_max` / `node.watch_history_bytes_max`, begins at the snapshot
    /// the node started from, and starts again at a snapshot installed from the leader).
    /// Resynchronise: read the machine's state, then watch from `applied_index + 1`.
    #[error(
        "events from index {from} are no longer in this node's watch history (it holds \
         {oldest_index} onwards; applied index {applied_index}): read the current state, then \
         watch from index {}",
        applied_index + 1
    )]
    Compacted {
        /// The index asked for (or the subscription's position when it fell behind).
        from: u64,
        /// The lowest `from` the history can serve now.
        oldest_index: u64,
        /// This node's applied index when it answered.
        applied_index: u64,
    },
    /// Too many live subscriptions on this node.
    #[error("too many watch subscriptions on this node (at most {max}); retry later")]
    TooManySubscriptions {
        /// [`WATCH_SUBSCRIPTIONS_MAX`].
        max: usize,
    },
    /// The node is stopping or stopped.
    #[error("the node is stopping; watch another node or retry after it restarts")]
    Stopped,
}

/// Bounds of the history: the newest events are kept while both hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchBounds {
    /// `node.watch_history_entries_max`.
    pub entries_max: u64,
    /// `node.watch_history_bytes_max` (see [`WATCH_EVENT_OVERHEAD_BYTES`]).
    pub bytes_max: u64,
}

impl WatchBounds {
    /// The bounds a node config asks for.
    pub fn from_config(node: &wraft_config::NodeSection) -> Self {
        WatchBounds {
            entries_max: node.watch_history_entries_max,
            bytes_max: node.watch_history_bytes_max,
        }
    }
}

/// The ring of recent events, without locking or waking (the unit the bounds are tested on).
#[derive(Debug)]
struct History {
    bounds: WatchBounds,
    events: VecDeque<WatchEvent>,
    bytes: u64,
    /// Every event with an index above this is in `events`.
    floor: u64,
    /// The applier's applied index, as last published; every event at or below it that is
    /// above `floor` is in `events`.
    applied: u64,
    closed: bool,
}

impl History {
    fn new(bounds: WatchBounds) -> Self {
        History {
            bounds,
            events: VecDeque::new(),
            bytes: 0,
            floor: 0,
            applied: 0,
            closed: false,
        }
    }

    /// Append `events` (index order) and advance the applied index to `applied`; events at or
    /// below the applied index already published are ignored. Returns how many fell out.
    fn push(&mut self, events: impl IntoIterator<Item = WatchEvent>, applied: u64) -> u64 {
        let mut dropped = 0;
        for e in events {
            if e.index <= self.applied || self.events.back().is_some_and(|b| b.index >= e.index) {
                continue;
            }
            self.bytes += e.cost_bytes();
            self.events.push_back(e);
            dropped += self.trim();
        }
        self.applied = self.applied.max(applied);
        debug_assert!(self.events.back().is_none_or(|e| e.index <= self.applied));
        dropped
    }

    /// Drop the oldest events until both bounds hold (an event larger than the whole byte
    /// bound falls out at once); the floor rises to the last one dropped.
    fn trim(&mut self) -> u64 {
        let mut dropped = 0;
        while self.events.len() as u64 > self.bounds.entries_max
            || self.bytes > self.bounds.bytes_max
        {
            let Some(e) = self.events.pop_front() else {
                break;
            };
            self.bytes -= e.cost_bytes();
            self.floor = e.index;
            dropped += 1;
        }
        dropped
    }

    /// The state jumped to `index` (start from a snapshot, or one installed from the leader):
    /// if that skips indexes this history has not seen, it starts again there.
    fn reset(&mut self, index: u64) {
        if index <= self.applied {
            return; // nothing skipped: the events up to `applied` stand
        }
        self.events.clear();
        self.bytes = 0;
        self.floor = index;
        self.applied = index;
    }

    fn compacted(&self, from: u64) -> WatchError {
        WatchError::Compacted {
            from,
            oldest_index: self.floor + 1,
            applied_index: self.applied,
        }
    }
}

struct Shared {
    history: Mutex<History>,
    /// Bumped on every change subscribers may be waiting for.
    changed: watch::Sender<u64>,
    subscriptions: AtomicUsize,
    metrics: crate::metrics::WatchMetrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, History> {
        // A panic while holding the lock leaves a consistent ring (every mutation is a push, a
        // pop or a clear); go on with it.
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn observe(&self, h: &History) {
        self.metrics.entries.set(h.events.len() as f64);
        self.metrics.bytes.set(h.bytes as f64);
    }
}

/// This node's watch history and its subscriptions. Cheap to clone; every clone is the same
/// hub. Made by [`crate::Node::start`]; get it with [`crate::Node::watch_hub`].
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.shared.lock();
        f.debug_struct("WatchHub")
            .field("floor", &h.floor)
            .field("applied", &h.applied)
            .field("events", &h.events.len())
            .field("bytes", &h.bytes)
            .finish()
    }
}

impl WatchHub {
    /// An empty history for node `node` that keeps the newest events within `bounds`.
    pub fn new(node: u64, bounds: WatchBounds) -> Self {
        let (changed, _) = watch::channel(0);
        WatchHub {
            shared: Arc::new(Shared {
                history: Mutex::new(History::new(bounds)),
                changed,
                subscriptions: AtomicUsize::new(0),
                metrics: crate::metrics::WatchMetrics::new(node),
            }),
        }
    }

    /// Subscribe to `machine`'s events with `index >= from`, from the history first, then as
    /// they are applied. `from = 0` means from the next applied index. The machine need not
    /// exist yet (its deploy is an event).
    ///
    /// Errors: [`WatchError::Compacted`] when events at or after `from` may have left the
    /// history (`from` at or below its floor); [`WatchError::TooManySubscriptions`];
    /// [`WatchError::Stopped`]. Costs one short lock.
    pub fn subscribe(&self, machine: &str, from: u64) -> Result<Subscription, WatchError> {
        let s = &self.shared;
        let h = s.lock();
        if h.closed {
            return Err(WatchError::Stopped);
        }
        let next = if from == 0 { h.applied + 1 } else { from };
        if next <= h.floor {
            s.metrics.compacted.increment(1);
            return Err(h.compacted(from));
        }
        let taken = s.subscriptions.fetch_add(1, Ordering::Relaxed);
        if taken >= WATCH_SUBSCRIPTIONS_MAX {
            s.subscriptions.fetch_sub(1, Ordering::Relaxed);
            return Err(WatchError::TooManySubscriptions {
                max: WATCH_SUBSCRIPTIONS_MAX,
            });
        }
        s.metrics.subscriptions.set((taken + 1) as f64);
        drop(h);
        Ok(Subscription {
            shared: s.clone(),
            changed: s.changed.subscribe(),
            machine: machine.to_owned(),
            next,
            ended: false,
        })
    }

    /// The applied index as last published, and the lowest index a subscription can start
    /// from (`floor + 1`).
    pub fn position(&self) -> (u64, u64) {
        let h = self.shared.lock();
        (h.applied, h.floor + 1)
    }

    /// Applier: `events` (index order, all at or below `applied`) were applied, and the applied
    /// index is now `applied`. Never waits for a subscriber.
    pub(crate) fn publish(&self, events: Vec<WatchEvent>, applied: u64) {
        let s = &self.shared;
        let mut h = s.lock();
        let before = h.applied;
        let dropped = h.push(events, applied);
        let moved = h.applied != before;
        s.observe(&h);
        drop(h);
        if dropped > 0 {
            s.metrics.dropped.increment(dropped);
        }
        if moved {
            s.wake();
        }
    }

    /// Applier: the state now starts at `index` (the snapshot it started from, or one installed
    /// from the leader). If that skips indexes, the history starts again and subscribers behind
    /// it get [`WatchError::Compacted`].
    pub(crate) fn reset(&self, index: u64) {
        let s = &self.shared;
        let mut h = s.lock();
        h.reset(index);
        s.observe(&h);
        drop(h);
        s.wake();
    }

    /// The node stops: every subscription ends (`next` gives `None`), new ones are refused.
    pub(crate) fn close(&self) {
        let s = &self.shared;
        s.lock().closed = true;
        s.wake();
    }
}

/// One machine's events from an index on. Dropping it unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    machine: String,
    /// Every event of the machine below this has been delivered (or was never there).
    next: u64,
    ended: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("machine", &self.machine)
            .field("position", &self.next)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let left = self.shared.subscriptions.fetch_sub(1, Ordering::Relaxed) - 1;
        self.shared.metrics.subscriptions.set(left as f64);
    }
}

/// What one look at the history found.
enum Scan {
    Event(WatchEvent),
    Compacted(WatchError),
    Closed,
    /// Looked at [`WATCH_SCAN_EVENTS_MAX`] events of other machines: yield, then go on.
    More,
    /// Nothing yet: wait for the next change.
    Wait,
}

impl Subscription {
    /// The machine watched.
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// The next index this subscription can deliver: every event of the machine below it has
    /// been delivered (or there was none). To resume after a disconnect, subscribe again from
    /// here. Advances past other machines' entries as the node applies them, so it can go in
    /// keep-alives.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next event, waiting for it if none is due yet. `Some(Err(Compacted))` if events
    /// this subscription has not seen have left the history (it fell too far behind, or a
    /// snapshot from the leader replaced the state): the stream then ends. `None` once the
    /// node stops (or after the error).
    ///
    /// Cancel-safe: dropping the future loses nothing; the position moves only with an event
    /// returned or past indexes with no event for this machine.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, WatchError>> {
        if self.ended {
            return None;
        }
        loop {
            // Mark the current generation seen before looking, so a publish after the look
            // wakes the wait below.
            self.changed.borrow_and_update();
            match self.scan() {
                Scan::Event(e) => return Some(Ok(e)),
                Scan::Compacted(e) => {
                    self.ended = true;
                    self.shared.metrics.compacted.increment(1);
                    return Some(Err(e));
                }
                Scan::Closed => {
                    self.ended = true;
                    return None;
                }
                Scan::More => tokio::task::yield_now().await,
                Scan::Wait => {
                    if self.changed.changed().await.is_err() {
                        // Unreachable while `self.shared` holds the sender; treat as stopped.
                        self.ended = true;
                        return None;
                    }
                }
            }
        }
    }

    fn scan(&mut self) -> Scan {
        let h = self.shared.lock();
        if h.closed {
            return Scan::Closed;
        }
        if self.next <= h.floor {
            return Scan::Compacted(h.compacted(self.next));
        }
        let start = h.events.partition_point(|e| e.index < self.next);
        for e in h.events.range(start..).take(WATCH_SCAN_EVENTS_MAX) {
            if *e.machine == *self.machine {
                self.next = e.index + 1;
                return Scan::Event(e.clone());
            }
            self.next = e.index + 1;
        }
        if start + WATCH_SCAN_EVENTS_MAX < h.events.len() {
            return Scan::More;
        }
        // Everything up to the applied index has been looked at.
        self.next = self.next.max(h.applied + 1);
        Scan::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(index: u64, machine: &str, out: &[u8]) -> WatchEvent {
        WatchEvent {
            index,
            machine: machine.into(),
            command: Bytes::from_static(b"c"),
            outcome: WatchOutcome::Output(Bytes::copy_from_slice(out)),
        }
    }

    fn bounds(entries_max: u64, bytes_max: u64) -> WatchBounds {
        WatchBounds {
            entries_max,
            bytes_max,
        }
    }

    #[test]
    fn ring_keeps_the_newest_entries_within_the_entry_bound_and_raises_the_floor() {
        let mut h = History::new(bounds(3, u64::MAX));
        let dropped = h.push((1..=5).map(|i| ev(i, "m", b"x")), 5);
        assert_eq!(dropped, 2);
        assert_eq!(
            h.events.iter().map(|e| e.index).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!((h.floor, h.applied), (2, 5));
        assert_eq!(h.bytes, 3 * ev(1, "m", b"x").cost_bytes());
    }

    #[test]
    fn ring_keeps_the_newest_entries_within_the_byte_bound() {
        let one = ev(1, "m", &[0; 100]).cost_bytes();
        let mut h = History::new(bounds(1_000, 2 * one + one / 2));
        h.push((1..=10).map(|i| ev(i, "m", &[0; 100])), 10);
        assert_eq!(h.events.len(), 2);
        assert!(h.bytes <= h.bounds.bytes_max);
        assert_eq!(h.floor, 8);
        // An event larger than the whole bound cannot be kept: it falls out at once.
        h.push([ev(11, "m", &[0; 1000])], 11);
        assert!(h.events.is_empty());
        assert_eq!((h.floor, h.bytes), (11, 0));
    }

    #[test]
    fn republished_indexes_are_ignored_and_a_snapshot_jump_restarts_the_history() {
        let mut h = History::new(bounds(10, u64::MAX));
        h.push((1..=3).map(|i| ev(i, "m", b"x")), 3);
        h.push((2..=4).map(|i| ev(i, "m", b"y")), 4);
        assert_eq!(
            h.events.iter().map(|e| e.index).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        h.reset(4); // nothing skipped
        assert_eq!(h.events.len(), 4);
        h.reset(9);
        assert!(h.events.is_empty());
        assert_eq!((h.floor, h.applied), (9, 9));
    }

    #[tokio::test]
    async fn a_subscription_sees_its_machine_only_and_its_position_follows_the_applied_index() {
        let hub = WatchHub::new(0, bounds(100, u64::MAX));
        let mut s = hub.subscribe("a", 0).unwrap();
        assert_eq!(s.position(), 1);
        hub.publish(
            vec![ev(1, "b", b"1"), ev(2, "a", b"2"), ev(3, "b", b"3")],
            4,
        );
        assert_eq!(s.next().await.unwrap().unwrap().index, 2);
        assert_eq!(s.position(), 3);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), s.next()).await;
        assert!(waited.is_err(), "nothing more for a");
        assert_eq!(s.position(), 5);
        hub.close();
        assert_eq!(s.next().await, None);
        assert_eq!(hub.subscribe("a", 0).unwrap_err(), WatchError::Stopped);
    }

    #[tokio::test]
    async fn a_subscriber_behind_the_floor_gets_compacted_then_the_end() {
        let hub = WatchHub::new(0, bounds(2, u64::MAX));
        let mut s = hub.subscribe("a", 1).unwrap();
        hub.publish((1..=5).map(|i| ev(i, "a", b"x")).collect(), 5);
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(
            err,
            WatchError::Compacted {
                from: 1,
                oldest_index: 4,
                applied_index: 5
            }
        );
        assert_eq!(s.next().await, None);
        assert!(matches!(
            hub.subscribe("a", 3),
            Err(WatchError::Compacted { .. })
        ));
        let mut s = hub.subscribe("a", 4).unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().index, 4);
    }

    #[tokio::test]
    async fn a_snapshot_install_compacts_live_subscribers_behind_it() {
        let hub = WatchHub::new(0, bounds(100, u64::MAX));
        hub.publish(vec![ev(1, "a", b"x")], 1);
        let mut s = hub.subscribe("a", 0).unwrap();
        hub.reset(10);
        assert!(matches!(
            s.next().await,
            Some(Err(WatchError::Compacted {
                from: 2,
                oldest_index: 11,
                applied_index: 10
            }))
        ));
    }

    #[tokio::test]
    async fn a_scan_through_many_other_events_yields_and_finds_the_match() {
        let hub = WatchHub::new(0, bounds(u64::MAX, u64::MAX));
        let n = 3 * WATCH_SCAN_EVENTS_MAX as u64;
        let mut events: Vec<_> = (1..=n).map(|i| ev(i, "busy", b"")).collect();
        events.push(ev(n + 1, "quiet", b"q"));
        hub.publish(events, n + 1);
        let mut s = hub.subscribe("quiet", 1).unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().index, n + 1);
    }

    #[test]
    fn subscriptions_are_bounded_and_counted_down_on_drop() {
        let hub = WatchHub::new(0, bounds(10, u64::MAX));
        let subs: Vec<_> = (0..WATCH_SUBSCRIPTIONS_MAX)
            .map(|_| hub.subscribe("a", 0).unwrap())
            .collect();
        assert!(matches!(
            hub.subscribe("a", 0),
            Err(WatchError::TooManySubscriptions { .. })
        ));
        drop(subs);
        assert!(hub.subscribe("a", 0).is_ok());
    }
}
