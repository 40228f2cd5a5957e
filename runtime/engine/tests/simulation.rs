//! Randomized, seeded whole-cluster simulations (feature `sim`).
//!
//! Each scenario runs a few hundred seeds by default. Replay one failing seed with
//! `WRAFT_SIM_SEED=<seed> cargo test -p wraft-engine --features sim --test simulation <scenario>`;
//! run more with `WRAFT_SIM_SEEDS=10000`.

use wraft_engine::sim::{Sim, SimConfig, SimReport, seeds_from_env};

fn run_scenario(
    name: &str,
    base: u64,
    default_seeds: u64,
    mk: impl Fn(u64) -> SimConfig,
) -> SimReport {
    let seeds = seeds_from_env(base, default_seeds);
    let n = seeds.len();
    let mut t = SimReport::default();
    for seed in seeds {
        match Sim::new(mk(seed)).run() {
            Ok(r) => {
                t.events += r.events;
                t.ops_completed += r.ops_completed;
                t.ops_unknown += r.ops_unknown;
                t.max_commit = t.max_commit.max(r.max_commit);
                t.max_term = t.max_term.max(r.max_term);
                t.snapshots_installed += r.snapshots_installed;
                t.chunks_delivered += r.chunks_delivered;
                t.crashes += r.crashes;
                t.conf_changes_applied += r.conf_changes_applied;
                t.transfers += r.transfers;
                t.duplicates_suppressed += r.duplicates_suppressed;
                t.lease_reads += r.lease_reads;
            }
            Err(f) => panic!(
                "simulation failed: {f}\nreplay: WRAFT_SIM_SEED={seed} cargo test -p wraft-engine --features sim --test simulation {name}"
            ),
        }
    }
    eprintln!("{name}: {n} seeds ok: {t:?}");
    t
}

#[test]
fn full_fault_schedule_keeps_raft_safe_live_and_linearizable() {
    let t = run_scenario(
        "full_fault_schedule_keeps_raft_safe_live_and_linearizable",
        1,
        500,
        SimConfig::new,
    );
    if std::env::var("WRAFT_SIM_SEED").is_err() {
        // The schedule really exercised what it claims to.
        assert!(
            t.snapshots_installed > 0,
            "no snapshot was ever installed: {t:?}"
        );
        assert!(t.chunks_delivered > 0);
        assert!(t.crashes > 0);
        assert!(t.conf_changes_applied > 0);
        assert!(t.transfers > 0);
        assert!(t.ops_completed > 0);
    }
}

#[test]
fn lease_reads_stay_linearizable_under_drift_and_faults() {
    let t = run_scenario(
        "lease_reads_stay_linearizable_under_drift_and_faults",
        100_000,
        400,
        |seed| {
            let mut c = SimConfig::new(seed);
            c.lease_reads = true;
            c
        },
    );
    if std::env::var("WRAFT_SIM_SEED").is_err() {
        assert!(t.lease_reads > 0, "no read was served from a lease: {t:?}");
    }
}

#[test]
fn three_voters_without_pre_vote_survive_faults() {
    run_scenario(
        "three_voters_without_pre_vote_survive_faults",
        200_000,
        400,
        |seed| {
            let mut c = SimConfig::new(seed);
            c.voters = 3;
            c.spares = 1;
            c.pre_vote = false;
            c
        },
    );
}

#[test]
fn lossy_duplicating_network_without_crashes() {
    run_scenario(
        "lossy_duplicating_network_without_crashes",
        300_000,
        300,
        |seed| {
            let mut c = SimConfig::new(seed);
            c.crashes = false;
            c.drop_per_mille = 200;
            c.dup_per_mille = 100;
            c
        },
    );
}

#[test]
fn client_retries_after_leader_change_apply_at_most_once() {
    // Transfers and crashes force retries of the same (client_id, seq).
    let t = run_scenario(
        "client_retries_after_leader_change_apply_at_most_once",
        400_000,
        300,
        |seed| {
            let mut c = SimConfig::new(seed);
            c.membership_changes = false;
            c.clients = 6;
            c.keys = 2;
            c
        },
    );
    if std::env::var("WRAFT_SIM_SEED").is_err() {
        assert!(
            t.duplicates_suppressed > 0,
            "no retried command ever reached the log twice: {t:?}"
        );
    }
}
