//! Instantiating a machine, as a node does, without a cluster.

use wraft_host::{HostConfig, HostEngine};
use wraft_tests::guests;

/// The memory-image files this process holds open (`/proc/self/fd` links).
fn memory_image_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.contains("memfd:wasm-memory-image"))
        .collect()
}

/// wasmtime's copy-on-write memory images are memfds it seals read-only, and sealing fails
/// (`EBUSY`, "cannot add seals to the memfd") while anything else in the kernel holds a
/// reference to one of the file's pages, as the memory monitor of this VM's kernel does when it
/// samples pages: a test suite run failed to instantiate a JavaScript guest that way. A node
/// instantiates a machine at deploy, start and restore, and must not fail at random there, so
/// the host initializes guest memory by copying and creates no memfd.
#[test]
#[cfg(target_os = "linux")]
fn instantiating_a_machine_creates_no_sealed_memory_image() {
    let cache = tempfile::tempdir().expect("temp dir");
    let engine = HostEngine::new(HostConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..HostConfig::default()
    })
    .expect("host engine");
    let before = memory_image_fds();
    let bytes = std::fs::read(guests::build("kv")).expect("kv component");
    // Compiled, then loaded again from the compile cache: both paths a node takes.
    for _ in 0..2 {
        let module = engine.load(&bytes).expect("loading kv");
        let mut instance = module.instantiate().expect("instantiating kv");
        instance.info().expect("kv answers");
        let now = memory_image_fds();
        assert!(
            now.len() <= before.len(),
            "memory-image files open while an instance runs: {now:?}"
        );
    }
}
