//! Divergence detection: replicas compare what they computed, not just what they were given.
//!
//! Raft makes every replica apply the same log; it cannot make a guest's snapshot faithful or
//! its execution deterministic. So the applier folds every entry's outcome into a running
//! BLAKE3 digest ([`OutcomeChain`]), and the leader now and then proposes a
//! `Command::Checkpoint` carrying its digest as of an index it applied. Every replica that
//! applies the checkpoint compares it with its own digest at that index. A mismatch means this
//! replica computed something else for the same log: the applier halts without retrying (no
//! reads, no snapshots, no leadership) and says so, rather than serve a diverged state, until
//! its state is replaced from outside (a snapshot from the leader, or an operator).
//!
//! Applying a checkpoint also resets the chain to a value derived from the entry alone, so a
//! replica that started from a snapshot (which does not carry the chain) is in step again from
//! the first checkpoint after it.

use std::collections::VecDeque;

use wraft_proto::{Reply, RequestError, Response};

/// Digests of the most recent applied entries kept for comparison (about 160 KiB).
pub const RECENT_DIGESTS_MAX: usize = 4096;

/// A digest of outcomes, BLAKE3.
pub type Digest = [u8; 32];

/// What a checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Same digest: this replica computed what the leader computed.
    Match,
    /// Different digest: this replica diverged (or the leader did).
    Mismatch {
        /// This replica's digest at the checkpoint's index.
        ours: Digest,
    },
    /// This replica has no digest for that index (it started from a snapshot since, or the
    /// index is older than [`RECENT_DIGESTS_MAX`] entries): nothing to compare.
    Unknown,
}

/// The running digest of every applied entry's outcome, and the last few values.
#[derive(Debug, Clone)]
pub struct OutcomeChain {
    /// `None` until the first checkpoint after starting from a snapshot.
    digest: Option<Digest>,
    /// `(index, digest after it)`, oldest first.
    recent: VecDeque<(u64, Digest)>,
}

impl OutcomeChain {
    /// The chain of a replica that applies the log from its first entry.
    pub fn genesis() -> Self {
        OutcomeChain {
            digest: Some([0; 32]),
            recent: VecDeque::new(),
        }
    }

    /// The chain of a replica that starts from a snapshot: unknown until the next checkpoint.
    pub fn unknown() -> Self {
        OutcomeChain {
            digest: None,
            recent: VecDeque::new(),
        }
    }

    /// Fold the outcome of entry `index` in (its [`outcome_digest`]); returns the new digest
    /// if the chain is known.
    pub fn push(&mut self, index: u64, outcome: &Digest) -> Option<Digest> {
        let prev = self.digest?;
        // BLAKE3 of prev ‖ index (LE) ‖ outcome, hashed in one call: a `Hasher` is 2 KiB to
        // set up and move, which cost more than the hashing itself, once per applied entry.
        let mut input = [0u8; 72];
        input[..32].copy_from_slice(&prev);
        input[32..40].copy_from_slice(&index.to_le_bytes());
        input[40..].copy_from_slice(outcome);
        let d = *blake3::hash(&input).as_bytes();
        self.digest = Some(d);
        if self.recent.len() >= RECENT_DIGESTS_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((index, d));
        Some(d)
    }

    /// This replica's digest after entry `index`, if it still has it.
    pub fn at(&self, index: u64) -> Option<Digest> {
        let i = self.recent.partition_point(|(k, _)| *k < index);
        self.recent
            .get(i)
            .filter(|(k, _)| *k == index)
            .map(|(_, d)| *d)
    }

    /// Apply the checkpoint entry at `entry_index` that says the leader's digest after
    /// `index` was `digest`: compare, then restart the chain from a value of the entry alone.
    pub fn check(&mut self, entry_index: u64, index: u64, digest: Digest) -> CheckOutcome {
        let outcome = match self.at(index) {
            Some(ours) if ours == digest => CheckOutcome::Match,
            Some(ours) => CheckOutcome::Mismatch { ours },
            None => CheckOutcome::Unknown,
        };
        let mut h = blake3::Hasher::new();
        h.update(b"wraft checkpoint");
        h.update(&entry_index.to_le_bytes());
        h.update(&index.to_le_bytes());
        h.update(&digest);
        self.digest = Some(*h.finalize().as_bytes());
        outcome
    }
}

/// What of an outcome enters the digest: what the guest decided (its output, or its
/// application error), and only the kind of anything else, whose text is the node's. The
/// digest is BLAKE3 of the pieces handed to `h`, in order.
fn fold_outcome(outcome: &Response, mut h: impl FeedBytes) {
    match outcome {
        Ok(Reply::Applied { output, .. }) => {
            h.update(&[0]);
            h.update(&(output.len() as u64).to_le_bytes());
            h.update(output);
        }
        Err(RequestError::App { code, message }) => {
            h.update(&[1]);
            h.update(&code.to_le_bytes());
            h.update(&(message.len() as u64).to_le_bytes());
            h.update(message.as_bytes());
        }
        Ok(Reply::SessionOpened { client_id }) => {
            h.update(&[2]);
            h.update(&client_id.to_le_bytes());
        }
        Ok(_) => {
            h.update(&[3]);
        }
        Err(RequestError::MachineFault(_)) => {
            h.update(&[4]);
        }
        Err(RequestError::NoSuchMachine(_)) => {
            h.update(&[5]);
        }
        Err(RequestError::Rejected(_)) => {
            h.update(&[6]);
        }
        Err(RequestError::SessionUnknown { .. }) => {
            h.update(&[7]);
        }
        Err(_) => {
            h.update(&[8]);
        }
    }
}

/// The digest of one outcome alone (what [`OutcomeChain`] folds in).
pub fn outcome_digest(outcome: &Response) -> Digest {
    let mut h = Feed::new();
    fold_outcome(outcome, &mut h);
    h.finalize()
}

/// Where [`fold_outcome`] puts the pieces of a digest's input.
trait FeedBytes {
    fn update(&mut self, bytes: &[u8]);
}

impl FeedBytes for &mut Feed {
    fn update(&mut self, bytes: &[u8]) {
        Feed::update(self, bytes);
    }
}

/// Bytes an outcome's digest input gathers on the stack before it streams through a
/// `blake3::Hasher` instead (most outcomes are a few dozen bytes).
const FEED_INLINE_BYTES: usize = 192;

/// The input of one digest, fed in pieces: BLAKE3 of the concatenation, whichever way it goes.
/// Small inputs are hashed in one `blake3::hash` call over a stack buffer; a `Hasher` (2 KiB,
/// whose set-up and moves cost more than hashing a small input) only past
/// [`FEED_INLINE_BYTES`].
struct Feed {
    inline: [u8; FEED_INLINE_BYTES],
    len: usize,
    streaming: Option<Box<blake3::Hasher>>,
}

impl Feed {
    fn new() -> Self {
        Feed {
            inline: [0; FEED_INLINE_BYTES],
            len: 0,
            streaming: None,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = &mut self.streaming {
            h.update(bytes);
        } else if let Some(dst) = self.inline.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut h = Box::new(blake3::Hasher::new());
            h.update(&self.inline[..self.len]);
            h.update(bytes);
            self.streaming = Some(h);
        }
    }

    fn finalize(self) -> Digest {
        match self.streaming {
            Some(h) => *h.finalize().as_bytes(),
            None => *blake3::hash(&self.inline[..self.len]).as_bytes(),
        }
    }
}

/// [`outcome_digest`] of a guest's result for an entry, as the applier records it.
pub fn entry_result_digest(r: &wraft_host::EntryResult) -> Digest {
    let outcome: Response = match r {
        Ok(output) => Ok(Reply::Applied {
            index: 0,
            output: output.clone(),
        }),
        Err(e) => Err(RequestError::App {
            code: e.code,
            message: e.message.clone(),
        }),
    };
    outcome_digest(&outcome)
}

/// Lowercase hex of the first 8 bytes of a digest, for messages.
pub fn short(d: &Digest) -> String {
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(out: &[u8]) -> Digest {
        outcome_digest(&Ok(Reply::Applied {
            index: 0,
            output: out.to_vec(),
        }))
    }

    #[test]
    fn equal_histories_agree_and_a_different_output_is_a_mismatch() {
        let (mut a, mut b) = (OutcomeChain::genesis(), OutcomeChain::genesis());
        for i in 1..=10 {
            a.push(i, &applied(&[i as u8]));
            let out = if i == 7 { 99 } else { i as u8 };
            b.push(i, &applied(&[out]));
        }
        let leader = a.at(5).expect("kept");
        assert_eq!(b.clone().check(11, 5, leader), CheckOutcome::Match);
        let leader = a.at(10).expect("kept");
        assert!(matches!(
            b.check(11, 10, leader),
            CheckOutcome::Mismatch { .. }
        ));
    }

    #[test]
    fn a_replica_started_from_a_snapshot_is_in_step_after_the_next_checkpoint() {
        let mut live = OutcomeChain::genesis();
        let mut restored = OutcomeChain::unknown();
        for i in 1..=5 {
            live.push(i, &applied(b"x"));
            assert_eq!(restored.push(i, &applied(b"x")), None);
        }
        let d = live.at(5).expect("kept");
        assert_eq!(restored.check(6, 5, d), CheckOutcome::Unknown);
        assert_eq!(live.check(6, 5, d), CheckOutcome::Match);
        for i in 7..=9 {
            assert_eq!(
                live.push(i, &applied(b"y")),
                restored.push(i, &applied(b"y"))
            );
        }
        assert!(live.at(9).is_some());
    }

    #[test]
    fn node_local_texts_do_not_enter_the_digest() {
        let (mut a, mut b) = (OutcomeChain::genesis(), OutcomeChain::genesis());
        a.push(
            1,
            &outcome_digest(&Err(RequestError::MachineFault("trap at 0x1234".into()))),
        );
        b.push(
            1,
            &outcome_digest(&Err(RequestError::MachineFault("trap at 0x9999".into()))),
        );
        assert_eq!(a.at(1), b.at(1));
    }

    /// The same pieces streamed through one `blake3::Hasher`, as digests were first computed:
    /// every version must compute exactly these, or replicas of two versions would report each
    /// other diverged at their first checkpoint (`digests_are_pinned` pins the pieces).
    fn reference_outcome(outcome: &Response) -> Digest {
        let mut h = blake3::Hasher::new();
        fold_outcome(outcome, &mut h);
        *h.finalize().as_bytes()
    }

    impl FeedBytes for &mut blake3::Hasher {
        fn update(&mut self, bytes: &[u8]) {
            blake3::Hasher::update(self, bytes);
        }
    }

    fn reference_chain(prev: &Digest, index: u64, outcome: &Digest) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(prev);
        h.update(&index.to_le_bytes());
        h.update(outcome);
        *h.finalize().as_bytes()
    }

    #[test]
    fn digests_are_those_first_defined_for_every_size_of_outcome() {
        let mut outcomes: Vec<Response> = vec![
            Ok(Reply::SessionOpened { client_id: 77 }),
            Ok(Reply::Done {
                message: "committed at index 3".into(),
            }),
            Err(RequestError::MachineFault("trap".into())),
            Err(RequestError::NoSuchMachine("kv".into())),
            Err(RequestError::Rejected("stale".into())),
            Err(RequestError::SessionUnknown { client_id: 9 }),
            Err(RequestError::Internal("x".into())),
        ];
        // Around the stack buffer's size, one BLAKE3 chunk (1 KiB) and well past both.
        for n in (0..=FEED_INLINE_BYTES + 20).chain([1023, 1024, 1025, 5000]) {
            let text: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            outcomes.push(Ok(Reply::Applied {
                index: n as u64,
                output: text.clone().into_bytes(),
            }));
            outcomes.push(Err(RequestError::App {
                code: n as u32,
                message: text,
            }));
        }
        let mut chain = OutcomeChain::genesis();
        let mut prev = [0u8; 32];
        for (i, o) in outcomes.iter().enumerate() {
            let d = outcome_digest(o);
            assert_eq!(d, reference_outcome(o), "{o:?}");
            let index = (i as u64) << 40 | 0xABCD;
            let next = chain.push(index, &d).expect("known chain");
            assert_eq!(next, reference_chain(&prev, index, &d));
            prev = next;
        }
    }

    /// Two digests pinned as bytes, computed outside wraft (Python's `blake3` over the inputs
    /// as defined above): a change made to both the code and its reference copy still fails.
    #[test]
    fn digests_are_pinned() {
        let hex = wraft_proto::digest::hex;
        let put = outcome_digest(&Ok(Reply::Applied {
            index: 1,
            output: br#"{"prev":null}"#.to_vec(),
        }));
        assert_eq!(
            hex(&put),
            "7c3d9a47bda080cc62d73b7cb2b2ddf2e823112c1930f2a02fc814c2724bb630"
        );
        let refused = outcome_digest(&Err(RequestError::App {
            code: 7,
            message: "bad".into(),
        }));
        assert_eq!(
            hex(&refused),
            "f5821c8e36beed422c675b7574b132bbe2dd55f5c8c9fcd89a3d940fa74885ec"
        );
        let mut chain = OutcomeChain::genesis();
        chain.push(1, &put);
        assert_eq!(
            hex(&chain.push(2, &refused).expect("known chain")),
            "cc1cfe947dcf0646a46bb2e09e2d3294d964bd084958db5595bc7cf35919d990"
        );
    }

    #[test]
    fn only_the_most_recent_digests_are_kept() {
        let mut c = OutcomeChain::genesis();
        for i in 1..=(RECENT_DIGESTS_MAX as u64 + 10) {
            c.push(i, &applied(b""));
        }
        assert_eq!(c.at(10), None);
        assert!(c.at(RECENT_DIGESTS_MAX as u64 + 10).is_some());
    }
}
