//! Executing the engine's actions, in order.

use std::collections::BTreeSet;

use wraft_engine::{Action, Event, ReadError, Role};

use crate::apply::ApplyMsg;
use wraft_proto::RequestError;

use super::persist::storage_writes;
use crate::driver::Driver;
use crate::driver::snapshots::snapshot_id;

impl Driver {
    /// Execute the engine's actions, in order, until the engine is quiet
    /// (executing an action may step the engine again, e.g. `Persisted`).
    pub(crate) fn execute(&mut self) {
        loop {
            let mut actions = std::mem::take(&mut self.actions);
            self.engine.poll_actions(&mut actions);
            if actions.is_empty() {
                self.actions = actions;
                return;
            }
            for action in actions.drain(..) {
                self.execute_one(action);
            }
            self.actions = actions;
        }
    }

    pub(crate) fn execute_one(&mut self, action: Action) {
        {
            match action {
                // The engine holds back anything that reveals state not yet
                // durable, so every Send goes out at once.
                Action::Send { msg } => self.send(msg),
                Action::Persist(batch) => {
                    let writes = match storage_writes(&batch) {
                        Ok(w) => w,
                        Err(e) => {
                            // An entry the engine holds but this node cannot write: acking it
                            // would be a lie, and writing a substitute would diverge.
                            tracing::error!(target: "wraft::node", node = self.id, error = %e,
                                "cannot persist to the log; the node stops here to stay safe");
                            std::process::abort();
                        }
                    };
                    if let Some(reset) = writes.reset
                        && let Err(e) =
                            tokio::task::block_in_place(|| self.storage.log.submit(reset))
                    {
                        tracing::error!(target: "wraft::node", node = self.id, error = %e,
                            "cannot reset the log to an installed snapshot; the node stops here to stay safe");
                        std::process::abort();
                    }
                    let wb = writes.main;
                    let submitted = match self.storage.log.try_submit(wb.clone()) {
                        Ok(t) => Ok(t),
                        // The writer's queue is full: wait for room (this is
                        // the backpressure that bounds memory; safety first).
                        Err(_) => tokio::task::block_in_place(|| self.storage.log.submit(wb)),
                    };
                    match submitted {
                        Ok(_) => {
                            self.metrics.persist_batches.increment(1);
                            self.metrics
                                .persist_entries
                                .increment(batch.entries.len() as u64);
                        }
                        Err(e) => {
                            // Without durable storage this node must not go on
                            // acknowledging anything.
                            tracing::error!(target: "wraft::node", node = self.id, error = %e,
                                "cannot persist to the log; the node stops here to stay safe");
                            std::process::abort();
                        }
                    }
                }
                Action::Apply { entries } => {
                    let _ = self.apply_tx.send(ApplyMsg::Entries(entries));
                }
                Action::ProposalResult { id, result } => self.on_proposal_result(id, result),
                Action::ReadReady { id, index } => {
                    if let Some(r) = self.reads.remove(&id) {
                        let _ = self.apply_tx.send(ApplyMsg::Read {
                            index,
                            target: r.target,
                            reply: r.reply,
                        });
                    }
                }
                Action::ReadFailed { id, error } => {
                    if let Some(r) = self.reads.remove(&id) {
                        let e = match error {
                            ReadError::NotLeader { .. } => self.not_leader(),
                            ReadError::Busy { .. } => RequestError::Busy(error.to_string()),
                        };
                        let _ = r.reply.send(Err(e));
                    }
                }
                Action::SnapshotHint {
                    reason,
                    applied_index,
                } => {
                    tracing::debug!(target: "wraft::snapshot", node = self.id, ?reason, applied_index, "snapshot hint");
                    if let Err(e) = self.start_snapshot(applied_index) {
                        tracing::debug!(target: "wraft::snapshot", node = self.id, "snapshot hint not taken: {e}");
                        if self.snap.creating.is_none() {
                            self.step(Event::SnapshotFailed);
                        }
                    }
                }
                Action::SendSnapshot { to, meta, offset } => self.send_snapshot(to, meta, offset),
                Action::InstallSnapshot { meta } => {
                    // If a newer offer already replaced it, the applier's install fails and the
                    // leader sends again.
                    self.snap.installing = self.storage.snapshots.pin(snapshot_id(&meta)).ok();
                    let leader = self.engine.leader();
                    let _ = self.apply_tx.send(ApplyMsg::Install { meta, leader });
                }
                Action::CompactLog { up_to } => self.compact_log(up_to),
                Action::RoleChanged { role, term, leader } => {
                    self.metrics.role_change(match role {
                        Role::Leader => "leader",
                        Role::Candidate => "candidate",
                        Role::PreCandidate => "pre-candidate",
                        Role::Follower => "follower",
                    });
                    self.metrics
                        .is_leader
                        .set(if role == Role::Leader { 1.0 } else { 0.0 });
                    self.metrics.term.set(term as f64);
                    self.snap
                        .following
                        .store(role == Role::Follower, std::sync::atomic::Ordering::Release);
                    tracing::info!(target: "wraft::raft", node = self.id, ?role, term, ?leader, "role changed");
                    if role == Role::Leader && self.apply_halted {
                        self.hand_off_leadership();
                    }
                }
                Action::MembershipChanged { membership } => {
                    tracing::info!(target: "wraft::raft", node = self.id, voters = ?membership.voters,
                        learners = ?membership.learners, "membership changed");
                    let ids: BTreeSet<u64> = membership
                        .members()
                        .chain(self.config_book.keys().copied())
                        .collect();
                    self.transport_members.set(ids);
                }
            }
        }
    }
}
