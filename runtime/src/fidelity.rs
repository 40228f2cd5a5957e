//! Snapshot fidelity: does a restore give back exactly the state that was snapshotted?
//!
//! A machine whose restore loses, reorders or changes state works on one node and silently
//! changes results in a cluster: every replica that restores a snapshot — a new or lagging
//! node, a restarted node, a node rebuilding after a trap, an upgrade — computes something
//! other than the replicas that applied the log. [`check_fidelity`] finds that before deploy,
//! on the built component, in the same wasm host and with the same limits a node uses:
//!
//! ```text
//!   A (fresh):  apply 1..=h ─ snapshot S ─ apply h+1..=n ─ queries ─ snapshot SA
//!                                  │           │ outputs     │ answers     │ byte for byte
//!   B (fresh):              restore S ──── apply h+1..=n ─ queries ─ snapshot SB
//! ```
//!
//! `h` is half the sample log. Every output of entries `h+1..=n` (application errors
//! included), every query's answer at the end, and every chunk of the final snapshots must be
//! identical. Queries run after the last entry, when both instances have applied the same entry
//! (under the deterministic WASI profile a query's clock reads the last applied entry's time,
//! which a just-restored instance does not have).
//!
//! Rust guests get the same check natively from `wraft_guest::testing` (`check_deterministic`,
//! `Harness::check_round_trip`); JavaScript and Python guests have no native harness, so this
//! is theirs. `wraft build` runs it for every language when the project has a sample log.
//!
//! # The sample log: `wraft-check.jsonl`
//!
//! One command per line, the line's bytes exactly as a client would send them (JSON for the
//! templates' and the SDK's `Json` machines); entry `i` (from 1) gets index `i`, term 1 and
//! `timestamp_ms = i`, as in the Rust harness. A line whose first non-blank character is `?`
//! is a query (the rest of the line, leading blanks removed). Blank lines and lines starting
//! with `#` are skipped. A trailing `\r` is dropped. Commands cannot contain a newline, so the
//! format suits text codecs; a machine with a binary codec cannot use it.
//!
//! # Bounds
//!
//! [`SAMPLE_FILE_BYTES_MAX`], [`SAMPLE_ENTRIES_MAX`], [`SAMPLE_QUERIES_MAX`], and
//! [`SNAPSHOT_BYTES_COMPARED_MAX`] per snapshot held (at most three at once). The check is
//! deterministic: no clock, no randomness, the entries' times come from their indexes.

use std::io::Read;
use std::path::{Path, PathBuf};

use wraft_host::{
    CallError, ChunkSink, Entry, EntryResult, FnSink, Instance, MachineModule, SnapshotSummary,
};
use wraft_proto::digest::hex;

/// The sample log's file name in a machine project.
pub const SAMPLE_FILE: &str = "wraft-check.jsonl";
/// Largest sample log read, in bytes.
pub const SAMPLE_FILE_BYTES_MAX: u64 = 16 << 20;
/// Most commands in a sample log.
pub const SAMPLE_ENTRIES_MAX: usize = 10_000;
/// Most queries in a sample log.
pub const SAMPLE_QUERIES_MAX: usize = 1_000;
/// Largest snapshot the check holds and compares, in bytes (a bigger one fails the check: use
/// a smaller sample).
pub const SNAPSHOT_BYTES_COMPARED_MAX: u64 = 64 << 20;
/// Bytes of a value, or of a snapshot around a difference, shown in a failure.
const SHOWN_BYTES_MAX: usize = 200;
/// Bytes of each snapshot shown around the first difference.
const SNAPSHOT_WINDOW_BYTES: usize = 16;

/// Commands and queries to drive [`check_fidelity`] with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SampleLog {
    /// Commands, applied as entries 1, 2, … in order.
    pub entries: Vec<Vec<u8>>,
    /// Queries, asked of both instances after the last entry.
    pub queries: Vec<Vec<u8>>,
}

/// Why the check failed: the sample log is unusable, a call failed, or the machine's restore is
/// not faithful.
#[derive(Debug, thiserror::Error)]
pub enum FidelityError {
    /// The sample log cannot be read or is over a bound.
    #[error("{path}: {reason}")]
    File {
        /// The sample log.
        path: PathBuf,
        /// What is wrong, and the bound if one was hit.
        reason: String,
    },
    /// The sample log is over a bound (a [`SampleLog`] built in code).
    #[error("the sample log has {found} {what}, over the check's limit of {max}")]
    TooMany {
        /// `"entries"` or `"queries"`.
        what: &'static str,
        /// How many it has.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A call to the guest produced no result (a trap, a refused snapshot or restore).
    #[error("{step}: {source}")]
    Call {
        /// What the check was doing, naming the entry and the instance.
        step: String,
        /// What the host said.
        source: CallError,
    },
    /// A snapshot is over [`SNAPSHOT_BYTES_COMPARED_MAX`].
    #[error("{which} is over {max} bytes, the most the check compares; use a smaller sample log")]
    SnapshotTooLarge {
        /// Which snapshot.
        which: String,
        /// The limit.
        max: u64,
    },
    /// The instance restored from the snapshot differs from the one that applied the log.
    #[error(
        "{what} differs between the instance that applied the log and the one restored from its \
         snapshot after entry {restored_after}:\n  applied  {applied}\n  restored {restored}\n\
         (the restore loses, reorders or changes state, or some state is not in the snapshot: a \
         replica that restores this snapshot — a new node, a lagging follower, a rebuild after a \
         trap, an upgrade — would compute other results than one that applied the log)"
    )]
    Unfaithful {
        /// The entry, query or snapshot that differs.
        what: String,
        /// The index of the last entry before the snapshot.
        restored_after: u64,
        /// What the instance that applied the whole log gave.
        applied: String,
        /// What the restored instance gave.
        restored: String,
    },
}

impl SampleLog {
    /// Parse a sample log (format in the module docs). `path` is only used in errors.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self, FidelityError> {
        let mut log = SampleLog::default();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let body = line.trim_ascii_start();
            match body.first() {
                None | Some(b'#') => continue,
                Some(b'?') => log.queries.push(body[1..].trim_ascii_start().to_vec()),
                Some(_) => log.entries.push(line.to_vec()),
            }
            if let Err(e) = log.check_bounds() {
                return Err(FidelityError::File {
                    path: path.to_owned(),
                    reason: format!("line {}: {e}", i + 1),
                });
            }
        }
        Ok(log)
    }

    /// Read and parse the sample log at `path`; `Ok(None)` if there is no such file.
    pub fn read(path: &Path) -> Result<Option<Self>, FidelityError> {
        let file_err = |reason: String| FidelityError::File {
            path: path.to_owned(),
            reason,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_err(e.to_string())),
        };
        let mut text = Vec::new();
        file.take(SAMPLE_FILE_BYTES_MAX + 1)
            .read_to_end(&mut text)
            .map_err(|e| file_err(e.to_string()))?;
        if text.len() as u64 > SAMPLE_FILE_BYTES_MAX {
            return Err(file_err(format!(
                "the sample log is over {SAMPLE_FILE_BYTES_MAX} bytes, the most the check reads"
            )));
        }
        Self::parse(&text, path).map(Some)
    }

    fn check_bounds(&self) -> Result<(), FidelityError> {
        for (what, found, max) in [
            ("entries", self.entries.len(), SAMPLE_ENTRIES_MAX),
            ("queries", self.queries.len(), SAMPLE_QUERIES_MAX),
        ] {
            if found > max {
                return Err(FidelityError::TooMany { what, found, max });
            }
        }
        Ok(())
    }
}

/// What a passed [`check_fidelity`] covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FidelityReport {
    /// Entries applied.
    pub entries: usize,
    /// Queries compared.
    pub queries: usize,
    /// The entry after which the snapshot was taken and restored.
    pub restored_after: u64,
    /// Size of each final snapshot, in bytes (identical on both instances).
    pub snapshot_bytes: u64,
}

impl std::fmt::Display for FidelityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot fidelity: {} entries, {} queries: ok",
            self.entries, self.queries
        )
    }
}

/// A snapshot held in memory.
struct Snapshot {
    summary: SnapshotSummary,
    chunks: Vec<Vec<u8>>,
}

/// Check that `module` restores its own snapshots faithfully, driving it with `sample` (see the
/// module docs for the steps and what is compared).
///
/// Cost: two instances, `n` applies on one and `n / 2` on the other, three snapshots, one
/// restore, two answers per query; memory up to three snapshots of at most
/// [`SNAPSHOT_BYTES_COMPARED_MAX`] each. Fails with [`FidelityError::Unfaithful`] naming the
/// first entry, query or snapshot chunk that differs and both sides, or with
/// [`FidelityError::Call`] if the guest traps or refuses a snapshot or restore.
pub fn check_fidelity(
    module: &MachineModule,
    sample: &SampleLog,
) -> Result<FidelityReport, FidelityError> {
    sample.check_bounds()?;
    let half = sample.entries.len() / 2;
    let restored_after = half as u64;
    let call = |step: String| move |source| FidelityError::Call { step, source };
    let mut applied = module
        .instantiate()
        .map_err(call("starting an instance".into()))?;
    for (i, command) in sample.entries[..half].iter().enumerate() {
        let index = i as u64 + 1;
        // Only the restored instance's outputs have something to be compared with.
        let _output = applied
            .apply(entry(index, command))
            .map_err(call(format!("entry {index} ({})", show(command))))?;
    }
    let snapshot = take_snapshot(&mut applied, format!("the snapshot after entry {half}"))?;
    let mut restored = module
        .instantiate()
        .map_err(call("starting a second instance".into()))?;
    restored
        .restore(snapshot.summary.format, &mut snapshot.chunks.into_iter())
        .map_err(call(format!(
            "restoring the snapshot taken after entry {half} into a fresh instance"
        )))?;
    let unfaithful = |what: String, applied: String, restored: String| {
        Err(FidelityError::Unfaithful {
            what,
            restored_after,
            applied,
            restored,
        })
    };
    for (i, command) in sample.entries.iter().enumerate().skip(half) {
        let index = i as u64 + 1;
        let what = format!("entry {index} ({})", show(command));
        let a = applied
            .apply(entry(index, command))
            .map_err(call(format!("{what} on the instance that applied the log")))?;
        let r = restored
            .apply(entry(index, command))
            .map_err(call(format!("{what} on the restored instance")))?;
        if a != r {
            return unfaithful(
                format!("the output of {what}"),
                show_result(&a),
                show_result(&r),
            );
        }
    }
    let last = sample.entries.len();
    for q in &sample.queries {
        let what = format!("query {} after entry {last}", show(q));
        let a = applied
            .query(q)
            .map_err(call(format!("{what} on the instance that applied the log")))?;
        let r = restored
            .query(q)
            .map_err(call(format!("{what} on the restored instance")))?;
        if a != r {
            return unfaithful(
                format!("the answer to {what}"),
                show_result(&a),
                show_result(&r),
            );
        }
    }
    let final_a = take_snapshot(
        &mut applied,
        format!("the final snapshot of the instance that applied the log (after entry {last})"),
    )?;
    let final_r = take_snapshot(
        &mut restored,
        format!("the final snapshot of the restored instance (after entry {last})"),
    )?;
    if let Some((at, a, r)) = snapshot_difference(&final_a, &final_r) {
        return unfaithful(
            format!("the final snapshot (after entry {last}), {at},"),
            a,
            r,
        );
    }
    Ok(FidelityReport {
        entries: sample.entries.len(),
        queries: sample.queries.len(),
        restored_after,
        snapshot_bytes: final_a.summary.bytes,
    })
}

fn entry(index: u64, command: &[u8]) -> Entry {
    Entry {
        index,
        term: 1,
        timestamp_ms: index,
        command: bytes::Bytes::copy_from_slice(command),
    }
}

/// Snapshot `inst` into memory, refusing past [`SNAPSHOT_BYTES_COMPARED_MAX`].
fn take_snapshot(inst: &mut Instance, which: String) -> Result<Snapshot, FidelityError> {
    let mut chunks = Vec::new();
    let mut bytes = 0u64;
    let result = {
        let mut sink = FnSink(|chunk: Vec<u8>| {
            bytes += chunk.len() as u64;
            if bytes > SNAPSHOT_BYTES_COMPARED_MAX {
                return Err(format!("over {SNAPSHOT_BYTES_COMPARED_MAX} bytes"));
            }
            chunks.push(chunk);
            Ok(())
        });
        inst.snapshot(&mut sink as &mut dyn ChunkSink)
    };
    match result {
        Ok(summary) => Ok(Snapshot { summary, chunks }),
        Err(CallError::Io { .. }) if bytes > SNAPSHOT_BYTES_COMPARED_MAX => {
            Err(FidelityError::SnapshotTooLarge {
                which,
                max: SNAPSHOT_BYTES_COMPARED_MAX,
            })
        }
        Err(source) => Err(FidelityError::Call {
            step: format!("taking {which}"),
            source,
        }),
    }
}

/// Where two snapshots first differ — (where, around it in `a`, around it in `b`) — or `None`
/// if their formats and every chunk are identical.
fn snapshot_difference(a: &Snapshot, b: &Snapshot) -> Option<(String, String, String)> {
    let total = |s: &Snapshot| {
        format!(
            "format {}, {} chunks, {} bytes",
            s.summary.format,
            s.chunks.len(),
            s.summary.bytes
        )
    };
    if a.summary.format != b.summary.format {
        return Some(("in its format".into(), total(a), total(b)));
    }
    for (i, (x, y)) in a.chunks.iter().zip(&b.chunks).enumerate() {
        if x == y {
            continue;
        }
        let at = x
            .iter()
            .zip(y)
            .position(|(p, q)| p != q)
            .unwrap_or(x.len().min(y.len()));
        let window = |c: &[u8]| {
            let from = at.saturating_sub(SNAPSHOT_WINDOW_BYTES / 2);
            let to = (at + SNAPSHOT_WINDOW_BYTES / 2).min(c.len());
            format!(
                "{} bytes; bytes {from}..{to}: {}",
                c.len(),
                hex(c.get(from..to).unwrap_or_default())
            )
        };
        return Some((format!("chunk {i} at byte {at}"), window(x), window(y)));
    }
    (a.chunks.len() != b.chunks.len()).then(|| ("in its length".into(), total(a), total(b)))
}

/// Bytes shown as UTF-8 when they are, else as hex; long values are cut (as
/// `wraft_guest::testing` shows them).
fn show(bytes: &[u8]) -> String {
    let s = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => hex(bytes),
    };
    if s.len() > SHOWN_BYTES_MAX {
        let cut = (0..=SHOWN_BYTES_MAX)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}… ({} bytes)", &s[..cut], bytes.len())
    } else {
        s
    }
}

fn show_result(r: &EntryResult) -> String {
    match r {
        Ok(b) => format!("Ok({})", show(b)),
        Err(e) => format!("Err({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_log_has_commands_queries_comments_and_blank_lines() {
        let text = b"# a comment\n{\"op\":\"put\"}\r\n\n  ? {\"op\":\"get\"}\n  {\"op\":\"x\"} \n";
        let log = SampleLog::parse(text, Path::new("wraft-check.jsonl")).unwrap();
        assert_eq!(
            log.entries,
            vec![b"{\"op\":\"put\"}".to_vec(), b"  {\"op\":\"x\"} ".to_vec()]
        );
        assert_eq!(log.queries, vec![b"{\"op\":\"get\"}".to_vec()]);
    }

    #[test]
    fn a_sample_log_over_the_entry_limit_is_refused_naming_the_line() {
        let text = "\"Ok\"\n".repeat(SAMPLE_ENTRIES_MAX + 1);
        let e = SampleLog::parse(text.as_bytes(), Path::new("x.jsonl")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("x.jsonl: line {}: ", SAMPLE_ENTRIES_MAX + 1))
                && msg.contains("over the check's limit of 10000"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_sample_log_is_none_and_an_oversized_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(SAMPLE_FILE);
        assert_eq!(SampleLog::read(&path).unwrap(), None);
        std::fs::write(&path, vec![b'#'; SAMPLE_FILE_BYTES_MAX as usize + 1]).unwrap();
        let e = SampleLog::read(&path).unwrap_err();
        assert!(e.to_string().contains("over 16777216 bytes"), "{e}");
    }

    fn snap(chunks: &[&[u8]]) -> Snapshot {
        Snapshot {
            summary: SnapshotSummary {
                format: 1,
                chunks: chunks.len() as u64,
                bytes: chunks.iter().map(|c| c.len() as u64).sum(),
            },
            chunks: chunks.iter().map(|c| c.to_vec()).collect(),
        }
    }

    #[test]
    fn snapshots_differing_in_a_byte_or_a_chunk_are_told_apart_with_both_sides() {
        let a = snap(&[b"abc", b"0123456789abcdefghij"]);
        assert_eq!(snapshot_difference(&a, &a), None);
        let b = snap(&[b"abc", b"0123456789abcdefghiX"]);
        let (at, x, y) = snapshot_difference(&a, &b).unwrap();
        assert_eq!(at, "chunk 1 at byte 19");
        assert!(x.ends_with("bytes 11..20: 62636465666768696a"), "{x}");
        assert!(y.ends_with("bytes 11..20: 626364656667686958"), "{y}");
        let c = snap(&[b"abc"]);
        let (at, x, y) = snapshot_difference(&a, &c).unwrap();
        assert_eq!(at, "in its length");
        assert_eq!(
            (x.as_str(), y.as_str()),
            (
                "format 1, 2 chunks, 23 bytes",
                "format 1, 1 chunks, 3 bytes"
            )
        );
    }
}
