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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use crate::lincheck::{self, CheckResult, KvInput, KvModel, KvOutput, Operation};
use crate::session::{SessionCheck, SessionTable};
use crate::*;

/// Virtual time units per nominal tick.
pub const TICK: u64 = 1000;

/// Simulation parameters. [`SimConfig::new`] gives a faulty 5-voter schedule.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed for everything random.
    pub seed: u64,
    /// Initial voters (ids `1..=voters`).
    pub voters: usize,
    /// Extra nodes, not members at start, available for AddLearner.
    pub spares: usize,
    /// Length of the random (faulty) phase, nominal ticks.
    pub duration_ticks: u64,
    /// Concurrent clients (each with one outstanding operation).
    pub clients: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Inject crashes/restarts.
    pub crashes: bool,
    /// Inject partitions (symmetric and asymmetric).
    pub partitions: bool,
    /// Message drop probability, per mille.
    pub drop_per_mille: u32,
    /// Message duplication probability, per mille.
    pub dup_per_mille: u32,
    /// Inject membership changes.
    pub membership_changes: bool,
    /// Inject leadership transfers.
    pub transfers: bool,
    /// Inject snapshot-transfer interruptions.
    pub snapshot_aborts: bool,
    /// Engine option.
    pub pre_vote: bool,
    /// Engine option.
    pub lease_reads: bool,
    /// Engine `snapshot_hint_threshold_entries`.
    pub snapshot_threshold: u64,
    /// Engine `log_retention_margin_entries`.
    pub retention_margin: u64,
    /// Snapshot stream chunk size, bytes.
    pub snapshot_chunk_bytes: u64,
    /// Probability, per mille, that a host defers its poll after stepping an
    /// event: everything that reaches the node until the poll runs (within
    /// `multi_step_poll_delay_max`, virtual time units) is stepped before one
    /// `poll_actions`. 0 polls after every event (and draws no randomness for it).
    pub multi_step_per_mille: u32,
    /// Longest deferral of a poll, virtual time units ([`TICK`] per tick).
    pub multi_step_poll_delay_max: u64,
    /// After healing, a leader must emerge and all operations finish within this, ticks.
    pub liveness_bound_ticks: u64,
    /// Search budget for the linearizability checker, steps per key.
    pub lincheck_max_steps: u64,
    /// Most client sessions a replica's table keeps (LRU eviction past it).
    pub session_cap: usize,
    /// A session idle this long in entry time is expired (entry time is the
    /// proposing leader's clock, in virtual ticks).
    pub session_expiry_ms: u64,
    /// Per mille of completed writes after which the client abandons its
    /// session and opens a new one for its next write (short-lived clients).
    pub session_churn_per_mille: u32,
    /// Leaders' clocks jump forward and back (entry timestamps disagree
    /// between leaders; a jump past the expiry expires every session).
    pub clock_jumps: bool,
    /// Replicas end apply batches at random points inside each `Apply`, so
    /// no two replicas (nor one replica across restarts) cut them alike.
    pub batch_cuts: bool,
}

impl SimConfig {
    /// All faults on, 5 voters + 2 spares, 400 ticks.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            voters: 5,
            spares: 2,
            duration_ticks: 400,
            clients: 4,
            keys: 3,
            crashes: true,
            partitions: true,
            drop_per_mille: 30,
            dup_per_mille: 20,
            membership_changes: true,
            transfers: true,
            snapshot_aborts: true,
            pre_vote: true,
            lease_reads: false,
            snapshot_threshold: 20,
            retention_margin: 5,
            snapshot_chunk_bytes: 64,
            multi_step_per_mille: 200,
            multi_step_poll_delay_max: TICK / 2,
            liveness_bound_ticks: 400,
            lincheck_max_steps: 20_000_000,
            session_cap: 6,
            session_expiry_ms: 60,
            session_churn_per_mille: 150,
            clock_jumps: true,
            batch_cuts: true,
        }
    }
}

/// What a finished run observed.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Events processed.
    pub events: u64,
    /// Client operations completed with an answer.
    pub ops_completed: u64,
    /// Client operations left with an unknown outcome.
    pub ops_unknown: u64,
    /// Highest committed index seen.
    pub max_commit: LogIndex,
    /// Highest term seen.
    pub max_term: Term,
    /// Snapshots installed on followers.
    pub snapshots_installed: u64,
    /// Snapshot chunks delivered.
    pub chunks_delivered: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Membership changes committed (applied by the first node).
    pub conf_changes_applied: u64,
    /// Leadership transfers requested.
    pub transfers: u64,
    /// Duplicate client commands suppressed by the session table.
    pub duplicates_suppressed: u64,
    /// Commands refused because their session was unknown (expired or evicted).
    pub unknown_sessions: u64,
    /// Client sessions opened through the log.
    pub sessions_opened: u64,
    /// Reads served from a lease.
    pub lease_reads: u64,
    /// Polls that collected the actions of two or more stepped events.
    pub multi_event_polls: u64,
}

/// A violated property, with the seed to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// Seed of the run.
    pub seed: u64,
    /// Virtual time of the failure.
    pub time: u64,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} at t={}: {}", self.seed, self.time, self.message)
    }
}

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
enum Applied {
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
    fn new(session_cap: usize, session_expiry_ms: u64) -> Self {
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

    fn size_bytes(&self) -> u64 {
        64 + 16 * self.kv.len() as u64 + 48 * self.sessions.len() as u64
    }

    /// Ends the current batch: completes the outputs of admitted commands.
    fn flush(&mut self) {
        for (tag, out) in self.pending.drain(..) {
            self.sessions.complete(tag, out);
        }
    }

    /// Applies one entry inside the current batch; `Err` if a tag is applied twice.
    fn apply(&mut self, e: &Entry) -> Result<Option<Applied>, String> {
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
const OPEN_SESSION: u8 = 3;

fn encode_cmd(i: &KvInput) -> Bytes {
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

fn hash_of<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

#[derive(Clone, Debug)]
struct Chunk {
    from: NodeId,
    to: NodeId,
    term: Term,
    meta: SnapshotMeta,
    offset: u64,
    len: u64,
    total: u64,
    data: Arc<Machine>,
}

#[derive(Clone, Debug)]
enum NetMsg {
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
enum Ev {
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

use StorageOp as WOp;

struct Outgoing {
    meta: SnapshotMeta,
    data: Arc<Machine>,
}

struct Staged {
    from: NodeId,
    term: Term,
    meta: SnapshotMeta,
    total: u64,
    durable: u64,
    data: Arc<Machine>,
    /// `SnapshotReceived` was stepped; the engine's answer (an install or
    /// nothing) comes with the next poll, so the staging is kept until then.
    reported: bool,
}

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
    writer: VecDeque<(u64, WOp)>,
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

struct ClientOp {
    hist: usize,
    input: KvInput,
    tag: Option<ClientTag>,
    /// A write waiting for its client's session to be opened (proposes the registration).
    opening: bool,
    deadline: u64,
    attempts: u32,
}

struct Client {
    /// The open session's id (its registration's log index), if any.
    session: Option<u64>,
    seq: u64,
    target: NodeId,
    op: Option<ClientOp>,
    active: bool,
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
        c.max_log_entries = self.cfg.snapshot_threshold * 4;
        c.log_retention_margin_entries = self.cfg.retention_margin;
        c.max_append_entries = 8;
        c.max_append_bytes = 256;
        c.max_inflight_append_msgs = 4;
        c.max_pending_proposals = 32;
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

    /// Runs the whole scenario: random phase, heal, liveness, final reads and
    /// the linearizability check.
    ///
    /// # Errors
    /// The first violated property.
    pub fn run(mut self) -> Res<SimReport> {
        let first_fault = self.rng.u64(TICK..5 * TICK);
        self.schedule(first_fault, Ev::Fault);
        self.run_for(self.cfg.duration_ticks)?;
        // Heal everything and stop injecting faults.
        self.faults_on = false;
        self.heal();
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        for id in ids {
            self.restart(id);
        }
        self.new_ops = false;
        let bound = self.cfg.liveness_bound_ticks;
        let ok = self.run_until(bound, |s| {
            s.leader().is_some_and(|l| {
                s.engine(l)
                    .is_some_and(|e| e.commit_index() >= e.last_index() && e.commit_index() > 0)
            }) && s.clients.iter().all(|c| c.op.is_none())
        })?;
        if !ok {
            let open = self.clients.iter().filter(|c| c.op.is_some()).count();
            return Err(self.fail(format!(
                "liveness: {bound} ticks after healing, leader = {:?}, {open} client operations still open\n{}",
                self.leader(),
                self.describe()
            )));
        }
        // Final reads of every key: every acknowledged write must be visible.
        for c in &mut self.clients {
            c.active = false;
        }
        let reader = self.clients.len();
        self.clients.push(Client {
            session: None,
            seq: 0,
            target: self.leader().unwrap_or(1),
            op: None,
            active: false,
        });
        for key in 0..self.cfg.keys {
            let hist = self.history.len();
            let input = KvInput::Get { key };
            self.history.push(Operation {
                client: 999,
                input,
                call: self.now,
                ret: None,
                output: None,
            });
            self.clients[reader].op = Some(ClientOp {
                hist,
                input,
                tag: None,
                opening: false,
                deadline: self.now,
                attempts: 0,
            });
            self.submit(reader)?;
            let ok = self.run_until(bound, |s| s.clients[reader].op.is_none())?;
            if !ok {
                return Err(self.fail(format!(
                    "liveness: final read of key {key} did not finish in {bound} ticks"
                )));
            }
        }
        self.report.ops_completed = self.history.iter().filter(|o| o.ret.is_some()).count() as u64;
        self.report.ops_unknown = self.history.len() as u64 - self.report.ops_completed;
        self.report.lease_reads = self
            .hosts
            .values()
            .filter_map(|h| h.engine.as_ref())
            .map(|e| e.stats().lease_reads)
            .sum();
        // Values are unique, so abandoned writes nobody observed can be pruned.
        let history = lincheck::prune_unobserved_pending(&self.history);
        if self.trace {
            let mut per_key: BTreeMap<u64, (usize, usize, u64)> = BTreeMap::new();
            for o in &history {
                let e = per_key.entry(o.input.key()).or_default();
                e.0 += 1;
                if o.ret.is_none() {
                    e.1 += 1;
                }
                e.2 = e.2.max(o.ret.unwrap_or(self.now) - o.call);
            }
            eprintln!("history per key (ops, unknown, longest op): {per_key:?}");
        }
        match lincheck::check(&KvModel, &history, self.cfg.lincheck_max_steps) {
            CheckResult::Linearizable => Ok(self.report),
            CheckResult::Unknown => {
                Err(self.fail("linearizability check ran out of budget".into()))
            }
            CheckResult::NotLinearizable { partition } => {
                let ops: Vec<String> = partition
                    .iter()
                    .map(|&i| format!("{:?}", history[i]))
                    .collect();
                Err(self.fail(format!(
                    "history is not linearizable; offending key's operations:\n  {}",
                    ops.join("\n  ")
                )))
            }
        }
    }

    /// Human-readable state of every node and open client operation (for failure reports).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for h in self.hosts.values() {
            match &h.engine {
                Some(e) => s.push_str(&format!(
                    "  node {}: {:?} term {} leader {:?} commit {} applied {} last {} floor {} durable {} snap {} members {:?} installing {} machine.applied {} waiting {:?} reads {:?}\n",
                    h.id,
                    e.role(),
                    e.term(),
                    e.leader(),
                    e.commit_index(),
                    e.applied_index(),
                    e.last_index(),
                    e.log_floor(),
                    e.durable_index(),
                    e.snapshot().index,
                    e.membership(),
                    e.is_installing_snapshot(),
                    h.machine.applied,
                    h.waiting_apply,
                    h.pending_reads,
                )),
                None => s.push_str(&format!("  node {}: down\n", h.id)),
            }
        }
        for c in &self.clients {
            if let Some(op) = &c.op {
                s.push_str(&format!(
                    "  client session {:?}: target {} op {:?} tag {:?} attempts {} deadline {}\n",
                    c.session, c.target, op.input, op.tag, op.attempts, op.deadline
                ));
            }
        }
        s
    }

    // ----- event handling ------------------------------------------------

    fn handle(&mut self, ev: Ev) -> Res<()> {
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

    fn net_send(&mut self, m: NetMsg) {
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

    /// Persist-before-send: nothing leaves that reveals non-durable state.
    fn check_send(&self, id: NodeId, m: &Message) -> Res<()> {
        let h = &self.hosts[&id];
        let prospective = matches!(
            m.body,
            MessageBody::RequestVote { pre_vote: true, .. }
                | MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true
                }
        );
        if !prospective && m.term > h.d_hs.term {
            return Err(self.fail(format!(
                "persist-before-send: node {id} sent {} with term {} but its durable term is {}",
                m.body.kind_name(),
                m.term,
                h.d_hs.term
            )));
        }
        match &m.body {
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } if !(h.d_hs.term > m.term
                || (h.d_hs.term == m.term && h.d_hs.vote == Some(m.to))) =>
            {
                // Durable means: this vote, or a later term (which can never vote in m.term again).
                return Err(self.fail(format!(
                        "persist-before-send: node {id} granted its vote to {} in term {} but durable state is {:?}",
                        m.to, m.term, h.d_hs
                    )));
            }
            MessageBody::AppendEntriesResponse {
                success: true,
                match_index,
                ..
            } => {
                let mi = *match_index;
                let durable = mi <= h.d_floor.max(h.d_snap.0.index) || h.d_log.contains_key(&mi);
                if !durable {
                    return Err(self.fail(format!(
                        "persist-before-send: node {id} acknowledged index {mi} to {} in term {} which is not durable (durable log ends at {:?}, durable floor {}, durable snapshot {}; engine commit {:?} durable_index {:?})",
                        m.to,
                        m.term,
                        h.d_log.keys().next_back(),
                        h.d_floor,
                        h.d_snap.0.index,
                        h.engine.as_ref().map(|e| e.commit_index()),
                        h.engine.as_ref().map(|e| e.durable_index()),
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn run_actions(&mut self, id: NodeId) -> Res<()> {
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
                self.writer_push(id, WOp::Persist(b));
            }
            Action::CompactLog { up_to } => self.writer_push(id, WOp::Compact(up_to)),
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

    fn writer_push(&mut self, id: NodeId, op: WOp) {
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

    fn writer_done(&mut self, id: NodeId, inc: u64, upto: u64) -> Res<()> {
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
                WOp::Persist(b) => {
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
                WOp::Compact(up_to) => {
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

    fn apply_entry(&mut self, id: NodeId, e: &Entry) -> Res<()> {
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
    fn end_batch(&mut self, id: NodeId) -> Res<()> {
        let h = self.hosts.get_mut(&id).expect("host");
        h.machine.flush();
        let (index, d) = (h.machine.applied, h.machine.digest());
        self.check_digest(id, index, d)
    }

    fn check_digest(&mut self, id: NodeId, index: LogIndex, d: u64) -> Res<()> {
        match self.digests.get(&index) {
            Some(&x) if x != d => Err(self.fail(format!(
                "state machine safety: node {id} has a different state digest at index {index}"
            ))),
            Some(_) => Ok(()),
            None => {
                self.digests.insert(index, d);
                Ok(())
            }
        }
    }

    fn serve_reads(&mut self, id: NodeId) {
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

    // ----- snapshots -------------------------------------------------------

    fn snapshot_done(&mut self, id: NodeId, inc: u64) -> Res<()> {
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

    fn send_chunk(&mut self, from: NodeId, to: NodeId, offset: u64) {
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

    fn on_chunk(&mut self, c: Chunk) -> Res<()> {
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

    fn install_done(&mut self, id: NodeId, inc: u64) -> Res<()> {
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

    // ----- clients ----------------------------------------------------------

    fn client_event(&mut self, c: usize) -> Res<()> {
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

    fn submit(&mut self, c: usize) -> Res<()> {
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

    fn client_retry_soon(&mut self, c: usize, hist: usize, hint: Option<NodeId>) {
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

    fn complete(&mut self, c: usize, output: KvOutput) {
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

    // ----- faults -------------------------------------------------------------

    fn inject_fault(&mut self) -> Res<()> {
        let ids: Vec<NodeId> = self.hosts.keys().copied().collect();
        if self.cfg.clock_jumps && self.rng.u32(0..8) == 0 {
            // A node's clock jumps, often past the session expiry, forward or back.
            let x = ids[self.rng.usize(0..ids.len())];
            let reach = self.cfg.session_expiry_ms.min(1 << 20) as i64 * 3;
            self.hosts.get_mut(&x).expect("host").clock_offset = self.rng.i64(-reach..=reach);
        }
        let pick = |rng: &mut fastrand::Rng| ids[rng.usize(0..ids.len())];
        match self.rng.u32(0..100) {
            0..=11 if self.cfg.partitions => {
                let x = pick(&mut self.rng);
                self.isolate(x);
            }
            12..=19 if self.cfg.partitions => {
                // Split into two random groups.
                let group: BTreeSet<NodeId> =
                    ids.iter().copied().filter(|_| self.rng.bool()).collect();
                for &a in &ids {
                    for &b in &ids {
                        if group.contains(&a) != group.contains(&b) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
            20..=27 if self.cfg.partitions => {
                // One link: one direction (asymmetric) or both (a partial partition).
                let (a, b) = (pick(&mut self.rng), pick(&mut self.rng));
                if a != b {
                    self.block(a, b);
                    if self.rng.bool() {
                        self.block(b, a);
                    }
                }
            }
            28..=45 => self.heal(),
            46..=55 if self.cfg.crashes => {
                let crashed = ids.iter().filter(|i| !self.alive(**i)).count();
                if crashed < 2 {
                    // Leaders are the interesting victims (unpersisted tail, in-flight commits).
                    let x = match self.leader() {
                        Some(l) if self.rng.bool() => l,
                        _ => pick(&mut self.rng),
                    };
                    self.crash(x);
                }
            }
            56..=67 if self.cfg.crashes => {
                let dead: Vec<NodeId> = ids.iter().copied().filter(|i| !self.alive(*i)).collect();
                if !dead.is_empty() {
                    let x = dead[self.rng.usize(0..dead.len())];
                    self.restart(x);
                }
            }
            68..=79 if self.cfg.membership_changes => {
                if let Some(l) = self.leader() {
                    let m = self.engine(l).expect("leader").membership().clone();
                    let non_members: Vec<NodeId> =
                        ids.iter().copied().filter(|i| !m.contains(*i)).collect();
                    let learners: Vec<NodeId> = m.learners.iter().copied().collect();
                    let voters: Vec<NodeId> = m.voters.iter().copied().collect();
                    let change = match self.rng.u32(0..3) {
                        0 if !non_members.is_empty() => Some(ConfChange::AddLearner(
                            non_members[self.rng.usize(0..non_members.len())],
                        )),
                        1 if !learners.is_empty() => Some(ConfChange::PromoteLearner(
                            learners[self.rng.usize(0..learners.len())],
                        )),
                        2 if voters.len() > 3 => Some(ConfChange::RemoveNode(
                            voters[self.rng.usize(0..voters.len())],
                        )),
                        2 if !learners.is_empty() => Some(ConfChange::RemoveNode(
                            learners[self.rng.usize(0..learners.len())],
                        )),
                        _ => None,
                    };
                    if let Some(ch) = change {
                        self.propose_conf_change(l, ch)?;
                    }
                }
            }
            80..=89 if self.cfg.transfers => {
                if let Some(l) = self.leader() {
                    let voters: Vec<NodeId> = self
                        .engine(l)
                        .expect("leader")
                        .membership()
                        .voters
                        .iter()
                        .copied()
                        .filter(|v| *v != l)
                        .collect();
                    if !voters.is_empty() {
                        let to = voters[self.rng.usize(0..voters.len())];
                        self.report.transfers += 1;
                        self.step_node(l, Event::TransferLeadership { to })?;
                    }
                }
            }
            90..=99 if self.cfg.snapshot_aborts => {
                let with_out: Vec<(NodeId, NodeId, LogIndex)> = self
                    .hosts
                    .values()
                    .flat_map(|h| {
                        h.outgoing
                            .iter()
                            .map(move |(to, o)| (h.id, *to, o.meta.index))
                    })
                    .collect();
                if !with_out.is_empty() {
                    let (from, to, index) = with_out[self.rng.usize(0..with_out.len())];
                    self.hosts
                        .get_mut(&from)
                        .expect("host")
                        .outgoing
                        .remove(&to);
                    self.step_node(from, Event::SnapshotTransferFailed { to, index })?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    // ----- checks ----------------------------------------------------------------

    fn check_log_matching(&mut self, id: NodeId, b: &PersistBatch) -> Res<()> {
        let e = self.hosts[&id].engine.as_ref().expect("alive");
        let mut checks = Vec::with_capacity(b.entries.len());
        for (k, en) in b.entries.iter().enumerate() {
            let prev_term = if k > 0 {
                b.entries[k - 1].term
            } else {
                e.log_term(en.index - 1).unwrap_or(u64::MAX)
            };
            checks.push(((en.index, en.term), (hash_of(en), prev_term)));
        }
        for (key, val) in checks {
            match self.entries_seen.get(&key) {
                Some(&(h, pt))
                    if h != val.0 || (pt != val.1 && pt != u64::MAX && val.1 != u64::MAX) =>
                {
                    return Err(self.fail(format!(
                        "log matching: node {id} persisted entry (index {}, term {}) that differs from another node's",
                        key.0, key.1
                    )));
                }
                Some(_) => {}
                None => {
                    self.entries_seen.insert(key, val);
                }
            }
        }
        Ok(())
    }

    fn check_leader_completeness(&mut self, id: NodeId, term: Term) -> Res<()> {
        let e = self.hosts[&id].engine.as_ref().expect("alive");
        if let Some((&max, _)) = self.committed.last_key_value()
            && e.last_index() < max
        {
            return Err(self.fail(format!(
                    "leader completeness: node {id} became leader of term {term} with last index {} < committed {max}",
                    e.last_index()
                )));
        }
        for (&i, &(t, h)) in self.committed.range(e.log_floor() + 1..) {
            let ok = e
                .log_entry(i)
                .is_some_and(|en| en.term == t && hash_of(en) == h);
            if !ok {
                return Err(self.fail(format!(
                    "leader completeness: node {id} leader of term {term} lacks committed entry {i} (term {t})"
                )));
            }
        }
        Ok(())
    }

    /// The engine's own invariants ([`Engine::check_invariants`]) on node
    /// `id`: after every poll, and after every step whose poll is deferred
    /// (a step polled at once is checked after that poll; nothing can see
    /// the state in between).
    fn check_engine_invariants(&self, id: NodeId) -> Res<()> {
        if let Some(e) = self.hosts.get(&id).and_then(|h| h.engine.as_ref())
            && let Err(v) = e.check_invariants()
        {
            return Err(self.fail(format!("node {id}: engine invariant violated: {v}")));
        }
        Ok(())
    }

    fn check_node(&mut self, id: NodeId) -> Res<()> {
        let Some(e) = self.hosts[&id].engine.as_ref() else {
            return Ok(());
        };
        let commit = e.commit_index();
        let from = self.hosts[&id].checked_commit.max(e.log_floor());
        let mut found = Vec::new();
        for i in from + 1..=commit {
            if let Some(en) = e.log_entry(i) {
                found.push((i, en.term, hash_of(en)));
            }
        }
        let (role, term, unc) = (e.role(), e.term(), e.uncommitted_conf_changes());
        self.report.max_commit = self.report.max_commit.max(commit);
        self.report.max_term = self.report.max_term.max(term);
        self.hosts.get_mut(&id).expect("host").checked_commit = commit;
        for (i, t, h) in found {
            match self.committed.get(&i) {
                Some(&(t2, h2)) if (t2, h2) != (t, h) => {
                    return Err(self.fail(format!(
                        "state machine safety: node {id} committed (index {i}, term {t}) but (term {t2}) was committed before"
                    )));
                }
                Some(_) => {}
                None => {
                    self.committed.insert(i, (t, h));
                }
            }
        }
        if role == Role::Leader {
            match self.leaders.get(&term) {
                Some(&l) if l != id => {
                    return Err(self.fail(format!(
                        "election safety: nodes {l} and {id} are both leaders of term {term}"
                    )));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                }
            }
            if unc > 1 {
                return Err(self.fail(format!(
                    "leader {id} has {unc} uncommitted membership changes"
                )));
            }
        }
        Ok(())
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
