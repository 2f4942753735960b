use proptest::prelude::*;

use super::*;

fn people(n: usize) -> Vec<IdentityKeyPair> {
    (0..n).map(|_| IdentityKeyPair::generate(&mut rand::rng())).collect()
}

fn create(creator: &IdentityKeyPair, members: &[&IdentityKeyPair]) -> (GroupId, GroupControl) {
    let salt = [3; 16];
    let id = group_id(&creator.user_id(), &salt);
    let action = GroupAction::Create {
        name: "team".into(),
        members: members.iter().map(|m| m.user_id()).collect(),
        salt,
    };
    (id, sign_control(creator, id, 0, action).expect("sign"))
}

fn op(author: &IdentityKeyPair, group: GroupId, lamport: u64, action: GroupAction) -> GroupControl {
    sign_control(author, group, lamport, action).expect("sign")
}

fn ids(people: &[&IdentityKeyPair]) -> BTreeSet<UserId> {
    people.iter().map(|p| p.user_id()).collect()
}

#[test]
fn signatures_bind_every_field() {
    let p = people(2);
    let (group, create) = create(&p[0], &[&p[0], &p[1]]);
    verify_control(&create).expect("valid");
    let mut other_group = create.clone();
    other_group.group = GroupId([0; 32]);
    let mut other_clock = create.clone();
    other_clock.lamport = 1;
    let mut other_author = create.clone();
    other_author.author = p[1].user_id();
    let mut other_action = create.clone();
    other_action.action = GroupAction::Leave;
    for forged in [other_group, other_clock, other_author, other_action] {
        assert_eq!(verify_control(&forged), Err(ControlError::BadSignature));
    }
    let add = op(&p[0], group, 1, GroupAction::Add { member: p[1].user_id() });
    verify_control(&add).expect("valid");
}

#[test]
fn only_the_creator_the_id_commits_to_can_create() {
    let p = people(3);
    let (group, real) = create(&p[0], &[&p[0], &p[1]]);
    // A member signs its own Create for the same id, at the same clock, to take the group over.
    let hijack = op(
        &p[1],
        group,
        0,
        GroupAction::Create { name: "mine".into(), members: vec![p[1].user_id()], salt: [3; 16] },
    );
    let state = Membership::replay(&group, &[hijack.clone(), real.clone()]);
    assert_eq!(state.creator, Some(p[0].user_id()));
    assert_eq!(state.members, ids(&[&p[0], &p[1]]));
    assert!(!Membership::replay(&group, &[hijack]).created());
    // Changes before the group exists do nothing.
    let add = op(&p[0], group, 1, GroupAction::Add { member: p[2].user_id() });
    assert!(!Membership::replay(&group, std::slice::from_ref(&add)).created());
    assert!(Membership::replay(&group, &[add, real]).members.contains(&p[2].user_id()));
}

#[test]
fn only_admins_change_the_group() {
    let p = people(4);
    let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2]]);
    let ops = vec![
        c,
        // A plain member can neither add nor remove nor rename.
        op(&p[1], g, 1, GroupAction::Add { member: p[3].user_id() }),
        op(&p[1], g, 1, GroupAction::Remove { member: p[2].user_id() }),
        op(&p[1], g, 1, GroupAction::Rename { name: "x".into() }),
        // Nobody removes the creator.
        op(&p[0], g, 2, GroupAction::Promote { member: p[1].user_id() }),
        op(&p[1], g, 3, GroupAction::Remove { member: p[0].user_id() }),
        // The new admin removes a member, who then cannot leave twice or act.
        op(&p[1], g, 4, GroupAction::Remove { member: p[2].user_id() }),
        op(&p[2], g, 5, GroupAction::Add { member: p[3].user_id() }),
    ];
    let state = Membership::replay(&g, &ops);
    assert_eq!(state.members, ids(&[&p[0], &p[1]]));
    assert_eq!(state.admins, ids(&[&p[0], &p[1]]));
    assert_eq!(state.name, "team");
    assert_eq!(state.lamport, 5);
}

#[test]
fn concurrent_add_and_remove_by_two_admins() {
    let p = people(5);
    let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2], &p[3]]);
    let promote = op(&p[0], g, 1, GroupAction::Promote { member: p[1].user_id() });
    // At the same clock: admin 0 adds 4, admin 1 removes 3, and admin 1 removes 0's
    // new member (concurrently, so it has no effect: 4 is not a member yet in 1's view).
    let add = op(&p[0], g, 2, GroupAction::Add { member: p[4].user_id() });
    let remove = op(&p[1], g, 2, GroupAction::Remove { member: p[3].user_id() });
    let a = Membership::replay(&g, &[c.clone(), promote.clone(), add.clone(), remove.clone()]);
    let b = Membership::replay(&g, &[remove, add, promote, c]);
    assert_eq!(a, b);
    assert_eq!(a.members, ids(&[&p[0], &p[1], &p[2], &p[4]]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any arrival order of any mix of changes (valid or not) gives the same state.
    #[test]
    fn every_order_converges(
        actions in prop::collection::vec((0usize..5, 1u64..6, 0u8..5, 0usize..5), 0..24),
        seed in any::<u64>(),
    ) {
        let p = people(5);
        let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2]]);
        let mut ops = vec![c];
        for (author, lamport, kind, target) in actions {
            let member = p[target].user_id();
            let action = match kind {
                0 => GroupAction::Add { member },
                1 => GroupAction::Remove { member },
                2 => GroupAction::Leave,
                3 => GroupAction::Promote { member },
                _ => GroupAction::Rename { name: format!("n{target}") },
            };
            ops.push(op(&p[author], g, lamport, action));
        }
        let reference = Membership::replay(&g, &ops);
        let mut shuffled = ops.clone();
        let mut state = seed;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(Membership::replay(&g, &shuffled), reference.clone());
        prop_assert!(reference.admins.is_subset(&reference.members));
    }
}

#[test]
fn tags_and_ids_are_domain_separated() {
    let p = people(1);
    let id = group_id(&p[0].user_id(), &[1; 16]);
    assert_ne!(id, group_id(&p[0].user_id(), &[2; 16]));
    assert_ne!(group_tag(&id).0, id.0);
    assert_eq!(group_tag(&id), group_tag(&id));
}
