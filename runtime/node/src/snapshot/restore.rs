//! Instances from a node snapshot: restoring every machine of one (recovery, installs) and
//! rebuilding one machine at any index above it by replaying the log (trap rebuilds,
//! re-derivation after a halt, and the shadow instances a creation exports).
//!
//! Nothing running is touched here: every function builds fresh instances and the caller
//! swaps them in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use wraft_engine::{EntryKind, SessionTable};
use wraft_host::{self, ChunkSource, HostEngine, MachineHandle, MachineModule};
use wraft_proto::Command;
use wraft_snapshot::format::{MachineChunks, NodeSnapshot, NodeSnapshotHeader};
use wraft_storage::{SnapshotId, Storage};

use crate::divergence::{self, Digest};
use crate::limits::APPLY_BATCH_ENTRIES_MAX;
use crate::modules::Modules;

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
                        command: command.into(),
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
                | Command::DeployLimited { name, .. }
                | Command::DeployByHash { name, .. },
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
/// modules through `host`, compile cache first). A module the snapshot carries is taken from
/// it; one it names by reference comes from `modules` (this node's store, or fetched by hash
/// from the members of the snapshot's membership and address book, `last` asked last).
/// Nothing running is touched; the caller swaps the result in.
pub async fn restore_all(
    host: &Arc<HostEngine>,
    storage: &Arc<Storage>,
    modules: Option<&Arc<Modules>>,
    id: SnapshotId,
    last: Option<u64>,
) -> Result<Restored, String> {
    let snap = {
        let storage = storage.clone();
        tokio::task::spawn_blocking(move || NodeSnapshot::open(&storage.snapshots, id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let members: BTreeSet<u64> = snap
        .header
        .membership
        .voters
        .iter()
        .chain(&snap.header.membership.learners)
        .copied()
        .chain(snap.header.addresses.iter().map(|(id, _)| *id))
        .collect();
    let members: Vec<u64> = members.into_iter().collect();
    if let Some(m) = modules
        && snap.modules.iter().any(Option::is_none)
    {
        m.learn_addresses(&snap.header.addresses);
    }
    // Every module first (a fetch may take seconds), then the instances.
    let mut bytes_of = Vec::with_capacity(snap.header.machines.len());
    for (i, rec) in snap.header.machines.iter().enumerate() {
        bytes_of.push(match (&snap.modules[i], modules) {
            (Some(carried), _) => carried.clone(),
            (None, Some(modules)) => Bytes::from(
                modules
                    .obtain(rec.module_sha256, rec.module_bytes, &members, last)
                    .await
                    .map_err(|e| format!("the module of {:?}: {e}", rec.name))?,
            ),
            (None, None) => {
                return Err(format!(
                    "the snapshot names the module of {:?} by hash and this node has no module store",
                    rec.name
                ));
            }
        });
    }
    let mut machines = Vec::with_capacity(snap.header.machines.len());
    for ((i, rec), bytes) in snap.header.machines.iter().enumerate().zip(bytes_of) {
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
