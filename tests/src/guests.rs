//! Example guests, built fresh from source for each test run (never checked-in binaries).

use std::path::{Path, PathBuf};

/// The cargo target directory tests build guests into: `$CARGO_TARGET_DIR/guests`, or
/// `<workspace>/target/guests`.
pub fn target_dir() -> PathBuf {
    let root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    root.join("guests")
}

/// Build `examples/<name>` into a component and return its path.
///
/// Cargo's lock serializes concurrent builds from many test processes, and the component is
/// written atomically, so this is safe to call from anywhere, any number of times; a fresh build is
/// a no-op costing well under a second. Panics with cargo's diagnostics if the build fails.
pub fn build(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    match wraft::build::build_guest(&dir, Some(&target_dir())) {
        Ok(g) => g.component,
        Err(e) => panic!("building guest {name}: {e}"),
    }
}
