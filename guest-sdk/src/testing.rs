//! Run a machine natively through the same code paths the component uses, for unit tests.

use std::rc::Rc;

use crate::{AppError, EntryCtx, SnapshotFormat, StateMachine, rt};

/// A machine driven natively: commands and queries as bytes, snapshots as chunk lists.
///
/// Entries get consecutive indexes from 1, term 1, and timestamp = index.
pub struct Harness<M> {
    state: Rc<M>,
    next_index: u64,
}

impl<M: StateMachine> Default for Harness<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: StateMachine> Harness<M> {
    /// A harness around `M::default()`.
    pub fn new() -> Self {
        Self {
            state: Rc::new(M::default()),
            next_index: 1,
        }
    }

    /// The current state.
    pub fn state(&self) -> &M {
        &self.state
    }

    /// Apply one encoded command, exactly as the component would.
    pub fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, AppError> {
        let ctx = EntryCtx {
            index: self.next_index,
            term: 1,
            timestamp_ms: self.next_index,
        };
        self.next_index += 1;
        let m = Rc::get_mut(&mut self.state).ok_or_else(|| AppError::new(0, "state is shared"))?;
        rt::apply_one(m, &ctx, command)
    }

    /// Run one encoded query.
    pub fn query(&self, request: &[u8]) -> Result<Vec<u8>, AppError> {
        rt::query_one(&*self.state, request)
    }

    /// Read a whole snapshot out in chunks of at most `max_chunk_bytes`.
    pub fn snapshot(&self, max_chunk_bytes: usize) -> Result<Vec<Vec<u8>>, String> {
        let mut reader = M::Snapshot::begin_snapshot(Rc::clone(&self.state))?;
        let mut chunks = Vec::new();
        while let Some(c) = M::Snapshot::next_chunk(&mut reader, max_chunk_bytes)? {
            if c.len() > max_chunk_bytes {
                return Err(format!(
                    "chunk of {} bytes exceeds the {max_chunk_bytes} asked for",
                    c.len()
                ));
            }
            chunks.push(c);
        }
        Ok(chunks)
    }

    /// Restore a fresh harness from `chunks` written in format `M::SNAPSHOT_FORMAT`.
    pub fn restore<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, String> {
        let mut r = M::Snapshot::begin_restore(M::SNAPSHOT_FORMAT)?;
        for c in chunks {
            M::Snapshot::write_chunk(&mut r, c)?;
        }
        Ok(Self {
            state: Rc::new(M::Snapshot::finish(r)?),
            next_index: 1,
        })
    }

    /// Snapshot into chunks of at most `max_chunk_bytes` and restore a new harness from them.
    pub fn snapshot_restore(&self, max_chunk_bytes: usize) -> Result<Self, String> {
        let chunks = self.snapshot(max_chunk_bytes)?;
        Self::restore(chunks.iter().map(Vec::as_slice))
    }
}
