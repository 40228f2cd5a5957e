//! The driver's side of snapshots: starting creation, sending to and receiving from peers,
//! installing, and compacting the log behind them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use wraft_config::SnapshotExport;
use wraft_engine::{Event, Membership, Role, SnapshotMeta};
use wraft_storage::{SnapshotId, SnapshotPin, Storage, WriteBatch};

use crate::apply::ApplyMsg;
use crate::snapshot::SnapEvent;
use wraft_proto::Command;
use wraft_snapshot::pacing::ReofferBackoff;
use wraft_snapshot::{
    BandwidthLimiter, IncomingSlots, SendOutcome, TransferConfig, TransferError,
    receive_snapshot_from, send_snapshot,
};

use crate::driver::{Driver, PendingProposal};

/// The driver's snapshot bookkeeping.
pub(crate) struct SnapState {
    pub(crate) tx: mpsc::UnboundedSender<SnapEvent>,
    /// Index of the local snapshot being created, if any (hints coalesce).
    pub(crate) creating: Option<u64>,
    /// Outgoing transfers: peer -> snapshot index (pins the log above it).
    pub(crate) sending: HashMap<u64, u64>,
    /// The received snapshot being installed, pinned until the install ends: a received
    /// snapshot is not the node's own (it does not count toward retention) until it is
    /// installed and accepted, so a newer offer must not delete it meanwhile.
    pub(crate) installing: Option<SnapshotPin>,
    pub(crate) xfer_cfg: TransferConfig,
    pub(crate) limiter: Arc<BandwidthLimiter>,
    /// Per follower, how long to wait before the next offer after offers that got nowhere.
    /// Kept by the transfer tasks, which wait before they report the attempt done (the engine
    /// offers again on the next tick after that, and `sending` keeps other offers out
    /// meanwhile). One entry per follower ever sent to: bounded by the membership.
    pub(crate) reoffer: Arc<Mutex<HashMap<u64, ReofferBackoff>>>,
    pub(crate) retain_count: u64,
    /// `snapshot.follower_export`.
    pub(crate) follower_export: SnapshotExport,
    /// True while this node is a follower; read by the applier's live exports.
    pub(crate) following: Arc<std::sync::atomic::AtomicBool>,
}

/// After an attempt to send to a follower: `None` if the next offer may go out at once (the
/// attempt `completed` — the follower has the snapshot — or `moved` the follower's durable
/// offset), otherwise the wait before it, one backoff step longer than the last.
pub(crate) fn wait_before_reoffer(
    backoff: &mut ReofferBackoff,
    completed: bool,
    moved: bool,
) -> Option<Duration> {
    if completed || moved {
        backoff.reset();
        None
    } else {
        Some(backoff.missed())
    }
}

/// Accept inbound bulk streams (snapshot offers) and receive each on its own
/// task; a published file becomes `SnapEvent::Received` for the driver.
pub(crate) async fn serve_bulk(
    node: u64,
    mut streams: mpsc::Receiver<wraft_transport::BulkStream>,
    storage: Arc<Storage>,
    cfg: TransferConfig,
    slots: Arc<IncomingSlots>,
    members: Arc<dyn wraft_snapshot::SnapshotPeers>,
    events: mpsc::UnboundedSender<SnapEvent>,
) {
    while let Some(stream) = streams.recv().await {
        let (storage, cfg, slots, events, members) = (
            storage.clone(),
            cfg.clone(),
            slots.clone(),
            events.clone(),
            members.clone(),
        );
        tokio::spawn(async move {
            let peer = stream.peer;
            let on_durable = |offset: u64| {
                tracing::info!(target: "wraft::snapshot", node, peer, durable_offset = offset,
                    "incoming snapshot durable up to offset");
            };
            let received = receive_snapshot_from(
                stream,
                &storage.snapshots,
                &cfg,
                &slots,
                Some(members),
                on_durable,
            )
            .await;
            match received {
                Ok(r) => {
                    let meta = engine_meta(&r.info.meta);
                    tracing::info!(target: "wraft::snapshot", node, from = r.from, index = meta.index,
                        resumed_from = r.resumed_from, bytes = r.bytes_received, already_had = r.already_had,
                        bytes_reused = r.bytes_reused, from_members = ?r.bytes_from_members,
                        duration_ms = r.duration.as_millis() as u64, "snapshot received");
                    let _ = events.send(SnapEvent::Received {
                        from: r.from,
                        term: r.leader_term,
                        meta,
                    });
                }
                // Declined offers and streams handed to a newer offer are logged once, by the
                // receive itself (and the leader backs off after a decline).
                Err(e @ (TransferError::Busy { .. } | TransferError::TakenOver { .. })) => {
                    tracing::debug!(target: "wraft::snapshot", node, peer, error = %e,
                        "incoming snapshot transfer ended early")
                }
                Err(e) => {
                    tracing::warn!(target: "wraft::snapshot", node, peer, error = %e,
                        "incoming snapshot transfer ended without a complete file; the next offer resumes")
                }
            }
        });
    }
}

/// Engine metadata of a stored snapshot.
pub(crate) fn engine_meta(m: &wraft_storage::SnapshotMeta) -> SnapshotMeta {
    SnapshotMeta {
        index: m.id.last_index,
        term: m.id.last_term,
        membership: Membership {
            voters: m.membership.voters.iter().copied().collect(),
            learners: m.membership.learners.iter().copied().collect(),
        },
    }
}

pub(crate) fn snapshot_id(meta: &SnapshotMeta) -> SnapshotId {
    SnapshotId {
        last_index: meta.index,
        last_term: meta.term,
    }
}

impl Driver {
    /// Start a local snapshot at `applied_index` (the engine's applied index
    /// right now: every entry up to it is already queued for the applier,
    /// and the snapshot request queues behind them).
    pub(crate) fn start_snapshot(&mut self, applied_index: u64) -> Result<(), String> {
        // A leader never pauses its applies (its clients wait on them); a follower may.
        let live = self.snap.follower_export == SnapshotExport::Live
            && self.engine.role() == Role::Follower;
        self.start_snapshot_from(applied_index, live)
    }

    /// [`Self::start_snapshot`], from the live machines or from shadows as `live` says.
    fn start_snapshot_from(&mut self, applied_index: u64, live: bool) -> Result<(), String> {
        if let Some(i) = self.snap.creating {
            return Err(format!("joined the snapshot being created at index {i}"));
        }
        if self.engine.is_installing_snapshot() {
            return Err("a snapshot from the leader is being installed".into());
        }
        let latest = self.engine.snapshot().index;
        if applied_index <= latest {
            return Err(format!(
                "nothing applied since the latest snapshot (index {latest})"
            ));
        }
        let meta = self
            .engine
            .snapshot_meta_at(applied_index)
            .ok_or_else(|| format!("index {applied_index} is not in the log"))?;
        self.snap.creating = Some(applied_index);
        self.metrics.snapshot_create_started = Some(std::time::Instant::now());
        let _ = self.apply_tx.send(ApplyMsg::Snapshot { meta, live });
        Ok(())
    }

    /// Name the segments of snapshot `id`'s file now, on a blocking thread, so that the first
    /// incremental transfer it takes part in does not wait for its hashing (see
    /// [`wraft_snapshot::manifest::remember_segments`]). A failure only costs that wait later.
    fn remember_segments(&self, id: SnapshotId) {
        let (store, cache) = (
            self.storage.snapshots.clone(),
            self.snap.xfer_cfg.segments.clone(),
        );
        let node = self.id;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = wraft_snapshot::manifest::remember_segments(&store, id, &cache) {
                tracing::debug!(target: "wraft::snapshot", node, %id, error = %e,
                    "could not name the segments of a new snapshot ahead of a transfer");
            }
        });
    }

    pub(crate) fn on_snap_event(&mut self, ev: SnapEvent) {
        match ev {
            SnapEvent::Created { meta, info, from } => {
                self.snap.creating = None;
                self.metrics.snapshot_created("ok", from);
                if let Some(t) = self.metrics.snapshot_create_started.take() {
                    self.metrics.snapshot_create_seconds.record(t.elapsed());
                }
                self.metrics.snapshot_bytes.set(info.file_len as f64);
                self.metrics.snapshot_index.set(meta.index as f64);
                self.remember_segments(info.id());
                let _ = self.apply_tx.send(ApplyMsg::BaseChanged {
                    id: snapshot_id(&meta),
                });
                self.step(Event::SnapshotCreated { meta });
            }
            SnapEvent::Failed {
                index,
                error,
                from,
                refused,
            } => {
                self.snap.creating = None;
                self.metrics.snapshot_created("failed", from);
                self.metrics.snapshot_create_started = None;
                self.step(Event::SnapshotFailed);
                if from != SnapshotExport::Live || refused {
                    tracing::warn!(target: "wraft::snapshot", node = self.id, index, %error, from = from.name(),
                        "snapshot failed; it is retried at the next threshold crossing");
                    return;
                }
                // A live export given up (the node may lead) or failed: take the snapshot from
                // shadows now, which pause nothing. A live export that failed for any other
                // reason (a guest fault in its snapshot code, a disk error) is not tried again
                // by this process: the guest's export may have left the live instance faulted
                // or grown, and a shadow keeps that off the apply path.
                if error != crate::snapshot::ABANDONED {
                    self.snap.follower_export = SnapshotExport::Shadow;
                }
                tracing::warn!(target: "wraft::snapshot", node = self.id, index, %error, from = from.name(),
                    live_again = self.snap.follower_export == SnapshotExport::Live,
                    "snapshot failed; taking it from shadow instances instead");
                let applied = self.engine.applied_index();
                if let Err(e) = self.start_snapshot_from(applied, false) {
                    tracing::debug!(target: "wraft::snapshot", node = self.id, "shadow snapshot not taken: {e}");
                }
            }
            SnapEvent::Installed { meta } => {
                // The installed snapshot is now the node's own: it counts toward retention
                // (received snapshots the engine ignored never do).
                self.end_install(Some(snapshot_id(&meta)));
                self.metrics.snapshot_installed("ok");
                self.metrics.snapshot_index.set(meta.index as f64);
                self.step(Event::SnapshotInstalled { meta });
            }
            SnapEvent::InstallFailed { meta } => {
                self.end_install(None);
                self.metrics.snapshot_installed("failed");
                self.step(Event::SnapshotInstallFailed { meta });
            }
            SnapEvent::Received { from, term, meta } => {
                self.remember_segments(snapshot_id(&meta));
                self.step(Event::SnapshotReceived { from, term, meta });
            }
            SnapEvent::Progress {
                from,
                index,
                durable_offset,
            } => self.step(Event::SnapshotProgress {
                from,
                index,
                durable_offset,
            }),
            SnapEvent::ApplyHalted { reason } => {
                self.apply_halted = true;
                tracing::warn!(target: "wraft::apply", node = self.id, %reason, "applier halted");
                self.hand_off_leadership();
            }
            SnapEvent::ApplyResumed => self.apply_halted = false,
            SnapEvent::Checkpoint { index, digest } => {
                // Only a leader proposes, each index once; followers compare when it commits.
                if self.engine.role() == Role::Leader
                    && !self.apply_halted
                    && index > self.last_checkpoint
                {
                    self.last_checkpoint = index;
                    let checkpoint = Command::Checkpoint { index, digest };
                    self.propose_command(None, &checkpoint, PendingProposal::Quiet);
                }
            }
            SnapEvent::TransferDone { to, index, ok } => {
                if self.snap.sending.get(&to) == Some(&index) {
                    self.snap.sending.remove(&to);
                }
                if !ok {
                    self.step(Event::SnapshotTransferFailed { to, index });
                }
            }
        }
    }

    /// Release the pin on the snapshot an install used, accepting it first as the node's own
    /// if the install succeeded. Off the driver: both may run retention, which deletes files.
    pub(crate) fn end_install(&mut self, accept: Option<SnapshotId>) {
        let (snapshots, pin, node) = (
            self.storage.snapshots.clone(),
            self.snap.installing.take(),
            self.id,
        );
        tokio::task::spawn_blocking(move || {
            if let Some(id) = accept
                && let Err(e) = snapshots.accept(id)
            {
                tracing::warn!(target: "wraft::snapshot", node, %id, error = %e,
                    "installed snapshot missing from the store; retention cannot count it");
            }
            drop(pin);
        });
    }

    /// Leader: stream snapshot `meta` to `to` on a bulk stream of its own.
    /// The offset the engine remembers is only a hint: the follower answers
    /// the offer with what it durably holds.
    ///
    /// The snapshot is pinned here, at the offer, before anything is awaited: opening the
    /// stream takes a round trip (or a connect timeout to a peer that is down), and a snapshot
    /// created meanwhile would otherwise let retention delete the offered file first. The pin
    /// lives in the transfer's task and is released when the transfer ends, however it ends.
    pub(crate) fn send_snapshot(&mut self, to: u64, meta: SnapshotMeta, offset: u64) {
        if self.snap.sending.contains_key(&to) {
            return; // the running transfer reports; its watchdog bounds it
        }
        let id = snapshot_id(&meta);
        let offered = match self.storage.snapshots.pin(id) {
            Ok(pin) => pin,
            Err(e) => {
                tracing::warn!(target: "wraft::snapshot", node = self.id, peer = to,
                    index = meta.index, error = %e,
                    "the snapshot to send is not in the store; the engine offers again");
                self.step(Event::SnapshotTransferFailed {
                    to,
                    index: meta.index,
                });
                return;
            }
        };
        self.snap.sending.insert(to, meta.index);
        let (transport, storage, cfg, limiter, tx, reoffer) = (
            self.transport.clone(),
            self.storage.clone(),
            self.snap.xfer_cfg.clone(),
            self.snap.limiter.clone(),
            self.snap.tx.clone(),
            self.snap.reoffer.clone(),
        );
        let term = self.engine.term();
        let node = self.id;
        tracing::info!(target: "wraft::snapshot", node, peer = to, index = meta.index, offset,
            "sending snapshot");
        tokio::spawn(async move {
            let index = id.last_index;
            // The follower acknowledged bytes durable during this attempt.
            let moved = AtomicBool::new(false);
            let outcome = match transport.open_bulk(to).await {
                Err(e) => {
                    // Releasing the pin may run retention (file deletes): off the workers.
                    let _ = tokio::task::spawn_blocking(move || drop(offered)).await;
                    Err(format!("cannot open a bulk stream for the snapshot: {e}"))
                }
                Ok(stream) => {
                    let progress = tx.clone();
                    let r = send_snapshot(
                        stream,
                        &storage.snapshots,
                        offered,
                        term,
                        &cfg,
                        &limiter,
                        |d| {
                            moved.store(true, Ordering::Relaxed);
                            let _ = progress.send(SnapEvent::Progress {
                                from: to,
                                index,
                                durable_offset: d,
                            });
                        },
                    )
                    .await;
                    if let Err(TransferError::PeerSilent { .. }) = &r {
                        // A follower that died leaves the bulk connection open until the QUIC
                        // idle timeout: the next offer must not wait on it.
                        transport.close_bulk(to);
                    }
                    r.map_err(|e| e.to_string())
                }
            };
            let completed = matches!(
                outcome,
                Ok(ref rep) if matches!(rep.outcome, SendOutcome::Completed | SendOutcome::AlreadyHave)
            );
            let wait = {
                let mut all = reoffer.lock().unwrap_or_else(|p| p.into_inner());
                let backoff = all.entry(to).or_default();
                wait_before_reoffer(backoff, completed, moved.load(Ordering::Relaxed))
            };
            let retry_in_ms = wait.map_or(0, |d| d.as_millis() as u64);
            // One line per attempt, and attempts that get nowhere come one backoff step apart.
            match &outcome {
                Ok(rep) => match rep.outcome {
                    SendOutcome::Busy(reason) => {
                        tracing::info!(target: "wraft::snapshot", node, peer = to, index, %reason, retry_in_ms,
                            "follower declined the snapshot offer for now; offering again after the wait")
                    }
                    _ => {
                        tracing::info!(target: "wraft::snapshot", node, peer = to, index,
                            outcome = ?rep.outcome, resumed_from = rep.resumed_from,
                            bytes_sent = rep.bytes_sent, chunks_resent = rep.chunks_resent,
                            duration_ms = rep.duration.as_millis() as u64, "snapshot transfer finished")
                    }
                },
                Err(error) => {
                    tracing::warn!(target: "wraft::snapshot", node, peer = to, index, %error, retry_in_ms,
                        "snapshot transfer failed; it is re-offered and resumes")
                }
            }
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            let _ = tx.send(SnapEvent::TransferDone {
                to,
                index,
                ok: completed,
            });
        });
    }

    /// Compact storage behind a snapshot, keeping (a) what the engine still
    /// needs (`up_to` already respects followers within the margin), (b) the
    /// log back to the previous snapshot, so that falling back to it on a
    /// damaged newest file still finds every entry above it, and (c) the log
    /// above any snapshot a running transfer is sending.
    pub(crate) fn compact_log(&mut self, up_to: u64) {
        let mut target = up_to;
        if self.snap.retain_count >= 2 {
            let list = self.storage.snapshots.list();
            let previous = list.iter().rev().nth(1).map_or(0, |i| i.meta.id.last_index);
            target = target.min(previous);
        }
        if let Some(pinned) = self.snap.sending.values().min() {
            target = target.min(*pinned);
        }
        if target <= self.storage.log.floor().0 {
            return;
        }
        let Ok(term) = self.storage.log.term(target) else {
            return;
        };
        let wb = WriteBatch {
            compact: Some((target, term)),
            ..WriteBatch::default()
        };
        let r = match self.storage.log.try_submit(wb.clone()) {
            Ok(t) => Ok(t),
            Err(_) => tokio::task::block_in_place(|| self.storage.log.submit(wb)),
        };
        match r {
            Ok(_) => tracing::info!(target: "wraft::snapshot", node = self.id, up_to = target,
                engine_up_to = up_to, "compacting the log"),
            Err(e) => tracing::warn!(target: "wraft::snapshot", node = self.id, error = %e,
                "log compaction failed; retried after the next snapshot"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The users' case: a follower declined every offer for 4.3 s while its stream from the
    /// old leader timed out, and the engine offered again on every 10 ms tick (428 offers).
    #[test]
    fn a_follower_that_keeps_declining_gets_a_handful_of_offers_and_progress_resets_the_wait() {
        let mut b = ReofferBackoff::default();
        let (mut t_ms, mut offers) = (0u64, 0);
        while t_ms < 4300 {
            offers += 1;
            let wait = wait_before_reoffer(&mut b, false, false).expect("a wait after a decline");
            t_ms += wait.as_millis() as u64 + 10;
        }
        assert!(offers <= 8, "{offers} offers in 4.3 s");
        assert_eq!(b.missed(), Duration::from_millis(ReofferBackoff::MAX_MS));

        // A failed attempt that still made bytes durable (a follower killed mid-transfer)
        // resets the wait: the next attempt resumes at once.
        assert_eq!(wait_before_reoffer(&mut b, false, true), None);
        assert_eq!(
            wait_before_reoffer(&mut b, false, false),
            Some(Duration::from_millis(ReofferBackoff::FIRST_MS))
        );
        assert_eq!(wait_before_reoffer(&mut b, true, false), None);
        assert_eq!(b.misses(), 0);
    }
}
