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
use wraft_client::Client;
use wraft_config::NodeConfig;
use wraft_proto::SnapshotListing;
use wraft_tests::{Cluster, guest, json as to_json, kv_put, last_fields, noise, parse, wait_for};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

fn small_snapshots(c: &mut NodeConfig) {
    c.snapshot.hint_threshold_entries = 200;
    c.snapshot.log_entries_max = 0;
    c.snapshot.log_retain_margin_entries = 10;
    c.snapshot.retain_count = 2;
}

/// Wait for a leader, then deploy the kv example through a fresh client.
async fn deploy_kv(cluster: &Cluster) -> (u64, Client) {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    (leader, client)
}

async fn put_many(client: &Client, prefix: &str, range: std::ops::Range<u32>) {
    for i in range {
        let key = format!("{prefix}{i:05}");
        client
            .propose(
                "kv",
                &kv_put(&key, &format!("value-{i}-{}", "x".repeat(100))),
            )
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
        .map(|e| {
            (
                e[0].as_str().unwrap().to_owned(),
                e[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
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
    converge_prefixes(cluster, leader, ids, &[""]).await
}

/// [`converge`], comparing the state one key prefix at a time (a scan's
/// answer is bounded by `output_bytes_max`).
async fn converge_prefixes(
    cluster: &Cluster,
    leader: u64,
    ids: &[u64],
    prefixes: &[&str],
) -> BTreeMap<String, String> {
    let commit = cluster
        .status(leader)
        .await
        .expect("leader status")
        .commit_index;
    cluster.wait_applied(ids, commit, CATCH_UP_TIMEOUT).await;
    let mut all = BTreeMap::new();
    for p in prefixes {
        let want = state_of_prefix(cluster, leader, p).await;
        for id in ids {
            assert!(
                state_of_prefix(cluster, *id, p).await == want,
                "node {id} diverges from leader {leader} under prefix {p:?}"
            );
        }
        all.extend(want);
    }
    all
}

async fn state_of_prefix(cluster: &Cluster, id: u64, prefix: &str) -> BTreeMap<String, String> {
    let req = to_json(json!({"op": "scan", "prefix": prefix, "limit": 100_000}));
    // The node's own client (its full call deadline, not the harness's
    // short status probe: a scan of large values takes a while when loaded).
    let answer = cluster
        .node_client(id)
        .await
        .query("kv", &req, wraft_proto::Consistency::Stale)
        .await
        .unwrap_or_else(|e| panic!("scan on node {id}: {e}"));
    scan(&answer)
}

/// Prefixes covering the `big{i:06}` keys of [`big_snapshot_cluster`] in
/// scans of at most 100 keys.
fn big_prefixes(keys: u64) -> Vec<String> {
    (0..keys.div_ceil(100))
        .map(|h| format!("big{h:04}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_down_while_the_leader_compacts_past_it_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, small_snapshots);
    let (leader, client) = deploy_kv(&cluster).await;
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
    let (leader, client) = deploy_kv(&cluster).await;
    put_many(&client, "k", 0..520).await;
    let node = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    let want = converge(&cluster, leader, &[node]).await;
    // Creation runs beside the apply: the node may finish its snapshot just after catching up.
    wait_for("a snapshot on the node", CATCH_UP_TIMEOUT, async || {
        (!snapshots_of(&cluster, node).await.is_empty()).then_some(())
    })
    .await;
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
    let (leader, client) = deploy_kv(&cluster).await;
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
        c.snapshot.log_entries_max = 0;
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
    wait_for_log(
        &cluster,
        leader,
        "a failed snapshot on the leader",
        "snapshot failed; it is retried",
    )
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
        c.snapshot.log_entries_max = 0;
    });
    let (leader, client) = deploy_kv(&cluster).await;
    put_many(&client, "k", 0..30).await;
    let listed = client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("trigger");
    let snaps = snapshots_of(&cluster, leader).await;
    assert_eq!(snaps.len(), 1);
    let report =
        wraft::cli::snapshot_inspect(std::path::Path::new(&snaps[0].path)).expect("inspect");
    assert!(report.ok, "{}", report.render());
    assert_eq!(report.machines.len(), 1);
    assert_eq!(report.machines[0].name, "kv");
    assert!(report.machines[0].state_bytes > 0);
    assert_eq!(report.index, snaps[0].index);
    assert_eq!(listed, snaps[0]);
    // Nothing new applied since: a second trigger is refused with the reason.
    let again = client.snapshot_trigger(Some(cluster.addr(leader))).await;
    assert!(
        matches!(&again, Err(e) if e.to_string().contains("nothing applied since")),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_created_snapshot_line_gives_file_and_guest_bytes_and_no_ratio() {
    let cluster = Cluster::start_with(1, |c| {
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
    });
    let (leader, client) = deploy_kv(&cluster).await;
    client
        .deploy("ctr", guest("counter"))
        .await
        .expect("deploy counter");
    put_many(&client, "k", 0..30).await;
    client
        .propose("ctr", &to_json(json!({"Add": 5})))
        .await
        .expect("add");
    let listed = client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("trigger");
    let report = wraft::cli::snapshot_inspect(std::path::Path::new(&listed.path)).expect("inspect");
    assert!(report.ok, "{}", report.render());
    assert_eq!(report.machines.len(), 2, "{}", report.render());

    let line = last_fields(&cluster.log(leader), "created snapshot");
    // The sizes are the file's and the guests' (summed over the machines), as `inspect`
    // reports them; their quotient compares a file holding modules and sessions with guest
    // bytes the guests may already have compressed, so it is no compression ratio and is not
    // printed as one.
    assert!(
        !line.contains_key("ratio"),
        "a ratio in the created snapshot line: {line:?}"
    );
    assert_eq!(
        line["file_bytes"],
        listed.file_bytes.to_string(),
        "{line:?}"
    );
    let guest_bytes: u64 = report.machines.iter().map(|m| m.state_bytes).sum();
    assert_eq!(line["guest_bytes"], guest_bytes.to_string(), "{line:?}");
    assert_eq!(line["machines"], "2", "{line:?}");
}

/// A cluster whose leader holds a ~`mb` MB snapshot that a follower (killed
/// before the writes) must fetch, with the sender capped at `bytes_per_sec`.
async fn big_snapshot_cluster(mb: u64, bytes_per_sec: u64) -> (Cluster, u64, u64, Client) {
    let mut cluster = Cluster::start_with(3, |c| {
        small_snapshots(c);
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.transfer_bytes_per_sec_max = bytes_per_sec;
    });
    let (leader, client) = deploy_kv(&cluster).await;
    let follower = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    cluster.kill(follower);
    for i in 0..mb * 32 {
        client
            .propose("kv", &kv_put(&format!("big{i:06}"), &noise(i, 32 << 10)))
            .await
            .expect("put");
    }
    let before = cluster.status(leader).await.expect("leader status");
    client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("trigger");
    // Consensus never waits for a snapshot: exporting ~`mb` MB (restore,
    // replay, compress, write) must not cost the leader its leadership. The
    // tests below also need it: only this node holds the snapshot.
    let after = cluster.status(leader).await.expect("leader status");
    assert_eq!(
        (after.role.as_str(), after.term),
        ("leader", before.term),
        "node {leader} lost leadership while creating its snapshot"
    );
    (cluster, leader, follower, client)
}

/// Wait until node `id`'s log has a line containing `needle`.
/// Until node `id` logs that an incoming snapshot transfer began.
async fn wait_for_transfer_start(cluster: &Cluster, id: u64) {
    wait_for_log(cluster, id, "the transfer to start", "receiving snapshot").await;
}

/// Until node `id` logs a durable offset of an incoming snapshot (it acks one at least every
/// 8 MiB or 100 ms of receiving).
async fn wait_for_durable_offset(cluster: &Cluster, id: u64) {
    let needle = "incoming snapshot durable up to offset";
    wait_for_log(cluster, id, "a durable offset on the follower", needle).await;
}

async fn wait_for_log(cluster: &Cluster, id: u64, what: &str, needle: &str) {
    wait_for(what, CATCH_UP_TIMEOUT, async || {
        cluster.log(id).contains(needle).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_follower_mid_transfer_resumes_from_its_durable_offset() {
    // ~24 MB at 3 MB/s: the follower acks a durable offset every 100 ms of receiving.
    let (mut cluster, leader, follower, _client) = big_snapshot_cluster(24, 3 << 20).await;
    cluster.restart(follower);
    wait_for_durable_offset(&cluster, follower).await;
    cluster.kill(follower);
    let durable: u64 = last_fields(
        &cluster.log(follower),
        "incoming snapshot durable up to offset",
    )["durable_offset"]
        .parse()
        .expect("offset");
    assert!(durable > 0);
    cluster.restart(follower);
    let prefixes = big_prefixes(24 * 32);
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let state = converge_prefixes(&cluster, leader, &[follower], &prefixes).await;
    assert_eq!(state.len(), 24 * 32);
    let done = last_fields(&cluster.log(leader), "snapshot transfer finished");
    let resumed: u64 = done["resumed_from"].parse().unwrap();
    let sent: u64 = done["bytes_sent"].parse().unwrap();
    let file_bytes = snapshots_of(&cluster, leader)
        .await
        .last()
        .unwrap()
        .file_bytes;
    assert!(
        resumed >= durable,
        "resumed from {resumed}, but the follower held {durable} durably"
    );
    // Only what was not durable is sent again.
    assert_eq!(sent, file_bytes - resumed, "{done:?}");
}

/// Values of 32 KiB in the wire-fault test: about 2.6 MB of snapshot, three 1 MiB chunks.
const BIG_VALUES: u64 = 132;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_on_the_wire_is_rejected_and_re_sent() {
    let mut cluster = Cluster::start_with(3, |c| {
        small_snapshots(c);
        c.snapshot.hint_threshold_entries = 0;
    });
    // Arm the wire fault on every node (only a sender uses it): every 3rd chunk sent (resends
    // counted) has a bit flipped after its CRC32C was computed. The ~2.6 MB file (guest state
    // only: the module is named by hash) is 3 chunks of 1 MiB, so the last chunk is corrupted
    // once and its resend (the 4th send) is clean. (With N = 2 the go-back resend of chunk 1 is
    // always an even-numbered send and the transfer could never finish.)
    for id in cluster.ids() {
        cluster.set_env(id, "WRAFT_TEST_CORRUPT_CHUNK_EVERY", "3");
        cluster.restart(id);
    }
    let (leader, client) = deploy_kv(&cluster).await;
    let follower = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    cluster.kill(follower);
    for i in 0..BIG_VALUES {
        client
            .propose("kv", &kv_put(&format!("big{i:06}"), &noise(i, 32 << 10)))
            .await
            .expect("put");
    }
    client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("trigger");
    cluster.restart(follower);
    let prefixes = big_prefixes(BIG_VALUES);
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let state = converge_prefixes(&cluster, leader, &[follower], &prefixes).await;
    assert_eq!(state.len(), BIG_VALUES as usize);
    let done = last_fields(&cluster.log(leader), "snapshot transfer finished");
    let resent: u64 = done["chunks_resent"].parse().unwrap();
    assert!(resent > 0, "no chunk was re-sent: {done:?}");
    assert!(cluster.log(leader).contains("TEST FAULT"));
    assert!(cluster.log(follower).contains("snapshot installed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_transfer_lets_the_new_leader_finish_from_the_durable_offset() {
    let (mut cluster, leader, follower, _client) = big_snapshot_cluster(24, 3 << 20).await;
    // The other live node snapshots the same index: node snapshots are a
    // function of the replicated state, so its file is byte-identical.
    let other = *cluster
        .ids()
        .iter()
        .find(|i| **i != leader && **i != follower)
        .unwrap();
    let at = snapshots_of(&cluster, leader).await.last().unwrap().clone();
    cluster
        .wait_applied(&[other], at.index, CATCH_UP_TIMEOUT)
        .await;
    let applied = cluster.status(other).await.expect("status").applied_index;
    assert_eq!(
        applied, at.index,
        "writes stopped; both nodes applied the same index"
    );
    cluster
        .node_client(other)
        .await
        .snapshot_trigger_and_wait(Some(cluster.addr(other)), CATCH_UP_TIMEOUT)
        .await
        .expect("trigger on the other node");
    let theirs = snapshots_of(&cluster, other).await.last().unwrap().clone();
    assert_eq!((theirs.index, &theirs.digest), (at.index, &at.digest));

    cluster.restart(follower);
    wait_for_durable_offset(&cluster, follower).await;
    // Kill whichever node is sending: both hold the same file, so if
    // leadership moved since, the roles just swap.
    let sender: u64 = last_fields(&cluster.log(follower), "receiving snapshot")["peer"]
        .parse()
        .expect("peer");
    assert!(sender == leader || sender == other, "sender {sender}");
    let survivor = if sender == leader { other } else { leader };
    cluster.kill(sender);
    let new_leader = cluster
        .wait_for_leader_among(&[survivor, follower], LEADER_TIMEOUT)
        .await;
    assert_eq!(new_leader, survivor);
    let prefixes = big_prefixes(24 * 32);
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let state = converge_prefixes(&cluster, survivor, &[follower], &prefixes).await;
    assert_eq!(state.len(), 24 * 32);
    let done = last_fields(&cluster.log(survivor), "snapshot transfer finished");
    let resumed: u64 = done["resumed_from"].parse().unwrap();
    assert!(resumed > 0, "the new leader started from byte 0: {done:?}");
}

/// The order of snapshot creation events in a node's log: `+` creating,
/// `-` created or failed.
fn creation_events(log: &str) -> String {
    log.lines()
        .filter_map(|l| {
            if l.contains("creating snapshot") {
                Some('+')
            } else if l.contains("created snapshot") || l.contains("snapshot failed") {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_during_a_creation_coalesce_and_retention_keeps_only_the_newest_files() {
    const THRESHOLD: u64 = 100;
    let cluster = Cluster::start_with(3, |c| {
        c.snapshot.hint_threshold_entries = THRESHOLD;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = 10;
        c.snapshot.retain_count = 2;
    });
    let (leader, client) = deploy_kv(&cluster).await;
    let client = std::sync::Arc::new(client);
    // ~6 MB of incompressible state makes every creation (restore, replay,
    // compress, write) take far longer than 100 small writes do.
    for i in 0..192 {
        client
            .propose("kv", &kv_put(&format!("big{i:06}"), &noise(i, 32 << 10)))
            .await
            .expect("put");
    }
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let client = client.clone();
        writers.spawn(async move {
            for i in 0..200 {
                client
                    .propose("kv", &kv_put(&format!("w{w}-{i:04}"), "v"))
                    .await
                    .expect("small put");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    let commit = cluster
        .status(leader)
        .await
        .expect("leader status")
        .commit_index;
    cluster
        .wait_applied(&cluster.ids(), commit, CATCH_UP_TIMEOUT)
        .await;
    for id in cluster.ids() {
        wait_for("no snapshot in flight", CATCH_UP_TIMEOUT, async || {
            let s = cluster.status(id).await?;
            s.snapshot_creating.is_none().then_some(())
        })
        .await;
        let events = creation_events(&cluster.log(id));
        let creations = events.matches('+').count() as u64;
        // One creation at a time: every start is followed by its end.
        assert_eq!(
            events,
            "+-".repeat(creations as usize),
            "node {id}: overlapping creations"
        );
        // Without coalescing, every band of THRESHOLD applied entries
        // would have started one.
        let crossings = commit / THRESHOLD;
        eprintln!("node {id}: {creations} creations for {crossings} threshold crossings");
        assert!(
            creations >= 2 && creations < crossings,
            "node {id}: {creations} creations for {crossings} threshold crossings"
        );
        // Retention: the newest `retain_count` snapshots, and packs they share bytes with.
        let listed = snapshots_of(&cluster, id).await;
        assert_eq!(listed.len(), 2, "node {id}: {listed:?}");
        assert!(listed[0].index < listed[1].index);
        let dir = cluster.config(id).node.data_dir.join("snap");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        files.sort();
        let expected: Vec<String> = listed
            .iter()
            .map(|s| format!("{:020}-{:020}.snap", s.index, s.term))
            .collect();
        // Besides them, only packs: older snapshots whose bytes the retained ones share.
        let (snaps, others): (Vec<String>, Vec<String>) =
            files.into_iter().partition(|f| f.ends_with(".snap"));
        assert_eq!(snaps, expected, "node {id}: files in {}", dir.display());
        let oldest = format!("{:020}", listed[0].index);
        assert!(
            others
                .iter()
                .all(|f| f.ends_with(".pack") && f.as_str() < oldest.as_str()),
            "node {id}: unexpected files in {}: {others:?}",
            dir.display()
        );
        if !others.is_empty() {
            let shared: u64 = expected
                .iter()
                .map(|f| {
                    wraft_storage::inspect_snapshot_file(&dir.join(f), true)
                        .unwrap_or_else(|e| panic!("{f}: {e}"))
                        .shared_bytes
                })
                .sum();
            assert!(
                shared > 0,
                "node {id}: packs {others:?} but nothing shares bytes"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_deletes_the_snapshot_a_transfer_is_sending() {
    // ~12 MB at 512 KiB/s (24 s): the transfer outlives two more snapshots,
    // even when a loaded machine makes each take seconds.
    let (mut cluster, leader, follower, client) = big_snapshot_cluster(12, 512 << 10).await;
    let sent = snapshots_of(&cluster, leader).await.last().unwrap().clone();
    cluster.restart(follower);
    wait_for_transfer_start(&cluster, follower).await;
    // Two newer snapshots push `sent` out of the newest `retain_count` (2).
    for round in 0..2 {
        client
            .propose("kv", &kv_put(&format!("after{round}"), "v"))
            .await
            .expect("put");
        client
            .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
            .await
            .expect("trigger");
    }
    let during = snapshots_of(&cluster, leader).await;
    assert!(
        !cluster.log(follower).contains("snapshot installed"),
        "the transfer finished before the test could check its pin; slow it down"
    );
    assert_eq!(during.len(), 3, "{during:?}");
    assert_eq!(during[0].digest, sent.digest, "{during:?}");
    assert!(std::path::Path::new(&sent.path).exists());

    let prefixes = big_prefixes(12 * 32);
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    converge_prefixes(&cluster, leader, &[follower], &prefixes).await;
    assert!(cluster.log(follower).contains("snapshot installed"));
    // Unpinned, it goes at the next retention pass: the newest two stay.
    client
        .propose("kv", &kv_put("after2", "v"))
        .await
        .expect("put");
    client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("trigger");
    let after = snapshots_of(&cluster, leader).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after[0].index > sent.index, "{after:?}");
    assert!(!std::path::Path::new(&sent.path).exists());
    // The follower kept no partial file of the finished transfer.
    let dir = cluster.config(follower).node.data_dir.join("snap");
    for e in std::fs::read_dir(&dir).expect("follower snap dir") {
        let name = e.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        assert!(name.ends_with(".snap"), "left behind: {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transfer_rate_cap_can_be_lifted_while_a_transfer_runs() {
    // ~12 MB at 160 KiB/s would take 77 s, past the 60 s catch-up deadline
    // below: the follower only catches up if lifting the cap reaches the
    // running transfer. (A 1 MiB chunk still goes out every 6.4 s, inside
    // the 10 s progress timeout.)
    let (mut cluster, leader, follower, client) = big_snapshot_cluster(12, 160 << 10).await;
    cluster.restart(follower);
    wait_for_transfer_start(&cluster, follower).await;
    let msg = client
        .set_transfer_rate(Some(cluster.addr(leader)), 0)
        .await
        .expect("lift the cap");
    assert!(msg.contains("uncapped"), "{msg}");
    let prefixes = big_prefixes(12 * 32);
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    converge_prefixes(&cluster, leader, &[follower], &prefixes).await;
    assert!(cluster.log(leader).contains("transfer rate cap changed"));
}

/// `snapshot.follower_export`: a follower exports its running machines at the cut (no shadow
/// replaying the log), the leader a shadow; both give the same bytes for the same index, and a
/// follower restarted from its live snapshot holds the exact state. A follower configured with
/// `"shadow"` uses a shadow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_snapshots_its_running_machines_and_the_leader_a_shadow_of_the_same_bytes() {
    let mut cluster = Cluster::start(3);
    let (leader, client) = deploy_kv(&cluster).await;
    put_many(&client, "k", 0..60).await;
    let ids = cluster.ids();
    let followers: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let (live, shadowed) = (followers[0], followers[1]);
    cluster.reconfigure(shadowed, |c| {
        c.snapshot.follower_export = wraft_config::SnapshotExport::Shadow
    });
    cluster.restart(shadowed);
    // Writes stopped: every node applies the same last index, so the three cuts coincide.
    let want = converge(&cluster, leader, &followers).await;

    let mut listed = Vec::new();
    for id in [live, shadowed, leader] {
        let l = cluster
            .node_client(id)
            .await
            .snapshot_trigger_and_wait(Some(cluster.addr(id)), CATCH_UP_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("snapshot on node {id}: {e}"));
        let from = last_fields(&cluster.log(id), "created snapshot")["from"].clone();
        listed.push((id, from, l.index, l.digest));
    }
    let froms: Vec<&str> = listed.iter().map(|(_, f, ..)| f.as_str()).collect();
    assert_eq!(froms, ["live", "shadow", "shadow"], "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|l| (l.2, &l.3) == (listed[0].2, &listed[0].3)),
        "the same state at the same index, the same file contents: {listed:?}"
    );

    cluster.restart(live);
    assert_eq!(converge(&cluster, leader, &[live]).await, want);
    assert!(cluster.log(live).contains("loading snapshot"));
}

/// A follower exporting its running machines pauses its applies; if it is about to lead it must
/// not stay paused. Leadership handed to it mid-export makes it abandon the export before the
/// next chunk, apply on, serve as leader, and take the snapshot from a shadow instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_elected_during_a_live_export_abandons_it_and_leads() {
    // A snapshot call that spins for seconds must not meet the wall-clock watchdog on a loaded
    // machine (the spins are fuel of the snapshot step, far below its budget).
    let cluster = Cluster::start_with(3, |c| c.guest.watchdog_ms = 120_000);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client
        .deploy("mb", guest("misbehave"))
        .await
        .expect("deploy");
    for _ in 0..3 {
        client.propose("mb", br#""Ok""#).await.expect("ok");
    }
    // A second or more of spinning before each snapshot chunk (no clock in a guest): the
    // hand-over below lands while the first one spins.
    let armed = client
        .propose("mb", br#"{"SlowSnapshot":1500000000}"#)
        .await
        .expect("arm the slow snapshot");
    let next = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    cluster
        .wait_applied(&[next], armed.index, CATCH_UP_TIMEOUT)
        .await;

    let node = cluster.node_client(next).await;
    let index = node
        .snapshot_trigger(Some(cluster.addr(next)))
        .await
        .expect("trigger on the follower");
    wait_for_log(&cluster, next, "the live export", "from=\"live\"").await;
    client
        .transfer_leader(next)
        .await
        .expect("hand leadership over");
    let failed = wait_for(
        "the live export to be abandoned",
        CATCH_UP_TIMEOUT,
        async || {
            let log = cluster.log(next);
            log.lines()
                .find(|l| l.contains("snapshot failed") && l.contains("abandoned"))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(failed.contains(&format!("index={index}")), "{failed}");
    assert!(failed.contains("live_again=true"), "{failed}");
    assert_eq!(
        cluster.wait_for_leader(LEADER_TIMEOUT).await,
        next,
        "leadership moved to the follower"
    );
    // It applied on: the count goes on from 3.
    let out = client.propose("mb", br#""Ok""#).await.expect("ok").output;
    assert_eq!(out, b"\"4\"");
    // And took the snapshot from a shadow instead, at once, slow export and all.
    let created = wait_for("the snapshot from a shadow", CATCH_UP_TIMEOUT, async || {
        let log = cluster.log(next);
        log.lines()
            .find(|l| l.contains("created snapshot"))
            .map(str::to_owned)
    })
    .await;
    assert!(created.contains("from=\"shadow\""), "{created}");
}
