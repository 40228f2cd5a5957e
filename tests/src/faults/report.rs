//! What a run did and found, and its summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::history::OpKind;
use super::proxy::ProxyStats;
use super::{FaultKind, FaultOptions};

/// What a run did and found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options it ran with.
    pub options: FaultOptions,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Operations by kind: `[ok, failed, indeterminate]`.
    pub ops: BTreeMap<OpKind, [u64; 3]>,
    /// Anomalies (must be empty).
    pub anomalies: Vec<String>,
    /// Keys the checker could not decide within its budget.
    pub unknown_keys: Vec<u64>,
    /// Operations given to the linearizability checker.
    pub checked_ops: usize,
    /// Longest time from healing a fault to the next successful write.
    pub recovery_ms_max: u64,
    /// Highest snapshot index any node reported (0: no snapshot was taken).
    pub snapshot_index_max: u64,
    /// Applied index every replica converged on.
    pub final_applied_index: u64,
    /// Replica digest (identical on every member) and entries in it.
    pub digest: (u64, usize),
    /// Proxy counters.
    pub proxy: ProxyStats,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// What the nemesis did, with times on the history clock.
    pub timeline: Vec<String>,
}

impl Report {
    /// The summary table.
    pub fn summary(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== wraft fault run: seed {} · {} nodes · {} s of faults · {} clients · {} keys · wall {:.1} s",
            o.seed,
            o.nodes,
            o.duration.as_secs(),
            o.clients,
            o.keys,
            self.wall.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "{:<24} {:>8} {:>8} {:>14}",
            "operation", "ok", "failed", "indeterminate"
        );
        let mut total = [0u64; 3];
        for (k, [a, b, c]) in &self.ops {
            let _ = writeln!(s, "{:<24} {a:>8} {b:>8} {c:>14}", k.name());
            total[0] += a;
            total[1] += b;
            total[2] += c;
        }
        let _ = writeln!(
            s,
            "{:<24} {:>8} {:>8} {:>14}",
            "total", total[0], total[1], total[2]
        );
        let _ = writeln!(s, "{:<40} {:>6}", "fault", "count");
        for (k, n) in &self.faults {
            let _ = writeln!(s, "{:<40} {n:>6}", k.name());
        }
        let _ = writeln!(
            s,
            "{:<40} {:>6}",
            "total",
            self.faults.values().sum::<u64>()
        );
        let _ = writeln!(
            s,
            "checked ops {} · undecided keys {:?} · recovery max {} ms · snapshot index max {} · \
             final applied index {} · replica digest {:016x} ({} entries) · proxy relayed {} dropped {} delayed {}",
            self.checked_ops,
            self.unknown_keys,
            self.recovery_ms_max,
            self.snapshot_index_max,
            self.final_applied_index,
            self.digest.0,
            self.digest.1,
            self.proxy.relayed,
            self.proxy.dropped,
            self.proxy.delayed
        );
        let _ = writeln!(s, "anomalies: {}", self.anomalies.len());
        for a in &self.anomalies {
            let _ = writeln!(s, "  - {a}");
        }
        s
    }
}
