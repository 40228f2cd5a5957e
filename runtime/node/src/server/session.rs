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
//! requests being served or waiting to be written; beyond that the node takes none of its
//! requests (those already received wait their turn), stops reading it, and QUIC flow control
//! holds the client back. A request that does not decode (a newer client's)
//! is answered `Rejected`; a frame that is not a tagged request ends the stream.

use std::collections::VecDeque;
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
    UNREADABLE_REQUEST,
};
use wraft_transport::Identity;
use wraft_transport::frame;
use wraft_transport::mux::{
    self, FrameBuffer, KIND_MUX, KIND_MUX_OPENED, MUX_REQUEST_FRAME_BYTES_MAX, MUX_VERSION,
};
use wraft_transport::quinn::{RecvStream, SendStream};

use super::{Api, Slot, Slots, busy, outcome_kind, panic_message};
use crate::auth::Caller;

/// Most requests one multiplexed stream has being served or answered but not yet written:
/// past it the node stops reading the stream. A stream per request held at most 64 requests
/// per connection (QUIC's stream limit); a multiplexed stream is the connection's busiest
/// path, but one client must still not take the whole node's
/// [`super::CLIENT_REQUESTS_IN_FLIGHT_MAX`] through a few streams.
pub const SESSION_REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Most bytes of responses handed to the stream in one write, unless one response alone is
/// bigger: every write must be taken by the client within
/// `client.response_write_timeout_ms`, so the deadline covers about one response's worth, not
/// every answer that piled up meanwhile.
const WRITE_BATCH_BYTES: usize = 256 << 10;

const LOG: &str = "wraft::client";

/// What a multiplexed stream shares with the node's other client streams.
pub(super) struct Session {
    pub(super) slots: Slots,
    pub(super) shutdown: watch::Receiver<bool>,
}

/// A request being served: its id, its answer, and its place among the node's requests
/// (`None` for an answer decided without one).
type Serving<'a> = Pin<Box<dyn Future<Output = (u64, Response, Option<Slot>)> + Send + 'a>>;

/// An encoded response and the place its request holds until the response is written.
type Answer = (Vec<u8>, Option<Slot>);

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
        // Responses encoded, not yet handed to the stream.
        let mut answers: VecDeque<Answer> = VecDeque::new();
        // The write under way: its bytes, how far it got, the places of its responses' requests
        // (given back once it is written), and when the client must have taken it.
        let mut writing: Vec<u8> = Vec::new();
        let mut written = 0usize;
        let mut writing_slots: Vec<Option<Slot>> = Vec::new();
        let mut write_deadline: Option<Instant> = None;
        // When the first byte of the request frame not yet whole arrived.
        let mut partial_since: Option<Instant> = None;
        let mut reading = true;
        loop {
            if written == writing.len() {
                // The last write is all taken: its requests give their places back, before
                // any request waiting in `buf` is taken (so that none waits while the stream
                // is read: its end, or the request deadline, would find it there).
                writing.clear();
                written = 0;
                writing_slots.clear();
            }
            // Every whole request frame read so far, into service, up to the stream's bound (a
            // read can bring many): the rest wait in `buf` until places come back.
            let mut took_any = false;
            while serving.len() + answers.len() + writing_slots.len()
                < SESSION_REQUESTS_IN_FLIGHT_MAX
            {
                match buf.next_frame(frame_max) {
                    Ok(None) => break,
                    Ok(Some((KIND_MUX, payload))) => match mux::decode_tagged(&payload) {
                        Ok((id, KIND_REQUEST, body)) => {
                            serving.push(self.start(id, body, api, caller));
                            took_any = true;
                        }
                        Ok((_, kind, _)) => {
                            let why = format!("a tagged frame of kind {kind:#04x}, not a request");
                            return end(send, recv, identity, &why);
                        }
                        Err(e) => return end(send, recv, identity, &e.to_string()),
                    },
                    Ok(Some((kind, _))) => {
                        let why = format!("a frame of kind {kind:#04x}, not a tagged request");
                        return end(send, recv, identity, &why);
                    }
                    Err(e) => {
                        let why = format!("bad request frame: {e}");
                        return end(send, recv, identity, &why);
                    }
                }
            }
            if writing.is_empty() {
                // The next responses go out.
                while let Some((bytes, _)) = answers.front()
                    && (writing.is_empty() || writing.len() + bytes.len() <= WRITE_BATCH_BYTES)
                {
                    let (bytes, slot) = answers.pop_front().expect("a front answer");
                    writing.extend_from_slice(&bytes);
                    writing_slots.push(slot);
                }
                write_deadline = (!writing.is_empty()).then(|| Instant::now() + write_within);
                if writing.is_empty() && !reading && serving.is_empty() {
                    // The client has sent its last request and had every answer.
                    let _ = send.finish();
                    return;
                }
            }
            let held = serving.len() + answers.len() + writing_slots.len();
            let can_read = reading && held < SESSION_REQUESTS_IN_FLIGHT_MAX;
            // Whole requests wait in `buf` only while the stream is at its bound.
            debug_assert!(!(can_read && buf.holds_whole_frame(frame_max)));
            // The bytes left over begin the next request, whose clock starts now; and it does
            // not run while the node itself is not reading.
            partial_since = match (can_read && buf.holds_partial(), partial_since) {
                (false, _) => None,
                (true, since) if since.is_none() || took_any => Some(Instant::now()),
                (true, since) => since,
            };
            let partial_deadline = partial_since.map(|since| since + read_within);
            tokio::select! {
                Some((id, response, slot)) = serving.next(), if !serving.is_empty() => {
                    answers.push_back((encode(id, &response, identity), slot));
                    // Every answer ready now goes out in the same write.
                    while let Some(Some((id, response, slot))) = serving.next().now_or_never() {
                        answers.push_back((encode(id, &response, identity), slot));
                    }
                }
                took = send.write(&writing[written..]), if written < writing.len() => match took {
                    Ok(n) => written += n,
                    Err(e) => {
                        tracing::debug!(target: LOG, %identity, error = %e, "responses not delivered");
                        return;
                    }
                },
                _ = sleep_until(write_deadline), if write_deadline.is_some() => {
                    tracing::info!(target: LOG, %identity, deadline_ms = limits.response_write_timeout_ms,
                        "resetting a multiplexed client stream: responses not taken within client.response_write_timeout_ms");
                    let _ = send.reset(CODE_RESPONSE_WRITE_TIMEOUT.into());
                    let _ = recv.stop(CODE_RESPONSE_WRITE_TIMEOUT.into());
                    return;
                }
                chunk = recv.read_chunk(usize::MAX, true), if can_read => match chunk {
                    Ok(Some(chunk)) => buf.extend(&chunk.bytes),
                    Ok(None) => {
                        if buf.holds_partial() {
                            let why = "the stream ended inside a request frame";
                            return end(send, recv, identity, why);
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
                    let why = "request frame not whole within client.request_timeout_ms";
                    return end(send, recv, identity, why);
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
                    "{UNREADABLE_REQUEST} ({e}); is the client newer than the node?"
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

/// `response` to request `id` as a tagged frame. One that does not encode (it cannot: frames
/// are capped at 4 GiB) is answered `Internal` instead, so the caller is not left waiting.
fn encode(id: u64, response: &Response, identity: &Identity) -> Vec<u8> {
    mux::encode_tagged(id, KIND_RESPONSE, response, u32::MAX).unwrap_or_else(|e| {
        tracing::error!(target: LOG, %identity, error = %e, "a response did not encode");
        let failed: Response = Err(RequestError::Internal(format!(
            "the response did not encode: {e}"
        )));
        mux::encode_tagged(id, KIND_RESPONSE, &failed, u32::MAX).unwrap_or_default()
    })
}

/// End a multiplexed stream the client broke the protocol on: its requests in flight are
/// dropped, and both directions are reset so the client sees at once that they will not be
/// answered.
fn end(mut send: SendStream, mut recv: RecvStream, identity: &Identity, why: &str) {
    tracing::info!(target: LOG, %identity, why, "closing a multiplexed client stream");
    let _ = send.reset(wraft_transport::CODE_BAD_FRAME.into());
    let _ = recv.stop(wraft_transport::CODE_BAD_FRAME.into());
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
