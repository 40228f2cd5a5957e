//! The Rust client: what applications use to talk to a wraft cluster.
//!
//! A [`Client`] knows a few node addresses, finds the leader (following
//! `NotLeader` redirects), and retries safely: every command carries a
//! session tag (session id + sequence number) that the cluster uses to apply a
//! retried command at most once and return the original result. Sessions are
//! opened through the log (one extra commit the first time a client writes)
//! and reused. If the cluster forgot a session (it expired after an hour idle
//! in entry time, or was evicted), a command sent once is sent again on a new
//! session; a command sent more than once fails with
//! [`ClientError::OutcomeUnknown`], because an earlier copy may have been
//! applied.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wraft_client::{Client, ClientOptions, PeerAddr};
//! // IP addresses or DNS names, resolved again for every new connection.
//! let endpoints: Vec<PeerAddr> = vec!["127.0.0.1:7001".parse()?, "node-2.wraft.svc:7001".parse()?];
//! let client = Client::connect(ClientOptions::from_cert_dir(
//!     endpoints,
//!     "certs".as_ref(),
//!     "admin",
//! )?).await?;
//! let out = client.propose("kv", br#"{"op":"put","key":"a","value":"1"}"#).await?;
//! println!("applied at {}: {}", out.index, String::from_utf8_lossy(&out.output));
//! # Ok(()) }
//! ```
//!
//! Endpoints are raced, not tried in turn: with no working connection the client dials the
//! first endpoint, then the next every [`ClientOptions::connect_stagger_ms`] (or at once when
//! a dial fails) and keeps the first handshake that completes, closing the others. It then
//! remembers the node that answered and the leader, so a dead node listed first costs a fresh
//! client (one CLI call) one stagger, and a long-lived client nothing.
//!
//! Cost: one QUIC stream per request on a cached connection; the first call
//! pays the TLS handshake. A client with one connection and little
//! concurrency is fastest on a runtime with one worker: on 2 cores a quinn
//! round trip measured 0.11 ms with one worker and 0.17–0.22 ms with two, each
//! packet also waking the idle worker (`BENCHMARKS.md`, series h).

mod connection;
mod error;

use connection::{Exchange, exchange, sleep_within};
pub use error::ClientError;
use error::{done, map_err, unexpected};

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wraft_transport::certs::{CertDir, TlsIdentity};
use wraft_transport::client::ClientConnection;

/// The protocol types a client's answers are made of, so an application needs only this crate.
pub use wraft_proto::{self as proto, Consistency, MachineInfo, NodeInfo, PeerAddr, Status};
use wraft_proto::{Reply, Request, RequestError, RequestTag};

/// A connection that hears nothing from its node for this long is declared
/// dead and the call moves to the next node, milliseconds. QUIC learns of a
/// crashed peer only through this timeout, so it bounds how long a client
/// stalls after a `kill -9` of the leader (the election itself takes about
/// one election timeout).
pub const CONNECTION_IDLE_TIMEOUT_MS: u64 = 2_000;
/// Handshake deadline when (re)connecting to a node, milliseconds. A QUIC
/// handshake to a dead address gets no answer at all (ICMP errors are
/// ignored), so this bounds the cost of trying one, while leaving two orders
/// of magnitude over a LAN handshake.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// A node whose connection just failed is skipped for this long when the
/// client picks where to send the next attempt, milliseconds (unless every
/// node is suspect). Without it, a client that loses the leader keeps trying
/// the dead node, which followers still name as leader until they elect
/// another, paying [`CONNECT_TIMEOUT_MS`] each time.
pub const SUSPECT_NODE_MS: u64 = 3_000;
/// Default of [`ClientOptions::connect_stagger_ms`]: how long a dial has before the next
/// endpoint is dialed too, milliseconds. A loopback or LAN handshake takes a few milliseconds
/// (10–20 in a debug build), so a live first endpoint usually wins alone, and a dead one delays
/// a fresh client by this much instead of [`CONNECT_TIMEOUT_MS`].
pub const CONNECT_STAGGER_MS: u64 = 25;
/// Keep-alive interval on client connections, milliseconds (well under
/// [`CONNECTION_IDLE_TIMEOUT_MS`], so a live but idle node is never dropped).
pub const CONNECTION_KEEP_ALIVE_MS: u64 = 400;

/// Largest request or response frame, bytes: a deploy carries the whole module, and a node
/// accepts modules up to its `guest.module_bytes_max` (32 MiB by default; the host's own cap is
/// 64 MiB), so the client must be able to send that much. A Python guest is ~18 MB.
pub const FRAME_BYTES_MAX: u32 = (64 << 20) + (64 << 10);

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Nodes to try first (any member will redirect to the leader): IP addresses or DNS
    /// names, resolved again for every new connection.
    pub endpoints: Vec<PeerAddr>,
    /// The client's certificate, key and the cluster CA.
    pub tls: TlsIdentity,
    /// Give up on one call after this long, milliseconds.
    pub call_timeout_ms: u64,
    /// The same for a deploy (its outcome includes compiling the module on the leader, and on a
    /// first deploy of a big JS or Python component that takes a while); a deploy gets the
    /// larger of this and `call_timeout_ms`. Default 300 000.
    pub deploy_timeout_ms: u64,
    /// First retry delay after `Busy` or no leader, milliseconds (doubles, capped at 1 s).
    pub retry_backoff_min_ms: u64,
    /// With no working connection, endpoints are dialed this far apart, milliseconds, and the
    /// first handshake to complete is kept (0: all at once). Default [`CONNECT_STAGGER_MS`].
    pub connect_stagger_ms: u64,
}

impl ClientOptions {
    /// Options using the certificate `client-<name>` from a `wraft cert` directory.
    pub fn from_cert_dir(
        endpoints: impl IntoIterator<Item = impl Into<PeerAddr>>,
        dir: &Path,
        name: &str,
    ) -> Result<ClientOptions, ClientError> {
        let endpoints = endpoints.into_iter().map(Into::into).collect();
        let tls = CertDir::new(dir)
            .load_tls(&wraft_transport::Identity::Client(name.to_owned()))
            .map_err(|e| ClientError::Certs(e.to_string()))?;
        Ok(ClientOptions {
            endpoints,
            tls,
            call_timeout_ms: 30_000,
            deploy_timeout_ms: 300_000,
            retry_backoff_min_ms: 20,
            connect_stagger_ms: CONNECT_STAGGER_MS,
        })
    }
}

/// The output of an applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Log index at which the command was applied.
    pub index: u64,
    /// The machine's output.
    pub output: Vec<u8>,
}

/// A session used for at-most-once retries. A client holds several so that
/// concurrent calls never share one (a session has one request in flight).
struct Session {
    client_id: u64,
    next_seq: u64,
}

/// A node that answered: its id (from its certificate) and the address dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// The node's id, if its certificate names one.
    pub id: Option<u64>,
    /// The address the client dialed.
    pub addr: PeerAddr,
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "node {id} ({})", self.addr),
            None => write!(f, "the node at {}", self.addr),
        }
    }
}

/// A handle to a cluster. Cheap to share by reference across tasks.
pub struct Client {
    opts: ClientOptions,
    tls: Arc<TlsIdentity>,
    /// The connection calls use, and the address it was dialed at. Read by every call under a
    /// plain lock held only to clone it; dials are serialized by `dialing`.
    conn: Mutex<Option<(PeerAddr, ClientConnection)>>,
    /// Held while dialing (or deciding to), so that concurrent calls finding no usable
    /// connection make one dial between them, not one each.
    dialing: tokio::sync::Mutex<()>,
    sessions: Mutex<Vec<Session>>,
    leader_hint: Mutex<Option<PeerAddr>>,
    /// Nodes whose connection failed, and when (see [`SUSPECT_NODE_MS`]).
    suspects: Mutex<HashMap<PeerAddr, Instant>>,
    /// The node that gave the last answer (see [`Client::last_answer_from`]).
    answered_by: Mutex<Option<NodeRef>>,
}

impl Client {
    /// Create a client; connects lazily on the first call.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        if opts.endpoints.is_empty() {
            return Err(ClientError::Rejected("no endpoints given".into()));
        }
        Ok(Client {
            tls: Arc::new(opts.tls.clone()),
            opts,
            conn: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            sessions: Mutex::new(Vec::new()),
            leader_hint: Mutex::new(None),
            suspects: Mutex::new(HashMap::new()),
            answered_by: Mutex::new(None),
        })
    }

    /// The node whose answer (a reply or an error such as `NoSuchMachine`) ended the last
    /// redirected call ([`Client::propose`], [`Client::query`], …) or the last
    /// [`Client::set_transfer_rate`], to name it in messages: a stale read on a lagging
    /// follower says which follower.
    pub fn last_answer_from(&self) -> Option<NodeRef> {
        self.answered_by.lock().ok().and_then(|a| a.clone())
    }

    /// Apply `command` to machine `machine`; returns its output.
    pub async fn propose(&self, machine: &str, command: &[u8]) -> Result<Applied, ClientError> {
        let reply = self
            .tagged(|tag| Request::Propose {
                tag,
                machine: machine.to_owned(),
                command: command.to_vec(),
            })
            .await?;
        match reply {
            Reply::Applied { index, output } => Ok(Applied { index, output }),
            other => Err(unexpected(other)),
        }
    }

    /// Ask machine `machine` a read-only question.
    pub async fn query(
        &self,
        machine: &str,
        request: &[u8],
        consistency: Consistency,
    ) -> Result<Vec<u8>, ClientError> {
        let req = Request::Query {
            machine: machine.to_owned(),
            request: request.to_vec(),
            consistency,
        };
        // Stale reads may be served by whichever node we reach.
        let follow_leader = consistency != Consistency::Stale;
        match self.call(req, follow_leader).await? {
            Reply::Answer { output, .. } => Ok(output),
            other => Err(unexpected(other)),
        }
    }

    /// Deploy (or upgrade) machine `name` from component bytes, with the WASI profile `wasi`
    /// (what the module may import besides `wraft:machine/host`; replicated with the deploy).
    /// A module importing anything else is refused before it reaches the log, with a message
    /// naming the import.
    pub async fn deploy_with(
        &self,
        name: &str,
        module: Vec<u8>,
        wasi: wraft_proto::WasiProfile,
    ) -> Result<String, ClientError> {
        if wasi == wraft_proto::WasiProfile::None {
            return self.deploy(name, module).await;
        }
        let name = name.to_owned();
        done(
            self.tagged(|tag| Request::DeployWith {
                tag,
                name: name.clone(),
                module: module.clone(),
                wasi,
            })
            .await?,
        )
    }

    /// Deploy (or upgrade) machine `name` from component bytes.
    pub async fn deploy(&self, name: &str, module: Vec<u8>) -> Result<String, ClientError> {
        let name = name.to_owned();
        done(
            self.tagged(|tag| Request::Deploy {
                tag,
                name: name.clone(),
                module: module.clone(),
            })
            .await?,
        )
    }

    /// Remove machine `name` and its state.
    pub async fn remove_machine(&self, name: &str) -> Result<String, ClientError> {
        let name = name.to_owned();
        done(
            self.tagged(|tag| Request::RemoveMachine {
                tag,
                name: name.clone(),
            })
            .await?,
        )
    }

    /// Deployed machines, as the leader sees them.
    pub async fn machines(&self) -> Result<Vec<MachineInfo>, ClientError> {
        match self.call(Request::Machines, true).await? {
            Reply::Machines(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// Status of the node at `addr` (or of the first reachable endpoint).
    pub async fn status_of(
        &self,
        addr: Option<impl Into<PeerAddr>>,
    ) -> Result<Status, ClientError> {
        let target = self.target(addr);
        let conn = self.connection_to(&target).await?;
        match exchange(&conn, &Request::Status).await? {
            Ok(Reply::Status(s)) => Ok(*s),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The software version of the node at `addr` (no redirect). A node older than
    /// [`Request::NodeInfo`] cannot decode it and closes the stream: that is an `Internal`
    /// error here.
    pub async fn node_info_of(&self, addr: impl Into<PeerAddr>) -> Result<NodeInfo, ClientError> {
        let conn = self.connection_to(&addr.into()).await?;
        match exchange(&conn, &Request::NodeInfo).await? {
            Ok(Reply::NodeInfo(i)) => Ok(i),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Status of the leader.
    pub async fn status(&self) -> Result<Status, ClientError> {
        match self.call(Request::Status, false).await? {
            Reply::Status(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }

    /// Add node `id` at `addr` as a learner.
    pub async fn add_learner(
        &self,
        id: u64,
        addr: impl Into<PeerAddr>,
    ) -> Result<String, ClientError> {
        let addr = addr.into();
        done(self.call(Request::AddLearner { id, addr }, true).await?)
    }

    /// Promote learner `id` to voter.
    pub async fn promote(&self, id: u64) -> Result<String, ClientError> {
        done(self.call(Request::Promote { id }, true).await?)
    }

    /// Remove member `id`.
    pub async fn remove_member(&self, id: u64) -> Result<String, ClientError> {
        done(self.call(Request::RemoveMember { id }, true).await?)
    }

    /// Ask the node at `addr` (or the first endpoint) to start a snapshot
    /// now (or join the one in flight); returns the index it will cover.
    /// The file is durable once [`Client::snapshots`] lists that index.
    pub async fn snapshot_trigger(
        &self,
        addr: Option<impl Into<PeerAddr>>,
    ) -> Result<u64, ClientError> {
        let target = self.target(addr);
        let conn = self.connection_to(&target).await?;
        match exchange(&conn, &Request::SnapshotTrigger).await? {
            Ok(Reply::SnapshotStarted { index }) => Ok(index),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(map_err(e)),
        }
    }

    /// [`Client::snapshot_trigger`], then poll until the node lists a
    /// snapshot at or above that index and has taken it as its newest (its
    /// status says so: its machines rebuild from it from then on), at most
    /// `timeout`. The file is listed a moment before the node takes it.
    pub async fn snapshot_trigger_and_wait(
        &self,
        addr: Option<impl Into<PeerAddr>>,
        timeout: std::time::Duration,
    ) -> Result<wraft_proto::SnapshotListing, ClientError> {
        let target = self.target(addr);
        let index = self.snapshot_trigger(Some(target.clone())).await?;
        let start = std::time::Instant::now();
        loop {
            if let Some(l) = self
                .snapshots(Some(target.clone()))
                .await?
                .into_iter()
                .rev()
                .find(|l| l.index >= index)
                && self.status_of(Some(target.clone())).await?.snapshot_index >= index
            {
                return Ok(l);
            }
            if start.elapsed() > timeout {
                return Err(ClientError::Timeout(format!(
                    "no snapshot at index {index} after {} ms (a failed snapshot is in the node's log)",
                    timeout.as_millis()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Set the outgoing snapshot bandwidth cap of the node at `addr` (or the
    /// first endpoint) to `bytes_per_sec` (0: no cap), effective from the next
    /// chunk of every running transfer. Node-local; a restart restores the
    /// configured `snapshot.transfer_bytes_per_sec_max`. Returns the node's
    /// answer, the cap now in force (`snapshot transfers capped at 20480
    /// bytes/s`); [`Client::last_answer_from`] then names the node that gave it.
    pub async fn set_transfer_rate(
        &self,
        addr: Option<impl Into<PeerAddr>>,
        bytes_per_sec: u64,
    ) -> Result<String, ClientError> {
        let target = self.target(addr);
        let conn = self.connection_to(&target).await?;
        let answer = exchange(&conn, &Request::SetTransferRate { bytes_per_sec }).await?;
        self.set_answered_by(&target, &conn);
        match answer {
            Ok(r) => done(r),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The complete snapshots held by the node at `addr` (or the first endpoint).
    pub async fn snapshots(
        &self,
        addr: Option<impl Into<PeerAddr>>,
    ) -> Result<Vec<wraft_proto::SnapshotListing>, ClientError> {
        let target = self.target(addr);
        let conn = self.connection_to(&target).await?;
        match exchange(&conn, &Request::Snapshots).await? {
            Ok(Reply::Snapshots(v)) => Ok(v),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Read up to `bytes_max` bytes (at most [`wraft_proto::SNAPSHOT_READ_BYTES_MAX`]) of the
    /// file of snapshot `index`/`term` on the node at `addr`, from `offset`: the file's length
    /// and the bytes (empty at the end). Admin clients only. `wraft snapshot save` reads a
    /// whole file this way, one bounded chunk at a time.
    pub async fn snapshot_read(
        &self,
        addr: impl Into<PeerAddr>,
        index: u64,
        term: u64,
        offset: u64,
        bytes_max: u64,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let conn = self.connection_to(&addr.into()).await?;
        let req = Request::SnapshotRead {
            index,
            term,
            offset,
            bytes_max,
        };
        match exchange(&conn, &req).await? {
            Ok(Reply::SnapshotChunk { file_bytes, data }) => Ok((file_bytes, data)),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The module stored under SHA-256 `sha256` on the node at `addr` (verified there; the
    /// caller checks it again); [`ClientError::Rejected`] if that node does not hold it. Admin
    /// clients only. `wraft snapshot save` fetches the modules a node's snapshot names by hash
    /// this way.
    pub async fn module_get(
        &self,
        addr: impl Into<PeerAddr>,
        sha256: [u8; 32],
    ) -> Result<Vec<u8>, ClientError> {
        let conn = self.connection_to(&addr.into()).await?;
        match exchange(&conn, &Request::ModuleGet { sha256 }).await? {
            Ok(Reply::Module { module }) => Ok(module),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Ask the leader to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<String, ClientError> {
        done(self.call(Request::TransferLeader { to }, true).await?)
    }

    /// Run a tagged request with a session taken from the pool (or opened now); the same tag
    /// is reused on every retry, so the cluster applies it at most once.
    async fn tagged(&self, make: impl Fn(RequestTag) -> Request) -> Result<Reply, ClientError> {
        let mut resent = false;
        loop {
            let pooled = self.sessions.lock().ok().and_then(|mut s| s.pop());
            let mut session = match pooled {
                Some(s) => s,
                None => self.open_session().await?,
            };
            let tag = RequestTag {
                client_id: session.client_id,
                seq: session.next_seq,
            };
            session.next_seq += 1;
            let mut sent = 0;
            let result = self.call_counting(make(tag), true, &mut sent).await;
            match result {
                // Refused at the only attempt that could have reached the log: certainly not
                // applied. Send it once more, on a new session.
                Err(ClientError::OutcomeUnknown(_)) if sent <= 1 && !resent => {
                    resent = true;
                }
                // The session is forgotten; one that has seen a gap or an unknown outcome is
                // still sound (a late copy of an older command is refused as stale).
                Err(ClientError::OutcomeUnknown(_)) => return result,
                _ => {
                    if let Ok(mut s) = self.sessions.lock() {
                        s.push(session);
                    }
                    return result;
                }
            }
        }
    }

    /// Open a session through the log.
    async fn open_session(&self) -> Result<Session, ClientError> {
        match self.call(Request::OpenSession, true).await? {
            Reply::SessionOpened { client_id } => Ok(Session {
                client_id,
                next_seq: 1,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Send `req` to the leader, following redirects and retrying what is
    /// safe to retry, until `call_timeout_ms`.
    async fn call(&self, req: Request, follow_leader: bool) -> Result<Reply, ClientError> {
        self.call_counting(req, follow_leader, &mut 0).await
    }

    /// [`Client::call`], counting in `sent` the attempts that may have reached the log (every
    /// one whose request was written, except those refused with `NotLeader` or `Busy`).
    async fn call_counting(
        &self,
        req: Request,
        follow_leader: bool,
        sent: &mut u32,
    ) -> Result<Reply, ClientError> {
        let start = Instant::now();
        let deadline = Duration::from_millis(match req {
            Request::Deploy { .. } | Request::DeployWith { .. } => {
                self.opts.deploy_timeout_ms.max(self.opts.call_timeout_ms)
            }
            _ => self.opts.call_timeout_ms,
        });
        let mut backoff = Duration::from_millis(self.opts.retry_backoff_min_ms.max(1));
        // Where the next race starts, and a node to leave out of it (one that just said it
        // knows no leader), so that retries rotate over the endpoints.
        let mut rotate = 0usize;
        let mut skip: Option<PeerAddr> = None;
        let mut connected = false;
        // Why the last attempt failed; `None` (no allocation) until one has.
        let mut last: Option<String> = None;
        while let Some(left) = deadline
            .checked_sub(start.elapsed())
            .filter(|l| !l.is_zero())
        {
            let hint = self.leader_hint.lock().ok().and_then(|h| h.clone());
            let attempt = match hint {
                // After a redirect or a success: straight to the leader.
                Some(h) if !self.is_suspect(&h) => self
                    .connection_to_within(&h, left)
                    .await
                    .map(|c| (h.clone(), c))
                    .map_err(|e| vec![(h, e)]),
                _ => {
                    self.any_connection(rotate, skip.as_ref(), start + deadline)
                        .await
                }
            };
            let (target, conn) = match attempt {
                Ok(found) => found,
                Err(failures) => {
                    // Connection trouble: forget these nodes for a while, race again.
                    for (addr, _) in &failures {
                        self.set_suspect(addr, true);
                    }
                    self.set_hint(None);
                    last = Some(
                        failures
                            .into_iter()
                            .map(|(_, e)| e)
                            .collect::<Vec<_>>()
                            .join("; "),
                    );
                    sleep_within(backoff, start + deadline).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            connected = true;
            let left = deadline.saturating_sub(start.elapsed());
            let r = match tokio::time::timeout(left, exchange(&conn, &req)).await {
                Ok(r) => r,
                Err(_) => Err(Exchange::Connection(format!(
                    "no answer from {target} within {} ms",
                    left.as_millis()
                ))),
            };
            if !matches!(
                r,
                Ok(Err(RequestError::NotLeader { .. } | RequestError::Busy(_)))
            ) {
                *sent += 1;
            }
            let outcome = match r {
                Ok(r) => Ok(r),
                // Another node or another try would fail the same way.
                Err(Exchange::Permanent(e)) => return Err(e),
                Err(Exchange::Connection(e)) => Err(e),
            };
            match outcome {
                Ok(Ok(reply)) => {
                    self.set_suspect(&target, false);
                    self.set_answered_by(&target, &conn);
                    // Start the next call where this one succeeded, rather
                    // than at the first endpoint (which may be a dead node).
                    if follow_leader {
                        self.set_hint(Some(target));
                    }
                    return Ok(reply);
                }
                Ok(Err(RequestError::NotLeader { leader })) if follow_leader => {
                    last = Some(format!(
                        "{} is not the leader and knows none",
                        self.name(&target, &conn)
                    ));
                    // A hint naming a node we just failed to reach is stale
                    // (followers name the old leader until they elect anew).
                    let hint = leader
                        .map(|(_, a)| a)
                        .filter(|a| *a != target && !self.is_suspect(a));
                    let no_hint = hint.is_none();
                    self.set_hint(hint);
                    if no_hint {
                        rotate = self.position_after(&target, rotate);
                        skip = Some(target);
                        sleep_within(backoff, start + deadline).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    } else {
                        skip = None;
                    }
                }
                Ok(Err(RequestError::Busy(m))) => {
                    last = Some(format!("{}: busy: {m}", self.name(&target, &conn)));
                    sleep_within(backoff, start + deadline).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Ok(Err(RequestError::Timeout(m))) => {
                    // Outcome unknown; retrying with the same tag is safe.
                    last = Some(format!("{}: timed out: {m}", self.name(&target, &conn)));
                }
                Ok(Err(e)) => {
                    self.set_answered_by(&target, &conn);
                    return Err(map_err(e));
                }
                Err(e) => {
                    // The connection broke: forget this node, try the others.
                    last = Some(e);
                    self.set_suspect(&target, true);
                    self.set_hint(None);
                    self.forget_connection(&conn);
                    rotate = self.position_after(&target, rotate);
                    skip = None;
                    sleep_within(backoff, start + deadline).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        let last = last.unwrap_or_else(|| "no attempt".to_owned());
        let waited_ms = start.elapsed().as_millis() as u64;
        if *sent > 0 {
            // Sent at least once and no outcome: it may have been applied.
            return Err(ClientError::Timeout(format!(
                "no outcome within {waited_ms} ms; the request may have been applied (last: {last})"
            )));
        }
        if !connected {
            return Err(ClientError::Unreachable {
                waited_ms,
                tried: last,
            });
        }
        Err(ClientError::NoLeader { waited_ms, last })
    }
}
