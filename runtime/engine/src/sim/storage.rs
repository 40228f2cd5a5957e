//! The model store: a FIFO group-commit writer per node with per-node disk
//! speed, refusing what the real log store would refuse; and
//! [`SimStorage`], to put a real store in the loop.

use super::*;

/// One durable-storage operation, in the order the engine issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// An [`Action::Persist`] batch.
    Persist(PersistBatch),
    /// An [`Action::CompactLog`].
    Compact(LogIndex),
}

/// Storage in the loop: plug a real log store under the simulator.
///
/// The simulator keeps its own in-memory model of what is durable (the
/// oracle for persist-before-send and for recovery). When a node's simulated
/// group commit completes, the same operations are handed to the store with
/// [`SimStorage::write`] (which must make them durable before returning);
/// operations still queued when a node crashes are never written, exactly like
/// unflushed writes. At restart, [`SimStorage::recover`] must return the same
/// hard state and log entries as the model, or the run fails.
pub trait SimStorage {
    /// Make `ops` durable for `node`, in order.
    ///
    /// # Errors
    /// A description of the storage failure (fails the run).
    fn write(&mut self, node: NodeId, ops: &[StorageOp]) -> Result<(), String>;
    /// What `node`'s storage holds after a crash: hard state and log entries in index order.
    ///
    /// # Errors
    /// A description of the recovery failure (fails the run).
    fn recover(&mut self, node: NodeId) -> Result<(HardState, Vec<Entry>), String>;
}

impl Sim {
    pub(super) fn writer_push(&mut self, id: NodeId, op: StorageOp) {
        let h = self.hosts.get_mut(&id).expect("host");
        h.w_issued += 1;
        h.writer.push_back((h.w_issued, op));
        if !h.w_scheduled {
            h.w_scheduled = true;
            let (inc, upto) = (h.incarnation, h.w_issued);
            let d = self.fsync_delay(id);
            self.schedule(d, Ev::WriterDone(id, inc, upto));
        }
    }

    /// Group-commit latency: per-node disk speed (some disks are slow) with jitter.
    fn fsync_delay(&mut self, id: NodeId) -> u64 {
        let slow = self.hosts[&id].period.is_multiple_of(3);
        if slow {
            self.rng.u64(200..3 * TICK)
        } else {
            self.rng.u64(30..500)
        }
    }

    pub(super) fn writer_done(&mut self, id: NodeId, inc: u64, upto: u64) -> Res<()> {
        let h = self.hosts.get_mut(&id).expect("host");
        if h.incarnation != inc || h.engine.is_none() {
            return Ok(());
        }
        let mut last_seq = None;
        let mut written = Vec::new();
        while h.writer.front().is_some_and(|(n, _)| *n <= upto) {
            let (_, op) = h.writer.pop_front().expect("front");
            if self.storage.is_some() {
                written.push(op.clone());
            }
            match op {
                StorageOp::Persist(b) => {
                    // A real log store (wraft-storage) resets by compacting
                    // to the snapshot, which keeps the suffix only if it
                    // holds the snapshot's entry with its term.
                    let mut store_last = h.d_log.keys().next_back().copied().unwrap_or(h.d_floor);
                    if let Some(m) = &b.reset_to_snapshot {
                        if m.index > h.d_floor
                            && h.d_log.get(&m.index).map(|e| e.term) != Some(m.term)
                        {
                            store_last = m.index;
                        }
                        store_last = store_last.max(m.index);
                        h.d_log.retain(|i, _| *i > m.index);
                        h.d_floor = h.d_floor.max(m.index);
                    }
                    if let Some(t) = b.truncate_from {
                        if t <= h.d_floor || t > store_last + 1 {
                            return Err(SimFailure {
                                seed: self.cfg.seed,
                                time: self.now,
                                message: format!(
                                    "node {id}: the log store refuses persist batch {}: truncate_from {t} outside {}..={} (floor {}, last {store_last})",
                                    b.seq,
                                    h.d_floor + 1,
                                    store_last + 1,
                                    h.d_floor
                                ),
                            });
                        }
                        h.d_log.split_off(&t);
                        store_last = store_last.min(t - 1);
                    }
                    if let Some(first) = b.entries.first()
                        && (first.index <= h.d_floor || first.index > store_last + 1)
                    {
                        return Err(SimFailure {
                            seed: self.cfg.seed,
                            time: self.now,
                            message: format!(
                                "node {id}: the log store refuses persist batch {}: entries start at {} outside {}..={} (floor {}, last {store_last})",
                                b.seq,
                                first.index,
                                h.d_floor + 1,
                                store_last + 1,
                                h.d_floor
                            ),
                        });
                    }
                    for e in b.entries {
                        h.d_log.split_off(&e.index);
                        h.d_log.insert(e.index, e);
                    }
                    if let Some(hs) = b.hard_state {
                        h.d_hs = hs;
                    }
                    last_seq = Some(b.seq);
                }
                StorageOp::Compact(up_to) => {
                    h.d_log.retain(|i, _| *i > up_to);
                    h.d_floor = h.d_floor.max(up_to);
                }
            }
        }
        h.w_done = upto;
        h.w_scheduled = false;
        if let Some(st) = self.storage.as_mut()
            && let Err(e) = st.write(id, &written)
        {
            return Err(self.fail(format!("storage write failed on node {id}: {e}")));
        }
        if let Some(&(n, _)) = h.writer.back() {
            h.w_scheduled = true;
            let d = self.fsync_delay(id);
            self.schedule(d, Ev::WriterDone(id, inc, n));
        }
        if let Some(seq) = last_seq {
            self.step_node(id, Event::Persisted { seq })?;
        }
        Ok(())
    }
}
