//! Request bodies and parameters: reading a bounded body in bounded time, JSON or raw bytes in
//! and the matching answer out, query parameters, and the caller's session headers.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use wraft_proto::RequestTag;

use super::HttpState;
use super::reply::{ApiError, HttpResponse, full};

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
                // The output goes in verbatim when it is JSON (no parse into a tree and back).
                let mut body = Vec::with_capacity(output.len() + 48);
                body.extend_from_slice(format!("{{\"index\":{index},").as_bytes());
                if output.is_empty() {
                    body.extend_from_slice(b"\"output\":null");
                } else if serde_json::from_slice::<serde::de::IgnoredAny>(&output).is_ok() {
                    body.extend_from_slice(b"\"output\":");
                    body.extend_from_slice(&output);
                } else {
                    body.extend_from_slice(b"\"output\":null,\"output_base64\":\"");
                    body.extend_from_slice(
                        base64::engine::general_purpose::STANDARD
                            .encode(&output)
                            .as_bytes(),
                    );
                    body.push(b'"');
                }
                body.extend_from_slice(b"}\n");
                let mut r = hyper::Response::new(full(body));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn rendered(output: &[u8]) -> serde_json::Value {
        let r = BodyMode::Json.render(7, output.to_vec());
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).expect("the answer is JSON")
    }

    #[tokio::test]
    async fn a_json_output_goes_in_as_json_and_anything_else_as_base64() {
        let v = rendered(br#" {"value": "1", "n": [1, 2]}"#).await;
        assert_eq!(
            v,
            serde_json::json!({"index": 7, "output": {"value": "1", "n": [1, 2]}})
        );
        let v = rendered(b"\xff\x00not json").await;
        assert_eq!(v["output"], serde_json::Value::Null);
        assert_eq!(v["output_base64"], "/wBub3QganNvbg==");
        let v = rendered(b"").await;
        assert_eq!(v, serde_json::json!({"index": 7, "output": null}));
        // Valid JSON followed by more is not JSON: it must not break the answer.
        let v = rendered(br#"{"a":1} {"b":2}"#).await;
        assert!(v["output_base64"].is_string(), "{v}");
    }
}
