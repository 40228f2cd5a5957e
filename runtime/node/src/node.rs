//! [`Node`]: starting a node (storage, transport, host, applier and driver wired together),
//! calling it in-process and stopping it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use wraft_engine::{Engine, InitialState, Membership, SnapshotMeta};
use wraft_storage::{Storage, StorageConfig, WriterEvent};
use wraft_transport::certs::{CertDir, TlsIdentity};
use wraft_transport::{AddressBook, Transport, TransportConfig};

use crate::apply::{Applier, ApplyState};
use wraft_config::{FsyncPolicy, NodeConfig};
use wraft_host::{HostConfig, HostEngine};
use wraft_proto::digest::sha256;
use wraft_proto::{Request, RequestError, Response};
use wraft_snapshot::{BandwidthLimiter, IncomingSlots, TransferConfig};

use crate::codec::decode_entry;
use crate::driver::snapshots::SnapState;
use crate::driver::snapshots::serve_bulk;
use crate::driver::stop::{StopReport, StopRequest};
use crate::driver::{ClientCall, Driver, HealthState, REQUEST_QUEUE_MAX};
use crate::health::{Alive, HealthSource, Readiness, ReadyBounds};
use crate::watch::{WatchBounds, WatchHub};

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
    /// The metrics and health endpoint (`node.metrics_listen`) could not start.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The HTTP API (`http.listen`) could not start.
    #[error("HTTP API: {0}")]
    Http(#[from] crate::http::HttpError),
    /// The Raft engine refused its configuration or state.
    #[error("raft engine: {0}")]
    Engine(String),
    /// The newest valid snapshot could not be restored.
    #[error("restoring snapshot {0}")]
    Snapshot(String),
}

/// A running node. Dropping it does not stop the node; call [`Node::stop_gracefully`] (a
/// service's stop: hand leadership over, answer the calls in flight) or [`Node::shutdown`].
pub struct Node {
    id: u64,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    /// Stops the driver.
    shutdown: watch::Sender<bool>,
    /// Stops the client server (before the driver, so answers in flight are written).
    server_shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
    requests: mpsc::Sender<ClientCall>,
    tls: crate::tls_reload::TlsReloader,
    stop: mpsc::Sender<StopRequest>,
    watch: WatchHub,
    modules: Arc<crate::modules::Modules>,
    host: Arc<HostEngine>,
    /// Turns once the node's storage has let go of the data directory's lock.
    released: Option<wraft_storage::DirReleased>,
}

/// The module store's directory inside the data directory (`wraft_storage::ModuleStore`): the
/// modules deployed by hash, and those of the machines this node runs.
pub const MODULE_STORE_DIR: &str = "module-store";

/// How long a leader that handed over keeps answering after its stop is done, milliseconds:
/// a client retrying here then learns the new leader (`NotLeader`) instead of finding the
/// connection closed and trying the members in turn. Within the stop's timeout.
pub const STOP_LINGER_MS: u64 = 200;

/// The most a stopping node waits for its driver past the stop's own deadline (the driver
/// reports at its deadline; this bounds a driver that is itself stuck, e.g. on a full disk).
pub const STOP_GRACE_MS: u64 = 2_000;

impl Node {
    /// Open storage, recover, bind the endpoint and start serving.
    ///
    /// Must be called inside a multi-threaded tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let id = cfg.node.id;
        let data_dir = cfg.node.data_dir.clone();
        // The recorder first (metrics registered before it go nowhere), and the listener bound
        // now, so a taken port fails the start; it serves once the node runs.
        let health_listener = match cfg.node.metrics_listen {
            Some(addr) => {
                let handle = crate::metrics::install().map_err(NodeError::Metrics)?;
                let bound = crate::health::bind(addr).and_then(|l| Ok((l.local_addr()?, l)));
                let (bound, listener) = bound.map_err(|e| {
                    NodeError::Metrics(format!(
                        "cannot listen on {addr} (node.metrics_listen) for /metrics, /livez and /readyz: {e}"
                    ))
                })?;
                Some((handle, listener, bound))
            }
            None => None,
        };
        let http_listener = match cfg.http.listen {
            Some(addr) => {
                let l = crate::http::bind(addr)?;
                let bound = l
                    .local_addr()
                    .map_err(|source| crate::http::HttpError::Bind { addr, source })?;
                Some((l, bound))
            }
            None => None,
        };
        std::fs::create_dir_all(&data_dir).map_err(|e| NodeError::Storage {
            dir: data_dir.clone(),
            source: Box::new(wraft_storage::StorageError::Io {
                path: data_dir.clone(),
                op: "create data directory",
                source: e,
            }),
        })?;

        // Storage, with durable-point notifications turned into driver events.
        wraft_snapshot::register_metrics(id);
        let (durable_tx, durable_rx) = mpsc::unbounded_channel::<u64>();
        let fsync_seconds =
            metrics::histogram!("wraft_storage_fsync_seconds", "node" => id.to_string());
        let on_event: wraft_storage::EventCallback = Arc::new(move |ev: &WriterEvent| {
            if let WriterEvent::Durable(p) = ev {
                let _ = durable_tx.send(p.tag);
                if let Some(d) = p.sync_duration {
                    fsync_seconds.record(d);
                }
            }
        });
        let scfg = storage_config(&cfg);
        let (storage, recovered) =
            Storage::open(&data_dir, &scfg, Some(on_event)).map_err(|source| {
                NodeError::Storage {
                    dir: data_dir.clone(),
                    source: Box::new(source),
                }
            })?;
        let storage = Arc::new(storage);
        for q in &recovered.snapshots.quarantined {
            tracing::warn!(target: "wraft::snapshot", node = id, file = %q.display(),
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

        // TLS: the transport's, and this node's identity toward the other members' client
        // servers (forwarding, modules).
        let certs = CertDir::new(&cfg.tls.dir);
        let tls = load_node_tls(&certs, id)?;
        let node_tls = crate::http::HttpTls::new(&tls)?;

        // Modules by hash: the store, and the calls to the other members.
        let module_dir = data_dir.join(MODULE_STORE_DIR);
        let module_store =
            wraft_storage::ModuleStore::open(Arc::new(wraft_storage::StdFs), &module_dir).map_err(
                |source| NodeError::Storage {
                    dir: module_dir,
                    source: Box::new(source),
                },
            )?;
        let modules = Arc::new(crate::modules::Modules::new(
            id,
            host.clone(),
            Arc::new(module_store),
            crate::http::Forwarder::new(
                node_tls.clone(),
                book.clone(),
                TransportConfig::new(id, cfg.node.listen).resolve_timeout_ms,
            )
            .with_frame_bytes_max(cfg.guest.module_bytes_max + (1 << 20)),
        ));

        // The applier, restored from the newest valid snapshot (if any)
        // before the engine replays the log above it.
        let published = Arc::new(Mutex::new(ApplyState::default()));
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (snap_tx, snap_rx) = mpsc::unbounded_channel();
        // The watch history: the applier publishes into it (starting above the snapshot it
        // recovers from); the client-facing servers subscribe.
        let watch_hub = WatchHub::new(id, WatchBounds::from_config(&cfg.node));
        let mut applier = Applier::new(
            id,
            host.clone(),
            storage.clone(),
            book.clone(),
            published.clone(),
            snap_tx.clone(),
            watch_hub.clone(),
        );
        applier.set_check_interval(cfg.raft.divergence_check_entries);
        // Kept by the driver from the engine's role changes (a node starts as a follower).
        let following = Arc::new(std::sync::atomic::AtomicBool::new(true));
        applier.set_following(following.clone());
        applier.set_modules(modules.clone());
        // Every retained snapshot, the one being sent and one received, and a few more: an
        // index pass must not evict its own entries. Shared by creation and the transfers.
        let segments = wraft_snapshot::manifest::SegmentCache::with_capacity(
            (cfg.snapshot.retain_count as usize)
                .saturating_add(4)
                .max(wraft_snapshot::manifest::SegmentCache::ENTRIES_DEFAULT),
        );
        applier.set_segments(segments.clone());
        // Every by-hash deploy entry the log retains keeps its module (those at or below the
        // snapshot are not applied again); read before the snapshot's restore collects what
        // nothing references.
        {
            let (m, st) = (modules.clone(), storage.clone());
            let (from, through) = (recovered.log.first_index, recovered.log.last_index);
            let found = tokio::task::spawn_blocking(move || m.reference_log(&st, from, through))
                .await
                .map_err(|e| NodeError::Snapshot(e.to_string()))?;
            match found {
                Ok(n) => tracing::info!(target: "wraft::deploy", node = id, from, through,
                    entries = n, "read the by-hash deploy entries of the log"),
                Err(e) => tracing::warn!(target: "wraft::deploy", node = id, error = %e,
                    "cannot read the log for the modules it names; they are kept only while recent"),
            }
        }
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
                entries.push(decode_entry(&le).map_err(|e| NodeError::BadEntry {
                    dir: data_dir.clone(),
                    index: e.index,
                    detail: e.source.to_string(),
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
        tracing::info!(target: "wraft::node", node = id, dir = %data_dir.display(),
            snapshot_index, last_index = last, term = hs.term, "recovered storage");

        let mut ecfg = wraft_engine::Config::new(id, seed_from_time(id));
        let r = &cfg.raft;
        let tick = r.tick_interval_ms.max(1);
        ecfg.heartbeat_interval_ticks = (r.heartbeat_interval_ms / tick).max(1) as u32;
        ecfg.election_timeout_min_ticks = (r.election_timeout_ms / tick).max(3) as u32;
        ecfg.election_timeout_max_ticks = 2 * ecfg.election_timeout_min_ticks;
        ecfg.inflight_append_msgs_max = r.inflight_append_msgs_max as usize;
        ecfg.append_entries_max = r.append_entries_max as usize;
        ecfg.append_bytes_max = r.append_bytes_max as usize;
        ecfg.pending_proposals_max = r.pending_proposals_max as usize;
        ecfg.command_bytes_max =
            (cfg.client.command_bytes_max as usize).max(cfg.guest.module_bytes_max as usize + 4096);
        ecfg.snapshot_hint_threshold_entries = cfg.snapshot.hint_threshold_entries;
        ecfg.log_entries_max = cfg.snapshot.log_entries_max;
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
        let resolve_timeout_ms = tcfg.resolve_timeout_ms;
        let (transport, inbound) = Transport::bind(tcfg, &tls, tmembers.clone(), book.clone())?;
        let addr = transport.local_addr().map_err(|e| {
            NodeError::Transport(wraft_transport::TransportError::Bind {
                addr: cfg.node.listen,
                source: e,
            })
        })?;
        tracing::info!(target: "wraft::node", node = id, %addr, "listening");

        let applier_alive = Alive::new();
        let guard = applier_alive.guard();
        tokio::spawn(async move {
            let _alive = guard;
            applier.run(apply_rx).await
        });

        // Snapshot transfers: inbound bulk streams are snapshot offers.
        let xfer_cfg = TransferConfig {
            node_id: id,
            chunk_bytes: cfg.snapshot.chunk_bytes.min(u32::MAX as u64) as u32,
            progress_timeout_ms: cfg.snapshot.transfer_progress_timeout_ms,
            incoming_transfers_max: cfg.snapshot.incoming_transfers_max as usize,
            segments,
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
            Arc::new(IncomingSlots::new(xfer_cfg.incoming_transfers_max)),
            Arc::new(crate::snapshot::Members::new(
                id,
                book.clone(),
                modules.clone(),
            )),
            snap_tx.clone(),
        ));

        let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE_MAX);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (server_shutdown, server_shutdown_rx) = watch::channel(false);
        let api = crate::server::Api {
            driver: req_tx.clone(),
            host: host.clone(),
            snapshots: storage.snapshots.clone(),
            segments: wraft_snapshot::peers::SegmentIndex::new(xfer_cfg.segments.clone()),
            snapshot_limiter: limiter.clone(),
            limits: Arc::new(cfg.client.clone()),
            metrics: crate::metrics::ClientMetrics::new(id),
            modules: modules.clone(),
        };
        let server = tokio::spawn(crate::server::serve_clients(
            inbound.clients,
            api.clone(),
            server_shutdown_rx,
        ));
        let (stop, stop_rx) = mpsc::channel(4);
        let (readiness_tx, readiness_rx) = watch::channel(Readiness::default());
        let driver_alive = Alive::new();
        let metrics_addr = health_listener.as_ref().map(|(_, _, a)| *a);
        if let Some((handle, listener, bound)) = health_listener {
            tracing::info!(target: "wraft::node", node = id, metrics_addr = %bound,
                "serving /metrics, /livez and /readyz");
            let source = HealthSource {
                node: id,
                metrics: handle,
                readiness: readiness_rx,
                bounds: ReadyBounds {
                    lag_entries_max: cfg.node.readyz_lag_entries_max,
                    leader_contact_ms_max: cfg.node.readyz_leader_contact_ms_max,
                },
                driver: driver_alive.clone(),
                applier: applier_alive.clone(),
            };
            tokio::spawn(crate::health::serve(listener, source, shutdown_rx.clone()));
            tokio::spawn(crate::health::disk_stats(
                id,
                data_dir.clone(),
                shutdown_rx.clone(),
            ));
        }

        let http_addr = http_listener.as_ref().map(|(_, a)| *a);
        // One identity for the HTTPS listener, its forwarder and the module calls, so that a
        // TLS reload swaps it for all of them.
        let http_tls = Some(node_tls.clone());
        if let Some((listener, bound)) = http_listener {
            let https = node_tls.clone();
            let token_path = cfg.tls.dir.join(&cfg.http.token_key_file);
            let token_key =
                crate::tokens::TokenKey::load(&token_path).map_err(crate::http::HttpError::from)?;
            tracing::info!(target: "wraft::node", node = id, http_addr = %bound,
                tokens = token_key.is_some(), "serving the HTTP API and the console");
            let state = crate::http::HttpState {
                node: id,
                api: api.clone(),
                forward: crate::http::Forwarder::new(
                    https.clone(),
                    book.clone(),
                    resolve_timeout_ms,
                ),
                sessions: Default::default(),
                token_key,
                http: cfg.http.clone(),
                limits: api.limits.clone(),
                module_bytes_max: cfg.guest.module_bytes_max,
                watch: watch_hub.clone(),
            };
            tokio::spawn(crate::http::serve(
                listener,
                https,
                Arc::new(state),
                server_shutdown.subscribe(),
            ));
        }

        let tls = crate::tls_reload::TlsReloader::new(id, certs, transport.clone(), &tls, http_tls);
        tls.clone().spawn_watch(shutdown_rx.clone());

        let released = storage.release_signal();
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
                reoffer: Default::default(),
                retain_count: cfg.snapshot.retain_count,
                follower_export: cfg.snapshot.follower_export,
                following,
            },
            health: HealthState::new(readiness_tx),
            stopping: None,
        };
        let guard = driver_alive.guard();
        let driver = tokio::spawn(async move {
            let _alive = guard;
            driver
                .run(
                    inbound.raft,
                    req_rx,
                    durable_rx,
                    snap_rx,
                    stop_rx,
                    shutdown_rx,
                    Duration::from_millis(tick),
                )
                .await
        });
        Ok(Node {
            id,
            addr,
            metrics_addr,
            http_addr,
            shutdown,
            server_shutdown,
            server,
            driver,
            requests: req_tx,
            tls,
            stop,
            watch: watch_hub,
            modules,
            host,
            released,
        })
    }

    /// What tells when this node has let go of its data directory's lock, after
    /// [`Node::shutdown`] or [`Node::stop_gracefully`] (see [`wait_dir_released`]).
    pub fn dir_released(&self) -> Option<wraft_storage::DirReleased> {
        self.released.clone()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of `/metrics`, `/livez` and `/readyz` (`node.metrics_listen`), if
    /// configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address the HTTPS API (`http.listen`) is bound to, if it is served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Read the CA bundle, certificate and key from the certificate directory again and use
    /// them for new handshakes (open connections keep theirs); says what changed. Unusable
    /// files are refused and the configuration in force stays. The node also does this by
    /// itself when the files change; `wraft node` does it on SIGHUP.
    pub fn reload_tls(&self) -> Result<crate::TlsReload, crate::TlsReloadError> {
        self.tls.reload()
    }

    /// A handle that reloads this node's TLS material (for a signal handler that outlives
    /// borrows of the node); see [`Node::reload_tls`].
    pub fn tls_reloader(&self) -> crate::TlsReloader {
        self.tls.clone()
    }

    /// This node's watch history of applied results, to subscribe to one machine's results
    /// from an index on (see [`WatchHub::subscribe`]). Node-local: another node's history
    /// holds the same results at the same indexes, but may reach back less far.
    pub fn watch_hub(&self) -> WatchHub {
        self.watch.clone()
    }

    /// Send a request to this node directly (in-process), as a client would.
    pub async fn call(&self, request: Request) -> Response {
        match &request {
            Request::Deploy { module, .. } | Request::DeployWith { module, .. } => {
                let wasi = match &request {
                    Request::DeployWith { wasi, .. } => *wasi,
                    _ => wraft_host::WasiProfile::None,
                };
                let (module, host) = (module.clone(), self.host.clone());
                let sha = tokio::task::spawn_blocking(move || {
                    host.check(&module, wasi).map(|()| sha256(&module))
                })
                .await
                .map_err(|e| RequestError::Internal(e.to_string()))?
                .map_err(|e| RequestError::Rejected(format!("module refused: {e}")))?;
                self.modules.deploy(&self.requests, request, sha).await
            }
            Request::ModuleHas { .. } | Request::ModulePut { .. } | Request::ModuleGet { .. } => {
                self.modules.serve(request).await
            }
            _ => ClientCall::call(&self.requests, request, None).await,
        }
    }

    /// Stop serving at once, flush, and wait for the driver to exit. Calls in flight fail;
    /// a leader leaves its followers to elect a new one after their election timeout. A
    /// service's stop is [`Node::stop_gracefully`].
    ///
    /// Background tasks (a snapshot being created or received, the applier's last batch) may
    /// hold the data directory a little longer. To start a node on it again in this process,
    /// take [`Node::dir_released`] first and wait for it ([`wait_dir_released`]).
    pub async fn shutdown(self) {
        let _ = self.server_shutdown.send(true);
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        let _ = self.driver.await;
    }

    /// Stop like a service (SIGTERM): a leader hands leadership to the most caught-up voter
    /// and waits until it has moved (with `TimeoutNow`, so the others need not wait for an
    /// election timeout); the client calls in flight are answered, or failed with an error the
    /// client retries (`NotLeader` naming the new leader, `Busy`, or a timeout that is safe to
    /// retry with the same tag); new calls meanwhile get `Busy` or `NotLeader`. Then it stops
    /// as [`Node::shutdown`] does.
    ///
    /// Bounded by `timeout` (plus [`STOP_GRACE_MS`] for a driver that does not answer); what
    /// did not finish in time is listed in the report's `cut_short`. The log is durable
    /// throughout: only availability depends on the handoff. A follower or learner has
    /// nothing to hand over and stops at once.
    pub async fn stop_gracefully(self, timeout: Duration) -> StopReport {
        let started = std::time::Instant::now();
        let (done, report) = tokio::sync::oneshot::channel();
        let request = StopRequest {
            deadline: started + timeout,
            done,
        };
        let report = match self.stop.send(request).await {
            Ok(()) => {
                let grace = timeout + Duration::from_millis(STOP_GRACE_MS);
                match tokio::time::timeout(grace, report).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => StopReport {
                        cut_short: vec!["the driver ended before reporting".into()],
                        ..StopReport::default()
                    },
                    Err(_) => StopReport {
                        cut_short: vec![format!(
                            "the driver did not report within {} ms",
                            grace.as_millis()
                        )],
                        ..StopReport::default()
                    },
                }
            }
            Err(_) => StopReport {
                cut_short: vec!["the driver had already ended".into()],
                ..StopReport::default()
            },
        };
        if report.handed_to.is_some() {
            let left = timeout.saturating_sub(started.elapsed());
            tokio::time::sleep(left.min(Duration::from_millis(STOP_LINGER_MS))).await;
        }
        self.shutdown().await;
        StopReport {
            elapsed: started.elapsed(),
            ..report
        }
    }
}

/// Wait until `released` turns ([`Node::dir_released`]), at most `timeout`; whether it did.
/// A node stopped in this process holds its data directory until its background tasks end
/// (a snapshot creation can take seconds); a node started on the directory before then fails
/// with `Locked`.
pub async fn wait_dir_released(released: &wraft_storage::DirReleased, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !released.is_released() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// The storage configuration of a node with config `cfg` (also what offline tools open its
/// data directory with).
pub(crate) fn storage_config(cfg: &NodeConfig) -> StorageConfig {
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
    scfg
}

pub(crate) fn load_node_tls(certs: &CertDir, id: u64) -> Result<TlsIdentity, NodeError> {
    certs
        .load_tls(&wraft_transport::Identity::Node(id))
        .map_err(|e| NodeError::Certs {
            dir: certs.root().to_owned(),
            detail: format!("{e} (create certificates with `wraft cert`)"),
        })
}

pub(crate) fn seed_from_time(id: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
