//! End-of-run checks on the replicas: paged scans, the replica digest, and convergence on one
//! applied index.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wraft_client::{Client, ClientError};
use wraft_proto::Consistency;

use crate::Cluster;

use super::nemesis::Nemesis;
use super::workload::{bounded, json};
use super::{CONVERGE_TIMEOUT_MS, SCAN_PAGE_ENTRIES};

/// Entries of node `id`'s kv machine (stale reads, paged).
async fn full_scan(cluster: &Cluster, id: u64) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    loop {
        let q = json(serde_json::json!({
            "op": "scan", "prefix": "", "limit": SCAN_PAGE_ENTRIES,
            "after": out.last().map(|(k, _)| k.clone()),
        }));
        let answer = cluster.stale_query(id, "kv", &q).await?;
        let v = crate::parse(&answer);
        let entries = v["entries"]
            .as_array()
            .ok_or("scan answer without entries")?;
        for e in entries {
            out.push((
                e[0].as_str().unwrap_or_default().to_owned(),
                e[1].as_str().unwrap_or_default().to_owned(),
            ));
        }
        if v["more"] != serde_json::json!(true) {
            return Ok(out);
        }
    }
}

/// Unique-put values present, by a linearizable paged scan of `w/`.
pub(super) async fn unique_keys(c: &Client) -> Result<BTreeSet<u64>, ClientError> {
    let mut out = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let q = json(
            serde_json::json!({"op":"scan","prefix":"w/","limit":SCAN_PAGE_ENTRIES,"after":after}),
        );
        let answer = bounded(c.query("kv", &q, Consistency::Linearizable)).await?;
        let v = crate::parse(&answer);
        for e in v["entries"].as_array().into_iter().flatten() {
            let k = e[0].as_str().unwrap_or_default();
            out.insert(k.trim_start_matches("w/").parse().unwrap_or(u64::MAX));
            after = Some(k.to_owned());
        }
        if v["more"] != serde_json::json!(true) {
            return Ok(out);
        }
    }
}

fn digest(entries: &[(String, String)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    entries.hash(&mut h);
    h.finish()
}

/// Wait until every live member reports the same applied index (equal to
/// the highest commit index) twice in a row around identical full scans;
/// returns that index and the digest. Records an anomaly on timeout.
pub(super) async fn converge(nem: &mut Nemesis) -> (u64, (u64, usize)) {
    let start = Instant::now();
    let mut last_problem = String::new();
    while start.elapsed() < Duration::from_millis(CONVERGE_TIMEOUT_MS) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let members = nem.live();
        let mut statuses = Vec::new();
        for id in &members {
            match nem.status(*id).await {
                Some(s) => statuses.push(s),
                None => {
                    last_problem = format!("node {id} does not answer status");
                    break;
                }
            }
        }
        if statuses.len() != members.len() {
            continue;
        }
        let commit = statuses.iter().map(|s| s.commit_index).max().unwrap_or(0);
        if let Some(s) = statuses.iter().find(|s| s.applied_index != commit) {
            last_problem = format!(
                "node {} applied {} of commit {commit}",
                s.id, s.applied_index
            );
            continue;
        }
        let mut scans = Vec::new();
        for id in &members {
            match full_scan(&nem.cluster, *id).await {
                Ok(e) => scans.push((*id, e)),
                Err(e) => {
                    last_problem = format!("scan of node {id}: {e}");
                    break;
                }
            }
        }
        if scans.len() != members.len() {
            continue;
        }
        // No entry may have been applied while we scanned.
        let mut moved = false;
        for id in &members {
            if nem
                .status(*id)
                .await
                .is_none_or(|s| s.applied_index != commit)
            {
                moved = true;
            }
        }
        if moved {
            last_problem = "applied index moved during the scans".into();
            continue;
        }
        let (first_id, first) = &scans[0];
        let d0 = digest(first);
        for (id, e) in &scans[1..] {
            if digest(e) != d0 {
                let a: BTreeSet<_> = first.iter().collect();
                let b: BTreeSet<_> = e.iter().collect();
                let only_a: Vec<_> = a.difference(&b).take(5).collect();
                let only_b: Vec<_> = b.difference(&a).take(5).collect();
                nem.anomaly(format!(
                    "replicas diverge at applied index {commit}: node {first_id} has {} entries, node {id} has {}; \
                     only on {first_id}: {only_a:?}; only on {id}: {only_b:?}",
                    first.len(),
                    e.len()
                ));
                return (commit, (d0, first.len()));
            }
        }
        nem.note(format!(
            "replicas {members:?} converged at applied index {commit}: digest {d0:016x}, {} entries",
            first.len()
        ));
        return (commit, (d0, first.len()));
    }
    let d = nem.cluster.describe().await;
    nem.anomaly(format!(
        "replicas did not converge within {CONVERGE_TIMEOUT_MS} ms: {last_problem}\n{d}"
    ));
    (0, (0, 0))
}
