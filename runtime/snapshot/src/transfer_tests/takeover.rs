//! An incoming stream left behind by a leader that went silent (killed, partitioned): another
//! offer of the same snapshot takes it over at once when it comes from a newer leader term,
//! and once the stream has been idle for `takeover_idle_ms` when it comes from a rival of the
//! same term. Until then the rival is declined with the real reason, not "busy".

use super::*;

/// Play a leader on a raw stream `out`: offer `leader`'s snapshot in `term`, in chunks of
/// `chunk_bytes`. Node 2 sees the stream once the offer is written.
async fn raw_offer(out: &mut BulkStream, leader: &Leader, term: u64, chunk_bytes: u32) {
    let offer = Offer {
        magic: OFFER_MAGIC,
        version: TRANSFER_PROTOCOL_VERSION_FULL,
        id: ID,
        digest: leader.info.digest,
        file_len: leader.info.file_len,
        chunk_bytes,
        leader_term: term,
    };
    frame::write_msg(&mut out.send, KIND_OFFER, &offer, CONTROL_FRAME_BYTES_MAX)
        .await
        .unwrap();
}

/// Then check the answer is `Accept{0}` and send the first `chunks` chunks. The stream stays
/// open: the leader then "dies" by saying nothing more.
async fn raw_send_prefix(out: &mut BulkStream, leader: &Leader, chunk_bytes: u32, chunks: u64) {
    assert_eq!(
        read_reply(&mut out.recv).await.unwrap(),
        Some(Reply::Accept { resume_from: 0 })
    );
    let bytes = file_bytes(&leader.info.path);
    for (i, c) in bytes.chunks(chunk_bytes as usize).enumerate() {
        if i as u64 == chunks {
            break;
        }
        let offset = i as u64 * u64::from(chunk_bytes);
        out.send
            .write_all(&encode_chunk_header(offset, c))
            .await
            .unwrap();
        out.send.write_all(c).await.unwrap();
    }
}

/// The follower's first durable acknowledgement at or past `at_least`.
async fn durable_at_least(rx: &mut mpsc::UnboundedReceiver<u64>, at_least: u64) -> u64 {
    loop {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a durable ack in time")
            .expect("the receiver is alive");
        if d >= at_least {
            return d;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_leaders_offer_takes_over_the_stream_its_predecessor_left_silent() {
    let mut n = net3();
    let leader = leader_with(31, 4 << 20);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(2);

    // Node 3, leader of term 4, sends 1.5 MiB (the follower syncs every 1 MiB), then dies.
    let mut old = n.open_from_other_leader().await;
    raw_offer(&mut old, &leader, 4, 256 << 10).await;
    let (tx, mut durable_rx) = mpsc::unbounded_channel();
    let inb = n.accept().await;
    let recv_old = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, Some(tx));
    raw_send_prefix(&mut old, &leader, 256 << 10, 6).await;
    let durable = durable_at_least(&mut durable_rx, 1 << 20).await;

    // Node 1 wins the election of term 7 and offers the same snapshot at once.
    let out = n.open().await;
    let (send, _) = spawn_send(
        out,
        &leader.store,
        ID,
        cfg(LEADER),
        BandwidthLimiter::new(None),
    );
    let inb = n.accept().await;
    let recv_new = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, None);
    let report = send.await.unwrap().unwrap();
    assert_eq!(
        report.outcome,
        SendOutcome::Completed,
        "the offer of term 7 must take over the silent stream of term 4, not wait for it to time out"
    );
    assert!(
        report.resumed_from >= durable,
        "the durable prefix the old stream left ({durable} bytes) is resumed, found {}",
        report.resumed_from
    );
    let got = recv_new.await.unwrap().unwrap();
    assert_eq!(file_bytes(&got.info.path), file_bytes(&leader.info.path));

    let err = recv_old.await.unwrap().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("taken over by an offer from node 1 (leader term 7)"),
        "{msg}"
    );
    wait_until("both slots are free", || slots.in_flight() == 0).await;
    drop(old);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rival_of_the_same_term_is_told_why_and_takes_over_once_the_stream_is_idle() {
    let mut n = net3();
    let leader = leader_with(32, 4 << 20);
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(2);

    // Node 3 sends 1.5 MiB in term 7, then says nothing more (its stream stays open).
    let mut old = n.open_from_other_leader().await;
    raw_offer(&mut old, &leader, 7, 256 << 10).await;
    let (tx, mut durable_rx) = mpsc::unbounded_channel();
    let inb = n.accept().await;
    let recv_old = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, Some(tx));
    raw_send_prefix(&mut old, &leader, 256 << 10, 6).await;
    // All of it durable (the last 0.5 MiB by the 100 ms sync): from here the stream is idle.
    durable_at_least(&mut durable_rx, 6 * (256 << 10)).await;

    // Node 1 offers the same snapshot in the same term while that stream is fresh: declined,
    // and the follower says why (not "busy" with a slot count that contradicts itself).
    let out = n.open().await;
    let (send, _) = spawn_send(
        out,
        &leader.store,
        ID,
        cfg(LEADER),
        BandwidthLimiter::new(None),
    );
    let inb = n.accept().await;
    let recv = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, None);
    let report = send.await.unwrap().unwrap();
    assert!(matches!(report.outcome, SendOutcome::Busy(_)), "{report:?}");
    let declined = recv.await.unwrap().unwrap_err().to_string();
    for want in [
        "is already arriving from node 3 (leader term 7) on another stream",
        "last progress",
        " ms ago",
    ] {
        assert!(declined.contains(want), "{want:?} not in: {declined}");
    }
    assert!(!declined.contains("max_incoming_transfers"), "{declined}");
    let leader_saw = format!("{:?}", report.outcome);
    assert!(leader_saw.contains("AlreadyArriving"), "{leader_saw}");

    // Once the stream has made no progress for takeover_idle_ms, the rival takes it over.
    tokio::time::sleep(Duration::from_millis(
        TransferConfig::default().takeover_idle_ms + 100,
    ))
    .await;
    let none = BandwidthLimiter::new(None);
    let (report, got) = transfer_between(
        &mut n,
        &leader.store,
        ID,
        cfg(LEADER),
        none,
        &follower,
        cfg(FOLLOWER),
        &slots,
    )
    .await;
    let (report, got) = (report.unwrap(), got.unwrap());
    assert_eq!(report.outcome, SendOutcome::Completed);
    assert!(report.resumed_from >= 1 << 20, "{report:?}");
    assert_eq!(file_bytes(&got.info.path), file_bytes(&leader.info.path));
    let err = recv_old.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("taken over by an offer from node 1 (leader term 7)"),
        "{err}"
    );
    drop(old);
    n.shutdown().await;
}
