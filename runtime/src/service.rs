//! Running a node as a service: the stop signals (SIGTERM from a service manager, SIGINT from
//! a terminal) and what `wraft node` does on them.

use std::time::Duration;

use wraft_node::Node;

/// Serve until the first stop signal, then stop gracefully within `timeout`
/// ([`Node::stop_gracefully`]); a second signal meanwhile exits the process at once with
/// 128 + the signal's number.
pub async fn serve_until_stopped(node: Node, mut signals: StopSignals, timeout: Duration) {
    let first = signals.next().await;
    tracing::info!(target: "wraft::node", node = node.id(), signal = first.name(),
        timeout_ms = timeout.as_millis() as u64, "stopping; a second signal exits at once");
    let id = node.id();
    tokio::select! {
        report = node.stop_gracefully(timeout) => {
            tracing::info!(target: "wraft::node", node = id, was_leader = report.was_leader,
                handed_to = ?report.handed_to,
                handoff_ms = report.handoff.map(|d| d.as_millis() as u64),
                elapsed_ms = report.elapsed.as_millis() as u64,
                cut_short = ?report.cut_short, "stopped");
        }
        second = signals.next() => {
            tracing::warn!(target: "wraft::node", node = id, signal = second.name(),
                "second signal while stopping: exiting now");
            std::process::exit(second.exit_code());
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), the signals a service manager or a terminal stops a node with.
/// Create it before the node starts, so a signal during start-up is not lost.
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

/// One stop signal received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (systemd, Kubernetes, `kill`).
    Term,
    /// SIGINT (Ctrl-C).
    Int,
}

impl StopSignal {
    /// The signal's name, for the log.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        }
    }

    /// The shell's convention for "ended by this signal": 128 + its number.
    pub fn exit_code(self) -> i32 {
        match self {
            StopSignal::Term => 128 + 15,
            StopSignal::Int => 128 + 2,
        }
    }
}

impl StopSignals {
    /// Install the handlers (must run inside a tokio runtime).
    ///
    /// # Errors
    /// If the process cannot install a signal handler.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Wait for the next stop signal.
    pub async fn next(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => StopSignal::Term,
                _ = self.int.recv() => StopSignal::Int,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Int
        }
    }
}
