//! A node embedded in an application (`wraft_node::Node`, in-process): after `shutdown` or
//! `stop_gracefully`, `Node::dir_released` tells when the data directory is free, so the same
//! process can start a node on it again and find its data. Without a way to wait for it, a
//! restart right after the stop failed with `Locked`: background tasks (snapshot serving, the
//! applier) still held the directory for a moment.

use std::time::Duration;

use wraft_client::{Client, ClientOptions, Consistency};
use wraft_node::{Node, wait_dir_released};
use wraft_tests::{guest, kv_put};

async fn client(layout: &wraft::local::LocalLayout) -> Client {
    Client::connect(
        ClientOptions::from_cert_dir(layout.endpoints(), &layout.certs, "admin")
            .expect("client certificate"),
    )
    .await
    .expect("client")
}

async fn get(c: &Client, key: &str) -> Vec<u8> {
    let q = format!(r#"{{"op":"get","key":"{key}"}}"#);
    c.query("kv", q.as_bytes(), Consistency::Linearizable)
        .await
        .expect("get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_restarts_in_the_same_process_at_once_with_its_data() {
    let dir = tempfile::Builder::new()
        .prefix("wraft-embedded-")
        .tempdir()
        .expect("temp dir");
    let layout = wraft::local::layout(dir.path(), 1, |_| {}).expect("layout");
    let (cfg, _) = layout.nodes[0].clone();

    let node = Node::start(cfg.clone()).await.expect("node starts");
    let c = client(&layout).await;
    c.deploy("kv", guest("kv")).await.expect("deploy");
    c.propose("kv", &kv_put("a", "1")).await.expect("put a");
    // A snapshot, so that snapshot tasks have run too.
    c.snapshot_trigger_and_wait(Some(cfg.node.listen), Duration::from_secs(30))
        .await
        .expect("snapshot");
    c.propose("kv", &kv_put("b", "2")).await.expect("put b");
    let released = node
        .dir_released()
        .expect("a node on a real directory locks it");
    node.shutdown().await;
    assert!(wait_dir_released(&released, Duration::from_secs(10)).await);

    let node = Node::start(cfg.clone())
        .await
        .expect("the node starts again once `shutdown` has released the directory");
    let c = client(&layout).await;
    assert!(String::from_utf8_lossy(&get(&c, "b").await).contains('2'));
    c.propose("kv", &kv_put("c", "3")).await.expect("put c");
    let released = node
        .dir_released()
        .expect("a node on a real directory locks it");
    let report = node.stop_gracefully(Duration::from_secs(5)).await;
    assert!(report.cut_short.is_empty(), "{report:?}");
    assert!(wait_dir_released(&released, Duration::from_secs(10)).await);

    let node = Node::start(cfg)
        .await
        .expect("the node starts again once `stop_gracefully` has released the directory");
    let c = client(&layout).await;
    assert!(String::from_utf8_lossy(&get(&c, "a").await).contains('1'));
    assert!(String::from_utf8_lossy(&get(&c, "c").await).contains('3'));
    node.shutdown().await;
}
