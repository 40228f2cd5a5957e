//! What bounds transfers across a node: the send-side [`BandwidthLimiter`] shared by every
//! outgoing transfer, and the receive-side [`IncomingSlots`] that caps concurrent incoming ones.
//! Both are cheap to clone; clones share their state.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};

use wraft_storage::SnapshotId;

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

/// Counts a follower's concurrent incoming transfers (at most one per snapshot id); an offer
/// beyond the limit is answered `Busy`. Cheap to clone; clones share the count.
#[derive(Debug, Clone)]
pub struct IncomingSlots {
    inner: Arc<Mutex<SlotState>>,
}

#[derive(Debug)]
struct SlotState {
    limit: usize,
    ids: Vec<SnapshotId>,
}

impl IncomingSlots {
    /// Allow `limit` concurrent incoming transfers (`TransferConfig::max_incoming_transfers`).
    pub fn new(limit: usize) -> Self {
        IncomingSlots {
            inner: Arc::new(Mutex::new(SlotState {
                limit: limit.max(1),
                ids: Vec::new(),
            })),
        }
    }

    /// Transfers currently holding a slot (a slot is released once the transfer's spool file
    /// is closed, slightly after `receive_snapshot` returns).
    pub fn in_flight(&self) -> usize {
        self.lock().ids.len()
    }

    /// The limit given to [`IncomingSlots::new`].
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A held incoming-transfer slot; released when dropped (after the spool file is closed).
pub(crate) struct SlotPermit {
    slots: IncomingSlots,
    id: SnapshotId,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        let mut st = self.slots.lock();
        if let Some(i) = st.ids.iter().position(|x| *x == self.id) {
            st.ids.swap_remove(i);
        }
    }
}

impl IncomingSlots {
    /// Take a slot for `id`, or `Err((in_flight, limit))`.
    pub(crate) fn try_acquire(&self, id: SnapshotId) -> Result<SlotPermit, (usize, usize)> {
        let mut st = self.lock();
        slot_for(&st.ids, st.limit, id)?;
        st.ids.push(id);
        Ok(SlotPermit {
            slots: self.clone(),
            id,
        })
    }
}

/// The slot rule (pure): an offer of `id` gets a slot unless `limit` transfers already hold
/// one or `id` is already arriving on another stream; `Err((in_flight, limit))` is answered
/// `Busy`.
pub fn slot_for(ids: &[SnapshotId], limit: usize, id: SnapshotId) -> Result<(), (usize, usize)> {
    if ids.len() >= limit || ids.contains(&id) {
        return Err((ids.len(), limit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(last_index: u64) -> SnapshotId {
        SnapshotId {
            last_index,
            last_term: 1,
        }
    }

    #[test]
    fn an_offer_gets_a_slot_below_the_limit_unless_its_id_is_already_arriving() {
        assert_eq!(slot_for(&[], 1, id(5)), Ok(()));
        assert_eq!(slot_for(&[id(4)], 1, id(5)), Err((1, 1)));
        assert_eq!(slot_for(&[id(4)], 2, id(5)), Ok(()));
        assert_eq!(slot_for(&[id(5)], 2, id(5)), Err((1, 2)));
    }

    #[test]
    fn a_slot_is_held_until_its_permit_is_dropped() {
        let slots = IncomingSlots::new(2);
        let a = slots.try_acquire(id(1)).unwrap();
        assert!(slots.try_acquire(id(1)).is_err(), "one transfer per id");
        let b = slots.try_acquire(id(2)).unwrap();
        assert_eq!(slots.in_flight(), 2);
        assert_eq!(slots.try_acquire(id(3)).err(), Some((2, 2)));
        drop(a);
        assert_eq!(slots.in_flight(), 1);
        let _c = slots.try_acquire(id(1)).unwrap();
        drop(b);
        assert_eq!((slots.in_flight(), slots.limit()), (1, 2));
        assert_eq!(
            IncomingSlots::new(0).limit(),
            1,
            "a limit of 0 would refuse everything"
        );
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
