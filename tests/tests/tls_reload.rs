//! Certificates reloaded without a restart, against real `wraft node` processes: a CA rotation
//! with overlapping trust, done by running the runbook's own blocks, while the
//! cluster keeps committing writes; and a broken file refused with the old configuration kept.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wraft_client::{Client, ClientOptions};
use wraft_tests::runbook::{bin_dir, run_block};
use wraft_tests::{Cluster, guest, kv_put, mint_token, wait_for, wraft_bin};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `wraft cert ARGS` and insist it succeeds.
fn wraft_cert(args: &[&str]) {
    let out = Command::new(wraft_bin())
        .arg("cert")
        .args(args)
        .output()
        .expect("run wraft cert");
    assert!(
        out.status.success(),
        "wraft cert {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sighup(cluster: &Cluster, id: u64) {
    let pid = cluster.pid(id).expect("node running") as libc::pid_t;
    // SAFETY: kill(2) on a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Wait until node `id`'s log holds `needle` more than `before` times; returns the new count.
async fn logged(cluster: &Cluster, id: u64, needle: &str, before: usize) -> usize {
    wait_for(
        &format!("node {id} to log {needle:?}"),
        RELOAD_TIMEOUT,
        async || {
            let n = cluster.log(id).matches(needle).count();
            (n > before).then_some(n)
        },
    )
    .await
}

/// Run `change`, then SIGHUP every node and wait until each logs `needle` once more.
async fn reload_every_node_after(cluster: &Cluster, needle: &str, change: impl FnOnce()) {
    let ids = cluster.ids();
    let before: Vec<usize> = ids.iter().map(|i| count(cluster, *i, needle)).collect();
    change();
    for (id, before) in ids.iter().zip(before) {
        sighup(cluster, *id);
        logged(cluster, *id, needle, before).await;
    }
}

fn count(cluster: &Cluster, id: u64, needle: &str) -> usize {
    cluster.log(id).matches(needle).count()
}

/// One write through a new client (new handshakes with the certificates now in `certs`),
/// applied on every node.
async fn write_through_new_client(cluster: &Cluster, key: &str) {
    let c = cluster.client().await;
    c.propose("kv", &kv_put(key, "v"))
        .await
        .unwrap_or_else(|e| panic!("write {key}: {e}\n{}", cluster.describe_now()));
    let commit = c.status().await.expect("status").commit_index;
    cluster
        .wait_applied(&cluster.ids(), commit, CATCH_UP_TIMEOUT)
        .await;
}

trait DescribeNow {
    fn describe_now(&self) -> String;
}

impl DescribeNow for Cluster {
    fn describe_now(&self) -> String {
        self.ids()
            .iter()
            .map(|id| format!("--- node {id}\n{}", self.log(*id)))
            .collect()
    }
}

/// `curl` `path` on the HTTPS API at `addr`, trusting only `certs/ca.crt`, with `args`, and
/// `data` as a POST body if given: the HTTP status (0 when no answer came: a refused
/// handshake, a certificate the CA bundle does not verify) and the body or curl's complaint.
fn curl(
    certs: &Path,
    addr: std::net::SocketAddr,
    args: &[&str],
    path: &str,
    data: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(certs.join("ca.crt"))
    .args(args);
    if let Some(d) = data {
        cmd.args(["--data-binary", d]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{}{path}", addr.port()))
        .output()
        .expect("curl runs (make deps installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let code = code.trim().parse().unwrap_or(0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    (code, format!("{body}{stderr}"))
}

/// Propose a kv write with `token` through a follower's HTTPS API (forwarded to the leader);
/// panics unless it is answered 200.
async fn write_through_a_followers_https_api(cluster: &Cluster, token: &str, key: &str) {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = *cluster
        .ids()
        .iter()
        .find(|&&i| i != leader)
        .expect("a follower");
    let put = format!(r#"{{"op":"put","key":"{key}","value":"v"}}"#);
    let auth = format!("Authorization: Bearer {token}");
    let (code, body) = curl(
        cluster.certs_dir(),
        cluster.http_addr(follower).await,
        &["-H", &auth, "-H", "Content-Type: application/json"],
        "/v1/machines/kv/propose",
        Some(&put),
    );
    assert_eq!(
        code, 200,
        "write {key} through follower {follower}'s HTTPS API: {body}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_with_overlapping_trust_keeps_the_cluster_writing_and_ends_refusing_the_old_ca()
{
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster
        .client()
        .await
        .deploy("kv", guest("kv"))
        .await
        .expect("deploy");
    write_through_new_client(&cluster, "before").await;

    // A writer that keeps proposing on the connection it opened with a CA1 client certificate
    // (open connections keep running across reloads): the cluster commits throughout.
    let writer_client = cluster.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut acknowledged = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                if writer_client
                    .propose("kv", &kv_put(&format!("bg/{i}"), "v"))
                    .await
                    .is_ok()
                {
                    acknowledged.push(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acknowledged
        }
    });
    let started = std::time::Instant::now();

    let certs = cluster.certs_dir().to_owned();
    let work = tempfile::tempdir().expect("temp dir");
    let ca2 = work.path().join("ca2");
    let old_client = work.path().join("old-client");
    std::fs::create_dir_all(&old_client).unwrap();
    for f in ["client-admin.crt", "client-admin.key"] {
        std::fs::copy(certs.join(f), old_client.join(f)).unwrap();
    }
    let ids = cluster.ids();

    // A write forwarded by a follower's HTTPS API before the rotation: its forwarder keeps a
    // connection to the leader under the CA1 identity, which the reloads must replace.
    let token = mint_token(&certs, "rotation", "write");
    write_through_a_followers_https_api(&cluster, &token, "https-before-rotation").await;

    // 0. A broken key is refused, named, and node 1 keeps its configuration.
    let key1 = certs.join("node-1.key");
    let good_key = std::fs::read(&key1).unwrap();
    let refusals = count(&cluster, 1, "TLS reload refused");
    std::fs::write(
        &key1,
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    sighup(&cluster, 1);
    logged(&cluster, 1, "TLS reload refused", refusals).await;
    assert!(
        cluster.log(1).contains(&format!("{}", key1.display())),
        "the refusal names the file:\n{}",
        cluster.log(1)
    );
    std::fs::write(&key1, good_key).unwrap();
    write_through_new_client(&cluster, "after-refusal").await;

    // The runbook's blocks (docs/runbook.md, "Certificate rotation with overlapping trust").
    let bin = bin_dir();
    let env = |more: &[(&'static str, String)]| {
        let mut v = vec![
            ("WRAFT_CERTS", s(&certs).to_owned()),
            ("NEW_CA_DIR", s(&ca2).to_owned()),
        ];
        v.extend(more.iter().cloned());
        v
    };

    // 1. A second CA; every node trusts both.
    reload_every_node_after(&cluster, "TLS reloaded: new CA bundle", || {
        run_block(bin.path(), "rotate-trust-both", &env(&[]));
    })
    .await;
    write_through_new_client(&cluster, "overlap").await;

    // 3. Node certificates from CA2, node by node; then the client's.
    for id in &ids {
        let n = count(&cluster, *id, "TLS reloaded: new certificate, key");
        run_block(
            bin.path(),
            "rotate-node-cert",
            &env(&[("NODE_ID", id.to_string())]),
        );
        sighup(&cluster, *id);
        logged(&cluster, *id, "TLS reloaded: new certificate, key", n).await;
        write_through_new_client(&cluster, &format!("node-{id}-on-ca2")).await;
    }
    run_block(bin.path(), "rotate-client-certs", &env(&[]));
    write_through_new_client(&cluster, "client-on-ca2").await;

    // 4. CA1 is no longer trusted.
    reload_every_node_after(&cluster, "TLS reloaded: new CA bundle", || {
        run_block(bin.path(), "rotate-drop-old-ca", &env(&[]));
    })
    .await;
    write_through_new_client(&cluster, "ca2-only").await;

    // The HTTPS API follows too: every node serves its CA2 certificate to a client that trusts
    // only CA2, a follower forwards a write to the leader under its CA2 identity, and a CA1
    // client certificate is refused.
    for id in &ids {
        let addr = cluster.http_addr(*id).await;
        let (code, body) = curl(&certs, addr, &[], "/v1/openapi.json", None);
        assert_eq!(code, 200, "node {id}'s HTTPS certificate under CA2: {body}");
    }
    write_through_a_followers_https_api(&cluster, &token, "https-after-rotation").await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let old_cert = old_client.join("client-admin.crt");
    let old_key = old_client.join("client-admin.key");
    let (code, body) = curl(
        &certs,
        cluster.http_addr(leader).await,
        &["--cert", s(&old_cert), "--key", s(&old_key)],
        "/v1/whoami",
        None,
    );
    assert_eq!(code, 0, "a CA1 client certificate over HTTPS: {body}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = writer.await.expect("writer");
    let mut last = started;
    let mut longest = Duration::ZERO;
    for t in &acknowledged {
        longest = longest.max(t.duration_since(last));
        last = *t;
    }
    assert!(
        acknowledged.len() >= 10 && longest < Duration::from_secs(3),
        "background writes during the rotation: {} acknowledged, longest gap {longest:?}",
        acknowledged.len()
    );
    eprintln!(
        "background writes during the rotation: {} acknowledged in {:?}, longest gap {longest:?}",
        acknowledged.len(),
        started.elapsed()
    );

    // A client still holding a CA1 certificate is refused by the nodes (it trusts CA2, so
    // the refusal is theirs, not its own).
    std::fs::copy(ca2.join("ca.crt"), old_client.join("ca.crt")).unwrap();
    let mut opts = ClientOptions::from_cert_dir(cluster.endpoints(), &old_client, "admin")
        .expect("old client certificate");
    opts.call_timeout_ms = 3_000;
    let refused = match Client::connect(opts).await {
        Err(_) => true,
        Ok(c) => c.propose("kv", &kv_put("old-ca", "v")).await.is_err(),
    };
    assert!(
        refused,
        "a CA1 client must be refused after CA1 was dropped"
    );
    let refusals: usize = ids
        .iter()
        .map(|id| count(&cluster, *id, "not signed by this cluster's CA"))
        .sum();
    assert!(refusals > 0, "the nodes log the refusal");

    // New node-to-node handshakes under CA2 only: restart one node.
    cluster.restart(1);
    write_through_new_client(&cluster, "after-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_changed_on_disk_are_reloaded_without_a_signal() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster
        .client()
        .await
        .deploy("kv", guest("kv"))
        .await
        .expect("deploy");
    let certs = cluster.certs_dir().to_owned();
    let work = tempfile::tempdir().expect("temp dir");
    let ca2 = work.path().join("ca2");
    wraft_cert(&["--dir", s(&ca2), "--nodes", "--clients"]);
    let before = count(&cluster, 1, "TLS reloaded: new CA bundle");
    let bundle = format!("{},{}", s(&certs.join("ca.crt")), s(&ca2.join("ca.crt")));
    wraft_cert(&["--dir", s(&certs), "--trust", &bundle]);
    logged(&cluster, 1, "TLS reloaded: new CA bundle", before).await;
    assert!(
        !cluster.log(1).contains("SIGHUP"),
        "reloaded by the file watcher, not a signal"
    );
    write_through_new_client(&cluster, "k").await;
}
