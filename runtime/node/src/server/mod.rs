//! Serving client connections: one request per QUIC stream, answered on the
//! same stream, or many on one multiplexed stream ([`session`]). Three deadlines bound what a stream can hold: the request's bytes
//! must never pause for `client.request_timeout_ms` and arrive whole within it (a request
//! bigger than any command, i.e. a module, within `client.deploy_timeout_ms`, so that one
//! uploaded over a slow link is read whole), the request must get its outcome within
//! `client.request_timeout_ms` (a deploy's outcome, which includes compiling the module, within
//! `client.deploy_timeout_ms`), and the response must be taken by the client within
//! `client.response_write_timeout_ms`, or the stream is reset with
//! [`CODE_RESPONSE_WRITE_TIMEOUT`] and its bytes and in-flight slot freed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use wraft_transport::frame;
use wraft_transport::mux::KIND_MUX_OPEN;
use wraft_transport::{ClientStream, Identity};

use crate::auth::Caller;
use crate::driver::ClientCall;
use crate::metrics::ClientMetrics;
use wraft_config::ClientSection;
use wraft_host::HostEngine;
use wraft_proto::{
    CODE_RESPONSE_WRITE_TIMEOUT, KIND_REQUEST, KIND_RESPONSE, Reply, Request, RequestError,
    Response, SNAPSHOT_READ_BYTES_MAX,
};
use wraft_snapshot::peers::SegmentIndex;
use wraft_storage::{SnapshotId, SnapshotStore};

mod session;

/// Most client requests being served at once by one node.
pub const CLIENT_REQUESTS_IN_FLIGHT_MAX: usize = 16_384;

/// Most certificate identities whose role [`serve_clients`] keeps worked out (it starts over
/// past this).
const CALLERS_CACHED_MAX: usize = 1024;

/// How long a stopping node keeps writing the answers to calls in flight, milliseconds.
pub const CLIENT_DRAIN_MS_MAX: u64 = 250;

/// Accept client streams until shutdown, then finish the ones in flight (bounded).
///
/// Every stream is served inside this one task (a `FuturesUnordered`), not a task each. When a
/// commit wakes many requests at once, their responses are all written in the same poll, before
/// any connection's QUIC driver runs, so the responses sharing a connection leave in a few
/// packets instead of one each (with a task per stream, Tokio runs the woken driver right after
/// each write). The work per request here is small (decode, validate, encode); anything heavy
/// (a module's compilation) runs on the blocking pool.
pub(super) async fn serve_clients(
    mut streams: mpsc::Receiver<ClientStream>,
    api: Api,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>> =
        FuturesUnordered::new();
    let slots = Slots::published(api.metrics.in_flight.clone());
    // Who each certificate identity is and what it may do, worked out once per identity rather
    // than per request (the limits that decide the role are fixed for `api`'s lifetime).
    let mut callers: HashMap<Identity, Arc<Caller>> = HashMap::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => {
                // Write the answers already decided (a stopping node answers its calls in
                // flight before it goes), for a bounded time.
                let drain = async { while in_flight.next().await.is_some() {} };
                let _ = tokio::time::timeout(Duration::from_millis(CLIENT_DRAIN_MS_MAX), drain).await;
                return;
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            s = streams.recv() => match s { Some(s) => s, None => return },
        };
        let Some(slot) = slots.take() else {
            // Over the bound: refuse this one cheaply rather than queue it.
            let ClientStream { identity, send, .. } = stream;
            let resp = busy();
            let deadline_ms = api.limits.response_write_timeout_ms;
            api.metrics
                .answered("unread", outcome_kind(&resp), Duration::ZERO);
            in_flight.push(contained(async move {
                write_response(send, &resp, deadline_ms, &identity).await;
            }));
            continue;
        };
        if callers.len() >= CALLERS_CACHED_MAX && !callers.contains_key(&stream.identity) {
            callers.clear();
        }
        let caller = callers
            .entry(stream.identity.clone())
            .or_insert_with(|| Arc::new(Caller::of_identity(&stream.identity, &api.limits)))
            .clone();
        let api = api.clone();
        let session = session::Session {
            slots: slots.clone(),
            shutdown: shutdown.clone(),
        };
        in_flight.push(contained(async move {
            serve_one(stream, &api, &caller, slot, session).await;
        }));
    }
}

/// The answer to a request over [`CLIENT_REQUESTS_IN_FLIGHT_MAX`].
fn busy() -> Response {
    Err(RequestError::Busy(format!(
        "{CLIENT_REQUESTS_IN_FLIGHT_MAX} requests in flight on this node"
    )))
}

/// The count of client requests being served by a node, on streams of their own and on
/// multiplexed streams alike, bounded by [`CLIENT_REQUESTS_IN_FLIGHT_MAX`] and published as
/// `wraft_client_requests_in_flight`.
#[derive(Clone)]
#[cfg_attr(test, derive(Default))]
pub(crate) struct Slots(Arc<SlotCount>);

/// The places taken, and the gauge they are published to (none in unit tests).
#[derive(Default)]
struct SlotCount {
    held: AtomicUsize,
    gauge: Option<metrics::Gauge>,
}

/// One request's place in [`Slots`], given back when dropped.
pub(crate) struct Slot(Arc<SlotCount>);

impl Slots {
    /// No places taken; the count goes to `gauge`.
    pub(crate) fn published(gauge: metrics::Gauge) -> Self {
        gauge.set(0.0);
        Slots(Arc::new(SlotCount {
            held: AtomicUsize::new(0),
            gauge: Some(gauge),
        }))
    }

    /// A place for one more request, or `None` if the node already serves as many as it may.
    pub(crate) fn take(&self) -> Option<Slot> {
        self.0
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < CLIENT_REQUESTS_IN_FLIGHT_MAX).then_some(n + 1)
            })
            .ok()?;
        if let Some(g) = &self.0.gauge {
            g.increment(1.0);
        }
        Some(Slot(self.0.clone()))
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.held.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.0.gauge {
            g.decrement(1.0);
        }
    }
}

/// Box `serve` for the set of in-flight streams, so that a panic while serving one stream loses
/// that stream only (as when each had its own task), not the task serving all of them.
fn contained(
    serve: impl Future<Output = ()> + Send + 'static,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        if let Err(panic) = AssertUnwindSafe(serve).catch_unwind().await {
            tracing::error!(target: "wraft::client", panic = %panic_message(&*panic), "serving a client stream panicked; that stream is dropped");
        }
    })
}

/// What a caught panic said, if it said it as a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

async fn serve_one(
    stream: ClientStream,
    api: &Api,
    caller: &Caller,
    slot: Slot,
    session: session::Session,
) {
    let ClientStream {
        identity,
        send,
        mut recv,
        ..
    } = stream;
    let limits = &api.limits;
    let frame_max = (limits
        .command_bytes_max
        .max(api.host.config().module_bytes_max as u64)
        + 4096)
        .min(u32::MAX as u64) as u32;
    let first = frame::read_frame_within(
        &mut recv,
        frame_max,
        Duration::from_millis(limits.request_timeout_ms),
        |len| {
            // Only a request bigger than any command (a module) gets the deploy's time to
            // arrive; anything else arrives whole within the request deadline, as before.
            Duration::from_millis(if len > limits.command_bytes_max + 4096 {
                limits.deploy_timeout_ms.max(limits.request_timeout_ms)
            } else {
                limits.request_timeout_ms
            })
        },
    )
    .await;
    let first = match first {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e @ frame::FrameError::TimedOut { .. }) => {
            tracing::info!(target: "wraft::client", %identity, error = %e, "closing a client stream: no whole request within the deadline");
            return;
        }
        Err(e) => return bad_request_frame(&mut recv, &identity, &e),
    };
    let request = match first.kind {
        KIND_REQUEST => match first.decode::<Request>() {
            Ok(req) => {
                wraft_transport::client::take_stream_end(&mut recv);
                req
            }
            Err(e) => return bad_request_frame(&mut recv, &identity, &e),
        },
        KIND_MUX_OPEN => {
            // A stream for many requests: it holds no place of its own, each of its requests
            // takes one.
            drop(slot);
            return session.serve(send, recv, api, caller, &identity).await;
        }
        kind => {
            tracing::debug!(target: "wraft::client", %identity, kind, "unexpected frame kind");
            return;
        }
    };
    let response = api.serve(caller, request).await;
    write_response(send, &response, limits.response_write_timeout_ms, &identity).await;
    drop(slot);
}

/// Stop reading a stream whose request frame is malformed, telling the client why.
fn bad_request_frame(
    recv: &mut wraft_transport::quinn::RecvStream,
    identity: &Identity,
    error: &frame::FrameError,
) {
    tracing::info!(target: "wraft::client", %identity, %error, "closing a client stream: bad request frame");
    let _ = recv.stop(wraft_transport::CODE_BAD_FRAME.into());
}

/// Serving one request, the same for a QUIC stream and an HTTP request: authorisation, the
/// bounds checked off the driver, the outcome deadline and the request metrics. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) driver: mpsc::Sender<ClientCall>,
    pub(crate) host: Arc<HostEngine>,
    pub(crate) snapshots: SnapshotStore,
    /// This node's snapshots indexed by segment, for the members' reads (each file hashed once,
    /// shared with the transfers).
    pub(crate) segments: SegmentIndex,
    /// This node's outgoing snapshot bandwidth (`snapshot.transfer_bytes_per_sec_max`): the
    /// segments it sends other members count against it, as its transfers do.
    pub(crate) snapshot_limiter: Arc<wraft_snapshot::BandwidthLimiter>,
    pub(crate) limits: Arc<ClientSection>,
    pub(crate) metrics: ClientMetrics,
    /// The module store and the calls to the other members' (deploys by hash).
    pub(crate) modules: Arc<crate::modules::Modules>,
}

impl Api {
    /// Answer `request` from `caller`: refused with `Forbidden` if its role does not allow it,
    /// `Timeout` if it has no outcome within `client.request_timeout_ms` (a deploy:
    /// `client.deploy_timeout_ms`).
    pub(crate) async fn serve(&self, caller: &Caller, request: Request) -> Response {
        let started = Instant::now();
        let kind = request_kind(&request);
        let limits = &*self.limits;
        let outcome_ms = match request {
            Request::Deploy { .. } | Request::DeployWith { .. } => limits.deploy_timeout_ms,
            _ => limits.request_timeout_ms,
        };
        let serve = async {
            if let Err(refused) = caller.authorize(&request) {
                tracing::info!(target: "wraft::client", who = %caller.who, role = %caller.role,
                    request = kind, "refused: role does not allow it");
                return Err(refused);
            }
            match request {
                Request::SnapshotRead {
                    index,
                    term,
                    offset,
                    bytes_max,
                } => read_snapshot(self.snapshots.clone(), index, term, offset, bytes_max).await,
                Request::SnapshotSegmentsHeld { hashes } => {
                    segments_held(self.snapshots.clone(), self.segments.clone(), hashes).await
                }
                Request::SnapshotSegment { hash, len } => {
                    let answer =
                        read_segment(self.snapshots.clone(), self.segments.clone(), hash, len)
                            .await;
                    // What leaves counts against this node's snapshot bandwidth, as its own
                    // transfers do (a refusal costs nothing).
                    if let Ok(Reply::Segment { data }) = &answer {
                        self.snapshot_limiter.acquire(data.len() as u64).await;
                    }
                    answer
                }
                request @ (Request::ModuleHas { .. }
                | Request::ModulePut { .. }
                | Request::ModuleGet { .. }) => self.modules.serve(request).await,
                request => handle(request, &self.driver, &self.host, &self.modules, limits).await,
            }
        };
        let response = tokio::time::timeout(Duration::from_millis(outcome_ms), serve)
            .await
            .unwrap_or_else(|_| {
                Err(RequestError::Timeout(format!(
                    "no outcome within {outcome_ms} ms; retrying with the same tag is safe"
                )))
            });
        self.metrics
            .answered(kind, outcome_kind(&response), started.elapsed());
        response
    }
}

/// [`Request::SnapshotSegmentsHeld`]: which of `hashes` this node's snapshots hold, on the
/// blocking pool.
async fn segments_held(
    snapshots: SnapshotStore,
    index: SegmentIndex,
    hashes: Vec<[u8; 32]>,
) -> Response {
    if hashes.len() > wraft_proto::SEGMENTS_ASKED_MAX {
        return Err(RequestError::Rejected(format!(
            "{} segment hashes asked; at most {} per request",
            hashes.len(),
            wraft_proto::SEGMENTS_ASKED_MAX
        )));
    }
    tokio::task::spawn_blocking(move || {
        Ok(Reply::SegmentsHeld {
            held: index.held(&snapshots, &hashes),
        })
    })
    .await
    .map_err(|e| RequestError::Internal(e.to_string()))?
}

/// [`Request::SnapshotSegment`]: the bytes of one segment from whichever snapshot here holds
/// it, checked against its hash, on the blocking pool.
async fn read_segment(
    snapshots: SnapshotStore,
    index: SegmentIndex,
    hash: [u8; 32],
    len: u32,
) -> Response {
    if u64::from(len) > SNAPSHOT_READ_BYTES_MAX {
        return Err(RequestError::Rejected(format!(
            "a segment of {len} bytes asked; segments are at most {SNAPSHOT_READ_BYTES_MAX}"
        )));
    }
    tokio::task::spawn_blocking(move || match index.read(&snapshots, hash, len) {
        Ok(Some(data)) => Ok(Reply::Segment { data }),
        Ok(None) => Err(RequestError::Rejected(
            "no snapshot on this node holds that segment (retired by a newer one?)".into(),
        )),
        Err(e) => Err(RequestError::Internal(e)),
    })
    .await
    .map_err(|e| RequestError::Internal(e.to_string()))?
}

/// One [`Request::SnapshotRead`]: up to [`SNAPSHOT_READ_BYTES_MAX`] bytes of a complete
/// snapshot's file, read on the blocking pool with the snapshot pinned meanwhile.
async fn read_snapshot(
    snapshots: SnapshotStore,
    index: u64,
    term: u64,
    offset: u64,
    bytes_max: u64,
) -> Response {
    let id = SnapshotId {
        last_index: index,
        last_term: term,
    };
    let want = bytes_max.min(SNAPSHOT_READ_BYTES_MAX) as usize;
    tokio::task::spawn_blocking(move || {
        let reader = snapshots.open_reader(id).map_err(|e| {
            RequestError::Rejected(format!(
                "snapshot {index} (term {term}) cannot be read here: {e}; it may have been \
                 retired by a newer one: start the download again"
            ))
        })?;
        let file_bytes = reader.info().file_len;
        let mut data = vec![0u8; want.min(file_bytes.saturating_sub(offset) as usize)];
        let n = reader
            .read_file_at(offset, &mut data)
            .map_err(|e| RequestError::Internal(e.to_string()))?;
        data.truncate(n);
        Ok(Reply::SnapshotChunk { file_bytes, data })
    })
    .await
    .map_err(|e| RequestError::Internal(e.to_string()))?
}

/// The `request` label of `wraft_client_requests_total`.
pub(crate) fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Propose { .. } => "propose",
        Request::Query { .. } => "query",
        Request::Deploy { .. } | Request::DeployWith { .. } => "deploy",
        Request::RemoveMachine { .. } => "remove_machine",
        Request::Machines => "machines",
        Request::Status => "status",
        Request::AddLearner { .. } => "add_learner",
        Request::Promote { .. } => "promote",
        Request::RemoveMember { .. } => "remove_member",
        Request::TransferLeader { .. } => "transfer_leader",
        Request::SnapshotTrigger => "snapshot_trigger",
        Request::Snapshots => "snapshots",
        Request::SetTransferRate { .. } => "set_transfer_rate",
        Request::OpenSession => "open_session",
        Request::SnapshotRead { .. } => "snapshot_read",
        Request::NodeInfo => "node_info",
        Request::Transfers => "transfers",
        Request::ModuleHas { .. } => "module_has",
        Request::ModulePut { .. } => "module_put",
        Request::ModuleGet { .. } => "module_get",
        Request::SnapshotSegmentsHeld { .. } => "snapshot_segments_held",
        Request::SnapshotSegment { .. } => "snapshot_segment",
    }
}

/// The `outcome` label of `wraft_client_requests_total`: `ok`, or the kind of error.
fn outcome_kind(response: &Response) -> &'static str {
    match response {
        Ok(_) => "ok",
        Err(RequestError::NotLeader { .. }) => "not_leader",
        Err(RequestError::Busy(_)) => "busy",
        Err(RequestError::Timeout(_)) => "timeout",
        Err(RequestError::Rejected(_)) => "rejected",
        Err(RequestError::NoSuchMachine(_)) => "no_such_machine",
        Err(RequestError::App { .. }) => "app_error",
        Err(RequestError::MachineFault(_)) => "machine_fault",
        Err(RequestError::Internal(_)) => "internal",
        Err(RequestError::SessionUnknown { .. }) => "session_unknown",
        Err(RequestError::Forbidden(_)) => "forbidden",
    }
}

/// Write `response` and finish the stream, or reset it with
/// [`CODE_RESPONSE_WRITE_TIMEOUT`] if the client has not taken it within
/// `deadline_ms`. Either way nothing of the response outlives this call but
/// what QUIC flow control let the client accept (which its stack acknowledges
/// whether or not the application reads it).
async fn write_response(
    mut send: wraft_transport::quinn::SendStream,
    response: &Response,
    deadline_ms: u64,
    identity: &wraft_transport::Identity,
) {
    let write = frame::write_msg(&mut send, KIND_RESPONSE, response, u32::MAX);
    match tokio::time::timeout(Duration::from_millis(deadline_ms), write).await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(e)) => {
            tracing::debug!(target: "wraft::client", %identity, error = %e, "response not delivered");
        }
        Err(_) => {
            tracing::info!(target: "wraft::client", %identity, deadline_ms,
                "resetting a client stream: response not taken within client.response_write_timeout_ms");
            let _ = send.reset(CODE_RESPONSE_WRITE_TIMEOUT.into());
        }
    }
}

async fn handle(
    request: Request,
    driver: &mpsc::Sender<ClientCall>,
    host: &Arc<HostEngine>,
    modules: &crate::modules::Modules,
    limits: &ClientSection,
) -> Response {
    // Bounds and validation happen here, off the driver.
    match &request {
        Request::Propose { command, .. } if command.len() as u64 > limits.command_bytes_max => {
            return Err(RequestError::Rejected(format!(
                "command is {} bytes; client.command_bytes_max is {}",
                command.len(),
                limits.command_bytes_max
            )));
        }
        Request::Query { request, .. } if request.len() as u64 > limits.command_bytes_max => {
            return Err(RequestError::Rejected(format!(
                "query is {} bytes; client.command_bytes_max is {}",
                request.len(),
                limits.command_bytes_max
            )));
        }
        Request::Deploy { name, module, .. } | Request::DeployWith { name, module, .. } => {
            let wasi = match &request {
                Request::DeployWith { wasi, .. } => *wasi,
                _ => wraft_host::WasiProfile::None,
            };
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(RequestError::Rejected(format!(
                    "machine name {name:?} must be 1–64 characters of [A-Za-z0-9_-]"
                )));
            }
            // Validate before anything reaches the log (`modules.deploy` compiles it too): a
            // bad module is refused to the client and never poisons the log.
            let host = host.clone();
            let bytes = module.clone();
            let checked = tokio::task::spawn_blocking(move || {
                host.check(&bytes, wasi)
                    .map(|()| wraft_proto::digest::sha256(&bytes))
            })
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))?;
            match checked {
                Ok(sha) => return modules.deploy(driver, request, sha).await,
                Err(e) => return Err(RequestError::Rejected(format!("module refused: {e}"))),
            }
        }
        _ => {}
    }
    ClientCall::call(driver, request, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's places for requests run out at the bound, whoever holds them (a stream of its
    /// own or a multiplexed stream's request), and each comes back when its holder is dropped.
    #[test]
    fn request_places_run_out_at_the_bound_and_come_back() {
        let slots = Slots::default();
        let on_a_stream: Vec<Slot> = (0..CLIENT_REQUESTS_IN_FLIGHT_MAX / 2)
            .map(|_| slots.take().expect("a place"))
            .collect();
        let multiplexed = slots.clone();
        let mut on_a_session: Vec<Slot> = (CLIENT_REQUESTS_IN_FLIGHT_MAX / 2
            ..CLIENT_REQUESTS_IN_FLIGHT_MAX)
            .map(|_| multiplexed.take().expect("a place"))
            .collect();
        assert!(slots.take().is_none(), "one past the bound");
        assert!(multiplexed.take().is_none(), "the count is shared");
        on_a_session.pop();
        let again = slots.take().expect("the freed place");
        assert!(multiplexed.take().is_none());
        drop((on_a_stream, on_a_session, again));
        assert_eq!(slots.held(), 0);
    }
}
