//! A guest that misbehaves on command, for testing that the host contains it.
//!
//! Commands (JSON): `"Ok"`, `{"Panic":"why"}`, `"Loop"`, `{"Recurse":depth}`, `"GrowMemory"`,
//! `{"HugeOutput":bytes}`, `{"FailSnapshot":true}`, `{"CorruptRestore":true}`, `{"UnfaithfulRestore":true}`,
//! `{"Decompress":{"data":[..],"max_output_bytes":n}}`. Queries: anything answers the count of
//! well-behaved commands, except the string `"panic"`, which traps.
//! It also shows a custom [`SnapshotFormat`] layered over [`DefaultSnapshot`].

use std::hint::black_box;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use wraft_guest::{
    AppError, DefaultSnapshot, EntryCtx, Json, Records, SnapshotFormat, StateMachine,
};

/// State: how many well-behaved commands ran, and which snapshot faults are armed.
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Misbehave {
    ok_count: u64,
    fail_snapshot: bool,
    corrupt_restore: bool,
    #[serde(default)]
    unfaithful_restore: bool,
    #[serde(default)]
    slow_snapshot: u64,
}

/// What to do.
#[derive(Deserialize, Serialize, Debug)]
pub enum Command {
    /// Behave: count one.
    Ok,
    /// Panic with this message (a trap).
    Panic(String),
    /// Count one, then panic with this message: a trap after a write, which must not be kept.
    CountThenPanic(String),
    /// Spin forever (fuel exhaustion).
    Loop,
    /// Recurse this deep (stack overflow for large depths).
    Recurse(u64),
    /// Allocate until allocation fails (memory limit).
    GrowMemory,
    /// Return an output of this many bytes.
    HugeOutput(u64),
    /// Make `begin-snapshot` fail (or not).
    FailSnapshot(bool),
    /// Make a restore of a snapshot taken from now on panic in `finish` (or not).
    CorruptRestore(bool),
    /// Make a restore of a snapshot taken from now on silently add 1000 to the count (or not):
    /// an unfaithful snapshot, which only divergence detection (in a cluster) or the snapshot
    /// fidelity check of `wraft build` (before deploying) can notice.
    UnfaithfulRestore(bool),
    /// Spin this many iterations before yielding each snapshot chunk (0: none): an export that
    /// takes a while, without a clock. Burns fuel of the snapshot call.
    SlowSnapshot(u64),
    /// Hand `data` (e.g. a zstd bomb) to the host's `decompress` import with this cap.
    /// Outputs the decompressed length; the host's refusal becomes an [`AppError`] with code
    /// [`CODE_DECOMPRESS_REFUSED`] and the host's message.
    Decompress {
        /// Compressed bytes, passed through unchanged.
        data: Vec<u8>,
        /// The guest's cap on the output (`max-output-bytes`); the host applies its own too.
        max_output_bytes: u64,
    },
}

/// Application error code of a [`Command::Decompress`] the host refused.
pub const CODE_DECOMPRESS_REFUSED: u32 = 1;

/// Call the host's `decompress` import (only a wasm host provides it).
fn host_decompress(data: &[u8], max_output_bytes: u64) -> Result<Vec<u8>, String> {
    #[cfg(target_arch = "wasm32")]
    {
        wraft_guest::bindings::wraft::machine::host::decompress(data, max_output_bytes)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (data, max_output_bytes);
        Err("decompress is a host import: run this guest in a wraft host".into())
    }
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    black_box(recurse(black_box(depth - 1))) + 1
}

impl StateMachine for Misbehave {
    const NAME: &'static str = "misbehave";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Codec = Json;
    type Snapshot = Picky;
    type Command = Command;
    type Output = String;
    type Query = serde_json::Value;
    type Reply = u64;

    fn apply(&mut self, _ctx: &EntryCtx, cmd: Command) -> Result<String, AppError> {
        match cmd {
            Command::Ok => {
                self.ok_count += 1;
                Ok(self.ok_count.to_string())
            }
            Command::Panic(why) => panic!("misbehave: {why}"),
            Command::CountThenPanic(why) => {
                self.ok_count += 1;
                panic!("misbehave: {why}")
            }
            Command::Loop => {
                let mut i = 0u64;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            Command::Recurse(depth) => Ok(recurse(depth).to_string()),
            Command::GrowMemory => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                    black_box(&hoard);
                }
            }
            Command::HugeOutput(n) => Ok("x".repeat(n as usize)),
            Command::FailSnapshot(on) => {
                self.fail_snapshot = on;
                Ok(String::new())
            }
            Command::CorruptRestore(on) => {
                self.corrupt_restore = on;
                Ok(String::new())
            }
            Command::UnfaithfulRestore(on) => {
                self.unfaithful_restore = on;
                Ok(String::new())
            }
            Command::SlowSnapshot(spins) => {
                self.slow_snapshot = spins;
                Ok(String::new())
            }
            Command::Decompress {
                data,
                max_output_bytes,
            } => match host_decompress(&data, max_output_bytes) {
                Ok(out) => Ok(out.len().to_string()),
                Err(e) => Err(AppError::new(CODE_DECOMPRESS_REFUSED, e)),
            },
        }
    }

    fn query(&self, q: serde_json::Value) -> Result<u64, AppError> {
        assert!(q != "panic", "asked to panic in a query");
        Ok(self.ok_count)
    }
}

impl Records for Misbehave {
    type Record<'a> = &'a Misbehave;
    type OwnedRecord = Misbehave;
    fn records(&self) -> impl Iterator<Item = &Misbehave> {
        std::iter::once(self)
    }
    fn restore_record(&mut self, record: Misbehave) -> Result<(), String> {
        *self = record;
        Ok(())
    }
}

/// The default format, except that it fails or traps when the state says so.
pub struct Picky;

type Inner = DefaultSnapshot;

/// The default reader, and how long to spin before each chunk.
pub struct SlowReader {
    spins: u64,
    inner: <Inner as SnapshotFormat<Misbehave>>::Reader,
}

impl SnapshotFormat<Misbehave> for Picky {
    type Reader = SlowReader;
    type Restorer = <Inner as SnapshotFormat<Misbehave>>::Restorer;

    fn begin_snapshot(state: Rc<Misbehave>) -> Result<Self::Reader, String> {
        if state.fail_snapshot {
            return Err("misbehave: snapshot refused on purpose".into());
        }
        Ok(SlowReader {
            spins: state.slow_snapshot,
            inner: Inner::begin_snapshot(state)?,
        })
    }
    fn next_chunk(r: &mut Self::Reader, max_bytes: usize) -> Result<Option<Vec<u8>>, String> {
        let mut i = 0u64;
        while i < r.spins {
            i = black_box(i + 1);
        }
        Inner::next_chunk(&mut r.inner, max_bytes)
    }
    fn begin_restore(format: u32) -> Result<Self::Restorer, String> {
        <Inner as SnapshotFormat<Misbehave>>::begin_restore(format)
    }
    fn write_chunk(r: &mut Self::Restorer, chunk: &[u8]) -> Result<(), String> {
        Inner::write_chunk(r, chunk)
    }
    fn finish(r: Self::Restorer) -> Result<Misbehave, String> {
        let mut m = Inner::finish(r)?;
        if m.corrupt_restore {
            panic!("misbehave: corrupting restore on purpose");
        }
        if m.unfaithful_restore {
            m.ok_count += 1000;
        }
        Ok(m)
    }
}

wraft_guest::machine!(Misbehave);

#[cfg(test)]
mod tests {
    use super::*;
    use wraft_guest::testing::Harness;

    #[test]
    fn ok_counts_and_snapshot_round_trips() {
        let mut h = Harness::<Misbehave>::new();
        h.apply(br#""Ok""#).unwrap();
        h.apply(br#""Ok""#).unwrap();
        let r = h.snapshot_restore(1024).unwrap();
        assert_eq!(r.query(b"null").unwrap(), b"2");
    }

    #[test]
    fn armed_fail_snapshot_refuses_to_begin() {
        let mut h = Harness::<Misbehave>::new();
        h.apply(br#"{"FailSnapshot":true}"#).unwrap();
        assert!(h.snapshot(1024).unwrap_err().contains("refused on purpose"));
    }

    #[test]
    fn decompress_outside_a_wasm_host_is_an_app_error() {
        let mut h = Harness::<Misbehave>::new();
        let e = h
            .apply(br#"{"Decompress":{"data":[1,2,3],"max_output_bytes":10}}"#)
            .unwrap_err();
        assert_eq!(e.code, CODE_DECOMPRESS_REFUSED, "{e:?}");
    }

    #[test]
    fn huge_output_is_returned_in_full() {
        let mut h = Harness::<Misbehave>::new();
        assert_eq!(h.apply(br#"{"HugeOutput":1000}"#).unwrap().len(), 1002);
    }
}
