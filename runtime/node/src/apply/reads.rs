//! Reads: queries and machine listings, served once the applier has reached their index.

use std::collections::VecDeque;

use wraft_host::{CallError, MachineHandle};
use wraft_proto::{MachineInfo, Reply, RequestError, Response};

use super::*;

impl Applier {
    /// The deployed machines as of the applied index.
    pub(super) fn machine_infos(&self) -> Vec<MachineInfo> {
        self.machines
            .iter()
            .map(|(name, m)| {
                let v = m.current();
                MachineInfo {
                    name: name.clone(),
                    kind: v.module.info().name.clone(),
                    version: v.module.info().version.clone(),
                    module_sha256: v.module.sha256_hex(),
                    deployed_at: v.deployed_at,
                    healthy: m.healthy,
                }
            })
            .collect()
    }

    pub(super) async fn serve_reads(&mut self) {
        if let Some(h) = &self.halted {
            // The live instances may hold work past the failure point: serve nothing.
            let why = format!(
                "node {} is not applying ({}); ask another node",
                self.node,
                h.describe()
            );
            for (_, _, reply) in self.reads.drain(..) {
                let _ = reply.send(Err(RequestError::Busy(why.clone())));
            }
            return;
        }
        // Reads are served in arrival order once their index is applied;
        // a read waiting for a later index does not hold up the others.
        let (mut ready, pending): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(index, ..)| *index <= self.applied);
        self.reads = pending;
        while let Some((_, target, reply)) = ready.pop_front() {
            let (machine, request) = match target {
                ReadTarget::Machines => {
                    let _ = reply.send(Ok(Reply::Machines(self.machine_infos())));
                    continue;
                }
                ReadTarget::Query { machine, request } => (machine, request),
            };
            // The run of ready reads for the same machine goes to its thread in one go.
            let mut run = vec![(request, reply)];
            while let Some((_, ReadTarget::Query { machine: m, .. }, _)) = ready.front()
                && *m == machine
            {
                let Some((_, ReadTarget::Query { request, .. }, reply)) = ready.pop_front() else {
                    break;
                };
                run.push((request, reply));
            }
            let (requests, replies): (Vec<_>, Vec<_>) = run.into_iter().unzip();
            let answers = self.query_many(&machine, requests).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
    }

    /// Answer `requests` to `machine`, in order. All are queued to the machine's thread before
    /// the first answer is awaited, so the thread runs them back to back (one wake-up for the
    /// run, not one per read). If one traps, the instance is rebuilt and the reads queued
    /// behind it, which found it poisoned, are asked again.
    pub(super) async fn query_many(
        &mut self,
        machine: &str,
        requests: Vec<Vec<u8>>,
    ) -> Vec<Response> {
        let applied = self.applied;
        let results = match self.queryable(machine) {
            Ok(h) => {
                futures_util::future::join_all(requests.iter().map(|r| h.query(r.clone()))).await
            }
            Err(e) => return requests.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut answers = Vec::with_capacity(results.len());
        let mut again = Vec::new();
        let mut trapped = false;
        for (k, result) in results.into_iter().enumerate() {
            answers.push(match result {
                Ok(r) => query_answer(applied, r),
                Err(CallError::Poisoned { .. }) if trapped => {
                    again.push(k);
                    Err(RequestError::Internal("not asked yet".into()))
                }
                Err(e) => {
                    trapped |= e.poisons();
                    Err(RequestError::MachineFault(e.to_string()))
                }
            });
        }
        if trapped {
            // A query is not replicated: a trap only poisons this node's instance.
            self.rebuild(machine, self.applied + 1).await;
            for k in again {
                answers[k] = self.query(machine, requests[k].clone()).await;
            }
        }
        answers
    }

    pub(super) async fn query(&mut self, machine: &str, request: Vec<u8>) -> Response {
        let applied = self.applied;
        let result = match self.queryable(machine) {
            Ok(h) => h.query(request).await,
            Err(e) => return Err(e),
        };
        match result {
            Ok(r) => query_answer(applied, r),
            Err(e) => {
                // A query is not replicated: a trap here only poisons this
                // node's instance, which is rebuilt before the next call.
                if e.poisons() {
                    self.rebuild(machine, self.applied + 1).await;
                }
                Err(RequestError::MachineFault(e.to_string()))
            }
        }
    }

    /// The handle of a machine that can answer queries, or why none can.
    pub(super) fn queryable(&self, machine: &str) -> Result<&MachineHandle, RequestError> {
        let m = self
            .machines
            .get(machine)
            .ok_or_else(|| RequestError::NoSuchMachine(machine.to_owned()))?;
        m.handle.as_ref().filter(|_| m.healthy).ok_or_else(|| {
            RequestError::MachineFault(format!(
                "machine {machine:?} is unhealthy on this node; see its log"
            ))
        })
    }
}

/// A query's answer as of `applied`.
pub(super) fn query_answer(applied: u64, r: wraft_host::EntryResult) -> Response {
    match r {
        Ok(output) => Ok(Reply::Answer {
            index: applied,
            output,
        }),
        Err(e) => Err(RequestError::App {
            code: e.code,
            message: e.message,
        }),
    }
}
