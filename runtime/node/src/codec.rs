//! How engine entries and wraft commands become bytes in the log.
//!
//! Encoding is postcard. It cannot fail for these types today (no maps with non-string keys,
//! no custom `Serialize`), but a failure must never turn into an empty payload that would be
//! replicated and applied as something else: every encoder returns [`EncodeError`], a command
//! that cannot be encoded is refused before it is proposed, and an entry that cannot be
//! written stops the node (`driver::actions`) like any other failure to persist.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use wraft_engine::{Entry, EntryKind};
use wraft_storage::LogEntry;

use wraft_proto::Command;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A value that postcard could not encode; nothing was proposed or written for it.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}")]
pub(crate) struct EncodeError {
    /// What was being encoded (`"log entry 12"`, `"command"`).
    what: String,
    source: postcard::Error,
}

impl From<EncodeError> for wraft_proto::RequestError {
    fn from(e: EncodeError) -> Self {
        wraft_proto::RequestError::Internal(e.to_string())
    }
}

/// A log record on disk that passed its checksum but does not decode as an engine entry.
#[derive(Debug, thiserror::Error)]
#[error("log entry {index} does not decode: {source}")]
pub(crate) struct DecodeError {
    /// The entry's index.
    pub index: u64,
    /// postcard's reason.
    pub source: postcard::Error,
}

/// The storage record of an engine entry.
pub(crate) fn encode_entry(e: &Entry) -> Result<LogEntry, EncodeError> {
    let capacity = e.kind.approx_bytes();
    let payload = wraft_proto::encode::to_vec(&e.kind, capacity).map_err(|source| EncodeError {
        what: format!("log entry {}", e.index),
        source,
    })?;
    Ok(LogEntry {
        index: e.index,
        term: e.term,
        payload: Bytes::from(payload),
    })
}

/// The engine entry of a storage record.
pub(crate) fn decode_entry(le: &LogEntry) -> Result<Entry, DecodeError> {
    let kind: EntryKind = postcard::from_bytes(&le.payload).map_err(|source| DecodeError {
        index: le.index,
        source,
    })?;
    Ok(Entry {
        index: le.index,
        term: le.term,
        kind,
    })
}

/// The payload of a log entry carrying `c`.
pub(crate) fn encode_command(c: &Command) -> Result<Bytes, EncodeError> {
    let capacity = match c {
        Command::Apply { machine, command } => 16 + machine.len() + command.len(),
        _ => 64,
    };
    wraft_proto::encode::to_vec(c, capacity)
        .map(Bytes::from)
        .map_err(|source| EncodeError {
            what: "command".into(),
            source,
        })
}

pub(crate) fn command_kind(tag: Option<wraft_proto::RequestTag>, data: Bytes) -> EntryKind {
    EntryKind::Command {
        client: tag.map(|t| wraft_engine::ClientTag {
            client_id: t.client_id,
            seq: t.seq,
        }),
        timestamp_ms: now_ms(),
        data,
    }
}
