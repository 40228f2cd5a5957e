//! Building JavaScript and Python guests: `wraft build` for projects that are not Rust crates.
//!
//! Both use the established componentization toolchains, run as child processes:
//!
//! - **JavaScript**: [componentize-js] (SpiderMonkey/StarlingMonkey, pre-initialized with
//!   Wizer) with *every* WASI feature disabled (`stdio`, `random`, `clocks`, `http`,
//!   `fetch-event`), so the component imports only `wraft:machine/host` and deploys under
//!   [`WasiProfile::None`]. `Math.random()` is then one fixed sequence per instance (the
//!   template's glue reseeds it at every entry, so a restored replica draws the same numbers)
//!   and `Date.now()` reads no clock; a JS guest has no time but the entry's `timestamp-ms`.
//! - **Python**: [componentize-py] (CPython built for WASI 0.2). The component imports WASI
//!   (clocks, random, streams, filesystem, sockets…), so it deploys under
//!   [`WasiProfile::Deterministic`]: see [`crate::host`]'s WASI profile for what each interface
//!   answers.
//!
//! Each build writes the WIT world to a temporary directory, runs the tool, checks the result
//! with [`validate_component_for`] (size, full validation, imports against the profile, the
//! `machine` export) and only then writes it to `out` (temp file + rename).
//! Cost: ~10 s of CPU for either tool (most of it pre-initializing the interpreter); components
//! are ~12 MB (JS) and ~18 MB (Python).
//!
//! [componentize-js]: https://github.com/bytecodealliance/ComponentizeJS
//! [componentize-py]: https://github.com/bytecodealliance/componentize-py

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use wraft_host::{HostConfig, LoadError, WasiProfile, validate_component_for};

/// The componentize-js version `wraft build` is tested with (pinned in templates).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// The componentize-py version `wraft build` is tested with (pinned in templates).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// Environment variable naming an npm prefix that holds componentize-js (used when the project
/// has no `node_modules` of its own).
pub const JS_TOOLS_ENV: &str = "WRAFT_JS_TOOLS";
/// Environment variable naming a Python venv that holds componentize-py.
pub const PY_TOOLS_ENV: &str = "WRAFT_PY_TOOLS";

const WIT: &str = include_str!("../../wit/machine.wit");
const JS_DRIVER: &str = include_str!("polyglot/componentize_js.mjs");
/// Bytes of a failing tool's stderr kept in the error (its tail: where the cause usually is).
const TOOL_STDERR_BYTES_MAX: usize = 4096;

/// A guest project's language, as `wraft build` detects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestLang {
    /// A Rust crate using `wraft-guest` (`Cargo.toml`).
    Rust,
    /// A JavaScript module (`package.json`).
    Js,
    /// A Python module `app` (`app.py`).
    Python,
}

/// Detect the language from the files in `project_dir`: `Cargo.toml` → Rust, `package.json` →
/// JavaScript, `app.py` → Python (in that order). `None` if there is none of them.
pub fn detect_lang(project_dir: &Path) -> Option<GuestLang> {
    let has = |f: &str| project_dir.join(f).is_file();
    if has("Cargo.toml") {
        Some(GuestLang::Rust)
    } else if has("package.json") {
        Some(GuestLang::Js)
    } else if has("app.py") {
        Some(GuestLang::Python)
    } else {
        None
    }
}

/// Why a JavaScript or Python guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A tool is not installed; `install` says exactly what to run.
    #[error("{tool} is not available: {install}")]
    ToolMissing {
        /// The missing tool.
        tool: &'static str,
        /// What to install, and how.
        install: String,
    },
    /// The tool ran and failed (a syntax error in the guest, a WIT mismatch…).
    #[error("{tool} failed for {project}: {detail}")]
    ToolFailed {
        /// The tool.
        tool: &'static str,
        /// The project directory.
        project: PathBuf,
        /// Exit status and the tail of its error output.
        detail: String,
    },
    /// The project lacks a file the build needs.
    #[error("{path} does not exist: {hint}")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What it should be.
        hint: &'static str,
    },
    /// The produced component fails the checks a cluster applies at deploy.
    #[error("the built component fails the deploy checks: {0}")]
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

/// A checked component written by [`build_js`] or [`build_python`].
#[derive(Debug, Clone)]
pub struct BuiltComponent {
    /// Where it was written (the `out` argument).
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its top-level imports.
    pub imports: Vec<String>,
    /// The WASI profile it must be deployed with (`wraft deploy --wasi <profile>`).
    pub wasi: WasiProfile,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Run `cmd`; a missing program becomes [`BuildError::ToolMissing`] with `install`, a failure
/// [`BuildError::ToolFailed`] with the tail of stderr.
fn run_tool(
    tool: &'static str,
    install: impl FnOnce() -> String,
    project: &Path,
    cmd: &mut Command,
) -> Result<std::process::Output, BuildError> {
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BuildError::ToolMissing {
                tool,
                install: install(),
            });
        }
        Err(e) => {
            return Err(BuildError::ToolFailed {
                tool,
                project: project.to_owned(),
                detail: format!("cannot run it: {e}"),
            });
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        let mut cut = text.len().saturating_sub(TOOL_STDERR_BYTES_MAX);
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        return Err(BuildError::ToolFailed {
            tool,
            project: project.to_owned(),
            detail: format!("{}: {}", out.status, text[cut..].trim()),
        });
    }
    Ok(out)
}

fn node_install_hint() -> String {
    "install Node.js 18 or newer (https://nodejs.org/en/download, or e.g. `apt install nodejs \
     npm`), then run `npm install` in the project"
        .into()
}

fn js_tools_hint(project: &Path) -> String {
    format!(
        "componentize-js is not installed for {p}: run `npm install` in {p} (its package.json \
         pins @bytecodealliance/componentize-js {v}), or run `npm install --prefix <dir> \
         @bytecodealliance/componentize-js@{v}` and set {env}=<dir>",
        p = project.display(),
        v = COMPONENTIZE_JS_VERSION,
        env = JS_TOOLS_ENV,
    )
}

fn py_tools_hint() -> String {
    format!(
        "install it with `python3 -m venv .venv && .venv/bin/pip install \
         componentize-py=={v}` in the project (Python 3.10 or newer; https://www.python.org), or \
         install it into any venv and set {env}=<venv dir>",
        v = COMPONENTIZE_PY_VERSION,
        env = PY_TOOLS_ENV,
    )
}

/// Where to look for the toolchains besides the project itself.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    /// An npm prefix holding `node_modules/@bytecodealliance/componentize-js`.
    pub js_prefix: Option<PathBuf>,
    /// A Python venv holding `bin/componentize-py`.
    pub py_venv: Option<PathBuf>,
}

impl Tools {
    /// From `$WRAFT_JS_TOOLS` and `$WRAFT_PY_TOOLS`.
    pub fn from_env() -> Self {
        Tools {
            js_prefix: std::env::var_os(JS_TOOLS_ENV).map(PathBuf::from),
            py_venv: std::env::var_os(PY_TOOLS_ENV).map(PathBuf::from),
        }
    }

    /// The componentize-js package directory: the project's own `node_modules`, else
    /// `js_prefix`'s.
    fn componentize_js(&self, project: &Path) -> Option<PathBuf> {
        let rel = Path::new("node_modules/@bytecodealliance/componentize-js");
        std::iter::once(project.to_owned())
            .chain(self.js_prefix.clone())
            .map(|r| r.join(rel))
            .find(|p| p.join("package.json").is_file())
    }

    /// The componentize-py executable: `<project>/.venv/bin`, else `py_venv`'s, else
    /// `componentize-py` on `PATH`.
    fn componentize_py(&self, project: &Path) -> PathBuf {
        std::iter::once(project.join(".venv"))
            .chain(self.py_venv.clone())
            .map(|v| v.join("bin/componentize-py"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("componentize-py"))
    }
}

/// The JS entry module: `package.json`'s `"main"`, default `src/machine.js`.
fn js_entry(project: &Path) -> Result<PathBuf, BuildError> {
    let manifest = project.join("package.json");
    let text = std::fs::read_to_string(&manifest).map_err(io_err(&manifest))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| BuildError::Io {
        path: manifest.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let main = v["main"].as_str().unwrap_or("src/machine.js");
    let entry = project.join(main);
    if !entry.is_file() {
        return Err(BuildError::MissingFile {
            path: entry,
            hint: "the module exporting `machine` (package.json \"main\", default src/machine.js)",
        });
    }
    Ok(entry)
}

/// Check `bytes` as a cluster will at deploy under `wasi`, then write them to `out` atomically.
fn check_and_write(
    bytes: &[u8],
    out: &Path,
    wasi: WasiProfile,
) -> Result<BuiltComponent, BuildError> {
    let summary =
        validate_component_for(bytes, HostConfig::default().module_bytes_max, true, wasi)?;
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let tmp = out.with_extension(format!("wasm.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(BuiltComponent {
        path: out.to_owned(),
        bytes: bytes.len() as u64,
        imports: summary.imports,
        wasi,
    })
}

fn temp_wit_dir() -> Result<tempfile::TempDir, BuildError> {
    let dir = tempfile::Builder::new()
        .prefix("wraft-build-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let wit = dir.path().join("wit");
    std::fs::create_dir(&wit).map_err(io_err(&wit))?;
    let file = wit.join("machine.wit");
    std::fs::write(&file, WIT).map_err(io_err(&file))?;
    Ok(dir)
}

/// Build the JavaScript guest in `project_dir` into the component `out`.
///
/// The project is an ES module (`package.json` `"main"`, default `src/machine.js`) exporting
/// `machine` (functions `info`, `apply`, `applyBatch`, `query`, `beginSnapshot`,
/// `beginRestore` and the resource classes `SnapshotReader`, `Restorer`) and importing
/// `wraft:machine/host@0.1.0`. Needs `node` and componentize-js (looked up in this order:
/// the project's `node_modules`, then `$WRAFT_JS_TOOLS`).
///
/// Cost: one node process, ~10 s of CPU and ~300 MB of memory. Fails with
/// [`BuildError::ToolMissing`] (what to install), [`BuildError::ToolFailed`] (the tool's
/// error, e.g. a syntax error), or [`BuildError::Invalid`] (e.g. a WASI import that crept in).
pub fn build_js(project_dir: &Path, out: &Path) -> Result<BuiltComponent, BuildError> {
    build_js_with(project_dir, out, &Tools::from_env())
}

/// [`build_js`] looking for componentize-js in `tools` instead of the environment.
pub fn build_js_with(
    project_dir: &Path,
    out: &Path,
    tools: &Tools,
) -> Result<BuiltComponent, BuildError> {
    let entry = js_entry(project_dir)?;
    let Some(pkg) = tools.componentize_js(project_dir) else {
        // Say first that node itself is missing, if it is: that is the bigger step.
        run_tool(
            "node",
            node_install_hint,
            project_dir,
            Command::new("node").arg("--version"),
        )?;
        return Err(BuildError::ToolMissing {
            tool: "componentize-js",
            install: js_tools_hint(project_dir),
        });
    };
    let tmp = temp_wit_dir()?;
    let driver = tmp.path().join("componentize_js.mjs");
    std::fs::write(&driver, JS_DRIVER).map_err(io_err(&driver))?;
    let component = tmp.path().join("out.wasm");
    run_tool(
        "componentize-js",
        node_install_hint,
        project_dir,
        Command::new("node")
            .arg(&driver)
            .arg(&pkg)
            .arg(&entry)
            .arg(tmp.path().join("wit"))
            .arg(&component)
            .current_dir(project_dir),
    )?;
    let bytes = std::fs::read(&component).map_err(io_err(&component))?;
    check_and_write(&bytes, out, WasiProfile::None)
}

/// Build the Python guest in `project_dir` (module `app`, file `app.py`, defining `class
/// Machine(wit_world.exports.Machine)`) into the component `out`.
///
/// Needs componentize-py (the project's `.venv`, then `$WRAFT_PY_TOOLS`, then `PATH`). The
/// component imports WASI and is checked against [`WasiProfile::Deterministic`]; deploy it with
/// that profile.
///
/// Cost: one componentize-py process, ~10 s of CPU. Errors as for [`build_js`].
pub fn build_python(project_dir: &Path, out: &Path) -> Result<BuiltComponent, BuildError> {
    build_python_with(project_dir, out, &Tools::from_env())
}

/// [`build_python`] looking for componentize-py in `tools` instead of the environment.
pub fn build_python_with(
    project_dir: &Path,
    out: &Path,
    tools: &Tools,
) -> Result<BuiltComponent, BuildError> {
    let app = project_dir.join("app.py");
    if !app.is_file() {
        return Err(BuildError::MissingFile {
            path: app,
            hint: "the module defining `class Machine(wit_world.exports.Machine)`",
        });
    }
    let tool = tools.componentize_py(project_dir);
    let tmp = temp_wit_dir()?;
    let component = tmp.path().join("out.wasm");
    run_tool(
        "componentize-py",
        py_tools_hint,
        project_dir,
        Command::new(&tool)
            .arg("-d")
            .arg(tmp.path().join("wit"))
            .args(["-w", "state-machine", "componentize", "app", "-p"])
            .arg(project_dir)
            .arg("-o")
            .arg(&component)
            .current_dir(project_dir)
            // Do not litter the project with bytecode caches.
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )?;
    let bytes = std::fs::read(&component).map_err(io_err(&component))?;
    check_and_write(&bytes, out, WasiProfile::Deterministic)
}

/// Install a new JS or Python project's componentization toolchain inside the project, where
/// `wraft build` looks first: `npm install` (the template's `package.json` pins componentize-js)
/// or a `.venv` with componentize-py. Rust projects need nothing.
///
/// Cost: one `npm install` (~15 s) or venv + `pip install` (~30 s), network; nothing if already
/// installed.
pub fn install_project_tools(project: &Path, lang: GuestLang) -> Result<(), BuildError> {
    match lang {
        GuestLang::Js => {
            let pkg = project.join("node_modules/@bytecodealliance/componentize-js/package.json");
            if !pkg.is_file() {
                run_tool(
                    "npm",
                    node_install_hint,
                    project,
                    Command::new("npm")
                        .args(["install", "--no-audit", "--no-fund"])
                        .current_dir(project),
                )?;
            }
            Ok(())
        }
        GuestLang::Python => install_py_tools(&project.join(".venv")).map(|_| ()),
        GuestLang::Rust => Ok(()),
    }
}

/// Install componentize-js (pinned) under the npm prefix `dir` unless it is already there, and
/// return `dir` (to pass as `$WRAFT_JS_TOOLS`). For tests and first-time setup.
///
/// Cost: one `npm install` (~1 min, network) the first time; a file check afterwards.
pub fn install_js_tools(dir: &Path) -> Result<PathBuf, BuildError> {
    let pkg = dir.join("node_modules/@bytecodealliance/componentize-js/package.json");
    if pkg.is_file() {
        return Ok(dir.to_owned());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let manifest = dir.join("package.json");
    if !manifest.is_file() {
        std::fs::write(
            &manifest,
            "{\"name\":\"wraft-js-tools\",\"private\":true}\n",
        )
        .map_err(io_err(&manifest))?;
    }
    run_tool(
        "npm",
        node_install_hint,
        dir,
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--save-exact",
                "--prefix",
            ])
            .arg(dir)
            .arg(format!(
                "@bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"
            )),
    )?;
    Ok(dir.to_owned())
}

/// Create a Python venv at `dir` with componentize-py (pinned) unless it is already there, and
/// return `dir` (to pass as `$WRAFT_PY_TOOLS`). For tests and first-time setup.
///
/// Cost: `python3 -m venv` + one `pip install` (~30 s, network) the first time.
pub fn install_py_tools(dir: &Path) -> Result<PathBuf, BuildError> {
    let bin = dir.join("bin/componentize-py");
    if bin.is_file() {
        return Ok(dir.to_owned());
    }
    let python_hint = || {
        "install Python 3.10 or newer with venv support (https://www.python.org, or e.g. `apt \
         install python3 python3-venv`)"
            .to_string()
    };
    run_tool(
        "python3",
        python_hint,
        dir,
        Command::new("python3").args(["-m", "venv"]).arg(dir),
    )?;
    run_tool(
        "pip",
        python_hint,
        dir,
        Command::new(dir.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("componentize-py=={COMPONENTIZE_PY_VERSION}"),
        ]),
    )?;
    Ok(dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_componentize_py_says_what_to_install() {
        let project = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::write(project.path().join("app.py"), "").unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(project.path().join("no-such-componentize-py"));
        let err = run_tool("componentize-py", py_tools_hint, project.path(), &mut cmd)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&format!("componentize-py=={COMPONENTIZE_PY_VERSION}")),
            "{err}"
        );
    }

    #[test]
    fn language_is_detected_from_the_project_files() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        assert_eq!(detect_lang(d.path()), None);
        std::fs::write(d.path().join("app.py"), "").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(detect_lang(d.path()), Some(GuestLang::Python));
        std::fs::write(d.path().join("package.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(detect_lang(d.path()), Some(GuestLang::Js));
    }
}
