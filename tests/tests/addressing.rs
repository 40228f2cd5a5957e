//! Node addresses given as DNS names (`localhost:PORT` here): nodes dial each other by name,
//! clients and `wraft` commands accept names, and a learner added by name is reached through
//! the replicated address map. Re-resolution of a name that moves is pinned at the transport
//! level (`runtime/transport/tests/names.rs`), where the resolver can be changed.

use std::time::Duration;

use wraft_client::{Client, ClientOptions, Consistency, PeerAddr};
use wraft_config::NodeConfig;
use wraft_tests::{Cluster, guest, kv_get, kv_put, kv_value, wait_for, wraft_bin};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn by_name(port: u16) -> PeerAddr {
    format!("localhost:{port}").parse().expect("a name")
}

/// Every member (and peer) address becomes `localhost:PORT`.
fn name_everything(cfg: &mut NodeConfig) {
    for addr in cfg
        .cluster
        .members
        .values_mut()
        .chain(cfg.cluster.peers.values_mut())
    {
        *addr = by_name(addr.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_configured_with_host_names_elects_replicates_and_adds_a_learner_by_name() {
    let mut cluster = Cluster::start_with(3, name_everything);
    assert!(
        cluster
            .config(1)
            .cluster
            .members
            .values()
            .all(PeerAddr::is_name)
    );
    cluster.wait_for_leader(LEADER_TIMEOUT).await;

    let endpoints: Vec<PeerAddr> = cluster
        .ids()
        .iter()
        .map(|id| by_name(cluster.addr(*id).port()))
        .collect();
    let opts = ClientOptions::from_cert_dir(endpoints.clone(), cluster.certs_dir(), "admin")
        .expect("client certificate");
    let c = Client::connect(opts).await.expect("client by name");
    c.deploy("kv", guest("kv")).await.expect("deploy");
    c.propose("kv", &kv_put("k", "v1")).await.expect("put");

    // A follower restarted under its name is reached again and catches up.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.ids().into_iter().find(|i| *i != leader).unwrap();
    cluster.kill(follower);
    c.propose("kv", &kv_put("k", "v2"))
        .await
        .expect("put while down");
    cluster.restart(follower);
    let commit = c.status().await.expect("status").commit_index;
    cluster
        .wait_applied(&[follower], commit, CATCH_UP_TIMEOUT)
        .await;

    // Node 4 joins; the cluster learns its name through the log (`wraft members add-learner`).
    let addr4 = cluster.add_node_with(4, name_everything);
    let name4 = by_name(addr4.port());
    let eps = endpoints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(wraft_bin())
        .args(["members", "add-learner", "4", &name4.to_string()])
        .args(["--endpoints", &eps])
        .arg("--certs")
        .arg(cluster.certs_dir())
        .output()
        .expect("wraft members add-learner");
    assert!(
        out.status.success(),
        "add-learner by name failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commit = c.status().await.expect("status").commit_index;
    cluster.wait_applied(&[4], commit, CATCH_UP_TIMEOUT).await;
    let answer = wait_for("node 4 to serve the value", CATCH_UP_TIMEOUT, async || {
        let a = cluster.stale_query(4, "kv", &kv_get("k")).await.ok()?;
        (kv_value(&a).as_deref() == Some("v2")).then_some(a)
    })
    .await;
    assert_eq!(kv_value(&answer).as_deref(), Some("v2"));
    let read = c
        .query("kv", &kv_get("k"), Consistency::Linearizable)
        .await
        .expect("read");
    assert_eq!(kv_value(&read).as_deref(), Some("v2"));
    let log = cluster.log(4);
    assert!(
        !log.contains("cannot resolve peer name"),
        "localhost must resolve:\n{log}"
    );
}
