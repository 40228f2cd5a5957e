//! The follower's decisions, without sockets, disks or clocks: what to answer to an offer
//! given what this node holds, and what to do with each chunk. The driver in
//! [`super`] gathers the facts and acts; everything it decides on is here, and tested here.
//!
//! An offer is answered by the first rule that decides, in this order (the driver asks each
//! question only when the previous ones did not decide):
//!
//! | step | rule | answer |
//! |---|---|---|
//! | 1 | [`check_offer`]: magic and version, `chunk_bytes` in `1..=chunk_bytes_max`, a file at least a snapshot header long | `Reject{reason}` |
//! | 2 | the store holds this id complete | `AlreadyHave` |
//! | 3 | [`crate::limiter::slot_for`]: a free slot, and this id not already arriving | `Busy{in_flight, limit}` |
//! | 4 | [`partial_restart_reason`]: a partial of the *same* file is resumed, anything else restarts from 0 | `Accept{resume_from}` |
//!
//! A chunk goes through [`ChunkStream::on_header`] (decoded and bounded *before* its data is
//! allocated) and [`ChunkStream::on_data`] ([`ChunkVerdict`]: write, drop a stale one, Nack,
//! or give up).

use wraft_proto::digest::hex;

use crate::wire::{
    CHUNK_HEADER_BYTES, ChunkHeader, MIN_SNAPSHOT_FILE_BYTES, OFFER_MAGIC, Offer, Reply,
    TRANSFER_PROTOCOL_VERSION, decode_chunk_header, truncate_reason,
};

/// The follower's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferDecision {
    /// Step 1: the offer is unacceptable (the reason names expected and found values).
    Reject {
        /// Why.
        reason: String,
    },
    /// Step 2: the snapshot is complete here already.
    AlreadyHave,
    /// Step 3: every slot is taken, or this snapshot is already arriving on another stream.
    Busy {
        /// Transfers holding a slot.
        in_flight: usize,
        /// `max_incoming_transfers`.
        limit: usize,
    },
    /// Step 4: send from `resume_from` (0, or the durable prefix of the same file).
    Accept {
        /// Bytes already held durably.
        resume_from: u64,
    },
}

impl OfferDecision {
    /// The reply that carries this decision to the leader.
    pub fn reply(&self) -> Reply {
        match self {
            OfferDecision::Reject { reason } => Reply::Reject {
                reason: truncate_reason(reason.clone()),
            },
            OfferDecision::AlreadyHave => Reply::AlreadyHave,
            OfferDecision::Busy { in_flight, limit } => Reply::Busy {
                in_flight: *in_flight as u32,
                limit: *limit as u32,
            },
            OfferDecision::Accept { resume_from } => Reply::Accept {
                resume_from: *resume_from,
            },
        }
    }
}

/// Step 1: is `offer` acceptable at all for a follower taking chunks of at most
/// `chunk_bytes_max` bytes? `Err(reason)` is answered `Reject{reason}`.
pub fn check_offer(offer: &Offer, chunk_bytes_max: u32) -> Result<(), String> {
    if offer.magic != OFFER_MAGIC || offer.version != TRANSFER_PROTOCOL_VERSION {
        Err(format!(
            "transfer protocol: expected magic {OFFER_MAGIC:02x?} version {TRANSFER_PROTOCOL_VERSION}, found magic {:02x?} version {}",
            offer.magic, offer.version
        ))
    } else if offer.chunk_bytes == 0 || offer.chunk_bytes > chunk_bytes_max {
        Err(format!(
            "chunk size {} bytes is outside 1..={} (chunk_bytes_max)",
            offer.chunk_bytes, chunk_bytes_max
        ))
    } else if offer.file_len < MIN_SNAPSHOT_FILE_BYTES {
        Err(format!(
            "file length {} is shorter than a snapshot header ({MIN_SNAPSHOT_FILE_BYTES} bytes)",
            offer.file_len
        ))
    } else {
        Ok(())
    }
}

/// Step 4: may a partial file of the offered id, holding `durable` bytes durably, be resumed?
/// `Ok(None)`: resume from `durable`; `Ok(Some(why))`: discard it and restart from 0.
///
/// Only a prefix of the *same* file is resumed: snapshots of one id taken on different nodes
/// may differ in bytes, so the digest in the partial's header must be the offer's. The digest
/// is read (`partial_digest`, `None` if not durable yet) only when the length allows a resume.
pub fn partial_restart_reason<E>(
    durable: u64,
    offer: &Offer,
    partial_digest: impl FnOnce() -> Result<Option<[u8; 32]>, E>,
) -> Result<Option<String>, E> {
    if durable == 0 {
        return Ok(None);
    }
    if durable > offer.file_len {
        return Ok(Some(format!(
            "holds {durable} bytes but the offered file has {}",
            offer.file_len
        )));
    }
    Ok(match partial_digest()? {
        Some(d) if d == offer.digest => None,
        Some(d) => Some(format!(
            "is a prefix of another file with the same id (digest {}, offered {}); snapshots taken on different nodes may differ",
            hex(&d),
            hex(&offer.digest)
        )),
        // Not even the digest is durable yet: too little to be worth checking otherwise.
        None => Some(format!("holds only {durable} bytes")),
    })
}

/// What to do with a chunk whose data arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Its CRC32C matched at the expected offset: queue it for the disk.
    Write,
    /// Past the expected offset while a Nack is outstanding: sent before the Nack reached the
    /// leader, which sends it again. Drop it.
    Stale,
    /// It failed its CRC32C: ask for it again from `offset` (the `retries`-th time in a row).
    Nack {
        /// The chunk's offset (the expected one).
        offset: u64,
        /// CRC32C the header promised.
        expected_crc: u32,
        /// CRC32C of the data that arrived.
        found_crc: u32,
        /// Consecutive failures of this chunk, this one included.
        retries: u32,
    },
    /// It failed its CRC32C more than `chunk_retries_max` times in a row: give up.
    RetriesExhausted {
        /// The chunk's offset.
        offset: u64,
        /// CRC32C the header promised.
        expected_crc: u32,
        /// CRC32C of the data that arrived.
        found_crc: u32,
        /// Consecutive failures, this one included.
        failures: u32,
    },
    /// A chunk at an offset the protocol does not allow: the stream cannot continue.
    Protocol(String),
}

/// The follower's view of the chunk stream: the offset it expects next, and the failures of
/// the chunk there.
#[derive(Debug, Clone)]
pub struct ChunkStream {
    expected: u64,
    file_len: u64,
    chunk_bytes_max: u32,
    retries: u32,
    retries_max: u32,
    nack_pending: bool,
}

impl ChunkStream {
    /// A stream of a `file_len`-byte file resumed at `resume_from`, in chunks of at most
    /// `chunk_bytes_max` bytes (the offer's `chunk_bytes`), abandoned after `retries_max`
    /// Nacks of the same chunk.
    pub fn new(resume_from: u64, file_len: u64, chunk_bytes_max: u32, retries_max: u32) -> Self {
        debug_assert!(resume_from <= file_len);
        ChunkStream {
            expected: resume_from,
            file_len,
            chunk_bytes_max,
            retries: 0,
            retries_max,
            nack_pending: false,
        }
    }

    /// The offset of the next chunk to write (everything before it was accepted).
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Every byte of the file was accepted.
    pub fn is_complete(&self) -> bool {
        self.expected == self.file_len
    }

    /// Decode and bound a chunk header before its data is read: its length is what the
    /// receiver allocates. `Err(detail)` is a protocol violation that ends the stream (a
    /// header that fails its own CRC leaves no framing to trust).
    pub fn on_header(&self, bytes: &[u8; CHUNK_HEADER_BYTES]) -> Result<ChunkHeader, String> {
        let h = decode_chunk_header(bytes)
            .map_err(|detail| format!("chunk header after offset {}: {detail}", self.expected))?;
        let end = h.offset.checked_add(u64::from(h.len));
        if h.len == 0 || h.len > self.chunk_bytes_max || end.is_none_or(|e| e > self.file_len) {
            return Err(format!(
                "chunk at offset {} of {} bytes: expected 1..={} bytes ending at or before {}",
                h.offset, h.len, self.chunk_bytes_max, self.file_len
            ));
        }
        Ok(h)
    }

    /// The data of chunk `h` (from [`ChunkStream::on_header`]) arrived: judge it.
    /// Cost: a CRC32C over `data`.
    pub fn on_data(&mut self, h: &ChunkHeader, data: &[u8]) -> ChunkVerdict {
        debug_assert_eq!(data.len() as u64, u64::from(h.len));
        if h.offset != self.expected {
            if self.nack_pending && h.offset > self.expected {
                return ChunkVerdict::Stale;
            }
            return ChunkVerdict::Protocol(format!(
                "chunk at offset {}, expected {}",
                h.offset, self.expected
            ));
        }
        let found_crc = crc32c::crc32c(data);
        if found_crc != h.data_crc {
            self.retries += 1;
            if self.retries > self.retries_max {
                return ChunkVerdict::RetriesExhausted {
                    offset: h.offset,
                    expected_crc: h.data_crc,
                    found_crc,
                    failures: self.retries,
                };
            }
            self.nack_pending = true;
            return ChunkVerdict::Nack {
                offset: self.expected,
                expected_crc: h.data_crc,
                found_crc,
                retries: self.retries,
            };
        }
        self.nack_pending = false;
        self.retries = 0;
        self.expected += u64::from(h.len);
        ChunkVerdict::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_chunk_header;
    use wraft_storage::SnapshotId;

    fn offer() -> Offer {
        Offer {
            magic: OFFER_MAGIC,
            version: TRANSFER_PROTOCOL_VERSION,
            id: SnapshotId {
                last_index: 50,
                last_term: 2,
            },
            digest: [4; 32],
            file_len: 1 << 20,
            chunk_bytes: 64 << 10,
            leader_term: 2,
        }
    }

    #[test]
    fn an_offer_in_another_protocol_or_with_bad_bounds_is_rejected_with_the_reason() {
        let max = 1 << 20;
        assert_eq!(check_offer(&offer(), max), Ok(()));
        let v2 = Offer {
            version: 2,
            ..offer()
        };
        let why = check_offer(&v2, max).unwrap_err();
        assert!(
            why.contains("version 1") && why.contains("version 2"),
            "{why}"
        );
        let magic = Offer {
            magic: *b"HTTP",
            ..offer()
        };
        assert!(check_offer(&magic, max).unwrap_err().contains("magic"));
        for chunk_bytes in [0, max + 1] {
            let o = Offer {
                chunk_bytes,
                ..offer()
            };
            let why = check_offer(&o, max).unwrap_err();
            assert!(
                why.contains("outside 1..=1048576 (chunk_bytes_max)"),
                "{why}"
            );
        }
        let short = Offer {
            file_len: MIN_SNAPSHOT_FILE_BYTES - 1,
            ..offer()
        };
        assert!(
            check_offer(&short, max)
                .unwrap_err()
                .contains("shorter than a snapshot header")
        );
    }

    #[test]
    fn each_decision_travels_as_its_reply_with_long_reasons_cut() {
        let long = "x".repeat(5000);
        assert!(matches!(
            OfferDecision::Reject { reason: long }.reply(),
            Reply::Reject { reason } if reason.len() == crate::wire::REASON_BYTES_MAX
        ));
        assert_eq!(OfferDecision::AlreadyHave.reply(), Reply::AlreadyHave);
        assert_eq!(
            OfferDecision::Busy {
                in_flight: 2,
                limit: 2
            }
            .reply(),
            Reply::Busy {
                in_flight: 2,
                limit: 2
            }
        );
        assert_eq!(
            OfferDecision::Accept { resume_from: 9 }.reply(),
            Reply::Accept { resume_from: 9 }
        );
    }

    type NoError = std::convert::Infallible;

    #[test]
    fn a_partial_of_the_same_file_is_resumed_and_anything_else_restarts() {
        let o = offer();
        let same = || Ok::<_, NoError>(Some([4; 32]));
        assert_eq!(partial_restart_reason(4096, &o, same), Ok(None));
        let never = || -> Result<Option<[u8; 32]>, NoError> { panic!("digest read for nothing") };
        assert_eq!(partial_restart_reason(0, &o, never), Ok(None));
        let why = partial_restart_reason(o.file_len + 1, &o, never)
            .unwrap()
            .unwrap();
        assert!(why.contains("but the offered file has 1048576"), "{why}");
        let other = || Ok::<_, NoError>(Some([5; 32]));
        let why = partial_restart_reason(4096, &o, other).unwrap().unwrap();
        assert!(why.contains("another file with the same id"), "{why}");
        let none = || Ok::<_, NoError>(None);
        let why = partial_restart_reason(10, &o, none).unwrap().unwrap();
        assert_eq!(why, "holds only 10 bytes");
        assert_eq!(partial_restart_reason(10, &o, || Err("io")), Err("io"));
    }

    fn header(stream: &ChunkStream, offset: u64, data: &[u8]) -> ChunkHeader {
        stream
            .on_header(&encode_chunk_header(offset, data))
            .unwrap()
    }

    #[test]
    fn contiguous_good_chunks_are_written_until_the_file_is_complete() {
        let mut s = ChunkStream::new(100, 300, 100, 8);
        let data = [7u8; 100];
        let h = header(&s, 100, &data);
        assert_eq!(s.on_data(&h, &data), ChunkVerdict::Write);
        assert_eq!((s.expected(), s.is_complete()), (200, false));
        let h = header(&s, 200, &data);
        assert_eq!(s.on_data(&h, &data), ChunkVerdict::Write);
        assert!(s.is_complete());
    }

    #[test]
    fn headers_out_of_bounds_or_damaged_end_the_stream_before_any_allocation() {
        let s = ChunkStream::new(0, 1000, 100, 8);
        let err = s.on_header(&encode_chunk_header(0, &[0; 101])).unwrap_err();
        assert!(
            err.contains("expected 1..=100 bytes ending at or before 1000"),
            "{err}"
        );
        assert!(s.on_header(&encode_chunk_header(950, &[0; 51])).is_err());
        assert!(s.on_header(&encode_chunk_header(0, &[])).is_err());
        // The length field says 4 GiB, the header CRC is valid: refused before allocating.
        let huge = ChunkHeader {
            offset: u64::MAX,
            len: u32::MAX,
            data_crc: 0,
        };
        assert!(s.on_header(&huge.encode()).is_err());
        let mut bad = encode_chunk_header(0, &[1]);
        bad[5] ^= 1;
        let err = s.on_header(&bad).unwrap_err();
        assert!(
            err.starts_with("chunk header after offset 0: chunk header checksum"),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_chunk_is_nacked_and_chunks_already_in_flight_after_it_are_dropped() {
        let mut s = ChunkStream::new(0, 300, 100, 8);
        let good = [1u8; 100];
        let h0 = header(&s, 0, &good);
        let mut bad = good;
        bad[3] ^= 0x40;
        assert!(matches!(
            s.on_data(&h0, &bad),
            ChunkVerdict::Nack {
                offset: 0,
                retries: 1,
                ..
            }
        ));
        // Chunk 1 was on the wire before the leader saw the Nack.
        let h1 = header(&s, 100, &good);
        assert_eq!(s.on_data(&h1, &good), ChunkVerdict::Stale);
        assert_eq!(s.on_data(&h0, &good), ChunkVerdict::Write);
        // No Nack outstanding any more: a chunk from the future is a violation.
        let h2 = header(&s, 200, &good);
        assert_eq!(
            s.on_data(&h2, &good),
            ChunkVerdict::Protocol("chunk at offset 200, expected 100".into())
        );
    }

    #[test]
    fn a_chunk_behind_the_expected_offset_is_a_protocol_violation_even_after_a_nack() {
        let mut s = ChunkStream::new(0, 300, 100, 8);
        let good = [1u8; 100];
        let h0 = header(&s, 0, &good);
        assert_eq!(s.on_data(&h0, &good), ChunkVerdict::Write);
        let h1 = header(&s, 100, &good);
        assert!(matches!(
            s.on_data(&h1, &[0; 100]),
            ChunkVerdict::Nack { .. }
        ));
        assert!(matches!(s.on_data(&h0, &good), ChunkVerdict::Protocol(_)));
    }

    #[test]
    fn the_same_chunk_failing_more_than_retries_max_times_gives_up() {
        let mut s = ChunkStream::new(0, 100, 100, 2);
        let good = [9u8; 100];
        let h = header(&s, 0, &good);
        let bad = [0u8; 100];
        assert!(matches!(
            s.on_data(&h, &bad),
            ChunkVerdict::Nack { retries: 1, .. }
        ));
        assert!(matches!(
            s.on_data(&h, &bad),
            ChunkVerdict::Nack { retries: 2, .. }
        ));
        assert!(matches!(
            s.on_data(&h, &bad),
            ChunkVerdict::RetriesExhausted {
                offset: 0,
                failures: 3,
                ..
            }
        ));
        // A good copy resets the count.
        let mut s = ChunkStream::new(0, 200, 100, 1);
        let h0 = header(&s, 0, &good);
        assert!(matches!(s.on_data(&h0, &bad), ChunkVerdict::Nack { .. }));
        assert_eq!(s.on_data(&h0, &good), ChunkVerdict::Write);
        let h1 = header(&s, 100, &good);
        assert!(matches!(
            s.on_data(&h1, &bad),
            ChunkVerdict::Nack { retries: 1, .. }
        ));
    }
}
