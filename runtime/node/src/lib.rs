//! The node: storage, transport, the Raft engine and the machines, wired
//! together.
//!
//! ```text
//!  transport ──raft msgs──▶ ┐
//!  clients ──requests────▶  ├─▶ driver task ── owns Engine ──▶ actions, in order:
//!  storage ──durable seq──▶ │                    Persist  → group-commit writer (never waited on)
//!  ticker ──ticks────────▶  ┘                    Send     → transport, at once (never blocks)
//!                                                Apply    → applier task (machine threads)
//! ```
//!
//! The driver never awaits storage, a guest or a peer: a persist is submitted
//! and its completion comes back as an `Event::Persisted`; the engine itself
//! holds back messages that reveal state (votes, acks) until then.
//!
//! Size: this file is over the ~800-line guide (STYLE.md §8): `Node::start` and the driver
//! loop. Snapshot creation and restore are in `snapshot/`, the format and the transfer in
//! `wraft-snapshot`; splitting the driver (recovery, snapshot orchestration, client calls)
//! is a change of its own.

mod apply;
mod divergence;
mod limits;
pub mod metrics;
mod server;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use wraft_engine::{
    Action, ConfChange, ConfChangeEntry, Engine, Entry, EntryKind, Event, InitialState, Membership,
    Message, ProposalError, ReadError, Role, SnapshotMeta,
};
use wraft_storage::{
    LogEntry, SnapshotId, SnapshotPin, Storage, StorageConfig, WriteBatch, WriterEvent,
};
use wraft_transport::certs::{CertDir, TlsIdentity};
use wraft_transport::{AddressBook, Transport, TransportConfig};

pub use apply::ApplyState;
use apply::{Applier, ApplyMsg, ReadTarget};
use snapshot::SnapEvent;
use wraft_config::{FsyncPolicy, NodeConfig};
use wraft_host::{HostConfig, HostEngine};
use wraft_proto::digest::{hex, sha256};
use wraft_proto::{
    Command, Consistency, MachineLimits, PeerStatus, Reply, Request, RequestError, Response,
    SnapshotListing, Status, WasiProfile,
};
use wraft_snapshot::{
    BandwidthLimiter, IncomingSlots, SendOutcome, TransferConfig, receive_snapshot, send_snapshot,
};

/// Most requests and raft messages taken in one driver turn before the
/// engine's actions are executed; they share one persist and one append.
pub const DRIVER_BATCH_EVENTS_MAX: usize = 4096;
/// Capacity of the queue from client connections to the driver, requests.
pub const REQUEST_QUEUE_MAX: usize = 65_536;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage could not be opened or recovered.
    #[error("storage in {dir}: {source}")]
    Storage {
        /// Data directory.
        dir: PathBuf,
        /// The storage error (with the operator's recovery path if corrupt).
        source: Box<wraft_storage::StorageError>,
    },
    /// A log entry on disk passed its checksum but does not decode.
    #[error(
        "log entry {index} in {dir} does not decode ({detail}); the data directory was written by an incompatible version or is damaged"
    )]
    BadEntry {
        /// Data directory.
        dir: PathBuf,
        /// Entry index.
        index: u64,
        /// Decoder message.
        detail: String,
    },
    /// Certificates could not be loaded.
    #[error("certificates in {dir}: {detail}")]
    Certs {
        /// Certificate directory.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The transport could not start.
    #[error("transport: {0}")]
    Transport(#[from] wraft_transport::TransportError),
    /// The wasm host could not start.
    #[error("wasm host: {0}")]
    Host(String),
    /// The metrics endpoint could not start.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The Raft engine refused its configuration or state.
    #[error("raft engine: {0}")]
    Engine(String),
    /// The newest valid snapshot could not be restored.
    #[error("restoring snapshot {0}")]
    Snapshot(String),
}

/// A request from a client connection to the driver.
pub(crate) struct ClientCall {
    pub request: Request,
    /// SHA-256 of a deploy's module, computed off the driver (the driver must not spend
    /// milliseconds hashing a large module while heartbeats wait). `None` for other requests.
    /// Both senders (the client server and `Node::call`) set it for every deploy; the driver
    /// hashes a deploy itself only if a future sender does not.
    pub module_sha256: Option<[u8; 32]>,
    pub reply: oneshot::Sender<Response>,
}

/// A running node. Dropping it does not stop the node; call [`Node::shutdown`].
pub struct Node {
    id: u64,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    driver: tokio::task::JoinHandle<()>,
    requests: mpsc::Sender<ClientCall>,
}

impl Node {
    /// Open storage, recover, bind the endpoint and start serving.
    ///
    /// Must be called inside a multi-threaded tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let id = cfg.node.id;
        let data_dir = cfg.node.data_dir.clone();
        if let Some(addr) = cfg.node.metrics_listen {
            crate::metrics::serve(addr).map_err(NodeError::Metrics)?;
        }
        std::fs::create_dir_all(&data_dir).map_err(|e| NodeError::Storage {
            dir: data_dir.clone(),
            source: Box::new(wraft_storage::StorageError::Io {
                path: data_dir.clone(),
                op: "create data directory",
                source: e,
            }),
        })?;

        // Storage, with durable-point notifications turned into driver events.
        let (durable_tx, durable_rx) = mpsc::unbounded_channel::<u64>();
        let on_event: wraft_storage::EventCallback = Arc::new(move |ev: &WriterEvent| {
            if let WriterEvent::Durable(p) = ev {
                let _ = durable_tx.send(p.seq);
            }
        });
        let mut scfg = StorageConfig::default();
        scfg.fsync = match cfg.storage.fsync {
            FsyncPolicy::Durable => wraft_storage::FsyncPolicy::Durable,
            FsyncPolicy::Relaxed => wraft_storage::FsyncPolicy::Relaxed,
        };
        scfg.segment_bytes = cfg.storage.segment_bytes;
        scfg.preallocate_bytes = cfg.storage.preallocate_bytes;
        scfg.snapshot_retain_count = cfg.snapshot.retain_count as usize;
        // A deploy carries the whole module in one entry.
        scfg.entry_bytes_max = scfg
            .entry_bytes_max
            .max(cfg.guest.module_bytes_max + (64 << 10))
            .max(cfg.client.command_bytes_max + (64 << 10));
        let (storage, recovered) =
            Storage::open(&data_dir, &scfg, Some(on_event)).map_err(|source| {
                NodeError::Storage {
                    dir: data_dir.clone(),
                    source: Box::new(source),
                }
            })?;
        let storage = Arc::new(storage);
        for q in &recovered.snapshots.quarantined {
            tracing::warn!(target: "wraft_node::snapshot", node = id, file = %q.display(),
                "newest snapshot failed verification and was quarantined; using the previous one");
        }

        // The wasm host.
        let hcfg = HostConfig {
            cache_dir: Some(
                cfg.guest
                    .module_cache_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("modules")),
            ),
            module_bytes_max: cfg.guest.module_bytes_max as usize,
            guest_memory_bytes_max: cfg.guest.memory_bytes_max as usize,
            fuel_per_call: cfg.guest.fuel_per_call,
            fuel_per_entry: cfg.guest.fuel_per_entry,
            output_bytes_max: cfg.guest.output_bytes_max as usize,
            watchdog_ms: cfg.guest.watchdog_ms,
            ..HostConfig::default()
        };
        let host = Arc::new(HostEngine::new(hcfg).map_err(|e| NodeError::Host(e.to_string()))?);
        let book = AddressBook::new(cfg.address_book());

        // The applier, restored from the newest valid snapshot (if any)
        // before the engine replays the log above it.
        let published = Arc::new(Mutex::new(ApplyState::default()));
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (snap_tx, snap_rx) = mpsc::unbounded_channel();
        let mut applier = Applier::new(
            id,
            host.clone(),
            storage.clone(),
            book.clone(),
            published.clone(),
            snap_tx.clone(),
        );
        applier.set_check_interval(cfg.raft.divergence_check_entries);
        let snapshot_meta = match recovered.snapshot() {
            Some(info) => {
                let header = applier
                    .recover(info.id())
                    .await
                    .map_err(|e| NodeError::Snapshot(format!("{}: {e}", info.path.display())))?;
                SnapshotMeta {
                    index: header.index,
                    term: header.term,
                    membership: header.membership,
                }
            }
            None => SnapshotMeta {
                index: 0,
                term: 0,
                membership: if cfg.cluster.members.contains_key(&id) {
                    Membership::with_voters(cfg.cluster.members.keys().copied())
                } else {
                    Membership::default()
                },
            },
        };

        // Recover the engine's view: hard state, membership, log.
        let hs = recovered.log.hard_state;
        let mut entries = Vec::new();
        let first = recovered.replay_from().max(1);
        let last = recovered.log.last_index;
        let mut next = first;
        while next <= last {
            let page = storage
                .log
                .entries(next, last + 1, 64 << 20)
                .map_err(|source| NodeError::Storage {
                    dir: data_dir.clone(),
                    source: Box::new(source),
                })?;
            if page.is_empty() {
                break;
            }
            for le in page {
                next = le.index + 1;
                entries.push(decode_entry(&le).map_err(|detail| NodeError::BadEntry {
                    dir: data_dir.clone(),
                    index: le.index,
                    detail,
                })?);
            }
        }
        applier.expect_replay(hs.commit.min(last));
        let snapshot_index = snapshot_meta.index;
        let init = InitialState {
            hard_state: wraft_engine::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            },
            snapshot: snapshot_meta,
            entries,
        };
        tracing::info!(target: "wraft_node", node = id, dir = %data_dir.display(),
            snapshot_index, last_index = last, term = hs.term, "recovered storage");

        let mut ecfg = wraft_engine::Config::new(id, seed_from_time(id));
        let r = &cfg.raft;
        let tick = r.tick_interval_ms.max(1);
        ecfg.heartbeat_interval_ticks = (r.heartbeat_interval_ms / tick).max(1) as u32;
        ecfg.election_timeout_min_ticks = (r.election_timeout_ms / tick).max(3) as u32;
        ecfg.election_timeout_max_ticks = 2 * ecfg.election_timeout_min_ticks;
        ecfg.max_inflight_append_msgs = r.max_inflight_append_msgs as usize;
        ecfg.max_append_entries = r.max_append_entries as usize;
        ecfg.max_append_bytes = r.max_append_bytes as usize;
        ecfg.max_pending_proposals = r.max_pending_proposals as usize;
        ecfg.max_command_bytes =
            (cfg.client.command_bytes_max as usize).max(cfg.guest.module_bytes_max as usize + 4096);
        ecfg.snapshot_hint_threshold_entries = cfg.snapshot.hint_threshold_entries;
        ecfg.max_log_entries = cfg.snapshot.max_log_entries;
        ecfg.log_retention_margin_entries = cfg.snapshot.log_retain_margin_entries;
        // The transfer has its own progress watchdog; the engine re-offers
        // only after a transfer failed or went quiet for twice as long.
        ecfg.snapshot_transfer_timeout_ticks = ((2 * cfg.snapshot.transfer_progress_timeout_ms)
            / tick)
            .clamp(10, u32::MAX as u64) as u32;
        ecfg.lease_reads = r.lease_reads;
        if r.lease_reads {
            ecfg.lease_ticks = ecfg.election_timeout_min_ticks.saturating_sub(1) * 100
                / (100 + ecfg.clock_drift_bound_percent)
                - 1;
        }
        let engine = Engine::new(ecfg, init).map_err(|e| NodeError::Engine(e.to_string()))?;

        // Transport.
        let certs = CertDir::new(&cfg.tls.dir);
        let tls = load_node_tls(&certs, id)?;
        let tmembers = wraft_transport::Membership::new(
            engine
                .membership()
                .members()
                .chain(cfg.address_book().keys().copied()),
        );
        let mut tcfg = TransportConfig::new(id, cfg.node.listen);
        tcfg.inbound_streams_max = cfg.client.connections_max as usize;
        // A deploy entry carries a whole module (a Python guest is ~18 MB): peer frames must
        // fit the largest module the node accepts, plus the message around it.
        tcfg.max_frame_bytes = tcfg
            .max_frame_bytes
            .max((cfg.guest.module_bytes_max + (1 << 20)).min(u64::from(u32::MAX)) as u32);
        let (transport, inbound) = Transport::bind(tcfg, &tls, tmembers.clone(), book.clone())?;
        let addr = transport.local_addr().map_err(|e| {
            NodeError::Transport(wraft_transport::TransportError::Bind {
                addr: cfg.node.listen,
                source: e,
            })
        })?;
        tracing::info!(target: "wraft_node", node = id, %addr, "listening");

        tokio::spawn(applier.run(apply_rx));

        // Snapshot transfers: inbound bulk streams are snapshot offers.
        let xfer_cfg = TransferConfig {
            node_id: id,
            chunk_bytes: cfg.snapshot.chunk_bytes.min(u32::MAX as u64) as u32,
            progress_timeout_ms: cfg.snapshot.transfer_progress_timeout_ms,
            max_incoming_transfers: cfg.snapshot.incoming_transfers_max as usize,
            ..TransferConfig::default()
        }
        .with_test_faults_from_env();
        let limiter = Arc::new(BandwidthLimiter::new(
            Some(cfg.snapshot.transfer_bytes_per_sec_max).filter(|b| *b > 0),
        ));
        tokio::spawn(serve_bulk(
            id,
            inbound.bulk,
            storage.clone(),
            xfer_cfg.clone(),
            Arc::new(IncomingSlots::new(xfer_cfg.max_incoming_transfers)),
            snap_tx.clone(),
        ));

        let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE_MAX);
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(server::serve_clients(
            inbound.clients,
            req_tx.clone(),
            host.clone(),
            cfg.client.clone(),
            shutdown_rx.clone(),
        ));

        let driver = Driver {
            id,
            engine,
            storage,
            transport,
            transport_members: tmembers,
            addresses: book,
            config_book: cfg.address_book(),
            apply_tx,
            published,
            next_id: 1,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            apply_halted: false,
            deploy_limits: cfg.guest.machine_limits(),
            last_checkpoint: 0,
            persists: VecDeque::new(),
            durable: 0,
            actions: Vec::new(),
            metrics: crate::metrics::DriverMetrics::new(id),
            snap: SnapState {
                tx: snap_tx,
                creating: None,
                sending: HashMap::new(),
                installing: None,
                xfer_cfg,
                limiter,
                retain_count: cfg.snapshot.retain_count,
            },
        };
        let driver = tokio::spawn(driver.run(
            inbound.raft,
            req_rx,
            durable_rx,
            snap_rx,
            shutdown_rx,
            Duration::from_millis(tick),
        ));
        Ok(Node {
            id,
            addr,
            shutdown,
            driver,
            requests: req_tx,
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Send a request to this node directly (in-process), as a client would.
    pub async fn call(&self, request: Request) -> Response {
        let module_sha256 = match &request {
            Request::Deploy { module, .. } | Request::DeployWith { module, .. } => {
                let module = module.clone();
                Some(
                    tokio::task::spawn_blocking(move || sha256(&module))
                        .await
                        .map_err(|e| RequestError::Internal(e.to_string()))?,
                )
            }
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(ClientCall {
                request,
                module_sha256,
                reply: tx,
            })
            .await
            .map_err(|_| RequestError::Internal("node is shutting down".into()))?;
        rx.await
            .map_err(|_| RequestError::Internal("node dropped the request".into()))?
    }

    /// Stop serving, flush, and wait for the driver to exit.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.driver.await;
    }
}

fn load_node_tls(certs: &CertDir, id: u64) -> Result<TlsIdentity, NodeError> {
    certs
        .load_tls(&wraft_transport::Identity::Node(id))
        .map_err(|e| NodeError::Certs {
            dir: certs.root().to_owned(),
            detail: format!("{e} (create certificates with `wraft cert`)"),
        })
}

fn seed_from_time(id: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Storage record payload of an engine entry.
fn encode_entry(e: &Entry) -> LogEntry {
    LogEntry {
        index: e.index,
        term: e.term,
        payload: Bytes::from(postcard::to_stdvec(&e.kind).unwrap_or_default()),
    }
}

fn decode_entry(le: &LogEntry) -> Result<Entry, String> {
    let kind: EntryKind = postcard::from_bytes(&le.payload).map_err(|e| e.to_string())?;
    Ok(Entry {
        index: le.index,
        term: le.term,
        kind,
    })
}

enum PendingProposal {
    /// Answer with the machine's output once applied.
    Client(oneshot::Sender<Response>),
    /// Membership change: answer once committed.
    Membership(oneshot::Sender<Response>, String),
    /// Fire and forget (e.g. the address record before AddLearner).
    Quiet,
}

struct PendingRead {
    target: ReadTarget,
    reply: oneshot::Sender<Response>,
}

struct Driver {
    id: u64,
    engine: Engine,
    storage: Arc<Storage>,
    transport: Transport,
    transport_members: wraft_transport::Membership,
    addresses: AddressBook,
    config_book: BTreeMap<u64, SocketAddr>,
    apply_tx: mpsc::UnboundedSender<ApplyMsg>,
    published: Arc<Mutex<ApplyState>>,
    next_id: u64,
    proposals: HashMap<u64, (Instant, PendingProposal)>,
    reads: HashMap<u64, PendingRead>,
    /// The applier is halted by a node-local failure: this node must not lead.
    apply_halted: bool,
    /// What a deploy proposed here carries (`[guest]` of this node's config).
    deploy_limits: MachineLimits,
    /// The newest index this node proposed a divergence checkpoint for.
    last_checkpoint: u64,
    /// (storage seq, engine persist seq), in submission order.
    persists: VecDeque<(u64, u64)>,
    durable: u64,
    actions: Vec<Action>,
    metrics: crate::metrics::DriverMetrics,
    snap: SnapState,
}

/// The driver's snapshot bookkeeping.
struct SnapState {
    tx: mpsc::UnboundedSender<SnapEvent>,
    /// Index of the local snapshot being created, if any (hints coalesce).
    creating: Option<u64>,
    /// Outgoing transfers: peer -> snapshot index (pins the log above it).
    sending: HashMap<u64, u64>,
    /// The received snapshot being installed, pinned until the install ends: a received
    /// snapshot is not the node's own (it does not count toward retention) until it is
    /// installed and accepted, so a newer offer must not delete it meanwhile.
    installing: Option<SnapshotPin>,
    xfer_cfg: TransferConfig,
    limiter: Arc<BandwidthLimiter>,
    retain_count: u64,
}

/// Accept inbound bulk streams (snapshot offers) and receive each on its own
/// task; a published file becomes `SnapEvent::Received` for the driver.
async fn serve_bulk(
    node: u64,
    mut streams: mpsc::Receiver<wraft_transport::BulkStream>,
    storage: Arc<Storage>,
    cfg: TransferConfig,
    slots: Arc<IncomingSlots>,
    events: mpsc::UnboundedSender<SnapEvent>,
) {
    while let Some(stream) = streams.recv().await {
        let (storage, cfg, slots, events) =
            (storage.clone(), cfg.clone(), slots.clone(), events.clone());
        tokio::spawn(async move {
            let peer = stream.peer;
            let on_durable = |offset: u64| {
                tracing::info!(target: "wraft_node::snapshot", node, peer, durable_offset = offset,
                    "incoming snapshot durable up to offset");
            };
            match receive_snapshot(stream, &storage.snapshots, &cfg, &slots, on_durable).await {
                Ok(r) => {
                    let meta = engine_meta(&r.info.meta);
                    tracing::info!(target: "wraft_node::snapshot", node, from = r.from, index = meta.index,
                        resumed_from = r.resumed_from, bytes = r.bytes_received, already_had = r.already_had,
                        duration_ms = r.duration.as_millis() as u64, "snapshot received");
                    let _ = events.send(SnapEvent::Received {
                        from: r.from,
                        term: r.leader_term,
                        meta,
                    });
                }
                Err(e) => {
                    tracing::warn!(target: "wraft_node::snapshot", node, peer, error = %e,
                        "incoming snapshot transfer ended without a complete file; the next offer resumes")
                }
            }
        });
    }
}

/// Engine metadata of a stored snapshot.
fn engine_meta(m: &wraft_storage::SnapshotMeta) -> SnapshotMeta {
    SnapshotMeta {
        index: m.id.last_index,
        term: m.id.last_term,
        membership: Membership {
            voters: m.membership.voters.iter().copied().collect(),
            learners: m.membership.learners.iter().copied().collect(),
        },
    }
}

fn snapshot_id(meta: &SnapshotMeta) -> SnapshotId {
    SnapshotId {
        last_index: meta.index,
        last_term: meta.term,
    }
}

impl Driver {
    async fn run(
        mut self,
        mut raft_rx: mpsc::Receiver<(u64, Bytes)>,
        mut req_rx: mpsc::Receiver<ClientCall>,
        mut durable_rx: mpsc::UnboundedReceiver<u64>,
        mut snap_rx: mpsc::UnboundedReceiver<SnapEvent>,
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
        }
        tracing::info!(target: "wraft_node", node = self.id, "shutting down");
        self.transport.shutdown().await;
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.term.set(self.engine.term() as f64);
        m.commit_index.set(self.engine.commit_index() as f64);
        m.last_index.set(self.engine.last_index() as f64);
        m.pending_proposals.set(self.proposals.len() as f64);
        m.pending_reads.set(self.reads.len() as f64);
        let applied = self.published.lock().map(|p| p.applied_index).unwrap_or(0);
        m.apply_backlog
            .set(self.engine.commit_index().saturating_sub(applied) as f64);
        let dropped: u64 = self
            .engine
            .membership()
            .members()
            .filter_map(|p| self.transport.peer_stats(p))
            .map(|s| s.dropped_overflow_msgs + s.dropped_link_down_msgs)
            .sum();
        m.transport_dropped.set(dropped as f64);
    }

    /// Step one `Tick` for every tick period that has fully elapsed on the
    /// monotonic clock since the last one (several after a stall).
    fn catch_up_ticks(&mut self, next_tick: &mut Instant, tick: Duration) {
        let now = Instant::now();
        while *next_tick <= now {
            self.step(Event::Tick);
            *next_tick += tick;
        }
    }

    fn step(&mut self, ev: Event) {
        if let Err(e) = self.engine.step(ev) {
            tracing::warn!(target: "wraft_node", node = self.id, error = %e, "engine refused an event");
        }
    }

    fn on_raft(&mut self, from: u64, bytes: &[u8]) {
        match postcard::from_bytes::<Message>(bytes) {
            Ok(msg) if msg.from == from && msg.to == self.id => self.step(Event::Message(msg)),
            Ok(msg) => tracing::warn!(target: "wraft_node", node = self.id, link_peer = from,
                claimed_from = msg.from, to = msg.to, "dropping a raft message whose addresses do not match its link"),
            Err(e) => {
                tracing::warn!(target: "wraft_node", node = self.id, peer = from, error = %e,
                "dropping an undecodable raft message")
            }
        }
    }

    fn on_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
        let mut engine_seq = None;
        while let Some(&(s, e)) = self.persists.front() {
            if s > self.durable {
                break;
            }
            engine_seq = Some(e);
            self.persists.pop_front();
        }
        if let Some(e) = engine_seq {
            self.step(Event::Persisted { seq: e });
        }
    }

    /// Serve `target` once this node, as leader, has confirmed its leadership and applied up to
    /// the read index (ReadIndex, or its lease when configured).
    fn linearizable_read(&mut self, target: ReadTarget, reply: oneshot::Sender<Response>) {
        let id = self.next_id;
        self.next_id += 1;
        self.reads.insert(id, PendingRead { target, reply });
        self.step(Event::Read { id });
    }

    /// Propose a deploy carrying this node's configured limits, which every replica then
    /// applies to the machine (see `MachineLimits`).
    fn propose_deploy(
        &mut self,
        tag: wraft_proto::RequestTag,
        name: String,
        module: Vec<u8>,
        wasi: WasiProfile,
        module_sha256: Option<[u8; 32]>,
        reply: oneshot::Sender<Response>,
    ) {
        let sha256 = module_sha256.unwrap_or_else(|| sha256(&module));
        let data = encode_command(&Command::DeployLimited {
            name,
            sha256,
            module,
            wasi,
            limits: self.deploy_limits,
        });
        self.propose(
            command_kind(Some(tag), data),
            PendingProposal::Client(reply),
        );
    }

    fn propose(&mut self, kind: EntryKind, pending: PendingProposal) {
        let id = self.next_id;
        self.next_id += 1;
        self.proposals.insert(id, (Instant::now(), pending));
        self.step(Event::Propose { id, kind });
    }

    fn on_request(&mut self, call: ClientCall) {
        let ClientCall {
            request,
            module_sha256,
            reply,
        } = call;
        match request {
            Request::Propose {
                tag,
                machine,
                command,
            } => {
                let data = encode_command(&Command::Apply { machine, command });
                self.propose(
                    command_kind(Some(tag), data),
                    PendingProposal::Client(reply),
                );
            }
            Request::Deploy { tag, name, module } => {
                self.propose_deploy(tag, name, module, WasiProfile::None, module_sha256, reply)
            }
            Request::DeployWith {
                tag,
                name,
                module,
                wasi,
            } => self.propose_deploy(tag, name, module, wasi, module_sha256, reply),
            Request::OpenSession => {
                let data = encode_command(&Command::OpenSession);
                self.propose(command_kind(None, data), PendingProposal::Client(reply));
            }
            Request::RemoveMachine { tag, name } => {
                let data = encode_command(&Command::Remove { name });
                self.propose(
                    command_kind(Some(tag), data),
                    PendingProposal::Client(reply),
                );
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
            Request::AddLearner { id, addr } => {
                if self.engine.role() != Role::Leader {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                // The address travels in the log first, so every member can
                // reach the learner; both entries go out in the same append.
                let data = encode_command(&Command::SetAddress { id, addr });
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
                let message = match self.snap.limiter.get() {
                    Some(b) => {
                        format!("node {}: snapshot transfers capped at {b} bytes/s", self.id)
                    }
                    None => format!("node {}: snapshot transfers uncapped", self.id),
                };
                tracing::info!(target: "wraft_node::snapshot", node = self.id,
                    bytes_per_sec = self.snap.limiter.get().unwrap_or(0), "transfer rate cap changed");
                let _ = reply.send(Ok(Reply::Done { message }));
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

    /// Start a local snapshot at `applied_index` (the engine's applied index
    /// right now: every entry up to it is already queued for the applier,
    /// and the snapshot request queues behind them).
    fn start_snapshot(&mut self, applied_index: u64) -> Result<(), String> {
        if let Some(i) = self.snap.creating {
            return Err(format!("joined the snapshot being created at index {i}"));
        }
        if self.engine.is_installing_snapshot() {
            return Err("a snapshot from the leader is being installed".into());
        }
        let latest = self.engine.snapshot().index;
        if applied_index <= latest {
            return Err(format!(
                "nothing applied since the latest snapshot (index {latest})"
            ));
        }
        let meta = self
            .engine
            .snapshot_meta_at(applied_index)
            .ok_or_else(|| format!("index {applied_index} is not in the log"))?;
        self.snap.creating = Some(applied_index);
        let _ = self.apply_tx.send(ApplyMsg::Snapshot { meta });
        Ok(())
    }

    fn on_snap_event(&mut self, ev: SnapEvent) {
        match ev {
            SnapEvent::Created { meta, info } => {
                self.snap.creating = None;
                self.metrics.snapshot_created("ok");
                self.metrics.snapshot_bytes.set(info.file_len as f64);
                self.metrics.snapshot_index.set(meta.index as f64);
                let _ = self.apply_tx.send(ApplyMsg::BaseChanged {
                    id: snapshot_id(&meta),
                });
                self.step(Event::SnapshotCreated { meta });
            }
            SnapEvent::Failed { index, error } => {
                self.snap.creating = None;
                self.metrics.snapshot_created("failed");
                tracing::warn!(target: "wraft_node::snapshot", node = self.id, index, %error,
                    "snapshot failed; it is retried at the next threshold crossing");
                self.step(Event::SnapshotFailed);
            }
            SnapEvent::Installed { meta } => {
                // The installed snapshot is now the node's own: it counts toward retention
                // (received snapshots the engine ignored never do).
                self.end_install(Some(snapshot_id(&meta)));
                self.metrics.snapshot_installed("ok");
                self.metrics.snapshot_index.set(meta.index as f64);
                self.step(Event::SnapshotInstalled { meta });
            }
            SnapEvent::InstallFailed { meta } => {
                self.end_install(None);
                self.metrics.snapshot_installed("failed");
                self.step(Event::SnapshotInstallFailed { meta });
            }
            SnapEvent::Received { from, term, meta } => {
                self.step(Event::SnapshotReceived { from, term, meta });
            }
            SnapEvent::Progress {
                from,
                index,
                durable_offset,
            } => self.step(Event::SnapshotProgress {
                from,
                index,
                durable_offset,
            }),
            SnapEvent::ApplyHalted { reason } => {
                self.apply_halted = true;
                tracing::warn!(target: "wraft::apply", node = self.id, %reason, "applier halted");
                self.hand_off_leadership();
            }
            SnapEvent::ApplyResumed => self.apply_halted = false,
            SnapEvent::Checkpoint { index, digest } => {
                // Only a leader proposes, each index once; followers compare when it commits.
                if self.engine.role() == Role::Leader
                    && !self.apply_halted
                    && index > self.last_checkpoint
                {
                    self.last_checkpoint = index;
                    let data = encode_command(&Command::Checkpoint { index, digest });
                    self.propose(command_kind(None, data), PendingProposal::Quiet);
                }
            }
            SnapEvent::TransferDone { to, index, ok } => {
                if self.snap.sending.get(&to) == Some(&index) {
                    self.snap.sending.remove(&to);
                }
                if !ok {
                    self.step(Event::SnapshotTransferFailed { to, index });
                }
            }
        }
    }

    /// Release the pin on the snapshot an install used, accepting it first as the node's own
    /// if the install succeeded. Off the driver: both may run retention, which deletes files.
    fn end_install(&mut self, accept: Option<SnapshotId>) {
        let (snapshots, pin, node) = (
            self.storage.snapshots.clone(),
            self.snap.installing.take(),
            self.id,
        );
        tokio::task::spawn_blocking(move || {
            if let Some(id) = accept
                && let Err(e) = snapshots.accept(id)
            {
                tracing::warn!(target: "wraft_node::snapshot", node, %id, error = %e,
                    "installed snapshot missing from the store; retention cannot count it");
            }
            drop(pin);
        });
    }

    /// Leader: stream snapshot `meta` to `to` on a bulk stream of its own.
    /// The offset the engine remembers is only a hint: the follower answers
    /// the offer with what it durably holds.
    fn send_snapshot(&mut self, to: u64, meta: SnapshotMeta, offset: u64) {
        if self.snap.sending.contains_key(&to) {
            return; // the running transfer reports; its watchdog bounds it
        }
        self.snap.sending.insert(to, meta.index);
        let id = snapshot_id(&meta);
        let (transport, storage, cfg, limiter, tx) = (
            self.transport.clone(),
            self.storage.clone(),
            self.snap.xfer_cfg.clone(),
            self.snap.limiter.clone(),
            self.snap.tx.clone(),
        );
        let term = self.engine.term();
        let node = self.id;
        tracing::info!(target: "wraft_node::snapshot", node, peer = to, index = meta.index, offset,
            "sending snapshot");
        tokio::spawn(async move {
            let index = id.last_index;
            let ok = match transport.open_bulk(to).await {
                Err(e) => {
                    tracing::warn!(target: "wraft_node::snapshot", node, peer = to, error = %e,
                        "cannot open a bulk stream for the snapshot");
                    false
                }
                Ok(stream) => {
                    let progress = tx.clone();
                    let r =
                        send_snapshot(stream, &storage.snapshots, id, term, &cfg, &limiter, |d| {
                            let _ = progress.send(SnapEvent::Progress {
                                from: to,
                                index,
                                durable_offset: d,
                            });
                        })
                        .await;
                    match r {
                        Ok(rep) => {
                            tracing::info!(target: "wraft_node::snapshot", node, peer = to, index,
                                outcome = ?rep.outcome, resumed_from = rep.resumed_from,
                                bytes_sent = rep.bytes_sent, chunks_resent = rep.chunks_resent,
                                duration_ms = rep.duration.as_millis() as u64, "snapshot transfer finished");
                            matches!(
                                rep.outcome,
                                SendOutcome::Completed | SendOutcome::AlreadyHave
                            )
                        }
                        Err(e) => {
                            tracing::warn!(target: "wraft_node::snapshot", node, peer = to, index, error = %e,
                                "snapshot transfer failed; it is re-offered and resumes");
                            false
                        }
                    }
                }
            };
            let _ = tx.send(SnapEvent::TransferDone { to, index, ok });
        });
    }

    /// Compact storage behind a snapshot, keeping (a) what the engine still
    /// needs (`up_to` already respects followers within the margin), (b) the
    /// log back to the previous snapshot, so that falling back to it on a
    /// damaged newest file still finds every entry above it, and (c) the log
    /// above any snapshot a running transfer is sending.
    fn compact_log(&mut self, up_to: u64) {
        let mut target = up_to;
        if self.snap.retain_count >= 2 {
            let list = self.storage.snapshots.list();
            let previous = list.iter().rev().nth(1).map_or(0, |i| i.meta.id.last_index);
            target = target.min(previous);
        }
        if let Some(pinned) = self.snap.sending.values().min() {
            target = target.min(*pinned);
        }
        if target <= self.storage.log.floor().0 {
            return;
        }
        let Ok(term) = self.storage.log.term(target) else {
            return;
        };
        let wb = WriteBatch {
            compact: Some((target, term)),
            ..WriteBatch::default()
        };
        let r = match self.storage.log.try_submit(wb.clone()) {
            Ok(t) => Ok(t),
            Err(_) => tokio::task::block_in_place(|| self.storage.log.submit(wb)),
        };
        match r {
            Ok(_) => tracing::info!(target: "wraft_node::snapshot", node = self.id, up_to = target,
                engine_up_to = up_to, "compacting the log"),
            Err(e) => tracing::warn!(target: "wraft_node::snapshot", node = self.id, error = %e,
                "log compaction failed; retried after the next snapshot"),
        }
    }

    fn not_leader(&self) -> RequestError {
        RequestError::NotLeader {
            leader: self
                .engine
                .leader()
                .and_then(|l| self.addresses.get(l).map(|a| (l, a))),
        }
    }

    /// A leader whose applier is halted cannot answer its clients: hand leadership to the
    /// most caught-up voter (nothing happens on a follower or a single-voter cluster).
    fn hand_off_leadership(&mut self) {
        if self.engine.role() != Role::Leader {
            return;
        }
        let best = self
            .engine
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.id)
            .max_by_key(|v| self.engine.peer_match_index(*v).unwrap_or(0));
        if let Some(to) = best {
            tracing::warn!(target: "wraft::apply", node = self.id, to,
                "handing leadership over: this node's applier is halted");
            self.step(Event::TransferLeadership { to });
        }
    }

    fn status(&self) -> Status {
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
        let role = match self.engine.role() {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Follower if m.learners.contains(&self.id) => "learner",
            Role::Follower => "follower",
        };
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

    fn send(&mut self, msg: Message) {
        let to = msg.to;
        match postcard::to_stdvec(&msg) {
            Ok(buf) => {
                if let Err(e) = self.transport.send(to, Bytes::from(buf)) {
                    tracing::debug!(target: "wraft_node", node = self.id, peer = to, error = %e, "send failed");
                }
            }
            Err(e) => {
                tracing::error!(target: "wraft_node", error = %e, "cannot encode a raft message")
            }
        }
    }

    /// Execute the engine's actions, in order, until the engine is quiet
    /// (executing an action may step the engine again, e.g. `Persisted`).
    fn execute(&mut self) {
        loop {
            let mut actions = std::mem::take(&mut self.actions);
            self.engine.poll_actions(&mut actions);
            if actions.is_empty() {
                self.actions = actions;
                return;
            }
            for action in actions.drain(..) {
                self.execute_one(action);
            }
            self.actions = actions;
        }
    }

    fn execute_one(&mut self, action: Action) {
        {
            match action {
                // The engine holds back anything that reveals state not yet
                // durable, so every Send goes out at once.
                Action::Send { msg } => self.send(msg),
                Action::Persist(batch) => {
                    if let Some(snap) = &batch.reset_to_snapshot {
                        // The log restarts above an installed snapshot. A
                        // batch of its own, so storage applies it before the
                        // truncation and entries below (it applies a batch's
                        // compaction last).
                        let wb = WriteBatch {
                            compact: Some((snap.index, snap.term)),
                            ..WriteBatch::default()
                        };
                        if let Err(e) = tokio::task::block_in_place(|| self.storage.log.submit(wb))
                        {
                            tracing::error!(target: "wraft_node", node = self.id, error = %e,
                                "cannot reset the log to an installed snapshot; the node stops here to stay safe");
                            std::process::abort();
                        }
                    }
                    let mut wb = WriteBatch::default();
                    if let Some(hs) = batch.hard_state {
                        wb = wb.with_hard_state(wraft_storage::HardState {
                            term: hs.term,
                            vote: hs.vote,
                            commit: hs.commit,
                        });
                    }
                    if let Some(from) = batch.truncate_from {
                        wb = wb.with_truncate_after(from.saturating_sub(1));
                    }
                    if !batch.entries.is_empty() {
                        wb = wb.with_entries(batch.entries.iter().map(encode_entry).collect());
                    }
                    let submitted = match self.storage.log.try_submit(wb.clone()) {
                        Ok(t) => Ok(t),
                        // The writer's queue is full: wait for room (this is
                        // the backpressure that bounds memory; safety first).
                        Err(_) => tokio::task::block_in_place(|| self.storage.log.submit(wb)),
                    };
                    match submitted {
                        Ok(ticket) => {
                            self.metrics.persist_batches.increment(1);
                            self.metrics
                                .persist_entries
                                .increment(batch.entries.len() as u64);
                            self.persists.push_back((ticket.seq(), batch.seq));
                            if ticket.seq() <= self.durable {
                                self.on_durable(self.durable);
                            }
                        }
                        Err(e) => {
                            // Without durable storage this node must not go on
                            // acknowledging anything.
                            tracing::error!(target: "wraft_node", node = self.id, error = %e,
                                "cannot persist to the log; the node stops here to stay safe");
                            std::process::abort();
                        }
                    }
                }
                Action::Apply { entries } => {
                    let _ = self.apply_tx.send(ApplyMsg::Entries(entries));
                }
                Action::ProposalResult { id, result } => self.on_proposal_result(id, result),
                Action::ReadReady { id, index } => {
                    if let Some(r) = self.reads.remove(&id) {
                        let _ = self.apply_tx.send(ApplyMsg::Read {
                            index,
                            target: r.target,
                            reply: r.reply,
                        });
                    }
                }
                Action::ReadFailed { id, error } => {
                    if let Some(r) = self.reads.remove(&id) {
                        let e = match error {
                            ReadError::NotLeader { .. } => self.not_leader(),
                            ReadError::Busy { .. } => RequestError::Busy(error.to_string()),
                        };
                        let _ = r.reply.send(Err(e));
                    }
                }
                Action::SnapshotHint {
                    reason,
                    applied_index,
                } => {
                    tracing::debug!(target: "wraft_node::snapshot", node = self.id, ?reason, applied_index, "snapshot hint");
                    if let Err(e) = self.start_snapshot(applied_index) {
                        tracing::debug!(target: "wraft_node::snapshot", node = self.id, "snapshot hint not taken: {e}");
                        if self.snap.creating.is_none() {
                            self.step(Event::SnapshotFailed);
                        }
                    }
                }
                Action::SendSnapshot { to, meta, offset } => self.send_snapshot(to, meta, offset),
                Action::InstallSnapshot { meta } => {
                    // If a newer offer already replaced it, the applier's install fails and the
                    // leader sends again.
                    self.snap.installing = self.storage.snapshots.pin(snapshot_id(&meta)).ok();
                    let _ = self.apply_tx.send(ApplyMsg::Install { meta });
                }
                Action::CompactLog { up_to } => self.compact_log(up_to),
                Action::RoleChanged { role, term, leader } => {
                    self.metrics.role_change(match role {
                        Role::Leader => "leader",
                        Role::Candidate => "candidate",
                        Role::PreCandidate => "pre-candidate",
                        Role::Follower => "follower",
                    });
                    self.metrics
                        .is_leader
                        .set(if role == Role::Leader { 1.0 } else { 0.0 });
                    self.metrics.term.set(term as f64);
                    tracing::info!(target: "wraft::raft", node = self.id, ?role, term, ?leader, "role changed");
                    if role == Role::Leader && self.apply_halted {
                        self.hand_off_leadership();
                    }
                }
                Action::MembershipChanged { membership } => {
                    tracing::info!(target: "wraft::raft", node = self.id, voters = ?membership.voters,
                        learners = ?membership.learners, "membership changed");
                    let ids: BTreeSet<u64> = membership
                        .members()
                        .chain(self.config_book.keys().copied())
                        .collect();
                    self.transport_members.set(ids);
                }
            }
        }
    }

    fn on_proposal_result(&mut self, id: u64, result: Result<u64, ProposalError>) {
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

    fn proposal_error(&self, e: ProposalError) -> RequestError {
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

fn encode_command(c: &Command) -> Bytes {
    Bytes::from(postcard::to_stdvec(c).unwrap_or_default())
}

fn command_kind(tag: Option<wraft_proto::RequestTag>, data: Bytes) -> EntryKind {
    EntryKind::Command {
        client: tag.map(|t| wraft_engine::ClientTag {
            client_id: t.client_id,
            seq: t.seq,
        }),
        timestamp_ms: now_ms(),
        data,
    }
}
