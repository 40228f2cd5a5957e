//! What the `wraft` binary does beyond parsing arguments: certificate
//! issuance, table rendering and the demo walkthrough.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientOptions};
use crate::local;
use crate::node::Node;
use crate::proto::{Consistency, MachineInfo, Status};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// `wraft cert`: create (or reuse) a CA in `dir` and issue certificates.
pub fn cert(dir: &Path, nodes: &[u64], clients: &[String], days: u32) -> Result<(), AnyError> {
    local::issue_certs(dir, nodes, clients, days)?;
    println!(
        "certificates in {}: ca.crt, {} node and {} client certificate(s), valid {days} days",
        dir.display(),
        nodes.len(),
        clients.len()
    );
    Ok(())
}

/// Render machines as a table.
pub fn machines_table(ms: &[MachineInfo]) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:<10} {:<18} {:>10} {}\n",
        "NAME", "KIND", "VERSION", "SHA256", "DEPLOYED", "HEALTHY"
    );
    for m in ms {
        out += &format!(
            "{:<16} {:<12} {:<10} {:<18} {:>10} {}\n",
            m.name,
            m.kind,
            m.version,
            &m.module_sha256[..m.module_sha256.len().min(16)],
            m.deployed_at,
            m.healthy
        );
    }
    out.trim_end().to_owned()
}

/// Render node statuses as a table.
pub fn status_table(ss: &[Status]) -> String {
    let mut out = format!(
        "{:<5} {:<10} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8}  MEMBERS\n",
        "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "SNAP"
    );
    for s in ss {
        out += &format!(
            "{:<5} {:<10} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8}  voters {:?} learners {:?}\n",
            s.id,
            s.role,
            s.term,
            s.leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            s.commit_index,
            s.applied_index,
            s.last_index,
            s.snapshot_index,
            s.voters,
            s.learners
        );
    }
    out.trim_end().to_owned()
}

fn find_kv_module(module: Option<PathBuf>) -> Result<Vec<u8>, AnyError> {
    if let Some(p) = module {
        return std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()).into());
    }
    let dir = Path::new("examples/kv");
    if !dir.exists() {
        return Err("no --module given and examples/kv is not here; run from the repository root or pass --module".into());
    }
    println!("building the kv example (examples/kv)…");
    let built = crate::build::build_guest(dir, None)?;
    Ok(std::fs::read(&built.component)?)
}

async fn wait_for_leader(c: &Client, nodes: &[Node], timeout: Duration) -> Result<u64, AnyError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        for n in nodes {
            if let Ok(s) = c.status_of(Some(n.local_addr())).await
                && s.role == "leader"
            {
                return Ok(s.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no leader within {} ms", timeout.as_millis()).into())
}

/// `wraft demo`: a 3-node cluster in this process on loopback QUIC with
/// fresh certificates, the kv machine, writes, a linearizable read, a leader
/// failover and a status table.
pub async fn demo(once: bool, module: Option<PathBuf>) -> Result<(), AnyError> {
    let kv = find_kv_module(module)?;
    let tmp = tempfile::Builder::new().prefix("wraft-demo-").tempdir()?;
    let layout = local::layout(tmp.path(), 3, |_| {})?;
    println!(
        "\n== starting 3 nodes (data and certificates in {})",
        tmp.path().display()
    );
    let mut nodes = Vec::new();
    for (cfg, _) in &layout.nodes {
        let n = Node::start(cfg.clone()).await?;
        println!("   node {} on {}", n.id(), n.local_addr());
        nodes.push(n);
    }
    let opts = ClientOptions::from_cert_dir(layout.endpoints(), &layout.certs, "admin")?;
    let c = Client::connect(opts).await?;
    let leader = wait_for_leader(&c, &nodes, Duration::from_secs(10)).await?;
    println!("   node {leader} is the leader");

    println!("\n== deploying the kv machine as \"kv\"");
    println!("   {}", c.deploy("kv", kv).await?);

    println!("\n== writes");
    for (k, v) in [
        ("apple", "red"),
        ("banana", "yellow"),
        ("cherry", "dark red"),
    ] {
        let cmd = format!(r#"{{"op":"put","key":"{k}","value":"{v}"}}"#);
        let out = c.propose("kv", cmd.as_bytes()).await?;
        println!(
            "   {cmd}  →  index {}: {}",
            out.index,
            String::from_utf8_lossy(&out.output)
        );
    }
    let cas = r#"{"op":"cas","key":"apple","expected":"red","new":"green"}"#;
    let out = c.propose("kv", cas.as_bytes()).await?;
    println!(
        "   {cas}  →  index {}: {}",
        out.index,
        String::from_utf8_lossy(&out.output)
    );

    println!("\n== linearizable read");
    let q = r#"{"op":"get","key":"apple"}"#;
    let ans = c
        .query("kv", q.as_bytes(), Consistency::Linearizable)
        .await?;
    println!("   {q}  →  {}", String::from_utf8_lossy(&ans));

    println!("\n== failover: stopping the leader (node {leader})");
    let idx = nodes
        .iter()
        .position(|n| n.id() == leader)
        .ok_or("leader vanished")?;
    let old = nodes.remove(idx);
    old.shutdown().await;
    let t0 = Instant::now();
    let new_leader = wait_for_leader(&c, &nodes, Duration::from_secs(10)).await?;
    println!(
        "   node {new_leader} took over after {} ms",
        t0.elapsed().as_millis()
    );
    let out = c
        .propose("kv", br#"{"op":"put","key":"durian","value":"spiky"}"#)
        .await?;
    println!("   write after failover → index {}", out.index);
    let scan = r#"{"op":"scan","prefix":""}"#;
    let ans = c
        .query("kv", scan.as_bytes(), Consistency::Linearizable)
        .await?;
    println!("   {scan}  →  {}", String::from_utf8_lossy(&ans));

    println!("\n== status");
    let mut ss = Vec::new();
    for n in &nodes {
        ss.push(c.status_of(Some(n.local_addr())).await?);
    }
    println!("{}", status_table(&ss));
    println!("\n{}", machines_table(&c.machines().await?));

    if once {
        for n in nodes {
            n.shutdown().await;
        }
        println!("\ndemo complete.");
        return Ok(());
    }
    let eps: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    println!(
        "\n== the cluster keeps running (node {leader} is down). In another terminal:\n\
         export WRAFT_ENDPOINTS={} WRAFT_CERTS={}\n\
         wraft status --all\n\
         wraft propose kv '{{\"op\":\"put\",\"key\":\"x\",\"value\":\"1\"}}'\n\
         wraft query kv '{{\"op\":\"get\",\"key\":\"x\"}}'\n\
         Ctrl-C stops the demo and deletes its files.",
        eps.join(","),
        layout.certs.display()
    );
    tokio::signal::ctrl_c().await?;
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// What `wraft build` and `wraft dev` print about a built component.
pub fn describe_build(b: &crate::build::BuiltProject) -> String {
    let c = &b.checked;
    format!(
        "{}\n  machine {} {} (snapshot format {}), {} bytes, sha256 {}\n  imports: {}\n  \
         passed the deploy checks (size, imports, exports, world, info)",
        b.out.display(),
        c.info.name,
        c.info.version,
        c.info.snapshot_format,
        c.bytes,
        &c.sha256[..c.sha256.len().min(16)],
        if c.summary.imports.is_empty() {
            "none".to_owned()
        } else {
            c.summary.imports.join(", ")
        }
    )
}
