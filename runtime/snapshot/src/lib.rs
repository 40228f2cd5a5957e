//! wraft's node snapshots, without the wasm host: the snapshot **file format** and
//! **InstallSnapshot over QUIC** (moving a snapshot file from a leader to a follower,
//! resumably).
//!
//! | module | what it is |
//! |---|---|
//! | [`format`](mod@format) | the node snapshot file's body: frames, header, [`format::NodeSnapshot::parse`], the writer |
//! | [`wire`] | the transfer protocol's messages: [`wire::Offer`], [`wire::Reply`], the chunk header, their limits |
//! | [`send`] | the leader's side: [`send_snapshot`], and its judgements of the replies without I/O ([`send::Acks`], [`send::judge_answer`]) |
//! | [`receive`] | the follower's side: [`receive_snapshot`], and its decisions without I/O ([`receive::decide`]) |
//! | [`limiter`] | what bounds transfers across a node: [`BandwidthLimiter`], [`IncomingSlots`] |
//! | [`pacing`] | how far and how often the leader runs ahead: the unacknowledged window, chunks under a cap, the re-offer backoff |
//! | [`manifest`] | incremental transfer: a file cut into content-addressed segments, the plan that copies held ones and fetches the rest |
//! | [`peers`] | multi-source catch-up: which segments the other members hold, reading them next to the leader's stream, [`SnapshotPeers`] |
//! | [`board`] | the node's transfers in flight and how far each has got: [`TransferBoard`] |
//!
//! **Architecture invariant:** nothing here depends on wasmtime (`wraft-host`): the
//! fuzz harness decodes these formats, and `wraft snapshot inspect` reads files, without a
//! wasm engine. Taking a snapshot of running machines and restoring one into instances is
//! `wraft-node`'s (`runtime/node/src/snapshot/`). `tests/no_host_dependency.rs` enforces it.
//!
//! # The transfer
//!
//! One transfer is one bidirectional stream on the bulk connection
//! ([`wraft_transport::Transport::open_bulk`] / [`wraft_transport::Inbound::bulk`]), so a
//! snapshot never shares flow control with the raft link.
//!
//! ```text
//! leader                                             follower
//!   Offer{magic,version,id,digest,file_len,chunk_bytes,leader_term} ->
//!           <- Accept{resume_from} | Busy | AlreadyArriving | AlreadyHave | Reject{reason}
//!                                                <- Durable{resume_from}   "I send heartbeats"
//!   Chunk{offset,len,data_crc,header_crc}+data  ->   (CRC32C checked, queued to the disk thread)
//!   ...                                          <- Durable{offset}   after each fdatasync
//!                                                <- Durable{same}     heartbeat when quiet
//!                                                <- Nack{offset}      chunk failed its CRC32C:
//!   Chunk at offset again, and everything after  ->   go back to it (nothing bad is written)
//!                                                <- Verifying         heartbeats during BLAKE3
//!                                                <- Received{digest}  verified + renamed
//! ```
//!
//! **Incremental (version 2).** A follower that holds snapshots of its own answers an offer
//! `SendManifest{resume_from}` instead of `Accept`; the transfer then sends only what it lacks:
//!
//! ```text
//!   Offer{version 2, …}                          ->
//!                                                <- SendManifest{resume_from}  (indexes its own
//!                                                                               files meanwhile)
//!   ManifestPart{segments: [(len, BLAKE3)…]}…    ->   every segment of the file, in order
//!                                                <- Fetch{ranges}…  the bytes no local file holds
//!                                                <- Durable{resume_from}, then as above
//!   Chunks of those ranges only                  ->   the rest copied from its own files,
//!                                                     in file order, by the disk thread
//! ```
//!
//! A segment is a frame of the body (a guest chunk, a module piece; see [`manifest`]); the
//! guest SDK's chunks are content-defined, so the unchanged part of a machine's state is the
//! same segments in the next snapshot. The assembled file is the leader's byte for byte and is
//! checked against its whole-file digest like any other. Resume, takeover, pacing and
//! heartbeats are unchanged: the durable offset still grows from the front, over copied and
//! received bytes alike. A follower with no snapshot of its own answers `Accept` (nothing to
//! reuse; the leader need not hash its file). What an interrupted transfer of *another* snapshot
//! made durable counts as held ([`wraft_storage::PartialSource`]): after a leader change to a
//! leader with a newer snapshot, those bytes are copied, not sent again. Each side remembers the
//! segments of the last
//! files it cut ([`manifest::SegmentCache`]), so a file is hashed once. A follower of the
//! previous release rejects version 2; the leader then offers it that snapshot in version 1,
//! and a newer one in version 2 again ([`PeerVersions`]). Neither side waits on the other's
//! hashing in silence: the manifest goes out as the file is hashed, and the follower repeats
//! `Durable{resume_from}` while it indexes its own files.
//!
//! * Control messages are postcard in `wraft_transport::frame` frames (magic, version, CRC32C).
//!   Chunks use their own 24-byte header (magic `WC`, version, offset, length, CRC32C of the data,
//!   CRC32C of the header): a corrupt chunk is rejected *by offset* and re-sent; a corrupt header
//!   is fatal for the stream (the next offer resumes from the durable offset).
//! * **Durability before acknowledgement.** The follower spools into
//!   [`wraft_storage::SnapshotStore::incoming`], syncs every `sync_every_bytes` or every
//!   `sync_interval_ms` (whichever comes first), and only then sends `Durable{offset}`. A crash
//!   loses at most the unsynced tail.
//! * **Resume** needs the same id *and* the same file: snapshots of one id taken on different
//!   nodes need not be byte-identical (guest export order, compression), so the follower compares
//!   the digest in its partial file's header with the offer's and restarts from 0 on mismatch.
//! * **One stream per snapshot.** A snapshot arrives on one stream at a time and only that
//!   stream writes its partial file. An offer of a snapshot already arriving *takes the stream
//!   over* — the old stream is cancelled, syncs and closes the file, and the new one resumes its
//!   durable prefix — when it comes from a newer leader term, from the same node, or after the
//!   stream made no progress for `takeover_idle_ms`; otherwise it is declined
//!   `AlreadyArriving{from, leader_term, idle_ms}`. An offer beyond `incoming_transfers_max`
//!   other snapshots is declined `Busy`. A declined leader backs off
//!   ([`pacing::ReofferBackoff`]: 50 ms doubling to 2 s).
//! * **Pacing**: the leader keeps at most a window of bytes written beyond the follower's
//!   durable offset ([`pacing::window_bytes`]: twice the follower's sync step without a cap, a
//!   step and 50 ms of the rate under one), so a follower that dies loses — and the next
//!   attempt re-sends — about one window; below that, QUIC flow control (stream window, bounded
//!   disk queue on the follower, one chunk read ahead on the leader); nothing buffers the whole
//!   snapshot. An optional [`BandwidthLimiter`] (governor) caps the send rate and can be changed
//!   at runtime; under a cap chunks are about 25 ms of the rate.
//! * **Timeouts are progress-based**: either side aborts after `progress_timeout_ms` without a
//!   chunk moving, an acknowledgement, or a verification heartbeat. A follower that sends
//!   heartbeats (every `heartbeat_ms` when quiet) and falls silent for `silence_timeout_ms` is
//!   presumed gone at once: a killed follower is noticed in about a second, not at the QUIC
//!   idle timeout.
//!
//! Metrics (every series has `node`): `wraft_snapshot_transfers_in_flight{direction}` (gauge),
//! `wraft_snapshot_sent_bytes_total`, `wraft_snapshot_received_bytes_total`,
//! `wraft_snapshot_transfer_resumes_total{direction}`, `wraft_snapshot_checksum_failures_total`,
//! `wraft_snapshot_chunks_resent_total`, `wraft_snapshot_reused_bytes_total{direction}` (bytes
//! a version 2 follower took from its own snapshots: not sent, copied),
//! `wraft_snapshot_member_bytes_total{from}` (bytes a follower read from member `from` instead of
//! the leader) (counters), `wraft_snapshot_transfer_seconds{direction,
//! outcome}` (histogram; outcome `ok|busy|timeout|error`), `wraft_snapshot_transfers_total{direction,
//! outcome}` (counter, the same outcomes), `wraft_snapshot_transfer_size_bytes{direction,peer}` and
//! `wraft_snapshot_transfer_done_bytes{direction,peer}` (gauges: the progress of the newest
//! transfer with each peer). A silent follower ends as outcome `timeout`; a declined offer as
//! `busy`. Logs use target `wraft::snapshot`
//! (the name from before the transfer left `wraft-node`, kept for operators' filters).
//!
//! Fault injection for end-to-end tests: [`TransferConfig::corrupt_chunk_every`], settable from
//! the environment variable [`CORRUPT_CHUNK_EVERY_ENV`] via
//! [`TransferConfig::with_test_faults_from_env`].

#![forbid(unsafe_code)]

pub mod board;
mod config;
mod error;
pub mod format;
pub mod limiter;
pub mod manifest;
mod metrics;
pub mod pacing;
pub mod peers;
mod progress;
pub mod receive;
pub mod send;
pub mod wire;

pub use board::{Direction, LiveTransfer, TransferBoard};
pub use config::{CORRUPT_CHUNK_EVERY_ENV, PeerVersions, TransferConfig};
pub use error::TransferError;
pub use limiter::{BandwidthLimiter, IncomingSlots};
pub use metrics::register_metrics;
pub use peers::SnapshotPeers;
pub use receive::{Received, receive_snapshot, receive_snapshot_from};
pub use send::{SendOutcome, SendReport, send_snapshot};
pub use wire::TRANSFER_PROTOCOL_VERSION;

#[cfg(test)]
mod transfer_tests;
