//! `wraft-proto`: what travels between applications and a wraft cluster, and what its log
//! holds.
//!
//! - The client protocol: [`Request`], [`Response`], [`Reply`], [`RequestError`], on QUIC
//!   streams framed as [`KIND_REQUEST`] / [`KIND_RESPONSE`].
//! - The replicated command format: [`Command`], the payload of every log entry wraft itself
//!   writes (deploys, machine commands, session registrations, checkpoints).
//! - [`WasiProfile`] and [`MachineLimits`], which deploys carry to every replica.
//! - [`digest`]: SHA-256 naming and hex, the one home of both.
//! - [`encode`]: postcard into a `Vec`, without a `memcpy` call per varint.
//!
//! Everything is encoded with postcard inside checksummed, versioned frames
//! (`wraft-transport`'s framing). Adding a variant at the end of an enum is a
//! compatible change; anything else bumps [`CLIENT_PROTOCOL_VERSION`].
//!
//! This crate does no I/O and needs only serde and postcard (and small helpers: sha2,
//! thiserror): the client, the node and the fuzz targets all depend on it, so an application
//! builds none of the wasm host.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

mod addr;
pub mod digest;
pub mod encode;
mod wasi_profile;

pub use addr::{HOST_NAME_BYTES_MAX, PeerAddr, PeerAddrError};

pub use wasi_profile::{DETERMINISTIC_WASI_IMPORTS, WasiProfile};

/// Frame kind of a client request on a client stream (`wraft-transport` framing).
pub const KIND_REQUEST: u8 = 0x20;
/// Frame kind of the node's response on a client stream.
pub const KIND_RESPONSE: u8 = 0x21;
/// QUIC application error code (RESET_STREAM) of a response stream the node gave up on: the
/// client did not take the response within the node's `client.response_write_timeout_ms`.
/// Distinct from the transport's codes 0–3.
pub const CODE_RESPONSE_WRITE_TIMEOUT: u32 = 0x21;

/// How a node answers, on a multiplexed stream, a request it cannot decode (a newer client's
/// or member's): `Rejected` with a message that starts with this. On a stream of its own such
/// a request gets no answer at all (the stream is closed), as from every older node; a member
/// asking something of another treats both alike, as "that node predates the request".
pub const UNREADABLE_REQUEST: &str = "this node cannot read the request";

/// Version of the client protocol carried in every request.
pub const CLIENT_PROTOCOL_VERSION: u16 = 1;

/// How fresh a query's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Linearizable: the leader confirms its leadership with a quorum
    /// (ReadIndex) and answers once it has applied up to that point.
    #[default]
    Linearizable,
    /// Served by the leader under its lease, without a quorum round trip.
    /// Safe while clocks drift less than the configured margin.
    Lease,
    /// Served by whichever node receives it, from its current state; may be
    /// arbitrarily stale.
    Stale,
}

/// Identifies a command within a client session, for exactly-once application of retries.
///
/// A session is opened with [`Request::OpenSession`]; its id is the log index of the
/// registration. A command of a session the cluster does not know (never opened, expired or
/// evicted) is refused with [`RequestError::SessionUnknown`], never applied as new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestTag {
    /// The session, as returned in [`Reply::SessionOpened`].
    pub client_id: u64,
    /// Increases by one per new command; a retry reuses it.
    pub seq: u64,
}

/// What a client asks a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Apply `command` to machine `machine` through the log.
    Propose {
        /// Deduplication tag.
        tag: RequestTag,
        /// Target machine name.
        machine: String,
        /// Command bytes (JSON for SDK guests).
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// Ask machine `machine` a read-only question.
    Query {
        /// Target machine name.
        machine: String,
        /// Request bytes.
        #[serde(with = "serde_bytes")]
        request: Vec<u8>,
        /// Freshness required.
        consistency: Consistency,
    },
    /// Deploy (or upgrade) machine `name` from a component.
    Deploy {
        /// Deduplication tag.
        tag: RequestTag,
        /// Machine name.
        name: String,
        /// The `.wasm` component.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
    /// Remove machine `name` and its state.
    RemoveMachine {
        /// Deduplication tag.
        tag: RequestTag,
        /// Machine name.
        name: String,
    },
    /// List deployed machines.
    Machines,
    /// Node and cluster status.
    Status,
    /// Add a non-voting member.
    AddLearner {
        /// New node's id.
        id: u64,
        /// Its QUIC address (an IP address or a DNS name, resolved on every connect).
        addr: PeerAddr,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// The learner.
        id: u64,
    },
    /// Remove a member (voter or learner), possibly the leader itself.
    RemoveMember {
        /// The member.
        id: u64,
    },
    /// Hand leadership to `to`.
    TransferLeader {
        /// The target voter.
        to: u64,
    },
    /// Take a snapshot of this node's machines now (at its applied index).
    /// Answered at once with [`Reply::SnapshotStarted`] (joining a snapshot
    /// already in flight); `Rejected` if there is nothing new to snapshot.
    SnapshotTrigger,
    /// List this node's complete snapshots.
    Snapshots,
    /// [`Request::Deploy`] with a WASI profile: the machine may import what `wasi` provides.
    DeployWith {
        /// Deduplication tag.
        tag: RequestTag,
        /// Machine name.
        name: String,
        /// The `.wasm` component.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        /// The machine's WASI profile (replicated: every node links the same imports).
        wasi: WasiProfile,
    },
    /// Change this node's cap on outgoing snapshot bandwidth (all its
    /// transfers together) from now on, including transfers already running
    /// (from their next chunk). Node-local and not persisted: a restart goes
    /// back to `snapshot.transfer_bytes_per_sec_max`. Answered with
    /// [`Reply::Done`].
    SetTransferRate {
        /// Bytes per second; 0 lifts the cap.
        bytes_per_sec: u64,
    },
    /// Open a client session through the log; answered with [`Reply::SessionOpened`]. A
    /// retry opens another session (harmless: an unused session expires).
    OpenSession,
    // --- backup (`wraft snapshot save`) ---
    /// Read up to `bytes_max` bytes (at most [`SNAPSHOT_READ_BYTES_MAX`]) of the raw file of
    /// this node's complete snapshot `index`/`term` (as listed by [`Request::Snapshots`]),
    /// from byte `offset`. Answered with [`Reply::SnapshotChunk`]; an empty chunk means
    /// `offset` is the end of the file. Admin clients only (`client.admin_clients`). Served
    /// off the driver; the snapshot is pinned only while one chunk is read, so a snapshot
    /// retired between two reads answers `Rejected` (start the download again).
    SnapshotRead {
        /// Last log index the snapshot covers.
        index: u64,
        /// Its term.
        term: u64,
        /// File offset of the first byte wanted.
        offset: u64,
        /// Most bytes wanted.
        bytes_max: u64,
    },
    // ---- Node information (`wraft status` shows each node's version) ----
    // A new request rather than a field of `Status`: a postcard struct cannot grow a field
    // without breaking decoding between versions, and during a rolling upgrade old and new
    // nodes and clients meet. A node older than this variant cannot decode it and closes the
    // stream; the client reports that node's version as unknown.
    /// This node's software version; answered with [`Reply::NodeInfo`].
    NodeInfo,
    // ---- Snapshot transfers in flight (the console's progress bars) ----
    /// The InstallSnapshot transfers this node is sending or receiving right now; answered
    /// with [`Reply::Transfers`]. A node older than this variant closes the stream.
    Transfers,
    // ---- Modules by hash (a deploy entry carries the module's SHA-256, not its bytes) ----
    /// Keep `module` in this node's module store under `sha256`, durably, before the deploy
    /// that names it is proposed. Sent by the deploying leader to every member; answered with
    /// [`Reply::Done`] once the bytes are on disk. A node older than this variant cannot decode
    /// it, which tells the leader to put the module in the log as before. Admin (members).
    ModulePut {
        /// SHA-256 of `module`; refused if it does not match.
        sha256: [u8; 32],
        /// The component.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
    /// Whether this node holds the module stored under `sha256`; answered with
    /// [`Reply::ModuleHeld`]. The deploying leader asks first, so that a module a member
    /// already holds is not sent again, and a member that cannot decode this (an older
    /// version) gets the module in the log instead. Admin (members).
    ModuleHas {
        /// SHA-256 of the module.
        sha256: [u8; 32],
    },
    /// The module stored under `sha256` on this node; answered with [`Reply::Module`], or
    /// `Rejected` if this node does not hold it. Admin (members).
    ModuleGet {
        /// SHA-256 of the module wanted.
        sha256: [u8; 32],
    },
    // ---- Snapshot segments between members (multi-source catch-up) ----
    /// Which of these snapshot segments (named by BLAKE3) this node's snapshots hold; answered
    /// with [`Reply::SegmentsHeld`], one flag per hash. A follower receiving a snapshot asks the
    /// other members before it asks the leader for the rest. At most
    /// [`SEGMENTS_ASKED_MAX`] hashes. Admin (members).
    SnapshotSegmentsHeld {
        /// BLAKE3 of each segment.
        hashes: Vec<[u8; 32]>,
    },
    /// The bytes of the snapshot segment with BLAKE3 `hash` (`len` bytes, at most
    /// [`SNAPSHOT_READ_BYTES_MAX`]); answered with [`Reply::Segment`], or `Rejected` if no
    /// snapshot here holds it. Admin (members).
    SnapshotSegment {
        /// BLAKE3 of the segment.
        hash: [u8; 32],
        /// Its length.
        len: u32,
    },
}

/// Most hashes one [`Request::SnapshotSegmentsHeld`] carries.
pub const SEGMENTS_ASKED_MAX: usize = 1 << 17;

impl Request {
    /// The deduplication tag of a request that carries one (commands, deploys, removals).
    pub fn tag_mut(&mut self) -> Option<&mut RequestTag> {
        match self {
            Request::Propose { tag, .. }
            | Request::Deploy { tag, .. }
            | Request::DeployWith { tag, .. }
            | Request::RemoveMachine { tag, .. } => Some(tag),
            _ => None,
        }
    }
}

/// Largest chunk a [`Request::SnapshotRead`] answers with, bytes: what one read holds in the
/// node's memory and in one response frame.
pub const SNAPSHOT_READ_BYTES_MAX: u64 = 1 << 20;

/// Why a request failed. Every variant says what the caller can do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// This node is not the leader; retry at `leader` if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Leader id and address, if this node knows them.
        leader: Option<(u64, PeerAddr)>,
    },
    /// Queues are full; back off and retry.
    #[error("busy: {0}")]
    Busy(String),
    /// The request did not complete in time; its outcome is unknown (a
    /// retry with the same tag is safe).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The request is invalid and retrying will not help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// No machine with that name is deployed.
    #[error("no machine named {0:?}")]
    NoSuchMachine(String),
    /// The machine returned a deterministic application error.
    #[error("application error {code}: {message}")]
    App {
        /// Application-defined code.
        code: u32,
        /// Its message.
        message: String,
    },
    /// The guest trapped (panic, fuel, memory) on this command. The result is
    /// recorded identically on every replica.
    #[error("machine fault: {0}")]
    MachineFault(String),
    /// Something went wrong on the node; details are in its log.
    #[error("internal error: {0}")]
    Internal(String),
    /// The command's session is unknown to the cluster (never opened, expired or evicted), so
    /// the command was not applied at this entry. If an earlier copy of it reached the log
    /// while the session existed, that copy may have been applied: the outcome of a command
    /// that was sent more than once is unknown. Open a new session for the next command.
    #[error(
        "session {client_id} is unknown (expired or evicted); the command was not applied this time"
    )]
    SessionUnknown {
        /// The session the command named.
        client_id: u64,
    },
    /// The caller's role does not allow this request (see the node's `client.admin_clients`
    /// and `client.read_only_clients`, or the token's role). Retrying will not help.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// Answer to one [`Request`].
pub type Response = Result<Reply, RequestError>;

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Output of a command, with the log index it was applied at.
    Applied {
        /// Log index of the command.
        index: u64,
        /// The machine's output.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    /// Answer of a query, with the applied index it reflects.
    Answer {
        /// Applied index the answer reflects.
        index: u64,
        /// The machine's answer.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    /// Deployed machines.
    Machines(Vec<MachineInfo>),
    /// Node status.
    Status(Box<Status>),
    /// The operation is done (membership change, transfer, snapshot…).
    Done {
        /// A human-readable summary.
        message: String,
    },
    /// A node's complete snapshots, oldest first.
    Snapshots(Vec<SnapshotListing>),
    /// A snapshot at `index` is being created (or already was in flight);
    /// poll [`Request::Snapshots`] for it.
    SnapshotStarted {
        /// Index the snapshot covers.
        index: u64,
    },
    /// A session was opened (see [`Request::OpenSession`]).
    SessionOpened {
        /// Its id: the log index of the registration. Tag commands with it, numbering them
        /// from 1.
        client_id: u64,
    },
    // --- backup (`wraft snapshot save`) ---
    /// Bytes of a snapshot file (see [`Request::SnapshotRead`]).
    SnapshotChunk {
        /// Length of the whole file, bytes.
        file_bytes: u64,
        /// The file's bytes from the requested offset (empty at the end).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    // ---- Node information ----
    /// Answer to [`Request::NodeInfo`].
    NodeInfo(NodeInfo),
    /// Answer to [`Request::Transfers`]: sends first, each direction by peer.
    Transfers(Vec<TransferStatus>),
    /// Answer to [`Request::ModuleHas`].
    ModuleHeld {
        /// Whether this node holds the module.
        held: bool,
    },
    /// Answer to [`Request::ModuleGet`]: the module's bytes (checked by the caller against the
    /// hash it asked for).
    Module {
        /// The component.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
    /// Answer to [`Request::SnapshotSegmentsHeld`]: one flag per hash asked.
    SegmentsHeld {
        /// Whether this node holds each segment.
        held: Vec<bool>,
    },
    /// Answer to [`Request::SnapshotSegment`]: its bytes (checked by the caller against the
    /// hash it asked for).
    Segment {
        /// The segment.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// One InstallSnapshot transfer in flight on a node (answer to [`Request::Transfers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// `true`: this node sends the snapshot (it leads); `false`: it receives it.
    pub sending: bool,
    /// The other node.
    pub peer: u64,
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Size of the snapshot file, bytes.
    pub file_bytes: u64,
    /// Bytes done: written to the stream (sending) or received and checked (receiving).
    pub done_bytes: u64,
    /// Where this transfer started: the follower's durable offset when it accepted the offer.
    pub resumed_from: u64,
    /// Milliseconds since the follower accepted the offer.
    pub elapsed_ms: u64,
    /// Bytes per second since then (the resumed prefix does not count); 0 at first.
    pub bytes_per_sec: u64,
}

/// What a node says about its software (answer to [`Request::NodeInfo`]). Postcard: a field
/// added here would break decoding between versions; add a new request instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: u64,
    /// The `wraft` package version the node runs (e.g. `0.1.0`).
    pub version: String,
    /// The git commit it was built from, when the build recorded one (`WRAFT_GIT_COMMIT` set
    /// at build time).
    pub commit: Option<String>,
}

/// One complete snapshot file on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotListing {
    /// Last log index covered.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// File length, bytes.
    pub file_bytes: u64,
    /// Whole-file BLAKE3 digest, hex.
    pub digest: String,
    /// Path on the node.
    pub path: String,
    /// Voters in the snapshot's membership.
    pub voters: Vec<u64>,
    /// Learners in the snapshot's membership.
    pub learners: Vec<u64>,
}

/// One deployed machine as reported by `wraft machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Deployment name.
    pub name: String,
    /// Guest-reported kind.
    pub kind: String,
    /// Guest-reported version.
    pub version: String,
    /// SHA-256 of the component, hex.
    pub module_sha256: String,
    /// Log index at which this version was deployed.
    pub deployed_at: u64,
    /// Whether the instance is healthy on this node.
    pub healthy: bool,
}

/// Replication progress of one peer, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer id.
    pub id: u64,
    /// Voter or learner.
    pub voter: bool,
    /// Highest index known replicated.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// State of the replication (probe, replicate, snapshot).
    pub state: String,
}

/// Node status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub id: u64,
    /// Leader, follower, candidate, learner…
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<u64>,
    /// Highest committed index.
    pub commit_index: u64,
    /// Highest applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_index: u64,
    /// Index of the newest snapshot (created or installed).
    pub snapshot_index: u64,
    /// First index still in the in-memory log (entries at or below the
    /// engine's floor were compacted; storage may keep more for fallback).
    pub log_first_index: u64,
    /// Index of the snapshot being created right now, if any.
    pub snapshot_creating: Option<u64>,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Per-peer progress (leader only).
    pub peers: Vec<PeerStatus>,
    /// Deployed machines.
    pub machines: Vec<MachineInfo>,
    /// Set while a node-local failure keeps this node from applying entries (a watchdog stop,
    /// the memory limit, a module that cannot be compiled or started here): what failed. Such
    /// a node serves no reads and takes no snapshots; it re-derives its state from its base
    /// snapshot and the log by itself, and gives up leadership meanwhile.
    pub apply_halted: Option<String>,
}

/// The limits of a machine that shape its results: fixed at its deploy by the deploying
/// leader's `[guest]` configuration, carried in the deploy entry and the snapshots, and applied
/// identically by every replica whatever its own configuration says. Changed only by a new
/// deploy (an upgrade) through the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MachineLimits {
    /// Fuel (≈ wasm instructions) for one entry's command; running out is a deterministic trap.
    pub fuel_per_entry: u64,
    /// Fuel for the work of one call outside its entries, and for each query.
    pub fuel_per_call: u64,
    /// Largest linear memory the machine may grow to, bytes. A memory-limit trap is decided on
    /// a canonical instance (see `node::apply`), so it is a function of the log too.
    pub memory_bytes_max: u64,
    /// Largest output of one entry or query, bytes; a larger one becomes application error
    /// `wraft_host::CODE_OUTPUT_TOO_LARGE`.
    pub output_bytes_max: u64,
}

/// A replicated command: the payload of a log entry's `Command` kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Apply bytes to a machine.
    Apply {
        /// Machine name.
        machine: String,
        /// Command bytes.
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// Deploy or upgrade a machine. The module travels in the log so every
    /// node can validate and precompile it before applying.
    Deploy {
        /// Machine name.
        name: String,
        /// SHA-256 of `module`.
        sha256: [u8; 32],
        /// The component.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
    /// Remove a machine.
    Remove {
        /// Machine name.
        name: String,
    },
    /// Record the QUIC address of a node, replicated so every member can
    /// reach a node added later. Proposed together with `AddLearner`.
    SetAddress {
        /// The node.
        id: u64,
        /// Its address. Encoded as a `SocketAddr` was for IP addresses, so entries written
        /// before names were allowed decode unchanged (see [`PeerAddr`]).
        addr: PeerAddr,
    },
    /// [`Command::Deploy`] with a WASI profile (a separate variant so that
    /// logs written before profiles existed still decode).
    DeployWith {
        /// Machine name.
        name: String,
        /// SHA-256 of `module`.
        sha256: [u8; 32],
        /// The component.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        /// Which WASI the machine may import; every replica links the same.
        wasi: WasiProfile,
    },
    /// Open a client session whose id is this entry's index (Raft thesis §6.3).
    OpenSession,
    /// Deploy or upgrade a machine with the limits every replica applies to it. What deploys
    /// propose since limits are replicated; [`Command::Deploy`] and [`Command::DeployWith`]
    /// entries of older logs keep each node's configured limits, as they had when applied.
    DeployLimited {
        /// Machine name.
        name: String,
        /// SHA-256 of `module`.
        sha256: [u8; 32],
        /// The component.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        /// Which WASI the machine may import; every replica links the same.
        wasi: WasiProfile,
        /// The limits every replica runs it with.
        limits: MachineLimits,
    },
    /// The leader's digest of every outcome up to `index` (see `node::divergence`): each
    /// replica compares its own and stops applying if they differ.
    Checkpoint {
        /// The applied index the digest covers.
        index: u64,
        /// The leader's digest after `index`.
        digest: [u8; 32],
    },
    // --- disaster recovery (`wraft recover --force-new-cluster`) ---
    /// The record of a forced membership: written by `wraft recover --force-new-cluster` on
    /// node `by` (offline, right after the configuration entry that makes `by` the only voter),
    /// so every member that applies the log later sees that the cluster was re-formed from
    /// that node's data, and from which membership. Changes no machine.
    MembershipForced {
        /// The surviving node that became the only voter.
        by: u64,
        /// Voters before.
        previous_voters: Vec<u64>,
        /// Learners before.
        previous_learners: Vec<u64>,
        /// The node's last log index before the forced entries.
        last_index: u64,
        /// Its term then.
        term: u64,
    },
    /// Deploy or upgrade a machine whose module travels out of the log: the entry names the
    /// module by its SHA-256 and size, and every member keeps the bytes in its module store
    /// (the deploying leader stores them on a majority of voters before it proposes this; a
    /// member without them fetches them by hash from another member before it applies this
    /// entry, and verifies them). What deploys propose when every member understands it; a
    /// deploy entry is then a few hundred bytes whatever the module's size.
    DeployByHash {
        /// Machine name.
        name: String,
        /// SHA-256 of the module.
        sha256: [u8; 32],
        /// Its size, bytes.
        module_bytes: u64,
        /// Which WASI the machine may import; every replica links the same.
        wasi: WasiProfile,
        /// The limits every replica runs it with.
        limits: MachineLimits,
    },
}

/// [`Command::Apply`] read in place from its encoding: the machine name and the command borrow
/// the entry's bytes. Every replica decodes every entry, and this is almost every entry; the
/// owned form cost two allocations and a copy each. Decoding any other variant with it fails
/// (it has only variant 0), so a caller falls back to [`Command`]. Decoded with the same
/// format as [`Command`] (postcard), it reads exactly the applies: pinned in the tests.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub enum ApplyRef<'a> {
    /// The same fields as [`Command::Apply`], in the same order.
    Apply {
        /// Machine name.
        machine: &'a str,
        /// Command bytes.
        #[serde(with = "serde_bytes")]
        command: &'a [u8],
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_ref(bytes: &[u8]) -> Option<(&str, &[u8])> {
        match postcard::from_bytes::<ApplyRef>(bytes) {
            Ok(ApplyRef::Apply { machine, command }) => Some((machine, command)),
            Err(_) => None,
        }
    }

    #[test]
    fn apply_ref_reads_exactly_the_apply_commands() {
        let apply = Command::Apply {
            machine: "kv".into(),
            command: b"{\"op\":\"put\"}".to_vec(),
        };
        let bytes = postcard::to_stdvec(&apply).unwrap();
        let (machine, command) = apply_ref(&bytes).expect("an apply decodes in place");
        assert_eq!((machine, command), ("kv", &b"{\"op\":\"put\"}"[..]));
        // The slices point into the entry's bytes: nothing was copied.
        assert!(bytes.as_ptr_range().contains(&command.as_ptr()));

        for other in [
            Command::Remove { name: "kv".into() },
            Command::SetAddress {
                id: 2,
                addr: "127.0.0.1:7000".parse().unwrap(),
            },
            Command::Checkpoint {
                index: 9,
                digest: [1; 32],
            },
        ] {
            let bytes = postcard::to_stdvec(&other).unwrap();
            assert_eq!(apply_ref(&bytes), None, "{other:?}");
        }
        // Every size of name and command (one- and two-byte length prefixes, empty ones).
        for (name_len, cmd_len) in [(1, 0), (127, 128), (128, 127), (300, 20_000)] {
            let machine: String = "m".repeat(name_len);
            let command: Vec<u8> = (0..cmd_len).map(|i| i as u8).collect();
            let bytes = postcard::to_stdvec(&Command::Apply {
                machine: machine.clone(),
                command: command.clone(),
            })
            .unwrap();
            assert_eq!(
                apply_ref(&bytes),
                Some((machine.as_str(), &command[..])),
                "name {name_len} B, command {cmd_len} B"
            );
        }
        // Cut short or not UTF-8: no borrowed form (and the owned decode says why).
        assert_eq!(apply_ref(&bytes[..bytes.len() - 1]), None);
        let bad_name = [0, 2, 0xff, 0xfe, 0];
        assert_eq!(apply_ref(&bad_name), None);
        assert!(postcard::from_bytes::<Command>(&bad_name).is_err());
    }

    /// Byte payloads are `serde_bytes` so that decoding them is one copy,
    /// not a visitor call per byte (which cost seconds for a few MB in debug
    /// builds, on the node's async workers). In postcard a byte string and a
    /// sequence of `u8` are both "varint length, then the raw bytes", so logs
    /// and frames written before the change decode unchanged: pinned here.
    #[test]
    fn byte_payloads_keep_the_sequence_encoding_of_earlier_logs() {
        let cmd = Command::Apply {
            machine: "m".into(),
            command: vec![7; 200],
        };
        let bytes = postcard::to_stdvec(&cmd).unwrap();
        let mut expected = vec![0, 1, b'm', 200, 1];
        expected.extend([7; 200]);
        assert_eq!(bytes, expected);

        /// The shape the type had before: `Vec<u8>` as a sequence.
        #[derive(Serialize)]
        enum Before {
            Apply { machine: String, command: Vec<u8> },
        }
        let before = postcard::to_stdvec(&Before::Apply {
            machine: "m".into(),
            command: vec![7; 200],
        })
        .unwrap();
        assert_eq!(before, bytes);
        match postcard::from_bytes::<Command>(&before).unwrap() {
            Command::Apply { machine, command } => {
                assert_eq!((machine.as_str(), command), ("m", vec![7; 200]));
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
