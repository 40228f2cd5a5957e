//! wraft: a Raft node that runs replicated state machines shipped as
//! WebAssembly components.
//!
//! - [`host`] — the sandboxed wasm host (one wasmtime engine per node, a
//!   thread per machine instance).
//! - [`node`] — the node driver: storage, transport, Raft engine and machines.
//! - [`client`] — the Rust client applications use.
//! - [`config`] — the node's TOML configuration.
//! - [`proto`] — the client protocol and the replicated command format.
//! - [`build`] — turning a guest crate into a checked component.
//! - [`fidelity`] — the snapshot fidelity check `wraft build` runs on a built component.
//! - [`templates`] — `wraft new`: machine projects from templates in the binary.
//! - [`dev`] — `wraft dev`: the author's build–deploy–upgrade loop on a local cluster.
//! - [`polyglot`] — building JavaScript and Python guests (componentize-js, componentize-py).
//! - [`local`] — laying out a local cluster (demo, tests).
//! - [`metrics`] — the Prometheus endpoint and the metric names.
//! - [`bench`] — `wraft bench`, the load generator.

pub mod bench;
pub mod build;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod fidelity;
pub mod host;
pub mod local;
pub mod metrics;
pub mod node;
pub mod polyglot;
pub mod proto;
pub mod snapshot;
pub mod templates;
pub mod wasi_profile;
