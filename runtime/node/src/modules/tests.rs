//! The placement rule, the membership re-check, the fetch order and the size/hash check.

use super::*;

#[test]
fn members_are_asked_from_a_place_of_each_nodes_own_with_the_sender_last() {
    // Every other member once, this node never.
    assert_eq!(fetch_order(4, &[1, 2, 3], None), vec![2, 3, 1]);
    assert_eq!(fetch_order(5, &[3, 1, 2, 2], None), vec![3, 1, 2]);
    assert_eq!(fetch_order(2, &[1, 2, 3], None), vec![1, 3]);
    // Two joiners start at different members.
    assert_ne!(
        fetch_order(4, &[1, 2, 3], None)[0],
        fetch_order(5, &[1, 2, 3], None)[0]
    );
    // The leader sending the snapshot is asked last, wherever the rotation put it.
    assert_eq!(fetch_order(4, &[1, 2, 3], Some(2)), vec![3, 1, 2]);
    assert_eq!(fetch_order(6, &[1, 2, 3], Some(1)), vec![2, 3, 1]);
    // An unknown leader changes nothing; no members, no one to ask.
    assert_eq!(fetch_order(4, &[1, 2, 3], Some(9)), vec![2, 3, 1]);
    assert!(fetch_order(1, &[1], Some(1)).is_empty());
}

#[test]
fn a_fetched_module_must_have_the_size_and_hash_of_the_entry() {
    let module = b"component bytes".to_vec();
    let sha = sha256(&module);
    assert_eq!(check(&module, sha, module.len() as u64), Ok(()));
    let e = check(&module, sha, 3).unwrap_err();
    assert!(e.contains("15 bytes where the deploy entry says 3"), "{e}");
    let mut flipped = module.clone();
    flipped[0] ^= 1;
    let e = check(&flipped, sha, module.len() as u64).unwrap_err();
    assert!(e.contains(&format!("not {}", short(&sha))), "{e}");
}

#[test]
fn a_placement_no_longer_holds_once_a_member_joined_or_its_holders_are_a_minority() {
    let membership = |voters: &[u64], learners: &[u64]| wraft_engine::Membership {
        voters: voters.iter().copied().collect(),
        learners: learners.iter().copied().collect(),
    };
    let placed = Placed {
        members: vec![1, 2, 3],
        holders: vec![1, 2],
    };
    assert!(placed.still_holds(&membership(&[1, 2, 3], &[])));
    // A voter removed: the holders are still a majority.
    assert!(placed.still_holds(&membership(&[1, 2], &[])));
    // A learner or a voter joined: never asked whether it can take modules by hash.
    assert!(!placed.still_holds(&membership(&[1, 2, 3], &[4])));
    assert!(!placed.still_holds(&membership(&[1, 2, 3, 4], &[])));
    // The holders lost their majority.
    let placed = Placed {
        members: vec![1, 2, 3, 4, 5],
        holders: vec![1, 2],
    };
    assert!(!placed.still_holds(&membership(&[1, 2, 3, 4, 5], &[])));
    assert!(placed.still_holds(&membership(&[1, 2, 3], &[])));
}

#[test]
fn a_module_is_deployed_by_hash_only_when_a_majority_holds_it_and_every_member_understands() {
    let ok = |id| (id, Ok(()));
    let down = |id: u64| {
        (
            id,
            Err(MemberCallError::Unreachable(format!("node {id} down"))),
        )
    };
    let old = |id: u64| (id, Err(MemberCallError::Unanswered(format!("node {id}"))));
    let voters = [1, 2, 3];
    let none = HashSet::new();
    let all: HashSet<u64> = (1..=5).collect();
    assert_eq!(
        placement(1, &voters, vec![ok(2), ok(3)], &none),
        Ok(Placement::ByHash {
            holders: vec![1, 2, 3]
        })
    );
    // One voter down that answered before: the leader and one more are a majority; the
    // third fetches it later.
    assert_eq!(
        placement(2, &voters, vec![down(1), ok(3)], &all),
        Ok(Placement::ByHash {
            holders: vec![2, 3]
        })
    );
    // One voter down that never answered a module request: its version is unknown.
    assert!(matches!(
        placement(2, &voters, vec![down(1), ok(3)], &none),
        Ok(Placement::InLog { reason }) if reason.contains("node 1 has not shown")
    ));
    // A learner holding it does not make a majority of voters.
    let e = placement(1, &voters, vec![down(2), down(3), ok(4)], &all).unwrap_err();
    match e {
        RequestError::Busy(m) => {
            assert!(m.contains("only 1 of 3 voters"), "{m}");
            assert!(m.contains("node 2 down; node 3 down"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // An older member anywhere, even a learner, puts the module in the log.
    assert!(matches!(
        placement(1, &voters, vec![ok(2), ok(3), old(4)], &all),
        Ok(Placement::InLog { reason }) if reason.contains("node 4")
    ));
    // A single voter holds it alone.
    assert_eq!(
        placement(1, &[1], vec![], &none),
        Ok(Placement::ByHash { holders: vec![1] })
    );
    // Five voters: three is a majority, two is not.
    let five = [1, 2, 3, 4, 5];
    assert!(placement(1, &five, vec![ok(2), ok(3), down(4), down(5)], &all).is_ok());
    assert!(placement(1, &five, vec![ok(2), down(3), down(4), down(5)], &all).is_err());
}
