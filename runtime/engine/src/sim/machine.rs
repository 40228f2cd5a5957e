//! The model state machine, and the replicas' appliers that feed it
//! committed entries and answer the clients waiting on them.

use bytes::Bytes;

use super::*;
use crate::session::{SessionCheck, SessionTable};

/// The model state machine: a key-value map with put and compare-and-set,
/// deduplicated by a [`SessionTable`] exactly as the node's applier uses it:
/// sessions are opened by a replicated registration (the entry's index is the
/// client id), each tagged command is admitted in log order at its entry's
/// time, and outputs are completed later, at the end of a batch whose length
/// differs between replicas (see [`Machine::flush`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Machine {
    /// Last applied index.
    pub applied: LogIndex,
    /// Contents.
    pub kv: BTreeMap<u64, u64>,
    /// Client sessions.
    pub sessions: SessionTable,
    /// Entry clock: the largest entry timestamp seen (the applier keeps the
    /// clock a guest sees monotonic across leaders whose clocks disagree).
    pub clock_ms: u64,
    /// Every tag whose command reached the key-value map: the checker's proof
    /// that no tagged command is applied twice. Not hashed into the digest.
    executed: BTreeSet<ClientTag>,
    /// Admitted commands whose outputs the current batch has not completed.
    pending: Vec<(ClientTag, Bytes)>,
}

/// What applying one entry meant for the client waiting on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Applied {
    /// A tagged command's output (`dup`: answered from the session table).
    Output {
        tag: ClientTag,
        out: Bytes,
        dup: bool,
    },
    /// A registration: the new session's id.
    Opened(u64),
    /// A command of an unknown session: refused, not applied.
    Unknown(ClientTag),
}

impl Machine {
    pub(super) fn new(session_cap: usize, session_expiry_ms: u64) -> Self {
        Machine {
            applied: 0,
            kv: BTreeMap::new(),
            sessions: SessionTable::new(session_cap, session_expiry_ms),
            clock_ms: 0,
            executed: BTreeSet::new(),
            pending: Vec::new(),
        }
    }

    /// Digest of everything that influences future outputs. Only meaningful
    /// between batches (the applier publishes its index only there).
    pub fn digest(&self) -> u64 {
        assert!(self.pending.is_empty(), "digest taken inside a batch");
        let mut h = DefaultHasher::new();
        self.kv.hash(&mut h);
        self.sessions.hash(&mut h);
        self.clock_ms.hash(&mut h);
        h.finish()
    }

    pub(super) fn size_bytes(&self) -> u64 {
        64 + 16 * self.kv.len() as u64 + 48 * self.sessions.len() as u64
    }

    /// Ends the current batch: completes the outputs of admitted commands.
    pub(super) fn flush(&mut self) {
        for (tag, out) in self.pending.drain(..) {
            self.sessions.complete(tag, out);
        }
    }

    /// Applies one entry inside the current batch; `Err` if a tag is applied twice.
    pub(super) fn apply(&mut self, e: &Entry) -> Result<Option<Applied>, String> {
        self.applied = e.index;
        let EntryKind::Command {
            client,
            timestamp_ms,
            data,
        } = &e.kind
        else {
            return Ok(None);
        };
        self.clock_ms = self.clock_ms.max(*timestamp_ms);
        let now = self.clock_ms;
        let Some(tag) = client else {
            if data.first() == Some(&OPEN_SESSION) {
                self.sessions.open(e.index, now);
                return Ok(Some(Applied::Opened(e.index)));
            }
            return Ok(None);
        };
        // The applier's rule: a command of a client with an output still pending in the batch
        // ends the batch first, so a duplicate is answered with the real output.
        if self
            .pending
            .iter()
            .any(|(t, _)| t.client_id == tag.client_id)
        {
            self.flush();
        }
        Ok(match self.sessions.admit(*tag, now) {
            SessionCheck::Fresh => {
                if !self.executed.insert(*tag) {
                    return Err(format!(
                        "command {}/{} applied twice (again at index {})",
                        tag.client_id, tag.seq, e.index
                    ));
                }
                let out = self.exec(data);
                self.pending.push((*tag, out.clone()));
                Some(Applied::Output {
                    tag: *tag,
                    out,
                    dup: false,
                })
            }
            SessionCheck::Duplicate(out) => Some(Applied::Output {
                tag: *tag,
                out,
                dup: true,
            }),
            SessionCheck::Stale { .. } => None,
            SessionCheck::Unknown => Some(Applied::Unknown(*tag)),
        })
    }

    fn exec(&mut self, data: &[u8]) -> Bytes {
        match decode_cmd(data) {
            Some(KvInput::Put { key, value }) => {
                self.kv.insert(key, value);
                Bytes::from_static(&[0])
            }
            Some(KvInput::Cas { key, expected, new }) => {
                let ok = self.kv.get(&key).copied() == expected;
                if ok {
                    self.kv.insert(key, new);
                }
                Bytes::from(vec![1, u8::from(ok)])
            }
            _ => Bytes::from_static(&[0xff]),
        }
    }
}

/// First byte of an (untagged) command that opens a client session.
pub(super) const OPEN_SESSION: u8 = 3;

pub(super) fn encode_cmd(i: &KvInput) -> Bytes {
    let mut v = Vec::with_capacity(26);
    match *i {
        KvInput::Put { key, value } => {
            v.push(0);
            v.extend_from_slice(&key.to_le_bytes());
            v.extend_from_slice(&value.to_le_bytes());
        }
        KvInput::Cas { key, expected, new } => {
            v.push(1);
            v.extend_from_slice(&key.to_le_bytes());
            v.push(u8::from(expected.is_some()));
            v.extend_from_slice(&expected.unwrap_or(0).to_le_bytes());
            v.extend_from_slice(&new.to_le_bytes());
        }
        KvInput::Get { .. } => v.push(2),
    }
    Bytes::from(v)
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

fn decode_cmd(d: &[u8]) -> Option<KvInput> {
    match d.first()? {
        0 => Some(KvInput::Put {
            key: u64_at(d, 1)?,
            value: u64_at(d, 9)?,
        }),
        1 => {
            let has = *d.get(9)? == 1;
            let exp = u64_at(d, 10)?;
            Some(KvInput::Cas {
                key: u64_at(d, 1)?,
                expected: has.then_some(exp),
                new: u64_at(d, 18)?,
            })
        }
        _ => None,
    }
}

fn decode_output(input: &KvInput, out: &[u8]) -> Option<KvOutput> {
    match (input, out) {
        (KvInput::Put { .. }, [0]) => Some(KvOutput::Put),
        (KvInput::Cas { .. }, [1, ok]) => Some(KvOutput::Cas(*ok == 1)),
        _ => None,
    }
}

impl Sim {
    pub(super) fn apply_entry(&mut self, id: NodeId, e: &Entry) -> Res<()> {
        let h = self.hosts.get_mut(&id).expect("host");
        if e.index != h.machine.applied + 1 {
            return Err(self.fail(format!(
                "node {id}: Apply of index {} but the machine is at {}",
                e.index, self.hosts[&id].machine.applied
            )));
        }
        let r = match h.machine.apply(e) {
            Ok(r) => r,
            Err(m) => return Err(self.fail(format!("node {id}: {m}"))),
        };
        if self.trace {
            eprintln!(
                "t={} node {id}: applied {} {:?} -> {:?} waiting {:?}",
                self.now,
                e.index,
                e.kind,
                r,
                h.waiting_apply.get(&e.index)
            );
        }
        let pid = h.waiting_apply.remove(&e.index);
        // Drop stale waiters (their entries were superseded below this index).
        while let Some((&i, _)) = h.waiting_apply.first_key_value() {
            if i > e.index {
                break;
            }
            h.waiting_apply.pop_first();
        }
        if matches!(e.kind, EntryKind::ConfChange(_)) && id == 1 {
            self.report.conf_changes_applied += 1;
        }
        let Some(r) = r else { return Ok(()) };
        match &r {
            Applied::Output { dup: true, .. } => self.report.duplicates_suppressed += 1,
            Applied::Opened(_) if id == 1 => self.report.sessions_opened += 1,
            Applied::Unknown(_) if id == 1 => self.report.unknown_sessions += 1,
            _ => {}
        }
        let Some((c, hist)) = pid.and_then(|pid| self.prop_owner.remove(&pid)) else {
            return Ok(());
        };
        let Some(op) = self.clients[c].op.as_ref().filter(|o| o.hist == hist) else {
            return Ok(());
        };
        let (input, tag, opening, attempts) = (op.input, op.tag, op.opening, op.attempts);
        match r {
            Applied::Opened(session) if opening => {
                let cl = &mut self.clients[c];
                cl.session = Some(session);
                cl.seq = 1;
                let op = cl.op.as_mut().expect("op");
                op.tag = Some(ClientTag {
                    client_id: session,
                    seq: 1,
                });
                op.opening = false;
                op.attempts = 0;
                // The client sends the command once it hears back, not from inside the
                // apply (stepping a node there would let it act on a half-applied batch).
                op.deadline = self.now + 1;
                self.schedule(1, Ev::Client(c));
            }
            Applied::Unknown(t) if tag == Some(t) => {
                let cl = &mut self.clients[c];
                cl.session = None;
                if attempts <= 1 {
                    // Refused at its only proposal: certainly not applied. Reopen and resend.
                    let op = cl.op.as_mut().expect("op");
                    op.tag = None;
                    op.opening = true;
                    op.attempts = 0;
                    self.client_retry_soon(c, hist, Some(id));
                } else {
                    // An earlier proposal may have been applied: the outcome stays unknown.
                    cl.op = None;
                    let t = self.rng.u64(0..2 * TICK);
                    self.schedule(t, Ev::Client(c));
                }
            }
            Applied::Output { tag: t, out, .. } if tag == Some(t) => {
                let Some(output) = decode_output(&input, &out) else {
                    return Err(self.fail(format!(
                        "node {id}: undecodable output {out:?} for {input:?}"
                    )));
                };
                self.complete(c, output);
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends node `id`'s apply batch: outputs are completed and the state, now
    /// at a point the applier publishes, must match every other replica's.
    pub(super) fn end_batch(&mut self, id: NodeId) -> Res<()> {
        let h = self.hosts.get_mut(&id).expect("host");
        h.machine.flush();
        let (index, d) = (h.machine.applied, h.machine.digest());
        self.check_digest(id, index, d)
    }

    pub(super) fn serve_reads(&mut self, id: NodeId) {
        let h = self.hosts.get_mut(&id).expect("host");
        let applied = h.machine.applied;
        let mut done = Vec::new();
        h.pending_reads.retain(|&(rid, idx)| {
            if idx <= applied {
                done.push(rid);
                false
            } else {
                true
            }
        });
        for rid in done {
            if let Some((c, hist, input)) = self.read_owner.remove(&rid) {
                let v = self.hosts[&id].machine.kv.get(&input.key()).copied();
                if self.clients[c].op.as_ref().is_some_and(|o| o.hist == hist) {
                    self.complete(c, KvOutput::Get(v));
                }
            }
        }
    }
}
