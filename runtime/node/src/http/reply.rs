//! Answers: the JSON error every refusal becomes (a stable `code`, a matching status, a message
//! a person can act on, the node that answered) and the helpers that build responses.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use serde_json::{Value, json};
use wraft_proto::{Reply, RequestError, Response};

/// A response body: whole, or a stream (watch).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) type HttpResponse = hyper::Response<Body>;

/// The error codes answered by the HTTP layer itself (the node's refusals are
/// [`error_status`]); the document's list is checked against it.
#[cfg(test)]
pub(crate) const HTTP_ERROR_CODES: &[&str] = &[
    "unauthenticated",
    "not_found",
    "method_not_allowed",
    "body_timeout",
    "payload_too_large",
    "unsupported_media_type",
    "bad_request",
    "compacted",
];

/// An error answer: a status, a stable code, a message a person can act on.
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) extra: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub(crate) fn render(self, node: u64) -> HttpResponse {
        let mut error = json!({ "code": self.code, "message": self.message, "node": node });
        if let (Some(Value::Object(extra)), Some(obj)) = (self.extra, error.as_object_mut()) {
            obj.extend(extra);
        }
        let mut r = json_response(self.status, &json!({ "error": error }));
        match self.status {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wraft\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

/// The status and code of a node's refusal. `command`: the request would change state, so a
/// timeout means its outcome is unknown.
pub(crate) fn error_status(e: &RequestError, command: bool) -> (StatusCode, &'static str) {
    match e {
        RequestError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
        RequestError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        RequestError::Timeout(_) if command => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
        RequestError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        RequestError::Rejected(_) => (StatusCode::BAD_REQUEST, "rejected"),
        RequestError::NoSuchMachine(_) => (StatusCode::NOT_FOUND, "no_such_machine"),
        RequestError::App { .. } => (StatusCode::CONFLICT, "app_error"),
        RequestError::MachineFault(_) => (StatusCode::UNPROCESSABLE_ENTITY, "machine_fault"),
        RequestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        RequestError::SessionUnknown { .. } => (StatusCode::CONFLICT, "session_unknown"),
        RequestError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
    }
}

impl ApiError {
    pub(crate) fn from_request_error(e: RequestError, command: bool) -> ApiError {
        let (status, code) = error_status(&e, command);
        let extra = match &e {
            RequestError::App { code, .. } => Some(json!({ "app_code": code })),
            RequestError::NotLeader {
                leader: Some((id, _)),
            } => Some(json!({ "leader": id })),
            RequestError::SessionUnknown { client_id } => Some(json!({ "session": client_id })),
            _ => None,
        };
        let message = match &e {
            RequestError::NotLeader { leader: None } => {
                "no leader is known (an election is in progress, or a majority of the nodes is \
                 down); retry shortly"
                    .to_owned()
            }
            RequestError::App { message, .. } => message.clone(),
            other => other.to_string(),
        };
        ApiError {
            status,
            code,
            message,
            extra,
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = hyper::Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub(crate) fn ok(body: Value) -> Result<HttpResponse, ApiError> {
    Ok(json_response(StatusCode::OK, &body))
}

pub(crate) fn expect_status(r: Response) -> Result<wraft_proto::Status, ApiError> {
    match r {
        Ok(Reply::Status(s)) => Ok(*s),
        other => Err(unexpected(other, false)),
    }
}

pub(crate) fn done(reply: Reply) -> Result<HttpResponse, ApiError> {
    match reply {
        Reply::Done { message } => ok(json!({ "message": message })),
        other => Err(unexpected(Ok(other), true)),
    }
}

pub(crate) fn unexpected(r: Response, command: bool) -> ApiError {
    match r {
        Err(e) => ApiError::from_request_error(e, command),
        Ok(other) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected answer from the node: {other:?}"),
        ),
    }
}
