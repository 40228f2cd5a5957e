//! The node snapshot format: what goes inside the body of a `wraft_storage`
//! snapshot file.
//!
//! The storage layer already frames the file (magic, version, metadata,
//! whole-file BLAKE3 digest, atomic publish). Its body, written by this
//! module, is a sequence of self-describing frames, each with its own length
//! and CRC32C, so a reader can stream sections back one at a time and name the
//! exact frame that is damaged:
//!
//! ```text
//! frame   := kind u8 | payload_len u32 LE | crc32c(payload) u32 LE | payload
//! body    := Header (Module | ModuleRef){n} Sessions Limits (MachineBegin MachineChunk* MachineEnd){n} End
//!            (version 1 files have no Limits frame; before version 3 every module is a Module frame)
//! Header        postcard NodeSnapshotHeader (format version, index, term, membership,
//!               machine registry with module hashes, replicated address book, clock)
//! Module        machine index u32 LE ‖ the component bytes (the log entry that
//!               deployed it is compacted away; the module travels with the state)
//! ModuleRef     machine index u32 LE: the module is named by its record's SHA-256 and size and
//!               held in the node's module store (version 3 on; what a node writes, so
//!               retained snapshots do not each repeat megabytes of component). A backup
//!               carries Module frames instead (`NodeSnapshotWriter::copy_inlining_modules`)
//! Sessions      postcard SessionTable (client deduplication)
//! Limits        postcard Vec<Option<MachineLimits>>, one per machine: the replicated limits
//!               of its deploy (None: deployed before limits were replicated)
//! MachineBegin  postcard u32 machine index
//! MachineChunk  one opaque chunk of the guest's snapshot, exactly as the guest produced it
//! MachineEnd    postcard (chunks, bytes) — checked against what was read
//! End           postcard u32 number of machines; its absence means a truncated body
//! ```
//!
//! The file is a deterministic function of the replicated state at its
//! index (no local clock, hostname or path inside), so two replicas that
//! snapshot the same index produce the same bytes.
//!
//! Guest state is never held whole in memory on either side: the writer
//! appends each chunk as the guest yields it, and [`MachineChunks`] hands
//! them back one at a time to a restoring instance.
//!
//! Nothing here knows the wasm host: a restoring instance pulls chunks through
//! [`MachineChunks::next_chunk`], which `wraft-node` adapts to the host's
//! `ChunkSource`. Bodies are read through [`BodySource`] (a storage
//! [`wraft_storage::SnapshotReader`], a [`FileBody`] for `wraft snapshot inspect`, or a
//! [`MemoryBody`]) and written through [`BodySink`] (a storage
//! [`wraft_storage::SnapshotWriter`], or a `Vec<u8>`), so the whole format round-trips in memory
//! (unit tests, the `node_snapshot_parse` fuzz target).

//! | file | what |
//! |---|---|
//! | `mod.rs` | the layout: constants, [`FrameKind`], [`NodeSnapshotHeader`], [`FormatError`] |
//! | `body.rs` | where bodies come from ([`BodySource`]) and go ([`BodySink`]) |
//! | `write.rs` | [`BodyWriter`] / [`NodeSnapshotWriter`]: frame by frame, as the guest yields chunks |
//! | `read.rs` | [`NodeSnapshot::open`] / [`NodeSnapshot::parse`], and [`MachineChunks`] |

mod body;
mod read;
mod write;

use serde::{Deserialize, Serialize};
use wraft_engine::Membership;
use wraft_proto::WasiProfile;

pub use body::{BodySink, BodySource, FileBody, MemoryBody};
pub use read::{MachineChunks, MachineSection, NodeSnapshot};
pub use write::{BodyWriter, NodeSnapshotWriter};

/// `SnapshotMeta::format` of every node snapshot file written by this version.
pub const NODE_SNAPSHOT_FORMAT: &str = "wraft-node/1";
/// Version of [`NodeSnapshotHeader`] and the frame layout written. Version 2 adds the
/// [`FrameKind::Limits`] frame (each machine's replicated limits); version 3 lets a machine's
/// module be a [`FrameKind::ModuleRef`] instead of its bytes. Version 1 and 2 files are still
/// read, a version 1 file's machines running with the node's configured limits as they did.
pub const NODE_SNAPSHOT_VERSION: u32 = 3;
/// First version whose modules may be [`FrameKind::ModuleRef`] frames.
pub const MODULE_REF_VERSION: u32 = 3;
/// Bytes of a frame header (kind, length, CRC32C).
pub const FRAME_HEADER_BYTES: u64 = 9;
/// Largest frame payload accepted by the reader, bytes (a module or a guest
/// chunk); bounds the reader's memory on a damaged or hostile file.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 256 << 20;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// [`NodeSnapshotHeader`].
    Header = 1,
    /// A machine's component bytes.
    Module = 2,
    /// The client-session table.
    Sessions = 3,
    /// Each machine's replicated limits (version 2 on).
    Limits = 4,
    /// A machine's module, by reference (version 3 on).
    ModuleRef = 5,
    /// Start of a machine's guest snapshot.
    MachineBegin = 0x10,
    /// One chunk of guest snapshot.
    MachineChunk = 0x11,
    /// End of a machine's guest snapshot.
    MachineEnd = 0x12,
    /// End of the body.
    End = 0x7f,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Header,
            2 => Self::Module,
            3 => Self::Sessions,
            4 => Self::Limits,
            5 => Self::ModuleRef,
            0x10 => Self::MachineBegin,
            0x11 => Self::MachineChunk,
            0x12 => Self::MachineEnd,
            0x7f => Self::End,
            _ => return None,
        })
    }
}

/// One machine in the registry at the snapshot's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// Machine name (what clients address).
    pub name: String,
    /// Guest kind (`info().name`).
    pub kind: String,
    /// Guest version (`info().version`).
    pub version: String,
    /// The guest's snapshot format; passed to `restore`.
    pub snapshot_format: u32,
    /// SHA-256 of the component, checked against the Module frame (or, for a ModuleRef, by
    /// whoever supplies the bytes).
    pub module_sha256: [u8; 32],
    /// Length of the component, bytes.
    pub module_bytes: u64,
    /// Log index that deployed the running version.
    pub deployed_at: u64,
    /// Log index that deployed the first version of this incarnation of the
    /// machine (a removed and redeployed name is a new incarnation).
    pub created_at: u64,
    /// The WASI profile the machine was deployed with: a restore must link
    /// the same imports every replica linked when applying its log.
    pub wasi: WasiProfile,
}

/// The first frame: everything but the bulk data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshotHeader {
    /// [`NODE_SNAPSHOT_VERSION`].
    pub format_version: u32,
    /// Last log index covered.
    pub index: u64,
    /// Term of `index`.
    pub term: u64,
    /// Membership in effect at `index`.
    pub membership: Membership,
    /// The applier's monotonic entry clock at `index` (the leader-assigned
    /// timestamp guests saw last), ms since the Unix epoch. There is
    /// deliberately no local wall-clock creation time: every field is a
    /// function of the replicated state at `index`, so replicas that
    /// snapshot at the same index write byte-identical files (same digest),
    /// and a transfer interrupted by a leader change resumes from the new
    /// leader's copy.
    pub last_timestamp_ms: u64,
    /// Replicated node addresses (`SetAddress` commands), sorted by id. [`PeerAddr`] encodes
    /// an IP address exactly as `SocketAddr` did, so headers written before names were
    /// allowed decode unchanged and the format version stays (pinned in the tests).
    ///
    /// [`PeerAddr`]: wraft_proto::PeerAddr
    pub addresses: Vec<(u64, wraft_proto::PeerAddr)>,
    /// The machine registry, in section order.
    pub machines: Vec<MachineRecord>,
}

/// Why a node snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Storage failed (I/O, limits, digest).
    #[error(transparent)]
    Storage(#[from] wraft_storage::StorageError),
    /// The body does not follow the format.
    #[error(
        "node snapshot {file}: {what} at body offset {offset}: expected {expected}, found {found}"
    )]
    Invalid {
        /// File (or snapshot id) being read.
        file: String,
        /// What was being checked.
        what: &'static str,
        /// Byte offset within the body.
        offset: u64,
        /// What the format requires.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// Reading the file failed.
    #[error("node snapshot {file}: {detail}")]
    Io {
        /// File being read.
        file: String,
        /// What failed.
        detail: String,
    },
}

#[cfg(test)]
mod tests;
