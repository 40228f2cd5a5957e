//! The driver: the one task that owns the Raft engine. It turns transport messages, client
//! requests, durable notifications, snapshot events and ticks into engine events, and executes
//! the engine's actions in order (`actions`). Client requests are in `requests`, snapshot
//! creation, transfer and compaction in `snapshots`.

mod actions;
mod persist;
mod requests;
pub(crate) mod snapshots;
pub(crate) mod stop;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use wraft_engine::{Action, Engine, Event, Message, MessageBody, Role};
use wraft_storage::Storage;
use wraft_transport::{AddressBook, Transport};

use crate::apply::{ApplyMsg, ApplyState, ReadTarget};
use crate::health::Readiness;
use crate::snapshot::SnapEvent;
use wraft_proto::{MachineLimits, PeerStatus, Request, RequestError, Response, Status};

use crate::driver::snapshots::SnapState;

/// Most requests and raft messages taken in one driver turn before the
/// engine's actions are executed; they share one persist and one append.
pub const DRIVER_BATCH_EVENTS_MAX: usize = 4096;
/// Capacity of the queue from client connections to the driver, requests.
pub const REQUEST_QUEUE_MAX: usize = 65_536;

/// A request from a client connection to the driver.
pub(crate) struct ClientCall {
    pub request: Request,
    /// A deploy's module as checked off the driver (the driver must not spend milliseconds
    /// hashing a large module while heartbeats wait). `None` for other requests. Both senders
    /// (the client server and `Node::call`) set it for every deploy; the driver hashes a
    /// deploy itself only if a future sender does not.
    pub module: Option<CheckedModule>,
    pub reply: oneshot::Sender<Response>,
}

/// What the sender of a deploy established about its module before handing it to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedModule {
    /// SHA-256 of the module.
    pub sha256: [u8; 32],
    /// Where the deploying leader placed it, if it may be deployed by hash (see
    /// `crate::modules`); `None`: the module goes in the entry.
    pub placed: Option<Placed>,
    /// It was compiled on this node (a leader compiles a deploy's module before proposing it;
    /// a follower only checks it, and the driver then redirects to the leader).
    pub compiled: bool,
}

/// The members a deploy's module was placed on, as the leader saw the configuration then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Every member (voters and learners) considered.
    pub members: Vec<u64>,
    /// Those that hold the module (this node among them).
    pub holders: Vec<u64>,
}

impl Placed {
    /// Whether a by-hash entry is still safe under `membership`: no member joined since the
    /// placement (it was neither given the module nor asked whether it can take it by hash),
    /// and the holders are a majority of the voters.
    pub(crate) fn still_holds(&self, membership: &wraft_engine::Membership) -> bool {
        let unasked = membership
            .voters
            .iter()
            .chain(&membership.learners)
            .any(|m| !self.members.contains(m));
        let holding = membership
            .voters
            .iter()
            .filter(|v| self.holders.contains(v))
            .count();
        !unasked && holding * 2 > membership.voters.len()
    }
}

impl ClientCall {
    /// Hand `request` to the driver and wait for its answer (both callers, the client server
    /// and `Node::call`, go through here).
    pub(crate) async fn call(
        driver: &mpsc::Sender<ClientCall>,
        request: Request,
        module: Option<CheckedModule>,
    ) -> Response {
        let (tx, rx) = oneshot::channel();
        driver
            .send(ClientCall {
                request,
                module,
                reply: tx,
            })
            .await
            .map_err(|_| {
                RequestError::Busy("this node is shutting down; retry at another".into())
            })?;
        // Both refusals are retryable: the node is going away, the cluster is not.
        rx.await.map_err(|_| {
            RequestError::Timeout(
                "this node stopped before answering; retrying with the same tag is safe".into(),
            )
        })?
    }
}

pub(crate) enum PendingProposal {
    /// Answer with the machine's output once applied.
    Client(oneshot::Sender<Response>),
    /// Membership change: answer once committed.
    Membership(oneshot::Sender<Response>, String),
    /// Fire and forget (e.g. the address record before AddLearner).
    Quiet,
}

impl PendingProposal {
    /// Answer the waiting client, if any, with `e`.
    pub(crate) fn fail(self, e: RequestError) {
        match self {
            PendingProposal::Client(reply) | PendingProposal::Membership(reply, _) => {
                let _ = reply.send(Err(e));
            }
            PendingProposal::Quiet => {}
        }
    }
}

pub(crate) struct PendingRead {
    pub(crate) target: ReadTarget,
    pub(crate) reply: oneshot::Sender<Response>,
}

pub(crate) struct Driver {
    pub(crate) id: u64,
    pub(crate) engine: Engine,
    pub(crate) storage: Arc<Storage>,
    pub(crate) transport: Transport,
    pub(crate) transport_members: wraft_transport::Membership,
    pub(crate) addresses: AddressBook,
    pub(crate) config_book: BTreeMap<u64, wraft_proto::PeerAddr>,
    pub(crate) apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    pub(crate) published: Arc<Mutex<ApplyState>>,
    pub(crate) next_id: u64,
    pub(crate) proposals: HashMap<u64, (Instant, PendingProposal)>,
    pub(crate) reads: HashMap<u64, PendingRead>,
    /// The applier is halted by a node-local failure: this node must not lead.
    pub(crate) apply_halted: bool,
    /// What a deploy proposed here carries (`[guest]` of this node's config).
    pub(crate) deploy_limits: MachineLimits,
    /// The newest index this node proposed a divergence checkpoint for.
    pub(crate) last_checkpoint: u64,
    /// (storage seq, engine persist seq), in submission order.
    /// The engine's newest persist `seq` storage has reported durable.
    pub(crate) durable: u64,
    pub(crate) actions: Vec<Action>,
    pub(crate) metrics: crate::metrics::DriverMetrics,
    pub(crate) snap: SnapState,
    /// Set while stopping gracefully (`stop`).
    pub(crate) stopping: Option<stop::Stopping>,
    /// What `/readyz` is answered from, and what the driver observes for it.
    pub(crate) health: HealthState,
}

/// The driver's side of readiness (`health`): what it learns from its leader's messages, and
/// the channel it publishes a [`Readiness`] into on every tick.
pub(crate) struct HealthState {
    pub(crate) tx: watch::Sender<Readiness>,
    /// The newest time a message came from the leader this node knows, in its term.
    pub(crate) leader_contact: Option<Instant>,
    /// The highest commit index a leader's AppendEntries or heartbeat announced.
    pub(crate) leader_commit: u64,
    /// The newest leader seen (for `wraft_raft_leader_changes_total`).
    pub(crate) last_leader: Option<u64>,
}

impl HealthState {
    pub(crate) fn new(tx: watch::Sender<Readiness>) -> Self {
        HealthState {
            tx,
            leader_contact: None,
            leader_commit: 0,
            last_leader: None,
        }
    }
}

impl Driver {
    // One receiver per input: the select below borrows each separately from `self`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        mut self,
        mut raft_rx: mpsc::Receiver<(u64, Bytes)>,
        mut req_rx: mpsc::Receiver<ClientCall>,
        mut durable_rx: mpsc::UnboundedReceiver<u64>,
        mut snap_rx: mpsc::UnboundedReceiver<SnapEvent>,
        mut stop_rx: mpsc::Receiver<stop::StopRequest>,
        mut shutdown: watch::Receiver<bool>,
        tick: Duration,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The engine's clock is its tick count, and leases are measured in
        // it, so it must never fall behind the monotonic clock: a process
        // stalled past the election timeout (SIGSTOP, a long GC-like pause,
        // an overloaded host) would otherwise wake up believing its lease is
        // still valid and serve a stale read while a newer leader is already
        // committing. Every missed tick is stepped before the next event.
        let mut next_tick = Instant::now() + tick;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(req) = stop_rx.recv() => self.begin_stop(req),
                Some(seq) = durable_rx.recv() => {
                    self.catch_up_ticks(&mut next_tick, tick);
                    self.on_durable(seq);
                    while let Ok(seq) = durable_rx.try_recv() { self.on_durable(seq); }
                }
                Some(ev) = snap_rx.recv() => self.on_snap_event(ev),
                _ = ticker.tick() => {
                    self.catch_up_ticks(&mut next_tick, tick);
                    self.update_gauges();
                }
                Some((from, bytes)) = raft_rx.recv() => {
                    self.catch_up_ticks(&mut next_tick, tick);
                    self.on_raft(from, &bytes);
                    for _ in 0..DRIVER_BATCH_EVENTS_MAX {
                        match raft_rx.try_recv() { Ok((f, b)) => self.on_raft(f, &b), Err(_) => break }
                    }
                }
                Some(call) = req_rx.recv() => {
                    self.catch_up_ticks(&mut next_tick, tick);
                    self.on_request(call);
                    for _ in 0..DRIVER_BATCH_EVENTS_MAX {
                        match req_rx.try_recv() { Ok(c) => self.on_request(c), Err(_) => break }
                    }
                }
            }
            self.execute();
            if self.stopping.is_some() {
                self.advance_stop();
                self.execute();
            }
        }
        tracing::info!(target: "wraft::node", node = self.id, "shutting down");
        // A live export in the applier gives up at its next chunk instead of running to its end.
        self.snap
            .following
            .store(false, std::sync::atomic::Ordering::Release);
        if self.stopping.is_some() {
            // A graceful stop is bounded by its deadline: send the close frames, do not wait
            // out the connections' draining (see `Transport::shutdown_within`).
            let wait = Duration::from_millis(stop::STOP_CLOSE_WAIT_MS);
            self.transport.shutdown_within(wait).await;
        } else {
            self.transport.shutdown().await;
        }
    }

    /// On every tick: the gauges, and the readiness `/readyz` answers from.
    pub(crate) fn update_gauges(&mut self) {
        let (applied, apply_halted, unhealthy_machines) = self
            .published
            .lock()
            .map(|p| {
                let unhealthy: Vec<String> = p
                    .machines
                    .iter()
                    .filter(|m| !m.healthy)
                    .map(|m| m.name.clone())
                    .collect();
                (p.applied_index, p.halted.clone(), unhealthy)
            })
            .unwrap_or_default();
        let leader = self.engine.leader();
        let role = self.role_name();
        let m = &mut self.metrics;
        m.term.set(self.engine.term() as f64);
        m.commit_index.set(self.engine.commit_index() as f64);
        m.last_index.set(self.engine.last_index() as f64);
        m.pending_proposals.set(self.proposals.len() as f64);
        m.pending_reads.set(self.reads.len() as f64);
        m.apply_backlog
            .set(self.engine.commit_index().saturating_sub(applied) as f64);
        let dropped: u64 = self
            .engine
            .membership()
            .members()
            .filter_map(|p| self.transport.peer_stats(p))
            .map(|s| s.dropped_overflow_msgs + s.dropped_link_down_msgs)
            .sum();
        m.transport_dropped.absolute(dropped);
        m.has_leader.set(if leader.is_some() { 1.0 } else { 0.0 });
        if leader.is_some() && leader != self.health.last_leader {
            m.leader_changes.increment(1);
            self.health.last_leader = leader;
        }
        let is_leader = self.engine.role() == Role::Leader;
        let last = self.engine.last_index();
        let engine = &self.engine;
        let id = self.id;
        m.peer_lag(
            engine
                .membership()
                .members()
                .filter(|p| is_leader && *p != id)
                .map(|p| {
                    (
                        p,
                        last.saturating_sub(engine.peer_match_index(p).unwrap_or(0)),
                    )
                }),
        );

        let now = Instant::now();
        if is_leader {
            self.health.leader_contact = Some(now);
        }
        let member = self.engine.membership().members().any(|p| p == self.id);
        self.health.tx.send_replace(Readiness {
            published: now,
            role: if member { role } else { "none" },
            term: self.engine.term(),
            leader,
            leader_contact: self.health.leader_contact,
            commit_index: self.engine.commit_index().max(self.health.leader_commit),
            applied_index: applied,
            apply_halted,
            unhealthy_machines,
        });
    }

    /// This node's role as `status` and `/readyz` name it.
    pub(crate) fn role_name(&self) -> &'static str {
        match self.engine.role() {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Follower if self.engine.membership().learners.contains(&self.id) => "learner",
            Role::Follower => "follower",
        }
    }

    /// Step one `Tick` for every tick period that has fully elapsed on the
    /// monotonic clock since the last one (several after a stall).
    pub(crate) fn catch_up_ticks(&mut self, next_tick: &mut Instant, tick: Duration) {
        let now = Instant::now();
        while *next_tick <= now {
            self.step(Event::Tick);
            *next_tick += tick;
        }
    }

    pub(crate) fn step(&mut self, ev: Event) {
        if let Err(e) = self.engine.step(ev) {
            tracing::warn!(target: "wraft::node", node = self.id, error = %e, "engine refused an event");
        }
    }

    pub(crate) fn on_raft(&mut self, from: u64, bytes: &[u8]) {
        match postcard::from_bytes::<Message>(bytes) {
            Ok(msg) if msg.from == from && msg.to == self.id => {
                // What readiness needs from the leader: the commit index it announces, and
                // that it is still heard from.
                match &msg.body {
                    MessageBody::AppendEntries { leader_commit, .. } => {
                        self.health.leader_commit = self.health.leader_commit.max(*leader_commit);
                    }
                    MessageBody::Heartbeat { commit, .. } => {
                        self.health.leader_commit = self.health.leader_commit.max(*commit);
                    }
                    _ => {}
                }
                let term = msg.term;
                self.step(Event::Message(msg));
                if self.engine.leader() == Some(from) && self.engine.term() == term {
                    self.health.leader_contact = Some(Instant::now());
                }
            }
            Ok(msg) => tracing::warn!(target: "wraft::node", node = self.id, link_peer = from,
                claimed_from = msg.from, to = msg.to, "dropping a raft message whose addresses do not match its link"),
            Err(e) => {
                tracing::warn!(target: "wraft::node", node = self.id, peer = from, error = %e,
                "dropping an undecodable raft message")
            }
        }
    }

    /// Storage made every batch tagged up to `tag` durable: tags are the engine's own persist
    /// sequence numbers (`driver::persist`), so this is the engine's `Persisted` as it is.
    pub(crate) fn on_durable(&mut self, tag: u64) {
        if tag > self.durable {
            self.durable = tag;
            self.step(Event::Persisted { seq: tag });
        }
    }

    pub(crate) fn not_leader(&self) -> RequestError {
        RequestError::NotLeader {
            leader: self
                .engine
                .leader()
                .and_then(|l| self.addresses.get(l).map(|a| (l, a))),
        }
    }

    /// A leader whose applier is halted cannot answer its clients: hand leadership to the
    /// most caught-up voter (nothing happens on a follower or a single-voter cluster).
    pub(crate) fn hand_off_leadership(&mut self) {
        if self.engine.role() != Role::Leader {
            return;
        }
        if let Some(to) = stop::most_caught_up_voter(&self.engine) {
            tracing::warn!(target: "wraft::apply", node = self.id, to,
                "handing leadership over: this node's applier is halted");
            self.step(Event::TransferLeadership { to });
        }
    }

    pub(crate) fn status(&self) -> Status {
        let m = self.engine.membership();
        let (applied, machines, apply_halted) = self
            .published
            .lock()
            .map(|p| (p.applied_index, p.machines.clone(), p.halted.clone()))
            .unwrap_or_default();
        let peers = if self.engine.role() == Role::Leader {
            m.members()
                .filter(|p| *p != self.id)
                .map(|p| PeerStatus {
                    id: p,
                    voter: m.voters.contains(&p),
                    match_index: self.engine.peer_match_index(p).unwrap_or(0),
                    next_index: self.engine.peer_match_index(p).unwrap_or(0) + 1,
                    state: self
                        .transport
                        .peer_stats(p)
                        .map(|s| format!("{:?}", s.state))
                        .unwrap_or_else(|| "unknown".into()),
                })
                .collect()
        } else {
            Vec::new()
        };
        let role = self.role_name();
        Status {
            id: self.id,
            role: role.into(),
            term: self.engine.term(),
            leader: self.engine.leader(),
            commit_index: self.engine.commit_index(),
            applied_index: applied,
            last_index: self.engine.last_index(),
            snapshot_index: self.engine.snapshot().index,
            log_first_index: self.engine.log_floor() + 1,
            snapshot_creating: self.snap.creating,
            voters: m.voters.iter().copied().collect(),
            learners: m.learners.iter().copied().collect(),
            peers,
            machines,
            apply_halted,
        }
    }

    pub(crate) fn send(&mut self, msg: Message) {
        let to = msg.to;
        match wraft_transport::frame::encode_payload_sized(&msg, message_bytes_hint(&msg)) {
            Ok(buf) => {
                if let Err(e) = self.transport.send(to, Bytes::from(buf)) {
                    tracing::debug!(target: "wraft::node", node = self.id, peer = to, error = %e, "send failed");
                }
            }
            Err(e) => {
                tracing::error!(target: "wraft::node", error = %e, "cannot encode a raft message")
            }
        }
    }
}

/// About how many bytes `msg` encodes to: the entries an append carries plus room for the rest,
/// so that encoding it allocates once instead of regrowing its buffer (an append of a full batch
/// doubled its way up through a dozen copies).
fn message_bytes_hint(msg: &Message) -> usize {
    match &msg.body {
        MessageBody::AppendEntries { entries, .. } => {
            64 + entries
                .iter()
                .map(|e| 24 + e.kind.approx_bytes())
                .sum::<usize>()
        }
        _ => 64,
    }
}
