//! Architecture invariant: the engine does no I/O. This test fails if the
//! crate's sources or manifest reach for an async runtime, the file system,
//! the network, wall clocks or threads.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let p = entry.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn engine_sources_use_no_io_clock_thread_or_async() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() >= 5, "found the sources");
    let forbidden = [
        "std::fs",
        "std::net",
        "std::time",
        "Instant",
        "SystemTime",
        "std::thread",
        "thread::spawn",
        "tokio",
        "async fn",
        ".await",
        "std::process",
        "std::env",
    ];
    let mut hits = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable");
        let in_sim = f.components().any(|c| c.as_os_str() == "sim");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for pat in forbidden {
                // The simulator (test-only feature) may read its seed from the environment.
                if in_sim && pat == "std::env" {
                    continue;
                }
                if code.contains(pat) {
                    hits.push(format!(
                        "{}:{}: `{pat}` in: {}",
                        f.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "the engine must stay sans-IO:\n{}",
        hits.join("\n")
    );
}

#[test]
fn engine_manifest_depends_on_no_runtime_or_io_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("manifest");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("deps section");
    let deps = deps.split("\n[").next().unwrap_or("");
    let allowed = ["bytes", "fastrand", "serde", "thiserror", "tracing"];
    for line in deps
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['=', ' ']).next().unwrap_or("");
        assert!(
            allowed.contains(&name),
            "dependency `{name}` is not on the engine's allow-list {allowed:?}"
        );
    }
}
