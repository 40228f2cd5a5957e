//! Linearizability checking of recorded client histories.
//!
//! A Wing–Gong search with Lowe's memoization (the algorithm behind Porcupine):
//! walk the history's call/return events in time order, tentatively linearize
//! any operation whose call is reachable before the earliest pending return,
//! backtrack on a dead end, and never revisit a (set of linearized operations,
//! model state) pair. Histories are split into independent partitions first
//! (for a key-value store: one per key), which keeps the search small.
//!
//! Pure and model-generic: the simulator uses it, and so can a fault suite that
//! records histories from real clusters (timestamps from any monotone clock).

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// One client operation in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Client that issued it (informational).
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// Time the call was issued.
    pub call: u64,
    /// Time the answer arrived; `None` if it never did (timeout, crash): such
    /// an operation may have taken effect at any time after `call`, or never.
    pub ret: Option<u64>,
    /// The answer; `None` when `ret` is `None`.
    pub output: Option<O>,
}

/// A sequential specification.
pub trait Model {
    /// Model state; hashed for memoization.
    type State: Clone + Eq + Hash + Debug;
    /// Operation input.
    type Input: Clone + Debug;
    /// Operation output.
    type Output: Clone + Debug;
    /// Initial state.
    fn init(&self) -> Self::State;
    /// The state after applying `input` to `state`, if `output` is what the
    /// sequential specification allows (`output == None`: any output is allowed).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
    /// Splits a history into independently checkable parts (indices into it).
    /// Default: one part.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }
}

/// Result of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists. `partition` holds the indices (into the full
    /// history) of the part that failed.
    NotLinearizable {
        /// Indices of the failing partition's operations.
        partition: Vec<usize>,
    },
    /// The search exceeded `max_steps` in some partition; nothing is proven.
    Unknown,
}

/// Checks `history` against `model`, spending at most `max_steps` search steps per partition.
///
/// Cost: exponential in the worst case (the problem is NP-complete), typically
/// near-linear with memoization and small partitions. Memory: one bitset per
/// cached state.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> CheckResult {
    let mut unknown = false;
    for part in model.partition(history) {
        match check_part(model, history, &part, max_steps) {
            Some(true) => {}
            Some(false) => return CheckResult::NotLinearizable { partition: part },
            None => unknown = true,
        }
    }
    if unknown {
        CheckResult::Unknown
    } else {
        CheckResult::Linearizable
    }
}

const NIL: usize = usize::MAX;

fn check_part<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    part: &[usize],
    max_steps: u64,
) -> Option<bool> {
    let n = part.len();
    if n == 0 {
        return Some(true);
    }
    // Events: (time, is_return, op). Calls sort before returns at equal times,
    // so touching intervals count as concurrent (the permissive reading).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (k, &i) in part.iter().enumerate() {
        let op = &history[i];
        let ret = op.ret.unwrap_or(u64::MAX).max(op.call);
        events.push((op.call, false, k));
        events.push((ret, true, k));
    }
    events.sort_unstable();
    // Node ids: call of op k = 2k, return = 2k+1, head = 2n.
    let head = 2 * n;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = head;
    for &(_, is_ret, k) in &events {
        let node = 2 * k + usize::from(is_ret);
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    let words = n.div_ceil(64);
    let mut bits = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut cur = next[head];
    let mut steps = 0u64;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = node;
        if q != NIL {
            prev[q] = node;
        }
    };

    while next[head] != NIL {
        steps += 1;
        if steps > max_steps {
            return None;
        }
        if cur == NIL {
            // Only reachable if every remaining node is a call, which the
            // construction rules out; treat as a dead end.
            return Some(false);
        }
        if cur.is_multiple_of(2) {
            let k = cur / 2;
            let op = &history[part[k]];
            if let Some(s2) = model.step(&state, &op.input, op.output.as_ref()) {
                bits[k / 64] |= 1 << (k % 64);
                if cache.insert((bits.clone(), s2.clone())) {
                    let old = std::mem::replace(&mut state, s2);
                    stack.push((k, old));
                    lift(&mut next, &mut prev, 2 * k);
                    lift(&mut next, &mut prev, 2 * k + 1);
                    cur = next[head];
                    continue;
                }
                bits[k / 64] &= !(1 << (k % 64));
            }
            cur = next[cur];
        } else {
            let Some((k, old)) = stack.pop() else {
                return Some(false);
            };
            state = old;
            bits[k / 64] &= !(1 << (k % 64));
            unlift(&mut next, &mut prev, 2 * k + 1);
            unlift(&mut next, &mut prev, 2 * k);
            cur = next[2 * k];
        }
    }
    Some(true)
}

/// Input of the key-value register model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: u64,
        /// Value.
        value: u64,
    },
    /// Read `key`.
    Get {
        /// Key.
        key: u64,
    },
    /// Set `key` to `new` if it currently equals `expected`.
    Cas {
        /// Key.
        key: u64,
        /// Expected current value (`None`: absent).
        expected: Option<u64>,
        /// Replacement.
        new: u64,
    },
}

impl KvInput {
    /// The key the operation touches.
    pub fn key(&self) -> u64 {
        match *self {
            KvInput::Put { key, .. } | KvInput::Get { key } | KvInput::Cas { key, .. } => key,
        }
    }
}

/// Output of the key-value register model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// Put done.
    Put,
    /// Value read.
    Get(Option<u64>),
    /// Whether the CAS swapped.
    Cas(bool),
}

/// A map of independent registers with put/get/compare-and-set, partitioned by key.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<u64>> {
        match (*input, output) {
            (KvInput::Put { value, .. }, None | Some(KvOutput::Put)) => Some(Some(value)),
            (KvInput::Get { .. }, None) => Some(*state),
            (KvInput::Get { .. }, Some(KvOutput::Get(v))) if v == state => Some(*state),
            (KvInput::Cas { expected, new, .. }, None) => Some(if *state == expected {
                Some(new)
            } else {
                *state
            }),
            (KvInput::Cas { expected, new, .. }, Some(KvOutput::Cas(ok))) => {
                let matches = *state == expected;
                if matches != *ok {
                    None
                } else if matches {
                    Some(Some(new))
                } else {
                    Some(*state)
                }
            }
            _ => None,
        }
    }

    fn partition(&self, history: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        let mut by_key: std::collections::BTreeMap<u64, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, op) in history.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(i);
        }
        by_key.into_values().collect()
    }
}

/// Drops pending (never answered) writes that cannot help explain any
/// observation, and pending `Get`s (which constrain nothing).
///
/// Dropping a pending write is the same as linearizing it after every
/// completed operation, which is always a legal placement; it only loses
/// placements where the write takes effect earlier. Those can matter only to
/// an observation the write could explain: a `Get` returning its value, a
/// successful `Cas` expecting its value (or a kept pending one, which may
/// have succeeded), or a *failed* `Cas` (any value other
/// than the expected one explains a failure) that could be linearized after
/// the write's call. Writes with none of those are dropped, so the verdict is
/// unchanged. Requires written values to be unique per key. This keeps the
/// search from branching over 2^k placements of k abandoned writes.
pub fn prune_unobserved_pending(
    history: &[Operation<KvInput, KvOutput>],
) -> Vec<Operation<KvInput, KvOutput>> {
    let mut observed = std::collections::HashSet::new();
    // Latest return time of a failed CAS, per key.
    let mut failed_cas_ret: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for o in history {
        match (o.input, o.output) {
            (KvInput::Get { key }, Some(KvOutput::Get(Some(v)))) => {
                observed.insert((key, v));
            }
            (
                KvInput::Cas {
                    key,
                    expected: Some(e),
                    ..
                },
                Some(KvOutput::Cas(true)),
            ) => {
                observed.insert((key, e));
            }
            (KvInput::Cas { key, .. }, Some(KvOutput::Cas(false))) => {
                let r = o.ret.unwrap_or(u64::MAX);
                let e = failed_cas_ret.entry(key).or_insert(0);
                *e = (*e).max(r);
            }
            _ => {}
        }
    }
    let keep = |o: &Operation<KvInput, KvOutput>,
                observed: &std::collections::HashSet<(u64, u64)>| {
        if o.ret.is_some() {
            return true;
        }
        match o.input {
            KvInput::Get { .. } => false,
            KvInput::Put { key, value }
            | KvInput::Cas {
                key, new: value, ..
            } => {
                observed.contains(&(key, value))
                    || failed_cas_ret.get(&key).is_some_and(|&r| r >= o.call)
            }
        }
    };
    // A pending CAS that is kept may have succeeded, which needs its expected
    // value written first: that value counts as observed too (to a fixpoint,
    // at most one round per pending CAS).
    loop {
        let before = observed.len();
        for o in history {
            if let KvInput::Cas {
                key,
                expected: Some(e),
                ..
            } = o.input
                && o.ret.is_none()
                && keep(o, &observed)
            {
                observed.insert((key, e));
            }
        }
        if observed.len() == before {
            break;
        }
    }
    history
        .iter()
        .filter(|o| keep(o, &observed))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: u64,
        input: KvInput,
        call: u64,
        ret: Option<u64>,
        output: Option<KvOutput>,
    ) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            input,
            call,
            ret,
            output,
        }
    }
    fn put(v: u64) -> KvInput {
        KvInput::Put { key: 1, value: v }
    }
    fn get() -> KvInput {
        KvInput::Get { key: 1 }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, put(1), 0, Some(1), Some(KvOutput::Put)),
            op(2, get(), 2, Some(3), Some(KvOutput::Get(Some(1)))),
            op(
                1,
                KvInput::Cas {
                    key: 1,
                    expected: Some(1),
                    new: 5,
                },
                4,
                Some(5),
                Some(KvOutput::Cas(true)),
            ),
            op(2, get(), 6, Some(7), Some(KvOutput::Get(Some(5)))),
        ];
        assert_eq!(check(&KvModel, &h, 1_000_000), CheckResult::Linearizable);
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let h = vec![
            op(1, put(1), 0, Some(1), Some(KvOutput::Put)),
            op(1, put(2), 2, Some(3), Some(KvOutput::Put)),
            op(2, get(), 4, Some(5), Some(KvOutput::Get(Some(1)))),
        ];
        assert!(matches!(
            check(&KvModel, &h, 1_000_000),
            CheckResult::NotLinearizable { .. }
        ));
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        let h = vec![
            op(1, put(1), 0, Some(1), Some(KvOutput::Put)),
            op(1, put(2), 2, Some(10), Some(KvOutput::Put)),
            op(2, get(), 3, Some(4), Some(KvOutput::Get(Some(2)))),
            op(3, get(), 5, Some(6), Some(KvOutput::Get(Some(2)))),
        ];
        assert_eq!(check(&KvModel, &h, 1_000_000), CheckResult::Linearizable);
        // ...but once seen, it cannot be unseen (new-old inversion).
        let h2 = vec![
            op(1, put(1), 0, Some(1), Some(KvOutput::Put)),
            op(1, put(2), 2, Some(10), Some(KvOutput::Put)),
            op(2, get(), 3, Some(4), Some(KvOutput::Get(Some(2)))),
            op(3, get(), 5, Some(6), Some(KvOutput::Get(Some(1)))),
        ];
        assert!(matches!(
            check(&KvModel, &h2, 1_000_000),
            CheckResult::NotLinearizable { .. }
        ));
    }

    #[test]
    fn pending_write_may_take_effect_late_or_never() {
        let h = vec![
            op(1, put(7), 0, None, None),
            op(2, get(), 1, Some(2), Some(KvOutput::Get(None))),
            op(2, get(), 100, Some(101), Some(KvOutput::Get(Some(7)))),
        ];
        assert_eq!(check(&KvModel, &h, 1_000_000), CheckResult::Linearizable);
        let never = vec![
            op(1, put(7), 0, None, None),
            op(2, get(), 100, Some(101), Some(KvOutput::Get(None))),
        ];
        assert_eq!(
            check(&KvModel, &never, 1_000_000),
            CheckResult::Linearizable
        );
    }

    #[test]
    fn double_successful_cas_from_same_value_is_not_linearizable() {
        let h = vec![
            op(1, put(0), 0, Some(1), Some(KvOutput::Put)),
            op(
                2,
                KvInput::Cas {
                    key: 1,
                    expected: Some(0),
                    new: 1,
                },
                2,
                Some(5),
                Some(KvOutput::Cas(true)),
            ),
            op(
                3,
                KvInput::Cas {
                    key: 1,
                    expected: Some(0),
                    new: 2,
                },
                2,
                Some(5),
                Some(KvOutput::Cas(true)),
            ),
        ];
        assert!(matches!(
            check(&KvModel, &h, 1_000_000),
            CheckResult::NotLinearizable { .. }
        ));
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = vec![
            op(
                1,
                KvInput::Put { key: 1, value: 1 },
                0,
                Some(1),
                Some(KvOutput::Put),
            ),
            op(
                1,
                KvInput::Put { key: 2, value: 9 },
                2,
                Some(3),
                Some(KvOutput::Put),
            ),
            op(
                2,
                KvInput::Get { key: 2 },
                4,
                Some(5),
                Some(KvOutput::Get(None)),
            ),
        ];
        match check(&KvModel, &h, 1_000_000) {
            CheckResult::NotLinearizable { partition } => assert_eq!(partition, vec![1, 2]),
            other => panic!("expected a violation on key 2, got {other:?}"),
        }
    }

    #[test]
    fn pruning_keeps_observed_pending_writes_and_verdicts() {
        let h = vec![
            op(1, put(7), 0, None, None),
            op(2, put(8), 0, None, None),
            op(3, get(), 1, Some(2), Some(KvOutput::Get(Some(7)))),
            op(4, get(), 5, None, None),
        ];
        let p = prune_unobserved_pending(&h);
        assert_eq!(
            p.len(),
            2,
            "put(8) and the pending get are dropped, put(7) is kept"
        );
        assert_eq!(check(&KvModel, &p, 1_000), CheckResult::Linearizable);
        // Without put(7) the read of 7 would be impossible: it must be kept.
        let bad = vec![
            op(2, put(8), 0, None, None),
            op(3, get(), 1, Some(2), Some(KvOutput::Get(Some(7)))),
        ];
        let p = prune_unobserved_pending(&bad);
        assert!(matches!(
            check(&KvModel, &p, 1_000),
            CheckResult::NotLinearizable { .. }
        ));
    }

    #[test]
    fn pruning_keeps_a_pending_write_that_explains_a_failed_cas() {
        let h = vec![
            op(1, put(8), 0, None, None),
            op(
                2,
                KvInput::Cas {
                    key: 1,
                    expected: None,
                    new: 5,
                },
                3,
                Some(4),
                Some(KvOutput::Cas(false)),
            ),
        ];
        assert_eq!(prune_unobserved_pending(&h).len(), 2);
        assert_eq!(
            check(&KvModel, &prune_unobserved_pending(&h), 1_000),
            CheckResult::Linearizable
        );
    }

    #[test]
    fn pruning_keeps_a_pending_write_whose_value_a_kept_pending_cas_expected() {
        // Both writes were abandoned; only the read shows that the CAS took
        // effect, which it could only do after the put.
        let h = vec![
            op(1, put(415), 0, None, None),
            op(
                2,
                KvInput::Cas {
                    key: 1,
                    expected: Some(415),
                    new: 647,
                },
                1,
                None,
                None,
            ),
            op(3, get(), 10, Some(11), Some(KvOutput::Get(Some(647)))),
        ];
        assert_eq!(check(&KvModel, &h, 1_000), CheckResult::Linearizable);
        assert_eq!(prune_unobserved_pending(&h).len(), 3);
        assert_eq!(
            check(&KvModel, &prune_unobserved_pending(&h), 1_000),
            CheckResult::Linearizable
        );
    }

    #[test]
    fn many_abandoned_writes_do_not_blow_up_the_search_after_pruning() {
        let mut h = Vec::new();
        for c in 0..40u64 {
            h.push(op(c, put(100 + c), c, None, None));
            h.push(op(
                100 + c,
                get(),
                2 * c + 1000,
                Some(2 * c + 1001),
                Some(KvOutput::Get(None)),
            ));
        }
        assert_eq!(
            check(&KvModel, &prune_unobserved_pending(&h), 10_000),
            CheckResult::Linearizable
        );
    }

    #[test]
    fn search_budget_exhaustion_reports_unknown() {
        let mut h = Vec::new();
        for c in 0..12u64 {
            h.push(op(c, put(c), 0, Some(100), Some(KvOutput::Put)));
        }
        h.push(op(
            99,
            get(),
            0,
            Some(100),
            Some(KvOutput::Get(Some(12345))),
        ));
        assert_eq!(check(&KvModel, &h, 10), CheckResult::Unknown);
        assert!(matches!(
            check(&KvModel, &h, 100_000_000),
            CheckResult::NotLinearizable { .. }
        ));
    }
}
