//! Watch, in-process: one `wraft-node` started with `Node::start` on loopback, the kv example
//! guest deployed through a real client, and subscriptions taken from `Node::watch_hub`.
//! Pins what the HTTP watch endpoint builds on: results in log order with their outputs,
//! resumption without gap or repeat, "compacted" for what the bounded history no longer holds,
//! and writes that never wait for a subscriber.

use std::time::{Duration, Instant};

use wraft_client::{Client, ClientOptions};
use wraft_config::NodeConfig;
use wraft_node::{Node, Subscription, WatchError, WatchEvent, WatchOutcome};
use wraft_tests::{guest, kv_put, parse};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

struct InProcess {
    node: Node,
    client: Client,
    _dir: tempfile::TempDir,
}

/// A one-node cluster in this process with the kv guest deployed as `kv`.
async fn started(tweak: impl Fn(&mut NodeConfig)) -> InProcess {
    let dir = tempfile::Builder::new()
        .prefix("wraft-watch-")
        .tempdir()
        .expect("temp dir");
    let layout = wraft::local::layout(dir.path(), 1, tweak).expect("layout");
    let (cfg, _) = layout.nodes[0].clone();
    let node = Node::start(cfg).await.expect("node starts");
    let client = Client::connect(
        ClientOptions::from_cert_dir(layout.endpoints(), &layout.certs, "admin")
            .expect("client certificate"),
    )
    .await
    .expect("client");
    InProcess {
        node,
        client,
        _dir: dir,
    }
}

impl InProcess {
    async fn deploy_kv(&self) {
        let msg = self.client.deploy("kv", guest("kv")).await.expect("deploy");
        assert!(msg.contains("deployed"), "{msg}");
    }

    /// `n` puts `{prefix}{i}`; their indexes and outputs.
    async fn puts(&self, prefix: &str, n: usize) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for i in 0..n {
            let cmd = kv_put(&format!("{prefix}{i}"), &format!("v{i}"));
            let applied = self.client.propose("kv", &cmd).await.expect("put");
            out.push((applied.index, cmd, applied.output));
        }
        out
    }
}

async fn next(sub: &mut Subscription) -> Result<WatchEvent, WatchError> {
    tokio::time::timeout(EVENT_TIMEOUT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no event within {EVENT_TIMEOUT:?} at {sub:?}"))
        .expect("the stream goes on")
}

async fn take(sub: &mut Subscription, n: usize) -> Vec<WatchEvent> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(next(sub).await.expect("event"));
    }
    v
}

fn indexes(events: &[WatchEvent]) -> Vec<u64> {
    events.iter().map(|e| e.index).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_now_sees_the_deploy_then_every_result_in_log_order_with_its_output() {
    let n = started(|_| {}).await;
    let hub = n.node.watch_hub();
    let mut sub = hub.subscribe("kv", 0).expect("subscribe");
    let mut other = hub
        .subscribe("not-kv", 0)
        .expect("subscribe to another name");
    n.deploy_kv().await;
    let deployed = next(&mut sub).await.expect("deploy event");
    assert!(
        matches!(&deployed.outcome, WatchOutcome::Deployed { summary } if summary.contains("deployed")),
        "{deployed:?}"
    );
    let writes = n.puts("k", 5).await;
    // An application error (the kv guest refuses an empty key) is a result too.
    let bad = kv_put("", "v");
    let err = n.client.propose("kv", &bad).await;
    assert!(err.is_err(), "{err:?}");

    let events = take(&mut sub, 6).await;
    for (e, (index, cmd, output)) in events.iter().zip(&writes) {
        assert_eq!(e.index, *index);
        assert_eq!(&*e.machine, "kv");
        assert_eq!(&e.command[..], &cmd[..]);
        assert_eq!(e.outcome, WatchOutcome::Output(output.clone().into()));
    }
    assert_eq!(
        parse(match &events[1].outcome {
            WatchOutcome::Output(o) => o,
            other => panic!("{other:?}"),
        }),
        serde_json::json!({"prev": null})
    );
    let last = &events[5];
    assert!(last.index > writes[4].0);
    assert_eq!(&last.command[..], &bad[..]);
    assert!(
        matches!(&last.outcome, WatchOutcome::AppError { code: 1, .. }),
        "{last:?}"
    );

    // A removal is an event; the same stream goes on with a fresh deploy under the name.
    n.client.remove_machine("kv").await.expect("remove");
    assert_eq!(
        next(&mut sub).await.expect("removed").outcome,
        WatchOutcome::Removed
    );
    n.deploy_kv().await;
    assert!(matches!(
        next(&mut sub).await.expect("deployed again").outcome,
        WatchOutcome::Deployed { .. }
    ));
    // Another machine's subscriber saw nothing, and its position followed the applied index.
    let quiet = tokio::time::timeout(Duration::from_millis(100), other.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    assert!(other.position() > last.index, "{other:?}");
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_an_index_in_history_resumes_after_a_drop_with_no_gap_and_no_repeat() {
    let n = started(|_| {}).await;
    n.deploy_kv().await;
    let writes = n.puts("a", 10).await;
    let hub = n.node.watch_hub();

    let from = writes[3].0;
    let mut sub = hub.subscribe("kv", from).expect("subscribe from history");
    let mut seen = take(&mut sub, 3).await;
    // Disconnect; resume from the position (the last index seen + 1) while writes go on.
    let resume_at = sub.position();
    assert_eq!(resume_at, seen[2].index + 1);
    drop(sub);
    let more = n.puts("b", 4).await;
    let mut sub = hub.subscribe("kv", resume_at).expect("resume");
    seen.extend(take(&mut sub, (writes.len() - 3 - 3) + more.len()).await);

    let want: Vec<u64> = writes[3..]
        .iter()
        .chain(&more)
        .map(|(i, _, _)| *i)
        .collect();
    assert_eq!(indexes(&seen), want);
    let nothing = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
    assert!(nothing.is_err(), "no repeat: {nothing:?}");
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_history_answers_compacted_for_an_old_index_and_to_a_subscriber_left_behind() {
    let n = started(|c| c.node.watch_history_entries_max = 4).await;
    n.deploy_kv().await;
    let hub = n.node.watch_hub();
    let mut slow = hub.subscribe("kv", 0).expect("subscribe");
    let writes = n.puts("k", 10).await;
    let last = writes[9].0;

    match hub.subscribe("kv", writes[0].0) {
        Err(WatchError::Compacted {
            from,
            oldest_index,
            applied_index,
        }) => {
            assert_eq!(from, writes[0].0);
            assert_eq!(oldest_index, writes[6].0, "the newest 4 are kept");
            assert!(applied_index >= last);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    match next(&mut slow).await {
        Err(WatchError::Compacted { from, .. }) => assert_eq!(from, writes[0].0),
        other => panic!("the slow subscriber must be told, not skip: {other:?}"),
    }
    assert!(
        slow.next().await.is_none(),
        "the stream ends after Compacted"
    );

    // The advice works: watch from the applied index + 1.
    let (applied, _) = hub.position();
    let mut fresh = hub.subscribe("kv", applied + 1).expect("resync");
    let w = n.puts("z", 1).await;
    assert_eq!(next(&mut fresh).await.expect("event").index, w[0].0);
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_never_read_do_not_slow_a_burst_of_writes() {
    const BURST: usize = 100;
    let n = started(|c| c.node.watch_history_entries_max = 16).await;
    n.deploy_kv().await;
    let hub = n.node.watch_hub();

    let t = Instant::now();
    n.puts("warm", BURST).await;
    let alone = t.elapsed();

    let idle: Vec<Subscription> = (0..100)
        .map(|_| hub.subscribe("kv", 0).expect("subscribe"))
        .collect();
    let t = Instant::now();
    let writes = n.puts("burst", BURST).await;
    let watched = t.elapsed();
    assert!(
        watched <= alone * 3 + Duration::from_secs(1),
        "{BURST} writes took {watched:?} with 100 idle subscribers, {alone:?} without"
    );
    assert!(hub.position().0 >= writes[BURST - 1].0);
    // Each of them is told it fell behind, rather than holding the writes back.
    for mut s in idle {
        assert!(matches!(
            next(&mut s).await,
            Err(WatchError::Compacted { .. })
        ));
    }
    n.node.shutdown().await;
}
