//! Round trips of every section, in files and in memory, and damaged bodies.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use wraft_engine::{Membership, SessionTable};
use wraft_proto::{MachineLimits, WasiProfile};
use wraft_storage::{SnapshotId, SnapshotStore};

use super::*;

fn store(dir: &Path) -> SnapshotStore {
    let cfg = wraft_storage::StorageConfig::default();
    wraft_storage::SnapshotStore::open(Arc::new(wraft_storage::StdFs), dir, &cfg)
        .unwrap()
        .0
}

fn header(index: u64, modules: &[&[u8]]) -> NodeSnapshotHeader {
    NodeSnapshotHeader {
        format_version: NODE_SNAPSHOT_VERSION,
        index,
        term: 2,
        membership: Membership::with_voters([1, 2, 3]),
        last_timestamp_ms: 77,
        addresses: vec![(4, "127.0.0.1:9".parse().unwrap())],
        machines: modules
            .iter()
            .enumerate()
            .map(|(i, m)| MachineRecord {
                name: format!("m{i}"),
                kind: "kv".into(),
                version: "1".into(),
                snapshot_format: 1,
                module_sha256: wraft_proto::digest::sha256(m),
                module_bytes: m.len() as u64,
                deployed_at: 1,
                created_at: 1,
                wasi: WasiProfile::None,
            })
            .collect(),
    }
}

fn write(store: &SnapshotStore, h: &NodeSnapshotHeader, modules: &[&[u8]], chunks: &[Vec<u8>]) {
    let mut w = NodeSnapshotWriter::begin(store, h).unwrap();
    fill(&mut w, h, modules, chunks);
    w.finish(modules.len() as u32).unwrap();
}

/// Everything after the header frame, up to (not including) the End frame.
fn fill<S: BodySink>(
    w: &mut BodyWriter<S>,
    h: &NodeSnapshotHeader,
    modules: &[&[u8]],
    chunks: &[Vec<u8>],
) {
    fill_referencing(w, h, modules, chunks, &[]);
}

/// [`fill`], naming the modules of the machines in `by_ref` by reference.
fn fill_referencing<S: BodySink>(
    w: &mut BodyWriter<S>,
    h: &NodeSnapshotHeader,
    modules: &[&[u8]],
    chunks: &[Vec<u8>],
    by_ref: &[u32],
) {
    for (i, m) in modules.iter().enumerate() {
        if by_ref.contains(&(i as u32)) {
            w.module_ref(i as u32).unwrap();
        } else {
            w.module(i as u32, m).unwrap();
        }
    }
    let mut st = SessionTable::new(10, 1000);
    let tag = wraft_engine::ClientTag {
        client_id: 9,
        seq: 1,
    };
    st.open(tag.client_id, 5);
    assert_eq!(st.admit(tag, 5), wraft_engine::SessionCheck::Fresh);
    st.complete(tag, Bytes::from_static(b"out"));
    w.sessions(&st).unwrap();
    if h.format_version >= 2 {
        let limits: Vec<_> = (0..modules.len()).map(|i| limits(i as u64)).collect();
        w.limits(&limits).unwrap();
    }
    for i in 0..modules.len() {
        w.machine_begin(i as u32).unwrap();
        let mut bytes = 0;
        for c in chunks {
            w.machine_chunk(c).unwrap();
            bytes += c.len() as u64;
        }
        w.machine_end(chunks.len() as u64, bytes).unwrap();
    }
}

/// Machine `i`'s limits in the test files: none for even `i` (deployed before limits were
/// replicated), distinct values for odd `i`.
fn limits(i: u64) -> Option<MachineLimits> {
    (i % 2 == 1).then_some(MachineLimits {
        fuel_per_entry: 1000 + i,
        fuel_per_call: 2000 + i,
        memory_bytes_max: 3000 + i,
        output_bytes_max: 4000 + i,
    })
}

#[test]
fn a_version_1_file_reads_with_every_machine_on_the_nodes_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let modules: [&[u8]; 2] = [b"module-zero", b"module-one!"];
    let mut h = header(10, &modules);
    h.format_version = 1;
    write(&s, &h, &modules, &[vec![1u8; 10]]);
    let id = SnapshotId {
        last_index: 10,
        last_term: 2,
    };
    let snap = NodeSnapshot::open(&s, id).unwrap();
    assert_eq!(snap.header, h);
    assert_eq!(snap.limits, vec![None, None]);
    assert_eq!(snap.sessions.len(), 1);
}

/// Headers written when addresses were `SocketAddr` decode unchanged into the header with
/// `PeerAddr` addresses, so the format version did not need a bump; names round-trip.
#[test]
fn a_header_written_with_socket_addresses_reads_as_peer_addresses() {
    #[derive(Serialize)]
    struct HeaderBeforeNames {
        format_version: u32,
        index: u64,
        term: u64,
        membership: Membership,
        last_timestamp_ms: u64,
        addresses: Vec<(u64, std::net::SocketAddr)>,
        machines: Vec<MachineRecord>,
    }
    let h = header(10, &[b"module-zero"]);
    let old = HeaderBeforeNames {
        format_version: h.format_version,
        index: h.index,
        term: h.term,
        membership: h.membership.clone(),
        last_timestamp_ms: h.last_timestamp_ms,
        addresses: vec![
            (4, "127.0.0.1:9".parse().unwrap()),
            (5, "[::1]:7".parse().unwrap()),
        ],
        machines: h.machines.clone(),
    };
    let bytes = postcard::to_stdvec(&old).unwrap();
    let read: NodeSnapshotHeader = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(read.addresses[0], (4, "127.0.0.1:9".parse().unwrap()));
    assert_eq!(read.addresses[1], (5, "[::1]:7".parse().unwrap()));
    assert_eq!(
        postcard::to_stdvec(&read).unwrap(),
        bytes,
        "IP addresses are written as before"
    );

    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut named = header(12, &[b"module-zero"]);
    named.addresses = vec![(4, "node-4.wraft.svc:7000".parse().unwrap())];
    write(&s, &named, &[b"module-zero"], &[vec![1u8; 10]]);
    let id = SnapshotId {
        last_index: 12,
        last_term: 2,
    };
    assert_eq!(NodeSnapshot::open(&s, id).unwrap().header, named);
}

#[test]
fn node_snapshot_round_trips_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let modules: [&[u8]; 2] = [b"module-zero", b"module-one!"];
    let chunks = vec![vec![1u8; 1000], vec![2u8; 10], vec![3u8; 5000]];
    let h = header(10, &modules);
    write(&s, &h, &modules, &chunks);
    let id = SnapshotId {
        last_index: 10,
        last_term: 2,
    };
    let snap = NodeSnapshot::open(&s, id).unwrap();
    assert_eq!(snap.header, h);
    assert_eq!(snap.modules[1].as_deref(), Some(modules[1]));
    assert!(snap.self_contained());
    assert_eq!(snap.sessions.len(), 1);
    assert_eq!(snap.limits, vec![limits(0), limits(1)]);
    for i in 0..2 {
        let mut src = snap.machine_chunks(i).unwrap();
        let mut got = Vec::new();
        while let Some(c) = src.next_chunk().unwrap() {
            got.push(c);
        }
        assert_eq!(got, chunks);
    }
}

#[test]
fn damaged_guest_chunk_is_named_by_offset_and_crc() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let modules: [&[u8]; 1] = [b"m"];
    let chunks = vec![vec![7u8; 4096]];
    write(&s, &header(3, &modules), &modules, &chunks);
    let info = s.latest().unwrap();
    // Flip a byte in the middle of the guest chunk, behind storage's back.
    let raw = std::fs::read(&info.path).unwrap();
    let mut bad = raw.clone();
    let at = raw.len() - 100 - 20;
    bad[at] ^= 0xff;
    std::fs::write(&info.path, &bad).unwrap();
    let body = FileBody::open(&info.path, info.body_offset(), info.body_len).unwrap();
    let snap = NodeSnapshot::parse(Arc::new(body)).unwrap();
    let mut src = snap.machine_chunks(0).unwrap();
    let err = src.next_chunk().unwrap_err();
    assert!(err.contains("frame CRC32C"), "{err}");
}

#[test]
fn truncated_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let modules: [&[u8]; 1] = [b"m"];
    write(&s, &header(3, &modules), &modules, &[vec![1u8; 64]]);
    let info = s.latest().unwrap();
    // A body cut before its End frame.
    let body = FileBody::open(&info.path, info.body_offset(), info.body_len - 12).unwrap();
    let err = NodeSnapshot::parse(Arc::new(body))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("node snapshot"), "{err}");
}

#[test]
fn a_body_written_in_memory_is_byte_identical_to_the_files_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let modules: [&[u8]; 2] = [b"module-zero", b"module-one!"];
    let chunks = vec![vec![1u8; 1000], vec![2u8; 10]];
    let h = header(12, &modules);
    write(&s, &h, &modules, &chunks);
    let info = s.latest().unwrap();
    let file = std::fs::read(&info.path).unwrap();

    let mut w = BodyWriter::in_memory(&h).unwrap();
    fill(&mut w, &h, &modules, &chunks);
    let written = w.body_bytes();
    let body = w.into_body(modules.len() as u32).unwrap();
    assert_eq!(&file[info.body_offset() as usize..], &body[..]);
    assert!(written < body.len() as u64, "the End frame follows");

    let snap = NodeSnapshot::parse(Arc::new(MemoryBody::new(body, "memory"))).unwrap();
    assert_eq!(snap.header, h);
    assert_eq!(snap.limits, vec![limits(0), limits(1)]);
    let mut src = snap.machine_chunks(1).unwrap();
    assert_eq!(src.next_chunk().unwrap(), Some(chunks[0].clone()));
    assert_eq!(src.next_chunk().unwrap(), Some(chunks[1].clone()));
    assert_eq!(src.next_chunk().unwrap(), None);
}

#[test]
fn a_memory_body_reads_short_at_its_end_and_empty_past_it() {
    let b = MemoryBody::new(vec![1u8, 2, 3], "m");
    let mut buf = [0u8; 8];
    assert_eq!(b.read_at(1, &mut buf).unwrap(), 2);
    assert_eq!(&buf[..2], &[2, 3]);
    assert_eq!(b.read_at(3, &mut buf).unwrap(), 0);
    assert_eq!(b.read_at(u64::MAX, &mut buf).unwrap(), 0);
    let err = NodeSnapshot::parse(Arc::new(b)).err().unwrap().to_string();
    assert!(err.contains("node snapshot m: body length"), "{err}");
}

#[test]
fn a_copy_under_a_new_header_keeps_every_other_section_and_a_corrupt_source_is_refused() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = store(src_dir.path());
    let modules: [&[u8]; 2] = [b"module-zero", b"module-one!"];
    let chunks = vec![vec![1u8; 1000], vec![3u8; 5000]];
    let h = header(10, &modules);
    write(&src, &h, &modules, &chunks);
    let id = SnapshotId {
        last_index: 10,
        last_term: 2,
    };
    let reader = src.open_reader(id).unwrap();
    let mut new_header = h.clone();
    new_header.membership = Membership::with_voters([7, 8]);
    new_header.addresses = vec![(7, "127.0.0.1:7".parse().unwrap())];

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = store(dst_dir.path());
    // A small I/O chunk, so the copy takes several reads.
    let info = NodeSnapshotWriter::copy_with_header(&dst, &new_header, &reader, 100).unwrap();
    assert_eq!(info.meta.membership.voters, vec![7, 8]);
    let copy = NodeSnapshot::open(&dst, id).unwrap();
    assert_eq!(copy.header, new_header);
    assert_eq!(copy.modules[0].as_deref(), Some(modules[0]));
    assert_eq!(copy.sessions.len(), 1);
    assert_eq!(copy.limits, vec![limits(0), limits(1)]);
    for i in 0..2 {
        let mut src = copy.machine_chunks(i).unwrap();
        let mut got = Vec::new();
        while let Some(c) = src.next_chunk().unwrap() {
            got.push(c);
        }
        assert_eq!(got, chunks);
    }

    // A body that does not start with a header frame is refused; nothing is published.
    let junk = MemoryBody::new(vec![0x7fu8; 64], "junk");
    let empty = tempfile::tempdir().unwrap();
    let none = store(empty.path());
    let err =
        NodeSnapshotWriter::copy_with_header(&none, &new_header, &junk, 100).expect_err("refused");
    assert!(err.to_string().contains("header frame"), "{err}");
    assert!(none.list().is_empty());
}

fn all_chunks(snap: &NodeSnapshot, i: usize) -> Vec<Vec<u8>> {
    let mut src = snap.machine_chunks(i).unwrap();
    let mut got = Vec::new();
    while let Some(c) = src.next_chunk().unwrap() {
        got.push(c);
    }
    got
}

#[test]
fn a_version_3_body_names_modules_by_reference_and_a_copy_carries_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let module0 = vec![0x42u8; 100_000];
    let modules: [&[u8]; 2] = [&module0, b"module-one!"];
    let chunks = vec![vec![1u8; 1000], vec![3u8; 5000]];
    let h = header(10, &modules);
    assert!(h.format_version >= MODULE_REF_VERSION);
    let mut w = NodeSnapshotWriter::begin(&s, &h).unwrap();
    fill_referencing(&mut w, &h, &modules, &chunks, &[0]);
    let by_ref = w.finish(2).unwrap();
    assert!(
        by_ref.file_len < 50_000,
        "a module named by reference is not in the file: {} bytes",
        by_ref.file_len
    );
    let id = by_ref.id();
    let snap = NodeSnapshot::open(&s, id).unwrap();
    assert_eq!(snap.header, h);
    assert_eq!(snap.modules[0], None);
    assert_eq!(snap.modules[1].as_deref(), Some(modules[1]));
    assert!(!snap.self_contained());
    assert_eq!(NodeSnapshot::read_header(&s, id).unwrap(), h);

    // A module that is not the one the record names is refused; nothing is published.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = store(bad_dir.path());
    let mut other = module0.clone();
    other[7] ^= 1;
    let err = NodeSnapshotWriter::copy_inlining_modules(&bad, &snap, &[other.into()], 4096)
        .expect_err("a wrong module");
    assert!(
        err.to_string().contains("module given for a reference"),
        "{err}"
    );
    let err = NodeSnapshotWriter::copy_inlining_modules(&bad, &snap, &[], 4096)
        .expect_err("no module given");
    assert!(err.to_string().contains("machine 0"), "{err}");
    assert!(bad.list().is_empty());

    // The self-contained copy: the same header and sections, with the module's bytes.
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = store(dst_dir.path());
    let copy =
        NodeSnapshotWriter::copy_inlining_modules(&dst, &snap, &[module0.clone().into()], 1000)
            .unwrap();
    assert_eq!(copy.file_len, by_ref.file_len + 100_000);
    let full = NodeSnapshot::open(&dst, id).unwrap();
    assert!(full.self_contained());
    assert_eq!(full.header, h);
    assert_eq!(full.modules[0].as_deref(), Some(&module0[..]));
    assert_eq!(full.modules[1].as_deref(), Some(modules[1]));
    assert_eq!(full.sessions, snap.sessions);
    assert_eq!(full.limits, snap.limits);
    for i in 0..2 {
        assert_eq!(all_chunks(&full, i), chunks);
    }
    // Written twice, byte for byte the same: two saves of one snapshot are one backup.
    let again_dir = tempfile::tempdir().unwrap();
    let again = store(again_dir.path());
    let copy2 =
        NodeSnapshotWriter::copy_inlining_modules(&again, &snap, &[module0.into()], 777).unwrap();
    assert_eq!(copy2.digest, copy.digest);
}

#[test]
fn a_module_reference_before_version_3_or_for_another_machine_is_refused() {
    let modules: [&[u8]; 2] = [b"module-zero", b"module-one!"];
    let chunks = vec![vec![1u8; 10]];
    let mut v2 = header(10, &modules);
    v2.format_version = 2;
    let mut w = BodyWriter::in_memory(&v2).unwrap();
    fill_referencing(&mut w, &v2, &modules, &chunks, &[1]);
    let body = w.into_body(2).unwrap();
    let err = NodeSnapshot::parse(Arc::new(MemoryBody::new(body, "v2")))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("frame order") && err.contains("ModuleRef"),
        "{err}"
    );

    let h = header(10, &modules);
    let mut w = BodyWriter::in_memory(&h).unwrap();
    w.module_ref(1).unwrap();
    w.module_ref(1).unwrap();
    let err = NodeSnapshot::parse(Arc::new(MemoryBody::new(w.into_body(2).unwrap(), "v3")))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("module reference"), "{err}");
}
