//! Targets `transfer_offer`, `transfer_reply` and `transfer_chunk`: the decoders of the
//! snapshot transfer protocol (`wraft_snapshot::wire`) and the decisions each side takes on
//! what they decode (`wraft_snapshot::receive::decide`, `wraft_snapshot::send`), all without
//! sockets. A follower reads offers and chunks from the leader; a leader reads replies from
//! the follower.

use wraft_snapshot::manifest::{
    Fill, LocalSegments, ManifestIntake, Ranges, SEGMENT_BYTES_MAX, Segment, fetch_ranges, plan,
};
use wraft_snapshot::receive::decide::{
    ChunkStream, ChunkVerdict, OfferDecision, check_offer, partial_restart_reason,
};
use wraft_snapshot::send::{AckStep, Acks, OfferAnswer, judge_answer};
use wraft_snapshot::wire::{
    self, CHUNK_HEADER_BYTES, KIND_MANIFEST, KIND_OFFER, KIND_REPLY, MIN_SNAPSHOT_FILE_BYTES,
    REASON_BYTES_MAX, Reply,
};
use wraft_storage::SnapshotId;

/// The follower's `chunk_bytes_max` in [`transfer_offer`] (the default).
pub const TRANSFER_CHUNK_BYTES_MAX: u32 = 16 << 20;
/// The file the fuzzed chunk stream of [`transfer_chunk`] carries, bytes.
pub const TRANSFER_FILE_BYTES: u64 = 64 << 10;
/// Largest chunk the fuzzed chunk stream accepts (the offer's `chunk_bytes`), bytes.
pub const TRANSFER_CHUNK_BYTES: u32 = 4096;
/// The id and digest of the fuzzed transfers.
pub const TRANSFER_ID: SnapshotId = SnapshotId {
    last_index: 100,
    last_term: 3,
};
/// Digest of the file in [`transfer_reply`]'s transfer.
pub const TRANSFER_DIGEST: [u8; 32] = [0xd1; 32];

/// Target `transfer_offer`: the follower's decoder of the first frame of a bulk stream,
/// [`wire::decode_offer`], then its rules for an offer ([`check_offer`],
/// [`partial_restart_reason`]). Input: `[frame kind][payload…]`.
///
/// Oracle: a decoded offer re-encodes to a payload that decodes to the same offer (and the
/// same bytes again); an accepted offer has a chunk size within the limit and a file at least a
/// snapshot header long; a partial is resumed only for the offer's digest and within the file;
/// every reason sent back fits in [`REASON_BYTES_MAX`].
pub fn transfer_offer(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let offer = match wire::decode_offer(kind, payload) {
        Ok(o) => o,
        Err(reason) => {
            assert!(kind != KIND_OFFER || reason.contains("does not decode"));
            return check_reason(reason);
        }
    };
    assert_eq!(kind, KIND_OFFER);
    let enc = wire::encode_offer(&offer).expect("a decoded offer re-encodes");
    let again = wire::decode_offer(KIND_OFFER, &enc).expect("a re-encoded offer decodes");
    assert_eq!(again, offer, "offer changed in a round trip");
    assert_eq!(
        wire::encode_offer(&again).expect("re-encodes"),
        enc,
        "unstable encoding"
    );

    match check_offer(&offer, TRANSFER_CHUNK_BYTES_MAX) {
        Err(reason) => return check_reason(reason),
        Ok(()) => {
            assert!((1..=TRANSFER_CHUNK_BYTES_MAX).contains(&offer.chunk_bytes));
            assert!(offer.file_len >= MIN_SNAPSHOT_FILE_BYTES);
        }
    }
    let durables = [
        1,
        offer.file_len / 2,
        offer.file_len,
        offer.file_len.saturating_add(1),
    ];
    for durable in durables {
        for digest in [Some(offer.digest), Some([!offer.digest[0]; 32]), None] {
            let reason = partial_restart_reason(durable, &offer, || {
                Ok::<_, std::convert::Infallible>(digest)
            })
            .unwrap_or_else(|e| match e {});
            let resumable = durable <= offer.file_len && digest == Some(offer.digest);
            assert_eq!(
                reason.is_none(),
                resumable,
                "durable {durable}, digest {digest:?}"
            );
        }
    }
}

fn check_reason(reason: String) {
    match (OfferDecision::Reject { reason }).reply() {
        Reply::Reject { reason } => assert!(reason.len() <= REASON_BYTES_MAX),
        other => panic!("a rejection travels as {other:?}"),
    }
}

/// Target `transfer_reply`: the leader's decoder of follower replies, [`wire::decode_reply`],
/// then its judgement of them: the first reply answers the offer ([`judge_answer`]), the rest
/// are acknowledgements during the stream ([`Acks::on_reply`]). Input: a sequence of
/// `[frame kind][payload length u8][payload…]`; the file is [`TRANSFER_FILE_BYTES`] long in
/// chunks of [`TRANSFER_CHUNK_BYTES`].
///
/// Oracle: every decoded reply round-trips; the acknowledged offset never goes back nor past
/// the end; a resend is asked only at a chunk boundary at or after the resume offset; the
/// stream ends at the first error or at `Received` with the offered digest.
pub fn transfer_reply(data: &[u8]) {
    let file_len = TRANSFER_FILE_BYTES;
    let chunk = u64::from(TRANSFER_CHUNK_BYTES);
    let mut rest = data;
    let mut acks: Option<Acks> = None;
    let mut resume_from = 0;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        rest = tail;
        let reply = match wire::decode_reply(*kind, payload) {
            Ok(r) => r,
            Err(_) => return,
        };
        assert_eq!(*kind, KIND_REPLY);
        let enc = wire::encode_reply(&reply).expect("a decoded reply re-encodes");
        let again = wire::decode_reply(KIND_REPLY, &enc).expect("a re-encoded reply decodes");
        assert_eq!(again, reply, "reply changed in a round trip");
        assert_eq!(wire::encode_reply(&again).expect("re-encodes"), enc);

        let Some(a) = acks.as_mut() else {
            match judge_answer(Some(reply), file_len, 2, TRANSFER_ID) {
                Ok(OfferAnswer::Accept { resume_from: r }) => {
                    assert!(r <= file_len);
                    resume_from = r;
                    acks = Some(Acks::new(
                        2,
                        TRANSFER_ID,
                        r,
                        file_len,
                        chunk,
                        TRANSFER_DIGEST,
                    ));
                    continue;
                }
                Ok(_) | Err(_) => return,
            }
        };
        let before = a.acked();
        match a.on_reply(Some(reply)) {
            Ok(AckStep::Durable(o)) => {
                assert!(o >= before && o <= file_len && a.acked() == o);
            }
            Ok(AckStep::Resend(o)) => {
                assert!(o >= resume_from && o < file_len);
                assert_eq!((o - resume_from) % chunk, 0, "resend off a chunk boundary");
                assert_eq!(a.acked(), before);
            }
            Ok(AckStep::Verifying) => assert_eq!(a.acked(), before),
            Ok(AckStep::Received) | Err(_) => return,
        }
    }
}

/// Target `transfer_chunk`: the follower's chunk reader without a socket — each
/// [`CHUNK_HEADER_BYTES`]-byte header through [`ChunkStream::on_header`] (the decoder
/// [`wire::decode_chunk_header`] and the bounds checked before the data is allocated), then
/// its data through [`ChunkStream::on_data`]. The file is [`TRANSFER_FILE_BYTES`] long, chunks
/// at most [`TRANSFER_CHUNK_BYTES`].
///
/// Input: `[mode][retries_max][resume chunk][header][data…][header][data…]…`, each chunk's data
/// as long as its header says (the stream ends where the input does). Checksums are a wall for
/// mutation: mode bit 0 recomputes each header's own CRC, bit 1 each chunk's data CRC.
///
/// Oracle: a decoded header re-encodes to its bytes (but for the reserved flags byte and the
/// CRC that covers it); an accepted header is within bounds; a chunk is written only at the
/// expected offset, which then advances by exactly its length and never passes the end; a
/// chunk is Nacked only at the expected offset, at most `retries_max` times in a row; a stale
/// chunk is one past the expected offset.
pub fn transfer_chunk(data: &[u8]) {
    let [mode, retries_max, resume, rest @ ..] = data else {
        return;
    };
    let file_len = TRANSFER_FILE_BYTES;
    let limit = TRANSFER_CHUNK_BYTES;
    let resume_from = (u64::from(*resume) * u64::from(limit)).min(file_len);
    let retries_max = u32::from(*retries_max % 16);
    let mut s = ChunkStream::new(resume_from, file_len, limit, retries_max);
    let mut rest = rest;
    let mut nacks_in_a_row = 0u32;
    while !s.is_complete() {
        let Some((hdr, tail)) = rest.split_first_chunk::<CHUNK_HEADER_BYTES>() else {
            return;
        };
        let mut hdr = *hdr;
        let declared = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]) as usize;
        let (body, tail) = tail.split_at(declared.min(tail.len()));
        rest = tail;
        if mode & 2 != 0 {
            hdr[16..20].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
        }
        if mode & 1 != 0 {
            let c = crc32c::crc32c(&hdr[..20]);
            hdr[20..24].copy_from_slice(&c.to_le_bytes());
        }
        let Ok(h) = s.on_header(&hdr) else {
            return;
        };
        let enc = h.encode();
        assert_eq!(enc[..3], hdr[..3]);
        assert_eq!(enc[4..20], hdr[4..20]);
        if hdr[3] == 0 {
            assert_eq!(enc, hdr, "a decoded header re-encodes to other bytes");
        }
        assert_eq!(wire::decode_chunk_header(&enc), Ok(h));
        assert!(h.len >= 1 && h.len <= limit);
        assert!(h.offset + u64::from(h.len) <= file_len);
        if body.len() < h.len as usize {
            return; // the peer closed the stream mid-chunk
        }
        let before = s.expected();
        match s.on_data(&h, body) {
            ChunkVerdict::Write => {
                assert_eq!(h.offset, before);
                assert_eq!(s.expected(), before + u64::from(h.len));
                assert!(s.expected() <= file_len);
                nacks_in_a_row = 0;
            }
            ChunkVerdict::Stale => {
                assert!(h.offset > before && s.expected() == before);
            }
            ChunkVerdict::Nack {
                offset, retries, ..
            } => {
                nacks_in_a_row += 1;
                assert_eq!((offset, s.expected()), (before, before));
                assert_eq!(retries, nacks_in_a_row);
                assert!(retries <= retries_max);
            }
            ChunkVerdict::RetriesExhausted { failures, .. } => {
                assert_eq!(failures, retries_max + 1);
                return;
            }
            ChunkVerdict::Protocol(_) => return,
        }
    }
}

/// The file of [`transfer_manifest`]'s transfer, bytes.
pub const MANIFEST_FILE_BYTES: u64 = 256 << 10;

/// Target `transfer_manifest`: the version 2 exchange without sockets. The follower reads
/// manifest parts ([`wire::decode_manifest_part`], [`ManifestIntake::on_part`]), plans the
/// file against segments it holds ([`plan`]) and asks for ranges; the leader checks the ranges
/// asked for ([`Ranges::checked`]) and walks them in chunks. Input: `[resume][held…]` then a
/// sequence of `[frame kind][payload length u16 LE][payload…]`; the file is
/// [`MANIFEST_FILE_BYTES`] long, resumed at `resume * 1 KiB`; every segment whose first hash
/// byte is in `held` is held locally.
///
/// Oracle: every decoded part round-trips; a complete manifest covers the file exactly, each
/// segment 1..=1 MiB; the plan covers `[resume, end)` exactly in order, copying only held
/// segments; the leader accepts the follower's ranges, and its chunks cover them exactly, each
/// starting where a Nack may name it; the follower's chunk stream accepts those chunks.
pub fn transfer_manifest(data: &[u8]) {
    let [resume, n_held, rest @ ..] = data else {
        return;
    };
    let (held, mut rest) = rest.split_at(usize::from(*n_held % 8).min(rest.len()));
    let file_len = MANIFEST_FILE_BYTES;
    let resume_from = (u64::from(*resume) << 10).min(file_len);
    let mut intake = ManifestIntake::new(file_len);
    let segments = loop {
        let [kind, l0, l1, tail @ ..] = rest else {
            return;
        };
        let n = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        rest = tail;
        let Ok(part) = wire::decode_manifest_part(*kind, payload) else {
            return;
        };
        assert_eq!(*kind, KIND_MANIFEST);
        let enc = wraft_transport::frame::encode_payload(&part).expect("a part re-encodes");
        let again = wire::decode_manifest_part(KIND_MANIFEST, &enc).expect("decodes again");
        assert_eq!(again, part, "manifest part changed in a round trip");
        match intake.on_part(part) {
            Ok(true) => break intake.into_segments(),
            Ok(false) => {}
            Err(_) => return,
        }
    };
    let mut at = 0;
    for s in &segments {
        assert_eq!(s.offset, at, "segments are contiguous");
        assert!(s.len >= 1 && u64::from(s.len) <= SEGMENT_BYTES_MAX);
        at = s.end();
    }
    assert_eq!(at, file_len, "a complete manifest covers the file");

    let mut local = LocalSegments::default();
    let held_segments: Vec<Segment> = segments
        .iter()
        .filter(|s| held.contains(&s.hash[0]))
        .copied()
        .collect();
    local.add(0, &held_segments);
    let fills = plan(&segments, resume_from, &local);
    let mut at = resume_from;
    for f in &fills {
        assert_eq!(f.at(), at, "fills are contiguous from the resume offset");
        if let Fill::Copy { from, .. } = *f {
            let s = segments
                .iter()
                .find(|s| s.offset == f.at())
                .expect("a segment");
            assert!(held.contains(&s.hash[0]));
            assert!(
                held_segments
                    .iter()
                    .any(|h| h.offset == from && h.hash == s.hash)
            );
        }
        at = f.end();
    }
    assert_eq!(
        at,
        if fills.is_empty() {
            resume_from
        } else {
            file_len
        }
    );

    let chunk = u64::from(TRANSFER_CHUNK_BYTES);
    let asked = fetch_ranges(&fills);
    let ranges = Ranges::checked(asked.clone(), resume_from, file_len, chunk, usize::MAX)
        .expect("the leader accepts what a follower plans");
    let mut stream = ChunkStream::with_ranges(asked, file_len, TRANSFER_CHUNK_BYTES, 0);
    let mut off = 0;
    let mut sent = 0;
    while let Some((o, l)) = ranges.chunk_at(off) {
        assert!(ranges.is_chunk_start(o));
        let data = vec![0u8; l as usize];
        let hdr = wire::encode_chunk_header(o, &data);
        let h = stream
            .on_header(&hdr)
            .expect("a planned chunk's header is in bounds");
        assert_eq!(stream.on_data(&h, &data), ChunkVerdict::Write);
        sent += l;
        off = o + l;
    }
    assert_eq!(sent, ranges.bytes());
    assert!(stream.is_complete());
}
