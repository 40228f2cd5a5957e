//! Clients: each has one operation outstanding (put, compare-and-set or
//! read), opens sessions through the log, and retries at another node on
//! refusal or timeout with the same client tag.

use bytes::Bytes;

use super::machine::{OPEN_SESSION, encode_cmd};
use super::*;

pub(super) struct ClientOp {
    pub(super) hist: usize,
    pub(super) input: KvInput,
    pub(super) tag: Option<ClientTag>,
    /// A write waiting for its client's session to be opened (proposes the registration).
    pub(super) opening: bool,
    pub(super) deadline: u64,
    pub(super) attempts: u32,
}

pub(super) struct Client {
    /// The open session's id (its registration's log index), if any.
    pub(super) session: Option<u64>,
    pub(super) seq: u64,
    pub(super) target: NodeId,
    pub(super) op: Option<ClientOp>,
    pub(super) active: bool,
}

impl Sim {
    pub(super) fn client_event(&mut self, c: usize) -> Res<()> {
        if self.clients[c].op.is_none() {
            if !self.new_ops || !self.clients[c].active {
                return Ok(());
            }
            let key = self.rng.u64(0..self.cfg.keys);
            let input = match self.rng.u32(0..10) {
                // Written values are unique (lincheck pruning relies on it).
                0..=3 => KvInput::Put {
                    key,
                    value: self.fresh_id(),
                },
                4..=6 => {
                    let expected = if self.rng.bool() {
                        None
                    } else {
                        Some(self.rng.u64(1..1_000_000))
                    };
                    // Aim CAS at the real current value often enough to succeed.
                    let expected =
                        match self.hosts.values().find_map(|h| {
                            h.engine.as_ref().map(|_| h.machine.kv.get(&key).copied())
                        }) {
                            Some(v) if self.rng.bool() => v,
                            _ => expected,
                        };
                    KvInput::Cas {
                        key,
                        expected,
                        new: self.fresh_id(),
                    }
                }
                _ => KvInput::Get { key },
            };
            let cl = &mut self.clients[c];
            let write = !matches!(input, KvInput::Get { .. });
            let tag = match cl.session {
                Some(client_id) if write => {
                    cl.seq += 1;
                    Some(ClientTag {
                        client_id,
                        seq: cl.seq,
                    })
                }
                _ => None,
            };
            let hist = self.history.len();
            self.history.push(Operation {
                client: 1000 + c as u64,
                input,
                call: self.now,
                ret: None,
                output: None,
            });
            cl.op = Some(ClientOp {
                hist,
                input,
                tag,
                opening: write && tag.is_none(),
                deadline: 0,
                attempts: 0,
            });
            return self.submit(c);
        }
        let deadline = self.clients[c].op.as_ref().map_or(0, |o| o.deadline);
        if self.now >= deadline {
            return self.submit(c);
        }
        Ok(())
    }

    pub(super) fn submit(&mut self, c: usize) -> Res<()> {
        let n = self.hosts.len() as u64;
        let Some(op) = self.clients[c].op.as_mut() else {
            return Ok(());
        };
        op.attempts += 1;
        if op.attempts > 60 && self.new_ops {
            // Give up: the outcome stays unknown (ret = None) in the history.
            self.clients[c].op = None;
            let t = self.rng.u64(0..2 * TICK);
            self.schedule(t, Ev::Client(c));
            return Ok(());
        }
        let deadline = self.now + 12 * TICK;
        op.deadline = deadline;
        let (hist, input, tag, opening) = (op.hist, op.input, op.tag, op.opening);
        self.schedule_at(deadline, Ev::Client(c));
        let mut target = self.clients[c].target;
        if !self.alive(target) {
            target = self.rng.u64(1..=n);
            self.clients[c].target = target;
        }
        if !self.alive(target) {
            return Ok(());
        }
        let rid = self.fresh_id();
        // The entry's time is the proposing node's clock (it is the leader, or refuses).
        let timestamp_ms =
            (self.now / TICK).saturating_add_signed(self.hosts[&target].clock_offset);
        match tag {
            None if opening => {
                self.prop_owner.insert(rid, (c, hist));
                let kind = EntryKind::Command {
                    client: None,
                    timestamp_ms,
                    data: Bytes::from_static(&[OPEN_SESSION]),
                };
                self.step_node(target, Event::Propose { id: rid, kind })
            }
            None => {
                self.read_owner.insert(rid, (c, hist, input));
                self.step_node(target, Event::Read { id: rid })
            }
            Some(tag) => {
                self.prop_owner.insert(rid, (c, hist));
                let kind = EntryKind::Command {
                    client: Some(tag),
                    timestamp_ms,
                    data: encode_cmd(&input),
                };
                self.step_node(target, Event::Propose { id: rid, kind })
            }
        }
    }

    pub(super) fn client_retry_soon(&mut self, c: usize, hist: usize, hint: Option<NodeId>) {
        let n = self.hosts.len() as u64;
        let cl = &mut self.clients[c];
        let Some(op) = cl.op.as_mut().filter(|o| o.hist == hist) else {
            return;
        };
        cl.target = match hint {
            Some(h) if h != cl.target => h,
            _ => self.rng.u64(1..=n),
        };
        let d = self.rng.u64(100..TICK);
        op.deadline = self.now + d;
        self.schedule(d, Ev::Client(c));
    }

    pub(super) fn complete(&mut self, c: usize, output: KvOutput) {
        let Some(op) = self.clients[c].op.take() else {
            return;
        };
        if op.tag.is_some() && self.rng.u32(0..1000) < self.cfg.session_churn_per_mille {
            // A short-lived client: its session is abandoned, to expire or be evicted.
            self.clients[c].session = None;
        }
        let h = &mut self.history[op.hist];
        h.ret = Some(self.now);
        h.output = Some(output);
        let t = self.rng.u64(0..2 * TICK);
        self.schedule(t, Ev::Client(c));
    }
}
