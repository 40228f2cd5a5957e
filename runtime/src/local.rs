//! Laying out a local cluster on this machine: certificates, free loopback
//! ports and one config file per node. Used by `wraft demo`, `wraft dev` and
//! the end-to-end tests.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use wraft_transport::certs::{CertDir, ClusterCa, Validity};

use wraft_config::{
    ClientSection, ClusterSection, GuestSection, HttpSection, NodeConfig, NodeSection, RaftSection,
    SnapshotSection, StorageSection, TlsSection,
};

/// Validity of the certificates of a local cluster, days.
pub const LOCAL_CERT_DAYS: u32 = 30;

/// A local cluster's files.
#[derive(Debug, Clone)]
pub struct LocalLayout {
    /// Root directory.
    pub root: PathBuf,
    /// Certificate directory (CA, node and `client-admin` certificates).
    pub certs: PathBuf,
    /// Per node: its config and the path it was written to.
    pub nodes: Vec<(NodeConfig, PathBuf)>,
}

impl LocalLayout {
    /// Client endpoints of every node.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|(c, _)| c.node.listen).collect()
    }
}

/// Ask the OS for a free UDP port on 127.0.0.1.
pub fn free_udp_port() -> std::io::Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.local_addr()
}

/// Ask the OS for `n` distinct free UDP ports on 127.0.0.1. All are held bound until every one
/// is chosen: ports asked for one at a time, each released before the next, can come back the
/// same (two nodes of one cluster then configured with one address, the second unable to
/// start).
pub fn free_udp_ports(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let held = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(UdpSocket::local_addr).collect()
}

/// Issue certificates into `dir`: a CA (created if absent), node certificates
/// for `nodes`, client certificates for `clients`.
pub fn issue_certs(
    dir: &Path,
    nodes: &[u64],
    clients: &[String],
    days: u32,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    issue_certs_from(dir, None, nodes, clients, days)
}

/// [`issue_certs`], issuing from the CA in `ca_dir` when given (generated there if it holds
/// none) rather than the one in `dir`. `dir`'s `ca.crt` (the trust bundle nodes load) is then
/// left as it is, or created as a copy of that CA's certificate if missing. This is the
/// re-issuing step of a CA rotation.
pub fn issue_certs_from(
    dir: &Path,
    ca_dir: Option<&Path>,
    nodes: &[u64],
    clients: &[String],
    days: u32,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let out = CertDir::new(dir);
    let issuing = CertDir::new(ca_dir.unwrap_or(dir));
    let ca = if issuing.ca_cert_path().exists() {
        issuing.load_ca()?
    } else {
        let ca = ClusterCa::generate("wraft", Validity::days_from_now(days.max(1) * 10))?;
        issuing.write_ca(&ca)?;
        ca
    };
    if !out.ca_cert_path().exists() {
        out.write_trust_bundle(ca.cert_pem())?;
    }
    let cd = out.overwrite(true);
    for id in nodes {
        cd.write_issued(&ca.issue_node(*id, &[], Validity::days_from_now(days))?)?;
    }
    for name in clients {
        cd.write_issued(&ca.issue_client(name, Validity::days_from_now(days))?)?;
    }
    Ok(())
}

/// Async worker threads for each of `n` nodes sharing this machine: about CPUs ÷ `n`, at
/// least 1. With one per CPU in every node, each packet wakes idle workers of its own process
/// that then compete with the other nodes for the same cores.
pub fn local_worker_threads(n: u64) -> u64 {
    (cpus() as u64 / n.max(1)).max(1)
}

/// CPUs this process may use (1 when the OS cannot say).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |c| c.get())
}

/// Write certificates and configs for an `n`-node cluster under `root`, on
/// free loopback ports. `tweak` may adjust each config before it is written.
pub fn layout(
    root: &Path,
    n: u64,
    tweak: impl Fn(&mut NodeConfig),
) -> Result<LocalLayout, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(root)?;
    let certs = root.join("certs");
    let ids: Vec<u64> = (1..=n).collect();
    issue_certs(&certs, &ids, &["admin".to_owned()], LOCAL_CERT_DAYS)?;
    // The key bearer tokens are signed with (`wraft token create --certs DIR`).
    wraft_node::tokens::TokenKey::load_or_create(&certs.join("token.key"))?;
    let members: BTreeMap<u64, SocketAddr> = ids
        .iter()
        .copied()
        .zip(free_udp_ports(ids.len())?)
        .collect();
    let mut nodes = Vec::new();
    for id in ids {
        let mut cfg = NodeConfig {
            node: NodeSection {
                id,
                data_dir: root.join(format!("node-{id}")),
                listen: members[&id],
                metrics_listen: None,
                worker_threads: local_worker_threads(n),
                log_format: Default::default(),
                readyz_lag_entries_max: wraft_config::READYZ_LAG_ENTRIES_MAX_DEFAULT,
                readyz_leader_contact_ms_max: wraft_config::READYZ_LEADER_CONTACT_MS_MAX_DEFAULT,
                shutdown_timeout_ms: wraft_config::SHUTDOWN_TIMEOUT_MS_DEFAULT,
                watch_history_entries_max: wraft_config::WATCH_HISTORY_ENTRIES_MAX_DEFAULT,
                watch_history_bytes_max: wraft_config::WATCH_HISTORY_BYTES_MAX_DEFAULT,
            },
            cluster: ClusterSection {
                members: members.iter().map(|(k, v)| (*k, (*v).into())).collect(),
                peers: BTreeMap::new(),
            },
            tls: TlsSection { dir: certs.clone() },
            raft: RaftSection::default(),
            storage: StorageSection::default(),
            snapshot: SnapshotSection::default(),
            guest: GuestSection::default(),
            client: ClientSection::default(),
            // The HTTP API on a port of the node's choosing (it logs `http_addr=`).
            http: HttpSection {
                listen: Some((std::net::Ipv4Addr::LOCALHOST, 0).into()),
                ..HttpSection::default()
            },
        };
        tweak(&mut cfg);
        cfg.validate()?;
        let path = root.join(format!("node-{id}.toml"));
        std::fs::write(&path, cfg.to_toml())?;
        nodes.push((cfg, path));
    }
    Ok(LocalLayout {
        root: root.to_owned(),
        certs,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster's ports are distinct however many are asked for at once.
    #[test]
    fn ports_asked_for_together_are_distinct() {
        for _ in 0..20 {
            let ports = free_udp_ports(16).expect("ports");
            let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
            assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        }
    }
}
