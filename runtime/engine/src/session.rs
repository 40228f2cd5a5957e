//! Client sessions for at-most-once command application (Raft dissertation §6.3).
//!
//! The *apply layer* (not the engine) owns a [`SessionTable`]: before applying a
//! command with a [`ClientTag`] it calls [`SessionTable::check`]; a fresh command
//! is applied and its output stored with [`SessionTable::record`]; a duplicate
//! gets the stored output back without touching the machine. The table is part
//! of the replicated state: it is deterministic (expiry is driven by the
//! leader-assigned entry timestamps, never a local clock) and goes into every
//! snapshot.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::ClientTag;

/// Outcome of [`SessionTable::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// Not seen before: apply it, then [`SessionTable::record`] the output.
    Fresh,
    /// Already applied: answer with this output, do not apply again.
    Duplicate(Bytes),
    /// Older than the client's latest applied request; the client has moved on.
    /// Do not apply; the answer is irrelevant.
    Stale {
        /// Latest applied sequence number of the client.
        last_seq: u64,
    },
    /// The client's session is unknown (expired or evicted) and this is not its
    /// first request: applying could duplicate an earlier effect. Reject; the
    /// client must open a new session (new `client_id`).
    SessionExpired,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Session {
    last_seq: u64,
    output: Bytes,
    last_active_ms: u64,
}

/// Bounded, deterministic table of client sessions.
///
/// Costs: `check` is O(log n) in the number of sessions; `record` is O(log n) plus O(log n) per
/// session it expires or evicts (an index ordered by last activity finds them without a scan).
/// Memory: one cached output per client (the latest), bounded by `max_clients`.
///
/// Assumes each client keeps at most one request outstanding and numbers its
/// requests from 1 without gaps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "TableRepr", into = "TableRepr")]
pub struct SessionTable {
    max_clients: usize,
    expiry_ms: u64,
    sessions: BTreeMap<u64, Session>,
    /// `(last_active_ms, client_id)` of every session: the front is both the next to expire and
    /// the least recently active. Derived from `sessions`; not part of the encoding.
    by_activity: BTreeSet<(u64, u64)>,
}

/// The encoded form of a [`SessionTable`] (what snapshots hold); field order is the format.
#[derive(Serialize, Deserialize)]
struct TableRepr {
    max_clients: usize,
    expiry_ms: u64,
    sessions: BTreeMap<u64, Session>,
}

impl From<TableRepr> for SessionTable {
    fn from(r: TableRepr) -> Self {
        let by_activity = r
            .sessions
            .iter()
            .map(|(&id, s)| (s.last_active_ms, id))
            .collect();
        SessionTable {
            max_clients: r.max_clients,
            expiry_ms: r.expiry_ms,
            sessions: r.sessions,
            by_activity,
        }
    }
}

impl From<SessionTable> for TableRepr {
    fn from(t: SessionTable) -> Self {
        TableRepr {
            max_clients: t.max_clients,
            expiry_ms: t.expiry_ms,
            sessions: t.sessions,
        }
    }
}

impl SessionTable {
    /// A table keeping at most `max_clients` sessions; a session idle for more
    /// than `expiry_ms` (measured with entry timestamps) is dropped.
    pub fn new(max_clients: usize, expiry_ms: u64) -> Self {
        SessionTable {
            max_clients: max_clients.max(1),
            expiry_ms,
            sessions: BTreeMap::new(),
            by_activity: BTreeSet::new(),
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True if no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Classifies a command before it is applied.
    pub fn check(&self, tag: ClientTag) -> SessionCheck {
        match self.sessions.get(&tag.client_id) {
            None if tag.seq <= 1 => SessionCheck::Fresh,
            None => SessionCheck::SessionExpired,
            Some(s) if tag.seq == s.last_seq => SessionCheck::Duplicate(s.output.clone()),
            Some(s) if tag.seq < s.last_seq => SessionCheck::Stale {
                last_seq: s.last_seq,
            },
            Some(_) => SessionCheck::Fresh,
        }
    }

    /// Records the output of a freshly applied command at entry time `now_ms`,
    /// expiring idle sessions and evicting the least recently active one if full.
    pub fn record(&mut self, tag: ClientTag, output: Bytes, now_ms: u64) {
        self.expire(now_ms);
        if !self.sessions.contains_key(&tag.client_id) && self.sessions.len() >= self.max_clients {
            // Deterministic LRU: oldest activity, then smallest id.
            if let Some((_, victim)) = self.by_activity.pop_first() {
                self.sessions.remove(&victim);
            }
        }
        let new = Session {
            last_seq: tag.seq,
            output,
            last_active_ms: now_ms,
        };
        if let Some(old) = self.sessions.insert(tag.client_id, new) {
            self.by_activity
                .remove(&(old.last_active_ms, tag.client_id));
        }
        self.by_activity.insert((now_ms, tag.client_id));
    }

    /// Drops sessions idle longer than `expiry_ms` as of `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(last_active_ms, id)) = self.by_activity.first() {
            if now_ms.saturating_sub(last_active_ms) <= self.expiry_ms {
                break; // the oldest is live, so every other one is too
            }
            self.by_activity.pop_first();
            self.sessions.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(c: u64, s: u64) -> ClientTag {
        ClientTag {
            client_id: c,
            seq: s,
        }
    }

    #[test]
    fn retried_command_is_duplicate_with_original_output() {
        let mut t = SessionTable::new(10, 1000);
        assert_eq!(t.check(tag(7, 1)), SessionCheck::Fresh);
        t.record(tag(7, 1), Bytes::from_static(b"ok-1"), 5);
        assert_eq!(
            t.check(tag(7, 1)),
            SessionCheck::Duplicate(Bytes::from_static(b"ok-1"))
        );
        assert_eq!(t.check(tag(7, 2)), SessionCheck::Fresh);
        t.record(tag(7, 2), Bytes::from_static(b"ok-2"), 6);
        assert_eq!(t.check(tag(7, 1)), SessionCheck::Stale { last_seq: 2 });
    }

    #[test]
    fn unknown_client_past_first_request_is_expired_not_fresh() {
        let mut t = SessionTable::new(10, 100);
        t.record(tag(1, 1), Bytes::new(), 0);
        t.record(tag(2, 1), Bytes::new(), 500); // expires client 1
        assert_eq!(t.check(tag(1, 2)), SessionCheck::SessionExpired);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn full_table_evicts_least_recently_active_deterministically() {
        let mut t = SessionTable::new(2, u64::MAX);
        t.record(tag(1, 1), Bytes::new(), 10);
        t.record(tag(2, 1), Bytes::new(), 5);
        t.record(tag(3, 1), Bytes::new(), 20);
        assert_eq!(t.check(tag(2, 2)), SessionCheck::SessionExpired);
        assert_eq!(t.check(tag(1, 2)), SessionCheck::Fresh);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn table_roundtrips_through_postcard() {
        let mut t = SessionTable::new(4, 9);
        t.record(tag(3, 4), Bytes::from_static(b"x"), 1);
        let bytes = postcard::to_allocvec(&t).expect("encode");
        let back: SessionTable = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, t);
    }

    /// The table as it was before the activity index: a full scan to expire and to evict.
    /// Same derive layout as the encoded form, so it also pins the snapshot encoding.
    #[derive(Serialize)]
    struct ScanTable {
        max_clients: usize,
        expiry_ms: u64,
        sessions: BTreeMap<u64, Session>,
    }

    impl ScanTable {
        fn record(&mut self, tag: ClientTag, output: Bytes, now_ms: u64) {
            let expiry = self.expiry_ms;
            self.sessions
                .retain(|_, s| now_ms.saturating_sub(s.last_active_ms) <= expiry);
            let full = self.sessions.len() >= self.max_clients;
            if !self.sessions.contains_key(&tag.client_id)
                && full
                && let Some((&victim, _)) = self
                    .sessions
                    .iter()
                    .min_by_key(|(id, s)| (s.last_active_ms, **id))
            {
                self.sessions.remove(&victim);
            }
            let session = Session {
                last_seq: tag.seq,
                output,
                last_active_ms: now_ms,
            };
            self.sessions.insert(tag.client_id, session);
        }
    }

    #[test]
    fn indexed_table_decides_and_encodes_exactly_like_a_full_scan() {
        // Replicas running the old and the new code side by side must agree on every check,
        // and a snapshot written by one must read back in the other.
        for seed in 1..=50u64 {
            let mut x = seed;
            let mut next = move |n: u64| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) % n
            };
            let (max, expiry) = (1 + next(12) as usize, 1 + next(40));
            let mut t = SessionTable::new(max, expiry);
            let mut r = ScanTable {
                max_clients: max,
                expiry_ms: expiry,
                sessions: BTreeMap::new(),
            };
            let mut now = 0u64;
            let mut seqs = [0u64; 20];
            for step in 0..400 {
                // Mostly forward with ties; now and then backwards (the table must not depend
                // on the applier keeping entry time monotonic).
                now = if next(8) == 0 {
                    now.saturating_sub(next(10))
                } else {
                    now + next(4)
                };
                let c = next(20);
                seqs[c as usize] += 1;
                let tg = tag(c, seqs[c as usize]);
                let out = Bytes::from(vec![step as u8]);
                t.record(tg, out.clone(), now);
                r.record(tg, out, now);
                assert_eq!(t.sessions, r.sessions, "seed {seed} step {step}");
                for probe in 0..20 {
                    let s = seqs[probe as usize];
                    for q in [s.saturating_sub(1), s, s + 1] {
                        let reference = match r.sessions.get(&probe) {
                            None if q <= 1 => SessionCheck::Fresh,
                            None => SessionCheck::SessionExpired,
                            Some(x) if q == x.last_seq => SessionCheck::Duplicate(x.output.clone()),
                            Some(x) if q < x.last_seq => SessionCheck::Stale {
                                last_seq: x.last_seq,
                            },
                            Some(_) => SessionCheck::Fresh,
                        };
                        assert_eq!(t.check(tag(probe, q)), reference, "seed {seed} step {step}");
                    }
                }
            }
            let ours = postcard::to_allocvec(&t).expect("encode");
            assert_eq!(
                ours,
                postcard::to_allocvec(&r).expect("encode"),
                "seed {seed}"
            );
            let back: SessionTable = postcard::from_bytes(&ours).expect("decode");
            assert_eq!(
                back, t,
                "seed {seed}: the activity index is rebuilt on decode"
            );
        }
    }
}
