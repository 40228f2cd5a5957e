//! Outgoing messages: sent at once, or held until the writes they reveal are
//! durable, and the other actions waiting for the next poll.
//!
//! A message that reveals a vote, an acknowledgement or a term must not leave
//! before the persist batch carrying that state is durable. Rather than ask
//! the host to delay sends, the engine holds such a message here, tagged with
//! the seq of the batch it waits for, and releases it when the host reports
//! that seq durable; if the term moved on meanwhile the message is dropped (a
//! newer leader may have truncated what it acknowledges). Leader appends,
//! heartbeats and pre-votes reveal nothing undurable and leave at once.

use super::*;

/// Messages held back waiting for persists (beyond this the oldest is dropped).
pub(super) const HELD_MSGS_MAX: usize = 65_536;

/// Actions for the next [`Engine::poll_actions`], in the order they will be
/// handed out around the persist batch.
#[derive(Default)]
pub(super) struct Outbox {
    /// `Action::Send`s handed out first, before the persist batch: messages
    /// that reveal nothing undurable, and held ones now released.
    pub(super) sends: Vec<Action>,
    /// Messages waiting for the persist batch with seq `need` to be durable,
    /// `(need, message)`. `need` never decreases along the queue and every
    /// `need` is above the durable seq (released ones leave at once); at
    /// most `HELD_MSGS_MAX`.
    pub(super) held: VecDeque<(u64, Message)>,
    /// Every other action, in the order produced, handed out after the
    /// persist batch.
    pub(super) actions: Vec<Action>,
}

impl Outbox {
    /// Holds `msg` until batch `need` is durable.
    fn hold(&mut self, need: u64, msg: Message) {
        if self.held.len() >= HELD_MSGS_MAX {
            // Messages may be lost anyway; keep memory bounded.
            self.held.pop_front();
        }
        self.held.push_back((need, msg));
    }

    /// Batch `durable_seq` is durable: send what waited for it, in order.
    /// A message from an older term than `term` may describe state that a
    /// newer leader has since truncated (e.g. an ack): it is dropped.
    pub(super) fn release(&mut self, durable_seq: u64, term: Term) {
        while self
            .held
            .front()
            .is_some_and(|(need, _)| *need <= durable_seq)
        {
            let (_, msg) = self.held.pop_front().expect("front");
            if msg.term == term {
                self.sends.push(Action::Send { msg });
            }
        }
    }
}

impl Engine {
    /// Queues a message in our term. Anything carrying our term waits for
    /// the term to be durable even if the caller did not ask for it (a
    /// single-voter leader elects itself before its term is on disk).
    pub(super) fn send(&mut self, to: NodeId, body: MessageBody, needs_durable: bool) {
        let msg = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.emit(msg, needs_durable || !self.persist.hs_durable());
    }

    /// Queues a message stamped with `term` (pre-votes speak for the
    /// prospective term, which reveals nothing durable).
    pub(super) fn send_with_term(
        &mut self,
        to: NodeId,
        term: Term,
        body: MessageBody,
        needs_durable: bool,
    ) {
        let msg = Message {
            from: self.id,
            to,
            term,
            body,
        };
        self.emit(msg, needs_durable);
    }

    /// Sends now, or holds the message until everything it may reveal is durable.
    fn emit(&mut self, msg: Message, needs_durable: bool) {
        if !needs_durable {
            self.outbox.sends.push(Action::Send { msg });
            return;
        }
        let need = self.persist.seq_covering_now(self.log.last_index());
        if need <= self.persist.durable_seq {
            self.outbox.sends.push(Action::Send { msg });
        } else {
            self.outbox.hold(need, msg);
        }
    }

    /// Tells the host when role, term or known leader changed since the last poll.
    pub(super) fn report_role(&mut self) {
        let now = (self.role, self.term, self.leader_id);
        if now != self.last_role_report {
            self.last_role_report = now;
            self.outbox.actions.push(Action::RoleChanged {
                role: self.role,
                term: self.term,
                leader: self.leader_id,
            });
        }
    }
}
