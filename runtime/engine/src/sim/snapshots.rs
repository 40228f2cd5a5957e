//! Snapshots: creation at a hint, chunked streaming with acknowledgements
//! and resume, and slow installs.

use super::events::NetMsg;
use super::*;

#[derive(Clone, Debug)]
pub(super) struct Chunk {
    pub(super) from: NodeId,
    pub(super) to: NodeId,
    pub(super) term: Term,
    pub(super) meta: SnapshotMeta,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) total: u64,
    pub(super) data: Arc<Machine>,
}

pub(super) struct Outgoing {
    pub(super) meta: SnapshotMeta,
    pub(super) data: Arc<Machine>,
}

pub(super) struct Staged {
    pub(super) from: NodeId,
    pub(super) term: Term,
    pub(super) meta: SnapshotMeta,
    pub(super) total: u64,
    pub(super) durable: u64,
    pub(super) data: Arc<Machine>,
    /// `SnapshotReceived` was stepped; the engine's answer (an install or
    /// nothing) comes with the next poll, so the staging is kept until then.
    pub(super) reported: bool,
}

impl Sim {
    pub(super) fn snapshot_done(&mut self, id: NodeId, inc: u64) -> Res<()> {
        let h = self.hosts.get_mut(&id).expect("host");
        if h.incarnation != inc || h.engine.is_none() {
            return Ok(());
        }
        h.snapshotting = false;
        let Some((meta, data)) = h.snap_capture.take() else {
            return Ok(());
        };
        if self.rng.u32(0..10) == 0 || meta.index <= h.d_snap.0.index {
            return self.step_node(id, Event::SnapshotFailed);
        }
        h.d_snap = (meta.clone(), data);
        self.step_node(id, Event::SnapshotCreated { meta })
    }

    pub(super) fn send_chunk(&mut self, from: NodeId, to: NodeId, offset: u64) {
        let h = &self.hosts[&from];
        let (Some(o), Some(e)) = (h.outgoing.get(&to), h.engine.as_ref()) else {
            return;
        };
        let total = o.data.size_bytes();
        let offset = offset.min(total);
        let len = self.cfg.snapshot_chunk_bytes.min(total - offset);
        let c = Chunk {
            from,
            to,
            term: e.term(),
            meta: o.meta.clone(),
            offset,
            len,
            total,
            data: o.data.clone(),
        };
        self.net_send(NetMsg::Chunk(c));
    }

    pub(super) fn on_chunk(&mut self, c: Chunk) -> Res<()> {
        self.report.chunks_delivered += 1;
        let h = self.hosts.get_mut(&c.to).expect("host");
        let same = h
            .staged
            .as_ref()
            .is_some_and(|s| s.from == c.from && s.meta == c.meta && s.term == c.term);
        // A staging reported to the engine waits for its answer (the next poll).
        let reported = h.staged.as_ref().is_some_and(|s| s.reported);
        if !same && c.offset == 0 && h.installing.is_none() && !reported {
            h.staged = Some(Staged {
                from: c.from,
                term: c.term,
                meta: c.meta.clone(),
                total: c.total,
                durable: 0,
                data: c.data.clone(),
                reported: false,
            });
        }
        let mut complete = None;
        let mut durable = 0;
        if let Some(s) = h
            .staged
            .as_mut()
            .filter(|s| s.from == c.from && s.meta == c.meta && s.term == c.term)
        {
            if c.offset == s.durable && !s.reported {
                s.durable += c.len;
                if s.durable >= s.total {
                    s.reported = true;
                    complete = Some((s.from, s.term, s.meta.clone()));
                }
            }
            durable = s.durable;
        }
        self.net_send(NetMsg::ChunkAck {
            from: c.to,
            to: c.from,
            index: c.meta.index,
            durable_offset: durable,
        });
        if let Some((from, term, meta)) = complete {
            // The staging is dropped at the poll that carries the engine's answer.
            self.step_node(c.to, Event::SnapshotReceived { from, term, meta })?;
        }
        Ok(())
    }

    pub(super) fn install_done(&mut self, id: NodeId, inc: u64) -> Res<()> {
        let h = self.hosts.get_mut(&id).expect("host");
        if h.incarnation != inc || h.engine.is_none() {
            return Ok(());
        }
        let Some((meta, data)) = h.installing.take() else {
            return Ok(());
        };
        if self.rng.u32(0..20) == 0 {
            return self.step_node(id, Event::SnapshotInstallFailed { meta });
        }
        h.machine = (*data).clone();
        if meta.index > h.d_snap.0.index {
            h.d_snap = (meta.clone(), data);
        }
        // Pending reads and proposals waiting on indexes the snapshot skipped
        // will be answered by retries.
        h.waiting_apply.retain(|i, _| *i > meta.index);
        self.report.snapshots_installed += 1;
        let d = self.hosts[&id].machine.digest();
        self.check_digest(id, meta.index, d)?;
        self.step_node(id, Event::SnapshotInstalled { meta })?;
        self.serve_reads(id);
        Ok(())
    }
}
