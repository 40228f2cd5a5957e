//! Prints the simulator's report for every seed of a range under several
//! configurations, one line each. The engine and the simulator are
//! deterministic given the seed, so two builds that behave identically print
//! identical output: run it before and after a refactor and compare.
//!
//! With `WRAFT_SIM_TRACE=1` the simulator also writes every action each
//! engine hands out (sends, persists, results, snapshots, role changes) to
//! stderr; hash or diff that for a much finer comparison.
//!
//! Run: `cargo run --release -p wraft-engine --example sim_fingerprint -- <first_seed> <seeds>`
//! (defaults 0 and 300).

use wraft_engine::sim::{Sim, SimConfig};

/// A named way to build the configuration for a seed.
type Scenario = (&'static str, fn(u64) -> SimConfig);

fn configs() -> Vec<Scenario> {
    vec![
        ("full", SimConfig::new),
        ("lease", |s| {
            let mut c = SimConfig::new(s);
            c.lease_reads = true;
            c
        }),
        ("three_no_prevote", |s| {
            let mut c = SimConfig::new(s);
            c.voters = 3;
            c.spares = 1;
            c.pre_vote = false;
            c
        }),
        ("lossy", |s| {
            let mut c = SimConfig::new(s);
            c.crashes = false;
            c.drop_per_mille = 200;
            c.dup_per_mille = 100;
            c
        }),
        ("one_step_per_poll", |s| {
            let mut c = SimConfig::new(s);
            c.multi_step_per_mille = 0;
            c.clients = 6;
            c.membership_changes = false;
            c
        }),
    ]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    for (name, mk) in configs() {
        for seed in first..first + n {
            if std::env::var_os("WRAFT_SIM_TRACE").is_some() {
                eprintln!("=== {name} seed {seed}");
            }
            let r = Sim::new(mk(seed)).run();
            println!("{name} {seed} {r:?}");
        }
    }
}
