//! Client requests in the driver: proposals, deploys, membership changes and reads, and how
//! their outcomes are answered.

use std::time::Instant;

use tokio::sync::oneshot;
use wraft_engine::{ConfChange, ConfChangeEntry, EntryKind, Event, ProposalError, Role};

use crate::apply::{ApplyMsg, ReadTarget};
use wraft_proto::digest::{hex, sha256};
use wraft_proto::{
    Command, Consistency, Reply, Request, RequestError, Response, SnapshotListing, WasiProfile,
};

use crate::codec::{command_kind, encode_command};
use crate::driver::{CheckedModule, ClientCall};
use crate::driver::{Driver, PendingProposal, PendingRead};

impl Driver {
    /// Serve `target` once this node, as leader, has confirmed its leadership and applied up to
    /// the read index (ReadIndex, or its lease when configured).
    pub(crate) fn linearizable_read(
        &mut self,
        target: ReadTarget,
        reply: oneshot::Sender<Response>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.reads.insert(id, PendingRead { target, reply });
        self.step(Event::Read { id });
    }

    /// Propose a deploy carrying this node's configured limits, which every replica then
    /// applies to the machine (see `MachineLimits`): by hash if the sender placed the module
    /// on the members and that still holds for the current membership (`Placed`), else with
    /// the module in the entry.
    pub(crate) fn propose_deploy(
        &mut self,
        tag: wraft_proto::RequestTag,
        name: String,
        module: Vec<u8>,
        wasi: WasiProfile,
        checked: Option<CheckedModule>,
        reply: oneshot::Sender<Response>,
    ) {
        if checked.as_ref().is_some_and(|c| !c.compiled) && self.engine.role() == Role::Leader {
            // Checked while this node followed, so not compiled here: a module that cannot be
            // compiled must never reach the log. The retry finds this node leading.
            let _ = reply.send(Err(RequestError::Busy(format!(
                "node {} became the leader while the deploy was checked; retry",
                self.id
            ))));
            return;
        }
        let by_hash = checked
            .as_ref()
            .and_then(|c| c.placed.as_ref())
            .filter(|p| {
                let ok = p.still_holds(self.engine.membership());
                if !ok {
                    tracing::info!(target: "wraft::deploy", node = self.id, placed = ?p,
                    membership = ?self.engine.membership(),
                    "the membership changed since the module was placed; deploying it in the log");
                }
                ok
            });
        let command = match (checked.as_ref(), by_hash) {
            (Some(c), Some(_)) => Command::DeployByHash {
                name,
                sha256: c.sha256,
                module_bytes: module.len() as u64,
                wasi,
                limits: self.deploy_limits,
            },
            (checked, _) => Command::DeployLimited {
                name,
                sha256: checked.map_or_else(|| sha256(&module), |c| c.sha256),
                module,
                wasi,
                limits: self.deploy_limits,
            },
        };
        self.propose_command(Some(tag), &command, PendingProposal::Client(reply));
    }

    /// Propose `command`, deduplicated by `tag` if it has one. A command that cannot be encoded
    /// is never proposed: `pending` is answered with the encoding error instead.
    pub(crate) fn propose_command(
        &mut self,
        tag: Option<wraft_proto::RequestTag>,
        command: &Command,
        pending: PendingProposal,
    ) {
        match encode_command(command) {
            Ok(data) => self.propose(command_kind(tag, data), pending),
            Err(e) => {
                tracing::error!(target: "wraft::node", node = self.id, error = %e, "command refused");
                pending.fail(e.into());
            }
        }
    }

    pub(crate) fn propose(&mut self, kind: EntryKind, pending: PendingProposal) {
        let id = self.next_id;
        self.next_id += 1;
        self.proposals.insert(id, (Instant::now(), pending));
        self.step(Event::Propose { id, kind });
    }

    pub(crate) fn on_request(&mut self, call: ClientCall) {
        let ClientCall {
            request,
            module,
            reply,
        } = call;
        if let Some(e) = self.refuse_while_stopping(&request) {
            let _ = reply.send(Err(e));
            return;
        }
        match request {
            Request::Propose {
                tag,
                machine,
                command,
            } => {
                let command = Command::Apply { machine, command };
                self.propose_command(Some(tag), &command, PendingProposal::Client(reply));
            }
            Request::Deploy {
                tag,
                name,
                module: bytes,
            } => self.propose_deploy(tag, name, bytes, WasiProfile::None, module, reply),
            Request::DeployWith {
                tag,
                name,
                module: bytes,
                wasi,
            } => self.propose_deploy(tag, name, bytes, wasi, module, reply),
            // Served by the client server off the driver (`crate::modules`).
            Request::ModuleHas { .. } | Request::ModulePut { .. } | Request::ModuleGet { .. } => {
                let _ = reply.send(Err(RequestError::Internal(
                    "module requests are served off the driver".into(),
                )));
            }
            // Served by the client server off the driver (`crate::server`).
            Request::SnapshotSegmentsHeld { .. } | Request::SnapshotSegment { .. } => {
                let _ = reply.send(Err(RequestError::Internal(
                    "snapshot segment requests are served off the driver".into(),
                )));
            }
            Request::OpenSession => {
                self.propose_command(None, &Command::OpenSession, PendingProposal::Client(reply));
            }
            Request::RemoveMachine { tag, name } => {
                let command = Command::Remove { name };
                self.propose_command(Some(tag), &command, PendingProposal::Client(reply));
            }
            Request::Query {
                machine,
                request,
                consistency,
            } => match consistency {
                Consistency::Stale => {
                    let _ = self.apply_tx.send(ApplyMsg::Read {
                        index: 0,
                        target: ReadTarget::Query { machine, request },
                        reply,
                    });
                }
                Consistency::Linearizable | Consistency::Lease => {
                    self.linearizable_read(ReadTarget::Query { machine, request }, reply);
                }
            },
            // Linearizable like a query: whatever a client just deployed or removed is in its
            // next listing, whichever node it asks (a follower redirects to the leader).
            Request::Machines => self.linearizable_read(ReadTarget::Machines, reply),
            Request::Status => {
                let _ = reply.send(Ok(Reply::Status(Box::new(self.status()))));
            }
            Request::NodeInfo => {
                let _ = reply.send(Ok(Reply::NodeInfo(crate::node_info(self.id))));
            }
            Request::Transfers => {
                let live = self.snap.xfer_cfg.board.live();
                let _ = reply.send(Ok(Reply::Transfers(
                    live.iter().map(transfer_status).collect(),
                )));
            }
            Request::AddLearner { id, addr } => {
                if self.engine.role() != Role::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                // The address travels in the log first, so every member can
                // reach the learner; both entries go out in the same append.
                let data = match encode_command(&Command::SetAddress { id, addr }) {
                    Ok(data) => data,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return;
                    }
                };
                self.propose(command_kind(None, data), PendingProposal::Quiet);
                self.propose(
                    EntryKind::ConfChange(ConfChangeEntry::new(ConfChange::AddLearner(id))),
                    PendingProposal::Membership(reply, format!("node {id} added as a learner")),
                );
            }
            Request::Promote { id } => self.propose(
                EntryKind::ConfChange(ConfChangeEntry::new(ConfChange::PromoteLearner(id))),
                PendingProposal::Membership(reply, format!("node {id} promoted to voter")),
            ),
            Request::RemoveMember { id } => self.propose(
                EntryKind::ConfChange(ConfChangeEntry::new(ConfChange::RemoveNode(id))),
                PendingProposal::Membership(reply, format!("node {id} removed")),
            ),
            Request::SnapshotTrigger => {
                // Answered at once (a large snapshot takes longer than a
                // request deadline); callers poll `Snapshots` for the index.
                let r = match self.start_snapshot(self.engine.applied_index()) {
                    Ok(()) => Ok(Reply::SnapshotStarted {
                        index: self.snap.creating.unwrap_or(0),
                    }),
                    Err(_) if self.snap.creating.is_some() => Ok(Reply::SnapshotStarted {
                        index: self.snap.creating.unwrap_or(0),
                    }),
                    Err(e) => Err(RequestError::Rejected(e)),
                };
                let _ = reply.send(r);
            }
            Request::SetTransferRate { bytes_per_sec } => {
                let cap = (bytes_per_sec > 0).then_some(bytes_per_sec);
                self.snap.limiter.set(cap);
                // The caller names the node (it knows the address it dialed and the id in the
                // node's certificate); the answer says what is now in force.
                let message = match self.snap.limiter.get() {
                    Some(b) if b != bytes_per_sec => format!(
                        "snapshot transfers capped at {b} bytes/s ({bytes_per_sec} asked; the \
                         cap counts whole KiB, at least 1 KiB/s)"
                    ),
                    Some(b) => format!("snapshot transfers capped at {b} bytes/s"),
                    None => "snapshot transfers uncapped".to_owned(),
                };
                tracing::info!(target: "wraft::snapshot", node = self.id,
                    bytes_per_sec = self.snap.limiter.get().unwrap_or(0), "transfer rate cap changed");
                let _ = reply.send(Ok(Reply::Done { message }));
            }
            Request::SnapshotRead { .. } => {
                // Served by the client server from the snapshot store, never by the driver
                // (file reads stay off the consensus path).
                let _ = reply.send(Err(RequestError::Rejected(
                    "snapshot reads are served on client streams only".into(),
                )));
            }
            Request::Snapshots => {
                let list = self
                    .storage
                    .snapshots
                    .list()
                    .into_iter()
                    .map(|i| SnapshotListing {
                        index: i.meta.id.last_index,
                        term: i.meta.id.last_term,
                        file_bytes: i.file_len,
                        digest: hex(&i.digest),
                        path: i.path.display().to_string(),
                        voters: i.meta.membership.voters.clone(),
                        learners: i.meta.membership.learners.clone(),
                    })
                    .collect();
                let _ = reply.send(Ok(Reply::Snapshots(list)));
            }
            Request::TransferLeader { to } => {
                if self.engine.role() != Role::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                self.step(Event::TransferLeadership { to });
                let _ = reply.send(Ok(Reply::Done {
                    message: format!("leadership transfer to node {to} started"),
                }));
            }
        }
    }

    pub(crate) fn on_proposal_result(&mut self, id: u64, result: Result<u64, ProposalError>) {
        let Some((started, p)) = self.proposals.remove(&id) else {
            return;
        };
        if result.is_ok() {
            self.metrics
                .proposal_commit_seconds
                .record(started.elapsed().as_secs_f64());
        }
        match (p, result) {
            (PendingProposal::Client(reply), Ok(index)) => {
                let _ = self.apply_tx.send(ApplyMsg::Await { index, reply });
            }
            (PendingProposal::Membership(reply, what), Ok(index)) => {
                let _ = reply.send(Ok(Reply::Done {
                    message: format!("{what} (index {index})"),
                }));
            }
            (PendingProposal::Quiet, _) => {}
            (PendingProposal::Client(reply) | PendingProposal::Membership(reply, _), Err(e)) => {
                let _ = reply.send(Err(self.proposal_error(e)));
            }
        }
    }

    pub(crate) fn proposal_error(&self, e: ProposalError) -> RequestError {
        match e {
            ProposalError::NotLeader { .. } | ProposalError::TransferInProgress => {
                self.not_leader()
            }
            ProposalError::Busy { .. } => RequestError::Busy(e.to_string()),
            ProposalError::TooLarge { .. } | ProposalError::ConfChange(_) => {
                RequestError::Rejected(e.to_string())
            }
            // Superseded: definitely not applied. OutcomeUnknown: maybe.
            // Either way a retry with the same tag is applied at most once.
            other => RequestError::Timeout(format!("{other}; retrying with the same tag is safe")),
        }
    }
}

/// A transfer on the board, as [`Request::Transfers`] answers it.
fn transfer_status(t: &wraft_snapshot::LiveTransfer) -> wraft_proto::TransferStatus {
    wraft_proto::TransferStatus {
        sending: t.direction == wraft_snapshot::Direction::Send,
        peer: t.peer,
        index: t.index,
        file_bytes: t.file_len,
        done_bytes: t.done,
        resumed_from: t.resumed_from,
        elapsed_ms: u64::try_from(t.elapsed.as_millis()).unwrap_or(u64::MAX),
        bytes_per_sec: t.bytes_per_sec().unwrap_or(0),
    }
}
