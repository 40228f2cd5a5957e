//! The deployment kit in `deploy/` and `wraft config check`: the example three-machine configs
//! pass the check (with certificates generated here), the check lists every problem of a bad
//! config and exits non-zero, the systemd unit passes `systemd-analyze verify` and carries the
//! directives an operator relies on, and the container definition has its required parts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use wraft_transport::certs::{CertDir, Validity};

use wraft_tests::{workspace_root, wraft_bin};

fn wraft(args: &[&str]) -> Output {
    Command::new(wraft_bin())
        .args(args)
        .output()
        .expect("run wraft")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn deploy(rel: &str) -> PathBuf {
    workspace_root().join("deploy").join(rel)
}

fn certs_in(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let o = wraft(&[
        "cert",
        "--dir",
        s(&certs),
        "--nodes",
        "1,2,3",
        "--clients",
        "admin",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    certs
}

#[test]
fn the_example_configs_pass_config_check_with_generated_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs_in(tmp.path());
    for id in 1..=3 {
        let file = deploy(&format!("examples/node-{id}.toml"));
        let data = tmp.path().join(format!("data-{id}"));
        let o = wraft(&[
            "config",
            "check",
            s(&file),
            "--set",
            &format!("tls.dir={}", s(&certs)),
            "--set",
            &format!("node.data_dir={}", s(&data)),
        ]);
        let out = text(&o);
        assert!(o.status.success(), "node-{id}.toml:\n{out}");
        assert!(out.contains("\nOK\n"), "{out}");
        assert!(out.contains("wraft-2.example.internal:7000"), "{out}");
        assert!(out.contains(&format!("node-{id}.crt valid for")), "{out}");
        assert!(!data.exists(), "the check creates nothing");
    }
}

#[test]
fn config_check_lists_every_problem_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs_in(tmp.path());
    // Node 1's key replaced by node 2's: parses, but does not fit the certificate.
    std::fs::copy(certs.join("node-2.key"), certs.join("node-1.key")).unwrap();
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let file = tmp.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[node]
id = 1
data_dir = "{data}"
listen = "0.0.0.0:0"

[cluster]
members = {{ 1 = "localhost:7000", 2 = "wraft-2.example.internal:7000" }}

[tls]
dir = "{certs}"

[raft]
heartbeat_interval_ms = 0

[snapshot]
chunk_bytes = 1
"#,
            data = s(&blocker.join("data")),
            certs = s(&certs),
        ),
    )
    .unwrap();
    let o = wraft(&["config", "check", s(&file)]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    for want in [
        "raft.heartbeat_interval_ms",
        "snapshot.chunk_bytes",
        "node.listen: port 0",
        "private key does not fit",
        "a-file is not a directory",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    // Five causes; a zero heartbeat breaks two rules.
    assert!(out.contains("6 problem(s)"), "{out}");

    // `--set` overrides apply as for `wraft node`; an expired certificate is named.
    let dir = CertDir::new(&certs).overwrite(true);
    let ca = dir.load_ca().unwrap();
    let now = SystemTime::now();
    let expired = Validity::between(
        now - Duration::from_secs(2 * 86_400),
        now - Duration::from_secs(86_400),
    )
    .unwrap();
    dir.write_issued(&ca.issue_node(1, &[], expired).unwrap())
        .unwrap();
    let o = wraft(&[
        "config",
        "check",
        s(&file),
        "--set",
        "raft.heartbeat_interval_ms=50",
        "--set",
        "snapshot.chunk_bytes=65536",
        "--set",
        "node.listen=0.0.0.0:7000",
        "--set",
        &format!("node.data_dir={}", s(&tmp.path().join("data"))),
    ]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("1 problem(s)") && out.contains("expired"),
        "{out}"
    );

    // A syntax error is reported as such (the parser stops there).
    std::fs::write(&file, "[node]\nid = 1\nlisten = \"node-1:7000\"\n").unwrap();
    let o = wraft(&["config", "check", s(&file)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("node-1:7000"), "{}", text(&o));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_and_has_the_service_directives() {
    let unit = std::fs::read_to_string(deploy("systemd/wraft.service")).unwrap();
    for directive in [
        "Type=exec",
        "ExecStartPre=/usr/local/bin/wraft config check /etc/wraft/node.toml",
        "ExecStart=/usr/local/bin/wraft node --config /etc/wraft/node.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
        "Restart=on-failure",
        "LimitNOFILE=",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/wraft",
        "User=wraft",
        "NoNewPrivileges=true",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(directive)),
            "{directive} missing"
        );
    }
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("MemoryDenyWriteExecute")),
        "wasmtime maps compiled guests executable"
    );
    let sysusers = std::fs::read_to_string(deploy("systemd/wraft.sysusers.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u wraft ")));

    let analyze = which("systemd-analyze").unwrap_or_else(|_| {
        panic!("systemd-analyze is not installed: run `make deps` (it installs Debian's systemd)")
    });
    // verify insists ExecStart's binary exists: point it at the one just built.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("wraft.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/wraft", s(&wraft_bin()))).unwrap();
    let o = Command::new(analyze)
        .args(["verify", s(&copy)])
        .output()
        .expect("systemd-analyze");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // Unknown or misspelt directives are only warnings: refuse them too.
    let ours: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("wraft.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{out}");
}

#[test]
fn the_container_definition_builds_in_stages_and_runs_unprivileged_with_a_health_check() {
    let file = std::fs::read_to_string(deploy("container/Containerfile")).unwrap();
    let lines: Vec<&str> = file.lines().filter(|l| !l.starts_with('#')).collect();
    let from: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage");
    assert!(from[0].contains("rust:") && from[0].contains(" AS build"));
    assert!(from[1].contains("debian:") && from[1].contains("-slim"));
    for want in [
        "USER wraft",
        "STOPSIGNAL SIGTERM",
        "VOLUME [\"/var/lib/wraft\"]",
        "COPY --from=build",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "{want} missing");
    }
    assert!(file.contains("HEALTHCHECK") && file.contains("http://127.0.0.1:9100/readyz"));
    // The example configs match what the image expects.
    let example = std::fs::read_to_string(deploy("examples/node-1.toml")).unwrap();
    for want in [
        "data_dir = \"/var/lib/wraft\"",
        "listen = \"0.0.0.0:7000\"",
        "metrics_listen = \"0.0.0.0:9100\"",
    ] {
        assert!(example.contains(want), "{want}");
    }
}

fn which(bin: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .ok_or(())
}
