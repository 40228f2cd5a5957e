//! Quorum-loss recovery, offline: make a stopped node the only voter of a new cluster formed
//! from its own data (`wraft recover --force-new-cluster`, etcd's `--force-new-cluster`).
//!
//! What [`force_new_cluster`] writes, in one durable storage batch, after the node's last entry
//! `L` (term `T` = the node's current term, at least its last entry's):
//!
//! ```text
//!   L+1  term T+1  ConfChange(ForceNewCluster(self))   voters = {self}, no learners
//!   L+2  term T+1  Command::MembershipForced { by: self, previous voters/learners, L, T }
//!   hard state: term T+1, vote self, commit unchanged
//! ```
//!
//! Why this is safe for what the node holds: the node keeps its whole log and its term; a
//! configuration takes effect on append, so at its next start the node is the only voter, elects
//! itself (term T+2), appends its no-op and commits everything it holds (its uncommitted tail
//! included) as a majority of one. Nothing it holds is truncated. What is lost are the entries
//! it does not hold: writes acknowledged by a majority that did not include it. Choose the
//! survivor with the highest last index (`plan` reports it without writing).
//!
//! The old members are no longer members: the node's transport refuses them once they are out of
//! both the membership and the config's `cluster.members`, and they must never be restarted
//! with their old data (a majority of old members could elect a leader of the old
//! configuration). Add members back as fresh nodes (empty data directories, preferably new ids)
//! with `wraft members add-learner` and `promote`.

use std::net::UdpSocket;

use wraft_config::NodeConfig;
use wraft_engine::{ConfChange, ConfChangeEntry, Entry, EntryKind, Membership};
use wraft_proto::Command;
use wraft_storage::{HardState, Storage, WriteBatch};

use crate::codec::{decode_entry, encode_command, encode_entry, now_ms};
use crate::node::{NodeError, storage_config};

/// What a node's data directory holds, as [`plan`] reads it (nothing is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// The node.
    pub node: u64,
    /// Its current term (the hard state's, at least its last entry's).
    pub term: u64,
    /// Its last log index.
    pub last_index: u64,
    /// The highest index it knows committed (persisted lazily: may lag the cluster's).
    pub commit: u64,
    /// The membership in force in its log (its last configuration entry, else its snapshot's,
    /// else the config's `cluster.members`).
    pub membership: Membership,
}

/// What [`force_new_cluster`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedRecovery {
    /// The data directory as it was.
    pub before: RecoveryPlan,
    /// Index of the configuration entry that makes the node the only voter.
    pub conf_index: u64,
    /// Index of the `MembershipForced` record.
    pub record_index: u64,
    /// The new term of both entries.
    pub term: u64,
}

/// Read node `cfg.node.id`'s data directory and say what forcing it would start from. Opening
/// storage may cut a torn log tail or drop leftovers, as a node start does.
pub fn plan(cfg: &NodeConfig) -> Result<RecoveryPlan, NodeError> {
    refuse_if_running(cfg)?;
    let (storage, plan) = open(cfg)?;
    close(cfg, storage)?;
    Ok(plan)
}

/// Make node `cfg.node.id` the only voter of a new cluster from its own data (see the module
/// docs). The node must be stopped (refused if its listen address is in use).
pub fn force_new_cluster(cfg: &NodeConfig) -> Result<ForcedRecovery, NodeError> {
    refuse_if_running(cfg)?;
    let id = cfg.node.id;
    let (storage, before) = open(cfg)?;
    if !before.membership.contains(id) {
        return Err(NodeError::Engine(format!(
            "node {id} is not a member in its own data (voters {:?}, learners {:?}): it holds no \
             cluster to recover; force a node that was a member",
            before.membership.voters, before.membership.learners
        )));
    }
    let term = before.term + 1;
    let conf_index = before.last_index + 1;
    let record = Command::MembershipForced {
        by: id,
        previous_voters: before.membership.voters.iter().copied().collect(),
        previous_learners: before.membership.learners.iter().copied().collect(),
        last_index: before.last_index,
        term: before.term,
    };
    let entries = [
        Entry {
            index: conf_index,
            term,
            kind: EntryKind::ConfChange(ConfChangeEntry {
                change: ConfChange::ForceNewCluster(id),
                membership: Membership::with_voters([id]),
            }),
        },
        Entry {
            index: conf_index + 1,
            term,
            kind: EntryKind::Command {
                client: None,
                timestamp_ms: now_ms(),
                data: encode_command(&record).map_err(|e| NodeError::Engine(e.to_string()))?,
            },
        },
    ];
    let encoded = entries
        .iter()
        .map(encode_entry)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::Engine(e.to_string()))?;
    let batch = WriteBatch::default()
        .with_entries(encoded)
        .with_hard_state(HardState {
            term,
            vote: Some(id),
            commit: before.commit,
        });
    storage
        .log
        .submit(batch)
        .and_then(|t| t.wait())
        .map_err(|e| storage_err(cfg, e))?;
    close(cfg, storage)?;
    Ok(ForcedRecovery {
        before,
        conf_index,
        record_index: conf_index + 1,
        term,
    })
}

/// A running node holds its listen address; storage has no lock of its own, and two writers
/// would corrupt the log.
fn refuse_if_running(cfg: &NodeConfig) -> Result<(), NodeError> {
    match UdpSocket::bind(cfg.node.listen) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NodeError::Engine(format!(
            "node {} looks running: its listen address {} is in use; stop it first",
            cfg.node.id, cfg.node.listen
        ))),
        // Another reason (an address of another host in a copied config): not a sign of a
        // running node.
        Err(_) => Ok(()),
    }
}

fn storage_err(cfg: &NodeConfig, e: wraft_storage::StorageError) -> NodeError {
    NodeError::Storage {
        dir: cfg.node.data_dir.clone(),
        source: Box::new(e),
    }
}

fn open(cfg: &NodeConfig) -> Result<(Storage, RecoveryPlan), NodeError> {
    let dir = &cfg.node.data_dir;
    if !dir.join("wal").is_dir() {
        return Err(NodeError::Engine(format!(
            "{} holds no node data (no wal/ directory); check node.data_dir",
            dir.display()
        )));
    }
    let (storage, recovered) =
        Storage::open(dir, &storage_config(cfg), None).map_err(|e| storage_err(cfg, e))?;
    let mut membership = match recovered.snapshot() {
        Some(s) => Membership {
            voters: s.meta.membership.voters.iter().copied().collect(),
            learners: s.meta.membership.learners.iter().copied().collect(),
        },
        None if cfg.cluster.members.contains_key(&cfg.node.id) => {
            Membership::with_voters(cfg.cluster.members.keys().copied())
        }
        None => Membership::default(),
    };
    let last = recovered.log.last_index;
    let mut next = recovered.replay_from().max(1);
    while next <= last {
        let page = storage
            .log
            .entries(next, last + 1, 64 << 20)
            .map_err(|e| storage_err(cfg, e))?;
        if page.is_empty() {
            break;
        }
        for le in page {
            next = le.index + 1;
            let e = decode_entry(&le).map_err(|e| NodeError::BadEntry {
                dir: dir.clone(),
                index: e.index,
                detail: e.source.to_string(),
            })?;
            if let EntryKind::ConfChange(c) = e.kind {
                membership = c.membership;
            }
        }
    }
    let hs = recovered.log.hard_state;
    let plan = RecoveryPlan {
        node: cfg.node.id,
        term: hs.term.max(recovered.log.last_term),
        last_index: last,
        commit: hs.commit,
        membership,
    };
    Ok((storage, plan))
}

fn close(cfg: &NodeConfig, storage: Storage) -> Result<(), NodeError> {
    storage.log.close().map_err(|e| storage_err(cfg, e))
}
