//! Outgoing messages: sent at once, or held until the writes they reveal are
//! durable.

use super::*;

/// Messages held back waiting for persists (beyond this the oldest is dropped).
const HELD_MSGS_MAX: usize = 65_536;

impl Engine {
    /// Queues a message. Anything carrying our term waits for the term to be
    /// durable even if the caller did not ask for it (a single-voter leader
    /// elects itself before its term is on disk).
    pub(super) fn send(&mut self, to: NodeId, body: MessageBody, needs_durable: bool) {
        let msg = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.emit(msg, needs_durable || !self.hs_durable());
    }

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
            self.imm.push(Action::Send { msg });
            return;
        }
        let need = if self.has_unpersisted() {
            self.persist_seq + 1
        } else {
            self.persist_seq
        };
        if need <= self.durable_seq {
            self.imm.push(Action::Send { msg });
        } else {
            if self.held.len() >= HELD_MSGS_MAX {
                // Messages may be lost anyway; keep memory bounded.
                self.held.pop_front();
            }
            self.held.push_back((need, msg));
        }
    }

    pub(super) fn report_role(&mut self) {
        let now = (self.role, self.term, self.leader);
        if now != self.last_role_report {
            self.last_role_report = now;
            self.tail.push(Action::RoleChanged {
                role: self.role,
                term: self.term,
                leader: self.leader,
            });
        }
    }
}
