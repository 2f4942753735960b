//! Group membership as a hash-linked graph of signed changes, resolved the same way by every
//! member whatever order the changes arrived in.
//!
//! # The graph
//!
//! Every change ([`GroupControl`]) names the changes its author had seen last (its `parents`,
//! by [`ChangeHash`]); the signature covers them. The `Create` is the one change without
//! parents. A change is taken into a [`ChangeLog`] only once all its parents are in it, so the
//! log is always closed under "happened before" (≺): a change's *history* is the set of its
//! ancestors, fixed for good by the hashes. Two changes neither of which is in the other's
//! history are *concurrent* (∥).
//!
//! # The rules
//!
//! A change is *effective* (it counts) when both hold:
//!
//! 1. **Its author was allowed to make it in its own history**: in the state that the
//!    effective changes of its history define, the author is a member (to leave) or an admin
//!    (to add, remove, rename, promote), and the change does something there (adding a
//!    member, removing a non-member, promoting an admin or renaming to the same name does
//!    nothing and is not allowed). An admin removes members, and admins it appointed itself
//!    during its current tenure; only the creator removes any admin; nobody removes the
//!    creator.
//! 2. **Its author was not removed concurrently**: no effective removal (or leave) of the
//!    author is concurrent with the change. A change *after* a removal fails rule 1 already.
//!
//! This is the "strong remove" rule of p2panda-auth and of the DCGKA paper's membership
//! (Weidner et al., CCS 2021), with one difference: because an admin can only remove those
//! below it (the admins it appointed, non-admin members), two admins cannot remove each other,
//! so no tie-break between mutual removals is needed and none can be gamed by choosing
//! parents. A removed admin who signs changes "in the past" (naming old parents) makes
//! changes concurrent with its own removal: they never count, and neither does anything that
//! depends on them (rule 1 judges on *effective* changes only).
//!
//! Membership of a user `u` in a set of effective changes `X`: `u` is a member if some change
//! that adds `u` (the `Create`, an `Add`) has every removal of `u` in `X` in its own history
//! (a concurrent add and remove: the remove wins). Admin status works the same way with
//! promotions, for members. The name is the one set by the newest effective rename (among
//! concurrent ones, the greatest by depth and hash).
//!
//! # Resolution
//!
//! The rules refer to each other (whether a change counts depends on removals, whose own
//! standing depends on earlier changes), so the log is resolved by passes. A pass visits the
//! changes in one fixed order that puts every change after its history (by depth, then hash)
//! and admits each that rule 1 allows, skipping a set of *banned* changes. The changes that
//! rule 2 strikes in that outcome become the bans of the next pass; resolution ends when a
//! pass's outcome bans exactly what it skipped, so that the outcome satisfies both rules.
//! Should passes ever alternate (which needs an admin hierarchy that concurrent changes made
//! inconsistent), bans only accumulate from then on, which ends it. Everything depends on the
//! set of changes only, so all members that hold the same changes agree.

use std::collections::{BTreeSet, HashMap};

use kith_protocol::content::{GroupAction, GroupControl};
use kith_protocol::limits::{MAX_CHANGE_PARENTS, MAX_GROUP_MEMBERS, MAX_NAME_BYTES};
use kith_protocol::{ChangeHash, GroupId, UserId};

use super::{ControlError, group_id, signed_bytes, verify_control};

/// Passes before bans only accumulate (see the module docs). Honest concurrency settles in
/// two or three.
const MAX_FREE_PASSES: usize = 8;

/// BLAKE3 context of change hashes.
const CHANGE_HASH_CONTEXT: &str = "kith 2026-12 group change v1";

/// The hash that names `change` in later changes' parents: BLAKE3 of everything its signature
/// covers, and the signature.
pub fn change_hash(change: &GroupControl) -> Result<ChangeHash, ControlError> {
    let signed = signed_bytes(&change.group, &change.parents, &change.author, &change.action)?;
    let mut hasher = blake3::Hasher::new_derive_key(CHANGE_HASH_CONTEXT);
    hasher.update(&signed);
    hasher.update(&change.signature.0);
    Ok(ChangeHash(*hasher.finalize().as_bytes()))
}

/// Whether `action` ends someone's membership (these are never refused for room: a group
/// must never be frozen).
pub fn is_removal(action: &GroupAction) -> bool {
    matches!(action, GroupAction::Remove { .. } | GroupAction::Leave)
}

/// A fixed-size set of change indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bits(Vec<u64>);

impl Bits {
    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    fn insert(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        if let Some(word) = self.0.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    fn union_with(&mut self, other: &Bits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// Equality regardless of trailing empty words.
    fn same(&self, other: &Bits) -> bool {
        let len = self.0.len().max(other.0.len());
        (0..len)
            .all(|i| self.0.get(i).copied().unwrap_or(0) == other.0.get(i).copied().unwrap_or(0))
    }
}

/// One change in the log.
#[derive(Clone, Debug)]
struct Node {
    change: GroupControl,
    hash: ChangeHash,
    /// Strict ancestors (indexes into the log).
    history: Bits,
    /// Longest path from the `Create`.
    depth: u32,
    /// Whether a change in the log names this one as a parent.
    has_children: bool,
}

/// Why a change cannot join a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The change is for another group.
    #[error("change for another group")]
    WrongGroup,
    /// The signature does not verify (or the change could not be encoded to check it).
    #[error(transparent)]
    Signature(#[from] ControlError),
    /// A `Create` that does not create this group (wrong id, creator not a member, over the
    /// limits), or a second `Create`.
    #[error("invalid group creation")]
    BadCreate,
    /// Some parents are not in the log yet.
    #[error("{} parent changes missing", .0.len())]
    MissingParents(Vec<ChangeHash>),
    /// Parents out of canonical order or over the limit.
    #[error("malformed parents")]
    BadParents,
}

/// A group's membership as its effective changes define it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Who created the group (`None` until its `Create` is known).
    pub creator: Option<UserId>,
    /// The group's name.
    pub name: String,
    /// Current members.
    pub members: BTreeSet<UserId>,
    /// Current admins (always members).
    pub admins: BTreeSet<UserId>,
}

impl Membership {
    /// Whether the group exists (its `Create` is known).
    pub fn created(&self) -> bool {
        self.creator.is_some()
    }
}

/// All the changes of one group we hold, and what they resolve to.
#[derive(Clone, Debug)]
pub struct ChangeLog {
    group: GroupId,
    /// In insertion order, which puts every change after its parents.
    nodes: Vec<Node>,
    index: HashMap<ChangeHash, usize>,
    /// Each author's changes.
    by_author: HashMap<UserId, Vec<usize>>,
    /// Effective changes, as of the last resolution.
    effective: Bits,
    membership: Membership,
}

impl ChangeLog {
    /// An empty log for `group`.
    pub fn new(group: GroupId) -> Self {
        Self {
            group,
            nodes: Vec::new(),
            index: HashMap::new(),
            by_author: HashMap::new(),
            effective: Bits::default(),
            membership: Membership::default(),
        }
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// How many changes the log holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the log holds no change.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether the log holds the change `hash`.
    pub fn contains(&self, hash: &ChangeHash) -> bool {
        self.index.contains_key(hash)
    }

    /// The membership as of the last [`ChangeLog::resolve`].
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether change `hash` counted in the last resolution.
    pub fn is_effective(&self, hash: &ChangeHash) -> bool {
        self.index.get(hash).is_some_and(|i| self.effective.contains(*i))
    }

    /// Every change, parents before children.
    pub fn changes(&self) -> impl Iterator<Item = &GroupControl> {
        self.nodes.iter().map(|node| &node.change)
    }

    /// The changes no other change names as a parent: what a new change names as its parents.
    /// At most [`MAX_CHANGE_PARENTS`], the deepest first.
    pub fn heads(&self) -> Vec<ChangeHash> {
        let mut heads: Vec<&Node> = self.nodes.iter().filter(|n| !n.has_children).collect();
        heads.sort_by(|a, b| b.depth.cmp(&a.depth).then(a.hash.cmp(&b.hash)));
        let mut hashes: Vec<ChangeHash> =
            heads.into_iter().take(MAX_CHANGE_PARENTS).map(|n| n.hash).collect();
        hashes.sort();
        hashes
    }

    /// The changes outside the history of `heads` (those of `heads` we do not hold are
    /// ignored), parents first: what a member that holds `heads` lacks.
    pub fn missing_for(&self, heads: &[ChangeHash]) -> Vec<GroupControl> {
        let mut known = Bits::default();
        for head in heads {
            if let Some(&i) = self.index.get(head)
                && let Some(node) = self.nodes.get(i)
            {
                known.union_with(&node.history);
                known.insert(i);
            }
        }
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !known.contains(*i))
            .map(|(_, node)| node.change.clone())
            .collect()
    }

    /// The change `hash`, if the log holds it.
    pub fn change(&self, hash: &ChangeHash) -> Option<&GroupControl> {
        self.index.get(hash).and_then(|&i| self.nodes.get(i)).map(|node| &node.change)
    }

    /// Whether `user` was ever named a member by a change of the log (counting or not): who
    /// may have a say in the group's history.
    pub fn knows(&self, user: &UserId) -> bool {
        self.nodes.iter().any(|node| match &node.change.action {
            GroupAction::Create { members, .. } => members.contains(user),
            GroupAction::Add { member } => member == user,
            _ => false,
        })
    }

    /// The newest effective change that added `user` (the `Create`, for its first members).
    pub fn added_by(&self, user: &UserId) -> Option<(ChangeHash, &GroupControl)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, node)| {
                self.effective.contains(*i)
                    && match &node.change.action {
                        GroupAction::Create { members, .. } => members.contains(user),
                        GroupAction::Add { member } => member == user,
                        _ => false,
                    }
            })
            .max_by_key(|(_, node)| (node.depth, node.hash))
            .map(|(_, node)| (node.hash, &node.change))
    }

    /// How many changes of the log are neither removals nor leaves (what
    /// [`MAX_GROUP_OPS`](super::MAX_GROUP_OPS) bounds).
    pub fn additions(&self) -> usize {
        self.nodes.iter().filter(|n| !is_removal(&n.change.action)).count()
    }

    /// Of `parents`, those not in the log.
    pub fn missing_parents(&self, change: &GroupControl) -> Vec<ChangeHash> {
        change.parents.iter().filter(|p| !self.index.contains_key(p)).copied().collect()
    }

    /// Checks `change` (group, signature, parents, and for a `Create` that it creates this
    /// group) and appends it. It does not count until the next [`ChangeLog::resolve`]. A change
    /// already held is accepted again without effect.
    pub fn insert(&mut self, change: GroupControl) -> Result<ChangeHash, ChangeError> {
        if change.group != self.group {
            return Err(ChangeError::WrongGroup);
        }
        let hash = change_hash(&change)?;
        if self.index.contains_key(&hash) {
            return Ok(hash);
        }
        let ordered = change.parents.windows(2).all(|w| matches!(w, [a, b] if a < b));
        if !ordered || change.parents.len() > MAX_CHANGE_PARENTS {
            return Err(ChangeError::BadParents);
        }
        if let GroupAction::Create { name, members, salt } = &change.action {
            let valid = self.nodes.is_empty()
                && change.parents.is_empty()
                && group_id(&change.author, salt) == self.group
                && members.contains(&change.author)
                && members.len() <= MAX_GROUP_MEMBERS
                && name.len() <= MAX_NAME_BYTES;
            if !valid {
                return Err(ChangeError::BadCreate);
            }
        } else if change.parents.is_empty() {
            return Err(ChangeError::BadParents);
        }
        let missing = self.missing_parents(&change);
        if !missing.is_empty() {
            return Err(ChangeError::MissingParents(missing));
        }
        verify_control(&change)?;
        let mut history = Bits::default();
        let mut depth = 0;
        for parent in &change.parents {
            let Some(&p) = self.index.get(parent) else { continue };
            if let Some(node) = self.nodes.get_mut(p) {
                node.has_children = true;
                history.union_with(&node.history);
                history.insert(p);
                depth = depth.max(node.depth.saturating_add(1));
            }
        }
        self.index.insert(hash, self.nodes.len());
        self.by_author.entry(change.author).or_default().push(self.nodes.len());
        self.nodes.push(Node { change, hash, history, depth, has_children: false });
        Ok(hash)
    }

    /// Works out which changes count, and the membership they define (see the module docs).
    pub fn resolve(&mut self) {
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.sort_by_key(|&i| self.nodes.get(i).map(|n| (n.depth, n.hash)));
        let mut bans = Bits::default();
        let mut passes = 0;
        let outcome = loop {
            let outcome = self.pass(&order, &bans);
            let mut next = self.bans_of(&outcome);
            passes += 1;
            if passes > MAX_FREE_PASSES {
                next.union_with(&bans);
            }
            if next.same(&bans) {
                break outcome;
            }
            bans = next;
        };
        self.membership = outcome.membership(self);
        self.effective = outcome.effective;
    }

    /// One pass: admits, in `order`, every change not banned that rule 1 allows.
    fn pass(&self, order: &[usize], bans: &Bits) -> Outcome {
        let mut outcome = Outcome::default();
        for &i in order {
            if bans.contains(i) {
                continue;
            }
            let Some(node) = self.nodes.get(i) else { continue };
            if self.allowed(node, &outcome) {
                outcome.admit(i, node);
                outcome.recount(self, node);
            }
        }
        outcome
    }

    /// Rule 1: whether `node`'s author may make it in the state of its history.
    fn allowed(&self, node: &Node, outcome: &Outcome) -> bool {
        let view = View { log: self, outcome, within: Some(&node.history) };
        let author = node.change.author;
        match &node.change.action {
            // `insert` let in only the one valid `Create`, as the first change.
            GroupAction::Create { .. } => node.change.parents.is_empty(),
            _ if outcome.creator.is_none() => false,
            GroupAction::Add { member } => {
                view.is_admin(&author)
                    && !view.is_member(member)
                    && outcome.members.len() < MAX_GROUP_MEMBERS
            }
            GroupAction::Remove { member } => {
                *member != author
                    && Some(*member) != outcome.creator
                    && view.is_member(member)
                    && view.is_admin(&author)
                    && (!view.is_admin(member)
                        || Some(author) == outcome.creator
                        || view.appointed(&author, member))
            }
            GroupAction::Leave => view.is_member(&author),
            GroupAction::Rename { name } => view.is_admin(&author) && *name != view.name(),
            GroupAction::Promote { member } => {
                view.is_admin(&author) && view.is_member(member) && !view.is_admin(member)
            }
        }
    }

    /// Rule 2: every change (effective or not) concurrent with an effective removal of its
    /// author.
    fn bans_of(&self, outcome: &Outcome) -> Bits {
        let mut bans = Bits::default();
        for (user, removals) in &outcome.removals {
            let Some(authored) = self.by_author.get(user) else { continue };
            for &r in removals {
                let Some(removal) = self.nodes.get(r) else { continue };
                for &i in authored {
                    let concurrent = i != r
                        && !removal.history.contains(i)
                        && self.nodes.get(i).is_some_and(|node| !node.history.contains(r));
                    if concurrent {
                        bans.insert(i);
                    }
                }
            }
        }
        bans
    }

    fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }
}

/// The effective changes of one pass, indexed by the user they concern.
#[derive(Default)]
struct Outcome {
    effective: Bits,
    creator: Option<UserId>,
    /// The `Create`.
    root: Option<usize>,
    /// Changes that make a user a member (the `Create` for its members, `Add`).
    adds: HashMap<UserId, Vec<usize>>,
    /// Changes that end a user's membership (`Remove`, the user's `Leave`).
    removals: HashMap<UserId, Vec<usize>>,
    /// Changes that make a user an admin (the `Create` for the creator, `Promote`).
    grants: HashMap<UserId, Vec<usize>>,
    /// Changes that set the name (the `Create`, `Rename`).
    names: Vec<usize>,
    /// Members by all the effective changes so far (bounds additions).
    members: BTreeSet<UserId>,
}

impl Outcome {
    fn admit(&mut self, i: usize, node: &Node) {
        self.effective.insert(i);
        let author = node.change.author;
        match &node.change.action {
            GroupAction::Create { members, .. } => {
                self.creator = Some(author);
                self.root = Some(i);
                for member in members {
                    self.adds.entry(*member).or_default().push(i);
                }
                self.grants.entry(author).or_default().push(i);
                self.names.push(i);
            }
            GroupAction::Add { member } => self.adds.entry(*member).or_default().push(i),
            GroupAction::Remove { member } => self.removals.entry(*member).or_default().push(i),
            GroupAction::Leave => self.removals.entry(author).or_default().push(i),
            GroupAction::Rename { .. } => self.names.push(i),
            GroupAction::Promote { member } => self.grants.entry(*member).or_default().push(i),
        }
    }

    /// Brings `members` up to date after `node` was admitted.
    fn recount(&mut self, log: &ChangeLog, node: &Node) {
        let concerned: Vec<UserId> = match &node.change.action {
            GroupAction::Create { members, .. } => members.clone(),
            GroupAction::Add { member } | GroupAction::Remove { member } => vec![*member],
            GroupAction::Leave => vec![node.change.author],
            GroupAction::Rename { .. } | GroupAction::Promote { .. } => return,
        };
        for user in concerned {
            let member = View { log, outcome: self, within: None }.is_member(&user);
            if member {
                self.members.insert(user);
            } else {
                self.members.remove(&user);
            }
        }
    }

    fn membership(&self, log: &ChangeLog) -> Membership {
        let view = View { log, outcome: self, within: None };
        let members = view.members();
        let admins = members.iter().filter(|m| view.is_admin(m)).copied().collect();
        Membership { creator: self.creator, name: view.name(), members, admins }
    }
}

/// The state that the effective changes within a history define (all of them if `within` is
/// `None`).
struct View<'a> {
    log: &'a ChangeLog,
    outcome: &'a Outcome,
    within: Option<&'a Bits>,
}

impl View<'_> {
    fn holds(&self, i: usize) -> bool {
        self.within.is_none_or(|bits| bits.contains(i))
    }

    fn history(&self, i: usize) -> Option<&Bits> {
        self.log.node(i).map(|n| &n.history)
    }

    /// Of `events` (effective changes about one user), those within this view that have every
    /// removal of `user` within this view in their own history.
    fn standing<'b>(
        &'b self,
        user: &UserId,
        events: &'b [usize],
    ) -> impl Iterator<Item = usize> + 'b {
        let removals: Vec<usize> = self
            .outcome
            .removals
            .get(user)
            .map(|r| r.iter().copied().filter(|&r| self.holds(r)).collect())
            .unwrap_or_default();
        events.iter().copied().filter(move |&e| {
            self.holds(e)
                && self.history(e).is_some_and(|h| removals.iter().all(|&r| h.contains(r)))
        })
    }

    fn is_member(&self, user: &UserId) -> bool {
        let adds = self.outcome.adds.get(user).map(Vec::as_slice).unwrap_or_default();
        self.standing(user, adds).next().is_some()
    }

    /// The promotions that make `user` an admin in this view (empty if it is not one).
    fn grants(&self, user: &UserId) -> Vec<usize> {
        if !self.is_member(user) {
            return Vec::new();
        }
        let grants = self.outcome.grants.get(user).map(Vec::as_slice).unwrap_or_default();
        self.standing(user, grants).collect()
    }

    fn is_admin(&self, user: &UserId) -> bool {
        !self.grants(user).is_empty()
    }

    /// Whether `admin` promoted `member` during its current tenure as admin.
    fn appointed(&self, admin: &UserId, member: &UserId) -> bool {
        let tenure = self.grants(admin);
        self.grants(member).into_iter().any(|g| {
            self.log.node(g).is_some_and(|node| {
                node.change.author == *admin && tenure.iter().any(|&t| node.history.contains(t))
            })
        })
    }

    fn members(&self) -> BTreeSet<UserId> {
        self.outcome.adds.keys().filter(|u| self.is_member(u)).copied().collect()
    }

    /// The name set by the newest rename within the view: the greatest by (depth, hash),
    /// which no other rename in the view follows (a change is deeper than its history). The
    /// renames are listed in pass order, so the search from the end stops at once in a
    /// linear history.
    fn name(&self) -> String {
        let newest = self.outcome.names.iter().rev().find(|&&n| self.holds(n));
        match newest.and_then(|&n| self.log.node(n)).map(|node| &node.change.action) {
            Some(GroupAction::Create { name, .. } | GroupAction::Rename { name }) => name.clone(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests;
