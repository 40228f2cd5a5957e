//! Node snapshots: the on-disk format of a whole node's replicated state
//! ([`format`]), and (in `transfer`) shipping a snapshot file to a follower.
//!
//! A node snapshot is one `wraft_storage` snapshot file holding, at exactly one
//! log index, every machine's guest snapshot, the machine registry with the
//! module bytes, the client-session table, the replicated address book and
//! the membership. Creation, compaction, recovery and installation are driven
//! by the node (`node::apply`, `node::snap`).

pub mod format;
pub mod transfer;
