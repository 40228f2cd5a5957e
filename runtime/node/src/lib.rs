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
//!
//! Where things are:
//! - `node` — [`Node`]: start (storage recovery, transport, host, applier, driver), call
//!   in-process, shut down.
//! - `driver` — the task that owns the engine: its loop (`mod`), the action interpreter
//!   (`actions`), client requests (`requests`), snapshot orchestration (`snapshots`).
//! - `apply` — the applier: committed entries into machine calls, sessions, reads, halting and
//!   re-deriving on node-local failures, the applier's snapshots.
//! - `divergence` — outcome digests and checkpoints that catch replicas that disagree.
//! - `server` — client streams: one task per connection, bounded in-flight requests.
//! - `snapshot` — node snapshots with the machines: creation from the running machines on a
//!   follower and from shadow instances on the leader (`create`), restore and rebuilds
//!   (`restore`). The file format and InstallSnapshot over
//!   QUIC are `wraft-snapshot`, which needs no wasm host.
//! - [`recover`] — quorum-loss recovery, offline: a surviving node forced to be the only voter.
//! - `limits` — bounds shared by the applier and snapshot creation.
//! - `codec` — engine entries and commands as log bytes.
//! - [`metrics`] — the process-wide Prometheus registry, its histogram buckets and the metric
//!   names.
//! - [`watch`] — [`WatchHub`]: a bounded history of applied results (node-local, never
//!   replicated) and subscriptions to one machine's results from an index on.
//! - `health` — the node's HTTP listener on `node.metrics_listen`: `/metrics`, `/livez`,
//!   `/readyz` (readiness published by the driver on every tick), and the disk-space gauges.
//!
//! Library code here logs through `tracing` and prints nothing; the `wraft` binary owns the
//! terminal.

mod apply;
pub mod auth;
mod codec;
mod divergence;
mod driver;
mod health;
mod http;
mod limits;
pub mod metrics;
mod modules;
mod node;
pub mod recover;
mod server;
mod snapshot;
mod tls_reload;
pub mod tokens;
pub mod watch;

pub use apply::ApplyState;
pub use driver::stop::StopReport;
pub use driver::{DRIVER_BATCH_EVENTS_MAX, REQUEST_QUEUE_MAX};
pub use modules::RECENT_KEEP_MS_ENV as MODULE_RECENT_KEEP_MS_ENV;
pub use node::{
    MODULE_STORE_DIR, Node, NodeError, STOP_GRACE_MS, STOP_LINGER_MS, wait_dir_released,
};
pub use tls_reload::{TLS_WATCH_DEBOUNCE_MS, TlsReload, TlsReloadError, TlsReloader};
pub use watch::{Subscription, WatchBounds, WatchError, WatchEvent, WatchHub, WatchOutcome};
pub use wraft_storage::DirReleased;

/// What this build says about itself in [`wraft_proto::Request::NodeInfo`]: the workspace's
/// package version (`wraft-node` and the `wraft` binary share it) and the git commit, if the
/// build set `WRAFT_GIT_COMMIT` (no build script: a release build passes it when it wants it).
pub fn node_info(id: u64) -> wraft_proto::NodeInfo {
    wraft_proto::NodeInfo {
        id,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: option_env!("WRAFT_GIT_COMMIT").map(str::to_owned),
    }
}
