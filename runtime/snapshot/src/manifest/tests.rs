//! The cut, the plan and its spreading over members, the segment cache, the manifest intake
//! and the leader's ranges.

use super::*;
use crate::format::FrameKind;

/// A storage header with `meta` bytes of metadata, then frames with these payloads.
fn file(meta: usize, payloads: &[&[u8]]) -> Vec<u8> {
    let mut f = vec![0u8; wraft_storage::SNAPSHOT_HEADER_BYTES as usize];
    f[12..16].copy_from_slice(&(meta as u32).to_le_bytes());
    f.extend(std::iter::repeat_n(0xee, meta));
    for p in payloads {
        f.push(FrameKind::MachineChunk as u8);
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&crc32c::crc32c(p).to_le_bytes());
        f.extend_from_slice(p);
    }
    f
}

fn reader(f: &[u8]) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
    move |at, buf| {
        let at = at as usize;
        buf.copy_from_slice(
            f.get(at..at + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?,
        );
        Ok(())
    }
}

fn segs(f: &[u8]) -> Vec<Segment> {
    segments_of(f.len() as u64, &mut reader(f)).unwrap()
}

#[test]
fn the_header_each_frame_and_each_mebibyte_of_a_long_frame_are_segments() {
    let big = vec![7u8; (SEGMENT_BYTES_MAX as usize) + 100];
    let f = file(40, &[b"abc", &big, b""]);
    let cuts = cut_points(f.len() as u64, &mut reader(&f)).unwrap();
    let head = 60 + 40;
    assert_eq!(
        cuts,
        vec![
            (0, head as u32),
            (head, 9 + 3),
            (head + 12, SEGMENT_BYTES_MAX as u32),
            (head + 12 + SEGMENT_BYTES_MAX, 9 + 100),
            (head + 12 + SEGMENT_BYTES_MAX + 109, 9),
        ]
    );
}

#[test]
fn a_body_that_stops_parsing_is_cut_in_fixed_pieces_from_there() {
    let mut f = file(0, &[b"abc", b"defgh"]);
    let whole = f.len() as u64;
    // Truncated inside the second frame: the first frame is a segment, the rest one piece.
    f.truncate(f.len() - 2);
    let cuts = cut_points(f.len() as u64, &mut reader(&f)).unwrap();
    assert_eq!(cuts, vec![(0, 60), (60, 12), (72, (whole - 2 - 72) as u32)]);
    // A frame length past the end, and a file shorter than a header.
    let mut bad = file(0, &[b"abc"]);
    bad[61..65].copy_from_slice(&u32::MAX.to_le_bytes());
    let cuts = cut_points(bad.len() as u64, &mut reader(&bad)).unwrap();
    assert_eq!(cuts, vec![(0, 60), (60, 12)]);
    let tiny = vec![1u8; 10];
    assert_eq!(cut_points(10, &mut reader(&tiny)).unwrap(), vec![(0, 10)]);
}

#[test]
fn a_frame_moved_to_another_offset_keeps_its_hash() {
    let a = segs(&file(10, &[b"one", b"two", b"three"]));
    let b = segs(&file(25, &[b"zero", b"one", b"two", b"three"]));
    let hashes = |s: &[Segment]| s.iter().map(|s| s.hash).collect::<Vec<_>>();
    assert_eq!(hashes(&a)[1..], hashes(&b)[2..]);
    assert_ne!(a[0].hash, b[0].hash);
    assert_ne!(a[1].offset, b[2].offset);
}

#[test]
fn a_plan_copies_what_is_held_fetches_the_rest_and_covers_the_file_exactly() {
    let old = file(10, &[b"one", b"two", b"three", b"four"]);
    let new = file(12, &[b"one", b"TWO", b"three", b"five", b"six", b"four"]);
    let mut local = LocalSegments::default();
    local.add(3, &segs(&old));
    let s = segs(&new);
    let fills = plan(&s, 0, &local);
    let kinds: Vec<char> = fills
        .iter()
        .map(|f| match f {
            Fill::Copy { .. } => 'c',
            Fill::Fetch { .. } => 'f',
            Fill::Peer { .. } => 'p',
        })
        .collect();
    // header (new meta: fetched), one, TWO, three, five+six (merged), four
    assert_eq!(kinds, ['f', 'c', 'f', 'c', 'f', 'c']);
    assert_eq!(fills[0].at(), 0);
    assert_eq!(fills.last().unwrap().end(), new.len() as u64);
    for w in fills.windows(2) {
        assert_eq!(w[0].end(), w[1].at());
    }
    // A copy names bytes that really are the same.
    for f in &fills {
        if let Fill::Copy {
            at,
            len,
            source,
            from,
            hash,
        } = *f
        {
            assert_eq!(source, 3);
            let (at, from, len) = (at as usize, from as usize, len as usize);
            assert_eq!(new[at..at + len], old[from..from + len]);
            assert_eq!(hash, *blake3::hash(&new[at..at + len]).as_bytes());
        }
    }
    let fetched: u64 = fetch_ranges(&fills).iter().map(|r| r.1).sum();
    assert_eq!(fetched, 72 + (9 + 3) + (9 + 4) + (9 + 3));
}

/// Fetches spread over the sender and two members in turn, by blocks of whole segments:
/// copies stay where they were, the fills still cover the file in order, each member's
/// segment carries its hash and is one it holds, the sender keeps about a third, and a
/// segment no member holds stays the sender's.
#[test]
fn fetches_spread_over_the_sender_and_the_members_holding_each_segment() {
    use std::collections::HashSet;
    let payloads: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    let new = file(8, &refs);
    let s = segs(&new);
    // This node holds frames 10..15 already.
    let mut local = LocalSegments::default();
    local.add(0, &s[11..16]);
    let planned = plan(&s, 0, &local);
    let wanted = fetched_segments(&planned, &s);
    assert_eq!(wanted.len(), s.len() - 5);
    let all: HashSet<[u8; 32]> = s.iter().map(|x| x.hash).collect();
    assert_eq!(spread_fetches(planned.clone(), &s, &[], 300), planned);
    // Member 1 lacks frame 25.
    let mut lacks = all.clone();
    lacks.remove(&s[26].hash);
    let fills = spread_fetches(planned.clone(), &s, &[all.clone(), lacks.clone()], 300);
    assert_eq!(fills.first().unwrap().at(), 0);
    assert_eq!(fills.last().unwrap().end(), new.len() as u64);
    for w in fills.windows(2) {
        assert_eq!(w[0].end(), w[1].at());
    }
    let copies = |f: &[Fill]| f.iter().filter(|f| matches!(f, Fill::Copy { .. })).count();
    assert_eq!(copies(&fills), copies(&planned));
    let mut by = [0u64; 3];
    for f in &fills {
        match *f {
            Fill::Fetch { len, .. } => by[0] += len,
            Fill::Peer {
                at,
                len,
                hash,
                peer,
            } => {
                let (a, l) = (at as usize, len as usize);
                assert_eq!(hash, *blake3::hash(&new[a..a + l]).as_bytes());
                assert!(s.iter().any(|x| x.offset == at && x.len == len));
                assert!(peer == 0 || hash != s[26].hash);
                by[1 + peer] += u64::from(len);
            }
            Fill::Copy { .. } => {}
        }
    }
    let fetched: u64 = fetch_ranges(&planned).iter().map(|r| r.1).sum();
    assert_eq!(by.iter().sum::<u64>(), fetched);
    for b in by {
        assert!(b * 5 > fetched && b * 2 < fetched, "{by:?} of {fetched}");
    }
    // Members holding nothing leave everything to the sender.
    let none = spread_fetches(planned.clone(), &s, &[HashSet::new()], 300);
    assert_eq!(fetch_ranges(&none), fetch_ranges(&planned));
    // A transfer resumed inside a segment fetches the rest of it from the sender.
    let resume = s[3].offset + 5;
    let fills = spread_fetches(plan(&s, resume, &local), &s, &[all.clone(), all], 300);
    assert!(matches!(fills[0], Fill::Fetch { at, .. } if at == resume));
    assert!(fills[0].end() >= s[3].end());
    assert_eq!(fills.last().unwrap().end(), new.len() as u64);
}

#[test]
fn the_segment_cache_keeps_the_most_recently_used_files_and_forgets_on_demand() {
    let c = SegmentCache::with_capacity(2);
    let seg = |n: u32| {
        Arc::new(vec![Segment {
            offset: 0,
            len: n,
            hash: [n as u8; 32],
        }])
    };
    let computed = std::cell::Cell::new(0);
    let get = |d: u8, n: u32| {
        c.get_or_compute([d; 32], || {
            computed.set(computed.get() + 1);
            Ok(seg(n).to_vec())
        })
        .unwrap()[0]
            .len
    };
    assert_eq!(get(1, 10), 10);
    assert_eq!(get(2, 20), 20);
    assert_eq!(get(1, 99), 10, "remembered");
    // 1 was used last: 2 leaves for 3.
    assert_eq!(get(3, 30), 30);
    assert!(c.get(&[1; 32]).is_some() && c.get(&[2; 32]).is_none());
    assert_eq!(computed.get(), 3);
    c.forget(&[1; 32]);
    assert_eq!(get(1, 11), 11, "computed again after forget");
    assert_eq!(manifest_segments_max(0), 1024);
    assert_eq!(manifest_segments_max(64 << 10), 2048);
    assert_eq!(
        manifest_segments_max(u64::MAX),
        crate::wire::MANIFEST_SEGMENTS_MAX
    );
}

#[test]
fn a_snapshot_of_the_store_is_remembered_with_the_segments_its_file_has() {
    let dir = tempfile::tempdir().unwrap();
    let store = wraft_storage::SnapshotStore::open(
        Arc::new(wraft_storage::StdFs),
        dir.path(),
        &wraft_storage::StorageConfig::default(),
    )
    .unwrap()
    .0;
    let id = wraft_storage::SnapshotId {
        last_index: 7,
        last_term: 1,
    };
    let mut w = store
        .begin(wraft_storage::SnapshotMeta {
            id,
            membership: wraft_storage::Membership {
                voters: vec![1],
                learners: vec![],
            },
            format: "test/1".into(),
        })
        .unwrap();
    let body = file(0, &[b"one", b"two"]);
    w.write_chunk(&body[60..]).unwrap();
    let info = w.finish().unwrap();
    let cache = SegmentCache::default();
    remember_segments(&store, id, &cache).unwrap();
    let bytes = std::fs::read(&info.path).unwrap();
    let want = segs(&bytes);
    assert_eq!(*cache.get(&info.digest).expect("remembered"), want);
    assert_eq!(want.len(), 3, "header, and one per frame");
    let missing = wraft_storage::SnapshotId {
        last_index: 8,
        last_term: 1,
    };
    assert!(remember_segments(&store, missing, &cache).is_err());
}

#[test]
fn a_resumed_plan_starts_at_the_durable_offset_even_inside_a_segment() {
    let f = file(0, &[b"aaaa", b"bbbb"]);
    let s = segs(&f);
    let mut local = LocalSegments::default();
    local.add(0, &s);
    // Everything is held, but the segment holding the resume point is fetched from there.
    let fills = plan(&s, 65, &local);
    assert_eq!(
        fills[0],
        Fill::Fetch {
            at: 65,
            len: 73 - 65
        }
    );
    assert!(matches!(
        fills[1],
        Fill::Copy {
            at: 73,
            len: 13,
            ..
        }
    ));
    assert_eq!(fills.len(), 2);
    assert!(plan(&s, f.len() as u64, &local).is_empty());
}

#[test]
fn a_manifest_is_taken_part_by_part_and_must_cover_the_file_exactly() {
    use crate::wire::ManifestPart;
    let part = |segments: Vec<u32>, last| ManifestPart {
        segments: segments.into_iter().map(|l| (l, [l as u8; 32])).collect(),
        last,
    };
    let mut m = ManifestIntake::new(100);
    assert_eq!(m.on_part(part(vec![60, 30], false)), Ok(false));
    assert_eq!(m.on_part(part(vec![10], true)), Ok(true));
    let s = m.into_segments();
    assert_eq!(s.iter().map(|s| s.offset).collect::<Vec<_>>(), [0, 60, 90]);
    for (parts, why) in [
        (
            vec![part(vec![60, 30], true)],
            "covers 90 of the file's 100",
        ),
        (vec![part(vec![60, 50], true)], "ending at or before 100"),
        (vec![part(vec![0], false)], "expected 1..="),
        (
            vec![part(vec![100], true), part(vec![], true)],
            "after the last",
        ),
    ] {
        let mut m = ManifestIntake::new(100);
        let e = parts
            .into_iter()
            .map(|p| m.on_part(p))
            .find_map(Result::err)
            .expect("a bad manifest was taken");
        assert!(e.contains(why), "{e}");
    }
    let mut m = ManifestIntake::new(u64::MAX);
    let huge = part(vec![1; crate::wire::MANIFEST_PART_SEGMENTS_MAX + 1], false);
    assert!(m.on_part(huge).unwrap_err().contains("more than"));
}

#[test]
fn chunks_walk_the_asked_ranges_and_a_nack_must_name_a_chunk_start() {
    let r = Ranges::checked(vec![(10, 25), (50, 5)], 5, 100, 10, 8).unwrap();
    let mut at = 0;
    let mut chunks = Vec::new();
    while let Some((o, l)) = r.chunk_at(at) {
        chunks.push((o, l));
        at = o + l;
    }
    assert_eq!(chunks, [(10, 10), (20, 10), (30, 5), (50, 5)]);
    assert_eq!(r.bytes(), 30);
    assert!(r.is_chunk_start(20) && r.is_chunk_start(50));
    assert!(!r.is_chunk_start(25) && !r.is_chunk_start(40) && !r.is_chunk_start(0));
    for (ranges, why) in [
        (vec![(4, 1)], "starting at or after 5"),
        (vec![(10, 5), (12, 5)], "starting at or after 15"),
        (vec![(10, 0)], "non-empty"),
        (vec![(90, 11)], "ending at or before 100"),
        (vec![(u64::MAX, 2)], "ending at or before"),
        (vec![(10, 1); 9], "at most 8"),
    ] {
        let e = Ranges::checked(ranges, 5, 100, 10, 8).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
    let v1 = Ranges::from_offset(30, 45, 10);
    assert_eq!(v1.chunk_at(0), Some((30, 10)));
    assert_eq!(v1.chunk_at(40), Some((40, 5)));
    assert_eq!(v1.chunk_at(45), None);
    assert!(Ranges::from_offset(45, 45, 10).chunk_at(0).is_none());
}
