//! What a run does: its options (from the environment, with the command that replays them) and
//! the fault kinds with their weights in the schedule.

use std::time::Duration;

/// What to run.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// Name of the test running this (for the replay command).
    pub test: String,
    /// Voting members (3 or 5).
    pub nodes: u64,
    /// Time spent injecting faults.
    pub duration: Duration,
    /// Seed of the fault schedule and the clients' choices.
    pub seed: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Register keys (`k0`…).
    pub keys: u64,
    /// `snapshot.hint_threshold_entries` given to the nodes (0 keeps the
    /// node's default); `snapshot.log_entries_max` gets 4×, the retained
    /// log margin ¼ of it.
    pub snapshot_entries: u64,
    /// After a fault heals, a write must succeed within this long.
    pub recovery_bound: Duration,
    /// Fault kinds to draw from (empty: all), by [`FaultKind::slug`].
    pub only: Vec<String>,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

impl FaultOptions {
    /// Options for test `test`: `nodes` and `secs` unless overridden by
    /// `WRAFT_FAULTS_NODES` / `WRAFT_FAULTS_SECS`; the seed from
    /// `WRAFT_FAULTS_SEED` or the clock; `WRAFT_FAULTS_CLIENTS` (default 4),
    /// `WRAFT_FAULTS_KEYS` (default 6), `WRAFT_FAULTS_SNAPSHOT_ENTRIES`
    /// (default 400).
    pub fn from_env(test: &str, nodes: u64, secs: u64) -> FaultOptions {
        let seed = env_u64("WRAFT_FAULTS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                % 1_000_000_007
        });
        FaultOptions {
            test: test.to_owned(),
            nodes: env_u64("WRAFT_FAULTS_NODES").unwrap_or(nodes),
            duration: Duration::from_secs(env_u64("WRAFT_FAULTS_SECS").unwrap_or(secs)),
            seed,
            clients: env_u64("WRAFT_FAULTS_CLIENTS").unwrap_or(4).max(1),
            keys: env_u64("WRAFT_FAULTS_KEYS").unwrap_or(6).max(1),
            snapshot_entries: env_u64("WRAFT_FAULTS_SNAPSHOT_ENTRIES").unwrap_or(400),
            recovery_bound: Duration::from_secs(20),
            only: std::env::var("WRAFT_FAULTS_ONLY")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The command that reruns this schedule.
    pub fn replay_command(&self) -> String {
        let only = if self.only.is_empty() {
            String::new()
        } else {
            format!("WRAFT_FAULTS_ONLY={} ", self.only.join(","))
        };
        format!(
            "{only}WRAFT_FAULTS_SEED={} WRAFT_FAULTS_SECS={} WRAFT_FAULTS_NODES={} WRAFT_FAULTS_CLIENTS={} \
             WRAFT_FAULTS_KEYS={} WRAFT_FAULTS_SNAPSHOT_ENTRIES={} \
             cargo nextest run -p wraft-tests --test faults --no-capture {}",
            self.seed,
            self.duration.as_secs(),
            self.nodes,
            self.clients,
            self.keys,
            self.snapshot_entries,
            self.test
        )
    }
}

/// The faults the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `kill -9` the leader, restart it after 0.5–3 s.
    KillLeader,
    /// `kill -9` a follower, restart it after 0.5–3 s.
    KillFollower,
    /// Keep a follower down while the leader commits well past the snapshot
    /// threshold, then restart it and wait for it to catch up (by log, or by
    /// InstallSnapshot once the node snapshots).
    LaggingFollower,
    /// `SIGSTOP` the leader for 1.2–3.5 s (beyond the election timeout).
    PauseLeader,
    /// `SIGSTOP` a follower for 1.2–3.5 s.
    PauseFollower,
    /// Split the voters into a minority and a majority for 1.5–5 s.
    Partition,
    /// Cut the leader off from every other node for 1.5–5 s.
    IsolateLeader,
    /// One-way cuts for 1.5–5 s: the leader cannot send, or cannot hear, or
    /// one random direction of one link is cut.
    OneWayCut,
    /// Every link drops 5–30 % of datagrams and is delayed 0–30 ms
    /// (± jitter) for 3–8 s.
    LossyLinks,
    /// Ask the leader to hand over to another voter.
    LeaderTransfer,
    /// Add a fresh node (learner, catch up, promote), then remove an old
    /// voter (the leader a third of the time) and stop its process.
    MembershipChange,
}

impl FaultKind {
    /// Every kind with its weight in the schedule.
    pub const WEIGHTS: [(FaultKind, u32); 11] = [
        (FaultKind::KillLeader, 12),
        (FaultKind::KillFollower, 8),
        (FaultKind::LaggingFollower, 6),
        (FaultKind::PauseLeader, 10),
        (FaultKind::PauseFollower, 6),
        (FaultKind::Partition, 10),
        (FaultKind::IsolateLeader, 10),
        (FaultKind::OneWayCut, 10),
        (FaultKind::LossyLinks, 8),
        (FaultKind::LeaderTransfer, 8),
        (FaultKind::MembershipChange, 5),
    ];

    /// Short name for `WRAFT_FAULTS_ONLY`.
    pub fn slug(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::LaggingFollower => "lagging-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::Partition => "partition",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::OneWayCut => "one-way",
            FaultKind::LossyLinks => "lossy",
            FaultKind::LeaderTransfer => "transfer",
            FaultKind::MembershipChange => "membership",
        }
    }

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill -9 leader + restart",
            FaultKind::KillFollower => "kill -9 follower + restart",
            FaultKind::LaggingFollower => "follower down past snapshot threshold",
            FaultKind::PauseLeader => "SIGSTOP leader",
            FaultKind::PauseFollower => "SIGSTOP follower",
            FaultKind::Partition => "partition minority/majority",
            FaultKind::IsolateLeader => "isolate leader",
            FaultKind::OneWayCut => "one-way cut",
            FaultKind::LossyLinks => "lossy + slow links",
            FaultKind::LeaderTransfer => "leadership transfer",
            FaultKind::MembershipChange => "membership change",
        }
    }
}
