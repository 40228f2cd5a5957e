//! `wraft-proto`: the client protocol ([`proto`]) and the node configuration
//! ([`config`]) of wraft, compiled without the wasm host.
//!
//! Both modules are the very source files of the `wraft` crate
//! (`runtime/src/proto.rs`, `runtime/src/config.rs`), included here with
//! `#[path]`. They only need `serde`, `toml`, `thiserror` and `tracing`, so
//! this crate builds in seconds and carries no wasmtime: the fuzz targets in
//! `fuzz/` depend on it (instrumenting wasmtime for coverage would cost a
//! 20-minute build), and a future thin client could too.
//!
//! # Transitional
//!
//! This is a first step. The files stay where they are so that concurrent
//! edits to `runtime/src/{proto,config}.rs` keep merging cleanly; the
//! `wraft` crate still compiles its own copy of the types, so a
//! `wraft::proto::Request` and a `wraft_proto::proto::Request` are distinct
//! Rust types with the same postcard encoding. The intended end state is
//! that the files move into this crate and `wraft` re-exports them
//! (`pub use wraft_proto::{config, proto};`).
//!
//! Costs and failures are documented on the items themselves.

#[path = "../../src/config.rs"]
pub mod config;
#[path = "../../src/proto.rs"]
pub mod proto;
#[path = "../../src/wasi_profile.rs"]
pub mod wasi_profile;
