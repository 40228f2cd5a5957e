//! wraft's node snapshots, without the wasm host: the snapshot file format ([`format`](mod@format)) and
//! InstallSnapshot over QUIC ([`transfer`]).
//!
//! **Architecture invariant:** nothing here depends on wasmtime (`wraft-host`): the
//! fuzz harness decodes these formats, and `wraft snapshot inspect` reads files, without a
//! wasm engine. Taking a snapshot of running machines and restoring one into instances is
//! `wraft-node`'s. `tests/no_host_dependency.rs` enforces it.

#![forbid(unsafe_code)]

pub mod format;
pub mod transfer;
