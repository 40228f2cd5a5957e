//! The apply layer: turns committed log entries into machine calls, off the
//! consensus path.
//!
//! One task owns every machine instance (each on its own OS thread inside the
//! host) and the client-session table. It receives committed entries in log
//! order from the driver and answers the clients waiting on them. The driver
//! never waits for it: a slow or trapping guest delays answers, never
//! heartbeats or votes.
//!
//! Determinism: everything that decides a replicated result — which entries
//! reach a guest (deduplication), the timestamp a guest sees, what a trap
//! means — depends only on the log, so every replica produces the same outputs
//! and states.
//!
//! Node-local failures (a watchdog stop, a memory-limit trap, a failed
//! compile-cache write, a machine that cannot be started or rebuilt here) are
//! never results: the applier *halts* at the entry, applies nothing more,
//! serves no reads and takes no snapshots, says so in status, metrics and the
//! log, and keeps trying to re-derive the whole state from its base snapshot
//! plus the log (see [`Applier::rederive`]). What it answered before the halt
//! stays valid; nothing computed after the failure point is kept.
//!
//! Size: this file is over the ~800-line guide (STYLE.md §8). It is the applier alone; the
//! snapshot code it drives lives in `snapshot/` and the shared bounds in `limits.rs`. Splitting
//! the applier itself (apply loop, reads, halts and re-derivation) is a change of its own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use wraft_engine::{ClientTag, Entry, EntryKind, SessionCheck, SessionTable};
use wraft_storage::Storage;
use wraft_transport::AddressBook;

use std::net::SocketAddr;

use wraft_engine::SnapshotMeta;
use wraft_storage::SnapshotId;

use super::divergence::{self, CheckOutcome, Digest, OutcomeChain};
use crate::limits::APPLY_BATCH_ENTRIES_MAX;
use crate::snapshot::{self, SnapEvent, migrate};
use wraft_host::{
    self, CallError, HostEngine, LoadError, MachineHandle, MachineModule, TrapKind, WasiProfile,
};
use wraft_proto::{Command, MachineInfo, MachineLimits, Reply, RequestError, Response};
use wraft_snapshot::format::NodeSnapshotHeader;

/// Most client sessions remembered for deduplication.
pub const SESSIONS_MAX: usize = 100_000;
/// A session idle this long (in entry time) is forgotten, milliseconds.
pub const SESSION_EXPIRY_MS: u64 = 3_600_000;
/// Messages the applier takes from its queue before it serves ready reads and publishes.
const APPLY_DRAIN_MSGS_MAX: usize = 1024;
/// Longest the applier keeps taking queued messages before it serves ready reads.
const APPLY_DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_millis(2);
/// Times a call stopped by a node-local failure (the watchdog, a memory-limit
/// trap) is retried on a rebuilt instance before the applier halts.
pub const WATCHDOG_RETRIES_MAX: u32 = 3;
/// First wait before a halted applier tries to re-derive its state, milliseconds
/// (doubles after every failed try, up to [`REDERIVE_BACKOFF_MAX_MS`]).
pub const REDERIVE_BACKOFF_MIN_MS: u64 = 500;
/// Longest wait between two tries of a halted applier, milliseconds.
pub const REDERIVE_BACKOFF_MAX_MS: u64 = 30_000;

/// A failure local to this node that stopped an entry from being applied: it
/// is not the entry's result (another replica computes that), so the applier
/// halts before it instead of recording anything.
#[derive(Clone, Debug)]
pub struct LocalFailure {
    /// The machine involved.
    pub machine: String,
    /// The entry that could not be applied here.
    pub index: u64,
    /// What went wrong, for the operator.
    pub error: String,
    /// This node computed something else than the leader for the same log (a divergence
    /// checkpoint did not match): no retry, until an operator restarts or replaces the node.
    pub diverged: bool,
}

/// Why this node's applier is halted, and when it tries again.
struct Halt {
    failure: LocalFailure,
    /// Tries to re-derive the state so far.
    attempts: u32,
    next_try: tokio::time::Instant,
}

/// Work for the applier, in the order the driver produced it.
pub enum ApplyMsg {
    /// Answer `reply` with the result of the entry at `index` once applied.
    Await {
        /// Log index of the proposal.
        index: u64,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
    /// Committed entries, contiguous and in order.
    Entries(Vec<Entry>),
    /// Serve a read once the applied index reaches `index`.
    Read {
        /// Required applied index (0 for stale reads).
        index: u64,
        /// What is read.
        target: ReadTarget,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
    /// Take a snapshot at `meta.index`, which must be the applied index when
    /// this message is reached (the driver sends it right after the `Apply`
    /// that ends there). Reported as [`SnapEvent::Created`] / [`SnapEvent::Failed`].
    Snapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
    },
    /// Snapshot `id` is durable and is now the base for rebuilds.
    BaseChanged {
        /// The new base.
        id: SnapshotId,
    },
    /// Replace every machine with the state of the received snapshot `meta`.
    /// Reported as [`SnapEvent::Installed`] / [`SnapEvent::InstallFailed`].
    Install {
        /// The snapshot (already complete in the store).
        meta: SnapshotMeta,
    },
}

/// What a read asks the applier for.
pub enum ReadTarget {
    /// A query to one machine.
    Query {
        /// Machine to ask.
        machine: String,
        /// Request bytes.
        request: Vec<u8>,
    },
    /// The list of deployed machines (`wraft machines`).
    Machines,
}

/// What the applier publishes for `status`.
#[derive(Debug, Default)]
pub struct ApplyState {
    /// Highest index applied.
    pub applied_index: u64,
    /// Deployed machines.
    pub machines: Vec<MachineInfo>,
    /// Set while a node-local failure keeps this node from applying: which machine, which
    /// entry, what went wrong, and how many tries to re-derive the state have failed.
    pub halted: Option<String>,
}

struct Version {
    deployed_at: u64,
    module: MachineModule,
    /// The component's bytes: snapshots carry them, since the deploying
    /// log entry is compacted away.
    bytes: Bytes,
}

struct Machine {
    handle: Option<MachineHandle>,
    /// Deploy index of this incarnation's first version.
    created_at: u64,
    /// Every version deployed under this name, oldest first.
    versions: Vec<Version>,
    /// Indexes of this machine's entries that never reached the guest
    /// (duplicates) or trapped: a rebuild by replay skips them too.
    skipped: BTreeSet<u64>,
    healthy: bool,
    /// A rebuild's replay gave other results than the first application: why.
    diverged: Option<String>,
}

impl Machine {
    fn current(&self) -> &Version {
        // `versions` is never empty: a Machine is created with its first version.
        &self.versions[self.versions.len() - 1]
    }
}

/// The applier task's state.
pub struct Applier {
    node: u64,
    host: Arc<HostEngine>,
    storage: Arc<Storage>,
    addresses: AddressBook,
    machines: BTreeMap<String, Machine>,
    sessions: SessionTable,
    applied: u64,
    /// Latest timestamp handed to a guest: guests see a clock that never
    /// goes backwards, even across leader changes.
    last_timestamp_ms: u64,
    waiting: BTreeMap<u64, oneshot::Sender<Response>>,
    reads: VecDeque<(u64, ReadTarget, oneshot::Sender<Response>)>,
    published: Arc<Mutex<ApplyState>>,
    metrics: crate::metrics::ApplyMetrics,
    /// Addresses set through the log (`SetAddress`); part of snapshots.
    replicated_addresses: BTreeMap<u64, SocketAddr>,
    /// Newest durable node snapshot at or below `applied`: rebuilds start there.
    base: Option<SnapshotId>,
    /// Snapshot outcomes go to the driver.
    events: mpsc::UnboundedSender<SnapEvent>,
    /// Log index up to which startup replays; "recovery complete" once applied.
    recovery_target: Option<(u64, std::time::Instant)>,
    /// Set while a node-local failure keeps this node from applying.
    halted: Option<Halt>,
    /// Committed entries not applied because of the halt, in log order, from the entry
    /// that failed on: the re-derivation applies them.
    held: Vec<Entry>,
    /// Running digest of every outcome, compared at divergence checkpoints.
    chain: OutcomeChain,
    /// Digest of each recent entry's outcome (the last `RECENT_DIGESTS_MAX`), kept across
    /// re-derivations: an entry applied again (a rebuild's replay, a re-derivation) must give
    /// the same, or this replica diverged.
    recorded: BTreeMap<u64, Digest>,
    /// Report the digest after every this many applied entries (0: never); the driver of a
    /// leader proposes it as a checkpoint.
    check_interval: u64,
}

type Outcome = (u64, Option<ClientTag>, Response);

impl Halt {
    fn describe(&self) -> String {
        if self.failure.diverged {
            return format!("at entry {}: {}", self.failure.index, self.failure.error);
        }
        format!(
            "machine {:?} could not apply entry {} on this node: {} ({} re-derivations failed)",
            self.failure.machine, self.failure.index, self.failure.error, self.attempts
        )
    }
}

impl Applier {
    /// A new applier that will publish its progress into `published`.
    pub fn new(
        node: u64,
        host: Arc<HostEngine>,
        storage: Arc<Storage>,
        addresses: AddressBook,
        published: Arc<Mutex<ApplyState>>,
        events: mpsc::UnboundedSender<SnapEvent>,
    ) -> Self {
        Applier {
            node,
            host,
            storage,
            addresses,
            machines: BTreeMap::new(),
            sessions: SessionTable::new(SESSIONS_MAX, SESSION_EXPIRY_MS),
            applied: 0,
            last_timestamp_ms: 0,
            waiting: BTreeMap::new(),
            reads: VecDeque::new(),
            published,
            metrics: crate::metrics::ApplyMetrics::new(node),
            replicated_addresses: BTreeMap::new(),
            base: None,
            events,
            recovery_target: None,
            halted: None,
            held: Vec::new(),
            chain: OutcomeChain::genesis(),
            recorded: BTreeMap::new(),
            check_interval: 0,
        }
    }

    /// Report the outcome digest after every `entries` applied entries (0: never).
    pub fn set_check_interval(&mut self, entries: u64) {
        self.check_interval = entries;
    }

    /// Startup: restore every machine from snapshot `id` before the first
    /// entry is applied. Returns the snapshot's header.
    pub async fn recover(&mut self, id: SnapshotId) -> Result<NodeSnapshotHeader, String> {
        let t = std::time::Instant::now();
        tracing::info!(target: "wraft_node::snapshot", node = self.node, index = id.last_index,
            term = id.last_term, "loading snapshot");
        let restored = snapshot::restore_all(&self.host, &self.storage, id).await?;
        let header = restored.header.clone();
        self.swap_in(restored, id);
        tracing::info!(target: "wraft_node::snapshot", node = self.node, index = id.last_index,
            machines = header.machines.len(), duration_ms = t.elapsed().as_millis() as u64,
            "snapshot loaded");
        Ok(header)
    }

    /// Log "recovery complete" once entries up to `commit` are applied.
    pub fn expect_replay(&mut self, commit: u64) {
        if commit > self.applied {
            tracing::info!(target: "wraft_node::snapshot", node = self.node, from = self.applied + 1,
                to = commit, entries = commit - self.applied, "replaying log entries above the snapshot");
            self.recovery_target = Some((commit, std::time::Instant::now()));
        } else {
            tracing::info!(target: "wraft_node::snapshot", node = self.node, applied = self.applied,
                "recovery complete (nothing to replay)");
        }
    }

    /// Replace the whole replicated state with `r` (snapshot `id`).
    fn swap_in(&mut self, r: snapshot::Restored, id: SnapshotId) {
        for (_, m) in std::mem::take(&mut self.machines) {
            if let Some(h) = m.handle {
                tokio::task::spawn_blocking(move || h.shutdown());
            }
        }
        for (cut, handle) in r.machines {
            self.machines.insert(
                cut.name.clone(),
                Machine {
                    handle: Some(handle),
                    created_at: cut.created_at,
                    versions: cut
                        .versions
                        .into_iter()
                        .map(|v| Version {
                            deployed_at: v.deployed_at,
                            module: v.module,
                            bytes: v.bytes,
                        })
                        .collect(),
                    skipped: BTreeSet::new(),
                    healthy: true,
                    diverged: None,
                },
            );
        }
        self.sessions = r.sessions;
        self.last_timestamp_ms = r.header.last_timestamp_ms;
        self.replicated_addresses = r.header.addresses.iter().copied().collect();
        for (id, addr) in &r.header.addresses {
            self.addresses.insert(*id, *addr);
        }
        self.applied = r.header.index;
        self.base = Some(id);
        // Snapshots do not carry the outcome digest: in step again from the next checkpoint.
        self.chain = OutcomeChain::unknown();
    }

    fn cut(&self, meta: SnapshotMeta) -> snapshot::Cut {
        snapshot::Cut {
            meta,
            machines: self
                .machines
                .iter()
                .map(|(name, m)| snapshot::MachineCut {
                    name: name.clone(),
                    created_at: m.created_at,
                    versions: m
                        .versions
                        .iter()
                        .map(|v| snapshot::VersionCut {
                            deployed_at: v.deployed_at,
                            module: v.module.clone(),
                            bytes: v.bytes.clone(),
                        })
                        .collect(),
                    skipped: m.skipped.clone(),
                })
                .collect(),
            sessions: self.sessions.clone(),
            last_timestamp_ms: self.last_timestamp_ms,
            addresses: self.replicated_addresses.clone(),
        }
    }

    fn machine_cut(&self, name: &str) -> Option<snapshot::MachineCut> {
        let m = self.machines.get(name)?;
        Some(snapshot::MachineCut {
            name: name.to_owned(),
            created_at: m.created_at,
            versions: m
                .versions
                .iter()
                .map(|v| snapshot::VersionCut {
                    deployed_at: v.deployed_at,
                    module: v.module.clone(),
                    bytes: v.bytes.clone(),
                })
                .collect(),
            skipped: m.skipped.clone(),
        })
    }

    /// Start creating a snapshot of the state as of now (`meta.index` must be
    /// the applied index). The live machines keep applying: the export runs
    /// from shadow instances on another task (see `snap`).
    fn start_snapshot(&mut self, meta: SnapshotMeta) {
        if let Some(h) = &self.halted {
            // The live state may hold work past the failure point: never cut it.
            let _ = self.events.send(SnapEvent::Failed {
                index: meta.index,
                error: format!("applying is halted: {}", h.describe()),
            });
            return;
        }
        if meta.index != self.applied {
            let _ = self.events.send(SnapEvent::Failed {
                index: meta.index,
                error: format!(
                    "snapshot requested at {} but the machines are at {}",
                    meta.index, self.applied
                ),
            });
            return;
        }
        let cut = self.cut(meta.clone());
        let storage = self.storage.clone();
        let base = self.base;
        let events = self.events.clone();
        let node = self.node;
        tokio::spawn(async move {
            let index = meta.index;
            let ev = match snapshot::create_snapshot(node, storage, base, cut).await {
                Ok(info) => SnapEvent::Created { meta, info },
                Err(error) => SnapEvent::Failed { index, error },
            };
            let _ = events.send(ev);
        });
    }

    /// A newer durable snapshot exists: rebuilds start there now; bookkeeping
    /// for entries at or below it is dropped.
    fn base_changed(&mut self, id: SnapshotId) {
        if id.last_index > self.applied || self.base.is_some_and(|b| b.last_index >= id.last_index)
        {
            return;
        }
        self.base = Some(id);
        for m in self.machines.values_mut() {
            m.skipped = m.skipped.split_off(&(id.last_index + 1));
            // Keep the version running at the snapshot and every later one.
            if let Some(v) = m
                .versions
                .iter()
                .rposition(|v| v.deployed_at <= id.last_index)
            {
                m.versions.drain(..v);
            }
        }
    }

    /// Follower: restore the received snapshot into fresh instances, then
    /// swap them in at once. The consensus loop is not involved; client
    /// writes cannot arrive (the engine emits no applies while installing).
    async fn install(&mut self, meta: SnapshotMeta) {
        let id = SnapshotId {
            last_index: meta.index,
            last_term: meta.term,
        };
        let t = std::time::Instant::now();
        tracing::info!(target: "wraft_node::snapshot", node = self.node, index = meta.index,
            term = meta.term, "installing snapshot from the leader");
        match snapshot::restore_all(&self.host, &self.storage, id).await {
            Ok(r) => {
                self.swap_in(r, id);
                let stale: Vec<u64> = self
                    .waiting
                    .range(..=self.applied)
                    .map(|(i, _)| *i)
                    .collect();
                for i in stale {
                    if let Some(r) = self.waiting.remove(&i) {
                        let _ = r.send(Err(RequestError::Timeout(format!(
                            "entry {i} was covered by an installed snapshot; outcome unknown, retrying with the same tag is safe"
                        ))));
                    }
                }
                let secs = t.elapsed().as_secs_f64();
                self.metrics.install_seconds.record(secs);
                tracing::info!(target: "wraft_node::snapshot", node = self.node, index = meta.index,
                    duration_ms = (secs * 1000.0) as u64, "snapshot installed");
                let _ = self.events.send(SnapEvent::Installed { meta });
                // The whole state now comes from the leader's snapshot: a halt is over, and
                // held entries above the snapshot are applied on top of it.
                if self.halted.take().is_some() {
                    self.resumed("a snapshot from the leader was installed");
                    let held = std::mem::take(&mut self.held);
                    self.apply_or_halt(held, 0).await;
                }
            }
            Err(e) => {
                tracing::error!(target: "wraft_node::snapshot", node = self.node, index = meta.index,
                    error = %e, "snapshot install failed; the old machines keep running");
                let _ = self.events.send(SnapEvent::InstallFailed { meta });
            }
        }
    }

    /// Apply `entries`, or halt before the first one this node cannot apply (`attempts`: how
    /// many re-derivations have already failed).
    async fn apply_or_halt(&mut self, entries: Vec<Entry>, attempts: u32) {
        if let Err(failure) = self.apply_entries(&entries).await {
            let applied = self.applied;
            self.held = entries.into_iter().filter(|e| e.index > applied).collect();
            self.halt(failure, attempts);
        }
    }

    /// Stop applying: a node-local failure is not a result, so nothing at or past the failing
    /// entry is recorded, answered or snapshotted until the state is re-derived.
    fn halt(&mut self, failure: LocalFailure, attempts: u32) {
        let backoff_ms = REDERIVE_BACKOFF_MIN_MS
            .saturating_mul(1 << attempts.min(16))
            .min(REDERIVE_BACKOFF_MAX_MS);
        let halt = Halt {
            failure,
            attempts,
            next_try: tokio::time::Instant::now() + std::time::Duration::from_millis(backoff_ms),
        };
        if halt.failure.diverged {
            tracing::error!(target: "wraft::apply", node = self.node, index = halt.failure.index,
                applied = self.applied, "{}", halt.failure.error);
        } else {
            tracing::error!(target: "wraft::apply", node = self.node, machine = %halt.failure.machine,
            index = halt.failure.index, applied = self.applied, attempts, retry_in_ms = backoff_ms,
            error = %halt.failure.error,
            "this node cannot apply entry {} (a node-local failure, not the entry's result): \
             it stops applying, serves no reads and takes no snapshots until it has re-derived \
             its state from its base snapshot and the log; the other replicas are unaffected",
            halt.failure.index);
        }
        self.metrics.halted.set(1.0);
        let _ = self.events.send(SnapEvent::ApplyHalted {
            reason: halt.describe(),
        });
        self.halted = Some(halt);
        self.publish();
    }

    fn resumed(&mut self, how: &str) {
        tracing::info!(target: "wraft::apply", node = self.node, applied = self.applied,
            "applying again: {how}");
        self.metrics.halted.set(0.0);
        let _ = self.events.send(SnapEvent::ApplyResumed);
    }

    /// A halted applier's try to go on: restore every machine and the session table from the
    /// base snapshot (or from nothing), replay the log from there, then the held entries. A
    /// node-local failure that is gone (a disk with room again, a watchdog raised in the
    /// config after a restart) lets it through; one that persists halts again, later.
    async fn rederive(&mut self) {
        let Some(halt) = self.halted.take() else {
            return;
        };
        let attempts = halt.attempts + 1;
        let started = std::time::Instant::now();
        tracing::info!(target: "wraft::apply", node = self.node, attempt = attempts,
            base = self.base.map_or(0, |b| b.last_index), "re-deriving the state from the base snapshot and the log");
        let replay = match self.reset_to_base().await {
            Ok(()) => {
                let upto = self.held.first().map_or(halt.failure.index, |e| e.index);
                self.read_log(self.applied + 1, upto).await
            }
            Err(e) => Err(e),
        };
        let mut entries = match replay {
            Ok(entries) => entries,
            Err(error) => {
                let failure = LocalFailure {
                    error: format!("{}; re-deriving failed: {error}", halt.failure.error),
                    ..halt.failure
                };
                self.halt(failure, attempts);
                return;
            }
        };
        entries.append(&mut self.held);
        self.apply_or_halt(entries, attempts).await;
        if self.halted.is_none() {
            self.resumed(&format!(
                "state re-derived up to index {} in {} ms",
                self.applied,
                started.elapsed().as_millis()
            ));
        }
    }

    /// Replace the whole replicated state with the base snapshot's (or the empty state).
    async fn reset_to_base(&mut self) -> Result<(), String> {
        match self.base {
            Some(id) => {
                let restored = snapshot::restore_all(&self.host, &self.storage, id).await?;
                self.swap_in(restored, id);
            }
            None => {
                for (_, m) in std::mem::take(&mut self.machines) {
                    if let Some(h) = m.handle {
                        tokio::task::spawn_blocking(move || h.shutdown());
                    }
                }
                self.sessions = SessionTable::new(SESSIONS_MAX, SESSION_EXPIRY_MS);
                self.last_timestamp_ms = 0;
                self.replicated_addresses.clear();
                self.applied = 0;
                self.chain = OutcomeChain::genesis();
            }
        }
        Ok(())
    }

    /// The committed entries `[from, to)` from this node's log.
    async fn read_log(&self, from: u64, to: u64) -> Result<Vec<Entry>, String> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut next = from;
            while next < to {
                let page = storage
                    .log
                    .entries(next, to, 64 << 20)
                    .map_err(|e| format!("reading log entries {next}..{to}: {e}"))?;
                let Some(last) = page.last() else {
                    return Err(format!("log entries {next}..{to} are missing"));
                };
                next = last.index + 1;
                for le in &page {
                    out.push(
                        super::decode_entry(le)
                            .map_err(|e| format!("log entry {} does not decode: {e}", le.index))?,
                    );
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Run until the driver drops its sender.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ApplyMsg>) {
        // What startup recovered (a snapshot, maybe nothing to replay above it) is visible at
        // once, not at the first message.
        self.publish();
        loop {
            let retry_at = self
                .halted
                .as_ref()
                .filter(|h| !h.failure.diverged)
                .map(|h| h.next_try);
            let msg = match retry_at {
                None => rx.recv().await,
                Some(at) => tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(at) => {
                        self.rederive().await;
                        self.serve_reads().await;
                        self.publish();
                        continue;
                    }
                },
            };
            let Some(msg) = msg else { break };
            // Take whatever else is already queued before serving reads: reads confirmed in the
            // same round then reach the machine's thread as one run (`serve_reads`), and the
            // machine list is published once for the lot.
            let started = std::time::Instant::now();
            let mut visible = self.handle(msg).await;
            for _ in 0..APPLY_DRAIN_MSGS_MAX {
                // Ready reads wait for the drain: bound it in time as well as in messages.
                if started.elapsed() >= APPLY_DRAIN_TIME_MAX {
                    break;
                }
                let Ok(msg) = rx.try_recv() else { break };
                visible |= self.handle(msg).await;
            }
            if visible {
                self.serve_reads().await;
                self.publish();
            }
        }
        for (_, m) in std::mem::take(&mut self.machines) {
            if let Some(h) = m.handle {
                tokio::task::spawn_blocking(move || h.shutdown());
            }
        }
    }

    /// Handle one message; false if it changed nothing a reader or the status page can see (a
    /// proposer registering: one arrives per proposal).
    async fn handle(&mut self, msg: ApplyMsg) -> bool {
        match msg {
            ApplyMsg::Await { index, reply } => {
                if index <= self.applied {
                    let _ = reply.send(Err(RequestError::Internal(format!(
                        "entry {index} was applied before its proposer registered"
                    ))));
                } else {
                    self.waiting.insert(index, reply);
                }
                return false;
            }
            ApplyMsg::Entries(entries) => {
                // Held for the re-derivation, or (diverged) for a snapshot from the leader that
                // replaces this node's state: entries above it are applied on top.
                if self.halted.is_some() {
                    self.held.extend(entries);
                    return false;
                }
                self.apply_or_halt(entries, 0).await;
                if let Some((target, t)) = self.recovery_target
                    && self.applied >= target
                {
                    self.recovery_target = None;
                    tracing::info!(target: "wraft_node::snapshot", node = self.node, applied = self.applied,
                        replay_ms = t.elapsed().as_millis() as u64, "recovery complete");
                }
            }
            ApplyMsg::Snapshot { meta } => self.start_snapshot(meta),
            ApplyMsg::BaseChanged { id } => self.base_changed(id),
            ApplyMsg::Install { meta } => self.install(meta).await,
            ApplyMsg::Read {
                index,
                target,
                reply,
            } => {
                self.reads.push_back((index, target, reply));
            }
        }
        true
    }

    fn publish(&self) {
        let machines = self.machine_infos();
        self.metrics.applied_index.set(self.applied as f64);
        if let Ok(mut p) = self.published.lock() {
            p.applied_index = self.applied;
            p.machines = machines;
            p.halted = self.halted.as_ref().map(Halt::describe);
        }
    }

    /// The deployed machines as of the applied index.
    fn machine_infos(&self) -> Vec<MachineInfo> {
        self.machines
            .iter()
            .map(|(name, m)| {
                let v = m.current();
                MachineInfo {
                    name: name.clone(),
                    kind: v.module.info().name.clone(),
                    version: v.module.info().version.clone(),
                    module_sha256: v.module.sha256_hex(),
                    deployed_at: v.deployed_at,
                    healthy: m.healthy,
                }
            })
            .collect()
    }

    async fn serve_reads(&mut self) {
        if let Some(h) = &self.halted {
            // The live instances may hold work past the failure point: serve nothing.
            let why = format!(
                "node {} is not applying ({}); ask another node",
                self.node,
                h.describe()
            );
            for (_, _, reply) in self.reads.drain(..) {
                let _ = reply.send(Err(RequestError::Busy(why.clone())));
            }
            return;
        }
        // Reads are served in arrival order once their index is applied;
        // a read waiting for a later index does not hold up the others.
        let (mut ready, pending): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(index, ..)| *index <= self.applied);
        self.reads = pending;
        while let Some((_, target, reply)) = ready.pop_front() {
            let (machine, request) = match target {
                ReadTarget::Machines => {
                    let _ = reply.send(Ok(Reply::Machines(self.machine_infos())));
                    continue;
                }
                ReadTarget::Query { machine, request } => (machine, request),
            };
            // The run of ready reads for the same machine goes to its thread in one go.
            let mut run = vec![(request, reply)];
            while let Some((_, ReadTarget::Query { machine: m, .. }, _)) = ready.front()
                && *m == machine
            {
                let Some((_, ReadTarget::Query { request, .. }, reply)) = ready.pop_front() else {
                    break;
                };
                run.push((request, reply));
            }
            let (requests, replies): (Vec<_>, Vec<_>) = run.into_iter().unzip();
            let answers = self.query_many(&machine, requests).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
    }

    /// Answer `requests` to `machine`, in order. All are queued to the machine's thread before
    /// the first answer is awaited, so the thread runs them back to back (one wake-up for the
    /// run, not one per read). If one traps, the instance is rebuilt and the reads queued
    /// behind it, which found it poisoned, are asked again.
    async fn query_many(&mut self, machine: &str, requests: Vec<Vec<u8>>) -> Vec<Response> {
        let applied = self.applied;
        let results = match self.queryable(machine) {
            Ok(h) => {
                futures_util::future::join_all(requests.iter().map(|r| h.query(r.clone()))).await
            }
            Err(e) => return requests.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut answers = Vec::with_capacity(results.len());
        let mut again = Vec::new();
        let mut trapped = false;
        for (k, result) in results.into_iter().enumerate() {
            answers.push(match result {
                Ok(r) => query_answer(applied, r),
                Err(CallError::Poisoned { .. }) if trapped => {
                    again.push(k);
                    Err(RequestError::Internal("not asked yet".into()))
                }
                Err(e) => {
                    trapped |= e.poisons();
                    Err(RequestError::MachineFault(e.to_string()))
                }
            });
        }
        if trapped {
            // A query is not replicated: a trap only poisons this node's instance.
            self.rebuild(machine, self.applied + 1).await;
            for k in again {
                answers[k] = self.query(machine, requests[k].clone()).await;
            }
        }
        answers
    }

    async fn query(&mut self, machine: &str, request: Vec<u8>) -> Response {
        let applied = self.applied;
        let result = match self.queryable(machine) {
            Ok(h) => h.query(request).await,
            Err(e) => return Err(e),
        };
        match result {
            Ok(r) => query_answer(applied, r),
            Err(e) => {
                // A query is not replicated: a trap here only poisons this
                // node's instance, which is rebuilt before the next call.
                if e.poisons() {
                    self.rebuild(machine, self.applied + 1).await;
                }
                Err(RequestError::MachineFault(e.to_string()))
            }
        }
    }

    /// The handle of a machine that can answer queries, or why none can.
    fn queryable(&self, machine: &str) -> Result<&MachineHandle, RequestError> {
        let m = self
            .machines
            .get(machine)
            .ok_or_else(|| RequestError::NoSuchMachine(machine.to_owned()))?;
        m.handle.as_ref().filter(|_| m.healthy).ok_or_else(|| {
            RequestError::MachineFault(format!(
                "machine {machine:?} is unhealthy on this node; see its log"
            ))
        })
    }

    /// Apply committed `entries` (in order; those at or below the applied index are skipped)
    /// and answer their proposers. On a [`LocalFailure`] nothing of this call is kept: no
    /// outcome is answered or recorded and the applied index does not move (the live
    /// instances may have run part of it: the caller halts and re-derives).
    async fn apply_entries(&mut self, entries: &[Entry]) -> Result<(), LocalFailure> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
        // Consecutive commands for the same machine go to the guest in one batch.
        let mut batch: Vec<(u64, Option<ClientTag>, wraft_host::Entry)> = Vec::new();
        let mut batch_machine = String::new();
        // Outcomes up to here have their outputs stored in the session table.
        let mut completed = 0usize;
        // Outcomes up to here are folded into the outcome digest.
        let mut chained = 0usize;
        for entry in entries {
            if entry.index <= self.applied {
                continue; // replayed after a restart of the driver side; already applied
            }
            let index = entry.index;
            match &entry.kind {
                EntryKind::Noop | EntryKind::ConfChange(_) => {
                    self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                        .await?;
                    outcomes.push((
                        index,
                        None,
                        Ok(Reply::Done {
                            message: format!("committed at index {index}"),
                        }),
                    ));
                }
                EntryKind::Command {
                    client,
                    timestamp_ms,
                    data,
                } => {
                    let client = *client;
                    self.last_timestamp_ms = self.last_timestamp_ms.max(*timestamp_ms);
                    let ts = self.last_timestamp_ms;
                    let cmd: Command = match postcard::from_bytes(data) {
                        Ok(c) => c,
                        Err(e) => {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await?;
                            outcomes.push((
                                index,
                                client,
                                Err(RequestError::Rejected(format!(
                                    "entry {index} is not a wraft command: {e}"
                                ))),
                            ));
                            continue;
                        }
                    };
                    // Deduplicate before anything reaches a guest. The decision is taken
                    // here, at the entry, in log order (`SessionTable::admit`); only the
                    // outputs wait for the batch, and a command of a client whose output
                    // is still pending in it ends the batch first, so a duplicate is
                    // answered with the real output.
                    if let Some(tag) = client {
                        if batch
                            .iter()
                            .any(|(_, t, _)| t.is_some_and(|t| t.client_id == tag.client_id))
                        {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await?;
                        }
                        self.complete_sessions(&outcomes[completed..]);
                        completed = outcomes.len();
                        let refused = match self.sessions.admit(tag, ts) {
                            SessionCheck::Fresh => None,
                            SessionCheck::Duplicate(out) => Some(decode_cached(&out)),
                            SessionCheck::Stale { last_seq } => {
                                Some(Err(RequestError::Rejected(format!(
                                    "request {}/{} not applied: the session is already at {last_seq}",
                                    tag.client_id, tag.seq
                                ))))
                            }
                            SessionCheck::Unknown => Some(Err(RequestError::SessionUnknown {
                                client_id: tag.client_id,
                            })),
                        };
                        if let Some(resp) = refused {
                            // Outcomes stay in index order: the pending batch goes first.
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await?;
                            self.note_skipped(&cmd, index);
                            outcomes.push((index, None, resp));
                            continue;
                        }
                    }
                    match cmd {
                        Command::Apply { machine, command } => {
                            if batch_machine != machine || batch.len() >= APPLY_BATCH_ENTRIES_MAX {
                                self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                    .await?;
                                batch_machine = machine;
                            }
                            batch.push((
                                index,
                                client,
                                wraft_host::Entry {
                                    index,
                                    term: entry.term,
                                    timestamp_ms: ts,
                                    command,
                                },
                            ));
                        }
                        other => {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await?;
                            // A checkpoint compares the digest up to the entries before it.
                            self.fold_outcomes(&outcomes[chained..])?;
                            chained = outcomes.len();
                            let resp = self.apply_admin(index, ts, other).await?;
                            outcomes.push((index, client, resp));
                        }
                    }
                }
            }
        }
        self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
            .await?;
        self.complete_sessions(&outcomes[completed..]);
        self.fold_outcomes(&outcomes[chained..])?;
        for (index, _, resp) in outcomes {
            self.applied = index;
            if let Some(reply) = self.waiting.remove(&index) {
                let _ = reply.send(resp);
            }
        }
        // Anyone still waiting at or below the applied index lost their
        // entry to another leader's (the engine reports that separately);
        // do not leave them hanging.
        let stale: Vec<u64> = self
            .waiting
            .range(..=self.applied)
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            if let Some(r) = self.waiting.remove(&i) {
                let _ = r.send(Err(RequestError::Internal(format!(
                    "entry {i} applied without an outcome"
                ))));
            }
        }
        Ok(())
    }

    /// Fold outcomes into the running digest, reporting it at every `check_interval`, and
    /// compare each with what the same entry gave if it was applied before.
    fn fold_outcomes(&mut self, outcomes: &[Outcome]) -> Result<(), LocalFailure> {
        for (index, _, resp) in outcomes {
            let d = divergence::outcome_digest(resp);
            match self.recorded.insert(*index, d) {
                Some(was) if was != d => {
                    return Err(LocalFailure {
                        machine: "(every machine)".into(),
                        index: *index,
                        error: format!(
                            "replicas diverged: entry {index} gave another result when applied \
                             again (digest {} now, {} before): a guest's snapshot or restore is \
                             not faithful, or it is not deterministic. This node stops applying \
                             and serving; replace its data from a healthy replica (RELIABILITY.md, \
                             \"Divergence\")",
                            divergence::short(&d),
                            divergence::short(&was)
                        ),
                        diverged: true,
                    });
                }
                _ => {}
            }
            while self.recorded.len() > divergence::RECENT_DIGESTS_MAX {
                self.recorded.pop_first();
            }
            if let Some(digest) = self.chain.push(*index, &d)
                && self.check_interval > 0
                && index % self.check_interval == 0
            {
                let _ = self.events.send(SnapEvent::Checkpoint {
                    index: *index,
                    digest,
                });
            }
        }
        Ok(())
    }

    /// Store the outputs of admitted commands in the session table (the
    /// decisions were taken at admission; this only fills in what a retry gets).
    fn complete_sessions(&mut self, outcomes: &[Outcome]) {
        for (_, tag, resp) in outcomes {
            if let Some(tag) = tag {
                self.sessions.complete(*tag, encode_cached(resp));
            }
        }
    }

    fn note_skipped(&mut self, cmd: &Command, index: u64) {
        if let Command::Apply { machine, .. } = cmd
            && let Some(m) = self.machines.get_mut(machine)
        {
            m.skipped.insert(index);
        }
    }

    /// Send the pending batch to its machine and turn the results into outcomes.
    async fn flush_batch(
        &mut self,
        machine: &str,
        batch: &mut Vec<(u64, Option<ClientTag>, wraft_host::Entry)>,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), LocalFailure> {
        if batch.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(batch);
        let Some(m) = self.machines.get(machine) else {
            for (index, tag, _) in items {
                outcomes.push((
                    index,
                    tag,
                    Err(RequestError::NoSuchMachine(machine.to_owned())),
                ));
            }
            return Ok(());
        };
        if !m.healthy || m.handle.is_none() {
            return Err(self.cannot_run(machine, items[0].0));
        }
        let mut rest: VecDeque<_> = items.into();
        while !rest.is_empty() {
            let entries: Vec<wraft_host::Entry> = rest.iter().map(|(_, _, e)| e.clone()).collect();
            let handle = match self.machines.get(machine).and_then(|m| m.handle.as_ref()) {
                Some(h) => h,
                None => break,
            };
            let started = std::time::Instant::now();
            let n = entries.len() as u64;
            let result = handle.apply_batch(entries).await;
            self.metrics
                .batch_seconds
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(results) => {
                    self.metrics.entries.increment(n);
                    for ((index, tag, _), r) in rest.drain(..).zip(results) {
                        outcomes.push((index, tag, app_response(index, r)));
                    }
                }
                Err(e) => {
                    // Find which entry trapped by replaying one at a time
                    // on a rebuilt instance: entries before it were applied
                    // by the batch call that trapped, so rebuild first.
                    let first = rest.front().map(|(i, _, _)| *i).unwrap_or(0);
                    tracing::warn!(target: "wraft::apply", machine, first_index = first, error = %e,
                        "batch call failed; rebuilding the instance and applying one entry at a time");
                    self.rebuild(machine, first).await;
                    while let Some((index, tag, entry)) = rest.pop_front() {
                        let r = self.apply_one(machine, entry).await?;
                        outcomes.push((index, tag, r));
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply one entry, handling traps: a deterministic trap is the entry's
    /// recorded result and the instance is rebuilt without it; a node-local
    /// failure (the watchdog, the memory limit) is retried on a rebuilt
    /// instance, and if it persists it is a [`LocalFailure`], never a result.
    async fn apply_one(
        &mut self,
        machine: &str,
        entry: wraft_host::Entry,
    ) -> Result<Response, LocalFailure> {
        let index = entry.index;
        let mut local_hits = 0;
        let mut canonical = false;
        loop {
            let Some(handle) = self
                .machines
                .get(machine)
                .filter(|m| m.healthy)
                .and_then(|m| m.handle.as_ref())
            else {
                return Err(self.cannot_run(machine, index));
            };
            match handle.apply(entry.clone()).await {
                Ok(r) => return Ok(app_response(index, r)),
                // How far a guest's memory grows depends on its allocator's history, which
                // differs between replicas (a long-running instance, one restored from a
                // snapshot, one rebuilt by replay, the batch it ran in). So a memory-limit trap
                // is decided again on a canonical instance: the state just before the entry,
                // moved through the guest's own snapshot into a fresh instance, which every
                // replica builds alike. The entry alone runs there; that outcome is recorded.
                Err(CallError::Trap {
                    kind: TrapKind::MemoryLimit,
                    ..
                }) if !canonical => {
                    canonical = true;
                    tracing::info!(target: "wraft::apply", machine, index,
                        "memory limit hit; deciding again on a canonical instance");
                    self.rebuild(machine, index).await;
                    self.canonicalize(machine).await;
                }
                Err(e) if is_deterministic(&e) || (canonical && is_memory_trap(&e)) => {
                    self.metrics.trap(machine);
                    tracing::warn!(target: "wraft::apply", machine, index, error = %e,
                        "guest trapped; recording the failure and rebuilding the instance");
                    if let Some(m) = self.machines.get_mut(machine) {
                        m.skipped.insert(index);
                    }
                    self.rebuild(machine, index + 1).await;
                    return Ok(Err(RequestError::MachineFault(e.to_string())));
                }
                // Anything else (the watchdog, the memory limit, a stopped thread, an
                // instance left poisoned by a query) is local to this node: never a
                // replicated result. Rebuild and retry, a bounded number of times.
                Err(e) if local_hits < WATCHDOG_RETRIES_MAX => {
                    local_hits += 1;
                    tracing::warn!(target: "wraft::apply", machine, index, attempt = local_hits, error = %e,
                        "node-local failure (not a replicated result); rebuilding and retrying");
                    self.rebuild(machine, index).await;
                }
                Err(e) => {
                    return Err(LocalFailure {
                        diverged: false,
                        machine: machine.to_owned(),
                        index,
                        error: format!("{e} ({local_hits} retries on a rebuilt instance)"),
                    });
                }
            }
        }
    }

    /// Why `machine` cannot take entry `index` here: its replay showed this replica diverged,
    /// or (not a result either) it could not be started or rebuilt on this node.
    fn cannot_run(&self, machine: &str, index: u64) -> LocalFailure {
        match self.machines.get(machine).and_then(|m| m.diverged.as_ref()) {
            Some(e) => LocalFailure {
                diverged: true,
                machine: machine.to_owned(),
                index,
                error: format!("replicas diverged: {e}"),
            },
            None => LocalFailure {
                diverged: false,
                machine: machine.to_owned(),
                index,
                error: format!("machine {machine:?} cannot run on this node"),
            },
        }
    }

    /// Move `machine`'s state into a fresh instance of its current version through the guest's
    /// own snapshot and restore, so that its memory holds nothing of the instance's history.
    /// On failure the machine cannot run here (the next entry for it halts the applier).
    async fn canonicalize(&mut self, machine: &str) {
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        let Some(old) = m.handle.take().filter(|_| m.healthy) else {
            m.healthy = false;
            return;
        };
        let module = m.current().module.clone();
        let result = match module.start() {
            Ok(fresh) => match migrate(&old, &fresh, module.info().snapshot_format).await {
                Ok(()) => Ok(fresh),
                Err(e) => {
                    new_handle_shutdown(fresh);
                    Err(e.to_string())
                }
            },
            Err(e) => Err(e.to_string()),
        };
        new_handle_shutdown(old);
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        match result {
            Ok(fresh) => m.handle = Some(fresh),
            Err(e) => {
                tracing::error!(target: "wraft::apply", machine, error = %e,
                    "could not move the machine into a canonical instance; it cannot run on this node");
                m.healthy = false;
            }
        }
    }

    /// Rebuild `machine` from scratch to its state just before `before`:
    /// a fresh instance of its first version, then a replay of its committed
    /// history from the log (skipping entries that never reached it, and
    /// migrating across upgrades exactly as they happened).
    async fn rebuild(&mut self, machine: &str, before: u64) {
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        if let Some(h) = m.handle.take() {
            tokio::task::spawn_blocking(move || h.shutdown());
        }
        let Some(cut) = self.machine_cut(machine) else {
            return;
        };
        // Opening the base reads and checks the whole snapshot file (module hashes included):
        // off the async workers, as everywhere else it is opened.
        let opened = {
            let (storage, base) = (self.storage.clone(), self.base);
            tokio::task::spawn_blocking(move || snapshot::open_base(&storage, base)).await
        };
        let result = match opened {
            Ok(Ok(base)) => {
                let recorded = Some(&self.recorded);
                snapshot::build_instance(
                    &self.storage,
                    base.as_ref(),
                    &cut,
                    before,
                    false,
                    recorded,
                )
                .await
            }
            Ok(Err(e)) => Err(snapshot::BuildError::Failed(e)),
            Err(e) => Err(snapshot::BuildError::Failed(format!(
                "opening the base snapshot: {e}"
            ))),
        };
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        match result {
            Ok(handle) => {
                m.handle = Some(handle);
                m.healthy = true;
            }
            Err(snapshot::BuildError::Diverged(e)) => {
                tracing::error!(target: "wraft::apply", machine, error = %e, "replicas diverged");
                m.healthy = false;
                m.diverged = Some(e);
            }
            Err(e) => {
                tracing::error!(target: "wraft::apply", machine, error = %e,
                    "could not rebuild the machine; it is unhealthy on this node");
                m.healthy = false;
            }
        }
    }

    async fn apply_admin(
        &mut self,
        index: u64,
        timestamp_ms: u64,
        cmd: Command,
    ) -> Result<Response, LocalFailure> {
        Ok(match cmd {
            Command::OpenSession => {
                self.sessions.open(index, timestamp_ms);
                Ok(Reply::SessionOpened { client_id: index })
            }
            Command::Checkpoint { index: at, digest } => {
                let result = self.chain.check(index, at, digest);
                let label = match &result {
                    CheckOutcome::Match => "match",
                    CheckOutcome::Mismatch { .. } => "mismatch",
                    CheckOutcome::Unknown => "unknown",
                };
                metrics::counter!("wraft_divergence_checks_total", "node" => self.node.to_string(), "result" => label)
                    .increment(1);
                if let CheckOutcome::Mismatch { ours } = result {
                    return Err(LocalFailure {
                        machine: "(every machine)".into(),
                        index,
                        error: format!(
                            "replicas diverged: after entry {at} this node's outcome digest is \
                             {}, the leader's {}. This node computed other results for the same \
                             log (a guest whose snapshot or restore is not faithful, or that is \
                             not deterministic); it stops applying and serving. Replace its data \
                             from a healthy replica (RELIABILITY.md, \"Divergence\")",
                            divergence::short(&ours),
                            divergence::short(&digest)
                        ),
                        diverged: true,
                    });
                }
                Ok(Reply::Done {
                    message: format!("checkpoint of entry {at}: {label}"),
                })
            }
            Command::Apply { .. } => Err(RequestError::Internal(
                "apply command routed to the admin path".into(),
            )),
            Command::SetAddress { id, addr } => {
                self.addresses.insert(id, addr);
                self.replicated_addresses.insert(id, addr);
                Ok(Reply::Done {
                    message: format!("node {id} is at {addr}"),
                })
            }
            Command::Remove { name } => match self.machines.remove(&name) {
                Some(m) => {
                    if let Some(h) = m.handle {
                        tokio::task::spawn_blocking(move || h.shutdown());
                    }
                    Ok(Reply::Done {
                        message: format!("machine {name:?} removed at index {index}"),
                    })
                }
                None => Err(RequestError::NoSuchMachine(name)),
            },
            Command::Deploy {
                name,
                sha256,
                module,
            } => {
                self.deploy(index, name, sha256, module, WasiProfile::None, None)
                    .await?
            }
            Command::DeployWith {
                name,
                sha256,
                module,
                wasi,
            } => self.deploy(index, name, sha256, module, wasi, None).await?,
            Command::DeployLimited {
                name,
                sha256,
                module,
                wasi,
                limits,
            } => {
                self.deploy(index, name, sha256, module, wasi, Some(limits))
                    .await?
            }
        })
    }

    async fn deploy(
        &mut self,
        index: u64,
        name: String,
        sha256: [u8; 32],
        module: Vec<u8>,
        wasi: WasiProfile,
        limits: Option<MachineLimits>,
    ) -> Result<Response, LocalFailure> {
        let r = self
            .deploy_inner(index, name, sha256, module, wasi, limits)
            .await;
        self.metrics.deploy(match &r {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "refused",
            Err(_) => "local_failure",
        });
        r
    }

    async fn deploy_inner(
        &mut self,
        index: u64,
        name: String,
        sha256: [u8; 32],
        module: Vec<u8>,
        wasi: WasiProfile,
        limits: Option<MachineLimits>,
    ) -> Result<Response, LocalFailure> {
        let local = |error: String| LocalFailure {
            diverged: false,
            machine: name.clone(),
            index,
            error,
        };
        let host = self.host.clone();
        let bytes = Bytes::from(module);
        let b2 = bytes.clone();
        // Committed: its size was checked against `guest.module_bytes_max` when it was proposed.
        let loaded = tokio::task::spawn_blocking(move || host.load_committed(&b2, wasi))
            .await
            .map_err(|e| local(format!("loading the module: {e}")))?;
        let module = match loaded {
            Ok(m) => match limits {
                Some(l) => m.with_limits(l),
                // A deploy from before limits were replicated: this node's own, as then.
                None => m,
            },
            // Compiling, reading or caching can fail on this node alone.
            Err(e @ (LoadError::Compile(_) | LoadError::Cache { .. } | LoadError::Read { .. })) => {
                return Err(local(format!("loading the module: {e}")));
            }
            Err(e) => {
                return Ok(Err(RequestError::Rejected(format!(
                    "module for {name:?} failed validation: {e}"
                ))));
            }
        };
        if module.sha256() != sha256 {
            return Ok(Err(RequestError::Rejected(format!(
                "module for {name:?} does not match its declared SHA-256"
            ))));
        }
        let new_handle = match module.start() {
            Ok(h) => h,
            Err(e) if is_deterministic(&e) => {
                return Ok(Err(RequestError::Rejected(format!(
                    "cannot start {name:?}: {e}"
                ))));
            }
            Err(e) => return Err(local(format!("starting the machine: {e}"))),
        };
        let summary = format!(
            "{name:?} runs {} {} (sha256 {}) from index {index}",
            module.info().name,
            module.info().version,
            &module.sha256_hex()[..16]
        );
        let Some(m) = self.machines.get_mut(&name) else {
            self.machines.insert(
                name,
                Machine {
                    handle: Some(new_handle),
                    created_at: index,
                    versions: vec![Version {
                        deployed_at: index,
                        module,
                        bytes,
                    }],
                    skipped: BTreeSet::new(),
                    healthy: true,
                    diverged: None,
                },
            );
            return Ok(Ok(Reply::Done {
                message: format!("deployed {summary}"),
            }));
        };
        let Some(old) = m.handle.as_ref().filter(|_| m.healthy) else {
            new_handle_shutdown(new_handle);
            return Err(local(format!(
                "cannot upgrade {name:?}: the running version cannot run on this node"
            )));
        };
        let format = m.current().module.info().snapshot_format;
        match migrate(old, &new_handle, format).await {
            Ok(()) => {
                if let Some(h) = m.handle.replace(new_handle) {
                    tokio::task::spawn_blocking(move || h.shutdown());
                }
                m.versions.push(Version {
                    deployed_at: index,
                    module,
                    bytes,
                });
                Ok(Ok(Reply::Done {
                    message: format!("upgraded {summary}; state carried across"),
                }))
            }
            Err(e) if is_deterministic(&e) => {
                new_handle_shutdown(new_handle);
                Ok(Err(RequestError::Rejected(format!(
                    "upgrade of {name:?} failed, the old version keeps running: {e}"
                ))))
            }
            Err(e) => {
                new_handle_shutdown(new_handle);
                Err(local(format!(
                    "migrating the state to the new version: {e}"
                )))
            }
        }
    }
}

/// Whether a failed guest call is the same on every replica, so that it can be a replicated
/// result: a trap of the guest's own making (a panic, fuel, the stack, a bad memory access,
/// a broken contract) or an error its snapshot or restore code reported. Not deterministic:
/// the watchdog (wall-clock time), the memory limit (how far a guest's memory grows depends
/// on its allocator's history; `apply_one` decides such a trap again on a canonical
/// instance), and anything of the host's own.
fn is_memory_trap(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Trap {
            kind: TrapKind::MemoryLimit,
            ..
        }
    )
}

fn is_deterministic(e: &CallError) -> bool {
    match e {
        CallError::Trap { kind, .. } => *kind != TrapKind::MemoryLimit,
        CallError::Snapshot { .. }
        | CallError::Restore { .. }
        | CallError::ChunkTooLarge { .. } => true,
        _ => false,
    }
}

fn new_handle_shutdown(h: MachineHandle) {
    tokio::task::spawn_blocking(move || h.shutdown());
}

/// A query's answer as of `applied`.
fn query_answer(applied: u64, r: wraft_host::EntryResult) -> Response {
    match r {
        Ok(output) => Ok(Reply::Answer {
            index: applied,
            output,
        }),
        Err(e) => Err(RequestError::App {
            code: e.code,
            message: e.message,
        }),
    }
}

fn app_response(index: u64, r: wraft_host::EntryResult) -> Response {
    match r {
        Ok(output) => Ok(Reply::Applied { index, output }),
        Err(e) => Err(RequestError::App {
            code: e.code,
            message: e.message,
        }),
    }
}

/// Session outputs are stored as postcard-encoded responses so a retry gets
/// exactly the original answer, error included.
fn encode_cached(resp: &Response) -> Bytes {
    Bytes::from(postcard::to_stdvec(resp).unwrap_or_default())
}

fn decode_cached(b: &Bytes) -> Response {
    postcard::from_bytes(b).unwrap_or_else(|e| {
        Err(RequestError::Internal(format!(
            "cached response does not decode: {e}"
        )))
    })
}
