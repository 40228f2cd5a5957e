//! Building guests: compile a machine project to a component and check it as a cluster would.
//!
//! For Rust, `cargo build --target wasm32-unknown-unknown --profile guest` gives a core module
//! carrying the WIT world in a custom section (put there by `wit-bindgen` in `wraft-guest`);
//! [`componentize`] turns it into a component with `wit-component`. The result imports only
//! `wraft:machine/host`, so the host never provides WASI.
//!
//! [`build_project`] is `wraft build`: it finds the project's language, checks the toolchain
//! first (and says exactly what to install), builds, then runs [`check_component`] — the very
//! [`HostEngine::load`] a node runs on deploy (size, imports, exports, world types, a call to
//! `info`) — then, if the project has a sample log (`wraft-check.jsonl`), the snapshot fidelity
//! check of [`crate::fidelity`] on the same compiled module, and only then writes the output
//! file.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fidelity::{FidelityError, FidelityReport, SAMPLE_FILE, SampleLog, check_fidelity};
use crate::templates::Language;
use wraft_host::{
    ComponentSummary, EngineError, HostConfig, HostEngine, LoadError, MachineInfo, MachineModule,
    WasiProfile, validate_component, validate_component_for,
};

/// The Rust target guests compile to.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

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
    /// A tool the build needs is missing; the message says what to run.
    #[error("{0}")]
    Toolchain(String),
    /// The directory is not a machine project.
    #[error(
        "{0} is not a machine project: no Cargo.toml (Rust), package.json (JavaScript) or \
         pyproject.toml (Python) there; create one with `wraft new NAME`"
    )]
    NotAProject(PathBuf),
    /// This build of wraft cannot build this language yet.
    #[error("building {lang} machines is not available in this build of wraft: {detail}")]
    NotAvailable {
        /// The project's language.
        lang: &'static str,
        /// What is missing.
        detail: String,
    },
    /// The snapshot fidelity check with the project's sample log failed: the machine's
    /// restore is not faithful, the guest trapped, or the sample log is unusable.
    #[error("snapshot fidelity check with {} failed: {source}", sample.display())]
    Fidelity {
        /// The sample log.
        sample: PathBuf,
        /// What differed, or what failed.
        source: FidelityError,
    },
    /// The host engine used for the check could not start.
    #[error("cannot start the wasm engine to check the component: {0}")]
    Engine(#[from] EngineError),
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

/// Build the guest crate at `crate_dir` to a core wasm module; returns its path.
fn cargo_build_core(crate_dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, BuildError> {
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
            "{}; cargo's diagnostics are above",
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
    core.ok_or_else(|| {
        cargo_err(
            "cargo built no .wasm artifact; is the crate a cdylib (`[lib] crate-type = \
             [\"cdylib\"]`)?"
                .into(),
        )
    })
}

/// Build the guest crate at `crate_dir` with `cargo build --target wasm32-unknown-unknown
/// --profile guest`, componentize it, run the host's static load checks
/// ([`validate_component`]) and write the component next to the core module (atomically, so
/// concurrent builders are safe; cargo's own lock serializes the compile).
///
/// `target_dir`: cargo's `--target-dir` (default: cargo's choice). Cost: a cargo build (about a
/// minute cold for a guest with zstd, well under a second when fresh).
pub fn build_guest(crate_dir: &Path, target_dir: Option<&Path>) -> Result<BuiltGuest, BuildError> {
    let core = cargo_build_core(crate_dir, target_dir)?;
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

/// The `[profile.guest]` a Rust machine project needs (the `wraft new` template has it).
pub const GUEST_PROFILE_TOML: &str = "[profile.guest]\ninherits = \"release\"\nopt-level = 3\n\
     lto = true\ncodegen-units = 1\npanic = \"abort\"\nstrip = \"debuginfo\"\n";

/// Options of [`build_project`].
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Where to write the component; default `<project>/target/wraft/<name>.wasm`.
    pub out: Option<PathBuf>,
    /// cargo's `--target-dir` for Rust projects (default: cargo's choice).
    pub target_dir: Option<PathBuf>,
    /// The host settings to check against (size limit, fuel for `info`); default
    /// [`HostConfig::default`], which is also a node's default.
    pub host: Option<HostConfig>,
    /// The sample log of the snapshot fidelity check; default `<project>/wraft-check.jsonl`
    /// ([`SAMPLE_FILE`]). No such file: the check is skipped ([`BuiltProject::fidelity`] is
    /// `None`).
    pub sample_log: Option<PathBuf>,
}

/// What [`build_project`] produced.
#[derive(Debug, Clone)]
pub struct BuiltProject {
    /// The project's language.
    pub lang: Language,
    /// The component file written.
    pub out: PathBuf,
    /// What the checks saw.
    pub checked: CheckedComponent,
    /// The WASI profile the component needs at deploy (`deterministic` for Python guests).
    pub wasi: WasiProfile,
    /// The snapshot fidelity check's result; `None` if the project has no sample log.
    pub fidelity: Option<FidelityReport>,
    /// The sample log looked for.
    pub sample_log: PathBuf,
}

/// A component that passed [`check_component`].
#[derive(Debug, Clone)]
pub struct CheckedComponent {
    /// Size in bytes.
    pub bytes: usize,
    /// SHA-256, hex: the module's identity in a cluster (`wraft machines`).
    pub sha256: String,
    /// What the guest says about itself.
    pub info: MachineInfo,
    /// Top-level imports and exports.
    pub summary: ComponentSummary,
}

/// Run on `component` exactly the checks a node runs when it is deployed ([`HostEngine::load`]:
/// size limit, full validation, imports allowed by the host, the required export, the export's
/// types against the world, and one `info` call in a throwaway instance).
///
/// Cost: a Cranelift compile of the component (about a second for a Rust guest with zstd).
pub fn check_component(
    component: &[u8],
    host: &HostConfig,
) -> Result<CheckedComponent, BuildError> {
    check_component_with(component, host, WasiProfile::None)
}

/// [`check_component`] for a machine deployed with the WASI profile `wasi` (the imports the
/// profile provides are allowed, as at a `deploy --wasi`).
pub fn check_component_with(
    component: &[u8],
    host: &HostConfig,
    wasi: WasiProfile,
) -> Result<CheckedComponent, BuildError> {
    load_checked(component, host, wasi).map(|(checked, _)| checked)
}

/// [`check_component_with`], also returning the compiled module (for the fidelity check).
fn load_checked(
    component: &[u8],
    host: &HostConfig,
    wasi: WasiProfile,
) -> Result<(CheckedComponent, MachineModule), BuildError> {
    let limit = host.module_bytes_max;
    // With `host.cache_dir` set (`wraft dev` sets it to the directory its nodes compile into),
    // this compile is the nodes' too: their loads of the same module become cache hits.
    let engine = HostEngine::new(host.clone())?;
    let module = engine.load_with(component, wasi)?;
    let checked = CheckedComponent {
        bytes: component.len(),
        sha256: module.sha256_hex(),
        info: module.info().clone(),
        summary: validate_component_for(component, limit, false, wasi)?,
    };
    Ok((checked, module))
}

/// `wraft build`: build the machine project in `dir` into a checked component.
///
/// Steps: detect the language ([`Language::detect`]); check the toolchain and fail with the
/// command that installs what is missing; build; [`check_component`]; if the project has a
/// sample log, [`check_fidelity`] on the same compiled module; write the output atomically
/// (nothing is written if a check fails).
pub fn build_project(dir: &Path, opts: &BuildOptions) -> Result<BuiltProject, BuildError> {
    let lang = Language::detect(dir).ok_or_else(|| BuildError::NotAProject(dir.to_owned()))?;
    let mut wasi = WasiProfile::None;
    let (component, default_name) = match lang {
        Language::Rust => {
            preflight_rust(dir, WASM_TARGET, OsStr::new("clang"))?;
            let core = cargo_build_core(dir, opts.target_dir.as_deref())?;
            let bytes = std::fs::read(&core).map_err(|source| BuildError::Io {
                path: core.clone(),
                source,
            })?;
            let name = core
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "machine".into());
            (componentize(&bytes)?, name)
        }
        Language::Js | Language::Python => {
            // The polyglot builders write (and check) the component themselves; build into a
            // staging file, then run the same checks and atomic write as for Rust.
            let staging_dir = opts
                .target_dir
                .clone()
                .unwrap_or_else(|| dir.join("target"))
                .join("wraft");
            std::fs::create_dir_all(&staging_dir).map_err(|source| BuildError::Io {
                path: staging_dir.clone(),
                source,
            })?;
            let staging = staging_dir.join(format!(".staging-{}.wasm", std::process::id()));
            // The toolchains run with the project as working directory: hand them absolute paths.
            let abs = std::fs::canonicalize(dir).map_err(|source| BuildError::Io {
                path: dir.to_owned(),
                source,
            })?;
            let staging = std::path::absolute(&staging).unwrap_or(staging);
            let built = match lang {
                Language::Js => crate::polyglot::build_js(&abs, &staging),
                _ => crate::polyglot::build_python(&abs, &staging),
            }
            .map_err(|e| BuildError::Toolchain(e.to_string()))?;
            let bytes = std::fs::read(&staging);
            let _ = std::fs::remove_file(&staging);
            let bytes = bytes.map_err(|source| BuildError::Io {
                path: staging.clone(),
                source,
            })?;
            wasi = built.wasi;
            let name = std::fs::canonicalize(dir)
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "machine".into());
            (bytes, name)
        }
    };
    let (checked, module) = load_checked(&component, &opts.host.clone().unwrap_or_default(), wasi)?;
    let sample_log = opts
        .sample_log
        .clone()
        .unwrap_or_else(|| dir.join(SAMPLE_FILE));
    let fidelity_err = |source| BuildError::Fidelity {
        sample: sample_log.clone(),
        source,
    };
    let fidelity = match SampleLog::read(&sample_log).map_err(fidelity_err)? {
        Some(sample) => Some(check_fidelity(&module, &sample).map_err(fidelity_err)?),
        None => None,
    };
    let out = opts.out.clone().unwrap_or_else(|| {
        dir.join("target")
            .join("wraft")
            .join(format!("{default_name}.wasm"))
    });
    write_atomically(&out, &component)?;
    Ok(BuiltProject {
        lang,
        out,
        checked,
        wasi,
        fidelity,
        sample_log,
    })
}

/// Write `bytes` to `path` through a temporary file and a rename, creating the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let io = |p: &Path| {
        let path = p.to_owned();
        move |source| BuildError::Io { path, source }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Check what a Rust guest build needs before starting it: the `target` standard library, a C
/// compiler for wasm (`clang`, for the SDK's zstd) and a `[profile.guest]`. Each failure says
/// exactly what to run. Cost: two short subprocesses (`rustc --print`, `clang --version`).
pub fn preflight_rust(dir: &Path, target: &str, clang: &OsStr) -> Result<(), BuildError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc)
        .current_dir(dir)
        .args(["--print", "target-libdir", "--target", target])
        .output();
    let installed = match &libdir {
        Ok(o) if o.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_some())
        }
        _ => false,
    };
    if !installed {
        let detail = match &libdir {
            Err(e) => format!("cannot run {}: {e}", rustc.to_string_lossy()),
            Ok(o) if !o.status.success() => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Ok(_) => "its standard library is not installed".into(),
        };
        return Err(BuildError::Toolchain(format!(
            "the Rust target {target} is missing ({detail}); install it with:\n    rustup target \
             add {target}"
        )));
    }
    let cc_set = [
        format!("CC_{}", target.replace('-', "_")),
        format!("CC_{target}"),
        "TARGET_CC".to_owned(),
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    if !cc_set
        && !Command::new(clang)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Err(BuildError::Toolchain(format!(
            "`{}` was not found: the guest SDK compresses snapshots with zstd, C code that clang \
             compiles for {target}. Install clang:\n    sudo apt-get install clang      # Debian, \
             Ubuntu\n    sudo dnf install clang          # Fedora\n    xcode-select --install  \
                     # macOS\nor point CC_{} at a clang that targets wasm32",
            clang.to_string_lossy(),
            target.replace('-', "_")
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Command::new(cargo)
        .current_dir(dir)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output();
    if let Ok(o) = root
        && o.status.success()
    {
        let root = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if std::fs::read_to_string(&root).is_ok_and(|s| !s.contains("[profile.guest]")) {
            return Err(BuildError::Toolchain(format!(
                "{} defines no [profile.guest], which `wraft build` compiles with; add:\n\n{}",
                root.display(),
                GUEST_PROFILE_TOML
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_wasm_target_names_the_rustup_command() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let e = preflight_rust(dir, "wasm32-unknown-nowhere", OsStr::new("clang")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("rustup target add wasm32-unknown-nowhere"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_clang_names_the_install_command() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("CC_wasm32_unknown_unknown").is_some()
            || std::env::var_os("TARGET_CC").is_some()
        {
            return; // a configured C compiler skips the probe by design
        }
        let e = preflight_rust(dir, WASM_TARGET, OsStr::new("clang-not-installed-anywhere"))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("`clang-not-installed-anywhere` was not found")
                && msg.contains("sudo apt-get install clang"),
            "{msg}"
        );
    }

    #[test]
    fn a_directory_without_a_manifest_is_not_a_project() {
        let tmp = tempfile::tempdir().unwrap();
        let e = build_project(tmp.path(), &BuildOptions::default()).unwrap_err();
        assert!(matches!(e, BuildError::NotAProject(_)), "{e}");
        assert!(e.to_string().contains("wraft new NAME"), "{e}");
    }

    #[test]
    fn js_and_python_projects_go_to_their_toolchains_and_nothing_is_written_on_failure() {
        for file in ["package.json", "app.py"] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join(file), "").unwrap();
            match build_project(tmp.path(), &BuildOptions::default()) {
                Err(BuildError::Toolchain(_)) => {}
                other => panic!("{file}: {other:?}"),
            }
            let out = tmp.path().join("target").join("wraft");
            let left: Vec<_> = std::fs::read_dir(&out)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{file}: left behind {left:?}");
        }
    }

    #[test]
    fn a_core_module_is_refused_by_the_deploy_checks() {
        // The smallest core module: the check is the node's own, so it says what a deploy says.
        let e = check_component(b"\0asm\x01\0\0\0", &HostConfig::default()).unwrap_err();
        assert!(
            matches!(e, BuildError::Invalid(LoadError::CoreModule)),
            "{e}"
        );
    }
}
