//! Incremental snapshot transfer with real `wraft node` processes: a follower that holds an
//! earlier snapshot receives only the parts of the leader's snapshot it does not hold.

use std::collections::BTreeMap;
use std::time::Duration;

use wraft_tests::{Cluster, guest, http_get, kv_put, last_fields, noise};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The value of `wraft_snapshot_reused_bytes_total` for `direction` on node `id`.
async fn reused_metric(cluster: &Cluster, id: u64, direction: &str) -> u64 {
    let (status, text) = http_get(cluster.metrics_addr(id).await, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    let label = format!("direction=\"{direction}\"");
    text.lines()
        .find(|l| l.starts_with("wraft_snapshot_reused_bytes_total{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no reused bytes for {direction} on node {id}:\n{text}"))
        as u64
}

fn field(fields: &BTreeMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {fields:?}"))
}

/// Node `other` reads each of `keys` as node `leader` does (stale reads: each node's own state).
async fn assert_reads_match(cluster: &Cluster, leader: u64, other: u64, keys: &[String]) {
    for k in keys {
        let q = wraft_tests::kv_get(k);
        let mut answers = Vec::new();
        for id in [leader, other] {
            let answer = cluster
                .node_client(id)
                .await
                .query("kv", &q, wraft_proto::Consistency::Stale)
                .await
                .unwrap_or_else(|e| panic!("read of {k} on node {id}: {e}"));
            answers.push(answer);
        }
        assert_eq!(answers[1], answers[0], "key {k} on node {other}");
    }
}

/// Keys of [`three_nodes_with_state`].
const KEYS: u64 = 2000;

/// Three nodes that snapshot only when asked (keeping the log `margin` entries below each
/// snapshot, and two snapshots), with ~8 MB of kv state that compresses as little as real data
/// does (~120 content-defined pieces), and a snapshot taken on every node: the cluster, its
/// leader and a client.
async fn three_nodes_with_state(margin: u64) -> (Cluster, u64, wraft_client::Client) {
    three_nodes_retaining(margin, 2).await
}

/// [`three_nodes_with_state`], each node keeping `retain` snapshots.
async fn three_nodes_retaining(margin: u64, retain: u64) -> (Cluster, u64, wraft_client::Client) {
    let cluster = Cluster::start_with(3, |c| {
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = margin;
        c.snapshot.retain_count = retain;
        c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    for i in 0..KEYS {
        client
            .propose("kv", &kv_put(&format!("k{i:05}"), &noise(i, 4096)))
            .await
            .expect("put");
    }
    for id in cluster.ids() {
        client
            .snapshot_trigger_and_wait(Some(cluster.addr(id)), CATCH_UP_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("snapshot on node {id}: {e}"));
    }
    (cluster, leader, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_a_few_writes_fetches_only_the_changed_part_of_the_snapshot() {
    // The log is cut 10 entries below each snapshot.
    let (mut cluster, leader, client) = three_nodes_with_state(10).await;
    let keys = KEYS;
    let follower = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    cluster.kill(follower);

    // Ten neighbouring keys (half a percent) change, twice each: past the log's margin.
    for round in 0..2 {
        for i in 1000..1010 {
            let value = noise(100_000 * (round + 1) + i, 4096);
            client
                .propose("kv", &kv_put(&format!("k{i:05}"), &value))
                .await
                .expect("put");
        }
    }
    client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("leader snapshot");
    cluster.restart(follower);
    let commit = cluster.status(leader).await.expect("status").commit_index;
    cluster
        .wait_applied(&[follower], commit, CATCH_UP_TIMEOUT)
        .await;

    let log = cluster.log(follower);
    assert!(log.contains("snapshot installed"), "no install:\n{log}");
    let got = last_fields(&log, "receiving snapshot");
    let (file_len, fetch, reuse) = (
        field(&got, "file_len"),
        field(&got, "fetch_bytes"),
        field(&got, "reuse_bytes"),
    );
    eprintln!("follower {follower} fetched {fetch} of {file_len} bytes, reused {reuse}");
    assert_eq!(fetch + reuse, file_len, "{got:?}");
    assert!(
        fetch * 20 < file_len,
        "fetched {fetch} of {file_len} bytes for 10 changed keys of {keys}"
    );
    let sent = last_fields(&cluster.log(leader), "snapshot sent and acknowledged");
    assert_eq!(field(&sent, "bytes_sent"), fetch, "{sent:?}");

    assert_eq!(reused_metric(&cluster, follower, "receive").await, reuse);
    assert_eq!(reused_metric(&cluster, leader, "send").await, reuse);

    // `wraft snapshot inspect` of the installed file says the same: all but what was fetched is
    // shared with the follower's own earlier snapshot next to it.
    let listed = cluster
        .node_client(follower)
        .await
        .snapshots(Some(cluster.addr(follower)))
        .await
        .expect("list");
    let newest = listed.iter().max_by_key(|l| l.index).expect("a snapshot");
    let report = wraft::cli::snapshot_inspect(std::path::Path::new(&newest.path)).expect("inspect");
    assert!(report.ok, "{}", report.render());
    let shared = report
        .shared_with_previous
        .as_ref()
        .unwrap_or_else(|| panic!("nothing to compare with:\n{}", report.render()));
    assert!(shared.index < newest.index);
    assert_eq!(shared.bytes_new, fetch, "{}", report.render());
    assert!(report.render().contains("a node holding that one fetches"));

    // The follower's state is the leader's.
    let keys: Vec<String> = [0, 999, 1000, 1005, 1009, 1010, keys - 1]
        .iter()
        .map(|i| format!("k{i:05}"))
        .collect();
    assert_reads_match(&cluster, leader, follower, &keys).await;
}

/// Multi-source catch-up: an empty node joining three nodes that all hold the snapshot takes
/// most of the file's bytes from the two followers (segments checked against the leader's
/// manifest), at most half from the leader, and ends with the leader's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_node_joining_takes_most_of_the_snapshot_from_the_followers() {
    // The followers' snapshots, taken at other indexes than the leader's next one, hold the
    // same pieces of the state. The log is cut at each snapshot.
    let (mut cluster, leader, client) = three_nodes_with_state(0).await;
    client
        .propose("kv", &kv_put("last", "1"))
        .await
        .expect("put");
    client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("leader snapshot");

    let addr4 = cluster.add_node(4);
    client.add_learner(4, addr4).await.expect("add learner");
    let commit = cluster.status(leader).await.expect("status").commit_index;
    cluster.wait_applied(&[4], commit, CATCH_UP_TIMEOUT).await;

    let log = cluster.log(4);
    assert!(log.contains("snapshot installed"), "no install:\n{log}");
    let got = last_fields(&log, "receiving snapshot");
    let (file_len, fetch, members) = (
        field(&got, "file_len"),
        field(&got, "fetch_bytes"),
        field(&got, "member_bytes"),
    );
    eprintln!("node 4: {fetch} of {file_len} bytes from the leader, {members} from members");
    assert_eq!(
        fetch + members + field(&got, "reuse_bytes"),
        file_len,
        "{got:?}"
    );
    assert!(
        fetch * 2 <= file_len,
        "{fetch} of {file_len} from the leader: {got:?}"
    );
    let sent = last_fields(&cluster.log(leader), "snapshot sent and acknowledged");
    assert_eq!(field(&sent, "bytes_sent"), fetch, "{sent:?}");
    // Both followers sent a share, and the state is the leader's.
    for id in cluster.ids().into_iter().filter(|&i| i != leader && i != 4) {
        let (status, text) = http_get(cluster.metrics_addr(4).await, "/metrics").expect("/metrics");
        assert_eq!(status, 200);
        let from = format!("from=\"{id}\"");
        let bytes = text
            .lines()
            .find(|l| l.starts_with("wraft_snapshot_member_bytes_total{") && l.contains(&from))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("nothing from node {id}:\n{text}"));
        assert!(
            bytes as u64 * 5 > file_len,
            "node {id} sent {bytes} of {file_len}"
        );
    }
    let keys = ["k00000".to_string(), "k01999".into(), "last".into()];
    assert_reads_match(&cluster, leader, 4, &keys).await;
}

/// Bytes the files of `dir` take on disk (allocated blocks: holes cost nothing).
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").metadata().expect("stat").blocks() * 512)
        .sum()
}

/// Retained snapshots of slowly changing state share their unchanged frames instead of each
/// holding a whole copy: three of them take little more disk than one, the node restarts from
/// the newest (reading the shared bytes from the older files) with the leader's state, and
/// `wraft snapshot inspect` says what the file shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_retained_snapshots_of_slowly_changing_state_take_little_more_disk_than_one() {
    let (mut cluster, leader, client) = three_nodes_retaining(10, 3).await;
    let node = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    let snap_dir = cluster.dir().join(format!("node-{node}")).join("snap");
    let one = disk_bytes(&snap_dir);
    for round in 0..2u64 {
        for i in 500 * round..500 * round + 10 {
            client
                .propose(
                    "kv",
                    &kv_put(&format!("k{i:05}"), &noise(7_000_000 + i, 4096)),
                )
                .await
                .expect("put");
        }
        client
            .snapshot_trigger_and_wait(Some(cluster.addr(node)), CATCH_UP_TIMEOUT)
            .await
            .expect("snapshot");
    }
    let listed = cluster
        .node_client(node)
        .await
        .snapshots(Some(cluster.addr(node)))
        .await
        .expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let three = disk_bytes(&snap_dir);
    let file_len = listed.iter().map(|l| l.file_bytes).max().unwrap_or(0);
    eprintln!("one snapshot: {one} bytes on disk; three: {three} (files of {file_len} bytes)");
    assert!(
        three * 10 <= one * 12,
        "three snapshots take {three} bytes on disk, one took {one}"
    );
    let created = last_fields(&cluster.log(node), "created snapshot");
    assert!(
        field(&created, "shared_bytes") * 10 > field(&created, "file_bytes") * 9,
        "{created:?}"
    );
    let newest = listed.iter().max_by_key(|l| l.index).expect("a snapshot");
    let report = wraft::cli::snapshot_inspect(std::path::Path::new(&newest.path)).expect("inspect");
    assert!(report.ok, "{}", report.render());
    assert!(report.stored_shared_bytes > 0, "{}", report.render());
    assert!(
        report.render().contains("not stored again"),
        "{}",
        report.render()
    );

    // Restarted, the node recovers from the newest snapshot, whose shared bytes it reads from
    // the older files, and serves the leader's state.
    cluster.kill(node);
    cluster.restart(node);
    let commit = cluster.status(leader).await.expect("status").commit_index;
    cluster
        .wait_applied(&[node], commit, CATCH_UP_TIMEOUT)
        .await;
    let keys: Vec<String> = [0, 5, 9, 10, 500, 505, 1000, KEYS - 1]
        .iter()
        .map(|i| format!("k{i:05}"))
        .collect();
    assert_reads_match(&cluster, leader, node, &keys).await;
}
