//! A small application of the `kv` example machine, written against `wraft-client` alone.
//!
//! It shows what an application does: connect with its certificate, write through the leader
//! (the client follows redirects and retries safely), and read linearizably. The end-to-end
//! tests run it against a real cluster; `kv-client` (in `main.rs`) is the same code behind a
//! command line.

use wraft_client::{Client, ClientError, Consistency};

/// What can go wrong in this application.
#[derive(Debug)]
pub enum AppError {
    /// The cluster could not be reached, refused the request, or the machine failed it.
    Cluster(ClientError),
    /// The machine answered something that is not the `kv` machine's JSON.
    Unexpected(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Cluster(e) => write!(f, "{e}"),
            AppError::Unexpected(s) => write!(f, "unexpected answer from the kv machine: {s}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<ClientError> for AppError {
    fn from(e: ClientError) -> Self {
        AppError::Cluster(e)
    }
}

/// Store `value` under `key` in the machine `machine` (a deployed `kv`); returns the log index
/// the write was applied at.
pub async fn put(client: &Client, machine: &str, key: &str, value: &str) -> Result<u64, AppError> {
    let command = serde_json::json!({ "op": "put", "key": key, "value": value });
    let applied = client
        .propose(machine, command.to_string().as_bytes())
        .await?;
    Ok(applied.index)
}

/// The value under `key`, read linearizably (it reflects every write acknowledged before).
pub async fn get(client: &Client, machine: &str, key: &str) -> Result<Option<String>, AppError> {
    let request = serde_json::json!({ "op": "get", "key": key });
    let answer = client
        .query(
            machine,
            request.to_string().as_bytes(),
            Consistency::Linearizable,
        )
        .await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| AppError::Unexpected(text.clone()))?;
    match &json["value"] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        _ => Err(AppError::Unexpected(text)),
    }
}
