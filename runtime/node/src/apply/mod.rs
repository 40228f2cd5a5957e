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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use wraft_engine::{ClientTag, Entry, SessionTable};
use wraft_storage::Storage;
use wraft_transport::AddressBook;

use wraft_engine::SnapshotMeta;
use wraft_storage::SnapshotId;

use crate::divergence::{Digest, OutcomeChain};
use crate::limits::APPLY_BATCH_ENTRIES_MAX;
use crate::snapshot::SnapEvent;
use wraft_host::{HostEngine, MachineHandle, MachineModule};
use wraft_proto::{MachineInfo, RequestError, Response};

mod admin;
mod entries;
mod halt;
mod reads;
mod snapshots;

use admin::new_handle_shutdown;
use entries::is_deterministic;

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
        /// Export the running machines at the cut, pausing applies until they are exported
        /// (a follower's choice, `snapshot.follower_export`), instead of shadow instances.
        live: bool,
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
        /// The leader that sent it, if known: asked last for a module the snapshot names (it
        /// is busy sending snapshots already).
        leader: Option<u64>,
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
    replicated_addresses: BTreeMap<u64, wraft_proto::PeerAddr>,
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
    /// Node-local history of applied results for watch subscribers; published to after every
    /// applied run of entries, never waited on.
    watch: crate::watch::WatchHub,
    /// The module store and the other members' (deploys by hash); `None` only in appliers
    /// built without a node around them, which cannot apply a by-hash deploy.
    modules: Option<Arc<crate::modules::Modules>>,
    /// The segments of the node's snapshot files (shared with the transfers): a new snapshot
    /// shares the unchanged ones instead of writing them again. `None`: every snapshot is
    /// written whole.
    segments: Option<wraft_snapshot::manifest::SegmentCache>,
    /// True while the node is a follower (the driver keeps it): a live export checks it at
    /// every chunk and is abandoned once the node may lead.
    following: Arc<std::sync::atomic::AtomicBool>,
}

type Outcome = (u64, Option<ClientTag>, Response);

impl Applier {
    /// Answer every client still waiting on an index at or below `applied` with `error(index)`:
    /// its entry was applied without an outcome for it (lost to another leader's, or covered
    /// by an installed snapshot), and it must not hang.
    fn fail_waiting_through_applied(&mut self, error: impl Fn(u64) -> RequestError) {
        let rest = self.waiting.split_off(&(self.applied + 1));
        for (i, reply) in std::mem::replace(&mut self.waiting, rest) {
            let _ = reply.send(Err(error(i)));
        }
    }

    /// A new applier that will publish its progress into `published`.
    pub fn new(
        node: u64,
        host: Arc<HostEngine>,
        storage: Arc<Storage>,
        addresses: AddressBook,
        published: Arc<Mutex<ApplyState>>,
        events: mpsc::UnboundedSender<SnapEvent>,
        watch: crate::watch::WatchHub,
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
            watch,
            modules: None,
            segments: None,
            following: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// Read whether the node is a follower from `following` (see [`ApplyMsg::Snapshot`]'s
    /// `live`); without it a live export is abandoned at its first chunk.
    pub fn set_following(&mut self, following: Arc<std::sync::atomic::AtomicBool>) {
        self.following = following;
    }

    /// Let new snapshots share unchanged segments with older ones, found through `segments`.
    pub fn set_segments(&mut self, segments: wraft_snapshot::manifest::SegmentCache) {
        self.segments = Some(segments);
    }

    /// Take by-hash deploys' modules from `modules` (and keep the running ones there).
    pub fn set_modules(&mut self, modules: Arc<crate::modules::Modules>) {
        self.modules = Some(modules);
    }

    /// Report the outcome digest after every `entries` applied entries (0: never).
    pub fn set_check_interval(&mut self, entries: u64) {
        self.check_interval = entries;
    }

    /// Log "recovery complete" once entries up to `commit` are applied.
    pub fn expect_replay(&mut self, commit: u64) {
        if commit > self.applied {
            tracing::info!(target: "wraft::snapshot", node = self.node, from = self.applied + 1,
                to = commit, entries = commit - self.applied, "replaying log entries above the snapshot");
            self.recovery_target = Some((commit, std::time::Instant::now()));
        } else {
            tracing::info!(target: "wraft::snapshot", node = self.node, applied = self.applied,
                "recovery complete (nothing to replay)");
        }
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
        self.watch.close();
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
                    tracing::info!(target: "wraft::snapshot", node = self.node, applied = self.applied,
                        replay_ms = t.elapsed().as_millis() as u64, "recovery complete");
                }
            }
            ApplyMsg::Snapshot { meta, live } => self.start_snapshot(meta, live).await,
            ApplyMsg::BaseChanged { id } => self.base_changed(id),
            ApplyMsg::Install { meta, leader } => self.install(meta, leader).await,
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
        self.metrics.machines(&machines);
        if let Ok(mut p) = self.published.lock() {
            p.applied_index = self.applied;
            p.machines = machines;
            p.halted = self.halted.as_ref().map(Halt::describe);
        }
    }
}
