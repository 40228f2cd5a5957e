//! The snapshot fidelity check of `wraft build` (`wraft::fidelity`), on built Rust guests:
//! `examples/misbehave`, whose restore can be told to be unfaithful, and `examples/kv` with its
//! own sample log. (JavaScript and Python builds: tests/polyglot.rs.)

use std::path::Path;

use wraft::build::{BuildError, BuildOptions, build_project};
use wraft::fidelity::{FidelityError, SAMPLE_FILE, SampleLog, check_fidelity};
use wraft_host::{HostConfig, HostEngine, MachineModule};
use wraft_tests::{guests, workspace_root};

/// `examples/<name>`, built (cargo's no-op when fresh) and compiled through the guests' shared
/// compile cache.
fn module(name: &str) -> MachineModule {
    let engine = HostEngine::new(HostConfig {
        cache_dir: Some(guests::target_dir().join("wasm-cache")),
        ..HostConfig::default()
    })
    .expect("host engine");
    engine
        .load_file(&guests::build(name))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn sample(text: &str) -> SampleLog {
    SampleLog::parse(text.as_bytes(), Path::new("test.jsonl")).expect("sample log")
}

/// Arms misbehave's unfaithful restore in the first half (so the snapshot carries it), then
/// counts: the restored instance counts from 1000 more.
const UNFAITHFUL: &str = "{\"UnfaithfulRestore\":true}\n\"Ok\"\n\"Ok\"\n\"Ok\"\n? null\n";

#[test]
fn a_restore_that_changes_state_fails_the_check_naming_the_entry_and_both_outputs() {
    let m = module("misbehave");
    match check_fidelity(&m, &sample(UNFAITHFUL)) {
        Err(FidelityError::Unfaithful {
            what,
            restored_after,
            applied,
            restored,
        }) => {
            assert_eq!(what, "the output of entry 3 (\"Ok\")");
            assert_eq!(restored_after, 2);
            assert_eq!(
                (applied.as_str(), restored.as_str()),
                ("Ok(\"2\")", "Ok(\"1002\")")
            );
        }
        other => panic!("expected the check to find the unfaithful restore, got {other:?}"),
    }
}

#[test]
fn a_difference_only_a_query_or_the_final_snapshot_shows_is_found_too() {
    let m = module("misbehave");
    // The entries after the restore do not output the count: only the query can tell.
    let quiet = "{\"UnfaithfulRestore\":true}\n\"Ok\"\n{\"FailSnapshot\":false}\n\
                 {\"FailSnapshot\":false}\n";
    let e = check_fidelity(&m, &sample(&format!("{quiet}? null\n")))
        .expect_err("the query answers differently");
    let msg = e.to_string();
    assert!(
        msg.starts_with("the answer to query null after entry 4 differs")
            && msg.contains("applied  Ok(1)")
            && msg.contains("restored Ok(1001)"),
        "{msg}"
    );
    // No query either: the final snapshots differ.
    let e = check_fidelity(&m, &sample(quiet)).expect_err("the final snapshots differ");
    let msg = e.to_string();
    assert!(
        msg.starts_with("the final snapshot (after entry 4), chunk 0 at byte"),
        "{msg}"
    );
}

#[test]
fn a_faithful_machine_passes_and_application_errors_are_compared_too() {
    let m = module("misbehave");
    let report = check_fidelity(
        &m,
        &sample("\"Ok\"\n{\"FailSnapshot\":false}\n\"Ok\"\n\"not a command\"\n\"Ok\"\n? null\n"),
    )
    .expect("misbehave restores faithfully unless told otherwise");
    assert_eq!(
        (report.entries, report.queries, report.restored_after),
        (5, 1, 2)
    );
    // Armed after the snapshot, the fault never meets a restore: the check cannot see it.
    check_fidelity(
        &m,
        &sample("\"Ok\"\n\"Ok\"\n{\"UnfaithfulRestore\":true}\n\"Ok\"\n"),
    )
    .expect("an unfaithful restore that is never exercised passes");
}

#[test]
fn a_trap_in_the_sample_fails_the_check_naming_the_entry() {
    let m = module("misbehave");
    let e = check_fidelity(&m, &sample("\"Ok\"\n{\"Panic\":\"in the sample\"}\n"))
        .expect_err("a trap fails the check");
    let msg = e.to_string();
    assert!(
        msg.starts_with("entry 2 ({\"Panic\":\"in the sample\"}) on the instance that applied")
            && msg.contains("misbehave: in the sample"),
        "{msg}"
    );
}

#[test]
fn the_kv_example_passes_with_its_own_sample_log() {
    let log = workspace_root().join("examples/kv").join(SAMPLE_FILE);
    let sample = SampleLog::read(&log)
        .expect("examples/kv's sample log parses")
        .expect("examples/kv has a sample log");
    let report = check_fidelity(&module("kv"), &sample).expect("kv restores faithfully");
    assert!(report.entries >= 8 && report.queries >= 4, "{report:?}");
}

#[test]
fn wraft_build_fails_on_an_unfaithful_restore_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join(SAMPLE_FILE);
    std::fs::write(&log, UNFAITHFUL).expect("sample log");
    let out = tmp.path().join("misbehave.wasm");
    let opts = BuildOptions {
        out: Some(out.clone()),
        target_dir: Some(guests::target_dir()),
        host: Some(HostConfig {
            cache_dir: Some(guests::target_dir().join("wasm-cache")),
            ..HostConfig::default()
        }),
        sample_log: Some(log.clone()),
    };
    let project = workspace_root().join("examples/misbehave");
    match build_project(&project, &opts) {
        Err(e @ BuildError::Fidelity { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!(
                    "snapshot fidelity check with {} failed: the output of entry 3",
                    log.display()
                )) && msg.contains("restored Ok(\"1002\")"),
                "{msg}"
            );
        }
        other => panic!("expected the fidelity check to fail the build, got {other:?}"),
    }
    assert!(!out.exists(), "a build that fails a check must not write");
}
