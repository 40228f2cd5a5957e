//! `wraft bench --rolling-restart`: the write unavailability of restarting every node of a
//! cluster in turn, as a service manager does it.
//!
//! The nodes run as `wraft node` processes. One client puts `value_bytes` values in a closed
//! loop (keys `r<n>`) through every endpoint; each node in turn, followers first and the
//! leader last, gets SIGTERM (the graceful stop: a leader hands over first), is waited for,
//! started again on the same data, and must have caught up (applied the leader's commit index
//! as of its start) before the next one goes. Measured over the window from the first signal
//! to one second after the last node caught up:
//!
//! - `longest_gap_ms`: the longest time between two consecutive acknowledged puts;
//! - `stalled_ms`: the sum of those gaps above [`STALL_MS`];
//! - `errors`: calls the client gave up on (each after its own retries), with the first few.
//!
//! `examples/bench/etcd-rolling.py` measures etcd the same way.

use super::*;

/// A gap between two acknowledged puts longer than this counts as writes stalled,
/// milliseconds (a put takes 1–3 ms here; an election or a failover takes hundreds).
pub const STALL_MS: f64 = 100.0;

/// Most error messages kept for the report.
const ERRORS_KEPT_MAX: usize = 5;

fn spawn_node(exe: &Path, layout: &LocalLayout, i: usize) -> Result<Child, AnyError> {
    let (cfg, path) = &layout.nodes[i];
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.root.join(format!("node-{}.log", cfg.node.id)))?;
    Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(path)
        .env(
            "RUST_LOG",
            std::env::var("WRAFT_BENCH_NODE_LOG").unwrap_or_else(|_| "info,quinn=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start {} node: {e}", exe.display()).into())
}

/// Children killed on drop (also on error).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Completion time of each acknowledged put, and the errors.
#[derive(Default)]
struct Seen {
    acked: Vec<Instant>,
    errors: u64,
    first_errors: Vec<String>,
}

/// Run the rolling restart on the cluster laid out in `layout`; returns the JSON report.
pub(super) async fn run(
    args: &BenchArgs,
    layout: &LocalLayout,
    module: Vec<u8>,
) -> Result<serde_json::Value, AnyError> {
    let exe = std::env::current_exe()?;
    let mut children = Children(
        (0..layout.nodes.len())
            .map(|i| spawn_node(&exe, layout, i))
            .collect::<Result<_, _>>()?,
    );
    let opts = ClientOptions::from_cert_dir(layout.endpoints(), &layout.certs, "admin")?;
    let admin = Client::connect(opts.clone()).await?;
    let mut probe = Cluster::Processes(Vec::new());
    let (_, leader_addr) =
        wait_for_leader(&admin, layout, &mut probe, Duration::from_secs(30)).await?;
    admin.deploy("kv", module).await?;
    wait_for_machine_everywhere(&admin, layout, leader_addr, "kv", Duration::from_secs(120))
        .await?;

    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (seen, stop) = (seen.clone(), stop.clone());
        let c = Client::connect(opts.clone()).await?;
        let value = "v".repeat(args.value_bytes);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let cmd = format!(r#"{{"op":"put","key":"r{n}","value":"{value}"}}"#);
                let r = c.propose("kv", cmd.as_bytes()).await;
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(_) => {
                        s.acked.push(Instant::now());
                        n += 1;
                    }
                    Err(e) => {
                        s.errors += 1;
                        if s.first_errors.len() < ERRORS_KEPT_MAX {
                            s.first_errors.push(e.to_string());
                        }
                    }
                }
            }
        })
    };
    eprintln!(
        "rolling restart: {} s of writes first, then each node in turn…",
        args.warmup_secs
    );
    tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;

    let leader = admin.status_of(Some(leader_addr)).await?.leader;
    let mut order: Vec<usize> = (0..layout.nodes.len()).collect();
    order.sort_by_key(|i| Some(layout.nodes[*i].0.node.id) == leader);
    let t0 = Instant::now();
    let mut steps = Vec::new();
    let mut step_starts = Vec::new();
    for i in order {
        let (cfg, _) = &layout.nodes[i];
        let (id, addr) = (cfg.node.id, cfg.node.listen);
        let was_leader = admin.status_of(Some(addr)).await?.role == "leader";
        let sent = Instant::now();
        step_starts.push(sent);
        signal_term(children.0[i].id())?;
        let bound = Duration::from_millis(cfg.node.shutdown_timeout_ms + 10_000);
        let status = loop {
            if let Some(s) = children.0[i].try_wait()? {
                break s;
            }
            if sent.elapsed() > bound {
                return Err(
                    format!("node {id} did not exit within {} ms", bound.as_millis()).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let stop_ms = sent.elapsed().as_secs_f64() * 1e3;
        children.0[i] = spawn_node(&exe, layout, i)?;
        // Caught up: applied what the cluster had committed when it came back.
        let target = loop {
            if let Ok(s) = admin.status().await
                && s.leader.is_some()
            {
                break s.commit_index;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            if let Ok(s) = admin.status_of(Some(addr)).await
                && s.applied_index >= target
            {
                break;
            }
            if sent.elapsed() > Duration::from_secs(120) {
                return Err(format!("node {id} did not catch up within 120 s").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let back_ms = sent.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "  node {id}{}: exit {status} after {stop_ms:.0} ms, caught up {back_ms:.0} ms after the signal",
            if was_leader { " (leader)" } else { "" }
        );
        steps.push(serde_json::json!({
            "node": id, "was_leader": was_leader, "exit_code": status.code(),
            "stop_ms": stop_ms.round(), "caught_up_ms": back_ms.round(),
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
    drop(children);

    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    let acked: Vec<Instant> = s
        .acked
        .iter()
        .copied()
        .filter(|t| *t >= t0 && *t <= t1)
        .collect();
    let mut marks = vec![t0];
    marks.extend(&acked);
    marks.push(t1);
    let gaps: Vec<f64> = marks
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect();
    let longest = gaps.iter().copied().fold(0.0, f64::max);
    // Each step's own longest gap (gaps ending within it), to tell a follower's restart from
    // the leader's.
    for (k, step) in steps.iter_mut().enumerate() {
        let from = step_starts[k];
        let to = step_starts.get(k + 1).copied().unwrap_or(t1);
        let g = marks
            .windows(2)
            .filter(|w| w[1] > from && w[1] <= to)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .fold(0.0, f64::max);
        step["longest_gap_ms"] = ((g * 10.0).round() / 10.0).into();
    }
    let stalled: f64 = gaps.iter().filter(|g| **g > STALL_MS).sum();
    let window_ms = (t1 - t0).as_secs_f64() * 1e3;
    eprintln!(
        "rolling restart: {} puts in {window_ms:.0} ms; longest gap {longest:.1} ms, stalled \
         {stalled:.1} ms (gaps > {STALL_MS} ms), {} client errors{}",
        acked.len(),
        s.errors,
        s.first_errors
            .first()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(serde_json::json!({
        "system": "wraft",
        "workload": "rolling-restart",
        "version": env!("CARGO_PKG_VERSION"),
        "nodes": layout.nodes.len(),
        "value_bytes": args.value_bytes,
        "window_ms": window_ms.round(),
        "puts": acked.len(),
        "longest_gap_ms": (longest * 10.0).round() / 10.0,
        "stalled_ms": (stalled * 10.0).round() / 10.0,
        "stall_threshold_ms": STALL_MS,
        "errors": s.errors,
        "first_errors": s.first_errors,
        "steps": steps,
        "load1": load_average()[0],
    }))
}

/// SIGTERM, as `systemctl stop` sends it.
fn signal_term(pid: u32) -> Result<(), AnyError> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -TERM {pid} failed ({status})").into())
    }
}
