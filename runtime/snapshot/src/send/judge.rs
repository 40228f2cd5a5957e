//! The leader's judgements, without sockets, disks or clocks: what the follower's answer to an
//! offer means ([`judge_answer`]), and what each acknowledgement during the stream means and
//! whether it follows the rules ([`Acks`]). The driver in [`super`] reads the replies and
//! acts; everything it decides on is here, and tested here (and fuzzed: `transfer_reply`).

use wraft_proto::digest::hex;
use wraft_storage::SnapshotId;
use wraft_transport::NodeId;

use crate::TransferError;
use crate::manifest::Ranges;
use crate::wire::{BusyReason, Reply};

/// The follower's answer to an offer, when it is one the leader acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferAnswer {
    /// Stream the file from `resume_from`.
    Accept {
        /// Bytes the follower already holds durably.
        resume_from: u64,
    },
    /// The follower declined for now (`Busy` or `AlreadyArriving`); offer again later.
    Busy(BusyReason),
    /// The follower has the file already.
    AlreadyHave,
    /// Version 2: send the manifest; bytes `[0, resume_from)` are durable there.
    Manifest {
        /// Bytes the follower already holds durably.
        resume_from: u64,
    },
}

/// Judge the answer to an offer of `file_len` bytes of snapshot `id` to `peer` (pure; `None`:
/// the follower closed the stream). A `Reject`, a resume offset past the end or any other
/// message is an error naming what was expected and found.
pub fn judge_answer(
    reply: Option<Reply>,
    file_len: u64,
    peer: NodeId,
    id: SnapshotId,
) -> Result<OfferAnswer, TransferError> {
    match reply {
        None => Err(TransferError::PeerClosed { peer, offset: 0 }),
        Some(Reply::Accept { resume_from }) if resume_from <= file_len => {
            Ok(OfferAnswer::Accept { resume_from })
        }
        Some(Reply::SendManifest { resume_from }) if resume_from <= file_len => {
            Ok(OfferAnswer::Manifest { resume_from })
        }
        Some(Reply::Busy { in_flight, limit }) => Ok(OfferAnswer::Busy(BusyReason::SlotsFull {
            in_flight,
            limit,
        })),
        Some(Reply::AlreadyArriving {
            from,
            leader_term,
            idle_ms,
        }) => Ok(OfferAnswer::Busy(BusyReason::AlreadyArriving {
            from,
            leader_term,
            idle_ms,
        })),
        Some(Reply::AlreadyHave) => Ok(OfferAnswer::AlreadyHave),
        Some(Reply::Reject { reason }) => Err(TransferError::Rejected { peer, id, reason }),
        Some(other) => Err(TransferError::Protocol {
            peer,
            detail: format!(
                "answer to an offer of {file_len} bytes: expected Accept{{resume_from <= {file_len}}}, SendManifest{{resume_from <= {file_len}}}, Busy, AlreadyArriving, AlreadyHave or Reject, found {other:?}"
            ),
        }),
    }
}

/// What the leader knows of the follower during the stream, and the rules its replies must
/// follow (pure).
#[derive(Debug, Clone)]
pub struct Acks {
    peer: NodeId,
    id: SnapshotId,
    /// A reply was judged already.
    replied: bool,
    /// The first reply repeated `resume_from`: the follower sends heartbeats.
    heartbeats: bool,
    acked: u64,
    resume_from: u64,
    file_len: u64,
    chunk_bytes: u64,
    digest: [u8; 32],
    /// Where chunks start (a Nack must name one).
    ranges: Ranges,
}

/// What one reply during the stream means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStep {
    /// Bytes `[0, offset)` are durable on the follower (never less than before).
    Durable(u64),
    /// The chunk at this offset (a chunk boundary) failed its CRC32C: resend from it.
    Resend(u64),
    /// The follower is verifying the whole file (a heartbeat).
    Verifying,
    /// The follower verified and published the file with the offered digest.
    Received,
}

impl Acks {
    /// The stream of snapshot `id` (`file_len` bytes, `digest`) to `peer`, resumed from
    /// `resume_from`, in chunks of `chunk_bytes` (at least 1).
    pub fn new(
        peer: NodeId,
        id: SnapshotId,
        resume_from: u64,
        file_len: u64,
        chunk_bytes: u64,
        digest: [u8; 32],
    ) -> Self {
        debug_assert!(chunk_bytes > 0 && resume_from <= file_len);
        Acks {
            peer,
            id,
            replied: false,
            heartbeats: false,
            acked: resume_from,
            resume_from,
            file_len,
            chunk_bytes,
            digest,
            ranges: Ranges::from_offset(resume_from, file_len, chunk_bytes),
        }
    }

    /// The stream sends only `ranges` (version 2), so chunks start where they say.
    pub fn with_ranges(mut self, ranges: Ranges) -> Self {
        self.ranges = ranges;
        self
    }

    /// Bytes the follower acknowledged as durable so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The follower's first reply was `Durable{resume_from}`: it sends a reply at least every
    /// `heartbeat_ms`, so silence means it is gone (see [`crate::wire`]). A follower from
    /// before heartbeats never repeats an offset.
    pub fn sends_heartbeats(&self) -> bool {
        self.heartbeats
    }

    /// Judge one reply (`None`: the follower closed the stream). An error ends the transfer:
    /// the follower failed, closed, sent back another digest, or broke the protocol (a durable
    /// offset going back or past the end, a Nack off a chunk boundary, any other message).
    pub fn on_reply(&mut self, reply: Option<Reply>) -> Result<AckStep, TransferError> {
        let first = !std::mem::replace(&mut self.replied, true);
        if first
            && reply
                == Some(Reply::Durable {
                    offset: self.resume_from,
                })
        {
            self.heartbeats = true;
        }
        let (peer, id) = (self.peer, self.id);
        let (acked, file_len, chunk_bytes, resume_from) = (
            self.acked,
            self.file_len,
            self.chunk_bytes,
            self.resume_from,
        );
        match reply {
            None => Err(TransferError::PeerClosed {
                peer,
                offset: acked,
            }),
            Some(Reply::Durable { offset }) if offset >= acked && offset <= file_len => {
                self.acked = offset;
                Ok(AckStep::Durable(offset))
            }
            Some(Reply::Nack { offset }) if self.ranges.is_chunk_start(offset) => {
                Ok(AckStep::Resend(offset))
            }
            Some(Reply::Verifying) => Ok(AckStep::Verifying),
            Some(Reply::Received { digest }) if digest == self.digest => Ok(AckStep::Received),
            Some(Reply::Received { digest }) => Err(TransferError::DigestMismatch {
                peer,
                id,
                expected: hex(&self.digest),
                found: hex(&digest),
            }),
            Some(Reply::Failed { reason }) => Err(TransferError::PeerFailed { peer, id, reason }),
            Some(other) => Err(TransferError::Protocol {
                peer,
                detail: format!(
                    "during the transfer (acked {acked} of {file_len} bytes, chunk_bytes {chunk_bytes}, resumed from {resume_from}): expected Durable{{offset in {acked}..={file_len}}}, Nack at a chunk boundary, Verifying, Received or Failed, found {other:?}"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: SnapshotId = SnapshotId {
        last_index: 9,
        last_term: 2,
    };

    fn acks() -> Acks {
        // Resumed at 100 of 1000 bytes, chunks of 300: boundaries 100, 400, 700.
        Acks::new(3, ID, 100, 1000, 300, [1; 32])
    }

    #[test]
    fn an_accept_within_the_file_a_busy_or_already_have_answer_is_acted_on() {
        let j = |r| judge_answer(Some(r), 1000, 3, ID);
        assert_eq!(
            j(Reply::Accept { resume_from: 1000 }).unwrap(),
            OfferAnswer::Accept { resume_from: 1000 }
        );
        assert_eq!(
            j(Reply::Busy {
                in_flight: 2,
                limit: 2
            })
            .unwrap(),
            OfferAnswer::Busy(BusyReason::SlotsFull {
                in_flight: 2,
                limit: 2
            })
        );
        assert_eq!(
            j(Reply::AlreadyArriving {
                from: 3,
                leader_term: 7,
                idle_ms: 20
            })
            .unwrap(),
            OfferAnswer::Busy(BusyReason::AlreadyArriving {
                from: 3,
                leader_term: 7,
                idle_ms: 20
            })
        );
        assert_eq!(j(Reply::AlreadyHave).unwrap(), OfferAnswer::AlreadyHave);
    }

    #[test]
    fn a_reject_a_resume_past_the_end_or_a_closed_stream_ends_the_offer() {
        let j = |r| judge_answer(r, 1000, 3, ID).unwrap_err();
        assert!(matches!(
            j(Some(Reply::Reject { reason: "no".into() })),
            TransferError::Rejected { peer: 3, reason, .. } if reason == "no"
        ));
        let e = j(Some(Reply::Accept { resume_from: 1001 }));
        assert!(
            e.to_string()
                .contains("expected Accept{resume_from <= 1000}, SendManifest{resume_from <= 1000}, Busy, AlreadyArriving, AlreadyHave or Reject, found Accept { resume_from: 1001 }"),
            "{e}"
        );
        assert!(matches!(
            j(Some(Reply::Verifying)),
            TransferError::Protocol { .. }
        ));
        assert!(matches!(
            j(None),
            TransferError::PeerClosed { offset: 0, .. }
        ));
    }

    #[test]
    fn durable_offsets_only_grow_and_stay_within_the_file() {
        let mut a = acks();
        assert_eq!(
            a.on_reply(Some(Reply::Durable { offset: 100 })).unwrap(),
            AckStep::Durable(100)
        );
        assert_eq!(
            a.on_reply(Some(Reply::Durable { offset: 700 })).unwrap(),
            AckStep::Durable(700)
        );
        assert_eq!(a.acked(), 700);
        let e = a
            .on_reply(Some(Reply::Durable { offset: 400 }))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("expected Durable{offset in 700..=1000}"),
            "{e}"
        );
        let mut a = acks();
        assert!(a.on_reply(Some(Reply::Durable { offset: 1001 })).is_err());
    }

    #[test]
    fn a_follower_that_repeats_its_resume_offset_first_sends_heartbeats() {
        let mut a = acks();
        assert!(!a.sends_heartbeats());
        assert_eq!(
            a.on_reply(Some(Reply::Durable { offset: 100 })).unwrap(),
            AckStep::Durable(100)
        );
        assert!(a.sends_heartbeats());
        // Heartbeats repeat the last durable offset; they are no step back.
        a.on_reply(Some(Reply::Durable { offset: 400 })).unwrap();
        assert_eq!(
            a.on_reply(Some(Reply::Durable { offset: 400 })).unwrap(),
            AckStep::Durable(400)
        );
        // A follower from before heartbeats only acknowledges progress.
        let mut old = acks();
        old.on_reply(Some(Reply::Durable { offset: 400 })).unwrap();
        old.on_reply(Some(Reply::Durable { offset: 400 })).unwrap();
        assert!(!old.sends_heartbeats(), "only the first reply counts");
        let mut verifying_first = acks();
        verifying_first.on_reply(Some(Reply::Verifying)).unwrap();
        assert!(!verifying_first.sends_heartbeats());
    }

    #[test]
    fn a_nack_is_honoured_only_at_a_chunk_boundary_of_this_stream() {
        let mut a = acks();
        assert_eq!(
            a.on_reply(Some(Reply::Nack { offset: 400 })).unwrap(),
            AckStep::Resend(400)
        );
        assert_eq!(
            a.on_reply(Some(Reply::Nack { offset: 100 })).unwrap(),
            AckStep::Resend(100)
        );
        for bad in [0, 99, 401, 1000] {
            assert!(
                acks().on_reply(Some(Reply::Nack { offset: bad })).is_err(),
                "nack at {bad}"
            );
        }
    }

    #[test]
    fn the_stream_ends_on_received_with_the_offered_digest_and_fails_otherwise() {
        let mut a = acks();
        assert_eq!(
            a.on_reply(Some(Reply::Verifying)).unwrap(),
            AckStep::Verifying
        );
        assert_eq!(
            a.on_reply(Some(Reply::Received { digest: [1; 32] }))
                .unwrap(),
            AckStep::Received
        );
        let e = acks()
            .on_reply(Some(Reply::Received { digest: [2; 32] }))
            .unwrap_err();
        assert!(matches!(e, TransferError::DigestMismatch { .. }), "{e}");
        let e = acks()
            .on_reply(Some(Reply::Failed {
                reason: "disk full".into(),
            }))
            .unwrap_err();
        assert!(
            e.to_string().contains("failed to receive it: disk full"),
            "{e}"
        );
        let mut a = acks();
        a.on_reply(Some(Reply::Durable { offset: 400 })).unwrap();
        assert!(matches!(
            a.on_reply(None).unwrap_err(),
            TransferError::PeerClosed { offset: 400, .. }
        ));
        assert!(matches!(
            acks().on_reply(Some(Reply::AlreadyHave)).unwrap_err(),
            TransferError::Protocol { .. }
        ));
    }
}
