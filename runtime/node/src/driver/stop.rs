//! Stopping like a service (SIGTERM, SIGINT): a leader hands leadership to the most caught-up
//! voter, the client calls in flight are answered (or failed with an error a client retries),
//! and only then does the node report that it may go. Everything is bounded by the deadline
//! the caller gives ([`crate::Node::stop_gracefully`]); past it the driver reports what was cut
//! short and stops anyway (the log is durable either way: only availability is at stake).
//!
//! While stopping, new requests that would need this node to lead or to apply get `Busy`
//! (leadership is still here, on its way out) or `NotLeader` naming the new leader; `Status`
//! and `Snapshots` are still answered, so an operator can watch the handoff.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wraft_engine::{Event, Role};
use wraft_proto::{Request, RequestError};

use crate::driver::Driver;

/// How often a stopping leader picks its successor again (the engine aborts a transfer that
/// has not completed in its `transfer_timeout_ticks`; a successor that went away meanwhile
/// is replaced by the next most caught-up voter).
const HANDOFF_RETRY_MS: u64 = 300;

/// How long a stopped node waits for its transport to close: enough for the close frames to
/// leave (peers then see the node gone at once instead of after their idle timeout), not for
/// QUIC's draining, which lasts three probe timeouts and does not matter to an exiting process.
pub(crate) const STOP_CLOSE_WAIT_MS: u64 = 100;

/// A request to stop, from [`crate::Node::stop_gracefully`].
pub(crate) struct StopRequest {
    /// Report (and stop waiting) by then at the latest.
    pub(crate) deadline: Instant,
    /// Where the report goes.
    pub(crate) done: oneshot::Sender<StopReport>,
}

/// What a graceful stop did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// This node was the leader when asked to stop.
    pub was_leader: bool,
    /// The voter leadership moved to (the new leader as this node last saw it), if this node
    /// was leading when asked to stop.
    pub handed_to: Option<u64>,
    /// From the stop request until leadership had left this node, if it was leading.
    pub handoff: Option<Duration>,
    /// From the stop request until the report.
    pub elapsed: Duration,
    /// What did not finish before the deadline, in words (empty: everything did).
    pub cut_short: Vec<String>,
}

/// The driver's state while stopping.
pub(crate) struct Stopping {
    started: Instant,
    deadline: Instant,
    /// `None` once the report is sent (the driver then waits for the shutdown signal).
    done: Option<oneshot::Sender<StopReport>>,
    was_leader: bool,
    /// The voter asked to take over, and when it was last asked.
    successor: Option<(u64, Instant)>,
    handoff: Option<Duration>,
    /// The commit index when this node was last leader (or when asked, for a follower): the
    /// client calls waiting for their entry's outcome are answered once the applier is there.
    drain_to: u64,
}

impl Driver {
    /// Start stopping (a second request is answered at once with an empty report).
    pub(crate) fn begin_stop(&mut self, req: StopRequest) {
        if self.stopping.is_some() {
            let _ = req.done.send(StopReport::default());
            return;
        }
        let was_leader = self.engine.role() == Role::Leader;
        tracing::info!(target: "wraft::node", node = self.id, was_leader,
            timeout_ms = req.deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
            "stopping");
        self.stopping = Some(Stopping {
            started: Instant::now(),
            deadline: req.deadline,
            done: Some(req.done),
            was_leader,
            successor: None,
            handoff: None,
            drain_to: self.engine.commit_index(),
        });
        self.advance_stop();
    }

    /// One step of the stop, after every driver turn: hand leadership on, wait for the calls
    /// in flight, report when done or when the deadline has passed.
    pub(crate) fn advance_stop(&mut self) {
        let Some(mut s) = self.stopping.take() else {
            return;
        };
        if s.done.is_some() {
            self.advance_stop_with(&mut s);
        }
        self.stopping = Some(s);
    }

    fn advance_stop_with(&mut self, s: &mut Stopping) {
        let now = Instant::now();
        let leading = self.engine.role() == Role::Leader;
        if leading {
            s.drain_to = self.engine.commit_index();
            let due = s.successor.is_none_or(|(_, at)| {
                now.duration_since(at) >= Duration::from_millis(HANDOFF_RETRY_MS)
            });
            if due && let Some(to) = most_caught_up_voter(&self.engine) {
                if s.successor.map(|(t, _)| t) != Some(to) {
                    tracing::info!(target: "wraft::node", node = self.id, to,
                        match_index = self.engine.peer_match_index(to).unwrap_or(0),
                        last_index = self.engine.last_index(), "stopping: handing leadership over");
                }
                s.successor = Some((to, now));
                self.step(Event::TransferLeadership { to });
            }
        } else if s.was_leader && s.handoff.is_none() {
            s.handoff = Some(now.duration_since(s.started));
            tracing::info!(target: "wraft::node", node = self.id, to = ?self.engine.leader(),
                term = self.engine.term(), handoff_ms = now.duration_since(s.started).as_millis() as u64,
                "stopping: leadership handed over");
        }
        let applied = self.published.lock().map(|p| p.applied_index).unwrap_or(0);
        // A single voter has nobody to hand over to: it finishes what it has and goes.
        let alone = leading && most_caught_up_voter(&self.engine).is_none();
        // A leader that handed over waits until it hears from its successor, so that what it
        // answers meanwhile (`NotLeader`) names the new leader and its report says who it is.
        let successor_known = self.engine.leader().is_some_and(|l| l != self.id);
        let settled = (!leading || alone)
            && (!s.was_leader || alone || successor_known)
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && applied >= s.drain_to;
        if !settled && now < s.deadline {
            return;
        }
        let mut cut_short = Vec::new();
        if !settled {
            if leading && !alone {
                cut_short.push(format!(
                    "leadership did not move (asked node {:?}); the others elect a leader after \
                     their election timeout",
                    s.successor.map(|(t, _)| t)
                ));
            } else if s.was_leader && !alone && !successor_known {
                cut_short.push("no new leader was heard from yet".into());
            }
            if !self.proposals.is_empty() {
                cut_short.push(format!(
                    "{} proposals had no outcome yet (answered as timed out: a retry with the \
                     same tag is safe)",
                    self.proposals.len()
                ));
            }
            if !self.reads.is_empty() {
                cut_short.push(format!("{} reads were not served", self.reads.len()));
            }
            if applied < s.drain_to {
                cut_short.push(format!(
                    "the applier was at index {applied} of {}: calls waiting for entries above \
                     it get no answer here",
                    s.drain_to
                ));
            }
        }
        let report = StopReport {
            was_leader: s.was_leader,
            handed_to: if s.was_leader {
                self.engine.leader().filter(|l| *l != self.id)
            } else {
                None
            },
            handoff: s.handoff,
            elapsed: now.duration_since(s.started),
            cut_short,
        };
        if !report.cut_short.is_empty() {
            tracing::warn!(target: "wraft::node", node = self.id, cut_short = ?report.cut_short,
                "stopping: the deadline passed first");
        }
        if let Some(done) = s.done.take() {
            let _ = done.send(report);
        }
        self.fail_pending_for_stop();
    }

    /// Answer what is still waiting on this node with errors a client retries.
    fn fail_pending_for_stop(&mut self) {
        let id = self.id;
        for (_, (_, p)) in self.proposals.drain() {
            p.fail(RequestError::Timeout(format!(
                "node {id} stopped before the outcome was known; retrying with the same tag is \
                 safe"
            )));
        }
        let e = self.stopping_error();
        for (_, r) in self.reads.drain() {
            let _ = r.reply.send(Err(e.clone()));
        }
    }

    /// The answer to a request this stopping node will not serve, or `None` to serve it.
    pub(crate) fn refuse_while_stopping(&self, request: &Request) -> Option<RequestError> {
        self.stopping.as_ref()?;
        match request {
            // Information, so an operator can watch the stop.
            Request::Status | Request::Snapshots | Request::NodeInfo | Request::Transfers => None,
            _ => Some(self.stopping_error()),
        }
    }

    /// `NotLeader` naming the leader if it is another node; otherwise `Busy` (this node still
    /// leads and is handing over, or no leader is known yet).
    fn stopping_error(&self) -> RequestError {
        match self.engine.leader() {
            Some(l) if l != self.id && self.addresses.get(l).is_some() => self.not_leader(),
            _ => RequestError::Busy(format!(
                "node {} is stopping; leadership is moving to another node, retry shortly",
                self.id
            )),
        }
    }
}

/// The voter other than the leader with the highest match index (`None` on a single voter).
pub(crate) fn most_caught_up_voter(engine: &wraft_engine::Engine) -> Option<u64> {
    engine
        .membership()
        .voters
        .iter()
        .copied()
        .filter(|v| *v != engine.id())
        .max_by_key(|v| engine.peer_match_index(*v).unwrap_or(0))
}
