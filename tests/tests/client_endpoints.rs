//! A dead node among the endpoints, as a new user meets it: a script running the CLI (a fresh
//! process per call) and an application holding a Rust client, with the dead node listed
//! first. Before endpoint racing every call paid the 1000 ms connect timeout on it. Also the
//! CLI's `--timeout`, its exit codes, and messages that name the address or the node.

use std::net::{SocketAddr, UdpSocket};
use std::process::Output;
use std::time::{Duration, Instant};

use wraft_tests::{Cluster, kv_put, wraft_bin};

/// Sequential calls per client in the latency tests.
const CALLS: usize = 8;
/// Bounds on one call with the dead node first, milliseconds. The old client paid the 1000 ms
/// connect timeout on every call, so its median was never under 1000 ms; the median bound
/// alone tells them apart (kept under 1000). Under the whole suite on a 2-core machine the new calls (a
/// debug-build process start, a race and one or two handshakes) took 240–600 ms, so the bounds
/// leave room for a loaded CI machine.
const MEDIAN_MS_MAX: u128 = 950;
const CALL_MS_MAX: u128 = 2_500;

/// Run `wraft ARGS --endpoints ENDPOINTS --certs CERTS`.
fn wraft(endpoints: &[SocketAddr], certs: &std::path::Path, args: &[&str]) -> Output {
    let endpoints: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    std::process::Command::new(wraft_bin())
        .args(args)
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .arg("--certs")
        .arg(certs)
        .env_remove("WRAFT_TIMEOUT")
        .output()
        .expect("running wraft")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn median(ms: &mut [u128]) -> u128 {
    ms.sort_unstable();
    ms[ms.len() / 2]
}

/// A three-node cluster with kv deployed, node 1 killed; the endpoints, dead node first.
async fn cluster_with_node_1_dead() -> (Cluster, Vec<SocketAddr>) {
    let mut cluster = Cluster::start(3);
    let leader = cluster.deploy_kv().await;
    // A follower compiles the component when it applies the deploy, after the leader has
    // answered; a new leader still compiling made the first call of a run take 1.3 s here and
    // 2.7 s in CI, which is not what these tests measure. Every node applies it first.
    let deployed = cluster
        .status(leader)
        .await
        .expect("leader status")
        .commit_index;
    cluster
        .wait_applied(&[1, 2, 3], deployed, Duration::from_secs(30))
        .await;
    cluster.kill(1);
    cluster
        .wait_for_leader_among(&[2, 3], Duration::from_secs(20))
        .await;
    let endpoints = vec![cluster.addr(1), cluster.addr(2), cluster.addr(3)];
    (cluster, endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_endpoint_costs_each_cli_call_milliseconds_not_the_connect_timeout() {
    let (cluster, endpoints) = cluster_with_node_1_dead().await;
    let mut took_ms = Vec::new();
    for i in 0..CALLS {
        let put = String::from_utf8(kv_put(&format!("k{i}"), "v")).expect("utf-8");
        let started = Instant::now();
        let o = wraft(&endpoints, cluster.certs_dir(), &["propose", "kv", &put]);
        took_ms.push(started.elapsed().as_millis());
        assert!(o.status.success(), "call {i} failed: {}", stderr(&o));
    }
    eprintln!("CLI calls with the dead node first, ms: {took_ms:?}");
    let max = *took_ms.iter().max().expect("calls");
    let median = median(&mut took_ms);
    assert!(
        median < MEDIAN_MS_MAX && max < CALL_MS_MAX,
        "median {median} ms, max {max} ms (bounds {MEDIAN_MS_MAX}, {CALL_MS_MAX}): {took_ms:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_endpoint_costs_a_rust_client_milliseconds_from_its_first_call() {
    let (cluster, endpoints) = cluster_with_node_1_dead().await;
    // A fresh client per round: its first call has nothing remembered to go on.
    let mut first_ms = Vec::new();
    let mut later_ms = Vec::new();
    for round in 0..3 {
        let c = cluster.client_for(endpoints.clone()).await;
        for i in 0..CALLS {
            let started = Instant::now();
            c.propose("kv", &kv_put(&format!("r{round}-{i}"), "v"))
                .await
                .expect("put");
            let ms = started.elapsed().as_millis();
            if i == 0 { &mut first_ms } else { &mut later_ms }.push(ms);
        }
    }
    eprintln!("Rust client, dead node first: first calls {first_ms:?} ms, later {later_ms:?} ms");
    // The old client paid the connect timeout on every fresh client's first call, so the
    // first calls are judged by their median, and no call may approach the 30 s budget.
    let worst = *first_ms.iter().chain(&later_ms).max().expect("calls");
    assert!(
        worst < 5_000,
        "a call took {worst} ms: first calls {first_ms:?}, later {later_ms:?}"
    );
    assert!(
        median(&mut first_ms.clone()) < MEDIAN_MS_MAX,
        "first calls {first_ms:?}"
    );
    assert!(median(&mut later_ms) < MEDIAN_MS_MAX, "{later_ms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_timeout_bounds_a_call_to_a_dead_cluster_and_exits_unavailable_naming_the_endpoints() {
    // Two "nodes" that hold their ports and never answer, like stopped processes.
    let silent: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let endpoints: Vec<SocketAddr> = silent
        .iter()
        .map(|s| s.local_addr().expect("address"))
        .collect();
    let certs = tempfile::tempdir().expect("tmp");
    wraft::local::issue_certs(certs.path(), &[1], &["admin".into()], 1).expect("certs");

    let started = Instant::now();
    let o = wraft(
        &endpoints,
        certs.path(),
        &["--timeout", "500ms", "propose", "kv", "x"],
    );
    let took = started.elapsed();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    // Without --timeout the CLI would retry for 30 s; the process start and exit of a debug
    // build on a loaded machine take the rest.
    assert!(took < Duration::from_millis(4_000), "took {took:?}: {err}");
    for ep in &endpoints {
        assert!(
            err.contains(&format!("cannot reach {ep}: handshake timed out")),
            "{ep} not named: {err}"
        );
    }
    assert!(
        !err.contains("node 0") && !err.contains("internal"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_exits_2_naming_the_node_that_answered() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let endpoints = cluster.endpoints();

    let o = wraft(
        &endpoints,
        cluster.certs_dir(),
        &["propose", "nosuch", "{}"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let who = format!("node {leader} ({}): ", cluster.addr(leader));
    assert!(
        err.contains(&format!("{who}no machine named \"nosuch\"")),
        "{err}"
    );

    // A stale read is answered by whichever node the client reached: it is named too.
    let o = wraft(
        &[cluster.addr(2)],
        cluster.certs_dir(),
        &["query", "nosuch", "{}", "--consistency", "stale"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("node 2 ({}): no machine named", cluster.addr(2))),
        "{err}"
    );

    // A usage error is 1, not 2 (clap's own default).
    let o = wraft(&endpoints, cluster.certs_dir(), &["propose"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// `wraft … | grep -q …`: when the reader has gone, the CLI ends by SIGPIPE as `cat` does, not
/// with a Rust panic and a backtrace on stderr (seen in CI: the runbook's
/// `wraft members list | grep -q` block failed with exit status 101, "failed printing to
/// stdout: Broken pipe").
#[test]
fn a_cli_whose_reader_has_gone_ends_by_sigpipe_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("tmp");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(wraft_bin())
        .args(["cert", "--dir"])
        .arg(dir.path().join("certs"))
        .args(["--nodes", "1"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("running wraft");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}; stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
