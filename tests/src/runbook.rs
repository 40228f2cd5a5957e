//! The runbook's tested blocks (`docs/runbook.md`): every ```sh block preceded by
//! `<!-- runbook-test: NAME -->` is extracted by name and run with bash at its step of a test
//! against real nodes (`tests/tests/runbook.rs`, and `tls_reload.rs` for the CA rotation). The
//! convention is described at the top of the runbook.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::{workspace_root, wraft_bin};

/// The tested blocks of `docs/runbook.md`, by name. A marker must start its line (an indented
/// one, as in the convention's description, is not a marker) and be followed by a ```sh fence.
pub fn runbook_blocks() -> BTreeMap<String, String> {
    let path = workspace_root().join("docs/runbook.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut blocks = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- runbook-test:")
            .and_then(|r| r.strip_suffix("-->"))
            .map(str::trim)
        else {
            continue;
        };
        let fence = lines.next().map(|(_, l)| l);
        assert_eq!(
            fence,
            Some("```sh"),
            "runbook.md line {}: the marker of block {name:?} must be followed by a ```sh fence",
            n + 1
        );
        let mut body = String::new();
        loop {
            match lines.next() {
                Some((_, "```")) => break,
                Some((_, l)) => {
                    body += l;
                    body.push('\n');
                }
                None => panic!("runbook.md: block {name:?} (line {}) is not closed", n + 1),
            }
        }
        assert!(
            blocks.insert(name.to_owned(), body).is_none(),
            "runbook.md: two blocks are named {name:?}"
        );
    }
    blocks
}

/// A directory holding `wraft` (the binary under test), to put first on PATH.
pub fn bin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(wraft_bin(), dir.path().join("wraft")).expect("linking wraft");
    dir
}

/// Run runbook block `name` with bash (`-euo pipefail`) and `env`; its stdout. Panics with the
/// script and its output if it fails.
pub fn run_block(bin: &Path, name: &str, env: &[(&str, String)]) -> String {
    let blocks = runbook_blocks();
    let script = blocks
        .get(name)
        .unwrap_or_else(|| panic!("docs/runbook.md has no block named {name:?}"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(bin)
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "runbook block {name:?} failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
