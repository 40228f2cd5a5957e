//! Version 2 transfers: a follower that holds an earlier snapshot receives only the segments it
//! lacks, assembles the rest from its own files, and ends with the leader's exact bytes.

use super::*;
use crate::format::FrameKind;
use crate::manifest::{SegmentCache, segments_of};

const OLD: SnapshotId = SnapshotId {
    last_index: 900,
    last_term: 3,
};
const FRAME_PAYLOAD: usize = 16 << 10;

/// A body of guest-chunk frames, frame `i` holding the bytes of `seeds[i]`.
fn framed(seeds: &[u64]) -> Vec<u8> {
    let mut b = Vec::new();
    for &seed in seeds {
        let p = body(seed, FRAME_PAYLOAD);
        b.push(FrameKind::MachineChunk as u8);
        b.extend_from_slice(&(p.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
        b.extend_from_slice(&p);
    }
    b
}

fn seeds(n: u64) -> Vec<u64> {
    (0..n).collect()
}

/// Bytes of the segment holding the storage header and metadata of `info`'s file.
fn header_segment_bytes(info: &SnapshotInfo) -> u64 {
    let f = wraft_storage::open_snapshot_file(&info.path).unwrap();
    let mut read_at = |at: u64, buf: &mut [u8]| wraft_storage::read_exact_at(f.as_ref(), buf, at);
    u64::from(segments_of(info.file_len, &mut read_at).unwrap()[0].len)
}

struct Pair {
    leader: Leader,
    _fdir: tempfile::TempDir,
    follower: SnapshotStore,
}

/// A leader holding `new` as snapshot [`ID`], a follower holding `old` as [`OLD`].
fn pair(old: &[u64], new: &[u64]) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(Arc::new(StdFs), dir.path());
    let info = make_snapshot(&store, ID, &framed(new));
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    make_snapshot(&follower, OLD, &framed(old));
    Pair {
        leader: Leader {
            _dir: dir,
            store,
            info,
        },
        _fdir: fdir,
        follower,
    }
}

async fn transfer(n: &mut Net, p: &Pair, lcfg: TransferConfig) -> (SendReport, Received) {
    let slots = IncomingSlots::new(2);
    let none = BandwidthLimiter::new(None);
    let (report, got) = transfer_between(
        n,
        &p.leader.store,
        ID,
        lcfg,
        none,
        &p.follower,
        cfg(FOLLOWER),
        &slots,
    )
    .await;
    let (report, got) = (report.unwrap(), got.unwrap());
    assert_eq!(report.outcome, SendOutcome::Completed);
    assert_eq!(got.info.digest, p.leader.info.digest);
    assert_eq!(
        file_bytes(&got.info.path),
        file_bytes(&p.leader.info.path),
        "assembled file differs from the leader's"
    );
    (report, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holding_the_previous_snapshot_receives_only_the_changed_frames() {
    let mut n = net();
    let old = seeds(200);
    // Frames 50 and 120 change, one frame is inserted before 80 (every later byte moves).
    let mut new = old.clone();
    new[50] = 10_050;
    new[120] = 10_120;
    new.insert(80, 10_080);
    let p = pair(&old, &new);
    let (report, got) = transfer(&mut n, &p, cfg(LEADER)).await;

    let file_len = p.leader.info.file_len;
    let frame = (9 + FRAME_PAYLOAD) as u64;
    // The header segment (new index, new digest) and the three new frames; nothing else.
    let expected = header_segment_bytes(&p.leader.info) + 3 * frame;
    assert_eq!(report.bytes_sent, expected, "bytes sent of {file_len}");
    assert_eq!(got.bytes_received, expected);
    assert_eq!(report.bytes_reused, file_len - expected);
    assert_eq!(got.bytes_reused, file_len - expected);
    assert_eq!(report.chunks_resent, 0);
    assert!(expected * 40 < file_len, "{expected} of {file_len}");
    n.shutdown().await;
}

/// Write snapshot [`ID`] of `frames` into `store` sharing every frame an older snapshot there
/// holds, as a node does.
fn make_sharing_snapshot(store: &SnapshotStore, frames: &[u64]) -> SnapshotInfo {
    let shared = crate::manifest::shared_segments(store, &SegmentCache::default());
    let meta = SnapshotMeta {
        id: ID,
        membership: Membership {
            voters: vec![LEADER, FOLLOWER],
            learners: vec![],
        },
        format: "test/1".into(),
    };
    let mut w = store.begin_sharing(meta, Arc::new(shared)).unwrap();
    for f in framed(frames).chunks(9 + FRAME_PAYLOAD) {
        w.write_segment(&[&f[..9], &f[9..]]).unwrap();
    }
    w.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stored_sharing_its_predecessors_frames_transfers_as_the_same_bytes() {
    let mut n = net();
    let old = seeds(120);
    let mut new = old.clone();
    new[7] = 10_007;
    new.push(10_500);
    let mut p = pair(&old, &new);
    // The leader also holds OLD, and stores ID sharing its unchanged frames.
    let leader_dir = tempfile::tempdir().unwrap();
    let leader = open_store(Arc::new(StdFs), leader_dir.path());
    make_snapshot(&leader, OLD, &framed(&old));
    let info = make_sharing_snapshot(&leader, &new);
    let frame = (9 + FRAME_PAYLOAD) as u64;
    assert_eq!(
        info.shared_bytes,
        119 * frame,
        "every unchanged frame shared"
    );
    assert_eq!(info.digest, p.leader.info.digest, "the same logical file");
    let physical = std::fs::metadata(&info.path).unwrap().len();
    assert!(physical > info.file_len, "holes and a trailer");
    p.leader = Leader {
        _dir: leader_dir,
        store: leader,
        info,
    };
    // Delta into a follower holding OLD, then whole into an empty one: the leader's logical
    // bytes both times.
    let (report, got) = transfer(&mut n, &p, cfg(LEADER)).await;
    assert_eq!(
        report.bytes_sent,
        header_segment_bytes(&p.leader.info) + 2 * frame
    );
    assert_eq!(
        got.info.shared_bytes,
        p.leader.info.file_len - report.bytes_sent,
        "what the follower held is shared, not written again"
    );
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = open_store(Arc::new(StdFs), empty_dir.path());
    let slots = IncomingSlots::new(2);
    let (report, got) = transfer_between(
        &mut n,
        &p.leader.store,
        ID,
        cfg(LEADER),
        BandwidthLimiter::new(None),
        &empty,
        cfg(FOLLOWER),
        &slots,
    )
    .await;
    assert_eq!(report.unwrap().bytes_sent, p.leader.info.file_len);
    assert_eq!(
        file_bytes(&got.unwrap().info.path),
        file_bytes(&p.leader.info.path)
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holding_an_unrelated_snapshot_receives_the_whole_file() {
    let mut n = net();
    let p = pair(&(1000..1050).collect::<Vec<_>>(), &seeds(60));
    let (report, got) = transfer(&mut n, &p, cfg(LEADER)).await;
    let file_len = p.leader.info.file_len;
    assert_eq!((report.bytes_sent, report.bytes_reused), (file_len, 0));
    assert_eq!((got.bytes_received, got.bytes_reused), (file_len, 0));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_refuses_version_2_is_offered_that_snapshot_whole_and_a_newer_one_in_version_2()
 {
    let mut n = net();
    let p = pair(&seeds(40), &seeds(41));
    let lcfg = cfg(LEADER);
    // A follower of the previous release: version 2 is not one it knows.
    let out = n.open().await;
    let (send, _) = spawn_send(
        out,
        &p.leader.store,
        ID,
        lcfg.clone(),
        BandwidthLimiter::new(None),
    );
    let mut inb = n.accept().await;
    let f = frame::read_frame(&mut inb.recv, CONTROL_FRAME_BYTES_MAX)
        .await
        .unwrap()
        .unwrap();
    let offer = crate::wire::decode_offer(f.kind, &f.payload).unwrap();
    assert_eq!(offer.version, crate::TRANSFER_PROTOCOL_VERSION);
    let refusal = Reply::Reject {
        reason: "transfer protocol: expected magic [57, 53, 58, 46] version 1, found magic [57, 53, 58, 46] version 2".into(),
    };
    send_reply(&mut inb.send, &refusal).await.unwrap();
    let e = send.await.unwrap().unwrap_err();
    assert!(matches!(e, TransferError::Rejected { .. }), "{e}");
    assert_eq!(lcfg.peer_versions.offer_to(FOLLOWER, ID), 1);
    assert_eq!(lcfg.peer_versions.offer_to(FOLLOWER, OLD), 1);
    let newer = SnapshotId {
        last_index: ID.last_index + 1,
        ..ID
    };
    // A newer snapshot is tried in version 2 again (the peer may have been upgraded since).
    let v2 = crate::TRANSFER_PROTOCOL_VERSION;
    assert_eq!(lcfg.peer_versions.offer_to(FOLLOWER, newer), v2);
    assert_eq!(lcfg.peer_versions.offer_to(3, ID), v2);

    // The next offer is version 1 and sends every byte, though the follower could reuse most.
    let (report, got) = transfer(&mut n, &p, lcfg).await;
    let file_len = p.leader.info.file_len;
    assert_eq!((report.bytes_sent, report.bytes_reused), (file_len, 0));
    assert_eq!(got.bytes_received, file_len);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_corrupted_on_the_wire_in_a_delta_transfer_are_resent_within_their_ranges() {
    let mut n = net();
    let old = seeds(100);
    let mut new = old.clone();
    for i in [10, 11, 12, 60] {
        new[i] += 5_000;
    }
    let p = pair(&old, &new);
    let lcfg = TransferConfig {
        // Chunks smaller than a frame: a range is several chunks, and every second is damaged.
        chunk_bytes: 4 << 10,
        corrupt_chunk_every: NonZeroU32::new(2),
        ..cfg(LEADER)
    };
    let (report, got) = transfer(&mut n, &p, lcfg).await;
    let frame = (9 + FRAME_PAYLOAD) as u64;
    let fetched = header_segment_bytes(&p.leader.info) + 4 * frame;
    assert_eq!(got.bytes_received, fetched);
    assert!(report.chunks_resent > 0);
    assert_eq!(report.bytes_reused, p.leader.info.file_len - fetched);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_transfer_cut_by_a_crash_resumes_at_its_durable_offset_and_still_reuses() {
    let mut n = net();
    let old = seeds(200);
    let mut new = old.clone();
    for i in (5..200).step_by(10) {
        new[i] += 20_000;
    }
    let dir = tempfile::tempdir().unwrap();
    let lstore = open_store(Arc::new(StdFs), dir.path());
    let linfo = make_snapshot(&lstore, ID, &framed(&new));
    let file_len = linfo.file_len;
    let fs = FaultFs::new();
    let fdir = PathBuf::from("/snap");
    let follower = open_store(Arc::new(fs.clone()), &fdir);
    make_snapshot(&follower, OLD, &framed(&old));
    let c = cfg(FOLLOWER);

    // Slow enough on the 20 fetched frames that the crash lands mid-transfer.
    let limiter = BandwidthLimiter::new(Some(128 << 10));
    let out = n.open().await;
    let (send1, _) = spawn_send(out, &lstore, ID, cfg(LEADER), limiter.clone());
    let (tx, mut durable_rx) = mpsc::unbounded_channel();
    let inb = n.accept().await;
    let recv1 = spawn_receive(inb, &follower, c.clone(), &IncomingSlots::new(2), Some(tx));
    let mut last_durable = 0;
    while last_durable < file_len / 3 {
        last_durable = durable_rx.recv().await.expect("durable ack");
    }
    recv1.abort();
    fs.crash(CrashMode::LoseUnsynced);
    let _ = send1.await.unwrap();

    let (follower, rec) = SnapshotStore::open(Arc::new(fs.clone()), &fdir, &storage_cfg()).unwrap();
    let (_, durable) = rec.resumable.first().copied().expect("a resumable partial");
    assert!(durable >= last_durable && durable < file_len, "{durable}");
    limiter.set(None);
    let out = n.open().await;
    let (send2, _) = spawn_send(out, &lstore, ID, cfg(LEADER), limiter);
    let inb = n.accept().await;
    let recv2 = spawn_receive(inb, &follower, c, &IncomingSlots::new(2), None);
    let report = send2.await.unwrap().unwrap();
    let got = recv2.await.unwrap().unwrap();
    assert_eq!((report.resumed_from, got.resumed_from), (durable, durable));
    assert_eq!(report.bytes_sent + report.bytes_reused, file_len - durable);
    let frame = (9 + FRAME_PAYLOAD) as u64;
    // Only changed frames past the durable offset (and at most the one it cuts) are sent.
    assert!(
        report.bytes_sent <= 20 * frame && report.bytes_reused > 0,
        "sent {} reused {} after resuming at {durable} of {file_len}",
        report.bytes_sent,
        report.bytes_reused
    );
    assert_eq!(stored_bytes(&follower, ID), file_bytes(&linfo.path));
    assert!(
        got.info.shared_bytes > 0,
        "the resumed file shares what the follower held"
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_snapshot_reuses_what_an_interrupted_transfer_of_an_older_one_made_durable() {
    let mut n = net();
    let old = seeds(100);
    let mut new = old.clone();
    for s in &mut new[90..] {
        *s += 7_000;
    }
    let dir = tempfile::tempdir().unwrap();
    let lstore = open_store(Arc::new(StdFs), dir.path());
    let old_info = make_snapshot(&lstore, OLD, &framed(&old));
    let new_info = make_snapshot(&lstore, ID, &framed(&new));
    let fdir = tempfile::tempdir().unwrap();
    let follower = open_store(Arc::new(StdFs), fdir.path());
    let slots = IncomingSlots::new(2);

    // The follower, empty, receives the older snapshot slowly; its leader goes away at half.
    let limiter = BandwidthLimiter::new(Some(512 << 10));
    let out = n.open().await;
    let (send1, _) = spawn_send(out, &lstore, OLD, cfg(LEADER), limiter);
    let (tx, mut durable_rx) = mpsc::unbounded_channel();
    let inb = n.accept().await;
    let recv1 = spawn_receive(inb, &follower, cfg(FOLLOWER), &slots, Some(tx));
    let mut durable = 0;
    while durable < old_info.file_len / 2 {
        durable = durable_rx.recv().await.expect("durable ack");
    }
    send1.abort();
    let _ = recv1.await;
    wait_until("the interrupted stream lets its file go", || {
        slots.in_flight() == 0
    })
    .await;

    // The next leader offers its newer snapshot: the 90 frames the follower made durable of
    // the older one are copied, not sent again.
    let none = BandwidthLimiter::new(None);
    let (report, got) = transfer_between(
        &mut n,
        &lstore,
        ID,
        cfg(LEADER),
        none,
        &follower,
        cfg(FOLLOWER),
        &slots,
    )
    .await;
    let (report, got) = (report.unwrap(), got.unwrap());
    let file_len = new_info.file_len;
    assert_eq!(report.bytes_sent + report.bytes_reused, file_len);
    let frame = (9 + FRAME_PAYLOAD) as u64;
    assert!(
        report.bytes_reused + 2 * frame >= durable - header_segment_bytes(&old_info),
        "reused {} of the {durable} bytes made durable",
        report.bytes_reused
    );
    assert_eq!(got.bytes_reused, report.bytes_reused);
    assert_eq!(file_bytes(&got.info.path), file_bytes(&new_info.path));
    assert!(
        follower.partial_source().unwrap().is_none(),
        "the kept prefix goes"
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_waits_out_a_follower_that_indexes_for_longer_than_the_progress_timeout() {
    let mut n = net();
    let p = pair(&seeds(8), &seeds(8));
    let lcfg = TransferConfig {
        progress_timeout_ms: 400,
        ..cfg(LEADER)
    };
    let out = n.open().await;
    let (send, _) = spawn_send(out, &p.leader.store, ID, lcfg, BandwidthLimiter::new(None));

    // A follower that holds every byte already, but takes 1.2 s to find out: it says so with
    // heartbeats, the way a follower indexing gigabytes of its own snapshots does.
    let mut inb = n.accept().await;
    let f = frame::read_frame(&mut inb.recv, CONTROL_FRAME_BYTES_MAX)
        .await
        .unwrap()
        .unwrap();
    let offer = crate::wire::decode_offer(f.kind, &f.payload).unwrap();
    send_reply(&mut inb.send, &Reply::SendManifest { resume_from: 0 })
        .await
        .unwrap();
    loop {
        let f = frame::read_frame(&mut inb.recv, CONTROL_FRAME_BYTES_MAX)
            .await
            .unwrap()
            .unwrap();
        if crate::wire::decode_manifest_part(f.kind, &f.payload)
            .unwrap()
            .last
        {
            break;
        }
    }
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send_reply(&mut inb.send, &Reply::Durable { offset: 0 })
            .await
            .unwrap();
    }
    let fetch_nothing = Reply::Fetch {
        ranges: vec![],
        last: true,
    };
    send_reply(&mut inb.send, &fetch_nothing).await.unwrap();
    send_reply(&mut inb.send, &Reply::Durable { offset: 0 })
        .await
        .unwrap();
    let all = Reply::Durable {
        offset: offer.file_len,
    };
    send_reply(&mut inb.send, &all).await.unwrap();
    let received = Reply::Received {
        digest: offer.digest,
    };
    send_reply(&mut inb.send, &received).await.unwrap();
    let report = send.await.unwrap().expect("the leader waited");
    assert_eq!(report.outcome, SendOutcome::Completed);
    assert_eq!(
        (report.bytes_sent, report.bytes_reused),
        (0, offer.file_len)
    );
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_snapshot_that_rotted_after_it_was_indexed_fails_the_digest_and_is_fetched_next_time()
 {
    let mut n = net();
    let old = seeds(40);
    let mut new = old.clone();
    new[30] += 9_000;
    let p = pair(&old, &new);
    let fcfg = cfg(FOLLOWER);
    // The follower indexed its snapshot earlier (its segments are remembered)...
    let held = p.follower.list()[0].clone();
    let path = held.path.clone();
    fcfg.segments
        .get_or_compute(held.digest, || {
            let bytes = std::fs::read(&path).unwrap();
            let mut read_at = |at: u64, buf: &mut [u8]| {
                buf.copy_from_slice(&bytes[at as usize..at as usize + buf.len()]);
                Ok(())
            };
            segments_of(bytes.len() as u64, &mut read_at)
        })
        .unwrap();
    // ...and then a byte of frame 10 rotted on disk.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = header_segment_bytes(&held) as usize + 10 * (9 + FRAME_PAYLOAD) + 100;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let slots = IncomingSlots::new(2);
    let attempt = async |n: &mut Net| {
        let none = BandwidthLimiter::new(None);
        let (store, follower) = (&p.leader.store, &p.follower);
        transfer_between(
            n,
            store,
            ID,
            cfg(LEADER),
            none,
            follower,
            fcfg.clone(),
            &slots,
        )
        .await
    };
    // The rotted bytes are shared like the rest, and the whole-file digest catches them: nothing
    // is published, and the follower forgets what it remembered of its file.
    let (sent, got) = attempt(&mut n).await;
    let e = got.expect_err("a file with rotted shared bytes is not published");
    assert!(e.to_string().contains("digest"), "{e}");
    assert!(sent.is_err());
    assert!(p.follower.list().iter().all(|i| i.id() != ID));
    assert!(fcfg.segments.get(&held.digest).is_none());
    wait_until("the slot is free", || slots.in_flight() == 0).await;

    let (sent, got) = attempt(&mut n).await;
    let (report, got) = (sent.unwrap(), got.unwrap());
    assert_eq!(file_bytes(&got.info.path), file_bytes(&p.leader.info.path));
    let frame = (9 + FRAME_PAYLOAD) as u64;
    assert!(
        report.bytes_sent >= 2 * frame,
        "the changed frame and the rotted one are sent: {}",
        report.bytes_sent
    );
    n.shutdown().await;
}
