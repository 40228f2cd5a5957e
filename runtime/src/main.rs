//! The `wraft` command line: run nodes, manage certificates, deploy and talk
//! to machines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use wraft_client::{Client, ClientOptions};
use wraft_proto::Consistency;

/// jemalloc, not glibc's malloc: at 256 clients glibc's `malloc`/`free` (mostly `_int_malloc`,
/// `malloc_consolidate` and `unlink_chunk` on buffers allocated by one thread and freed by
/// another) took about 20 % of the machine. jemalloc's per-thread caches and arenas cut the
/// whole machine's CPU per put by a sixth (BENCHMARKS.md, series k).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod args;

use args::*;

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

/// A command whose reader has gone (`wraft members list | grep -q …`, `| head`) ends as `cat`
/// and `ls` do, by SIGPIPE, instead of panicking in `println!` with a backtrace (Rust ignores
/// SIGPIPE by default). Not for `wraft node`: a server outlives a log reader that went away.
fn die_quietly_on_a_closed_pipe() {
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any thread
    // exists; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version go to stdout and succeed; a usage error is exit code 1 (2 is
            // "refused", see EXIT_CODES).
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if !matches!(cli.command, Cmd::Node { .. }) {
        die_quietly_on_a_closed_pipe();
    }
    let ctx = Ctx {
        timeout_ms: cli.timeout,
        clients: Default::default(),
    };
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
    let work = async {
        match node_config {
            Some(cfg) => run_node(cfg).await,
            None => run(cli.command, &ctx).await,
        }
    };
    match rt.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            match ctx.answered_by().filter(|_| code == EXIT_REFUSED) {
                Some(node) => eprintln!("error: {node}: {e}"),
                None => eprintln!("error: {e}"),
            }
            ExitCode::from(code)
        }
    }
}

/// Exit code: the cluster refused the request (see [`EXIT_CODES`]).
const EXIT_REFUSED: u8 = 2;
/// Exit code: sent, no outcome within the timeout.
const EXIT_OUTCOME_UNKNOWN: u8 = 3;
/// Exit code: no node or no leader reachable within the timeout.
const EXIT_UNAVAILABLE: u8 = 4;

/// The exit code for a command that failed with `e` (see [`EXIT_CODES`]).
fn exit_code(e: &AnyError) -> u8 {
    use wraft_client::ClientError as E;
    match e.downcast_ref::<E>() {
        Some(
            E::Rejected(_)
            | E::Forbidden(_)
            | E::NoSuchMachine(_)
            | E::App { .. }
            | E::MachineFault(_),
        ) => EXIT_REFUSED,
        Some(E::Timeout(_) | E::OutcomeUnknown(_)) => EXIT_OUTCOME_UNKNOWN,
        Some(E::NoLeader { .. } | E::Unreachable { .. } | E::Busy(_)) => EXIT_UNAVAILABLE,
        Some(E::Certs(_) | E::Internal(_)) | None => 1,
    }
}

/// What the commands that talk to a cluster share: `--timeout`, and the clients they made, so
/// that an error can name the node that gave the answer.
struct Ctx {
    timeout_ms: Option<u64>,
    clients: std::sync::Mutex<Vec<std::sync::Arc<Client>>>,
}

impl Ctx {
    async fn client(&self, conn: &Conn) -> Result<std::sync::Arc<Client>, AnyError> {
        let mut opts =
            ClientOptions::from_cert_dir(conn.endpoints.clone(), &conn.certs, &conn.client)?;
        if let Some(ms) = self.timeout_ms {
            opts.call_timeout_ms = ms;
            opts.deploy_timeout_ms = ms;
        }
        let c = std::sync::Arc::new(Client::connect(opts).await?);
        if let Ok(mut cs) = self.clients.lock() {
            cs.push(c.clone());
        }
        Ok(c)
    }

    /// The node whose answer ended the last call.
    fn answered_by(&self) -> Option<wraft_client::NodeRef> {
        let cs = self.clients.lock().ok()?;
        cs.iter().rev().find_map(|c| c.last_answer_from())
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

async fn run(cmd: Cmd, ctx: &Ctx) -> Result<(), AnyError> {
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
        Cmd::Token {
            op:
                TokenOp::Create {
                    certs,
                    name,
                    role,
                    days,
                },
        } => {
            let role: wraft_node::auth::Role = role.parse().map_err(|e| format!("--role: {e}"))?;
            let path = certs.join("token.key");
            let (key, created) =
                wraft_node::tokens::TokenKey::load_or_create(&path).map_err(|e| e.to_string())?;
            if created {
                eprintln!(
                    "created {}: copy it to every node's certificate directory (next to ca.crt)",
                    path.display()
                );
            }
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                + u64::from(days) * 86_400;
            let minted = key.mint(&name, role, expires).map_err(|e| e.to_string())?;
            eprintln!(
                "token id {} for {:?}, role {}, expires at Unix time {} ({} days)",
                minted.claims.id, minted.claims.name, minted.claims.role, expires, days
            );
            println!("{}", minted.token);
            Ok(())
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
            let c = ctx.client(&conn).await?;
            println!("{}", c.deploy_with(&name, module, wasi).await?);
            Ok(())
        }
        Cmd::Undeploy { name, conn } => {
            println!("{}", ctx.client(&conn).await?.remove_machine(&name).await?);
            Ok(())
        }
        Cmd::Machines { conn } => {
            let ms = ctx.client(&conn).await?.machines().await?;
            println!("{}", wraft::cli::machines_table(&ms));
            Ok(())
        }
        Cmd::Propose {
            name,
            command,
            hex,
            conn,
        } => {
            let out = ctx
                .client(&conn)
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
            let out = ctx
                .client(&conn)
                .await?
                .query(&name, &bytes_arg(&request, hex)?, consistency)
                .await?;
            print_output(&out);
            Ok(())
        }
        Cmd::Status { json, all, conn } => {
            let c = ctx.client(&conn).await?;
            wraft::ops::status_command(&c, &conn.endpoints, all, json).await
        }
        Cmd::Members { op } => match op {
            MembersOp::List { conn } => {
                let s = ctx.client(&conn).await?.status().await?;
                println!("voters:   {:?}\nlearners: {:?}", s.voters, s.learners);
                Ok(())
            }
            MembersOp::AddLearner { id, addr, conn } => {
                println!("{}", ctx.client(&conn).await?.add_learner(id, addr).await?);
                Ok(())
            }
            MembersOp::Promote { id, conn } => {
                println!("{}", ctx.client(&conn).await?.promote(id).await?);
                Ok(())
            }
            MembersOp::Remove { id, conn } => {
                println!("{}", ctx.client(&conn).await?.remove_member(id).await?);
                Ok(())
            }
        },
        Cmd::Leader {
            op: LeaderOp::Transfer { id, conn },
        } => {
            let c = ctx.client(&conn).await?;
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
                let endpoints = match endpoints {
                    e if e.is_empty() => args::endpoints_from_env()?,
                    e => e,
                };
                if endpoints.is_empty() {
                    return Err("give --data-dir DIR, or --endpoints ADDR (or set \
                                WRAFT_ENDPOINTS) to ask a running node"
                        .into());
                }
                let c = ctx
                    .client(&Conn {
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
                let c = ctx.client(&conn).await?;
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
                     verified ({} modules fetched and carried inside), {:.1} s",
                    saved.listing.index,
                    saved.listing.term,
                    saved.from,
                    saved.file.display(),
                    saved.file_bytes,
                    saved.digest,
                    saved.modules_fetched,
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
                let c = ctx.client(&conn).await?;
                let wait = std::time::Duration::from_secs(600);
                wraft::ops::snapshot_trigger(&c, &conn.endpoints, target, wait).await
            }
            SnapshotOp::Rate {
                bytes_per_sec,
                conn,
            } => {
                let c = ctx.client(&conn).await?;
                wraft::ops::snapshot_rate(&c, &conn.endpoints, bytes_per_sec).await
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
