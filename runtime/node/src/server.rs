//! Serving client connections: one request per QUIC stream, answered on the
//! same stream. Three deadlines bound what a stream can hold: the request
//! must arrive whole and get its outcome within `client.request_timeout_ms`
//! each (a deploy's outcome, which includes compiling the module, within
//! `client.deploy_timeout_ms`), and the response must be taken by the client within
//! `client.response_write_timeout_ms`, or the stream is reset with
//! [`CODE_RESPONSE_WRITE_TIMEOUT`] and its bytes and in-flight slot freed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use wraft_transport::ClientStream;
use wraft_transport::frame;

use crate::driver::ClientCall;
use wraft_config::ClientSection;
use wraft_host::HostEngine;
use wraft_proto::{
    CODE_RESPONSE_WRITE_TIMEOUT, KIND_REQUEST, KIND_RESPONSE, Request, RequestError, Response,
};

/// Most client requests being served at once by one node.
pub const CLIENT_REQUESTS_IN_FLIGHT_MAX: usize = 16_384;

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
    driver: mpsc::Sender<ClientCall>,
    host: Arc<HostEngine>,
    limits: ClientSection,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each future says whether it was a request (counted against the bound) or a refusal.
    let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = bool> + Send>>> =
        FuturesUnordered::new();
    let mut requests = 0usize;
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => {
                // Write the answers already decided (a stopping node answers its calls in
                // flight before it goes), for a bounded time.
                let drain = async { while in_flight.next().await.is_some() {} };
                let _ = tokio::time::timeout(Duration::from_millis(CLIENT_DRAIN_MS_MAX), drain).await;
                return;
            }
            Some(was_request) = in_flight.next(), if !in_flight.is_empty() => {
                requests -= usize::from(was_request);
                continue;
            }
            s = streams.recv() => match s { Some(s) => s, None => return },
        };
        if requests >= CLIENT_REQUESTS_IN_FLIGHT_MAX {
            // Over the bound: refuse this one cheaply rather than queue it.
            let ClientStream { identity, send, .. } = stream;
            let resp: Response = Err(RequestError::Busy(format!(
                "{CLIENT_REQUESTS_IN_FLIGHT_MAX} requests in flight on this node"
            )));
            let deadline_ms = limits.response_write_timeout_ms;
            in_flight.push(contained(false, async move {
                write_response(send, &resp, deadline_ms, &identity).await;
            }));
            continue;
        }
        let (driver, host, limits) = (driver.clone(), host.clone(), limits.clone());
        requests += 1;
        in_flight.push(contained(true, async move {
            serve_one(stream, driver, host, &limits).await;
        }));
    }
}

/// Box `serve` for the set of in-flight streams, so that a panic while serving one stream loses
/// that stream only (as when each had its own task), not the task serving all of them.
fn contained(
    was_request: bool,
    serve: impl Future<Output = ()> + Send + 'static,
) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    Box::pin(async move {
        if let Err(panic) = AssertUnwindSafe(serve).catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(target: "wraft::client", panic = %what, "serving a client stream panicked; that stream is dropped");
        }
        was_request
    })
}

async fn serve_one(
    stream: ClientStream,
    driver: mpsc::Sender<ClientCall>,
    host: Arc<HostEngine>,
    limits: &ClientSection,
) {
    let ClientStream {
        identity,
        send,
        mut recv,
        ..
    } = stream;
    let frame_max = (limits
        .command_bytes_max
        .max(host.config().module_bytes_max as u64)
        + 4096)
        .min(u32::MAX as u64) as u32;
    let deadline = Duration::from_millis(limits.request_timeout_ms);
    let request = match tokio::time::timeout(
        deadline,
        frame::read_msg::<_, Request>(&mut recv, frame_max),
    )
    .await
    {
        Ok(Ok(Some((KIND_REQUEST, req)))) => {
            wraft_transport::client::take_stream_end(&mut recv);
            req
        }
        Ok(Ok(Some((kind, _)))) => {
            tracing::debug!(target: "wraft::client", %identity, kind, "unexpected frame kind");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::info!(target: "wraft::client", %identity, error = %e, "closing a client stream: bad request frame");
            let _ = recv.stop(wraft_transport::CODE_BAD_FRAME.into());
            return;
        }
        Err(_) => {
            tracing::info!(target: "wraft::client", %identity, "closing a client stream: no request within the deadline");
            return;
        }
    };
    let outcome_ms = match request {
        Request::Deploy { .. } | Request::DeployWith { .. } => limits.deploy_timeout_ms,
        _ => limits.request_timeout_ms,
    };
    let response = tokio::time::timeout(
        Duration::from_millis(outcome_ms),
        handle(request, &driver, &host, limits),
    )
    .await
    .unwrap_or_else(|_| {
        Err(RequestError::Timeout(format!(
            "no outcome within {outcome_ms} ms; retrying with the same tag is safe"
        )))
    });
    write_response(send, &response, limits.response_write_timeout_ms, &identity).await;
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
    limits: &ClientSection,
) -> Response {
    // Bounds and validation happen here, off the driver.
    let mut module_sha256 = None;
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
            // Validate and precompile before anything reaches the log: a bad
            // module is refused to the client and never poisons the log.
            let host = host.clone();
            let bytes = module.clone();
            let checked = tokio::task::spawn_blocking(move || {
                host.load_with(&bytes, wasi).map(|m| m.sha256())
            })
            .await
            .map_err(|e| RequestError::Internal(e.to_string()))?;
            match checked {
                Ok(sha) => module_sha256 = Some(sha),
                Err(e) => return Err(RequestError::Rejected(format!("module refused: {e}"))),
            }
        }
        _ => {}
    }
    ClientCall::call(driver, request, module_sha256).await
}
