//! The routes of the HTTP API: each turns an HTTP request into a [`Request`], sends it
//! through the node's [`crate::server::Api`] (forwarding to the leader when this node is not
//! it) and renders the answer as JSON, or as raw bytes for `application/octet-stream`.
//!
//! Errors are always `{"error": {"code", "message", "node", …}}` with a stable `code` and a
//! matching status (see [`error_status`]).

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use wraft_config::ClientSection;
use wraft_proto::{Consistency, PeerAddr, Reply, Request, RequestError, RequestTag, Response};

use super::HttpState;
use super::sessions::SessionPool;
use crate::auth::Caller;

/// A response body: whole, or a stream (watch).
pub(crate) type Body = BoxBody<Bytes, Infallible>;
type HttpResponse = hyper::Response<Body>;

/// Every route, as `docs/openapi.json` names it (method, path template). A test checks the
/// document against this list, and [`handle`] against both.
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/whoami"),
    ("GET", "/v1/status"),
    ("GET", "/v1/cluster"),
    ("GET", "/v1/machines"),
    ("PUT", "/v1/machines/{name}"),
    ("DELETE", "/v1/machines/{name}"),
    ("POST", "/v1/machines/{name}/propose"),
    ("POST", "/v1/machines/{name}/query"),
    ("GET", "/v1/machines/{name}/watch"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/snapshots"),
    ("POST", "/v1/snapshots"),
    ("POST", "/v1/members"),
    ("POST", "/v1/members/{id}/promote"),
    ("DELETE", "/v1/members/{id}"),
    ("POST", "/v1/leader"),
    ("GET", "/v1/openapi.json"),
];

/// The OpenAPI document, as kept in the repository.
pub(crate) const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

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

/// Header carrying the log index of an answer given as raw bytes.
const INDEX_HEADER: &str = "wraft-index";
/// Headers of an exactly-once command: a session from `POST /v1/sessions` and its number.
const SESSION_HEADER: &str = "wraft-session";
const SEQ_HEADER: &str = "wraft-seq";

/// What the TLS handshake established about the caller.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The caller behind a verified client certificate of the cluster CA, if one was given.
    cert: Option<Caller>,
}

impl Peer {
    pub(crate) fn from_tls(conn: &rustls::ServerConnection, limits: &ClientSection) -> Peer {
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| wraft_transport::certs::identity_of(c).ok())
            .and_then(|identity| match identity {
                // Node certificates are for node-to-node traffic, not this API.
                wraft_transport::Identity::Node(_) => None,
                client => Some(Caller::of_identity(&client, limits)),
            });
        Peer { cert }
    }
}

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

    fn render(self, node: u64) -> HttpResponse {
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
    fn from_request_error(e: RequestError, command: bool) -> ApiError {
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

fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
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

fn ok(body: Value) -> Result<HttpResponse, ApiError> {
    Ok(json_response(StatusCode::OK, &body))
}

/// Answer one HTTP request.
pub(crate) async fn handle(
    state: &HttpState,
    peer: &Peer,
    req: hyper::Request<Incoming>,
) -> HttpResponse {
    match route(state, peer, req).await {
        Ok(r) => r,
        Err(e) => e.render(state.node),
    }
}

async fn route(
    state: &HttpState,
    peer: &Peer,
    req: hyper::Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Public: the API's description and the console's static files carry no data.
    match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "openapi.json"]) => {
            let mut r = hyper::Response::new(full(OPENAPI));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
        (&Method::GET, [""]) => {
            let mut r = hyper::Response::new(full(""));
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/console/"));
            return Ok(r);
        }
        (&Method::GET, ["console", rest @ ..]) => return console(rest),
        _ => {}
    }
    if segs.first() != Some(&"v1") || !known_path(&segs) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}; the API is described at /v1/openapi.json"),
        ));
    }
    let caller = authenticate(state, peer, req.headers())?;
    let headers = req.headers().clone();
    let body = req.into_body();
    match (&method, &segs[1..]) {
        (&Method::GET, ["whoami"]) => ok(json!({
            "who": caller.who,
            "role": caller.role.as_str(),
            "node": state.node,
        })),
        (&Method::GET, ["status"]) => {
            let s = expect_status(dispatch(state, &caller, Request::Status).await)?;
            ok(serde_json::to_value(s).unwrap_or_default())
        }
        (&Method::GET, ["cluster"]) => cluster(state, &caller).await,
        (&Method::GET, ["machines"]) => match dispatch(state, &caller, Request::Machines).await {
            Ok(Reply::Machines(m)) => ok(serde_json::to_value(m).unwrap_or_default()),
            other => Err(unexpected(other, false)),
        },
        (&Method::PUT, ["machines", name]) => {
            let wasi = param(&query, "wasi").unwrap_or("none");
            let wasi: wraft_proto::WasiProfile = wasi.parse().map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("wasi: {e}"))
            })?;
            let module = read_body(state, body, state.module_bytes_max).await?;
            let name = (*name).to_owned();
            let reply = tagged(state, &caller, &headers, |tag| {
                if wasi == wraft_proto::WasiProfile::None {
                    Request::Deploy {
                        tag,
                        name: name.clone(),
                        module: module.to_vec(),
                    }
                } else {
                    Request::DeployWith {
                        tag,
                        name: name.clone(),
                        module: module.to_vec(),
                        wasi,
                    }
                }
            })
            .await?;
            done(reply)
        }
        (&Method::DELETE, ["machines", name]) => {
            let name = (*name).to_owned();
            let reply = tagged(state, &caller, &headers, |tag| Request::RemoveMachine {
                tag,
                name: name.clone(),
            })
            .await?;
            done(reply)
        }
        (&Method::POST, ["machines", name, "propose"]) => {
            let mode = BodyMode::of(&headers)?;
            let command = read_body(state, body, state.limits.command_bytes_max).await?;
            mode.check(&command)?;
            let machine = (*name).to_owned();
            let reply = tagged(state, &caller, &headers, |tag| Request::Propose {
                tag,
                machine: machine.clone(),
                command: command.to_vec(),
            })
            .await?;
            match reply {
                Reply::Applied { index, output } => Ok(mode.render(index, output)),
                other => Err(unexpected(Ok(other), true)),
            }
        }
        (&Method::POST, ["machines", name, "query"]) => {
            let mode = BodyMode::of(&headers)?;
            let consistency = match param(&query, "consistency").unwrap_or("linearizable") {
                "linearizable" => Consistency::Linearizable,
                "lease" => Consistency::Lease,
                "stale" => Consistency::Stale,
                other => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!(
                            "consistency {other:?}: expected linearizable (the default), lease or stale"
                        ),
                    ));
                }
            };
            let request = read_body(state, body, state.limits.command_bytes_max).await?;
            mode.check(&request)?;
            let req = Request::Query {
                machine: (*name).to_owned(),
                request: request.to_vec(),
                consistency,
            };
            match dispatch(state, &caller, req).await {
                Ok(Reply::Answer { index, output }) => Ok(mode.render(index, output)),
                other => Err(unexpected(other, false)),
            }
        }
        (&Method::GET, ["machines", name, "watch"]) => {
            super::watch_route::watch(state, &caller, name, &query, &headers)
        }
        (&Method::POST, ["sessions"]) => {
            let id = open_session(state, &caller).await?;
            ok(json!({ "session": id, "next_seq": 1 }))
        }
        (&Method::GET, ["snapshots"]) => match dispatch(state, &caller, Request::Snapshots).await {
            Ok(Reply::Snapshots(s)) => ok(serde_json::to_value(s).unwrap_or_default()),
            other => Err(unexpected(other, false)),
        },
        (&Method::POST, ["snapshots"]) => {
            match dispatch(state, &caller, Request::SnapshotTrigger).await {
                Ok(Reply::SnapshotStarted { index }) => ok(json!({ "index": index })),
                other => Err(unexpected(other, false)),
            }
        }
        (&Method::POST, ["members"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct AddMember {
                id: u64,
                addr: String,
            }
            let body = read_body(state, body, 64 << 10).await?;
            let m: AddMember = parse_json(&body)?;
            let addr: PeerAddr = m.addr.parse().map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("addr: {e}"))
            })?;
            done(
                dispatch(state, &caller, Request::AddLearner { id: m.id, addr })
                    .await
                    .map_err(|e| ApiError::from_request_error(e, true))?,
            )
        }
        (&Method::POST, ["members", id, "promote"]) => {
            let id = member_id(id)?;
            done(
                dispatch(state, &caller, Request::Promote { id })
                    .await
                    .map_err(|e| ApiError::from_request_error(e, true))?,
            )
        }
        (&Method::DELETE, ["members", id]) => {
            let id = member_id(id)?;
            done(
                dispatch(state, &caller, Request::RemoveMember { id })
                    .await
                    .map_err(|e| ApiError::from_request_error(e, true))?,
            )
        }
        (&Method::POST, ["leader"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Transfer {
                to: u64,
            }
            let body = read_body(state, body, 64 << 10).await?;
            let t: Transfer = parse_json(&body)?;
            done(
                dispatch(state, &caller, Request::TransferLeader { to: t.to })
                    .await
                    .map_err(|e| ApiError::from_request_error(e, true))?,
            )
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{method} is not served on {path}; allowed: {}",
                allowed_methods(&segs).join(", ")
            ),
        )),
    }
}

/// Whether some route has this path (with any method).
fn known_path(segs: &[&str]) -> bool {
    !allowed_methods(segs).is_empty()
}

fn allowed_methods(segs: &[&str]) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|(_, template)| {
            let t: Vec<&str> = template.trim_matches('/').split('/').collect();
            t.len() == segs.len()
                && t.iter()
                    .zip(segs)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        .map(|(m, _)| *m)
        .collect()
}

/// The caller: a bearer token if one is presented (a bad one is refused, not ignored), else
/// the client certificate, else 401.
fn authenticate(state: &HttpState, peer: &Peer, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthenticated = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthenticated("Authorization must be `Bearer <token>`".into()))?;
        let key = state.token_key.as_ref().ok_or_else(|| {
            unauthenticated(format!(
                "this node has no token key ({}), so it accepts no tokens; use a client \
                 certificate, or copy the key `wraft token create` wrote to every node",
                state.http.token_key_file.display()
            ))
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = key
            .verify(token.trim(), now, &state.http.revoked_tokens)
            .map_err(|e| unauthenticated(e.to_string()))?;
        return Ok(Caller {
            who: format!("token {:?} (id {})", claims.name, claims.id),
            role: claims.role,
        });
    }
    peer.cert.clone().ok_or_else(|| {
        unauthenticated(
            "authenticate with a client certificate of the cluster CA or with \
             `Authorization: Bearer <token>` (`wraft token create`)"
                .into(),
        )
    })
}

/// Send `request` through this node; if the leader must answer and it is another node,
/// forward it there.
async fn dispatch(state: &HttpState, caller: &Caller, request: Request) -> Response {
    let local = state.api.serve(caller, request.clone()).await;
    match local {
        Err(RequestError::NotLeader {
            leader: Some((leader, addr)),
        }) if leader != state.node => state.forward.send(leader, &addr, &request).await,
        other => other,
    }
}

/// Open a session (through the log, at the leader).
async fn open_session(state: &HttpState, caller: &Caller) -> Result<u64, ApiError> {
    match dispatch(state, caller, Request::OpenSession).await {
        Ok(Reply::SessionOpened { client_id }) => Ok(client_id),
        other => Err(unexpected(other, false)),
    }
}

/// Send a tagged command: with the caller's `Wraft-Session`/`Wraft-Seq` if given (exactly
/// once across the caller's retries), else with a tag from the node's own sessions.
async fn tagged(
    state: &HttpState,
    caller: &Caller,
    headers: &HeaderMap,
    make: impl Fn(RequestTag) -> Request,
) -> Result<Reply, ApiError> {
    if let Some(tag) = caller_tag(headers)? {
        return dispatch(state, caller, make(tag))
            .await
            .map_err(|e| ApiError::from_request_error(e, true));
    }
    // Check the role before opening a session on the caller's behalf.
    caller
        .authorize(&make(RequestTag {
            client_id: 0,
            seq: 0,
        }))
        .map_err(|e| ApiError::from_request_error(e, true))?;
    let tag = match state.sessions.take() {
        Some(t) => t,
        None => SessionPool::first_tag(open_session(state, caller).await?),
    };
    let response = dispatch(state, caller, make(tag)).await;
    if !matches!(response, Err(RequestError::SessionUnknown { .. })) {
        state.sessions.give_back(tag);
    }
    response.map_err(|e| ApiError::from_request_error(e, true))
}

fn caller_tag(headers: &HeaderMap) -> Result<Option<RequestTag>, ApiError> {
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

/// The leader's status (this node's if it leads, else forwarded): every member's progress.
async fn cluster(state: &HttpState, caller: &Caller) -> Result<HttpResponse, ApiError> {
    let local = expect_status(dispatch(state, caller, Request::Status).await)?;
    let leader_status = match local.leader {
        Some(l) if l != state.node => match state.forward.address_of(l) {
            Some(addr) => match state.forward.send(l, &addr, &Request::Status).await {
                Ok(Reply::Status(s)) => Some(*s),
                _ => None,
            },
            None => None,
        },
        Some(_) => Some(local.clone()),
        None => None,
    };
    ok(json!({
        "node": state.node,
        "leader": local.leader,
        "term": local.term,
        "this_node": local,
        "leader_status": leader_status,
    }))
}

fn expect_status(r: Response) -> Result<wraft_proto::Status, ApiError> {
    match r {
        Ok(Reply::Status(s)) => Ok(*s),
        other => Err(unexpected(other, false)),
    }
}

fn done(reply: Reply) -> Result<HttpResponse, ApiError> {
    match reply {
        Reply::Done { message } => ok(json!({ "message": message })),
        other => Err(unexpected(Ok(other), true)),
    }
}

fn unexpected(r: Response, command: bool) -> ApiError {
    match r {
        Err(e) => ApiError::from_request_error(e, command),
        Ok(other) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected answer from the node: {other:?}"),
        ),
    }
}

fn member_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("member id {s:?} is not a number"),
        )
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body is not the JSON this route takes: {e}"),
        )
    })
}

/// The value of query parameter `name` (values here are plain words and numbers).
pub(crate) fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Read a whole body of at most `max` bytes within `http.body_read_timeout_ms`.
async fn read_body(state: &HttpState, body: Incoming, max: u64) -> Result<Bytes, ApiError> {
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
enum BodyMode {
    Json,
    Bytes,
}

impl BodyMode {
    fn of(headers: &HeaderMap) -> Result<BodyMode, ApiError> {
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

    fn check(self, body: &[u8]) -> Result<(), ApiError> {
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

    fn render(self, index: u64, output: Vec<u8>) -> HttpResponse {
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

/// The web console's static files.
fn console(rest: &[&str]) -> Result<HttpResponse, ApiError> {
    let (body, ct): (&'static str, &'static str) = match rest {
        [] | [""] | ["index.html"] => (CONSOLE_HTML, "text/html; charset=utf-8"),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such console file",
            ));
        }
    };
    let mut r = hyper::Response::new(full(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// The console: one self-contained page (`runtime/node/console/index.html`).
const CONSOLE_HTML: &str = include_str!("../../console/index.html");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn openapi() -> Value {
        serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON")
    }

    /// The document lists exactly the routes [`handle`] serves.
    #[test]
    fn openapi_paths_are_exactly_the_served_routes() {
        let doc = openapi();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "put", "post", "delete", "patch"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served, "docs/openapi.json and ROUTES differ");
    }

    /// Every error code the API can answer is in the document's enum, and nothing else.
    #[test]
    fn openapi_error_codes_are_the_ones_answered() {
        let doc = openapi();
        let documented: BTreeSet<String> = doc["components"]["schemas"]["Error"]["properties"]
            ["error"]["properties"]["code"]["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .map(|v| v.as_str().expect("code").to_owned())
            .collect();
        let mut answered: BTreeSet<String> =
            HTTP_ERROR_CODES.iter().map(|c| c.to_string()).collect();
        let samples = [
            RequestError::NotLeader { leader: None },
            RequestError::Busy(String::new()),
            RequestError::Timeout(String::new()),
            RequestError::Rejected(String::new()),
            RequestError::NoSuchMachine(String::new()),
            RequestError::App {
                code: 1,
                message: String::new(),
            },
            RequestError::MachineFault(String::new()),
            RequestError::Internal(String::new()),
            RequestError::SessionUnknown { client_id: 1 },
            RequestError::Forbidden(String::new()),
        ];
        for e in &samples {
            for command in [false, true] {
                answered.insert(error_status(e, command).1.to_owned());
            }
        }
        assert_eq!(documented, answered);
    }

    /// The JSON the routes render (serde of the protocol types) has the fields the document's
    /// schemas name.
    #[test]
    fn openapi_schemas_match_the_rendered_types() {
        let doc = openapi();
        let schema_fields = |name: &str| -> BTreeSet<String> {
            doc["components"]["schemas"][name]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("schema {name}"))
                .keys()
                .cloned()
                .collect()
        };
        let fields = |v: Value| -> BTreeSet<String> {
            v.as_object().expect("object").keys().cloned().collect()
        };
        let machine = wraft_proto::MachineInfo {
            name: "kv".into(),
            kind: "kv".into(),
            version: "1".into(),
            module_sha256: String::new(),
            deployed_at: 1,
            healthy: true,
        };
        let status = wraft_proto::Status {
            id: 1,
            role: "leader".into(),
            term: 1,
            leader: Some(1),
            commit_index: 1,
            applied_index: 1,
            last_index: 1,
            snapshot_index: 0,
            log_first_index: 1,
            snapshot_creating: None,
            voters: vec![1],
            learners: vec![],
            peers: vec![wraft_proto::PeerStatus {
                id: 2,
                voter: true,
                match_index: 1,
                next_index: 2,
                state: "replicate".into(),
            }],
            machines: vec![machine.clone()],
            apply_halted: None,
        };
        let snapshot = wraft_proto::SnapshotListing {
            index: 1,
            term: 1,
            file_bytes: 1,
            digest: String::new(),
            path: String::new(),
            voters: vec![],
            learners: vec![],
        };
        let to = |v: &dyn erased::Ser| v.value();
        assert_eq!(fields(to(&status)), schema_fields("Status"));
        assert_eq!(fields(to(&machine)), schema_fields("Machine"));
        assert_eq!(fields(to(&status.peers[0])), schema_fields("Peer"));
        assert_eq!(fields(to(&snapshot)), schema_fields("Snapshot"));
    }

    mod erased {
        pub(super) trait Ser {
            fn value(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn value(&self) -> serde_json::Value {
                serde_json::to_value(self).expect("serializes")
            }
        }
    }
}
