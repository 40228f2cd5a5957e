//! Client sessions for exactly-once command application (Raft dissertation §6.3).
//!
//! The *apply layer* (not the engine) owns a [`SessionTable`]. A client first
//! opens a session through the log: the entry that carries the registration
//! names the session (its log index is the client id), and [`SessionTable::open`]
//! runs when that entry is applied. Each tagged command is then
//! [admitted](SessionTable::admit) when its entry is applied, in log order,
//! before anything reaches a guest; a fresh command's output is filled in with
//! [`SessionTable::complete`] once the guest returns it. A duplicate gets the
//! stored output back without touching the machine; a command whose session
//! is unknown (never opened, expired or evicted) is refused, never treated as
//! new, because an earlier copy of it may have been applied before the
//! session was forgotten.
//!
//! The table is part of the replicated state, so every decision in it is a
//! function of the log alone:
//! - expiry and eviction happen only inside `open` and `admit`, which the
//!   apply layer calls once per entry, in log order, with the entry's own
//!   (leader-assigned) timestamp — never a local clock;
//! - `complete` only fills in an output, so how many entries an applier
//!   admits before it completes them (its batching, which differs between
//!   replicas and across restarts) changes nothing that `admit` decides.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::ClientTag;

/// What [`SessionTable::admit`] decided about a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// Not seen before and now admitted: apply it, then
    /// [`SessionTable::complete`] its output.
    Fresh,
    /// Already applied: answer with this output, do not apply again.
    Duplicate(Bytes),
    /// Older than the client's latest admitted request (or the invalid
    /// sequence number 0); the client has moved on. Do not apply.
    Stale {
        /// Latest admitted sequence number of the client.
        last_seq: u64,
    },
    /// The session is unknown: never opened, expired or evicted. Do not
    /// apply. An earlier copy of this command may have been applied while
    /// the session existed, so its outcome is unknown to the client; the
    /// client must open a new session for its next command.
    Unknown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session {
    /// Latest admitted sequence number; 0 for a session with no command yet.
    last_seq: u64,
    /// Output of `last_seq` (empty until completed).
    output: Bytes,
    last_active_ms: u64,
    /// The time this session is filed under in [`SessionTable::by_activity`]: at most
    /// `last_active_ms`. Derived, like the index; not part of the encoding or of equality.
    #[serde(skip)]
    indexed_ms: u64,
}

impl Session {
    fn new(last_seq: u64, output: Bytes, now_ms: u64) -> Session {
        Session {
            last_seq,
            output,
            last_active_ms: now_ms,
            indexed_ms: now_ms,
        }
    }
}

impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        (self.last_seq, &self.output, self.last_active_ms)
            == (other.last_seq, &other.output, other.last_active_ms)
    }
}

impl Eq for Session {}

impl std::hash::Hash for Session {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.last_seq, &self.output, self.last_active_ms).hash(state);
    }
}

/// Bounded, deterministic table of client sessions.
///
/// Costs: `open`, `admit` and `complete` are O(log n) in the number of sessions, amortized,
/// plus O(log n) per session that `open` or `admit` expires, evicts or refiles (an index ordered
/// by last activity finds them without a scan). The index is updated lazily: a session that becomes active again keeps
/// its place until expiry or eviction reaches it and refiles it, so a busy client costs one
/// lookup per command, not a move in the index. Memory: one cached output per client (the
/// latest), bounded by `max_clients`.
///
/// Assumes each client keeps at most one request outstanding per session and numbers its
/// requests from 1 without gaps.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "TableRepr", into = "TableRepr")]
pub struct SessionTable {
    max_clients: usize,
    expiry_ms: u64,
    sessions: BTreeMap<u64, Session>,
    /// `(indexed_ms, client_id)` of every session, exactly one place each, filed at a time at
    /// most its last activity: so the front, once refiled at its true time, is both the next
    /// to expire and the least recently active. Derived from `sessions`; not part of the
    /// encoding or of equality.
    by_activity: BTreeSet<(u64, u64)>,
}

impl PartialEq for SessionTable {
    fn eq(&self, other: &Self) -> bool {
        (self.max_clients, self.expiry_ms, &self.sessions)
            == (other.max_clients, other.expiry_ms, &other.sessions)
    }
}

impl Eq for SessionTable {}

impl std::hash::Hash for SessionTable {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.max_clients, self.expiry_ms, &self.sessions).hash(state);
    }
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
        let mut sessions = r.sessions;
        let mut by_activity = BTreeSet::new();
        for (&id, s) in sessions.iter_mut() {
            s.indexed_ms = s.last_active_ms;
            by_activity.insert((s.indexed_ms, id));
        }
        SessionTable {
            max_clients: r.max_clients,
            expiry_ms: r.expiry_ms,
            sessions,
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

    /// True if `client_id` has a live session (as of the last `open` or `admit`).
    pub fn contains(&self, client_id: u64) -> bool {
        self.sessions.contains_key(&client_id)
    }

    /// Opens session `client_id` at entry time `now_ms`, after expiring idle
    /// sessions; if the table is full, the least recently active session is
    /// evicted. `client_id` is the log index of the registering entry, so it
    /// is new; opening a live session again only refreshes it.
    pub fn open(&mut self, client_id: u64, now_ms: u64) {
        self.expire(now_ms);
        if let Some(s) = self.sessions.get(&client_id) {
            let (last_seq, output) = (s.last_seq, s.output.clone());
            self.touch(client_id, last_seq, output, now_ms);
            return;
        }
        if self.sessions.len() >= self.max_clients {
            // Deterministic LRU: oldest activity, then smallest id.
            if let Some(victim) = self.least_recently_active() {
                self.by_activity
                    .remove(&(self.sessions[&victim].indexed_ms, victim));
                self.sessions.remove(&victim);
            }
        }
        self.touch(client_id, 0, Bytes::new(), now_ms);
    }

    /// Decides, at entry time `now_ms`, whether the command tagged `tag` is
    /// applied. Expires idle sessions first. A [`SessionCheck::Fresh`] command
    /// is admitted at once (its sequence number becomes the session's latest),
    /// and its output must be [completed](SessionTable::complete) before
    /// another command of the same client is admitted.
    pub fn admit(&mut self, tag: ClientTag, now_ms: u64) -> SessionCheck {
        self.expire(now_ms);
        let Some(s) = self.sessions.get(&tag.client_id) else {
            return SessionCheck::Unknown;
        };
        if tag.seq == 0 || tag.seq < s.last_seq {
            return SessionCheck::Stale {
                last_seq: s.last_seq,
            };
        }
        if tag.seq == s.last_seq {
            return SessionCheck::Duplicate(s.output.clone());
        }
        self.touch(tag.client_id, tag.seq, Bytes::new(), now_ms);
        SessionCheck::Fresh
    }

    /// Stores the output of the admitted command `tag`. Does nothing if the
    /// session has since moved on, expired or been evicted.
    pub fn complete(&mut self, tag: ClientTag, output: Bytes) {
        if let Some(s) = self.sessions.get_mut(&tag.client_id)
            && s.last_seq == tag.seq
        {
            s.output = output;
        }
    }

    /// Sets a session's state. Its place in the activity index stays where it is unless the
    /// new time is earlier than that place (entry times can go back when leadership moves to a
    /// node whose clock is behind), which would break the index's invariant.
    fn touch(&mut self, client_id: u64, last_seq: u64, output: Bytes, now_ms: u64) {
        if let Some(s) = self.sessions.get_mut(&client_id) {
            s.last_seq = last_seq;
            s.output = output;
            s.last_active_ms = now_ms;
            if now_ms < s.indexed_ms {
                self.by_activity.remove(&(s.indexed_ms, client_id));
                self.by_activity.insert((now_ms, client_id));
                s.indexed_ms = now_ms;
            }
            return;
        }
        self.sessions
            .insert(client_id, Session::new(last_seq, output, now_ms));
        self.by_activity.insert((now_ms, client_id));
    }

    /// Refiles sessions at the front of the activity index under their true time until the
    /// front's is; returns that session: the least recently active, the smallest id first.
    fn least_recently_active(&mut self) -> Option<u64> {
        loop {
            let &(indexed_ms, id) = self.by_activity.first()?;
            let Some(s) = self.sessions.get_mut(&id) else {
                // Cannot happen (a session leaves the index when it leaves the table); if it
                // did, dropping the stray entry keeps expiry and eviction going.
                debug_assert!(
                    false,
                    "activity index names session {id}, which is not held"
                );
                self.by_activity.pop_first();
                continue;
            };
            if s.indexed_ms == s.last_active_ms {
                return Some(id);
            }
            debug_assert_eq!(indexed_ms, s.indexed_ms);
            self.by_activity.pop_first();
            s.indexed_ms = s.last_active_ms;
            self.by_activity.insert((s.indexed_ms, id));
        }
    }

    /// Drops sessions idle longer than `expiry_ms` as of `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(indexed_ms, _)) = self.by_activity.first() {
            // Every session was active at or after the time it is filed under: if the front's
            // is recent enough, no session is due.
            if now_ms.saturating_sub(indexed_ms) <= self.expiry_ms {
                break;
            }
            let Some(id) = self.least_recently_active() else {
                break;
            };
            if now_ms.saturating_sub(self.sessions[&id].last_active_ms) <= self.expiry_ms {
                break; // the least recently active is live, so every other one is too
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
        t.open(7, 1);
        assert_eq!(t.admit(tag(7, 1), 2), SessionCheck::Fresh);
        t.complete(tag(7, 1), Bytes::from_static(b"ok-1"));
        assert_eq!(
            t.admit(tag(7, 1), 5),
            SessionCheck::Duplicate(Bytes::from_static(b"ok-1"))
        );
        assert_eq!(t.admit(tag(7, 2), 6), SessionCheck::Fresh);
        t.complete(tag(7, 2), Bytes::from_static(b"ok-2"));
        assert_eq!(t.admit(tag(7, 1), 7), SessionCheck::Stale { last_seq: 2 });
        assert_eq!(t.admit(tag(7, 0), 7), SessionCheck::Stale { last_seq: 2 });
    }

    #[test]
    fn a_command_of_a_session_never_opened_is_refused_even_as_a_first_request() {
        let mut t = SessionTable::new(10, 1000);
        assert_eq!(t.admit(tag(9, 1), 0), SessionCheck::Unknown);
        assert!(t.is_empty(), "a refused command opens nothing");
    }

    /// Issue #16 case 2: before registration, an unknown client with seq 1 was "fresh", so a
    /// retry whose session had been evicted was applied a second time.
    #[test]
    fn a_retry_after_its_session_was_evicted_is_refused_never_applied_again() {
        let mut t = SessionTable::new(1, u64::MAX);
        t.open(7, 1);
        assert_eq!(t.admit(tag(7, 1), 1), SessionCheck::Fresh);
        t.complete(tag(7, 1), Bytes::from_static(b"applied"));
        t.open(8, 2); // full: evicts 7
        assert_eq!(t.admit(tag(7, 1), 3), SessionCheck::Unknown);
        assert_eq!(t.admit(tag(7, 2), 3), SessionCheck::Unknown);
        assert!(t.contains(8) && !t.contains(7));
    }

    /// A new leader whose clock is an hour ahead expires every session at its first entry:
    /// the retries that follow a failover are refused, not applied again.
    #[test]
    fn a_retry_after_a_leader_clock_jump_expired_its_session_is_refused() {
        let mut t = SessionTable::new(10, 100);
        t.open(1, 0);
        assert_eq!(t.admit(tag(1, 1), 10), SessionCheck::Fresh);
        t.complete(tag(1, 1), Bytes::new());
        t.open(2, 3_600_000);
        assert_eq!(t.admit(tag(1, 1), 3_600_000), SessionCheck::Unknown);
        assert_eq!(t.len(), 1);
    }

    /// Commands of one session in the same millisecond leave it where it was in the activity
    /// index (one place per session, whatever the order of the same-time touches); a later one
    /// moves it, so expiry and eviction still follow the last activity.
    #[test]
    fn touches_at_the_same_time_keep_one_place_per_session_in_the_activity_index() {
        let mut t = SessionTable::new(2, 100);
        t.open(1, 10);
        t.open(2, 10);
        for seq in 1..=5 {
            assert_eq!(t.admit(tag(1, seq), 10), SessionCheck::Fresh);
        }
        assert_eq!(t.by_activity.len(), 2);
        assert_eq!(t.admit(tag(1, 6), 60), SessionCheck::Fresh);
        assert_eq!(t.by_activity.len(), 2);
        // At 150 session 2 (last active at 10) expires, session 1 (at 60) does not, although
        // the index still files it at 10 until expiry looks at it.
        assert_eq!(t.admit(tag(1, 7), 150), SessionCheck::Fresh);
        assert!(t.contains(1) && !t.contains(2));
        assert_eq!(t.by_activity.len(), 1);
    }

    #[test]
    fn full_table_evicts_least_recently_active_deterministically() {
        let mut t = SessionTable::new(2, u64::MAX);
        t.open(1, 10);
        t.open(2, 5);
        t.open(3, 20);
        assert_eq!(t.admit(tag(2, 1), 21), SessionCheck::Unknown);
        assert_eq!(t.admit(tag(1, 1), 21), SessionCheck::Fresh);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn table_roundtrips_through_postcard() {
        let mut t = SessionTable::new(4, 9);
        t.open(3, 1);
        assert_eq!(t.admit(tag(3, 4), 1), SessionCheck::Fresh);
        t.complete(tag(3, 4), Bytes::from_static(b"x"));
        let bytes = postcard::to_allocvec(&t).expect("encode");
        let back: SessionTable = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, t);
    }

    /// Issue #16 case 1. Before the fix, the applier checked a tagged command against a table
    /// in which earlier entries of *other* clients in its pending batch were not yet recorded,
    /// and only recording expired and evicted. Replica X cut its Apply after index j-1, replica
    /// Y did not: B's command at j was refused on X and applied on Y. Now the decision is taken
    /// at admission, in log order, and only the output waits for the batch.
    #[test]
    fn a_decision_does_not_depend_on_where_the_applier_cut_its_batches() {
        let expiry = 100;
        let mut x = SessionTable::new(10, expiry);
        x.open(2, 0);
        x.open(1, 50);
        assert_eq!(x.admit(tag(2, 1), 0), SessionCheck::Fresh);
        x.complete(tag(2, 1), Bytes::new());
        let mut y = x.clone();
        // j-1: A's first command at t=101, past B's expiry; j: B's next command at t=101.
        assert_eq!(x.admit(tag(1, 1), 101), SessionCheck::Fresh);
        x.complete(tag(1, 1), Bytes::from_static(b"a")); // X's batch ended at j-1
        let on_x = x.admit(tag(2, 2), 101);
        assert_eq!(y.admit(tag(1, 1), 101), SessionCheck::Fresh); // Y's batch goes on
        let on_y = y.admit(tag(2, 2), 101);
        y.complete(tag(1, 1), Bytes::from_static(b"a"));
        assert_eq!(on_x, on_y);
        assert_eq!(on_x, SessionCheck::Unknown);
        assert_eq!(x, y);
    }

    /// A small deterministic generator for the randomised tests below.
    fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut x = seed;
        move |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        }
    }

    /// One step of a random log: a registration or a tagged command.
    #[derive(Clone, Copy, Debug)]
    enum Op {
        Open(u64),
        Command(ClientTag),
    }

    /// A random log over at most 20 clients, with entry times that mostly move forward, tie,
    /// and now and then step back (the table must not depend on the applier keeping them
    /// monotonic), and with retries, stale and never-opened tags.
    fn random_log(next: &mut impl FnMut(u64) -> u64, len: u64) -> Vec<(Op, u64)> {
        let (mut now, mut index) = (0u64, 0u64);
        let mut seqs: BTreeMap<u64, u64> = BTreeMap::new();
        let mut log = Vec::new();
        for _ in 0..len {
            index += 1;
            now = if next(8) == 0 {
                now.saturating_sub(next(10))
            } else {
                now + next(4)
            };
            let op = if seqs.is_empty() || next(5) == 0 {
                seqs.insert(index, 0);
                if seqs.len() > 20 {
                    seqs.pop_first();
                }
                Op::Open(index)
            } else {
                let ids: Vec<u64> = seqs.keys().copied().collect();
                let c = ids[next(ids.len() as u64) as usize];
                let s = seqs.get_mut(&c).expect("id");
                let seq = match next(6) {
                    0 => *s,                  // a retry
                    1 => s.saturating_sub(1), // stale (or 0)
                    _ => {
                        *s += 1;
                        *s
                    }
                };
                let c = if next(30) == 0 { 1_000_000 + c } else { c }; // never opened
                Op::Command(tag(c, seq))
            };
            log.push((op, now));
        }
        log
    }

    /// Replays `log` the way an applier does, completing admitted outputs in batches of random
    /// length (flushed early when the same client comes again, as the applier does); returns
    /// every decision and the encoded table after the last batch.
    fn replay(
        log: &[(Op, u64)],
        table: &mut SessionTable,
        mut batch_len: impl FnMut() -> usize,
    ) -> Vec<SessionCheck> {
        let mut decisions = Vec::new();
        let mut pending: Vec<(ClientTag, Bytes)> = Vec::new();
        let mut cut = batch_len();
        for (i, (op, now)) in log.iter().enumerate() {
            if let Op::Command(t) = op
                && pending.iter().any(|(p, _)| p.client_id == t.client_id)
            {
                cut = 0;
            }
            if pending.len() >= cut {
                for (t, out) in pending.drain(..) {
                    table.complete(t, out);
                }
                cut = batch_len();
            }
            match *op {
                Op::Open(id) => table.open(id, *now),
                Op::Command(t) => {
                    let d = table.admit(t, *now);
                    if d == SessionCheck::Fresh {
                        pending.push((t, Bytes::from((i as u64).to_le_bytes().to_vec())));
                    }
                    decisions.push(d);
                }
            }
        }
        for (t, out) in pending.drain(..) {
            table.complete(t, out);
        }
        decisions
    }

    #[test]
    fn replicas_batching_differently_decide_and_encode_identically() {
        for seed in 1..=200u64 {
            let mut next = rng(seed);
            let (max, expiry) = (1 + next(12) as usize, 1 + next(40));
            let log = random_log(&mut next, 400);
            let mut one_by_one = SessionTable::new(max, expiry);
            let reference = replay(&log, &mut one_by_one, || 1);
            let mut batched = SessionTable::new(max, expiry);
            let mut cuts = rng(seed ^ 0x5eed);
            let decided = replay(&log, &mut batched, || 1 + cuts(64) as usize);
            assert_eq!(decided, reference, "seed {seed}");
            assert_eq!(
                postcard::to_allocvec(&batched).expect("encode"),
                postcard::to_allocvec(&one_by_one).expect("encode"),
                "seed {seed}"
            );
        }
    }

    /// The table before its activity index: a full scan to expire and to evict. Same derive
    /// layout as the encoded form, so it also pins the snapshot encoding.
    #[derive(Serialize)]
    struct ScanTable {
        max_clients: usize,
        expiry_ms: u64,
        sessions: BTreeMap<u64, Session>,
    }

    impl ScanTable {
        fn expire(&mut self, now_ms: u64) {
            let expiry = self.expiry_ms;
            self.sessions
                .retain(|_, s| now_ms.saturating_sub(s.last_active_ms) <= expiry);
        }

        fn open(&mut self, id: u64, now_ms: u64) {
            self.expire(now_ms);
            if let Some(s) = self.sessions.get_mut(&id) {
                s.last_active_ms = now_ms;
                return;
            }
            if self.sessions.len() >= self.max_clients
                && let Some((&victim, _)) = self
                    .sessions
                    .iter()
                    .min_by_key(|(id, s)| (s.last_active_ms, **id))
            {
                self.sessions.remove(&victim);
            }
            self.sessions
                .insert(id, Session::new(0, Bytes::new(), now_ms));
        }

        fn admit(&mut self, t: ClientTag, out: Bytes, now_ms: u64) -> SessionCheck {
            self.expire(now_ms);
            match self.sessions.get_mut(&t.client_id) {
                None => SessionCheck::Unknown,
                Some(s) if t.seq == 0 || t.seq < s.last_seq => SessionCheck::Stale {
                    last_seq: s.last_seq,
                },
                Some(s) if t.seq == s.last_seq => SessionCheck::Duplicate(s.output.clone()),
                Some(s) => {
                    *s = Session::new(t.seq, out, now_ms);
                    SessionCheck::Fresh
                }
            }
        }
    }

    #[test]
    fn indexed_table_decides_and_encodes_exactly_like_a_full_scan() {
        for seed in 1..=50u64 {
            let mut next = rng(seed);
            let (max, expiry) = (1 + next(12) as usize, 1 + next(40));
            let mut t = SessionTable::new(max, expiry);
            let mut r = ScanTable {
                max_clients: max,
                expiry_ms: expiry,
                sessions: BTreeMap::new(),
            };
            for (step, (op, now)) in random_log(&mut next, 400).into_iter().enumerate() {
                match op {
                    Op::Open(id) => {
                        t.open(id, now);
                        r.open(id, now);
                    }
                    Op::Command(tg) => {
                        let out = Bytes::from(vec![step as u8]);
                        let d = t.admit(tg, now);
                        if d == SessionCheck::Fresh {
                            t.complete(tg, out.clone());
                        }
                        assert_eq!(d, r.admit(tg, out, now), "seed {seed} step {step}");
                    }
                }
                assert_eq!(t.sessions, r.sessions, "seed {seed} step {step}");
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
