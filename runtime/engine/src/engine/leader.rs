//! The state only a leader holds. `Engine::leader` is `Some` exactly while
//! the role is `Leader`: it is built whole when an election is won and
//! dropped whole when the node steps down (pending reads are failed then).

use super::*;

/// Everything that only means something while this node leads its term.
pub(super) struct LeaderState {
    /// What the leader knows of every other member's log (voters and
    /// learners): keyed by exactly the members of the effective membership
    /// other than this node.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    /// Index of this term's no-op, the term's first entry. Until it commits
    /// the leader does not know the commit index of earlier terms: reads
    /// and membership changes wait for it.
    pub(super) term_start_index: LogIndex,
    /// A leadership transfer in progress, to a voter other than this node;
    /// proposals are refused meanwhile.
    pub(super) transfer: Option<Transfer>,
    /// Set by a transfer: no lease for the rest of the term (the target may
    /// be elected before the lease would run out).
    pub(super) lease_revoked: bool,
    /// Reads are served from the lease while `now_ticks` is below this.
    pub(super) lease_until: u64,
    /// The newest heartbeat round (`read_ctx`) a majority of voters has
    /// answered: reads that waited for a round up to it may be served.
    pub(super) quorum_ctx: u64,
    /// Heartbeat rounds sent and not yet answered by a majority, as
    /// `(read_ctx, now_ticks when sent)`, oldest first, contexts increasing
    /// and above `quorum_ctx`; at most `HB_ROUNDS_MAX`. The send time of
    /// the round a majority answers starts a lease.
    pub(super) hb_rounds: VecDeque<(u64, u64)>,
    /// ReadIndex reads waiting for their heartbeat round (and this term's
    /// no-op) to be acknowledged, in arrival order; at most `pending_reads_max`.
    pub(super) pending_reads: VecDeque<PendingRead>,
    /// A read arrived since the last heartbeat round: the next poll starts one.
    pub(super) read_broadcast_needed: bool,
    /// Ticks since the last heartbeat round (below `heartbeat_interval_ticks`).
    pub(super) heartbeat_elapsed: u32,
    /// Ticks since the last check-quorum round (below `election_timeout_min_ticks`).
    pub(super) check_quorum_elapsed: u32,
}

impl LeaderState {
    /// The state of a new leader whose no-op goes at `term_start_index`:
    /// every other member of `membership` is probed from there, and reads
    /// wait for a heartbeat round newer than `read_ctx`.
    pub(super) fn new(
        id: NodeId,
        membership: &Membership,
        term_start_index: LogIndex,
        read_ctx: u64,
    ) -> Self {
        LeaderState {
            progress: membership
                .members()
                .filter(|m| *m != id)
                .map(|m| (m, Progress::new(term_start_index)))
                .collect(),
            term_start_index,
            transfer: None,
            lease_revoked: false,
            lease_until: 0,
            quorum_ctx: read_ctx,
            hb_rounds: VecDeque::new(),
            pending_reads: VecDeque::new(),
            read_broadcast_needed: false,
            heartbeat_elapsed: 0,
            check_quorum_elapsed: 0,
        }
    }
}
