//! Shared test support: a reference model of the log and a seeded scenario generator.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use wraft_storage::fault::FaultFs;
use wraft_storage::{Bytes, HardState, Log, LogEntry, StorageConfig, WriteBatch};

/// The log as a plain vector: the oracle every recovery is compared against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Model {
    pub floor: (u64, u64),
    pub entries: Vec<LogEntry>,
    pub hs: HardState,
}

/// One record-sized step of the model (a batch expands into several).
#[derive(Debug, Clone)]
pub enum Step {
    Truncate(u64),
    Entry(LogEntry),
    Hs(HardState),
    Compact(u64, u64),
}

impl Model {
    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.floor.0, |e| e.index)
    }

    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.floor.0 {
            return Some(self.floor.1);
        }
        self.entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.term)
    }

    pub fn apply(&mut self, s: &Step) {
        match s {
            Step::Truncate(t) => self.entries.retain(|e| e.index <= *t),
            Step::Entry(e) => self.entries.push(e.clone()),
            Step::Hs(hs) => self.hs = *hs,
            Step::Compact(i, t) => {
                if *i <= self.floor.0 {
                    return;
                }
                if self.term(*i) == Some(*t) {
                    self.entries.retain(|e| e.index > *i);
                } else {
                    self.entries.clear();
                }
                self.floor = (*i, *t);
            }
        }
    }

    /// Read the whole state back from a log.
    pub fn read(log: &Log) -> Model {
        let first = log.first_index();
        let last = log.last_index();
        Model {
            floor: log.floor(),
            entries: log
                .entries(first, last + 1, u64::MAX)
                .expect("read back entries"),
            hs: log.hard_state(),
        }
    }
}

/// Expand a batch into the record-level steps the writer produces (truncate, entries, hs, floor).
pub fn steps_of(model: &Model, b: &WriteBatch) -> Vec<Step> {
    let mut out = Vec::new();
    let mut trunc = b.truncate_after;
    if let Some(first) = b.entries.first()
        && first.index <= trunc.unwrap_or(model.last_index())
    {
        trunc = Some(first.index - 1);
    }
    if let Some(t) = trunc {
        out.push(Step::Truncate(t));
    }
    out.extend(b.entries.iter().cloned().map(Step::Entry));
    if let Some(hs) = b.hard_state {
        out.push(Step::Hs(hs));
    }
    if let Some((i, t)) = b.compact
        && i > model.floor.0
    {
        out.push(Step::Compact(i, t));
    }
    out
}

/// A seeded scenario: batches plus the model state after every record-level step.
pub struct Scenario {
    pub batches: Vec<WriteBatch>,
    /// `steps[k]` = number of record-level steps in batches `0..k`.
    pub steps_before: Vec<usize>,
    /// `states[j]` = model after `j` steps.
    pub states: Vec<Model>,
}

pub fn scenario(seed: u64, batches: usize) -> Scenario {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model::default();
    let mut states = vec![model.clone()];
    let mut out = Vec::new();
    let mut steps_before = vec![0];
    let mut term = 1u64;
    for _ in 0..batches {
        let last = model.last_index();
        let floor = model.floor.0;
        let payload = |rng: &mut fastrand::Rng| {
            let n = rng.usize(0..40);
            Bytes::from((0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>())
        };
        let roll = rng.u32(0..100);
        let mut b = WriteBatch::default();
        if roll < 55 || last == floor {
            let n = rng.u64(1..4);
            b.entries = (last + 1..=last + n)
                .map(|i| LogEntry {
                    index: i,
                    term,
                    payload: payload(&mut rng),
                })
                .collect();
            if rng.bool() {
                b.hard_state = Some(HardState {
                    term,
                    vote: Some(rng.u64(1..4)),
                    commit: last,
                });
            }
        } else if roll < 65 {
            term += 1;
            b.hard_state = Some(HardState {
                term,
                vote: None,
                commit: model.hs.commit,
            });
        } else if roll < 77 {
            // A new leader overwrites a conflicting suffix.
            term += 1;
            let at = rng.u64(floor + 1..=last);
            b.entries = vec![LogEntry {
                index: at,
                term,
                payload: payload(&mut rng),
            }];
            b.hard_state = Some(HardState {
                term,
                vote: Some(1),
                commit: model.hs.commit,
            });
        } else if roll < 85 {
            b.truncate_after = Some(rng.u64(floor..=last));
        } else if roll < 96 {
            let at = rng.u64(floor + 1..=last);
            b.compact = Some((at, model.term(at).unwrap_or(0)));
        } else {
            // Install a snapshot ahead of the log: everything is discarded.
            term += 1;
            b.compact = Some((last + rng.u64(1..5), term));
            b.hard_state = Some(HardState {
                term,
                vote: None,
                commit: model.hs.commit,
            });
        }
        for s in steps_of(&model, &b) {
            model.apply(&s);
            states.push(model.clone());
        }
        steps_before.push(states.len() - 1);
        out.push(b);
    }
    Scenario {
        batches: out,
        steps_before,
        states,
    }
}

pub fn small_config() -> StorageConfig {
    StorageConfig {
        segment_bytes: 300,
        // Small enough that the crash tests cut inside the zero-filled space too.
        preallocate_bytes: 96,
        tail_cache_bytes: 512,
        queue_bytes_max: 1 << 20,
        entry_bytes_max: 1 << 16,
        ..StorageConfig::default()
    }
}

pub fn open_log(
    fs: &FaultFs,
    dir: &Path,
    cfg: &StorageConfig,
) -> wraft_storage::Result<(Log, wraft_storage::LogRecovery)> {
    Log::open(Arc::new(fs.clone()), dir, cfg, None)
}
