//! Recovery: replay every segment into a [`DiskIndex`], cutting a torn tail off the newest segment
//! with a warning and failing with [`StorageError::Corrupt`] on damage anywhere else.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::StorageConfig;
use crate::error::{Result, StorageError, io_err};
use crate::record::{self, Decoded, SegHeader};
use crate::vfs::{OpenMode, Vfs, VfsFile, read_all};

use super::TornTail;
use super::disk_index::{DiskIndex, Loc, Summary};
use super::segment::{cut_segment, parse_segment_name, segment_name};

/// Whether every byte of `data` from `from` on is zero (true past the end). In the newest
/// segment, zeros are the writer's preallocated space: a record cut by a crash can only be
/// followed by them, never by another record.
fn zeros_from(data: &[u8], from: usize) -> bool {
    data.get(from..)
        .is_none_or(|rest| rest.iter().all(|b| *b == 0))
}

pub(super) struct Recovery {
    pub(super) disk: DiskIndex,
    pub(super) segments: BTreeMap<u64, Arc<dyn VfsFile>>,
    pub(super) torn: Option<TornTail>,
}

pub(super) fn recover(vfs: &dyn Vfs, dir: &Path, cfg: &StorageConfig) -> Result<Recovery> {
    let mut seqs: Vec<u64> = Vec::new();
    for name in vfs.list(dir).map_err(io_err("list log directory", dir))? {
        match parse_segment_name(&name) {
            Some(s) => seqs.push(s),
            None => {
                tracing::warn!(file = %dir.join(&name).display(), "ignoring unexpected file in the log directory")
            }
        }
    }
    seqs.sort_unstable();
    for w in seqs.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(StorageError::Corrupt {
                file: dir.join(segment_name(w[0] + 1)),
                offset: 0,
                detail: "log segment missing (segments must be consecutive)".into(),
                expected: segment_name(w[0] + 1),
                found: format!("next segment is {}", segment_name(w[1])),
            });
        }
    }
    let mut disk = DiskIndex::default();
    let mut segments = BTreeMap::new();
    let mut torn = None;
    let body_max = cfg.entry_bytes_max as usize + record::ENTRY_PREFIX;
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = dir.join(segment_name(seq));
        let file = vfs
            .open(&path, OpenMode::ReadWrite)
            .map_err(io_err("open log segment", &path))?;
        let data = Bytes::from(read_all(file.as_ref()).map_err(io_err("read log segment", &path))?);
        let corrupt = |offset: usize, detail: String, expected: String, found: String| {
            StorageError::Corrupt {
                file: path.clone(),
                offset: offset as u64,
                detail,
                expected,
                found,
            }
        };
        match record::check_segment_header(&data, seq) {
            SegHeader::Ok => {}
            SegHeader::Torn
                if is_last
                    && (data.len() < record::SEG_HEADER_LEN || data.iter().all(|b| *b == 0)) =>
            {
                tracing::warn!(
                    file = %path.display(),
                    bytes = data.len(),
                    "newest log segment has an incomplete header (crash while creating it); removing it"
                );
                vfs.remove_file(&path)
                    .map_err(io_err("remove torn log segment", &path))?;
                vfs.sync_dir(dir)
                    .map_err(io_err("fsync log directory", dir))?;
                torn = Some(TornTail {
                    file: path.clone(),
                    offset: 0,
                    bytes_dropped: data.len() as u64,
                });
                break;
            }
            SegHeader::Torn => {
                return Err(corrupt(
                    0,
                    "segment header is zeroed or short".into(),
                    "valid header".into(),
                    format!("{} bytes", data.len()),
                ));
            }
            SegHeader::Bad {
                detail,
                expected,
                found,
            } => return Err(corrupt(0, detail.into(), expected, found)),
            SegHeader::Version(v) => {
                return Err(StorageError::UnsupportedVersion {
                    file: path,
                    expected: record::SEG_VERSION,
                    found: v,
                });
            }
        }
        let mut off = record::SEG_HEADER_LEN;
        loop {
            if is_last && off < data.len() && zeros_from(&data, off) {
                // The writer's preallocated space (or a crash cut the write of it): no record
                // was ever there. Trimmed, so that once this segment is no longer the newest it
                // ends exactly after its records, like every sealed one.
                let dropped = (data.len() - off) as u64;
                tracing::debug!(file = %path.display(), offset = off, bytes = dropped,
                    "trimming the zero-filled (preallocated) tail of the newest log segment");
                cut_segment(file.as_ref(), off as u64, &path, true)?;
                break;
            }
            let torn_here = match record::decode(&data, off, body_max) {
                Decoded::End => break,
                Decoded::Ok(rec, next) => {
                    let loc = Loc {
                        seg: seq,
                        off: off as u64,
                        len: (next - off) as u32,
                        term: 0,
                    };
                    disk.apply(Summary::from(&rec), loc)
                        .map_err(|(d, e, f)| corrupt(off, d, e, f))?;
                    off = next;
                    continue;
                }
                Decoded::Incomplete if is_last => "record runs past the end of the file",
                Decoded::BadHeader { .. }
                    if is_last && zeros_from(&data, off + record::REC_HEADER_LEN) =>
                {
                    "the last record's header was cut by a crash"
                }
                Decoded::BadBody { end, .. } if is_last && zeros_from(&data, end) => {
                    "last record fails its checksum"
                }
                Decoded::Incomplete => {
                    return Err(corrupt(
                        off,
                        "record runs past the end of a sealed segment".into(),
                        "complete record".into(),
                        format!("{} bytes left", data.len() - off),
                    ));
                }
                Decoded::BadHeader {
                    expected, found, ..
                } => {
                    return Err(corrupt(
                        off,
                        "record header checksum".into(),
                        format!("{expected:#010x}"),
                        format!("{found:#010x}"),
                    ));
                }
                Decoded::BadBody {
                    expected, found, ..
                } => {
                    return Err(corrupt(
                        off,
                        "record body checksum".into(),
                        format!("{expected:#010x}"),
                        format!("{found:#010x}"),
                    ));
                }
                Decoded::Invalid(why) => {
                    return Err(corrupt(
                        off,
                        why,
                        "valid record".into(),
                        "invalid record".into(),
                    ));
                }
            };
            let dropped = (data.len() - off) as u64;
            tracing::warn!(
                file = %path.display(),
                offset = off,
                bytes_dropped = dropped,
                reason = torn_here,
                "truncating torn tail of the newest log segment (crash mid-write); the dropped bytes were never acknowledged as durable"
            );
            cut_segment(file.as_ref(), off as u64, &path, true)?;
            torn = Some(TornTail {
                file: path.clone(),
                offset: off as u64,
                bytes_dropped: dropped,
            });
            break;
        }
        segments.insert(seq, file);
    }
    let first = seqs
        .first()
        .map(|s| dir.join(segment_name(*s)))
        .unwrap_or_else(|| dir.to_path_buf());
    disk.finish()
        .map_err(|(detail, expected, found)| StorageError::Corrupt {
            file: first,
            offset: 0,
            detail,
            expected,
            found,
        })?;
    Ok(Recovery {
        disk,
        segments,
        torn,
    })
}
