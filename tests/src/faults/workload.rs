//! The clients: each one a closed loop of `put`, `cas`, `get` and unique-`put` operations on the
//! kv guest, every invocation and response recorded in the history; and the helpers every
//! operation goes through (the history's deadline, the outcome of a failed write, value parsing).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wraft_client::{Client, ClientError, ClientOptions};
use wraft_engine::lincheck::{KvInput, KvOutput};
use wraft_proto::Consistency;

use super::history::{History, OpKind, Outcome};
use super::{OP_CALL_TIMEOUT_MS, OP_DEADLINE_MS, OP_PAUSE_MS_MAX};

/// Endpoints the clients should use, with a version bumped on change.
pub(super) type Endpoints = Arc<Mutex<(u64, Vec<SocketAddr>)>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn client_options(endpoints: Vec<SocketAddr>, certs: &std::path::Path) -> ClientOptions {
    let mut o =
        ClientOptions::from_cert_dir(endpoints, certs, "admin").expect("client certificate");
    o.call_timeout_ms = OP_CALL_TIMEOUT_MS;
    o
}

pub(super) fn key_name(k: u64) -> String {
    format!("k{k}")
}

pub(super) fn json(v: serde_json::Value) -> Vec<u8> {
    crate::json(v)
}

/// Whether a write that failed with `e` may still take effect.
pub(super) fn write_outcome(e: &ClientError) -> Outcome {
    match e {
        ClientError::Rejected(_)
        | ClientError::NoSuchMachine(_)
        | ClientError::Certs(_)
        | ClientError::Forbidden(_)
        | ClientError::App { .. }
        | ClientError::MachineFault(_) => Outcome::Failed,
        ClientError::NoLeader { .. }
        | ClientError::Unreachable { .. }
        | ClientError::Busy(_)
        | ClientError::Timeout(_)
        | ClientError::OutcomeUnknown(_)
        | ClientError::Internal(_) => Outcome::Indeterminate,
    }
}

pub(super) fn parse_value(v: &serde_json::Value) -> Option<u64> {
    // A value that is not one of ours parses as u64::MAX, which no model
    // state can hold, so the checker flags it.
    v.as_str().map(|s| s.parse().unwrap_or(u64::MAX))
}

/// Run one operation with the history's deadline; `Err` when abandoned.
pub(super) async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(Duration::from_millis(OP_DEADLINE_MS), f).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(format!(
            "no answer within the history deadline of {OP_DEADLINE_MS} ms"
        ))),
    }
}

/// One operation in this many is a client's last: the next one uses a new client (and so
/// opens a new session).
const SHORT_LIVED_CLIENT_ONE_IN: u32 = 20;

pub(super) struct ClientCtx {
    pub(super) id: u64,
    pub(super) seed: u64,
    pub(super) keys: u64,
    pub(super) history: Arc<History>,
    pub(super) endpoints: Endpoints,
    pub(super) certs: PathBuf,
    pub(super) stop: Arc<AtomicBool>,
}

/// One logical client: a closed loop of operations until `stop`.
pub(super) async fn client_loop(ctx: ClientCtx) {
    let mut rng = fastrand::Rng::with_seed(ctx.seed ^ ctx.id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut version = u64::MAX;
    let mut client: Option<Client> = None;
    let mut seen: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let (v, mut eps) = lock(&ctx.endpoints).clone();
        if v != version || client.is_none() {
            rng.shuffle(&mut eps);
            client = Client::connect(client_options(eps, &ctx.certs)).await.ok();
            version = v;
        }
        let Some(c) = client.as_ref() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Now and then the client starts over, like one `wraft` CLI invocation after another:
        // its next write opens a new session through the log, under whatever fault is on.
        let short_lived = rng.u32(0..SHORT_LIVED_CLIENT_ONE_IN) == 0;
        n += 1;
        let value = (ctx.id + 1) * 1_000_000_000 + n;
        let key = rng.u64(0..ctx.keys);
        let h = &ctx.history;
        match rng.u32(0..100) {
            0..35 => {
                let input = KvInput::Put { key, value };
                let op = h.invoke(ctx.id, OpKind::Put, input);
                let cmd = json(
                    serde_json::json!({"op":"put","key":key_name(key),"value":value.to_string()}),
                );
                match bounded(c.propose("kv", &cmd)).await {
                    Ok(_) => {
                        h.complete(op, Outcome::Ok, Some(KvOutput::Put), String::new());
                        seen.insert(key, Some(value));
                    }
                    Err(e) => h.complete(op, write_outcome(&e), None, e.to_string()),
                }
            }
            35..55 => {
                let expected = match seen.get(&key) {
                    Some(v) if rng.u32(0..4) != 0 => *v,
                    _ => None,
                };
                let input = KvInput::Cas {
                    key,
                    expected,
                    new: value,
                };
                let op = h.invoke(ctx.id, OpKind::Cas, input);
                let cmd = json(serde_json::json!({
                    "op":"cas","key":key_name(key),
                    "expected": expected.map(|e| e.to_string()),
                    "new": value.to_string()
                }));
                match bounded(c.propose("kv", &cmd)).await {
                    Ok(out) => {
                        let v = crate::parse(&out.output);
                        let swapped = v["swapped"].as_bool().unwrap_or(false);
                        h.complete(op, Outcome::Ok, Some(KvOutput::Cas(swapped)), String::new());
                        seen.insert(
                            key,
                            if swapped {
                                Some(value)
                            } else {
                                parse_value(&v["current"])
                            },
                        );
                    }
                    Err(e) => h.complete(op, write_outcome(&e), None, e.to_string()),
                }
            }
            55..93 => {
                let (kind, consistency) = if rng.u32(0..4) == 0 {
                    (OpKind::GetLease, Consistency::Lease)
                } else {
                    (OpKind::GetLinearizable, Consistency::Linearizable)
                };
                let op = h.invoke(ctx.id, kind, KvInput::Get { key });
                let q = json(serde_json::json!({"op":"get","key":key_name(key)}));
                match bounded(c.query("kv", &q, consistency)).await {
                    Ok(out) => {
                        let got = parse_value(&crate::parse(&out)["value"]);
                        h.complete(op, Outcome::Ok, Some(KvOutput::Get(got)), String::new());
                        seen.insert(key, got);
                    }
                    Err(e) => h.complete(op, Outcome::Failed, None, e.to_string()),
                }
            }
            _ => {
                let op = h.invoke(
                    ctx.id,
                    OpKind::UniquePut,
                    KvInput::Put {
                        key: u64::MAX,
                        value,
                    },
                );
                let cmd = json(
                    serde_json::json!({"op":"put","key":format!("w/{value}"),"value":value.to_string()}),
                );
                match bounded(c.propose("kv", &cmd)).await {
                    Ok(_) => h.complete(op, Outcome::Ok, None, String::new()),
                    Err(e) => h.complete(op, write_outcome(&e), None, e.to_string()),
                }
            }
        }
        if short_lived {
            client = None;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=OP_PAUSE_MS_MAX))).await;
    }
}

/// A `get` of register `key` through `c`, recorded in `h`; the value read.
pub(super) async fn record_get(
    h: &History,
    c: &Client,
    client: u64,
    key: u64,
    consistency: Consistency,
) -> Option<Option<u64>> {
    let kind = match consistency {
        Consistency::Lease => OpKind::GetLease,
        _ => OpKind::GetLinearizable,
    };
    let op = h.invoke(client, kind, KvInput::Get { key });
    let q = json(serde_json::json!({"op":"get","key":key_name(key)}));
    match bounded(c.query("kv", &q, consistency)).await {
        Ok(out) => {
            let got = parse_value(&crate::parse(&out)["value"]);
            h.complete(op, Outcome::Ok, Some(KvOutput::Get(got)), String::new());
            Some(got)
        }
        Err(e) => {
            h.complete(op, Outcome::Failed, None, e.to_string());
            None
        }
    }
}
