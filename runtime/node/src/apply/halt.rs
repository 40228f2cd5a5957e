//! Halting on a node-local failure and re-deriving the state from the base snapshot and the log.

use wraft_engine::{Entry, SessionTable};

use crate::divergence::OutcomeChain;
use crate::snapshot::{self, SnapEvent};

use super::*;

impl Halt {
    pub(super) fn describe(&self) -> String {
        if self.failure.diverged {
            return format!("at entry {}: {}", self.failure.index, self.failure.error);
        }
        format!(
            "machine {:?} could not apply entry {} on this node: {} ({} re-derivations failed)",
            self.failure.machine, self.failure.index, self.failure.error, self.attempts
        )
    }
}

impl Applier {
    /// Apply `entries`, or halt before the first one this node cannot apply (`attempts`: how
    /// many re-derivations have already failed).
    pub(super) async fn apply_or_halt(&mut self, entries: Vec<Entry>, attempts: u32) {
        if let Err(failure) = self.apply_entries(&entries).await {
            let applied = self.applied;
            self.held = entries.into_iter().filter(|e| e.index > applied).collect();
            self.halt(failure, attempts);
        }
    }

    /// Stop applying: a node-local failure is not a result, so nothing at or past the failing
    /// entry is recorded, answered or snapshotted until the state is re-derived.
    pub(super) fn halt(&mut self, failure: LocalFailure, attempts: u32) {
        let backoff_ms = REDERIVE_BACKOFF_MIN_MS
            .saturating_mul(1 << attempts.min(16))
            .min(REDERIVE_BACKOFF_MAX_MS);
        let halt = Halt {
            failure,
            attempts,
            next_try: tokio::time::Instant::now() + std::time::Duration::from_millis(backoff_ms),
        };
        if halt.failure.diverged {
            tracing::error!(target: "wraft::apply", node = self.node, index = halt.failure.index,
                applied = self.applied, "{}", halt.failure.error);
        } else {
            tracing::error!(target: "wraft::apply", node = self.node, machine = %halt.failure.machine,
            index = halt.failure.index, applied = self.applied, attempts, retry_in_ms = backoff_ms,
            error = %halt.failure.error,
            "this node cannot apply entry {} (a node-local failure, not the entry's result): \
             it stops applying, serves no reads and takes no snapshots until it has re-derived \
             its state from its base snapshot and the log; the other replicas are unaffected",
            halt.failure.index);
        }
        self.metrics.halted.set(1.0);
        let _ = self.events.send(SnapEvent::ApplyHalted {
            reason: halt.describe(),
        });
        self.halted = Some(halt);
        self.publish();
    }

    pub(super) fn resumed(&mut self, how: &str) {
        tracing::info!(target: "wraft::apply", node = self.node, applied = self.applied,
            "applying again: {how}");
        self.metrics.halted.set(0.0);
        let _ = self.events.send(SnapEvent::ApplyResumed);
    }

    /// A halted applier's try to go on: restore every machine and the session table from the
    /// base snapshot (or from nothing), replay the log from there, then the held entries. A
    /// node-local failure that is gone (a disk with room again, a watchdog raised in the
    /// config after a restart) lets it through; one that persists halts again, later.
    pub(super) async fn rederive(&mut self) {
        let Some(halt) = self.halted.take() else {
            return;
        };
        let attempts = halt.attempts + 1;
        let started = std::time::Instant::now();
        tracing::info!(target: "wraft::apply", node = self.node, attempt = attempts,
            base = self.base.map_or(0, |b| b.last_index), "re-deriving the state from the base snapshot and the log");
        let replay = match self.reset_to_base().await {
            Ok(()) => {
                let upto = self.held.first().map_or(halt.failure.index, |e| e.index);
                self.read_log(self.applied + 1, upto).await
            }
            Err(e) => Err(e),
        };
        let mut entries = match replay {
            Ok(entries) => entries,
            Err(error) => {
                let failure = LocalFailure {
                    error: format!("{}; re-deriving failed: {error}", halt.failure.error),
                    ..halt.failure
                };
                self.halt(failure, attempts);
                return;
            }
        };
        entries.append(&mut self.held);
        self.apply_or_halt(entries, attempts).await;
        if self.halted.is_none() {
            self.resumed(&format!(
                "state re-derived up to index {} in {} ms",
                self.applied,
                started.elapsed().as_millis()
            ));
        }
    }

    /// Replace the whole replicated state with the base snapshot's (or the empty state).
    pub(super) async fn reset_to_base(&mut self) -> Result<(), String> {
        match self.base {
            Some(id) => {
                let restored = snapshot::restore_all(
                    &self.host,
                    &self.storage,
                    self.modules.as_ref(),
                    id,
                    None,
                )
                .await?;
                self.swap_in(restored, id);
            }
            None => {
                for (_, m) in std::mem::take(&mut self.machines) {
                    if let Some(h) = m.handle {
                        tokio::task::spawn_blocking(move || h.shutdown());
                    }
                }
                self.sessions = SessionTable::new(SESSIONS_MAX, SESSION_EXPIRY_MS);
                self.last_timestamp_ms = 0;
                self.replicated_addresses.clear();
                self.applied = 0;
                self.chain = OutcomeChain::genesis();
            }
        }
        Ok(())
    }

    /// The committed entries `[from, to)` from this node's log.
    pub(super) async fn read_log(&self, from: u64, to: u64) -> Result<Vec<Entry>, String> {
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut next = from;
            while next < to {
                let page = storage
                    .log
                    .entries(next, to, 64 << 20)
                    .map_err(|e| format!("reading log entries {next}..{to}: {e}"))?;
                let Some(last) = page.last() else {
                    return Err(format!("log entries {next}..{to} are missing"));
                };
                next = last.index + 1;
                for le in &page {
                    out.push(crate::codec::decode_entry(le).map_err(|e| e.to_string())?);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
