//! Entries that change the registry: deploys, upgrades with state migration, removals,
//! addresses and checkpoints.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::divergence::{self, CheckOutcome};
use crate::snapshot::migrate;
use wraft_host::{LoadError, MachineHandle, WasiProfile};
use wraft_proto::{Command, MachineLimits, Reply, RequestError, Response};

use super::*;

impl Applier {
    pub(super) async fn apply_admin(
        &mut self,
        index: u64,
        timestamp_ms: u64,
        cmd: Command,
    ) -> Result<Response, LocalFailure> {
        Ok(match cmd {
            Command::OpenSession => {
                self.sessions.open(index, timestamp_ms);
                Ok(Reply::SessionOpened { client_id: index })
            }
            Command::Checkpoint { index: at, digest } => {
                let result = self.chain.check(index, at, digest);
                let label = match &result {
                    CheckOutcome::Match => "match",
                    CheckOutcome::Mismatch { .. } => "mismatch",
                    CheckOutcome::Unknown => "unknown",
                };
                metrics::counter!("wraft_divergence_checks_total", "node" => self.node.to_string(), "result" => label)
                    .increment(1);
                if let CheckOutcome::Mismatch { ours } = result {
                    return Err(LocalFailure {
                        machine: "(every machine)".into(),
                        index,
                        error: format!(
                            "replicas diverged: after entry {at} this node's outcome digest is \
                             {}, the leader's {}. This node computed other results for the same \
                             log (a guest whose snapshot or restore is not faithful, or that is \
                             not deterministic); it stops applying and serving. Replace its data \
                             from a healthy replica (RELIABILITY.md, \"Divergence\")",
                            divergence::short(&ours),
                            divergence::short(&digest)
                        ),
                        diverged: true,
                    });
                }
                Ok(Reply::Done {
                    message: format!("checkpoint of entry {at}: {label}"),
                })
            }
            Command::MembershipForced {
                by,
                previous_voters,
                previous_learners,
                last_index,
                term,
            } => {
                tracing::warn!(target: "wraft::node", node = self.node, index, by,
                    ?previous_voters, ?previous_learners, last_index, term,
                    "membership was forced: node {by} became the only voter \
                     (wraft recover --force-new-cluster); previous voters {previous_voters:?}");
                Ok(Reply::Done {
                    message: format!(
                        "membership forced by node {by} at index {index}, from voters \
                         {previous_voters:?} learners {previous_learners:?}"
                    ),
                })
            }
            Command::Apply { .. } => Err(RequestError::Internal(
                "apply command routed to the admin path".into(),
            )),
            Command::SetAddress { id, addr } => {
                self.addresses.insert(id, addr.clone());
                self.replicated_addresses.insert(id, addr.clone());
                Ok(Reply::Done {
                    message: format!("node {id} is at {addr}"),
                })
            }
            Command::Remove { name } => match self.machines.remove(&name) {
                Some(m) => {
                    if let Some(h) = m.handle {
                        tokio::task::spawn_blocking(move || h.shutdown());
                    }
                    Ok(Reply::Done {
                        message: format!("machine {name:?} removed at index {index}"),
                    })
                }
                None => Err(RequestError::NoSuchMachine(name)),
            },
            Command::Deploy {
                name,
                sha256,
                module,
            } => {
                self.deploy(index, name, sha256, module, WasiProfile::None, None)
                    .await?
            }
            Command::DeployWith {
                name,
                sha256,
                module,
                wasi,
            } => self.deploy(index, name, sha256, module, wasi, None).await?,
            Command::DeployLimited {
                name,
                sha256,
                module,
                wasi,
                limits,
            } => {
                self.deploy(index, name, sha256, module, wasi, Some(limits))
                    .await?
            }
            Command::DeployByHash {
                name,
                sha256,
                module_bytes,
                wasi,
                limits,
            } => {
                let module = self
                    .module_by_hash(index, &name, sha256, module_bytes)
                    .await?;
                self.deploy(index, name, sha256, module, wasi, Some(limits))
                    .await?
            }
        })
    }

    /// The module a by-hash deploy entry names: from this node's store, or fetched from
    /// another member. Not having it is a node-local failure (the applier halts and tries
    /// again later), never the entry's result: every replica applies the same module.
    async fn module_by_hash(
        &self,
        index: u64,
        name: &str,
        sha256: [u8; 32],
        module_bytes: u64,
    ) -> Result<Vec<u8>, LocalFailure> {
        let local = |error: String| LocalFailure {
            diverged: false,
            machine: name.to_owned(),
            index,
            error,
        };
        let Some(modules) = &self.modules else {
            return Err(local("this applier has no module store".into()));
        };
        modules.reference(index, sha256);
        let members: Vec<u64> = self.addresses.snapshot().into_keys().collect();
        modules
            .obtain(sha256, module_bytes, &members, None)
            .await
            .map_err(local)
    }

    pub(super) async fn deploy(
        &mut self,
        index: u64,
        name: String,
        sha256: [u8; 32],
        module: Vec<u8>,
        wasi: WasiProfile,
        limits: Option<MachineLimits>,
    ) -> Result<Response, LocalFailure> {
        let r = self
            .deploy_inner(index, name, sha256, module, wasi, limits)
            .await;
        self.metrics.deploy(match &r {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "refused",
            Err(_) => "local_failure",
        });
        r
    }

    async fn deploy_inner(
        &mut self,
        index: u64,
        name: String,
        sha256: [u8; 32],
        module: Vec<u8>,
        wasi: WasiProfile,
        limits: Option<MachineLimits>,
    ) -> Result<Response, LocalFailure> {
        let local = |error: String| LocalFailure {
            diverged: false,
            machine: name.clone(),
            index,
            error,
        };
        let host = self.host.clone();
        let bytes = Bytes::from(module);
        let b2 = bytes.clone();
        // Committed: its size was checked against `guest.module_bytes_max` when it was proposed.
        let loaded = tokio::task::spawn_blocking(move || host.load_committed(&b2, wasi))
            .await
            .map_err(|e| local(format!("loading the module: {e}")))?;
        let module = match loaded {
            Ok(m) => match limits {
                Some(l) => m.with_limits(l),
                // A deploy from before limits were replicated: this node's own, as then.
                None => m,
            },
            // Compiling, reading or caching can fail on this node alone.
            Err(e @ (LoadError::Compile(_) | LoadError::Cache { .. } | LoadError::Read { .. })) => {
                return Err(local(format!("loading the module: {e}")));
            }
            Err(e) => {
                return Ok(Err(RequestError::Rejected(format!(
                    "module for {name:?} failed validation: {e}"
                ))));
            }
        };
        if module.sha256() != sha256 {
            return Ok(Err(RequestError::Rejected(format!(
                "module for {name:?} does not match its declared SHA-256"
            ))));
        }
        let new_handle = match module.start() {
            Ok(h) => h,
            Err(e) if is_deterministic(&e) => {
                return Ok(Err(RequestError::Rejected(format!(
                    "cannot start {name:?}: {e}"
                ))));
            }
            Err(e) => return Err(local(format!("starting the machine: {e}"))),
        };
        let summary = format!(
            "{name:?} runs {} {} (sha256 {}) from index {index}",
            module.info().name,
            module.info().version,
            &module.sha256_hex()[..16]
        );
        let Some(m) = self.machines.get_mut(&name) else {
            self.machines.insert(
                name,
                Machine {
                    handle: Some(new_handle),
                    created_at: index,
                    versions: vec![Version {
                        deployed_at: index,
                        module,
                        bytes,
                    }],
                    skipped: BTreeSet::new(),
                    healthy: true,
                    diverged: None,
                },
            );
            return Ok(Ok(Reply::Done {
                message: format!("deployed {summary}"),
            }));
        };
        let Some(old) = m.handle.as_ref().filter(|_| m.healthy) else {
            new_handle_shutdown(new_handle);
            return Err(local(format!(
                "cannot upgrade {name:?}: the running version cannot run on this node"
            )));
        };
        let format = m.current().module.info().snapshot_format;
        match migrate(old, &new_handle, format).await {
            Ok(()) => {
                if let Some(h) = m.handle.replace(new_handle) {
                    tokio::task::spawn_blocking(move || h.shutdown());
                }
                m.versions.push(Version {
                    deployed_at: index,
                    module,
                    bytes,
                });
                Ok(Ok(Reply::Done {
                    message: format!("upgraded {summary}; state carried across"),
                }))
            }
            Err(e) if is_deterministic(&e) => {
                new_handle_shutdown(new_handle);
                Ok(Err(RequestError::Rejected(format!(
                    "upgrade of {name:?} failed, the old version keeps running: {e}"
                ))))
            }
            Err(e) => {
                new_handle_shutdown(new_handle);
                Err(local(format!(
                    "migrating the state to the new version: {e}"
                )))
            }
        }
    }
}

pub(super) fn new_handle_shutdown(h: MachineHandle) {
    tokio::task::spawn_blocking(move || h.shutdown());
}
