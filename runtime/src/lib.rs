//! The `wraft` command's library: everything the binary does beyond running a node, kept
//! here so the end-to-end tests can call it.
//!
//! The runtime itself lives in crates by role: `wraft-proto` (the protocol), `wraft-client`
//! (the Rust client), `wraft-config` (the node's configuration), `wraft-host` (the wasm host),
//! `wraft-node` (the node). This crate is the top floor: it owns the terminal.
//!
//! - [`backup`] — `snapshot save`, `restore`, `recover`: backup, restore and quorum-loss recovery.
//! - [`cli`] — the cluster commands (`status`, `deploy`, `propose`, `query`, `snapshot`, `cert`).
//! - [`config_check`] — `wraft config check`: a node's configuration validated offline.
//! - [`reload`] — `wraft node`'s SIGHUP handler (TLS reload).
//! - [`build`] — turning a guest crate into a checked component.
//! - [`fidelity`] — the snapshot fidelity check `wraft build` runs on a built component.
//! - [`templates`] — `wraft new`: machine projects from templates in the binary.
//! - [`dev`] — `wraft dev`: the author's build–deploy–upgrade loop on a local cluster.
//! - [`polyglot`] — building JavaScript and Python guests (componentize-js, componentize-py).
//! - [`local`] — laying out a local cluster (demo, tests).
//! - [`ops`] — operator commands over several nodes: `status` with versions, `snapshot trigger`.
//! - [`service`] — `wraft node` as a service: SIGTERM/SIGINT and the graceful stop.
//! - [`bench`] — `wraft bench`, the load generator.

pub mod backup;
pub mod bench;
pub mod build;
pub mod cli;
pub mod config_check;
pub mod dev;
pub mod fidelity;
pub mod local;
pub mod ops;
pub mod polyglot;
pub mod reload;
pub mod service;
pub mod templates;
