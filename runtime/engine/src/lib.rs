//! # wraft-engine: a sans-IO Raft engine
//!
//! A pure state machine in the style of `quinn-proto`: the host feeds
//! [`Event`]s with [`Engine::step`] and collects [`Action`]s with
//! [`Engine::poll_actions`]. The engine never touches sockets, files, clocks,
//! threads or async runtimes; time arrives as [`Event::Tick`] and randomness
//! comes from the seed in [`Config`].
//!
//! ## The host's contract
//! 1. Execute actions **in order**. [`Action::Persist`] goes to a (group-commit)
//!    writer; report completion with [`Event::Persisted`] (for every batch;
//!    reporting the latest `seq` covers all earlier ones).
//! 2. Send every [`Action::Send`] at once. The engine itself holds back any
//!    message that reveals not-yet-durable state (a vote, an ack, a term) until
//!    the host reports the persist it depends on, and drops it if the term moved
//!    on. Leader appends go out before the leader's own write (Raft thesis
//!    §10.2.1); the leader counts itself only once that write is durable.
//! 3. [`Action::Apply`] hands out committed entries; apply them off the
//!    consensus path. Reads: [`Event::Read`] → [`Action::ReadReady`] `{ index }`
//!    → serve once applied ≥ index.
//! 4. Snapshots are the host's bytes: the engine hints ([`Action::SnapshotHint`]),
//!    learns of them ([`Event::SnapshotCreated`]), says whom to stream which
//!    snapshot from which offset ([`Action::SendSnapshot`]) and when to swap
//!    machines in on a follower ([`Action::InstallSnapshot`]).
//!
//! Feed many events (e.g. all queued proposals) before one `poll_actions` call
//! to batch them into one persist and one append per follower.
//!
//! ```
//! use wraft_engine::*;
//! let mut e = Engine::new(
//!     Config::new(1, 42),
//!     InitialState {
//!         snapshot: SnapshotMeta { membership: Membership::with_voters([1]), ..Default::default() },
//!         ..Default::default()
//!     },
//! ).unwrap();
//! let mut out = Vec::new();
//! for _ in 0..20 { e.step(Event::Tick).unwrap(); }
//! e.poll_actions(&mut out);
//! assert_eq!(e.role(), Role::Leader); // a single voter elects itself
//! ```
//!
//! Modules: [`session`] (client deduplication for the apply layer),
//! `lincheck` (linearizability checker, behind the `lincheck` feature), `sim`
//! (deterministic simulator, behind the `sim` feature, which includes
//! `lincheck`). See `NOTES.md` for the architecture and invariants.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod engine;
#[cfg(feature = "lincheck")]
pub mod lincheck;
mod log;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
mod types;

pub use config::{Config, ConfigError};
pub use engine::{
    Action, Engine, EngineError, EngineStats, Event, InitialState, PersistBatch, ProposalError,
    ReadError, Role, SnapshotReason,
};
pub use session::{SessionCheck, SessionTable};
pub use types::*;
