//! Backup, restore and quorum-loss recovery: `wraft snapshot save`, `wraft restore` and
//! `wraft recover`.
//!
//! - [`save`] downloads a node's snapshot (taken now, or its newest when nothing was applied
//!   since) into a local file, one bounded chunk per request (`Request::SnapshotRead`, at most
//!   [`wraft_proto::SNAPSHOT_READ_BYTES_MAX`] in memory), into `FILE.partial`; the result is
//!   checked exactly as `wraft snapshot inspect` checks a file, its digest compared with the one
//!   the node listed. A node's snapshot names its machines' modules by hash; the save fetches
//!   each from the node (`Request::ModuleGet`) and rewrites the file with the modules' bytes
//!   inside, so a backup restores on machines that hold nothing (through `FILE.partial.d`, a
//!   snapshot directory of its own). The result is fsynced and renamed to `FILE`. A crash
//!   leaves `FILE` as it was (or absent) and at most a `FILE.partial` and `FILE.partial.d`,
//!   which the next save overwrites.
//! - [`restore`] seeds an empty data directory from such a file, offline: the snapshot is
//!   rewritten under a new membership and address book (its header frame replaced, every other
//!   frame copied byte for byte), into `.DIR.restoring`, which is renamed to `DIR` only once
//!   complete and verified. Every member of the new cluster restores the same file with the same
//!   `--members`, so their snapshots are byte-identical, as replicas' are.
//! - [`recover`] is `wraft recover`: a node's view of its data, and, confirmed, the forced
//!   single-member cluster of `wraft_node::recover`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wraft_proto::PeerAddr;

use wraft_client::{Client, ClientError};
use wraft_proto::SNAPSHOT_READ_BYTES_MAX;
use wraft_proto::{SnapshotListing, Status};
use wraft_snapshot::format::{FileBody, NodeSnapshot, NodeSnapshotWriter};
use wraft_storage::{SnapshotStore, StdFs, StorageConfig};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Longest wait for a triggered snapshot to become durable before a save gives up, ms.
pub const SAVE_SNAPSHOT_WAIT_MS: u64 = 600_000;
/// Shortest interval between two progress lines of a save, ms.
pub const SAVE_PROGRESS_INTERVAL_MS: u64 = 1_000;
/// Longest wait for a node in `--endpoints` to apply the commit index a save starts from, ms.
pub const SAVE_CATCH_UP_WAIT_MS: u64 = 30_000;
/// Bytes copied per read and write by [`restore`].
pub const RESTORE_IO_CHUNK_BYTES: usize = 1 << 20;

/// What [`save`] wrote.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The node it was read from.
    pub from: PeerAddr,
    /// The snapshot as the node listed it.
    pub listing: SnapshotListing,
    /// Where it is now.
    pub file: PathBuf,
    /// Length of the saved file (the node's file, plus the modules it names by hash).
    pub file_bytes: u64,
    /// Whole-file BLAKE3 digest of the saved file, hex (the node's listing's when the node's
    /// file carried every module already).
    pub digest: String,
    /// Modules fetched from the node and carried in the file.
    pub modules_fetched: usize,
    /// Time taken.
    pub elapsed: Duration,
}

/// `wraft snapshot save FILE`: learn the cluster's commit index from the leader, pick a node in
/// `endpoints` that has applied it (the leader first), have it take a snapshot now (or reuse
/// its newest when nothing new was applied), download it into `file` and verify it. The
/// snapshot therefore holds every write acknowledged before the save started. `progress` is
/// called with (bytes so far) at most every [`SAVE_PROGRESS_INTERVAL_MS`] and once at the end.
pub async fn save(
    client: &Client,
    endpoints: &[PeerAddr],
    file: &Path,
    mut progress: impl FnMut(&SnapshotListing, u64),
) -> Result<Saved, AnyError> {
    let started = Instant::now();
    let (ep, commit) = node_with_commit(client, endpoints).await?;
    let mut attempt = 1;
    loop {
        let listing = snapshot_to_save(client, &ep).await?;
        if listing.index < commit {
            return Err(format!(
                "node {ep} could not take a new snapshot and its newest is at index {}, below \
                 the commit index {commit} this save started from: it would miss acknowledged \
                 writes. Check the node's log (wraft::snapshot) or save from another node",
                listing.index
            )
            .into());
        }
        match download(client, &ep, &listing, file, &mut progress).await {
            Ok(Downloaded {
                file_bytes,
                digest,
                modules_fetched,
            }) => {
                return Ok(Saved {
                    from: ep,
                    listing,
                    file: file.to_owned(),
                    file_bytes,
                    digest,
                    modules_fetched,
                    elapsed: started.elapsed(),
                });
            }
            // Retired by newer snapshots during the download: take the newest again.
            Err(Failed::Retired(e)) if attempt < SAVE_ATTEMPTS_MAX => {
                eprintln!("{e}; starting again with the node's newest snapshot");
                attempt += 1;
            }
            Err(Failed::Retired(e) | Failed::Other(e)) => return Err(e),
        }
    }
}

/// Downloads [`save`] starts before giving up when the node retires each snapshot (it took
/// newer ones) before it was read whole.
pub const SAVE_ATTEMPTS_MAX: u32 = 3;

/// Why a download failed.
enum Failed {
    /// The node no longer has the snapshot (retention removed it meanwhile).
    Retired(AnyError),
    /// Anything else.
    Other(AnyError),
}

impl<E: Into<AnyError>> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed::Other(e.into())
    }
}

/// The address of a node in `endpoints` that has applied the cluster's commit index as of now
/// (the leader's, when the leader is among `endpoints`; else the highest any of them knows): the
/// leader if it has, else the first node to get there; and that commit index.
async fn node_with_commit(
    client: &Client,
    endpoints: &[PeerAddr],
) -> Result<(PeerAddr, u64), AnyError> {
    let statuses = statuses(client, endpoints).await;
    let known: Vec<&Status> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .collect();
    let commit = known
        .iter()
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term)
        .or_else(|| known.iter().max_by_key(|s| s.commit_index))
        .map(|s| s.commit_index)
        .ok_or_else(|| {
            format!(
                "no node in --endpoints answers: {}",
                describe_statuses(&statuses)
            )
        })?;
    let deadline = Instant::now() + Duration::from_millis(SAVE_CATCH_UP_WAIT_MS);
    let mut statuses = statuses;
    loop {
        let ready = |s: &Status| s.applied_index >= commit;
        let leader = statuses
            .iter()
            .find(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader" && ready(s)));
        let any = statuses.iter().find(|(_, s)| s.as_ref().is_ok_and(ready));
        if let Some((ep, _)) = leader.or(any) {
            return Ok((ep.clone(), commit));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no node in --endpoints applied the commit index {commit} within \
                 {SAVE_CATCH_UP_WAIT_MS} ms ({})",
                describe_statuses(&statuses)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        statuses = self::statuses(client, endpoints).await;
    }
}

type NodeStatus = (PeerAddr, Result<Status, ClientError>);

async fn statuses(client: &Client, endpoints: &[PeerAddr]) -> Vec<NodeStatus> {
    let mut v = Vec::new();
    for ep in endpoints {
        v.push((ep.clone(), client.status_of(Some(ep.clone())).await));
    }
    v
}

fn describe_statuses(statuses: &[NodeStatus]) -> String {
    statuses
        .iter()
        .map(|(ep, s)| match s {
            Ok(s) => format!(
                "{ep}: node {} {} applied {} commit {}",
                s.id, s.role, s.applied_index, s.commit_index
            ),
            Err(e) => format!("{ep}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A snapshot of the node at `ep` at a committed index: a new one if the node applied anything
/// since its newest, else its newest.
async fn snapshot_to_save(client: &Client, ep: &PeerAddr) -> Result<SnapshotListing, ClientError> {
    let wait = Duration::from_millis(SAVE_SNAPSHOT_WAIT_MS);
    match client
        .snapshot_trigger_and_wait(Some(ep.clone()), wait)
        .await
    {
        Ok(l) => Ok(l),
        // Nothing new to snapshot (or this node cannot snapshot now): its newest will do.
        Err(ClientError::Rejected(why)) => client
            .snapshots(Some(ep.clone()))
            .await?
            .pop()
            .ok_or_else(|| ClientError::Rejected(format!("node {ep} has no snapshot ({why})"))),
        Err(e) => Err(e),
    }
}

/// What [`download`] wrote.
struct Downloaded {
    file_bytes: u64,
    digest: String,
    modules_fetched: usize,
}

async fn download(
    client: &Client,
    ep: &PeerAddr,
    listing: &SnapshotListing,
    file: &Path,
    progress: &mut impl FnMut(&SnapshotListing, u64),
) -> Result<Downloaded, Failed> {
    let partial = partial_path(file);
    let mut out = std::fs::File::create(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let mut offset = 0u64;
    let mut last_report = Instant::now();
    let result: Result<Downloaded, Failed> = async {
        while offset < listing.file_bytes {
            let (file_bytes, data) = match client
                .snapshot_read(
                    ep.clone(),
                    listing.index,
                    listing.term,
                    offset,
                    SNAPSHOT_READ_BYTES_MAX,
                )
                .await
            {
                Ok(r) => r,
                Err(ClientError::Rejected(why)) if why.contains("retired") => {
                    return Err(Failed::Retired(why.into()));
                }
                Err(e) => return Err(e.into()),
            };
            if file_bytes != listing.file_bytes || data.is_empty() {
                return Err(format!(
                    "node {ep}: snapshot {} is {file_bytes} bytes long, listed as {}, and gave \
                     {} bytes at offset {offset}",
                    listing.index,
                    listing.file_bytes,
                    data.len()
                )
                .into());
            }
            out.write_all(&data)
                .map_err(|e| format!("writing {}: {e}", partial.display()))?;
            offset += data.len() as u64;
            if last_report.elapsed() >= Duration::from_millis(SAVE_PROGRESS_INTERVAL_MS) {
                progress(listing, offset);
                last_report = Instant::now();
            }
        }
        progress(listing, offset);
        out.sync_all()
            .map_err(|e| format!("fsync {}: {e}", partial.display()))?;
        let report = crate::cli::snapshot_inspect(&partial)?;
        if !report.ok {
            return Err(format!(
                "the downloaded snapshot failed verification: {}",
                report.error.unwrap_or_default()
            )
            .into());
        }
        if report.digest != listing.digest {
            return Err(format!(
                "the downloaded snapshot's digest is {}, the node listed {}",
                report.digest, listing.digest
            )
            .into());
        }
        let modules_fetched = carry_modules(client, ep, &partial).await?;
        let report = crate::cli::snapshot_inspect(&partial)?;
        if !report.ok || report.machines.iter().any(|m| !m.module_carried) {
            return Err(format!(
                "the snapshot with its modules failed verification: {}",
                report
                    .error
                    .unwrap_or_else(|| "a module is not carried".into())
            )
            .into());
        }
        Ok(Downloaded {
            file_bytes: report.file_bytes,
            digest: report.digest,
            modules_fetched,
        })
    }
    .await;
    let downloaded = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, file).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            file.display()
        )
    })?;
    sync_parent(file)?;
    Ok(downloaded)
}

/// Make the verified download at `partial` carry every module its snapshot names by hash: fetch
/// each from the node at `ep`, and replace `partial` with a copy written with the modules inside
/// (checked against their records' SHA-256 and size, and fsynced). Returns the modules fetched
/// (0: the file carried them all and is left as it is).
async fn carry_modules(client: &Client, ep: &PeerAddr, partial: &Path) -> Result<usize, Failed> {
    let info = wraft_storage::inspect_snapshot_file(partial, false)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    let body = FileBody::open(partial, info.body_offset(), info.body_len)?;
    let snap = NodeSnapshot::parse(Arc::new(body))?;
    if snap.self_contained() {
        return Ok(0);
    }
    let mut modules = Vec::with_capacity(snap.header.machines.len());
    let mut fetched = 0;
    for (record, carried) in snap.header.machines.iter().zip(&snap.modules) {
        if carried.is_some() {
            modules.push(bytes::Bytes::new());
            continue;
        }
        let module = client
            .module_get(ep.clone(), record.module_sha256)
            .await
            .map_err(|e| {
                format!(
                    "node {ep} cannot send the module of machine {:?} ({} bytes, SHA-256 {}),                      which its snapshot names by hash: {e}",
                    record.name,
                    record.module_bytes,
                    wraft_proto::digest::hex(&record.module_sha256)
                )
            })?;
        modules.push(module.into());
        fetched += 1;
    }
    let dir = partial.with_extension("partial.d");
    let partial = partial.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(), AnyError> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
        let written = (|| -> Result<(), AnyError> {
            let (store, _) = SnapshotStore::open(Arc::new(StdFs), &dir, &StorageConfig::default())?;
            let copy = NodeSnapshotWriter::copy_inlining_modules(
                &store,
                &snap,
                &modules,
                RESTORE_IO_CHUNK_BYTES,
            )?;
            drop(snap);
            std::fs::rename(&copy.path, &partial).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    copy.path.display(),
                    partial.display()
                )
            })?;
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        written
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(fetched)
}

/// `FILE.partial`, beside `FILE` (same file system, so the rename is atomic).
fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    file.with_file_name(name)
}

fn sync_parent(path: &Path) -> Result<(), AnyError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync directory {}: {e}", parent.display()).into())
}

/// Parse one `ID=HOST:PORT` of `--members`.
pub fn parse_member(s: &str) -> Result<(u64, PeerAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=HOST:PORT (e.g. 1=10.0.0.1:7001), found {s:?}"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("node id {id:?} in {s:?} is not a number"))?;
    if id == 0 {
        return Err(format!("node id 0 is reserved (in {s:?})"));
    }
    let addr = addr
        .trim()
        .parse()
        .map_err(|e| format!("address {addr:?} in {s:?}: {e}"))?;
    Ok((id, addr))
}

/// What [`restore`] is given.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The saved snapshot.
    pub file: PathBuf,
    /// The new node's data directory (absent or empty).
    pub data_dir: PathBuf,
    /// The new node's id (one of `members`).
    pub node_id: u64,
    /// Every voter of the new cluster with its address.
    pub members: Vec<(u64, PeerAddr)>,
}

/// What [`restore`] wrote.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Index and term of the restored state.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Machines restored.
    pub machines: Vec<String>,
    /// The snapshot file written in the data directory.
    pub path: PathBuf,
}

/// The replicated address book of a restored cluster: the `--members` as given. (One place
/// for whatever an address becomes: a DNS name would be carried here.)
fn restored_addresses(members: &[(u64, PeerAddr)]) -> Vec<(u64, PeerAddr)> {
    let mut v = members.to_vec();
    v.sort_unstable_by_key(|(id, _)| *id);
    v
}

/// `wraft restore FILE --data-dir DIR --node-id N --members ...` (see the module docs).
pub fn restore(opts: &RestoreOptions) -> Result<Restored, AnyError> {
    let file = &opts.file;
    if opts.members.is_empty() {
        return Err("give the new cluster's members with --members ID=HOST:PORT,...".into());
    }
    let mut ids: Vec<u64> = opts.members.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("--members names a node twice: {ids:?}").into());
    }
    if !ids.contains(&opts.node_id) {
        return Err(format!("--node-id {} is not one of --members {ids:?}", opts.node_id).into());
    }
    let report = crate::cli::snapshot_inspect(file)?;
    if !report.ok {
        return Err(format!(
            "{} is not a complete snapshot ({}); nothing was written. Use another backup",
            file.display(),
            report.error.unwrap_or_default()
        )
        .into());
    }
    let dir = &opts.data_dir;
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(format!(
            "data directory {} is not empty; restore only seeds a new node. Move it away \
             (or delete it, if it is no longer needed) and run restore again",
            dir.display()
        )
        .into());
    }
    let name = dir
        .file_name()
        .ok_or_else(|| format!("--data-dir {} has no directory name", dir.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".restoring");
    let tmp = dir.with_file_name(tmp_name);
    if tmp.exists() {
        // Left by a restore that did not finish: ours, by its name.
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| format!("cannot remove the leftover {}: {e}", tmp.display()))?;
    }
    let written = write_restored(opts, &tmp);
    let path = match written {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dir.exists() {
        // Empty (checked above): rename(2) replaces an empty directory, but say so plainly.
        std::fs::remove_dir(dir).map_err(|e| format!("cannot replace {}: {e}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), dir.display()))?;
    sync_parent(dir)?;
    Ok(Restored {
        index: report.index,
        term: report.term,
        machines: report.machines.iter().map(|m| m.name.clone()).collect(),
        path: dir.join("snap").join(path.file_name().unwrap_or_default()),
    })
}

/// Write the re-headed snapshot into `tmp/snap` and verify it as a node start does.
fn write_restored(opts: &RestoreOptions, tmp: &Path) -> Result<PathBuf, AnyError> {
    let info = wraft_storage::inspect_snapshot_file(&opts.file, true)
        .map_err(|e| format!("{}: {e}", opts.file.display()))?;
    let body: Arc<dyn wraft_snapshot::format::BodySource> = Arc::new(FileBody::open(
        &opts.file,
        info.body_offset(),
        info.body_len,
    )?);
    let source = NodeSnapshot::parse(body.clone())?;
    if let Some((m, _)) = source
        .header
        .machines
        .iter()
        .zip(&source.modules)
        .find(|(_, carried)| carried.is_none())
    {
        return Err(format!(
            "{} names the module of machine {:?} by hash (SHA-256 {}) and does not carry it: it              is a node's own snapshot file, not a backup. Make backups with `wraft snapshot save`,              which puts the modules inside",
            opts.file.display(),
            m.name,
            wraft_proto::digest::hex(&m.module_sha256)
        )
        .into());
    }
    let mut header = source.header.clone();
    header.membership =
        wraft_engine::Membership::with_voters(opts.members.iter().map(|(id, _)| *id));
    header.addresses = restored_addresses(&opts.members);
    let snap_dir = tmp.join("snap");
    let cfg = StorageConfig::default();
    let (store, _) = SnapshotStore::open(Arc::new(StdFs), &snap_dir, &cfg)?;
    let written = NodeSnapshotWriter::copy_with_header(
        &store,
        &header,
        body.as_ref(),
        RESTORE_IO_CHUNK_BYTES,
    )?;
    drop(store);
    // What a node start does with it: the newest snapshot, digest checked in full, parsed.
    let (store, rec) = SnapshotStore::open(Arc::new(StdFs), &snap_dir, &cfg)?;
    let latest = rec
        .latest
        .ok_or("the restored snapshot did not verify after writing")?;
    if latest.meta.id != written.meta.id {
        return Err(format!(
            "the restored data directory holds snapshot {} instead of {}",
            latest.meta.id, written.meta.id
        )
        .into());
    }
    let check = NodeSnapshot::open(&store, latest.meta.id)?;
    if check.header != header {
        return Err("the restored snapshot's header does not read back as written".into());
    }
    sync_parent(&snap_dir)?;
    Ok(latest.path)
}

/// `wraft recover`: print what the node's data holds; with `force` and `confirmed`, make it
/// the only voter of a new cluster. Returns the text to print.
pub fn recover(
    cfg: &wraft_config::NodeConfig,
    force: bool,
    confirmed: bool,
) -> Result<String, AnyError> {
    use wraft_node::recover;
    let plan = recover::plan(cfg)?;
    let id = plan.node;
    let held = format!(
        "node {id} ({}): term {}, last log index {}, known committed {}, voters {:?}, learners {:?}",
        cfg.node.data_dir.display(),
        plan.term,
        plan.last_index,
        plan.commit,
        plan.membership.voters,
        plan.membership.learners
    );
    if !force {
        return Ok(format!(
            "{held}\nTo make this node the only voter of a new cluster from this data, run \
             again with --force-new-cluster (on ONE survivor: the one with the highest last \
             log index)."
        ));
    }
    if !confirmed {
        return Err(format!(
            "{held}\n\nrefused: --force-new-cluster makes node {id} the only voter of a new \
             cluster formed from its own log. Every entry this node holds is kept and \
             committed; writes it does not hold are lost for good, even if they were \
             acknowledged (a majority that did not include this node). The other members \
             ({:?}) are removed: never start them again with their old data. Add members back \
             as fresh nodes with `wraft members add-learner` and `promote`.\nTo proceed, add \
             {CONFIRM_FLAG}",
            plan.membership
                .members()
                .filter(|m| *m != id)
                .collect::<Vec<_>>()
        )
        .into());
    }
    let done = recover::force_new_cluster(cfg)?;
    Ok(format!(
        "{held}\nforced: node {id} is now the only voter (configuration entry {} and the record \
         of the change at {}, term {}). Start the node; it elects itself and commits its log. \
         Then remove the old members from cluster.members in its config and add members back \
         with `wraft members add-learner ID ADDR` and `wraft members promote ID`.",
        done.conf_index, done.record_index, done.term
    ))
}

/// The flag that confirms `wraft recover --force-new-cluster`.
pub const CONFIRM_FLAG: &str = "--yes-i-know-writes-missing-here-are-lost";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_as_id_equals_address_and_refuse_what_is_not() {
        assert_eq!(
            parse_member("2=127.0.0.1:7002").unwrap(),
            (2, "127.0.0.1:7002".parse().unwrap())
        );
        assert!(
            parse_member("127.0.0.1:7002")
                .unwrap_err()
                .contains("ID=HOST:PORT")
        );
        assert!(
            parse_member("0=127.0.0.1:1")
                .unwrap_err()
                .contains("reserved")
        );
        assert!(
            parse_member("x=127.0.0.1:1")
                .unwrap_err()
                .contains("not a number")
        );
    }

    #[test]
    fn the_partial_download_lives_beside_the_file() {
        assert_eq!(
            partial_path(Path::new("/b/x.snap")),
            PathBuf::from("/b/x.snap.partial")
        );
    }
}
