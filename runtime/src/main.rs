//! The `wraft` command line: run nodes, manage certificates, deploy and talk
//! to machines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wraft_client::{Client, ClientOptions};
use wraft_proto::Consistency;

#[derive(Parser)]
#[command(
    name = "wraft",
    version,
    about = "Raft over QUIC running WebAssembly state machines",
    long_about = "Raft over QUIC running WebAssembly state machines.\n\n\
        Try `wraft demo` for a local 3-node cluster running the example kv machine.\n\
        Operators: `wraft cert` then `wraft node --config FILE` on each node.\n\
        Everyone else: `wraft deploy`, `wraft propose`, `wraft query`, `wraft status`."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How to reach a cluster (for every command that talks to one).
#[derive(Args, Clone)]
struct Conn {
    /// Node addresses (any member redirects to the leader), comma-separated: `IP:PORT` or
    /// `DNS-NAME:PORT`.
    #[arg(long, env = "WRAFT_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<wraft_client::PeerAddr>,
    /// Directory written by `wraft cert` (holds ca.crt and client-<name>.crt/.key).
    #[arg(long, env = "WRAFT_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Which client certificate to present.
    #[arg(long, env = "WRAFT_CLIENT", default_value = "admin")]
    client: String,
}

/// `wraft node --log-format`.
#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines; ANSI colour only when stderr is a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    /// Quorum-confirmed (ReadIndex): sees every write acknowledged before it.
    Linearizable,
    /// Leader lease: no quorum round trip; safe within the configured clock-drift bound.
    Lease,
    /// Whatever the contacted node has applied: fastest, possibly stale.
    Stale,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a cluster CA and node/client certificates (and rotate the CA).
    ///
    /// CA rotation with overlapping trust (nodes reload on file change or SIGHUP):
    ///
    /// 1. `wraft cert --dir ca2 --nodes --clients` creates a new CA in ca2/.
    ///
    /// 2. `wraft cert --dir certs --trust certs/ca.crt,ca2/ca.crt` makes nodes trust both
    ///    (copy the bundle to each node).
    ///
    /// 3. `wraft cert --dir certs --ca-dir ca2 --nodes 1 --clients` re-issues node 1 from the
    ///    new CA; node by node, then the clients.
    ///
    /// 4. `wraft cert --dir certs --trust ca2/ca.crt` drops the old CA; from then on issue
    ///    with `--ca-dir ca2` (or copy ca2/ca.key over certs/ca.key).
    Cert {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Node ids to issue certificates for, comma-separated; default 1,2,3 (none with
        /// --trust); `--nodes` alone: none.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        nodes: Option<Vec<u64>>,
        /// Client names to issue certificates for, comma-separated; default admin (none with
        /// --trust); `--clients` alone: none.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        clients: Option<Vec<String>>,
        /// Issue from the CA in this directory (ca.crt + ca.key; generated there if absent)
        /// instead of the one in --dir. --dir/ca.crt, the trust bundle nodes load, is left
        /// as it is (created from this CA if missing). The re-issuing step of a CA rotation.
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// Replace --dir/ca.crt with the bundle of these CA certificate files
        /// (comma-separated PEM files), before issuing anything: nodes and clients trust
        /// every CA in ca.crt. With no --nodes/--clients given, only the bundle is written.
        #[arg(long, value_delimiter = ',', value_name = "FILES")]
        trust: Vec<PathBuf>,
        /// Validity of issued certificates, days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Work with node configuration files.
    Config {
        #[command(subcommand)]
        op: ConfigOp,
    },
    /// Run a node.
    Node {
        /// The node's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Override a config key, e.g. `--set raft.heartbeat_interval_ms=30` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Log format on stderr: `text` (coloured only on a terminal) or `json` (one object per
        /// line, for log shippers). Overrides `node.log_format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Create a machine project (a key/value starter with tests) from a built-in template.
    New {
        /// Machine and package name: lower-case letters, digits, '-' or '_'.
        name: String,
        /// The project's language.
        #[arg(long, default_value = "rust")]
        lang: wraft::templates::Language,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The wraft-guest SDK directory a Rust project depends on (default: $WRAFT_SDK_PATH,
        /// else the checkout this wraft was built from).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
        /// JS and Python: do not install the componentization toolchain into the project
        /// (`npm install`, or a `.venv` with componentize-py); `wraft build` then says what to
        /// install.
        #[arg(long)]
        no_install: bool,
    },
    /// Build a machine project into a component and check it as the cluster will at deploy.
    Build {
        /// The project's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Where to write the component (default: PATH/target/wraft/NAME.wasm).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// cargo's --target-dir (Rust projects).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Build, run a local cluster with the machine deployed, and upgrade it on every change.
    Dev {
        /// The project's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Deploy under this name (default: the machine's own name).
        #[arg(long)]
        name: Option<String>,
        /// Nodes in the local cluster.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// cargo's --target-dir (Rust projects).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Deploy (or upgrade, carrying state across) a machine from a .wasm component.
    Deploy {
        /// Machine name.
        name: String,
        /// The component file.
        file: PathBuf,
        /// WASI the machine may import: `none`, or `deterministic` (clocks from the log
        /// entry, randomness seeded by its index, no files/env/sockets; Python guests).
        #[arg(long, default_value = "none")]
        wasi: wraft_host::WasiProfile,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a machine and its state.
    Undeploy {
        /// Machine name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List deployed machines.
    Machines {
        #[command(flatten)]
        conn: Conn,
    },
    /// Apply a command to a machine through the log and print its output.
    Propose {
        /// Machine name.
        name: String,
        /// The command: JSON for SDK guests (e.g. '{"op":"put","key":"a","value":"1"}').
        command: String,
        /// Treat COMMAND as hex-encoded raw bytes.
        #[arg(long)]
        hex: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask a machine a read-only question.
    Query {
        /// Machine name.
        name: String,
        /// The request (JSON for SDK guests).
        request: String,
        /// Freshness required.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
        /// Treat REQUEST as hex-encoded raw bytes.
        #[arg(long)]
        hex: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show role, term, leader, indexes, members and machines.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Ask every endpoint, not only the first that answers; fail if any does not answer.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change membership.
    Members {
        #[command(subcommand)]
        op: MembersOp,
    },
    /// Leadership.
    Leader {
        #[command(subcommand)]
        op: LeaderOp,
    },
    /// Node snapshots: list, inspect a file, trigger one.
    Snapshot {
        #[command(subcommand)]
        op: SnapshotOp,
    },
    /// Seed a new node's data directory from a saved snapshot, offline, before its first start
    /// (run on every member of the new cluster with the same FILE and --members).
    Restore {
        /// The snapshot file (`wraft snapshot save`, or a node's own `.snap`).
        file: PathBuf,
        /// The new node's data directory: must be absent or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id (one of --members).
        #[arg(long)]
        node_id: u64,
        /// Every voter of the new cluster: ID=HOST:PORT, comma-separated.
        #[arg(long, value_delimiter = ',', required = true, value_parser = wraft::backup::parse_member)]
        members: Vec<(u64, wraft_proto::PeerAddr)>,
    },
    /// After losing a quorum for good: show a stopped node's data, or force it to be the only
    /// voter of a new cluster from its own log (`--force-new-cluster`).
    Recover {
        /// The node's TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Override a config key (as for `wraft node`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Make this node the only voter of a new cluster, keeping and committing its whole
        /// log; writes it does not hold are lost. Needs the confirmation flag.
        #[arg(long)]
        force_new_cluster: bool,
        /// Confirm --force-new-cluster.
        #[arg(long = "yes-i-know-writes-missing-here-are-lost")]
        confirmed: bool,
    },
    /// Start a local 3-node cluster, deploy the kv example and walk through it.
    Demo {
        /// Run the walkthrough and exit instead of serving afterwards.
        #[arg(long)]
        once: bool,
        /// The kv component to deploy (default: build examples/kv).
        #[arg(long)]
        module: Option<PathBuf>,
    },
    /// Benchmark a local cluster: closed-loop kv puts or linearizable gets, next to the disk's fdatasync rate.
    Bench(wraft::bench::BenchArgs),
}

#[derive(Subcommand)]
enum ConfigOp {
    /// Validate a node's config without starting it: syntax and unknown keys, every limit,
    /// addresses, the certificate files (exist, parse, name this node, key fits, not
    /// expired, accepted by ca.crt) and the data directory (writable or creatable). Prints a
    /// summary and every problem found; exits non-zero if there is any.
    Check {
        /// The node's TOML config file.
        file: PathBuf,
        /// Override a config key as `wraft node --set` does (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Subcommand)]
enum MembersOp {
    /// List voters and learners.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Add a node as a non-voting learner (start it first with its config).
    AddLearner {
        /// Node id.
        id: u64,
        /// Its QUIC address as the cluster should dial it: `IP:PORT` or `DNS-NAME:PORT` (a
        /// name is resolved again on every reconnect).
        addr: wraft_client::PeerAddr,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// Node id.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a member (may be the leader).
    Remove {
        /// Node id.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum SnapshotOp {
    /// List complete snapshots: from a data directory (offline, read-only) or from a running node.
    List {
        /// The node's data directory (reads `DIR/snap` without changing anything).
        #[arg(long, conflicts_with = "endpoints")]
        data_dir: Option<PathBuf>,
        /// Ask this running node instead.
        #[arg(long, env = "WRAFT_ENDPOINTS", value_delimiter = ',')]
        endpoints: Vec<wraft_client::PeerAddr>,
        /// Directory written by `wraft cert`.
        #[arg(long, env = "WRAFT_CERTS", default_value = "certs")]
        certs: PathBuf,
        /// Client certificate to present.
        #[arg(long, env = "WRAFT_CLIENT", default_value = "admin")]
        client: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a snapshot file: header, machines with sizes and formats, membership, digest check.
    Inspect {
        /// The `.snap` file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back up the cluster: a node takes a snapshot now (or reuses its newest), streams it here
    /// into FILE (through FILE.partial) and the file is verified as `inspect` does. Admin client
    /// only.
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
        #[command(flatten)]
        conn: Conn,
    },
    /// Take a snapshot now on a node (the first of --endpoints unless chosen) or on all, and
    /// wait (up to 10 min each) until it is durable. Fails naming every node that failed.
    Trigger {
        /// The node with this id (found through the statuses of --endpoints).
        #[arg(long, conflicts_with_all = ["endpoint", "all"])]
        node: Option<u64>,
        /// The node at this address.
        #[arg(long, conflicts_with = "all")]
        endpoint: Option<wraft_proto::PeerAddr>,
        /// Every node in --endpoints.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change the cap on outgoing snapshot bandwidth of every node in --endpoints, now, running
    /// transfers included (until the node restarts; then `snapshot.transfer_bytes_per_sec_max`).
    Rate {
        /// Bytes per second for all of a node's transfers together; 0 lifts the cap.
        bytes_per_sec: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum LeaderOp {
    /// Hand leadership to another voter and wait until it has moved.
    Transfer {
        /// Target voter.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Install the log subscriber: stderr, `RUST_LOG` (default `info,quinn=warn`), JSON lines or
/// text, and ANSI colour only when stderr is a terminal (and `NO_COLOR` is unset).
fn init_logging(format: wraft_config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        wraft_config::LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        wraft_config::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node's config chooses the log format (`--log-format` wins). It is read once before
    // logging starts, for that alone (what loading logs then goes nowhere), and again below.
    let log_format = match &cli.command {
        Cmd::Node {
            log_format: Some(f),
            ..
        } => match f {
            LogFormatArg::Text => wraft_config::LogFormat::Text,
            LogFormatArg::Json => wraft_config::LogFormat::Json,
        },
        Cmd::Node {
            config, overrides, ..
        } => wraft_config::NodeConfig::load_with_overrides(config, overrides)
            .map_or(wraft_config::LogFormat::Text, |c| c.node.log_format),
        _ => wraft_config::LogFormat::Text,
    };
    init_logging(log_format);
    // A node's config sizes its runtime, so it is read before the runtime exists.
    let mut node_config = None;
    if let Cmd::Node {
        config, overrides, ..
    } = &cli.command
    {
        match wraft_config::NodeConfig::load_with_overrides(config, overrides) {
            Ok(mut cfg) => {
                cfg.node.log_format = log_format;
                node_config = Some(cfg)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = node_config.as_ref().map(|c| c.node.worker_threads)
        && n > 0
    {
        builder.worker_threads(n as usize);
    }
    if let Cmd::Bench(args) = &cli.command
        && let Some(n) = args.client_worker_threads()
    {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let work = async move {
        match node_config {
            Some(cfg) => run_node(cfg).await,
            None => run(cli.command).await,
        }
    };
    match rt.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// `wraft node`: serve until SIGTERM or SIGINT, then stop like a service (a leader hands
/// leadership over first; bounded by `node.shutdown_timeout_ms`). A second signal exits at once.
async fn run_node(cfg: wraft_config::NodeConfig) -> Result<(), AnyError> {
    let timeout = std::time::Duration::from_millis(cfg.node.shutdown_timeout_ms);
    let signals = wraft::service::StopSignals::new()?;
    let node = wraft_node::Node::start(cfg).await?;
    let _sighup = wraft::reload::reload_tls_on_sighup(node.tls_reloader())?;
    // Through the log, so that `--log-format json` leaves no plain-text line on stderr.
    tracing::info!(
        target: "wraft::node",
        "node {} serving on {} ({} async worker threads)",
        node.id(),
        node.local_addr(),
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    wraft::service::serve_until_stopped(node, signals, timeout).await;
    Ok(())
}

async fn client(conn: &Conn) -> Result<Client, AnyError> {
    let opts = ClientOptions::from_cert_dir(conn.endpoints.clone(), &conn.certs, &conn.client)?;
    Ok(Client::connect(opts).await?)
}

fn bytes_arg(s: &str, hex: bool) -> Result<Vec<u8>, AnyError> {
    if !hex {
        return Ok(s.as_bytes().to_vec());
    }
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err("hex input must have an even number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| format!("not a hex byte at offset {i}: {:?}", &s[i..i + 2]).into())
        })
        .collect()
}

fn print_output(bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => println!("{s}"),
        Err(_) => println!(
            "{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

async fn run(cmd: Cmd) -> Result<(), AnyError> {
    match cmd {
        Cmd::Cert {
            dir,
            nodes,
            clients,
            days,
            ca_dir,
            trust,
        } => {
            // With --trust alone, only the bundle is written.
            let only_trust = !trust.is_empty() && ca_dir.is_none();
            let nodes = nodes.unwrap_or_else(|| if only_trust { vec![] } else { vec![1, 2, 3] });
            let clients = clients.unwrap_or_else(|| {
                if only_trust {
                    vec![]
                } else {
                    vec!["admin".to_owned()]
                }
            });
            wraft::cli::cert_with(&dir, ca_dir.as_deref(), &trust, &nodes, &clients, days)
        }
        Cmd::Config {
            op: ConfigOp::Check { file, overrides },
        } => {
            let report = wraft::config_check::check(&file, &overrides).await;
            print!("{}", report.render(&file));
            if report.ok() {
                Ok(())
            } else {
                Err(format!(
                    "{}: {} problem(s), listed above",
                    file.display(),
                    report.problems.len()
                )
                .into())
            }
        }
        // main() reads a node's config before the runtime exists and runs it with run_node.
        Cmd::Node { .. } => unreachable!("wraft node is started by main"),
        Cmd::New {
            name,
            lang,
            dir,
            sdk_path,
            no_install,
        } => new(&name, lang, dir, sdk_path, !no_install),
        Cmd::Build {
            path,
            out,
            target_dir,
        } => build(&path, out, target_dir),
        Cmd::Dev {
            path,
            name,
            nodes,
            target_dir,
        } => {
            wraft::dev::run(wraft::dev::DevOptions {
                path,
                name,
                nodes,
                target_dir,
                ..Default::default()
            })
            .await
        }
        Cmd::Deploy {
            name,
            file,
            wasi,
            conn,
        } => {
            let module =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let c = client(&conn).await?;
            println!("{}", c.deploy_with(&name, module, wasi).await?);
            Ok(())
        }
        Cmd::Undeploy { name, conn } => {
            println!("{}", client(&conn).await?.remove_machine(&name).await?);
            Ok(())
        }
        Cmd::Machines { conn } => {
            let ms = client(&conn).await?.machines().await?;
            println!("{}", wraft::cli::machines_table(&ms));
            Ok(())
        }
        Cmd::Propose {
            name,
            command,
            hex,
            conn,
        } => {
            let out = client(&conn)
                .await?
                .propose(&name, &bytes_arg(&command, hex)?)
                .await?;
            print_output(&out.output);
            Ok(())
        }
        Cmd::Query {
            name,
            request,
            consistency,
            hex,
            conn,
        } => {
            let consistency = match consistency {
                ConsistencyArg::Linearizable => Consistency::Linearizable,
                ConsistencyArg::Lease => Consistency::Lease,
                ConsistencyArg::Stale => Consistency::Stale,
            };
            let out = client(&conn)
                .await?
                .query(&name, &bytes_arg(&request, hex)?, consistency)
                .await?;
            print_output(&out);
            Ok(())
        }
        Cmd::Status { json, all, conn } => {
            let c = client(&conn).await?;
            wraft::ops::status_command(&c, &conn.endpoints, all, json).await
        }
        Cmd::Members { op } => match op {
            MembersOp::List { conn } => {
                let s = client(&conn).await?.status().await?;
                println!("voters:   {:?}\nlearners: {:?}", s.voters, s.learners);
                Ok(())
            }
            MembersOp::AddLearner { id, addr, conn } => {
                println!("{}", client(&conn).await?.add_learner(id, addr).await?);
                Ok(())
            }
            MembersOp::Promote { id, conn } => {
                println!("{}", client(&conn).await?.promote(id).await?);
                Ok(())
            }
            MembersOp::Remove { id, conn } => {
                println!("{}", client(&conn).await?.remove_member(id).await?);
                Ok(())
            }
        },
        Cmd::Leader {
            op: LeaderOp::Transfer { id, conn },
        } => {
            let c = client(&conn).await?;
            println!("{}", c.transfer_leader(id).await?);
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(10) {
                if let Ok(s) = c.status().await
                    && s.leader == Some(id)
                {
                    println!("node {id} is the leader (term {})", s.term);
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(format!("leadership did not move to node {id} within 10 s").into())
        }
        Cmd::Snapshot { op } => match op {
            SnapshotOp::List {
                data_dir: Some(dir),
                json,
                ..
            } => {
                let list = wraft::cli::snapshot_list_dir(&dir)?;
                println!("{}", wraft::cli::snapshot_listing(&list, json)?);
                Ok(())
            }
            SnapshotOp::List {
                data_dir: None,
                endpoints,
                certs,
                client: name,
                json,
            } => {
                if endpoints.is_empty() {
                    return Err("give --data-dir DIR or --endpoints ADDR".into());
                }
                let c = client(&Conn {
                    endpoints: endpoints.clone(),
                    certs,
                    client: name,
                })
                .await?;
                let list = c.snapshots(Some(endpoints[0].clone())).await?;
                println!("{}", wraft::cli::snapshot_listing(&list, json)?);
                Ok(())
            }
            SnapshotOp::Inspect { file, json } => {
                let report = wraft::cli::snapshot_inspect(&file)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!("{}", report.render());
                }
                if report.ok {
                    Ok(())
                } else {
                    Err("the snapshot failed verification".into())
                }
            }
            SnapshotOp::Save { file, conn } => {
                let c = client(&conn).await?;
                let saved = wraft::backup::save(&c, &conn.endpoints, &file, |l, done| {
                    eprintln!(
                        "snapshot {} (term {}): {done} of {} bytes ({}%)",
                        l.index,
                        l.term,
                        l.file_bytes,
                        (done * 100).checked_div(l.file_bytes).unwrap_or(100)
                    )
                })
                .await?;
                println!(
                    "saved snapshot at index {} (term {}) from {} to {}: {} bytes, digest {} \
                     verified, {:.1} s",
                    saved.listing.index,
                    saved.listing.term,
                    saved.from,
                    saved.file.display(),
                    saved.listing.file_bytes,
                    saved.listing.digest,
                    saved.elapsed.as_secs_f64()
                );
                Ok(())
            }
            SnapshotOp::Trigger {
                node,
                endpoint,
                all,
                conn,
            } => {
                let target = match (node, endpoint, all) {
                    (Some(id), _, _) => wraft::ops::TriggerTarget::Node(id),
                    (_, Some(addr), _) => wraft::ops::TriggerTarget::Endpoint(addr),
                    (_, _, true) => wraft::ops::TriggerTarget::All,
                    _ => wraft::ops::TriggerTarget::First,
                };
                let c = client(&conn).await?;
                let wait = std::time::Duration::from_secs(600);
                wraft::ops::snapshot_trigger(&c, &conn.endpoints, target, wait).await
            }
            SnapshotOp::Rate {
                bytes_per_sec,
                conn,
            } => {
                let c = client(&conn).await?;
                for addr in &conn.endpoints {
                    println!(
                        "{}",
                        c.set_transfer_rate(Some(addr.clone()), bytes_per_sec)
                            .await?
                    );
                }
                Ok(())
            }
        },
        Cmd::Restore {
            file,
            data_dir,
            node_id,
            members,
        } => {
            let r = wraft::backup::restore(&wraft::backup::RestoreOptions {
                file,
                data_dir: data_dir.clone(),
                node_id,
                members,
            })?;
            println!(
                "restored node {node_id} in {} at index {} (term {}), machines {:?}: {}",
                data_dir.display(),
                r.index,
                r.term,
                r.machines,
                r.path.display()
            );
            Ok(())
        }
        Cmd::Recover {
            config,
            overrides,
            force_new_cluster,
            confirmed,
        } => {
            let cfg = wraft_config::NodeConfig::load_with_overrides(&config, &overrides)?;
            println!(
                "{}",
                wraft::backup::recover(&cfg, force_new_cluster, confirmed)?
            );
            Ok(())
        }
        Cmd::Demo { once, module } => wraft::cli::demo(once, module).await,
        Cmd::Bench(args) => wraft::bench::run(args).await,
    }
}

fn new(
    name: &str,
    lang: wraft::templates::Language,
    dir: Option<PathBuf>,
    sdk_path: Option<PathBuf>,
    install: bool,
) -> Result<(), AnyError> {
    let opts = wraft::templates::NewOptions { dir, sdk_path };
    let p = wraft::templates::new_project(name, lang, &opts)?;
    println!(
        "created {} machine {name:?} in {}",
        lang.name(),
        p.dir.display()
    );
    for f in &p.files {
        println!("  {}", f.display());
    }
    if let Some(sdk) = &p.sdk {
        println!("  wraft-guest from {}", sdk.display());
    }
    let tools = match p.lang {
        wraft::templates::Language::Rust => None,
        wraft::templates::Language::Js => Some((
            wraft::polyglot::GuestLang::Js,
            "npm install (componentize-js)",
            "npm install",
        )),
        wraft::templates::Language::Python => Some((
            wraft::polyglot::GuestLang::Python,
            "a .venv with componentize-py",
            "python3 -m venv .venv && .venv/bin/pip install componentize-py",
        )),
    };
    if let Some((lang, what, by_hand)) = tools.filter(|_| install) {
        println!("installing the toolchain into the project: {what} …");
        let started = std::time::Instant::now();
        match wraft::polyglot::install_project_tools(&p.dir, lang) {
            Ok(()) => println!("  done in {:.1} s", started.elapsed().as_secs_f64()),
            // The project is there and usable; only the build tool is missing.
            Err(e) => eprintln!(
                "warning: the project was created but its toolchain was not installed: {e}\n  \
                 run `{by_hand}` in {} before `wraft build`",
                p.dir.display()
            ),
        }
    }
    let test = match p.lang {
        wraft::templates::Language::Rust => "cargo test      # native tests",
        wraft::templates::Language::Js => "node --test     # the state logic, natively",
        wraft::templates::Language::Python => "python3 -m unittest   # the state logic, natively",
    };
    println!(
        "next:\n  cd {}\n  {test}\n  wraft build     # the checked \
         component\n  wraft dev       # a local cluster that upgrades on every save",
        p.dir.display()
    );
    Ok(())
}

fn build(path: &Path, out: Option<PathBuf>, target_dir: Option<PathBuf>) -> Result<(), AnyError> {
    let opts = wraft::build::BuildOptions {
        out,
        target_dir,
        host: None,
        sample_log: None,
    };
    let built = wraft::build::build_project(path, &opts)?;
    println!("{}", wraft::cli::describe_build(&built));
    Ok(())
}
