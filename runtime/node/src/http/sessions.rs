//! Sessions for HTTP commands sent without `Wraft-Session`/`Wraft-Seq`: the node tags each
//! from a pool of sessions it opened itself, one command in flight per session (a session
//! admits one sequence number at a time). So the node's own forwarding is exactly-once; a
//! caller that retries after `504 outcome_unknown` sends a new command, which may apply twice
//! — a caller that needs exactly-once across its own retries opens a session
//! (`POST /v1/sessions`) and numbers its commands.

use std::sync::Mutex;

use wraft_proto::RequestTag;

/// Sessions not in use, with their next sequence number.
#[derive(Default)]
pub(crate) struct SessionPool {
    free: Mutex<Vec<(u64, u64)>>,
}

/// Most idle sessions kept; more are forgotten (they expire in the cluster on their own).
const POOL_IDLE_MAX: usize = 4096;

impl SessionPool {
    /// A session's next tag, if one is free (else open a new session and use
    /// [`SessionPool::first_tag`]).
    pub(crate) fn take(&self) -> Option<RequestTag> {
        let (client_id, seq) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        Some(RequestTag { client_id, seq })
    }

    /// The first tag of a session just opened.
    pub(crate) fn first_tag(client_id: u64) -> RequestTag {
        RequestTag { client_id, seq: 1 }
    }

    /// Give `tag`'s session back after its command got an answer (the next command uses the
    /// next number). A session the cluster no longer knows is not given back.
    pub(crate) fn give_back(&self, tag: RequestTag) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_IDLE_MAX {
            free.push((tag.client_id, tag.seq + 1));
        }
    }
}
