//! Request bodies and parameters: reading a bounded body in bounded time, JSON or raw bytes in
//! and the matching answer out, query parameters, and the caller's session headers.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use wraft_proto::RequestTag;

use super::HttpState;
use super::reply::{ApiError, HttpResponse, full, json_response};

/// Header carrying the log index of an answer given as raw bytes.
pub(crate) const INDEX_HEADER: &str = "wraft-index";

/// Headers of an exactly-once command: a session from `POST /v1/sessions` and its number.
pub(crate) const SESSION_HEADER: &str = "wraft-session";

pub(crate) const SEQ_HEADER: &str = "wraft-seq";

/// The value of query parameter `name` (values here are plain words and numbers).
pub(crate) fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body is not the JSON this route takes: {e}"),
        )
    })
}

pub(crate) fn caller_tag(headers: &HeaderMap) -> Result<Option<RequestTag>, ApiError> {
    let num = |name: &str| -> Result<Option<u64>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("header {name} must be a decimal number"),
                        )
                    })
            })
            .transpose()
    };
    match (num(SESSION_HEADER)?, num(SEQ_HEADER)?) {
        (Some(client_id), Some(seq)) if seq >= 1 => Ok(Some(RequestTag { client_id, seq })),
        (None, None) => Ok(None),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Wraft-Session and Wraft-Seq go together (a session from POST /v1/sessions, and a \
             number from 1, one higher for each new command; a retry repeats it)",
        )),
    }
}

/// Read a whole body of at most `max` bytes within `http.body_read_timeout_ms`.
pub(crate) async fn read_body(
    state: &HttpState,
    body: Incoming,
    max: u64,
) -> Result<Bytes, ApiError> {
    let limited = Limited::new(body, max.min(usize::MAX as u64) as usize);
    let timeout = Duration::from_millis(state.http.body_read_timeout_ms);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms (http.body_read_timeout_ms)",
                timeout.as_millis()
            ),
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body exceeds this route's limit of {max} bytes"),
            ))
        }
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("reading the body failed: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// How a command and its answer travel: JSON (the default) or raw bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyMode {
    Json,
    Bytes,
}

impl BodyMode {
    pub(crate) fn of(headers: &HeaderMap) -> Result<BodyMode, ApiError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        let essence = ct.split(';').next().unwrap_or("").trim();
        match essence {
            "application/json" => Ok(BodyMode::Json),
            "application/octet-stream" => Ok(BodyMode::Bytes),
            other => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {other:?}: send application/json (for machines whose commands \
                     are JSON) or application/octet-stream"
                ),
            )),
        }
    }

    pub(crate) fn check(self, body: &[u8]) -> Result<(), ApiError> {
        if self == BodyMode::Json
            && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "the body is not JSON ({e}); send raw commands as application/octet-stream"
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn render(self, index: u64, output: Vec<u8>) -> HttpResponse {
        match self {
            BodyMode::Json => {
                let mut body = json!({ "index": index });
                body["output"] = output_json(&output);
                if body["output"].is_null() && !output.is_empty() {
                    body["output_base64"] =
                        Value::String(base64::engine::general_purpose::STANDARD.encode(&output));
                }
                json_response(StatusCode::OK, &body)
            }
            BodyMode::Bytes => {
                let mut r = hyper::Response::new(full(output));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r.headers_mut()
                    .insert(INDEX_HEADER, HeaderValue::from(index));
                r
            }
        }
    }
}

/// A machine's output as JSON: parsed if it is JSON, else null (the caller adds base64).
pub(crate) fn output_json(output: &[u8]) -> Value {
    serde_json::from_slice(output).unwrap_or(Value::Null)
}
