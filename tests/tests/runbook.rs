//! The runbook's commands, run: every ```sh block of `docs/runbook.md` preceded by
//! `<!-- runbook-test: NAME -->` is extracted and run with bash, at its step of a scenario
//! against real `wraft node` processes (the convention is described at the top of the runbook).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use wraft_client::Client;
use wraft_proto::Consistency;
use wraft_tests::runbook::{bin_dir, run_block, runbook_blocks};
use wraft_tests::{Cluster, guest, kv_get, kv_put, kv_value, wait_for, wraft_bin};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Every tested block of the runbook, and the scenario here that runs it. A block added to the
/// runbook must be added here and run by a scenario.
const BLOCKS: &[(&str, &str)] = &[
    (
        "backup-save",
        "backup_restore_rolling_upgrade_and_replacing_a_node",
    ),
    (
        "restore-node",
        "backup_restore_rolling_upgrade_and_replacing_a_node",
    ),
    (
        "restore-check",
        "backup_restore_rolling_upgrade_and_replacing_a_node",
    ),
    (
        "rolling-wait",
        "backup_restore_rolling_upgrade_and_replacing_a_node",
    ),
    (
        "replace-node",
        "backup_restore_rolling_upgrade_and_replacing_a_node",
    ),
    (
        "quorum-loss-inspect",
        "quorum_loss_forced_recovery_and_members_added_back",
    ),
    (
        "quorum-loss-force",
        "quorum_loss_forced_recovery_and_members_added_back",
    ),
    (
        "add-member",
        "quorum_loss_forced_recovery_and_members_added_back",
    ),
    (
        "rotate-trust-both",
        "tls_reload::ca_rotation_with_overlapping_trust_keeps_the_cluster_writing_and_ends_refusing_the_old_ca",
    ),
    (
        "rotate-node-cert",
        "tls_reload::ca_rotation_with_overlapping_trust_keeps_the_cluster_writing_and_ends_refusing_the_old_ca",
    ),
    (
        "rotate-client-certs",
        "tls_reload::ca_rotation_with_overlapping_trust_keeps_the_cluster_writing_and_ends_refusing_the_old_ca",
    ),
    (
        "rotate-drop-old-ca",
        "tls_reload::ca_rotation_with_overlapping_trust_keeps_the_cluster_writing_and_ends_refusing_the_old_ca",
    ),
];

/// `WRAFT_ENDPOINTS` and `WRAFT_CERTS` for `endpoints` of `cluster`.
fn conn_env(cluster: &Cluster, endpoints: &[SocketAddr]) -> Vec<(&'static str, String)> {
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    vec![
        ("WRAFT_ENDPOINTS", eps.join(",")),
        ("WRAFT_CERTS", cluster.certs_dir().display().to_string()),
    ]
}

fn with(
    mut env: Vec<(&'static str, String)>,
    more: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    env.extend(more.iter().cloned());
    env
}

async fn put_keys(client: &Client, n: u32) -> u64 {
    let mut last = 0;
    for i in 0..n {
        last = client
            .propose("kv", &kv_put(&format!("k{i}"), &format!("v{i}")))
            .await
            .expect("put")
            .index;
    }
    last
}

async fn assert_keys(client: &Client, n: u32) {
    for i in 0..n {
        let a = client
            .query("kv", &kv_get(&format!("k{i}")), Consistency::Linearizable)
            .await
            .expect("query");
        assert_eq!(kv_value(&a), Some(format!("v{i}")), "k{i}");
    }
}

#[test]
fn every_tested_runbook_block_is_run_by_a_scenario() {
    let in_doc: BTreeSet<String> = runbook_blocks().into_keys().collect();
    let run: BTreeSet<String> = BLOCKS.iter().map(|(b, _)| (*b).to_owned()).collect();
    assert_eq!(
        in_doc, run,
        "docs/runbook.md's tested blocks and the blocks runbook.rs runs differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_rolling_upgrade_and_replacing_a_node() {
    let bin = bin_dir();
    let backups = tempfile::tempdir().expect("temp dir");
    const KEYS: u32 = 25;
    {
        let mut old = Cluster::start(3);
        old.wait_for_leader(LEADER_TIMEOUT).await;
        let client = old.client().await;
        client.deploy("kv", guest("kv")).await.expect("deploy");
        put_keys(&client, KEYS).await;
        let env = with(
            conn_env(&old, &old.endpoints()),
            &[("BACKUP_DIR", backups.path().display().to_string())],
        );
        run_block(bin.path(), "backup-save", &env);
        for id in old.ids() {
            old.kill(id);
            std::fs::remove_dir_all(&old.config(id).node.data_dir).expect("deleting data");
        }
    }
    let saved: Vec<PathBuf> = std::fs::read_dir(backups.path())
        .expect("backup dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(saved.len(), 1, "one backup, no partial file: {saved:?}");
    let backup = saved[0].display().to_string();

    // Restore into a new cluster: every member from the same file, before its first start.
    let mut c = Cluster::start_prepared(
        3,
        |_| {},
        |cfg| {
            let members = cfg
                .cluster
                .members
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect::<Vec<_>>()
                .join(",");
            run_block(
                bin.path(),
                "restore-node",
                &[
                    ("BACKUP", backup.clone()),
                    ("DATA_DIR", cfg.node.data_dir.display().to_string()),
                    ("NODE_ID", cfg.node.id.to_string()),
                    ("MEMBERS", members),
                ],
            );
        },
    );
    let leader = c.wait_for_leader(LEADER_TIMEOUT).await;
    let env = conn_env(&c, &c.endpoints());
    let out = run_block(bin.path(), "restore-check", &env);
    assert!(
        out.contains("voters:   [1, 2, 3]") && out.contains("kv"),
        "{out}"
    );
    let client = c.client().await;
    assert_keys(&client, KEYS).await;

    // Rolling restart: followers first, then the leader after handing leadership away.
    let followers: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    for id in followers.iter().copied() {
        c.restart(id);
        run_block(
            bin.path(),
            "rolling-wait",
            &with(env.clone(), &[("NODE_ID", id.to_string())]),
        );
    }
    let out = Command::new(wraft_bin())
        .args(["leader", "transfer", &followers[0].to_string()])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("wraft leader transfer");
    assert!(out.status.success(), "{out:?}");
    c.restart(leader);
    run_block(
        bin.path(),
        "rolling-wait",
        &with(env.clone(), &[("NODE_ID", leader.to_string())]),
    );
    let put = client
        .propose("kv", &kv_put("after-upgrade", "yes"))
        .await
        .expect("write after the rolling restart");

    // Node 3 dies for good; node 4 replaces it.
    c.kill(3);
    std::fs::remove_dir_all(&c.config(3).node.data_dir).expect("losing node 3");
    let addr = c.add_node(4);
    run_block(
        bin.path(),
        "replace-node",
        &with(
            conn_env(&c, &[c.addr(1), c.addr(2), addr]),
            &[
                ("DEAD_ID", "3".into()),
                ("NEW_ID", "4".into()),
                ("NEW_ADDR", addr.to_string()),
            ],
        ),
    );
    let client = c.client_for(vec![c.addr(1), c.addr(2), addr]).await;
    let status = client.status().await.expect("status");
    assert_eq!((status.voters, status.learners), (vec![1, 2, 4], vec![]));
    c.wait_applied(&[4], put.index, CATCH_UP_TIMEOUT).await;
    assert_keys(&client, KEYS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_forced_recovery_and_members_added_back() {
    let bin = bin_dir();
    const KEYS: u32 = 25;
    let mut c = Cluster::start(3);
    c.wait_for_leader(LEADER_TIMEOUT).await;
    let client = c.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy");
    let last = put_keys(&client, KEYS).await;
    c.wait_applied(&c.ids(), last, CATCH_UP_TIMEOUT).await;
    drop(client);
    // Node 2 is gone for good; node 3 too, but its disk survives (it comes back below).
    c.kill(2);
    std::fs::remove_dir_all(&c.config(2).node.data_dir).expect("losing node 2");
    c.kill(3);
    c.kill(1);
    c.release_port(1);
    let config = [("CONFIG", c.dir().join("node-1.toml").display().to_string())];
    let out = run_block(bin.path(), "quorum-loss-inspect", &config);
    assert!(out.contains(&format!("last log index {last}")), "{out}");
    let out = run_block(bin.path(), "quorum-loss-force", &config);
    assert!(out.contains("only voter"), "{out}");

    // Step 3 of the runbook: the old members leave the survivor's config; start it.
    c.reconfigure(1, |cfg| {
        cfg.cluster.members.retain(|id, _| *id == 1);
        cfg.cluster.peers.clear();
    });
    c.restart(1);
    c.wait_for_leader_among(&[1], LEADER_TIMEOUT).await;

    let mut live = vec![c.addr(1)];
    for id in [4, 5] {
        let addr = c.add_node(id);
        live.push(addr);
        run_block(
            bin.path(),
            "add-member",
            &with(
                conn_env(&c, &live),
                &[("NEW_ID", id.to_string()), ("NEW_ADDR", addr.to_string())],
            ),
        );
    }
    let client = c.client_for(live.clone()).await;
    let status = client.status().await.expect("status");
    assert_eq!(status.voters, vec![1, 4, 5]);
    // The forced change is in the replicated log: a re-added member applies its record.
    wait_for(
        "node 4 to apply the record of the forced change",
        CATCH_UP_TIMEOUT,
        async || c.log(4).contains("membership was forced").then_some(()),
    )
    .await;
    // An old member started again with its old data and config, against the runbook's advice:
    // the survivor's transport refuses it (not a member, not in its config), and it cannot
    // disturb the new cluster.
    let before = client.status().await.expect("status");
    c.restart(3);
    wait_for(
        "node 1 to refuse old node 3",
        CATCH_UP_TIMEOUT,
        async || {
            c.log(1)
                .contains("names node 3, which is not a member")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = client.status().await.expect("status");
    assert_eq!(
        (after.leader, after.term, after.voters),
        (Some(1), before.term, vec![1, 4, 5])
    );
    c.kill(3);
    // No acknowledged write was lost: the re-added members alone hold them all.
    c.kill(1);
    c.wait_for_leader_among(&[4, 5], LEADER_TIMEOUT).await;
    let client = c.client_for(live[1..].to_vec()).await;
    assert_keys(&client, KEYS).await;
}
