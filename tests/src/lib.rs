//! End-to-end harness for wraft: real `wraft node` processes on loopback
//! QUIC, driven through the public client.
//!
//! A [`Cluster`] lays out certificates and one TOML config per node in a
//! temporary directory (with [`wraft::local::layout`], on free `127.0.0.1`
//! ports), spawns one `wraft node --config FILE` child process per node, and
//! offers the operations the tests need: find the leader, `kill -9` a node,
//! restart it, add a new node process, and talk to the cluster or to one node.
//!
//! # Where the `wraft` binary comes from
//!
//! Cargo only exposes `CARGO_BIN_EXE_*` to the tests of the package that owns
//! the binary, so this crate finds it itself ([`wraft_bin`]):
//!
//! 1. `WRAFT_BIN`, if set, names the binary to run (nothing is built);
//! 2. otherwise the harness runs `cargo build -p wraft --bin wraft` once per
//!    test process, into the target directory and profile the test binary
//!    itself was built in (derived from `std::env::current_exe()`), and uses
//!    `<target>/<profile>/wraft`. Cargo's lock serializes concurrent test
//!    processes; when the binary is fresh this costs well under a second, and
//!    it can never run a stale binary.
//!
//! Guests are built the same way with [`wraft::build::build_guest`], once per
//! test process ([`guest`]).
//!
//! # Hygiene
//!
//! Every wait is bounded and panics with what it was waiting for. Every child
//! process is killed (`SIGKILL`) and reaped when the [`Cluster`] is dropped.
//! Each node's stdout and stderr go to `<tmp>/node-<id>.log`; when a test
//! panics, the tail of every node's log is printed (set `WRAFT_E2E_KEEP=1` to
//! keep the whole directory). `WRAFT_E2E_LOG` overrides the nodes'
//! `RUST_LOG` (default `info,quinn=warn`).

pub mod faults;
pub mod guests;
pub mod runbook;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wraft::local::{self, LocalLayout};
use wraft_client::{Client, ClientError, ClientOptions};
use wraft_config::NodeConfig;
use wraft_proto::{Consistency, Request, Response, Status};

/// Lines of each node's log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 120;
/// Bound on one status probe of one node, milliseconds (a killed node's
/// connection would otherwise hang until the QUIC idle timeout).
pub const PROBE_TIMEOUT_MS: u64 = 1_500;
/// Interval between polls of a condition, milliseconds.
pub const POLL_INTERVAL_MS: u64 = 50;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `(target dir, profile dir name)` the running test binary was built in:
/// `<target>/<profile>/deps/<test-binary>`.
fn build_location() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let target = profile_dir
        .parent()
        .expect("profile dir has a parent")
        .to_owned();
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into());
    (target, profile)
}

/// A `cargo` command without the variables cargo sets for the test process
/// itself (`CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, …): build scripts that watch
/// them (ring's does) would otherwise see a changed environment, and the
/// inner and outer builds would rebuild each other's dependencies forever.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("NEXTEST")
            || matches!(
                k,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The `wraft` binary to run (see the crate docs). Built at most once per
/// test process. Panics with cargo's status if the build fails.
pub fn wraft_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("WRAFT_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_bin("wraft", "wraft"),
    })
    .clone()
}

/// Binary `bin` of workspace package `package`, built with cargo into the
/// target directory and profile of the running test (a no-op when it is up
/// to date). Panics with cargo's status if the build fails.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let (target, profile) = build_location();
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {bin}: {e}"));
    assert!(
        status.success(),
        "`cargo build -p {package} --bin {bin}` failed: {status}"
    );
    let path = target.join(&profile).join(bin);
    assert!(path.exists(), "{} missing after the build", path.display());
    path
}

/// The component bytes of the example guest `examples/<name>`, built once
/// per test process with [`guests::build`].
pub fn guest(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = BUILT.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    let path = cache
        .entry(name.to_owned())
        .or_insert_with(|| guests::build(name))
        .clone();
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Poll `cond` every [`POLL_INTERVAL_MS`] until it returns `Some`, or panic
/// after `timeout` naming `what`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {} ms waiting for {what}",
            timeout.as_millis()
        );
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// One node process and its files.
struct NodeProc {
    config: NodeConfig,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Extra environment for the node's process (next start on).
    env: Vec<(String, String)>,
    /// The node's UDP port, bound by the harness while the node is not running: its address is
    /// fixed in every member's configuration, and a port left free while it is down can be
    /// handed to any process binding port 0 meanwhile (another test's client), so the node
    /// could not start again.
    port_held: Option<std::net::UdpSocket>,
}

impl NodeProc {
    /// Keep the node's port from being handed out while it is down (best effort: a process
    /// that took it in the moment since the node's exit keeps it).
    fn hold_port(&mut self) {
        self.port_held = std::net::UdpSocket::bind(self.config.node.listen).ok();
    }
}

/// A cluster of `wraft node` processes on loopback. Dropping it kills them.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    layout: LocalLayout,
    nodes: BTreeMap<u64, NodeProc>,
    clients: Mutex<HashMap<u64, Arc<Client>>>,
}

impl Cluster {
    /// Lay out and start an `n`-node cluster with default configs.
    pub fn start(n: u64) -> Cluster {
        Self::start_with(n, |_| {})
    }

    /// Lay out and start an `n`-node cluster; `tweak` adjusts each config.
    pub fn start_with(n: u64, tweak: impl Fn(&mut NodeConfig)) -> Cluster {
        Self::start_prepared(n, tweak, |_| {})
    }

    /// [`Cluster::start_with`], calling `prepare` with each node's config after it is written
    /// and before the node starts (e.g. to seed its data directory with `wraft restore`).
    pub fn start_prepared(
        n: u64,
        tweak: impl Fn(&mut NodeConfig),
        mut prepare: impl FnMut(&NodeConfig),
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("wraft-e2e-")
            .tempdir()
            .expect("temp dir");
        let layout = local::layout(dir.path(), n, tweak).expect("cluster layout");
        let mut c = Cluster {
            dir: Some(dir),
            layout,
            nodes: BTreeMap::new(),
            clients: Mutex::new(HashMap::new()),
        };
        for (cfg, path) in c.layout.nodes.clone() {
            prepare(&cfg);
            c.insert_node(cfg, path);
        }
        c
    }

    fn root(&self) -> &Path {
        &self.layout.root
    }

    fn insert_node(&mut self, config: NodeConfig, config_path: PathBuf) {
        let id = config.node.id;
        let log_path = self.root().join(format!("node-{id}.log"));
        self.nodes.insert(
            id,
            NodeProc {
                config,
                config_path,
                log_path,
                child: None,
                starts: 0,
                env: Vec::new(),
                port_held: None,
            },
        );
        self.restart(id);
    }

    /// The certificate directory (CA, node certs, `client-admin`).
    pub fn certs_dir(&self) -> &Path {
        &self.layout.certs
    }

    /// Ids of every node this harness knows (running or not).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes whose process is running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The client (and raft) address of node `id`.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id].config.node.listen
    }

    /// Addresses of every node.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.nodes.values().map(|n| n.config.node.listen).collect()
    }

    /// A client for the whole cluster (all endpoints, follows redirects).
    pub async fn client(&self) -> Client {
        self.client_for(self.endpoints()).await
    }

    /// A client that knows only `endpoints`.
    pub async fn client_for(&self, endpoints: Vec<SocketAddr>) -> Client {
        let opts = ClientOptions::from_cert_dir(endpoints, self.certs_dir(), "admin")
            .expect("client certificate");
        Client::connect(opts).await.expect("client")
    }

    /// A cached client that talks to node `id` only (for stale reads and
    /// status); replaced whenever the node is killed or restarted.
    pub async fn node_client(&self, id: u64) -> Arc<Client> {
        if let Some(c) = self.lock_clients().get(&id) {
            return c.clone();
        }
        let c = Arc::new(self.client_for(vec![self.addr(id)]).await);
        self.lock_clients().insert(id, c.clone());
        c
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_client(&self, id: u64) {
        self.lock_clients().remove(&id);
    }

    /// Status of node `id`, bounded by [`PROBE_TIMEOUT_MS`]; `None` if it
    /// does not answer (and its cached connection is dropped).
    pub async fn status(&self, id: u64) -> Option<Status> {
        let c = self.node_client(id).await;
        match tokio::time::timeout(
            Duration::from_millis(PROBE_TIMEOUT_MS),
            c.status_of(Some(self.addr(id))),
        )
        .await
        {
            Ok(Ok(s)) => Some(s),
            _ => {
                self.forget_client(id);
                None
            }
        }
    }

    /// A stale read served by node `id` itself, bounded by [`PROBE_TIMEOUT_MS`].
    pub async fn stale_query(
        &self,
        id: u64,
        machine: &str,
        request: &[u8],
    ) -> Result<Vec<u8>, String> {
        let c = self.node_client(id).await;
        match tokio::time::timeout(
            Duration::from_millis(PROBE_TIMEOUT_MS),
            c.query(machine, request, Consistency::Stale),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                self.forget_client(id);
                Err(format!(
                    "node {id} did not answer within {PROBE_TIMEOUT_MS} ms"
                ))
            }
        }
    }

    /// Statuses of every running node that answers.
    pub async fn statuses(&self) -> Vec<Status> {
        let mut out = Vec::new();
        for id in self.running() {
            if let Some(s) = self.status(id).await {
                out.push(s);
            }
        }
        out
    }

    /// One line per node: its status as it reports it, or that it is down.
    pub async fn describe(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            let line = match self.status(id).await {
                Some(s) => format!(
                    "node {id}: {} term {} leader {:?} commit {} applied {} last {} voters {:?} learners {:?} machines {:?}",
                    s.role,
                    s.term,
                    s.leader,
                    s.commit_index,
                    s.applied_index,
                    s.last_index,
                    s.voters,
                    s.learners,
                    s.machines
                        .iter()
                        .map(|m| (&m.name, m.deployed_at, m.healthy))
                        .collect::<Vec<_>>()
                ),
                None if self.nodes[&id].child.is_some() => format!("node {id}: no answer"),
                None => format!("node {id}: stopped"),
            };
            out += &line;
            out.push('\n');
        }
        out
    }

    /// Wait until one running node is leader with the highest term any
    /// running node reports, and a majority of the running nodes that answer
    /// name it; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        self.wait_for_leader_among(&self.running(), timeout).await
    }

    /// Wait for a leader (up to 30 s) and deploy the kv example through it; the leader's id.
    pub async fn deploy_kv(&self) -> u64 {
        let leader = self.wait_for_leader(Duration::from_secs(30)).await;
        self.client()
            .await
            .deploy("kv", guest("kv"))
            .await
            .expect("deploy kv");
        leader
    }

    /// [`Cluster::wait_for_leader`] restricted to the nodes `among`.
    pub async fn wait_for_leader_among(&self, among: &[u64], timeout: Duration) -> u64 {
        wait_for("a leader", timeout, async || {
            let mut ss = Vec::new();
            for id in among {
                if let Some(s) = self.status(*id).await {
                    ss.push(s);
                }
            }
            let max_term = ss.iter().map(|s| s.term).max()?;
            let leader = ss
                .iter()
                .find(|s| s.role == "leader" && s.term == max_term)?
                .id;
            let agree = ss.iter().filter(|s| s.leader == Some(leader)).count();
            (agree * 2 > among.len()).then_some(leader)
        })
        .await
    }

    /// Let go of stopped node `id`'s port, which the harness holds while the node is down (see
    /// `NodeProc::port_held`): for a tool that takes a bound listen address for a running node
    /// (`wraft recover`). The next start holds nothing either way.
    pub fn release_port(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is running");
        node.port_held = None;
    }

    /// `kill -9` node `id` and reap it; its port stays held for it until it starts again.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            node.hold_port();
        }
        self.forget_client(id);
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) to node `id`'s process; panics if it is not running.
    pub fn signal(&self, id: u64, signal: i32) {
        let pid = self.pid(id).expect("node is running") as i32;
        // SAFETY: kill(2) on a child process this harness started and has not reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Wait (bounded) until node `id`'s process exits by itself and reap it; its exit status.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let child = node.child.as_mut().expect("node was started");
            if let Some(status) = child.try_wait().expect("try_wait") {
                node.child = None;
                node.hold_port();
                self.forget_client(id);
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "node {id} did not exit within {} ms",
                timeout.as_millis()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process id of node `id`, if it is running (for `SIGSTOP`/`SIGCONT`).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// Node `id`'s config as written to its file.
    pub fn config(&self, id: u64) -> &NodeConfig {
        &self.nodes[&id].config
    }

    /// The cluster's temporary directory (configs, data dirs, node logs).
    pub fn dir(&self) -> &Path {
        self.root()
    }

    /// If node `id` was started and its process has exited by itself (it was
    /// not killed by the harness), how it exited; the child is then reaped
    /// and the node counts as stopped.
    pub fn exited(&mut self, id: u64) -> Option<String> {
        let node = self.nodes.get_mut(&id)?;
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        node.hold_port();
        self.forget_client(id);
        Some(status.to_string())
    }

    /// Whether node `id`'s process is alive (panics if it exited by itself).
    pub fn assert_alive(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let child = node.child.as_mut().expect("node was started");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("node {id} exited unexpectedly: {status}");
        }
    }

    /// (Re)start node `id` from its config and data directory.
    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("node log");
        let _ = writeln!(log, "==== harness: start #{} of node {id}", node.starts);
        node.port_held = None;
        let err = log.try_clone().expect("log handle");
        let filter =
            std::env::var("WRAFT_E2E_LOG").unwrap_or_else(|_| "info,quinn=warn".to_owned());
        let child = Command::new(wraft_bin())
            .arg("node")
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawning wraft node");
        node.child = Some(child);
    }

    /// Lay out node `id` joining the running cluster: a certificate from the
    /// cluster CA, a free port, a config that lists the original members in
    /// `cluster.members` (so it starts with no role of its own: it is not in
    /// that list) and every known node in `cluster.peers`; then start it.
    pub fn add_node(&mut self, id: u64) -> SocketAddr {
        self.add_node_with(id, |_| {})
    }

    /// [`Cluster::add_node`], with `tweak` applied to the new node's config
    /// last (e.g. to point its peers at a fault proxy).
    pub fn add_node_with(&mut self, id: u64, tweak: impl FnOnce(&mut NodeConfig)) -> SocketAddr {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        local::issue_certs(self.certs_dir(), &[id], &[], local::LOCAL_CERT_DAYS)
            .expect("issuing a node certificate");
        let template = self
            .nodes
            .values()
            .next()
            .expect("at least one node")
            .config
            .clone();
        let mut cfg = template;
        cfg.node.id = id;
        cfg.node.listen = local::free_udp_port().expect("free port");
        cfg.node.data_dir = self.root().join(format!("node-{id}"));
        cfg.cluster.peers = self
            .nodes
            .iter()
            .map(|(i, n)| (*i, n.config.node.listen.into()))
            .collect();
        assert!(!cfg.cluster.members.contains_key(&id));
        tweak(&mut cfg);
        cfg.validate().expect("valid config");
        let path = self.root().join(format!("node-{id}.toml"));
        std::fs::write(&path, cfg.to_toml()).expect("writing config");
        let addr = cfg.node.listen;
        self.insert_node(cfg, path);
        addr
    }

    /// Send one request to node `id` as it is, with the admin certificate: no redirect, no
    /// retry, no session handling (for tests of the protocol itself).
    pub async fn raw(&self, id: u64, req: &Request) -> Response {
        let tls = wraft_transport::certs::CertDir::new(self.certs_dir())
            .load_tls(&wraft_transport::Identity::Client("admin".into()))
            .expect("admin certificate");
        let conn = wraft_transport::client::ClientConnection::connect(
            self.addr(id),
            None,
            &tls,
            &Default::default(),
        )
        .await
        .expect("connect");
        let (_, resp) = conn
            .request::<Request, Response>(wraft_proto::KIND_REQUEST, req)
            .await
            .expect("exchange");
        resp
    }

    /// Open a client session at node `id` (the leader) through the log; its id.
    pub async fn open_session(&self, id: u64) -> u64 {
        match self.raw(id, &Request::OpenSession).await {
            Ok(wraft_proto::Reply::SessionOpened { client_id }) => client_id,
            other => panic!("opening a session at node {id}: {other:?}"),
        }
    }

    /// Change node `id`'s config file; it takes effect at the node's next (re)start.
    pub fn reconfigure(&mut self, id: u64, tweak: impl FnOnce(&mut NodeConfig)) {
        let node = self.nodes.get_mut(&id).expect("known node");
        tweak(&mut node.config);
        node.config.validate().expect("valid config");
        std::fs::write(&node.config_path, node.config.to_toml()).expect("writing config");
    }

    /// Set an environment variable for node `id`'s process from its next
    /// (re)start on (e.g. a test-only fault knob).
    pub fn set_env(&mut self, id: u64, key: &str, value: &str) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.env.retain(|(k, _)| k != key);
        node.env.push((key.to_owned(), value.to_owned()));
    }

    /// Node `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default()
    }

    /// The cluster's admin client certificate and key.
    pub fn admin_tls(&self) -> wraft_transport::certs::TlsIdentity {
        wraft_transport::certs::CertDir::new(self.certs_dir())
            .load_tls(&wraft_transport::Identity::Client("admin".into()))
            .expect("admin certificate")
    }

    /// A raw QUIC client connection to node `id` as the admin, granting the node only
    /// `window_bytes` of credit per stream: a larger response cannot leave the node until the
    /// test reads it. The endpoint must outlive the connection.
    pub async fn connect_stingy(
        &self,
        id: u64,
        window_bytes: u32,
    ) -> (
        wraft_transport::quinn::Endpoint,
        wraft_transport::quinn::Connection,
    ) {
        use wraft_transport::quinn;
        use wraft_transport::tls::{self, Alpn, AuthCounters};
        let rustls_cfg =
            tls::client_config(&self.admin_tls(), Alpn::Client, &AuthCounters::new()).expect("tls");
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg).expect("quic");
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(window_bytes.into());
        let mut cc = quinn::ClientConfig::new(Arc::new(quic));
        cc.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let conn = endpoint
            .connect_with(cc, self.addr(id), &tls::server_name_for(id))
            .expect("connect")
            .await
            .expect("handshake");
        (endpoint, conn)
    }

    /// Deploy kv if the cluster has not got it, then commit a write of `key` and read it back
    /// linearizably, each within 15 s: the cluster still serves.
    pub async fn assert_still_commits(&self, key: &str) {
        const SERVE_TIMEOUT: Duration = Duration::from_secs(15);
        let c = self.client().await;
        if c.machines()
            .await
            .map(|m| m.iter().all(|m| m.name != "kv"))
            .unwrap_or(true)
        {
            c.deploy("kv", guest("kv")).await.expect("deploy kv");
        }
        let start = Instant::now();
        tokio::time::timeout(SERVE_TIMEOUT, c.propose("kv", &kv_put(key, "v")))
            .await
            .unwrap_or_else(|_| panic!("write of {key} not committed within {SERVE_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("write of {key} failed: {e}"));
        let got = tokio::time::timeout(
            SERVE_TIMEOUT,
            c.query("kv", &kv_get(key), Consistency::Linearizable),
        )
        .await
        .expect("read in time")
        .expect("read");
        assert_eq!(kv_value(&got).as_deref(), Some("v"));
        eprintln!("{key}: write + linearizable read in {:?}", start.elapsed());
    }

    /// The address node `id`'s current process serves `/metrics`, `/livez` and `/readyz` on
    /// (configure `node.metrics_listen = "127.0.0.1:0"`; the node logs the port it bound).
    pub async fn metrics_addr(&self, id: u64) -> SocketAddr {
        self.logged_addr(id, "metrics_addr=").await
    }

    /// The address node `id`'s current process serves the HTTPS API on (the harness's
    /// configs set `http.listen = "127.0.0.1:0"`; the node logs the port it bound).
    pub async fn http_addr(&self, id: u64) -> SocketAddr {
        self.logged_addr(id, "http_addr=").await
    }

    /// An address node `id`'s current process logged as `key<addr>`.
    async fn logged_addr(&self, id: u64, key: &str) -> SocketAddr {
        let what = key.trim_end_matches('=').replace('_', " ");
        wait_for(
            &format!("node {id} to log its {what}"),
            Duration::from_secs(30),
            async || {
                let log = self.log(id);
                let current = log.rsplit("==== harness: start #").next()?;
                let at = current.find(key)? + key.len();
                current[at..]
                    .split(|c: char| c.is_whitespace())
                    .next()?
                    .parse()
                    .ok()
            },
        )
        .await
    }

    /// Wait until every node in `ids` has applied at least `index`.
    pub async fn wait_applied(&self, ids: &[u64], index: u64, timeout: Duration) {
        for id in ids {
            wait_for(
                &format!("node {id} to apply index {index}"),
                timeout,
                async || {
                    self.status(*id)
                        .await
                        .filter(|s| s.applied_index >= index)
                        .map(|_| ())
                },
            )
            .await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids = self.ids();
        for id in &ids {
            self.kill(*id);
        }
        if std::thread::panicking() {
            for id in &ids {
                let log = self.log(*id);
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(LOG_TAIL_LINES);
                eprintln!(
                    "\n======== node {id}: last {} of {} log lines ========",
                    lines.len() - from,
                    lines.len()
                );
                for l in &lines[from..] {
                    eprintln!("{l}");
                }
            }
        }
        if std::env::var_os("WRAFT_E2E_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("kept cluster directory {}", kept.display());
        }
    }
}

/// `GET path` from `addr` over plain HTTP/1.1: the status code and the body; `None` if the
/// connection fails or the answer is not HTTP. Bounded by [`PROBE_TIMEOUT_MS`] per step.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A bearer token for the HTTP API from `wraft token create` (signed with `certs/token.key`).
pub fn mint_token(certs: &Path, name: &str, role: &str) -> String {
    let out = Command::new(wraft_bin())
        .args(["token", "create", "--name", name, "--role", role, "--certs"])
        .arg(certs)
        .output()
        .expect("wraft token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// JSON bytes of a value (for kv commands and queries).
pub fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}

/// Parse a machine's JSON output.
pub fn parse(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// `key=value` fields of the last line of a node's `log` containing `what` (quotes trimmed).
/// Panics, showing the log, if there is none.
pub fn last_fields(log: &str, what: &str) -> std::collections::BTreeMap<String, String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no log line with {what:?}:\n{log}"));
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// `len` letters of deterministic noise from `seed`: values that zstd cannot shrink much
/// (a letter carries 4.7 bits), so a kv snapshot stays about as large as the state written.
pub fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

/// A kv `put`.
pub fn kv_put(key: &str, value: &str) -> Vec<u8> {
    json(serde_json::json!({"op": "put", "key": key, "value": value}))
}

/// A kv `get` query.
pub fn kv_get(key: &str) -> Vec<u8> {
    json(serde_json::json!({"op": "get", "key": key}))
}

/// The value a kv `get` answer carries (`None` when absent).
pub fn kv_value(answer: &[u8]) -> Option<String> {
    parse(answer)["value"].as_str().map(str::to_owned)
}

/// Whether an error is the kind a client sees while the cluster changes
/// leader (as opposed to a refusal).
pub fn is_transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::NoLeader { .. }
            | ClientError::Unreachable { .. }
            | ClientError::Timeout(_)
            | ClientError::Busy(_)
            | ClientError::Internal(_)
    )
}

/// Run `wraft bench ARGS --module <the kv guest> --dir <a temp dir>`, insist it succeeds, and
/// return the JSON report it prints as its last line, and its stderr.
pub fn run_bench(args: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let module = dir.path().join("kv.wasm");
    std::fs::write(&module, guest("kv")).expect("write kv module");
    let out = std::process::Command::new(wraft_bin())
        .arg("bench")
        .args(args)
        .arg("--module")
        .arg(&module)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("running wraft bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "wraft bench failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("a JSON line");
    let report = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    (report, stderr)
}
