//! Fault injection across real `wraft node` processes, Jepsen style.
//!
//! [`run`] starts a cluster of real node processes on loopback whose every
//! node-to-node datagram goes through a [`FaultProxy`](proxy::FaultProxy),
//! deploys the `kv` example guest, and then, for the requested time:
//!
//! - **clients** (one task and one [`Client`] each) issue `put`, `cas`,
//!   linearizable and lease `get`s on a few keys, and `put`s of
//!   never-overwritten keys, recording every invocation and response in a
//!   [`History`](history::History);
//! - a **nemesis** injects one fault at a time from a seeded schedule
//!   ([`FaultKind`]): `kill -9` and restart (leader or follower), a follower
//!   kept down while the log moves far past it, `SIGSTOP`/`SIGCONT` pauses
//!   longer than the election timeout, minority/majority partitions, an
//!   isolated leader, one-way cuts, lossy and slow links, leadership
//!   transfers and membership changes (a fresh node added, caught up,
//!   promoted; an old voter — sometimes the leader — removed). After each
//!   fault heals, a write must succeed within [`FaultOptions::recovery_bound`].
//!
//! At the end every fault is healed, clients stop, each key is read once more
//! (linearizably), and the checks run: the register history must be
//! linearizable ([`wraft_engine::lincheck`] with its `KvModel`); every
//! acknowledged unique put must be in a final linearizable scan and nothing
//! unwritten may be; every member must reach the same applied index and
//! serve an identical full scan (the replica digest); no node may exit by
//! itself or log a panic. Anything else is an anomaly: [`run`] prints the
//! summary, the seed and a replay command, and panics.
//!
//! Snapshots: the node configs get small `snapshot.*` thresholds
//! ([`FaultOptions::snapshot_entries`]) and one fault kind keeps a follower
//! down while the leader commits several thresholds' worth of entries. On a
//! build whose node does not snapshot yet, the keys are accepted and have no
//! effect; once it does, the same schedule exercises snapshot creation and
//! InstallSnapshot under faults with no change here. The summary reports the
//! highest snapshot index any node reported, so a run says whether snapshots
//! actually happened.
//!
//! Determinism: the seed fixes the fault schedule and every client's choice
//! of operations; process and network timing do not replay exactly.

mod check;
pub mod history;
mod nemesis;
pub mod proxy;
mod report;
mod scenario;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wraft_client::Client;
use wraft_config::NodeConfig;
use wraft_engine::lincheck::{KvInput, KvOutput};
use wraft_proto::Consistency;

use crate::Cluster;
use check::{converge, unique_keys};
use history::{History, OpKind, Outcome, Verdict};
use nemesis::Nemesis;
use proxy::FaultProxy;
use workload::{
    ClientCtx, Endpoints, bounded, client_loop, client_options, json, key_name, parse_value,
};

pub use report::Report;
pub use scenario::{FaultKind, FaultOptions};

/// Bound on one client call inside the client library, milliseconds.
pub const OP_CALL_TIMEOUT_MS: u64 = 4_000;
/// Bound on one client operation as the history sees it, milliseconds; past
/// it the operation is abandoned and recorded as indeterminate.
pub const OP_DEADLINE_MS: u64 = 6_000;
/// Longest pause a client takes between two operations, milliseconds.
pub const OP_PAUSE_MS_MAX: u64 = 20;
/// Request timeout configured on the nodes (`client.request_timeout_ms`),
/// shorter than [`OP_CALL_TIMEOUT_MS`] so a minority leader answers
/// `Timeout` before the client gives up.
pub const NODE_REQUEST_TIMEOUT_MS: u64 = 3_000;
/// Bound on catching up (a restarted or new node reaching the leader's
/// commit index), milliseconds.
pub const CATCH_UP_TIMEOUT_MS: u64 = 60_000;
/// Bound on the replicas converging after the run, milliseconds.
pub const CONVERGE_TIMEOUT_MS: u64 = 60_000;
/// Page size of the digest scans.
pub const SCAN_PAGE_ENTRIES: usize = 5_000;

fn config_tweak(proxy: &FaultProxy, snapshot_entries: u64, cfg: &mut NodeConfig) {
    proxy.front_members(cfg);
    cfg.client.request_timeout_ms = NODE_REQUEST_TIMEOUT_MS;
    if snapshot_entries > 0 {
        cfg.snapshot.hint_threshold_entries = snapshot_entries;
        cfg.snapshot.log_entries_max = 4 * snapshot_entries;
        cfg.snapshot.log_retain_margin_entries = (snapshot_entries / 4).max(1);
        cfg.snapshot.chunk_bytes = 16 << 10;
    }
}

/// Run a fault schedule against a fresh cluster and check the history (see
/// the module docs). Panics with the summary, seed and replay command if any
/// anomaly is found; returns the report otherwise.
pub async fn run(opts: FaultOptions) -> Report {
    let wall = Instant::now();
    eprintln!(
        "faults: seed {} — replay with:\n  {}",
        opts.seed,
        opts.replay_command()
    );
    let kv = crate::guest("kv");
    let proxy = Arc::new(FaultProxy::new(opts.seed));
    let cluster = {
        let p = proxy.clone();
        let snap = opts.snapshot_entries;
        Cluster::start_with(opts.nodes, move |cfg| config_tweak(&p, snap, cfg))
    };
    let history = Arc::new(History::new());
    let voters = cluster.ids();
    let endpoints: Endpoints = Arc::new(Mutex::new((
        0,
        voters.iter().map(|id| cluster.addr(*id)).collect(),
    )));
    let mut nem = Nemesis {
        rng: fastrand::Rng::with_seed(opts.seed),
        next_id: opts.nodes + 1,
        opts: opts.clone(),
        cluster,
        proxy,
        history: history.clone(),
        endpoints: endpoints.clone(),
        voters,
        retired: BTreeSet::new(),
        faults: BTreeMap::new(),
        anomalies: Vec::new(),
        recovery_ms_max: 0,
        snapshot_index_max: 0,
        timeline: Vec::new(),
        probe_n: 0,
        paused: BTreeSet::new(),
    };

    // Deploy (retried: the first election may still be under way).
    let leader = nem.cluster.wait_for_leader(Duration::from_secs(30)).await;
    nem.note(format!("cluster up, leader {leader}; deploying kv"));
    // One long call (the client retries it under one tag): every retry of
    // a deploy under a new tag would make every node compile the module
    // again, which on a loaded 2-core machine never converges.
    let mut o = client_options(
        nem.live().iter().map(|id| nem.cluster.addr(*id)).collect(),
        nem.cluster.certs_dir(),
    );
    o.call_timeout_ms = 180_000;
    let c = Client::connect(o).await.expect("client");
    if let Err(e) = c.deploy("kv", kv).await {
        panic!("deploying kv failed: {e}\n{}", nem.cluster.describe().await);
    }
    for id in nem.cluster.ids() {
        nem.wait_caught_up(id, "initial deploy").await;
    }

    // Clients.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 1..=opts.clients {
        clients.push(tokio::spawn(client_loop(ClientCtx {
            id,
            seed: opts.seed,
            keys: opts.keys,
            history: history.clone(),
            endpoints: endpoints.clone(),
            certs: nem.cluster.certs_dir().to_owned(),
            stop: stop.clone(),
        })));
    }

    // Faults.
    let deadline = Instant::now() + opts.duration;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while Instant::now() < deadline && nem.anomalies.is_empty() {
        let kind = nem.pick_fault();
        nem.inject(kind).await;
        nem.heal_and_probe(kind.name()).await;
        nem.check_processes();
        let quiet = nem.hold(300, 1_500);
        tokio::time::sleep(quiet).await;
    }
    nem.note("schedule over; healing and stopping clients".into());
    nem.heal_and_probe("the end of the schedule").await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    // Final reads, recorded like any other operation.
    let c = nem.admin_client().await;
    for key in 0..=opts.keys {
        let op = history.invoke(0, OpKind::GetLinearizable, KvInput::Get { key });
        let q = json(serde_json::json!({"op":"get","key":key_name(key)}));
        match bounded(c.query("kv", &q, Consistency::Linearizable)).await {
            Ok(out) => history.complete(
                op,
                Outcome::Ok,
                Some(KvOutput::Get(parse_value(&crate::parse(&out)["value"]))),
                String::new(),
            ),
            Err(e) => {
                history.complete(op, Outcome::Failed, None, e.to_string());
                nem.anomaly(format!(
                    "final linearizable read of k{key} failed after healing: {e}"
                ));
            }
        }
    }
    let final_unique = match unique_keys(&c).await {
        Ok(s) => s,
        Err(e) => {
            nem.anomaly(format!(
                "final linearizable scan of w/ failed after healing: {e}"
            ));
            BTreeSet::new()
        }
    };

    // Replicas converge on the same applied index and the same state.
    let (final_applied_index, dig) = converge(&mut nem).await;

    // Verdict.
    let verdict: Verdict = history.check(&final_unique);
    nem.anomalies.extend(verdict.anomalies.iter().cloned());
    nem.check_processes();
    for id in nem.cluster.ids() {
        let log = nem.cluster.log(id);
        if let Some(line) = log.lines().find(|l| l.contains("panicked at")) {
            nem.anomalies
                .push(format!("node {id} logged a panic: {line}"));
        }
    }
    let report = Report {
        options: opts.clone(),
        faults: nem.faults.clone(),
        ops: history.tally(),
        anomalies: nem.anomalies.clone(),
        unknown_keys: verdict.unknown_keys.clone(),
        checked_ops: verdict.checked_ops,
        recovery_ms_max: nem.recovery_ms_max,
        snapshot_index_max: nem.snapshot_index_max,
        final_applied_index,
        digest: dig,
        proxy: nem.proxy.stats(),
        wall: wall.elapsed(),
        timeline: nem.timeline.clone(),
    };
    eprintln!("{}", report.summary());
    if !report.anomalies.is_empty() || !report.unknown_keys.is_empty() {
        let path = std::env::temp_dir().join(format!("wraft-faults-{}.txt", opts.seed));
        let mut dump = report.summary();
        dump += "\n== timeline\n";
        for l in &report.timeline {
            dump += l;
            dump.push('\n');
        }
        dump += "\n== history (client kind call_us ret_us input output outcome error)\n";
        for r in history.records() {
            let _ = writeln!(
                dump,
                "{} {:?} {} {:?} {:?} {:?} {:?} {}",
                r.client, r.kind, r.call_us, r.ret_us, r.input, r.output, r.outcome, r.error
            );
        }
        let _ = std::fs::write(&path, dump);
        panic!(
            "fault run found {} anomalies and {} undecided keys (seed {}); history and timeline in {}\nreplay: {}",
            report.anomalies.len(),
            report.unknown_keys.len(),
            opts.seed,
            path.display(),
            opts.replay_command()
        );
    }
    report
}
