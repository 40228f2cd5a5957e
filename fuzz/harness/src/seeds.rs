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
    HardState, Log, LogEntry, SnapshotId, SnapshotMeta, SnapshotStore, WriteBatch,
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
        Request::AddLearner { id: 4, addr },
        Request::Status,
        Request::OpenSession,
    ];
    let info = MachineInfo {
        name: "kv".into(),
        kind: "kv".into(),
        version: "0.1.0".into(),
        module_sha256: "ab".repeat(32),
        deployed_at: 3,
        healthy: true,
    };
    let responses: [Response; 7] = [
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
            leader: Some((2, addr)),
        }),
        Err(RequestError::App {
            code: 3,
            message: "no such key".into(),
        }),
        Ok(Reply::SessionOpened { client_id: 17 }),
        Err(RequestError::SessionUnknown { client_id: 17 }),
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
        Command::SetAddress { id: 4, addr },
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

/// A real snapshot file (header, metadata, body) for `SNAP_ID`.
pub fn real_snapshot(body: &[u8]) -> Vec<u8> {
    let fs = Arc::new(FaultFs::new());
    let (store, _) =
        SnapshotStore::open(fs.clone(), Path::new(SNAP_DIR), &storage_config()).expect("open");
    let mut w = store
        .begin(SnapshotMeta {
            id: SNAP_ID,
            membership: wraft_storage::Membership {
                voters: vec![1, 2, 3],
                learners: vec![4],
            },
            format: "wraft-machines/1".into(),
        })
        .expect("begin");
    for chunk in body.chunks(1000) {
        w.write_chunk(chunk).expect("write");
    }
    w.finish().expect("finish");
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
