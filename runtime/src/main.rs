//! The `wraft` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wraft",
    version,
    about = "Raft over QUIC running WebAssembly state machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a guest crate into a component and check it as the host would load it.
    Build {
        /// The guest crate's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// cargo's --target-dir.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Build { path, target_dir } => match build(&path, target_dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn build(
    path: &std::path::Path,
    target_dir: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    let built = wraft::build::build_guest(path, target_dir)?;
    let engine = wraft::host::HostEngine::new(wraft::host::HostConfig::default())?;
    let module = engine.load_file(&built.component)?;
    let info = module.info();
    println!(
        "{}\n  machine {} {} (snapshot format {}), sha256 {}\n  imports: {}",
        built.component.display(),
        info.name,
        info.version,
        info.snapshot_format,
        module.sha256_hex(),
        built.summary.imports.join(", ")
    );
    Ok(())
}
