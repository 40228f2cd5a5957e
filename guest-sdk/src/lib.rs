//! Write a wraft replicated state machine: implement one trait, invoke one macro.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wraft_guest::{AppError, EntryCtx, Json, Records, StateMachine, DefaultSnapshot};
//!
//! /// A counter that every replica advances identically.
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct Counter {
//!     value: i64,
//! }
//!
//! #[derive(Deserialize)]
//! pub enum Command {
//!     Add(i64),
//!     Reset,
//! }
//!
//! impl StateMachine for Counter {
//!     const NAME: &'static str = "counter";
//!     const VERSION: &'static str = "0.1.0";
//!     type Codec = Json;                   // commands are typed as JSON at a CLI
//!     type Snapshot = DefaultSnapshot;     // records -> postcard -> zstd -> checksummed chunks
//!     type Command = Command;
//!     type Output = i64;
//!     type Query = ();
//!     type Reply = i64;
//!
//!     fn apply(&mut self, _ctx: &EntryCtx, cmd: Command) -> Result<i64, AppError> {
//!         match cmd {
//!             Command::Add(n) => {
//!                 self.value = self.value.checked_add(n).ok_or_else(|| AppError::new(1, "overflow"))?;
//!             }
//!             Command::Reset => self.value = 0,
//!         }
//!         Ok(self.value)
//!     }
//!
//!     fn query(&self, _q: ()) -> Result<i64, AppError> {
//!         Ok(self.value)
//!     }
//! }
//!
//! /// The whole state is one snapshot record.
//! impl Records for Counter {
//!     type Record<'a> = &'a Counter;
//!     type OwnedRecord = Counter;
//!     fn records(&self) -> impl Iterator<Item = &Counter> {
//!         std::iter::once(self)
//!     }
//!     fn restore_record(&mut self, record: Counter) -> Result<(), String> {
//!         *self = record;
//!         Ok(())
//!     }
//! }
//!
//! wraft_guest::machine!(Counter);
//!
//! // The same code paths the component runs, callable natively in unit tests:
//! let mut h = wraft_guest::testing::Harness::<Counter>::new();
//! assert_eq!(h.apply(br#"{"Add":5}"#).unwrap(), b"5");
//! let restored = h.snapshot_restore(64).unwrap();
//! assert_eq!(restored.query(b"null").unwrap(), b"5");
//! ```
//!
//! # How a guest is built
//!
//! A guest crate is a `cdylib` that depends on `wraft-guest` and invokes [`machine!`] once.
//! `wraft build path/to/crate` compiles it with
//! `cargo build --target wasm32-unknown-unknown --profile guest` and turns the core module into a
//! component with `wit-component`. The component imports only `wraft:machine/host` (no WASI),
//! so the host never lends a guest a clock, a file or a socket. The guest's C zstd is compiled
//! by `clang` (Debian's `clang` package is enough); its output is byte-identical to native zstd.
//!
//! # Determinism: the rules a guest must keep
//!
//! Every replica applies the same log and must reach the same state, byte for byte:
//! - Iterate only ordered collections: use `BTreeMap`/`BTreeSet`, never `std::collections::HashMap`
//!   with its randomly seeded hasher (on `wasm32-unknown-unknown` the seed is fixed, but relying on
//!   that is fragile and the iteration order still depends on insertion history and capacity).
//! - Time reaches a guest only through [`EntryCtx::timestamp_ms`], assigned by the leader.
//!   There is no clock, no randomness source, no thread and no file system; derive pseudo-random
//!   values from the entry (index, term, command) if you need them.
//! - Floats are deterministic in wasm (the host canonicalizes NaNs), but prefer integers for money.
//! - Do not depend on addresses (`as usize` of pointers) or on allocation failure.
//! - A panic is a *trap*: the host discards the instance and rebuilds it from a snapshot. Return an
//!   [`AppError`] for anything the application can reject; it becomes part of the replicated result.
//!
//! # Costs
//! Each entry costs one command decode, your `apply`, one output encode, and two host calls that
//! bracket the entry for fuel accounting (see `begin-entry` in `wit/machine.wit`). Snapshots stream:
//! the default format keeps at most one piece of serialized records (256 KiB) and its compressed
//! frame in memory beyond the state itself, and cuts pieces where the content says, so that what
//! did not change between two snapshots gives the same chunks; restore keeps the old state and
//! the state being rebuilt until `finish` swaps them.

mod codec;
#[cfg(any(target_arch = "wasm32", test))]
mod mem;
#[doc(hidden)]
pub mod rt;
mod snapshot;
pub mod testing;

pub use codec::{Codec, Json, JsonOrPostcard, Postcard};
pub use snapshot::{
    CDC_AVG_BYTES, CDC_MAX_BYTES, CDC_MIN_BYTES, DefaultSnapshot, FRAME_HEADER_BYTES, Records,
    SnapshotFormat, decode_record,
};

#[doc(hidden)]
pub use rt as __rt;

/// The author guide (`docs/guide.md`): every Rust block in it is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
pub struct AuthorGuide;

/// Bindings generated from `wit/machine.wit`. Guest authors normally never touch these.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "state-machine",
        pub_export_macro: true,
        export_macro_name: "__export_state_machine",
        default_bindings_module: "wraft_guest::bindings",
    });
}

/// Where a committed entry sits in the log, and the only time a guest ever sees.
///
/// Identical on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryCtx {
    /// Log index of the entry; strictly increasing across calls.
    pub index: u64,
    /// Raft term in which the entry was proposed.
    pub term: u64,
    /// Milliseconds since the Unix epoch, assigned by the leader at proposal time.
    pub timestamp_ms: u64,
}

/// A deterministic application error: part of the replicated result, returned to the client.
///
/// Codes `0xFFFF_0000..=0xFFFF_FFFF` are reserved for wraft itself (see the `CODE_*` constants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppError {
    /// Application-defined code; 0 means unspecified.
    pub code: u32,
    /// Human-readable reason.
    pub message: String,
}

impl AppError {
    /// The command bytes could not be decoded with the machine's [`Codec`].
    pub const CODE_BAD_COMMAND: u32 = 0xFFFF_0001;
    /// The query bytes could not be decoded with the machine's [`Codec`].
    pub const CODE_BAD_QUERY: u32 = 0xFFFF_0002;
    /// The output could not be encoded with the machine's [`Codec`].
    pub const CODE_BAD_OUTPUT: u32 = 0xFFFF_0003;

    /// An error with an application-defined `code`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "application error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for AppError {}

/// A replicated state machine.
///
/// The SDK decodes each committed command with [`StateMachine::Codec`], calls
/// [`apply`](StateMachine::apply), and encodes the output; likewise for queries. Snapshots are
/// produced by [`StateMachine::Snapshot`], normally [`DefaultSnapshot`].
pub trait StateMachine: Default + Sized + 'static {
    /// Machine kind reported to the host, e.g. `"kv"`.
    const NAME: &'static str;
    /// Version of the guest code (semver recommended).
    const VERSION: &'static str;
    /// Version of this machine's snapshot schema. [`DefaultSnapshot`] restores only this
    /// format; bump it when [`Records::OwnedRecord`] changes incompatibly.
    const SNAPSHOT_FORMAT: u32 = 1;
    /// Oldest snapshot format this version can still restore (an upgrade hands the new version
    /// the old version's snapshot). Default: only [`SNAPSHOT_FORMAT`](Self::SNAPSHOT_FORMAT).
    /// Lower it when you bump the format and migrate old records in
    /// [`Records::restore_old_record`].
    const OLDEST_SNAPSHOT_FORMAT: u32 = Self::SNAPSHOT_FORMAT;

    /// Wire encoding of commands, queries, outputs and replies: [`Json`], [`Postcard`] or
    /// [`JsonOrPostcard`].
    type Codec: Codec;
    /// How snapshots are written and read: [`DefaultSnapshot`] or your own [`SnapshotFormat`].
    type Snapshot: SnapshotFormat<Self>;
    /// A command, as clients submit it.
    type Command: serde::de::DeserializeOwned;
    /// The result of applying a command.
    type Output: serde::Serialize;
    /// A read-only request.
    type Query: serde::de::DeserializeOwned;
    /// The answer to a query.
    type Reply: serde::Serialize;

    /// Apply one committed command. Must be deterministic: the same state, context and command
    /// must give the same new state and result on every replica.
    fn apply(&mut self, ctx: &EntryCtx, cmd: Self::Command) -> Result<Self::Output, AppError>;

    /// Answer a read-only query against the current state.
    fn query(&self, query: Self::Query) -> Result<Self::Reply, AppError>;
}

/// Export `$machine` (a type implementing [`StateMachine`]) as this crate's component.
///
/// Invoke exactly once, in a `cdylib` crate. On non-wasm targets it only checks that the type
/// satisfies the SDK, so the crate still builds and unit-tests natively.
#[macro_export]
macro_rules! machine {
    ($machine:ty) => {
        #[doc(hidden)]
        #[allow(dead_code)]
        type __WraftGuestExports = $crate::__rt::Exports<$machine>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_state_machine!(__WraftGuestExports with_types_in $crate::bindings);
        const _: fn() = || {
            fn assert_guest<G: $crate::bindings::exports::wraft::machine::machine::Guest>() {}
            assert_guest::<__WraftGuestExports>();
        };
    };
}
