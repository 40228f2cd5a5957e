//! The receiver against a peer that writes malformed, truncated or foreign bytes on a raw bulk
//! stream: each is a clear error (and a reply where the protocol allows one), never a panic.

use super::*;

/// Open a raw bulk stream, write `bytes`, finish, and run the receiver on it.
async fn receive_raw(
    n: &mut Net,
    follower: &SnapshotStore,
    bytes: &[u8],
) -> (TransferError, Option<Reply>) {
    let mut out = n.t1.open_bulk(FOLLOWER).await.unwrap();
    out.send.write_all(bytes).await.unwrap();
    out.send.finish().unwrap();
    let inb = n.bulk2.recv().await.unwrap();
    let slots = IncomingSlots::new(2);
    let err = spawn_receive(inb, follower, cfg(FOLLOWER), &slots, None)
        .await
        .unwrap()
        .unwrap_err();
    let reply = read_reply(&mut out.recv).await.ok().flatten();
    wait_until("the failed transfer closed its spool file", || {
        slots.in_flight() == 0
    })
    .await;
    (err, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_truncated_frames_are_clear_errors_not_panics() {
    let mut n = net();
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let offer = Offer {
        magic: OFFER_MAGIC,
        version: TRANSFER_PROTOCOL_VERSION_FULL,
        id: ID,
        digest: [1; 32],
        file_len: 1 << 20,
        chunk_bytes: 64 << 10,
        leader_term: 4,
    };
    let good = frame::encode_frame(
        KIND_OFFER,
        &frame::encode_payload(&offer).unwrap(),
        CONTROL_FRAME_BYTES_MAX,
    )
    .unwrap();

    // Not a frame at all.
    let (err, _) = receive_raw(&mut n, &follower, b"GET / HTTP/1.1\r\n").await;
    assert!(
        matches!(
            &err,
            TransferError::Frame {
                source: FrameError::BadMagic { .. },
                ..
            }
        ),
        "{err}"
    );
    // A truncated offer.
    let (err, _) = receive_raw(&mut n, &follower, &good[..good.len() - 5]).await;
    assert!(
        matches!(
            &err,
            TransferError::Frame {
                source: FrameError::Truncated { needed: 5 },
                ..
            }
        ),
        "{err}"
    );
    // A well-framed payload that is not an offer.
    let junk = frame::encode_frame(KIND_OFFER, &[0xff; 7], CONTROL_FRAME_BYTES_MAX).unwrap();
    let (err, reply) = receive_raw(&mut n, &follower, &junk).await;
    assert!(
        matches!(&err, TransferError::Protocol { detail, .. } if detail.contains("does not decode")),
        "{err}"
    );
    assert!(matches!(reply, Some(Reply::Reject { .. })), "{reply:?}");
    // A future protocol version is rejected with a reason naming both versions.
    let v2 = Offer {
        version: 3,
        ..offer.clone()
    };
    let v2 = frame::encode_frame(
        KIND_OFFER,
        &frame::encode_payload(&v2).unwrap(),
        CONTROL_FRAME_BYTES_MAX,
    )
    .unwrap();
    let (err, reply) = receive_raw(&mut n, &follower, &v2).await;
    assert!(matches!(&err, TransferError::Protocol { .. }), "{err}");
    assert!(
        matches!(&reply, Some(Reply::Reject { reason }) if reason.contains("version 1..=2") && reason.contains("version 3")),
        "{reply:?}"
    );
    // A good offer followed by a chunk whose header is damaged.
    let data = vec![5u8; 1000];
    let mut hdr = encode_chunk_header(0, &data);
    hdr[6] ^= 0x10;
    let mut bytes = good.clone();
    bytes.extend_from_slice(&hdr);
    bytes.extend_from_slice(&data);
    let (err, _) = receive_raw(&mut n, &follower, &bytes).await;
    assert!(
        matches!(&err, TransferError::Protocol { detail, .. } if detail.contains("chunk header checksum")),
        "{err}"
    );
    // A good offer, then the stream ends mid-chunk.
    let mut bytes = good.clone();
    bytes.extend_from_slice(&encode_chunk_header(0, &data));
    bytes.extend_from_slice(&data[..10]);
    let (err, _) = receive_raw(&mut n, &follower, &bytes).await;
    assert!(
        matches!(&err, TransferError::PeerClosed { offset: 0, .. }),
        "{err}"
    );
    // A chunk that skips ahead.
    let mut bytes = good.clone();
    bytes.extend_from_slice(&encode_chunk_header(4096, &data));
    bytes.extend_from_slice(&data);
    let (err, _) = receive_raw(&mut n, &follower, &bytes).await;
    assert!(
        matches!(&err, TransferError::Protocol { detail, .. } if detail.contains("expected 0")),
        "{err}"
    );
    assert!(follower.latest().is_none());

    // The sender facing a follower that answers garbage.
    let leader = leader_with(10, 1 << 20);
    let out = n.open().await;
    let (send, _) = spawn_send(
        out,
        &leader.store,
        ID,
        cfg(LEADER),
        BandwidthLimiter::new(None),
    );
    let mut inb = n.accept().await;
    let _ = frame::read_frame(&mut inb.recv, CONTROL_FRAME_BYTES_MAX)
        .await
        .unwrap();
    inb.send
        .write_all(&frame::encode_frame(KIND_REPLY, &[0xee; 3], CONTROL_FRAME_BYTES_MAX).unwrap())
        .await
        .unwrap();
    inb.send.finish().unwrap();
    let err = send.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            TransferError::Frame {
                source: FrameError::Decode { .. },
                ..
            }
        ),
        "{err}"
    );
    n.shutdown().await;
}
