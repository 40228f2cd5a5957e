//! The HTTP/JSON API against real `wraft node` processes, driven by tools nobody here wrote:
//! `curl` and a Python script using the standard library only. Authentication (client
//! certificates, bearer tokens, roles), forwarding from any node and across a failover,
//! exactly-once with caller tags, error codes, and the bounds a hostile or careless client
//! meets (malformed, oversized and slow bodies, idle connections).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wraft_tests::{Cluster, kv_get, kv_put, mint_token, wait_for};

/// Who `curl` is.
#[derive(Clone)]
enum Auth {
    Cert(&'static str),
    Token(String),
    Nothing,
}

/// `curl` a route; the status and the body (JSON if it parses, else a string).
fn curl(
    certs: &Path,
    addr: SocketAddr,
    auth: &Auth,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    extra: &[&str],
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .args(["-X", method]);
    match auth {
        Auth::Cert(name) => {
            cmd.arg("--cert")
                .arg(certs.join(format!("client-{name}.crt")))
                .arg("--key")
                .arg(certs.join(format!("client-{name}.key")));
        }
        Auth::Token(t) => {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        Auth::Nothing => {}
    }
    if let Some((ct, bytes)) = body {
        cmd.arg("-H")
            .arg(format!("Content-Type: {ct}"))
            .arg("--data-binary")
            .arg("@-")
            .stdin(Stdio::piped());
        cmd.args(["--max-time", "30"]);
        cmd.args(extra);
        cmd.arg(format!("https://127.0.0.1:{}{path}", addr.port()));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("curl runs (make deps installs it)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(bytes).expect("write body");
        }
        return parse_curl(child.wait_with_output().expect("curl"));
    }
    if !extra.contains(&"--max-time") {
        cmd.args(["--max-time", "30"]);
    }
    cmd.args(extra);
    cmd.arg(format!("https://127.0.0.1:{}{path}", addr.port()));
    parse_curl(cmd.output().expect("curl runs (make deps installs it)"))
}

fn parse_curl(out: std::process::Output) -> (u16, Value) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code: u16 = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl printed no status: {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (code, value)
}

/// curl with the admin certificate proposes through a follower (forwarded to the leader),
/// queries at every consistency, lists machines and reads status; the answers are JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_certificate_proposes_and_queries_through_any_node() {
    let cluster = Cluster::start(3);
    let leader = cluster.deploy_kv().await;
    let certs = cluster.certs_dir().to_owned();
    let follower = cluster
        .ids()
        .into_iter()
        .find(|i| *i != leader)
        .expect("follower");
    let at = cluster.http_addr(follower).await;
    let admin = Auth::Cert("admin");
    let (code, v) = curl(
        &certs,
        at,
        &admin,
        "POST",
        "/v1/machines/kv/propose",
        Some(("application/json", &kv_put("a", "1"))),
        &[],
    );
    assert_eq!(code, 200, "{v}");
    let index = v["index"].as_u64().expect("index");
    assert!(index > 0, "{v}");
    // The follower answers a stale read from its own machine: let it apply the write (on a
    // loaded machine its first instantiation of the guest takes seconds).
    cluster
        .wait_applied(&[follower], index, Duration::from_secs(60))
        .await;
    for consistency in ["linearizable", "lease", "stale"] {
        let path = format!("/v1/machines/kv/query?consistency={consistency}");
        let (code, v) = wait_for_ok(|| {
            curl(
                &certs,
                at,
                &admin,
                "POST",
                &path,
                Some(("application/json", &kv_get("a"))),
                &[],
            )
        })
        .await;
        assert_eq!(code, 200, "{consistency}: {v}");
        assert!(v["output"].to_string().contains('1'), "{consistency}: {v}");
    }
    let (code, v) = curl(&certs, at, &admin, "GET", "/v1/machines", None, &[]);
    assert_eq!(code, 200);
    assert_eq!(v[0]["name"], "kv", "{v}");
    let (code, v) = curl(&certs, at, &admin, "GET", "/v1/status", None, &[]);
    assert_eq!((code, v["id"].as_u64()), (200, Some(follower)), "{v}");
    let (code, v) = curl(&certs, at, &admin, "GET", "/v1/cluster", None, &[]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["leader_status"]["id"].as_u64(), Some(leader), "{v}");
    // Raw bytes in and out.
    let (code, v) = curl(
        &certs,
        at,
        &admin,
        "POST",
        "/v1/machines/kv/propose",
        Some(("application/octet-stream", &kv_put("b", "2"))),
        &["-D", "/dev/stderr"],
    );
    assert_eq!(code, 200, "{v}");
}

/// Assert that an answer is the error `code` with HTTP status `status`.
fn assert_error(answer: &(u16, Value), status: u16, code: &str) {
    let (got, v) = answer;
    assert_eq!(
        (*got, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
}

/// A stale read may need a moment on a follower.
async fn wait_for_ok(mut f: impl FnMut() -> (u16, Value)) -> (u16, Value) {
    let start = Instant::now();
    loop {
        let (code, v) = f();
        if code == 200 || start.elapsed() > Duration::from_secs(10) {
            return (code, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nothing is reachable without authentication; a read token reads and is refused writes;
/// an altered token is refused; the errors are JSON with stable codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tokens_decide_what_a_caller_may_do() {
    let cluster = Cluster::start(3);
    let leader = cluster.deploy_kv().await;
    let certs = cluster.certs_dir().to_owned();
    let at = cluster.http_addr(leader).await;
    let answer = curl(&certs, at, &Auth::Nothing, "GET", "/v1/status", None, &[]);
    assert_error(&answer, 401, "unauthenticated");
    let reader = Auth::Token(mint_token(&certs, "dashboard", "read"));
    let (code, v) = curl(&certs, at, &reader, "GET", "/v1/status", None, &[]);
    assert_eq!(code, 200, "{v}");
    let answer = curl(
        &certs,
        at,
        &reader,
        "POST",
        "/v1/machines/kv/propose",
        Some(("application/json", &kv_put("x", "1"))),
        &[],
    );
    assert_error(&answer, 403, "forbidden");
    let (_, v) = answer;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("write role"),
        "{v}"
    );
    let writer = Auth::Token(mint_token(&certs, "app", "write"));
    let (code, v) = curl(
        &certs,
        at,
        &writer,
        "POST",
        "/v1/machines/kv/propose",
        Some(("application/json", &kv_put("x", "1"))),
        &[],
    );
    assert_eq!(code, 200, "{v}");
    let answer = curl(&certs, at, &writer, "DELETE", "/v1/machines/kv", None, &[]);
    assert_error(&answer, 403, "forbidden");
    let Auth::Token(t) = &writer else {
        unreachable!()
    };
    let forged = Auth::Token(t.replace(".write.", ".admin."));
    let (code, v) = curl(&certs, at, &forged, "DELETE", "/v1/machines/kv", None, &[]);
    assert_eq!(code, 401, "{v}");
    let answer = curl(&certs, at, &writer, "GET", "/v1/nope", None, &[]);
    assert_error(&answer, 404, "not_found");
    let answer = curl(
        &certs,
        at,
        &writer,
        "POST",
        "/v1/machines/none/propose",
        Some(("application/json", &kv_put("x", "1"))),
        &[],
    );
    assert_error(&answer, 404, "no_such_machine");
}

/// What a careless or hostile HTTP client meets: a body that is not JSON, a body over the
/// limit, a body that never finishes, a thousand idle connections — each a clear answer or a
/// bounded cost, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_slow_and_idle_clients_get_clear_answers_and_the_node_serves_on() {
    let cluster = Cluster::start_with(3, |c| {
        c.http.body_read_timeout_ms = 500;
        c.http.header_read_timeout_ms = 5_000;
        c.http.connections_max = 1_100;
        c.client.command_bytes_max = 64 << 10;
    });
    let leader = cluster.deploy_kv().await;
    let certs = cluster.certs_dir().to_owned();
    let at = cluster.http_addr(leader).await;
    let admin = Auth::Cert("admin");
    let propose = |body: &[u8], ct: &str| {
        curl(
            &certs,
            at,
            &admin,
            "POST",
            "/v1/machines/kv/propose",
            Some((ct, body)),
            &[],
        )
    };
    let answer = propose(b"{\"op\": \"put\", ", "application/json");
    assert_error(&answer, 400, "bad_request");
    let (_, v) = answer;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not JSON"),
        "{v}"
    );
    let (code, v) = propose(b"x", "text/plain");
    assert_eq!(code, 415, "{v}");
    let big = kv_put("big", &"x".repeat(80 << 10));
    let answer = propose(&big, "application/json");
    assert_error(&answer, 413, "payload_too_large");

    // A body that stops halfway: 408 after http.body_read_timeout_ms, not a stuck slot.
    let slow = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(at).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        // Plain TCP to a TLS port: the handshake deadline closes it (bounded cost), and a
        // TLS client that sends half a body gets 408 (below, through curl).
        s.write_all(b"\x16\x03\x01").ok();
        let mut buf = [0u8; 16];
        let started = Instant::now();
        let _ = s.read(&mut buf);
        started.elapsed()
    });
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20"])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(certs.join("client-admin.crt"))
        .arg("--key")
        .arg(certs.join("client-admin.key"))
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Content-Length: 1000",
        ])
        .args(["--data-binary", "{\"op\":"])
        .arg(format!(
            "https://127.0.0.1:{}/v1/machines/kv/propose",
            at.port()
        ))
        .output()
        .expect("curl");
    let answer = parse_curl(out);
    assert_error(&answer, 408, "body_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let half_handshake = slow.await.expect("slow client");
    assert!(
        half_handshake < Duration::from_secs(10),
        "a stalled TLS handshake was held for {half_handshake:?} (http.header_read_timeout_ms is 5 s)"
    );

    // A thousand idle connections: held at a bounded cost, and one over the bound is closed
    // at once; the node keeps answering.
    let idle: Vec<std::net::TcpStream> = (0..1_000)
        .map(|_| std::net::TcpStream::connect(at).expect("idle connection"))
        .collect();
    let (code, v) = propose(&kv_put("after-idle", "1"), "application/json");
    assert_eq!(code, 200, "with 1000 idle connections: {v}");
    let more: Vec<std::net::TcpStream> = (0..150)
        .filter_map(|_| std::net::TcpStream::connect(at).ok())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = more
        .iter()
        .filter(|s| {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_millis(50))).ok();
            let mut b = [0u8; 1];
            match (&**s).read(&mut b) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count();
    eprintln!("{closed} of 150 connections over the first 1000 were closed at once");
    assert!(
        closed >= 40,
        "connections over http.connections_max were not closed ({closed})"
    );
    drop(idle);
    drop(more);
    let (code, v) = propose(&kv_put("after", "2"), "application/json");
    assert_eq!(code, 200, "{v}");
    // The node logs the first refusal (a loaded machine may write it a moment later; the
    // cluster prints the node logs if it never does).
    wait_for(
        "the refusal over http.connections_max in the leader's log",
        Duration::from_secs(10),
        async || {
            cluster
                .log(leader)
                .contains("http.connections_max")
                .then_some(())
        },
    )
    .await;
}

fn python(certs: &Path, ports: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(wraft_tests::workspace_root().join("tests/scripts/http_client.py"))
        .arg(certs)
        .arg(ports)
        .args(args);
    cmd
}

/// A Python script (standard library only) writes through any node and watches the kv
/// machine with Server-Sent Events while the leader is killed: its writes all succeed, and
/// the watcher, reconnecting to another node with `Last-Event-ID`, sees every write exactly
/// once, in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_writes_and_watches_through_a_failover_missing_and_repeating_nothing() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.deploy_kv().await;
    let certs = cluster.certs_dir().to_owned();
    let mut ports = Vec::new();
    for id in cluster.ids() {
        ports.push(cluster.http_addr(id).await.port().to_string());
    }
    // The leader first: the watcher starts there and must move when it dies.
    let leader_port = cluster.http_addr(leader).await.port().to_string();
    ports.sort_by_key(|p| *p != leader_port);
    let all = ports.join(",");
    let out = python(&certs, &all, &["put", "start", "0"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value = serde_json::from_slice(&out.stdout).expect("json");
    let from = first["index"].as_u64().expect("index") + 1;
    let from_arg = from.to_string();
    let watcher = python(&certs, &all, &["watch", "kv", &from_arg, "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 watcher");
    let put_key = |i: usize, ports: &str| {
        let key = format!("k{i:02}");
        let out = python(&certs, ports, &["put", &key, "v"])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "put {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for i in 0..10 {
        put_key(i, &all);
    }
    cluster.kill(leader);
    let survivors: Vec<String> = ports
        .iter()
        .filter(|p| **p != leader_port)
        .cloned()
        .collect();
    for i in 10..20 {
        put_key(i, &survivors.join(","));
    }
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .expect("join")
        .expect("watcher output");
    assert!(
        out.status.success(),
        "watcher: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect();
    let keys: Vec<&str> = events
        .iter()
        .map(|e| e["command"]["key"].as_str().expect("a put"))
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys, expected, "events: {events:?}");
    let indexes: Vec<u64> = events
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    assert!(indexes[0] >= from, "{indexes:?}");
}

/// curl watches with NDJSON from an index, disconnects, resumes from the next index and sees
/// the rest exactly once; an index the node's history no longer holds answers 410 compacted
/// with the index to resume from after a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_watch_resumes_exactly_and_an_old_index_answers_compacted() {
    let cluster = Cluster::start_with(3, |c| c.node.watch_history_entries_max = 8);
    let leader = cluster.deploy_kv().await;
    let client = cluster.client().await;
    let certs = cluster.certs_dir().to_owned();
    let at = cluster.http_addr(leader).await;
    let admin = Auth::Cert("admin");
    let mut indexes = Vec::new();
    for i in 0..6 {
        let out = client
            .propose("kv", &kv_put(&format!("w{i}"), "1"))
            .await
            .expect("put");
        indexes.push(out.index);
    }
    let watch = |from: u64, max_time: &str| {
        let path = format!("/v1/machines/kv/watch?format=ndjson&from={from}");
        let (_, v) = curl(
            &certs,
            at,
            &admin,
            "GET",
            &path,
            None,
            &["--max-time", max_time],
        );
        // curl timed out on purpose (a watch never ends): the body is what arrived.
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "applied")
            .map(|e| e["index"].as_u64().expect("index"))
            .collect::<Vec<u64>>()
    };
    let seen = watch(indexes[0], "2");
    assert_eq!(seen, indexes, "first connection");
    let resumed = watch(indexes[3] + 1, "2");
    assert_eq!(resumed, indexes[4..].to_vec(), "after resuming");
    for i in 6..20 {
        client
            .propose("kv", &kv_put(&format!("w{i}"), "1"))
            .await
            .expect("put");
    }
    let path = format!("/v1/machines/kv/watch?from={}", indexes[0]);
    let answer = curl(&certs, at, &admin, "GET", &path, None, &[]);
    assert_error(&answer, 410, "compacted");
    let (_, v) = answer;
    assert!(v["error"]["applied_index"].as_u64().is_some(), "{v}");

    // A name that is not deployed is refused, naming what is, through a follower too.
    let follower = *cluster
        .ids()
        .iter()
        .find(|&&i| i != leader)
        .expect("a follower");
    let at_follower = cluster.http_addr(follower).await;
    let answer = curl(
        &certs,
        at_follower,
        &admin,
        "GET",
        "/v1/machines/kb/watch",
        None,
        &["--max-time", "5"],
    );
    assert_error(&answer, 404, "no_such_machine");
    let message = answer.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"kb\"") && message.contains("kv"),
        "{message}"
    );
    // A resumed watch is not checked: it may be waiting for that machine's deploy.
    let next = cluster
        .status(follower)
        .await
        .expect("follower status")
        .applied_index
        + 1;
    let (code, _) = curl(
        &certs,
        at_follower,
        &admin,
        "GET",
        &format!("/v1/machines/kb/watch?format=ndjson&from={next}"),
        None,
        &["--max-time", "2"],
    );
    assert_eq!(code, 200, "a resumed watch of a machine not deployed yet");
}
