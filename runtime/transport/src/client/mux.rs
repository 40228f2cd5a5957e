//! The client half of a multiplexed stream ([`crate::mux`]): requests tagged with ids written
//! by one task, responses matched to their callers by another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{LANE_QUEUE_MAX, gather};
use crate::frame::{self, FrameError};
use crate::mux::{
    self, FrameBuffer, KIND_MUX, KIND_MUX_OPEN, KIND_MUX_OPENED, MUX_REQUEST_FRAME_BYTES_MAX,
    MUX_VERSION,
};
use crate::transport::TransportError;

const LOG: &str = "wraft::transport";

/// What a caller waiting on the multiplexed stream gets: the response's kind and body, or why
/// the stream broke.
type Answer = Result<(u8, Bytes), TransportError>;

/// Callers waiting for their responses, and whether the stream still takes requests.
struct Pending {
    open: bool,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

/// What the writer, the reader and the callers of one multiplexed stream share.
struct Shared {
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    /// Signalled by [`Shared::fail`]: the writer then resets its half of the stream, so the
    /// node frees it now rather than when the connection goes.
    failed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A caller that panicked holding the lock left the map consistent (every update is a
        // single insert or remove): go on with it.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take no more requests and tell every waiting caller why.
    fn fail(&self, conn: &Connection, why: &str) {
        let waiting = {
            let mut p = self.lock();
            p.open = false;
            std::mem::take(&mut p.waiting)
        };
        if !waiting.is_empty() {
            tracing::debug!(target: LOG, remote = %conn.remote_address(), waiting = waiting.len(), why, "multiplexed stream ended");
        }
        for (_, caller) in waiting {
            let _ = caller.send(Err(broken(conn, why)));
        }
        self.failed.notify_one();
    }
}

/// The error a caller gets when the stream its request was on broke: the connection's, if it
/// closed, or the stream's own.
fn broken(conn: &Connection, why: &str) -> TransportError {
    match conn.close_reason() {
        Some(e) => TransportError::Connection(e),
        None => FrameError::Io(std::io::Error::other(format!(
            "the multiplexed request stream ended: {why}"
        )))
        .into(),
    }
}

/// A connection's multiplexed stream, once the node has accepted it.
pub(super) struct MuxClient {
    shared: Arc<Shared>,
    lane: mpsc::Sender<(u64, Vec<u8>)>,
}

impl std::fmt::Debug for MuxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxClient")
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

/// Where a connection's multiplexed stream will be once it is open: requests go a stream each
/// until then (and for good if the node does not multiplex).
pub(super) type MuxSlot = Arc<OnceLock<MuxClient>>;

/// Removes a caller's entry if it gives up (times out, is dropped) before its answer comes.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
    armed: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.lock().waiting.remove(&self.id);
        }
    }
}

impl MuxClient {
    /// True while the stream takes requests.
    pub(super) fn is_open(&self) -> bool {
        self.shared.lock().open
    }

    /// One exchange on the multiplexed stream; `None` if it cannot take this request (too big
    /// for it, or the stream has ended) and the caller should use a stream of its own.
    pub(super) async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: u8,
        req: &Req,
        max_frame_bytes: u32,
    ) -> Option<Result<(u8, Resp), TransportError>> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let buf = match mux::encode_tagged(id, kind, req, max_frame_bytes) {
            Ok(buf) => buf,
            Err(e) => return Some(Err(e.into())),
        };
        if buf.len() > MUX_REQUEST_FRAME_BYTES_MAX {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.shared.lock();
            if !p.open {
                return None;
            }
            p.waiting.insert(id, tx);
        }
        let mut forget = Forget {
            shared: &self.shared,
            id,
            armed: true,
        };
        if self.lane.send((id, buf)).await.is_err() {
            return None;
        }
        let answer = rx.await;
        // The reader removed the entry when it answered (or failed every waiting caller).
        forget.armed = false;
        let closed = || TransportError::Connection(quinn::ConnectionError::LocallyClosed);
        Some(answer.map_err(|_| closed()).and_then(|answer| {
            let (kind, body) = answer?;
            Ok((kind, frame::decode_payload(&body)?))
        }))
    }
}

/// First wait before asking again for a multiplexed stream the node answered with something
/// else (a refusal while it was saturated), ms; doubled each time up to
/// [`REOPEN_BACKOFF_MAX_MS`].
const REOPEN_BACKOFF_MS: u64 = 500;
const REOPEN_BACKOFF_MAX_MS: u64 = 30_000;

/// How the node answered the opening of a multiplexed stream.
enum Opening {
    Accepted(SendStream, RecvStream),
    /// It does not multiplex: it ended or stopped the stream (every older node does), or did
    /// not answer in time.
    Unsupported(String),
    /// It answered something else: a refusal (busy), worth asking again later.
    Refused(u8),
}

async fn ask_to_open(conn: &Connection, timeout: Duration, max_frame_bytes: u32) -> Opening {
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        frame::write_frame(&mut send, KIND_MUX_OPEN, &[MUX_VERSION], max_frame_bytes).await?;
        let reply = frame::read_frame(&mut recv, max_frame_bytes).await?;
        Ok::<_, TransportError>((send, recv, reply))
    };
    match tokio::time::timeout(timeout, opened).await {
        Ok(Ok((send, recv, Some(reply))))
            if reply.kind == KIND_MUX_OPENED && reply.payload == [MUX_VERSION] =>
        {
            Opening::Accepted(send, recv)
        }
        Ok(Ok((mut send, mut recv, Some(reply)))) => {
            let _ = send.reset(VarInt::from_u32(0));
            let _ = recv.stop(VarInt::from_u32(0));
            Opening::Refused(reply.kind)
        }
        Ok(Ok((_, _, None))) => Opening::Unsupported("the node ended the stream".into()),
        Ok(Err(e)) => Opening::Unsupported(e.to_string()),
        Err(_) => Opening::Unsupported(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Ask the node for a multiplexed stream and, once it accepts, put it in `slot`. A node that
/// does not multiplex ends the stream: then nothing is put, and every request keeps a stream
/// of its own. A node that refuses (it was saturated) is asked again later, for as long as
/// the connection is open and used.
pub(super) async fn open(conn: Connection, slot: MuxSlot, timeout: Duration, max_frame_bytes: u32) {
    let mut backoff_ms = REOPEN_BACKOFF_MS;
    let (send, recv) = loop {
        match ask_to_open(&conn, timeout, max_frame_bytes).await {
            Opening::Accepted(send, recv) => break (send, recv),
            Opening::Unsupported(why) => {
                tracing::debug!(target: LOG, remote = %conn.remote_address(), why,
                    "no multiplexed stream: a stream per request");
                return;
            }
            Opening::Refused(kind) => {
                tracing::debug!(target: LOG, remote = %conn.remote_address(), kind, backoff_ms,
                    "multiplexed stream refused for now: a stream per request meanwhile");
            }
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(REOPEN_BACKOFF_MAX_MS);
        // Only this task still holds the slot: nobody uses the connection any more.
        if Arc::strong_count(&slot) == 1 || conn.close_reason().is_some() {
            return;
        }
    };
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            open: true,
            waiting: HashMap::new(),
        }),
        next_id: AtomicU64::new(0),
        failed: Notify::new(),
    });
    let (lane, lane_rx) = mpsc::channel(LANE_QUEUE_MAX);
    // Dropped when the writer ends (every handle to the connection gone): the reader then
    // stops too, rather than keep the connection open waiting for answers nobody wants.
    let (writer_alive, writer_gone) = oneshot::channel::<()>();
    tokio::spawn(write_requests(
        send,
        lane_rx,
        shared.clone(),
        conn.clone(),
        writer_alive,
    ));
    tokio::spawn(read_responses(
        recv,
        shared.clone(),
        conn,
        writer_gone,
        max_frame_bytes,
    ));
    let _ = slot.set(MuxClient { shared, lane });
}

/// Write the requests queued on `lane`, every request waiting in one write: quinn then packs
/// a burst of them (callers woken by the same incoming packet) into a few packets.
async fn write_requests(
    mut send: SendStream,
    mut lane: mpsc::Receiver<(u64, Vec<u8>)>,
    shared: Arc<Shared>,
    conn: Connection,
    _alive: oneshot::Sender<()>,
) {
    let mut batch = Vec::new();
    let mut out = Vec::new();
    loop {
        let first = tokio::select! {
            item = lane.recv() => match item {
                Some(item) => item,
                None => break,
            },
            () = shared.failed.notified() => {
                let _ = send.reset(VarInt::from_u32(0));
                return;
            }
        };
        gather(first, &mut lane, &mut batch).await;
        out.clear();
        {
            // A caller that gave up (timed out, dropped its future) must not have its request
            // sent after all.
            let p = shared.lock();
            for (id, buf) in batch.drain(..) {
                if p.waiting.contains_key(&id) {
                    out.extend_from_slice(&buf);
                }
            }
        }
        if out.is_empty() {
            continue;
        }
        if let Err(e) = send.write_all(&out).await {
            shared.fail(&conn, &format!("writing requests: {e}"));
            return;
        }
    }
    let _ = send.finish();
}

/// Hand each response to the caller waiting for its id, until the stream ends, breaks or
/// carries something that is not a tagged response; then fail every caller still waiting.
async fn read_responses(
    mut recv: RecvStream,
    shared: Arc<Shared>,
    conn: Connection,
    mut writer_gone: oneshot::Receiver<()>,
    max_frame_bytes: u32,
) {
    let mut buf = FrameBuffer::new();
    let mut answered: Vec<(u64, u8, Bytes)> = Vec::new();
    let why = 'read: loop {
        loop {
            match buf.next_frame(max_frame_bytes) {
                Ok(None) => break,
                Ok(Some((KIND_MUX, payload))) => match mux::decode_tagged(&payload) {
                    Ok((id, kind, body)) => {
                        let body = payload.slice_ref(body);
                        answered.push((id, kind, body));
                    }
                    Err(e) => break 'read format!("bad tagged response: {e}"),
                },
                Ok(Some((kind, _))) => break 'read format!("unexpected frame kind {kind:#04x}"),
                Err(e) => break 'read format!("bad response frame: {e}"),
            }
        }
        if !answered.is_empty() {
            let callers: Vec<_> = {
                let mut p = shared.lock();
                answered
                    .drain(..)
                    .filter_map(|(id, kind, body)| Some((p.waiting.remove(&id)?, kind, body)))
                    .collect()
            };
            for (caller, kind, body) in callers {
                let _ = caller.send(Ok((kind, body)));
            }
        }
        tokio::select! {
            _ = &mut writer_gone => break "the connection is no longer used".to_owned(),
            chunk = recv.read_chunk(usize::MAX, true) => match chunk {
                Ok(Some(chunk)) => buf.extend(&chunk.bytes),
                Ok(None) => break "the node ended it".to_owned(),
                Err(e) => break format!("reading responses: {e}"),
            },
        }
    };
    shared.fail(&conn, &why);
    let _ = recv.stop(VarInt::from_u32(0));
}
