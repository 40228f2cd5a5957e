//! Modules by hash with real `wraft node` processes: a deploy entry carries the module's SHA-256
//! and size, every member keeps the bytes in its module store, and a member that lacks them (it
//! was down, or its copy rotted) fetches them from another member before it applies the entry.

use std::path::PathBuf;
use std::time::Duration;

use wraft_engine::EntryKind;
use wraft_proto::Command;
use wraft_proto::digest::{hex, sha256};
use wraft_storage::{Storage, StorageConfig};
use wraft_tests::{Cluster, guest, http_get, kv_get, kv_put, kv_value, wait_for};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where node `id` keeps the module `sha`.
fn stored_module(cluster: &Cluster, id: u64, sha: &[u8; 32]) -> PathBuf {
    cluster
        .config(id)
        .node
        .data_dir
        .join(wraft_node::MODULE_STORE_DIR)
        .join(format!("{}.wasm", hex(sha)))
}

/// Every deploy entry in node `id`'s log (the node must be stopped): its index, its variant and
/// the size of the whole entry, bytes.
fn deploy_entries(cluster: &Cluster, id: u64) -> Vec<(u64, &'static str, usize, Command)> {
    let dir = &cluster.config(id).node.data_dir;
    let (storage, recovered) =
        Storage::open(dir, &StorageConfig::default(), None).expect("open the stopped node's data");
    let mut found = Vec::new();
    let mut next = recovered.log.first_index;
    while next <= recovered.log.last_index {
        let page = storage
            .log
            .entries(next, recovered.log.last_index + 1, 64 << 20)
            .expect("read the log");
        next = page.last().expect("a page of entries").index + 1;
        for le in page {
            let kind: EntryKind = postcard::from_bytes(&le.payload).expect("entry decodes");
            let EntryKind::Command { data, .. } = kind else {
                continue;
            };
            let command: Command = postcard::from_bytes(&data).expect("command decodes");
            let variant = match &command {
                Command::Deploy { .. } => "Deploy",
                Command::DeployWith { .. } => "DeployWith",
                Command::DeployLimited { .. } => "DeployLimited",
                Command::DeployByHash { .. } => "DeployByHash",
                _ => continue,
            };
            found.push((le.index, variant, le.payload.len(), command));
        }
    }
    found
}

/// The value of metric `name` on node `id`, for the series whose labels contain `label`.
async fn metric(cluster: &Cluster, id: u64, name: &str, label: &str) -> Option<f64> {
    let (status, text) = http_get(cluster.metrics_addr(id).await, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn wait_value(cluster: &Cluster, id: u64, key: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let got = cluster.stale_query(id, "kv", &kv_get(key)).await;
        if let Ok(answer) = &got
            && kv_value(answer).as_deref() == Some(want)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} never answered {key}={want}: {got:?}\n{}",
            cluster.log(id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_entry_carries_the_module_hash_and_every_member_stores_the_module() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let kv = guest("kv");
    let sha = sha256(&kv);
    let client = cluster.client().await;
    client.deploy("kv", kv.clone()).await.expect("deploy");
    client.propose("kv", &kv_put("a", "1")).await.expect("put");
    for id in cluster.ids() {
        wait_value(&cluster, id, "a", "1").await;
        let path = stored_module(&cluster, id, &sha);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("node {id} does not store the module at {path:?}: {e}"))
            .len();
        assert!(
            len > kv.len() as u64,
            "node {id}: {len} bytes for {}",
            kv.len()
        );
    }
    let mut placed = 0.0;
    for id in cluster.ids() {
        let held = metric(&cluster, id, "wraft_module_store_modules", "").await;
        assert_eq!(held, Some(1.0), "node {id}");
        let bytes = metric(&cluster, id, "wraft_module_store_bytes", "").await;
        assert_eq!(bytes, Some(kv.len() as f64), "node {id}");
        placed += metric(
            &cluster,
            id,
            "wraft_deploys_placed_total",
            "placement=\"by_hash\"",
        )
        .await
        .unwrap_or(0.0);
    }
    assert_eq!(placed, 1.0);
    let by_hash = |c: &Cluster| {
        c.ids().iter().any(|id| {
            c.log(*id)
                .contains("module stored on the members; deploying it by hash")
        })
    };
    assert!(by_hash(&cluster), "{}", cluster.log(leader));

    // The log holds the hash, not the module: one deploy entry of a few hundred bytes.
    let follower = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    cluster.kill(follower);
    let deploys = deploy_entries(&cluster, follower);
    assert_eq!(
        deploys.len(),
        1,
        "{:?}",
        deploys.iter().map(|d| d.1).collect::<Vec<_>>()
    );
    let (_, variant, entry_bytes, command) = &deploys[0];
    assert_eq!(*variant, "DeployByHash");
    assert!(*entry_bytes < 1024, "deploy entry of {entry_bytes} bytes");
    eprintln!(
        "the deploy entry of a {}-byte module is {entry_bytes} bytes",
        kv.len()
    );
    match command {
        Command::DeployByHash {
            name,
            sha256,
            module_bytes,
            ..
        } => {
            assert_eq!(
                (name.as_str(), sha256, *module_bytes),
                ("kv", &sha, kv.len() as u64)
            );
        }
        other => panic!("{other:?}"),
    }

    // Restarted, the member applies the entry again from its own store.
    let fetched = |log: &str| log.matches("fetched a module by hash").count();
    let before = fetched(&cluster.log(follower));
    cluster.restart(follower);
    wait_value(&cluster, follower, "a", "1").await;
    assert_eq!(
        fetched(&cluster.log(follower)),
        before,
        "{}",
        cluster.log(follower)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_the_deploy_or_lost_its_copy_fetches_the_module_by_hash() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let absent = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    // A member down that this leader never heard from may run an older version that cannot
    // decode a by-hash entry: the module goes in the log.
    cluster.kill(absent);
    let client = cluster.client().await;
    client
        .deploy("early", guest("counter"))
        .await
        .expect("deploy early");
    assert!(
        cluster
            .log(leader)
            .contains("has not shown that it takes modules by hash"),
        "{}",
        cluster.log(leader)
    );
    cluster.restart(absent);
    let commit = cluster.status(leader).await.expect("status").commit_index;
    cluster
        .wait_applied(&[absent], commit, CATCH_UP_TIMEOUT)
        .await;
    // A deploy with everyone up: the leader learns that every member takes modules by hash,
    // so it may deploy by hash while one of them is down.
    client
        .deploy("counter", guest("counter"))
        .await
        .expect("deploy counter");
    cluster.kill(absent);

    // Two of three voters take the module: a majority, so the deploy goes by hash.
    let kv = guest("kv");
    let sha = sha256(&kv);
    client.deploy("kv", kv.clone()).await.expect("deploy");
    client.propose("kv", &kv_put("b", "2")).await.expect("put");
    assert!(!stored_module(&cluster, absent, &sha).exists());

    cluster.restart(absent);
    wait_value(&cluster, absent, "b", "2").await;
    let fetched = |log: &str| log.matches("fetched a module by hash").count();
    // It fetched kv; counter and early came to it in the log or by push.
    assert_eq!(fetched(&cluster.log(absent)), 1, "{}", cluster.log(absent));
    assert!(stored_module(&cluster, absent, &sha).exists());

    // Its copy rots while it is down: the restart finds it, drops it and fetches it again.
    cluster.kill(absent);
    let path = stored_module(&cluster, absent, &sha);
    let mut bytes = std::fs::read(&path).expect("stored module");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).expect("flip a byte");
    cluster.restart(absent);
    client.propose("kv", &kv_put("b", "3")).await.expect("put");
    wait_value(&cluster, absent, "b", "3").await;
    assert_eq!(fetched(&cluster.log(absent)), 2, "{}", cluster.log(absent));
    assert_eq!(
        std::fs::read(&path).expect("fetched again")[middle],
        bytes[middle] ^ 0x40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_names_its_modules_by_hash_and_a_member_installing_it_fetches_them() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        // Snapshots only when asked; the log is cut 10 entries below each one.
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = 10;
    });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let absent = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    cluster.kill(absent);
    let kv = guest("kv");
    let (sha, module_bytes) = (sha256(&kv), kv.len() as u64);
    let client = cluster.client().await;
    client.deploy("kv", kv).await.expect("deploy");
    for i in 0..30 {
        client
            .propose("kv", &kv_put("c", &i.to_string()))
            .await
            .expect("put");
    }
    let snap = client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("leader snapshot");
    // The snapshot names the module; it does not carry its bytes.
    assert!(
        snap.file_bytes < 16 << 10 && snap.file_bytes * 20 < module_bytes,
        "a snapshot of one small machine is {} bytes, its module {module_bytes}",
        snap.file_bytes
    );

    // The absent member's deploy entry is compacted away: it installs the snapshot, and takes
    // the module by hash from a member that has it.
    cluster.restart(absent);
    wait_value(&cluster, absent, "c", "29").await;
    let log = cluster.log(absent);
    assert!(log.contains("snapshot installed"), "{log}");
    assert!(log.contains("fetched a module by hash"), "{log}");
    assert!(stored_module(&cluster, absent, &sha).exists(), "{log}");
    assert_eq!(
        metric(&cluster, absent, "wraft_module_bytes_total", "fetched").await,
        Some(module_bytes as f64),
        "{log}"
    );

    // Restarted, it restores from its own copy of the snapshot and its own store: nothing is
    // fetched again.
    cluster.restart(absent);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    client.propose("kv", &kv_put("c", "30")).await.expect("put");
    wait_value(&cluster, absent, "c", "30").await;
    assert_eq!(
        metric(&cluster, absent, "wraft_module_bytes_total", "fetched").await,
        None,
        "{}",
        cluster.log(absent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_nothing_references_is_collected_once_its_entry_leaves_the_log() {
    let mut cluster = Cluster::start_with(1, |c| {
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
    });
    // Nothing is kept for being recent: only references count.
    cluster.set_env(1, wraft_node::MODULE_RECENT_KEEP_MS_ENV, "0");
    cluster.restart(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let (kv, counter) = (guest("kv"), guest("counter"));
    let (kv_path, counter_path) = (
        stored_module(&cluster, 1, &sha256(&kv)),
        stored_module(&cluster, 1, &sha256(&counter)),
    );
    let addr = cluster.addr(1);
    let snapshot = |client: wraft_client::Client| async move {
        client
            .snapshot_trigger_and_wait(Some(addr), CATCH_UP_TIMEOUT)
            .await
            .expect("snapshot");
        // Collection runs in the background after the snapshot.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let client = cluster.client().await;
    client.deploy("kv", kv.clone()).await.expect("deploy kv");
    client.propose("kv", &kv_put("d", "0")).await.expect("put");
    snapshot(cluster.client().await).await;
    // A cluster of one has no member to fetch a module from: its snapshots carry them.
    let listed = client.snapshots(Some(addr)).await.expect("snapshots");
    let newest = listed.last().expect("a snapshot");
    assert!(
        newest.file_bytes > kv.len() as u64,
        "a one-node snapshot of {} bytes does not carry the {}-byte module",
        newest.file_bytes,
        kv.len()
    );
    // A machine deployed and removed between two snapshots: its deploy entry stays in the log
    // (which reaches back to the previous snapshot) until the next one.
    client
        .deploy("counter", counter.clone())
        .await
        .expect("deploy counter");
    client
        .remove_machine("counter")
        .await
        .expect("remove counter");
    client.propose("kv", &kv_put("d", "1")).await.expect("put");
    snapshot(cluster.client().await).await;
    assert!(counter_path.exists(), "{}", cluster.log(1));

    // Restarted from the newest snapshot, the node does not apply that entry again, and it
    // collects at start: the entry is still in its log, so the module stays.
    cluster.restart(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.propose("kv", &kv_put("d", "2")).await.expect("put");
    wait_value(&cluster, 1, "d", "2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(counter_path.exists(), "{}", cluster.log(1));

    // Two snapshots later the log no longer holds it: removed. The running machine's module
    // stays.
    client.propose("kv", &kv_put("d", "3")).await.expect("put");
    snapshot(cluster.client().await).await;
    client.propose("kv", &kv_put("d", "4")).await.expect("put");
    snapshot(cluster.client().await).await;
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    while counter_path.exists() {
        assert!(tokio::time::Instant::now() < deadline, "{}", cluster.log(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kv_path.exists());
    assert!(
        cluster
            .log(1)
            .contains("removed modules nothing references any more"),
        "{}",
        cluster.log(1)
    );
    // And the node still starts from what it kept.
    cluster.restart(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    wait_value(&cluster, 1, "d", "4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_only_an_older_retained_snapshot_names_is_kept_for_the_fallback_to_it() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = 0;
        c.snapshot.retain_count = 2;
    });
    // Nothing is kept for being recent: only references count.
    for id in cluster.ids() {
        cluster.set_env(id, wraft_node::MODULE_RECENT_KEEP_MS_ENV, "0");
        cluster.restart(id);
    }
    let node = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let counter = guest("counter");
    let counter_path = stored_module(&cluster, node, &sha256(&counter));
    let addr = cluster.addr(node);
    let snapshot = async |client: &wraft_client::Client| {
        let s = client
            .snapshot_trigger_and_wait(Some(addr), CATCH_UP_TIMEOUT)
            .await
            .expect("snapshot");
        // Collection runs in the background after the snapshot.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s
    };
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy kv");
    client.deploy("counter", counter).await.expect("deploy");
    client.propose("kv", &kv_put("d", "0")).await.expect("put");
    let first = snapshot(&client).await;
    client.remove_machine("counter").await.expect("remove");
    client.propose("kv", &kv_put("d", "1")).await.expect("put");
    let second = snapshot(&client).await;
    // The log now starts above the counter's deploy entry and no machine runs it; the first
    // snapshot, still retained, names it.
    assert!(counter_path.exists(), "{}", cluster.log(node));

    // The newest snapshot is damaged: the node falls back to the first one, which needs the
    // counter's module, and takes it from its own store.
    cluster.kill(node);
    let newest = PathBuf::from(&second.path);
    let mut bytes = std::fs::read(&newest).expect("read snapshot");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&newest, &bytes).expect("write snapshot");
    cluster.restart(node);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    wait_value(&cluster, node, "d", "1").await;
    let log = cluster.log(node);
    assert!(log.contains("quarantined"), "{log}");
    assert!(
        log.contains(&format!("index={} machines=2", first.index)),
        "the first snapshot, with both machines, was not loaded:\n{log}"
    );
    assert!(!log.contains("fetched a module by hash"), "{log}");

    // Once no retained snapshot names it, it goes.
    let client = cluster.client().await;
    for v in ["2", "3"] {
        client.propose("kv", &kv_put("d", v)).await.expect("put");
        wait_value(&cluster, node, "d", v).await;
        snapshot(&client).await;
    }
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    while counter_path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            cluster.log(node)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_uploaded_over_a_slow_link_is_read_whole() {
    use wraft_tests::faults::proxy::{CLIENTS, FaultProxy, LinkFault};
    const REQUEST_TIMEOUT_MS: u64 = 1_000;
    let proxy = std::sync::Arc::new(FaultProxy::new(1));
    let p = proxy.clone();
    let cluster = Cluster::start_with(1, move |c| {
        p.front_members(c);
        c.client.request_timeout_ms = REQUEST_TIMEOUT_MS;
        // The module (817 KB) must be bigger than any command to get a deploy's time to arrive.
        c.client.command_bytes_max = 64 << 10;
    });
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    // 80 ms each way between the client and the node: the module's upload takes seconds
    // (QUIC's slow start and loss recovery over the proxy), and no pause in it comes near the
    // request deadline.
    let slow = LinkFault {
        delay_ms: 80,
        ..Default::default()
    };
    proxy.set(CLIENTS, 1, slow);
    proxy.set(1, CLIENTS, slow);
    let client = cluster.client_for(vec![proxy.fronts()[&1]]).await;
    let kv = guest("kv");
    let started = std::time::Instant::now();
    client
        .deploy("kv", kv.clone())
        .await
        .unwrap_or_else(|e| panic!("deploy over a slow link: {e}\n{}", cluster.log(1)));
    let took = started.elapsed();
    // The deploy (upload, then compile) outlasted the request deadline, which the upload
    // alone had to meet before.
    assert!(
        took > Duration::from_millis(REQUEST_TIMEOUT_MS),
        "the deploy took {took:?}: the link is not slow enough to test anything"
    );
    assert!(
        !cluster
            .log(1)
            .contains("no whole request within the deadline"),
        "{}",
        cluster.log(1)
    );
    client
        .propose("kv", &kv_put("slow", "link"))
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_the_snapshots_module_from_a_follower_not_the_leader() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        // Snapshots only when asked; the log is cut at each one.
        c.snapshot.hint_threshold_entries = 0;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = 0;
    });
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    // Node 2 leads: node 4's own order of asking starts at node 2, so only the leader's being
    // asked last keeps the fetch off it.
    let leader = 2;
    wait_for("node 2 to lead", CATCH_UP_TIMEOUT, async || {
        let _ = client.transfer_leader(leader).await;
        (cluster.wait_for_leader(LEADER_TIMEOUT).await == leader).then_some(())
    })
    .await;
    let kv = guest("kv");
    let module_bytes = kv.len() as u64;
    client.deploy("kv", kv).await.expect("deploy");
    for i in 0..20 {
        client
            .propose("kv", &kv_put("j", &i.to_string()))
            .await
            .expect("put");
    }
    client
        .snapshot_trigger_and_wait(Some(cluster.addr(leader)), CATCH_UP_TIMEOUT)
        .await
        .expect("leader snapshot");

    // Node 4 joins empty: the leader sends it the snapshot (a few hundred bytes); the module
    // the snapshot names comes from a follower.
    let addr4 = cluster.add_node(4);
    client.add_learner(4, addr4).await.expect("add learner");
    wait_value(&cluster, 4, "j", "19").await;
    let log = cluster.log(4);
    assert!(log.contains("snapshot installed"), "{log}");
    let fetched = log
        .lines()
        .find(|l| l.contains("fetched a module by hash"))
        .unwrap_or_else(|| panic!("no fetch:\n{log}"));
    assert!(!fetched.contains(&format!("from={leader} ")), "{fetched}");
    assert_eq!(
        metric(&cluster, leader, "wraft_module_bytes_total", "served").await,
        None,
        "the leader served the module"
    );
    let mut served = 0.0;
    for id in cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader && *id != 4)
    {
        served += metric(&cluster, id, "wraft_module_bytes_total", "served")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(served, module_bytes as f64);
}
