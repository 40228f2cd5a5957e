//! `wraft bench`: a closed-loop load generator against a local cluster, and
//! the machine figures every storage number must sit next to.
//!
//! One run:
//! 1. measures the disk (`fdatasync` after a small append, and after an
//!    in-place overwrite of a preallocated file — what a group-commit log and
//!    etcd's preallocated WAL pay per batch — each alone and from one thread
//!    per node at once) and the loopback UDP round trip;
//! 2. lays out an `n`-node cluster in a temp dir ([`crate::local::layout`]),
//!    starts it either as `wraft node` child processes (`--processes`, the
//!    headline setup: nodes and load generator do not share a tokio runtime)
//!    or in this process, waits for a leader and deploys the kv machine;
//! 3. measures one client round trip to the leader (a `status` request over
//!    the benchmark's QUIC connection: no disk, no consensus);
//! 4. runs `clients` closed-loop workers, sharing `conns` client connections,
//!    for `warmup_secs` unmeasured and `secs` measured, issuing kv puts
//!    (256-byte values and the key pattern of the etcd kit in
//!    `shared/bench/etcd`) or linearizable gets;
//! 5. prints a human table on stderr and one JSON line on stdout.
//!
//! Cost: the run itself (`warmup_secs + secs`), plus cluster start and a kv
//! build when no `--module` is given. Everything it starts is stopped and its
//! temp dir removed on return, also on error.

use std::io::{Read as _, Write as _};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

use crate::local::{self, LocalLayout};

mod cluster;
mod floors;
mod rolling;
mod workload;

use cluster::*;
pub use floors::*;
use workload::get_query;
pub use workload::{KvCodec, put_command, put_key};
use wraft_client::{Client, ClientError, ClientOptions};
use wraft_config::FsyncPolicy;
use wraft_node::Node;
use wraft_proto::Consistency;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Largest latency the histograms record, microseconds (60 s); slower
/// operations are clamped to it.
pub const LATENCY_US_MAX: u64 = 60_000_000;
// Workers keep latencies as `u32` microseconds.
const _: () = assert!(LATENCY_US_MAX <= u32::MAX as u64);

/// Most keys the read benchmark pre-populates and reads back.
pub const READ_KEYS_MAX: u64 = 1_000_000;

/// The idle time between the samples of a paced probe: about what each thread on a put's path
/// waits between its turns at one client (a put there takes about half a millisecond).
pub const PACED_PROBE_GAP: Duration = Duration::from_micros(400);

/// Flags of `wraft bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrent closed-loop workers (each has one request in flight).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Client QUIC connections the workers share (worker i uses connection i mod M).
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Unmeasured load before the measurement, seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Measured windows on the same cluster: each is `--warmup-secs` of load then `--secs`
    /// measured, one after the other (with `--rounds-on-stdin`, the cluster sits idle between
    /// them until the next line). With more than one, each round's result is also printed as a
    /// JSON line of its own as it ends; the last line sums them all.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Start each round only when a line arrives on standard input (it ends early at end of
    /// input). For a harness that takes turns with another system's load against a cluster
    /// that stays up, so that both are measured on the same minutes of a shared machine.
    #[arg(long)]
    pub rounds_on_stdin: bool,
    /// Size of each put's value, bytes (256 matches the etcd kit).
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Issue linearizable gets (of pre-written keys) instead of puts.
    #[arg(long)]
    pub reads: bool,
    /// How the puts and gets are encoded: `json`, as typed at the CLI (every series before l
    /// used it), or `postcard`, the kv machine's binary form, as a program would send them.
    #[arg(long, value_enum, default_value_t = KvCodec::Json)]
    pub codec: KvCodec,
    /// Keys written before a read run and read back uniformly at random.
    #[arg(long, default_value_t = 1000)]
    pub read_keys: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Run the nodes as `wraft node` child processes (recommended for headline figures).
    #[arg(long)]
    pub processes: bool,
    /// NOT DURABLE: acknowledge writes without fdatasync. Labelled in the output.
    #[arg(long)]
    pub relaxed_fsync: bool,
    /// The kv component to deploy (default: build examples/kv from the current directory).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Where to create the cluster's temp dir (default: the system temp dir). The
    /// fdatasync probe runs in the same place.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Serial fdatasyncs in the disk probe (at least 200).
    #[arg(long, default_value_t = 400)]
    pub fsync_samples: usize,
    /// Keep the cluster's directory (logs, data) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Instead of a throughput run: one client putting in a closed loop while every node is
    /// restarted in turn with SIGTERM (followers first, the leader last, each caught up before
    /// the next); reports the longest write gap, the time writes stalled and the client's
    /// errors. Runs the nodes as processes; `--warmup-secs` of writes come first.
    #[arg(long)]
    pub rolling_restart: bool,
}

impl BenchArgs {
    /// Async worker threads for the load generator's own runtime, when the nodes run as
    /// processes: one per client connection, at most one per CPU. A connection's packets are
    /// handled by one connection task (behind quinn's endpoint task), so for few connections
    /// extra workers mostly sit idle and get woken by every packet: a bare quinn round trip
    /// measured 0.17–0.22 ms with two workers against 0.11 ms with one, on 2 cores
    /// (BENCHMARKS.md, series h). `None` (in-process nodes):
    /// the nodes share the load generator's runtime, which keeps one worker per CPU.
    pub fn client_worker_threads(&self) -> Option<usize> {
        (self.processes || self.rolling_restart)
            .then(|| self.conns.min(self.clients).clamp(1, local::cpus()))
    }
}

/// What one worker saw in the measured window.
struct WorkerResult {
    /// Each measured operation's latency, microseconds, in the order they ended. Raw samples,
    /// not a histogram: recording into one of 256 per-worker histograms (139 KiB each at these
    /// bounds) cost the load generator about 8 % of its CPU, counted in every CPU-per-put
    /// figure; the histogram is built after the measured window.
    latency_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// The closed loop: one request in flight per worker until `end`; only
/// operations that start at or after `measure_from` are recorded.
#[allow(clippy::too_many_arguments)]
async fn worker(
    i: usize,
    client: Arc<Client>,
    codec: KvCodec,
    reads: bool,
    read_keys: u64,
    value: Arc<str>,
    measure_from: Instant,
    end: Instant,
) -> WorkerResult {
    let mut res = WorkerResult {
        latency_us: Vec::with_capacity(4096),
        errors: 0,
        first_error: None,
    };
    let mut n = 0u64;
    let mut rng = fastrand::Rng::with_seed(i as u64);
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        let outcome: Result<(), ClientError> = if reads {
            let key = format!("k{:07}", rng.u64(0..read_keys.max(1)));
            let q = get_query(codec, &key);
            client
                .query("kv", &q, Consistency::Linearizable)
                .await
                .map(|_| ())
        } else {
            let cmd = put_command(codec, &put_key(i, n), &value);
            client.propose("kv", &cmd).await.map(|_| ())
        };
        n += 1;
        if t >= measure_from {
            match outcome {
                Ok(()) => {
                    if Instant::now() <= end {
                        let us = t.elapsed().as_micros().clamp(1, LATENCY_US_MAX as u128);
                        res.latency_us.push(us as u32);
                    }
                }
                Err(e) => {
                    res.errors += 1;
                    res.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    res
}

/// Run `wraft bench` with `args`; prints a table on stderr and one JSON line
/// on stdout. Fails if the cluster cannot start, has no leader, or refuses
/// the kv deploy.
pub async fn run(args: BenchArgs) -> Result<(), AnyError> {
    if args.clients == 0 || args.conns == 0 || args.nodes == 0 || args.secs == 0 || args.rounds == 0
    {
        return Err("--clients, --conns, --nodes, --secs and --rounds must be at least 1".into());
    }
    if args.reads && !(1..=READ_KEYS_MAX).contains(&args.read_keys) {
        return Err(format!("--read-keys must be 1..={READ_KEYS_MAX}").into());
    }
    let conns = args.conns.min(args.clients);
    let module = kv_module(args.module.as_deref())?;
    let mut builder = tempfile::Builder::new();
    builder.prefix("wraft-bench-");
    let tmp = match &args.dir {
        Some(d) => builder.tempdir_in(d)?,
        None => builder.tempdir()?,
    };
    let root = tmp.path().to_owned();
    let load_before = load_average();
    if args.rolling_restart {
        let relaxed = args.relaxed_fsync;
        let layout = local::layout(&root, args.nodes, |cfg| {
            if relaxed {
                cfg.storage.fsync = FsyncPolicy::Relaxed;
            }
        })?;
        let report = rolling::run(&args, &layout, module).await;
        if args.keep {
            eprintln!("kept {}", tmp.keep().display());
        }
        println!("{}", report?);
        return Ok(());
    }

    eprintln!(
        "measuring the disk ({} serial fdatasyncs ×4 in {}) and loopback…",
        args.fsync_samples.max(200),
        root.display()
    );
    let (fsync_append, fsync_overwrite) = {
        let r = root.clone();
        let n = args.fsync_samples.max(200);
        tokio::task::spawn_blocking(move || fsync_probe(&r, n)).await??
    };
    // One thread per node at once, appending and then overwriting preallocated space.
    let (fsync_concurrent, fsync_concurrent_overwrite) = {
        let (r, n, k) = (
            root.clone(),
            args.fsync_samples.max(200),
            args.nodes as usize,
        );
        tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((
                fsync_concurrent_probe(&r, k, n, false)?,
                fsync_concurrent_probe(&r, k, n, true)?,
            ))
        })
        .await??
    };
    let udp = tokio::task::spawn_blocking(|| udp_rtt_probe(2000)).await??;
    let handoff = tokio::task::spawn_blocking(|| handoff_rtt_probe(2000, Duration::ZERO)).await??;
    let handoff_paced =
        tokio::task::spawn_blocking(|| handoff_rtt_probe(1000, PACED_PROBE_GAP)).await??;

    let relaxed = args.relaxed_fsync;
    let layout = local::layout(&root, args.nodes, |cfg| {
        if relaxed {
            cfg.storage.fsync = FsyncPolicy::Relaxed;
        }
    })?;
    eprintln!(
        "starting {} nodes ({}) in {}…",
        args.nodes,
        if args.processes {
            "processes"
        } else {
            "in-process"
        },
        root.display()
    );
    let mut cluster = Cluster::start(&layout, args.processes).await?;
    let result = drive(&args, conns, &layout, &mut cluster, module).await;
    cluster.stop().await;
    if args.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    let r = result?;
    let load_after = load_average();

    let ops_per_s = r.latency.count as f64 / (args.secs * r.rounds as u64) as f64;
    let json = serde_json::json!({
        "system": "wraft",
        "workload": if args.reads { "linearizable-get" } else { "put" },
        "codec": match args.codec {
            KvCodec::Json => "json",
            KvCodec::Postcard => "postcard",
        },
        "durable": !args.relaxed_fsync,
        "nodes": args.nodes,
        "processes": args.processes,
        "client_worker_threads": tokio::runtime::Handle::current().metrics().num_workers(),
        "clients": args.clients,
        "conns": conns,
        "value_bytes": args.value_bytes,
        "secs": args.secs,
        "rounds": r.rounds,
        "ops": r.latency.count,
        "ops_per_s": ops_per_s.round(),
        "p50_ms": r.latency.p50_ms,
        "p99_ms": r.latency.p99_ms,
        "p999_ms": r.latency.p999_ms,
        "max_ms": r.latency.max_ms,
        "errors": r.errors,
        "first_error": r.first_error,
        "leader_changed": r.leader_changed,
        "fsync_append_p50_ms": fsync_append.p50_ms,
        "fsync_append_per_s": fsync_append.serial_rate_per_s().round(),
        "fsync_overwrite_p50_ms": fsync_overwrite.p50_ms,
        "fsync_overwrite_per_s": fsync_overwrite.serial_rate_per_s().round(),
        "fsync_concurrent_p50_ms": fsync_concurrent.p50_ms,
        "fsync_concurrent_overwrite_p50_ms": fsync_concurrent_overwrite.p50_ms,
        "fsync_concurrent_threads": args.nodes,
        "udp_rtt_p50_ms": udp.p50_ms,
        "handoff_rtt_p50_ms": handoff.p50_ms,
        "handoff_rtt_paced_p50_ms": handoff_paced.p50_ms,
        "request_rtt_paced_p50_ms": r.request_rtt_paced.p50_ms,
        "request_rtt_p50_ms": r.request_rtt.p50_ms,
        "load1_before": load_before[0],
        "load1_after": load_after[0],
    });
    eprintln!();
    eprintln!(
        "wraft bench: {} ({:?}) {}, {} nodes ({}), {} clients / {} conns, {} B values, {} s{}",
        if args.reads {
            "linearizable gets"
        } else {
            "puts"
        },
        args.codec,
        if args.relaxed_fsync {
            "WITHOUT FSYNC (not durable)"
        } else {
            "fsync on"
        },
        args.nodes,
        if args.processes {
            "processes"
        } else {
            "in-process"
        },
        args.clients,
        conns,
        args.value_bytes,
        args.secs,
        if r.leader_changed {
            " — LEADER CHANGED DURING THE RUN"
        } else {
            ""
        },
    );
    eprintln!(
        "  {:<34} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let row = |name: &str, rate: f64, p: &Percentiles| {
        eprintln!(
            "  {:<34} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            name, rate, p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms
        )
    };
    row("load", ops_per_s, &r.latency);
    row(
        "fdatasync, 4 KiB append (serial)",
        fsync_append.serial_rate_per_s(),
        &fsync_append,
    );
    row(
        "fdatasync, 4 KiB overwrite (serial)",
        fsync_overwrite.serial_rate_per_s(),
        &fsync_overwrite,
    );
    row(
        &format!("fdatasync, append, {} concurrent", args.nodes),
        fsync_concurrent.serial_rate_per_s() * args.nodes as f64,
        &fsync_concurrent,
    );
    row(
        &format!("fdatasync, overwrite, {} concurrent", args.nodes),
        fsync_concurrent_overwrite.serial_rate_per_s() * args.nodes as f64,
        &fsync_concurrent_overwrite,
    );
    row("loopback UDP round trip", udp.serial_rate_per_s(), &udp);
    row(
        "hand-off to a thread and back",
        handoff.serial_rate_per_s(),
        &handoff,
    );
    row(
        "  the same, paced (idle between)",
        handoff_paced.serial_rate_per_s(),
        &handoff_paced,
    );
    row(
        "client→leader status round trip",
        r.request_rtt.serial_rate_per_s(),
        &r.request_rtt,
    );
    row(
        "  the same, paced (idle between)",
        r.request_rtt_paced.serial_rate_per_s(),
        &r.request_rtt_paced,
    );
    eprintln!(
        "  errors {}{}; load average {:.2} before, {:.2} after",
        r.errors,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        load_before[0],
        load_after[0]
    );
    println!("{json}");
    std::io::stdout().flush()?;
    Ok(())
}

struct DriveResult {
    /// Rounds measured (fewer than asked if standard input ended first).
    rounds: usize,
    latency: Percentiles,
    errors: u64,
    first_error: Option<String>,
    leader_changed: bool,
    request_rtt: Percentiles,
    request_rtt_paced: Percentiles,
}

/// 500 serial `status` round trips to the leader, with `gap` of idle after each (zero: back to
/// back).
async fn status_round_trips(
    admin: &Client,
    leader: std::net::SocketAddr,
    gap: Duration,
) -> Result<Histogram<u64>, AnyError> {
    let mut h = histogram();
    for _ in 0..500 {
        let t = Instant::now();
        admin.status_of(Some(leader)).await?;
        record(&mut h, t.elapsed());
        if !gap.is_zero() {
            // Blocking on purpose, before the load starts: `drive` runs on the `block_on`
            // thread, not on a worker that in-process nodes share, and Tokio's timer would
            // stretch 400 µs to a millisecond.
            std::thread::sleep(gap);
        }
    }
    Ok(h)
}

/// What one measured window gave.
struct RoundResult {
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Wait for a line on standard input before round `round`; false at end of input.
async fn next_line_on_stdin(round: usize) -> Result<bool, AnyError> {
    eprintln!("round {round}: waiting for a line on standard input…");
    let got = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| n > 0)
    })
    .await??;
    Ok(got)
}

/// One window: every worker for `--warmup-secs` unmeasured, then `--secs` measured.
async fn measure_round(
    args: &BenchArgs,
    clients: &[Arc<Client>],
    value: Arc<str>,
) -> Result<RoundResult, AnyError> {
    eprintln!(
        "running {} workers: {} s warm-up, {} s measured…",
        args.clients, args.warmup_secs, args.secs
    );
    let measure_from = Instant::now() + Duration::from_secs(args.warmup_secs);
    let end = measure_from + Duration::from_secs(args.secs);
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(worker(
                i,
                clients[i % clients.len()].clone(),
                args.codec,
                args.reads,
                args.read_keys,
                value.clone(),
                measure_from,
                end,
            ))
        })
        .collect();
    let mut round = RoundResult {
        latency: histogram(),
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        let r = t.await?;
        for us in r.latency_us {
            round.latency.saturating_record(u64::from(us));
        }
        round.errors += r.errors;
        if round.first_error.is_none() {
            round.first_error = r.first_error;
        }
    }
    Ok(round)
}

async fn drive(
    args: &BenchArgs,
    conns: usize,
    layout: &LocalLayout,
    cluster: &mut Cluster,
    module: Vec<u8>,
) -> Result<DriveResult, AnyError> {
    let mut opts = ClientOptions::from_cert_dir(layout.endpoints(), &layout.certs, "admin")?;
    let admin = Client::connect(opts.clone()).await?;
    let (leader, leader_addr) =
        wait_for_leader(&admin, layout, cluster, Duration::from_secs(20)).await?;
    // Workers start at the leader (they would be redirected there anyway).
    let leader_peer = wraft_client::PeerAddr::from(leader_addr);
    opts.endpoints.retain(|a| *a != leader_peer);
    opts.endpoints.insert(0, leader_peer);
    let term_before = admin.status_of(Some(leader_addr)).await?.term;
    eprintln!("node {leader} ({leader_addr}) leads term {term_before}; deploying kv…");
    admin.deploy("kv", module).await?;
    // Every node compiles the module when it applies the deploy; wait for all
    // of them, or the compile (seconds of CPU) would land in the measurement.
    wait_for_machine_everywhere(&admin, layout, leader_addr, "kv", Duration::from_secs(120))
        .await?;

    // One client round trip with no disk or consensus on the path: back to back, then with
    // every process idle between samples, as at one client (see `handoff_rtt_probe`).
    let rtt = status_round_trips(&admin, leader_addr, Duration::ZERO).await?;
    let rtt_paced = status_round_trips(&admin, leader_addr, PACED_PROBE_GAP).await?;

    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let c = Arc::new(Client::connect(opts.clone()).await?);
        // Connect now (handshake + leader discovery) rather than in the warm-up.
        c.status().await?;
        clients.push(c);
    }
    if args.reads {
        eprintln!("writing {} keys to read back…", args.read_keys);
        let value = "v".repeat(args.value_bytes);
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..conns.min(64) {
            let c = clients[w % conns].clone();
            let (value, keys, step) = (value.clone(), args.read_keys, conns.min(64) as u64);
            tasks.spawn(async move {
                let mut k = w as u64;
                while k < keys {
                    let cmd = format!(r#"{{"op":"put","key":"k{k:07}","value":"{value}"}}"#);
                    c.propose("kv", cmd.as_bytes()).await?;
                    k += step;
                }
                Ok::<(), ClientError>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    }

    let value: Arc<str> = "v".repeat(args.value_bytes).into();
    let mut all = histogram();
    let mut errors = 0;
    let mut first_error = None;
    let mut rounds = 0;
    while rounds < args.rounds {
        if args.rounds_on_stdin && !next_line_on_stdin(rounds + 1).await? {
            eprintln!("standard input ended: stopping after {rounds} rounds");
            break;
        }
        let round = measure_round(args, &clients, value.clone()).await?;
        cluster.check_alive()?;
        rounds += 1;
        errors += round.errors;
        if first_error.is_none() {
            first_error = round.first_error;
        }
        all.add(&round.latency)
            .map_err(|e| format!("merging a round's latencies: {e}"))?;
        if args.rounds > 1 {
            let p = Percentiles::of(&round.latency);
            println!(
                "{}",
                serde_json::json!({
                    "system": "wraft",
                    "round": rounds,
                    "ops": p.count,
                    "ops_per_s": (p.count as f64 / args.secs as f64).round(),
                    "p50_ms": p.p50_ms,
                    "p99_ms": p.p99_ms,
                    "p999_ms": p.p999_ms,
                    "errors": round.errors,
                })
            );
        }
    }
    if rounds == 0 {
        return Err("standard input ended before the first round".into());
    }
    let after = admin.status_of(Some(leader_addr)).await?;
    Ok(DriveResult {
        rounds,
        latency: Percentiles::of(&all),
        errors,
        first_error,
        leader_changed: after.term != term_before || after.role != "leader",
        request_rtt: Percentiles::of(&rtt),
        request_rtt_paced: Percentiles::of(&rtt_paced),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// `wraft bench`'s flags as the binary parses them.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    impl BenchArgs {
        fn parse_from<'a>(argv: impl IntoIterator<Item = &'a str>) -> BenchArgs {
            Cli::parse_from(argv).args
        }
    }

    #[test]
    fn the_binary_put_and_get_are_the_kv_machines_bytes() {
        // The same bytes as `a_binary_put_is_these_bytes` in examples/kv.
        let mut want = vec![0, 0, 2, b'k', b'1', 0xc8, 0x01];
        want.extend(std::iter::repeat_n(b'v', 200));
        want.push(0);
        assert_eq!(put_command(KvCodec::Postcard, "k1", &"v".repeat(200)), want);
        assert_eq!(get_query(KvCodec::Postcard, "k1"), [0, 0, 2, b'k', b'1']);
        // And what the kv machine's own binary types encode to.
        use wraft_example_kv::{Command, Query};
        let kv_put = Command::Put {
            key: "k1".into(),
            value: "v".repeat(200),
            prev_kv: false,
        };
        let kv_get = Query::Get { key: "k1".into() };
        assert_eq!(
            put_command(KvCodec::Postcard, "k1", &"v".repeat(200)),
            wraft_guest::JsonOrPostcard::encode_binary(&kv_put).unwrap()
        );
        assert_eq!(
            get_query(KvCodec::Postcard, "k1"),
            wraft_guest::JsonOrPostcard::encode_binary(&kv_get).unwrap()
        );
        assert_eq!(
            put_command(KvCodec::Json, "k1", "v"),
            br#"{"op":"put","key":"k1","value":"v","prev_kv":false}"#
        );
        assert_eq!(
            get_query(KvCodec::Json, "k1"),
            br#"{"op":"get","key":"k1"}"#
        );
    }

    #[test]
    fn put_keys_follow_the_etcd_kit_pattern() {
        assert_eq!(put_key(0, 0), "k0000000");
        assert_eq!(put_key(1, 2), "k1000005");
        assert_eq!(put_key(10, 0), "k0000030");
    }

    #[test]
    fn percentiles_report_milliseconds_from_microsecond_samples() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap_or_default();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.p99_ms - 9.9).abs() < 0.02, "{p:?}");
        assert!((p.max_ms - 10.0).abs() < 0.01, "{p:?}");
        assert!((p.serial_rate_per_s() - 200.0).abs() < 1.0);
    }

    #[test]
    fn fsync_probe_measures_both_patterns() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (append, overwrite) =
            fsync_probe(dir.path(), 5).unwrap_or_else(|e| panic!("probe: {e}"));
        assert_eq!(append.count, 5);
        assert_eq!(overwrite.count, 5);
        assert!(append.p50_ms > 0.0 && overwrite.p50_ms > 0.0);
    }

    #[test]
    fn handoff_probe_times_every_round_trip_and_not_the_gap() {
        let p = handoff_rtt_probe(50, Duration::ZERO).unwrap_or_else(|e| panic!("probe: {e}"));
        assert_eq!(p.count, 50);
        // Paced: the idle time passes between samples and is not part of any of them.
        let gap = Duration::from_millis(5);
        let t = Instant::now();
        let p = handoff_rtt_probe(10, gap).unwrap_or_else(|e| panic!("probe: {e}"));
        assert_eq!(p.count, 10);
        assert!(t.elapsed() >= gap * 10, "the gap was not kept");
        assert!(
            p.p50_ms < gap.as_secs_f64() * 1000.0,
            "the gap was timed: p50 {} ms",
            p.p50_ms
        );
    }

    /// The bench calls the probe from a runtime; it must not nest one in it.
    #[tokio::test]
    async fn handoff_probe_runs_from_inside_a_runtime() {
        let p = handoff_rtt_probe(5, Duration::ZERO).unwrap_or_else(|e| panic!("probe: {e}"));
        assert_eq!(p.count, 5);
    }

    #[test]
    fn concurrent_fsync_probe_counts_every_thread_in_both_patterns() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        for overwrite in [false, true] {
            let p = fsync_concurrent_probe(dir.path(), 3, 4, overwrite)
                .unwrap_or_else(|e| panic!("probe: {e}"));
            assert_eq!(p.count, 12, "overwrite {overwrite}");
            assert!(p.p50_ms > 0.0);
        }
    }

    #[test]
    fn the_load_generator_gets_a_worker_per_connection_only_beside_node_processes() {
        let mut args = BenchArgs::parse_from(["bench", "--clients", "1", "--conns", "1"]);
        assert_eq!(args.client_worker_threads(), None);
        args.processes = true;
        assert_eq!(args.client_worker_threads(), Some(1));
        args.clients = 256;
        args.conns = 16;
        assert_eq!(args.client_worker_threads(), Some(local::cpus().min(16)));
    }
}
