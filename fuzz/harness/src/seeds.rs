//! Seed inputs for every target, produced by the real encoders (frame
//! encoder, postcard, the storage crate writing a real log and real snapshot
//! files on the in-memory file system). `gen-corpus` writes them to
//! `fuzz/corpus/<target>/`; the replay tests run every target over them.
//!
//! Everything here is deterministic: the same source produces the same seeds.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use wraft_engine::{
    ClientTag, ConfChange, ConfChangeEntry, Entry, EntryKind, Message, MessageBody,
};
use wraft_proto::{
    Command, Consistency, MachineInfo, MachineLimits, Reply, Request, RequestError, RequestTag,
    Response, Status, WasiProfile,
};
use wraft_storage::fault::FaultFs;
use wraft_storage::{
    HardState, Log, LogEntry, OpenMode, SnapshotId, SnapshotMeta, SnapshotStore, Vfs, WriteBatch,
};
use wraft_transport::frame;

use crate::{SNAP_DIR, SNAP_ID, WAL_DIR, snap_path, storage_config};

/// One seed: target name, file name, bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every target's seeds.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    frames(&mut out);
    raft(&mut out);
    proto(&mut out);
    config(&mut out);
    wal(&mut out);
    snapshots(&mut out);
    node_snapshots(&mut out);
    transfer_offers(&mut out);
    transfer_replies(&mut out);
    transfer_chunks(&mut out);
    transfer_manifests(&mut out);
    out
}

fn push(out: &mut Vec<Seed>, target: &'static str, name: &str, bytes: Vec<u8>) {
    out.push((target, name.to_owned(), bytes));
}

fn frames(out: &mut Vec<Seed>) {
    let max = 1024;
    let enc = |kind: u8, p: &[u8]| frame::encode_frame(kind, p, max).expect("encode");
    let one = enc(0x02, b"append entries");
    let mut three = enc(0x01, &postcard::to_stdvec(&(1u64, 2u64)).expect("hello"));
    three.extend(enc(0x02, &[7u8; 40]));
    three.extend(enc(0x20, b""));
    let mut truncated = three.clone();
    truncated.truncate(three.len() - 5);
    let mut bad_crc = one.clone();
    *bad_crc.last_mut().expect("non-empty") ^= 0x40;
    let oversized = frame::encode_frame(0x02, &[1u8; 2000], 4096).expect("encode");
    let cases: [(&str, Vec<u8>); 6] = [
        ("one-frame", one),
        ("three-frames", three),
        ("truncated", truncated),
        ("bad-crc", bad_crc),
        ("oversized", oversized),
        ("not-a-frame", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    for (name, bytes) in cases {
        push(out, "frame_decode", name, [&[1u8][..], &bytes].concat());
        push(out, "frame_stream", name, [&[1u8, 5][..], &bytes].concat());
    }
}

fn entry(index: u64, term: u64, kind: EntryKind) -> Entry {
    Entry { index, term, kind }
}

fn command(data: &[u8], seq: u64) -> EntryKind {
    EntryKind::Command {
        client: Some(ClientTag { client_id: 9, seq }),
        timestamp_ms: 1_700_000_000_000,
        data: Bytes::copy_from_slice(data),
    }
}

fn raft(out: &mut Vec<Seed>) {
    let msg = |term, body| Message {
        from: 1,
        to: 2,
        term,
        body,
    };
    let append = msg(
        1,
        MessageBody::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![
                entry(1, 1, EntryKind::Noop),
                entry(2, 1, command(br#"{"op":"put","key":"a","value":"1"}"#, 1)),
                entry(
                    3,
                    1,
                    EntryKind::ConfChange(ConfChangeEntry::new(ConfChange::AddLearner(4))),
                ),
            ],
            leader_commit: 2,
        },
    );
    let heartbeat = msg(
        1,
        MessageBody::Heartbeat {
            commit: 3,
            read_ctx: 1,
        },
    );
    let vote = msg(
        2,
        MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: 3,
            last_log_term: 1,
            leadership_transfer: false,
        },
    );
    let conflict = msg(
        2,
        MessageBody::AppendEntries {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![entry(2, 2, command(b"x", 2))],
            leader_commit: 2,
        },
    );
    let enc = |m: &Message| postcard::to_stdvec(m).expect("encode");
    let mut session = Vec::new();
    for m in [&append, &heartbeat] {
        session.push(1);
        session.extend(enc(m));
    }
    session.extend([0, 0, 0]);
    for m in [&vote, &conflict, &msg(2, MessageBody::TimeoutNow)] {
        session.push(2);
        session.extend(enc(m));
    }
    push(
        out,
        "raft_message",
        "append-then-heartbeat-vote-conflict",
        session,
    );
    push(
        out,
        "raft_message",
        "append",
        [&[1u8][..], &enc(&append)].concat(),
    );
    let responses = [
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: 3,
            hint_index: 1,
            hint_term: Some(1),
        },
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        },
        MessageBody::HeartbeatResponse { read_ctx: 4 },
    ];
    let mut r = Vec::new();
    for body in responses {
        r.push(3);
        r.extend(enc(&msg(1, body)));
    }
    push(out, "raft_message", "responses", r);
}

fn proto(out: &mut Vec<Seed>) {
    let tag = RequestTag {
        client_id: 42,
        seq: 7,
    };
    let addr: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
    let requests = [
        Request::Propose {
            tag,
            machine: "kv".into(),
            command: br#"{"op":"put","key":"k","value":"v"}"#.to_vec(),
        },
        Request::Query {
            machine: "kv".into(),
            request: br#"{"op":"get","key":"k"}"#.to_vec(),
            consistency: Consistency::Lease,
        },
        Request::Deploy {
            tag,
            name: "kv".into(),
            module: b"\0asm\x0d\0\x01\0".to_vec(),
        },
        Request::AddLearner {
            id: 4,
            addr: addr.into(),
        },
        Request::Status,
        Request::OpenSession,
        Request::ModuleHas { sha256: [5; 32] },
        Request::ModulePut {
            sha256: [5; 32],
            module: b"\0asm\x0d\0\x01\0".to_vec(),
        },
        Request::ModuleGet { sha256: [5; 32] },
        Request::SnapshotSegmentsHeld {
            hashes: vec![[6; 32], [7; 32]],
        },
        Request::SnapshotSegment {
            hash: [6; 32],
            len: 65_536,
        },
    ];
    let info = MachineInfo {
        name: "kv".into(),
        kind: "kv".into(),
        version: "0.1.0".into(),
        module_sha256: "ab".repeat(32),
        deployed_at: 3,
        healthy: true,
    };
    let responses: [Response; 9] = [
        Ok(Reply::Applied {
            index: 9,
            output: b"{}".to_vec(),
        }),
        Ok(Reply::Status(Box::new(Status {
            id: 1,
            role: "leader".into(),
            term: 2,
            leader: Some(1),
            commit_index: 9,
            applied_index: 9,
            last_index: 9,
            snapshot_index: 0,
            log_first_index: 1,
            snapshot_creating: None,
            voters: vec![1, 2, 3],
            learners: vec![],
            peers: vec![],
            machines: vec![info.clone()],
            apply_halted: None,
        }))),
        Ok(Reply::Machines(vec![info])),
        Err(RequestError::NotLeader {
            leader: Some((2, addr.into())),
        }),
        Err(RequestError::App {
            code: 3,
            message: "no such key".into(),
        }),
        Ok(Reply::SessionOpened { client_id: 17 }),
        Err(RequestError::SessionUnknown { client_id: 17 }),
        Ok(Reply::ModuleHeld { held: true }),
        Ok(Reply::Module {
            module: b"\0asm\x0d\0\x01\0".to_vec(),
        }),
    ];
    let commands = [
        Command::Apply {
            machine: "kv".into(),
            command: b"{}".to_vec(),
        },
        Command::Deploy {
            name: "kv".into(),
            sha256: [5; 32],
            module: b"\0asm".to_vec(),
        },
        Command::SetAddress {
            id: 4,
            addr: addr.into(),
        },
        Command::OpenSession,
        Command::Checkpoint {
            index: 1024,
            digest: [7; 32],
        },
        Command::DeployLimited {
            name: "kv".into(),
            sha256: [5; 32],
            module: b"\0asm".to_vec(),
            wasi: WasiProfile::Deterministic,
            limits: MachineLimits {
                fuel_per_entry: 100_000_000,
                fuel_per_call: 1_000_000_000,
                memory_bytes_max: 1 << 30,
                output_bytes_max: 16 << 20,
            },
        },
        Command::DeployByHash {
            name: "js-kv".into(),
            sha256: [5; 32],
            module_bytes: 12_115_445,
            wasi: WasiProfile::None,
            limits: MachineLimits {
                fuel_per_entry: 100_000_000,
                fuel_per_call: 1_000_000_000,
                memory_bytes_max: 1 << 30,
                output_bytes_max: 16 << 20,
            },
        },
    ];
    let enc = |sel: u8, bytes: Vec<u8>| [vec![sel], bytes].concat();
    for (i, r) in requests.iter().enumerate() {
        let b = postcard::to_stdvec(r).expect("encode");
        push(out, "client_proto", &format!("request-{i}"), enc(0, b));
    }
    for (i, r) in responses.iter().enumerate() {
        let b = postcard::to_stdvec(r).expect("encode");
        push(out, "client_proto", &format!("response-{i}"), enc(1, b));
    }
    for (i, c) in commands.iter().enumerate() {
        let b = postcard::to_stdvec(c).expect("encode");
        push(out, "client_proto", &format!("command-{i}"), enc(2, b));
    }
    let kinds = [command(b"payload", 1), EntryKind::Noop];
    for (i, k) in kinds.iter().enumerate() {
        let b = postcard::to_stdvec(k).expect("encode");
        push(out, "client_proto", &format!("entry-kind-{i}"), enc(3, b));
    }
}

/// The minimal config file from the config module's docs.
pub const MINIMAL_CONFIG: &str = r#"[node]
id = 1
data_dir = "/var/lib/wraft/n1"
listen = "127.0.0.1:7001"

[cluster]
members = { 1 = "127.0.0.1:7001", 2 = "127.0.0.1:7002", 3 = "127.0.0.1:7003" }

[tls]
dir = "/etc/wraft/certs"
"#;

fn config(out: &mut Vec<Seed>) {
    use wraft_config::NodeConfig;
    push(
        out,
        "config_toml",
        "minimal",
        MINIMAL_CONFIG.as_bytes().to_vec(),
    );
    let full = NodeConfig::parse(MINIMAL_CONFIG)
        .expect("the minimal config parses")
        .to_toml();
    push(out, "config_toml", "full-defaults", full.into_bytes());
    let tuned = format!(
        "{MINIMAL_CONFIG}\n[raft]\nheartbeat_interval_ms = 30\nelection_timeout_ms = 300\n\
         [storage]\nfsync = \"relaxed\"\n[guest]\nfuel_per_call = 5000\n\
         [client]\nrequest_timeout_ms = 500\n[snapshot]\nchunk_bytes = 65536\n"
    );
    push(out, "config_toml", "tuned", tuned.into_bytes());
}

/// Write `batches` through a real [`Log`] on a fresh in-memory fs, then
/// return the concatenated segment files in sequence order.
fn real_log(batches: Vec<WriteBatch>, compact_to: Option<(u64, u64)>) -> Vec<u8> {
    let fs = Arc::new(FaultFs::new());
    let dir = Path::new(WAL_DIR);
    let (log, _) = Log::open(fs.clone(), dir, &storage_config(), None).expect("open log");
    for b in batches {
        log.submit(b).expect("submit").wait().expect("durable");
    }
    if let Some((i, t)) = compact_to {
        log.compact(i, t).expect("compact").wait().expect("durable");
    }
    drop(log);
    let mut paths: Vec<_> = fs
        .paths()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
        .iter()
        .flat_map(|p| fs.read_file(p).expect("segment"))
        .collect()
}

fn entries(from: u64, to: u64, term: u64, payload_bytes: usize) -> Vec<LogEntry> {
    (from..=to)
        .map(|index| LogEntry {
            index,
            term,
            payload: Bytes::from(vec![index as u8; payload_bytes]),
        })
        .collect()
}

fn wal(out: &mut Vec<Seed>) {
    let hs = |term, vote, commit| HardState { term, vote, commit };
    let small = real_log(
        vec![
            WriteBatch::default()
                .with_entries(entries(1, 3, 1, 16))
                .with_hard_state(hs(1, Some(1), 0)),
            WriteBatch::default().with_hard_state(hs(1, Some(1), 3)),
        ],
        None,
    );
    let mut torn = small.clone();
    torn.truncate(small.len() - 7);
    push(out, "wal_recovery", "small", [&[0u8][..], &small].concat());
    push(
        out,
        "wal_recovery",
        "small-resealed",
        [&[1u8][..], &small].concat(),
    );
    push(
        out,
        "wal_recovery",
        "torn-tail",
        [&[0u8][..], &torn].concat(),
    );
    // Segments of 4 KiB: ~40 entries of 200 bytes span several of them.
    let multi = real_log(
        vec![
            WriteBatch::default()
                .with_entries(entries(1, 20, 1, 200))
                .with_hard_state(hs(1, None, 10)),
            WriteBatch::default().with_entries(entries(21, 40, 2, 200)),
        ],
        None,
    );
    push(
        out,
        "wal_recovery",
        "multi-segment",
        [&[1u8][..], &multi].concat(),
    );
    let truncated = real_log(
        vec![
            WriteBatch::default().with_entries(entries(1, 8, 1, 8)),
            WriteBatch::default()
                .with_truncate_after(5)
                .with_entries(entries(6, 7, 2, 8))
                .with_hard_state(hs(2, Some(3), 5)),
        ],
        None,
    );
    push(
        out,
        "wal_recovery",
        "truncate-and-overwrite",
        [&[1u8][..], &truncated].concat(),
    );
    let compacted = real_log(
        vec![WriteBatch::default().with_entries(entries(1, 30, 1, 100))],
        Some((25, 1)),
    );
    push(
        out,
        "wal_recovery",
        "compacted",
        [&[0u8][..], &compacted].concat(),
    );
}

/// The metadata of the seeds' snapshot `SNAP_ID`.
fn seed_meta() -> SnapshotMeta {
    SnapshotMeta {
        id: SNAP_ID,
        membership: wraft_storage::Membership {
            voters: vec![1, 2, 3],
            learners: vec![4],
        },
        format: "wraft-machines/1".into(),
    }
}

/// A real snapshot file (header, metadata, body) for `SNAP_ID`.
pub fn real_snapshot(body: &[u8]) -> Vec<u8> {
    let fs = Arc::new(FaultFs::new());
    let (store, _) =
        SnapshotStore::open(fs.clone(), Path::new(SNAP_DIR), &storage_config()).expect("open");
    let mut w = store.begin(seed_meta()).expect("begin");
    for chunk in body.chunks(1000) {
        w.write_chunk(chunk).expect("write");
    }
    w.finish().expect("finish");
    fs.read_file(&snap_path(".snap")).expect("snapshot file")
}

/// A real snapshot file for `SNAP_ID` of `body` that shares every 1000-byte piece the owner
/// ([`crate::owner_snapshot`]) holds at the same body offset instead of storing it.
fn sharing_snapshot(body: &[u8]) -> Vec<u8> {
    let (owner_file, owner_body) = crate::owner_snapshot();
    let fs = Arc::new(FaultFs::new());
    let dir = Path::new(SNAP_DIR);
    fs.create_dir_all(dir).expect("mkdir");
    let owner_path = dir.join(format!("{}.snap", crate::OWNER_ID));
    let f = fs.open(&owner_path, OpenMode::CreateNew).expect("owner");
    f.write_all_at(owner_file, 0).expect("write owner");
    f.sync_data().expect("sync owner");
    fs.sync_dir(dir).expect("sync dir");
    let (store, _) = SnapshotStore::open(fs.clone(), dir, &storage_config()).expect("open");
    let owner_body_at = owner_file.len() as u64 - owner_body.len() as u64;
    let mut w = store.begin(seed_meta()).expect("begin");
    for (i, chunk) in body.chunks(1000).enumerate() {
        let at = owner_body_at + (i * 1000) as u64;
        if !w.share(&[chunk], crate::OWNER_ID, at).expect("share") {
            w.write_chunk(chunk).expect("write");
        }
    }
    let info = w.finish().expect("finish");
    assert!(info.shared_bytes > 0, "the seed shares nothing");
    fs.read_file(&snap_path(".snap")).expect("snapshot file")
}

/// The progress file of an incoming transfer that made `durable` bytes durable.
fn real_progress(file: &[u8], durable: usize) -> Vec<u8> {
    let fs = Arc::new(FaultFs::new());
    let dir = Path::new(SNAP_DIR);
    let (store, _) = SnapshotStore::open(fs.clone(), dir, &storage_config()).expect("open");
    let id = SnapshotId {
        last_index: SNAP_ID.last_index + 50,
        last_term: SNAP_ID.last_term,
    };
    let mut inc = store.incoming(id).expect("incoming");
    inc.write_at(0, &file[..durable]).expect("write");
    inc.sync().expect("sync");
    drop(inc);
    fs.read_file(&dir.join(format!("{id}.partial.progress")))
        .expect("progress file")
}

fn snapshots(out: &mut Vec<Seed>) {
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = real_snapshot(&body);
    let empty = real_snapshot(b"");
    push(
        out,
        "snapshot_open",
        "snapshot",
        [&[0u8][..], &file].concat(),
    );
    push(
        out,
        "snapshot_open",
        "empty-body",
        [&[0u8][..], &empty].concat(),
    );
    push(
        out,
        "snapshot_open",
        "snapshot-resealed",
        [&[2u8][..], &file].concat(),
    );
    let progress = real_progress(&file, 1000);
    assert_eq!(progress.len(), crate::PROGRESS_FILE_BYTES);
    push(
        out,
        "snapshot_open",
        "snapshot-and-partial",
        [&[1u8][..], &file, &progress].concat(),
    );
    // A file that stores only what the owner next to it does not hold: holes and a trailer.
    push(
        out,
        "snapshot_open",
        "snapshot-sharing",
        [
            &[0u8][..],
            &sharing_snapshot(&{
                let mut b = crate::owner_snapshot().1.clone();
                b[2500] ^= 0xff;
                b
            }),
        ]
        .concat(),
    );
    // The transfer: contiguous chunks, a sync, a crash-and-resume, a rewrite
    // of already received bytes, then finalize.
    let write = |ops: &mut Vec<u8>, back: u16, chunk: &[u8]| {
        ops.push(0);
        ops.extend(back.to_le_bytes());
        ops.extend((chunk.len() as u16).to_le_bytes());
        ops.extend(chunk);
    };
    let mut ops = Vec::new();
    let (a, rest) = file.split_at(1500);
    write(&mut ops, 0, a);
    ops.push(1);
    ops.push(2);
    let (b, c) = rest.split_at(2000);
    write(&mut ops, 0, b);
    write(&mut ops, 100, &file[1500 + 2000 - 100..1500 + 2000]);
    write(&mut ops, 0, c);
    ops.push(3);
    push(out, "snapshot_incoming", "chunks-resume-finalize", ops);
    let mut simple = Vec::new();
    write(&mut simple, 0, &empty);
    simple.push(3);
    push(out, "snapshot_incoming", "one-chunk", simple);
}

/// A node snapshot body written by the format's own writer: `modules.len()` machines, each
/// with the guest `chunks`, a session table with one session, limits for odd machines.
pub fn node_snapshot_body(version: u32, modules: &[&[u8]], chunks: &[&[u8]]) -> Vec<u8> {
    use wraft_snapshot::format::{BodyWriter, MachineRecord, NodeSnapshotHeader};
    let header = NodeSnapshotHeader {
        format_version: version,
        index: SNAP_ID.last_index,
        term: SNAP_ID.last_term,
        membership: wraft_engine::Membership::with_voters([1, 2, 3]),
        last_timestamp_ms: 1_700_000_000_000,
        addresses: vec![(4, "127.0.0.1:7004".parse().expect("addr"))],
        machines: modules
            .iter()
            .enumerate()
            .map(|(i, m)| MachineRecord {
                name: format!("m{i}"),
                kind: "kv".into(),
                version: "0.1.0".into(),
                snapshot_format: 1,
                module_sha256: wraft_proto::digest::sha256(m),
                module_bytes: m.len() as u64,
                deployed_at: 3,
                created_at: 2,
                wasi: if i % 2 == 0 {
                    WasiProfile::None
                } else {
                    WasiProfile::Deterministic
                },
            })
            .collect(),
    };
    let mut w = BodyWriter::in_memory(&header).expect("header");
    for (i, m) in modules.iter().enumerate() {
        // From version 3 on, a node names the first machine's module by reference.
        if version >= 3 && i == 0 {
            w.module_ref(i as u32).expect("module reference");
        } else {
            w.module(i as u32, m).expect("module");
        }
    }
    let mut sessions = wraft_engine::SessionTable::new(10, 1000);
    let tag = ClientTag {
        client_id: 9,
        seq: 1,
    };
    sessions.open(tag.client_id, 5);
    assert_eq!(sessions.admit(tag, 5), wraft_engine::SessionCheck::Fresh);
    sessions.complete(tag, Bytes::from_static(b"out"));
    w.sessions(&sessions).expect("sessions");
    if version >= 2 {
        let limits: Vec<Option<MachineLimits>> = (0..modules.len())
            .map(|i| {
                (i % 2 == 1).then_some(MachineLimits {
                    fuel_per_entry: 1000,
                    fuel_per_call: 2000,
                    memory_bytes_max: 1 << 20,
                    output_bytes_max: 4096,
                })
            })
            .collect();
        w.limits(&limits).expect("limits");
    }
    for i in 0..modules.len() {
        w.machine_begin(i as u32).expect("begin");
        for c in chunks {
            w.machine_chunk(c).expect("chunk");
        }
        let bytes = chunks.iter().map(|c| c.len() as u64).sum();
        w.machine_end(chunks.len() as u64, bytes).expect("end");
    }
    w.into_body(modules.len() as u32).expect("end frame")
}

fn node_snapshots(out: &mut Vec<Seed>) {
    let t = "node_snapshot_parse";
    let modules: [&[u8]; 2] = [b"\0asm module zero", b"\0asm module one"];
    let chunks: [&[u8]; 2] = [b"{\"a\":1,\"b\":2}", &[7u8; 300]];
    let two = node_snapshot_body(2, &modules, &chunks);
    push(out, t, "two-machines", [&[0u8][..], &two].concat());
    push(out, t, "two-machines-resealed", [&[1u8][..], &two].concat());
    let by_ref = node_snapshot_body(3, &modules, &chunks);
    push(
        out,
        t,
        "module-by-reference",
        [&[0u8][..], &by_ref].concat(),
    );
    let v1 = node_snapshot_body(1, &modules[..1], &chunks[..1]);
    push(out, t, "version-1", [&[0u8][..], &v1].concat());
    let none = node_snapshot_body(2, &[], &[]);
    push(out, t, "no-machines", [&[0u8][..], &none].concat());
    let mut cut = two.clone();
    cut.truncate(two.len() - 3);
    push(out, t, "truncated", [&[1u8][..], &cut].concat());
}

fn offer(version: u16, file_len: u64, chunk_bytes: u32) -> wraft_snapshot::wire::Offer {
    wraft_snapshot::wire::Offer {
        magic: wraft_snapshot::wire::OFFER_MAGIC,
        version,
        id: SNAP_ID,
        digest: [0xd1; 32],
        file_len,
        chunk_bytes,
        leader_term: 3,
    }
}

fn transfer_offers(out: &mut Vec<Seed>) {
    use wraft_snapshot::wire::{KIND_OFFER, KIND_REPLY, encode_offer};
    let t = "transfer_offer";
    let v = wraft_snapshot::TRANSFER_PROTOCOL_VERSION;
    let frame = |kind: u8, o| [vec![kind], encode_offer(&o).expect("offer")].concat();
    push(
        out,
        t,
        "offer",
        frame(KIND_OFFER, offer(v, 24 << 20, 1 << 20)),
    );
    push(
        out,
        t,
        "offer-full-file-version",
        frame(
            KIND_OFFER,
            offer(
                wraft_snapshot::wire::TRANSFER_PROTOCOL_VERSION_FULL,
                24 << 20,
                1 << 20,
            ),
        ),
    );
    push(
        out,
        t,
        "future-version",
        frame(KIND_OFFER, offer(v + 1, 24 << 20, 1 << 20)),
    );
    push(
        out,
        t,
        "chunk-zero",
        frame(KIND_OFFER, offer(v, 24 << 20, 0)),
    );
    push(
        out,
        t,
        "chunk-too-big",
        frame(KIND_OFFER, offer(v, 24 << 20, 32 << 20)),
    );
    push(
        out,
        t,
        "file-too-short",
        frame(KIND_OFFER, offer(v, 10, 1 << 20)),
    );
    push(
        out,
        t,
        "wrong-kind",
        frame(KIND_REPLY, offer(v, 24 << 20, 1 << 20)),
    );
    push(out, t, "junk", [&[KIND_OFFER][..], &[0xff; 7]].concat());
}

fn transfer_replies(out: &mut Vec<Seed>) {
    use crate::{TRANSFER_CHUNK_BYTES, TRANSFER_DIGEST, TRANSFER_FILE_BYTES};
    use wraft_snapshot::wire::{KIND_REPLY, Reply, encode_reply};
    let t = "transfer_reply";
    let chunk = u64::from(TRANSFER_CHUNK_BYTES);
    let seq = |replies: &[Reply]| -> Vec<u8> {
        let mut v = Vec::new();
        for r in replies {
            let p = encode_reply(r).expect("reply");
            v.push(KIND_REPLY);
            v.push(u8::try_from(p.len()).expect("short reply"));
            v.extend(p);
        }
        v
    };
    let all = [
        Reply::Accept { resume_from: 0 },
        // A follower that sends heartbeats repeats its resume offset first.
        Reply::Durable { offset: 0 },
        Reply::Durable { offset: 2 * chunk },
        Reply::Nack { offset: 3 * chunk },
        Reply::Durable {
            offset: TRANSFER_FILE_BYTES,
        },
        Reply::Verifying,
        Reply::Received {
            digest: TRANSFER_DIGEST,
        },
    ];
    push(out, t, "accept-acks-nack-received", seq(&all));
    let resumed = [
        Reply::Accept {
            resume_from: 2 * chunk,
        },
        Reply::Nack { offset: 5 * chunk },
        Reply::Verifying,
        Reply::Received { digest: [0; 32] },
    ];
    push(out, t, "resumed-then-digest-mismatch", seq(&resumed));
    push(
        out,
        t,
        "busy",
        seq(&[Reply::Busy {
            in_flight: 2,
            limit: 2,
        }]),
    );
    push(
        out,
        t,
        "already-arriving",
        seq(&[Reply::AlreadyArriving {
            from: 3,
            leader_term: 7,
            idle_ms: 40,
        }]),
    );
    push(out, t, "already-have", seq(&[Reply::AlreadyHave]));
    let reject = Reply::Reject {
        reason: "chunk size 0 bytes is outside 1..=16777216 (chunk_bytes_max)".into(),
    };
    push(out, t, "reject", seq(&[reject]));
    let failed = [
        Reply::Accept { resume_from: 0 },
        Reply::Failed {
            reason: "disk full".into(),
        },
    ];
    push(out, t, "accept-then-failed", seq(&failed));
}

fn transfer_chunks(out: &mut Vec<Seed>) {
    use crate::TRANSFER_CHUNK_BYTES;
    use wraft_snapshot::wire::{ChunkHeader, encode_chunk_header};
    let t = "transfer_chunk";
    let chunk = u64::from(TRANSFER_CHUNK_BYTES);
    let data = |i: u64| -> Vec<u8> {
        (0..TRANSFER_CHUNK_BYTES)
            .map(|b| (b as u64 * 31 + i) as u8)
            .collect()
    };
    let good = |i: u64| [encode_chunk_header(i * chunk, &data(i)).to_vec(), data(i)].concat();
    let damaged = |i: u64| {
        let mut d = data(i);
        d[17] ^= 0x08;
        [encode_chunk_header(i * chunk, &data(i)).to_vec(), d].concat()
    };
    // Resumed two chunks before the end, both arrive: the file is complete.
    push(
        out,
        t,
        "resume-near-end-complete",
        [vec![0, 8, 14], good(14), good(15)].concat(),
    );
    // Chunk 0 arrives damaged and is Nacked; chunk 1 was already in flight (stale); then both.
    let nack = [vec![0, 8, 0], damaged(0), good(1), good(0), good(1)].concat();
    push(out, t, "nack-stale-resend", nack);
    // The same chunk damaged three times with chunk_retries_max 2.
    let exhausted = [vec![0, 2, 0], damaged(0), damaged(0), damaged(0)].concat();
    push(out, t, "retries-exhausted", exhausted);
    let mut bad_header = good(0);
    bad_header[6] ^= 0x10;
    push(
        out,
        t,
        "damaged-header",
        [vec![0, 8, 0], bad_header].concat(),
    );
    // A header with the reserved flags set (its CRC covers them): accepted.
    let mut flags = ChunkHeader::for_data(0, &data(0)).encode();
    flags[3] = 1;
    let c = crc32c::crc32c(&flags[..20]);
    flags[20..24].copy_from_slice(&c.to_le_bytes());
    push(
        out,
        t,
        "flags-set",
        [vec![0, 8, 0], flags.to_vec(), data(0)].concat(),
    );
    // Header fields written by hand, both CRCs left to the resealing mode.
    let mut raw = vec![3, 8, 0];
    raw.extend(b"WC\x01\x00");
    raw.extend(0u64.to_le_bytes());
    raw.extend(100u32.to_le_bytes());
    raw.extend([0u8; 8]);
    raw.extend([0x5au8; 100]);
    push(out, t, "resealed-by-mode", raw);
}

fn transfer_manifests(out: &mut Vec<Seed>) {
    use crate::MANIFEST_FILE_BYTES;
    use wraft_snapshot::wire::{KIND_MANIFEST, ManifestPart};
    let t = "transfer_manifest";
    let part = |lens: &[u32], last: bool| -> Vec<u8> {
        let p = ManifestPart {
            segments: lens
                .iter()
                .enumerate()
                .map(|(i, &l)| (l, [(i as u8).wrapping_mul(17); 32]))
                .collect(),
            last,
        };
        let payload = wraft_transport::frame::encode_payload(&p).expect("part");
        let mut v = vec![KIND_MANIFEST];
        v.extend(
            u16::try_from(payload.len())
                .expect("short part")
                .to_le_bytes(),
        );
        v.extend(payload);
        v
    };
    let quarter = (MANIFEST_FILE_BYTES / 4) as u32;
    // Four segments in two parts; segments 0 and 2 held; from scratch.
    let two_parts = [
        vec![0, 2, 0, 34],
        part(&[quarter, quarter], false),
        part(&[quarter, quarter], true),
    ]
    .concat();
    push(out, t, "two-parts-two-held", two_parts);
    // Resumed inside the second segment, nothing held.
    let resumed = [vec![80, 0], part(&[quarter; 4], true)].concat();
    push(out, t, "resumed-inside-a-segment", resumed);
    // Many small segments, every other one held.
    let small = vec![(MANIFEST_FILE_BYTES / 256) as u32; 256];
    let mut held = vec![0, 4];
    held.extend([0, 34, 68, 102]);
    push(out, t, "many-small", [held, part(&small, true)].concat());
    // A manifest short of the file at its last part.
    push(
        out,
        t,
        "short",
        [vec![0, 0], part(&[quarter], true)].concat(),
    );
}
