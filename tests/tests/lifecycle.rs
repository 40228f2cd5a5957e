//! Stopping nodes like a service manager does (SIGTERM, SIGINT) against real `wraft node`
//! processes: a leader hands leadership over before it exits, the exit status is 0, no
//! acknowledged write is lost and a client writing throughout sees only retryable errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use wraft_tests::{Cluster, guest, is_transient, kv_get, kv_put, kv_value, wait_for};

/// Long enough that a new leader elected by timeout (after at least this long without the old
/// leader's heartbeats) is told apart from one elected at once by a handoff.
const ELECTION_TIMEOUT_MS: u64 = 2_000;

/// What a client writing in a closed loop saw.
#[derive(Default)]
struct Writes {
    /// Keys whose put was acknowledged.
    acked: Vec<String>,
    /// Errors the client returned (after its own retries), as text.
    errors: Vec<String>,
    /// Errors that are not retryable.
    fatal: Vec<String>,
}

/// Put `w<n>` keys one after the other until `stop`, recording what was acknowledged.
fn spawn_writer(
    client: wraft_client::Client,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Writes>>) {
    let writes = Arc::new(Mutex::new(Writes::default()));
    let w = writes.clone();
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("w{n}");
            match client.propose("kv", &kv_put(&key, &n.to_string())).await {
                Ok(_) => w.lock().await.acked.push(key),
                Err(e) => {
                    let mut g = w.lock().await;
                    if !is_transient(&e) {
                        g.fatal.push(e.to_string());
                    }
                    g.errors.push(e.to_string());
                }
            }
            n += 1;
        }
    });
    (task, writes)
}

/// A 3-node cluster with the kv machine, a long election timeout, and its leader.
async fn cluster_with_kv() -> (Cluster, u64) {
    let kv = guest("kv");
    let cluster = Cluster::start_with(3, |c| c.raft.election_timeout_ms = ELECTION_TIMEOUT_MS);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let c = cluster.client().await;
    c.deploy("kv", kv).await.expect("deploy");
    (cluster, leader)
}

/// Stop the leader with `signal` while a client writes; check the handoff, the exit status,
/// the writes.
async fn leader_stops_on(signal: i32, name: &str) {
    let (mut cluster, old) = cluster_with_kv().await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != old).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (writer, writes) = spawn_writer(cluster.client().await, stop.clone());
    // Writes flowing before the stop.
    wait_for(
        "writes before the stop",
        Duration::from_secs(10),
        async || (writes.lock().await.acked.len() >= 20).then_some(()),
    )
    .await;

    let sent = Instant::now();
    cluster.signal(old, signal);
    let new = wait_for("a new leader", Duration::from_secs(10), async || {
        for id in &others {
            if let Some(s) = cluster.status(*id).await
                && s.role == "leader"
            {
                return Some(*id);
            }
        }
        None
    })
    .await;
    let gap = sent.elapsed();
    let status = cluster.wait_exit(old, Duration::from_secs(10)).await;
    let exited_after = sent.elapsed();
    assert!(
        gap < Duration::from_millis(ELECTION_TIMEOUT_MS / 2),
        "{name}: node {new} led {} ms after the signal; an election after a timeout takes at \
         least {ELECTION_TIMEOUT_MS} ms, a handoff far less",
        gap.as_millis()
    );
    assert_eq!(status.code(), Some(0), "{name}: exit status {status}");
    let log = cluster.log(old);
    assert!(
        log.contains("stopping: leadership handed over"),
        "{name}: the old leader's log shows no handoff"
    );
    eprintln!(
        "{name}: node {new} leads {} ms after the signal; node {old} exited 0 after {} ms",
        gap.as_millis(),
        exited_after.as_millis()
    );

    // Writes go on at the new leader; then every acknowledged one is there.
    let before = writes.lock().await.acked.len();
    wait_for(
        "writes after the stop",
        Duration::from_secs(10),
        async || (writes.lock().await.acked.len() >= before + 20).then_some(()),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let w = writes.lock().await;
    assert!(
        w.fatal.is_empty(),
        "{name}: the client saw errors that are not retryable: {:?}",
        w.fatal
    );
    let c = cluster.client().await;
    for key in &w.acked {
        let v = c
            .query("kv", &kv_get(key), wraft_proto::Consistency::Linearizable)
            .await
            .expect("read back");
        assert!(
            kv_value(&v).is_some(),
            "{name}: acknowledged write {key} is lost"
        );
    }
    eprintln!(
        "{name}: {} writes acknowledged, {} errors seen by the client (all retryable): {:?}",
        w.acked.len(),
        w.errors.len(),
        w.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_leader_hands_leadership_over_and_exits_zero_losing_no_write() {
    leader_stops_on(libc::SIGTERM, "SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_to_the_leader_hands_leadership_over_and_exits_zero_losing_no_write() {
    leader_stops_on(libc::SIGINT, "SIGINT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_follower_exits_zero_and_the_leader_stays() {
    let (mut cluster, leader) = cluster_with_kv().await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    cluster.signal(follower, libc::SIGTERM);
    let status = cluster.wait_exit(follower, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let s = cluster.status(leader).await.expect("leader answers");
    assert_eq!((s.role.as_str(), s.leader), ("leader", Some(leader)));
    cluster
        .client()
        .await
        .propose("kv", &kv_put("after", "1"))
        .await
        .expect("the two remaining nodes commit");
}

/// A leader that cannot hand over (both followers are gone) stops anyway at
/// `node.shutdown_timeout_ms`, exits 0 (its log is durable) and says what was cut short; a
/// second signal during a stop exits at once, non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_bounded_by_its_timeout_and_a_second_signal_exits_at_once() {
    // The leader keeps leading alone until check-quorum steps it down after the election
    // timeout: longer than everything below.
    let mut cluster = Cluster::start_with(3, |c| {
        c.raft.election_timeout_ms = 3_000;
        c.node.shutdown_timeout_ms = 1_000;
    });
    let leader = cluster.wait_for_leader(Duration::from_secs(40)).await;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|i| *i != leader).collect();
    for id in &followers {
        cluster.kill(*id);
    }
    let sent = Instant::now();
    cluster.signal(leader, libc::SIGTERM);
    let status = cluster.wait_exit(leader, Duration::from_secs(10)).await;
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2_500),
        "stopped after {} ms; the timeout is 1000 ms",
        took.as_millis()
    );
    assert!(
        cluster
            .log(leader)
            .contains("stopping: the deadline passed first"),
        "the log does not say what was cut short"
    );

    // Second signal: the same situation with a long stop timeout, SIGTERM then SIGINT.
    for id in cluster.ids() {
        cluster.reconfigure(id, |c| c.node.shutdown_timeout_ms = 60_000);
        cluster.restart(id);
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(40)).await;
    for id in cluster.ids().into_iter().filter(|i| *i != leader) {
        cluster.kill(id);
    }
    cluster.signal(leader, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.assert_alive(leader);
    let sent = Instant::now();
    cluster.signal(leader, libc::SIGINT);
    let status = cluster.wait_exit(leader, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130), "exit status {status}");
    assert!(sent.elapsed() < Duration::from_secs(1));
}

/// Closing the endpoint is part of the stop's bound, however slow the network: QUIC keeps a
/// closed connection draining for three probe timeouts (about a second at 300 ms round trips),
/// which a process that is exiting has no reason to wait out once its close frames are sent.
/// (A CI run once saw 1.5 s of draining after a stop that had reported at its deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_on_a_slow_network_does_not_wait_out_quic_draining() {
    const ONE_WAY_MS: u64 = 150;
    const TIMEOUT_MS: u64 = 300;
    let proxy = Arc::new(wraft_tests::faults::proxy::FaultProxy::new(1));
    let p = proxy.clone();
    let mut cluster = Cluster::start_with(3, move |c| {
        p.front_members(c);
        c.raft.heartbeat_interval_ms = 500;
        c.raft.election_timeout_ms = 5_000;
        c.node.shutdown_timeout_ms = TIMEOUT_MS;
    });
    let slow = wraft_tests::faults::proxy::LinkFault {
        delay_ms: ONE_WAY_MS,
        ..Default::default()
    };
    for from in cluster.ids() {
        for to in cluster.ids().into_iter().filter(|to| *to != from) {
            proxy.set(from, to, slow);
        }
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    // Round trips measured on every link before the stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("a follower");
    let sent = Instant::now();
    cluster.signal(follower, libc::SIGTERM);
    let status = cluster.wait_exit(follower, Duration::from_secs(10)).await;
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    // Draining would take three probe timeouts, each over the 300 ms round trip: past a
    // second. The margin above the stop's timeout is for the process's own exit on a loaded
    // machine (a CI run with the whole suite saw 760 ms, the node reporting its stop at 102).
    assert!(
        took < Duration::from_millis(TIMEOUT_MS + 550),
        "a follower stopped after {} ms; its stop timeout is {TIMEOUT_MS} ms\n{}",
        took.as_millis(),
        cluster.log(follower)
    );
}

/// `wraft bench --rolling-restart` (the BENCHMARKS.md figure) runs end to end: every node is
/// restarted with SIGTERM, each exits 0, and the report has the gap figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_bench_restarts_every_node_gracefully_and_reports_the_write_gap() {
    let (r, _) = wraft_tests::run_bench(&["--rolling-restart", "--warmup-secs", "1"]);
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{r}");
    assert!(steps.iter().all(|s| s["exit_code"] == 0), "{r}");
    assert_eq!(steps[2]["was_leader"], true, "the leader goes last: {r}");
    assert!(r["puts"].as_u64().unwrap() > 0, "{r}");
    assert!(r["longest_gap_ms"].as_f64().is_some(), "{r}");
}
