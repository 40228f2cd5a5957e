//! Majority arithmetic over a configuration's voters. Every quorum rule of the
//! engine is one function here, so each is written and tested once:
//!
//! - [`committed_index`]: the highest value a majority of voters has reached —
//!   the commit index from match indexes, and the newest heartbeat round a
//!   majority has answered (ReadIndex and leases);
//! - [`vote_result`]: whether a (pre-)election is won, lost or undecided;
//! - [`has_quorum`]: whether a majority satisfies a predicate (check-quorum).
//!
//! Only voters count; learners and nodes outside the configuration never do.
//! With no voters at all a majority is 1, which nobody can reach.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::NodeId;

/// Voters needed for a majority of `voters` voters (0 voters → 1).
pub(crate) fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest value that a majority of `voters` has reached: the
/// majority-th largest of `acked(id)` over the voters. A voter for which
/// `acked` returns `None` has reached nothing; `None` when fewer than a
/// majority have a value. `scratch` is working space (kept to avoid an
/// allocation per call).
#[inline]
pub(crate) fn committed_index(
    voters: &BTreeSet<NodeId>,
    mut acked: impl FnMut(NodeId) -> Option<u64>,
    scratch: &mut Vec<u64>,
) -> Option<u64> {
    scratch.clear();
    for &id in voters {
        if let Some(v) = acked(id) {
            scratch.push(v);
        }
    }
    let q = majority(voters.len());
    if scratch.len() < q {
        return None;
    }
    scratch.sort_unstable_by(|a, b| b.cmp(a));
    Some(scratch[q - 1])
}

/// True if a majority of `voters` satisfies `yes`.
pub(crate) fn has_quorum(voters: &BTreeSet<NodeId>, mut yes: impl FnMut(NodeId) -> bool) -> bool {
    voters.iter().filter(|&&id| yes(id)).count() >= majority(voters.len())
}

/// Outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// Neither a majority for nor a majority against yet.
    Pending,
    /// A majority of voters granted.
    Won,
    /// A majority of voters refused: the election cannot be won.
    Lost,
}

/// Tallies `votes` (granted or refused, by voter) against `voters`; votes
/// from non-voters are ignored.
pub(crate) fn vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if has_quorum(voters, |id| votes.get(&id) == Some(&true)) {
        VoteResult::Won
    } else if has_quorum(voters, |id| votes.get(&id) == Some(&false)) {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: impl IntoIterator<Item = NodeId>) -> BTreeSet<NodeId> {
        ids.into_iter().collect()
    }

    /// `committed_index` over `values[i]` for voter `i + 1` (`None`: no value).
    fn committed(values: &[Option<u64>]) -> Option<u64> {
        let v = voters(1..=values.len() as u64);
        committed_index(&v, |id| values[(id - 1) as usize], &mut Vec::new())
    }

    #[test]
    fn majority_is_more_than_half_and_one_without_voters() {
        let sizes: Vec<usize> = (0..=6).map(majority).collect();
        assert_eq!(sizes, [1, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn committed_index_is_the_highest_value_a_majority_has_reached() {
        assert_eq!(committed(&[Some(7)]), Some(7));
        assert_eq!(committed(&[Some(5), Some(3), Some(9)]), Some(5));
        assert_eq!(
            committed(&[Some(10), Some(8), Some(1), Some(8), Some(2)]),
            Some(8)
        );
        // Four voters need three: the third highest.
        assert_eq!(committed(&[Some(10), Some(9), Some(1), Some(1)]), Some(1));
    }

    #[test]
    fn committed_index_counts_a_voter_without_a_value_as_nothing() {
        // Two of three have values: the lower of the two is on a majority.
        assert_eq!(committed(&[Some(4), None, Some(6)]), Some(4));
        // One of three: no majority has reached anything.
        assert_eq!(committed(&[None, None, Some(6)]), None);
        assert_eq!(committed(&[]), None);
    }

    #[test]
    fn committed_index_asks_only_about_voters() {
        // Node 9 (a learner, say) is far ahead; it must not be consulted.
        let v = voters([1, 2, 3]);
        let mut asked = Vec::new();
        let c = committed_index(
            &v,
            |id| {
                asked.push(id);
                Some(if id == 9 { 100 } else { id })
            },
            &mut Vec::new(),
        );
        assert_eq!(c, Some(2));
        assert_eq!(asked, [1, 2, 3]);
    }

    #[test]
    fn has_quorum_needs_a_strict_majority() {
        let v = voters([1, 2, 3, 4]);
        assert!(!has_quorum(&v, |id| id <= 2), "half is not a majority");
        assert!(has_quorum(&v, |id| id <= 3));
        assert!(!has_quorum(&BTreeSet::new(), |_| true), "no voters: never");
    }

    #[test]
    fn vote_result_is_won_lost_or_pending_by_majority_of_voters() {
        let v = voters([1, 2, 3, 4, 5]);
        let tally = |votes: &[(NodeId, bool)]| vote_result(&v, &votes.iter().copied().collect());
        assert_eq!(tally(&[(1, true)]), VoteResult::Pending);
        assert_eq!(tally(&[(1, true), (2, true), (3, true)]), VoteResult::Won);
        assert_eq!(
            tally(&[(1, true), (2, false), (3, false), (4, false)]),
            VoteResult::Lost
        );
        assert_eq!(
            tally(&[(1, true), (2, true), (3, false), (4, false)]),
            VoteResult::Pending
        );
        // Votes from nodes outside the voters do not count either way.
        assert_eq!(
            tally(&[(1, true), (2, true), (8, true), (9, true)]),
            VoteResult::Pending
        );
        assert_eq!(
            tally(&[(7, false), (8, false), (9, false)]),
            VoteResult::Pending
        );
    }

    #[test]
    fn an_even_configuration_split_in_half_decides_nothing() {
        let v = voters([1, 2, 3, 4]);
        let votes = [(1, true), (2, true), (3, false), (4, false)]
            .into_iter()
            .collect();
        assert_eq!(vote_result(&v, &votes), VoteResult::Pending);
    }
}
