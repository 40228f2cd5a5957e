//! A multiplexed client stream ([`wraft_transport::mux`]): many requests, each tagged with an
//! id, answered on the same stream in the order they finish.
//!
//! The bounds of a stream per request hold per request here too:
//! - every request takes a place among the node's [`super::CLIENT_REQUESTS_IN_FLIGHT_MAX`] (over it:
//!   `Busy`, at once), and gets its outcome within `client.request_timeout_ms` ([`Api::serve`]);
//! - a request's bytes, once begun, arrive whole within `client.request_timeout_ms`;
//! - the client takes the responses written within `client.response_write_timeout_ms`.
//!
//! Past either of the last two the stream is reset, with [`CODE_RESPONSE_WRITE_TIMEOUT`] for
//! responses not taken. One stream also holds at most [`SESSION_REQUESTS_IN_FLIGHT_MAX`]
//! requests being served or waiting to be written; beyond that the node stops reading it and
//! QUIC flow control holds the client back. A request that does not decode (a newer client's)
//! is answered `Rejected`; a frame that is not a tagged request ends the stream.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use wraft_proto::{
    CODE_RESPONSE_WRITE_TIMEOUT, KIND_REQUEST, KIND_RESPONSE, Request, RequestError, Response,
};
use wraft_transport::Identity;
use wraft_transport::frame;
use wraft_transport::mux::{
    self, FrameBuffer, KIND_MUX, KIND_MUX_OPENED, MUX_REQUEST_FRAME_BYTES_MAX, MUX_VERSION,
};
use wraft_transport::quinn::{RecvStream, SendStream};

use super::{Api, Slot, Slots, busy, outcome_kind, panic_message};
use crate::auth::Caller;

/// Most requests one multiplexed stream has being served or answered but not yet written.
pub const SESSION_REQUESTS_IN_FLIGHT_MAX: usize = 4096;

const LOG: &str = "wraft::client";

/// What a multiplexed stream shares with the node's other client streams.
pub(super) struct Session {
    pub(super) slots: Slots,
    pub(super) shutdown: watch::Receiver<bool>,
}

/// A request being served: its id, its answer, and its place among the node's requests
/// (`None` for an answer decided without one).
type Serving<'a> = Pin<Box<dyn Future<Output = (u64, Response, Option<Slot>)> + Send + 'a>>;

/// Responses being written: the stream back, the buffer for reuse, how the write went.
type Writing = Pin<
    Box<
        dyn Future<
                Output = (
                    SendStream,
                    Vec<u8>,
                    Result<
                        Result<(), wraft_transport::quinn::WriteError>,
                        tokio::time::error::Elapsed,
                    >,
                ),
            > + Send,
    >,
>;

impl Session {
    /// Accept the multiplexed stream `send`/`recv` and serve its requests until the client ends
    /// it (then answer what it asked first), it breaks a bound, or the node stops.
    pub(super) async fn serve(
        mut self,
        mut send: SendStream,
        mut recv: RecvStream,
        api: &Api,
        caller: &Caller,
        identity: &Identity,
    ) {
        let limits = &*api.limits;
        let write_within = Duration::from_millis(limits.response_write_timeout_ms);
        let read_within = Duration::from_millis(limits.request_timeout_ms);
        let opened = frame::write_frame(&mut send, KIND_MUX_OPENED, &[MUX_VERSION], u32::MAX);
        if !matches!(tokio::time::timeout(write_within, opened).await, Ok(Ok(()))) {
            return;
        }
        tracing::debug!(target: LOG, %identity, "serving a multiplexed stream");
        let frame_max = (MUX_REQUEST_FRAME_BYTES_MAX - frame::FRAME_HEADER_BYTES) as u32;
        let mut buf = FrameBuffer::new();
        let mut serving: FuturesUnordered<Serving<'_>> = FuturesUnordered::new();
        // Responses encoded and not yet handed to the stream, and how many.
        let mut out: Vec<u8> = Vec::new();
        let mut out_count = 0usize;
        // The write under way, how many responses it carries, and when it must be done.
        let mut writing: Option<Writing> = None;
        let mut writing_count = 0usize;
        let mut send = Some(send);
        // When the first byte of the request frame not yet whole arrived.
        let mut partial_since: Option<Instant> = None;
        let mut reading = true;
        loop {
            // Every whole request frame read so far, into service.
            let mut took_any = false;
            loop {
                match buf.next_frame(frame_max) {
                    Ok(None) => break,
                    Ok(Some((KIND_MUX, payload))) => match mux::decode_tagged(&payload) {
                        Ok((id, KIND_REQUEST, body)) => {
                            serving.push(self.start(id, body, api, caller));
                            took_any = true;
                        }
                        Ok((_, kind, _)) => {
                            return end(
                                send,
                                recv,
                                identity,
                                &format!("a tagged frame of kind {kind:#04x}, not a request"),
                            );
                        }
                        Err(e) => return end(send, recv, identity, &e.to_string()),
                    },
                    Ok(Some((kind, _))) => {
                        return end(
                            send,
                            recv,
                            identity,
                            &format!("a frame of kind {kind:#04x}, not a tagged request"),
                        );
                    }
                    Err(e) => return end(send, recv, identity, &format!("bad request frame: {e}")),
                }
            }
            // The bytes left over begin the next request, whose clock starts now.
            partial_since = match (buf.holds_partial(), partial_since) {
                (false, _) => None,
                (true, since) if since.is_none() || took_any => Some(Instant::now()),
                (true, since) => since,
            };
            if let (None, Some(mut stream)) = (&writing, send.take()) {
                if !out.is_empty() {
                    let bytes = std::mem::take(&mut out);
                    writing_count = std::mem::take(&mut out_count);
                    writing = Some(Box::pin(async move {
                        let written =
                            tokio::time::timeout(write_within, stream.write_all(&bytes)).await;
                        (stream, bytes, written)
                    }));
                } else if !reading && serving.is_empty() {
                    // The client has sent its last request and had every answer.
                    let _ = stream.finish();
                    return;
                } else {
                    send = Some(stream);
                }
            }
            let held = serving.len() + out_count + writing_count;
            let can_read = reading && held < SESSION_REQUESTS_IN_FLIGHT_MAX;
            let partial_deadline = partial_since.map(|since| since + read_within);
            tokio::select! {
                Some((id, response, slot)) = serving.next(), if !serving.is_empty() => {
                    encode(&mut out, id, &response, identity);
                    out_count += 1;
                    drop(slot);
                    // Every answer ready now goes out in the same write.
                    while let Some(Some((id, response, slot))) = serving.next().now_or_never() {
                        encode(&mut out, id, &response, identity);
                        out_count += 1;
                        drop(slot);
                    }
                }
                (stream, mut bytes, written) = async {
                    match writing.as_mut() {
                        Some(w) => w.await,
                        None => std::future::pending().await,
                    }
                } => {
                    writing = None;
                    writing_count = 0;
                    match written {
                        Ok(Ok(())) => {
                            bytes.clear();
                            if out.is_empty() {
                                out = bytes;
                            }
                            send = Some(stream);
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(target: LOG, %identity, error = %e, "responses not delivered");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(target: LOG, %identity, deadline_ms = limits.response_write_timeout_ms,
                                "resetting a multiplexed client stream: responses not taken within client.response_write_timeout_ms");
                            let mut stream = stream;
                            let _ = stream.reset(CODE_RESPONSE_WRITE_TIMEOUT.into());
                            let _ = recv.stop(CODE_RESPONSE_WRITE_TIMEOUT.into());
                            return;
                        }
                    }
                }
                chunk = recv.read_chunk(usize::MAX, true), if can_read => match chunk {
                    Ok(Some(chunk)) => buf.extend(&chunk.bytes),
                    Ok(None) => {
                        if buf.holds_partial() {
                            return end(send, recv, identity, "the stream ended inside a request frame");
                        }
                        reading = false;
                    }
                    Err(e) => {
                        tracing::debug!(target: LOG, %identity, error = %e, "multiplexed client stream broke");
                        return;
                    }
                },
                _ = sleep_until(partial_deadline), if partial_deadline.is_some() => {
                    tracing::info!(target: LOG, %identity, deadline_ms = limits.request_timeout_ms,
                        "closing a multiplexed client stream: no whole request within the deadline");
                    return end(send, recv, identity, "request frame not whole within client.request_timeout_ms");
                }
                _ = self.shutdown.changed(), if reading => {
                    // A stopping node answers what it was asked and takes nothing new.
                    reading = false;
                }
            }
        }
    }

    /// Start serving the request `body` tagged `id`: with a place among the node's requests,
    /// or answered `Busy` at once if there is none.
    fn start<'a>(&self, id: u64, body: &[u8], api: &'a Api, caller: &'a Caller) -> Serving<'a> {
        let Some(slot) = self.slots.take() else {
            let response = busy();
            api.metrics
                .answered("unread", outcome_kind(&response), Duration::ZERO);
            return Box::pin(std::future::ready((id, response, None)));
        };
        let request = match frame::decode_payload::<Request>(body) {
            Ok(request) => request,
            Err(e) => {
                let response = Err(RequestError::Rejected(format!(
                    "this node cannot read the request ({e}); is the client newer than the node?"
                )));
                return Box::pin(std::future::ready((id, response, Some(slot))));
            }
        };
        Box::pin(async move {
            let response = match AssertUnwindSafe(api.serve(caller, request))
                .catch_unwind()
                .await
            {
                Ok(response) => response,
                Err(panic) => {
                    let what = panic_message(&*panic);
                    tracing::error!(target: LOG, panic = %what, "serving a client request panicked; it is answered Internal");
                    Err(RequestError::Internal(format!(
                        "serving the request panicked: {what}"
                    )))
                }
            };
            (id, response, Some(slot))
        })
    }
}

/// Append `response` for request `id` to `out`. A response too big for a frame (it cannot be,
/// frames are capped at 4 GiB) is answered `Internal` instead, so the caller is not left
/// waiting.
fn encode(out: &mut Vec<u8>, id: u64, response: &Response, identity: &Identity) {
    if let Err(e) = mux::encode_tagged_into(out, id, KIND_RESPONSE, response, u32::MAX) {
        tracing::error!(target: LOG, %identity, error = %e, "a response did not encode");
        let failed: Response = Err(RequestError::Internal(format!(
            "the response did not encode: {e}"
        )));
        let _ = mux::encode_tagged_into(out, id, KIND_RESPONSE, &failed, u32::MAX);
    }
}

/// End a multiplexed stream the client broke the protocol on: its requests in flight are
/// dropped, and both directions are reset so the client sees at once that they will not be
/// answered.
fn end(send: Option<SendStream>, mut recv: RecvStream, identity: &Identity, why: &str) {
    tracing::info!(target: LOG, %identity, why, "closing a multiplexed client stream");
    if let Some(mut send) = send {
        let _ = send.reset(wraft_transport::CODE_BAD_FRAME.into());
    }
    let _ = recv.stop(wraft_transport::CODE_BAD_FRAME.into());
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
