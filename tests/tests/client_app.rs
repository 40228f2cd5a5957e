//! An application built on `wraft-client` alone (`examples/client-app`) against a cluster of
//! real `wraft node` processes: its library calls, and its `kv-client` binary as a user runs it.

use std::process::Command;
use std::time::Duration;

use wraft_tests::{Cluster, guest};

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

fn kv_client(cluster: &Cluster, identity: &str, args: &[&str]) -> std::process::Output {
    let endpoints: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.addr(id).to_string())
        .collect();
    Command::new(wraft_tests::workspace_bin(
        "wraft-example-client",
        "kv-client",
    ))
    .arg("--endpoints")
    .arg(endpoints.join(","))
    .arg("--certs")
    .arg(cluster.certs_dir())
    .args(["--identity", identity])
    .args(args)
    .output()
    .expect("running kv-client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_on_the_client_crate_alone_writes_and_reads_through_the_cluster() {
    let cluster = Cluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client().await;
    client.deploy("kv", guest("kv")).await.expect("deploy kv");

    // The library, as an application embeds it.
    let index = wraft_example_client::put(&client, "kv", "greeting", "hello")
        .await
        .expect("put");
    assert!(index > 0);
    let read = wraft_example_client::get(&client, "kv", "greeting").await;
    assert_eq!(read.expect("get"), Some("hello".to_owned()));
    let absent = wraft_example_client::get(&client, "kv", "nobody").await;
    assert_eq!(absent.expect("get"), None);

    // The binary, as a user runs it: it finds the leader from any list of members.
    let put = kv_client(&cluster, "admin", &["put", "colour", "green"]);
    let stdout = String::from_utf8_lossy(&put.stdout);
    assert!(put.status.success(), "kv-client put failed: {put:?}");
    assert!(stdout.starts_with("stored at index "), "{stdout}");
    let get = kv_client(&cluster, "admin", &["get", "colour"]);
    assert!(get.status.success(), "kv-client get failed: {get:?}");
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "green");

    // An identity without a certificate fails with a message naming what is missing.
    let refused = kv_client(&cluster, "mallory", &["get", "colour"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("mallory"), "{stderr}");
}
