//! Scripted tests, one per protocol feature and per classic trap, driven by a
//! small in-test cluster harness with exact control over delivery and persistence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use wraft_engine::*;

#[derive(Default)]
struct Host {
    applied: Vec<Entry>,
    results: Vec<(ProposalId, Result<LogIndex, ProposalError>)>,
    reads: Vec<(ReadId, Result<LogIndex, ReadError>)>,
    hints: Vec<(SnapshotReason, LogIndex)>,
    snap_sends: Vec<(NodeId, SnapshotMeta, u64)>,
    installs: Vec<SnapshotMeta>,
    compactions: Vec<LogIndex>,
    persists: Vec<PersistBatch>,
    held: Vec<u64>,
}

struct Cluster {
    engines: BTreeMap<NodeId, Engine>,
    hosts: BTreeMap<NodeId, Host>,
    queue: VecDeque<Message>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// When false, persists are held until `flush_persists`.
    auto_persist: bool,
    sent: Vec<Message>,
    /// Invariant checked after every delivered message.
    invariant: Option<fn(&Cluster)>,
}

fn cfg(id: NodeId, seed: u64) -> Config {
    Config::new(id, seed)
}

impl Cluster {
    fn new(voters: u64, extra: u64, seed: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let m = Membership::with_voters(1..=voters);
        let mut inits = BTreeMap::new();
        for id in 1..=voters + extra {
            let membership = if id <= voters {
                m.clone()
            } else {
                Membership::default()
            };
            inits.insert(
                id,
                InitialState {
                    snapshot: SnapshotMeta {
                        index: 0,
                        term: 0,
                        membership,
                    },
                    ..Default::default()
                },
            );
        }
        Self::from_states(inits, seed, tweak)
    }

    fn from_states(
        inits: BTreeMap<NodeId, InitialState>,
        seed: u64,
        tweak: impl Fn(&mut Config),
    ) -> Cluster {
        let mut engines = BTreeMap::new();
        let mut hosts = BTreeMap::new();
        for (id, init) in inits {
            let mut c = cfg(id, seed);
            tweak(&mut c);
            engines.insert(id, Engine::new(c, init).expect("valid engine"));
            hosts.insert(id, Host::default());
        }
        Cluster {
            engines,
            hosts,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            auto_persist: true,
            sent: Vec::new(),
            invariant: None,
        }
    }

    fn e(&self, id: NodeId) -> &Engine {
        &self.engines[&id]
    }

    fn h(&mut self, id: NodeId) -> &mut Host {
        self.hosts.get_mut(&id).expect("host")
    }

    fn step(&mut self, id: NodeId, ev: Event) {
        self.engines
            .get_mut(&id)
            .expect("node")
            .step(ev)
            .expect("host event accepted");
        self.collect(id);
    }

    fn collect(&mut self, id: NodeId) {
        let mut out = Vec::new();
        self.engines
            .get_mut(&id)
            .expect("node")
            .poll_actions(&mut out);
        let mut persisted = None;
        for a in out {
            let h = self.hosts.get_mut(&id).expect("host");
            match a {
                Action::Send { msg } => {
                    self.sent.push(msg.clone());
                    self.queue.push_back(msg);
                }
                Action::Persist(b) => {
                    if self.auto_persist {
                        persisted = Some(b.seq);
                    } else {
                        h.held.push(b.seq);
                    }
                    h.persists.push(b);
                }
                Action::Apply { entries } => h.applied.extend(entries),
                Action::ProposalResult { id, result } => h.results.push((id, result)),
                Action::ReadReady { id, index } => h.reads.push((id, Ok(index))),
                Action::ReadFailed { id, error } => h.reads.push((id, Err(error))),
                Action::SendSnapshot { to, meta, offset } => h.snap_sends.push((to, meta, offset)),
                Action::InstallSnapshot { meta } => h.installs.push(meta),
                Action::SnapshotHint {
                    reason,
                    applied_index,
                } => h.hints.push((reason, applied_index)),
                Action::CompactLog { up_to } => h.compactions.push(up_to),
                Action::RoleChanged { .. } | Action::MembershipChanged { .. } => {}
            }
        }
        if let Some(seq) = persisted {
            self.step(id, Event::Persisted { seq });
        }
    }

    fn flush_persists(&mut self, id: NodeId) {
        let held = std::mem::take(&mut self.h(id).held);
        if let Some(&seq) = held.last() {
            self.step(id, Event::Persisted { seq });
        }
    }

    /// Delivers queued messages (and whatever they cause) until the network is quiet.
    fn deliver_all(&mut self) {
        let mut budget = 1_000_000;
        while let Some(m) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "message storm");
            if self.cut.contains(&(m.from, m.to)) || !self.engines.contains_key(&m.to) {
                continue;
            }
            self.step(m.to, Event::Message(m));
            if let Some(check) = self.invariant {
                check(self);
            }
        }
    }

    fn tick_all(&mut self, n: usize) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.engines.keys().copied().collect();
            for id in ids {
                self.step(id, Event::Tick);
            }
            self.deliver_all();
        }
    }

    fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.engines.keys().copied().collect();
        for o in ids {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn leader(&self) -> Option<NodeId> {
        self.engines
            .values()
            .filter(|e| e.role() == Role::Leader)
            .max_by_key(|e| e.term())
            .map(|e| e.id())
    }

    fn elect(&mut self) -> NodeId {
        for _ in 0..200 {
            self.tick_all(1);
            if let Some(l) = self.leader() {
                // Let the no-op commit.
                self.tick_all(2);
                return self.leader().unwrap_or(l);
            }
        }
        panic!("no leader elected within 200 ticks");
    }

    fn propose(&mut self, id: NodeId, pid: ProposalId, data: &'static [u8]) {
        let kind = EntryKind::Command {
            client: None,
            timestamp_ms: 0,
            data: Bytes::from_static(data),
        };
        self.step(id, Event::Propose { id: pid, kind });
    }

    fn propose_conf(&mut self, id: NodeId, pid: ProposalId, cc: ConfChange) {
        self.step(
            id,
            Event::Propose {
                id: pid,
                kind: EntryKind::ConfChange(ConfChangeEntry::new(cc)),
            },
        );
    }

    fn result(&self, id: NodeId, pid: ProposalId) -> Option<Result<LogIndex, ProposalError>> {
        self.hosts[&id]
            .results
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, r)| r.clone())
    }
}

fn cmd(index: LogIndex, term: Term) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Command {
            client: None,
            timestamp_ms: 0,
            data: Bytes::from_static(b"x"),
        },
    }
}

// ----- elections ------------------------------------------------------------

#[test]
fn leader_appends_noop_on_election_and_commits_it() {
    let mut c = Cluster::new(3, 0, 1, |_| {});
    let l = c.elect();
    let e = c.e(l);
    let last = e.log_entry(e.last_index()).expect("entry");
    assert_eq!(last.kind, EntryKind::Noop);
    assert_eq!(last.term, e.term());
    assert_eq!(e.commit_index(), e.last_index());
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_disrupting_the_cluster_on_return() {
    let mut c = Cluster::new(3, 0, 2, |_| {});
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    let term = c.e(l).term();
    c.isolate(f);
    c.tick_all(100);
    assert_eq!(
        c.e(f).term(),
        term,
        "pre-vote must not increase the isolated node's term"
    );
    assert!(c.e(f).stats().pre_votes_started > 0);
    c.heal();
    c.tick_all(30);
    assert_eq!(
        c.leader(),
        Some(l),
        "the healthy leader keeps its leadership"
    );
    assert_eq!(c.e(l).term(), term);
}

#[test]
fn without_pre_vote_a_returning_node_does_disrupt() {
    // Control for the test above: proves the scenario is meaningful.
    let mut c = Cluster::new(3, 0, 2, |c| c.pre_vote = false);
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    let term = c.e(l).term();
    c.isolate(f);
    c.tick_all(100);
    assert!(c.e(f).term() > term);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut c = Cluster::new(3, 0, 3, |_| {});
    let l = c.elect();
    c.isolate(l);
    c.tick_all(25);
    assert_ne!(c.e(l).role(), Role::Leader);
    assert!(c.e(l).stats().check_quorum_step_downs > 0);
    let others: Vec<NodeId> = (1..=3).filter(|i| *i != l).collect();
    assert!(
        others.iter().any(|i| c.e(*i).role() == Role::Leader),
        "the majority side elects a new leader"
    );
}

// ----- replication ----------------------------------------------------------

#[test]
fn proposals_fed_before_one_poll_share_one_persist_and_one_append_per_follower() {
    let mut c = Cluster::new(3, 0, 4, |_| {});
    let l = c.elect();
    let persists_before = c.hosts[&l].persists.len();
    let sent_before = c.sent.len();
    let e = c.engines.get_mut(&l).expect("leader");
    for i in 0..100 {
        let kind = EntryKind::Command {
            client: None,
            timestamp_ms: 0,
            data: Bytes::from_static(b"p"),
        };
        e.step(Event::Propose { id: i, kind }).expect("ok");
    }
    c.collect(l);
    let new_persists = &c.hosts[&l].persists[persists_before..];
    assert_eq!(new_persists.len(), 1);
    assert_eq!(new_persists[0].entries.len(), 100);
    let appends = c.sent[sent_before..]
        .iter()
        .filter(|m| matches!(m.body, MessageBody::AppendEntries { .. }))
        .count();
    assert_eq!(appends, 2, "one append per follower");
    c.deliver_all();
    assert_eq!(
        c.hosts[&l]
            .results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .count(),
        100
    );
}

#[test]
fn pipelining_keeps_several_appends_in_flight_up_to_the_window() {
    let mut c = Cluster::new(3, 0, 5, |c| c.inflight_append_msgs_max = 4);
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    let before = c.sent.len();
    for i in 0..10 {
        c.propose(l, i, b"p"); // one poll per proposal: one append each, no acks yet
    }
    let to_f = c.sent[before..]
        .iter()
        .filter(|m| m.to == f && matches!(m.body, MessageBody::AppendEntries { .. }))
        .count();
    assert_eq!(
        to_f, 4,
        "exactly the in-flight window is used before any ack (not stop-and-wait)"
    );
    c.deliver_all();
    c.tick_all(3);
    assert_eq!(
        c.e(f).last_index(),
        c.e(l).last_index(),
        "acks reopen the window and the rest flows"
    );
}

#[test]
fn append_entries_respect_entry_and_byte_caps() {
    let mut c = Cluster::new(3, 0, 6, |c| {
        c.append_entries_max = 3;
        c.append_bytes_max = 200;
    });
    let l = c.elect();
    let before = c.sent.len();
    let e = c.engines.get_mut(&l).expect("leader");
    for i in 0..10 {
        let kind = EntryKind::Command {
            client: None,
            timestamp_ms: 0,
            data: Bytes::from_static(&[0u8; 10]),
        };
        e.step(Event::Propose { id: i, kind }).expect("ok");
    }
    let kind = EntryKind::Command {
        client: None,
        timestamp_ms: 0,
        data: Bytes::from(vec![0u8; 1000]),
    };
    e.step(Event::Propose { id: 99, kind }).expect("ok");
    c.collect(l);
    c.deliver_all();
    for m in &c.sent[before..] {
        if let MessageBody::AppendEntries { entries, .. } = &m.body {
            assert!(entries.len() <= 3, "entry cap");
            let bytes: usize = entries.iter().map(|e| e.kind.approx_bytes()).sum();
            assert!(
                entries.len() == 1 || bytes <= 200,
                "byte cap (a single oversize entry still goes alone)"
            );
        }
    }
    let f = (1..=3).find(|i| *i != l).expect("follower");
    assert_eq!(c.e(f).last_index(), c.e(l).last_index());
}

#[test]
fn fast_backoff_skips_a_whole_conflicting_term_per_round_trip() {
    // Node 1 holds 200 stale entries of term 1 at indexes 2..=201; nodes 2 and 3
    // agree on index 1 only and will elect a leader with a different term.
    let voters = Membership::with_voters([1, 2, 3]);
    let snap = SnapshotMeta {
        index: 0,
        term: 0,
        membership: voters,
    };
    let mut inits = BTreeMap::new();
    let mut stale = vec![Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Noop,
    }];
    stale.extend((2..=201).map(|i| cmd(i, 1)));
    inits.insert(
        1,
        InitialState {
            hard_state: HardState {
                term: 1,
                vote: None,
                commit: 1,
            },
            snapshot: snap.clone(),
            entries: stale,
        },
    );
    for id in [2, 3] {
        inits.insert(
            id,
            InitialState {
                hard_state: HardState {
                    term: 2,
                    vote: None,
                    commit: 1,
                },
                snapshot: snap.clone(),
                entries: vec![
                    Entry {
                        index: 1,
                        term: 1,
                        kind: EntryKind::Noop,
                    },
                    cmd(2, 2),
                ],
            },
        );
    }
    let mut c = Cluster::from_states(inits, 7, |_| {});
    c.isolate(1);
    let l = c.elect();
    assert_ne!(l, 1);
    c.heal();
    c.tick_all(5);
    let rejections = c
        .sent
        .iter()
        .filter(|m| {
            m.from == 1
                && matches!(
                    m.body,
                    MessageBody::AppendEntriesResponse { success: false, .. }
                )
        })
        .count();
    assert!(
        rejections <= 3,
        "conflict resolved in {rejections} rejections, expected a term-skip, not 200"
    );
    assert_eq!(c.e(1).log_term(2), c.e(l).log_term(2));
    assert_eq!(c.e(1).last_index(), c.e(l).last_index());
}

#[test]
fn leader_counts_itself_only_after_its_own_persist() {
    // Single voter: nothing commits until the host reports the write durable.
    let mut c = Cluster::new(1, 0, 8, |_| {});
    c.auto_persist = false;
    c.tick_all(25);
    assert_eq!(c.e(1).role(), Role::Leader);
    assert_eq!(c.e(1).commit_index(), 0);
    c.flush_persists(1);
    assert_eq!(c.e(1).commit_index(), 1);
}

#[test]
fn acks_are_held_until_the_persist_they_depend_on_is_reported() {
    let mut c = Cluster::new(3, 0, 9, |_| {});
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    c.propose(l, 1, b"v");
    let m = c.queue.iter().find(|m| m.to == f).cloned().expect("append");
    c.queue.clear();
    let e = c.engines.get_mut(&f).expect("f");
    e.step(Event::Message(m)).expect("ok");
    let mut out = Vec::new();
    e.poll_actions(&mut out);
    let seq = out
        .iter()
        .find_map(|a| {
            if let Action::Persist(b) = a {
                Some(b.seq)
            } else {
                None
            }
        })
        .expect("persist");
    assert!(
        !out.iter().any(|a| matches!(a, Action::Send { .. })),
        "no ack may leave before the entries are durable: {out:?}"
    );
    out.clear();
    e.step(Event::Persisted { seq }).expect("ok");
    e.poll_actions(&mut out);
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Send {
            msg: Message {
                body: MessageBody::AppendEntriesResponse { success: true, .. },
                ..
            }
        }
    )));
}

#[test]
fn an_ack_from_an_older_term_is_dropped_if_a_new_leader_truncated_meanwhile() {
    let mut c = Cluster::new(3, 0, 31, |_| {});
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    c.propose(l, 1, b"v");
    let m = c.queue.iter().find(|m| m.to == f).cloned().expect("append");
    c.queue.clear();
    let e = c.engines.get_mut(&f).expect("f");
    e.step(Event::Message(m)).expect("ok");
    let mut out = Vec::new();
    e.poll_actions(&mut out);
    let seq = out
        .iter()
        .find_map(|a| {
            if let Action::Persist(b) = a {
                Some(b.seq)
            } else {
                None
            }
        })
        .expect("p");
    // Before the write completes, a newer leader shows up.
    let term = e.term() + 1;
    let hb = Message {
        from: 99,
        to: f,
        term,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_ctx: 1,
        },
    };
    e.step(Event::Message(hb)).expect("ok");
    out.clear();
    e.poll_actions(&mut out);
    let seq2 = out
        .iter()
        .find_map(|a| {
            if let Action::Persist(b) = a {
                Some(b.seq)
            } else {
                None
            }
        })
        .expect("p2");
    out.clear();
    e.step(Event::Persisted { seq: seq.max(seq2) }).expect("ok");
    e.poll_actions(&mut out);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::Send { msg } if msg.to == l)),
        "the stale ack to the old leader is dropped: {out:?}"
    );
}

// ----- commit rule -----------------------------------------------------------

#[test]
fn old_term_entry_on_a_majority_is_not_committed_until_a_current_term_entry_is() {
    // Raft §5.4.2 / Figure 8. Node 1 has (2, term 1) which nobody else has; it
    // becomes leader of a later term and replicates with one entry per append.
    let voters = Membership::with_voters([1, 2, 3]);
    let snap = SnapshotMeta {
        index: 0,
        term: 0,
        membership: voters,
    };
    for seed in 0..200 {
        let mut inits = BTreeMap::new();
        inits.insert(
            1,
            InitialState {
                hard_state: HardState {
                    term: 1,
                    vote: None,
                    commit: 1,
                },
                snapshot: snap.clone(),
                entries: vec![
                    Entry {
                        index: 1,
                        term: 1,
                        kind: EntryKind::Noop,
                    },
                    cmd(2, 1),
                ],
            },
        );
        for id in [2, 3] {
            inits.insert(
                id,
                InitialState {
                    hard_state: HardState {
                        term: 1,
                        vote: None,
                        commit: 1,
                    },
                    snapshot: snap.clone(),
                    entries: vec![Entry {
                        index: 1,
                        term: 1,
                        kind: EntryKind::Noop,
                    }],
                },
            );
        }
        let mut c = Cluster::from_states(inits, seed, |c| c.append_entries_max = 1);
        // Index 2 may only ever commit together with the leader's own-term no-op at 3.
        c.invariant = Some(|c: &Cluster| {
            let e = c.e(1);
            assert!(
                e.role() != Role::Leader || e.commit_index() != 2,
                "leader committed an old-term entry by counting"
            );
        });
        // Tick without delivering appends' acks until node 1 leads.
        for _ in 0..60 {
            c.tick_all(1);
            if c.leader().is_some() {
                break;
            }
        }
        if c.leader() != Some(1) {
            continue; // this seed elected someone else; try another
        }
        // With one entry per append, the follower acks index 2 (term 1) before
        // index 3; the invariant above checks the moment in between.
        c.tick_all(5);
        assert!(
            c.e(1).commit_index() >= 3,
            "the no-op commits and carries index 2 with it"
        );
        return;
    }
    panic!("no seed elected node 1");
}

// ----- proposals ---------------------------------------------------------------

#[test]
fn follower_answers_not_leader_with_hint_and_full_queue_answers_busy() {
    let mut c = Cluster::new(3, 0, 10, |c| c.pending_proposals_max = 2);
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    c.propose(f, 1, b"x");
    assert_eq!(
        c.result(f, 1),
        Some(Err(ProposalError::NotLeader {
            leader_hint: Some(l)
        }))
    );
    c.isolate(l); // nothing commits, so pending proposals pile up
    c.propose(l, 2, b"a");
    c.propose(l, 3, b"b");
    c.propose(l, 4, b"c");
    assert!(matches!(
        c.result(l, 4),
        Some(Err(ProposalError::Busy { pending: 2, max: 2 }))
    ));
    let big = EntryKind::Command {
        client: None,
        timestamp_ms: 0,
        data: Bytes::from(vec![0; 9 << 20]),
    };
    c.heal();
    c.tick_all(3);
    c.step(l, Event::Propose { id: 5, kind: big });
    assert!(matches!(
        c.result(l, 5),
        Some(Err(ProposalError::TooLarge { .. }))
    ));
}

#[test]
fn deposed_leaders_pending_proposal_is_never_reported_committed_when_another_entry_took_its_index()
{
    let mut c = Cluster::new(3, 0, 11, |_| {});
    let old = c.elect();
    c.isolate(old);
    c.propose(old, 77, b"lost"); // appended at the old leader only
    let idx = c.e(old).last_index();
    // The majority elects a new leader and commits something else at that index.
    for _ in 0..100 {
        c.tick_all(1);
        if c.leader().is_some_and(|l| l != old) {
            break;
        }
    }
    let new = c.leader().filter(|l| *l != old).expect("new leader");
    c.propose(new, 88, b"winner");
    c.tick_all(3);
    assert!(c.e(new).commit_index() >= idx);
    assert_eq!(
        c.result(old, 77),
        None,
        "unknown until the index is decided"
    );
    c.heal();
    c.tick_all(20);
    assert_eq!(
        c.result(old, 77),
        Some(Err(ProposalError::Superseded { index: idx }))
    );
    assert!(
        c.hosts[&old].applied.iter().all(
            |e| !matches!(&e.kind, EntryKind::Command { data, .. } if data.as_ref() == b"lost")
        )
    );
}

// ----- membership --------------------------------------------------------------

#[test]
fn only_one_membership_change_may_be_in_flight() {
    let mut c = Cluster::new(3, 2, 12, |_| {});
    let l = c.elect();
    c.isolate(l); // keep the first change uncommitted
    c.propose_conf(l, 1, ConfChange::AddLearner(4));
    c.propose_conf(l, 2, ConfChange::AddLearner(5));
    assert!(matches!(
        c.result(l, 2),
        Some(Err(ProposalError::ConfChange(
            ConfChangeError::ChangeInFlight(_)
        )))
    ));
    assert_eq!(c.e(l).uncommitted_conf_changes(), 1);
}

#[test]
fn learner_replicates_never_votes_its_acks_count_for_its_progress_and_it_is_promoted_once_caught_up()
 {
    let mut c = Cluster::new(3, 1, 13, |_| {});
    let l = c.elect();
    for i in 0..20 {
        c.propose(l, 100 + i, b"data");
    }
    c.propose_conf(l, 1, ConfChange::AddLearner(4));
    c.tick_all(5);
    assert!(c.e(4).membership().learners.contains(&4));
    assert_eq!(
        c.e(4).last_index(),
        c.e(l).last_index(),
        "learner receives the full log"
    );
    assert_eq!(
        c.e(l).peer_match_index(4),
        Some(c.e(l).last_index()),
        "learner acks advance its match index"
    );
    // A learner never campaigns.
    c.isolate(4);
    c.tick_all(100);
    assert_eq!(
        c.e(4).stats().pre_votes_started + c.e(4).stats().elections_started,
        0
    );
    // Promotion is refused while it lags, accepted once caught up.
    c.heal();
    c.isolate(4);
    c.propose(l, 500, b"more");
    c.tick_all(2);
    c.propose_conf(l, 2, ConfChange::PromoteLearner(4));
    assert!(matches!(
        c.result(l, 2),
        Some(Err(ProposalError::ConfChange(
            ConfChangeError::LearnerNotCaughtUp { id: 4, .. }
        )))
    ));
    c.heal();
    c.tick_all(5);
    c.propose_conf(l, 3, ConfChange::PromoteLearner(4));
    c.tick_all(5);
    assert!(c.result(l, 3).is_some_and(|r| r.is_ok()));
    assert!(c.e(l).membership().voters.contains(&4));
    // Learner's log commits count now: the 4-voter quorum is 3.
    assert_eq!(c.e(l).membership().quorum(), 3);
}

#[test]
fn removing_the_leader_itself_commits_then_it_steps_down_and_never_campaigns() {
    let mut c = Cluster::new(3, 0, 14, |_| {});
    let l = c.elect();
    let elections = c.e(l).stats().elections_started;
    c.propose_conf(l, 1, ConfChange::RemoveNode(l));
    c.tick_all(3);
    assert!(c.result(l, 1).is_some_and(|r| r.is_ok()));
    assert_ne!(c.e(l).role(), Role::Leader);
    c.tick_all(60);
    let nl = c.leader().expect("remaining voters elect a leader");
    assert_ne!(nl, l);
    assert_eq!(c.e(l).stats().elections_started, elections);
    assert!(!c.e(nl).membership().contains(l));
}

// ----- leadership transfer -----------------------------------------------------

#[test]
fn leadership_transfer_completes_with_pre_vote_enabled() {
    let mut c = Cluster::new(3, 0, 15, |c| assert!(c.pre_vote));
    let l = c.elect();
    let t = (1..=3).find(|i| *i != l).expect("target");
    c.step(l, Event::TransferLeadership { to: t });
    c.deliver_all();
    assert_eq!(
        c.leader(),
        Some(t),
        "target wins despite the other voters' leader stickiness"
    );
    c.propose(l, 1, b"x");
    assert_eq!(
        c.result(l, 1),
        Some(Err(ProposalError::NotLeader {
            leader_hint: Some(t)
        }))
    );
}

#[test]
fn proposals_are_refused_while_a_transfer_is_in_progress() {
    let mut c = Cluster::new(3, 0, 16, |_| {});
    let l = c.elect();
    let t = (1..=3).find(|i| *i != l).expect("target");
    c.isolate(t); // the target cannot catch up / receive TimeoutNow
    c.step(l, Event::TransferLeadership { to: t });
    c.propose(l, 1, b"x");
    assert_eq!(c.result(l, 1), Some(Err(ProposalError::TransferInProgress)));
    c.tick_all(25); // transfer times out
    c.heal();
    c.tick_all(1);
    c.propose(l, 2, b"y");
    c.tick_all(2);
    assert!(c.result(l, 2).is_some_and(|r| r.is_ok()));
}

// ----- reads --------------------------------------------------------------------

#[test]
fn read_index_waits_for_a_quorum_round_and_the_commit_index() {
    let mut c = Cluster::new(3, 0, 17, |_| {});
    let l = c.elect();
    c.propose(l, 1, b"w");
    c.deliver_all();
    let commit = c.e(l).commit_index();
    c.isolate(l);
    c.step(l, Event::Read { id: 9 });
    c.deliver_all();
    assert!(c.hosts[&l].reads.is_empty(), "no quorum, no read");
    c.heal();
    c.tick_all(1);
    assert_eq!(c.hosts[&l].reads, vec![(9, Ok(commit))]);
    let f = (1..=3).find(|i| *i != l).expect("follower");
    c.step(f, Event::Read { id: 10 });
    assert!(matches!(
        c.hosts[&f].reads[0],
        (10, Err(ReadError::NotLeader { .. }))
    ));
}

#[test]
fn lease_read_is_served_locally_and_revoked_by_a_transfer() {
    let mut c = Cluster::new(3, 0, 18, |c| c.lease_reads = true);
    let l = c.elect();
    c.tick_all(2);
    let t = (1..=3).find(|i| *i != l).expect("target");
    c.isolate(l); // no round trip possible: only a lease can answer
    c.step(l, Event::Read { id: 1 });
    assert_eq!(c.hosts[&l].reads.len(), 1, "served from the lease");
    assert_eq!(c.e(l).stats().lease_reads, 1);
    c.step(l, Event::TransferLeadership { to: t });
    c.step(l, Event::Read { id: 2 });
    assert_eq!(c.hosts[&l].reads.len(), 1, "lease revoked by the transfer");
    // And the lease expires by itself after lease_ticks without acks.
    let mut c = Cluster::new(3, 0, 18, |c| c.lease_reads = true);
    let l = c.elect();
    c.isolate(l);
    c.tick_all(8);
    c.step(l, Event::Read { id: 3 });
    assert!(c.hosts[&l].reads.is_empty(), "expired lease");
}

#[test]
fn config_rejects_a_lease_longer_than_the_election_timeout_allows() {
    let mut cfg = Config::new(1, 0);
    assert!(cfg.validate().is_ok());
    cfg.lease_reads = true;
    cfg.lease_ticks = 9;
    let err = cfg.validate().expect_err("unsafe lease");
    assert_eq!(err.field, "lease_ticks");
    assert!(
        err.to_string().contains("election_timeout_min_ticks"),
        "{err}"
    );
    let mut cfg = Config::new(1, 0);
    cfg.inflight_append_msgs_max = 0;
    assert_eq!(
        cfg.validate().expect_err("zero window").field,
        "inflight_append_msgs_max"
    );
}

// ----- snapshots ------------------------------------------------------------------

fn apply_all(c: &mut Cluster, l: NodeId, n: u64) {
    for i in 0..n {
        c.propose(l, 10_000 + i, b"s");
    }
    c.tick_all(3);
}

#[test]
fn snapshot_hints_once_per_band_coalesce_in_flight_and_rehint_after_failure() {
    let mut c = Cluster::new(1, 0, 19, |c| {
        c.snapshot_hint_threshold_entries = 10;
        c.log_entries_max = 0;
    });
    c.tick_all(25);
    apply_all(&mut c, 1, 9); // applied = 10 (no-op + 9)
    assert_eq!(c.hosts[&1].hints.len(), 1);
    apply_all(&mut c, 1, 15); // crosses band 2 while the first is in flight: coalesced
    assert_eq!(c.hosts[&1].hints.len(), 1);
    c.step(1, Event::SnapshotFailed);
    apply_all(&mut c, 1, 2); // still band 2: no new hint
    assert_eq!(c.hosts[&1].hints.len(), 1);
    apply_all(&mut c, 1, 5); // band 3 crossed after the failure: re-hint
    assert_eq!(c.hosts[&1].hints.len(), 2);
    let at = c.e(1).applied_index();
    let meta = c.e(1).snapshot_meta_at(at).expect("meta");
    c.step(1, Event::SnapshotCreated { meta });
    assert_eq!(c.e(1).snapshot().index, at, "the floor moves");
    apply_all(&mut c, 1, 9);
    assert_eq!(c.hosts[&1].hints.len(), 2, "bands restart at the new floor");
    apply_all(&mut c, 1, 1);
    assert_eq!(c.hosts[&1].hints.len(), 3);
}

#[test]
fn live_log_guardrail_hints_when_entries_above_the_floor_exceed_max_log_entries() {
    let mut c = Cluster::new(3, 0, 20, |c| {
        c.snapshot_hint_threshold_entries = 0;
        c.log_entries_max = 10;
    });
    let l = c.elect();
    apply_all(&mut c, l, 12);
    assert_eq!(
        c.hosts[&l].hints.first().map(|h| h.0),
        Some(SnapshotReason::LogGuardrail)
    );
}

/// Plays the host side of a snapshot transfer from `l` to `f` (all bytes at once).
fn complete_transfer(c: &mut Cluster, l: NodeId, f: NodeId, meta: SnapshotMeta) {
    let term = c.e(l).term();
    c.step(
        f,
        Event::SnapshotReceived {
            from: l,
            term,
            meta: meta.clone(),
        },
    );
    assert_eq!(c.hosts[&f].installs.last(), Some(&meta));
    c.step(f, Event::SnapshotInstalled { meta });
    c.deliver_all();
}

#[test]
fn follower_behind_snapshot_floor_gets_install_snapshot_then_resumes_from_the_log() {
    let mut c = Cluster::new(3, 0, 21, |c| {
        c.log_retention_margin_entries = 2;
        c.snapshot_hint_threshold_entries = 0;
    });
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    c.isolate(f);
    apply_all(&mut c, l, 30);
    let at = c.e(l).applied_index();
    let meta = c.e(l).snapshot_meta_at(at).expect("meta");
    c.step(l, Event::SnapshotCreated { meta: meta.clone() });
    // f is far behind: compaction goes to snapshot - margin, not down to f's match.
    assert_eq!(c.hosts[&l].compactions.last(), Some(&(at - 2)));
    c.heal();
    c.tick_all(2);
    let (to, sent, offset) = c.hosts[&l]
        .snap_sends
        .last()
        .cloned()
        .expect("SendSnapshot");
    assert_eq!((to, offset), (f, 0));
    assert_eq!(sent, meta);
    assert_eq!(
        sent.membership,
        *c.e(l).membership(),
        "membership travels with the snapshot"
    );
    complete_transfer(&mut c, l, f, meta);
    c.propose(l, 1, b"after");
    c.tick_all(3);
    assert_eq!(c.e(f).log_floor(), at);
    assert_eq!(c.e(f).last_index(), c.e(l).last_index());
    assert_eq!(c.e(f).commit_index(), c.e(l).commit_index());
}

#[test]
fn follower_installing_a_slow_snapshot_stays_live_and_fires_no_election() {
    let (mut c, l, f, meta) = snapshot_ahead_of_a_cut_off_follower(22);
    c.heal();
    c.tick_all(2);
    let term = c.e(l).term();
    c.step(
        f,
        Event::SnapshotReceived {
            from: l,
            term,
            meta: meta.clone(),
        },
    );
    assert!(c.e(f).is_installing_snapshot());
    c.tick_all(100); // install takes 100 ticks ≫ election timeout
    assert_eq!(c.e(f).term(), term, "no election while installing");
    assert_eq!(c.leader(), Some(l));
    assert_eq!(c.e(f).stats().pre_votes_started, 0);
    c.step(f, Event::SnapshotInstalled { meta });
    c.tick_all(2);
    assert_eq!(c.e(f).last_index(), c.e(l).last_index());
}

#[test]
fn interrupted_snapshot_transfer_is_resumed_from_the_durable_offset() {
    let (mut c, l, f, meta) =
        snapshot_ahead_of_a_cut_off_follower_with(23, |c| c.snapshot_transfer_timeout_ticks = 10);
    c.heal();
    c.tick_all(6); // lost appends are retransmitted as a probe, which finds the floor
    assert_eq!(c.hosts[&l].snap_sends.len(), 1);
    c.step(
        l,
        Event::SnapshotProgress {
            from: f,
            index: meta.index,
            durable_offset: 4096,
        },
    );
    c.step(
        l,
        Event::SnapshotTransferFailed {
            to: f,
            index: meta.index,
        },
    );
    c.tick_all(1);
    assert_eq!(
        c.hosts[&l].snap_sends.last().map(|s| s.2),
        Some(4096),
        "resume, not restart"
    );
    // A stalled transfer (no progress reports) is re-requested after the timeout.
    let n = c.hosts[&l].snap_sends.len();
    c.tick_all(11);
    assert!(c.hosts[&l].snap_sends.len() > n);
    complete_transfer(&mut c, l, f, meta);
    c.tick_all(2);
    assert_eq!(c.e(f).last_index(), c.e(l).last_index());
}

#[test]
fn retention_margin_keeps_entries_a_slightly_lagging_follower_still_needs() {
    let mut c = Cluster::new(3, 0, 24, |c| {
        c.log_retention_margin_entries = 100;
        c.snapshot_hint_threshold_entries = 0;
    });
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    let f_match = c.e(l).peer_match_index(f).expect("tracked");
    c.isolate(f);
    apply_all(&mut c, l, 30);
    let meta = c
        .e(l)
        .snapshot_meta_at(c.e(l).applied_index())
        .expect("meta");
    c.step(l, Event::SnapshotCreated { meta });
    assert_eq!(
        c.hosts[&l].compactions.last(),
        Some(&f_match),
        "compaction stops at what the follower needs"
    );
    c.heal();
    c.tick_all(3);
    assert!(
        c.hosts[&l].snap_sends.is_empty(),
        "caught up from the log, no snapshot"
    );
    assert_eq!(c.e(f).last_index(), c.e(l).last_index());
}

// ----- classic traps ------------------------------------------------------------

#[test]
fn a_follower_down_for_a_long_time_does_not_stall_the_leader() {
    let mut c = Cluster::new(3, 0, 25, |c| c.inflight_append_msgs_max = 8);
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    c.isolate(f);
    let before = c.sent.len();
    for round in 0..50 {
        for i in 0..20 {
            c.propose(l, round * 100 + i, b"load");
        }
        c.tick_all(1);
    }
    assert_eq!(
        c.e(l).commit_index(),
        c.e(l).last_index(),
        "the healthy majority keeps committing"
    );
    let to_dead = c.sent[before..]
        .iter()
        .filter(|m| m.to == f && matches!(m.body, MessageBody::AppendEntries { .. }))
        .count();
    assert!(
        to_dead <= 60,
        "appends to the dead follower are bounded (probe mode), got {to_dead}"
    );
    c.heal();
    c.tick_all(10);
    assert_eq!(
        c.e(f).last_index(),
        c.e(l).last_index(),
        "and it catches up on return"
    );
}

#[test]
fn restart_recovers_from_persisted_state_and_replays_committed_entries() {
    let mut c = Cluster::new(3, 0, 26, |_| {});
    let l = c.elect();
    apply_all(&mut c, l, 5);
    // Rebuild node l from everything it persisted.
    let mut entries: BTreeMap<LogIndex, Entry> = BTreeMap::new();
    let mut hs = HardState::default();
    for b in &c.hosts[&l].persists {
        if let Some(t) = b.truncate_from {
            entries.split_off(&t);
        }
        for e in &b.entries {
            entries.insert(e.index, e.clone());
        }
        if let Some(h) = b.hard_state {
            hs = h;
        }
    }
    let init = InitialState {
        hard_state: hs,
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            membership: Membership::with_voters([1, 2, 3]),
        },
        entries: entries.into_values().collect(),
    };
    let mut e = Engine::new(Config::new(l, 99), init).expect("restart");
    assert_eq!(e.term(), c.e(l).term());
    let mut out = Vec::new();
    e.poll_actions(&mut out);
    let replayed: usize = out
        .iter()
        .map(|a| {
            if let Action::Apply { entries } = a {
                entries.len()
            } else {
                0
            }
        })
        .sum();
    assert_eq!(replayed as u64, hs.commit);
}

#[test]
fn recovered_log_with_a_gap_is_rejected_with_a_clear_error() {
    let init = InitialState {
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            membership: Membership::with_voters([1]),
        },
        entries: vec![cmd(1, 1), cmd(3, 1)],
        ..Default::default()
    };
    let err = Engine::new(Config::new(1, 0), init).expect_err("gap");
    assert_eq!(
        err,
        EngineError::NonContiguousLog {
            expected: 2,
            found: 3
        }
    );
}

#[test]
fn messages_survive_a_postcard_roundtrip() {
    let m = Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_log_index: 4,
            prev_log_term: 2,
            entries: vec![
                cmd(5, 3),
                Entry {
                    index: 6,
                    term: 3,
                    kind: EntryKind::ConfChange(ConfChangeEntry::new(ConfChange::AddLearner(9))),
                },
            ],
            leader_commit: 4,
        },
    };
    let bytes = postcard::to_allocvec(&m).expect("encode");
    let back: Message = postcard::from_bytes(&bytes).expect("decode");
    assert_eq!(back, m);
}

#[test]
fn lease_holder_is_never_overlapped_by_a_new_leader_that_commits() {
    // L keeps its lease through F's acks while C, cut off from L, campaigns.
    // Then F's answers stop reaching L, so L never learns of a newer term.
    // Leader stickiness must keep F from electing C while L's lease may be valid.
    let mut meaningful = 0;
    for seed in 0..20 {
        let mut c = Cluster::new(3, 0, 300 + seed, |c| c.lease_reads = true);
        let l = c.elect();
        let mut others = (1..=3).filter(|i| *i != l);
        let (cand, f) = (others.next().expect("c"), others.next().expect("f"));
        c.cut.insert((l, cand));
        c.cut.insert((cand, l));
        let mut f_cut_from_l = false;
        let mut new_leader_commit_tick = None;
        let mut last_lease_read_tick = None;
        for tick in 0..200u64 {
            c.tick_all(1);
            if !f_cut_from_l && c.e(cand).role() != Role::Follower {
                c.cut.insert((f, l));
                f_cut_from_l = true;
            }
            let nl = c.e(cand);
            if new_leader_commit_tick.is_none()
                && nl.role() == Role::Leader
                && nl.log_term(nl.commit_index()) == Some(nl.term())
            {
                new_leader_commit_tick = Some(tick);
            }
            if c.e(l).role() == Role::Leader {
                let before = c.e(l).stats().lease_reads;
                c.step(l, Event::Read { id: tick });
                if c.e(l).stats().lease_reads > before {
                    last_lease_read_tick = Some(tick);
                }
            }
        }
        if let (Some(commit), Some(read)) = (new_leader_commit_tick, last_lease_read_tick) {
            assert!(
                read < commit,
                "seed {seed}: old leader served a lease read at tick {read}, new leader committed at {commit}"
            );
            meaningful += 1;
        }
    }
    assert!(
        meaningful > 0,
        "the scenario never produced both a lease read and a new leader"
    );
}

// ----- several events before one poll -----------------------------------------

/// The node's log store as the driver uses it (`wraft-storage`): a reset
/// compacts to the snapshot (keeping the suffix only if the store holds the
/// snapshot's entry with its term), then `truncate_from` must lie in
/// `floor + 1 ..= last + 1`, then the entries must start above the floor with
/// no gap. A batch that breaks a rule is refused, as the real store refuses it
/// (and the driver then stops the node).
#[derive(Default)]
struct DiskModel {
    floor: (LogIndex, Term),
    entries: BTreeMap<LogIndex, Term>,
}

impl DiskModel {
    fn last(&self) -> LogIndex {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.floor.0)
    }

    fn apply(&mut self, b: &PersistBatch) -> Result<(), String> {
        if let Some(m) = &b.reset_to_snapshot
            && m.index > self.floor.0
        {
            if self.entries.get(&m.index) == Some(&m.term) {
                self.entries = self.entries.split_off(&(m.index + 1));
            } else {
                self.entries.clear();
            }
            self.floor = (m.index, m.term);
        }
        if let Some(t) = b.truncate_from {
            if t <= self.floor.0 || t > self.last() + 1 {
                return Err(format!(
                    "batch {}: truncate_from {t} outside {}..={} (store floor {}, last {})",
                    b.seq,
                    self.floor.0 + 1,
                    self.last() + 1,
                    self.floor.0,
                    self.last()
                ));
            }
            self.entries.split_off(&t);
        }
        for e in &b.entries {
            if e.index <= self.floor.0 || e.index > self.last() + 1 {
                return Err(format!(
                    "batch {}: entry {} outside {}..={}",
                    b.seq,
                    e.index,
                    self.floor.0 + 1,
                    self.last() + 1
                ));
            }
            self.entries.split_off(&e.index);
            self.entries.insert(e.index, e.term);
        }
        Ok(())
    }

    fn holds(&self, index: LogIndex) -> bool {
        index <= self.floor.0 || self.entries.contains_key(&index)
    }
}

/// One follower driven by hand: events are stepped one by one, and `run`
/// plays the host (persist to the [`DiskModel`], report it durable, check
/// every acknowledgement against what the store holds) until the engine is quiet.
struct HandFollower {
    e: Engine,
    disk: DiskModel,
    acks: Vec<LogIndex>,
    installs: Vec<SnapshotMeta>,
}

impl HandFollower {
    /// Leader 3 (term 2) streams a snapshot at (`index`, `term`); the follower asks its host to
    /// install it.
    fn receive_snapshot_from_leader_3(&mut self, index: LogIndex, term: Term) -> SnapshotMeta {
        let meta = SnapshotMeta {
            index,
            term,
            membership: Membership::with_voters(1..=3),
        };
        self.step(Event::SnapshotReceived {
            from: 3,
            term: 2,
            meta: meta.clone(),
        });
        self.run().expect("install requested");
        assert_eq!(self.installs, vec![meta.clone()]);
        meta
    }

    fn new(id: NodeId, voters: u64) -> HandFollower {
        let init = InitialState {
            snapshot: SnapshotMeta {
                index: 0,
                term: 0,
                membership: Membership::with_voters(1..=voters),
            },
            ..Default::default()
        };
        Self::recovered(id, init, DiskModel::default())
    }

    /// A follower restarted from `init`, which the host read from `disk`.
    fn recovered(id: NodeId, init: InitialState, disk: DiskModel) -> HandFollower {
        HandFollower {
            e: Engine::new(cfg(id, 5), init).expect("valid engine"),
            disk,
            acks: Vec::new(),
            installs: Vec::new(),
        }
    }

    fn step(&mut self, ev: Event) {
        self.e.step(ev).expect("host event accepted");
    }

    fn append(&mut self, from: NodeId, term: Term, prev: (LogIndex, Term), entries: Vec<Entry>) {
        let to = self.e.id();
        self.step(Event::Message(Message {
            from,
            to,
            term,
            body: MessageBody::AppendEntries {
                prev_log_index: prev.0,
                prev_log_term: prev.1,
                entries,
                leader_commit: 0,
            },
        }));
    }

    fn run(&mut self) -> Result<(), String> {
        for _ in 0..100 {
            let mut out = Vec::new();
            self.e.poll_actions(&mut out);
            let mut durable = None;
            for a in &out {
                match a {
                    Action::Persist(b) => {
                        self.disk.apply(b)?;
                        durable = Some(b.seq);
                    }
                    Action::Send { msg } => {
                        if let MessageBody::AppendEntriesResponse {
                            success: true,
                            match_index,
                            ..
                        } = msg.body
                        {
                            if !self.disk.holds(match_index) {
                                return Err(format!(
                                    "acknowledged index {match_index} but the store holds {:?} above floor {:?}",
                                    self.disk.entries, self.disk.floor
                                ));
                            }
                            self.acks.push(match_index);
                        }
                    }
                    Action::InstallSnapshot { meta } => self.installs.push(meta.clone()),
                    _ => {}
                }
            }
            match durable {
                Some(seq) => self.step(Event::Persisted { seq }),
                None if out.is_empty() => return Ok(()),
                None => {}
            }
        }
        Err("the engine never went quiet".into())
    }
}

/// A 3-voter cluster (seed `seed`) that may snapshot at any applied entry: its leader applies 20
/// entries while follower `f` is cut off, then creates a snapshot at its applied index. Returns
/// the cluster, the leader, `f` (still cut off) and the snapshot.
fn snapshot_ahead_of_a_cut_off_follower(seed: u64) -> (Cluster, NodeId, NodeId, SnapshotMeta) {
    snapshot_ahead_of_a_cut_off_follower_with(seed, |_| {})
}

/// [`snapshot_ahead_of_a_cut_off_follower`] with `tweak` applied to every node's config.
fn snapshot_ahead_of_a_cut_off_follower_with(
    seed: u64,
    tweak: impl Fn(&mut Config),
) -> (Cluster, NodeId, NodeId, SnapshotMeta) {
    let mut c = Cluster::new(3, 0, seed, |c| {
        c.log_retention_margin_entries = 0;
        c.snapshot_hint_threshold_entries = 0;
        tweak(c);
    });
    let l = c.elect();
    let f = (1..=3).find(|i| *i != l).expect("follower");
    c.isolate(f);
    apply_all(&mut c, l, 20);
    let meta = c
        .e(l)
        .snapshot_meta_at(c.e(l).applied_index())
        .expect("meta");
    c.step(l, Event::SnapshotCreated { meta: meta.clone() });
    (c, l, f, meta)
}

fn cmds(indexes: std::ops::RangeInclusive<LogIndex>, term: Term) -> Vec<Entry> {
    indexes.map(|i| cmd(i, term)).collect()
}

#[test]
fn append_stepped_after_a_conflicting_snapshot_install_is_written_before_it_is_acknowledged() {
    let mut f = HandFollower::new(2, 3);
    f.append(1, 1, (0, 0), cmds(1..=5, 1));
    f.run().expect("first append");
    // A new leader (3, term 2) streams a snapshot at 3 whose term conflicts with the log.
    let meta = f.receive_snapshot_from_leader_3(3, 2);
    // Two events before one poll: the install completes, then the next append arrives.
    f.step(Event::SnapshotInstalled { meta });
    f.append(3, 2, (3, 2), cmds(4..=5, 2));
    f.run().expect("every acknowledged entry is in the store");
    assert_eq!(f.acks.last(), Some(&5));
    assert_eq!(f.disk.entries, BTreeMap::from([(4, 2), (5, 2)]));
}

#[test]
fn truncation_stepped_before_a_matching_snapshot_install_stays_above_the_new_floor() {
    let mut f = HandFollower::new(2, 3);
    f.append(1, 1, (0, 0), cmds(1..=5, 1));
    f.run().expect("first append");
    let meta = f.receive_snapshot_from_leader_3(4, 2);
    // While the install runs, the new leader's append replaces 3..=5 with
    // its own term-2 entries (so the snapshot at 4 now matches the log);
    // then the install completes, all before one poll.
    f.append(3, 2, (2, 1), cmds(3..=6, 2));
    f.step(Event::SnapshotInstalled { meta });
    f.run().expect("the store accepts every batch");
    assert_eq!(f.e.log_floor(), 4);
    assert_eq!(f.disk.floor, (4, 2));
    assert_eq!(f.disk.entries, BTreeMap::from([(5, 2), (6, 2)]));
    assert_eq!(f.acks.last(), Some(&4), "the install is acknowledged");
}

#[test]
fn truncating_entries_never_handed_to_the_host_asks_the_store_for_no_truncation() {
    let mut f = HandFollower::new(2, 3);
    f.append(1, 1, (0, 0), cmds(1..=3, 1));
    f.run().expect("first append");
    // Two appends before one poll: the second (from a newer leader) replaces
    // part of what the first brought, which the store has never seen.
    f.append(1, 1, (3, 1), cmds(4..=6, 1));
    f.append(3, 2, (4, 1), cmds(5..=6, 2));
    f.run().expect("the store accepts every batch");
    assert_eq!(
        f.disk.entries,
        BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2)])
    );
    assert_eq!(f.acks.last(), Some(&6));
}

#[test]
fn snapshot_send_requested_before_a_newer_snapshot_is_created_names_the_newer_one() {
    let (mut c, l, f, old) = snapshot_ahead_of_a_cut_off_follower(23);
    c.heal();
    c.tick_all(6);
    assert_eq!(c.hosts[&l].snap_sends.len(), 1, "f is being sent {old:?}");
    c.isolate(f);
    apply_all(&mut c, l, 10);
    let new = c
        .e(l)
        .snapshot_meta_at(c.e(l).applied_index())
        .expect("meta");
    assert!(new.index > old.index);
    // Several events before one poll: the transfer breaks, a tick re-requests
    // it, and then the host reports a newer snapshot (it may delete the old one).
    let e = c.engines.get_mut(&l).expect("leader");
    e.step(Event::SnapshotTransferFailed {
        to: f,
        index: old.index,
    })
    .expect("ok");
    e.step(Event::Tick).expect("ok");
    e.step(Event::SnapshotCreated { meta: new.clone() })
        .expect("ok");
    let mut out = Vec::new();
    e.poll_actions(&mut out);
    let sends: Vec<&SnapshotMeta> = out
        .iter()
        .filter_map(|a| match a {
            Action::SendSnapshot { meta, .. } => Some(meta),
            _ => None,
        })
        .collect();
    assert_eq!(sends, vec![&new], "only the latest snapshot is streamed");
}

#[test]
fn restart_after_an_install_whose_log_reset_was_lost_resets_the_log_before_appending() {
    // The install made the snapshot at 5 durable, then the node crashed
    // before the batch that resets the log (entries 1..=3, floor 0) was.
    let membership = Membership::with_voters(1..=3);
    let init = InitialState {
        hard_state: HardState {
            term: 2,
            vote: None,
            commit: 3,
        },
        snapshot: SnapshotMeta {
            index: 5,
            term: 2,
            membership,
        },
        entries: cmds(1..=3, 1),
    };
    let disk = DiskModel {
        floor: (0, 0),
        entries: BTreeMap::from([(1, 1), (2, 1), (3, 1)]),
    };
    let mut f = HandFollower::recovered(2, init, disk);
    f.append(3, 2, (5, 2), cmds(6..=7, 2));
    f.run().expect("the store accepts every batch");
    assert_eq!(f.disk.floor, (5, 2));
    assert_eq!(f.disk.entries, BTreeMap::from([(6, 2), (7, 2)]));
    assert_eq!(f.acks.last(), Some(&7));
}

/// `wraft recover --force-new-cluster`: a survivor of {1, 2, 3} whose log ends in an
/// uncommitted tail gets, at the next term, a configuration making it the only voter. It elects
/// itself alone and commits its whole log, tail included, with nothing truncated.
#[test]
fn a_forced_single_voter_configuration_lets_a_survivor_commit_its_whole_log_alone() {
    let forced = Entry {
        index: 4,
        term: 2,
        kind: EntryKind::ConfChange(ConfChangeEntry {
            change: ConfChange::ForceNewCluster(1),
            membership: Membership::with_voters([1]),
        }),
    };
    let init = InitialState {
        hard_state: HardState {
            term: 2,
            vote: Some(1),
            commit: 1,
        },
        snapshot: SnapshotMeta {
            index: 0,
            term: 0,
            membership: Membership::with_voters([1, 2, 3]),
        },
        entries: vec![cmd(1, 1), cmd(2, 1), cmd(3, 1), forced],
    };
    let mut c = Cluster::from_states(BTreeMap::from([(1, init)]), 7, |_| {});
    assert_eq!(c.e(1).membership(), &Membership::with_voters([1]));
    assert_eq!(c.elect(), 1);
    let e = c.e(1);
    assert!(e.term() > 2, "a new term: {}", e.term());
    assert_eq!(
        e.last_index(),
        5,
        "its log and its no-op, nothing truncated"
    );
    assert_eq!(e.commit_index(), 5, "the uncommitted tail is committed");
    assert_eq!(
        Membership::with_voters([1, 2, 3]).apply(ConfChange::ForceNewCluster(1)),
        Ok(Membership::with_voters([1]))
    );
    assert!(
        Membership::default()
            .apply(ConfChange::ForceNewCluster(0))
            .is_err()
    );
}
