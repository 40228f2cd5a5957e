//! Operator commands that address several nodes: `wraft status` (each node's state and
//! version; a node that does not answer makes the command fail), `wraft snapshot trigger`
//! on a chosen node or on every member, and `wraft snapshot rate` on every endpoint. Each asks
//! every node it was told to even when one fails, prints a line per node, and fails at the end
//! naming the nodes that failed.

use std::time::Duration;
use wraft_proto::PeerAddr;

use wraft_client::{Client, NodeInfo, Status};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// One node's answer to `wraft status`.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The address asked.
    pub addr: PeerAddr,
    /// Its status.
    pub status: Status,
    /// Its software, `None` if it did not say (a node older than `Request::NodeInfo`).
    pub info: Option<NodeInfo>,
}

/// What `wraft status` gathered: the nodes that answered, and those that did not.
#[derive(Debug, Clone, Default)]
pub struct StatusReport {
    /// Answers, in the order asked.
    pub nodes: Vec<NodeReport>,
    /// `address: error` of every node asked that did not answer.
    pub missing: Vec<String>,
}

/// Ask every address in `endpoints` (`all`), or the first endpoint that answers, for its status
/// and version.
pub async fn gather_status(c: &Client, endpoints: &[PeerAddr], all: bool) -> StatusReport {
    let mut report = StatusReport::default();
    if all {
        for ep in endpoints {
            match ask(c, ep).await {
                Ok(node) => report.nodes.push(node),
                Err(e) => report.missing.push(e),
            }
        }
    } else {
        let mut errors = Vec::new();
        for ep in endpoints {
            match ask(c, ep).await {
                Ok(node) => {
                    report.nodes.push(node);
                    return report;
                }
                Err(e) => errors.push(e),
            }
        }
        report.missing = errors;
    }
    report
}

/// The status and version of the node at `ep`, or why it did not answer (naming it).
async fn ask(c: &Client, ep: &PeerAddr) -> Result<NodeReport, String> {
    let status = c
        .status_of(Some(ep.clone()))
        .await
        .map_err(|e| format!("{ep}: {e}"))?;
    let info = c.node_info_of(ep.clone()).await.ok();
    Ok(NodeReport {
        addr: ep.clone(),
        status,
        info,
    })
}

/// `wraft status`: print what answered (a table, or JSON: each `Status` with `version` and
/// `commit` added), name on stderr every node that did not, and fail if any did not (with
/// `all`) or none did.
pub async fn status_command(
    c: &Client,
    endpoints: &[PeerAddr],
    all: bool,
    json: bool,
) -> Result<(), AnyError> {
    let report = gather_status(c, endpoints, all).await;
    if json {
        let mut out = Vec::new();
        for n in &report.nodes {
            let mut v = serde_json::to_value(&n.status)?;
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "version".into(),
                    n.info.as_ref().map(|i| i.version.clone()).into(),
                );
                o.insert(
                    "commit".into(),
                    n.info.as_ref().and_then(|i| i.commit.clone()).into(),
                );
            }
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if !report.nodes.is_empty() {
        println!("{}", status_table(&report.nodes));
    }
    for m in &report.missing {
        eprintln!("did not answer: {m}");
    }
    let failed = if all {
        !report.missing.is_empty()
    } else {
        report.nodes.is_empty()
    };
    if failed {
        let asked = if all { endpoints.len() } else { 1 };
        return Err(format!(
            "{} of {asked} node(s) asked did not answer: {}",
            if all { report.missing.len() } else { 1 },
            report.missing.join("; ")
        )
        .into());
    }
    Ok(())
}

/// Render nodes' statuses and versions as a table.
pub fn status_table(rows: &[NodeReport]) -> String {
    let mut out = format!(
        "{:<5} {:<10} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8}  {:<16} MEMBERS\n",
        "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "SNAP", "VERSION"
    );
    for r in rows {
        let s = &r.status;
        let version = match &r.info {
            Some(NodeInfo {
                version,
                commit: Some(c),
                ..
            }) => format!("{version} ({})", &c[..c.len().min(10)]),
            Some(i) => i.version.clone(),
            None => "unknown".into(),
        };
        out += &format!(
            "{:<5} {:<10} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8}  {:<16} voters {:?} learners {:?}\n",
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
            version,
            s.voters,
            s.learners
        );
    }
    out.trim_end().to_owned()
}

/// Which nodes `wraft snapshot trigger` acts on.
#[derive(Debug, Clone)]
pub enum TriggerTarget {
    /// The first address in `--endpoints` (the behaviour before a choice existed).
    First,
    /// The node with this id, found through the members' statuses.
    Node(u64),
    /// This address.
    Endpoint(PeerAddr),
    /// Every member reachable through `--endpoints`.
    All,
}

/// `wraft snapshot trigger`: take a snapshot on the chosen node(s), each waited for (up to
/// `wait`) until durable; print one line per node; fail if any failed, naming it.
pub async fn snapshot_trigger(
    c: &Client,
    endpoints: &[PeerAddr],
    target: TriggerTarget,
    wait: Duration,
) -> Result<(), AnyError> {
    let targets: Vec<(Option<u64>, PeerAddr)> = match target {
        TriggerTarget::First => vec![(None, endpoints[0].clone())],
        TriggerTarget::Endpoint(a) => vec![(None, a)],
        TriggerTarget::Node(id) => {
            let found = gather_status(c, endpoints, true).await;
            let addr = found
                .nodes
                .iter()
                .find(|n| n.status.id == id)
                .map(|n| n.addr.clone());
            match addr {
                Some(a) => vec![(Some(id), a)],
                None => {
                    return Err(format!(
                        "node {id} is not among the nodes that answered at --endpoints ({}); \
                         give its address with --endpoint ADDR or add it to --endpoints",
                        found
                            .nodes
                            .iter()
                            .map(|n| n.status.id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                    .into());
                }
            }
        }
        TriggerTarget::All => endpoints.iter().map(|a| (None, a.clone())).collect(),
    };
    let mut failures = Vec::new();
    for (id, addr) in targets {
        let who = match id {
            Some(id) => format!("node {id} ({addr})"),
            None => addr.to_string(),
        };
        match c.snapshot_trigger_and_wait(Some(addr), wait).await {
            Ok(l) => println!(
                "{who}: snapshot at index {} (term {}) is durable: {} bytes, {}",
                l.index, l.term, l.file_bytes, l.path
            ),
            Err(e) => {
                eprintln!("{who}: snapshot failed: {e}");
                failures.push(who);
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("snapshot failed on {}", failures.join(", ")).into())
    }
}

/// `wraft snapshot rate`: set the outgoing snapshot bandwidth cap of the node at every address in
/// `endpoints` to `bytes_per_sec` (0 lifts it). Prints `node ID (ADDR): <the cap in force>` for
/// each node that answered and `ADDR: rate not changed: <why>` on stderr for each that did not;
/// fails after trying them all, naming those.
pub async fn snapshot_rate(
    c: &Client,
    endpoints: &[PeerAddr],
    bytes_per_sec: u64,
) -> Result<(), AnyError> {
    let mut failures = Vec::new();
    for addr in endpoints {
        match c.set_transfer_rate(Some(addr.clone()), bytes_per_sec).await {
            Ok(answer) => {
                // Named by the certificate of the node that answered, at the address dialed.
                let who = c
                    .last_answer_from()
                    .filter(|n| n.addr == *addr)
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| addr.to_string());
                println!("{who}: {answer}");
            }
            Err(e) => {
                eprintln!("{addr}: rate not changed: {e}");
                failures.push(addr.to_string());
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let changed = endpoints.len() - failures.len();
    Err(format!(
        "snapshot transfer rate not changed on {} ({} of {} endpoints){}",
        failures.join(", "),
        failures.len(),
        endpoints.len(),
        match changed {
            0 => String::new(),
            n => format!("; the other {n} have the new rate until they restart"),
        }
    )
    .into())
}
