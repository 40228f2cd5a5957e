//! `wraft`'s command line, as clap reads it: every command, its flags and their help text.
//! `main.rs` dispatches them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "wraft",
    version,
    about = "Raft over QUIC running WebAssembly state machines",
    long_about = "Raft over QUIC running WebAssembly state machines.\n\n\
        Try `wraft demo` for a local 3-node cluster running the example kv machine.\n\
        Operators: `wraft cert` then `wraft node --config FILE` on each node.\n\
        Everyone else: `wraft deploy`, `wraft propose`, `wraft query`, `wraft status`.",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// How long a command that talks to the cluster keeps trying (finding the leader, retrying
    /// what is safe to retry), deploys included: `500ms`, `2s`, `1m`, or plain milliseconds.
    /// Default 30s (deploys 300s).
    #[arg(long, global = true, env = "WRAFT_TIMEOUT", value_name = "DURATION", value_parser = duration_ms)]
    pub(crate) timeout: Option<u64>,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// The exit codes, as `wraft --help` shows them (`main.rs` maps errors to them).
pub(crate) const EXIT_CODES: &str = "Exit codes:\n  \
    0  success\n  \
    1  usage or local error (bad arguments, unreadable file, certificates), or another failure\n  \
    2  refused: the cluster answered no (rejected request, no such machine, application \
       error, guest trap, this client not allowed); sending it again will not help\n  \
    3  outcome unknown: the request was sent but no outcome came within --timeout; it may have \
       been applied (read the state before sending it again)\n  \
    4  unavailable: no node reachable, or none knew a leader, within --timeout; nothing was \
       applied";

/// `--timeout`: `500ms`, `2s`, `1.5s`, `1m` or plain milliseconds, to milliseconds (at least 1).
pub(crate) fn duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 500ms, 2s, 1m or 500)"))?;
    let scale = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use ms, s or m)")),
    };
    let ms = n * scale;
    if !(1.0..=86_400_000.0).contains(&ms) {
        return Err(format!("{s:?} is out of range (1ms to 24h)"));
    }
    Ok(ms as u64)
}

/// The addresses in `WRAFT_ENDPOINTS` (comma-separated, as `--endpoints` takes them); none if
/// it is unset or empty. For a flag that must not read the variable through clap (see
/// `SnapshotOp::List`).
pub(crate) fn endpoints_from_env() -> Result<Vec<wraft_client::PeerAddr>, String> {
    let Some(v) = std::env::var_os("WRAFT_ENDPOINTS") else {
        return Ok(Vec::new());
    };
    let v = v
        .into_string()
        .map_err(|v| format!("WRAFT_ENDPOINTS={v:?} is not UTF-8"))?;
    v.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.parse().map_err(|e| format!("WRAFT_ENDPOINTS: {e}")))
        .collect()
}

/// How to reach a cluster (for every command that talks to one).
#[derive(Args, Clone)]
pub(crate) struct Conn {
    /// Node addresses (any member redirects to the leader), comma-separated: `IP:PORT` or
    /// `DNS-NAME:PORT`.
    #[arg(long, env = "WRAFT_ENDPOINTS", value_delimiter = ',', required = true)]
    pub(crate) endpoints: Vec<wraft_client::PeerAddr>,
    /// Directory written by `wraft cert` (holds ca.crt and client-<name>.crt/.key).
    #[arg(long, env = "WRAFT_CERTS", default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Which client certificate to present.
    #[arg(long, env = "WRAFT_CLIENT", default_value = "admin")]
    pub(crate) client: String,
}

/// `wraft node --log-format`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormatArg {
    /// Human-readable lines; ANSI colour only when stderr is a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ConsistencyArg {
    /// Quorum-confirmed (ReadIndex): sees every write acknowledged before it.
    Linearizable,
    /// Leader lease: no quorum round trip; safe within the configured clock-drift bound.
    Lease,
    /// Whatever the contacted node has applied: fastest, possibly stale.
    Stale,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// Bearer tokens for the HTTP API and the web console (for callers without a client
    /// certificate: browsers, scripts).
    Token {
        #[command(subcommand)]
        op: TokenOp,
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
    /// Node snapshots: save a backup, list, inspect a file, trigger one, cap transfers.
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
pub(crate) enum ConfigOp {
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
pub(crate) enum MembersOp {
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
pub(crate) enum TokenOp {
    /// Mint a token: prints it on stdout (a secret: give it to its holder only) and its id and
    /// expiry on stderr. Signed with DIR/token.key, created if missing; every node needs the
    /// same key file in its certificate directory (`http.token_key_file`). Revoke one token
    /// by listing its id in the nodes' `http.revoked_tokens`; revoke all by replacing the key.
    Create {
        /// Directory written by `wraft cert` (holds token.key).
        #[arg(long, env = "WRAFT_CERTS", default_value = "certs")]
        certs: PathBuf,
        /// Whose token it is (`[A-Za-z0-9_-]`, shown in the nodes' logs).
        #[arg(long)]
        name: String,
        /// read (queries, status, watch), write (also commands) or admin (everything).
        #[arg(long, default_value = "read")]
        role: String,
        /// Validity, days.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Subcommand)]
pub(crate) enum SnapshotOp {
    /// List complete snapshots: from a data directory (offline, read-only) or from a running node.
    List {
        /// The node's data directory (reads `DIR/snap` without changing anything; the
        /// environment's WRAFT_ENDPOINTS is then not used).
        #[arg(long, conflicts_with = "endpoints")]
        data_dir: Option<PathBuf>,
        /// Ask this running node instead (the first one given). Without --data-dir and without
        /// this flag: the first of WRAFT_ENDPOINTS.
        // Not `env = "WRAFT_ENDPOINTS"`: clap counts a value from the environment as given, so
        // `conflicts_with` would refuse --data-dir whenever the variable is set (see
        // `endpoints_from_env`).
        #[arg(long, value_delimiter = ',')]
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
    /// Show a snapshot file: header, machines with sizes and formats, membership, digest check,
    /// and how much it shares with the previous snapshot in the same directory (the bytes a node
    /// holding that one would fetch).
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
    /// Prints a line per node; a node that cannot be reached does not stop the others, and the
    /// command then fails naming every endpoint not changed. Admin client only.
    Rate {
        /// Bytes per second for all of a node's transfers together; 0 lifts the cap.
        bytes_per_sec: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum LeaderOp {
    /// Hand leadership to another voter and wait until it has moved.
    Transfer {
        /// Target voter.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}
