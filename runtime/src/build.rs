//! Building guests: compile a guest crate to a core wasm module and wrap it as a component.
//!
//! `cargo build --target wasm32-unknown-unknown --profile guest` gives a core module carrying the
//! WIT world in a custom section (put there by `wit-bindgen` in `wraft-guest`);
//! [`componentize`] turns it into a component with `wit-component`. The result imports only
//! `wraft:machine/host`, so the host never provides WASI.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{ComponentSummary, LoadError, validate_component};

/// Why a guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// wit-component refused the core module.
    #[error("componentizing failed: {0}")]
    Componentize(String),
    /// `cargo` could not be run or failed.
    #[error("cargo build of guest {crate_dir} failed: {detail}")]
    Cargo {
        /// The guest crate.
        crate_dir: PathBuf,
        /// What happened.
        detail: String,
    },
    /// The result does not pass the host's load checks.
    #[error("built component fails the host's checks: {0}")]
    Invalid(#[from] LoadError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Wrap a core wasm module produced by a `wraft-guest` crate into a component.
///
/// Cost: linear in the module size (milliseconds). Fails if the module lacks the component-type
/// section (not built against `wraft-guest`) or its imports do not match the WIT.
pub fn componentize(core_wasm: &[u8]) -> Result<Vec<u8>, BuildError> {
    wit_component::ComponentEncoder::default()
        .module(core_wasm)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| BuildError::Componentize(format!("{e:#}")))
}

/// The result of [`build_guest`].
#[derive(Debug, Clone)]
pub struct BuiltGuest {
    /// The component file (`<target>/wasm32-unknown-unknown/guest/<crate>.component.wasm`).
    pub component: PathBuf,
    /// What the static checks saw.
    pub summary: ComponentSummary,
}

/// Build the guest crate at `crate_dir` with `cargo build --target wasm32-unknown-unknown
/// --profile guest`, componentize it, run the host's static load checks
/// ([`validate_component`]) and write the component next to the core module (atomically, so
/// concurrent builders are safe; cargo's own lock serializes the compile).
///
/// `target_dir`: cargo's `--target-dir` (default: cargo's choice). Cost: a cargo build (about a
/// minute cold for a guest with zstd, well under a second when fresh).
pub fn build_guest(crate_dir: &Path, target_dir: Option<&Path>) -> Result<BuiltGuest, BuildError> {
    let cargo_err = |detail: String| BuildError::Cargo {
        crate_dir: crate_dir.to_owned(),
        detail,
    };
    let manifest = crate_dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "guest",
    ])
    .args([
        "--message-format",
        "json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(&manifest)
    .stderr(std::process::Stdio::inherit());
    if let Some(t) = target_dir {
        cmd.arg("--target-dir").arg(t);
    }
    let out = cmd
        .output()
        .map_err(|e| cargo_err(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(cargo_err(format!(
            "{} (is the target installed? `rustup target add wasm32-unknown-unknown`; is clang \
             installed for zstd?)",
            out.status
        )));
    }
    let manifest_abs = std::fs::canonicalize(&manifest).map_err(|source| BuildError::Io {
        path: manifest.clone(),
        source,
    })?;
    let mut core = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || msg["manifest_path"].as_str() != manifest_abs.to_str()
        {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            core = files
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from);
        }
    }
    let core = core.ok_or_else(|| cargo_err("no .wasm artifact; is the crate a cdylib?".into()))?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io { path, source }
    };
    let bytes = std::fs::read(&core).map_err(io(&core))?;
    let component = componentize(&bytes)?;
    let summary = validate_component(&component, usize::MAX, true)?;
    let path = core.with_extension("component.wasm");
    let tmp = core.with_extension(format!("component.wasm.tmp{}", std::process::id()));
    std::fs::write(&tmp, &component).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(BuiltGuest {
        component: path,
        summary,
    })
}
