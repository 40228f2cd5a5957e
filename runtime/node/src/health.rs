//! The node's HTTP listener on `node.metrics_listen`: `/metrics`, `/livez` and `/readyz`.
//!
//! | path | 200 when | 503 when |
//! |---|---|---|
//! | `/metrics` | always: the process-wide registry in Prometheus text format | — |
//! | `/livez` | the node's driver and applier tasks are running | either has stopped (panicked or exited) |
//! | `/readyz` | see [`Readiness::verdict`] | any readiness condition fails |
//!
//! Anything else is 404: there is no catch-all "OK" (the exporter's own listener, which has
//! one, is not compiled in). `/livez` and `/readyz` answer a short JSON object with the reason,
//! e.g. `{"ready":false,"reason":"no leader known","role":"follower",...}`.
//!
//! Readiness comes from the driver: on every tick it publishes a [`Readiness`] into a
//! `tokio::sync::watch` (and the time it did so); the handler only borrows the latest value and
//! judges it against the configured bounds and the current time. Nothing here waits on the
//! consensus path, and a driver that stops publishing (stalled, stopped) makes the node
//! not ready on its own. Each node has its own listener and its own readiness; `/metrics`
//! shows the registry every node of the process records into.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Most HTTP connections served at once by one node's listener; more wait to be accepted.
pub const HEALTH_CONNECTIONS_MAX: usize = 64;
/// Time a client has to send a request's headers, milliseconds.
pub const HEALTH_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// How often the data directory's free space is measured, milliseconds.
pub const DISK_STATS_INTERVAL_MS: u64 = 10_000;

/// What the driver publishes for `/readyz` on every tick.
#[derive(Clone, Debug)]
pub(crate) struct Readiness {
    /// When the driver published this.
    pub published: Instant,
    /// `leader`, `follower`, `learner`, `candidate`, `pre-candidate`, or `none` when this node
    /// is not (yet) a member.
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    /// The newest time this node heard from the leader it knows (now, on the leader).
    pub leader_contact: Option<Instant>,
    /// The highest commit index this node has learned: its own, or the leader's as the latest
    /// AppendEntries from it said.
    pub commit_index: u64,
    pub applied_index: u64,
    /// Why the applier is halted, if it is.
    pub apply_halted: Option<String>,
    /// Deployed machines whose instance is not healthy on this node.
    pub unhealthy_machines: Vec<String>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            published: Instant::now(),
            role: "starting",
            term: 0,
            leader: None,
            leader_contact: None,
            commit_index: 0,
            applied_index: 0,
            apply_halted: None,
            unhealthy_machines: Vec::new(),
        }
    }
}

/// The bounds `/readyz` judges by (`node.readyz_*`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadyBounds {
    pub lag_entries_max: u64,
    pub leader_contact_ms_max: u64,
}

/// The JSON body of `/readyz`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub ready: bool,
    pub reason: String,
    pub node: u64,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<u64>,
    pub applied_index: u64,
    pub commit_index: u64,
    pub lag_entries: u64,
    /// Milliseconds since this node last heard from its leader.
    pub leader_contact_ms: Option<u64>,
}

impl Readiness {
    /// Ready when, in this order: the driver published within the contact bound; the node is
    /// a voter or learner; it knows a leader (and is not campaigning); it heard from that
    /// leader within `leader_contact_ms_max`; its applier is not halted and every deployed
    /// machine is healthy; and its applied index is within `lag_entries_max` of the commit
    /// index it knows. The first condition that fails is the reason.
    pub(crate) fn verdict(&self, node: u64, bounds: ReadyBounds, now: Instant) -> Verdict {
        let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
        let lag = self.commit_index.saturating_sub(self.applied_index);
        let contact_ms = self.leader_contact.map(ms);
        let silent_ms = ms(self.published);
        let reason = if silent_ms > bounds.leader_contact_ms_max {
            Some(format!(
                "the node's driver has not reported for {silent_ms} ms (bound: node.readyz_leader_contact_ms_max = {})",
                bounds.leader_contact_ms_max
            ))
        } else if matches!(self.role, "none" | "starting") {
            Some("not a voter or learner of the cluster (yet)".to_owned())
        } else if self.leader.is_none() || matches!(self.role, "candidate" | "pre-candidate") {
            Some("no leader known".to_owned())
        } else if contact_ms.is_none_or(|c| c > bounds.leader_contact_ms_max) {
            Some(format!(
                "leader {} not heard from for {} ms (bound: node.readyz_leader_contact_ms_max = {})",
                self.leader.unwrap_or(0),
                contact_ms.map_or("ever".to_owned(), |c| c.to_string()),
                bounds.leader_contact_ms_max
            ))
        } else if let Some(why) = &self.apply_halted {
            Some(format!("applier halted: {why}"))
        } else if !self.unhealthy_machines.is_empty() {
            Some(format!(
                "machines unhealthy on this node: {}",
                self.unhealthy_machines.join(", ")
            ))
        } else if lag > bounds.lag_entries_max {
            Some(format!(
                "catching up: applied index {} is {lag} entries behind commit index {} (bound: node.readyz_lag_entries_max = {})",
                self.applied_index, self.commit_index, bounds.lag_entries_max
            ))
        } else {
            None
        };
        Verdict {
            ready: reason.is_none(),
            reason: reason.unwrap_or_else(|| "ready".to_owned()),
            node,
            role: self.role,
            term: self.term,
            leader: self.leader,
            applied_index: self.applied_index,
            commit_index: self.commit_index,
            lag_entries: lag,
            leader_contact_ms: contact_ms,
        }
    }
}

/// Set while a task runs; cleared when it ends, by return or by panic (the guard is dropped
/// either way). `/livez` reads it.
#[derive(Clone, Debug)]
pub(crate) struct Alive(Arc<AtomicBool>);

impl Alive {
    pub(crate) fn new() -> Self {
        Alive(Arc::new(AtomicBool::new(true)))
    }
    pub(crate) fn is_alive(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    /// A guard for the task itself: dropping it marks the task stopped.
    pub(crate) fn guard(&self) -> AliveGuard {
        AliveGuard(self.0.clone())
    }
}

/// See [`Alive::guard`].
pub(crate) struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Everything one node's listener answers from.
#[derive(Clone)]
pub(crate) struct HealthSource {
    pub node: u64,
    pub metrics: PrometheusHandle,
    pub readiness: watch::Receiver<Readiness>,
    pub bounds: ReadyBounds,
    pub driver: Alive,
    pub applier: Alive,
}

/// Bind `addr` (a std listener, so the caller learns the port at once).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serve `/metrics`, `/livez` and `/readyz` on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    source: HealthSource,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(target: "wraft::node", node = source.node, error = %e,
                "cannot serve /metrics, /livez and /readyz");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(HEALTH_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(target: "wraft::node", node = source.node, error = %e, "health listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(&source, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEALTH_HEADER_READ_TIMEOUT_MS))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(source: &HealthSource, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(source.metrics.render())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/livez" => {
            let stopped = match (source.driver.is_alive(), source.applier.is_alive()) {
                (true, true) => None,
                (false, _) => Some("the driver task has stopped"),
                (_, false) => Some("the applier task has stopped"),
            };
            let body = serde_json::json!({
                "live": stopped.is_none(),
                "reason": stopped.unwrap_or("driver and applier running"),
                "node": source.node,
            });
            json(
                if stopped.is_none() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &body,
            )
        }
        "/readyz" => {
            let v = source
                .readiness
                .borrow()
                .verdict(source.node, source.bounds, Instant::now());
            json(
                if v.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                &v,
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves /metrics, /livez and /readyz\n".into(),
        ),
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// Measure the file system holding `dir` every [`DISK_STATS_INTERVAL_MS`] (on the blocking
/// pool: a slow `statvfs` never holds up anything else) into
/// `wraft_storage_disk_free_bytes` / `wraft_storage_disk_size_bytes`, until `shutdown`.
pub(crate) async fn disk_stats(node: u64, dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let n = node.to_string();
    let free = metrics::gauge!("wraft_storage_disk_free_bytes", "node" => n.clone());
    let size = metrics::gauge!("wraft_storage_disk_size_bytes", "node" => n);
    let mut warned = false;
    loop {
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || rustix::fs::statvfs(&d)).await {
            Ok(Ok(st)) => {
                free.set((st.f_bavail.saturating_mul(st.f_frsize)) as f64);
                size.set((st.f_blocks.saturating_mul(st.f_frsize)) as f64);
            }
            Ok(Err(e)) if !warned => {
                warned = true;
                tracing::warn!(target: "wraft::node", node, dir = %dir.display(), error = %e,
                    "cannot measure the data directory's free space; wraft_storage_disk_free_bytes is not updated");
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(DISK_STATS_INTERVAL_MS)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: ReadyBounds = ReadyBounds {
        lag_entries_max: 10,
        leader_contact_ms_max: 1_000,
    };

    fn follower(now: Instant) -> Readiness {
        Readiness {
            published: now,
            role: "follower",
            term: 3,
            leader: Some(1),
            leader_contact: Some(now),
            commit_index: 100,
            applied_index: 95,
            apply_halted: None,
            unhealthy_machines: Vec::new(),
        }
    }

    #[test]
    fn a_caught_up_follower_that_hears_its_leader_is_ready() {
        let now = Instant::now();
        let v = follower(now).verdict(2, BOUNDS, now);
        assert!(v.ready, "{v:?}");
        assert_eq!((v.lag_entries, v.reason.as_str()), (5, "ready"));
    }

    #[test]
    fn each_failing_condition_is_the_reason() {
        let now = Instant::now();
        let later = now + Duration::from_millis(1_500);
        let cases: Vec<(Readiness, Instant, &str)> = vec![
            (follower(now), later, "driver has not reported"),
            (
                Readiness {
                    role: "none",
                    ..follower(now)
                },
                now,
                "not a voter or learner",
            ),
            (
                Readiness {
                    leader: None,
                    ..follower(now)
                },
                now,
                "no leader known",
            ),
            (
                Readiness {
                    role: "pre-candidate",
                    ..follower(now)
                },
                now,
                "no leader known",
            ),
            (
                Readiness {
                    published: later,
                    ..follower(now)
                },
                later,
                "not heard from for 1500 ms",
            ),
            (
                Readiness {
                    apply_halted: Some("machine kv: watchdog".into()),
                    ..follower(now)
                },
                now,
                "applier halted: machine kv",
            ),
            (
                Readiness {
                    unhealthy_machines: vec!["kv".into()],
                    ..follower(now)
                },
                now,
                "machines unhealthy on this node: kv",
            ),
            (
                Readiness {
                    applied_index: 80,
                    ..follower(now)
                },
                now,
                "20 entries behind commit index 100",
            ),
        ];
        for (r, at, want) in cases {
            let v = r.verdict(2, BOUNDS, at);
            assert!(!v.ready, "{r:?}");
            assert!(v.reason.contains(want), "{want:?} not in {:?}", v.reason);
        }
    }

    #[test]
    fn the_alive_flag_drops_with_its_guard_even_on_panic() {
        let alive = Alive::new();
        let guard = alive.guard();
        let r = std::thread::spawn(move || {
            let _g = guard;
            panic!("task died");
        })
        .join();
        assert!(r.is_err());
        assert!(!alive.is_alive());
    }
}
