//! The cluster a benchmark runs against: laid out in a temp dir, started as processes or in
//! this process, with the kv machine deployed everywhere; stopped when dropped.

use super::*;

/// A running local cluster: child processes or in-process nodes. Dropping it
/// kills the children; [`Cluster::stop`] also shuts in-process nodes down.
pub(super) enum Cluster {
    Processes(Vec<Child>),
    InProcess(Vec<Node>),
}

impl Cluster {
    pub(super) async fn start(layout: &LocalLayout, processes: bool) -> Result<Cluster, AnyError> {
        if processes {
            let exe = std::env::current_exe()?;
            let mut children = Vec::new();
            for (cfg, path) in &layout.nodes {
                let log =
                    std::fs::File::create(layout.root.join(format!("node-{}.log", cfg.node.id)))?;
                let child = Command::new(&exe)
                    .arg("node")
                    .arg("--config")
                    .arg(path)
                    .env(
                        "RUST_LOG",
                        std::env::var("WRAFT_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(log))
                    .spawn()
                    .map_err(|e| format!("cannot start {} node: {e}", exe.display()))?;
                children.push(child);
            }
            Ok(Cluster::Processes(children))
        } else {
            let mut nodes = Vec::new();
            for (cfg, _) in &layout.nodes {
                nodes.push(Node::start(cfg.clone()).await?);
            }
            Ok(Cluster::InProcess(nodes))
        }
    }

    /// Fail if a child process has exited (it would otherwise look like a slow cluster).
    pub(super) fn check_alive(&mut self) -> Result<(), AnyError> {
        if let Cluster::Processes(children) = self {
            for c in children.iter_mut() {
                if let Some(status) = c.try_wait()? {
                    return Err(format!(
                        "node process {} exited early ({status}); see node-*.log (--keep keeps them)",
                        c.id()
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    pub(super) async fn stop(mut self) {
        if let Cluster::InProcess(nodes) = &mut self {
            for n in std::mem::take(nodes) {
                n.shutdown().await;
            }
        }
        // Child processes are killed by `Drop`.
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Cluster::Processes(children) = self {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub(super) async fn wait_for_leader(
    c: &Client,
    layout: &LocalLayout,
    cluster: &mut Cluster,
    timeout: Duration,
) -> Result<(u64, std::net::SocketAddr), AnyError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        cluster.check_alive()?;
        for ep in layout.endpoints() {
            if let Ok(s) = c.status_of(Some(ep)).await
                && s.role == "leader"
            {
                return Ok((s.id, ep));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no leader within {} ms", timeout.as_millis()).into())
}

pub(super) async fn wait_for_machine_everywhere(
    c: &Client,
    layout: &LocalLayout,
    leader: std::net::SocketAddr,
    machine: &str,
    timeout: Duration,
) -> Result<(), AnyError> {
    let start = Instant::now();
    let target = c.status_of(Some(leader)).await?.commit_index;
    'outer: while start.elapsed() < timeout {
        for ep in layout.endpoints() {
            let ready = match c.status_of(Some(ep)).await {
                Ok(s) => {
                    s.applied_index >= target
                        && s.machines.iter().any(|m| m.name == machine && m.healthy)
                }
                Err(_) => false,
            };
            if !ready {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'outer;
            }
        }
        return Ok(());
    }
    Err(format!(
        "machine {machine:?} not applied on every node within {} ms",
        timeout.as_millis()
    )
    .into())
}

pub(super) fn kv_module(module: Option<&Path>) -> Result<Vec<u8>, AnyError> {
    if let Some(p) = module {
        return std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()).into());
    }
    let dir = Path::new("examples/kv");
    if !dir.exists() {
        return Err(
            "no --module given and examples/kv is not here; run from the repository root or pass --module"
                .into(),
        );
    }
    eprintln!("building the kv example (examples/kv)…");
    let built = crate::build::build_guest(dir, None)?;
    Ok(std::fs::read(&built.component)?)
}
