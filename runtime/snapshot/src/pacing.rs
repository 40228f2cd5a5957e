//! How far and how often the leader runs ahead of a follower, decided without I/O:
//!
//! * [`Window`] and [`window_bytes`]: bytes written to the stream but not yet acknowledged
//!   durable are bounded by the largest step the follower's recent acknowledgements moved by
//!   (twice it without a cap, it and 50 ms of the rate under one). What a follower that dies
//!   mid-transfer loses — and the next attempt sends again — is about this window, so it
//!   follows the follower's sync cadence: 16 MiB when the transfer is fast (syncs every
//!   `sync_every_bytes`), a fraction of a second of the rate when it is slow (syncs every
//!   `sync_interval_ms`).
//! * [`chunk_bytes_under_cap`]: under a bandwidth cap a chunk is about 25 ms of the capped
//!   rate, so that the follower's time-based steps (and so the window) are not rounded up to
//!   whole 1 MiB chunks.
//! * [`ReofferBackoff`]: after an offer that got nowhere (declined, refused, failed before the
//!   follower made anything durable) the leader waits before the next one, doubling from
//!   50 ms to 2 s, and offers again at once after one that moved the transfer forward.
//!
//! The silence rule (a follower that sends heartbeats and falls silent is presumed gone) is
//! [`crate::send::Acks::sends_heartbeats`] and `TransferConfig::silence_timeout_ms`.

use std::time::Duration;

/// Acknowledgement steps the [`Window`] remembers.
const RECENT_STEPS: usize = 4;

/// Largest window, bytes: a follower acknowledging in huge steps (or lying) does not make the
/// leader write without bound (QUIC flow control bounds the follower's memory regardless).
pub const WINDOW_BYTES_MAX: u64 = 64 << 20;

/// Under a cap, how long past a step the window reaches: the step's sync, the acknowledgement's
/// way back, a chunk's burst.
pub const CAPPED_SLACK_MS: u64 = 50;

/// The follower's recent acknowledgement steps, from which the leader's limit on bytes written
/// but not acknowledged durable follows ([`window_bytes`]). Pure.
#[derive(Debug, Clone)]
pub struct Window {
    chunk_bytes: u64,
    first_step_bytes: u64,
    /// The latest acknowledgement steps, bytes (0: none yet).
    steps: [u64; RECENT_STEPS],
    next: usize,
}

impl Window {
    /// The window of a stream in chunks of `chunk_bytes`, assuming steps of `first_step_bytes`
    /// until the follower acknowledges something (the leader's own `sync_every_bytes`).
    pub fn new(chunk_bytes: u64, first_step_bytes: u64) -> Self {
        Window {
            chunk_bytes: chunk_bytes.max(1),
            first_step_bytes,
            steps: [0; RECENT_STEPS],
            next: 0,
        }
    }

    /// The follower's durable offset moved forward by `step` bytes (0, a heartbeat, is ignored).
    pub fn on_durable(&mut self, step: u64) {
        if step > 0 {
            self.steps[self.next] = step;
            self.next = (self.next + 1) % RECENT_STEPS;
        }
    }

    /// The largest of the recent steps, or `first_step_bytes` before any.
    pub fn step_bytes(&self) -> u64 {
        match self.steps.iter().max() {
            Some(&s) if s > 0 => s,
            _ => self.first_step_bytes,
        }
    }

    /// [`window_bytes`] now, with the send rate capped at `cap_bytes_per_sec`.
    pub fn bytes(&self, cap_bytes_per_sec: Option<u64>) -> u64 {
        window_bytes(self.step_bytes(), self.chunk_bytes, cap_bytes_per_sec)
    }
}

/// The most bytes the leader may have written beyond the follower's durable offset, given the
/// follower's step (`step_bytes`, the largest recent advance of its durable offset):
///
/// * no cap: twice the step — one step is synced and acknowledged while the next arrives, so a
///   fast transfer never waits for the window;
/// * under a cap: the step plus what the cap lets through in [`CAPPED_SLACK_MS`] — the limiter
///   sets the pace, the window only has to cover the step being synced;
///
/// always at least two chunks and at most [`WINDOW_BYTES_MAX`]. A follower that dies loses
/// about this much (what it had not synced, and what was sent after it died), so it is what
/// the next attempt sends twice.
pub fn window_bytes(step_bytes: u64, chunk_bytes: u64, cap_bytes_per_sec: Option<u64>) -> u64 {
    let ahead = match cap_bytes_per_sec {
        None => step_bytes.saturating_mul(2),
        Some(cap) => step_bytes.saturating_add(cap.saturating_mul(CAPPED_SLACK_MS) / 1000),
    };
    let floor = chunk_bytes.saturating_mul(2);
    ahead.clamp(floor, WINDOW_BYTES_MAX.max(floor))
}

/// The window rule: a chunk ending at `end` may be written when bytes up to `written` were
/// written and up to `acked` acknowledged durable if the furthest written byte stays within
/// `window_bytes` of `acked` — always when everything written is acknowledged, so a window
/// smaller than a chunk cannot stop the stream.
pub fn may_write(end: u64, written: u64, acked: u64, window_bytes: u64) -> bool {
    end.max(written).saturating_sub(acked) <= window_bytes || acked >= written
}

/// Milliseconds of the capped rate one chunk carries: small enough that the follower's 100 ms
/// syncs are not rounded up to whole chunks, large enough that per-chunk work stays negligible.
pub const CHUNK_MS_UNDER_CAP: u64 = 25;

/// Smallest chunk chosen under a cap, bytes.
pub const CHUNK_BYTES_MIN_UNDER_CAP: u32 = 64 << 10;

/// The chunk size of a transfer that starts with the send rate capped at `cap_bytes_per_sec`
/// (`None`: no cap, `chunk_bytes` as configured): [`CHUNK_MS_UNDER_CAP`] of the rate in whole
/// KiB, within `CHUNK_BYTES_MIN_UNDER_CAP..=chunk_bytes`. The size holds for the whole transfer;
/// a cap changed later changes the pace, not the chunks.
pub fn chunk_bytes_under_cap(chunk_bytes: u32, cap_bytes_per_sec: Option<u64>) -> u32 {
    let Some(cap) = cap_bytes_per_sec else {
        return chunk_bytes;
    };
    let by_rate = (cap.saturating_mul(CHUNK_MS_UNDER_CAP) / 1000) & !1023;
    let by_rate = u32::try_from(by_rate).unwrap_or(u32::MAX);
    by_rate.max(CHUNK_BYTES_MIN_UNDER_CAP).min(chunk_bytes)
}

/// How long the leader waits before offering a snapshot to a follower again (pure, one per
/// follower). Offers that get nowhere back off exponentially, so a follower that is busy for
/// seconds sees a handful of offers and the leader logs one line per step, not one every tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReofferBackoff {
    misses: u32,
}

impl ReofferBackoff {
    /// The first delay, ms.
    pub const FIRST_MS: u64 = 50;
    /// The longest delay, ms.
    pub const MAX_MS: u64 = 2000;

    /// An offer got nowhere: declined (`Busy`, `AlreadyArriving`), refused, or failed before
    /// the follower acknowledged anything new. Returns the wait before the next offer.
    pub fn missed(&mut self) -> Duration {
        let ms = Self::FIRST_MS
            .saturating_mul(1u64 << self.misses.min(16))
            .min(Self::MAX_MS);
        self.misses = self.misses.saturating_add(1);
        Duration::from_millis(ms)
    }

    /// An offer moved the transfer forward (completed, or the follower made bytes durable):
    /// the next one, if any, goes out at once and backs off from the start.
    pub fn reset(&mut self) {
        self.misses = 0;
    }

    /// Offers in a row that got nowhere.
    pub fn misses(&self) -> u32 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_largest_recent_step() {
        let mut w = Window::new(100 << 10, 8 << 20);
        assert_eq!(w.step_bytes(), 8 << 20, "before any ack: sync_every_bytes");
        w.on_durable(0);
        assert_eq!(w.step_bytes(), 8 << 20, "a heartbeat is no step");
        for _ in 0..4 {
            w.on_durable(400_000);
        }
        assert_eq!(w.step_bytes(), 400_000);
        // The cap is lifted: steps grow, the window follows at once.
        w.on_durable(8 << 20);
        assert_eq!(w.bytes(None), 16 << 20);
        // It shrinks back only when the large step has left the recent ones.
        for n in 1..=4 {
            w.on_durable(400_000);
            let want = if n < 4 { 8 << 20 } else { 400_000 };
            assert_eq!(w.step_bytes(), want, "after {n} small steps");
        }
    }

    #[test]
    fn the_window_is_twice_the_step_uncapped_and_a_step_and_50_ms_under_a_cap() {
        assert_eq!(window_bytes(8 << 20, 1 << 20, None), 16 << 20);
        // The users' cap: 4 MB/s, steps of about 100 ms.
        assert_eq!(
            window_bytes(400_000, 97 << 10, Some(4_000_000)),
            400_000 + 200_000
        );
        assert_eq!(
            window_bytes(1, 1 << 20, Some(4_000_000)),
            2 << 20,
            "at least two chunks"
        );
        assert_eq!(window_bytes(1 << 40, 1 << 20, None), WINDOW_BYTES_MAX);
        assert_eq!(window_bytes(u64::MAX, u64::MAX, Some(u64::MAX)), u64::MAX);
    }

    #[test]
    fn a_chunk_is_written_only_within_the_window_unless_everything_is_acknowledged() {
        assert!(may_write(600, 500, 0, 600));
        assert!(!may_write(700, 600, 0, 600));
        assert!(may_write(700, 600, 100, 600));
        // A resend below what was written counts what was written.
        assert!(!may_write(200, 700, 0, 600));
        assert!(may_write(5000, 1000, 1000, 600), "a chunk always fits");
    }

    #[test]
    fn under_a_cap_a_chunk_is_25_ms_of_the_rate_in_whole_kib() {
        assert_eq!(chunk_bytes_under_cap(1 << 20, None), 1 << 20);
        assert_eq!(chunk_bytes_under_cap(1 << 20, Some(4_000_000)), 97 << 10);
        assert_eq!(
            chunk_bytes_under_cap(1 << 20, Some(1 << 20)),
            64 << 10,
            "not below 64 KiB"
        );
        assert_eq!(
            chunk_bytes_under_cap(1 << 20, Some(1 << 30)),
            1 << 20,
            "not above the configured chunk"
        );
        assert_eq!(chunk_bytes_under_cap(1 << 20, Some(u64::MAX)), 1 << 20);
    }

    /// The users' case: a follower declined every offer for 4.3 s (one every 10 ms tick: 428).
    #[test]
    fn a_follower_busy_for_seconds_sees_a_handful_of_offers_and_the_leader_resets_on_progress() {
        let mut b = ReofferBackoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.missed().as_millis() as u64).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        // When each offer goes out: the engine's 10 ms tick after the wait.
        let mut b = ReofferBackoff::default();
        let mut at = vec![0u64];
        for _ in 0..20 {
            let last = at[at.len() - 1];
            at.push(last + b.missed().as_millis() as u64 + 10);
        }
        let in_4300_ms = at.iter().filter(|t| **t < 4300).count();
        assert!(in_4300_ms <= 8, "{in_4300_ms} offers in 4.3 s");
        let busiest_second = at
            .iter()
            .map(|t0| at.iter().filter(|t| (*t0..*t0 + 1000).contains(*t)).count())
            .max();
        assert!(
            busiest_second <= Some(5),
            "{busiest_second:?} offers in one second"
        );
        b.reset();
        assert_eq!((b.misses(), b.missed()), (0, Duration::from_millis(50)));
    }
}
