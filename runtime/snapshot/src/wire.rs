//! The transfer protocol's messages: what travels on a snapshot transfer's bulk stream, and
//! nothing else (no I/O here; [`crate::send`] and [`crate::receive`] move the bytes).
//!
//! ```text
//! leader → follower   control frame kind KIND_OFFER (0x20): postcard Offer   (first frame)
//! follower → leader   control frame kind KIND_REPLY (0x21): postcard Reply   (every answer)
//! leader → follower   control frame kind KIND_MANIFEST (0x22): postcard ManifestPart
//!                                                  (version 2, after SendManifest, until `last`)
//! leader → follower   chunk: 24-byte ChunkHeader ‖ data   (after Accept, or the last Fetch part)
//! ```
//!
//! Version 2 (incremental): the follower answers an acceptable offer `SendManifest{resume_from}`;
//! the leader sends the file's segments ([`crate::manifest`]: length and BLAKE3 each, in file
//! order) in [`ManifestPart`]s; the follower answers with the byte ranges it does not hold
//! (`Fetch` parts, sorted, disjoint, at or after `resume_from`), assembles the rest from its own
//! snapshots, and the leader sends chunks of those ranges only. A version 1 offer is still
//! served the version 1 way; a leader whose version 2 offer is refused by a version 1 follower
//! offers that snapshot to it in version 1 (and a newer one in version 2 again). While it indexes
//! its own files, a version 2 follower repeats `Durable{resume_from}` as a heartbeat.
//!
//! Control frames are `wraft_transport::frame` frames (magic `WF`, version, kind, length,
//! CRC32C) of at most [`CONTROL_FRAME_BYTES_MAX`] bytes. The postcard layout of [`Offer`] and
//! [`Reply`] is the wire format: field order and variant order must never change
//! (a change is a new [`TRANSFER_PROTOCOL_VERSION`]); a new reply goes at the end of [`Reply`]
//! (an older leader fails to decode it and offers again, as after any failed transfer).
//!
//! **Heartbeats** need no message of their own: a follower repeats its last durable offset
//! (`Durable{offset}`, which every leader accepts, the offset never going back). A follower of
//! this version repeats the offer's `resume_from` right after `Accept` — a follower before it
//! only sent `Durable` when the offset advanced — and then sends `Durable` (or `Verifying`) at
//! least every `heartbeat_ms`. A leader that saw the repeat presumes the follower gone after
//! `silence_timeout_ms` without a reply; an older follower is watched by the progress timeout
//! alone (see [`crate::TransferConfig`]).
//!
//! Chunk header layout (little-endian):
//!
//! ```text
//! 0   magic b"WC"
//! 2   version u8 (1)
//! 3   flags u8 (0, reserved)
//! 4   offset u64     file offset of the first data byte
//! 12  len u32        data bytes (<= the offer's chunk_bytes)
//! 16  data_crc u32   CRC32C of the data
//! 20  header_crc u32 CRC32C of bytes 0..20
//! 24  data
//! ```
//!
//! The header has its own CRC so that a corrupt chunk is rejected *by offset* without losing
//! the stream's framing; a corrupt header is fatal for the stream (the next transfer resumes).
//!
//! Every decoder here reads bytes from the network and is a fuzz target
//! (`fuzz/harness`: `transfer_offer`, `transfer_reply`, `transfer_chunk`): it never panics and
//! allocates at most its input.

use serde::{Deserialize, Serialize};
use wraft_storage::SnapshotId;
use wraft_transport::frame::{self, FrameError};

/// Magic at the start of every offer: "wraft snapshot transfer".
pub const OFFER_MAGIC: [u8; 4] = *b"WSXF";
/// The transfer protocol version this build offers (it also serves and falls back to
/// [`TRANSFER_PROTOCOL_VERSION_FULL`]).
pub const TRANSFER_PROTOCOL_VERSION: u16 = 2;
/// The version that always sends the whole file (from the durable offset).
pub const TRANSFER_PROTOCOL_VERSION_FULL: u16 = 1;
/// Transport frame kind of a manifest part (leader -> follower, version 2).
pub const KIND_MANIFEST: u8 = 0x22;
/// Most segments in one [`ManifestPart`] (37 bytes each at most: fits a control frame).
pub const MANIFEST_PART_SEGMENTS_MAX: usize = 1600;
/// Most segments in a manifest: bounds the follower's memory (~44 bytes each) whatever the
/// leader claims; an honest 1 GiB snapshot has some 50 000.
pub const MANIFEST_SEGMENTS_MAX: usize = 4 << 20;
/// Most ranges in one `Fetch` reply (20 bytes each at most: fits a control frame).
pub const FETCH_PART_RANGES_MAX: usize = 3000;
/// Transport frame kind of the offer (leader -> follower, first frame of the stream).
pub const KIND_OFFER: u8 = 0x20;
/// Transport frame kind of every follower -> leader message.
pub const KIND_REPLY: u8 = 0x21;
/// Largest control frame payload either side reads, bytes.
pub const CONTROL_FRAME_BYTES_MAX: u32 = 64 << 10;
/// Longest reason string put in a reply, bytes.
pub const REASON_BYTES_MAX: usize = 1024;

/// Chunk header magic.
pub const CHUNK_MAGIC: [u8; 2] = *b"WC";
/// Chunk header version.
pub const CHUNK_VERSION: u8 = 1;
/// Bytes of a chunk header (see the module docs for the layout).
pub const CHUNK_HEADER_BYTES: usize = 24;

/// Offset of the whole-file digest inside a snapshot file header (see `wraft_storage`).
/// Files shorter than this cannot be snapshots.
pub const MIN_SNAPSHOT_FILE_BYTES: u64 = wraft_storage::SNAPSHOT_HEADER_BYTES;

/// Stream reset code when a side abandons a transfer.
pub const CODE_TRANSFER_ABORTED: u32 = 0x5e;

/// The leader's offer: the first frame of a transfer's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// [`OFFER_MAGIC`].
    pub magic: [u8; 4],
    /// [`TRANSFER_PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The snapshot offered.
    pub id: SnapshotId,
    /// BLAKE3 digest of the whole file (from its header).
    pub digest: [u8; 32],
    /// File length, bytes.
    pub file_len: u64,
    /// Payload bytes per chunk the leader will send.
    pub chunk_bytes: u32,
    /// The leader's term.
    pub leader_term: u64,
}

/// Every follower -> leader message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Send from this offset (what the follower holds durably for this id and digest).
    Accept {
        /// Bytes `[0, resume_from)` are durable on the follower.
        resume_from: u64,
    },
    /// Every incoming slot is taken by transfers of other snapshots
    /// ([`BusyReason::SlotsFull`]).
    Busy {
        /// Transfers running on the follower.
        in_flight: u32,
        /// Its `incoming_transfers_max`.
        limit: u32,
    },
    /// The snapshot is already complete here.
    AlreadyHave,
    /// The offer is unacceptable.
    Reject {
        /// Why (at most [`REASON_BYTES_MAX`] bytes).
        reason: String,
    },
    /// Bytes `[0, offset)` are durable.
    Durable {
        /// The durable offset.
        offset: u64,
    },
    /// The chunk at `offset` failed its CRC32C: resend from there.
    Nack {
        /// Offset of the rejected chunk.
        offset: u64,
    },
    /// All bytes are here; whole-file verification is running (a progress heartbeat).
    Verifying,
    /// Verified and published.
    Received {
        /// BLAKE3 digest of the published file.
        digest: [u8; 32],
    },
    /// The receiver gave up.
    Failed {
        /// Why (at most [`REASON_BYTES_MAX`] bytes).
        reason: String,
    },
    /// This snapshot is already arriving on another stream, which the offer may not take over
    /// ([`BusyReason::AlreadyArriving`]). Added after the first release: last, so that the
    /// variants before it keep their postcard tags.
    AlreadyArriving {
        /// The node sending it there.
        from: u64,
        /// The leader term of that node's offer.
        leader_term: u64,
        /// Milliseconds since that stream last made progress.
        idle_ms: u64,
    },
    /// Version 2: accepted; send the manifest (appended after `AlreadyArriving`, tag 10). Bytes `[0, resume_from)` are durable here.
    SendManifest {
        /// The durable prefix of the same file.
        resume_from: u64,
    },
    /// Version 2: send these byte ranges `(offset, len)` of the file (sorted, disjoint, at or
    /// after `resume_from`); more parts follow until `last`.
    Fetch {
        /// At most [`FETCH_PART_RANGES_MAX`].
        ranges: Vec<(u64, u64)>,
        /// The last part.
        last: bool,
    },
}

/// Why a follower declined an offer for now (`Busy` or `AlreadyArriving` on the wire): the
/// leader offers again later, backing off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyReason {
    /// Every incoming slot is held by transfers of other snapshots.
    SlotsFull {
        /// Transfers holding a slot.
        in_flight: u32,
        /// The follower's `snapshot.incoming_transfers_max`.
        limit: u32,
    },
    /// The snapshot is already arriving from node `from` on another stream that is neither
    /// from an older leader term nor idle for long enough to be taken over.
    AlreadyArriving {
        /// The node sending it.
        from: u64,
        /// The leader term of that node's offer.
        leader_term: u64,
        /// Milliseconds since that stream last made progress.
        idle_ms: u64,
    },
}

impl BusyReason {
    /// The reply that carries this reason to the leader.
    pub fn reply(self) -> Reply {
        match self {
            BusyReason::SlotsFull { in_flight, limit } => Reply::Busy { in_flight, limit },
            BusyReason::AlreadyArriving {
                from,
                leader_term,
                idle_ms,
            } => Reply::AlreadyArriving {
                from,
                leader_term,
                idle_ms,
            },
        }
    }
}

impl std::fmt::Display for BusyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusyReason::SlotsFull { in_flight, limit } => write!(
                f,
                "all {limit} incoming transfer slots are taken by other snapshots ({in_flight} arriving; snapshot.incoming_transfers_max = {limit})"
            ),
            BusyReason::AlreadyArriving {
                from,
                leader_term,
                idle_ms,
            } => write!(
                f,
                "this snapshot is already arriving from node {from} (leader term {leader_term}) on another stream (last progress {idle_ms} ms ago)"
            ),
        }
    }
}

/// One part of a version 2 manifest: the next segments of the file, in order from offset 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPart {
    /// `(len, BLAKE3)` per segment; at most [`MANIFEST_PART_SEGMENTS_MAX`].
    pub segments: Vec<(u32, [u8; 32])>,
    /// The last part.
    pub last: bool,
}

/// A leader -> follower control frame after the offer, as a manifest part. Pure; never panics.
pub fn decode_manifest_part(kind: u8, payload: &[u8]) -> Result<ManifestPart, FrameError> {
    if kind != KIND_MANIFEST {
        return Err(FrameError::UnexpectedKind {
            expected: "snapshot manifest part (0x22)",
            found: kind,
        });
    }
    frame::decode_payload(payload)
}

/// The offer's postcard payload (what goes in its control frame).
pub fn encode_offer(offer: &Offer) -> Result<Vec<u8>, FrameError> {
    frame::encode_payload(offer)
}

/// The first frame of a bulk stream, as an offer. Pure; never panics.
///
/// `Err` holds the reason the follower sends back in `Reject` (and returns as its protocol
/// error): a frame of another kind, or a payload that does not decode.
pub fn decode_offer(kind: u8, payload: &[u8]) -> Result<Offer, String> {
    if kind != KIND_OFFER {
        return Err(format!(
            "first frame of a bulk stream: expected a snapshot offer (kind {KIND_OFFER:#04x}), found kind {kind:#04x}"
        ));
    }
    frame::decode_payload::<Offer>(payload).map_err(|e| {
        format!(
            "offer does not decode (this node speaks transfer protocol version {TRANSFER_PROTOCOL_VERSION}): {e}"
        )
    })
}

/// A reply's postcard payload (what goes in its control frame).
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, FrameError> {
    frame::encode_payload(reply)
}

/// A follower -> leader control frame, as a reply. Pure; never panics.
pub fn decode_reply(kind: u8, payload: &[u8]) -> Result<Reply, FrameError> {
    if kind != KIND_REPLY {
        return Err(FrameError::UnexpectedKind {
            expected: "snapshot transfer reply (0x21)",
            found: kind,
        });
    }
    frame::decode_payload(payload)
}

/// A chunk header, decoded and checked (magic, version, header CRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// File offset of the first data byte.
    pub offset: u64,
    /// Data bytes that follow.
    pub len: u32,
    /// CRC32C of those bytes.
    pub data_crc: u32,
}

impl ChunkHeader {
    /// The header of `data` sent at file offset `offset`. Cost: a CRC32C over `data`.
    ///
    /// `data` must be at most `u32::MAX` bytes (a chunk is at most the offer's `chunk_bytes`).
    pub fn for_data(offset: u64, data: &[u8]) -> Self {
        debug_assert!(u32::try_from(data.len()).is_ok(), "chunk over 4 GiB");
        ChunkHeader {
            offset,
            len: data.len() as u32,
            data_crc: crc32c::crc32c(data),
        }
    }

    /// The 24 header bytes (flags 0), with the header's own CRC32C.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_BYTES] {
        let mut h = [0u8; CHUNK_HEADER_BYTES];
        h[..2].copy_from_slice(&CHUNK_MAGIC);
        h[2] = CHUNK_VERSION;
        h[4..12].copy_from_slice(&self.offset.to_le_bytes());
        h[12..16].copy_from_slice(&self.len.to_le_bytes());
        h[16..20].copy_from_slice(&self.data_crc.to_le_bytes());
        let hc = crc32c::crc32c(&h[..20]);
        h[20..24].copy_from_slice(&hc.to_le_bytes());
        h
    }
}

/// The header to send before `data` at file offset `offset`.
pub fn encode_chunk_header(offset: u64, data: &[u8]) -> [u8; CHUNK_HEADER_BYTES] {
    ChunkHeader::for_data(offset, data).encode()
}

/// Validate a chunk header. Pure; never panics. The flags byte is reserved and not checked
/// (the header CRC covers it).
pub fn decode_chunk_header(h: &[u8; CHUNK_HEADER_BYTES]) -> Result<ChunkHeader, String> {
    let le32 = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[..2] != CHUNK_MAGIC {
        return Err(format!(
            "chunk magic: expected {CHUNK_MAGIC:02x?}, found {:02x?}",
            &h[..2]
        ));
    }
    let (stored, found) = (le32(20), crc32c::crc32c(&h[..20]));
    if stored != found {
        return Err(format!(
            "chunk header checksum: header says {stored:#010x}, bytes hash to {found:#010x}"
        ));
    }
    if h[2] != CHUNK_VERSION {
        return Err(format!(
            "chunk version: expected {CHUNK_VERSION}, found {}",
            h[2]
        ));
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&h[4..12]);
    Ok(ChunkHeader {
        offset: u64::from_le_bytes(off),
        len: le32(12),
        data_crc: le32(16),
    })
}

/// `s` cut to at most [`REASON_BYTES_MAX`] bytes, on a character boundary.
pub fn truncate_reason(mut s: String) -> String {
    if s.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            magic: OFFER_MAGIC,
            version: TRANSFER_PROTOCOL_VERSION,
            id: SnapshotId {
                last_index: 1000,
                last_term: 3,
            },
            digest: [7; 32],
            file_len: 1 << 20,
            chunk_bytes: 64 << 10,
            leader_term: 4,
        }
    }

    #[test]
    fn chunk_header_decoder_never_panics_and_catches_every_bit_flip() {
        let h = encode_chunk_header(1 << 33, &[1, 2, 3]);
        assert_eq!(
            decode_chunk_header(&h),
            Ok(ChunkHeader {
                offset: 1 << 33,
                len: 3,
                data_crc: crc32c::crc32c(&[1, 2, 3])
            })
        );
        for byte in 0..CHUNK_HEADER_BYTES {
            for bit in 0..8 {
                let mut bad = h;
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_chunk_header(&bad).is_err(),
                    "flip {byte}:{bit} undetected"
                );
            }
        }
        let seed = 0xc0ffee_u64;
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..10_000 {
            let mut b = [0u8; CHUNK_HEADER_BYTES];
            rng.fill(&mut b);
            let _ = decode_chunk_header(&b);
        }
    }

    /// The bytes on the wire, pinned: a change here is a protocol change.
    #[test]
    fn wire_bytes_of_an_offer_a_reply_and_a_chunk_header_are_pinned() {
        let o = encode_offer(&offer()).unwrap();
        assert_eq!(&o[..7], &[b'W', b'S', b'X', b'F', 2, 0xe8, 0x07]);
        assert_eq!(o.len(), 4 + 1 + 2 + 1 + 32 + 3 + 3 + 1);
        assert_eq!(
            encode_reply(&Reply::Accept { resume_from: 300 }).unwrap(),
            [0, 0xac, 0x02]
        );
        assert_eq!(encode_reply(&Reply::Verifying).unwrap(), [6]);
        assert_eq!(encode_reply(&Reply::Nack { offset: 1 }).unwrap(), [5, 1]);
        assert_eq!(
            encode_reply(&Reply::Busy {
                in_flight: 2,
                limit: 2
            })
            .unwrap(),
            [1, 2, 2]
        );
        // Appended after the first release: tag 9, after `Failed` (8).
        assert_eq!(
            encode_reply(&Reply::AlreadyArriving {
                from: 3,
                leader_term: 7,
                idle_ms: 300
            })
            .unwrap(),
            [9, 3, 7, 0xac, 0x02]
        );
        // Version 2, appended after it.
        assert_eq!(
            encode_reply(&Reply::SendManifest { resume_from: 2 }).unwrap(),
            [10, 2]
        );
        assert_eq!(
            encode_reply(&Reply::Fetch {
                ranges: vec![(1, 2)],
                last: true
            })
            .unwrap(),
            [11, 1, 1, 2, 1]
        );
        let h = encode_chunk_header(0x0102, b"ab");
        assert_eq!(&h[..16], b"WC\x01\x00\x02\x01\0\0\0\0\0\0\x02\0\0\0");
        assert_eq!(h[16..20], crc32c::crc32c(b"ab").to_le_bytes());
    }

    #[test]
    fn the_largest_manifest_part_and_fetch_part_fit_a_control_frame() {
        let part = ManifestPart {
            segments: vec![(u32::MAX, [0xff; 32]); MANIFEST_PART_SEGMENTS_MAX],
            last: true,
        };
        let bytes = frame::encode_payload(&part).unwrap();
        assert!(
            bytes.len() <= CONTROL_FRAME_BYTES_MAX as usize,
            "{}",
            bytes.len()
        );
        assert_eq!(decode_manifest_part(KIND_MANIFEST, &bytes).unwrap(), part);
        assert!(decode_manifest_part(KIND_REPLY, &bytes).is_err());
        let fetch = Reply::Fetch {
            ranges: vec![(u64::MAX, u64::MAX); FETCH_PART_RANGES_MAX],
            last: false,
        };
        let bytes = encode_reply(&fetch).unwrap();
        assert!(
            bytes.len() <= CONTROL_FRAME_BYTES_MAX as usize,
            "{}",
            bytes.len()
        );
    }

    #[test]
    fn offers_and_replies_decode_what_was_encoded_and_refuse_other_kinds() {
        let o = offer();
        assert_eq!(decode_offer(KIND_OFFER, &encode_offer(&o).unwrap()), Ok(o));
        let err = decode_offer(KIND_REPLY, &[]).unwrap_err();
        assert!(
            err.contains("expected a snapshot offer (kind 0x20), found kind 0x21"),
            "{err}"
        );
        let err = decode_offer(KIND_OFFER, &[0xff; 7]).unwrap_err();
        assert!(err.contains("offer does not decode"), "{err}");
        assert!(err.contains("version 2"), "{err}");

        let r = Reply::Failed {
            reason: "disk full".into(),
        };
        assert_eq!(
            decode_reply(KIND_REPLY, &encode_reply(&r).unwrap()).unwrap(),
            r
        );
        assert!(matches!(
            decode_reply(KIND_OFFER, &[6]),
            Err(FrameError::UnexpectedKind {
                found: KIND_OFFER,
                ..
            })
        ));
        assert!(matches!(
            decode_reply(KIND_REPLY, &[0xee; 3]),
            Err(FrameError::Decode { .. })
        ));
    }

    #[test]
    fn reasons_are_cut_to_the_bound_on_a_character_boundary() {
        assert_eq!(truncate_reason("short".into()), "short");
        let long = "é".repeat(REASON_BYTES_MAX); // 2 bytes each
        let cut = truncate_reason(long);
        assert_eq!(cut.len(), REASON_BYTES_MAX);
        let odd = format!("x{}", "é".repeat(REASON_BYTES_MAX));
        assert_eq!(truncate_reason(odd).len(), REASON_BYTES_MAX - 1);
    }
}
