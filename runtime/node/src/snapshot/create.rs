//! Taking a node snapshot of the running machines, off the consensus path.
//!
//! At the cut index the applier clones its registry (module handles and bytes are reference
//! counted), the session table and the entry clock — a few milliseconds. Then, by [`Source`]:
//!
//! - **Live** (a follower): the applier exports each running machine itself and applies nothing
//!   until the last chunk is in the file; sealing the file ([`finish_snapshot`]) runs on a task of
//!   its own. No second apply of the log, no second copy of the state. The export gives up,
//!   before the next machine or chunk, once the driver says the node is no longer a follower.
//! - **Shadow** (the leader, whose clients wait on its applies): the applier goes on applying,
//!   and a task builds a *shadow* instance of every machine on its own thread, restored from the
//!   previous node snapshot (or fresh from the deploy entry) and replayed from the log up to the
//!   cut index, exactly as a trap rebuild would, then streams its guest snapshot into the file.
//!   The price is CPU (restore + replay + export) and, while a machine is exported, a second
//!   copy of its state in memory; the log must reach back to the previous snapshot, which
//!   compaction guarantees anyway (it keeps the fallback snapshot replayable).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use wraft_config::SnapshotExport;
use wraft_engine::{SessionTable, SnapshotMeta};
use wraft_host::{FnSink, MachineHandle};
use wraft_snapshot::format::{
    FormatError, MachineRecord, NODE_SNAPSHOT_VERSION, NodeSnapshotHeader, NodeSnapshotWriter,
};
use wraft_snapshot::manifest::{SegmentCache, shared_segments};
use wraft_storage::{SnapshotId, SnapshotInfo, Storage};

use super::restore::{MachineCut, build_instance, open_base};
use crate::modules::Modules;

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
    pub addresses: BTreeMap<u64, wraft_proto::PeerAddr>,
}

/// Where the machines' state in a snapshot comes from.
pub enum Source<'a> {
    /// Shadow instances, rebuilt from the snapshot `base` (or from the deploy entries) and the
    /// log up to the cut: the live machines keep applying meanwhile.
    Shadow {
        /// The rebuild base: the node's latest snapshot.
        base: Option<SnapshotId>,
    },
    /// The running machines, one handle per machine of the cut in registry order, which the
    /// caller does not use until this returns. Abandoned, before the next machine or chunk, once
    /// `following` is false (the node may be about to lead and must not be held up applying).
    Live {
        /// The live instances, in the cut's machine order.
        handles: Vec<&'a MachineHandle>,
        /// Kept true by the driver while the node is a follower.
        following: Arc<AtomicBool>,
    },
}

/// The error of a live export given up because the node stopped being a follower.
pub const ABANDONED: &str = "abandoned: this node is no longer a follower";

/// A snapshot whose machines are all in its file, not yet sealed ([`finish_snapshot`]).
pub struct Exported {
    node: u64,
    index: u64,
    started: Instant,
    from: SnapshotExport,
    writer: SharedWriter,
    machines: u32,
    guest_bytes: u64,
    held_again: Option<(Arc<Modules>, RunningModules)>,
}

/// Each machine's running module, by hash, in registry order ([`running_modules`]).
type RunningModules = Vec<([u8; 32], Bytes)>;

/// Write every machine of `cut` from `source` into a new snapshot file (see the module docs).
/// A shadow export never touches the live machines; a live one is awaited by the applier.
///
/// With `modules`, each machine's module is named by reference and first made durable in the
/// node's module store ([`Modules::hold`]); without (a node that has no module store), carried.
/// With `segments`, every frame an older snapshot holds is shared with it, not written again
/// ([`NodeSnapshotWriter::begin_sharing`]).
pub async fn export_snapshot(
    node: u64,
    storage: Arc<Storage>,
    modules: Option<Arc<Modules>>,
    segments: Option<SegmentCache>,
    source: Source<'_>,
    cut: Cut,
) -> Result<Exported, String> {
    let started = Instant::now();
    let index = cut.meta.index;
    let from = match &source {
        Source::Shadow { .. } => SnapshotExport::Shadow,
        Source::Live { .. } => SnapshotExport::Live,
    };
    let base_snap = match &source {
        Source::Shadow { base } => {
            tracing::info!(target: "wraft::snapshot", node, index, term = cut.meta.term,
                machines = cut.machines.len(), base = ?base.map(|b| b.last_index), from = from.name(), "creating snapshot");
            let (storage, base) = (storage.clone(), *base);
            tokio::task::spawn_blocking(move || open_base(&storage, base))
                .await
                .map_err(|e| e.to_string())??
        }
        Source::Live { handles, .. } => {
            tracing::info!(target: "wraft::snapshot", node, index, term = cut.meta.term,
                machines = cut.machines.len(), from = from.name(), "creating snapshot");
            if handles.len() != cut.machines.len() {
                return Err(format!(
                    "{} live machines for the {} of the cut",
                    handles.len(),
                    cut.machines.len()
                ));
            }
            None
        }
    };
    let header = NodeSnapshotHeader {
        format_version: NODE_SNAPSHOT_VERSION,
        index,
        term: cut.meta.term,
        membership: cut.meta.membership.clone(),
        last_timestamp_ms: cut.last_timestamp_ms,
        addresses: cut.addresses.clone().into_iter().collect(),
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
    // Modules by reference, unless no other member could send them: a snapshot of a cluster
    // of one carries its modules, as its only other copy is this node's module store.
    let membership = &cut.meta.membership;
    let by_ref: Option<Arc<Modules>> =
        modules.filter(|_| membership.voters.len() + membership.learners.len() > 1);
    let writer: SharedWriter = {
        let storage = storage.clone();
        let header = header.clone();
        let running = running_modules(&cut);
        let sessions = cut.sessions.clone();
        let limits: Vec<_> = cut
            .machines
            .iter()
            .map(|m| m.versions[m.versions.len() - 1].module.limits())
            .collect();
        let by_ref = by_ref.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(m) = &by_ref {
                m.hold(&running).map_err(|detail| FormatError::Io {
                    file: "module store".into(),
                    detail,
                })?;
            }
            let store = &storage.snapshots;
            let mut w = match &segments {
                Some(cache) => {
                    let shared = Arc::new(shared_segments(store, cache));
                    NodeSnapshotWriter::begin_sharing(store, &header, shared)?
                }
                None => NodeSnapshotWriter::begin(store, &header)?,
            };
            for (i, (_, b)) in running.iter().enumerate() {
                if by_ref.is_some() {
                    w.module_ref(i as u32)?;
                } else {
                    w.module(i as u32, b)?;
                }
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
        if let Source::Live { handles, following } = &source {
            if !following.load(Ordering::Acquire) {
                return Err(ABANDONED.into());
            }
            let (chunks, bytes) = match export(&writer, i as u32, handles[i], Some(following)).await
            {
                Ok(done) => done,
                // The sink's refusal, whatever the host wrapped it in.
                Err(_) if !following.load(Ordering::Acquire) => return Err(ABANDONED.into()),
                Err(e) => return Err(format!("exporting {:?} live: {e}", m.name)),
            };
            guest_bytes += bytes;
            tracing::debug!(target: "wraft::snapshot", node, index, machine = %m.name, chunks, bytes,
                total_ms = t.elapsed().as_millis() as u64, "machine exported live");
            continue;
        }
        let shadow = build_instance(&storage, base_snap.as_ref(), m, index + 1, true, None)
            .await
            .map_err(|e| format!("rebuilding {:?} at {index} for the snapshot: {e}", m.name))?;
        let rebuilt = t.elapsed();
        let result = export(&writer, i as u32, &shadow, None).await;
        tokio::task::spawn_blocking(move || shadow.shutdown());
        let (chunks, bytes) = result.map_err(|e| format!("exporting {:?}: {e}", m.name))?;
        guest_bytes += bytes;
        tracing::debug!(target: "wraft::snapshot", node, index, machine = %m.name, chunks, bytes,
            rebuild_ms = rebuilt.as_millis() as u64, total_ms = t.elapsed().as_millis() as u64,
            "machine exported");
    }
    drop(base_snap);
    Ok(Exported {
        node,
        index,
        started,
        from,
        writer,
        machines: cut.machines.len() as u32,
        guest_bytes,
        held_again: by_ref.map(|m| (m, running_modules(&cut))),
    })
}

/// Seal `exported`'s file: store the modules it names again, then write its index and trailer
/// and make it durable under its final name.
pub async fn finish_snapshot(exported: Exported) -> Result<SnapshotInfo, String> {
    let Exported {
        node,
        index,
        started,
        from,
        writer,
        machines: n,
        guest_bytes,
        held_again,
    } = exported;
    let info = tokio::task::spawn_blocking(move || {
        // Pinned and stored again just before publishing: an export may outlast the first
        // pin, and a collection meanwhile may have removed a module no machine runs any more.
        if let Some((m, running)) = &held_again {
            m.hold(running)?;
        }
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
    // Sizes only, no quotient: `guest_bytes` is what the guests' exports yielded, already
    // compressed by a guest that compresses (the host never sees the raw state), and the file
    // adds the modules and sessions, so file / guest is no compression ratio.
    tracing::info!(target: "wraft::snapshot", node, index, machines = n, file_bytes = info.file_len,
        shared_bytes = info.shared_bytes, guest_bytes, duration_ms = (secs * 1000.0) as u64, from = from.name(), file = %info.path.display(),
        "created snapshot");
    Ok(info)
}

/// Stream `handle`'s guest snapshot into `writer` as machine section `idx`; with `following`,
/// give up at the first chunk after it turns false.
async fn export(
    writer: &SharedWriter,
    idx: u32,
    handle: &MachineHandle,
    following: Option<&Arc<AtomicBool>>,
) -> Result<(u64, u64), String> {
    with_writer(writer, |w| w.machine_begin(idx))?;
    let w = writer.clone();
    let following = following.cloned();
    // The sink runs on the machine's thread: each chunk goes to the file as
    // the guest yields it.
    let sink = FnSink(move |chunk: Vec<u8>| {
        if following
            .as_ref()
            .is_some_and(|f| !f.load(Ordering::Acquire))
        {
            return Err(ABANDONED.into());
        }
        with_writer(&w, |w| w.machine_chunk(&chunk))
    });
    let summary = handle.snapshot(sink).await.map_err(|e| e.to_string())?;
    with_writer(writer, |w| w.machine_end(summary.chunks, summary.bytes))?;
    Ok((summary.chunks, summary.bytes))
}

/// The file being written, shared with machine threads (`None` once sealed).
type SharedWriter = Arc<Mutex<Option<NodeSnapshotWriter>>>;

/// Lock the writer; fails if it was poisoned or already sealed.
fn lock(w: &SharedWriter) -> Result<std::sync::MutexGuard<'_, Option<NodeSnapshotWriter>>, String> {
    w.lock().map_err(|_| "snapshot writer poisoned".to_string())
}

/// Write to the shared writer (one frame, under its lock).
fn with_writer(
    w: &SharedWriter,
    write: impl FnOnce(&mut NodeSnapshotWriter) -> Result<(), FormatError>,
) -> Result<(), String> {
    let mut guard = lock(w)?;
    let writer = guard
        .as_mut()
        .ok_or_else(|| "snapshot writer already sealed".to_string())?;
    write(writer).map_err(|e| e.to_string())
}

/// Each machine's running module, by hash, in registry order.
fn running_modules(cut: &Cut) -> RunningModules {
    cut.machines
        .iter()
        .map(|m| {
            let v = &m.versions[m.versions.len() - 1];
            (v.module.sha256(), v.bytes.clone())
        })
        .collect()
}
