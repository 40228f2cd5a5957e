//! Operator commands over several nodes, run as the `wraft` binary against real processes:
//! `wraft status` (versions; a node that does not answer fails the command),
//! `wraft snapshot trigger` on a chosen node or on all of them, and `wraft snapshot rate` on
//! every endpoint (a node that is down does not stop the others).

use std::process::Output;
use std::time::Duration;

use wraft_tests::{Cluster, guest, kv_put, wraft_bin};

/// Run `wraft ARGS --endpoints <every node> --certs <the cluster's>`.
fn wraft(cluster: &Cluster, args: &[&str]) -> Output {
    let endpoints: Vec<String> = cluster.endpoints().iter().map(|a| a.to_string()).collect();
    std::process::Command::new(wraft_bin())
        .args(args)
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .arg("--certs")
        .arg(cluster.certs_dir())
        .output()
        .expect("running wraft")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_nodes_version_and_fails_naming_a_node_that_does_not_answer() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let version = env!("CARGO_PKG_VERSION");

    let o = wraft(&cluster, &["status", "--all"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "wraft status --all failed:\n{out}\n{err}"
    );
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r.contains(version)), "{out}");

    let o = wraft(&cluster, &["status", "--all", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let versions: Vec<&str> = v
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| s["version"].as_str().expect("a version"))
        .collect();
    assert_eq!(versions, [version; 3]);

    let gone = 3;
    cluster.kill(gone);
    let o = wraft(&cluster, &["status", "--all"]);
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "a node did not answer, yet exit 0:\n{out}\n{err}"
    );
    assert_eq!(
        out.lines().skip(1).count(),
        2,
        "the answers still print:\n{out}"
    );
    let addr = cluster.addr(gone).to_string();
    assert!(
        err.contains(&format!("did not answer: {addr}")),
        "stderr does not name {addr}:\n{err}"
    );
    // Without --all, one answer is enough.
    let o = wraft(&cluster, &["status"]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_trigger_acts_on_the_chosen_node_or_on_every_node() {
    let kv = guest("kv");
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let c = cluster.client().await;
    c.deploy("kv", kv).await.expect("deploy");
    let put = c.propose("kv", &kv_put("a", "1")).await.expect("put");
    cluster
        .wait_applied(&cluster.ids(), put.index, Duration::from_secs(20))
        .await;
    let snapshots = async |id: u64| {
        c.snapshots(Some(cluster.addr(id)))
            .await
            .expect("snapshots")
            .len()
    };

    // --node 2: only node 2 takes one.
    let o = wraft(&cluster, &["snapshot", "trigger", "--node", "2"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("node 2"), "{out}");
    assert_eq!(
        (snapshots(1).await, snapshots(2).await, snapshots(3).await),
        (0, 1, 0)
    );

    // --all: every node reports its own.
    let put = c.propose("kv", &kv_put("b", "2")).await.expect("put");
    cluster
        .wait_applied(&cluster.ids(), put.index, Duration::from_secs(20))
        .await;
    let o = wraft(&cluster, &["snapshot", "trigger", "--all"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("is durable")).count(),
        3,
        "{out}"
    );
    assert!(snapshots(1).await >= 1 && snapshots(3).await >= 1);

    // --all with a node down: the others still snapshot, the command fails naming it.
    let put = c.propose("kv", &kv_put("c", "3")).await.expect("put");
    cluster
        .wait_applied(&cluster.ids(), put.index, Duration::from_secs(20))
        .await;
    cluster.kill(3);
    let o = wraft(&cluster, &["snapshot", "trigger", "--all"]);
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "node 3 is down, yet exit 0:\n{out}\n{err}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("is durable")).count(),
        2,
        "{out}"
    );
    let addr = cluster.addr(3).to_string();
    assert!(err.contains(&addr), "stderr does not name {addr}:\n{err}");

    // --node of an unknown id: a clear error.
    let o = wraft(&cluster, &["snapshot", "trigger", "--node", "9"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("node 9 is not among"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rate_sets_every_reachable_node_and_fails_naming_the_one_that_is_down() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    // The middle endpoint: the nodes before and after it must both be set.
    let gone = 2;
    cluster.kill(gone);
    let gone_addr = cluster.addr(gone).to_string();

    let o = wraft(&cluster, &["snapshot", "rate", "20480"]);
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "node {gone} is down, yet exit 0:\n{out}\n{err}"
    );
    for id in [1, 3] {
        let who = format!("node {id} ({})", cluster.addr(id));
        assert!(
            out.lines()
                .any(|l| l.starts_with(&who) && l.contains("capped at 20480 bytes/s")),
            "no line for {who}:\n{out}\n{err}"
        );
        assert!(
            cluster.log(id).contains("bytes_per_sec=20480"),
            "node {id} did not change its cap:\n{out}\n{err}"
        );
    }
    // The one that failed: its address and why, on its own line, then in the final error.
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{gone_addr}: ")) && l.contains("cannot reach")),
        "no line naming {gone_addr} and why:\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(&gone_addr),
        "the final error does not name {gone_addr}:\n{err}"
    );
    for id in [1, 3] {
        assert!(
            !last.contains(&cluster.addr(id).to_string()),
            "the final error names node {id}, which was set:\n{err}"
        );
    }
    assert!(
        !out.contains("node 0") && !err.contains("node 0"),
        "{out}\n{err}"
    );

    // A rate that is not whole KiB: each answer says the cap in force, and why it differs.
    let o = wraft(&cluster, &["snapshot", "rate", "20000"]);
    let (out, err) = text(&o);
    let who = format!("node 1 ({})", cluster.addr(1));
    assert!(
        out.contains(&format!(
            "{who}: snapshot transfers capped at 19456 bytes/s (20000 asked"
        )),
        "{out}\n{err}"
    );
}
