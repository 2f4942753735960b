use std::collections::BTreeSet;

use proptest::prelude::*;
use rand::SeedableRng;

use super::*;
use crate::group::{ControlError, sign_control};
use crate::identity::IdentityKeyPair;

fn people(n: usize) -> Vec<IdentityKeyPair> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    (0..n).map(|_| IdentityKeyPair::generate(&mut rng)).collect()
}

fn create(creator: &IdentityKeyPair, members: &[&IdentityKeyPair]) -> (GroupId, GroupControl) {
    let salt = [3; 16];
    let id = group_id(&creator.user_id(), &salt);
    let action = GroupAction::Create {
        name: "team".into(),
        members: members.iter().map(|m| m.user_id()).collect(),
        salt,
    };
    (id, sign_control(creator, id, Vec::new(), action).expect("sign"))
}

/// A change by `author` made after `parents`.
fn change(
    author: &IdentityKeyPair,
    parents: &[&GroupControl],
    action: GroupAction,
) -> GroupControl {
    let group = parents.first().map(|p| p.group).expect("a parent");
    let mut hashes: Vec<ChangeHash> =
        parents.iter().map(|p| change_hash(p).expect("hash")).collect();
    hashes.sort();
    hashes.dedup();
    sign_control(author, group, hashes, action).expect("sign")
}

fn ids(people: &[&IdentityKeyPair]) -> BTreeSet<UserId> {
    people.iter().map(|p| p.user_id()).collect()
}

/// Inserts `changes` in the given order, holding back those whose parents are not in yet (as
/// the engine does with orphans), and resolves.
fn log_of(group: GroupId, changes: &[GroupControl]) -> ChangeLog {
    let mut log = ChangeLog::new(group);
    let mut waiting: Vec<GroupControl> = changes.to_vec();
    loop {
        let before = waiting.len();
        waiting.retain(|c| matches!(log.insert(c.clone()), Err(ChangeError::MissingParents(_))));
        if waiting.len() == before {
            break;
        }
    }
    log.resolve();
    log
}

fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    use rand::seq::SliceRandom;
    let mut items = items.to_vec();
    items.shuffle(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
    items
}

#[test]
fn signatures_bind_every_field() {
    let p = people(2);
    let (group, create) = create(&p[0], &[&p[0], &p[1]]);
    verify_control(&create).expect("valid");
    let add = change(&p[0], &[&create], GroupAction::Add { member: p[1].user_id() });
    verify_control(&add).expect("valid");
    let mut other_group = add.clone();
    other_group.group = GroupId([0; 32]);
    let mut other_parents = add.clone();
    other_parents.parents = vec![ChangeHash([9; 32])];
    let mut other_author = add.clone();
    other_author.author = p[1].user_id();
    let mut other_action = add.clone();
    other_action.action = GroupAction::Leave;
    for forged in [other_group, other_parents, other_author, other_action] {
        assert_eq!(verify_control(&forged), Err(ControlError::BadSignature));
    }
    // A forged change never enters a log.
    let mut log = ChangeLog::new(group);
    log.insert(create).expect("create");
    let mut forged = add;
    forged.action = GroupAction::Add { member: p[0].user_id() };
    assert_eq!(log.insert(forged), Err(ChangeError::Signature(ControlError::BadSignature)));
}

#[test]
fn only_the_creator_the_id_commits_to_creates_and_only_once() {
    let p = people(3);
    let (group, real) = create(&p[0], &[&p[0], &p[1]]);
    // A member signs its own Create for the same id to take the group over.
    let hijack = sign_control(
        &p[1],
        group,
        Vec::new(),
        GroupAction::Create { name: "mine".into(), members: vec![p[1].user_id()], salt: [3; 16] },
    )
    .expect("sign");
    let mut log = ChangeLog::new(group);
    assert_eq!(log.insert(hijack), Err(ChangeError::BadCreate));
    log.insert(real.clone()).expect("create");
    // The creator itself cannot start the group a second time.
    let again = sign_control(
        &p[0],
        group,
        Vec::new(),
        GroupAction::Create { name: "again".into(), members: vec![p[0].user_id()], salt: [3; 16] },
    )
    .expect("sign");
    assert_eq!(log.insert(again), Err(ChangeError::BadCreate));
    // Changes whose parents are unknown wait (the caller holds them), naming what is missing.
    let add = change(&p[0], &[&real], GroupAction::Add { member: p[2].user_id() });
    let later = change(&p[0], &[&add], GroupAction::Rename { name: "x".into() });
    assert_eq!(
        log.insert(later),
        Err(ChangeError::MissingParents(vec![change_hash(&add).expect("hash")]))
    );
    log.resolve();
    assert_eq!(log.membership().members, ids(&[&p[0], &p[1]]));
}

#[test]
fn only_admins_change_the_group_and_nobody_removes_the_creator() {
    let p = people(4);
    let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2]]);
    let plain_add = change(&p[1], &[&c], GroupAction::Add { member: p[3].user_id() });
    let plain_remove = change(&p[1], &[&c], GroupAction::Remove { member: p[2].user_id() });
    let plain_rename = change(&p[1], &[&c], GroupAction::Rename { name: "x".into() });
    let promote = change(&p[0], &[&c], GroupAction::Promote { member: p[1].user_id() });
    let remove_creator = change(&p[1], &[&promote], GroupAction::Remove { member: p[0].user_id() });
    let remove_2 = change(&p[1], &[&promote], GroupAction::Remove { member: p[2].user_id() });
    let removed_acts = change(&p[2], &[&remove_2], GroupAction::Leave);
    let all = [
        c,
        plain_add.clone(),
        plain_remove.clone(),
        plain_rename.clone(),
        promote,
        remove_creator.clone(),
        remove_2.clone(),
        removed_acts.clone(),
    ];
    let log = log_of(g, &all);
    let state = log.membership();
    assert_eq!(state.members, ids(&[&p[0], &p[1]]));
    assert_eq!(state.admins, ids(&[&p[0], &p[1]]));
    assert_eq!(state.name, "team");
    for refused in [plain_add, plain_remove, plain_rename, remove_creator, removed_acts] {
        assert!(!log.is_effective(&change_hash(&refused).expect("hash")));
    }
    assert!(log.is_effective(&change_hash(&remove_2).expect("hash")));
}

#[test]
fn changes_that_do_nothing_do_not_count() {
    let p = people(3);
    let (g, c) = create(&p[0], &[&p[0], &p[1]]);
    let no_ops = [
        change(&p[0], &[&c], GroupAction::Add { member: p[1].user_id() }),
        change(&p[0], &[&c], GroupAction::Remove { member: p[2].user_id() }),
        change(&p[0], &[&c], GroupAction::Promote { member: p[0].user_id() }),
        change(&p[0], &[&c], GroupAction::Rename { name: "team".into() }),
        change(&p[2], &[&c], GroupAction::Leave),
    ];
    let mut all = vec![c];
    all.extend(no_ops.iter().cloned());
    let log = log_of(g, &all);
    for op in &no_ops {
        assert!(!log.is_effective(&change_hash(op).expect("hash")), "{op:?}");
    }
}

/// Issue item 1: an admin removed by the creator signs, "before" its removal, an `Add` of a
/// puppet and a `Promote` of it; the puppet then removes an honest member. Whatever order the
/// changes arrive in, none of it counts.
#[test]
fn a_removed_admin_cannot_backdate_its_way_back_in() {
    let p = people(5);
    let (creator, admin, honest, puppet, other) = (&p[0], &p[1], &p[2], &p[3], &p[4]);
    let (g, c) = create(creator, &[creator, admin, honest, other]);
    let promote = change(creator, &[&c], GroupAction::Promote { member: admin.user_id() });
    let rename = change(admin, &[&promote], GroupAction::Rename { name: "ours".into() });
    let removal = change(creator, &[&rename], GroupAction::Remove { member: admin.user_id() });
    // Backdated: named after `promote`, before the removal the admin has already seen.
    let add = change(admin, &[&promote], GroupAction::Add { member: puppet.user_id() });
    let up = change(admin, &[&add], GroupAction::Promote { member: puppet.user_id() });
    let strike = change(puppet, &[&up], GroupAction::Remove { member: honest.user_id() });
    // Also after the removal, openly: refused by its own history.
    let late = change(admin, &[&removal], GroupAction::Add { member: puppet.user_id() });
    let all = vec![c, promote, rename.clone(), removal, add, up, strike, late];
    let reference = log_of(g, &all);
    for seed in 0..24 {
        let log = log_of(g, &shuffled(&all, seed));
        let state = log.membership();
        assert_eq!(state, reference.membership(), "seed {seed}");
        assert_eq!(state.members, ids(&[creator, honest, other]), "seed {seed}");
        assert_eq!(state.admins, ids(&[creator]));
        // What the admin did before it was removed still counts.
        assert_eq!(state.name, "ours");
        assert!(log.is_effective(&change_hash(&rename).expect("hash")));
    }
}

/// A removed admin's removal of a member, made concurrently with (or "before") its own
/// removal, does not count; the member stays.
#[test]
fn a_change_concurrent_with_its_authors_removal_does_not_count() {
    let p = people(4);
    let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2], &p[3]]);
    let promote = change(&p[0], &[&c], GroupAction::Promote { member: p[1].user_id() });
    let removal = change(&p[0], &[&promote], GroupAction::Remove { member: p[1].user_id() });
    let strike = change(&p[1], &[&promote], GroupAction::Remove { member: p[2].user_id() });
    let leave_race = change(&p[1], &[&promote], GroupAction::Rename { name: "x".into() });
    let log = log_of(g, &[c, promote, removal, strike.clone(), leave_race]);
    assert_eq!(log.membership().members, ids(&[&p[0], &p[2], &p[3]]));
    assert_eq!(log.membership().name, "team");
    assert!(!log.is_effective(&change_hash(&strike).expect("hash")));
}

/// Removals that race each other down the hierarchy: the creator removes admin A while A
/// removes B (whom A appointed) while B removes member M. A's removal of B is void (concurrent
/// with A's own removal), so B's removal of M counts.
#[test]
fn racing_removals_resolve_top_down() {
    let p = people(5);
    let (creator, a, b, m, x) = (&p[0], &p[1], &p[2], &p[3], &p[4]);
    let (g, c) = create(creator, &[creator, a, b, m, x]);
    let up_a = change(creator, &[&c], GroupAction::Promote { member: a.user_id() });
    let up_b = change(a, &[&up_a], GroupAction::Promote { member: b.user_id() });
    let r1 = change(b, &[&up_b], GroupAction::Remove { member: m.user_id() });
    let r2 = change(a, &[&up_b], GroupAction::Remove { member: b.user_id() });
    let r3 = change(creator, &[&up_b], GroupAction::Remove { member: a.user_id() });
    let all = vec![c, up_a, up_b, r1, r2, r3];
    for seed in 0..12 {
        let log = log_of(g, &shuffled(&all, seed));
        assert_eq!(log.membership().members, ids(&[creator, b, x]), "seed {seed}");
        assert_eq!(log.membership().admins, ids(&[creator, b]), "seed {seed}");
    }
}

/// Admins remove the admins they appointed, not each other: so no removal race between two
/// admins can be won by naming old parents.
#[test]
fn an_admin_removes_only_admins_it_appointed() {
    let p = people(4);
    let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2], &p[3]]);
    let up1 = change(&p[0], &[&c], GroupAction::Promote { member: p[1].user_id() });
    let up2 = change(&p[0], &[&up1], GroupAction::Promote { member: p[2].user_id() });
    let up3 = change(&p[1], &[&up2], GroupAction::Promote { member: p[3].user_id() });
    let peer = change(&p[1], &[&up3], GroupAction::Remove { member: p[2].user_id() });
    let own = change(&p[1], &[&up3], GroupAction::Remove { member: p[3].user_id() });
    let log = log_of(g, &[c, up1, up2, up3, peer.clone(), own.clone()]);
    assert!(!log.is_effective(&change_hash(&peer).expect("hash")));
    assert!(log.is_effective(&change_hash(&own).expect("hash")));
    assert_eq!(log.membership().members, ids(&[&p[0], &p[1], &p[2]]));
}

#[test]
fn concurrent_add_and_remove_of_one_member_remove_wins() {
    let p = people(4);
    let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2]]);
    let promote = change(&p[0], &[&c], GroupAction::Promote { member: p[1].user_id() });
    let removal = change(&p[0], &[&promote], GroupAction::Remove { member: p[2].user_id() });
    let removal2 = change(&p[0], &[&removal], GroupAction::Add { member: p[3].user_id() });
    // Admin 1, not having seen the removal, re-adds... nothing (2 is a member in its view):
    // it promotes 2 instead, concurrently with the removal. 2 is out and not an admin.
    let up = change(&p[1], &[&promote], GroupAction::Promote { member: p[2].user_id() });
    let log = log_of(g, &[c, promote, removal, removal2, up]);
    assert_eq!(log.membership().members, ids(&[&p[0], &p[1], &p[3]]));
    assert_eq!(log.membership().admins, ids(&[&p[0], &p[1]]));
}

#[test]
fn a_removed_member_added_again_is_a_member_with_no_old_rights() {
    let p = people(3);
    let (g, c) = create(&p[0], &[&p[0], &p[1]]);
    let up = change(&p[0], &[&c], GroupAction::Promote { member: p[1].user_id() });
    let out = change(&p[0], &[&up], GroupAction::Remove { member: p[1].user_id() });
    let back = change(&p[0], &[&out], GroupAction::Add { member: p[1].user_id() });
    let tries = change(&p[1], &[&back], GroupAction::Add { member: p[2].user_id() });
    let log = log_of(g, &[c, up, out, back, tries.clone()]);
    assert_eq!(log.membership().members, ids(&[&p[0], &p[1]]));
    assert_eq!(log.membership().admins, ids(&[&p[0]]));
    assert!(!log.is_effective(&change_hash(&tries).expect("hash")));
}

#[test]
fn sync_hands_over_exactly_what_the_other_side_lacks() {
    let p = people(3);
    let (g, c) = create(&p[0], &[&p[0], &p[1]]);
    let a = change(&p[0], &[&c], GroupAction::Add { member: p[2].user_id() });
    let b = change(&p[0], &[&a], GroupAction::Rename { name: "b".into() });
    let log = log_of(g, &[c.clone(), a.clone(), b.clone()]);
    assert_eq!(log.missing_for(&[change_hash(&a).expect("hash")]), vec![b.clone()]);
    assert_eq!(log.missing_for(&[]), vec![c, a, b.clone()]);
    assert_eq!(log.missing_for(&[ChangeHash([7; 32])]).len(), 3);
    assert_eq!(log.heads(), vec![change_hash(&b).expect("hash")]);
}

/// A replica of the group in the property test: its own log, fed the changes it received.
struct Replica {
    me: usize,
    log: ChangeLog,
    waiting: Vec<GroupControl>,
}

impl Replica {
    fn receive(&mut self, change: GroupControl) {
        self.waiting.push(change);
        loop {
            let before = self.waiting.len();
            let log = &mut self.log;
            self.waiting
                .retain(|c| matches!(log.insert(c.clone()), Err(ChangeError::MissingParents(_))));
            if self.waiting.len() == before {
                break;
            }
        }
        self.log.resolve();
    }
}

/// Checks the safety rule on a resolved log, independently of how it was resolved: no
/// effective change by a user is concurrent with an effective removal of that user, and one
/// made after such a removal has an effective re-addition of the user in between.
fn check_no_change_after_removal(log: &ChangeLog) -> Result<(), String> {
    let nodes: Vec<(&Node, bool)> =
        log.nodes.iter().map(|n| (n, log.is_effective(&n.hash))).collect();
    let before = |a: usize, b: usize| nodes[b].0.history.contains(a);
    let removes = |node: &Node, user: &UserId| match &node.change.action {
        GroupAction::Remove { member } => member == user,
        GroupAction::Leave => node.change.author == *user,
        _ => false,
    };
    let adds = |node: &Node, user: &UserId| match &node.change.action {
        GroupAction::Add { member } => member == user,
        _ => false,
    };
    for (o, (node, effective)) in nodes.iter().enumerate() {
        if !effective || matches!(node.change.action, GroupAction::Create { .. }) {
            continue;
        }
        let author = node.change.author;
        for (r, (removal, r_effective)) in nodes.iter().enumerate() {
            if !r_effective || r == o || !removes(removal, &author) {
                continue;
            }
            if !before(r, o) && !before(o, r) {
                return Err(format!(
                    "{:?} counts, concurrent with its author's removal",
                    node.change
                ));
            }
            let readded = nodes.iter().enumerate().any(|(a, (add, a_effective))| {
                *a_effective && adds(add, &author) && before(r, a) && before(a, o)
            });
            if before(r, o) && !readded {
                return Err(format!("{:?} counts after its author's removal", node.change));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random groups, random honest changes made on each member's own (partial) view, and an
    /// adversary (a member, later maybe removed) signing changes with arbitrary old parents
    /// (backdated), concurrent and no-op changes. Delivered in random orders: every replica
    /// converges to the same membership and effective set, and no change by a removed author
    /// made concurrently with or after its removal ever counts.
    #[test]
    fn membership_converges_and_removed_authors_stay_out(
        steps in prop::collection::vec((0u8..10, 0usize..6, 0usize..6, any::<u64>()), 1..40),
        seed in any::<u64>(),
    ) {
        let p = people(6);
        let adversary = 5;
        let (g, c) = create(&p[0], &[&p[0], &p[1], &p[2], &p[5]]);
        let mut replicas: Vec<Replica> = (0..6)
            .map(|me| Replica { me, log: ChangeLog::new(g), waiting: Vec::new() })
            .collect();
        let mut all = vec![c.clone()];
        for r in &mut replicas {
            r.receive(c.clone());
        }
        // The creator makes the adversary an admin so that it has something to lose.
        let promote = change(&p[0], &[&c], GroupAction::Promote { member: p[adversary].user_id() });
        all.push(promote.clone());
        replicas[0].receive(promote);

        for (kind, who, target, pick) in steps {
            let member = p[target].user_id();
            let action = match kind % 5 {
                0 => GroupAction::Add { member },
                1 => GroupAction::Remove { member },
                2 => GroupAction::Leave,
                3 => GroupAction::Promote { member },
                _ => GroupAction::Rename { name: format!("n{target}") },
            };
            if kind >= 8 {
                // The adversary signs with parents picked from anything ever made: backdated,
                // concurrent, or no-op changes alike.
                let parent = &all[usize::try_from(pick % all.len() as u64).unwrap()];
                let op = change(&p[adversary], &[parent], action);
                all.push(op.clone());
                replicas[adversary].receive(op);
            } else if kind >= 5 {
                // A delivery: replica `who` receives a change made so far.
                let op = all[usize::try_from(pick % all.len() as u64).unwrap()].clone();
                replicas[who].receive(op);
            } else {
                // An honest change made on `who`'s own view, if its author may make it there.
                let replica = &replicas[who];
                let parents = replica.log.heads();
                if parents.is_empty() {
                    continue;
                }
                let op = sign_control(&p[who], g, parents, action).expect("sign");
                let mut trial = replica.log.clone();
                trial.insert(op.clone()).expect("parents held");
                trial.resolve();
                if trial.is_effective(&change_hash(&op).expect("hash")) {
                    all.push(op.clone());
                    replicas[who].receive(op);
                }
            }
        }
        // Everything reaches everyone, in a different order for each.
        for (i, r) in replicas.iter_mut().enumerate() {
            for op in shuffled(&all, seed ^ i as u64) {
                r.receive(op);
            }
        }
        let reference = &replicas[0].log;
        check_no_change_after_removal(reference).map_err(TestCaseError::fail)?;
        for r in &replicas {
            prop_assert!(r.waiting.is_empty(), "replica {} holds orphans", r.me);
            prop_assert_eq!(r.log.membership(), reference.membership());
            for op in &all {
                let hash = change_hash(op).expect("hash");
                prop_assert_eq!(r.log.is_effective(&hash), reference.is_effective(&hash));
            }
        }
        prop_assert!(reference.membership().admins.is_subset(&reference.membership().members));
    }
}
