//! `wraft config check FILE`: validate a node's configuration without starting the node, and
//! list every problem found, not only the first.
//!
//! Checked: the file parses (TOML, no unknown keys, well-formed addresses: the parser stops at
//! the first such error), every range and cross-field rule of [`NodeConfig::problems`], the
//! certificate directory (`ca.crt`, `node-<id>.crt`, `node-<id>.key` exist and parse, the
//! certificate names this node, the key fits it, it is valid now and accepted by the CA
//! bundle), and the data directory (writable, or creatable). DNS names among the members that
//! do not resolve now are reported as notes, not problems: in a StatefulSet a pod's name
//! resolves only once the pod runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wraft_config::{ConfigError, NodeConfig};
use wraft_transport::Identity;
use wraft_transport::certs::{CertDir, validity_of};

/// A certificate expiring sooner than this is reported as a note, days.
pub const CERT_EXPIRY_NOTE_DAYS: u64 = 30;
/// How long a member's DNS name may take to resolve before it is noted as unresolved, ms.
pub const RESOLVE_CHECK_TIMEOUT_MS: u64 = 2_000;

/// What `wraft config check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per checked part, for the summary.
    pub summary: Vec<String>,
    /// Problems: the node would not start, or not work, with this configuration.
    pub problems: Vec<String>,
    /// Worth knowing, not fatal (certificate expiring soon, a name that does not resolve now).
    pub notes: Vec<String>,
}

impl Report {
    /// True if nothing would stop the node.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as printed.
    pub fn render(&self, file: &Path) -> String {
        let mut out = format!("config {}\n", file.display());
        for l in &self.summary {
            out += &format!("  {l}\n");
        }
        for n in &self.notes {
            out += &format!("  note: {n}\n");
        }
        if self.ok() {
            out += "OK\n";
        } else {
            out += &format!("{} problem(s):\n", self.problems.len());
            for p in &self.problems {
                out += &format!("  - {p}\n");
            }
        }
        out
    }
}

/// Check the configuration at `file` with `overrides` applied (as `wraft node --set`).
pub async fn check(file: &Path, overrides: &[String]) -> Report {
    let mut report = Report::default();
    let cfg = match NodeConfig::read_with_overrides(file, overrides) {
        Ok(cfg) => cfg,
        Err(e) => {
            report.problems.push(e.to_string());
            if matches!(e, ConfigError::Parse { .. }) {
                report.notes.push(
                    "the parser stops at the first syntax error; fix it and run again".into(),
                );
            }
            return report;
        }
    };
    for p in cfg.problems() {
        report.problems.push(p.to_string());
    }
    summarize(&cfg, &mut report);
    check_members(&cfg, &mut report).await;
    check_certificates(&cfg, &mut report);
    check_data_dir(&cfg.node.data_dir, &mut report);
    report
}

fn summarize(cfg: &NodeConfig, report: &mut Report) {
    let members: Vec<String> = cfg
        .cluster
        .members
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect();
    report.summary.push(format!(
        "node {} listening on {} (metrics: {})",
        cfg.node.id,
        cfg.node.listen,
        cfg.node
            .metrics_listen
            .map_or("off".to_owned(), |a| format!("http://{a}/metrics"))
    ));
    report
        .summary
        .push(format!("members: {}", members.join(", ")));
    if !cfg.cluster.peers.is_empty() {
        let peers: Vec<String> = cfg
            .cluster
            .peers
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect();
        report.summary.push(format!("peers: {}", peers.join(", ")));
    }
}

async fn check_members(cfg: &NodeConfig, report: &mut Report) {
    if cfg.node.listen.port() == 0 {
        report.problems.push(format!(
            "node.listen: port 0 binds a random port, which peers cannot know (found {})",
            cfg.node.listen
        ));
    }
    if let Some(own) = cfg.cluster.members.get(&cfg.node.id)
        && own.port() != cfg.node.listen.port()
    {
        report.notes.push(format!(
            "cluster.members.{}: this node is listed at port {} but node.listen uses port {} \
             (fine only behind a port mapping)",
            cfg.node.id,
            own.port(),
            cfg.node.listen.port()
        ));
    }
    if !cfg.cluster.members.contains_key(&cfg.node.id) {
        report.notes.push(format!(
            "node {} is not in cluster.members: it starts empty and waits to be added as a learner",
            cfg.node.id
        ));
    }
    for (id, addr) in cfg.address_book() {
        if !addr.is_name() {
            continue;
        }
        if let Err(e) = wraft_transport::client::resolve(&addr, RESOLVE_CHECK_TIMEOUT_MS).await {
            report.notes.push(format!(
                "node {id}'s name {addr} does not resolve now ({e}); the node retries on every reconnect"
            ));
        }
    }
}

fn check_certificates(cfg: &NodeConfig, report: &mut Report) {
    let dir = CertDir::new(&cfg.tls.dir);
    let me = Identity::Node(cfg.node.id);
    let files: [PathBuf; 3] = [dir.ca_cert_path(), dir.cert_path(&me), dir.key_path(&me)];
    let mut missing = false;
    for f in &files {
        if !f.is_file() {
            report.problems.push(format!(
                "tls.dir: {} is missing (create certificates with `wraft cert`)",
                f.display()
            ));
            missing = true;
        }
    }
    if missing {
        return;
    }
    let tls = match dir.load_tls(&me) {
        Ok(t) => t,
        Err(e) => {
            report
                .problems
                .push(format!("tls.dir {}: {e}", dir.root().display()));
            return;
        }
    };
    if let Err(e) = wraft_transport::tls::check_usable(&tls) {
        report.problems.push(format!(
            "tls: {} with {} and {}: {e}",
            files[1].display(),
            files[2].display(),
            files[0].display()
        ));
        return;
    }
    let mut line = format!(
        "certificates: {} (CA bundle of {}), {}",
        dir.root().display(),
        tls.cas.len(),
        files[1].display()
    );
    if let Some(leaf) = tls.cert_chain.first()
        && let Ok((_, not_after)) = validity_of(leaf)
    {
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let days = left.as_secs() / 86_400;
        line += &format!(" valid for {days} more day(s)");
        if days < CERT_EXPIRY_NOTE_DAYS {
            report.notes.push(format!(
                "{} expires in {days} day(s): renew it (nodes reload certificates without a restart)",
                files[1].display()
            ));
        }
    }
    report.summary.push(line);
}

fn check_data_dir(dir: &Path, report: &mut Report) {
    let problem = |what: String| format!("node.data_dir {}: {what}", dir.display());
    if dir.exists() {
        if !dir.is_dir() {
            report.problems.push(problem("is not a directory".into()));
            return;
        }
        match tempfile::tempfile_in(dir) {
            Ok(_) => report
                .summary
                .push(format!("data dir: {} (exists, writable)", dir.display())),
            Err(e) => report.problems.push(problem(format!("not writable: {e}"))),
        }
        return;
    }
    // The node creates it: the nearest existing ancestor must be a writable directory.
    let mut ancestor = dir.parent();
    while let Some(a) = ancestor {
        if a.as_os_str().is_empty() {
            ancestor = Some(Path::new("."));
            continue;
        }
        if a.exists() {
            break;
        }
        ancestor = a.parent();
    }
    match ancestor {
        Some(a) if a.is_dir() => match tempfile::tempfile_in(a) {
            Ok(_) => report.summary.push(format!(
                "data dir: {} (will be created in {})",
                dir.display(),
                a.display()
            )),
            Err(e) => report.problems.push(problem(format!(
                "does not exist and cannot be created in {}: {e}",
                a.display()
            ))),
        },
        Some(a) => report.problems.push(problem(format!(
            "cannot be created: {} is not a directory",
            a.display()
        ))),
        None => report.problems.push(problem(
            "does not exist and has no existing parent directory".into(),
        )),
    }
}
