//! Modules by hash: a deploy entry names its module by SHA-256 and size, and the bytes travel
//! beside the log, between the members' module stores (`DIR/module-store`, see
//! `wraft_storage::ModuleStore`).
//!
//! - **Before the proposal.** The deploying leader validates the module, stores it itself, asks
//!   every other member whether it holds it (`ModuleHas`) and sends it to those that do not
//!   (`ModulePut`, answered once the bytes are durable there). Only if every member answered
//!   and a majority of the voters (the leader among them) holds the module does it propose
//!   [`Command::DeployByHash`](wraft_proto::Command::DeployByHash); a member that cannot decode
//!   these requests (an older version) makes it put the module in the log as before
//!   (`DeployLimited`), and too few voters holding it fails the deploy with a retryable error.
//!   A committed deploy's module is thus durable on a majority, as its entry is, and survives
//!   what the entry survives.
//! - **At apply.** A member takes the module from its own store, or fetches it by hash from
//!   the other members in turn (`ModuleGet`; each node starts at a member of its own, so nodes
//!   fetching at once spread over the members), checks its size and hash and stores it, before it
//!   applies the entry. If no member has it, the applier halts on a node-local failure and tries
//!   again later, as for any module it cannot load; the consensus path never waits for it.
//! - **In snapshots.** A node snapshot names each machine's module by reference (a ModuleRef
//!   frame: the hash and size in its header), not by its bytes, so retained snapshots do not each
//!   repeat the component. The node stores every module it references before the snapshot is
//!   published ([`Modules::hold`]); a node restoring a snapshot takes the module from its store or
//!   fetches it by hash, as at apply, asking the leader that sent the snapshot last (a joining
//!   node takes the module from a follower, and the leader only sends the small snapshot). Backups (`wraft snapshot save`) carry the modules inline.
//! - **Kept.** Every version of every deployed machine, every module a retained snapshot names,
//!   every module named by a by-hash deploy entry still in the log, and anything stored in the
//!   last [`RECENT_KEEP`] (a module pushed before its entry commits). The rest is removed after
//!   each snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::mpsc;
use wraft_host::{HostEngine, WasiProfile};
use wraft_proto::digest::{hex, sha256};
use wraft_proto::{Reply, Request, RequestError, Response};
use wraft_storage::ModuleStore;

use crate::driver::{CheckedModule, ClientCall, Placed};
use crate::http::{Forwarder, MemberCallError};

/// How long a module stored on this node is kept whatever references it, so that a module
/// pushed before its deploy entry commits is not collected before it applies.
pub(crate) const RECENT_KEEP: Duration = Duration::from_secs(3600);

/// End-to-end tests of collection only: [`RECENT_KEEP`] in milliseconds instead.
pub const RECENT_KEEP_MS_ENV: &str = "WRAFT_TEST_MODULE_RECENT_KEEP_MS";

/// Deadline for one member's answer to a module request: the base, plus one second per
/// [`CALL_BYTES_PER_SEC`] of module.
const CALL_TIMEOUT_BASE: Duration = Duration::from_secs(10);
const CALL_BYTES_PER_SEC: u64 = 8 << 20;

/// Who holds what, and how to reach the others. One per node, shared by the client server
/// (deploys, and the members' requests) and the applier (fetches, collection).
pub(crate) struct Modules {
    node: u64,
    host: Arc<HostEngine>,
    store: Arc<ModuleStore>,
    peers: Forwarder,
    /// What keeps stored modules from collection, under one lock that a collection holds from
    /// deciding to removing (so a module pinned or stored meanwhile is never removed).
    keep: Mutex<Keep>,
    /// Members that have answered a module request (so they run a version that takes modules
    /// by hash); node-local and in memory: after a restart a member must answer again.
    supports: Mutex<HashSet<u64>>,
    /// [`RECENT_KEEP`], unless a test set [`RECENT_KEEP_MS_ENV`].
    recent_keep: Duration,
}

/// Where a deploy's module goes, as [`Modules::distribute`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Every member answered and a majority of the voters holds it: deploy by hash.
    ByHash {
        /// The members that hold it now (this node among them).
        holders: Vec<u64>,
    },
    /// A member cannot take modules by hash: the module goes in the entry.
    InLog {
        /// Why.
        reason: String,
    },
}

impl Modules {
    /// The calls to the other members (shared with the snapshot receiver's reads).
    pub(crate) fn forwarder(&self) -> &Forwarder {
        &self.peers
    }

    pub(crate) fn new(
        node: u64,
        host: Arc<HostEngine>,
        store: Arc<ModuleStore>,
        peers: Forwarder,
    ) -> Modules {
        Modules {
            node,
            host,
            store,
            peers,
            keep: Mutex::new(Keep::default()),
            supports: Mutex::new(HashSet::new()),
            recent_keep: std::env::var(RECENT_KEEP_MS_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map_or(RECENT_KEEP, Duration::from_millis),
        }
    }

    fn keep(&self) -> std::sync::MutexGuard<'_, Keep> {
        self.keep.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep `sha` from collection for `recent_keep` from now. Called before the module is
    /// stored, read or counted as held, so a collection either ran before (and the store is
    /// written or read afterwards) or sees the pin.
    fn pin(&self, sha: [u8; 32]) {
        self.keep().recent.insert(sha, Instant::now());
    }

    /// A by-hash deploy entry at `index` names `sha`: keep it while the log holds the entry.
    pub(crate) fn reference(&self, index: u64, sha: [u8; 32]) {
        self.keep().log.insert(index, sha);
    }

    /// Reference the modules of the by-hash deploy entries in `storage`'s log from `from`
    /// through `through` (at start: the retained entries at or below the snapshot the node
    /// starts from, which it does not apply again). Blocking: reads and decodes the entries.
    pub(crate) fn reference_log(
        &self,
        storage: &wraft_storage::Storage,
        from: u64,
        through: u64,
    ) -> Result<usize, String> {
        const PAGE_BYTES: u64 = 8 << 20;
        let mut next = from;
        let mut found = 0;
        while next <= through {
            let page = storage
                .log
                .entries(next, through + 1, PAGE_BYTES)
                .map_err(|e| format!("reading log entries {next}..={through}: {e}"))?;
            let Some(last) = page.last() else { break };
            next = last.index + 1;
            for le in page {
                let Ok(wraft_engine::EntryKind::Command { data, .. }) =
                    postcard::from_bytes::<wraft_engine::EntryKind>(&le.payload)
                else {
                    continue;
                };
                if let Ok(wraft_proto::Command::DeployByHash { sha256, .. }) =
                    postcard::from_bytes(&data)
                {
                    self.reference(le.index, sha256);
                    found += 1;
                }
            }
        }
        Ok(found)
    }

    /// Store `module` here (blocking pool), durably.
    async fn put_local(&self, sha: [u8; 32], module: Arc<Vec<u8>>) -> Result<bool, String> {
        self.pin(sha);
        let (store, this_node) = (self.store.clone(), self.node);
        let stored = tokio::task::spawn_blocking(move || store.put(&sha, &module))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if stored {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || publish_store(&store, this_node));
        }
        Ok(stored)
    }

    /// The module stored here under `sha`, verified; `None` if absent.
    async fn get_local(&self, sha: [u8; 32]) -> Result<Option<Vec<u8>>, String> {
        self.pin(sha);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.get(&sha))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Serve a member's `ModuleHas`, `ModulePut` or `ModuleGet`.
    pub(crate) async fn serve(&self, request: Request) -> Response {
        match request {
            Request::ModuleHas { sha256 } => {
                // A verified read, pinned: a copy that counts toward a deploy's majority is
                // whole and stays.
                let held = self
                    .get_local(sha256)
                    .await
                    .map_err(RequestError::Internal)?
                    .is_some();
                Ok(Reply::ModuleHeld { held })
            }
            Request::ModulePut {
                sha256: sha,
                module,
            } => {
                let bytes = module.len();
                let module = Arc::new(module);
                match self.put_local(sha, module.clone()).await {
                    Ok(stored) => {
                        if stored {
                            // A deploy is about to name it: compile it meanwhile, in the
                            // background, so that applying the deploy finds it compiled.
                            self.host.precompile_in_background(module);
                            metrics::counter!("wraft_module_bytes_total", "node" => self.node.to_string(), "direction" => "received")
                                .increment(bytes as u64);
                        }
                        Ok(Reply::Done {
                            message: format!(
                                "node {} holds module {} ({bytes} bytes)",
                                self.node,
                                short(&sha)
                            ),
                        })
                    }
                    Err(e) => Err(RequestError::Rejected(format!(
                        "node {} cannot store module {}: {e}",
                        self.node,
                        short(&sha)
                    ))),
                }
            }
            Request::ModuleGet { sha256: sha } => match self.get_local(sha).await {
                Ok(Some(module)) => {
                    metrics::counter!("wraft_module_bytes_total", "node" => self.node.to_string(), "direction" => "served")
                        .increment(module.len() as u64);
                    Ok(Reply::Module { module })
                }
                Ok(None) => Err(RequestError::Rejected(format!(
                    "node {} does not hold module {}",
                    self.node,
                    short(&sha)
                ))),
                Err(e) => Err(RequestError::Internal(format!(
                    "node {} cannot read module {}: {e}",
                    self.node,
                    short(&sha)
                ))),
            },
            _ => Err(RequestError::Internal("not a module request".into())),
        }
    }

    /// Store `module` here and on every other member that lacks it, before a deploy names it
    /// by hash (see the module docs for the rule).
    pub(crate) async fn distribute(
        &self,
        sha: [u8; 32],
        module: Arc<Vec<u8>>,
        voters: &[u64],
        learners: &[u64],
    ) -> Result<Placement, RequestError> {
        self.put_local(sha, module.clone())
            .await
            .map_err(|e| RequestError::Internal(format!("storing the module on this node: {e}")))?;
        let timeout = call_timeout(module.len() as u64);
        let others: Vec<u64> = voters
            .iter()
            .chain(learners)
            .copied()
            .filter(|&id| id != self.node)
            .collect();
        let answers = join_all(others.iter().map(|&id| {
            let module = module.clone();
            async move {
                let r = tokio::time::timeout(timeout, self.place_on(id, sha, module)).await;
                (
                    id,
                    r.unwrap_or_else(|_| {
                        Err(MemberCallError::Unreachable(format!(
                            "node {id} did not answer within {} ms",
                            timeout.as_millis()
                        )))
                    }),
                )
            }
        }))
        .await;
        let supports = self
            .supports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let placement = placement(self.node, voters, answers, &supports)?;
        if let Placement::ByHash { holders } = &placement {
            for id in voters.iter().chain(learners) {
                if !holders.contains(id) {
                    tracing::warn!(target: "wraft::deploy", node = self.node, member = id,
                        module = %short(&sha),
                        "a member did not take the module now; it fetches it from another member when it applies the deploy");
                }
            }
        }
        Ok(placement)
    }

    /// Make member `id` hold the module: ask, and send it if it does not.
    async fn place_on(
        &self,
        id: u64,
        sha: [u8; 32],
        module: Arc<Vec<u8>>,
    ) -> Result<(), MemberCallError> {
        let refused = |e: String| MemberCallError::Unreachable(format!("node {id}: {e}"));
        let has = self
            .peers
            .call_member(id, &Request::ModuleHas { sha256: sha })
            .await?;
        // It decoded a module request: it runs a version that takes modules by hash.
        self.supports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        match has {
            Ok(Reply::ModuleHeld { held: true }) => return Ok(()),
            Ok(Reply::ModuleHeld { held: false }) => {}
            Ok(other) => return Err(refused(unexpected(&other))),
            Err(e) => return Err(refused(e.to_string())),
        }
        let request = Request::ModulePut {
            sha256: sha,
            module: module.to_vec(),
        };
        match self.peers.call_member(id, &request).await? {
            Ok(_) => {
                metrics::counter!("wraft_module_bytes_total", "node" => self.node.to_string(), "direction" => "pushed")
                    .increment(module.len() as u64);
                Ok(())
            }
            Err(e) => Err(refused(e.to_string())),
        }
    }

    /// The module `sha` of `module_bytes` bytes, from this node's store or fetched from the
    /// other `members` in turn, in [`fetch_order`] (`last` asked last: the leader sending a
    /// snapshot). Each answer is checked against the size and the hash, and stored here before
    /// it is returned. `Err` names what every member said.
    pub(crate) async fn obtain(
        &self,
        sha: [u8; 32],
        module_bytes: u64,
        members: &[u64],
        last: Option<u64>,
    ) -> Result<Vec<u8>, String> {
        let mut tried = Vec::new();
        match self.get_local(sha).await {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            // This node's disk failed to read it: the members may still have it.
            Err(e) => {
                tracing::warn!(target: "wraft::deploy", node = self.node, module = %short(&sha),
                    error = %e, "cannot read a stored module; asking the members");
                tried.push(format!("this node: {e}"));
            }
        }
        for id in fetch_order(self.node, members, last) {
            let timeout = call_timeout(module_bytes);
            let answer = tokio::time::timeout(
                timeout,
                self.peers
                    .call_member(id, &Request::ModuleGet { sha256: sha }),
            )
            .await;
            let module = match answer {
                Err(_) => {
                    tried.push(format!(
                        "node {id}: no answer within {} ms",
                        timeout.as_millis()
                    ));
                    continue;
                }
                Ok(Err(e)) => {
                    tried.push(e.to_string());
                    continue;
                }
                Ok(Ok(Err(e))) => {
                    tried.push(format!("node {id}: {e}"));
                    continue;
                }
                Ok(Ok(Ok(Reply::Module { module }))) => module,
                Ok(Ok(Ok(other))) => {
                    tried.push(format!("node {id}: {}", unexpected(&other)));
                    continue;
                }
            };
            if let Err(e) = check(&module, sha, module_bytes) {
                tracing::warn!(target: "wraft::deploy", node = self.node, from = id,
                    module = %short(&sha), "a member sent a wrong module; trying the next: {e}");
                tried.push(format!("node {id}: {e}"));
                continue;
            }
            let module = Arc::new(module);
            self.put_local(sha, module.clone()).await?;
            metrics::counter!("wraft_module_bytes_total", "node" => self.node.to_string(), "direction" => "fetched")
                .increment(module_bytes);
            tracing::info!(target: "wraft::deploy", node = self.node, from = id,
                module = %short(&sha), bytes = module_bytes, "fetched a module by hash");
            return Ok(Arc::try_unwrap(module).unwrap_or_else(|m| (*m).clone()));
        }
        Err(format!(
            "module {} ({module_bytes} bytes) is not on this node and no member sent it: {}",
            short(&sha),
            if tried.is_empty() {
                "no other member is known".to_owned()
            } else {
                tried.join("; ")
            }
        ))
    }

    /// Store modules this node runs (from a snapshot) if they are not stored yet, so that the
    /// other members can fetch them from here.
    pub(crate) fn keep_running(self: &Arc<Self>, modules: Vec<([u8; 32], bytes::Bytes)>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.store_missing(&modules));
    }

    fn store_missing(&self, modules: &[([u8; 32], bytes::Bytes)]) {
        for (sha, bytes) in modules {
            self.pin(*sha);
            if self.store.contains(sha) {
                continue;
            }
            if let Err(e) = self.store.put(sha, bytes) {
                tracing::warn!(target: "wraft::deploy", node = self.node, module = %short(sha),
                    error = %e, "cannot store a module of a running machine");
            }
        }
    }

    /// Record the replicated addresses of a snapshot being restored, so that a module it names
    /// can be fetched from a member added after this node's configuration was written.
    pub(crate) fn learn_addresses(&self, addresses: &[(u64, wraft_proto::PeerAddr)]) {
        for (id, addr) in addresses {
            if *id != self.node {
                self.peers.learn(*id, addr.clone());
            }
        }
    }

    /// Make the store hold `modules` durably: the ones a snapshot being written names by
    /// reference. Each is pinned before it is stored, so no collection removes it between this
    /// call and the snapshot's publication; from then on the snapshot keeps it. Blocking: a
    /// module already stored is read and verified (a damaged copy is replaced).
    pub(crate) fn hold(&self, modules: &[([u8; 32], bytes::Bytes)]) -> Result<(), String> {
        for (sha, bytes) in modules {
            self.pin(*sha);
            self.store
                .put(sha, bytes)
                .map_err(|e| format!("storing module {} for a snapshot: {e}", short(sha)))?;
        }
        Ok(())
    }

    /// Remove every stored module that no machine runs (`running`), no snapshot in `snapshots`
    /// names, no by-hash entry at or above `first_index` (the log's first retained entry)
    /// names, and that was not pinned in the last `recent_keep`; then store any running module
    /// that is missing (blocking pool; logged). If a snapshot's header cannot be read, nothing
    /// is removed.
    pub(crate) fn collect(
        self: &Arc<Self>,
        first_index: u64,
        running: Vec<([u8; 32], bytes::Bytes)>,
        snapshots: wraft_storage::SnapshotStore,
    ) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // Read before the lock: a snapshot published meanwhile names running or pinned
            // modules only (see `hold`).
            let in_snapshots = match snapshot_modules(&snapshots) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target: "wraft::deploy", node = this.node, error = %e,
                        "cannot tell which modules the snapshots name; none is removed");
                    this.store_missing(&running);
                    return;
                }
            };
            let removed = {
                // Held from deciding to removing: a pin, put or read meanwhile waits.
                let mut keep = this.keep();
                let recent_keep = this.recent_keep;
                keep.recent.retain(|_, at| at.elapsed() < recent_keep);
                keep.log = keep.log.split_off(&first_index);
                let named: HashSet<[u8; 32]> = keep
                    .recent
                    .keys()
                    .chain(keep.log.values())
                    .chain(running.iter().map(|(sha, _)| sha))
                    .chain(&in_snapshots)
                    .copied()
                    .collect();
                this.store.retain(|sha| named.contains(sha))
            };
            match removed {
                Ok(removed) if !removed.is_empty() => {
                    let bytes: u64 = removed.iter().map(|m| m.bytes).sum();
                    tracing::info!(target: "wraft::deploy", node = this.node,
                        modules = removed.len(), bytes, "removed modules nothing references any more");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target: "wraft::deploy", node = this.node, error = %e,
                        "collecting unreferenced modules failed; they are kept")
                }
            }
            // A running machine's module must be here for the members that may fetch it.
            this.store_missing(&running);
            publish_store(&this.store, this.node);
        });
    }

    /// Deploy `request` (a `Deploy` or `DeployWith` whose module has SHA-256 `sha` and passed
    /// [`HostEngine::check`]): if this node leads, place the module on the members first (they
    /// compile it meanwhile, in the background), compile it here, and deploy by hash when that
    /// is safe: a module that cannot be compiled is refused to the client and never reaches
    /// the log. A follower hands the deploy to its driver unchanged, which redirects to the
    /// leader (or, if this node leads by now, asks for a retry).
    pub(crate) async fn deploy(
        &self,
        driver: &mpsc::Sender<ClientCall>,
        request: Request,
        sha: [u8; 32],
    ) -> Response {
        let (module, wasi) = match &request {
            Request::Deploy { module, .. } => (Arc::new(module.clone()), WasiProfile::None),
            Request::DeployWith { module, wasi, .. } => (Arc::new(module.clone()), *wasi),
            _ => return Err(RequestError::Internal("not a deploy".into())),
        };
        let status = match ClientCall::call(driver, Request::Status, None).await? {
            Reply::Status(s) => s,
            other => return Err(RequestError::Internal(unexpected(&other))),
        };
        let mut checked = CheckedModule {
            sha256: sha,
            placed: None,
            compiled: false,
        };
        if status.role != "leader" {
            // The driver redirects to the leader, which compiles it.
            return ClientCall::call(driver, request, Some(checked)).await;
        }
        let t = Instant::now();
        match self
            .distribute(sha, module.clone(), &status.voters, &status.learners)
            .await?
        {
            Placement::ByHash { holders } => {
                tracing::info!(target: "wraft::deploy", node = self.node, module = %short(&sha),
                    bytes = module.len(), ?holders, duration_ms = t.elapsed().as_millis() as u64,
                    "module stored on the members; deploying it by hash");
                metrics::counter!("wraft_deploys_placed_total", "node" => self.node.to_string(), "placement" => "by_hash")
                    .increment(1);
                checked.placed = Some(Placed {
                    members: status
                        .voters
                        .iter()
                        .chain(&status.learners)
                        .copied()
                        .collect(),
                    holders,
                });
            }
            Placement::InLog { reason } => {
                metrics::counter!("wraft_deploys_placed_total", "node" => self.node.to_string(), "placement" => "in_log")
                    .increment(1);
                tracing::info!(target: "wraft::deploy", node = self.node, module = %short(&sha),
                    "deploying with the module in the log: {reason}");
            }
        }
        let host = self.host.clone();
        let compiled =
            tokio::task::spawn_blocking(move || host.load_with(&module, wasi).map(|_| ()))
                .await
                .map_err(|e| RequestError::Internal(e.to_string()))?;
        if let Err(e) = compiled {
            return Err(RequestError::Rejected(format!("module refused: {e}")));
        }
        checked.compiled = true;
        ClientCall::call(driver, request, Some(checked)).await
    }
}

/// Where a module goes, from each other member's answer to [`Modules::place_on`]:
/// - in the log if a member could not decode the request (an older version: it could not
///   decode a by-hash entry either), or if a member did not answer and has not shown this
///   leader before that it takes modules by hash (`supports`): its version is unknown;
/// - by hash if a majority of `voters` holds it (`node`, the leader, holds it);
/// - otherwise nowhere: the deploy fails, retryable, saying which members failed.
fn placement(
    node: u64,
    voters: &[u64],
    answers: Vec<(u64, Result<(), MemberCallError>)>,
    supports: &HashSet<u64>,
) -> Result<Placement, RequestError> {
    let mut holders = vec![node];
    let mut missing = Vec::new();
    for (id, answer) in answers {
        match answer {
            Ok(()) => holders.push(id),
            Err(MemberCallError::Unanswered(why)) => {
                return Ok(Placement::InLog {
                    reason: format!(
                        "{why}: a member that cannot decode module requests (an older version) \
                         gets the module in the log"
                    ),
                });
            }
            Err(MemberCallError::Unreachable(why)) if !supports.contains(&id) => {
                return Ok(Placement::InLog {
                    reason: format!(
                        "{why}: node {id} has not shown that it takes modules by hash (its \
                         version is unknown), so the module goes in the log"
                    ),
                });
            }
            Err(MemberCallError::Unreachable(why)) => missing.push(why),
        }
    }
    let voters_holding = voters.iter().filter(|v| holders.contains(v)).count();
    if voters_holding * 2 <= voters.len() {
        return Err(RequestError::Busy(format!(
            "the module reached only {voters_holding} of {} voters, not a majority, so it is \
             not deployed ({}); retry when a majority is reachable",
            voters.len(),
            missing.join("; ")
        )));
    }
    holders.sort_unstable();
    Ok(Placement::ByHash { holders })
}

/// Publish what `store` holds (blocking: lists the files' headers).
/// Whom node `this` asks for a module, in turn: every other member once, starting at a place
/// that depends on `this` (so nodes fetching at once spread over the members instead of all
/// asking the lowest id), with `last` moved to the end.
fn fetch_order(this: u64, members: &[u64], last: Option<u64>) -> Vec<u64> {
    let mut others: Vec<u64> = members.iter().copied().filter(|&id| id != this).collect();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        let start = (this % others.len() as u64) as usize;
        others.rotate_left(start);
    }
    if let Some(l) = last
        && let Some(at) = others.iter().position(|&id| id == l)
    {
        let l = others.remove(at);
        others.push(l);
    }
    others
}

/// Every module the node snapshots in `snapshots` name (by reference or carried). A snapshot
/// removed by retention meanwhile is skipped; any other failure is an error.
fn snapshot_modules(snapshots: &wraft_storage::SnapshotStore) -> Result<HashSet<[u8; 32]>, String> {
    let mut named = HashSet::new();
    for info in snapshots.list() {
        if info.meta.format != wraft_snapshot::format::NODE_SNAPSHOT_FORMAT {
            continue;
        }
        match wraft_snapshot::format::NodeSnapshot::read_header(snapshots, info.id()) {
            Ok(h) => named.extend(h.machines.iter().map(|m| m.module_sha256)),
            Err(wraft_snapshot::format::FormatError::Storage(
                wraft_storage::StorageError::SnapshotNotFound(_),
            )) => {}
            Err(e) => return Err(format!("snapshot {}: {e}", info.id())),
        }
    }
    Ok(named)
}

fn publish_store(store: &ModuleStore, node: u64) {
    if let Ok(stored) = store.list() {
        let n = node.to_string();
        metrics::gauge!("wraft_module_store_modules", "node" => n.clone()).set(stored.len() as f64);
        metrics::gauge!("wraft_module_store_bytes", "node" => n)
            .set(stored.iter().map(|m| m.bytes).sum::<u64>() as f64);
    }
}

/// The size and hash check of a fetched module.
fn check(module: &[u8], sha: [u8; 32], module_bytes: u64) -> Result<(), String> {
    if module.len() as u64 != module_bytes {
        return Err(format!(
            "{} bytes where the deploy entry says {module_bytes}",
            module.len()
        ));
    }
    let found = sha256(module);
    if found != sha {
        return Err(format!(
            "its SHA-256 is {}, not {}",
            short(&found),
            short(&sha)
        ));
    }
    Ok(())
}

fn call_timeout(module_bytes: u64) -> Duration {
    CALL_TIMEOUT_BASE + Duration::from_secs(module_bytes / CALL_BYTES_PER_SEC)
}

fn unexpected(reply: &Reply) -> String {
    let what = match reply {
        Reply::Module { module } => format!("a module of {} bytes", module.len()),
        Reply::SnapshotChunk { data, .. } => format!("a snapshot chunk of {} bytes", data.len()),
        other => {
            let mut d = format!("{other:?}");
            d.truncate(d.floor_char_boundary(200));
            d
        }
    };
    format!("unexpected answer: {what}")
}

/// The first 16 hex characters of a module's SHA-256, as logs and `wraft machines` show it.
pub(crate) fn short(sha: &[u8; 32]) -> String {
    hex(sha)[..16].to_owned()
}

/// What keeps stored modules from collection (besides the running machines).
#[derive(Debug, Default)]
struct Keep {
    /// Modules pinned (stored, read, or counted as held) recently, and when.
    recent: HashMap<[u8; 32], Instant>,
    /// By-hash deploy entries by index: their modules stay while the log holds them.
    log: BTreeMap<u64, [u8; 32]>,
}

#[cfg(test)]
mod tests;
