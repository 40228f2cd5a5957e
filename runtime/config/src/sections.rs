//! The sections of the configuration file, each with its keys, units and defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::PeerAddr;

/// `[node]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's id (≥ 1), which its certificate must name.
    pub id: u64,
    /// Directory holding the log, hard state, snapshots and module cache.
    pub data_dir: PathBuf,
    /// UDP address the QUIC endpoint binds (Raft, bulk and client traffic): an IP address,
    /// `0.0.0.0:7000` for every interface. Peers reach the node at its address in
    /// `cluster.members`, which may be a DNS name.
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint; none disables it.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Threads of the node's async runtime, which runs QUIC, the Raft driver and client
    /// serving; 0 (the default) leaves it to tokio: one per CPU, or `TOKIO_WORKER_THREADS`.
    /// The log writer and each machine have a thread of their own either way. When several
    /// nodes share a machine (a local test cluster), give each about CPUs ÷ nodes: idle
    /// workers woken for every packet cost more than they help (BENCHMARKS.md, series h).
    /// Read by `wraft node`; a node started in-process with `Node::start` runs on its
    /// caller's runtime.
    #[serde(default)]
    pub worker_threads: u64,

    // ---- health endpoints and logs (`/readyz`, `/livez`, `--log-format`) ----
    /// How `wraft node` writes its log to stderr: `text` (the default; coloured only when stderr
    /// is a terminal) or `json` (one object per line with `timestamp`, `level`, `target` and
    /// `fields`, for log shippers). `wraft node --log-format` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `/readyz` answers 503 while this node's applied index is more than this many entries
    /// behind the leader's commit index as this node last heard it. Default 1000; 0..=2^40.
    #[serde(default = "default_readyz_lag_entries_max")]
    pub readyz_lag_entries_max: u64,
    /// `/readyz` answers 503 when a follower has not heard from its leader for longer than this
    /// (or when the driver has not published its state for as long). Default 3000; must be at
    /// least `raft.heartbeat_interval_ms`; ..=3 600 000.
    #[serde(default = "default_readyz_leader_contact_ms_max")]
    pub readyz_leader_contact_ms_max: u64,
    /// How long a stop (SIGTERM, SIGINT) may take, milliseconds: a leader hands leadership to
    /// the most caught-up voter and the client calls in flight are answered within it; after
    /// it the node exits anyway (its log is durable either way) and logs what was cut short.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,

    // ---- watch history (node-local; subscribers resume from it) ----
    /// Most applied results (one per applied command, deploy or removal) this node keeps in
    /// memory for watch subscribers to resume from; older ones fall out and a subscriber asking
    /// for them is told to resynchronise (read, then watch from the applied index). Never
    /// replicated, not in snapshots. Default 100 000; 1..=100 000 000.
    #[serde(default = "default_watch_history_entries_max")]
    pub watch_history_entries_max: u64,
    /// Most bytes the watch history holds (commands, outputs and messages, plus 64 per
    /// result), bytes. Default 67 108 864 (64 MiB); 65 536..=2^36.
    #[serde(default = "default_watch_history_bytes_max")]
    pub watch_history_bytes_max: u64,
}

/// Log output format of `wraft node` (`node.log_format`, `--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; ANSI colour only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Default of `node.readyz_lag_entries_max`.
pub const READYZ_LAG_ENTRIES_MAX_DEFAULT: u64 = 1_000;
/// Default of `node.readyz_leader_contact_ms_max`.
pub const READYZ_LEADER_CONTACT_MS_MAX_DEFAULT: u64 = 3_000;

fn default_readyz_lag_entries_max() -> u64 {
    READYZ_LAG_ENTRIES_MAX_DEFAULT
}

fn default_readyz_leader_contact_ms_max() -> u64 {
    READYZ_LEADER_CONTACT_MS_MAX_DEFAULT
}

/// Default of `node.shutdown_timeout_ms`.
pub const SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Upper bound of `node.shutdown_timeout_ms` (systemd's default `TimeoutStopSec` is 90 s).
pub const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 600_000;

fn default_shutdown_timeout_ms() -> u64 {
    SHUTDOWN_TIMEOUT_MS_DEFAULT
}

/// Default of `node.watch_history_entries_max`.
pub const WATCH_HISTORY_ENTRIES_MAX_DEFAULT: u64 = 100_000;
/// Upper bound of `node.watch_history_entries_max`.
pub const WATCH_HISTORY_ENTRIES_MAX_MAX: u64 = 100_000_000;
/// Default of `node.watch_history_bytes_max`: 64 MiB.
pub const WATCH_HISTORY_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Lower bound of `node.watch_history_bytes_max`: 64 KiB.
pub const WATCH_HISTORY_BYTES_MAX_MIN: u64 = 64 << 10;
/// Upper bound of `node.watch_history_bytes_max`: 64 GiB.
pub const WATCH_HISTORY_BYTES_MAX_MAX: u64 = 1 << 36;

fn default_watch_history_entries_max() -> u64 {
    WATCH_HISTORY_ENTRIES_MAX_DEFAULT
}

fn default_watch_history_bytes_max() -> u64 {
    WATCH_HISTORY_BYTES_MAX_DEFAULT
}

/// `[cluster]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Initial voting members (id → QUIC address, `ip:port` or `dns-name:port`; a name is
    /// resolved again on every reconnect). Used to bootstrap a new cluster when the data
    /// directory is empty and this node is listed; a node not listed here starts empty and
    /// waits to be added as a learner.
    pub members: BTreeMap<u64, PeerAddr>,
    /// Addresses of other nodes known to this one, e.g. a learner joining
    /// later (id → address). Merged with `members` into the address book.
    #[serde(default)]
    pub peers: BTreeMap<u64, PeerAddr>,
}

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Directory written by `wraft cert`: `ca.pem`, `node-<id>.pem`,
    /// `node-<id>.key`.
    pub dir: PathBuf,
}

/// `[raft]` — all times in milliseconds of wall clock; the driver turns them
/// into engine ticks of `tick_interval_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Length of one engine tick.
    pub tick_interval_ms: u64,
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout; the upper bound is
    /// twice this.
    pub election_timeout_ms: u64,
    /// Most AppendEntries messages in flight to one follower.
    #[serde(alias = "max_inflight_append_msgs")]
    pub inflight_append_msgs_max: u64,
    /// Most entries in one AppendEntries message.
    #[serde(alias = "max_append_entries")]
    pub append_entries_max: u64,
    /// Most payload bytes in one AppendEntries message.
    #[serde(alias = "max_append_bytes")]
    pub append_bytes_max: u64,
    /// Most proposals waiting to be appended; beyond it clients get `Busy`.
    #[serde(alias = "max_pending_proposals")]
    pub pending_proposals_max: u64,
    /// Serve `lease` reads from the leader without a quorum round trip.
    pub lease_reads: bool,
    /// As leader, propose a divergence checkpoint (its digest of every outcome so far) after
    /// this many applied entries; every replica compares its own and stops applying on a
    /// mismatch. 0 turns proposing off (replicas still check checkpoints others propose).
    /// Default 1024.
    pub divergence_check_entries: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        Self {
            tick_interval_ms: 10,
            heartbeat_interval_ms: 50,
            election_timeout_ms: 500,
            inflight_append_msgs_max: 64,
            append_entries_max: 4096,
            append_bytes_max: 4 << 20,
            pending_proposals_max: 65_536,
            lease_reads: true,
            divergence_check_entries: 1024,
        }
    }
}

/// How hard the node tries to make writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// `fdatasync` before acknowledging anything (the default).
    Durable,
    /// Never sync. A power loss can lose acknowledged writes and, if it hits
    /// a majority at once, break Raft's guarantees. Benchmarks only.
    Relaxed,
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Durability of the log and hard state.
    pub fsync: FsyncPolicy,
    /// Size at which a log segment is sealed and a new one started.
    pub segment_bytes: u64,
    /// Zero-filled space kept written ahead of the log's end, so that a sync
    /// flushes the new records alone and not the file system's journal too
    /// (0 turns it off).
    pub preallocate_bytes: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Durable,
            segment_bytes: 64 << 20,
            preallocate_bytes: 1 << 20,
        }
    }
}

/// Where a follower's snapshot of its machines comes from (`snapshot.follower_export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotExport {
    /// The running machines, exported at the cut (the default). The follower's applies pause
    /// for the export, so reads it serves, its watch streams and its readiness wait; consensus
    /// does not (its acknowledgements never wait for the applier). A follower that becomes a
    /// pre-candidate, candidate or leader abandons the export before its next chunk and takes
    /// the snapshot from shadows instead.
    Live,
    /// Shadow instances restored from the previous snapshot and replayed up to the cut, on
    /// another thread: nothing pauses, but every entry since the previous snapshot is applied a
    /// second time and the state is held twice while it is exported. What a leader always uses.
    Shadow,
}

impl SnapshotExport {
    /// The config value: `"live"` or `"shadow"` (also the label of metrics and log lines).
    pub fn name(self) -> &'static str {
        match self {
            SnapshotExport::Live => "live",
            SnapshotExport::Shadow => "shadow",
        }
    }
}

/// `[snapshot]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    /// Snapshot after this many entries applied past the last snapshot; 0
    /// disables the trigger.
    pub hint_threshold_entries: u64,
    /// Snapshot when the live log above the snapshot holds more entries than
    /// this; 0 disables the guardrail.
    #[serde(alias = "max_log_entries")]
    pub log_entries_max: u64,
    /// Snapshots kept on disk (the newest N).
    pub retain_count: u64,
    /// Entries kept behind a snapshot for followers that are slightly behind.
    pub log_retain_margin_entries: u64,
    /// Size of one chunk of an InstallSnapshot stream.
    pub chunk_bytes: u64,
    /// Cap on this node's outgoing snapshot bandwidth, all transfers together, bytes per
    /// second; 0 means unlimited. Changeable at runtime with `wraft snapshot rate`.
    pub transfer_bytes_per_sec_max: u64,
    /// A transfer making no progress for this long is aborted and re-offered.
    pub transfer_progress_timeout_ms: u64,
    /// Most incoming transfers at once; more are answered `Busy`.
    pub incoming_transfers_max: u64,
    /// Where a follower's snapshot comes from: `"live"` or `"shadow"` ([`SnapshotExport`]).
    pub follower_export: SnapshotExport,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        Self {
            hint_threshold_entries: 100_000,
            log_entries_max: 1_000_000,
            retain_count: 2,
            log_retain_margin_entries: 10_000,
            chunk_bytes: 1 << 20,
            transfer_bytes_per_sec_max: 0,
            transfer_progress_timeout_ms: 10_000,
            incoming_transfers_max: 2,
            follower_export: SnapshotExport::Live,
        }
    }
}

/// `[guest]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestSection {
    /// Largest module accepted by `deploy`.
    pub module_bytes_max: u64,
    /// Largest linear memory one machine instance may grow to. Replicated: a deploy proposed
    /// through this node carries it, and every replica runs the machine with that value.
    pub memory_bytes_max: u64,
    /// Fuel (≈ wasm instructions) for the work of one call outside its entries, and for each
    /// query. Replicated like `memory_bytes_max`.
    pub fuel_per_call: u64,
    /// Fuel for one entry's command; running out is a deterministic trap. Replicated like
    /// `memory_bytes_max`. Default 100 000 000.
    pub fuel_per_entry: u64,
    /// Largest output of one entry or query, bytes; a larger one becomes an application error.
    /// Replicated like `memory_bytes_max`. Default 16 MiB.
    pub output_bytes_max: u64,
    /// Wall-clock watchdog for one guest call, milliseconds: a node-local safety net behind
    /// fuel. A call it stops is never a result: the node retries on a rebuilt instance, then
    /// halts applying until it can re-derive its state (see `wraft status`). Default 10 000;
    /// 10..=3 600 000.
    pub watchdog_ms: u64,
    /// Directory of compiled modules (default `<data_dir>/modules`). Nodes on one machine may
    /// share one: entries are named by content and engine hash, checksummed, and written
    /// atomically, so a shared cache compiles each module once (a 12–18 MB JavaScript or
    /// Python component takes tens of seconds of Cranelift).
    #[serde(default)]
    pub module_cache_dir: Option<PathBuf>,
}

impl GuestSection {
    /// The limits a deploy proposed through this node carries (and every replica applies).
    pub fn machine_limits(&self) -> wraft_proto::MachineLimits {
        wraft_proto::MachineLimits {
            fuel_per_entry: self.fuel_per_entry,
            fuel_per_call: self.fuel_per_call,
            memory_bytes_max: self.memory_bytes_max,
            output_bytes_max: self.output_bytes_max,
        }
    }
}

impl Default for GuestSection {
    fn default() -> Self {
        Self {
            module_bytes_max: 32 << 20,
            memory_bytes_max: 1 << 30,
            fuel_per_call: 1_000_000_000,
            fuel_per_entry: 100_000_000,
            output_bytes_max: 16 << 20,
            watchdog_ms: 10_000,
            module_cache_dir: None,
        }
    }
}

/// `[client]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// Largest command or query accepted from a client.
    pub command_bytes_max: u64,
    /// Most client connections served at once.
    pub connections_max: u64,
    /// A request not answered within this time gets `Timeout`. A request must also arrive
    /// whole within it, without pausing for longer; one bigger than `command_bytes_max` (a
    /// module, uploaded over a slow link) may take up to `deploy_timeout_ms` in all.
    pub request_timeout_ms: u64,
    /// The same for a deploy, whose outcome includes validating and compiling the module on
    /// the leader before it is proposed (an interpreter-based JS or Python component takes
    /// seconds to tens of seconds to compile). Default 300 000; 10..=3 600 000.
    pub deploy_timeout_ms: u64,
    /// Longest time, in milliseconds, a response may take to be handed to a client that reads
    /// it slowly or not at all. When it runs out the node resets the stream (QUIC application
    /// error code `wraft_proto::CODE_RESPONSE_WRITE_TIMEOUT`), dropping the unsent bytes and
    /// freeing the request's in-flight slot. Default 30 000 (a 16 MiB response needs a client
    /// reading at ≥ 0.6 MiB/s); 10..=3 600 000.
    pub response_write_timeout_ms: u64,
    /// Client certificate names (`wraft cert --clients NAME`, the URI SAN `wraft:client:NAME`)
    /// with the `admin` role: besides reading and writing, deploy and remove machines, change
    /// the membership, move leadership, take and read snapshots (`wraft snapshot save`).
    /// Default `["admin"]`.
    pub admin_clients: Vec<String>,
    /// Client certificate names with the `read` role only: queries, status, machine and
    /// snapshot lists, watch. A certificate in neither list has the `write` role (read, propose
    /// commands, open sessions). Default empty.
    pub read_only_clients: Vec<String>,
}

impl Default for ClientSection {
    fn default() -> Self {
        Self {
            command_bytes_max: 1 << 20,
            connections_max: 4096,
            request_timeout_ms: 10_000,
            deploy_timeout_ms: 300_000,
            response_write_timeout_ms: 30_000,
            admin_clients: vec!["admin".to_owned()],
            read_only_clients: Vec::new(),
        }
    }
}

/// `[http]`: the HTTP/JSON API and the web console, over HTTPS with the node's certificate.
/// Every request is authenticated: a client certificate of the cluster CA (the same
/// identities and roles as QUIC clients) or a bearer token minted by `wraft token create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// TCP address of the HTTPS listener; none (the default) serves no HTTP API.
    pub listen: Option<SocketAddr>,
    /// Most HTTP connections open at once; a connection over the bound is closed at once
    /// (clients see a reset and retry elsewhere). Default 4096; 1..=1 000 000.
    pub connections_max: u64,
    /// Time a client has to send the headers of a request (including the first one after an
    /// idle keep-alive period), milliseconds; the connection is closed after it. Default
    /// 30 000; 100..=3 600 000.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's body, milliseconds (a slow sender gets 408).
    /// Default 30 000; 100..=3 600 000.
    pub body_read_timeout_ms: u64,
    /// The key bearer tokens are signed with (32 bytes, hex, written by `wraft token create`
    /// or `wraft cert`); a relative path is taken in `tls.dir`. Without the file, tokens are
    /// refused and only client certificates work. Default `token.key`.
    pub token_key_file: PathBuf,
    /// Ids of tokens refused although signed and unexpired (the `id` `wraft token create`
    /// printed). Default empty.
    pub revoked_tokens: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: None,
            connections_max: 4096,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 30_000,
            token_key_file: PathBuf::from("token.key"),
            revoked_tokens: Vec::new(),
        }
    }
}
