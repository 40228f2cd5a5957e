//! Architecture invariant: `wraft-snapshot` never depends on the wasm host, directly or through
//! another wraft crate. The fuzz harness decodes its formats and `wraft snapshot inspect` reads
//! files with it; neither may pull wasmtime (an instrumented wasmtime build takes 20 minutes).

use std::path::Path;

/// Crates that bring wasmtime, or are the node/binary built on it.
const HOST_CRATES: [&str; 7] = [
    "wraft-host",
    "wraft-node",
    "wraft",
    "wasmtime",
    "wasmtime-wasi",
    "wit-component",
    "wasmparser",
];

/// The dependency names in a manifest's `[dependencies]` and `[dev-dependencies]` sections.
fn deps(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]" || line == "[dev-dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// Where the workspace manifest puts crate `name` (`name = { path = "…" }`).
fn crate_path(workspace: &str, name: &str) -> String {
    workspace
        .lines()
        .map(str::trim)
        .find_map(|l| {
            let (n, rest) = l.split_once('=')?;
            let rest = rest.split_once("path = \"")?.1;
            (n.trim() == name).then(|| rest.split('"').next().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| panic!("{name} has no path in the workspace manifest"))
}

fn manifest(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn neither_this_crate_nor_the_wraft_crates_it_uses_depend_on_the_host() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mine = deps(&manifest(here));
    assert!(
        mine.iter().any(|d| d == "wraft-storage"),
        "parsed: {mine:?}"
    );
    let mut checked = vec![("wraft-snapshot".to_owned(), mine.clone())];
    let root = here.join("../..");
    let workspace = manifest(&root);
    for d in mine.iter().filter(|d| d.starts_with("wraft-")) {
        checked.push((
            d.clone(),
            deps(&manifest(&root.join(crate_path(&workspace, d)))),
        ));
    }
    for (krate, deps) in &checked {
        for d in deps {
            assert!(
                !HOST_CRATES.contains(&d.as_str()),
                "{krate} depends on {d}: wraft-snapshot must build without the wasm host"
            );
        }
    }
}

#[test]
fn the_sources_do_not_name_the_host() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source dir") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&p).expect("readable");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.contains("wraft_host") && !code.contains("wasmtime"),
                    "{}:{}: {}",
                    p.display(),
                    n + 1,
                    line.trim()
                );
            }
        }
    }
    assert!(files >= 3, "found the sources");
}
