//! Fault injection across real `wraft node` processes (see
//! `wraft_tests::faults`): a seeded schedule of crashes, pauses, partitions,
//! one-way cuts, lossy links, leadership transfers and membership changes
//! under concurrent clients, with the history checked for linearizability,
//! no lost acknowledged write, progress after every heal and identical
//! replicas at the end.
//!
//! The default run is the short profile (3 nodes, 75 s of faults). The long
//! profile is the same test with more time, e.g.
//! `WRAFT_FAULTS_SECS=600 WRAFT_FAULTS_SEED=7 cargo nextest run -p wraft-tests --test faults --no-capture`;
//! it prints the summary table at the end (`WRAFT_FAULTS_NODES=5` for five
//! voters).

use std::time::Duration;

use wraft_tests::Cluster;
use wraft_tests::faults::proxy::{FaultProxy, LinkFault};
use wraft_tests::faults::{FaultOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_crashes_pauses_partitions_and_membership_changes_histories_stay_linearizable_and_replicas_converge()
 {
    let opts = FaultOptions::from_env(
        "under_crashes_pauses_partitions_and_membership_changes_histories_stay_linearizable_and_replicas_converge",
        3,
        75,
    );
    let report = run(opts).await;
    assert!(report.anomalies.is_empty());
    assert!(
        report.ops.values().map(|[ok, _, _]| ok).sum::<u64>() > 100,
        "the clients got almost nothing done:\n{}",
        report.summary()
    );
}

/// The proxy really is on the nodes' path: cutting every link of the
/// leader makes the others elect a new one, and healing lets the old leader
/// rejoin as a follower of the higher term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolating_the_leader_through_the_proxy_elects_another_and_healing_rejoins_it() {
    let proxy = std::sync::Arc::new(FaultProxy::new(1));
    let p = proxy.clone();
    let cluster = Cluster::start_with(3, move |cfg| {
        p.front_members(cfg);
    });
    let timeout = Duration::from_secs(20);
    let old = cluster.wait_for_leader(timeout).await;
    let old_term = cluster.status(old).await.expect("leader status").term;
    let ids = cluster.ids();
    proxy.partition(&[old], &ids);
    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != old).collect();
    let new = cluster.wait_for_leader_among(&others, timeout).await;
    assert_ne!(
        new, old,
        "the isolated leader cannot stay leader of the majority"
    );
    let dropped = proxy.stats().dropped;
    assert!(dropped > 0, "the proxy dropped nothing");
    proxy.heal();
    wraft_tests::wait_for(
        "the old leader to follow the new term",
        timeout,
        async || {
            let s = cluster.status(old).await?;
            (s.role != "leader" && s.term > old_term && s.leader.is_some()).then_some(())
        },
    )
    .await;
    // A one-way cut alone is enough to matter: the new leader can no longer
    // reach the old one, which must then stop hearing heartbeats.
    proxy.set(new, old, LinkFault::CUT);
    assert_eq!(proxy.get(new, old), LinkFault::CUT);
    proxy.heal();
    assert_eq!(proxy.get(new, old), LinkFault::default());
}

/// A leader paused (SIGSTOP) past the election timeout must not answer a
/// lease read from its old state when it resumes: meanwhile the others
/// elected a new leader that acknowledged a newer write. The read is sent
/// while the old leader is stopped, so it waits in the old leader's socket
/// buffer next to the new leader's heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_paused_leader_serves_no_stale_lease_read() {
    use wraft_proto::Consistency;
    let kv = wraft_tests::guest("kv");
    let cluster = Cluster::start_with(3, |cfg| {
        cfg.raft.heartbeat_interval_ms = 50;
        cfg.raft.election_timeout_ms = 200;
    });
    let timeout = Duration::from_secs(20);
    cluster.wait_for_leader(timeout).await;
    let all = cluster.client().await;
    all.deploy("kv", kv).await.expect("deploy");
    let mut stale = Vec::new();
    for round in 0..6u32 {
        let old = cluster.wait_for_leader(timeout).await;
        let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != old).collect();
        let key = format!("lease{round}");
        all.propose("kv", &wraft_tests::kv_put(&key, "old"))
            .await
            .expect("first write");
        cluster
            .wait_applied(
                &cluster.ids(),
                cluster.status(old).await.expect("status").commit_index,
                timeout,
            )
            .await;
        // A client of the old leader only, its connection warm.
        let via_old = std::sync::Arc::new(cluster.client_for(vec![cluster.addr(old)]).await);
        let v = via_old
            .query("kv", &wraft_tests::kv_get(&key), Consistency::Lease)
            .await
            .expect("warm-up read");
        assert_eq!(wraft_tests::kv_value(&v).as_deref(), Some("old"));
        let pid = cluster.pid(old).expect("pid");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let stopped = std::time::Instant::now();
        let new = cluster.wait_for_leader_among(&others, timeout).await;
        let via_new = cluster.client_for(vec![cluster.addr(new)]).await;
        via_new
            .propose("kv", &wraft_tests::kv_put(&key, "new"))
            .await
            .expect("write through the new leader");
        // Read through the stopped old leader, then resume it.
        let c = via_old.clone();
        let k = key.clone();
        let read = tokio::spawn(async move {
            c.query("kv", &wraft_tests::kv_get(&k), Consistency::Lease)
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let paused_ms = stopped.elapsed().as_millis();
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        let got = read.await.expect("join");
        eprintln!(
            "round {round}: old leader {old} paused {paused_ms} ms, new leader {new}; lease read -> {:?}",
            got.as_ref()
                .map(|v| wraft_tests::kv_value(v))
                .map_err(|e| e.to_string())
        );
        if let Ok(v) = got
            && wraft_tests::kv_value(&v).as_deref() == Some("old")
        {
            stale.push(round);
        }
    }
    assert!(stale.is_empty(), "stale lease reads in rounds {stale:?}");
}
