//! Event handling: the event queue's events, the network (delay,
//! reordering, drop, duplication, partitions), and executing the actions an
//! engine hands out.

use super::snapshots::Chunk;
use super::*;

#[derive(Clone, Debug)]
pub(super) enum NetMsg {
    Raft(Message),
    Chunk(Chunk),
    ChunkAck {
        from: NodeId,
        to: NodeId,
        index: LogIndex,
        durable_offset: u64,
    },
}

impl NetMsg {
    fn ends(&self) -> (NodeId, NodeId) {
        match self {
            NetMsg::Raft(m) => (m.from, m.to),
            NetMsg::Chunk(c) => (c.from, c.to),
            NetMsg::ChunkAck { from, to, .. } => (*from, *to),
        }
    }
}

#[derive(Debug)]
pub(super) enum Ev {
    Tick(NodeId, u64),
    Net(NetMsg),
    WriterDone(NodeId, u64, u64),
    SnapshotDone(NodeId, u64),
    InstallDone(NodeId, u64),
    /// A deferred `poll_actions` (node, incarnation).
    Poll(NodeId, u64),
    Client(usize),
    Fault,
}

impl Sim {
    pub(super) fn handle(&mut self, ev: Ev) -> Res<()> {
        match ev {
            Ev::Tick(id, inc) => {
                if self.hosts[&id].incarnation != inc || !self.alive(id) {
                    return Ok(());
                }
                let p = self.hosts[&id].period;
                self.schedule(p, Ev::Tick(id, inc));
                self.step_node(id, Event::Tick)
            }
            Ev::Net(m) => self.deliver(m),
            Ev::WriterDone(id, inc, upto) => self.writer_done(id, inc, upto),
            Ev::SnapshotDone(id, inc) => self.snapshot_done(id, inc),
            Ev::InstallDone(id, inc) => self.install_done(id, inc),
            Ev::Poll(id, inc) => self.deferred_poll(id, inc),
            Ev::Client(c) => self.client_event(c),
            Ev::Fault => {
                if self.faults_on {
                    self.inject_fault()?;
                    let d = self.rng.u64(TICK..8 * TICK);
                    self.schedule(d, Ev::Fault);
                }
                Ok(())
            }
        }
    }

    fn deliver(&mut self, m: NetMsg) -> Res<()> {
        let (from, to) = m.ends();
        if self.blocked.contains(&(from, to)) || !self.alive(to) {
            return Ok(());
        }
        match m {
            NetMsg::Raft(msg) => self.step_node(to, Event::Message(msg)),
            NetMsg::Chunk(c) => self.on_chunk(c),
            NetMsg::ChunkAck {
                from,
                to,
                index,
                durable_offset,
            } => {
                self.step_node(
                    to,
                    Event::SnapshotProgress {
                        from,
                        index,
                        durable_offset,
                    },
                )?;
                let h = self.hosts.get_mut(&to).expect("host");
                if h.outgoing.get(&from).is_some_and(|o| o.meta.index == index) {
                    let total = h.outgoing[&from].data.size_bytes();
                    if durable_offset >= total {
                        h.outgoing.remove(&from);
                    } else {
                        self.send_chunk(to, from, durable_offset);
                    }
                }
                Ok(())
            }
        }
    }

    pub(super) fn net_send(&mut self, m: NetMsg) {
        let (from, to) = m.ends();
        if self.blocked.contains(&(from, to)) {
            return;
        }
        if self.rng.u32(0..1000) < self.cfg.drop_per_mille {
            return;
        }
        let copies = if self.rng.u32(0..1000) < self.cfg.dup_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            // Mostly quick; sometimes slow, which reorders messages.
            let d = if self.rng.u32(0..100) < 5 {
                self.rng.u64(TICK..6 * TICK)
            } else {
                self.rng.u64(20..400)
            };
            self.schedule(d, Ev::Net(m.clone()));
        }
    }

    fn release(&mut self, id: NodeId, msg: Message) -> Res<()> {
        self.check_send(id, &msg)?;
        self.net_send(NetMsg::Raft(msg));
        Ok(())
    }

    pub(super) fn run_actions(&mut self, id: NodeId) -> Res<()> {
        if let Some(h) = self.hosts.get_mut(&id) {
            if h.events_since_poll >= 2 {
                self.report.multi_event_polls += 1;
            }
            h.events_since_poll = 0;
        }
        let mut out = Vec::new();
        match self.hosts.get_mut(&id).and_then(|h| h.engine.as_mut()) {
            Some(e) => e.poll_actions(&mut out),
            None => return Ok(()),
        }
        self.check_engine_invariants(id)?;
        for a in out {
            self.execute(id, a)?;
        }
        // The engine answered a received snapshot with this poll: if it did
        // not ask for an install, drop the staging (a resend starts over).
        let h = self.hosts.get_mut(&id).expect("host");
        if h.installing.is_none() && h.staged.as_ref().is_some_and(|s| s.reported) {
            h.staged = None;
        }
        Ok(())
    }

    fn execute(&mut self, id: NodeId, a: Action) -> Res<()> {
        if self.trace {
            let h = &self.hosts[&id];
            match &a {
                Action::Apply { .. } => {}
                Action::Persist(b) => eprintln!(
                    "t={} node {id} [w {}/{}]: Persist seq {} hs {:?} reset {:?} trunc {:?} entries {:?}",
                    self.now,
                    h.w_issued,
                    h.w_done,
                    b.seq,
                    b.hard_state,
                    b.reset_to_snapshot.as_ref().map(|m| m.index),
                    b.truncate_from,
                    b.entries
                        .iter()
                        .map(|e| (e.index, e.term))
                        .collect::<Vec<_>>()
                ),
                Action::Send { msg } => eprintln!(
                    "t={} node {id} [w {}/{}]: send to {} term {}: {:?}",
                    self.now,
                    h.w_issued,
                    h.w_done,
                    msg.to,
                    msg.term,
                    match &msg.body {
                        MessageBody::AppendEntries {
                            prev_log_index,
                            entries,
                            leader_commit,
                            ..
                        } => format!(
                            "AE prev {prev_log_index} n {} commit {leader_commit}",
                            entries.len()
                        ),
                        b => format!("{b:?}"),
                    }
                ),
                other => eprintln!("t={} node {id}: {other:?}", self.now),
            }
        }
        match a {
            Action::Send { msg } => self.release(id, msg)?,
            Action::Persist(b) => {
                self.check_log_matching(id, &b)?;
                self.writer_push(id, StorageOp::Persist(b));
            }
            Action::CompactLog { up_to } => self.writer_push(id, StorageOp::Compact(up_to)),
            Action::Apply { entries } => {
                for e in entries {
                    self.apply_entry(id, &e)?;
                    if self.cfg.batch_cuts && self.rng.u32(0..4) == 0 {
                        self.end_batch(id)?;
                    }
                }
                self.end_batch(id)?;
                self.serve_reads(id);
            }
            Action::ProposalResult { id: pid, result } => match result {
                Ok(index) => {
                    self.hosts
                        .get_mut(&id)
                        .expect("host")
                        .waiting_apply
                        .insert(index, pid);
                }
                Err(err) => {
                    if self.trace {
                        eprintln!("t={} node {id}: proposal {pid} failed: {err}", self.now);
                    }
                    if let Some((c, hist)) = self.prop_owner.remove(&pid) {
                        let hint = match err {
                            ProposalError::NotLeader { leader_hint } => leader_hint,
                            _ => None,
                        };
                        self.client_retry_soon(c, hist, hint);
                    }
                }
            },
            Action::ReadReady { id: rid, index } => {
                self.hosts
                    .get_mut(&id)
                    .expect("host")
                    .pending_reads
                    .push((rid, index));
                self.serve_reads(id);
            }
            Action::ReadFailed { id: rid, error } => {
                if let Some((c, hist, _)) = self.read_owner.remove(&rid) {
                    let hint = match error {
                        ReadError::NotLeader { leader_hint } => leader_hint,
                        ReadError::Busy { .. } => None,
                    };
                    self.client_retry_soon(c, hist, hint);
                }
            }
            Action::SendSnapshot { to, meta, offset } => {
                if self.hosts[&id].d_snap.0 != meta {
                    return Err(self.fail(format!(
                        "node {id}: engine asked to send snapshot {} but the host's durable snapshot is {}",
                        meta.index,
                        self.hosts[&id].d_snap.0.index
                    )));
                }
                let h = self.hosts.get_mut(&id).expect("host");
                let data = h.d_snap.1.clone();
                h.outgoing.insert(to, Outgoing { meta, data });
                self.send_chunk(id, to, offset);
            }
            Action::InstallSnapshot { meta } => {
                let h = self.hosts.get_mut(&id).expect("host");
                let Some(st) = h.staged.take().filter(|s| s.meta == meta) else {
                    return Err(self.fail(format!(
                        "node {id}: InstallSnapshot {} without a staged snapshot",
                        meta.index
                    )));
                };
                h.installing = Some((meta, st.data));
                // Sometimes very slow: the consensus loop must stay live meanwhile.
                let d = if self.rng.bool() {
                    self.rng.u64(100..2 * TICK)
                } else {
                    self.rng.u64(5 * TICK..30 * TICK)
                };
                let inc = self.hosts[&id].incarnation;
                self.schedule(d, Ev::InstallDone(id, inc));
            }
            Action::SnapshotHint { .. } => {
                let h = self.hosts.get_mut(&id).expect("host");
                if h.snapshotting || h.installing.is_some() {
                    return Ok(());
                }
                let e = h.engine.as_ref().expect("alive");
                let capture = Arc::new(h.machine.clone());
                match e.snapshot_meta_at(capture.applied) {
                    Some(meta) if meta.index > h.d_snap.0.index => {
                        h.snapshotting = true;
                        h.snap_capture = Some((meta, capture));
                        let inc = h.incarnation;
                        let d = self.rng.u64(100..3 * TICK);
                        self.schedule(d, Ev::SnapshotDone(id, inc));
                    }
                    _ => {
                        self.step_node(id, Event::SnapshotFailed)?;
                    }
                }
            }
            Action::RoleChanged { role, term, .. } => {
                if role == Role::Leader {
                    self.check_leader_completeness(id, term)?;
                }
            }
            Action::MembershipChanged { .. } => {}
        }
        Ok(())
    }
}
