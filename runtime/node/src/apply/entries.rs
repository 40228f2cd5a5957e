//! Applying committed entries: session admission in log order, batching consecutive commands
//! of one machine, outcomes and their digests, traps and rebuilds.

use std::collections::VecDeque;

use bytes::Bytes;
use wraft_engine::{ClientTag, Entry, EntryKind, SessionCheck};

use crate::divergence::{self};
use crate::snapshot::{self, SnapEvent, migrate};
use crate::watch::{WatchEvent, WatchOutcome};
use wraft_host::{CallError, TrapKind};
use wraft_proto::{Command, Reply, RequestError, Response};

use super::*;

impl Applier {
    /// Apply committed `entries` (in order; those at or below the applied index are skipped)
    /// and answer their proposers. On a [`LocalFailure`] nothing of this call is kept: no
    /// outcome is answered or recorded and the applied index does not move (the live
    /// instances may have run part of it: the caller halts and re-derives).
    pub(super) async fn apply_entries(&mut self, entries: &[Entry]) -> Result<(), LocalFailure> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
        // Consecutive commands for the same machine go to the guest in one batch.
        let mut batch: Vec<(u64, Option<ClientTag>, Queued)> = Vec::new();
        let mut batch_machine = String::new();
        // Outcomes up to here have their outputs stored in the session table.
        let mut completed = 0usize;
        // Outcomes up to here are folded into the outcome digest.
        let mut chained = 0usize;
        // What watch subscribers get of this run, in index order: matched with the outcomes
        // once the whole run is kept (a local failure discards it with them).
        let mut watched: Vec<(u64, Arc<str>, Watched)> = Vec::with_capacity(entries.len());
        // The name the last watched command was for, shared by the events of its machine.
        let mut watched_name: Option<Arc<str>> = None;
        for entry in entries {
            if entry.index <= self.applied {
                continue; // replayed after a restart of the driver side; already applied
            }
            let index = entry.index;
            match &entry.kind {
                EntryKind::Noop | EntryKind::ConfChange(_) => {
                    self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                        .await?;
                    outcomes.push((
                        index,
                        None,
                        Ok(Reply::Done {
                            message: format!("committed at index {index}"),
                        }),
                    ));
                }
                EntryKind::Command {
                    client,
                    timestamp_ms,
                    data,
                } => {
                    let client = *client;
                    self.last_timestamp_ms = self.last_timestamp_ms.max(*timestamp_ms);
                    let ts = self.last_timestamp_ms;
                    let cmd = match EntryCommand::decode(data) {
                        Ok(c) => c,
                        // Leaders propose only commands they encoded, so an entry this node
                        // cannot decode was written by a newer version. Recording a refusal
                        // here while the others apply it would make this replica diverge:
                        // a node-local failure instead, until the node is upgraded.
                        Err(e) => {
                            return Err(LocalFailure {
                                machine: "(every machine)".into(),
                                index,
                                error: format!(
                                    "entry {index} is a command this version of wraft cannot \
                                     decode ({e}); a newer version wrote it: upgrade this node"
                                ),
                                diverged: false,
                            });
                        }
                    };
                    // Deduplicate before anything reaches a guest. The decision is taken
                    // here, at the entry, in log order (`SessionTable::admit`); only the
                    // outputs wait for the batch, and a command of a client whose output
                    // is still pending in it ends the batch first, so a duplicate is
                    // answered with the real output.
                    if let Some(tag) = client {
                        if batch
                            .iter()
                            .any(|(_, t, _)| t.is_some_and(|t| t.client_id == tag.client_id))
                        {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await?;
                        }
                        self.complete_sessions(&outcomes[completed..]);
                        completed = outcomes.len();
                        let refused = match self.sessions.admit(tag, ts) {
                            SessionCheck::Fresh => None,
                            SessionCheck::Duplicate(out) => Some(decode_cached(&out)),
                            SessionCheck::Stale { last_seq } => {
                                Some(Err(RequestError::Rejected(format!(
                                    "request {}/{} not applied: the session is already at {last_seq}",
                                    tag.client_id, tag.seq
                                ))))
                            }
                            SessionCheck::Unknown => Some(Err(RequestError::SessionUnknown {
                                client_id: tag.client_id,
                            })),
                        };
                        if let Some(resp) = refused {
                            // Outcomes stay in index order: the pending batch goes first.
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await?;
                            self.note_skipped(cmd.machine(), index);
                            outcomes.push((index, None, resp));
                            continue;
                        }
                    }
                    match cmd {
                        EntryCommand::Apply { machine, command } => {
                            let command = data.slice_ref(command);
                            let name = shared_name(&mut watched_name, machine);
                            watched.push((index, name, Watched::Apply(command.clone())));
                            if batch_machine != machine || batch.len() >= APPLY_BATCH_ENTRIES_MAX {
                                self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                    .await?;
                                machine.clone_into(&mut batch_machine);
                            }
                            batch.push((
                                index,
                                client,
                                Queued {
                                    term: entry.term,
                                    timestamp_ms: ts,
                                    command,
                                },
                            ));
                        }
                        EntryCommand::Admin(other) => {
                            self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
                                .await?;
                            // A checkpoint compares the digest up to the entries before it.
                            self.fold_outcomes(&outcomes[chained..])?;
                            chained = outcomes.len();
                            if let Some((name, w)) = Watched::admin(&other) {
                                watched.push((index, name.into(), w));
                            }
                            let resp = self.apply_admin(index, ts, other).await?;
                            outcomes.push((index, client, resp));
                        }
                    }
                }
            }
        }
        self.flush_batch(&batch_machine, &mut batch, &mut outcomes)
            .await?;
        self.complete_sessions(&outcomes[completed..]);
        self.fold_outcomes(&outcomes[chained..])?;
        let mut watched = watched.into_iter().peekable();
        let mut events = Vec::with_capacity(watched.len());
        for (index, _, resp) in outcomes {
            self.applied = index;
            if let Some((_, machine, what)) = watched.next_if(|(i, _, _)| *i == index)
                && let Some(outcome) = what.outcome(&resp)
            {
                events.push(WatchEvent {
                    index,
                    machine,
                    command: what.command(),
                    outcome,
                });
            }
            if let Some(reply) = self.waiting.remove(&index) {
                let _ = reply.send(resp);
            }
        }
        self.watch.publish(events, self.applied);
        // Anyone still waiting at or below the applied index lost their
        // entry to another leader's (the engine reports that separately);
        // do not leave them hanging.
        self.fail_waiting_through_applied(|i| {
            RequestError::Internal(format!("entry {i} applied without an outcome"))
        });
        Ok(())
    }

    /// Fold outcomes into the running digest, reporting it at every `check_interval`, and
    /// compare each with what the same entry gave if it was applied before.
    pub(super) fn fold_outcomes(&mut self, outcomes: &[Outcome]) -> Result<(), LocalFailure> {
        for (index, _, resp) in outcomes {
            let d = divergence::outcome_digest(resp);
            match self.recorded.insert(*index, d) {
                Some(was) if was != d => {
                    return Err(LocalFailure {
                        machine: "(every machine)".into(),
                        index: *index,
                        error: format!(
                            "replicas diverged: entry {index} gave another result when applied \
                             again (digest {} now, {} before): a guest's snapshot or restore is \
                             not faithful, or it is not deterministic. This node stops applying \
                             and serving; replace its data from a healthy replica (RELIABILITY.md, \
                             \"Divergence\")",
                            divergence::short(&d),
                            divergence::short(&was)
                        ),
                        diverged: true,
                    });
                }
                _ => {}
            }
            while self.recorded.len() > divergence::RECENT_DIGESTS_MAX {
                self.recorded.pop_first();
            }
            if let Some(digest) = self.chain.push(*index, &d)
                && self.check_interval > 0
                && index % self.check_interval == 0
            {
                let _ = self.events.send(SnapEvent::Checkpoint {
                    index: *index,
                    digest,
                });
            }
        }
        Ok(())
    }

    /// Store the outputs of admitted commands in the session table (the
    /// decisions were taken at admission; this only fills in what a retry gets).
    pub(super) fn complete_sessions(&mut self, outcomes: &[Outcome]) {
        for (_, tag, resp) in outcomes {
            if let Some(tag) = tag {
                self.sessions.complete(*tag, encode_cached(resp));
            }
        }
    }

    /// Record that the entry at `index`, for `machine` if it names one, was not applied.
    pub(super) fn note_skipped(&mut self, machine: Option<&str>, index: u64) {
        if let Some(machine) = machine
            && let Some(m) = self.machines.get_mut(machine)
        {
            m.skipped.insert(index);
        }
    }

    /// Send the pending batch to its machine and turn the results into outcomes.
    pub(super) async fn flush_batch(
        &mut self,
        machine: &str,
        batch: &mut Vec<(u64, Option<ClientTag>, Queued)>,
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), LocalFailure> {
        if batch.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(batch);
        let Some(m) = self.machines.get(machine) else {
            for (index, tag, _) in items {
                outcomes.push((
                    index,
                    tag,
                    Err(RequestError::NoSuchMachine(machine.to_owned())),
                ));
            }
            return Ok(());
        };
        if !m.healthy || m.handle.is_none() {
            return Err(self.cannot_run(machine, items[0].0));
        }
        let mut rest: VecDeque<_> = items.into();
        while !rest.is_empty() {
            let entries: Vec<wraft_host::Entry> =
                rest.iter().map(|(i, _, q)| q.host_entry(*i)).collect();
            let handle = match self.machines.get(machine).and_then(|m| m.handle.as_ref()) {
                Some(h) => h,
                None => break,
            };
            let started = std::time::Instant::now();
            let n = entries.len() as u64;
            let result = handle.apply_batch(entries).await;
            self.metrics
                .batch_seconds
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(results) => {
                    self.metrics.entries.increment(n);
                    for ((index, tag, _), r) in rest.drain(..).zip(results) {
                        outcomes.push((index, tag, app_response(index, r)));
                    }
                }
                Err(e) => {
                    // Find which entry trapped by replaying one at a time
                    // on a rebuilt instance: entries before it were applied
                    // by the batch call that trapped, so rebuild first.
                    let first = rest.front().map(|(i, _, _)| *i).unwrap_or(0);
                    tracing::warn!(target: "wraft::apply", machine, first_index = first, error = %e,
                        "batch call failed; rebuilding the instance and applying one entry at a time");
                    self.rebuild(machine, first).await;
                    while let Some((index, tag, queued)) = rest.pop_front() {
                        let r = self.apply_one(machine, queued.host_entry(index)).await?;
                        outcomes.push((index, tag, r));
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply one entry, handling traps: a deterministic trap is the entry's
    /// recorded result and the instance is rebuilt without it; a node-local
    /// failure (the watchdog, the memory limit) is retried on a rebuilt
    /// instance, and if it persists it is a [`LocalFailure`], never a result.
    pub(super) async fn apply_one(
        &mut self,
        machine: &str,
        entry: wraft_host::Entry,
    ) -> Result<Response, LocalFailure> {
        let index = entry.index;
        let mut local_hits = 0;
        let mut canonical = false;
        loop {
            let Some(handle) = self
                .machines
                .get(machine)
                .filter(|m| m.healthy)
                .and_then(|m| m.handle.as_ref())
            else {
                return Err(self.cannot_run(machine, index));
            };
            match handle.apply(entry.clone()).await {
                Ok(r) => return Ok(app_response(index, r)),
                // How far a guest's memory grows depends on its allocator's history, which
                // differs between replicas (a long-running instance, one restored from a
                // snapshot, one rebuilt by replay, the batch it ran in). So a memory-limit trap
                // is decided again on a canonical instance: the state just before the entry,
                // moved through the guest's own snapshot into a fresh instance, which every
                // replica builds alike. The entry alone runs there; that outcome is recorded.
                Err(CallError::Trap {
                    kind: TrapKind::MemoryLimit,
                    ..
                }) if !canonical => {
                    canonical = true;
                    tracing::info!(target: "wraft::apply", machine, index,
                        "memory limit hit; deciding again on a canonical instance");
                    self.rebuild(machine, index).await;
                    self.canonicalize(machine).await;
                }
                Err(e) if is_deterministic(&e) || (canonical && is_memory_trap(&e)) => {
                    self.metrics.trap(machine);
                    tracing::warn!(target: "wraft::apply", machine, index, error = %e,
                        "guest trapped; recording the failure and rebuilding the instance");
                    if let Some(m) = self.machines.get_mut(machine) {
                        m.skipped.insert(index);
                    }
                    self.rebuild(machine, index + 1).await;
                    return Ok(Err(RequestError::MachineFault(e.to_string())));
                }
                // Anything else (the watchdog, the memory limit, a stopped thread, an
                // instance left poisoned by a query) is local to this node: never a
                // replicated result. Rebuild and retry, a bounded number of times.
                Err(e) if local_hits < WATCHDOG_RETRIES_MAX => {
                    local_hits += 1;
                    tracing::warn!(target: "wraft::apply", machine, index, attempt = local_hits, error = %e,
                        "node-local failure (not a replicated result); rebuilding and retrying");
                    self.rebuild(machine, index).await;
                }
                Err(e) => {
                    return Err(LocalFailure {
                        diverged: false,
                        machine: machine.to_owned(),
                        index,
                        error: format!("{e} ({local_hits} retries on a rebuilt instance)"),
                    });
                }
            }
        }
    }

    /// Why `machine` cannot take entry `index` here: its replay showed this replica diverged,
    /// or (not a result either) it could not be started or rebuilt on this node.
    pub(super) fn cannot_run(&self, machine: &str, index: u64) -> LocalFailure {
        match self.machines.get(machine).and_then(|m| m.diverged.as_ref()) {
            Some(e) => LocalFailure {
                diverged: true,
                machine: machine.to_owned(),
                index,
                error: format!("replicas diverged: {e}"),
            },
            None => LocalFailure {
                diverged: false,
                machine: machine.to_owned(),
                index,
                error: format!("machine {machine:?} cannot run on this node"),
            },
        }
    }

    /// Move `machine`'s state into a fresh instance of its current version through the guest's
    /// own snapshot and restore, so that its memory holds nothing of the instance's history.
    /// On failure the machine cannot run here (the next entry for it halts the applier).
    pub(super) async fn canonicalize(&mut self, machine: &str) {
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        let Some(old) = m.handle.take().filter(|_| m.healthy) else {
            m.healthy = false;
            return;
        };
        let module = m.current().module.clone();
        let result = match module.start() {
            Ok(fresh) => match migrate(&old, &fresh, module.info().snapshot_format).await {
                Ok(()) => Ok(fresh),
                Err(e) => {
                    new_handle_shutdown(fresh);
                    Err(e.to_string())
                }
            },
            Err(e) => Err(e.to_string()),
        };
        new_handle_shutdown(old);
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        match result {
            Ok(fresh) => m.handle = Some(fresh),
            Err(e) => {
                tracing::error!(target: "wraft::apply", machine, error = %e,
                    "could not move the machine into a canonical instance; it cannot run on this node");
                m.healthy = false;
            }
        }
    }

    /// Rebuild `machine` from scratch to its state just before `before`:
    /// a fresh instance of its first version, then a replay of its committed
    /// history from the log (skipping entries that never reached it, and
    /// migrating across upgrades exactly as they happened).
    pub(super) async fn rebuild(&mut self, machine: &str, before: u64) {
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        if let Some(h) = m.handle.take() {
            tokio::task::spawn_blocking(move || h.shutdown());
        }
        let Some(cut) = self.machine_cut(machine) else {
            return;
        };
        // Opening the base reads and checks the whole snapshot file (module hashes included):
        // off the async workers, as everywhere else it is opened.
        let opened = {
            let (storage, base) = (self.storage.clone(), self.base);
            tokio::task::spawn_blocking(move || snapshot::open_base(&storage, base)).await
        };
        let result = match opened {
            Ok(Ok(base)) => {
                let recorded = Some(&self.recorded);
                snapshot::build_instance(
                    &self.storage,
                    base.as_ref(),
                    &cut,
                    before,
                    false,
                    recorded,
                )
                .await
            }
            Ok(Err(e)) => Err(snapshot::BuildError::Failed(e)),
            Err(e) => Err(snapshot::BuildError::Failed(format!(
                "opening the base snapshot: {e}"
            ))),
        };
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        match result {
            Ok(handle) => {
                m.handle = Some(handle);
                m.healthy = true;
            }
            Err(snapshot::BuildError::Diverged(e)) => {
                tracing::error!(target: "wraft::apply", machine, error = %e, "replicas diverged");
                m.healthy = false;
                m.diverged = Some(e);
            }
            Err(e) => {
                tracing::error!(target: "wraft::apply", machine, error = %e,
                    "could not rebuild the machine; it is unhealthy on this node");
                m.healthy = false;
            }
        }
    }
}

/// A command waiting in the applier's batch for its machine. Its bytes are a slice of the
/// entry's, so a batch that has to be replayed one entry at a time (a trap) still has them
/// without a copy kept for that case; lowering into guest memory is the one copy.
pub(super) struct Queued {
    term: u64,
    timestamp_ms: u64,
    command: Bytes,
}

impl Queued {
    fn host_entry(&self, index: u64) -> wraft_host::Entry {
        wraft_host::Entry {
            index,
            term: self.term,
            timestamp_ms: self.timestamp_ms,
            command: self.command.clone(),
        }
    }
}

/// An entry's command as the applier reads it: a command for a machine (almost every entry)
/// borrowed from the entry's bytes, anything else decoded whole.
enum EntryCommand<'a> {
    Apply { machine: &'a str, command: &'a [u8] },
    Admin(Command),
}

impl<'a> EntryCommand<'a> {
    fn decode(data: &'a [u8]) -> Result<EntryCommand<'a>, postcard::Error> {
        if let Ok(wraft_proto::ApplyRef::Apply { machine, command }) = postcard::from_bytes(data) {
            return Ok(EntryCommand::Apply { machine, command });
        }
        match postcard::from_bytes::<Command>(data)? {
            // The borrowed form reads every apply the owned one does (pinned in wraft-proto's
            // tests); were that ever not so, failing here is node-local, never a divergence.
            Command::Apply { .. } => Err(postcard::Error::DeserializeBadEncoding),
            other => Ok(EntryCommand::Admin(other)),
        }
    }

    /// The machine this command is for, if it is a machine's command.
    fn machine(&self) -> Option<&str> {
        match self {
            EntryCommand::Apply { machine, .. } => Some(machine),
            EntryCommand::Admin(_) => None,
        }
    }
}

/// An entry watch subscribers see, until its outcome is known.
pub(super) enum Watched {
    /// A command for a machine, with its bytes.
    Apply(Bytes),
    Deploy,
    Remove,
}

impl Watched {
    /// The watched kind of an admin command, and the machine it concerns.
    fn admin(cmd: &Command) -> Option<(String, Watched)> {
        match cmd {
            Command::Deploy { name, .. }
            | Command::DeployWith { name, .. }
            | Command::DeployLimited { name, .. }
            | Command::DeployByHash { name, .. } => Some((name.clone(), Watched::Deploy)),
            Command::Remove { name } => Some((name.clone(), Watched::Remove)),
            _ => None,
        }
    }

    fn command(&self) -> Bytes {
        match self {
            Watched::Apply(c) => c.clone(),
            Watched::Deploy | Watched::Remove => Bytes::new(),
        }
    }

    /// What subscribers are told of `resp`; none if the entry changed no machine (a refused
    /// deploy, a command for a machine that does not exist).
    fn outcome(&self, resp: &Response) -> Option<WatchOutcome> {
        match (self, resp) {
            (Watched::Apply(_), Ok(Reply::Applied { output, .. })) => {
                Some(WatchOutcome::Output(Bytes::copy_from_slice(output)))
            }
            (Watched::Apply(_), Err(RequestError::App { code, message })) => {
                Some(WatchOutcome::AppError {
                    code: *code,
                    message: message.clone(),
                })
            }
            (Watched::Apply(_), Err(RequestError::MachineFault(m))) => {
                Some(WatchOutcome::MachineFault(m.clone()))
            }
            (Watched::Deploy, Ok(Reply::Done { message })) => Some(WatchOutcome::Deployed {
                summary: message.clone(),
            }),
            (Watched::Remove, Ok(_)) => Some(WatchOutcome::Removed),
            _ => None,
        }
    }
}

/// Whether a failed guest call is the same on every replica, so that it can be a replicated
/// result: a trap of the guest's own making (a panic, fuel, the stack, a bad memory access,
/// a broken contract) or an error its snapshot or restore code reported. Not deterministic:
/// the watchdog (wall-clock time), the memory limit (how far a guest's memory grows depends
/// on its allocator's history; `apply_one` decides such a trap again on a canonical
/// instance), and anything of the host's own.
pub(super) fn is_memory_trap(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Trap {
            kind: TrapKind::MemoryLimit,
            ..
        }
    )
}

pub(super) fn is_deterministic(e: &CallError) -> bool {
    match e {
        CallError::Trap { kind, .. } => *kind != TrapKind::MemoryLimit,
        CallError::Snapshot { .. }
        | CallError::Restore { .. }
        | CallError::ChunkTooLarge { .. } => true,
        _ => false,
    }
}

/// `machine` as an `Arc<str>`: the one in `last` if it names the same machine (no allocation),
/// else a new one, kept in `last` for the entries after.
fn shared_name(last: &mut Option<Arc<str>>, machine: &str) -> Arc<str> {
    match last {
        Some(n) if **n == *machine => n.clone(),
        _ => last.insert(Arc::from(machine)).clone(),
    }
}

pub(super) fn app_response(index: u64, r: wraft_host::EntryResult) -> Response {
    match r {
        Ok(output) => Ok(Reply::Applied { index, output }),
        Err(e) => Err(RequestError::App {
            code: e.code,
            message: e.message,
        }),
    }
}

/// Session outputs are stored as postcard-encoded responses so a retry gets
/// exactly the original answer, error included.
///
/// They are replicated state (the session table is in every snapshot), so a failure to encode
/// must not become empty bytes that decode differently later: it becomes an `Internal` error
/// naming the cause, the same on every replica. postcard cannot fail on these types today
/// (strings, bytes and integers only).
pub(super) fn encode_cached(resp: &Response) -> Bytes {
    // Most answers are a few bytes: encoded on the stack, they take one allocation of their
    // exact size (a `Vec` with room to spare would take a second, for `Bytes`' shared header).
    let mut small = [0u8; 128];
    if let Ok(encoded) = postcard::to_slice(resp, &mut small) {
        return Bytes::copy_from_slice(encoded);
    }
    match postcard::to_stdvec(resp) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            let fallback: Response = Err(RequestError::Internal(format!(
                "the machine's answer could not be encoded for the session table: {e}"
            )));
            Bytes::from(postcard::to_stdvec(&fallback).unwrap_or_default())
        }
    }
}

pub(super) fn decode_cached(b: &Bytes) -> Response {
    postcard::from_bytes(b).unwrap_or_else(|e| {
        Err(RequestError::Internal(format!(
            "cached response does not decode: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events of consecutive entries for one machine share its name; a run that alternates
    /// machines names each entry's own.
    #[test]
    fn watched_entries_name_their_own_machine() {
        let mut last = None;
        let names: Vec<Arc<str>> = ["a", "a", "b", "a", "b", "b", "a"]
            .into_iter()
            .map(|m| shared_name(&mut last, m))
            .collect();
        let texts: Vec<&str> = names.iter().map(|n| &**n).collect();
        assert_eq!(texts, ["a", "a", "b", "a", "b", "b", "a"]);
        assert!(Arc::ptr_eq(&names[0], &names[1]));
        assert!(Arc::ptr_eq(&names[4], &names[5]));
        assert!(!Arc::ptr_eq(&names[1], &names[3]));
    }

    /// What the session table keeps is the answer's postcard encoding, whichever way it was
    /// encoded (on the stack or in a growing buffer): it is replicated state, in every snapshot.
    #[test]
    fn cached_answers_are_their_postcard_encoding_at_every_size() {
        for n in [
            0usize, 1, 100, 115, 116, 117, 118, 119, 120, 127, 128, 129, 4096,
        ] {
            let answers: [Response; 2] = [
                Ok(Reply::Applied {
                    index: u64::MAX - n as u64,
                    output: vec![7; n],
                }),
                Err(RequestError::App {
                    code: n as u32,
                    message: "m".repeat(n),
                }),
            ];
            for resp in answers {
                let cached = encode_cached(&resp);
                assert_eq!(cached[..], postcard::to_stdvec(&resp).expect("encodes")[..]);
                assert_eq!(format!("{:?}", decode_cached(&cached)), format!("{resp:?}"));
            }
        }
    }
}
