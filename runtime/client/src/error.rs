//! Why a client call failed, and how a node's refusal becomes one.

use wraft_proto::{Reply, RequestError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nodes answered, but none knew a leader (election in progress, or a majority is down);
    /// the request was not sent to one, so it was not applied.
    #[error("no leader reachable within {waited_ms} ms (last: {last})")]
    NoLeader {
        /// How long the client tried.
        waited_ms: u64,
        /// The last answer or failure seen.
        last: String,
    },
    /// No endpoint could be reached at all (every handshake failed or timed out), so nothing
    /// was sent. Each address with why, e.g. `cannot reach 127.0.0.1:7001: handshake timed out
    /// after 1000 ms`.
    #[error("no node reachable within {waited_ms} ms: {tried}")]
    Unreachable {
        /// How long the client tried.
        waited_ms: u64,
        /// Every address tried in the last round, with why it failed.
        tried: String,
    },
    /// The cluster is overloaded and stayed so for the whole retry budget.
    #[error("cluster busy: {0}")]
    Busy(String),
    /// No outcome within the deadline; a retry with the same client is safe.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The request is invalid (retrying will not help): bad module, command too large…
    #[error("rejected: {0}")]
    Rejected(String),
    /// No such machine.
    #[error("no machine named {0:?}")]
    NoSuchMachine(String),
    /// The machine returned a deterministic application error.
    #[error("application error {code}: {message}")]
    App {
        /// Application-defined code.
        code: u32,
        /// Its message.
        message: String,
    },
    /// The guest trapped on this command (recorded identically on every replica).
    #[error("machine fault: {0}")]
    MachineFault(String),
    /// Certificates could not be loaded.
    #[error("client certificates: {0}")]
    Certs(String),
    /// This client's role does not allow the request (retrying will not help).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// An unexpected answer or a node-side internal error.
    #[error("internal: {0}")]
    Internal(String),
    /// The command may or may not have been applied: it was sent more than once, and the
    /// cluster forgot its session (expired or evicted) before a retry could learn the outcome.
    /// Read the state to find out before deciding to send it again.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
}

pub(crate) fn done(r: Reply) -> Result<String, ClientError> {
    match r {
        Reply::Done { message } => Ok(message),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn unexpected(r: Reply) -> ClientError {
    ClientError::Internal(format!("unexpected reply {r:?}"))
}

pub(crate) fn map_err(e: RequestError) -> ClientError {
    match e {
        RequestError::NotLeader { leader } => ClientError::NoLeader {
            waited_ms: 0,
            last: format!("not the leader (hint {leader:?})"),
        },
        RequestError::Busy(m) => ClientError::Busy(m),
        RequestError::Timeout(m) => ClientError::Timeout(m),
        RequestError::Rejected(m) => ClientError::Rejected(m),
        RequestError::NoSuchMachine(m) => ClientError::NoSuchMachine(m),
        RequestError::App { code, message } => ClientError::App { code, message },
        RequestError::MachineFault(m) => ClientError::MachineFault(m),
        RequestError::Internal(m) => ClientError::Internal(m),
        e @ RequestError::SessionUnknown { .. } => ClientError::OutcomeUnknown(e.to_string()),
        RequestError::Forbidden(m) => ClientError::Forbidden(m),
    }
}
