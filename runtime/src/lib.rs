//! wraft: a Raft node that runs replicated state machines shipped as WebAssembly components.
//!
//! This crate so far holds the sandboxed wasm host ([`host`]) and the guest build tool
//! ([`build`]); the node driver, client and CLI come next.

pub mod build;
pub mod host;
