//! Write the seed corpus of every fuzz target: `fuzz/corpus/<target>/<name>`.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml -p wraft-fuzz-harness --bin gen-corpus [DIR]
//! ```
//!
//! `DIR` defaults to `fuzz/corpus`. Existing files with the same names are
//! overwritten; files the fuzzer added are left alone.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus"));
    let seeds = wraft_fuzz_harness::seeds::all();
    for (target, name, bytes) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), root.display());
    Ok(())
}
