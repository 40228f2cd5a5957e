//! What bounds transfers across a node: the send-side [`BandwidthLimiter`] shared by every
//! outgoing transfer, and the receive-side [`IncomingSlots`] that caps concurrent incoming ones
//! and keeps one stream per snapshot. Both are cheap to clone; clones share their state.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock, Weak};

use tokio::sync::watch;
use wraft_storage::SnapshotId;
use wraft_transport::NodeId;

use crate::progress::Progress;
use crate::receive::decide::{Arriving, SlotDecision, slot_for};
use crate::wire::BusyReason;

/// Runtime-adjustable send-side bandwidth cap shared by all outgoing transfers of a node
/// (a `governor` GCRA limiter). Cheap to clone; clones share the cap.
#[derive(Debug, Clone)]
pub struct BandwidthLimiter {
    inner: Arc<RwLock<Option<Arc<Cap>>>>,
}

#[derive(Debug)]
struct Cap {
    bytes_per_sec: u64,
    burst_cells: NonZeroU32,
    limiter: governor::DefaultDirectRateLimiter,
}

/// Bytes per limiter cell: the limiter counts KiB so that rates up to 4 TiB/s fit its `u32`.
const CELL_BYTES: u64 = 1024;

impl BandwidthLimiter {
    /// A limiter capping the summed rate of all transfers at `bytes_per_sec` (`None`: no cap).
    /// Rates below 1 KiB/s are raised to 1 KiB/s.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        let l = BandwidthLimiter {
            inner: Arc::new(RwLock::new(None)),
        };
        l.set(bytes_per_sec);
        l
    }

    /// Change the cap; takes effect from the next chunk of every running transfer.
    pub fn set(&self, bytes_per_sec: Option<u64>) {
        let cap = bytes_per_sec.map(|bps| {
            let kib = (bps / CELL_BYTES).clamp(1, u64::from(u32::MAX)) as u32;
            // Allow 50 ms worth of burst (at least 64 KiB) so pacing is smooth.
            let burst = (kib / 20).max(64).min(kib.max(64));
            let per_sec = NonZeroU32::new(kib).unwrap_or(NonZeroU32::MIN);
            let burst_cells = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Arc::new(Cap {
                bytes_per_sec: u64::from(kib) * CELL_BYTES,
                burst_cells,
                limiter: governor::RateLimiter::direct(
                    governor::Quota::per_second(per_sec).allow_burst(burst_cells),
                ),
            })
        });
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = cap;
    }

    /// The current cap in bytes per second, if any.
    pub fn get(&self) -> Option<u64> {
        self.current().map(|c| c.bytes_per_sec)
    }

    fn current(&self) -> Option<Arc<Cap>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until `bytes` may be sent under the current cap (returns at once without a cap).
    pub async fn acquire(&self, bytes: u64) {
        let Some(cap) = self.current() else { return };
        let mut cells = bytes.div_ceil(CELL_BYTES);
        while cells > 0 {
            let n = cells.min(u64::from(cap.burst_cells.get())) as u32;
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            // `n <= burst`, so capacity is never insufficient.
            let _ = cap.limiter.until_n_ready(n).await;
            cells -= u64::from(n.get());
        }
    }
}

/// A follower's incoming transfers: at most `limit` at once, each snapshot on at most one
/// stream, and each snapshot's partial file written by one stream at a time, also while a
/// stream is taken over (see [`crate::receive::decide`], step 3). Cheap to clone; clones share
/// the state.
#[derive(Debug, Clone)]
pub struct IncomingSlots {
    inner: Arc<Mutex<SlotState>>,
}

#[derive(Debug)]
struct SlotState {
    limit: usize,
    held: Vec<Held>,
    next_token: u64,
    /// Per snapshot, the lock on its partial file: alive while a stream holds it or waits for
    /// it, whichever slot that stream has (a stream being taken over holds none any more).
    files: HashMap<SnapshotId, Weak<tokio::sync::Mutex<()>>>,
}

/// A transfer holding a slot.
#[derive(Debug)]
struct Held {
    /// Which [`SlotPermit`] owns the slot.
    token: u64,
    id: SnapshotId,
    from: NodeId,
    leader_term: u64,
    progress: Arc<Progress>,
    /// Set when another offer takes the stream over.
    taken_over: watch::Sender<Option<TakenOverBy>>,
}

/// The offer that took a stream over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TakenOverBy {
    pub(crate) from: NodeId,
    pub(crate) leader_term: u64,
}

impl IncomingSlots {
    /// Allow `limit` concurrent incoming transfers (`TransferConfig::incoming_transfers_max`).
    pub fn new(limit: usize) -> Self {
        IncomingSlots {
            inner: Arc::new(Mutex::new(SlotState {
                limit: limit.max(1),
                held: Vec::new(),
                next_token: 0,
                files: HashMap::new(),
            })),
        }
    }

    /// Transfers currently holding a slot (a slot is released once the transfer's spool file
    /// is closed, slightly after `receive_snapshot` returns, or at once when another offer
    /// takes the transfer over).
    pub fn in_flight(&self) -> usize {
        self.lock().held.len()
    }

    /// The limit given to [`IncomingSlots::new`].
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Step 3 of a receive: a slot for snapshot `id` offered by node `from` in `leader_term`
    /// (its stream's liveness in `progress`), taking over a stream of the same snapshot if
    /// [`slot_for`] says so (that stream is told at once), or why not. The permit's
    /// [`SlotPermit::lock_file`] must be awaited before the partial file is opened.
    pub(crate) fn claim(
        &self,
        id: SnapshotId,
        from: NodeId,
        leader_term: u64,
        progress: &Arc<Progress>,
        takeover_idle_ms: u64,
    ) -> Result<Claim, BusyReason> {
        let mut st = self.lock();
        let arriving: Vec<Arriving> = st
            .held
            .iter()
            .map(|h| Arriving {
                id: h.id,
                from: h.from,
                leader_term: h.leader_term,
                idle_ms: h.progress.idle_ms(),
            })
            .collect();
        let took_over = match slot_for(&arriving, st.limit, id, from, leader_term, takeover_idle_ms)
        {
            SlotDecision::Busy(why) => return Err(why),
            SlotDecision::Take => None,
            SlotDecision::TakeOver(i) => {
                let old = st.held.swap_remove(i);
                old.taken_over
                    .send_replace(Some(TakenOverBy { from, leader_term }));
                Some(arriving[i])
            }
        };
        let token = st.next_token;
        st.next_token += 1;
        let (tx, rx) = watch::channel(None);
        st.held.push(Held {
            token,
            id,
            from,
            leader_term,
            progress: progress.clone(),
            taken_over: tx,
        });
        st.files.retain(|_, f| f.strong_count() > 0);
        let file = match st.files.get(&id).and_then(Weak::upgrade) {
            Some(f) => f,
            None => {
                let f = Arc::new(tokio::sync::Mutex::new(()));
                st.files.insert(id, Arc::downgrade(&f));
                f
            }
        };
        Ok(Claim {
            permit: SlotPermit {
                slots: self.clone(),
                token,
                file,
                file_guard: None,
                taken_over: rx,
            },
            took_over,
        })
    }
}

/// What [`IncomingSlots::claim`] gave an offer.
pub(crate) struct Claim {
    pub(crate) permit: SlotPermit,
    /// The stream of the same snapshot it took over, as it was.
    pub(crate) took_over: Option<Arriving>,
}

/// A held incoming-transfer slot; released when dropped (after the spool file is closed), or
/// when another offer takes the transfer over. Holds the snapshot's partial-file lock once
/// [`SlotPermit::lock_file`] returned.
pub(crate) struct SlotPermit {
    slots: IncomingSlots,
    token: u64,
    file: Arc<tokio::sync::Mutex<()>>,
    file_guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    taken_over: watch::Receiver<Option<TakenOverBy>>,
}

impl SlotPermit {
    /// Wait until no other stream has this snapshot's partial file (a stream taken over syncs
    /// and closes it first), then hold it until the permit is dropped.
    pub(crate) async fn lock_file(&mut self) {
        if self.file_guard.is_none() {
            self.file_guard = Some(self.file.clone().lock_owned().await);
        }
    }

    /// Resolves when another offer takes this transfer over; never otherwise. The future does
    /// not borrow the permit (the disk thread holds the permit while the stream runs).
    pub(crate) fn taken_over(&self) -> impl Future<Output = TakenOverBy> + Send + 'static {
        let mut rx = self.taken_over.clone();
        async move {
            let by = match rx.wait_for(Option::is_some).await {
                Ok(by) => *by,
                Err(_) => None,
            };
            match by {
                Some(by) => by,
                None => std::future::pending().await,
            }
        }
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        // A transfer taken over no longer has an entry: its slot went to the offer that took
        // it over. The file lock is released after this, with the `file_guard` field.
        let mut st = self.slots.lock();
        if let Some(i) = st.held.iter().position(|h| h.token == self.token) {
            st.held.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(last_index: u64) -> SnapshotId {
        SnapshotId {
            last_index,
            last_term: 1,
        }
    }

    fn claim(
        slots: &IncomingSlots,
        id: SnapshotId,
        from: NodeId,
        term: u64,
    ) -> Result<Claim, BusyReason> {
        slots.claim(id, from, term, &Arc::new(Progress::new(0)), 1000)
    }

    #[test]
    fn a_slot_is_held_until_its_permit_is_dropped() {
        let slots = IncomingSlots::new(2);
        let a = claim(&slots, id(1), 1, 7).unwrap().permit;
        assert!(
            matches!(
                claim(&slots, id(1), 3, 7),
                Err(BusyReason::AlreadyArriving { from: 1, .. })
            ),
            "one stream per snapshot"
        );
        let b = claim(&slots, id(2), 1, 7).unwrap().permit;
        assert_eq!(slots.in_flight(), 2);
        assert!(matches!(
            claim(&slots, id(3), 1, 7),
            Err(BusyReason::SlotsFull {
                in_flight: 2,
                limit: 2
            })
        ));
        drop(a);
        assert_eq!(slots.in_flight(), 1);
        let _c = claim(&slots, id(1), 1, 7).unwrap();
        drop(b);
        assert_eq!((slots.in_flight(), slots.limit()), (1, 2));
        assert_eq!(
            IncomingSlots::new(0).limit(),
            1,
            "a limit of 0 would refuse everything"
        );
    }

    #[tokio::test]
    async fn a_takeover_moves_the_slot_at_once_and_the_file_only_once_the_old_stream_lets_go() {
        let slots = IncomingSlots::new(1);
        let mut old = claim(&slots, id(1), 3, 4).unwrap().permit;
        old.lock_file().await;
        let Claim {
            permit: mut new,
            took_over,
        } = claim(&slots, id(1), 1, 7).unwrap();
        assert_eq!(took_over.map(|a| (a.from, a.leader_term)), Some((3, 4)));
        assert_eq!(
            old.taken_over().await,
            TakenOverBy {
                from: 1,
                leader_term: 7
            }
        );
        assert_eq!(slots.in_flight(), 1, "the slot moved, none was added");
        // The old stream still has the file: the new one waits.
        let wait = tokio::time::timeout(Duration::from_millis(50), new.lock_file()).await;
        assert!(
            wait.is_err(),
            "two streams must never hold one partial file"
        );
        drop(old);
        assert_eq!(
            slots.in_flight(),
            1,
            "the old permit leaves the new one's slot alone"
        );
        tokio::time::timeout(Duration::from_secs(1), new.lock_file())
            .await
            .expect("the file is free once the old stream let go");
        // A third offer takes over while the second still holds the file: it waits for it.
        let mut third = claim(&slots, id(1), 5, 8).unwrap().permit;
        let wait = tokio::time::timeout(Duration::from_millis(50), third.lock_file()).await;
        assert!(wait.is_err());
        drop(new);
        tokio::time::timeout(Duration::from_secs(1), third.lock_file())
            .await
            .expect("then it gets it");
        drop(third);
        assert_eq!(slots.in_flight(), 0);
        assert!(claim(&slots, id(1), 1, 9).is_ok(), "nothing is left behind");
    }

    #[test]
    fn the_bandwidth_cap_is_rounded_to_kib_and_can_be_lifted() {
        let l = BandwidthLimiter::new(Some(10_000));
        assert_eq!(l.get(), Some(9 * 1024));
        l.set(Some(10));
        assert_eq!(l.get(), Some(1024), "raised to 1 KiB/s");
        let clone = l.clone();
        clone.set(None);
        assert_eq!(l.get(), None, "clones share the cap");
    }
}
