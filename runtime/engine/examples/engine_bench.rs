//! Engine-only throughput: committed entries per second for a 3-node cluster
//! with in-memory "storage" (persists complete instantly) and an in-memory
//! network (messages delivered in order, instantly), all on one thread.
//!
//! Run: `cargo run --release -p wraft-engine --example engine_bench`
//! Optional: `-- <entries> <payload_bytes>` (defaults 2000000 and 16).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use wraft_engine::*;

struct Cluster {
    engines: Vec<Engine>,
    queue: VecDeque<Message>,
    out: Vec<Action>,
    applied_on_leader: u64,
    messages: u64,
    persists: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let voters = Membership::with_voters([1, 2, 3]);
        let engines = (1..=3)
            .map(|id| {
                let mut c = Config::new(id, 7);
                c.pending_proposals_max = 1 << 20;
                c.snapshot_hint_threshold_entries = 100_000;
                c.log_entries_max = 0;
                c.log_retention_margin_entries = 1024;
                let init = InitialState {
                    snapshot: SnapshotMeta {
                        index: 0,
                        term: 0,
                        membership: voters.clone(),
                    },
                    ..Default::default()
                };
                Engine::new(c, init).expect("engine")
            })
            .collect();
        Cluster {
            engines,
            queue: VecDeque::new(),
            out: Vec::new(),
            applied_on_leader: 0,
            messages: 0,
            persists: 0,
        }
    }

    fn idx(id: NodeId) -> usize {
        (id - 1) as usize
    }

    /// Polls node `i` and executes its actions like an instant host would.
    fn pump(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.out);
        self.engines[i].poll_actions(&mut out);
        let mut persisted = None;
        let mut hint = false;
        for a in out.drain(..) {
            match a {
                Action::Send { msg, .. } => self.queue.push_back(msg),
                Action::Persist(b) => {
                    self.persists += 1;
                    persisted = Some(b.seq);
                }
                Action::Apply { entries } if self.engines[i].role() == Role::Leader => {
                    self.applied_on_leader += entries.len() as u64;
                }
                Action::SnapshotHint { .. } => hint = true,
                _ => {}
            }
        }
        self.out = out;
        if let Some(seq) = persisted {
            self.engines[i]
                .step(Event::Persisted { seq })
                .expect("persisted");
            self.pump(i);
        }
        if hint {
            // The "host" snapshots instantly at its applied index.
            let e = &mut self.engines[i];
            if let Some(meta) = e.snapshot_meta_at(e.applied_index()) {
                e.step(Event::SnapshotCreated { meta }).expect("snapshot");
                self.pump(i);
            }
        }
    }

    fn deliver_all(&mut self) {
        while let Some(m) = self.queue.pop_front() {
            self.messages += 1;
            let i = Self::idx(m.to);
            self.engines[i].step(Event::Message(m)).expect("message");
            self.pump(i);
        }
    }

    fn elect(&mut self) -> usize {
        for _ in 0..100 {
            for i in 0..3 {
                self.engines[i].step(Event::Tick).expect("tick");
                self.pump(i);
            }
            self.deliver_all();
            if let Some(l) = self.engines.iter().position(|e| e.role() == Role::Leader) {
                return l;
            }
        }
        panic!("no leader");
    }
}

fn run(entries: u64, batch: u64, payload: &Bytes) -> (f64, u64, u64) {
    let mut c = Cluster::new();
    let l = c.elect();
    c.deliver_all();
    let start_applied = c.applied_on_leader;
    let (m0, p0) = (c.messages, c.persists);
    let t = Instant::now();
    let mut next_id = 0;
    let mut ticks = 0u64;
    while c.applied_on_leader - start_applied < entries {
        for _ in 0..batch {
            let kind = EntryKind::Command {
                client: None,
                timestamp_ms: 0,
                data: payload.clone(),
            };
            c.engines[l]
                .step(Event::Propose { id: next_id, kind })
                .expect("propose");
            next_id += 1;
        }
        c.pump(l);
        c.deliver_all();
        // Time passes too (heartbeats, check-quorum), once per 1000 entries.
        ticks += batch;
        if ticks >= 1000 {
            ticks = 0;
            for i in 0..3 {
                c.engines[i].step(Event::Tick).expect("tick");
                c.pump(i);
            }
            c.deliver_all();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(c.engines[l].role(), Role::Leader, "leadership stayed put");
    let done = c.applied_on_leader - start_applied;
    (done as f64 / secs, c.messages - m0, c.persists - p0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let payload_bytes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);
    let payload = Bytes::from(vec![7u8; payload_bytes]);
    println!(
        "wraft-engine bench: 3 voters, in-memory network and storage, {payload_bytes}-byte commands, one thread"
    );
    println!(
        "{:>8} {:>10} {:>16} {:>14} {:>14}",
        "batch", "entries", "committed/s", "msgs/entry", "persists/entry"
    );
    for batch in [1u64, 16, 256, 4096] {
        let n = if batch == 1 { entries / 10 } else { entries };
        let (rate, msgs, persists) = run(n, batch, &payload);
        println!(
            "{:>8} {:>10} {:>16.0} {:>14.3} {:>14.4}",
            batch,
            n,
            rate,
            msgs as f64 / n as f64,
            persists as f64 / n as f64
        );
    }
}
