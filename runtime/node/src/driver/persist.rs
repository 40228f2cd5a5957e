//! The one translation of the engine's [`PersistBatch`] into storage writes.
//!
//! The engine's contract (its `PersistBatch` docs): drop log entries at or below
//! `reset_to_snapshot.index`, drop entries `>= truncate_from`, append `entries`, write
//! `hard_state` — in that order, then report `Event::Persisted { seq }`. Storage applies a
//! batch's compaction *last*, so a reset to an installed snapshot is a batch of its own, written
//! before the rest. This module is pure (no I/O) so the order is decided in one place and
//! tested without a disk; the driver only submits what it returns.

use wraft_engine::PersistBatch;
use wraft_storage::{HardState, WriteBatch};

use crate::codec::{EncodeError, encode_entry};

/// The storage batches of one engine persist, in submission order.
#[derive(Debug)]
pub(crate) struct StorageWrites {
    /// The log restarts above an installed snapshot: compact through it first.
    pub reset: Option<WriteBatch>,
    /// Truncation, new entries and hard state, in one batch (one `fdatasync`), tagged with the
    /// engine's `seq`: storage reports it back once durable, and the driver steps
    /// `Event::Persisted` with it as it is.
    pub main: WriteBatch,
}

/// Translate `batch`. Fails only if an entry cannot be encoded; then nothing may be written.
pub(crate) fn storage_writes(batch: &PersistBatch) -> Result<StorageWrites, EncodeError> {
    let reset = batch.reset_to_snapshot.as_ref().map(|snap| WriteBatch {
        compact: Some((snap.index, snap.term)),
        ..WriteBatch::default()
    });
    let mut main = WriteBatch::default().with_tag(batch.seq);
    if let Some(hs) = batch.hard_state {
        main = main.with_hard_state(HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        });
    }
    if let Some(from) = batch.truncate_from {
        // The engine names the first index to drop; storage, the last one to keep.
        main = main.with_truncate_after(from.saturating_sub(1));
    }
    if !batch.entries.is_empty() {
        let entries = batch
            .entries
            .iter()
            .map(encode_entry)
            .collect::<Result<_, _>>()?;
        main = main.with_entries(entries);
    }
    Ok(StorageWrites { reset, main })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use wraft_engine::{Entry, EntryKind, HardState as EngineHardState, Membership, SnapshotMeta};

    use super::*;
    use crate::codec::decode_entry;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Command {
                client: None,
                timestamp_ms: 7,
                data: Bytes::from(vec![index as u8; 3]),
            },
        }
    }

    fn batch() -> PersistBatch {
        PersistBatch {
            seq: 1,
            hard_state: None,
            reset_to_snapshot: None,
            truncate_from: None,
            entries: Vec::new(),
        }
    }

    #[test]
    fn an_empty_batch_writes_an_empty_storage_batch() {
        let w = storage_writes(&batch()).unwrap();
        assert!(w.reset.is_none());
        assert!(w.main.is_empty());
        assert_eq!(
            w.main.tag,
            Some(1),
            "even an empty persist is reported back"
        );
    }

    #[test]
    fn entries_and_hard_state_go_in_one_batch_and_decode_back() {
        let b = PersistBatch {
            hard_state: Some(EngineHardState {
                term: 3,
                vote: Some(2),
                commit: 5,
            }),
            entries: vec![entry(6, 3), entry(7, 3)],
            ..batch()
        };
        let w = storage_writes(&b).unwrap();
        assert!(w.reset.is_none());
        let hs = w.main.hard_state.expect("hard state");
        assert_eq!((hs.term, hs.vote, hs.commit), (3, Some(2), 5));
        let back: Vec<Entry> = w
            .main
            .entries
            .iter()
            .map(|e| decode_entry(e).unwrap())
            .collect();
        assert_eq!(back, b.entries);
    }

    #[test]
    fn truncating_from_an_index_keeps_everything_before_it() {
        let b = PersistBatch {
            truncate_from: Some(10),
            entries: vec![entry(10, 4)],
            ..batch()
        };
        assert_eq!(storage_writes(&b).unwrap().main.truncate_after, Some(9));
    }

    #[test]
    fn a_reset_to_a_snapshot_is_its_own_batch_written_first() {
        let b = PersistBatch {
            reset_to_snapshot: Some(SnapshotMeta {
                index: 40,
                term: 6,
                membership: Membership::with_voters([1, 2, 3]),
            }),
            truncate_from: Some(41),
            entries: vec![entry(41, 6)],
            ..batch()
        };
        let w = storage_writes(&b).unwrap();
        let reset = w.reset.expect("a reset batch");
        assert_eq!(reset.compact, Some((40, 6)));
        assert_eq!(
            reset.tag, None,
            "only the last batch of a persist may report it durable"
        );
        assert!(reset.entries.is_empty() && reset.truncate_after.is_none());
        assert_eq!(
            w.main.compact, None,
            "the main batch must not compact: storage does that last"
        );
        assert_eq!(w.main.truncate_after, Some(40));
        assert_eq!(w.main.entries.len(), 1);
    }
}
