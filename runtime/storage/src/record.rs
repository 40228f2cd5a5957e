//! On-disk framing of log segments (fixed layout, little endian).
//!
//! ```text
//! segment header (24 bytes):
//!   0  magic  "WRAFTWAL"
//!   8  version u32 (= 1)
//!  12  segment sequence number u64 (equals the number in the file name)
//!  20  crc32c of bytes 0..20
//!
//! record (12 + len + 4 bytes):
//!   0  header_crc u32 = crc32c(bytes 4..12)
//!   4  len u32        body length in bytes
//!   8  kind u8, 3 reserved bytes (zero)
//!  12  body (len bytes, layout by kind)
//! 12+len body_crc u32 = crc32c(body) chained from header_crc
//!
//! bodies:
//!   Entry     index u64, term u64, payload
//!   Truncate  last_kept u64
//!   HardState term u64, vote_flag u8, vote u64, commit u64
//!   Floor     index u64, term u64
//! ```
//!
//! The separate header checksum is what lets recovery tell a torn tail (an incomplete record at the
//! end of the newest segment) from a damaged length field in the middle of the log.

use bytes::Bytes;

use crate::HardState;

pub(crate) const SEG_MAGIC: &[u8; 8] = b"WRAFTWAL";
pub(crate) const SEG_VERSION: u32 = 1;
pub(crate) const SEG_HEADER_LEN: usize = 24;
pub(crate) const REC_HEADER_LEN: usize = 12;
pub(crate) const REC_TRAILER_LEN: usize = 4;
/// Bytes a record adds around its body.
pub(crate) const REC_OVERHEAD: usize = REC_HEADER_LEN + REC_TRAILER_LEN;
/// Entry body bytes before the payload.
pub(crate) const ENTRY_PREFIX: usize = 16;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_HARD_STATE: u8 = 3;
const KIND_FLOOR: u8 = 4;

/// A decoded log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Entry {
        index: u64,
        term: u64,
        payload: Bytes,
    },
    Truncate {
        last_kept: u64,
    },
    HardState(HardState),
    Floor {
        index: u64,
        term: u64,
    },
}

pub(crate) fn encode_segment_header(seq: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(SEG_MAGIC);
    out.extend_from_slice(&SEG_VERSION.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Outcome of validating a segment header.
#[derive(Debug)]
pub(crate) enum SegHeader {
    Ok,
    /// Shorter than a header or all zero: a segment whose creation was torn.
    Torn,
    Bad {
        detail: &'static str,
        expected: String,
        found: String,
    },
    Version(u32),
}

pub(crate) fn check_segment_header(data: &[u8], seq: u64) -> SegHeader {
    if data.len() < SEG_HEADER_LEN || data[..SEG_HEADER_LEN].iter().all(|b| *b == 0) {
        // A header is written and synced before the first record, so a short or zeroed header can
        // only be a creation that was interrupted; the caller checks that nothing follows.
        return SegHeader::Torn;
    }
    let stored = u32_at(data, 20);
    let computed = crc32c::crc32c(&data[..20]);
    if stored != computed {
        return SegHeader::Bad {
            detail: "segment header checksum",
            expected: format!("{computed:#010x}"),
            found: format!("{stored:#010x}"),
        };
    }
    if &data[..8] != SEG_MAGIC {
        return SegHeader::Bad {
            detail: "segment magic",
            expected: format!("{:?}", String::from_utf8_lossy(SEG_MAGIC)),
            found: format!("{:?}", String::from_utf8_lossy(&data[..8])),
        };
    }
    let version = u32_at(data, 8);
    if version != SEG_VERSION {
        return SegHeader::Version(version);
    }
    let found_seq = u64_at(data, 12);
    if found_seq != seq {
        return SegHeader::Bad {
            detail: "segment sequence number in header does not match file name",
            expected: seq.to_string(),
            found: found_seq.to_string(),
        };
    }
    SegHeader::Ok
}

/// Append one encoded record to `out`.
pub(crate) fn encode(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; REC_HEADER_LEN]);
    let kind = match rec {
        Record::Entry {
            index,
            term,
            payload,
        } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(payload);
            KIND_ENTRY
        }
        Record::Truncate { last_kept } => {
            out.extend_from_slice(&last_kept.to_le_bytes());
            KIND_TRUNCATE
        }
        Record::HardState(hs) => {
            out.extend_from_slice(&hs.term.to_le_bytes());
            out.push(u8::from(hs.vote.is_some()));
            out.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&hs.commit.to_le_bytes());
            KIND_HARD_STATE
        }
        Record::Floor { index, term } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
            KIND_FLOOR
        }
    };
    let body_len = out.len() - start - REC_HEADER_LEN;
    // Callers bound entry sizes by `entry_bytes_max` (<= u32::MAX), so this cannot truncate.
    debug_assert!(u32::try_from(body_len).is_ok());
    out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 8] = kind;
    let hcrc = crc32c::crc32c(&out[start + 4..start + REC_HEADER_LEN]);
    out[start..start + 4].copy_from_slice(&hcrc.to_le_bytes());
    let bcrc = crc32c::crc32c_append(hcrc, &out[start + REC_HEADER_LEN..]);
    out.extend_from_slice(&bcrc.to_le_bytes());
}

/// Encoded size of an entry record with `payload_len` payload bytes.
pub(crate) fn entry_record_len(payload_len: usize) -> usize {
    REC_OVERHEAD + ENTRY_PREFIX + payload_len
}

/// Result of decoding the record that starts at an offset.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A valid record and the offset just past it.
    Ok(Record, usize),
    /// No bytes left.
    End,
    /// The record runs past the end of the data (a torn tail if this is the last segment).
    Incomplete,
    /// The header checksum failed.
    BadHeader { expected: u32, found: u32 },
    /// The body checksum failed; `end` is the offset just past the record.
    BadBody {
        expected: u32,
        found: u32,
        end: usize,
    },
    /// Header and checksums are fine but the content is not a valid record.
    Invalid(String),
}

pub(crate) fn decode(data: &[u8], off: usize, body_len_max: usize) -> Decoded {
    let rest = &data[off.min(data.len())..];
    if rest.is_empty() {
        return Decoded::End;
    }
    if rest.len() < REC_HEADER_LEN {
        return Decoded::Incomplete;
    }
    let stored_hcrc = u32_at(rest, 0);
    let hcrc = crc32c::crc32c(&rest[4..REC_HEADER_LEN]);
    if stored_hcrc != hcrc {
        return Decoded::BadHeader {
            expected: hcrc,
            found: stored_hcrc,
        };
    }
    let len = u32_at(rest, 4) as usize;
    let kind = rest[8];
    if rest[9..12] != [0, 0, 0] {
        return Decoded::Invalid("reserved header bytes are not zero".into());
    }
    if len > body_len_max {
        return Decoded::Invalid(format!(
            "record body length {len} exceeds the maximum {body_len_max}"
        ));
    }
    let total = REC_OVERHEAD + len;
    if rest.len() < total {
        return Decoded::Incomplete;
    }
    let body = &rest[REC_HEADER_LEN..REC_HEADER_LEN + len];
    let stored_bcrc = u32_at(rest, REC_HEADER_LEN + len);
    let bcrc = crc32c::crc32c_append(hcrc, body);
    if stored_bcrc != bcrc {
        return Decoded::BadBody {
            expected: bcrc,
            found: stored_bcrc,
            end: off + total,
        };
    }
    let rec = match (kind, len) {
        (KIND_ENTRY, l) if l >= ENTRY_PREFIX => Record::Entry {
            index: u64_at(body, 0),
            term: u64_at(body, 8),
            payload: Bytes::copy_from_slice(&body[ENTRY_PREFIX..]),
        },
        (KIND_TRUNCATE, 8) => Record::Truncate {
            last_kept: u64_at(body, 0),
        },
        (KIND_HARD_STATE, 25) => {
            let vote = match body[8] {
                0 => None,
                1 => Some(u64_at(body, 9)),
                other => return Decoded::Invalid(format!("hard-state vote flag {other}")),
            };
            Record::HardState(HardState {
                term: u64_at(body, 0),
                vote,
                commit: u64_at(body, 17),
            })
        }
        (KIND_FLOOR, 16) => Record::Floor {
            index: u64_at(body, 0),
            term: u64_at(body, 8),
        },
        (k, l) => return Decoded::Invalid(format!("record kind {k} with body length {l}")),
    };
    Decoded::Ok(rec, off + total)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_kind_round_trips() {
        let recs = [
            Record::Entry {
                index: 7,
                term: 3,
                payload: Bytes::from_static(b"hello"),
            },
            Record::Entry {
                index: 8,
                term: 3,
                payload: Bytes::new(),
            },
            Record::Truncate { last_kept: 5 },
            Record::HardState(HardState {
                term: 9,
                vote: Some(2),
                commit: 4,
            }),
            Record::HardState(HardState {
                term: 9,
                vote: None,
                commit: 4,
            }),
            Record::Floor {
                index: 100,
                term: 8,
            },
        ];
        let mut buf = Vec::new();
        for r in &recs {
            encode(r, &mut buf);
        }
        let mut off = 0;
        for r in &recs {
            match decode(&buf, off, 1 << 20) {
                Decoded::Ok(got, next) => {
                    assert_eq!(&got, r);
                    off = next;
                }
                other => panic!("decode failed: {other:?}"),
            }
        }
        assert!(matches!(decode(&buf, off, 1 << 20), Decoded::End));
    }

    #[test]
    fn every_prefix_of_a_record_is_incomplete_never_valid() {
        let mut buf = Vec::new();
        encode(
            &Record::Entry {
                index: 1,
                term: 1,
                payload: Bytes::from_static(b"abcdef"),
            },
            &mut buf,
        );
        for cut in 1..buf.len() {
            assert!(
                matches!(decode(&buf[..cut], 0, 1 << 20), Decoded::Incomplete),
                "cut at {cut} was not reported incomplete"
            );
        }
    }

    #[test]
    fn any_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(
            &Record::Entry {
                index: 1,
                term: 1,
                payload: Bytes::from_static(b"abcdef"),
            },
            &mut buf,
        );
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&b, 0, 1 << 20), Decoded::Ok(..)),
                    "flip of bit {bit} in byte {byte} went undetected"
                );
            }
        }
    }
}
