//! The plugin author's path, end to end, through the real `wraft` binary: `wraft new`,
//! `wraft build`, the template's own `cargo test`, `wraft dev` (upgrade on change with state kept)
//! and every shell block of `docs/guide.md`, run in order.
//!
//! Projects are created in temporary directories and depend on this checkout's `guest-sdk`; they
//! build into `$CARGO_TARGET_DIR/guests` (shared with the other guest builds, so dependencies
//! compile once). Every process a test starts runs in its own process group, killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wraft::build::{BuildError, BuildOptions, build_project};
use wraft_host::{HostConfig, HostEngine, LoadError};
use wraft_tests::{guests, workspace_root, wraft_bin};

/// Bound on one build-and-deploy step of `wraft dev` (cargo + compile checks + 3 node loads).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// A command without the variables cargo sets for this test process (they would make the
/// inner cargo rebuild dependencies whose build scripts watch them), with the wraft binary's
/// directory first on `PATH`, the SDK of this checkout and the shared guest target directory.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                k,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            cmd.env_remove(&key);
        }
    }
    let bin_dir = wraft_bin().parent().expect("binary dir").to_owned();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir];
    paths.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("WRAFT_SDK_PATH", workspace_root().join("guest-sdk"))
        .env("CARGO_TARGET_DIR", guests::target_dir())
        .env("RUST_LOG", "warn");
    cmd
}

/// Run to completion; panic with the output unless it succeeds. Returns stdout.
#[track_caller]
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A child in its own process group; dropping it kills the group.
struct Group {
    child: Child,
}

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        use std::os::unix::process::CommandExt;
        let child = cmd.process_group(0).spawn().expect("spawn");
        Group { child }
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .status();
    }

    /// SIGTERM the group and wait for the leader to exit; returns whether it exited cleanly.
    fn terminate(&mut self, timeout: Duration) -> bool {
        self.signal("-TERM");
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "process group did not exit within {} s of SIGTERM",
            timeout.as_secs()
        );
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

/// Create the template project `name` in `dir` with the real binary.
fn new_project(dir: &Path, name: &str) -> PathBuf {
    let out = run_ok(
        command(wraft_bin())
            .args(["new", name, "--dir"])
            .arg(dir.join(name)),
        "wraft new",
    );
    assert!(
        out.contains(&format!("created rust machine \"{name}\"")),
        "{out}"
    );
    dir.join(name)
}

#[test]
fn new_js_and_python_projects_arrive_with_their_toolchain_and_passing_native_tests() {
    // From an empty folder, `wraft new` + `wraft dev` must be enough: the JS and Python
    // starters install their componentizer into the project, where `wraft build` looks first.
    // (Building those components is covered by tests/polyglot.rs with the same pinned tools.)
    // Needs node/npm, python3 and the npm registry and PyPI, like tests/polyglot.rs, and obeys
    // the same opt-out.
    if std::env::var_os("WRAFT_SKIP_POLYGLOT").is_some() {
        eprintln!("WRAFT_SKIP_POLYGLOT is set: not creating JS/Python projects");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    for (lang, name, tool, native_test) in [
        (
            "js",
            "shop",
            "node_modules/@bytecodealliance/componentize-js/package.json",
            ["node", "--test"].as_slice(),
        ),
        (
            "python",
            "tally",
            ".venv/bin/componentize-py",
            ["python3", "-m", "unittest"].as_slice(),
        ),
    ] {
        let dir = tmp.path().join(name);
        let out = run_ok(
            command(wraft_bin())
                .args(["new", name, "--lang", lang, "--dir"])
                .arg(&dir),
            "wraft new",
        );
        assert!(out.contains("installing the toolchain"), "{out}");
        assert!(
            dir.join(tool).is_file(),
            "{lang}: {tool} not installed:\n{out}"
        );
        assert!(dir.join(".gitignore").is_file(), "{lang}: no .gitignore");
        run_ok(
            command(native_test[0])
                .args(&native_test[1..])
                .current_dir(&dir),
            &format!("{lang} starter's native tests"),
        );
    }
    // Opting out leaves the project without the toolchain.
    let bare = tmp.path().join("bare");
    run_ok(
        command(wraft_bin())
            .args(["new", "bare", "--lang", "js", "--no-install", "--dir"])
            .arg(&bare),
        "wraft new --no-install",
    );
    assert!(!bare.join("node_modules").exists());
}

#[test]
fn a_new_project_builds_into_a_checked_component_and_its_own_tests_pass() {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = new_project(tmp.path(), "starter");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "tests/machine.rs",
        "Cargo.lock",
        "wraft-check.jsonl",
    ] {
        assert!(project.join(f).is_file(), "{f} missing");
    }

    let out = run_ok(
        command(wraft_bin()).arg("build").arg(&project),
        "wraft build",
    );
    assert!(out.contains("passed the deploy checks"), "{out}");
    assert!(out.contains("machine starter 0.1.0"), "{out}");
    // The template's own sample log drives the snapshot fidelity check.
    assert!(
        out.contains("snapshot fidelity: 8 entries, 4 queries: ok"),
        "{out}"
    );
    let component = project.join("target/wraft/starter.wasm");
    let engine = HostEngine::new(HostConfig::default()).expect("engine");
    let module = engine
        .load_file(&component)
        .expect("the output loads as a node would");
    assert_eq!(module.info().name, "starter");

    // The template's tests (behaviour, determinism, round trip, golden snapshot) pass, and the
    // first run writes the golden snapshot an author commits.
    let out = run_ok(
        command("cargo").arg("test").current_dir(&project),
        "cargo test in the new project",
    );
    assert!(!out.contains("FAILED"), "{out}");
    assert!(project.join("tests/golden/format-1.snap").is_file());

    // A check failure writes nothing: the same size limit a node applies, set too low.
    let out_path = tmp.path().join("refused.wasm");
    let opts = BuildOptions {
        out: Some(out_path.clone()),
        target_dir: Some(guests::target_dir()),
        host: Some(HostConfig {
            module_bytes_max: 4096,
            ..HostConfig::default()
        }),
        ..BuildOptions::default()
    };
    match build_project(&project, &opts) {
        Err(BuildError::Invalid(LoadError::TooLarge { max: 4096, found })) => {
            assert!(found > 4096)
        }
        other => panic!("expected the size limit to refuse the component, got {other:?}"),
    }
    assert!(
        !out_path.exists(),
        "a refused component must not be written"
    );
}

/// The template's machine, version 2: snapshot format 2 records `(key, value, value length)`,
/// and format-1 records are migrated.
fn migrate_template_to_format_2(src: &str) -> String {
    let version = r#"const VERSION: &'static str = env!("CARGO_PKG_VERSION");"#;
    let records = src
        .find("impl Records for Store {")
        .expect("the template's Records impl");
    let end = src
        .find("wraft_guest::machine!(Store);")
        .expect("machine! line");
    assert!(
        src.contains(version),
        "the template's VERSION line changed; update this test"
    );
    let head = src[..records].replace(
        version,
        "const VERSION: &'static str = \"0.2.0\";\n    const SNAPSHOT_FORMAT: u32 = 2;\n    \
         const OLDEST_SNAPSHOT_FORMAT: u32 = 1;",
    );
    let v2_records = r#"impl Records for Store {
    type Record<'a> = (&'a str, &'a str, u64);
    type OwnedRecord = (String, String, u64);

    fn records(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str(), v.len() as u64))
    }

    fn restore_record(&mut self, (key, value, len): (String, String, u64)) -> Result<(), String> {
        if value.len() as u64 != len {
            return Err(format!("{key}: length {len} does not match its value"));
        }
        self.map.insert(key, value);
        Ok(())
    }

    fn restore_old_record(&mut self, format: u32, record: &[u8]) -> Result<(), String> {
        if format != 1 {
            return Err(format!("snapshot format {format} is not supported"));
        }
        let (key, value): (String, String) = wraft_guest::decode_record(record)?;
        self.map.insert(key, value);
        Ok(())
    }
}

"#;
    format!("{head}{v2_records}{}", &src[end..])
}

/// `wraft dev`'s stdout, line by line, with the transcript kept for failure messages.
struct Transcript {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Transcript {
    fn new(stdout: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Transcript {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first new line starting with `prefix`, or panic after `timeout` with the transcript.
    #[track_caller]
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line starting with {prefix:?} ({e:?}); wraft dev said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

fn send(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("write to wraft dev");
    stdin.flush().expect("flush");
}

#[test]
fn wraft_dev_upgrades_on_every_change_migrating_the_state_and_survives_a_broken_build() {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = new_project(tmp.path(), "devloop");
    let mut dev = Group::spawn(
        command(wraft_bin())
            .arg("dev")
            .arg(&project)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdin = dev.child.stdin.take().expect("stdin");
    let mut out = Transcript::new(dev.child.stdout.take().expect("stdout"));

    let line = out.expect("== deployed", STEP_TIMEOUT);
    assert!(line.contains("devloop 0.1.0"), "{line}");
    out.expect("== ready", Duration::from_secs(10));
    assert!(project.join("target/wraft/dev.env").is_file());
    send(
        &mut stdin,
        r#"propose {"op":"put","key":"kept","value":"across"}"#,
    );
    let line = out.expect("== propose", Duration::from_secs(30));
    assert!(line.ends_with(r#"{"prev":null}"#), "{line}");

    // A change that is an upgrade with a state migration: snapshot format 2 stores each value's
    // length too, and version 2 still restores format 1. Rebuilt, deployed as an upgrade; each
    // node hands version 1's snapshot to version 2's migration, inside wasm.
    let lib = project.join("src/lib.rs");
    let src = std::fs::read_to_string(&lib).expect("lib.rs");
    let v2 = migrate_template_to_format_2(&src);
    std::fs::write(&lib, &v2).expect("write lib.rs");
    let line = out.expect("== change", Duration::from_secs(30));
    assert!(line.contains("src/lib.rs"), "{line}");
    let line = out.expect("== build", STEP_TIMEOUT);
    assert!(line.starts_with("== build ok"), "{line}");
    let line = out.expect("  machine", Duration::from_secs(5));
    assert!(line.contains("devloop 0.2.0 (snapshot format 2)"), "{line}");
    let line = out.expect("== upgraded", STEP_TIMEOUT);
    assert!(
        line.contains("devloop 0.2.0") && line.contains("state carried across"),
        "{line}"
    );
    send(&mut stdin, r#"query {"op":"get","key":"kept"}"#);
    let line = out.expect("== query", Duration::from_secs(30));
    assert!(line.ends_with(r#"{"value":"across"}"#), "{line}");

    // A change that does not compile: reported, and the running version keeps serving.
    std::fs::write(&lib, format!("{v2}\nfn broken( {{\n")).expect("write lib.rs");
    let line = out.expect("== build", STEP_TIMEOUT);
    assert!(line.starts_with("== build failed"), "{line}");
    send(&mut stdin, r#"q {"op":"get","key":"kept"}"#);
    let line = out.expect("== query", Duration::from_secs(30));
    assert!(line.ends_with(r#"{"value":"across"}"#), "{line}");

    assert!(
        dev.terminate(Duration::from_secs(60)),
        "wraft dev exited uncleanly"
    );
    out.expect("== stopped", Duration::from_secs(5));
    assert!(
        !project.join("target/wraft/dev.env").exists(),
        "dev.env must go away with the cluster"
    );
}

/// The ` ```sh ` blocks of a markdown file, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```sh") => current = Some(String::new()),
            Some(b) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_author_guide_shell_blocks_run_in_order() {
    let guide = std::fs::read_to_string(workspace_root().join("docs/guide.md")).expect("guide");
    let blocks = shell_blocks(&guide);
    assert!(
        blocks.len() >= 8,
        "found only {} shell blocks",
        blocks.len()
    );
    // One script, so `cd` and `source` carry over as they do for a reader typing them. Each block
    // announces itself, so a failure names the block.
    let mut script = String::from("set -euo pipefail\n");
    for (i, b) in blocks.iter().enumerate() {
        script += &format!("echo '### block {}'\n{b}", i + 1);
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join("guide.log");
    let mut child = Group::spawn(
        command("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(tmp.path())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::piped()),
    );
    let stderr = child.child.stderr.take().expect("stderr");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "the guide script ran over 900 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let dev_log = std::fs::read_to_string(tmp.path().join("hello/dev.log")).unwrap_or_default();
    let err = errs.join().unwrap_or_default();
    assert!(
        status.success(),
        "the guide's shell blocks failed ({status}):\n--- stdout\n{out}\n--- stderr\n{err}\n--- \
         dev.log\n{dev_log}"
    );
    // What the guide says happens, happened.
    let after = |marker: &str| out.split(marker).nth(1).unwrap_or("").to_owned();
    assert!(
        after("### block 4").contains("the fidelity check caught it")
            && err.contains(r#"applied  Ok({"prev":"ada"})"#)
            && err.contains(r#"restored Ok({"prev":"ADA"})"#),
        "the unfaithful restore must fail the build, naming both outputs:\n{out}\n{err}"
    );
    assert!(after("### block 5").contains(r#"{"value":"hi"}"#), "{out}");
    assert!(
        after("### block 7").contains(r#"{"value":"hi"}"#),
        "state lost in the upgrade:\n{out}"
    );
    let trap = after("### block 8");
    assert!(trap.contains("the command trapped"), "{out}\n{err}");
    assert!(
        err.contains("keys must not explode"),
        "the trap's panic message must reach the client:\n{err}"
    );
    assert!(dev_log.contains("== stopped"), "{dev_log}");
}
