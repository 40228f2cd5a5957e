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

use super::snap::{self, SnapEvent, migrate};
use crate::host::{self, CallError, HostEngine, MachineHandle, MachineModule, WasiProfile};
use crate::proto::{Command, MachineInfo, Reply, RequestError, Response};
use crate::snapshot::format::NodeSnapshotHeader;

/// Most client sessions remembered for deduplication.
pub const SESSIONS_MAX: usize = 100_000;
/// A session idle this long (in entry time) is forgotten, milliseconds.
pub const SESSION_EXPIRY_MS: u64 = 3_600_000;
/// Most entries sent to a guest in one `apply-batch` call.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;
/// Messages the applier takes from its queue before it serves ready reads and publishes.
const APPLY_DRAIN_MSGS_MAX: usize = 1024;
/// Longest the applier keeps taking queued messages before it serves ready reads.
const APPLY_DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_millis(2);
/// Times a call stopped by the node-local watchdog is retried before the
/// machine is marked unhealthy on this node.
pub const WATCHDOG_RETRIES_MAX: u32 = 3;

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
}

type Outcome = (u64, Option<ClientTag>, Response);

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
        }
    }

    /// Startup: restore every machine from snapshot `id` before the first
    /// entry is applied. Returns the snapshot's header.
    pub async fn recover(&mut self, id: SnapshotId) -> Result<NodeSnapshotHeader, String> {
        let t = std::time::Instant::now();
        tracing::info!(target: "wraft::snapshot", node = self.node, index = id.last_index,
            term = id.last_term, "loading snapshot");
        let restored = snap::restore_all(&self.host, &self.storage, id).await?;
        let header = restored.header.clone();
        self.swap_in(restored, id);
        tracing::info!(target: "wraft::snapshot", node = self.node, index = id.last_index,
            machines = header.machines.len(), duration_ms = t.elapsed().as_millis() as u64,
            "snapshot loaded");
        Ok(header)
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

    /// Replace the whole replicated state with `r` (snapshot `id`).
    fn swap_in(&mut self, r: snap::Restored, id: SnapshotId) {
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
    }

    fn cut(&self, meta: SnapshotMeta) -> snap::Cut {
        snap::Cut {
            meta,
            machines: self
                .machines
                .iter()
                .map(|(name, m)| snap::MachineCut {
                    name: name.clone(),
                    created_at: m.created_at,
                    versions: m
                        .versions
                        .iter()
                        .map(|v| snap::VersionCut {
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

    fn machine_cut(&self, name: &str) -> Option<snap::MachineCut> {
        let m = self.machines.get(name)?;
        Some(snap::MachineCut {
            name: name.to_owned(),
            created_at: m.created_at,
            versions: m
                .versions
                .iter()
                .map(|v| snap::VersionCut {
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
            let ev = match snap::create_snapshot(node, storage, base, cut).await {
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
        tracing::info!(target: "wraft::snapshot", node = self.node, index = meta.index,
            term = meta.term, "installing snapshot from the leader");
        match snap::restore_all(&self.host, &self.storage, id).await {
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
                tracing::info!(target: "wraft::snapshot", node = self.node, index = meta.index,
                    duration_ms = (secs * 1000.0) as u64, "snapshot installed");
                let _ = self.events.send(SnapEvent::Installed { meta });
            }
            Err(e) => {
                tracing::error!(target: "wraft::snapshot", node = self.node, index = meta.index,
                    error = %e, "snapshot install failed; the old machines keep running");
                let _ = self.events.send(SnapEvent::InstallFailed { meta });
            }
        }
    }

    /// Run until the driver drops its sender.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ApplyMsg>) {
        while let Some(msg) = rx.recv().await {
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
                self.apply_entries(entries).await;
                if let Some((target, t)) = self.recovery_target
                    && self.applied >= target
                {
                    self.recovery_target = None;
                    tracing::info!(target: "wraft::snapshot", node = self.node, applied = self.applied,
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

    async fn apply_entries(&mut self, entries: Vec<Entry>) {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
        // Consecutive commands for the same machine go to the guest in one batch.
        let mut batch: Vec<(u64, Option<ClientTag>, host::Entry)> = Vec::new();
        let mut batch_machine = String::new();
        // Outcomes up to here have their outputs stored in the session table.
        let mut completed = 0usize;
        for entry in entries {
            if entry.index <= self.applied {
                continue; // replayed after a restart of the driver side; already applied
            }
            let index = entry.index;
            match entry.kind {
                EntryKind::Noop | EntryKind::ConfChange(_) => {
                    self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                        .await;
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
                    self.last_timestamp_ms = self.last_timestamp_ms.max(timestamp_ms);
                    let ts = self.last_timestamp_ms;
                    let cmd: Command = match postcard::from_bytes(&data) {
                        Ok(c) => c,
                        Err(e) => {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await;
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
                                .await;
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
                                .await;
                            self.note_skipped(&cmd, index);
                            outcomes.push((index, None, resp));
                            continue;
                        }
                    }
                    match cmd {
                        Command::Apply { machine, command } => {
                            if batch_machine != machine || batch.len() >= APPLY_BATCH_ENTRIES_MAX {
                                self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                    .await;
                                batch_machine = machine;
                            }
                            batch.push((
                                index,
                                client,
                                host::Entry {
                                    index,
                                    term: entry.term,
                                    timestamp_ms: ts,
                                    command,
                                },
                            ));
                        }
                        other => {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await;
                            let resp = self.apply_admin(index, ts, other).await;
                            outcomes.push((index, client, resp));
                        }
                    }
                }
            }
        }
        self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
            .await;
        self.complete_sessions(&outcomes[completed..]);
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
        batch: &mut Vec<(u64, Option<ClientTag>, host::Entry)>,
        outcomes: &mut Vec<Outcome>,
    ) {
        if batch.is_empty() {
            return;
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
            return;
        };
        if !m.healthy || m.handle.is_none() {
            for (index, tag, _) in items {
                outcomes.push((
                    index,
                    tag,
                    Err(RequestError::MachineFault(format!(
                        "machine {machine:?} is unhealthy on this node"
                    ))),
                ));
            }
            return;
        }
        let mut rest: VecDeque<_> = items.into();
        while !rest.is_empty() {
            let entries: Vec<host::Entry> = rest.iter().map(|(_, _, e)| e.clone()).collect();
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
                        let r = self.apply_one(machine, entry).await;
                        outcomes.push((index, tag, r));
                    }
                }
            }
        }
    }

    /// Apply one entry, handling traps: a deterministic trap is the entry's
    /// recorded result and the instance is rebuilt without it; a watchdog stop
    /// is node-local and retried.
    async fn apply_one(&mut self, machine: &str, entry: host::Entry) -> Response {
        let index = entry.index;
        let mut watchdog_hits = 0;
        loop {
            let Some(handle) = self
                .machines
                .get(machine)
                .filter(|m| m.healthy)
                .and_then(|m| m.handle.as_ref())
            else {
                return Err(RequestError::MachineFault(format!(
                    "machine {machine:?} is unhealthy on this node"
                )));
            };
            match handle.apply(entry.clone()).await {
                Ok(r) => return app_response(index, r),
                Err(e @ CallError::Trap { .. }) => {
                    self.metrics.trap(machine);
                    tracing::warn!(target: "wraft::apply", machine, index, error = %e,
                        "guest trapped; recording the failure and rebuilding the instance");
                    if let Some(m) = self.machines.get_mut(machine) {
                        m.skipped.insert(index);
                    }
                    self.rebuild(machine, index + 1).await;
                    return Err(RequestError::MachineFault(e.to_string()));
                }
                // Anything else (watchdog, a stopped thread, an instance left
                // poisoned by a query) is local to this node: never a
                // replicated result. Rebuild and retry, a bounded number of times.
                Err(e) if watchdog_hits < WATCHDOG_RETRIES_MAX => {
                    watchdog_hits += 1;
                    tracing::warn!(target: "wraft::apply", machine, index, attempt = watchdog_hits, error = %e,
                        "node-local failure (not a replicated result); rebuilding and retrying");
                    self.rebuild(machine, index).await;
                }
                Err(e) => {
                    tracing::error!(target: "wraft::apply", machine, index, error = %e,
                        "guest keeps failing on this node; marking the machine unhealthy here");
                    if let Some(m) = self.machines.get_mut(machine) {
                        m.healthy = false;
                    }
                    return Err(RequestError::MachineFault(e.to_string()));
                }
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
            tokio::task::spawn_blocking(move || snap::open_base(&storage, base)).await
        };
        let result = match opened {
            Ok(Ok(base)) => {
                snap::build_instance(&self.storage, base.as_ref(), &cut, before, false).await
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("opening the base snapshot: {e}")),
        };
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        match result {
            Ok(handle) => {
                m.handle = Some(handle);
                m.healthy = true;
            }
            Err(e) => {
                tracing::error!(target: "wraft::apply", machine, error = %e,
                    "could not rebuild the machine; it is unhealthy on this node");
                m.healthy = false;
            }
        }
    }

    async fn apply_admin(&mut self, index: u64, timestamp_ms: u64, cmd: Command) -> Response {
        match cmd {
            Command::OpenSession => {
                self.sessions.open(index, timestamp_ms);
                Ok(Reply::SessionOpened { client_id: index })
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
                self.deploy(index, name, sha256, module, WasiProfile::None)
                    .await
            }
            Command::DeployWith {
                name,
                sha256,
                module,
                wasi,
            } => self.deploy(index, name, sha256, module, wasi).await,
        }
    }

    async fn deploy(
        &mut self,
        index: u64,
        name: String,
        sha256: [u8; 32],
        module: Vec<u8>,
        wasi: WasiProfile,
    ) -> Response {
        let r = self.deploy_inner(index, name, sha256, module, wasi).await;
        self.metrics
            .deploy(if r.is_ok() { "ok" } else { "refused" });
        r
    }

    async fn deploy_inner(
        &mut self,
        index: u64,
        name: String,
        sha256: [u8; 32],
        module: Vec<u8>,
        wasi: WasiProfile,
    ) -> Response {
        let host = self.host.clone();
        let bytes = Bytes::from(module);
        let b2 = bytes.clone();
        let loaded = tokio::task::spawn_blocking(move || host.load_with(&b2, wasi))
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))?;
        let module = match loaded {
            Ok(m) => m,
            Err(e) => {
                return Err(RequestError::Rejected(format!(
                    "module for {name:?} failed validation: {e}"
                )));
            }
        };
        if module.sha256() != sha256 {
            return Err(RequestError::Rejected(format!(
                "module for {name:?} does not match its declared SHA-256"
            )));
        }
        let new_handle = module
            .start()
            .map_err(|e| RequestError::Rejected(format!("cannot start {name:?}: {e}")))?;
        let summary = format!(
            "{name:?} runs {} {} (sha256 {}) from index {index}",
            module.info().name,
            module.info().version,
            &module.sha256_hex()[..16]
        );
        match self.machines.get_mut(&name) {
            None => {
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
                    },
                );
                Ok(Reply::Done {
                    message: format!("deployed {summary}"),
                })
            }
            Some(m) => {
                let Some(old) = m.handle.as_ref().filter(|_| m.healthy) else {
                    new_handle_shutdown(new_handle);
                    return Err(RequestError::MachineFault(format!(
                        "cannot upgrade {name:?}: the running version is unhealthy on this node"
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
                        Ok(Reply::Done {
                            message: format!("upgraded {summary}; state carried across"),
                        })
                    }
                    Err(e) => {
                        new_handle_shutdown(new_handle);
                        Err(RequestError::Rejected(format!(
                            "upgrade of {name:?} failed, the old version keeps running: {e}"
                        )))
                    }
                }
            }
        }
    }
}

fn new_handle_shutdown(h: MachineHandle) {
    tokio::task::spawn_blocking(move || h.shutdown());
}

/// A query's answer as of `applied`.
fn query_answer(applied: u64, r: host::EntryResult) -> Response {
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

fn app_response(index: u64, r: host::EntryResult) -> Response {
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
