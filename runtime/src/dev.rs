//! `wraft dev`: the plugin author's inner loop.
//!
//! Build the project ([`crate::build::build_project`]), start a local cluster in this process
//! (the same layout as `wraft demo`: [`crate::local::layout`], fresh certificates, loopback QUIC),
//! deploy the machine, then watch the project's files (`notify`). Every change rebuilds and, when
//! the component changed, deploys it again under the same name — an upgrade, so the node carries
//! the state across with snapshot → restore. A build or an upgrade that fails leaves the running
//! version in place; the loop waits for the next change.
//!
//! Each step prints one line that starts with `==` (`== build ok`, `== deployed`,
//! `== upgraded`, `== build failed`, …) so scripts and tests can follow along. Lines typed on
//! stdin are commands: `propose JSON` (or `p`), `query JSON` (or `q`), `status`, `help`, `quit`.
//! The same cluster is reachable from other terminals with `wraft propose`/`wraft query` using
//! the printed `WRAFT_ENDPOINTS` and `WRAFT_CERTS`, which are also written to
//! `<project>/target/wraft/dev.env` once the cluster is up (`source` it). Ctrl-C or SIGTERM stops the nodes and removes
//! the cluster's files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::build::{BuildOptions, BuiltProject, build_project};
use crate::cli::{describe_build, machines_table};
use crate::local;
use wraft_client::{Client, ClientOptions};
use wraft_host::HostConfig;
use wraft_node::Node;
use wraft_proto::Consistency;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The project directory.
    pub path: PathBuf,
    /// Deploy under this name (default: the name the machine reports in `info`).
    pub name: Option<String>,
    /// Nodes in the local cluster (1..=7).
    pub nodes: u64,
    /// cargo's `--target-dir` for Rust projects.
    pub target_dir: Option<PathBuf>,
    /// Quiet period after a file change before rebuilding, in milliseconds: an editor's burst of
    /// writes becomes one rebuild.
    pub debounce_ms: u64,
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            path: PathBuf::from("."),
            name: None,
            nodes: 3,
            target_dir: None,
            debounce_ms: 300,
        }
    }
}

/// Largest cluster `wraft dev` starts.
pub const DEV_NODES_MAX: u64 = 7;
/// Bound on waiting for the local cluster to elect a leader, in milliseconds.
pub const LEADER_TIMEOUT_MS: u64 = 15_000;

/// Directory names whose changes never trigger a rebuild: build outputs, dependencies, VCS data,
/// and the golden snapshots `cargo test` writes.
const IGNORED_DIRS: &[&str] = &[
    "target",
    "node_modules",
    ".git",
    "__pycache__",
    ".venv",
    "golden",
    "dist",
];

/// True if a change to `path` (inside `root`) should trigger a rebuild.
fn relevant(root: &Path, path: &Path) -> bool {
    let rel = path.strip_prefix(root).unwrap_or(path);
    !rel.components().any(|c| {
        let s = c.as_os_str().to_string_lossy();
        IGNORED_DIRS.contains(&s.as_ref())
    }) && !rel.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        // Cargo.lock: cargo rewrites it during the build itself.
        n.starts_with('.') || n.ends_with('~') || n == "Cargo.lock"
    })
}

async fn build(opts: &DevOptions, out: &Path, cache: &Path) -> Result<BuiltProject, AnyError> {
    let dir = opts.path.clone();
    let bopts = BuildOptions {
        out: Some(out.to_owned()),
        target_dir: opts.target_dir.clone(),
        host: Some(HostConfig {
            cache_dir: Some(cache.to_owned()),
            ..HostConfig::default()
        }),
        sample_log: None,
    };
    Ok(tokio::task::spawn_blocking(move || build_project(&dir, &bopts)).await??)
}

async fn leader(c: &Client, nodes: &[Node]) -> Result<u64, AnyError> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_millis(LEADER_TIMEOUT_MS) {
        for n in nodes {
            if let Ok(s) = c.status_of(Some(n.local_addr())).await
                && s.role == "leader"
            {
                return Ok(s.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the local cluster elected no leader within {LEADER_TIMEOUT_MS} ms").into())
}

/// The loop's own files: the component and the compile cache shared with the nodes.
struct DevFiles {
    out: PathBuf,
    cache: PathBuf,
    /// `<project>/target/wraft/dev.env`: the cluster's `WRAFT_ENDPOINTS` and `WRAFT_CERTS`.
    env: PathBuf,
}

/// Point every node's compile cache (`<data_dir>/modules`) at `cache`, which the build's check
/// fills: the component is compiled once per change instead of once per node plus once for the
/// check. Best effort (unix symlinks; on failure each node compiles on its own, only slower).
fn share_compile_cache(layout: &local::LocalLayout, cache: &Path) {
    #[cfg(unix)]
    for (cfg, _) in &layout.nodes {
        let _ = std::fs::create_dir_all(cache);
        let _ = std::fs::create_dir_all(&cfg.node.data_dir);
        let _ = std::os::unix::fs::symlink(cache, cfg.node.data_dir.join("modules"));
    }
    #[cfg(not(unix))]
    let _ = (layout, cache);
}

/// Run the loop until Ctrl-C, SIGTERM or `quit`. Fails only if the cluster cannot start or the
/// project cannot be watched; build and deploy failures are printed and waited out.
pub async fn run(opts: DevOptions) -> Result<(), AnyError> {
    if !(1..=DEV_NODES_MAX).contains(&opts.nodes) {
        return Err(format!("--nodes must be 1..={DEV_NODES_MAX}, got {}", opts.nodes).into());
    }
    let root = opts
        .path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", opts.path.display()))?;
    let opts = DevOptions {
        path: root.clone(),
        ..opts
    };
    // Watch first, so a change made during the first build is not missed.
    let (tx, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    let watch_root = root.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !matches!(ev.kind, notify::EventKind::Access(_))
        {
            for p in ev.paths {
                if relevant(&watch_root, &p) {
                    let _ = tx.send(p);
                }
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", root.display()))?;
    notify::Watcher::watch(&mut watcher, &root, notify::RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", root.display()))?;

    let tmp = tempfile::Builder::new().prefix("wraft-dev-").tempdir()?;
    let out = tmp.path().join("machine.wasm");
    let cache = tmp.path().join("modules");
    println!("== building {}", root.display());
    let first = build(&opts, &out, &cache).await;

    let layout = local::layout(tmp.path(), opts.nodes, |_| {})?;
    share_compile_cache(&layout, &cache);
    let mut nodes = Vec::new();
    for (cfg, _) in &layout.nodes {
        nodes.push(Node::start(cfg.clone()).await?);
    }
    let eps: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    let c = Client::connect(ClientOptions::from_cert_dir(
        layout.endpoints(),
        &layout.certs,
        "admin",
    )?)
    .await?;
    let files = DevFiles {
        out,
        cache,
        env: root.join("target").join("wraft").join("dev.env"),
    };
    let result = serve(
        &opts,
        &c,
        &nodes,
        &layout,
        &eps,
        first,
        &files,
        &mut changes,
    )
    .await;
    let _ = std::fs::remove_file(&files.env);
    println!("== stopping {} node(s)", nodes.len());
    // In parallel: each node's shutdown waits on its own tasks, not on the others.
    let stops: Vec<_> = nodes
        .into_iter()
        .map(|n| tokio::spawn(n.shutdown()))
        .collect();
    for s in stops {
        let _ = s.await;
    }
    drop(watcher);
    println!("== stopped");
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    opts: &DevOptions,
    c: &Client,
    nodes: &[Node],
    layout: &local::LocalLayout,
    eps: &[String],
    first: Result<BuiltProject, AnyError>,
    files: &DevFiles,
    changes: &mut mpsc::UnboundedReceiver<PathBuf>,
) -> Result<(), AnyError> {
    let leader = leader(c, nodes).await?;
    println!(
        "== cluster: {} node(s) on {} (leader: node {leader})",
        nodes.len(),
        eps.join(", ")
    );
    let mut name = opts.name.clone();
    let mut deployed_sha: Option<String> = None;
    let report = |r: Result<BuiltProject, AnyError>| match r {
        Ok(b) => {
            println!("== build ok: {}", describe_build(&b));
            Some(b)
        }
        Err(e) => {
            println!("== build failed: {e}\n   (the running version stays; waiting for changes)");
            None
        }
    };
    if let Some(b) = report(first) {
        deploy(c, &mut name, &mut deployed_sha, &b, &files.out).await;
    }
    // For other terminals and scripts: `source target/wraft/dev.env`.
    let env = format!(
        "export WRAFT_ENDPOINTS={} WRAFT_CERTS={}\n",
        eps.join(","),
        layout.certs.display()
    );
    if let Err(e) = std::fs::create_dir_all(files.env.parent().unwrap_or(Path::new(".")))
        .and_then(|()| std::fs::write(&files.env, env))
    {
        println!("== cannot write {}: {e}", files.env.display());
    }
    let shown = name.clone().unwrap_or_else(|| "NAME".into());
    // The starters' own commands: the Python one is a counter, the others key/value stores.
    let (put, get) = match crate::templates::Language::detect(&opts.path) {
        Some(crate::templates::Language::Python) => (r#"{"op":"add","n":5}"#, r#"{"op":"get"}"#),
        _ => (
            r#"{"op":"put","key":"a","value":"1"}"#,
            r#"{"op":"get","key":"a"}"#,
        ),
    };
    println!(
        "== ready. Type `propose JSON`, `query JSON`, `status` or `quit`; or from another \
         terminal:\n   source {}    # export WRAFT_ENDPOINTS={} WRAFT_CERTS={}\n   wraft propose {shown} \
         '{put}'\n   wraft query {shown} '{get}'\n   Watching {} for changes; Ctrl-C stops.",
        files.env.display(),
        eps.join(","),
        layout.certs.display(),
        opts.path.display()
    );

    // A plain thread reads stdin (it may block forever; the process exit ends it).
    let (line_tx, mut stdin) = mpsc::unbounded_channel::<String>();
    std::thread::Builder::new()
        .name("wraft-dev-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        })?;
    let mut stdin_open = true;
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        #[cfg(unix)]
        let terminated = term.recv();
        #[cfg(not(unix))]
        let terminated = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminated => return Ok(()),
            line = stdin.recv(), if stdin_open => match line {
                Some(line) => {
                    if !command(c, name.as_deref(), line.trim()).await {
                        return Ok(());
                    }
                }
                None => stdin_open = false,
            },
            Some(path) = changes.recv() => {
                // Let the burst of writes settle, then take everything that queued up.
                tokio::time::sleep(Duration::from_millis(opts.debounce_ms)).await;
                let mut paths = std::collections::BTreeSet::from([path]);
                while let Ok(p) = changes.try_recv() {
                    paths.insert(p);
                }
                // Editors write through temporary files: name the ones that still exist.
                let shown: Vec<String> = paths
                    .iter()
                    .filter(|p| p.exists())
                    .map(|p| p.strip_prefix(&opts.path).unwrap_or(p).display().to_string())
                    .collect();
                println!("== change: {}; rebuilding", if shown.is_empty() { "files removed".into() } else { shown.join(", ") });
                if let Some(b) = report(build(opts, &files.out, &files.cache).await) {
                    deploy(c, &mut name, &mut deployed_sha, &b, &files.out).await;
                }
            }
        }
    }
}

/// Deploy `b` (first time) or upgrade to it; print the outcome. Skips an unchanged component.
async fn deploy(
    c: &Client,
    name: &mut Option<String>,
    deployed: &mut Option<String>,
    b: &BuiltProject,
    out: &Path,
) {
    let n = name
        .get_or_insert_with(|| b.checked.info.name.clone())
        .clone();
    if deployed.as_deref() == Some(b.checked.sha256.as_str()) {
        println!("== unchanged component; nothing to deploy");
        return;
    }
    let bytes = match std::fs::read(out) {
        Ok(b) => b,
        Err(e) => {
            println!("== deploy failed: reading {}: {e}", out.display());
            return;
        }
    };
    let first = deployed.is_none();
    match c.deploy_with(&n, bytes, b.wasi).await {
        Ok(msg) => {
            *deployed = Some(b.checked.sha256.clone());
            let verb = if first { "deployed" } else { "upgraded" };
            println!("== {verb} {n} {}: {msg}", b.checked.info.version);
            if let Ok(ms) = c.machines().await {
                println!("{}", machines_table(&ms));
            }
        }
        Err(e) => println!("== deploy failed: {e}\n   (the running version stays)"),
    }
}

/// Run one stdin command; false means quit.
async fn command(c: &Client, name: Option<&str>, line: &str) -> bool {
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    let arg = arg.trim();
    let Some(name) = name else {
        if !matches!(verb, "quit" | "exit" | "help" | "") {
            println!("== nothing deployed yet (the first build has not succeeded)");
        }
        return !matches!(verb, "quit" | "exit");
    };
    match verb {
        "" => {}
        "propose" | "p" => match c.propose(name, arg.as_bytes()).await {
            Ok(a) => println!(
                "== propose → index {}: {}",
                a.index,
                String::from_utf8_lossy(&a.output)
            ),
            Err(e) => println!("== propose failed: {e}"),
        },
        "query" | "q" => match c
            .query(name, arg.as_bytes(), Consistency::Linearizable)
            .await
        {
            Ok(r) => println!("== query → {}", String::from_utf8_lossy(&r)),
            Err(e) => println!("== query failed: {e}"),
        },
        "status" => match c.machines().await {
            Ok(ms) => println!("{}", machines_table(&ms)),
            Err(e) => println!("== status failed: {e}"),
        },
        "quit" | "exit" => return false,
        "help" => println!("== commands: propose JSON | p JSON, query JSON | q JSON, status, quit"),
        other => println!("== unknown command {other:?}; try `help`"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outputs_and_hidden_files_do_not_trigger_rebuilds() {
        let root = Path::new("/p");
        assert!(relevant(root, Path::new("/p/src/lib.rs")));
        assert!(relevant(root, Path::new("/p/Cargo.toml")));
        for p in [
            "/p/target/debug/x",
            "/p/tests/golden/format-1.snap",
            "/p/.git/index",
            "/p/src/.lib.rs.swp",
            "/p/src/lib.rs~",
            "/p/node_modules/a/b.js",
            "/p/Cargo.lock",
        ] {
            assert!(!relevant(root, Path::new(p)), "{p}");
        }
    }
}
