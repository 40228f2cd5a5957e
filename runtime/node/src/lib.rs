//! The node: storage, transport, the Raft engine and the machines, wired
//! together.
//!
//! ```text
//!  transport ──raft msgs──▶ ┐
//!  clients ──requests────▶  ├─▶ driver task ── owns Engine ──▶ actions, in order:
//!  storage ──durable seq──▶ │                    Persist  → group-commit writer (never waited on)
//!  ticker ──ticks────────▶  ┘                    Send     → transport, at once (never blocks)
//!                                                Apply    → applier task (machine threads)
//! ```
//!
//! The driver never awaits storage, a guest or a peer: a persist is submitted
//! and its completion comes back as an `Event::Persisted`; the engine itself
//! holds back messages that reveal state (votes, acks) until then.

mod apply;
mod codec;
mod divergence;
mod driver;
pub mod metrics;
mod node;
mod server;
mod snap;
pub mod snapshot;

pub use apply::ApplyState;
pub use driver::{DRIVER_BATCH_EVENTS_MAX, REQUEST_QUEUE_MAX};
pub use node::{Node, NodeError};
