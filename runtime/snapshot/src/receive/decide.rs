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
//! | 3 | [`slot_for`]: this id already arriving on a stream the offer may not take over, or every slot taken | `AlreadyArriving{from, leader_term, idle_ms}` or `Busy{in_flight, limit}` |
//! | 4 | [`partial_restart_reason`]: a partial of the *same* file is resumed, anything else restarts from 0 | `Accept{resume_from}` |
//!
//! **Takeover** (step 3). A snapshot arrives on at most one stream, and only one stream writes
//! its partial file. A second offer of the same snapshot takes the first stream over — cancels
//! it, waits until it has synced and closed the file, then resumes its durable prefix — when
//! the offer comes from a newer leader term (a deposed leader's transfer is of no use), from
//! the node that sends the stream (a leader runs one transfer per follower: offering again
//! means it gave the old stream up), or once the stream has made no progress for
//! `takeover_idle_ms`. Otherwise it is declined with who sends the snapshot and how long ago
//! that stream last moved.
//!
//! A chunk goes through [`ChunkStream::on_header`] (decoded and bounded *before* its data is
//! allocated) and [`ChunkStream::on_data`] ([`ChunkVerdict`]: write, drop a stale one, Nack,
//! or give up).

use wraft_proto::digest::hex;
use wraft_storage::SnapshotId;
use wraft_transport::NodeId;

use crate::wire::{
    BusyReason, CHUNK_HEADER_BYTES, ChunkHeader, MIN_SNAPSHOT_FILE_BYTES, OFFER_MAGIC, Offer,
    Reply, TRANSFER_PROTOCOL_VERSION, TRANSFER_PROTOCOL_VERSION_FULL, decode_chunk_header,
    truncate_reason,
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
    /// Step 3: this snapshot is already arriving on a stream the offer may not take over, or
    /// every slot is taken by other snapshots.
    Busy(BusyReason),
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
            OfferDecision::Busy(reason) => reason.reply(),
            OfferDecision::Accept { resume_from } => Reply::Accept {
                resume_from: *resume_from,
            },
        }
    }
}

/// Step 1: is `offer` acceptable at all for a follower taking chunks of at most
/// `chunk_bytes_max` bytes? `Err(reason)` is answered `Reject{reason}`.
pub fn check_offer(offer: &Offer, chunk_bytes_max: u32) -> Result<(), String> {
    let versions = TRANSFER_PROTOCOL_VERSION_FULL..=TRANSFER_PROTOCOL_VERSION;
    if offer.magic != OFFER_MAGIC || !versions.contains(&offer.version) {
        Err(format!(
            "transfer protocol: expected magic {OFFER_MAGIC:02x?} version {TRANSFER_PROTOCOL_VERSION_FULL}..={TRANSFER_PROTOCOL_VERSION}, found magic {:02x?} version {}",
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

/// An incoming transfer holding a slot, as the slot rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arriving {
    /// The snapshot arriving.
    pub id: SnapshotId,
    /// The node sending it.
    pub from: NodeId,
    /// The leader term of that node's offer.
    pub leader_term: u64,
    /// Milliseconds since its stream last made progress.
    pub idle_ms: u64,
}

/// Step 3's answer to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotDecision {
    /// A free slot.
    Take,
    /// Take over the stream at this index of the transfers holding slots (the same snapshot):
    /// it is cancelled and gives its slot to the offer once its spool file is closed.
    TakeOver(usize),
    /// Declined for now.
    Busy(BusyReason),
}

/// Step 3 (pure): may an offer of snapshot `id` from node `from` in `leader_term` start,
/// given the transfers holding slots (`held`, at most `limit` of them)? See the module docs
/// for when it takes over a stream of the same snapshot.
pub fn slot_for(
    held: &[Arriving],
    limit: usize,
    id: SnapshotId,
    from: NodeId,
    leader_term: u64,
    takeover_idle_ms: u64,
) -> SlotDecision {
    if let Some(i) = held.iter().position(|a| a.id == id) {
        let a = held[i];
        let newer_term = leader_term > a.leader_term;
        let same_sender = from == a.from && leader_term >= a.leader_term;
        return if newer_term || same_sender || a.idle_ms >= takeover_idle_ms {
            SlotDecision::TakeOver(i)
        } else {
            SlotDecision::Busy(BusyReason::AlreadyArriving {
                from: a.from,
                leader_term: a.leader_term,
                idle_ms: a.idle_ms,
            })
        };
    }
    if held.len() >= limit {
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        return SlotDecision::Busy(BusyReason::SlotsFull {
            in_flight: n(held.len()),
            limit: n(limit),
        });
    }
    SlotDecision::Take
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

/// When the disk thread makes received bytes durable (and the leader hears of it): once
/// `every_bytes` are unsynced, or once the oldest unsynced byte was written `interval_ms` ago,
/// whichever comes first. The second rule keeps slow transfers' steps small: at 4 MB/s and
/// 100 ms a step is about 400 KB, not `every_bytes`; a fast transfer reaches `every_bytes`
/// first and syncs as seldom as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPolicy {
    /// `sync_every_bytes`.
    pub every_bytes: u64,
    /// `sync_interval_ms`.
    pub interval_ms: u64,
}

impl SyncPolicy {
    /// Sync now, with `unsynced` bytes written, the oldest of them `age_ms` ago?
    pub fn due(&self, unsynced: u64, age_ms: u64) -> bool {
        unsynced > 0 && (unsynced >= self.every_bytes || age_ms >= self.interval_ms)
    }
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
/// the chunk there. Chunks arrive for the ranges it asked for (version 1: everything from the
/// resume offset), in order, and never cross a range's end.
#[derive(Debug, Clone)]
pub struct ChunkStream {
    expected: u64,
    /// `(offset, len)` asked for, and how many are complete.
    ranges: Vec<(u64, u64)>,
    ranges_done: usize,
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
        let ranges = if resume_from < file_len {
            vec![(resume_from, file_len - resume_from)]
        } else {
            Vec::new()
        };
        Self::with_ranges(ranges, file_len, chunk_bytes_max, retries_max)
    }

    /// A stream of the byte `ranges` (sorted, disjoint, non-empty, within the file) of a
    /// `file_len`-byte file: what a version 2 follower asked for.
    pub fn with_ranges(
        ranges: Vec<(u64, u64)>,
        file_len: u64,
        chunk_bytes_max: u32,
        retries_max: u32,
    ) -> Self {
        debug_assert!(ranges.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        ChunkStream {
            expected: ranges.first().map_or(file_len, |r| r.0),
            ranges,
            ranges_done: 0,
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

    /// Every byte asked for was accepted.
    pub fn is_complete(&self) -> bool {
        self.ranges_done == self.ranges.len()
    }

    /// Ranges whose every byte was accepted.
    pub fn ranges_done(&self) -> usize {
        self.ranges_done
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
        let range_end = self
            .ranges
            .get(self.ranges_done)
            .map_or(self.file_len, |r| r.0 + r.1);
        if h.offset + u64::from(h.len) > range_end {
            return ChunkVerdict::Protocol(format!(
                "chunk at offset {} of {} bytes crosses the end of the range asked for at {range_end}",
                h.offset, h.len
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
        if self.expected == range_end {
            self.ranges_done += 1;
            self.expected = self
                .ranges
                .get(self.ranges_done)
                .map_or(self.file_len, |r| r.0);
        }
        ChunkVerdict::Write
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_chunk_header;

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
        let v1 = Offer {
            version: 1,
            ..offer()
        };
        assert_eq!(check_offer(&v1, max), Ok(()));
        let v3 = Offer {
            version: 3,
            ..offer()
        };
        let why = check_offer(&v3, max).unwrap_err();
        assert!(
            why.contains("version 1..=2") && why.contains("version 3"),
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
            OfferDecision::Busy(BusyReason::SlotsFull {
                in_flight: 2,
                limit: 2
            })
            .reply(),
            Reply::Busy {
                in_flight: 2,
                limit: 2
            }
        );
        assert_eq!(
            OfferDecision::Busy(BusyReason::AlreadyArriving {
                from: 3,
                leader_term: 7,
                idle_ms: 40
            })
            .reply(),
            Reply::AlreadyArriving {
                from: 3,
                leader_term: 7,
                idle_ms: 40
            }
        );
        assert_eq!(
            OfferDecision::Accept { resume_from: 9 }.reply(),
            Reply::Accept { resume_from: 9 }
        );
    }

    fn id(last_index: u64) -> SnapshotId {
        SnapshotId {
            last_index,
            last_term: 1,
        }
    }

    /// Snapshot 5 arriving from node 3, offered in term 7, last progress `idle_ms` ago.
    fn arriving(idle_ms: u64) -> Arriving {
        Arriving {
            id: id(5),
            from: 3,
            leader_term: 7,
            idle_ms,
        }
    }

    #[test]
    fn an_offer_gets_a_free_slot_unless_all_are_held_by_other_snapshots() {
        let other = Arriving {
            id: id(4),
            ..arriving(0)
        };
        assert_eq!(slot_for(&[], 1, id(5), 1, 7, 1000), SlotDecision::Take);
        assert_eq!(slot_for(&[other], 2, id(5), 1, 7, 1000), SlotDecision::Take);
        let full = slot_for(&[other], 1, id(5), 1, 9, 1000);
        assert_eq!(
            full,
            SlotDecision::Busy(BusyReason::SlotsFull {
                in_flight: 1,
                limit: 1
            })
        );
        let SlotDecision::Busy(why) = full else {
            unreachable!()
        };
        assert_eq!(
            why.to_string(),
            "all 1 incoming transfer slots are taken by other snapshots (1 arriving; snapshot.incoming_transfers_max = 1)"
        );
    }

    #[test]
    fn a_newer_term_or_the_same_sender_takes_over_a_stream_of_the_same_snapshot_at_once() {
        let held = [
            Arriving {
                id: id(4),
                ..arriving(0)
            },
            arriving(0),
        ];
        // Both slots are held: taking over needs none of its own.
        assert_eq!(
            slot_for(&held, 2, id(5), 1, 8, 1000),
            SlotDecision::TakeOver(1),
            "a newer leader term"
        );
        assert_eq!(
            slot_for(&held, 2, id(5), 3, 7, 1000),
            SlotDecision::TakeOver(1),
            "the node that sends it offers again: it gave the old stream up"
        );
    }

    #[test]
    fn a_rival_of_the_same_or_an_older_term_waits_until_the_stream_is_idle_and_is_told_why() {
        for term in [6, 7] {
            let d = slot_for(&[arriving(999)], 2, id(5), 1, term, 1000);
            assert_eq!(
                d,
                SlotDecision::Busy(BusyReason::AlreadyArriving {
                    from: 3,
                    leader_term: 7,
                    idle_ms: 999
                })
            );
            let SlotDecision::Busy(why) = d else {
                unreachable!()
            };
            assert_eq!(
                why.to_string(),
                "this snapshot is already arriving from node 3 (leader term 7) on another stream (last progress 999 ms ago)"
            );
            assert_eq!(
                slot_for(&[arriving(1000)], 2, id(5), 1, term, 1000),
                SlotDecision::TakeOver(0)
            );
        }
        // The node that sends the stream, in an older term than its own offer: not the same
        // leader (terms only grow), so only idleness lets it take over.
        assert!(matches!(
            slot_for(&[arriving(0)], 2, id(5), 3, 6, 1000),
            SlotDecision::Busy(_)
        ));
    }

    #[test]
    fn bytes_are_synced_at_sync_every_bytes_or_once_the_oldest_is_sync_interval_old() {
        let p = SyncPolicy {
            every_bytes: 8 << 20,
            interval_ms: 100,
        };
        assert!(!p.due(0, 10_000), "nothing to sync");
        assert!(!p.due(400_000, 99));
        assert!(
            p.due(400_000, 100),
            "a slow transfer syncs small steps often"
        );
        assert!(p.due(8 << 20, 0), "a fast one syncs every sync_every_bytes");
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
