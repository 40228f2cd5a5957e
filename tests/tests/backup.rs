//! Backup, restore and quorum-loss recovery against real `wraft node` processes, driven through
//! the `wraft` command as an operator would: `wraft snapshot save`, `wraft snapshot inspect`,
//! `wraft restore`, `wraft recover`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use wraft_client::Client;
use wraft_proto::Consistency;
use wraft_tests::{Cluster, guest, json as to_json, kv_get, kv_put, kv_value, wait_for, wraft_bin};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `wraft ARGS` against `cluster` (its endpoints and certificates in the environment).
fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    let endpoints: Vec<String> = cluster.endpoints().iter().map(|a| a.to_string()).collect();
    Command::new(wraft_bin())
        .args(args)
        .env("WRAFT_ENDPOINTS", endpoints.join(","))
        .env("WRAFT_CERTS", cluster.certs_dir())
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("running wraft")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "wraft failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The queries a restored cluster must answer as the original did: every key of the kv
/// machine (and one never written), and the counter.
async fn answers(client: &Client, keys: &[String]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for k in keys.iter().map(String::as_str).chain(["never-written"]) {
        let a = client
            .query("kv", &kv_get(k), Consistency::Linearizable)
            .await
            .expect("kv query");
        out.insert(format!("kv {k}"), a);
    }
    let a = client
        .query("ctr", b"{}", Consistency::Linearizable)
        .await
        .expect("counter query");
    out.insert("counter".into(), a);
    out
}

/// The newest snapshot file in a node's data directory, if it has one.
fn newest_snapshot_file(data_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut snaps: Vec<_> = std::fs::read_dir(data_dir.join("snap"))
        .expect("snap dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    snaps.sort();
    snaps.pop()
}

/// `--members` for a cluster: `1=ADDR,2=ADDR,...`.
fn members_arg(cluster: &Cluster) -> String {
    cluster
        .ids()
        .iter()
        .map(|id| format!("{id}={}", cluster.addr(*id)))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_restored_into_a_new_cluster_answers_as_the_original_and_takes_writes() {
    let backups = tempfile::tempdir().expect("temp dir");
    let file = backups.path().join("cluster.snap");
    let (before, keys, machines_before, saved_index) = {
        let mut old = Cluster::start(3);
        old.wait_for_leader(LEADER_TIMEOUT).await;
        let client = old.client().await;
        client.deploy("kv", guest("kv")).await.expect("deploy kv");
        client
            .deploy("ctr", guest("counter"))
            .await
            .expect("deploy counter");
        let mut keys = Vec::new();
        for i in 0..40 {
            let key = format!("key-{i:03}");
            client
                .propose("kv", &kv_put(&key, &format!("v{i}")))
                .await
                .expect("put");
            keys.push(key);
        }
        // Overwrites and counter steps, so the state is not just the first values.
        for i in (0..40).step_by(7) {
            client
                .propose("kv", &kv_put(&keys[i], &format!("second-{i}")))
                .await
                .expect("overwrite");
            client
                .propose("ctr", &to_json(json!({"Add": i as i64 + 1})))
                .await
                .expect("add");
        }
        let before = answers(&client, &keys).await;
        let machines = client.machines().await.expect("machines");

        let out = cli(&old, &["snapshot", "save", file.to_str().unwrap()]);
        let stdout = ok(out.clone());
        assert!(stdout.contains("verified"), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("bytes (100%)"),
            "progress on stderr: {stderr}"
        );
        assert!(!backups.path().join("cluster.snap.partial").exists());
        let inspect = ok(cli(
            &old,
            &["snapshot", "inspect", "--json", file.to_str().unwrap()],
        ));
        let report: serde_json::Value = serde_json::from_str(&inspect).expect("inspect JSON");
        assert_eq!(report["ok"], true, "{inspect}");
        let saved_index = report["index"].clone();
        assert_eq!(report["machines"].as_array().map(Vec::len), Some(2));
        // A node's own snapshot names its modules by hash; the backup carries them.
        let saved_machines = report["machines"].as_array().expect("machines");
        assert!(
            saved_machines.iter().all(|m| m["module_carried"] == true),
            "{inspect}"
        );
        // The node the save took its snapshot on (the leader, most often) has one.
        let own = old
            .ids()
            .into_iter()
            .find_map(|id| newest_snapshot_file(&old.config(id).node.data_dir))
            .expect("a node's own snapshot file");
        let own_report: serde_json::Value = serde_json::from_str(&ok(cli(
            &old,
            &["snapshot", "inspect", "--json", own.to_str().unwrap()],
        )))
        .expect("inspect JSON");
        let own_machines = own_report["machines"].as_array().expect("machines");
        assert!(
            own_machines.iter().all(|m| m["module_carried"] == false),
            "{own_report}"
        );
        // Such a file is not a backup: restore refuses it and writes nothing.
        let target = backups.path().join("from-own-file");
        let out = Command::new(wraft_bin())
            .args(["restore", own.to_str().unwrap(), "--data-dir"])
            .arg(&target)
            .args(["--node-id", "1", "--members", &members_arg(&old)])
            .output()
            .expect("running wraft restore");
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("not a backup") && text(&out).contains("wraft snapshot save"),
            "{}",
            text(&out)
        );
        assert!(!target.exists());

        // Destroy the whole cluster: processes and data.
        for id in old.ids() {
            old.kill(id);
            let dir = old.config(id).node.data_dir.clone();
            std::fs::remove_dir_all(&dir).expect("deleting a data dir");
        }
        (before, keys, machines, saved_index)
    };

    // A new cluster (new ports, new certificates), each member seeded from the same file.
    let mut members = String::new();
    let mut restored_dirs = Vec::new();
    let new = Cluster::start_prepared(
        3,
        |_| {},
        |cfg| {
            if members.is_empty() {
                members = cfg
                    .cluster
                    .members
                    .iter()
                    .map(|(id, a)| format!("{id}={a}"))
                    .collect::<Vec<_>>()
                    .join(",");
            }
            let out = Command::new(wraft_bin())
                .args(["restore", file.to_str().unwrap(), "--data-dir"])
                .arg(&cfg.node.data_dir)
                .args(["--node-id", &cfg.node.id.to_string(), "--members", &members])
                .output()
                .expect("running wraft restore");
            assert!(out.status.success(), "restore: {}", text(&out));
            restored_dirs.push(cfg.node.data_dir.clone());
        },
    );
    assert_eq!(restored_dirs.len(), 3);
    assert_eq!(members, members_arg(&new));
    // Every member holds the same snapshot (byte for byte: same digest), with the new
    // membership and address book and the saved index.
    let mut digests = Vec::new();
    for dir in &restored_dirs {
        let snaps: Vec<_> = std::fs::read_dir(dir.join("snap"))
            .expect("restored snap dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(snaps.len(), 1, "{snaps:?}");
        let out = ok(cli(
            &new,
            &["snapshot", "inspect", "--json", snaps[0].to_str().unwrap()],
        ));
        let r: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
        assert_eq!(r["ok"], true, "{out}");
        assert_eq!(r["voters"], json!([1, 2, 3]), "{out}");
        assert_eq!(r["index"], saved_index, "{out}");
        let addresses: Vec<String> = r["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .map(|a| format!("{}={}", a[0], a[1].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(addresses.join(","), members, "{out}");
        digests.push(r["digest"].clone());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    new.wait_for_leader(LEADER_TIMEOUT).await;
    let client = new.client().await;
    let after = wait_for(
        "the restored cluster to answer",
        CATCH_UP_TIMEOUT,
        async || {
            let ms = client.machines().await.ok()?;
            (ms.len() == 2).then_some(())
        },
    )
    .await;
    let () = after;
    assert_eq!(answers(&client, &keys).await, before);
    let machines_after = client.machines().await.expect("machines");
    let strip = |ms: &[wraft_proto::MachineInfo]| {
        ms.iter()
            .map(|m| (m.name.clone(), m.module_sha256.clone(), m.deployed_at))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&machines_after), strip(&machines_before));
    let status = client.status().await.expect("status");
    assert_eq!(status.voters, vec![1, 2, 3]);

    // New writes work, and every member applies them.
    let put = client
        .propose("kv", &kv_put("after-restore", "yes"))
        .await
        .expect("a write to the restored cluster");
    new.wait_applied(&new.ids(), put.index, CATCH_UP_TIMEOUT)
        .await;
    for id in new.ids() {
        let a = new
            .stale_query(id, "kv", &kv_get("after-restore"))
            .await
            .expect("stale read");
        assert_eq!(kv_value(&a).as_deref(), Some("yes"), "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_losing_two_of_three_nodes_a_forced_survivor_keeps_every_acknowledged_write() {
    let mut c = Cluster::start(3);
    c.wait_for_leader(LEADER_TIMEOUT).await;
    let client = c.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy kv");
    let mut last = 0;
    for i in 0..30 {
        last = client
            .propose("kv", &kv_put(&format!("k{i}"), &format!("v{i}")))
            .await
            .expect("put")
            .index;
    }
    // Every acknowledged write reached node 1 (the survivor chosen below), and node 1 has a
    // snapshot: its base membership ({1, 2, 3}) comes from there, not from its config.
    c.wait_applied(&[1], last, CATCH_UP_TIMEOUT).await;
    ok(cli(
        &c,
        &["snapshot", "trigger", "--endpoints", &c.addr(1).to_string()],
    ));
    drop(client);
    for id in [2, 3] {
        c.kill(id);
        std::fs::remove_dir_all(&c.config(id).node.data_dir).expect("losing a node for good");
    }
    c.kill(1);
    c.release_port(1);
    let config = c.dir().join("node-1.toml");
    let config = config.to_str().unwrap();

    // Without --force-new-cluster: a report only.
    let report = ok(cli(&c, &["recover", "--config", config]));
    assert!(report.contains("voters {1, 2, 3}"), "{report}");
    // Forced without confirmation: refused, saying what it does and what may be lost.
    let refused = cli(&c, &["recover", "--config", config, "--force-new-cluster"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("refused") && why.contains("lost"), "{why}");
    assert!(
        why.contains("--yes-i-know-writes-missing-here-are-lost"),
        "{why}"
    );
    let still = ok(cli(&c, &["recover", "--config", config]));
    assert!(
        still.contains("voters {1, 2, 3}"),
        "a refusal writes nothing: {still}"
    );
    // Confirmed.
    let forced = ok(cli(
        &c,
        &[
            "recover",
            "--config",
            config,
            "--force-new-cluster",
            "--yes-i-know-writes-missing-here-are-lost",
        ],
    ));
    assert!(forced.contains("only voter"), "{forced}");

    // The survivor starts as a cluster of one, from its log alone (its config still lists the
    // old members: the runbook has the operator remove them, which this test leaves out so
    // that only the forced entries can make node 1 the only voter).
    c.restart(1);
    c.wait_for_leader_among(&[1], LEADER_TIMEOUT).await;
    let client = c.client_for(vec![c.addr(1)]).await;
    for i in 0..30 {
        let a = client
            .query("kv", &kv_get(&format!("k{i}")), Consistency::Linearizable)
            .await
            .expect("read on the survivor");
        assert_eq!(kv_value(&a), Some(format!("v{i}")), "k{i}");
    }
    let after = client
        .propose("kv", &kv_put("after-recovery", "yes"))
        .await
        .expect("a write to the recovered cluster");

    // Members come back as fresh nodes with new ids, through the ordinary commands.
    for id in [4, 5] {
        let addr = c.add_node(id);
        ok(cli(
            &c,
            &[
                "members",
                "add-learner",
                &id.to_string(),
                &addr.to_string(),
                "--endpoints",
                &c.addr(1).to_string(),
            ],
        ));
        c.wait_applied(&[id], after.index, CATCH_UP_TIMEOUT).await;
        wait_for(
            &format!("node {id} promoted"),
            CATCH_UP_TIMEOUT,
            async || {
                let out = cli(
                    &c,
                    &[
                        "members",
                        "promote",
                        &id.to_string(),
                        "--endpoints",
                        &c.addr(1).to_string(),
                    ],
                );
                out.status.success().then_some(())
            },
        )
        .await;
    }
    let status = client.status().await.expect("status");
    assert_eq!(status.voters, vec![1, 4, 5]);
    // The forced change is in the replicated log: a re-added member applies its record.
    wait_for(
        "node 4 to apply the record of the forced change",
        CATCH_UP_TIMEOUT,
        async || c.log(4).contains("membership was forced").then_some(()),
    )
    .await;

    // The survivor is no longer needed: the re-added members hold every acknowledged write.
    c.kill(1);
    c.wait_for_leader_among(&[4, 5], LEADER_TIMEOUT).await;
    let client = c.client_for(vec![c.addr(4), c.addr(5)]).await;
    for (k, v) in (0..30)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .chain([("after-recovery".to_owned(), "yes".to_owned())])
    {
        let a = client
            .query("kv", &kv_get(&k), Consistency::Linearizable)
            .await
            .expect("read on the re-added members");
        assert_eq!(kv_value(&a), Some(v), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_needs_an_admin_client_and_damaged_files_are_refused_by_restore_and_inspect() {
    let c = Cluster::start(1);
    c.wait_for_leader(LEADER_TIMEOUT).await;
    let client = c.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy kv");
    client.propose("kv", &kv_put("a", "1")).await.expect("put");
    wraft::local::issue_certs(c.certs_dir(), &[], &["app".to_owned()], 30).expect("client cert");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("b.snap");
    let f = file.to_str().unwrap();

    let refused = cli(&c, &["snapshot", "save", f, "--client", "app"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("admin"), "{why}");
    assert!(!file.exists() && !dir.path().join("b.snap.partial").exists());

    ok(cli(&c, &["snapshot", "save", f]));
    let bytes = std::fs::read(&file).expect("saved file");
    let restore = |snap: &Path, data: &Path| {
        Command::new(wraft_bin())
            .arg("restore")
            .arg(snap)
            .arg("--data-dir")
            .arg(data)
            .args(["--node-id", "1", "--members", "1=127.0.0.1:1"])
            .output()
            .expect("running wraft restore")
    };

    // Truncated (a download cut short), then one flipped byte in the body.
    let truncated = dir.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut flipped = bytes.clone();
    let at = bytes.len() - bytes.len() / 3;
    flipped[at] ^= 0x40;
    let corrupt = dir.path().join("corrupt.snap");
    std::fs::write(&corrupt, &flipped).unwrap();
    for (bad, expect) in [(&truncated, "file length"), (&corrupt, "digest")] {
        let data = dir.path().join("restored");
        let out = restore(bad, &data);
        assert!(!out.status.success(), "{}", text(&out));
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(why.contains(expect), "restore of {}: {why}", bad.display());
        assert!(!data.exists(), "a refused restore leaves nothing");
        let out = cli(&c, &["snapshot", "inspect", bad.to_str().unwrap()]);
        assert!(!out.status.success(), "{}", text(&out));
        let said = text(&out);
        assert!(
            said.contains(expect),
            "inspect of {}: {said}",
            bad.display()
        );
    }

    // The good file restores; a second restore into the same directory is refused.
    let data = dir.path().join("restored");
    let out = restore(&file, &data);
    assert!(out.status.success(), "{}", text(&out));
    let again = restore(&file, &data);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        text(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_list_of_a_data_dir_works_offline_whatever_wraft_endpoints_holds() {
    let c = Cluster::start(1);
    c.wait_for_leader(LEADER_TIMEOUT).await;
    let client = c.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy kv");
    client.propose("kv", &kv_put("a", "1")).await.expect("put");
    let listed = client
        .snapshot_trigger_and_wait(Some(c.addr(1)), CATCH_UP_TIMEOUT)
        .await
        .expect("trigger");
    let data_dir = c.config(1).node.data_dir.clone();
    let data_dir = data_dir.to_str().unwrap();

    // `cli` sets WRAFT_ENDPOINTS (and WRAFT_CERTS), as an operator's shell would: without
    // --data-dir they name the node to ask, with it they are not used.
    let online = ok(cli(&c, &["snapshot", "list", "--json"]));
    let online: Vec<wraft_proto::SnapshotListing> =
        serde_json::from_str(&online).expect("a JSON listing");
    assert_eq!(online, [listed]);
    let offline = ok(cli(
        &c,
        &["snapshot", "list", "--data-dir", data_dir, "--json"],
    ));
    let offline: Vec<wraft_proto::SnapshotListing> =
        serde_json::from_str(&offline).expect("a JSON listing");
    assert_eq!(offline, online);

    // Both on the command line: refused, naming the two.
    let addr = c.addr(1).to_string();
    let both = cli(
        &c,
        &[
            "snapshot",
            "list",
            "--data-dir",
            data_dir,
            "--endpoints",
            &addr,
        ],
    );
    assert!(!both.status.success(), "{}", text(&both));
    let why = String::from_utf8_lossy(&both.stderr);
    assert!(
        why.contains("--data-dir") && why.contains("--endpoints"),
        "{}",
        text(&both)
    );
}

/// Not a check, a figure: how long `wraft snapshot save` takes for a snapshot of some tens of
/// MB on this machine (printed). Run with `--run-ignored only`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn save_throughput_figure() {
    let c = Cluster::start(3);
    c.wait_for_leader(LEADER_TIMEOUT).await;
    let client = c.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy kv");
    let mut rng = fastrand::Rng::with_seed(7);
    let values = 320;
    for i in 0..values {
        // 128 KiB of hex from random bytes: about what zstd leaves of it is half.
        let v: String = (0..64 << 10)
            .map(|_| format!("{:02x}", rng.u8(..)))
            .collect();
        client
            .propose("kv", &kv_put(&format!("big-{i}"), &v))
            .await
            .expect("put");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("big.snap");
    let started = std::time::Instant::now();
    let out = ok(cli(&c, &["snapshot", "save", file.to_str().unwrap()]));
    let total = started.elapsed();
    let bytes = std::fs::metadata(&file).expect("saved").len();
    eprintln!(
        "FIGURE snapshot save: {bytes} bytes in {:.2} s end to end (trigger + download + \
         verify) = {:.1} MiB/s\n{out}",
        total.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64 / total.as_secs_f64()
    );
    let started = std::time::Instant::now();
    let again = ok(cli(&c, &["snapshot", "save", file.to_str().unwrap()]));
    eprintln!(
        "FIGURE second save (nothing new applied: the snapshot is reused): {:.2} s\n{again}",
        started.elapsed().as_secs_f64()
    );
}
