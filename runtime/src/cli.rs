//! What the `wraft` binary does beyond parsing arguments: certificate
//! issuance, table rendering and the demo walkthrough.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::local;
use wraft_client::{Client, ClientOptions};
use wraft_node::Node;
use wraft_proto::{Consistency, MachineInfo};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// `wraft cert`: create (or reuse) a CA in `dir` and issue certificates.
pub fn cert(dir: &Path, nodes: &[u64], clients: &[String], days: u32) -> Result<(), AnyError> {
    cert_with(dir, None, &[], nodes, clients, days)
}

/// `wraft cert` with its CA-rotation options: first write `dir/ca.crt` as the bundle of the
/// `trust` files (if any), then issue `nodes` and `clients` from the CA in `ca_dir` (or `dir`).
pub fn cert_with(
    dir: &Path,
    ca_dir: Option<&Path>,
    trust: &[PathBuf],
    nodes: &[u64],
    clients: &[String],
    days: u32,
) -> Result<(), AnyError> {
    if !trust.is_empty() {
        let mut bundle = String::new();
        for f in trust {
            let pem =
                std::fs::read_to_string(f).map_err(|e| format!("--trust {}: {e}", f.display()))?;
            bundle += pem.trim_end();
            bundle += "\n";
        }
        wraft_transport::certs::CertDir::new(dir)
            .write_trust_bundle(&bundle)
            .map_err(|e| format!("--trust: {e}"))?;
        println!(
            "{}: trust bundle of {} CA file(s)",
            dir.join("ca.crt").display(),
            trust.len()
        );
    }
    if ca_dir.is_none() && !trust.is_empty() && nodes.is_empty() && clients.is_empty() {
        return Ok(());
    }
    local::issue_certs_from(dir, ca_dir, nodes, clients, days)?;
    println!(
        "certificates in {}: {} node and {} client certificate(s), valid {days} days, issued by the CA in {}",
        dir.display(),
        nodes.len(),
        clients.len(),
        ca_dir.unwrap_or(dir).display()
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
        ss.push(crate::ops::NodeReport {
            addr: n.local_addr().into(),
            status: c.status_of(Some(n.local_addr())).await?,
            info: Some(wraft_node::node_info(n.id())),
        });
    }
    println!("{}", crate::ops::status_table(&ss));
    println!("\n{}", machines_table(&c.machines().await?));

    if once {
        for n in nodes {
            n.shutdown().await;
        }
        println!("\ndemo complete.");
        return Ok(());
    }
    let eps: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    // The web console and the HTTP API, on a node that is up, with a token for the demo.
    let http = nodes
        .iter()
        .filter(|n| n.id() != leader)
        .find_map(|n| n.http_addr());
    if let (Some(http), Some(key)) = (
        http,
        wraft_node::tokens::TokenKey::load(&layout.certs.join("token.key"))?,
    ) {
        let in_a_day = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 86_400;
        let token = key
            .mint("demo", wraft_node::auth::Role::Admin, in_a_day)?
            .token;
        println!(
            "\n== the web console and the HTTP API (an admin token for this demo, valid a day)\n\
             console: https://{http}/console/#token={token}\n\
             (the node's certificate is from the demo's own CA: the browser will ask to trust it)\n\
             curl --cacert {certs}/ca.crt -H 'Authorization: Bearer {token}' https://{http}/v1/status",
            certs = layout.certs.display()
        );
    }
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

/// `wraft snapshot list --data-dir DIR`: the complete snapshots in `DIR/snap`,
/// oldest first, read-only (headers checked; digests are checked by `inspect`).
pub fn snapshot_list_dir(dir: &Path) -> Result<Vec<wraft_proto::SnapshotListing>, AnyError> {
    let snap_dir = dir.join("snap");
    let rd = std::fs::read_dir(&snap_dir)
        .map_err(|e| format!("cannot read {}: {e}", snap_dir.display()))?;
    let mut out = Vec::new();
    for entry in rd {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        match wraft_storage::inspect_snapshot_file(&path, false) {
            Ok(i) => out.push(wraft_proto::SnapshotListing {
                index: i.meta.id.last_index,
                term: i.meta.id.last_term,
                file_bytes: i.file_len,
                digest: wraft_proto::digest::hex(&i.digest),
                path: path.display().to_string(),
                voters: i.meta.membership.voters.clone(),
                learners: i.meta.membership.learners.clone(),
            }),
            Err(e) => eprintln!("{}: {e}", path.display()),
        }
    }
    out.sort_by_key(|l| (l.index, l.term));
    Ok(out)
}

/// Render a snapshot listing as a table or JSON.
pub fn snapshot_listing(
    list: &[wraft_proto::SnapshotListing],
    json: bool,
) -> Result<String, AnyError> {
    if json {
        return Ok(serde_json::to_string_pretty(list)?);
    }
    let mut out = format!(
        "{:>10} {:>6} {:>14}  {:<16}  PATH\n",
        "INDEX", "TERM", "BYTES", "DIGEST"
    );
    for l in list {
        out += &format!(
            "{:>10} {:>6} {:>14}  {:<16}  {}\n",
            l.index,
            l.term,
            l.file_bytes,
            &l.digest[..l.digest.len().min(16)],
            l.path
        );
    }
    Ok(out.trim_end().to_owned())
}

/// One machine in a [`SnapshotReport`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct MachineReport {
    /// Machine name.
    pub name: String,
    /// Guest kind and version.
    pub kind: String,
    /// Guest version.
    pub version: String,
    /// The guest's snapshot format.
    pub snapshot_format: u32,
    /// Component SHA-256, hex.
    pub module_sha256: String,
    /// Component size, bytes.
    pub module_bytes: u64,
    /// Whether the file carries the component's bytes (a backup does); `false`: it names the
    /// component by hash, and the node's module store holds it.
    pub module_carried: bool,
    /// Guest snapshot size, bytes, and chunk count.
    pub state_bytes: u64,
    /// Guest snapshot chunks.
    pub state_chunks: u64,
    /// Deploy index of the running version.
    pub deployed_at: u64,
}

/// What `wraft snapshot inspect` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotReport {
    /// The file.
    pub file: String,
    /// True if every check passed.
    pub ok: bool,
    /// The first failed check, if any.
    pub error: Option<String>,
    /// Last log index covered.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Payload format tag.
    pub format: String,
    /// File length, bytes.
    pub file_bytes: u64,
    /// Bytes of the file not stored in it but shared with older snapshot files next to it
    /// (read from them; the disk it saves).
    pub stored_shared_bytes: u64,
    /// Whole-file BLAKE3 digest from the header, hex.
    pub digest: String,
    /// Whether the digest matched the file's bytes.
    pub digest_ok: bool,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Entry clock at the snapshot's index (leader-assigned), ms since the Unix epoch.
    pub last_timestamp_ms: u64,
    /// Client sessions held.
    pub sessions: usize,
    /// Replicated node addresses.
    pub addresses: Vec<(u64, String)>,
    /// Machines.
    pub machines: Vec<MachineReport>,
    /// Content-addressed segments the file is cut into for incremental transfer.
    pub segments: usize,
    /// What the file shares with its predecessor: the snapshot file in the same directory with
    /// the highest index below this one's (`None` if there is none, or it cannot be read).
    pub shared_with_previous: Option<SharedReport>,
}

/// How much of a snapshot file a holder of another one already has (by segment content).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedReport {
    /// The other file.
    pub file: String,
    /// Its index.
    pub index: u64,
    /// Segments of this file whose bytes the other file holds too.
    pub segments_shared: usize,
    /// Their bytes.
    pub bytes_shared: u64,
    /// The bytes a node holding the other file would fetch to get this one.
    pub bytes_new: u64,
}

impl SnapshotReport {
    /// Human-readable rendering.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\n  index {} term {}  format {}  {} bytes  entry clock {} ms\n  digest {} ({})\n  voters {:?} learners {:?}  sessions {}  addresses {:?}\n",
            self.file,
            self.index,
            self.term,
            self.format,
            self.file_bytes,
            self.last_timestamp_ms,
            self.digest,
            if self.digest_ok { "ok" } else { "MISMATCH" },
            self.voters,
            self.learners,
            self.sessions,
            self.addresses
        );
        out += &format!(
            "  {:<16} {:<10} {:<8} {:>6} {:>12} {:>12} {:>7} {:>10}  SHA256 (MODULE CARRIED, OR BY HASH)\n",
            "MACHINE", "KIND", "VERSION", "FORMAT", "MODULE", "STATE", "CHUNKS", "DEPLOYED"
        );
        for m in &self.machines {
            out += &format!(
                "  {:<16} {:<10} {:<8} {:>6} {:>12} {:>12} {:>7} {:>10}  {} {}\n",
                m.name,
                m.kind,
                m.version,
                m.snapshot_format,
                m.module_bytes,
                m.state_bytes,
                m.state_chunks,
                m.deployed_at,
                &m.module_sha256[..16],
                if m.module_carried {
                    "carried"
                } else {
                    "by hash"
                }
            );
        }
        if self.stored_shared_bytes > 0 {
            out += &format!(
                "  stored {} bytes; {} bytes ({:.1} %) are shared with older snapshot files next \
                 to it, not stored again\n",
                self.file_bytes - self.stored_shared_bytes,
                self.stored_shared_bytes,
                100.0 * self.stored_shared_bytes as f64 / self.file_bytes.max(1) as f64
            );
        }
        out += &format!("  segments {}", self.segments);
        match &self.shared_with_previous {
            Some(p) => {
                out += &format!(
                    "; shares {} segments, {} bytes ({:.1} %), with {} (index {}): a node holding \
                     that one fetches {} bytes\n",
                    p.segments_shared,
                    p.bytes_shared,
                    100.0 * p.bytes_shared as f64 / self.file_bytes.max(1) as f64,
                    p.file,
                    p.index,
                    p.bytes_new
                )
            }
            None => out += "; no earlier snapshot next to it to compare with\n",
        }
        if let Some(e) = &self.error {
            out += &format!("  ERROR: {e}\n");
        }
        out.trim_end().to_owned()
    }
}

/// The content-addressed segments of the snapshot file at `path` (`file_len` bytes).
fn file_segments(
    path: &Path,
    file_len: u64,
) -> Result<Vec<wraft_snapshot::manifest::Segment>, AnyError> {
    let f =
        wraft_storage::open_snapshot_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut read_at = |at: u64, buf: &mut [u8]| wraft_storage::read_exact_at(f.as_ref(), buf, at);
    wraft_snapshot::manifest::segments_of(file_len, &mut read_at)
        .map_err(|e| format!("{}: reading its segments: {e}", path.display()).into())
}

/// The `.snap` file next to `path` with the highest index below `index`, if any.
fn previous_snapshot(path: &Path, index: u64) -> Option<PathBuf> {
    let dir = match path.parent()? {
        d if d.as_os_str().is_empty() => Path::new("."),
        d => d,
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snap") && p != path)
        .filter_map(|p| {
            let i = wraft_storage::inspect_snapshot_file(&p, false).ok()?;
            (i.meta.id.last_index < index).then_some((i.meta.id.last_index, p))
        })
        .max_by_key(|(i, _)| *i)
        .map(|(_, p)| p)
}

/// `wraft snapshot inspect FILE`: check the storage header and whole-file
/// digest, parse the node snapshot, CRC-check every frame, cut the file into its
/// content-addressed segments and compare them with the previous snapshot next to it.
pub fn snapshot_inspect(path: &Path) -> Result<SnapshotReport, AnyError> {
    use wraft_proto::digest::hex;
    use wraft_snapshot::format::{FileBody, NodeSnapshot};
    let info = wraft_storage::inspect_snapshot_file(path, false)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = SnapshotReport {
        file: path.display().to_string(),
        ok: false,
        error: None,
        index: info.meta.id.last_index,
        term: info.meta.id.last_term,
        format: info.meta.format.clone(),
        file_bytes: info.file_len,
        stored_shared_bytes: info.shared_bytes,
        digest: hex(&info.digest),
        digest_ok: false,
        voters: info.meta.membership.voters.clone(),
        learners: info.meta.membership.learners.clone(),
        last_timestamp_ms: 0,
        sessions: 0,
        addresses: Vec::new(),
        machines: Vec::new(),
        segments: 0,
        shared_with_previous: None,
    };
    let segments = file_segments(path, info.file_len)?;
    r.segments = segments.len();
    r.shared_with_previous = previous_snapshot(path, info.meta.id.last_index).and_then(|prev| {
        let prev_info = wraft_storage::inspect_snapshot_file(&prev, false).ok()?;
        let theirs: std::collections::HashSet<[u8; 32]> = file_segments(&prev, prev_info.file_len)
            .ok()?
            .into_iter()
            .map(|s| s.hash)
            .collect();
        let shared: Vec<_> = segments
            .iter()
            .filter(|s| theirs.contains(&s.hash))
            .collect();
        let bytes_shared: u64 = shared.iter().map(|s| u64::from(s.len)).sum();
        Some(SharedReport {
            file: prev.display().to_string(),
            index: prev_info.meta.id.last_index,
            segments_shared: shared.len(),
            bytes_shared,
            bytes_new: info.file_len - bytes_shared,
        })
    });
    match wraft_storage::inspect_snapshot_file(path, true) {
        Ok(_) => r.digest_ok = true,
        Err(e) => r.error = Some(e.to_string()),
    }
    let body = FileBody::open(path, info.body_offset(), info.body_len)?;
    let snap = match NodeSnapshot::parse(std::sync::Arc::new(body)) {
        Ok(s) => s,
        Err(e) => {
            r.error.get_or_insert(e.to_string());
            return Ok(r);
        }
    };
    r.last_timestamp_ms = snap.header.last_timestamp_ms;
    r.sessions = snap.sessions.len();
    r.addresses = snap
        .header
        .addresses
        .iter()
        .map(|(i, a)| (*i, a.to_string()))
        .collect();
    for (i, m) in snap.header.machines.iter().enumerate() {
        let sec = snap.sections[i];
        // Stream every chunk through its CRC check.
        if let Some(mut src) = snap.machine_chunks(i) {
            loop {
                match src.next_chunk() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        r.error.get_or_insert(format!("machine {:?}: {e}", m.name));
                        break;
                    }
                }
            }
        }
        r.machines.push(MachineReport {
            name: m.name.clone(),
            kind: m.kind.clone(),
            version: m.version.clone(),
            snapshot_format: m.snapshot_format,
            module_sha256: hex(&m.module_sha256),
            module_bytes: m.module_bytes,
            module_carried: snap.modules[i].is_some(),
            state_bytes: sec.bytes,
            state_chunks: sec.chunks,
            deployed_at: m.deployed_at,
        });
    }
    r.ok = r.error.is_none() && r.digest_ok;
    Ok(r)
}

/// What `wraft build` and `wraft dev` print about a built component.
pub fn describe_build(b: &crate::build::BuiltProject) -> String {
    let c = &b.checked;
    let fidelity = match &b.fidelity {
        Some(report) => report.to_string(),
        None => format!(
            "snapshot fidelity: not checked (no sample log {}; see docs/guide.md)",
            b.sample_log.display()
        ),
    };
    format!(
        "{}\n  machine {} {} (snapshot format {}), {} bytes, sha256 {}\n  imports: {}\n  \
         passed the deploy checks (size, imports, exports, world, info)\n  {fidelity}",
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
