//! End-to-end snapshots with real `wraft node` processes: creation on the
//! engine's hint, compaction, catch-up by InstallSnapshot over QUIC, recovery
//! from snapshot + log, fallback past a damaged file, and a guest whose
//! snapshot fails being retried at the next threshold crossing.
//!
//! Thresholds are tiny (a snapshot every few hundred entries) so each test
//! crosses several of them in a few seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use wraft::client::Client;
use wraft::config::NodeConfig;
use wraft::proto::SnapshotListing;
use wraft_tests::{Cluster, guest, json as to_json, kv_put, parse, wait_for};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

fn small_snapshots(c: &mut NodeConfig) {
    c.snapshot.hint_threshold_entries = 200;
    c.snapshot.max_log_entries = 0;
    c.snapshot.log_retain_margin_entries = 10;
    c.snapshot.retain_count = 2;
}

async fn put_many(client: &Client, prefix: &str, range: std::ops::Range<u32>) {
    for i in range {
        let key = format!("{prefix}{i:05}");
        client
            .propose("kv", &kv_put(&key, &format!("value-{i}-{}", "x".repeat(100))))
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
}

fn scan(answer: &[u8]) -> BTreeMap<String, String> {
    let v = parse(answer);
    assert_eq!(v["more"], json!(false), "scan truncated");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_owned(), e[1].as_str().unwrap().to_owned()))
        .collect()
}

fn kv_scan() -> Vec<u8> {
    to_json(json!({"op": "scan", "prefix": "", "limit": 100_000}))
}

/// Node `id`'s whole kv state, read locally (stale read).
async fn state_of(cluster: &Cluster, id: u64) -> BTreeMap<String, String> {
    let answer = cluster
        .stale_query(id, "kv", &kv_scan())
        .await
        .unwrap_or_else(|e| panic!("scan on node {id}: {e}"));
    scan(&answer)
}

async fn snapshots_of(cluster: &Cluster, id: u64) -> Vec<SnapshotListing> {
    cluster
        .node_client(id)
        .await
        .snapshots(Some(cluster.addr(id)))
        .await
        .unwrap_or_else(|e| panic!("listing snapshots of node {id}: {e}"))
}

/// Wait until every node in `ids` has applied the leader's commit index and
/// holds exactly the leader's kv state.
async fn converge(cluster: &Cluster, leader: u64, ids: &[u64]) -> BTreeMap<String, String> {
    let commit = cluster.status(leader).await.expect("leader status").commit_index;
    cluster.wait_applied(ids, commit, CATCH_UP_TIMEOUT).await;
    let want = state_of(cluster, leader).await;
    for id in ids {
        assert_eq!(
            state_of(cluster, *id).await,
            want,
            "node {id} diverges from leader {leader}"
        );
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_down_while_the_leader_compacts_past_it_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, small_snapshots);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    put_many(&client, "a", 0..50).await;
    let follower = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    cluster.kill(follower);
    // Cross the threshold a few times: the leader snapshots and compacts its
    // log past everything the dead follower has.
    put_many(&client, "b", 0..700).await;
    let st = cluster.status(leader).await.expect("leader status");
    assert!(
        st.snapshot_index >= 400,
        "leader should have snapshotted (status {st:?})"
    );
    assert!(
        !snapshots_of(&cluster, leader).await.is_empty(),
        "leader has no snapshot file"
    );
    cluster.restart(follower);
    converge(&cluster, leader, &[follower]).await;
    let log = cluster.log(follower);
    assert!(
        log.contains("snapshot received") && log.contains("snapshot installed"),
        "follower {follower} caught up without a snapshot install:\n{log}"
    );
    assert!(cluster.log(leader).contains("snapshot transfer finished"));
    // Writes after the install keep flowing to the follower.
    put_many(&client, "c", 0..20).await;
    converge(&cluster, leader, &[follower]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_snapshot_and_log_recovers_the_exact_state() {
    let mut cluster = Cluster::start_with(3, small_snapshots);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    put_many(&client, "k", 0..520).await;
    let node = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    let want = converge(&cluster, leader, &[node]).await;
    let snaps = snapshots_of(&cluster, node).await;
    assert!(!snaps.is_empty(), "node {node} made no snapshot");
    cluster.kill(node);
    cluster.restart(node);
    assert_eq!(converge(&cluster, leader, &[node]).await, want);
    let log = cluster.log(node);
    assert!(log.contains("loading snapshot"), "{log}");
    assert!(log.contains("recovery complete"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_is_quarantined_and_the_previous_one_used() {
    let mut cluster = Cluster::start_with(3, small_snapshots);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    put_many(&client, "k", 0..450).await;
    let node = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    let want = converge(&cluster, leader, &[node]).await;
    let snaps = wait_for("two snapshots on the node", CATCH_UP_TIMEOUT, async || {
        let s = snapshots_of(&cluster, node).await;
        (s.len() >= 2).then_some(s)
    })
    .await;
    cluster.kill(node);
    // Flip one byte in the middle of the newest file.
    let newest = std::path::PathBuf::from(&snaps.last().unwrap().path);
    let mut bytes = std::fs::read(&newest).expect("read snapshot");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&newest, &bytes).expect("write snapshot");
    cluster.restart(node);
    assert_eq!(converge(&cluster, leader, &[node]).await, want);
    let log = cluster.log(node);
    assert!(log.contains("quarantined"), "{log}");
    assert!(
        log.contains(&format!("index={}", snaps[snaps.len() - 2].index)),
        "the previous snapshot was not loaded:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_whose_snapshot_fails_is_retried_at_the_next_crossing() {
    let cluster = Cluster::start_with(3, |c| {
        c.snapshot.hint_threshold_entries = 40;
        c.snapshot.max_log_entries = 0;
    });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client
        .deploy("m", guest("misbehave"))
        .await
        .expect("deploy misbehave");
    let ok = to_json(json!("Ok"));
    client
        .propose("m", &to_json(json!({"FailSnapshot": true})))
        .await
        .expect("arm");
    for _ in 0..45 {
        client.propose("m", &ok).await.expect("ok");
    }
    wait_for("a failed snapshot on the leader", CATCH_UP_TIMEOUT, async || {
        cluster
            .log(leader)
            .contains("snapshot failed; it is retried")
            .then_some(())
    })
    .await;
    assert!(snapshots_of(&cluster, leader).await.is_empty());
    client
        .propose("m", &to_json(json!({"FailSnapshot": false})))
        .await
        .expect("disarm");
    for _ in 0..45 {
        client.propose("m", &ok).await.expect("ok");
    }
    let snaps = wait_for("a snapshot after the retry", CATCH_UP_TIMEOUT, async || {
        let s = snapshots_of(&cluster, leader).await;
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert!(snaps[0].index >= 80, "{snaps:?}");
    // The node never crashed.
    assert!(cluster.status(leader).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_trigger_writes_a_file_that_inspect_verifies() {
    let cluster = Cluster::start_with(3, |c| {
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.max_log_entries = 0;
    });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    put_many(&client, "k", 0..30).await;
    let msg = client
        .snapshot_trigger(Some(cluster.addr(leader)))
        .await
        .expect("trigger");
    assert!(msg.contains("durable"), "{msg}");
    let snaps = snapshots_of(&cluster, leader).await;
    assert_eq!(snaps.len(), 1);
    let report = wraft::cli::snapshot_inspect(std::path::Path::new(&snaps[0].path)).expect("inspect");
    assert!(report.ok, "{}", report.render());
    assert_eq!(report.machines.len(), 1);
    assert_eq!(report.machines[0].name, "kv");
    assert!(report.machines[0].state_bytes > 0);
    assert_eq!(report.index, snaps[0].index);
}
