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
use tokio::sync::{mpsc, oneshot};

use super::LANE_QUEUE_MAX;
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

/// Ask the node for a multiplexed stream and, if it accepts within `timeout`, put it in
/// `slot`. A node that does not multiplex ends the stream or answers something else; then
/// nothing is put, and every request keeps a stream of its own.
pub(super) async fn open(conn: Connection, slot: MuxSlot, timeout: Duration, max_frame_bytes: u32) {
    let opened = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        frame::write_frame(&mut send, KIND_MUX_OPEN, &[MUX_VERSION], max_frame_bytes).await?;
        let reply = frame::read_frame(&mut recv, 64).await?;
        Ok::<_, TransportError>((send, recv, reply))
    };
    let (send, recv) = match tokio::time::timeout(timeout, opened).await {
        Ok(Ok((send, recv, Some(reply))))
            if reply.kind == KIND_MUX_OPENED && reply.payload == [MUX_VERSION] =>
        {
            (send, recv)
        }
        Ok(Ok((mut send, mut recv, reply))) => {
            tracing::debug!(target: LOG, remote = %conn.remote_address(), reply = ?reply.map(|f| f.kind),
                "node does not multiplex requests: a stream per request");
            let _ = send.reset(VarInt::from_u32(0));
            let _ = recv.stop(VarInt::from_u32(0));
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(target: LOG, remote = %conn.remote_address(), error = %e,
                "no multiplexed stream: a stream per request");
            return;
        }
        Err(_) => {
            tracing::debug!(target: LOG, remote = %conn.remote_address(), timeout_ms = timeout.as_millis() as u64,
                "no answer to the multiplexed stream's opening: a stream per request");
            return;
        }
    };
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            open: true,
            waiting: HashMap::new(),
        }),
        next_id: AtomicU64::new(0),
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
    while let Some(first) = lane.recv().await {
        // The caller that woke us usually has siblings that are runnable too: let them queue
        // their requests before writing.
        tokio::task::yield_now().await;
        batch.push(first);
        while batch.len() < LANE_QUEUE_MAX {
            match lane.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
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
