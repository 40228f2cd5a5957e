//! The applier's snapshots: recovering from one at start, cutting one for creation, and
//! installing a received one.

use std::collections::BTreeSet;

use wraft_config::SnapshotExport;
use wraft_engine::SnapshotMeta;
use wraft_storage::SnapshotId;

use crate::divergence::OutcomeChain;
use crate::snapshot::{self, SnapEvent};
use wraft_snapshot::format::NodeSnapshotHeader;

use wraft_proto::RequestError;

use super::*;

impl Applier {
    /// Startup: restore every machine from snapshot `id` before the first
    /// entry is applied. Returns the snapshot's header.
    pub async fn recover(&mut self, id: SnapshotId) -> Result<NodeSnapshotHeader, String> {
        let t = std::time::Instant::now();
        tracing::info!(target: "wraft::snapshot", node = self.node, index = id.last_index,
            term = id.last_term, "loading snapshot");
        let restored =
            snapshot::restore_all(&self.host, &self.storage, self.modules.as_ref(), id, None)
                .await?;
        let header = restored.header.clone();
        self.swap_in(restored, id);
        // Watch history starts above the snapshot: replayed entries are published as applied.
        self.watch.reset(self.applied);
        // Whatever was stored before the restart and nothing references any more goes now.
        self.collect_modules();
        tracing::info!(target: "wraft::snapshot", node = self.node, index = id.last_index,
            machines = header.machines.len(), duration_ms = t.elapsed().as_millis() as u64,
            "snapshot loaded");
        Ok(header)
    }

    /// Replace the whole replicated state with `r` (snapshot `id`).
    pub(super) fn swap_in(&mut self, r: snapshot::Restored, id: SnapshotId) {
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
        self.replicated_addresses = r.header.addresses.iter().cloned().collect();
        for (id, addr) in &r.header.addresses {
            self.addresses.insert(*id, addr.clone());
        }
        self.applied = r.header.index;
        self.base = Some(id);
        // The other members may fetch these modules from here.
        if let Some(modules) = &self.modules {
            modules.keep_running(self.running_modules());
        }
        // Snapshots do not carry the outcome digest: in step again from the next checkpoint.
        self.chain = OutcomeChain::unknown();
    }

    pub(super) fn cut(&self, meta: SnapshotMeta) -> snapshot::Cut {
        snapshot::Cut {
            meta,
            machines: self
                .machines
                .iter()
                .map(|(name, m)| machine_cut(name, m))
                .collect(),
            sessions: self.sessions.clone(),
            last_timestamp_ms: self.last_timestamp_ms,
            addresses: self.replicated_addresses.clone(),
        }
    }

    pub(super) fn machine_cut(&self, name: &str) -> Option<snapshot::MachineCut> {
        self.machines.get(name).map(|m| machine_cut(name, m))
    }

    /// Start creating a snapshot of the state as of now (`meta.index` must be
    /// the applied index). With `live` (a follower), the running machines are exported here,
    /// and nothing else is applied until they are; otherwise they keep applying and the export
    /// runs from shadow instances on another task (see `crate::snapshot`).
    pub(super) async fn start_snapshot(&mut self, meta: SnapshotMeta, live: bool) {
        let asked = if live {
            SnapshotExport::Live
        } else {
            SnapshotExport::Shadow
        };
        if let Some(h) = &self.halted {
            // The live state may hold work past the failure point: never cut it.
            let _ = self.events.send(SnapEvent::Failed {
                index: meta.index,
                error: format!("applying is halted: {}", h.describe()),
                from: asked,
                refused: true,
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
                from: asked,
                refused: true,
            });
            return;
        }
        let cut = self.cut(meta.clone());
        let handles: Option<Vec<&MachineHandle>> =
            self.machines.values().map(|m| m.handle.as_ref()).collect();
        // The driver chose live while the node was a follower; if it has stopped being one
        // since, the shadow takes the same cut and nothing pauses.
        let following = self.following.load(std::sync::atomic::Ordering::Acquire);
        if let (true, true, Some(handles)) = (live, following, handles) {
            let index = meta.index;
            let source = snapshot::Source::Live {
                handles,
                following: self.following.clone(),
            };
            let exported = snapshot::export_snapshot(
                self.node,
                self.storage.clone(),
                self.modules.clone(),
                self.segments.clone(),
                source,
                cut,
            )
            .await;
            // Applies go on now; sealing the file (module pins, fdatasync, rename) does not
            // need the machines.
            let events = self.events.clone();
            let from = SnapshotExport::Live;
            match exported {
                Ok(exported) => {
                    tokio::spawn(async move {
                        let _ = events.send(match snapshot::finish_snapshot(exported).await {
                            Ok(info) => SnapEvent::Created { meta, info, from },
                            Err(error) => SnapEvent::Failed {
                                index,
                                error,
                                from,
                                refused: false,
                            },
                        });
                    });
                }
                Err(error) => {
                    let _ = events.send(SnapEvent::Failed {
                        index,
                        error,
                        from,
                        refused: false,
                    });
                }
            }
            return;
        }
        let storage = self.storage.clone();
        let base = self.base;
        let events = self.events.clone();
        let node = self.node;
        let modules = self.modules.clone();
        let segments = self.segments.clone();
        tokio::spawn(async move {
            let index = meta.index;
            let source = snapshot::Source::Shadow { base };
            let exported =
                snapshot::export_snapshot(node, storage, modules, segments, source, cut).await;
            let created = match exported {
                Ok(exported) => snapshot::finish_snapshot(exported).await,
                Err(error) => Err(error),
            };
            let ev = match created {
                Ok(info) => SnapEvent::Created {
                    meta,
                    info,
                    from: SnapshotExport::Shadow,
                },
                Err(error) => SnapEvent::Failed {
                    index,
                    error,
                    from: SnapshotExport::Shadow,
                    refused: false,
                },
            };
            let _ = events.send(ev);
        });
    }

    /// A newer durable snapshot exists: rebuilds start there now; bookkeeping
    /// for entries at or below it is dropped.
    pub(super) fn base_changed(&mut self, id: SnapshotId) {
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
        self.collect_modules();
    }

    /// Every version of every machine, by module hash.
    fn running_modules(&self) -> Vec<([u8; 32], bytes::Bytes)> {
        self.machines
            .values()
            .flat_map(|m| &m.versions)
            .map(|v| (v.module.sha256(), v.bytes.clone()))
            .collect()
    }

    /// Remove the stored modules that no machine runs and no retained entry names.
    fn collect_modules(&mut self) {
        if let Some(modules) = &self.modules {
            modules.collect(
                self.storage.log.first_index(),
                self.running_modules(),
                self.storage.snapshots.clone(),
            );
        }
    }

    /// Follower: restore the received snapshot into fresh instances, then
    /// swap them in at once. The consensus loop is not involved; client
    /// writes cannot arrive (the engine emits no applies while installing).
    pub(super) async fn install(&mut self, meta: SnapshotMeta, leader: Option<u64>) {
        let id = SnapshotId {
            last_index: meta.index,
            last_term: meta.term,
        };
        let t = std::time::Instant::now();
        tracing::info!(target: "wraft::snapshot", node = self.node, index = meta.index,
            term = meta.term, "installing snapshot from the leader");
        match snapshot::restore_all(&self.host, &self.storage, self.modules.as_ref(), id, leader)
            .await
        {
            Ok(r) => {
                self.swap_in(r, id);
                // The state jumped: the watch history is discontinuous, subscribers behind the
                // snapshot must resynchronise.
                self.watch.reset(self.applied);
                self.fail_waiting_through_applied(|i| {
                    RequestError::Timeout(format!(
                        "entry {i} was covered by an installed snapshot; outcome unknown, retrying with the same tag is safe"
                    ))
                });
                let secs = t.elapsed().as_secs_f64();
                self.metrics.install_seconds.record(secs);
                tracing::info!(target: "wraft::snapshot", node = self.node, index = meta.index,
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
                tracing::error!(target: "wraft::snapshot", node = self.node, index = meta.index,
                    error = %e, "snapshot install failed; the old machines keep running");
                let _ = self.events.send(SnapEvent::InstallFailed { meta });
            }
        }
    }
}

/// What a snapshot (or a rebuild) needs of one machine: its versions' modules and the entries
/// it skipped, all reference-counted.
fn machine_cut(name: &str, m: &Machine) -> snapshot::MachineCut {
    snapshot::MachineCut {
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
    }
}
