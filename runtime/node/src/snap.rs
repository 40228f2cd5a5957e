//! Snapshot creation, restore and machine rebuilds, off the consensus path.
//!
//! **Creation never pauses the live machines for the export.** At the cut
//! index the applier only clones its registry (module handles and bytes are
//! reference counted), the session table and the entry clock — a few
//! milliseconds — and goes on applying. A separate task then builds a
//! *shadow* instance of every machine on its own thread: restored from the
//! previous node snapshot (or fresh from the deploy entry) and replayed from
//! the log up to the cut index, exactly as a trap rebuild would. The shadow's
//! guest snapshot is streamed chunk by chunk straight into the snapshot file
//! and the shadow is dropped. The price is CPU (restore + replay + export on a
//! spare core) and, while a machine is exported, a second copy of its state in
//! memory; the log must reach back to the previous snapshot, which compaction
//! guarantees anyway (it keeps the fallback snapshot replayable).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use wraft_engine::{EntryKind, SessionTable, SnapshotMeta};
use wraft_storage::{SnapshotId, SnapshotInfo, Storage};

use super::apply::APPLY_BATCH_ENTRIES_MAX;
use super::divergence::{self, Digest};
use wraft_host::{self, ChunkSource, FnSink, HostEngine, MachineHandle, MachineModule};
use wraft_proto::Command;
use wraft_snapshot::format::{
    FormatError, FrameKind, MachineChunks, MachineRecord, NODE_SNAPSHOT_VERSION, NodeSnapshot,
    NodeSnapshotHeader, NodeSnapshotWriter,
};

/// A machine section of a node snapshot as the host's restore source.
///
/// The format crate knows nothing of the host, so it gives [`MachineChunks::next_chunk`];
/// the host's [`ChunkSource`] is implemented here, where both are known.
struct SectionSource(MachineChunks);

impl ChunkSource for SectionSource {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.0.next_chunk()
    }
}

/// Machine `idx`'s guest snapshot in `snap`, for `MachineHandle::restore`.
fn section_source(snap: &NodeSnapshot, idx: usize) -> Result<SectionSource, String> {
    snap.machine_chunks(idx)
        .map(SectionSource)
        .ok_or_else(|| "snapshot section missing".to_string())
}

/// What the snapshot machinery reports to the driver.
#[derive(Debug)]
pub enum SnapEvent {
    /// A local snapshot is durable.
    Created {
        /// Engine metadata of the snapshot.
        meta: SnapshotMeta,
        /// The file.
        info: SnapshotInfo,
    },
    /// A local snapshot attempt failed (logged); the engine re-hints later.
    Failed {
        /// The index that was attempted.
        index: u64,
        /// Why.
        error: String,
    },
    /// Follower: the machines now run from the snapshot.
    Installed {
        /// The installed snapshot.
        meta: SnapshotMeta,
    },
    /// Follower: the install failed; the old machines keep running.
    InstallFailed {
        /// The snapshot that could not be installed.
        meta: SnapshotMeta,
    },
    /// A node-local failure halted the applier (it re-derives its state by itself).
    ApplyHalted {
        /// What failed, for status.
        reason: String,
    },
    /// The applier applies again after a halt.
    ApplyResumed,
    /// This node's outcome digest after applied entry `index` (a leader proposes it as a
    /// divergence checkpoint).
    Checkpoint {
        /// The applied index.
        index: u64,
        /// The digest after it.
        digest: [u8; 32],
    },
    /// Follower: a snapshot file was received and published.
    Received {
        /// Leader that sent it.
        from: u64,
        /// Leader's term.
        term: u64,
        /// What it covers.
        meta: SnapshotMeta,
    },
    /// Leader: the follower holds `durable_offset` bytes of snapshot `index`.
    Progress {
        /// Follower.
        from: u64,
        /// Snapshot index.
        index: u64,
        /// Bytes durably held by the follower.
        durable_offset: u64,
    },
    /// Leader: a transfer ended (finished or failed).
    TransferDone {
        /// Follower.
        to: u64,
        /// Snapshot index.
        index: u64,
        /// `Ok` if the follower holds the whole file.
        ok: bool,
    },
}

/// One deployed version of a machine.
#[derive(Clone)]
pub struct VersionCut {
    /// Index of the deploy entry.
    pub deployed_at: u64,
    /// Compiled module.
    pub module: MachineModule,
    /// The component's bytes (kept so snapshots carry them).
    pub bytes: Bytes,
}

/// A machine's registry entry at a cut: enough to rebuild its state at any
/// index above the base snapshot.
#[derive(Clone)]
pub struct MachineCut {
    /// Machine name.
    pub name: String,
    /// Deploy index of this incarnation's first version.
    pub created_at: u64,
    /// Versions deployed, oldest first (never empty).
    pub versions: Vec<VersionCut>,
    /// Entries of this machine that never reached the guest (duplicates,
    /// traps): a replay skips them too.
    pub skipped: BTreeSet<u64>,
}

/// Everything a snapshot at `meta.index` holds besides guest state.
pub struct Cut {
    /// Index, term, membership.
    pub meta: SnapshotMeta,
    /// Registry.
    pub machines: Vec<MachineCut>,
    /// Client sessions.
    pub sessions: SessionTable,
    /// Entry clock.
    pub last_timestamp_ms: u64,
    /// Replicated addresses.
    pub addresses: BTreeMap<u64, SocketAddr>,
}

/// Build a fresh instance of `m` holding its state just before log index
/// `before`: restored from `base` if this incarnation existed there,
/// otherwise started fresh at its deploy; then the log is replayed
/// (skipping `m.skipped`, migrating across upgrades as they happened).
/// Cost: one guest restore plus a replay of `(base, before)`.
pub async fn build_instance(
    storage: &Arc<Storage>,
    base: Option<&NodeSnapshot>,
    m: &MachineCut,
    before: u64,
    background: bool,
    recorded: Option<&BTreeMap<u64, Digest>>,
) -> Result<MachineHandle, BuildError> {
    // A replayed entry must give what it gave when it was applied: a different output means
    // the base snapshot's restore was not faithful, or the guest is not deterministic.
    let compare = |results: Vec<(u64, wraft_host::EntryResult)>| -> Result<(), BuildError> {
        let Some(recorded) = recorded else {
            return Ok(());
        };
        for (index, r) in results {
            if let Some(was) = recorded.get(&index)
                && *was != divergence::entry_result_digest(&r)
            {
                return Err(BuildError::Diverged(format!(
                    "replaying entry {index} of {:?} gave another result than when it was \
                     applied (digest {} now, {} then): the machine's snapshot or restore is \
                     not faithful, or it is not deterministic",
                    m.name,
                    divergence::short(&divergence::entry_result_digest(&r)),
                    divergence::short(was)
                )));
            }
        }
        Ok(())
    };
    let start = |module: &MachineModule| {
        if background {
            module.start_background()
        } else {
            module.start()
        }
        .map_err(|e| e.to_string())
    };
    let from_base = base.filter(|b| m.created_at <= b.header.index);
    let (mut handle, mut version, from, mut last_ts) = match from_base {
        Some(b) => {
            let idx = b.machine_index(&m.name).ok_or_else(|| {
                format!(
                    "machine {:?} (deployed at {}) is missing from snapshot {}",
                    m.name, m.created_at, b.header.index
                )
            })?;
            let rec = &b.header.machines[idx];
            let v = m
                .versions
                .iter()
                .rposition(|v| v.deployed_at <= b.header.index)
                .ok_or_else(|| format!("no version of {:?} at snapshot index", m.name))?;
            if m.versions[v].module.sha256() != rec.module_sha256 {
                return Err(BuildError::Failed(format!(
                    "machine {:?}: snapshot {} holds module {}, the registry {}",
                    m.name,
                    b.header.index,
                    wraft_proto::digest::hex(&rec.module_sha256),
                    m.versions[v].module.sha256_hex()
                )));
            }
            let handle = start(&m.versions[v].module)?;
            let src = section_source(b, idx)?;
            handle
                .restore(rec.snapshot_format, src)
                .await
                .map_err(|e| format!("restoring {:?} from snapshot: {e}", m.name))?;
            (handle, v, b.header.index + 1, b.header.last_timestamp_ms)
        }
        None => {
            let handle = start(&m.versions[0].module)?;
            let (from, ts) =
                base.map_or((1, 0), |b| (b.header.index + 1, b.header.last_timestamp_ms));
            (handle, 0, from, ts)
        }
    };
    let mut next = from;
    let mut batch: Vec<wraft_host::Entry> = Vec::new();
    while next < before {
        // Reading and decoding a page is disk and CPU work: keep it off the
        // async workers, which also run the node's consensus driver.
        let page = {
            let storage = storage.clone();
            let name = m.name.clone();
            tokio::task::spawn_blocking(move || replay_page(&storage, &name, next, before))
                .await
                .map_err(|e| e.to_string())??
        };
        next = page.next;
        for item in page.items {
            last_ts = last_ts.max(item.timestamp_ms);
            if item.index <= m.created_at {
                continue;
            }
            match item.command {
                None => {}
                Some(ReplayCommand::Apply(command)) => {
                    if m.skipped.contains(&item.index) {
                        continue;
                    }
                    batch.push(wraft_host::Entry {
                        index: item.index,
                        term: item.term,
                        timestamp_ms: last_ts,
                        command,
                    });
                    if batch.len() >= APPLY_BATCH_ENTRIES_MAX {
                        compare(replay_batch(&handle, &mut batch).await?)?;
                    }
                }
                Some(ReplayCommand::Deploy) => {
                    if let Some(v) = m
                        .versions
                        .get(version + 1)
                        .filter(|v| v.deployed_at == item.index)
                    {
                        compare(replay_batch(&handle, &mut batch).await?)?;
                        let fresh = start(&v.module)?;
                        let format = m.versions[version].module.info().snapshot_format;
                        migrate(&handle, &fresh, format)
                            .await
                            .map_err(|e| e.to_string())?;
                        let old = std::mem::replace(&mut handle, fresh);
                        tokio::task::spawn_blocking(move || old.shutdown());
                        version += 1;
                    }
                }
            }
        }
    }
    compare(replay_batch(&handle, &mut batch).await?)?;
    Ok(handle)
}

/// What a replay needs from one log entry, for one machine.
struct ReplayItem {
    index: u64,
    term: u64,
    /// The entry's timestamp (0 for entries without one).
    timestamp_ms: u64,
    command: Option<ReplayCommand>,
}

enum ReplayCommand {
    /// A command for the machine being rebuilt.
    Apply(Vec<u8>),
    /// A deploy of the machine being rebuilt (an upgrade, if a version of
    /// the registry starts at this index).
    Deploy,
}

/// One page of a replay.
struct ReplayPage {
    items: Vec<ReplayItem>,
    /// The index after the page's last entry.
    next: u64,
}

/// Read and decode log entries `[next, before)` (up to ~8 MiB) for
/// rebuilding `machine`. Blocking: disk reads, checksums and decoding.
fn replay_page(
    storage: &Storage,
    machine: &str,
    next: u64,
    before: u64,
) -> Result<ReplayPage, String> {
    const PAGE_BYTES: u64 = 8 << 20;
    let page = storage
        .log
        .entries(next, before, PAGE_BYTES)
        .map_err(|e| format!("reading the log for replay: {e}"))?;
    let Some(last) = page.last() else {
        return Err(format!(
            "log entries {next}..{before} are missing (compacted?) for replaying {machine:?}"
        ));
    };
    let next = last.index + 1;
    let mut items = Vec::with_capacity(page.len());
    for le in page {
        let kind: EntryKind = postcard::from_bytes(&le.payload)
            .map_err(|e| format!("log entry {} does not decode: {e}", le.index))?;
        let EntryKind::Command {
            timestamp_ms, data, ..
        } = kind
        else {
            continue;
        };
        let command = match postcard::from_bytes::<Command>(&data) {
            Ok(Command::Apply {
                machine: m,
                command,
            }) if m == machine => Some(ReplayCommand::Apply(command)),
            Ok(
                Command::Deploy { name, .. }
                | Command::DeployWith { name, .. }
                | Command::DeployLimited { name, .. },
            ) if name == machine => Some(ReplayCommand::Deploy),
            _ => None,
        };
        items.push(ReplayItem {
            index: le.index,
            term: le.term,
            timestamp_ms,
            command,
        });
    }
    Ok(ReplayPage { items, next })
}

/// Move state from `old` into `new` through `old`'s snapshot and `new`'s
/// restore, streaming chunk by chunk between the two machine threads.
pub async fn migrate(
    old: &MachineHandle,
    new: &MachineHandle,
    format: u32,
) -> Result<(), wraft_host::CallError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (snap, restore) = tokio::join!(old.snapshot(tx), new.restore(format, rx));
    snap?;
    restore
}

/// Re-apply a pending batch during a rebuild; returns each entry's result (for comparing with
/// what it gave the first time).
pub async fn replay_batch(
    handle: &MachineHandle,
    batch: &mut Vec<wraft_host::Entry>,
) -> Result<Vec<(u64, wraft_host::EntryResult)>, String> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let indexes: Vec<u64> = batch.iter().map(|e| e.index).collect();
    handle
        .apply_batch(std::mem::take(batch))
        .await
        .map(|results| indexes.into_iter().zip(results).collect())
        .map_err(|e| e.to_string())
}

/// Why [`build_instance`] failed.
#[derive(Debug)]
pub enum BuildError {
    /// The replay gave another result than the first application: the replica diverged.
    Diverged(String),
    /// Anything else (reading the log, starting, restoring, a trap in the replay).
    Failed(String),
}

impl From<String> for BuildError {
    fn from(e: String) -> Self {
        BuildError::Failed(e)
    }
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Diverged(e) | BuildError::Failed(e) => f.write_str(e),
        }
    }
}

/// Open the base snapshot `id` (None if there is none).
pub fn open_base(
    storage: &Storage,
    id: Option<SnapshotId>,
) -> Result<Option<NodeSnapshot>, String> {
    id.map(|id| {
        NodeSnapshot::open(&storage.snapshots, id)
            .map_err(|e| format!("opening base snapshot {id}: {e}"))
    })
    .transpose()
}

/// Write a node snapshot of `cut` from shadow instances (see the module
/// docs). Runs on its own task; never touches the live machines.
pub async fn create_snapshot(
    node: u64,
    storage: Arc<Storage>,
    base: Option<SnapshotId>,
    cut: Cut,
) -> Result<SnapshotInfo, String> {
    let started = Instant::now();
    let index = cut.meta.index;
    tracing::info!(target: "wraft_node::snapshot", node, index, term = cut.meta.term,
        machines = cut.machines.len(), base = ?base.map(|b| b.last_index), "creating snapshot");
    let base_snap = {
        let storage = storage.clone();
        tokio::task::spawn_blocking(move || open_base(&storage, base))
            .await
            .map_err(|e| e.to_string())??
    };
    let header = NodeSnapshotHeader {
        format_version: NODE_SNAPSHOT_VERSION,
        index,
        term: cut.meta.term,
        membership: cut.meta.membership.clone(),
        last_timestamp_ms: cut.last_timestamp_ms,
        addresses: cut.addresses.iter().map(|(k, v)| (*k, *v)).collect(),
        machines: cut
            .machines
            .iter()
            .map(|m| {
                let v = &m.versions[m.versions.len() - 1];
                MachineRecord {
                    name: m.name.clone(),
                    kind: v.module.info().name.clone(),
                    version: v.module.info().version.clone(),
                    snapshot_format: v.module.info().snapshot_format,
                    module_sha256: v.module.sha256(),
                    module_bytes: v.bytes.len() as u64,
                    deployed_at: v.deployed_at,
                    created_at: m.created_at,
                    wasi: v.module.wasi_profile(),
                }
            })
            .collect(),
    };
    let writer: SharedWriter = {
        let storage = storage.clone();
        let header = header.clone();
        let modules: Vec<Bytes> = cut
            .machines
            .iter()
            .map(|m| m.versions[m.versions.len() - 1].bytes.clone())
            .collect();
        let sessions = cut.sessions.clone();
        let limits: Vec<_> = cut
            .machines
            .iter()
            .map(|m| m.versions[m.versions.len() - 1].module.limits())
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut w = NodeSnapshotWriter::begin(&storage.snapshots, &header)?;
            for (i, b) in modules.iter().enumerate() {
                w.module(i as u32, b)?;
            }
            w.sessions(&sessions)?;
            w.limits(&limits)?;
            Ok::<_, FormatError>(Arc::new(Mutex::new(Some(w))))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("writing snapshot {index}: {e}"))?
    };
    let mut guest_bytes = 0u64;
    for (i, m) in cut.machines.iter().enumerate() {
        let t = Instant::now();
        let shadow = build_instance(&storage, base_snap.as_ref(), m, index + 1, true, None)
            .await
            .map_err(|e| format!("rebuilding {:?} at {index} for the snapshot: {e}", m.name))?;
        let rebuilt = t.elapsed();
        let result = export(&writer, i as u32, &shadow).await;
        tokio::task::spawn_blocking(move || shadow.shutdown());
        let (chunks, bytes) = result.map_err(|e| format!("exporting {:?}: {e}", m.name))?;
        guest_bytes += bytes;
        tracing::debug!(target: "wraft_node::snapshot", node, index, machine = %m.name, chunks, bytes,
            rebuild_ms = rebuilt.as_millis() as u64, total_ms = t.elapsed().as_millis() as u64,
            "machine exported");
    }
    drop(base_snap);
    let n = cut.machines.len() as u32;
    let info = tokio::task::spawn_blocking(move || {
        // A machine thread may still hold its sink (an `Arc` clone) for a
        // moment after answering; take the writer out instead of unwrapping.
        let w = lock(&writer)?
            .take()
            .ok_or_else(|| "snapshot writer already finished".to_string())?;
        w.finish(n).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(target: "wraft_node::snapshot", node, index, file_bytes = info.file_len,
        guest_bytes, ratio = format!("{:.2}", info.file_len as f64 / guest_bytes.max(1) as f64),
        duration_ms = (secs * 1000.0) as u64, file = %info.path.display(), "created snapshot");
    Ok(info)
}

/// Stream `handle`'s guest snapshot into `writer` as machine section `idx`.
async fn export(
    writer: &SharedWriter,
    idx: u32,
    handle: &MachineHandle,
) -> Result<(u64, u64), String> {
    let begin = postcard::to_stdvec(&idx).map_err(|e| e.to_string())?;
    frame(writer, FrameKind::MachineBegin, &begin)?;
    let w = writer.clone();
    // The sink runs on the machine's thread: each chunk goes to the file as
    // the guest yields it.
    let sink = FnSink(move |chunk: Vec<u8>| frame(&w, FrameKind::MachineChunk, &chunk));
    let summary = handle.snapshot(sink).await.map_err(|e| e.to_string())?;
    let end = postcard::to_stdvec(&(summary.chunks, summary.bytes)).map_err(|e| e.to_string())?;
    frame(writer, FrameKind::MachineEnd, &end)?;
    Ok((summary.chunks, summary.bytes))
}

/// The file being written, shared with machine threads (`None` once sealed).
type SharedWriter = Arc<Mutex<Option<NodeSnapshotWriter>>>;

/// Lock the writer; fails if it was poisoned or already sealed.
fn lock(w: &SharedWriter) -> Result<std::sync::MutexGuard<'_, Option<NodeSnapshotWriter>>, String> {
    w.lock().map_err(|_| "snapshot writer poisoned".to_string())
}

fn frame(w: &SharedWriter, kind: FrameKind, payload: &[u8]) -> Result<(), String> {
    lock(w)?
        .as_mut()
        .ok_or_else(|| "snapshot writer already sealed".to_string())?
        .frame(kind, payload)
        .map_err(|e| e.to_string())
}

/// A registry restored from a snapshot: fresh instances holding its state.
pub struct Restored {
    /// Header of the snapshot.
    pub header: NodeSnapshotHeader,
    /// Machines, each with its running instance.
    pub machines: Vec<(MachineCut, MachineHandle)>,
    /// Sessions.
    pub sessions: SessionTable,
}

/// Restore every machine of snapshot `id` into fresh instances (loading the
/// modules it carries through `host`, compile cache first). Nothing running
/// is touched; the caller swaps the result in.
pub async fn restore_all(
    host: &Arc<HostEngine>,
    storage: &Arc<Storage>,
    id: SnapshotId,
) -> Result<Restored, String> {
    let snap = {
        let storage = storage.clone();
        tokio::task::spawn_blocking(move || NodeSnapshot::open(&storage.snapshots, id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let mut machines = Vec::with_capacity(snap.header.machines.len());
    for (i, rec) in snap.header.machines.iter().enumerate() {
        let bytes = snap.modules[i].clone();
        let h2 = host.clone();
        let b2 = bytes.clone();
        let wasi = rec.wasi;
        let module = tokio::task::spawn_blocking(move || h2.load_committed(&b2, wasi))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("loading module of {:?} from the snapshot: {e}", rec.name))?;
        let module = match snap.limits[i] {
            Some(l) => module.with_limits(l),
            None => module,
        };
        let handle = module.start().map_err(|e| e.to_string())?;
        let src = section_source(&snap, i)?;
        if let Err(e) = handle.restore(rec.snapshot_format, src).await {
            tokio::task::spawn_blocking(move || handle.shutdown());
            for (_, h) in machines.drain(..) {
                let h: MachineHandle = h;
                tokio::task::spawn_blocking(move || h.shutdown());
            }
            return Err(format!("restoring {:?}: {e}", rec.name));
        }
        machines.push((
            MachineCut {
                name: rec.name.clone(),
                created_at: rec.created_at,
                versions: vec![VersionCut {
                    deployed_at: rec.deployed_at,
                    module,
                    bytes,
                }],
                skipped: BTreeSet::new(),
            },
            handle,
        ));
    }
    Ok(Restored {
        header: snap.header.clone(),
        machines,
        sessions: snap.sessions.clone(),
    })
}
