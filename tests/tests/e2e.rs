//! End-to-end behaviour of a wraft cluster of real `wraft node` processes on
//! loopback QUIC (see the `wraft_tests` crate docs for the harness).
//!
//! Every test starts its own small cluster on free `127.0.0.1` ports with
//! fresh certificates, and every process it starts is killed when the test
//! ends. Waits are bounded; on failure the nodes' logs are printed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use wraft_client::{Client, ClientError};
use wraft_proto::{Consistency, MachineInfo, Reply, Request, RequestError, RequestTag};
use wraft_tests::{
    Cluster, guest, is_transient, json as to_json, kv_get, kv_put, kv_value, parse, wait_for,
};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

async fn started(n: u64) -> (Cluster, u64) {
    let cluster = Cluster::start(n);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    (cluster, leader)
}

/// Every key/value of the kv machine under `prefix`, from `answer` (a scan reply).
fn scan_entries(answer: &[u8]) -> BTreeMap<String, String> {
    let v = parse(answer);
    assert_eq!(v["more"], json!(false), "scan truncated: {v}");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e[0].as_str().expect("key").to_owned(),
                e[1].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

fn kv_scan(prefix: &str) -> Vec<u8> {
    to_json(json!({"op": "scan", "prefix": prefix, "limit": 10_000}))
}

/// Wait until node `id` serves `request` to `machine` with `want` (stale read).
async fn wait_stale_answer(cluster: &Cluster, id: u64, machine: &str, request: &[u8], want: &[u8]) {
    let start = std::time::Instant::now();
    loop {
        let got = cluster.stale_query(id, machine, request).await;
        if got.as_deref() == Ok(want) {
            return;
        }
        if start.elapsed() > CATCH_UP_TIMEOUT {
            panic!(
                "node {id} did not answer {} with {} within {} ms; last answer: {:?}\n{}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(want),
                CATCH_UP_TIMEOUT.as_millis(),
                got.map(|b| String::from_utf8_lossy(&b).into_owned()),
                cluster.describe().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The machines node `id` reports (from its own status).
async fn machines_on(cluster: &Cluster, id: u64) -> Vec<MachineInfo> {
    cluster
        .status(id)
        .await
        .unwrap_or_else(|| panic!("node {id} answers status"))
        .machines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_back_linearizably_and_eventually_by_every_follower() {
    let kv = guest("kv");
    let (cluster, leader) = started(3).await;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();

    // Deploy and write through a follower: the client is redirected.
    let via_follower = cluster.client_for(vec![cluster.addr(followers[0])]).await;
    let msg = via_follower.deploy("kv", kv).await.expect("deploy");
    assert!(msg.contains("deployed"), "{msg}");
    let mut last_index = 0;
    for id in cluster.ids() {
        let c = cluster.client_for(vec![cluster.addr(id)]).await;
        let out = c
            .propose("kv", &kv_put(&format!("k{id}"), &format!("via-{id}")))
            .await
            .unwrap_or_else(|e| panic!("put through node {id}: {e}"));
        assert_eq!(parse(&out.output), json!({"prev": null}));
        assert!(out.index > last_index, "indexes increase");
        last_index = out.index;
    }

    // Linearizable reads from the leader see every acknowledged write.
    let c = cluster.client().await;
    for id in cluster.ids() {
        let v = c
            .query("kv", &kv_get(&format!("k{id}")), Consistency::Linearizable)
            .await
            .expect("linearizable read");
        assert_eq!(kv_value(&v), Some(format!("via-{id}")));
    }
    let absent = c
        .query("kv", &kv_get("never-written"), Consistency::Linearizable)
        .await
        .expect("read");
    assert_eq!(kv_value(&absent), None);

    // Stale reads from each follower converge on the same values.
    let all = c
        .query("kv", &kv_scan("k"), Consistency::Linearizable)
        .await
        .expect("scan");
    assert_eq!(scan_entries(&all).len(), 3);
    for f in &followers {
        wait_stale_answer(&cluster, *f, "kv", &kv_scan("k"), &all).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_stream_loses_no_acknowledged_write_and_the_restarted_node_catches_up()
 {
    let kv = guest("kv");
    let (mut cluster, leader) = started(3).await;
    let c = Arc::new(cluster.client().await);
    c.deploy("kv", kv).await.expect("deploy");

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let writer = {
        let (c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (k, v) = (format!("k/{i:05}"), format!("v{i}"));
                let t = std::time::Instant::now();
                match c.propose("kv", &kv_put(&k, &v)).await {
                    Ok(a) => {
                        if t.elapsed() > Duration::from_secs(1) {
                            eprintln!("put {k} took {:?} (index {})", t.elapsed(), a.index);
                        }
                        acked.lock().unwrap().push((k, v))
                    }
                    Err(e) if is_transient(&e) => {
                        eprintln!("put {k} failed after {:?}: {e}", t.elapsed());
                        failures.push(e.to_string())
                    }
                    Err(e) => panic!("put {k} refused: {e}"),
                }
                i += 1;
            }
            failures
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    wait_for("20 acknowledged writes", CATCH_UP_TIMEOUT, async || {
        (acked_count() >= 20).then_some(())
    })
    .await;

    cluster.kill(leader);
    let killed_at = std::time::Instant::now();
    let at_kill = acked_count();
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, leader);
    let elected_after = killed_at.elapsed();
    wait_for(
        "a write acknowledged by the new leader",
        CATCH_UP_TIMEOUT,
        async || (acked_count() > at_kill + 1).then_some(()),
    )
    .await;
    eprintln!(
        "leader {leader} killed: node {new_leader} elected after {elected_after:?}, writes flowing again after {:?}",
        killed_at.elapsed()
    );
    let resumed = std::time::Instant::now();
    while acked_count() < at_kill + 20 {
        if resumed.elapsed() > CATCH_UP_TIMEOUT {
            panic!(
                "only {} writes acknowledged since the kill\n{}",
                acked_count() - at_kill,
                cluster.describe().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.expect("writer task");
    eprintln!(
        "{} writes acknowledged, {} failed during the failover: {failures:?}",
        acked_count(),
        failures.len()
    );

    // Every acknowledged write is there, with its value.
    let acked = acked.lock().unwrap().clone();
    let state = scan_entries(
        &c.query("kv", &kv_scan("k/"), Consistency::Linearizable)
            .await
            .expect("linearizable scan"),
    );
    for (k, v) in &acked {
        assert_eq!(state.get(k), Some(v), "acknowledged write {k} = {v} lost");
    }

    // The killed node comes back and catches up to the same state.
    cluster.restart(leader);
    let commit = cluster
        .status(new_leader)
        .await
        .expect("leader status")
        .commit_index;
    cluster
        .wait_applied(&[leader], commit, CATCH_UP_TIMEOUT)
        .await;
    let on_restarted = scan_entries(
        &cluster
            .stale_query(leader, "kv", &kv_scan("k/"))
            .await
            .expect("stale scan on the restarted node"),
    );
    assert_eq!(on_restarted, state, "restarted node diverges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_as_learner_catches_up_is_promoted_and_the_cluster_survives_removals() {
    let kv = guest("kv");
    let (mut cluster, _) = started(3).await;
    let c = cluster.client().await;
    c.deploy("kv", kv).await.expect("deploy");
    for i in 0..10 {
        c.propose("kv", &kv_put(&format!("m/{i}"), "before"))
            .await
            .expect("put");
    }

    // Node 4 starts with no role: it is not in the configured members.
    let addr4 = cluster.add_node(4);
    let s4 = wait_for("node 4 to answer status", CATCH_UP_TIMEOUT, async || {
        cluster.status(4).await
    })
    .await;
    assert!(
        !s4.voters.contains(&4) && !s4.learners.contains(&4),
        "{s4:?}"
    );

    let msg = c.add_learner(4, addr4).await.expect("add learner");
    assert!(msg.contains("learner"), "{msg}");
    let commit = c.status().await.expect("status").commit_index;
    cluster.wait_applied(&[4], commit, CATCH_UP_TIMEOUT).await;
    let want = c
        .query("kv", &kv_scan("m/"), Consistency::Linearizable)
        .await
        .expect("scan");
    assert_eq!(scan_entries(&want).len(), 10);
    wait_stale_answer(&cluster, 4, "kv", &kv_scan("m/"), &want).await;
    let s4 = cluster.status(4).await.expect("status of node 4");
    assert_eq!(s4.role, "learner", "{s4:?}");

    c.promote(4).await.expect("promote");
    wait_for("node 4 to be a voter", CATCH_UP_TIMEOUT, async || {
        let s = c.status().await.ok()?;
        s.voters.contains(&4).then_some(())
    })
    .await;

    // Remove a follower other than node 4, then stop its process.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let victim = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader && *i != 4)
        .expect("a follower");
    c.remove_member(victim).await.expect("remove a follower");
    wait_for(
        "the follower to leave the voters",
        CATCH_UP_TIMEOUT,
        async || {
            let s = c.status().await.ok()?;
            (!s.voters.contains(&victim)).then_some(())
        },
    )
    .await;
    cluster.kill(victim);
    c.propose("kv", &kv_put("m/after-follower-removal", "1"))
        .await
        .expect("write after removing a follower");

    // Remove the leader itself: the remaining two voters elect a new one.
    c.remove_member(leader).await.expect("remove the leader");
    let remaining: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|i| *i != leader && *i != victim)
        .collect();
    let new_leader = cluster
        .wait_for_leader_among(&remaining, LEADER_TIMEOUT)
        .await;
    assert_ne!(new_leader, leader);
    cluster.kill(leader);
    let c2 = cluster
        .client_for(remaining.iter().map(|i| cluster.addr(*i)).collect())
        .await;
    c2.propose("kv", &kv_put("m/after-leader-removal", "1"))
        .await
        .expect("write after removing the leader");
    let s = c2.status().await.expect("status");
    assert_eq!(s.voters, remaining, "{s:?}");
    let v = c2
        .query(
            "kv",
            &kv_get("m/after-follower-removal"),
            Consistency::Linearizable,
        )
        .await
        .expect("read");
    assert_eq!(kv_value(&v).as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_as_many_async_workers_as_its_config_asks() {
    // A local layout gives each of n nodes about CPUs / n workers; an operator's number wins.
    let cluster = Cluster::start_with(2, |cfg| {
        if cfg.node.id == 2 {
            cfg.node.worker_threads = 3;
        }
    });
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let expect = [(1, wraft::local::local_worker_threads(2)), (2, 3)];
    for (id, workers) in expect {
        assert_eq!(cluster.config(id).node.worker_threads, workers);
        let line = format!(
            "serving on {} ({workers} async worker threads)",
            cluster.addr(id)
        );
        wait_for(
            &format!("node {id} to log {line:?}"),
            LEADER_TIMEOUT,
            async || cluster.log(id).contains(&line).then_some(()),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer_moves_the_leader_to_the_requested_node() {
    let (cluster, leader) = started(3).await;
    let c = cluster.client().await;
    for target in cluster.ids().into_iter().filter(|i| *i != leader) {
        c.transfer_leader(target).await.expect("transfer");
        let now = cluster.wait_for_leader(LEADER_TIMEOUT).await;
        if now != target {
            // An election that started before the transfer may win first;
            // the transfer is only required to work on a settled cluster.
            wait_for(
                &format!("leadership to move to node {target}"),
                LEADER_TIMEOUT,
                async || {
                    let l = cluster.wait_for_leader(LEADER_TIMEOUT).await;
                    (l == target).then_some(())
                },
            )
            .await;
        }
        let s = cluster.status(target).await.expect("status");
        assert_eq!(s.role, "leader", "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_client_certificates_and_garbage_datagrams_do_not_disturb_the_cluster() {
    let (mut cluster, leader) = started(3).await;
    let c = cluster.client().await;
    let before = c.status().await.expect("status");

    // A client whose certificate comes from another CA is refused, even
    // though it trusts the cluster's CA (so the node is the one refusing).
    let foreign = tempfile::tempdir().expect("tmp");
    wraft::local::issue_certs(foreign.path(), &[], &["admin".into()], 1).expect("foreign certs");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).expect("pem");
    let admin = wraft_transport::Identity::Client("admin".into());
    let foreign_dir = wraft_transport::certs::CertDir::new(foreign.path());
    let tls = wraft_transport::certs::TlsIdentity::from_pem(
        &read(wraft_transport::certs::CertDir::new(cluster.certs_dir()).ca_cert_path()),
        &read(foreign_dir.cert_path(&admin)),
        &read(foreign_dir.key_path(&admin)),
    )
    .expect("foreign identity");
    let intruder = Client::connect(wraft_client::ClientOptions {
        endpoints: cluster.endpoints().into_iter().map(Into::into).collect(),
        tls,
        call_timeout_ms: 2_000,
        deploy_timeout_ms: 2_000,
        retry_backoff_min_ms: 20,
        connect_stagger_ms: wraft_client::CONNECT_STAGGER_MS,
    })
    .await
    .expect("client");
    let err = intruder
        .propose("kv", &kv_put("x", "y"))
        .await
        .expect_err("a foreign certificate must be refused");
    assert!(
        matches!(
            &err,
            ClientError::Unreachable { .. } | ClientError::Rejected(_)
        ),
        "{err}"
    );
    let s = intruder.status_of(Some(cluster.addr(leader))).await;
    assert!(s.is_err(), "status served to a foreign client: {s:?}");
    wait_for(
        "the node to log why it refused the client",
        Duration::from_secs(5),
        async || {
            cluster
                .ids()
                .iter()
                .any(|id| cluster.log(*id).contains("refused"))
                .then_some(())
        },
    )
    .await;

    // Garbage datagrams of every size, at every node's port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..400 {
        for addr in cluster.endpoints() {
            let len = match round % 4 {
                0 => rng.usize(1..40),
                1 => 1200,
                2 => rng.usize(1..1500),
                _ => 65_000,
            };
            let mut buf: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if round % 8 == 1 {
                // Looks like a QUIC long header (Initial, version 1).
                buf[0] = 0xc0;
                if len > 5 {
                    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
            }
            let _ = sock.send_to(&buf, addr);
        }
    }

    // The cluster still serves, with the same members and no node lost.
    for id in cluster.ids() {
        cluster.assert_alive(id);
    }
    let kv = guest("kv");
    c.deploy("kv", kv).await.expect("deploy after garbage");
    c.propose("kv", &kv_put("after", "garbage"))
        .await
        .expect("write after garbage");
    let after = c.status().await.expect("status");
    assert_eq!(after.voters, before.voters);
    for id in cluster.ids() {
        let s = cluster.status(id).await.expect("every node answers");
        assert!(s.leader.is_some(), "{s:?}");
    }
}

/// A component that imports an interface the host does not provide.
fn component_with_forbidden_import() -> Vec<u8> {
    use wasm_encoder::{
        Component, ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType,
    };
    let mut types = ComponentTypeSection::new();
    types.instance(&InstanceType::new());
    let mut imports = ComponentImportSection::new();
    imports.import("wasi:filesystem/types@0.2.0", ComponentTypeRef::Instance(0));
    let mut c = Component::new();
    c.section(&types).section(&imports);
    c.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_modules_are_refused_at_deploy_with_the_cause_and_never_reach_the_log() {
    let (cluster, _) = started(3).await;
    let c = cluster.client().await;
    // The client's first tagged request opens its session through the log (one entry): let
    // that happen before measuring, with a refused deploy of its own.
    c.deploy("bad", Vec::new())
        .await
        .expect_err("an empty module must be refused");
    let before = c.status().await.expect("status");

    let mut rng = fastrand::Rng::with_seed(6);
    let random: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
    // The smallest valid core module: magic + version.
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("random bytes", random, "not a valid wasm component"),
        ("empty file", Vec::new(), "not a valid wasm component"),
        (
            "core module",
            core_module,
            "core wasm module, not a component",
        ),
        (
            "forbidden import",
            component_with_forbidden_import(),
            "imports `wasi:filesystem/types@0.2.0`",
        ),
    ];
    for (what, module, cause) in cases {
        let err = c
            .deploy("bad", module)
            .await
            .expect_err(&format!("{what} must be refused"));
        let ClientError::Rejected(msg) = &err else {
            panic!("{what}: expected Rejected, got {err}");
        };
        assert!(
            msg.contains(cause),
            "{what}: {msg:?} does not name {cause:?}"
        );
    }

    let after = c.status().await.expect("status");
    assert_eq!(after.term, before.term, "an election would add an entry");
    assert_eq!(after.last_index, before.last_index, "log grew: {after:?}");
    assert_eq!(after.commit_index, before.commit_index);
    assert!(c.machines().await.expect("machines").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_guest_crashes_no_node_and_every_replica_records_the_same_outcome() {
    let mb = guest("misbehave");
    // A small memory cap so `GrowMemory` hits it quickly on all three nodes.
    let cluster = Cluster::start_with(3, |cfg| cfg.guest.memory_bytes_max = 64 << 20);
    let mut cluster = cluster;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let c = cluster.client().await;
    c.deploy("mb", mb).await.expect("deploy");

    let ok = br#""Ok""#;
    assert_eq!(c.propose("mb", ok).await.expect("ok").output, b"\"1\"");
    let faults: [(&str, &[u8], &str); 3] = [
        ("panic", br#"{"Panic":"boom"}"#, "boom"),
        ("infinite loop", br#""Loop""#, "fuel"),
        ("memory growth", br#""GrowMemory""#, ""),
    ];
    for (what, cmd, cause) in faults {
        let err = c
            .propose("mb", cmd)
            .await
            .expect_err(&format!("{what} must fail"));
        let ClientError::MachineFault(msg) = &err else {
            panic!("{what}: expected MachineFault, got {err}");
        };
        assert!(
            msg.contains(cause),
            "{what}: {msg:?} does not say {cause:?}"
        );
        // The machine keeps working after each fault.
        c.propose("mb", ok).await.expect("ok after a fault");
    }
    let answer = c
        .query("mb", b"null", Consistency::Linearizable)
        .await
        .expect("query");
    assert_eq!(answer, b"4");

    for id in cluster.ids() {
        cluster.assert_alive(id);
        wait_stale_answer(&cluster, id, "mb", b"null", b"4").await;
        let ms = machines_on(&cluster, id).await;
        assert!(ms.iter().all(|m| m.healthy), "node {id}: {ms:?}");
    }

    // A follower restarted from its log replays the same history, traps
    // included, to the same state.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    cluster.restart(follower);
    wait_stale_answer(&cluster, follower, "mb", b"null", b"4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_carries_state_across_and_a_failed_restore_keeps_the_old_version() {
    let kv = guest("kv");
    let mb = guest("misbehave");
    let (cluster, _) = started(3).await;
    let c = cluster.client().await;
    c.deploy("kv", kv.clone()).await.expect("deploy");
    for i in 0..5 {
        c.propose("kv", &kv_put(&format!("u/{i}"), &format!("{i}")))
            .await
            .expect("put");
    }
    let first = c.machines().await.expect("machines");
    let first_at = first[0].deployed_at;
    // The module is named by the SHA-256 of the deployed bytes (hashed once, at validation).
    let sha: String = wraft_proto::digest::sha256(&kv)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(first[0].module_sha256, sha, "{first:?}");

    // Same name, new deploy: the state moves across through snapshot/restore.
    let msg = c.deploy("kv", kv).await.expect("upgrade");
    assert!(msg.contains("upgraded"), "{msg}");
    let ms = c.machines().await.expect("machines");
    assert_eq!(ms.len(), 1);
    assert!(ms[0].deployed_at > first_at, "{ms:?} vs {first:?}");
    let want = c
        .query("kv", &kv_scan("u/"), Consistency::Linearizable)
        .await
        .expect("scan");
    assert_eq!(scan_entries(&want).len(), 5, "state lost in the upgrade");
    for id in cluster.ids() {
        wait_stale_answer(&cluster, id, "kv", &kv_scan("u/"), &want).await;
        let m = machines_on(&cluster, id).await;
        assert_eq!(m[0].deployed_at, ms[0].deployed_at, "node {id}");
    }

    // A new version whose restore traps: the old one keeps running.
    c.deploy("mb", mb.clone()).await.expect("deploy mb");
    c.propose("mb", br#"{"CorruptRestore":true}"#)
        .await
        .expect("arm");
    c.propose("mb", br#""Ok""#).await.expect("ok");
    let mb_at = c
        .machines()
        .await
        .expect("machines")
        .into_iter()
        .find(|m| m.name == "mb")
        .expect("mb")
        .deployed_at;
    let err = c
        .deploy("mb", mb)
        .await
        .expect_err("a trapping restore must fail the upgrade");
    eprintln!("failed upgrade: {err}");
    assert!(
        err.to_string().contains("old version keeps running"),
        "{err}"
    );
    assert_eq!(
        c.propose("mb", br#""Ok""#).await.expect("ok").output,
        b"\"2\""
    );
    for id in cluster.ids() {
        wait_stale_answer(&cluster, id, "mb", b"null", b"2").await;
        let m = machines_on(&cluster, id).await;
        let mb = m.iter().find(|m| m.name == "mb").expect("mb");
        assert_eq!(mb.deployed_at, mb_at, "node {id} switched versions");
        assert!(mb.healthy, "node {id}: {mb:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_retried_with_the_same_tag_after_a_leader_change_is_applied_once() {
    let counter = guest("counter");
    let (cluster, leader) = started(3).await;
    let c = cluster.client().await;
    c.deploy("counter", counter).await.expect("deploy");

    let client_id = cluster.open_session(leader).await;
    let tag = RequestTag { client_id, seq: 1 };
    let add = Request::Propose {
        tag,
        machine: "counter".into(),
        command: br#"{"Add":5}"#.to_vec(),
    };
    let first = cluster.raw(leader, &add).await;
    let Ok(Reply::Applied { index, output }) = first else {
        panic!("first attempt: {first:?}");
    };
    assert_eq!(output, b"5");

    // A retry to the same leader gets the original answer.
    match cluster.raw(leader, &add).await {
        Ok(Reply::Applied {
            index: i,
            output: o,
        }) => assert_eq!((i, o), (index, b"5".to_vec())),
        other => panic!("retry: {other:?}"),
    }

    // Move leadership, then retry on the new leader.
    let target = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    c.transfer_leader(target).await.expect("transfer");
    let new_leader = wait_for("leadership to move", LEADER_TIMEOUT, async || {
        let l = cluster.wait_for_leader(LEADER_TIMEOUT).await;
        (l != leader).then_some(l)
    })
    .await;
    match cluster.raw(new_leader, &add).await {
        Ok(Reply::Applied {
            index: i,
            output: o,
        }) => {
            assert_eq!(
                (i, o),
                (index, b"5".to_vec()),
                "the retry must get the original outcome"
            )
        }
        other => panic!("retry after the leader change: {other:?}"),
    }
    // The next sequence number is a new command.
    let next = Request::Propose {
        tag: RequestTag { seq: 2, ..tag },
        machine: "counter".into(),
        command: br#"{"Add":1}"#.to_vec(),
    };
    match cluster.raw(new_leader, &next).await {
        Ok(Reply::Applied { output, .. }) => assert_eq!(output, b"6"),
        other => panic!("next command: {other:?}"),
    }
    let v = c
        .query("counter", b"null", Consistency::Linearizable)
        .await
        .expect("query");
    assert_eq!(v, b"6", "the retried Add(5) was applied more than once");
    // And a proposal to a follower is redirected, not applied.
    let follower = cluster
        .ids()
        .into_iter()
        .find(|i| *i != new_leader)
        .expect("a follower");
    match cluster.raw(follower, &next).await {
        Err(RequestError::NotLeader {
            leader: Some((l, _)),
        }) => assert_eq!(l, new_leader),
        other => panic!("proposal to a follower: {other:?}"),
    }
}

/// Issue #16 case 2: a command whose session the cluster does not know (never opened, or
/// expired or evicted since) used to be applied as new when its sequence number was 1, so a
/// retry after its session was forgotten was applied twice. It is refused, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_of_an_unknown_session_is_refused_never_applied_as_new() {
    let counter = guest("counter");
    let (cluster, leader) = started(3).await;
    let c = cluster.client().await;
    c.deploy("counter", counter).await.expect("deploy");
    let opened = cluster.open_session(leader).await;
    let unknown = opened + 1_000_000;
    for seq in [1, 2] {
        let add = Request::Propose {
            tag: RequestTag {
                client_id: unknown,
                seq,
            },
            machine: "counter".into(),
            command: br#"{"Add":5}"#.to_vec(),
        };
        match cluster.raw(leader, &add).await {
            Err(RequestError::SessionUnknown { client_id }) => assert_eq!(client_id, unknown),
            other => panic!("seq {seq} of an unknown session: {other:?}"),
        }
    }
    let v = c
        .query("counter", b"null", Consistency::Linearizable)
        .await
        .expect("query");
    assert_eq!(
        v, b"0",
        "a command of an unknown session reached the machine"
    );
    // The Rust client opens its sessions through the log and is not affected.
    c.propose("counter", br#"{"Add":2}"#)
        .await
        .expect("propose");
    let v = c
        .query("counter", b"null", Consistency::Linearizable)
        .await
        .expect("query");
    assert_eq!(v, b"2");
}

/// Issue #16 case 8: `wraft machines` right after `wraft undeploy` listed the removed machine
/// once more (a follower, or the leader before it published, answered from a lagging view).
/// Each node in turn is the only endpoint of a fresh client, as for one CLI invocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_next_admin_read_reflects_what_it_just_changed_through_any_node() {
    let counter = guest("counter");
    let (cluster, _) = started(3).await;
    for id in cluster.ids() {
        let c = cluster.client_for(vec![cluster.addr(id)]).await;
        c.deploy("counter", counter.clone()).await.expect("deploy");
        let listed = c.machines().await.expect("machines");
        assert!(
            listed.iter().any(|m| m.name == "counter"),
            "through node {id}, right after the deploy: {listed:?}"
        );
        c.remove_machine("counter").await.expect("remove");
        let listed = c.machines().await.expect("machines");
        assert!(
            listed.iter().all(|m| m.name != "counter"),
            "through node {id}, right after the removal: {listed:?}"
        );
        // The next CLI invocation is a new client, which may start at any node.
        for other in cluster.ids() {
            let next = cluster.client_for(vec![cluster.addr(other)]).await;
            let listed = next.machines().await.expect("machines");
            assert!(
                listed.iter().all(|m| m.name != "counter"),
                "a new client through node {other}, right after the removal: {listed:?}"
            );
        }
    }
    // The mechanism: only the leader lists machines, after a ReadIndex round; a follower (whose
    // view can lag any amount behind) redirects instead of answering from it.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    for id in cluster.ids().into_iter().filter(|i| *i != leader) {
        match cluster.raw(id, &Request::Machines).await {
            Err(RequestError::NotLeader { .. }) => {}
            other => panic!("node {id}, a follower, answered a listing itself: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_has_its_own_deadline_covering_the_modules_first_compile() {
    // Each node compiles into its own empty cache, which takes far longer than the 200 ms left
    // for ordinary requests: the deploy must still succeed, under client.deploy_timeout_ms.
    let kv = guest("kv");
    let cluster = Cluster::start_with(3, |cfg| cfg.client.request_timeout_ms = 200);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let c = cluster.client().await;
    let started = std::time::Instant::now();
    c.deploy("kv", kv)
        .await
        .expect("deploy under its own deadline");
    assert!(
        started.elapsed() > Duration::from_millis(200),
        "the compile was expected to outlast the ordinary request deadline"
    );
    let machines = c.machines().await.expect("machines");
    assert_eq!(machines.len(), 1, "{machines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_traps_among_concurrent_reads_fails_alone_and_the_others_are_answered() {
    // Reads that become ready together reach the machine's thread as one run; one of them traps
    // and poisons the instance. Only that read may fail: the node rebuilds the instance and asks
    // the reads queued behind it again.
    let mb = guest("misbehave");
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let c = cluster.client().await;
    c.deploy("mb", mb).await.expect("deploy");
    for _ in 0..3 {
        c.propose("mb", br#""Ok""#).await.expect("ok");
    }
    for round in 0..5 {
        let asks: Vec<&[u8]> = (0..24)
            .map(|i| {
                if i == 7 {
                    &br#""panic""#[..]
                } else {
                    &b"null"[..]
                }
            })
            .collect();
        let answers = futures_util::future::join_all(
            asks.iter()
                .map(|q| c.query("mb", q, Consistency::Linearizable)),
        )
        .await;
        for (i, answer) in answers.into_iter().enumerate() {
            if i == 7 {
                let err = answer.expect_err("the panicking query must fail");
                assert!(
                    matches!(&err, ClientError::MachineFault(m) if m.contains("asked to panic")),
                    "round {round}: {err}"
                );
            } else {
                let out = answer.unwrap_or_else(|e| panic!("round {round}, read {i}: {e}"));
                assert_eq!(out, b"3", "round {round}, read {i}");
            }
        }
    }
    // The machine still applies and answers normally.
    c.propose("mb", br#""Ok""#)
        .await
        .expect("ok after the traps");
    let out = c
        .query("mb", b"null", Consistency::Linearizable)
        .await
        .expect("query");
    assert_eq!(out, b"4");
}

#[test]
fn the_benchmark_runs_a_round_per_line_on_stdin_and_sums_the_rounds_it_ran() {
    // Three rounds asked for, two lines given: two rounds measured on the one cluster, each
    // reported as it ends, then the sum, and a clean exit at the end of input.
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let module = dir.path().join("kv.wasm");
    std::fs::write(&module, wraft_tests::guest("kv")).expect("write kv module");
    let mut child = std::process::Command::new(wraft_tests::wraft_bin())
        .args(["bench", "--clients", "2", "--conns", "1", "--secs", "1"])
        .args([
            "--warmup-secs",
            "0",
            "--fsync-samples",
            "20",
            "--rounds",
            "3",
        ])
        .arg("--rounds-on-stdin")
        .arg("--module")
        .arg(&module)
        .arg("--dir")
        .arg(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running wraft bench");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\ngo\n").expect("write two lines");
    drop(stdin);
    let out = child.wait_with_output().expect("wraft bench output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wraft bench failed:\n{stderr}");
    assert!(stderr.contains("stopping after 2 rounds"), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (rounds, total) = (&lines[..2], &lines[2]);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ops"].as_u64().is_some_and(|n| n > 0), "{r}");
    }
    assert_eq!(total["rounds"], 2, "{total}");
    let sum: u64 = rounds.iter().filter_map(|r| r["ops"].as_u64()).sum();
    assert_eq!(total["ops"].as_u64(), Some(sum), "{total}");
    // Two one-second windows: the rate is over both.
    let rate = total["ops_per_s"].as_f64().expect("ops_per_s");
    assert!((rate - sum as f64 / 2.0).abs() <= 1.0, "{total}");
}

#[test]
fn the_benchmark_reports_puts_next_to_the_disk_and_network_floors_it_ran_on() {
    // A one-second `wraft bench` over node processes: every put acknowledged, the floors measured
    // in the same run, and a one-connection load generator on one async worker.
    let (v, stderr) = wraft_tests::run_bench(&[
        "--processes",
        "--clients",
        "1",
        "--conns",
        "1",
        "--secs",
        "1",
        "--warmup-secs",
        "0",
        "--fsync-samples",
        "20",
    ]);
    let line = v.to_string();
    assert_eq!(v["errors"], 0, "{line}");
    assert!(v["ops"].as_u64().expect("ops") > 0, "{line}");
    assert_eq!(v["client_worker_threads"], 1, "{line}");
    for key in [
        "p50_ms",
        "fsync_append_p50_ms",
        "fsync_overwrite_p50_ms",
        "fsync_concurrent_p50_ms",
        "fsync_concurrent_overwrite_p50_ms",
        "udp_rtt_p50_ms",
        "request_rtt_p50_ms",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {line}");
    }
    assert!(
        stderr.contains("fdatasync, overwrite, 3 concurrent"),
        "{stderr}"
    );
}
