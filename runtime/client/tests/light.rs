//! Architecture invariant: an application that depends on `wraft-client` builds none of the
//! wasm host, the CLI or the node. This test fails if the client's dependency graph (normal
//! dependencies, as `cargo tree` resolves them from the workspace lockfile) reaches any of them.

use std::path::Path;
use std::process::Command;

/// Crates an application of the client must never compile.
const HEAVY: &[&str] = &[
    "wasmtime",
    "cranelift-codegen",
    "wit-component",
    "clap",
    "notify",
    "wraft-host",
    "wraft-node",
    "wraft",
];

#[test]
fn the_client_crate_pulls_no_wasm_host_cli_or_node() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(
        names.contains(&"wraft-transport"),
        "unexpected tree:\n{tree}"
    );
    let heavy: Vec<&&str> = HEAVY.iter().filter(|h| names.contains(h)).collect();
    assert!(
        heavy.is_empty(),
        "wraft-client depends on {heavy:?}:\n{tree}"
    );
}
