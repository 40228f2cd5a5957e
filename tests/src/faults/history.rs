//! The client history of a fault run and its checks.
//!
//! Every operation a client issues is recorded at invocation (time taken
//! before the request leaves) and completed at response (time taken after
//! the answer arrives), on one monotone clock in microseconds. An operation
//! ends in one of three ways:
//!
//! - **ok**: the answer arrived; its output is recorded;
//! - **failed**: the cluster said it did not and will not take effect
//!   (`Rejected`, `NoSuchMachine`), or a read failed (a read with no answer
//!   constrains nothing): dropped from the checked history;
//! - **indeterminate**: a write timed out, lost its connection or could not
//!   find a leader. It may take effect at any time after its invocation, or
//!   never: it enters the checker with no return (`ret = None`), which is
//!   exactly how [`wraft_engine::lincheck`] models it.
//!
//! The register history goes through [`lincheck::check`] with [`KvModel`]
//! (one partition per key) after [`lincheck::prune_unobserved_pending`],
//! which needs unique written values per key — the clients guarantee that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use wraft_engine::lincheck::{self, CheckResult, KvInput, KvModel, KvOutput, Operation};

/// Search steps the checker may spend per key before answering `Unknown`.
pub const LINCHECK_STEPS_MAX: u64 = 50_000_000;

/// Which client call an operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `put` command.
    Put,
    /// `cas` command.
    Cas,
    /// `get` query, linearizable consistency (ReadIndex).
    GetLinearizable,
    /// `get` query, lease consistency.
    GetLease,
    /// `put` of a never-overwritten key (the lost-write check).
    UniquePut,
}

impl OpKind {
    /// Every kind, in table order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Put,
        OpKind::Cas,
        OpKind::GetLinearizable,
        OpKind::GetLease,
        OpKind::UniquePut,
    ];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Cas => "cas",
            OpKind::GetLinearizable => "get (linearizable)",
            OpKind::GetLease => "get (lease)",
            OpKind::UniquePut => "unique put",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// Answered.
    Ok,
    /// Definitely without effect.
    Failed,
    /// Unknown whether it took effect.
    Indeterminate,
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Record {
    /// Logical client.
    pub client: u64,
    /// Call kind.
    pub kind: OpKind,
    /// Register input (`UniquePut`s use key `u64::MAX`, outside the model).
    pub input: KvInput,
    /// Invocation, µs since the history started.
    pub call_us: u64,
    /// Response, µs since the history started.
    pub ret_us: Option<u64>,
    /// Register output when ok.
    pub output: Option<KvOutput>,
    /// How it ended.
    pub outcome: Outcome,
    /// Error text when not ok.
    pub error: String,
}

/// A concurrent, append-only history.
pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// Human-readable anomalies; empty when every check passed.
    pub anomalies: Vec<String>,
    /// Keys whose search ran out of budget (nothing proven for them).
    pub unknown_keys: Vec<u64>,
    /// Operations handed to the checker after pruning.
    pub checked_ops: usize,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
        }
    }

    /// Time since the history started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an invocation; returns its handle for [`History::complete`].
    pub fn invoke(&self, client: u64, kind: OpKind, input: KvInput) -> usize {
        let call_us = self.now_us();
        let mut r = self.lock();
        r.push(Record {
            client,
            kind,
            input,
            call_us,
            ret_us: None,
            output: None,
            outcome: Outcome::Pending,
            error: String::new(),
        });
        r.len() - 1
    }

    /// Record how operation `op` ended (the response time is taken now).
    pub fn complete(&self, op: usize, outcome: Outcome, output: Option<KvOutput>, error: String) {
        let ret_us = self.now_us();
        let mut r = self.lock();
        let rec = &mut r[op];
        rec.outcome = outcome;
        rec.output = output;
        rec.error = error;
        if outcome == Outcome::Ok {
            rec.ret_us = Some(ret_us);
        }
    }

    /// A copy of every record so far.
    pub fn records(&self) -> Vec<Record> {
        self.lock().clone()
    }

    /// Count of operations by kind and outcome.
    pub fn tally(&self) -> BTreeMap<OpKind, [u64; 3]> {
        let mut t: BTreeMap<OpKind, [u64; 3]> = OpKind::ALL.iter().map(|k| (*k, [0; 3])).collect();
        for r in self.lock().iter() {
            let slot = match r.outcome {
                Outcome::Ok => 0,
                Outcome::Failed => 1,
                Outcome::Indeterminate | Outcome::Pending => 2,
            };
            if let Some(row) = t.get_mut(&r.kind) {
                row[slot] += 1;
            }
        }
        t
    }

    /// Check the register operations for linearizability and the unique
    /// puts against `final_unique`, the unique keys a linearizable scan
    /// found after the run: every acknowledged unique put must be there, and
    /// nothing that was never written may be.
    pub fn check(&self, final_unique: &BTreeSet<u64>) -> Verdict {
        let records = self.records();
        let mut verdict = Verdict::default();

        let ops: Vec<Operation<KvInput, KvOutput>> = records
            .iter()
            .filter(|r| r.kind != OpKind::UniquePut)
            .filter(|r| match r.outcome {
                Outcome::Ok => true,
                Outcome::Indeterminate | Outcome::Pending => {
                    matches!(r.input, KvInput::Put { .. } | KvInput::Cas { .. })
                }
                Outcome::Failed => false,
            })
            .map(|r| Operation {
                client: r.client,
                input: r.input,
                call: r.call_us,
                ret: r.ret_us,
                output: r.output,
            })
            .collect();
        let ops = lincheck::prune_unobserved_pending(&ops);
        verdict.checked_ops = ops.len();
        // Check key by key so one unknown key does not hide another's verdict.
        let mut by_key: BTreeMap<u64, Vec<Operation<KvInput, KvOutput>>> = BTreeMap::new();
        for o in ops {
            by_key.entry(o.input.key()).or_default().push(o);
        }
        for (key, h) in &by_key {
            match lincheck::check(&KvModel, h, LINCHECK_STEPS_MAX) {
                CheckResult::Linearizable => {}
                CheckResult::Unknown => verdict.unknown_keys.push(*key),
                CheckResult::NotLinearizable { partition } => {
                    let mut msg = format!(
                        "key k{key}: history is not linearizable ({} ops); in call order:\n",
                        partition.len()
                    );
                    let mut part: Vec<&Operation<KvInput, KvOutput>> =
                        partition.iter().map(|i| &h[*i]).collect();
                    part.sort_by_key(|o| o.call);
                    for o in part {
                        msg += &format!(
                            "  client {:>3} [{:>10} µs .. {:>10}] {:?} -> {:?}\n",
                            o.client,
                            o.call,
                            o.ret.map_or("pending".to_owned(), |r| r.to_string()),
                            o.input,
                            o.output
                        );
                    }
                    verdict.anomalies.push(msg);
                }
            }
        }

        // Unique puts: acknowledged ⇒ present; present ⇒ attempted.
        let mut attempted = BTreeSet::new();
        for r in records.iter().filter(|r| r.kind == OpKind::UniquePut) {
            let KvInput::Put { value, .. } = r.input else {
                continue;
            };
            if r.outcome != Outcome::Failed {
                attempted.insert(value);
            }
            if r.outcome == Outcome::Ok && !final_unique.contains(&value) {
                verdict.anomalies.push(format!(
                    "acknowledged write lost: unique key w/{value} (client {}, acknowledged at {} µs) is missing from the final linearizable scan",
                    r.client,
                    r.ret_us.unwrap_or_default()
                ));
            }
        }
        for v in final_unique.difference(&attempted) {
            verdict.anomalies.push(format!(
                "phantom write: unique key w/{v} is present but no client wrote it (or its write was refused)"
            ));
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock has microsecond resolution and touching intervals count as
    /// concurrent; keep the operations of a test strictly ordered.
    fn later() {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }

    fn put(h: &History, client: u64, key: u64, value: u64, outcome: Outcome) {
        let op = h.invoke(client, OpKind::Put, KvInput::Put { key, value });
        let out = (outcome == Outcome::Ok).then_some(KvOutput::Put);
        h.complete(op, outcome, out, String::new());
        later();
    }

    fn get(h: &History, client: u64, key: u64, value: Option<u64>) {
        let op = h.invoke(client, OpKind::GetLease, KvInput::Get { key });
        h.complete(op, Outcome::Ok, Some(KvOutput::Get(value)), String::new());
        later();
    }

    fn unique(h: &History, value: u64, outcome: Outcome) {
        let op = h.invoke(
            1,
            OpKind::UniquePut,
            KvInput::Put {
                key: u64::MAX,
                value,
            },
        );
        h.complete(op, outcome, None, String::new());
    }

    #[test]
    fn a_read_of_the_old_value_after_an_acknowledged_write_is_an_anomaly() {
        let h = History::new();
        put(&h, 1, 0, 10, Outcome::Ok);
        put(&h, 1, 0, 11, Outcome::Ok);
        get(&h, 2, 0, Some(10));
        let v = h.check(&BTreeSet::new());
        assert_eq!(v.anomalies.len(), 1, "{:?}", v.anomalies);
        assert!(v.anomalies[0].contains("key k0"), "{}", v.anomalies[0]);
    }

    #[test]
    fn an_indeterminate_write_may_surface_later_but_a_refused_one_may_not() {
        let h = History::new();
        put(&h, 1, 0, 10, Outcome::Indeterminate);
        get(&h, 2, 0, None);
        get(&h, 2, 0, Some(10));
        assert!(h.check(&BTreeSet::new()).anomalies.is_empty());

        let h = History::new();
        put(&h, 1, 0, 10, Outcome::Failed);
        get(&h, 2, 0, Some(10));
        assert_eq!(h.check(&BTreeSet::new()).anomalies.len(), 1);
    }

    #[test]
    fn a_lost_acknowledged_unique_write_and_a_phantom_one_are_anomalies() {
        let h = History::new();
        unique(&h, 5, Outcome::Ok);
        unique(&h, 6, Outcome::Indeterminate);
        unique(&h, 7, Outcome::Failed);
        // 6 may or may not be there; 5 must be; 7 and 8 must not.
        assert!(h.check(&BTreeSet::from([5, 6])).anomalies.is_empty());
        assert!(h.check(&BTreeSet::from([5])).anomalies.is_empty());
        let v = h.check(&BTreeSet::from([6, 7, 8]));
        assert_eq!(v.anomalies.len(), 3, "{:?}", v.anomalies);
        assert!(
            v.anomalies
                .iter()
                .any(|a| a.contains("lost") && a.contains("w/5"))
        );
        assert!(
            v.anomalies
                .iter()
                .any(|a| a.contains("phantom") && a.contains("w/7"))
        );
        assert!(
            v.anomalies
                .iter()
                .any(|a| a.contains("phantom") && a.contains("w/8"))
        );
    }

    #[test]
    fn tally_counts_each_outcome_per_kind() {
        let h = History::new();
        put(&h, 1, 0, 1, Outcome::Ok);
        put(&h, 1, 0, 2, Outcome::Failed);
        put(&h, 1, 0, 3, Outcome::Indeterminate);
        assert_eq!(h.tally()[&OpKind::Put], [1, 1, 1]);
        assert_eq!(h.tally()[&OpKind::Cas], [0, 0, 0]);
    }
}
