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

use crate::host::{self, CallError, HostEngine, MachineHandle, MachineModule, WasiProfile};
use crate::proto::{Command, MachineInfo, Reply, RequestError, Response};

/// Most client sessions remembered for deduplication.
pub const SESSIONS_MAX: usize = 100_000;
/// A session idle this long (in entry time) is forgotten, milliseconds.
pub const SESSION_EXPIRY_MS: u64 = 3_600_000;
/// Most entries sent to a guest in one `apply-batch` call.
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;
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
    /// Serve a query once the applied index reaches `index`.
    Read {
        /// Required applied index (0 for stale reads).
        index: u64,
        /// Machine to ask.
        machine: String,
        /// Request bytes.
        request: Vec<u8>,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
}

/// What the applier publishes for `status` and `machines`.
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
}

struct Machine {
    handle: Option<MachineHandle>,
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
    reads: VecDeque<(u64, String, Vec<u8>, oneshot::Sender<Response>)>,
    published: Arc<Mutex<ApplyState>>,
    metrics: crate::metrics::ApplyMetrics,
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
    ) -> Self {
        Applier {
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
        }
    }

    /// Run until the driver drops its sender.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ApplyMsg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                ApplyMsg::Await { index, reply } => {
                    if index <= self.applied {
                        let _ = reply.send(Err(RequestError::Internal(format!(
                            "entry {index} was applied before its proposer registered"
                        ))));
                    } else {
                        self.waiting.insert(index, reply);
                    }
                }
                ApplyMsg::Entries(entries) => self.apply_entries(entries).await,
                ApplyMsg::Read {
                    index,
                    machine,
                    request,
                    reply,
                } => {
                    self.reads.push_back((index, machine, request, reply));
                }
            }
            self.serve_reads().await;
            self.publish();
        }
        for (_, m) in std::mem::take(&mut self.machines) {
            if let Some(h) = m.handle {
                tokio::task::spawn_blocking(move || h.shutdown());
            }
        }
    }

    fn publish(&self) {
        let machines = self
            .machines
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
            .collect();
        self.metrics.applied_index.set(self.applied as f64);
        if let Ok(mut p) = self.published.lock() {
            p.applied_index = self.applied;
            p.machines = machines;
        }
    }

    async fn serve_reads(&mut self) {
        // Reads are served in arrival order once their index is applied;
        // a read waiting for a later index does not hold up the others.
        let mut pending = VecDeque::new();
        while let Some((index, machine, request, reply)) = self.reads.pop_front() {
            if index > self.applied {
                pending.push_back((index, machine, request, reply));
                continue;
            }
            let answer = self.query(&machine, request).await;
            let _ = reply.send(answer);
        }
        self.reads = pending;
    }

    async fn query(&mut self, machine: &str, request: Vec<u8>) -> Response {
        let applied = self.applied;
        let Some(m) = self.machines.get(machine) else {
            return Err(RequestError::NoSuchMachine(machine.to_owned()));
        };
        let Some(h) = m.handle.as_ref().filter(|_| m.healthy) else {
            return Err(RequestError::MachineFault(format!(
                "machine {machine:?} is unhealthy on this node; see its log"
            )));
        };
        match h.query(request).await {
            Ok(Ok(output)) => Ok(Reply::Answer {
                index: applied,
                output,
            }),
            Ok(Err(e)) => Err(RequestError::App {
                code: e.code,
                message: e.message,
            }),
            Err(e) => {
                // A query is not replicated: a trap here only poisons this
                // node's instance, which is rebuilt before the next call.
                let poisoned = e.poisons();
                let msg = e.to_string();
                if poisoned {
                    self.rebuild(machine, self.applied + 1).await;
                }
                Err(RequestError::MachineFault(msg))
            }
        }
    }

    async fn apply_entries(&mut self, entries: Vec<Entry>) {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
        // Consecutive commands for the same machine go to the guest in one batch.
        let mut batch: Vec<(u64, Option<ClientTag>, host::Entry)> = Vec::new();
        let mut batch_machine = String::new();
        // Sessions are recorded as soon as an outcome is known, with its
        // entry's timestamp, so that the next command of the same client in
        // this same call is checked against it: what a replica decides must
        // not depend on how committed entries were grouped into calls.
        let mut recorded = 0usize;
        let mut entry_ts: BTreeMap<u64, u64> = BTreeMap::new();
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
                    // Deduplicate before anything reaches a guest.
                    if let Some(tag) = client {
                        entry_ts.insert(index, ts);
                        if batch
                            .iter()
                            .any(|(_, t, _)| t.is_some_and(|t| t.client_id == tag.client_id))
                        {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await;
                        }
                        self.record_sessions(&outcomes[recorded..], &entry_ts);
                        recorded = outcomes.len();
                        match self.sessions.check(tag) {
                            SessionCheck::Fresh => {}
                            SessionCheck::Duplicate(out) => {
                                self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                    .await;
                                self.note_skipped(&cmd, index);
                                let resp = decode_cached(&out);
                                outcomes.push((index, None, resp));
                                continue;
                            }
                            other => {
                                self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                    .await;
                                self.note_skipped(&cmd, index);
                                outcomes.push((
                                    index,
                                    None,
                                    Err(RequestError::Rejected(format!(
                                        "request {}/{} not applied: {other:?}",
                                        tag.client_id, tag.seq
                                    ))),
                                ));
                                continue;
                            }
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
                            let resp = self.apply_admin(index, other).await;
                            outcomes.push((index, client, resp));
                        }
                    }
                }
            }
        }
        self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
            .await;
        self.record_sessions(&outcomes[recorded..], &entry_ts);
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

    /// Record the outcomes of tagged commands in the session table, each at
    /// its own entry's timestamp.
    fn record_sessions(&mut self, outcomes: &[Outcome], entry_ts: &BTreeMap<u64, u64>) {
        for (index, tag, resp) in outcomes {
            if let Some(tag) = tag {
                let now_ms = entry_ts
                    .get(index)
                    .copied()
                    .unwrap_or(self.last_timestamp_ms);
                self.sessions.record(*tag, encode_cached(resp), now_ms);
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
        let result = replay_machine(&self.storage, machine, m, before).await;
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

    async fn apply_admin(&mut self, index: u64, cmd: Command) -> Response {
        match cmd {
            Command::Apply { .. } => Err(RequestError::Internal(
                "apply command routed to the admin path".into(),
            )),
            Command::SetAddress { id, addr } => {
                self.addresses.insert(id, addr);
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
        let loaded = tokio::task::spawn_blocking(move || host.load_with(&module, wasi))
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
                        versions: vec![Version {
                            deployed_at: index,
                            module,
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

/// Move state from `old` into `new` through `old`'s snapshot and `new`'s
/// restore, streaming chunk by chunk between the two machine threads.
async fn migrate(old: &MachineHandle, new: &MachineHandle, format: u32) -> Result<(), CallError> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let (snap, restore) = tokio::join!(old.snapshot(tx), new.restore(format, rx));
    snap?;
    restore
}

/// Replay `machine`'s history from the log up to (excluding) `before`.
async fn replay_machine(
    storage: &Storage,
    name: &str,
    m: &Machine,
    before: u64,
) -> Result<MachineHandle, String> {
    let first = &m.versions[0];
    let mut handle = first.module.start().map_err(|e| e.to_string())?;
    let mut version = 0usize;
    let mut next = first.deployed_at + 1;
    const PAGE_BYTES: u64 = 8 << 20;
    let mut batch: Vec<host::Entry> = Vec::new();
    let mut last_ts = 0u64;
    while next < before {
        let page = storage
            .log
            .entries(next, before, PAGE_BYTES)
            .map_err(|e| format!("reading the log for replay: {e}"))?;
        if page.is_empty() {
            break;
        }
        for le in page {
            next = le.index + 1;
            let kind: EntryKind = postcard::from_bytes(&le.payload)
                .map_err(|e| format!("log entry {} does not decode: {e}", le.index))?;
            let EntryKind::Command {
                timestamp_ms, data, ..
            } = kind
            else {
                continue;
            };
            last_ts = last_ts.max(timestamp_ms);
            let Ok(cmd) = postcard::from_bytes::<Command>(&data) else {
                continue;
            };
            match cmd {
                Command::Apply { machine, command } if machine == name => {
                    if m.skipped.contains(&le.index) {
                        continue;
                    }
                    batch.push(host::Entry {
                        index: le.index,
                        term: le.term,
                        timestamp_ms: last_ts,
                        command,
                    });
                    if batch.len() >= APPLY_BATCH_ENTRIES_MAX {
                        replay_batch(&handle, &mut batch).await?;
                    }
                }
                Command::Deploy { name: n, .. } | Command::DeployWith { name: n, .. }
                    if n == name =>
                {
                    if let Some(v) = m
                        .versions
                        .get(version + 1)
                        .filter(|v| v.deployed_at == le.index)
                    {
                        replay_batch(&handle, &mut batch).await?;
                        let fresh = v.module.start().map_err(|e| e.to_string())?;
                        let format = m.versions[version].module.info().snapshot_format;
                        migrate(&handle, &fresh, format)
                            .await
                            .map_err(|e| e.to_string())?;
                        let old = std::mem::replace(&mut handle, fresh);
                        tokio::task::spawn_blocking(move || old.shutdown());
                        version += 1;
                    }
                }
                _ => {}
            }
        }
    }
    replay_batch(&handle, &mut batch).await?;
    Ok(handle)
}

/// Re-apply a pending batch during a rebuild. Outputs were already recorded
/// the first time; only the state matters here.
async fn replay_batch(handle: &MachineHandle, batch: &mut Vec<host::Entry>) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    handle
        .apply_batch(std::mem::take(batch))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
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
