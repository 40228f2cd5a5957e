//! Replicas never diverge because of something only one node decided (issue #16): a node-local
//! failure is never recorded as an entry's result, and a limit that shapes results is the same
//! on every replica whatever each node's own configuration says. Real `wraft node` processes on
//! loopback QUIC, as in `e2e.rs`.

use std::time::Duration;

use wraft_client::ClientError;
use wraft_proto::{Consistency, Reply, Request, RequestError, RequestTag};
use wraft_tests::{Cluster, guest, wait_for};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The current leader and one of its followers.
async fn leader_and_follower(cluster: &Cluster) -> (u64, u64) {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    (leader, follower)
}

/// Node `id` answers even a stale read with `Busy` naming `cause`.
async fn assert_refuses_reads(cluster: &Cluster, id: u64, cause: &str) {
    let read = Request::Query {
        machine: "mb".into(),
        request: b"null".to_vec(),
        consistency: Consistency::Stale,
    };
    match cluster.raw(id, &read).await {
        Err(RequestError::Busy(e)) => assert!(e.contains(cause), "{e}"),
        other => panic!("node {id} answered a read: {other:?}"),
    }
}

fn propose(client_id: u64, seq: u64, command: &[u8]) -> Request {
    Request::Propose {
        tag: RequestTag { client_id, seq },
        machine: "mb".into(),
        command: command.to_vec(),
    }
}

/// The misbehave machine's count as node `id` has it (stale read of its own state).
async fn count_on(cluster: &Cluster, id: u64) -> Result<Vec<u8>, String> {
    cluster.stale_query(id, "mb", b"null").await
}

async fn wait_count(cluster: &Cluster, id: u64, want: &[u8]) {
    let what = format!("node {id} to count {}", String::from_utf8_lossy(want));
    wait_for(&what, CATCH_UP_TIMEOUT, async || {
        (count_on(cluster, id).await.ok().as_deref() == Some(want)).then_some(())
    })
    .await;
}

/// Issue #16 case 3. A follower whose watchdog is far tighter than the others' stops a slow
/// (fuel-bounded) command that the others run to its deterministic end. Before, that follower
/// retried, marked the machine unhealthy, and from then on recorded `MachineFault` for every
/// entry of the machine in its session table — replicated state — so once it led, a retry got
/// a fault the command never had. Now it halts: it records nothing, serves no reads, gives up
/// leadership, keeps trying to re-derive its state, and once its watchdog is sane again it
/// catches up to exactly the others' state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_local_watchdog_stop_halts_that_node_and_never_becomes_a_replicated_result() {
    let mb = guest("misbehave");
    // Enough fuel per entry that "Loop" runs for about a second before it traps, far past the
    // slow node's 100 ms watchdog (2e9 ran out in 0.15 s here, close enough to 100 ms that a
    // re-derivation sometimes finished under the watchdog and the halt never came).
    let mut cluster = Cluster::start_with(3, |c| c.guest.fuel_per_entry = 20_000_000_000);
    let (_, slow) = leader_and_follower(&cluster).await;
    cluster.reconfigure(slow, |c| c.guest.watchdog_ms = 100);
    cluster.restart(slow);
    let c = cluster.client().await;
    c.deploy("mb", mb).await.expect("deploy");
    assert_eq!(
        c.propose("mb", br#""Ok""#).await.expect("ok").output,
        b"\"1\""
    );
    wait_count(&cluster, slow, b"1").await;

    // "Loop" runs until its fuel is gone: a deterministic trap everywhere, except that the
    // slow node's 100 ms watchdog stops it first.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let session = cluster.open_session(leader).await;
    match cluster
        .raw(leader, &propose(session, 1, br#""Loop""#))
        .await
    {
        Err(RequestError::MachineFault(m)) => assert!(m.contains("Fuel"), "{m}"),
        other => panic!("Loop: {other:?}"),
    }
    let ok = propose(session, 2, br#""Ok""#);
    let original = match cluster.raw(leader, &ok).await {
        Ok(Reply::Applied { index, output }) => (index, output),
        other => panic!("Ok after Loop: {other:?}"),
    };
    assert_eq!(original.1, b"\"2\"");

    // The slow node says, in status, that it halted, at which entry, and keeps trying.
    let halted = wait_for(
        "the slow node to report its halt",
        CATCH_UP_TIMEOUT,
        async || {
            let st = cluster.status(slow).await?;
            st.apply_halted
                .filter(|h| h.contains("re-derivations failed") && !h.contains("(0 "))
        },
    )
    .await;
    assert!(halted.contains("\"mb\""), "{halted}");
    assert!(halted.contains("watchdog"), "{halted}");
    assert_refuses_reads(&cluster, slow, "not applying").await;

    // Leadership handed to the halted node does not stay there, and the retry of an
    // acknowledged command gets its original outcome wherever it lands.
    let _ = c.transfer_leader(slow).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(now, slow, "the halted node kept the leadership");
    match cluster.raw(now, &ok).await {
        Ok(Reply::Applied { index, output }) => assert_eq!((index, output), original),
        other => panic!("retry of an applied command: {other:?}"),
    }

    // With a sane watchdog the node re-derives the same history, trap included.
    cluster.reconfigure(slow, |c| c.guest.watchdog_ms = 10_000);
    cluster.restart(slow);
    wait_count(&cluster, slow, b"2").await;
    let st = cluster.status(slow).await.expect("status");
    assert_eq!(st.apply_halted, None);
}

/// Issue #16 case 4. Limits that shape results came from each node's own configuration: a
/// node with a smaller `guest.fuel_per_entry` trapped where the others did not, and recorded
/// it. Now a deploy carries the deploying leader's limits and every replica applies those, on
/// the live path, after a restart (log replay) and from a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_configured_with_other_limits_computes_what_the_others_compute() {
    let mb = guest("misbehave");
    let mut cluster = Cluster::start(3);
    let (_, odd) = leader_and_follower(&cluster).await;
    // Far too little fuel for even one "Ok" (JSON in and out) on this node alone.
    cluster.reconfigure(odd, |c| c.guest.fuel_per_entry = 1_000);
    cluster.restart(odd);
    let c = cluster.client().await;
    c.deploy("mb", mb).await.expect("deploy");
    for n in 1..=3u32 {
        let out = c.propose("mb", br#""Ok""#).await.expect("ok").output;
        assert_eq!(out, format!("\"{n}\"").into_bytes());
    }
    for id in cluster.ids() {
        wait_count(&cluster, id, b"3").await;
    }
    // Replayed from its log after a restart, still with the deploy's limits.
    cluster.restart(odd);
    wait_count(&cluster, odd, b"3").await;
    // And from a snapshot: the file carries the limits.
    let listing = c
        .snapshot_trigger_and_wait(Some(cluster.addr(odd)), Duration::from_secs(30))
        .await
        .expect("snapshot on the odd node");
    assert!(listing.index > 0);
    cluster.restart(odd);
    wait_count(&cluster, odd, b"3").await;
    assert_eq!(
        c.propose("mb", br#""Ok""#).await.expect("ok").output,
        b"\"4\""
    );
    wait_count(&cluster, odd, b"4").await;
    let st = cluster.status(odd).await.expect("status");
    assert_eq!(st.apply_halted, None);
}

/// Issue #16 case 10. A guest whose restore is not faithful, plus a trap: every node rebuilds
/// the machine, the one that holds a snapshot from that snapshot (+1000 to the count), the
/// others from the log alone. Nothing in Raft can see it; the outcome digests can. The leader
/// proposes its digest every few entries, the diverged follower finds its own differs, stops
/// applying and serving, and says so; the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_computes_other_results_for_the_same_log_is_detected_and_stops() {
    let mb = guest("misbehave");
    let cluster = Cluster::start_with(3, |c| c.raft.divergence_check_entries = 4);
    let (_, odd) = leader_and_follower(&cluster).await;
    let c = cluster.client().await;
    c.deploy("mb", mb).await.expect("deploy");
    for _ in 0..2 {
        c.propose("mb", br#""Ok""#).await.expect("ok");
    }
    let armed = c
        .propose("mb", br#"{"UnfaithfulRestore":true}"#)
        .await
        .expect("arm the unfaithful restore");
    // The snapshot must hold the armed flag: the follower counting 2 may still be one entry
    // short of it, and a snapshot taken there is faithful, so nothing would diverge.
    cluster
        .wait_applied(&[odd], armed.index, CATCH_UP_TIMEOUT)
        .await;
    c.snapshot_trigger_and_wait(Some(cluster.addr(odd)), Duration::from_secs(30))
        .await
        .expect("snapshot on one follower");
    let err = c
        .propose("mb", br#"{"Panic":"rebuild everywhere"}"#)
        .await
        .expect_err("a panic is a fault");
    assert!(matches!(err, ClientError::MachineFault(_)), "{err}");
    for n in 3..=10u32 {
        let out = c.propose("mb", br#""Ok""#).await.expect("ok").output;
        assert_eq!(out, format!("\"{n}\"").into_bytes(), "the leader's count");
    }
    let halted = wait_for(
        "the diverged follower to stop",
        CATCH_UP_TIMEOUT,
        async || cluster.status(odd).await?.apply_halted,
    )
    .await;
    assert!(halted.contains("replicas diverged"), "{halted}");
    assert_refuses_reads(&cluster, odd, "diverged").await;
    for id in cluster.ids().into_iter().filter(|i| *i != odd) {
        wait_count(&cluster, id, b"10").await;
        let st = cluster.status(id).await.expect("status");
        assert_eq!(st.apply_halted, None, "node {id}");
    }
}

/// Issue #16 case 10, the other half: every replica holds the same unfaithful snapshot, so
/// they all agree with each other after a trap makes them rebuild from it, and a checkpoint
/// cannot tell. But each one's replay gives other results than it answered the first time (an
/// acknowledged "3" would now be "1003"): each notices, and the cluster stops applying rather
/// than change acknowledged results retroactively.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_whose_replay_changes_acknowledged_results_stops_the_replica() {
    let mb = guest("misbehave");
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let c = cluster.client().await;
    c.deploy("mb", mb).await.expect("deploy");
    c.propose("mb", br#""Ok""#).await.expect("ok");
    let armed = c
        .propose("mb", br#"{"UnfaithfulRestore":true}"#)
        .await
        .expect("arm the unfaithful restore");
    for id in cluster.ids() {
        // Counting 1 is not enough: each snapshot must hold the armed flag (the next entry).
        cluster
            .wait_applied(&[id], armed.index, CATCH_UP_TIMEOUT)
            .await;
        c.snapshot_trigger_and_wait(Some(cluster.addr(id)), Duration::from_secs(30))
            .await
            .expect("snapshot");
    }
    for n in 2..=3u32 {
        let out = c.propose("mb", br#""Ok""#).await.expect("ok").output;
        assert_eq!(out, format!("\"{n}\"").into_bytes());
    }
    // The trap is answered (the panic is the entry's result); the rebuild behind it replays
    // the two "Ok"s from the unfaithful snapshot.
    let _ = c.propose("mb", br#"{"Panic":"rebuild everywhere"}"#).await;
    for id in cluster.ids() {
        let halted = wait_for("every replica to stop", CATCH_UP_TIMEOUT, async || {
            cluster.status(id).await?.apply_halted
        })
        .await;
        assert!(halted.contains("replicas diverged"), "node {id}: {halted}");
        assert!(halted.contains("another result"), "node {id}: {halted}");
    }
}
