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

pub mod history;
pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wraft_client::{Client, ClientError, ClientOptions};
use wraft_config::NodeConfig;
use wraft_engine::lincheck::{KvInput, KvOutput};
use wraft_proto::{Consistency, Status};

use crate::Cluster;
use history::{History, OpKind, Outcome, Verdict};
use proxy::{FaultProxy, LinkFault, ProxyStats};

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

/// What to run.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// Name of the test running this (for the replay command).
    pub test: String,
    /// Voting members (3 or 5).
    pub nodes: u64,
    /// Time spent injecting faults.
    pub duration: Duration,
    /// Seed of the fault schedule and the clients' choices.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Register keys (`k0`…).
    pub keys: u64,
    /// `snapshot.hint_threshold_entries` given to the nodes (0 keeps the
    /// node's default); `snapshot.max_log_entries` gets 4×, the retained
    /// log margin ¼ of it.
    pub snapshot_entries: u64,
    /// After a fault heals, a write must succeed within this long.
    pub recovery_bound: Duration,
    /// Fault kinds to draw from (empty: all), by [`FaultKind::slug`].
    pub only: Vec<String>,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

impl FaultOptions {
    /// Options for test `test`: `nodes` and `secs` unless overridden by
    /// `WRAFT_FAULTS_NODES` / `WRAFT_FAULTS_SECS`; the seed from
    /// `WRAFT_FAULTS_SEED` or the clock; `WRAFT_FAULTS_CLIENTS` (default 4),
    /// `WRAFT_FAULTS_KEYS` (default 6), `WRAFT_FAULTS_SNAPSHOT_ENTRIES`
    /// (default 400).
    pub fn from_env(test: &str, nodes: u64, secs: u64) -> FaultOptions {
        let seed = env_u64("WRAFT_FAULTS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                % 1_000_000_007
        });
        FaultOptions {
            test: test.to_owned(),
            nodes: env_u64("WRAFT_FAULTS_NODES").unwrap_or(nodes),
            duration: Duration::from_secs(env_u64("WRAFT_FAULTS_SECS").unwrap_or(secs)),
            seed,
            clients: env_u64("WRAFT_FAULTS_CLIENTS").unwrap_or(4).max(1),
            keys: env_u64("WRAFT_FAULTS_KEYS").unwrap_or(6).max(1),
            snapshot_entries: env_u64("WRAFT_FAULTS_SNAPSHOT_ENTRIES").unwrap_or(400),
            recovery_bound: Duration::from_secs(20),
            only: std::env::var("WRAFT_FAULTS_ONLY")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The command that reruns this schedule.
    pub fn replay_command(&self) -> String {
        let only = if self.only.is_empty() {
            String::new()
        } else {
            format!("WRAFT_FAULTS_ONLY={} ", self.only.join(","))
        };
        format!(
            "{only}WRAFT_FAULTS_SEED={} WRAFT_FAULTS_SECS={} WRAFT_FAULTS_NODES={} WRAFT_FAULTS_CLIENTS={} \
             WRAFT_FAULTS_KEYS={} WRAFT_FAULTS_SNAPSHOT_ENTRIES={} \
             cargo nextest run -p wraft-tests --test faults --no-capture {}",
            self.seed,
            self.duration.as_secs(),
            self.nodes,
            self.clients,
            self.keys,
            self.snapshot_entries,
            self.test
        )
    }
}

/// The faults the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `kill -9` the leader, restart it after 0.5–3 s.
    KillLeader,
    /// `kill -9` a follower, restart it after 0.5–3 s.
    KillFollower,
    /// Keep a follower down while the leader commits well past the snapshot
    /// threshold, then restart it and wait for it to catch up (by log, or by
    /// InstallSnapshot once the node snapshots).
    LaggingFollower,
    /// `SIGSTOP` the leader for 1.2–3.5 s (beyond the election timeout).
    PauseLeader,
    /// `SIGSTOP` a follower for 1.2–3.5 s.
    PauseFollower,
    /// Split the voters into a minority and a majority for 1.5–5 s.
    Partition,
    /// Cut the leader off from every other node for 1.5–5 s.
    IsolateLeader,
    /// One-way cuts for 1.5–5 s: the leader cannot send, or cannot hear, or
    /// one random direction of one link is cut.
    OneWayCut,
    /// Every link drops 5–30 % of datagrams and is delayed 0–30 ms
    /// (± jitter) for 3–8 s.
    LossyLinks,
    /// Ask the leader to hand over to another voter.
    LeaderTransfer,
    /// Add a fresh node (learner, catch up, promote), then remove an old
    /// voter (the leader a third of the time) and stop its process.
    MembershipChange,
}

impl FaultKind {
    /// Every kind with its weight in the schedule.
    pub const WEIGHTS: [(FaultKind, u32); 11] = [
        (FaultKind::KillLeader, 12),
        (FaultKind::KillFollower, 8),
        (FaultKind::LaggingFollower, 6),
        (FaultKind::PauseLeader, 10),
        (FaultKind::PauseFollower, 6),
        (FaultKind::Partition, 10),
        (FaultKind::IsolateLeader, 10),
        (FaultKind::OneWayCut, 10),
        (FaultKind::LossyLinks, 8),
        (FaultKind::LeaderTransfer, 8),
        (FaultKind::MembershipChange, 5),
    ];

    /// Short name for `WRAFT_FAULTS_ONLY`.
    pub fn slug(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::LaggingFollower => "lagging-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::Partition => "partition",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::OneWayCut => "one-way",
            FaultKind::LossyLinks => "lossy",
            FaultKind::LeaderTransfer => "transfer",
            FaultKind::MembershipChange => "membership",
        }
    }

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill -9 leader + restart",
            FaultKind::KillFollower => "kill -9 follower + restart",
            FaultKind::LaggingFollower => "follower down past snapshot threshold",
            FaultKind::PauseLeader => "SIGSTOP leader",
            FaultKind::PauseFollower => "SIGSTOP follower",
            FaultKind::Partition => "partition minority/majority",
            FaultKind::IsolateLeader => "isolate leader",
            FaultKind::OneWayCut => "one-way cut",
            FaultKind::LossyLinks => "lossy + slow links",
            FaultKind::LeaderTransfer => "leadership transfer",
            FaultKind::MembershipChange => "membership change",
        }
    }
}

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

/// Endpoints the clients should use, with a version bumped on change.
type Endpoints = Arc<Mutex<(u64, Vec<SocketAddr>)>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn client_options(endpoints: Vec<SocketAddr>, certs: &std::path::Path) -> ClientOptions {
    let mut o =
        ClientOptions::from_cert_dir(endpoints, certs, "admin").expect("client certificate");
    o.call_timeout_ms = OP_CALL_TIMEOUT_MS;
    o
}

fn key_name(k: u64) -> String {
    format!("k{k}")
}

fn json(v: serde_json::Value) -> Vec<u8> {
    crate::json(v)
}

/// Whether a write that failed with `e` may still take effect.
fn write_outcome(e: &ClientError) -> Outcome {
    match e {
        ClientError::Rejected(_)
        | ClientError::NoSuchMachine(_)
        | ClientError::Certs(_)
        | ClientError::App { .. }
        | ClientError::MachineFault(_) => Outcome::Failed,
        ClientError::NoLeader { .. }
        | ClientError::Busy(_)
        | ClientError::Timeout(_)
        | ClientError::OutcomeUnknown(_)
        | ClientError::Internal(_) => Outcome::Indeterminate,
    }
}

fn parse_value(v: &serde_json::Value) -> Option<u64> {
    // A value that is not one of ours parses as u64::MAX, which no model
    // state can hold, so the checker flags it.
    v.as_str().map(|s| s.parse().unwrap_or(u64::MAX))
}

/// Run one operation with the history's deadline; `Err` when abandoned.
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(Duration::from_millis(OP_DEADLINE_MS), f).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(format!(
            "no answer within the history deadline of {OP_DEADLINE_MS} ms"
        ))),
    }
}

/// One operation in this many is a client's last: the next one uses a new client (and so
/// opens a new session).
const SHORT_LIVED_CLIENT_ONE_IN: u32 = 20;

struct ClientCtx {
    id: u64,
    seed: u64,
    keys: u64,
    history: Arc<History>,
    endpoints: Endpoints,
    certs: PathBuf,
    stop: Arc<AtomicBool>,
}

/// One logical client: a closed loop of operations until `stop`.
async fn client_loop(ctx: ClientCtx) {
    let mut rng = fastrand::Rng::with_seed(ctx.seed ^ ctx.id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut version = u64::MAX;
    let mut client: Option<Client> = None;
    let mut seen: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let (v, mut eps) = lock(&ctx.endpoints).clone();
        if v != version || client.is_none() {
            rng.shuffle(&mut eps);
            client = Client::connect(client_options(eps, &ctx.certs)).await.ok();
            version = v;
        }
        let Some(c) = client.as_ref() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Now and then the client starts over, like one `wraft` CLI invocation after another:
        // its next write opens a new session through the log, under whatever fault is on.
        let short_lived = rng.u32(0..SHORT_LIVED_CLIENT_ONE_IN) == 0;
        n += 1;
        let value = (ctx.id + 1) * 1_000_000_000 + n;
        let key = rng.u64(0..ctx.keys);
        let h = &ctx.history;
        match rng.u32(0..100) {
            0..35 => {
                let input = KvInput::Put { key, value };
                let op = h.invoke(ctx.id, OpKind::Put, input);
                let cmd = json(
                    serde_json::json!({"op":"put","key":key_name(key),"value":value.to_string()}),
                );
                match bounded(c.propose("kv", &cmd)).await {
                    Ok(_) => {
                        h.complete(op, Outcome::Ok, Some(KvOutput::Put), String::new());
                        seen.insert(key, Some(value));
                    }
                    Err(e) => h.complete(op, write_outcome(&e), None, e.to_string()),
                }
            }
            35..55 => {
                let expected = match seen.get(&key) {
                    Some(v) if rng.u32(0..4) != 0 => *v,
                    _ => None,
                };
                let input = KvInput::Cas {
                    key,
                    expected,
                    new: value,
                };
                let op = h.invoke(ctx.id, OpKind::Cas, input);
                let cmd = json(serde_json::json!({
                    "op":"cas","key":key_name(key),
                    "expected": expected.map(|e| e.to_string()),
                    "new": value.to_string()
                }));
                match bounded(c.propose("kv", &cmd)).await {
                    Ok(out) => {
                        let v = crate::parse(&out.output);
                        let swapped = v["swapped"].as_bool().unwrap_or(false);
                        h.complete(op, Outcome::Ok, Some(KvOutput::Cas(swapped)), String::new());
                        seen.insert(
                            key,
                            if swapped {
                                Some(value)
                            } else {
                                parse_value(&v["current"])
                            },
                        );
                    }
                    Err(e) => h.complete(op, write_outcome(&e), None, e.to_string()),
                }
            }
            55..93 => {
                let (kind, consistency) = if rng.u32(0..4) == 0 {
                    (OpKind::GetLease, Consistency::Lease)
                } else {
                    (OpKind::GetLinearizable, Consistency::Linearizable)
                };
                let op = h.invoke(ctx.id, kind, KvInput::Get { key });
                let q = json(serde_json::json!({"op":"get","key":key_name(key)}));
                match bounded(c.query("kv", &q, consistency)).await {
                    Ok(out) => {
                        let got = parse_value(&crate::parse(&out)["value"]);
                        h.complete(op, Outcome::Ok, Some(KvOutput::Get(got)), String::new());
                        seen.insert(key, got);
                    }
                    Err(e) => h.complete(op, Outcome::Failed, None, e.to_string()),
                }
            }
            _ => {
                let op = h.invoke(
                    ctx.id,
                    OpKind::UniquePut,
                    KvInput::Put {
                        key: u64::MAX,
                        value,
                    },
                );
                let cmd = json(
                    serde_json::json!({"op":"put","key":format!("w/{value}"),"value":value.to_string()}),
                );
                match bounded(c.propose("kv", &cmd)).await {
                    Ok(_) => h.complete(op, Outcome::Ok, None, String::new()),
                    Err(e) => h.complete(op, write_outcome(&e), None, e.to_string()),
                }
            }
        }
        if short_lived {
            client = None;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=OP_PAUSE_MS_MAX))).await;
    }
}

/// The nemesis and its view of the cluster.
struct Nemesis {
    opts: FaultOptions,
    cluster: Cluster,
    proxy: Arc<FaultProxy>,
    rng: fastrand::Rng,
    history: Arc<History>,
    endpoints: Endpoints,
    /// Voters as the nemesis last learned them.
    voters: Vec<u64>,
    /// Nodes removed from the cluster (process stopped for good).
    retired: BTreeSet<u64>,
    next_id: u64,
    faults: BTreeMap<FaultKind, u64>,
    anomalies: Vec<String>,
    recovery_ms_max: u64,
    snapshot_index_max: u64,
    timeline: Vec<String>,
    probe_n: u64,
    /// Nodes stopped with SIGSTOP right now.
    paused: BTreeSet<u64>,
}

fn config_tweak(proxy: &FaultProxy, snapshot_entries: u64, cfg: &mut NodeConfig) {
    cfg.cluster.members = cfg
        .cluster
        .members
        .iter()
        .map(|(id, real)| (*id, proxy.front(*id, *real)))
        .collect();
    cfg.client.request_timeout_ms = NODE_REQUEST_TIMEOUT_MS;
    if snapshot_entries > 0 {
        cfg.snapshot.hint_threshold_entries = snapshot_entries;
        cfg.snapshot.max_log_entries = 4 * snapshot_entries;
        cfg.snapshot.log_retain_margin_entries = (snapshot_entries / 4).max(1);
        cfg.snapshot.chunk_bytes = 16 << 10;
    }
}

impl Nemesis {
    fn note(&mut self, what: String) {
        let t = self.history.len();
        let line = format!("[{:>8.3} s, op #{t}] {what}", self.started_secs());
        eprintln!("faults: {line}");
        self.timeline.push(line);
    }

    fn started_secs(&self) -> f64 {
        // The history clock started with the clients.
        self.history_elapsed().as_secs_f64()
    }

    fn history_elapsed(&self) -> Duration {
        self.history.elapsed()
    }

    /// Members whose process should be running.
    fn live(&self) -> Vec<u64> {
        self.cluster
            .running()
            .into_iter()
            .filter(|id| !self.retired.contains(id) && !self.paused.contains(id))
            .collect()
    }

    fn anomaly(&mut self, what: String) {
        self.note(format!("ANOMALY: {what}"));
        self.anomalies.push(what);
    }

    async fn status(&mut self, id: u64) -> Option<Status> {
        let s = self.cluster.status(id).await?;
        self.snapshot_index_max = self.snapshot_index_max.max(s.snapshot_index);
        Some(s)
    }

    /// The leader with the highest term among the live nodes, polling up to
    /// `timeout`.
    async fn leader(&mut self, timeout: Duration) -> Option<(u64, Status)> {
        let start = Instant::now();
        loop {
            let mut best: Option<Status> = None;
            for id in self.live() {
                if let Some(s) = self.status(id).await
                    && s.role == "leader"
                    && best.as_ref().is_none_or(|b| s.term > b.term)
                {
                    best = Some(s);
                }
            }
            if let Some(s) = best {
                return Some((s.id, s));
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.usize(0..from.len())])
    }

    fn hold(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.rng.u64(lo_ms..=hi_ms))
    }

    fn signal(&mut self, id: u64, sig: libc::c_int) {
        if let Some(pid) = self.cluster.pid(id) {
            // SAFETY: plain kill(2) on a child process this harness owns.
            let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
            assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
        }
    }

    fn voters_live(&self) -> Vec<u64> {
        let live = self.live();
        self.voters
            .iter()
            .copied()
            .filter(|v| live.contains(v))
            .collect()
    }

    async fn leader_and_follower(&mut self) -> Option<(u64, u64)> {
        let (leader, _) = self.leader(Duration::from_secs(10)).await?;
        let followers: Vec<u64> = self
            .voters_live()
            .into_iter()
            .filter(|v| *v != leader)
            .collect();
        Some((leader, self.pick(&followers)?))
    }

    async fn inject(&mut self, kind: FaultKind) {
        *self.faults.entry(kind).or_default() += 1;
        match kind {
            FaultKind::KillLeader | FaultKind::KillFollower => {
                let Some((leader, follower)) = self.leader_and_follower().await else {
                    return self.note(format!("{}: no leader found, skipped", kind.name()));
                };
                let t = if kind == FaultKind::KillLeader {
                    leader
                } else {
                    follower
                };
                let down = self.hold(500, 3_000);
                self.note(format!(
                    "kill -9 node {t} (leader {leader}) for {} ms",
                    down.as_millis()
                ));
                self.cluster.kill(t);
                tokio::time::sleep(down).await;
                self.cluster.restart(t);
                self.note(format!("restarted node {t}"));
            }
            FaultKind::LaggingFollower => {
                let Some((leader, t)) = self.leader_and_follower().await else {
                    return self.note("lagging follower: no leader found, skipped".into());
                };
                let Some(s) = self.status(leader).await else {
                    return;
                };
                let lag = (3 * self.opts.snapshot_entries).max(300);
                self.note(format!(
                    "kill -9 node {t}; keep it down until the leader commits {lag} entries past {}",
                    s.commit_index
                ));
                self.cluster.kill(t);
                let target = s.commit_index + lag;
                let start = Instant::now();
                let fill = self.fill_writes(lag, target).await;
                self.note(format!(
                    "leader at commit {fill} after {} ms; restarting node {t}",
                    start.elapsed().as_millis()
                ));
                self.cluster.restart(t);
                self.wait_caught_up(t, "restarted lagging follower").await;
            }
            FaultKind::PauseLeader | FaultKind::PauseFollower => {
                let Some((leader, follower)) = self.leader_and_follower().await else {
                    return self.note(format!("{}: no leader found, skipped", kind.name()));
                };
                let t = if kind == FaultKind::PauseLeader {
                    leader
                } else {
                    follower
                };
                if t == leader && self.rng.bool() {
                    return self.pause_leader_with_lease_probe(leader).await;
                }
                let pause = self.hold(1_200, 3_500);
                self.note(format!(
                    "SIGSTOP node {t} (leader {leader}) for {} ms",
                    pause.as_millis()
                ));
                self.signal(t, libc::SIGSTOP);
                tokio::time::sleep(pause).await;
                self.signal(t, libc::SIGCONT);
                self.note(format!("SIGCONT node {t}"));
            }
            FaultKind::Partition => {
                let mut voters = self.voters_live();
                self.rng.shuffle(&mut voters);
                let k = self.rng.usize(1..=((voters.len() - 1) / 2).max(1));
                let minority: Vec<u64> = voters[..k].to_vec();
                let all = self.all_nodes();
                let hold = self.hold(1_500, 5_000);
                self.note(format!(
                    "partition {minority:?} | rest of {all:?} for {} ms",
                    hold.as_millis()
                ));
                self.proxy.partition(&minority, &all);
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::IsolateLeader => {
                let Some((leader, _)) = self.leader(Duration::from_secs(10)).await else {
                    return self.note("isolate leader: no leader found, skipped".into());
                };
                let all = self.all_nodes();
                let hold = self.hold(1_500, 5_000);
                self.note(format!(
                    "isolate leader {leader} for {} ms",
                    hold.as_millis()
                ));
                self.proxy.partition(&[leader], &all);
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::OneWayCut => {
                let Some((leader, _)) = self.leader(Duration::from_secs(10)).await else {
                    return self.note("one-way cut: no leader found, skipped".into());
                };
                let all = self.all_nodes();
                let others: Vec<u64> = all.iter().copied().filter(|n| *n != leader).collect();
                let hold = self.hold(1_500, 5_000);
                let what = match self.rng.u32(0..3) {
                    0 => {
                        for o in &others {
                            self.proxy.set(leader, *o, LinkFault::CUT);
                        }
                        format!("leader {leader} cannot send to {others:?}")
                    }
                    1 => {
                        for o in &others {
                            self.proxy.set(*o, leader, LinkFault::CUT);
                        }
                        format!("leader {leader} cannot hear {others:?}")
                    }
                    _ => {
                        let a = self.pick(&all).unwrap_or(leader);
                        let rest: Vec<u64> = all.iter().copied().filter(|n| *n != a).collect();
                        let b = self.pick(&rest).unwrap_or(leader);
                        self.proxy.set(a, b, LinkFault::CUT);
                        format!("link {a} -> {b} cut (leader {leader})")
                    }
                };
                self.note(format!("one-way: {what} for {} ms", hold.as_millis()));
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::LossyLinks => {
                let all = self.all_nodes();
                let drop_probability = 0.05 + self.rng.f64() * 0.25;
                let delay_ms = self.rng.u64(0..=30);
                let jitter_ms = self.rng.u64(0..=30);
                let hold = self.hold(3_000, 8_000);
                for a in &all {
                    for b in &all {
                        if a != b {
                            self.proxy.set(
                                *a,
                                *b,
                                LinkFault {
                                    drop_probability,
                                    delay_ms,
                                    jitter_ms,
                                },
                            );
                        }
                    }
                }
                self.note(format!(
                    "every link: drop {:.0} %, delay {delay_ms} ms + jitter {jitter_ms} ms, for {} ms",
                    drop_probability * 100.0,
                    hold.as_millis()
                ));
                tokio::time::sleep(hold).await;
                self.proxy.heal();
                self.note("healed".into());
            }
            FaultKind::LeaderTransfer => {
                let Some((leader, to)) = self.leader_and_follower().await else {
                    return self.note("transfer: no leader found, skipped".into());
                };
                self.note(format!("transfer leadership {leader} -> {to}"));
                let c = self.admin_client().await;
                let r = bounded(c.transfer_leader(to)).await;
                let moved = self.leader(Duration::from_secs(5)).await.map(|(l, _)| l);
                self.note(format!(
                    "transfer answered {:?}; leader now {moved:?}",
                    r.map_err(|e| e.to_string())
                ));
            }
            FaultKind::MembershipChange => self.membership_change().await,
        }
    }

    /// Pause the leader; once the others have a new leader, write the probe
    /// key through it, then send a lease read of that key to the paused
    /// leader (it waits in that node's socket buffer) and resume it. A
    /// leader that trusts a lease its stall outlived answers the old value:
    /// the checker sees a read of an overwritten value after the write was
    /// acknowledged. Every operation goes into the history (probe key
    /// `k{keys}`, client ids from 1000).
    async fn pause_leader_with_lease_probe(&mut self, leader: u64) {
        let key = self.opts.keys;
        self.probe_n += 1;
        let client_id = 1000 + self.probe_n;
        let pinned = Arc::new(
            Client::connect(client_options(
                vec![self.cluster.addr(leader)],
                self.cluster.certs_dir(),
            ))
            .await
            .expect("client"),
        );
        // Warm the pinned connection (and record the read).
        record_get(&self.history, &pinned, client_id, key, Consistency::Lease).await;
        // Long enough for an election and a write (election timeout 500–1000
        // ms), short enough that the pinned client's 2 s idle timeout keeps
        // its connection.
        let pause = self.hold(1_700, 1_900);
        self.note(format!(
            "SIGSTOP leader {leader} for {} ms, with a lease read probe of k{key}",
            pause.as_millis()
        ));
        let stopped = Instant::now();
        self.signal(leader, libc::SIGSTOP);
        self.paused.insert(leader);
        let mut read = None;
        if let Some((new, _)) = self
            .leader(pause.saturating_sub(Duration::from_millis(350)))
            .await
            && new != leader
        {
            let value = 900_000_000_000 + self.probe_n;
            let c = self.admin_client().await;
            let input = KvInput::Put { key, value };
            let op = self.history.invoke(client_id, OpKind::Put, input);
            let cmd =
                json(serde_json::json!({"op":"put","key":key_name(key),"value":value.to_string()}));
            let r = bounded(c.propose("kv", &cmd)).await;
            let written = r.is_ok();
            match r {
                Ok(_) => self
                    .history
                    .complete(op, Outcome::Ok, Some(KvOutput::Put), String::new()),
                Err(e) => self
                    .history
                    .complete(op, write_outcome(&e), None, e.to_string()),
            }
            if written && stopped.elapsed() + Duration::from_millis(50) < pause {
                let (h, p) = (self.history.clone(), pinned.clone());
                read = Some(tokio::spawn(async move {
                    record_get(&h, &p, client_id, key, Consistency::Lease).await
                }));
                self.note(format!("new leader {new} acknowledged k{key} = {value}; lease read sent to the paused {leader}"));
            }
        }
        tokio::time::sleep(pause.saturating_sub(stopped.elapsed())).await;
        self.signal(leader, libc::SIGCONT);
        self.paused.remove(&leader);
        if let Some(r) = read {
            let got = r.await.ok().flatten();
            self.note(format!("SIGCONT {leader}; its lease read answered {got:?}"));
        } else {
            self.note(format!(
                "SIGCONT {leader} (no probe: no new leader in time)"
            ));
        }
    }

    /// Every node the proxy knows that is not retired.
    fn all_nodes(&self) -> Vec<u64> {
        self.proxy
            .fronts()
            .into_keys()
            .filter(|id| !self.retired.contains(id))
            .collect()
    }

    async fn admin_client(&self) -> Client {
        let eps: Vec<SocketAddr> = self
            .live()
            .iter()
            .map(|id| self.cluster.addr(*id))
            .collect();
        Client::connect(client_options(eps, self.cluster.certs_dir()))
            .await
            .expect("client")
    }

    /// Write `count` extra puts (8 at a time) until the leader's commit
    /// reaches `target` or 30 s pass; returns the last commit index seen.
    async fn fill_writes(&mut self, count: u64, target: u64) -> u64 {
        let c = Arc::new(self.admin_client().await);
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..count.div_ceil(8) {
                    let cmd = json(serde_json::json!({"op":"put","key":format!("fill/{w}"),"value":i.to_string()}));
                    let _ = bounded(c.propose("kv", &cmd)).await;
                }
            }));
        }
        let start = Instant::now();
        let mut commit = 0;
        while start.elapsed() < Duration::from_secs(30) {
            if let Some((_, s)) = self.leader(Duration::from_secs(5)).await {
                commit = s.commit_index;
                if commit >= target {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for t in tasks {
            t.abort();
        }
        commit
    }

    /// Wait until node `id` has applied the leader's commit index (as read
    /// when the wait starts); an anomaly after [`CATCH_UP_TIMEOUT_MS`].
    async fn wait_caught_up(&mut self, id: u64, what: &str) {
        let start = Instant::now();
        let Some((_, ls)) = self.leader(Duration::from_secs(20)).await else {
            return self.anomaly(format!("{what}: no leader within 20 s"));
        };
        let target = ls.commit_index;
        loop {
            if let Some(s) = self.status(id).await
                && s.applied_index >= target
                && s.machines.iter().any(|m| m.name == "kv" && m.healthy)
            {
                self.note(format!(
                    "node {id} caught up to {target} in {} ms (snapshot index {})",
                    start.elapsed().as_millis(),
                    s.snapshot_index
                ));
                return;
            }
            if start.elapsed() > Duration::from_millis(CATCH_UP_TIMEOUT_MS) {
                let d = self.cluster.describe().await;
                return self.anomaly(format!(
                    "{what}: node {id} did not apply index {target} within {CATCH_UP_TIMEOUT_MS} ms\n{d}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Retry `step` (a membership request) until the leader's status shows
    /// `done`, for up to 30 s.
    async fn membership_step(
        &mut self,
        what: &str,
        step: impl AsyncFn(&Client) -> Result<String, ClientError>,
        done: impl Fn(&Status) -> bool,
    ) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let c = self.admin_client().await;
            let r = bounded(step(&c)).await;
            if let Some((_, s)) = self.leader(Duration::from_secs(5)).await
                && done(&s)
            {
                self.note(format!("{what}: done ({:?})", r.map_err(|e| e.to_string())));
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let d = self.cluster.describe().await;
        self.anomaly(format!(
            "{what}: not done within 30 s with no fault active\n{d}"
        ));
        false
    }

    async fn membership_change(&mut self) {
        let Some((leader, _)) = self.leader(Duration::from_secs(10)).await else {
            return self.note("membership change: no leader found, skipped".into());
        };
        let id = self.next_id;
        self.next_id += 1;
        let proxy = self.proxy.clone();
        let addr = self.cluster.add_node_with(id, |cfg| {
            let front = proxy.front(cfg.node.id, cfg.node.listen);
            let mut peers = proxy.fronts();
            peers.insert(cfg.node.id, front);
            cfg.cluster.peers = peers;
        });
        let front = self.proxy.front(id, addr);
        self.note(format!(
            "membership: started node {id} (front {front}); leader {leader}"
        ));
        if !self
            .membership_step(
                &format!("add learner {id}"),
                async |c| c.add_learner(id, front).await,
                |s| s.learners.contains(&id) || s.voters.contains(&id),
            )
            .await
        {
            return;
        }
        self.wait_caught_up(id, "new learner").await;
        if !self
            .membership_step(
                &format!("promote {id}"),
                async |c| c.promote(id).await,
                |s| s.voters.contains(&id),
            )
            .await
        {
            return;
        }
        self.voters.push(id);
        let victim = if self.rng.u32(0..3) == 0 {
            self.leader(Duration::from_secs(10)).await.map(|(l, _)| l)
        } else {
            None
        };
        let old: Vec<u64> = self.voters.iter().copied().filter(|v| *v != id).collect();
        let victim = match victim {
            Some(v) if v != id => v,
            _ => self.pick(&old).expect("an old voter"),
        };
        self.note(format!("membership: removing node {victim}"));
        if !self
            .membership_step(
                &format!("remove {victim}"),
                async |c| c.remove_member(victim).await,
                |s| !s.voters.contains(&victim) && !s.learners.contains(&victim) && s.id != victim,
            )
            .await
        {
            return;
        }
        self.cluster.kill(victim);
        self.retired.insert(victim);
        self.voters.retain(|v| *v != victim);
        let eps: Vec<SocketAddr> = self.live().iter().map(|i| self.cluster.addr(*i)).collect();
        let mut e = lock(&self.endpoints);
        e.0 += 1;
        e.1 = eps;
    }

    /// Heal everything and require a successful write within the bound.
    async fn heal_and_probe(&mut self, after: &str) {
        self.proxy.heal();
        for id in self.voters.clone() {
            if !self.retired.contains(&id) && self.cluster.pid(id).is_none() {
                self.cluster.restart(id);
            }
        }
        let start = Instant::now();
        loop {
            self.probe_n += 1;
            let cmd = json(
                serde_json::json!({"op":"put","key":format!("probe/{}", self.probe_n),"value":"1"}),
            );
            let c = self.admin_client().await;
            let r = bounded(c.propose("kv", &cmd)).await;
            if r.is_ok() {
                let ms = start.elapsed().as_millis() as u64;
                self.recovery_ms_max = self.recovery_ms_max.max(ms);
                self.note(format!(
                    "progress after {after}: a write succeeded {ms} ms after healing"
                ));
                return;
            }
            if start.elapsed() > self.opts.recovery_bound {
                let d = self.cluster.describe().await;
                return self.anomaly(format!(
                    "no progress: no write succeeded within {} ms after healing ({after})\n{d}",
                    self.opts.recovery_bound.as_millis()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn check_processes(&mut self) {
        for id in self.cluster.ids() {
            if let Some(how) = self.cluster.exited(id) {
                self.anomaly(format!("node {id} exited by itself: {how}"));
            }
        }
    }

    fn pick_fault(&mut self) -> FaultKind {
        let kinds: Vec<(FaultKind, u32)> = FaultKind::WEIGHTS
            .into_iter()
            .filter(|(k, _)| {
                self.opts.only.is_empty() || self.opts.only.iter().any(|o| o == k.slug())
            })
            .collect();
        assert!(
            !kinds.is_empty(),
            "WRAFT_FAULTS_ONLY={:?} names no fault kind; kinds: {:?}",
            self.opts.only,
            FaultKind::WEIGHTS.map(|(k, _)| k.slug())
        );
        let total: u32 = kinds.iter().map(|(_, w)| w).sum();
        let mut r = self.rng.u32(0..total);
        for (k, w) in kinds {
            if r < w {
                return k;
            }
            r -= w;
        }
        FaultKind::KillLeader
    }
}

/// A `get` of register `key` through `c`, recorded in `h`; the value read.
async fn record_get(
    h: &History,
    c: &Client,
    client: u64,
    key: u64,
    consistency: Consistency,
) -> Option<Option<u64>> {
    let kind = match consistency {
        Consistency::Lease => OpKind::GetLease,
        _ => OpKind::GetLinearizable,
    };
    let op = h.invoke(client, kind, KvInput::Get { key });
    let q = json(serde_json::json!({"op":"get","key":key_name(key)}));
    match bounded(c.query("kv", &q, consistency)).await {
        Ok(out) => {
            let got = parse_value(&crate::parse(&out)["value"]);
            h.complete(op, Outcome::Ok, Some(KvOutput::Get(got)), String::new());
            Some(got)
        }
        Err(e) => {
            h.complete(op, Outcome::Failed, None, e.to_string());
            None
        }
    }
}

/// Entries of node `id`'s kv machine (stale reads, paged).
async fn full_scan(cluster: &Cluster, id: u64) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    loop {
        let q = json(serde_json::json!({
            "op": "scan", "prefix": "", "limit": SCAN_PAGE_ENTRIES,
            "after": out.last().map(|(k, _)| k.clone()),
        }));
        let answer = cluster.stale_query(id, "kv", &q).await?;
        let v = crate::parse(&answer);
        let entries = v["entries"]
            .as_array()
            .ok_or("scan answer without entries")?;
        for e in entries {
            out.push((
                e[0].as_str().unwrap_or_default().to_owned(),
                e[1].as_str().unwrap_or_default().to_owned(),
            ));
        }
        if v["more"] != serde_json::json!(true) {
            return Ok(out);
        }
    }
}

/// Unique-put values present, by a linearizable paged scan of `w/`.
async fn unique_keys(c: &Client) -> Result<BTreeSet<u64>, ClientError> {
    let mut out = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let q = json(
            serde_json::json!({"op":"scan","prefix":"w/","limit":SCAN_PAGE_ENTRIES,"after":after}),
        );
        let answer = bounded(c.query("kv", &q, Consistency::Linearizable)).await?;
        let v = crate::parse(&answer);
        for e in v["entries"].as_array().into_iter().flatten() {
            let k = e[0].as_str().unwrap_or_default();
            out.insert(k.trim_start_matches("w/").parse().unwrap_or(u64::MAX));
            after = Some(k.to_owned());
        }
        if v["more"] != serde_json::json!(true) {
            return Ok(out);
        }
    }
}

fn digest(entries: &[(String, String)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    entries.hash(&mut h);
    h.finish()
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

/// Wait until every live member reports the same applied index (equal to
/// the highest commit index) twice in a row around identical full scans;
/// returns that index and the digest. Records an anomaly on timeout.
async fn converge(nem: &mut Nemesis) -> (u64, (u64, usize)) {
    let start = Instant::now();
    let mut last_problem = String::new();
    while start.elapsed() < Duration::from_millis(CONVERGE_TIMEOUT_MS) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let members = nem.live();
        let mut statuses = Vec::new();
        for id in &members {
            match nem.status(*id).await {
                Some(s) => statuses.push(s),
                None => {
                    last_problem = format!("node {id} does not answer status");
                    break;
                }
            }
        }
        if statuses.len() != members.len() {
            continue;
        }
        let commit = statuses.iter().map(|s| s.commit_index).max().unwrap_or(0);
        if let Some(s) = statuses.iter().find(|s| s.applied_index != commit) {
            last_problem = format!(
                "node {} applied {} of commit {commit}",
                s.id, s.applied_index
            );
            continue;
        }
        let mut scans = Vec::new();
        for id in &members {
            match full_scan(&nem.cluster, *id).await {
                Ok(e) => scans.push((*id, e)),
                Err(e) => {
                    last_problem = format!("scan of node {id}: {e}");
                    break;
                }
            }
        }
        if scans.len() != members.len() {
            continue;
        }
        // No entry may have been applied while we scanned.
        let mut moved = false;
        for id in &members {
            if nem
                .status(*id)
                .await
                .is_none_or(|s| s.applied_index != commit)
            {
                moved = true;
            }
        }
        if moved {
            last_problem = "applied index moved during the scans".into();
            continue;
        }
        let (first_id, first) = &scans[0];
        let d0 = digest(first);
        for (id, e) in &scans[1..] {
            if digest(e) != d0 {
                let a: BTreeSet<_> = first.iter().collect();
                let b: BTreeSet<_> = e.iter().collect();
                let only_a: Vec<_> = a.difference(&b).take(5).collect();
                let only_b: Vec<_> = b.difference(&a).take(5).collect();
                nem.anomaly(format!(
                    "replicas diverge at applied index {commit}: node {first_id} has {} entries, node {id} has {}; \
                     only on {first_id}: {only_a:?}; only on {id}: {only_b:?}",
                    first.len(),
                    e.len()
                ));
                return (commit, (d0, first.len()));
            }
        }
        nem.note(format!(
            "replicas {members:?} converged at applied index {commit}: digest {d0:016x}, {} entries",
            first.len()
        ));
        return (commit, (d0, first.len()));
    }
    let d = nem.cluster.describe().await;
    nem.anomaly(format!(
        "replicas did not converge within {CONVERGE_TIMEOUT_MS} ms: {last_problem}\n{d}"
    ));
    (0, (0, 0))
}
