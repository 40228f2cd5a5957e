//! Deterministic, seeded multi-node simulator (feature `sim`).
//!
//! A discrete-event simulation in one thread: every node is an [`Engine`] plus
//! a model host (durable store with a group-commit writer, a key-value state
//! machine using [`SessionTable`], snapshot creation, chunked snapshot
//! streaming and slow installs). The seeded schedule covers ticks at per-node
//! rates (clock drift), message delivery with random delay (reordering), drop,
//! duplication, symmetric/asymmetric partitions, heal, crash (losing
//! unflushed writes) and restart, client writes/CAS/reads with retries,
//! snapshots with multi-chunk transfers (interrupted and resumed), membership
//! changes and leadership transfers. Hosts sometimes step several events
//! before one `poll_actions` (the engine's contract allows any interleaving),
//! and the model store refuses batches the real log store would refuse.
//!
//! After every event it checks Election Safety, Log Matching, Leader
//! Completeness, State Machine Safety (digest at every applied index,
//! including state that arrived by snapshot), persist-before-send and at most
//! one uncommitted membership change; after every poll (and every step whose
//! poll is deferred), the engine's own invariants
//! ([`Engine::check_invariants`]). At the end it heals
//! everything and checks liveness (a leader within a bound, every client
//! operation finished, final reads of every key) and linearizability of the
//! whole client history.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the `Sim` and its hosts, building the cluster, the public driving API, the event loop |
//! | `config.rs` | `SimConfig`, `SimReport`, `SimFailure` |
//! | `run.rs` | the whole scenario: random phase, heal, liveness, final reads, linearizability |
//! | `events.rs` | event handling: ticks, the network, executing an engine's actions |
//! | `storage.rs` | the model store with its group-commit writer, and `SimStorage` for a real one |
//! | `machine.rs` | the model state machine (key-value map with sessions) and the replicas' appliers |
//! | `snapshots.rs` | snapshot creation, chunked streaming with resume, installs |
//! | `clients.rs` | clients: operations, sessions, retries |
//! | `faults.rs` | the fault schedule |
//! | `checks.rs` | the safety properties checked after every event, and the engines' invariants |

mod checks;
mod clients;
mod config;
mod events;
mod faults;
mod machine;
mod run;
mod snapshots;
mod storage;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::lincheck::{KvInput, KvOutput, Operation};
use crate::*;

use clients::Client;
pub use config::{SimConfig, SimFailure, SimReport};
use events::Ev;
pub use machine::Machine;
use snapshots::{Outgoing, Staged};
pub use storage::{SimStorage, StorageOp};

/// Virtual time units per nominal tick.
pub const TICK: u64 = 1000;

/// A stable digest of `t` within one run (entries, for the log checks).
fn hash_of<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// One node: its engine (while up) and the model host around it. The
/// `d_` fields are what survives a crash; the rest is lost with it.
struct Host {
    id: NodeId,
    incarnation: u64,
    engine: Option<Engine>,
    period: u64,
    // durable
    d_hs: HardState,
    d_log: BTreeMap<LogIndex, Entry>,
    d_floor: LogIndex,
    d_snap: (SnapshotMeta, Arc<Machine>),
    // volatile
    /// A deferred poll is scheduled: events are stepped without polling until it runs.
    poll_deferred: bool,
    /// Events stepped since the last poll.
    events_since_poll: u32,
    writer: VecDeque<(u64, StorageOp)>,
    w_issued: u64,
    w_done: u64,
    w_scheduled: bool,
    machine: Machine,
    /// This node's clock error, ticks: what it stamps on the entries it proposes as leader.
    clock_offset: i64,
    waiting_apply: BTreeMap<LogIndex, ProposalId>,
    pending_reads: Vec<(ReadId, LogIndex)>,
    snap_capture: Option<(SnapshotMeta, Arc<Machine>)>,
    snapshotting: bool,
    installing: Option<(SnapshotMeta, Arc<Machine>)>,
    staged: Option<Staged>,
    outgoing: BTreeMap<NodeId, Outgoing>,
    checked_commit: LogIndex,
}

/// The simulator. Build with [`Sim::new`], then [`Sim::run`] for the full
/// random schedule and checks, or drive it step by step for scripted tests.
pub struct Sim {
    cfg: SimConfig,
    rng: fastrand::Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    hosts: BTreeMap<NodeId, Host>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    clients: Vec<Client>,
    history: Vec<Operation<KvInput, KvOutput>>,
    prop_owner: HashMap<ProposalId, (usize, usize)>,
    read_owner: HashMap<ReadId, (usize, usize, KvInput)>,
    next_id: u64,
    trace: bool,
    storage: Option<Box<dyn SimStorage>>,
    faults_on: bool,
    new_ops: bool,
    leaders: BTreeMap<Term, NodeId>,
    committed: BTreeMap<LogIndex, (Term, u64)>,
    entries_seen: HashMap<(LogIndex, Term), (u64, Term)>,
    digests: HashMap<LogIndex, u64>,
    report: SimReport,
    failure: Option<String>,
}

type Res<T> = Result<T, SimFailure>;

impl Sim {
    /// Builds the cluster: voters `1..=voters` bootstrapped with that
    /// configuration; spares start empty (they learn membership from the log).
    pub fn new(cfg: SimConfig) -> Sim {
        Self::build(cfg, None)
    }

    /// Like [`Sim::new`], with a real log store in the loop (see [`SimStorage`]).
    pub fn with_storage(cfg: SimConfig, storage: Box<dyn SimStorage>) -> Sim {
        Self::build(cfg, Some(storage))
    }

    fn build(cfg: SimConfig, storage: Option<Box<dyn SimStorage>>) -> Sim {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let mut hosts = BTreeMap::new();
        let total = cfg.voters + cfg.spares;
        let voters = Membership::with_voters(1..=cfg.voters as u64);
        for id in 1..=total as u64 {
            let membership = if id as usize <= cfg.voters {
                voters.clone()
            } else {
                Membership::default()
            };
            let meta = SnapshotMeta {
                index: 0,
                term: 0,
                membership,
            };
            let period = TICK + rng.u64(0..90); // < 10% drift between any two nodes
            hosts.insert(
                id,
                Host {
                    id,
                    incarnation: 0,
                    engine: None,
                    period,
                    d_hs: HardState::default(),
                    d_log: BTreeMap::new(),
                    d_floor: 0,
                    d_snap: (
                        meta,
                        Arc::new(Machine::new(cfg.session_cap, cfg.session_expiry_ms)),
                    ),
                    poll_deferred: false,
                    events_since_poll: 0,
                    writer: VecDeque::new(),
                    w_issued: 0,
                    w_done: 0,
                    w_scheduled: false,
                    machine: Machine::new(cfg.session_cap, cfg.session_expiry_ms),
                    clock_offset: 0,
                    waiting_apply: BTreeMap::new(),
                    pending_reads: Vec::new(),
                    snap_capture: None,
                    snapshotting: false,
                    installing: None,
                    staged: None,
                    outgoing: BTreeMap::new(),
                    checked_commit: 0,
                },
            );
        }
        let clients = (0..cfg.clients)
            .map(|_| Client {
                session: None,
                seq: 0,
                target: 1,
                op: None,
                active: true,
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            hosts,
            blocked: BTreeSet::new(),
            clients,
            history: Vec::new(),
            prop_owner: HashMap::new(),
            read_owner: HashMap::new(),
            next_id: 1,
            trace: std::env::var_os("WRAFT_SIM_TRACE").is_some(),
            storage,
            faults_on: true,
            new_ops: true,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            entries_seen: HashMap::new(),
            digests: HashMap::new(),
            report: SimReport::default(),
            failure: None,
            cfg,
        };
        let ids: Vec<NodeId> = sim.hosts.keys().copied().collect();
        for id in ids {
            sim.start_node(id);
        }
        for c in 0..sim.clients.len() {
            let t = sim.rng.u64(0..5 * TICK);
            sim.schedule(t, Ev::Client(c));
        }
        sim
    }

    fn engine_config(&self, id: NodeId, incarnation: u64) -> Config {
        let mut c = Config::new(id, hash_of(&(self.cfg.seed, id, incarnation)));
        c.pre_vote = self.cfg.pre_vote;
        c.lease_reads = self.cfg.lease_reads;
        c.snapshot_hint_threshold_entries = self.cfg.snapshot_threshold;
        c.log_entries_max = self.cfg.snapshot_threshold * 4;
        c.log_retention_margin_entries = self.cfg.retention_margin;
        c.append_entries_max = 8;
        c.append_bytes_max = 256;
        c.inflight_append_msgs_max = 4;
        c.pending_proposals_max = 32;
        c.snapshot_transfer_timeout_ticks = 15;
        c
    }

    fn start_node(&mut self, id: NodeId) {
        let inc = self.hosts[&id].incarnation;
        let cfg = self.engine_config(id, inc);
        let h = self.hosts.get_mut(&id).expect("host");
        let mut init = InitialState {
            hard_state: h.d_hs,
            snapshot: h.d_snap.0.clone(),
            entries: h.d_log.values().cloned().collect(),
        };
        if let Some(st) = self.storage.as_mut() {
            match st.recover(id) {
                Ok((hs, entries)) if hs == init.hard_state && entries == init.entries => {
                    init.entries = entries;
                }
                Ok((hs, entries)) => {
                    self.failure.get_or_insert(format!(
                        "storage recovery of node {id} differs from the model: hard state {hs:?} vs {:?}, \
                         {} entries ({:?}..{:?}) vs {} ({:?}..{:?})",
                        init.hard_state,
                        entries.len(),
                        entries.first().map(|e| e.index),
                        entries.last().map(|e| e.index),
                        init.entries.len(),
                        init.entries.first().map(|e| e.index),
                        init.entries.last().map(|e| e.index),
                    ));
                    return;
                }
                Err(e) => {
                    self.failure
                        .get_or_insert(format!("storage recovery of node {id} failed: {e}"));
                    return;
                }
            }
        }
        let h = self.hosts.get_mut(&id).expect("host");
        match Engine::new(cfg, init) {
            Ok(e) => {
                if let Err(v) = e.check_invariants() {
                    self.failure.get_or_insert(format!(
                        "node {id}: engine invariant violated after restart: {v}"
                    ));
                    return;
                }
                h.machine = (*h.d_snap.1).clone();
                h.checked_commit = e.log_floor();
                h.engine = Some(e);
            }
            Err(e) => {
                self.failure.get_or_insert(format!(
                    "node {id} failed to restart from its durable state: {e}"
                ));
                return;
            }
        }
        let first = self.now + self.rng.u64(1..self.hosts[&id].period);
        self.schedule_at(first, Ev::Tick(id, inc));
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.schedule_at(self.now + delay, ev);
    }

    fn schedule_at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn fail(&self, msg: String) -> SimFailure {
        SimFailure {
            seed: self.cfg.seed,
            time: self.now,
            message: msg,
        }
    }

    fn alive(&self, id: NodeId) -> bool {
        self.hosts.get(&id).is_some_and(|h| h.engine.is_some())
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.hosts
            .values()
            .filter_map(|h| h.engine.as_ref())
            .filter(|e| e.role() == Role::Leader)
            .max_by_key(|e| e.term())
            .map(|e| e.id())
    }

    /// The engine of a live node.
    pub fn engine(&self, id: NodeId) -> Option<&Engine> {
        self.hosts.get(&id).and_then(|h| h.engine.as_ref())
    }

    /// The state machine of a live node.
    pub fn machine(&self, id: NodeId) -> Option<&Machine> {
        self.hosts
            .get(&id)
            .filter(|h| h.engine.is_some())
            .map(|h| &h.machine)
    }

    /// Counters so far.
    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// Current virtual time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Turns random fault injection on or off.
    pub fn set_faults(&mut self, on: bool) {
        self.faults_on = on;
    }

    /// Blocks messages from `from` to `to` (asymmetric partition).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Cuts `id` off from everyone, both directions.
    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        for o in ids {
            if o != id {
                self.blocked.insert((id, o));
                self.blocked.insert((o, id));
            }
        }
    }

    /// Removes all partitions.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Crashes `id`: unflushed writes, volatile state and staged work are lost.
    pub fn crash(&mut self, id: NodeId) {
        let Some(h) = self.hosts.get_mut(&id) else {
            return;
        };
        if h.engine.is_none() {
            return;
        }
        self.report.crashes += 1;
        h.engine = None;
        h.incarnation += 1;
        h.poll_deferred = false;
        h.events_since_poll = 0;
        h.writer.clear();
        h.w_issued = 0;
        h.w_done = 0;
        h.w_scheduled = false;
        h.waiting_apply.clear();
        h.pending_reads.clear();
        h.snap_capture = None;
        h.snapshotting = false;
        h.installing = None;
        h.staged = None;
        h.outgoing.clear();
    }

    /// Restarts a crashed node from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        if self.hosts.contains_key(&id) && !self.alive(id) {
            self.start_node(id);
        }
    }

    /// Feeds an event to a live node and executes its actions, now or (with
    /// probability `multi_step_per_mille`) at a deferred poll that also
    /// collects the actions of every event stepped meanwhile.
    ///
    /// # Errors
    /// A violated property.
    pub fn step_node(&mut self, id: NodeId, ev: Event) -> Res<()> {
        let Some(e) = self.hosts.get_mut(&id).and_then(|h| h.engine.as_mut()) else {
            return Ok(());
        };
        if let Err(err) = e.step(ev) {
            return Err(self.fail(format!("node {id}: engine rejected a host event: {err}")));
        }
        let h = self.hosts.get_mut(&id).expect("host");
        h.events_since_poll = h.events_since_poll.saturating_add(1);
        let poll_now = !h.poll_deferred && {
            let per_mille = self.cfg.multi_step_per_mille;
            per_mille == 0 || self.rng.u32(0..1000) >= per_mille
        };
        if poll_now {
            // The state between this step and its poll is seen by nothing
            // else; the poll's outcome is checked in `run_actions`.
            self.run_actions(id)?;
        } else {
            // The engine waits in this state for other events: check it.
            self.check_engine_invariants(id)?;
            if !self.hosts[&id].poll_deferred {
                let d = self.rng.u64(1..self.cfg.multi_step_poll_delay_max.max(2));
                let h = self.hosts.get_mut(&id).expect("host");
                h.poll_deferred = true;
                let inc = h.incarnation;
                self.schedule(d, Ev::Poll(id, inc));
            }
        }
        self.check_node(id)
    }

    fn deferred_poll(&mut self, id: NodeId, inc: u64) -> Res<()> {
        let h = self.hosts.get_mut(&id).expect("host");
        if h.incarnation != inc || h.engine.is_none() {
            return Ok(());
        }
        h.poll_deferred = false;
        self.run_actions(id)?;
        self.check_node(id)
    }

    /// Proposes a membership change at `id` (the result is ignored).
    ///
    /// # Errors
    /// A violated property.
    pub fn propose_conf_change(&mut self, id: NodeId, change: ConfChange) -> Res<()> {
        let pid = self.fresh_id();
        self.step_node(
            id,
            Event::Propose {
                id: pid,
                kind: EntryKind::ConfChange(ConfChangeEntry::new(change)),
            },
        )
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Runs the event loop for `ticks` nominal ticks.
    ///
    /// # Errors
    /// The first violated property.
    pub fn run_for(&mut self, ticks: u64) -> Res<()> {
        let end = self.now + ticks * TICK;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let ((t, _), ev) = entry.remove_entry();
            self.now = t;
            self.report.events += 1;
            self.handle(ev)?;
            if let Some(f) = self.failure.take() {
                return Err(self.fail(f));
            }
        }
        self.now = end;
        Ok(())
    }

    /// Runs until `pred` holds or `ticks` pass; returns whether it held.
    ///
    /// # Errors
    /// A violated property.
    pub fn run_until(&mut self, ticks: u64, mut pred: impl FnMut(&Sim) -> bool) -> Res<bool> {
        for _ in 0..ticks {
            if pred(self) {
                return Ok(true);
            }
            self.run_for(1)?;
        }
        Ok(pred(self))
    }
}

/// Seeds to run: `WRAFT_SIM_SEED` (one seed) or `default_count` seeds starting
/// at `base` (`WRAFT_SIM_SEEDS` overrides the count).
pub fn seeds_from_env(base: u64, default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("WRAFT_SIM_SEED")
        && let Ok(seed) = s.trim().parse()
    {
        return vec![seed];
    }
    let n = std::env::var("WRAFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default_count);
    (base..base + n).collect()
}
