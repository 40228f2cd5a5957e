//! Message handling: the term rules every incoming message passes, then
//! dispatch to its handler.

use super::*;

impl Engine {
    /// An incoming message. A newer term makes us a follower of it (a
    /// pre-vote, a granted pre-vote answer, or a vote request refused by a
    /// sticky node excepted: they must not raise our term); an older term
    /// gets a reply naming ours if it came from a stale leader or
    /// pre-candidate, and is otherwise dropped. A message of our term goes
    /// to its handler.
    pub(super) fn step_message(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id {
            return;
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::RequestVote {
                    leadership_transfer,
                    ..
                } if !*leadership_transfer && self.leader_recently_heard() => {
                    // Leader stickiness: a healthy leader exists; do not let a
                    // disruptive candidate raise our term.
                    self.stats.votes_refused_sticky += 1;
                    return;
                }
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::TimeoutNow => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } => {
                    // Tell the stale leader about the newer term.
                    let body = MessageBody::AppendEntriesResponse {
                        success: false,
                        match_index: 0,
                        hint_index: 0,
                        hint_term: None,
                    };
                    let ap = !self.persist.hs_durable();
                    self.send(m.from, body, ap);
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    let ap = !self.persist.hs_durable();
                    self.send(
                        m.from,
                        MessageBody::RequestVoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                        ap,
                    );
                }
                _ => {}
            }
            return;
        }
        let from = m.from;
        let term = m.term;
        match m.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                leadership_transfer,
            } => self.on_request_vote(
                from,
                term,
                pre_vote,
                last_log_index,
                last_log_term,
                leadership_transfer,
            ),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.on_vote_response(from, term, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => self.on_append(from, prev_log_index, prev_log_term, entries, leader_commit),
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                hint_index,
                hint_term,
            } => self.on_append_response(from, success, match_index, hint_index, hint_term),
            MessageBody::Heartbeat { commit, read_ctx } => {
                self.on_heartbeat(from, commit, read_ctx)
            }
            MessageBody::HeartbeatResponse { read_ctx } => {
                self.on_heartbeat_response(from, read_ctx)
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.membership().voters.contains(&self.id) {
                    self.campaign(true);
                }
            }
        }
    }
}
