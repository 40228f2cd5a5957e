//! `GET /v1/machines/{name}/watch`: a machine's applied results as they happen on this node,
//! from an index on, as Server-Sent Events (the default) or newline-delimited JSON
//! (`?format=ndjson`).
//!
//! Each event carries its log index (the SSE `id`), so a client that disconnects resumes with
//! `?from=<last index + 1>` or the `Last-Event-ID` header (which browsers' `EventSource` sends
//! by itself) and misses nothing and sees nothing twice. If the node's history no longer
//! reaches back that far (`node.watch_history_entries_max` / `_bytes_max`, or a restart, or a
//! snapshot installed from the leader), the answer is `410 compacted` before the stream starts,
//! or a final `compacted` event during it: read the state, then watch from the
//! `applied_index + 1` it names. Without `from`, the stream starts at the next applied entry.
//! A new watch (no `from`, no `Last-Event-ID`) of a name no deployed machine has is answered
//! `404 no_such_machine` (the route asks the leader, so a machine deployed a moment ago is
//! watched before this node applies it); a resumed one is not checked, so a client waiting for
//! a deploy, or for a `removed` event it missed, gets its stream.
//! A comment line with the position goes out every [`KEEP_ALIVE_SECS`] seconds so proxies and
//! clients can tell a quiet machine from a dead connection.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::StatusCode;
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::HttpState;
use super::body::param;
use super::reply::ApiError;
use crate::watch::{Subscription, WatchError, WatchEvent, WatchOutcome};

/// Seconds between keep-alive comments on a quiet stream.
pub const KEEP_ALIVE_SECS: u64 = 15;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

pub(super) fn watch(
    state: &HttpState,
    machine: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<hyper::Response<super::reply::Body>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let format = match param(query, "format").unwrap_or("sse") {
        "sse" => Format::Sse,
        "ndjson" => Format::Ndjson,
        other => return Err(bad(format!("format {other:?}: expected sse or ndjson"))),
    };
    let from = match (param(query, "from"), headers.get("last-event-id")) {
        (Some(f), _) => f
            .parse::<u64>()
            .map_err(|_| bad(format!("from {f:?} is not an index")))?,
        (None, Some(last)) => last
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|i| i + 1)
            .ok_or_else(|| bad("Last-Event-ID is not an index".into()))?,
        (None, None) => 0,
    };
    let sub = state
        .watch
        .subscribe(machine, from)
        .map_err(|e| watch_error(&e))?;
    let node = state.node;
    let body = stream::unfold(Some(sub), move |sub| async move {
        let mut sub: Subscription = sub?;
        let keep_alive = Duration::from_secs(KEEP_ALIVE_SECS);
        let chunk = match tokio::time::timeout(keep_alive, sub.next()).await {
            Err(_) => keep_alive_chunk(format, sub.position()),
            Ok(Some(Ok(event))) => event_chunk(format, &event),
            Ok(Some(Err(e))) => {
                let chunk = error_chunk(format, node, &e);
                return Some((Ok::<_, Infallible>(Frame::data(chunk)), None));
            }
            Ok(None) => return None,
        };
        Some((Ok(Frame::data(chunk)), Some(sub)))
    });
    let mut r = hyper::Response::new(StreamBody::new(body).boxed());
    let ct = match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson => "application/x-ndjson",
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

fn watch_error(e: &WatchError) -> ApiError {
    match e {
        WatchError::Compacted {
            from,
            oldest_index,
            applied_index,
        } => ApiError {
            status: StatusCode::GONE,
            code: "compacted",
            message: e.to_string(),
            extra: Some(json!({
                "from": from,
                "oldest_index": oldest_index,
                "applied_index": applied_index,
            })),
        },
        WatchError::TooManySubscriptions { .. } | WatchError::Stopped => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
        }
    }
}

/// Bytes as JSON if they are JSON, else base64 under `<name>_base64`.
fn put_bytes(obj: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => {
            obj.insert(name.to_owned(), v);
        }
        Err(_) if bytes.is_empty() => {}
        Err(_) => {
            obj.insert(
                format!("{name}_base64"),
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
    }
}

/// The JSON of one event and its kind (`applied`, `app_error`, `machine_fault`, `deployed`,
/// `removed`).
pub(crate) fn event_json(event: &WatchEvent) -> (&'static str, Value) {
    let mut obj = serde_json::Map::new();
    obj.insert("index".into(), json!(event.index));
    obj.insert("machine".into(), json!(&*event.machine));
    put_bytes(&mut obj, "command", &event.command);
    let kind = match &event.outcome {
        WatchOutcome::Output(out) => {
            put_bytes(&mut obj, "output", out);
            "applied"
        }
        WatchOutcome::AppError { code, message } => {
            obj.insert("app_code".into(), json!(code));
            obj.insert("message".into(), json!(message));
            "app_error"
        }
        WatchOutcome::MachineFault(m) => {
            obj.insert("message".into(), json!(m));
            "machine_fault"
        }
        WatchOutcome::Deployed { summary } => {
            obj.insert("message".into(), json!(summary));
            "deployed"
        }
        WatchOutcome::Removed => "removed",
    };
    obj.insert("event".into(), json!(kind));
    (kind, Value::Object(obj))
}

fn event_chunk(format: Format, event: &WatchEvent) -> Bytes {
    let (kind, value) = event_json(event);
    match format {
        Format::Sse => Bytes::from(format!(
            "id: {}\nevent: {kind}\ndata: {value}\n\n",
            event.index
        )),
        Format::Ndjson => Bytes::from(format!("{value}\n")),
    }
}

fn keep_alive_chunk(format: Format, position: u64) -> Bytes {
    match format {
        Format::Sse => Bytes::from(format!(": position {position}\n\n")),
        Format::Ndjson => Bytes::from(format!(
            "{}\n",
            json!({ "event": "keep_alive", "position": position })
        )),
    }
}

fn error_chunk(format: Format, node: u64, e: &WatchError) -> Bytes {
    let api = watch_error(e);
    let mut value =
        json!({ "event": api.code, "code": api.code, "message": api.message, "node": node });
    if let (Some(Value::Object(extra)), Some(obj)) = (api.extra, value.as_object_mut()) {
        obj.extend(extra);
    }
    match format {
        Format::Sse => Bytes::from(format!("event: {}\ndata: {value}\n\n", api.code)),
        Format::Ndjson => Bytes::from(format!("{value}\n")),
    }
}
