//! What an operator watches, against real `wraft node` processes: the HTTP listener on
//! `node.metrics_listen` (`/metrics` with real histograms and counters, `/livez`, `/readyz`
//! flipping as a node falls behind and catches up or loses its leader), the alert rules and the
//! dashboard in `deploy/` (checked with `promtool`, and every metric they name exported by a
//! running node), and the log formats of `wraft node`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wraft_client::Client;
use wraft_config::NodeConfig;
use wraft_tests::{Cluster, guest, http_get, kv_put, wait_for, workspace_root, wraft_bin};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Every node serves `/metrics`, `/livez` and `/readyz` on a port of its own choosing.
fn observed(c: &mut NodeConfig) {
    c.node.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

async fn deploy_kv(cluster: &Cluster) -> (u64, Client) {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    (leader, client)
}

async fn put_many(client: &Client, prefix: &str, n: u32) {
    for i in 0..n {
        let key = format!("{prefix}{i:05}");
        client
            .propose(
                "kv",
                &kv_put(&key, &format!("value-{i}-{}", "x".repeat(64))),
            )
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
}

/// `GET path` from a blocking thread (the probe is plain std I/O).
async fn get(addr: SocketAddr, path: &'static str) -> Option<(u16, String)> {
    tokio::task::spawn_blocking(move || http_get(addr, path))
        .await
        .expect("probe thread")
}

/// The `# TYPE name kind` lines of a scrape.
fn types(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

/// Every `wraft_*` metric name in `text` (a rules file or the dashboard's JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("wraft_") {
        let start = i + at;
        let before_ok = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_real_histograms_and_counters_and_cover_every_name_the_rules_and_dashboard_use()
{
    let mut cluster = Cluster::start_with(3, |c| {
        observed(c);
        // Small snapshots and a short retained log, so a node added later catches up by a
        // snapshot transfer (whose metrics must exist too).
        c.snapshot.hint_threshold_entries = 100;
        c.snapshot.log_entries_max = 0;
        c.snapshot.log_retain_margin_entries = 10;
    });
    let (_, client) = deploy_kv(&cluster).await;
    put_many(&client, "k", 300).await;
    // A client error of a known kind, for the requests-by-outcome counter.
    let _ = client.propose("no-such-machine", b"{}").await;
    let addr4 = cluster.add_node(4);
    client.add_learner(4, addr4).await.expect("add learner");
    let commit = client.status().await.expect("status").commit_index;
    cluster.wait_applied(&[4], commit, CATCH_UP_TIMEOUT).await;
    assert!(
        cluster.log(4).contains("snapshot installed"),
        "node 4 caught up without a snapshot:\n{}",
        cluster.log(4)
    );

    let mut exported: BTreeMap<String, String> = BTreeMap::new();
    let mut scrapes = Vec::new();
    for id in cluster.ids() {
        let addr = cluster.metrics_addr(id).await;
        let (status, body) = get(addr, "/metrics").await.expect("scrape");
        assert_eq!(status, 200, "node {id} /metrics: {body}");
        exported.extend(types(&body));
        scrapes.push(body);
        // No catch-all: the exporter's own "/" and "/health" answers do not exist here.
        for path in ["/", "/health", "/healthz", "/ready"] {
            let (status, _) = get(addr, path).await.expect("probe");
            assert_eq!(status, 404, "node {id} {path}");
        }
    }

    for h in [
        "wraft_proposal_commit_seconds",
        "wraft_apply_batch_seconds",
        "wraft_storage_fsync_seconds",
        "wraft_client_request_seconds",
        "wraft_snapshot_create_seconds",
        "wraft_snapshot_install_seconds",
        "wraft_snapshot_transfer_seconds",
    ] {
        assert_eq!(
            exported.get(h).map(String::as_str),
            Some("histogram"),
            "{h} must be a histogram"
        );
    }
    for c in [
        "wraft_transport_dropped_msgs_total",
        "wraft_raft_leader_changes_total",
        "wraft_client_requests_total",
        "wraft_snapshot_transfers_total",
        "wraft_apply_entries_total",
        "wraft_persist_entries_total",
    ] {
        assert_eq!(
            exported.get(c).map(String::as_str),
            Some("counter"),
            "{c} must be a counter"
        );
    }
    for g in [
        "wraft_raft_has_leader",
        "wraft_raft_peer_lag_entries",
        "wraft_storage_disk_free_bytes",
        "wraft_build_info",
        "wraft_snapshot_transfer_done_bytes",
    ] {
        assert_eq!(exported.get(g).map(String::as_str), Some("gauge"), "{g}");
    }
    let all = scrapes.join("\n");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        all.contains(&format!("version=\"{version}\"")),
        "wraft_build_info has no version {version}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("wraft_client_requests_total")
                && l.contains("request=\"propose\"")
                && l.contains("outcome=\"no_such_machine\"")),
        "the failed propose was not counted by kind"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("wraft_storage_fsync_seconds_bucket")),
        "no fsync was timed"
    );

    // Everything the alert rules and the dashboard name is exported (a histogram's series
    // by its `_bucket`, `_sum` or `_count`).
    let root = workspace_root();
    for file in [
        "deploy/prometheus/wraft-alerts.yml",
        "deploy/grafana/wraft-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let names = metric_names(&text);
        assert!(names.len() > 5, "{file}: found only {names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| {
                if exported.contains_key(n.as_str()) {
                    return false;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s));
                let of_a_histogram =
                    base.is_some_and(|b| exported.get(b).is_some_and(|k| k == "histogram"));
                !of_a_histogram
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics no node exports: {missing:?}\nexported: {:?}",
            exported.keys().collect::<Vec<_>>()
        );
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process this test started; no memory is involved.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// `/readyz` of `addr`: (ready?, the JSON body).
async fn readyz(addr: SocketAddr) -> Option<(u16, Value)> {
    let (status, body) = get(addr, "/readyz").await?;
    Some((
        status,
        serde_json::from_str(&body).expect("readyz body is JSON"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_a_paused_follower_catches_up_and_200_again_while_livez_stays_200() {
    // One entry per append and one append in flight: catching up on a few hundred entries
    // takes long enough to be seen.
    let cluster = Cluster::start_with(3, |c| {
        observed(c);
        c.node.readyz_lag_entries_max = 20;
        c.raft.append_entries_max = 1;
        c.raft.inflight_append_msgs_max = 1;
    });
    let (leader, client) = deploy_kv(&cluster).await;
    put_many(&client, "a", 10).await;
    let follower = cluster.ids().into_iter().find(|i| *i != leader).unwrap();
    let f_addr = cluster.metrics_addr(follower).await;
    let l_addr = cluster.metrics_addr(leader).await;

    let ready = wait_for("the follower to be ready", CATCH_UP_TIMEOUT, async || {
        readyz(f_addr).await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(ready.1["ready"], Value::Bool(true), "{}", ready.1);
    assert_eq!(ready.1["role"], "follower", "{}", ready.1);
    let (status, body) = readyz(l_addr).await.expect("leader readyz");
    assert_eq!(status, 200, "leader: {body}");

    let pid = cluster.pid(follower).expect("follower pid");
    signal(pid, libc::SIGSTOP);
    put_many(&client, "b", 400).await;
    signal(pid, libc::SIGCONT);

    // Behind: 503 with the reason, while /livez stays 200.
    let mut reasons = BTreeSet::new();
    let behind = wait_for(
        "the follower to report catching up",
        CATCH_UP_TIMEOUT,
        async || {
            let (status, body) = readyz(f_addr).await?;
            assert_eq!(get(f_addr, "/livez").await.map(|(s, _)| s), Some(200));
            if status == 503 {
                reasons.insert(body["reason"].as_str().unwrap_or_default().to_owned());
            }
            let reason = body["reason"].as_str().unwrap_or_default();
            (status == 503 && reason.starts_with("catching up")).then_some(body)
        },
    )
    .await;
    assert_eq!(behind["ready"], Value::Bool(false), "{behind}");
    assert!(behind["lag_entries"].as_u64().unwrap_or(0) > 20, "{behind}");

    // Caught up: 200 again.
    let back = wait_for(
        "the follower to be ready again",
        CATCH_UP_TIMEOUT,
        async || readyz(f_addr).await.filter(|(s, _)| *s == 200),
    )
    .await;
    assert_eq!(back.1["reason"], "ready", "{}", back.1);
    let (status, body) = get(f_addr, "/livez").await.expect("livez");
    assert_eq!(status, 200, "{body}");
    let live: Value = serde_json::from_str(&body).expect("livez JSON");
    assert_eq!(live["live"], Value::Bool(true), "{live}");
    eprintln!("503 reasons seen while the follower caught up: {reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_no_leader_on_the_survivor_of_a_lost_quorum() {
    let mut cluster = Cluster::start_with(3, observed);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let survivor = cluster.ids().into_iter().find(|i| *i != leader).unwrap();
    let addr = cluster.metrics_addr(survivor).await;
    wait_for("the survivor to be ready", CATCH_UP_TIMEOUT, async || {
        readyz(addr).await.filter(|(s, _)| *s == 200)
    })
    .await;
    for id in cluster.ids() {
        if id != survivor {
            cluster.kill(id);
        }
    }
    let (_, body) = wait_for(
        "the survivor to report no leader",
        CATCH_UP_TIMEOUT,
        async || {
            readyz(addr)
                .await
                .filter(|(s, b)| *s == 503 && b["reason"] == "no leader known")
        },
    )
    .await;
    assert_eq!(body["ready"], Value::Bool(false), "{body}");
    assert_eq!(get(addr, "/livez").await.map(|(s, _)| s), Some(200));
    let (_, metrics) = get(addr, "/metrics").await.expect("scrape");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wraft_raft_has_leader{") && l.ends_with(" 0")),
        "wraft_raft_has_leader is not 0 on the survivor"
    );
}

/// Start a one-node cluster's node directly (not through the harness, which sets `NO_COLOR`),
/// with stderr on a pipe, wait until it serves, stop it, and return what it wrote to stderr.
fn run_node_and_capture(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = wraft::local::layout(dir.path(), 1, |_| {}).expect("layout");
    let (_, config) = &layout.nodes[0];
    let out = dir.path().join("stderr");
    let mut child = Command::new(wraft_bin())
        .arg("node")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&out).expect("stderr file"),
        ))
        .spawn()
        .expect("spawn wraft node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("role changed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("role changed"),
        "the node did not become leader:\n{text}"
    );
    std::fs::read_to_string(&out).unwrap_or(text)
}

#[test]
fn log_format_json_writes_one_parseable_object_per_line() {
    let text = run_node_and_capture(&["--log-format", "json"]);
    let mut targets = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        targets.insert(v["target"].as_str().unwrap_or_default().to_owned());
    }
    // Everything on stderr is JSON, the "serving on" banner included.
    let not_json: Vec<&str> = text.lines().filter(|l| !l.starts_with('{')).collect();
    assert!(not_json.is_empty(), "lines that are not JSON: {not_json:?}");
    assert!(
        text.contains("serving on"),
        "no JSON banner line in: {text}"
    );
    assert!(
        targets.contains("wraft::node") && targets.contains("wraft::raft"),
        "{targets:?}"
    );
    assert!(!text.contains('\u{1b}'), "ANSI escapes in JSON logs");
}

#[test]
fn text_logs_written_to_a_pipe_have_no_colour() {
    let text = run_node_and_capture(&[]);
    assert!(text.contains("wraft::node"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape codes in a log written to a file:\n{text}"
    );
}

/// `promtool`, from Debian's `prometheus` package (`make deps` installs it).
fn promtool() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool not found on PATH: run `make deps` (it installs Debian's `prometheus` \
             package, which provides promtool)"
        )
    })
}

fn run_promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = workspace_root().join("deploy/prometheus");
    let checked = run_promtool(&dir, &["check", "rules", "wraft-alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&dir, &["test", "rules", "wraft-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(dir.join("wraft-alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir.join("wraft-alerts.test.yml")).expect("tests");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "alert {alert} has no unit test"
        );
    }
}

#[test]
fn the_dashboard_is_importable_json_with_a_prometheus_datasource_variable() {
    let path = workspace_root().join("deploy/grafana/wraft-dashboard.json");
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let vars = d["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() > 10);
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
}
