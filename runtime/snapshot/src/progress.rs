//! The progress watchdog of one transfer: transfers have no deadline that depends on their
//! size; each side aborts only after `progress_timeout_ms` without anything moving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Last time anything moved, shared by the futures (and the receiver's disk thread) of one
/// transfer. The watchdog fires `progress_timeout_ms` after the last touch.
#[derive(Debug)]
pub(crate) struct Progress {
    base: Instant,
    last_ms: AtomicU64,
    offset: AtomicU64,
}

impl Progress {
    pub(crate) fn new(offset: u64) -> Self {
        Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            offset: AtomicU64::new(offset),
        }
    }
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
    pub(crate) fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
    pub(crate) fn advance(&self, offset: u64) {
        self.offset.store(offset, Ordering::Relaxed);
        self.touch();
    }
    pub(crate) fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }
    /// Milliseconds since anything was last touched.
    pub(crate) fn idle_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
    /// Resolves once nothing was touched for `timeout_ms`.
    pub(crate) async fn stalled(&self, timeout_ms: u64) {
        loop {
            let deadline = self.last_ms.load(Ordering::Relaxed) + timeout_ms;
            let now = self.now_ms();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}
