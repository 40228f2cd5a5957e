//! The routes of the HTTP API: each turns an HTTP request into a [`Request`], sends it
//! through the node's [`crate::server::Api`] (forwarding to the leader when this node is not
//! it) and renders the answer as JSON, or as raw bytes for `application/octet-stream`
//! ([`super::body`]). Errors are [`super::reply::ApiError`]s.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use wraft_config::ClientSection;
use wraft_proto::{Consistency, PeerAddr, Reply, Request, RequestError, RequestTag, Response};

use super::HttpState;
use super::body::{BodyMode, caller_tag, param, parse_json, read_body};
use super::reply::{ApiError, HttpResponse, done, expect_status, full, ok, unexpected};
use super::sessions::SessionPool;
use crate::auth::Caller;

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

/// What one connection established about its caller: the client certificate from the TLS
/// handshake, and the bearer token last verified on it (a keep-alive client sends the same
/// token with every request; it is verified once, its expiry checked every time). Cheap to
/// clone (one per request).
#[derive(Clone, Debug)]
pub(crate) struct Peer(Arc<PeerState>);

#[derive(Debug)]
struct PeerState {
    /// The caller behind a verified client certificate of the cluster CA, if one was given.
    cert: Option<Arc<Caller>>,
    /// The last token verified on this connection.
    token: Mutex<Option<VerifiedToken>>,
}

#[derive(Debug)]
struct VerifiedToken {
    token: String,
    caller: Arc<Caller>,
    /// Unix seconds.
    expires: u64,
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
                client => Some(Arc::new(Caller::of_identity(&client, limits))),
            });
        Peer(Arc::new(PeerState {
            cert,
            token: Mutex::new(None),
        }))
    }
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
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let caller = authenticate(state, peer, &headers)?;
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
            let module = module.to_vec();
            let request = if wasi == wraft_proto::WasiProfile::None {
                Request::Deploy {
                    tag: UNTAGGED,
                    name,
                    module,
                }
            } else {
                Request::DeployWith {
                    tag: UNTAGGED,
                    name,
                    module,
                    wasi,
                }
            };
            let reply = tagged(state, &caller, &headers, request).await?;
            done(reply)
        }
        (&Method::DELETE, ["machines", name]) => {
            let name = (*name).to_owned();
            let request = Request::RemoveMachine {
                tag: UNTAGGED,
                name,
            };
            let reply = tagged(state, &caller, &headers, request).await?;
            done(reply)
        }
        (&Method::POST, ["machines", name, "propose"]) => {
            let mode = BodyMode::of(&headers)?;
            let command = read_body(state, body, state.limits.command_bytes_max).await?;
            mode.check(&command)?;
            let request = Request::Propose {
                tag: UNTAGGED,
                machine: (*name).to_owned(),
                command: command.to_vec(),
            };
            let reply = tagged(state, &caller, &headers, request).await?;
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
        // Every authenticated caller may watch (the read role is the least there is).
        (&Method::GET, ["machines", name, "watch"]) => {
            // A new watch of a name that is not deployed (a typo, most often) is refused
            // rather than watched in silence. A resumed one (`from`, `Last-Event-ID`) is not
            // checked: it may be waiting for a deploy, or for the `removed` event it missed.
            // Asked of the leader, so a machine deployed a moment ago that this node has not
            // applied yet is watched; with no leader to ask, the watch goes ahead unchecked.
            let resumed = param(&query, "from").is_some() || headers.contains_key("last-event-id");
            if !resumed
                && let Ok(Reply::Machines(ms)) = dispatch(state, &caller, Request::Machines).await
                && !ms.iter().any(|m| m.name == *name)
            {
                let names: Vec<&str> = ms.iter().map(|m| m.name.as_str()).collect();
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_such_machine",
                    format!(
                        "no machine named {name:?} to watch; deployed: {}. To wait for its \
                         deploy, watch with from=<the next log index>",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
            super::watch_route::watch(state, name, &query, &headers)
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
fn authenticate(
    state: &HttpState,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<Arc<Caller>, ApiError> {
    let unauthenticated = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
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
        let mut last = peer.0.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = last.as_ref()
            && v.token == token
            && now < v.expires
        {
            return Ok(v.caller.clone());
        }
        let claims = key
            .verify(token, now, &state.http.revoked_tokens)
            .map_err(|e| unauthenticated(e.to_string()))?;
        let caller = Arc::new(Caller {
            who: format!("token {:?} (id {})", claims.name, claims.id),
            role: claims.role,
        });
        *last = Some(VerifiedToken {
            token: token.to_owned(),
            caller: caller.clone(),
            expires: claims.expires,
        });
        return Ok(caller);
    }
    peer.0.cert.clone().ok_or_else(|| {
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

/// The tag a command is built with before [`tagged`] gives it its own (never sent).
const UNTAGGED: RequestTag = RequestTag {
    client_id: 0,
    seq: 0,
};

/// Send a tagged command: with the caller's `Wraft-Session`/`Wraft-Seq` if given (exactly
/// once across the caller's retries), else with a tag from the node's own sessions.
async fn tagged(
    state: &HttpState,
    caller: &Caller,
    headers: &HeaderMap,
    mut request: Request,
) -> Result<Reply, ApiError> {
    let refused = |e| ApiError::from_request_error(e, true);
    // Check the role before opening a session on the caller's behalf.
    caller.authorize(&request).map_err(refused)?;
    let (tag, pooled) = match caller_tag(headers)? {
        Some(tag) => (tag, false),
        None => match state.sessions.take() {
            Some(tag) => (tag, true),
            None => (
                SessionPool::first_tag(open_session(state, caller).await?),
                true,
            ),
        },
    };
    if let Some(t) = request.tag_mut() {
        *t = tag;
    }
    let response = dispatch(state, caller, request).await;
    if pooled && !matches!(response, Err(RequestError::SessionUnknown { .. })) {
        state.sessions.give_back(tag);
    }
    response.map_err(refused)
}

/// The leader's status (this node's if it leads, else forwarded): every member's progress;
/// and the snapshot transfers in flight on this node and on the leader.
async fn cluster(state: &HttpState, caller: &Caller) -> Result<HttpResponse, ApiError> {
    let local = expect_status(dispatch(state, caller, Request::Status).await)?;
    let mut transfers = Vec::new();
    if let Ok(Reply::Transfers(ts)) = dispatch(state, caller, Request::Transfers).await {
        transfers.extend(ts.iter().map(|t| transfer_json(state.node, t)));
    }
    let leader_status = match local.leader {
        Some(l) if l != state.node => match state.forward.address_of(l) {
            Some(addr) => match state.forward.send(l, &addr, &Request::Status).await {
                Ok(Reply::Status(s)) => {
                    // A leader older than `Transfers` closes that stream; its status shows.
                    if let Ok(Reply::Transfers(ts)) =
                        state.forward.send(l, &addr, &Request::Transfers).await
                    {
                        transfers.extend(ts.iter().map(|t| transfer_json(l, t)));
                    }
                    Some(*s)
                }
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
        "transfers": transfers,
    }))
}

/// A transfer as `/v1/cluster` lists it: the protocol's fields and the node reporting it.
pub(crate) fn transfer_json(node: u64, t: &wraft_proto::TransferStatus) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("node".into(), json!(node));
    }
    v
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
