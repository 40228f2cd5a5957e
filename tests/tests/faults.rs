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
        cfg.cluster.members = cfg
            .cluster
            .members
            .iter()
            .map(|(id, real)| (*id, p.front(*id, *real)))
            .collect();
    });
    let timeout = Duration::from_secs(20);
    let old = cluster.wait_for_leader(timeout).await;
    let old_term = cluster.status(old).await.expect("leader status").term;
    let ids = cluster.ids();
    proxy.partition(&[old], &ids);
    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != old).collect();
    let new = cluster.wait_for_leader_among(&others, timeout).await;
    assert_ne!(new, old, "the isolated leader cannot stay leader of the majority");
    let dropped = proxy.stats().dropped;
    assert!(dropped > 0, "the proxy dropped nothing");
    proxy.heal();
    wraft_tests::wait_for("the old leader to follow the new term", timeout, async || {
        let s = cluster.status(old).await?;
        (s.role != "leader" && s.term > old_term && s.leader.is_some()).then_some(())
    })
    .await;
    // A one-way cut alone is enough to matter: the new leader can no longer
    // reach the old one, which must then stop hearing heartbeats.
    proxy.set(new, old, LinkFault::CUT);
    assert_eq!(proxy.get(new, old), LinkFault::CUT);
    proxy.heal();
    assert_eq!(proxy.get(new, old), LinkFault::default());
}
