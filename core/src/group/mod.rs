//! Groups: membership by signed control messages, and [sender keys](sender_key).
//!
//! # Membership
//!
//! A group's state is a pure function of the set of control messages ([`GroupControl`]) a
//! member holds: they are sorted by (Lamport clock, author, hash) and replayed from an empty
//! state, each taking effect only if its author was allowed to make it at that point of the
//! replay (an admin adds, removes, renames and promotes; a member leaves). Two members that
//! hold the same set therefore hold the same member list, whatever order the messages arrived
//! in or how late: concurrent changes by two admins converge. A message that is not (or no
//! longer) allowed stays in the set and simply has no effect.
//!
//! The group id is derived from the creator's id and a random salt carried in the `Create`
//! message, so only the creator can sign a valid `Create` for it; every control message is
//! signed by its author's identity key and verified with `verify_strict`.

pub mod sender_key;

use std::collections::BTreeSet;

use kith_protocol::content::{GroupAction, GroupControl};
use kith_protocol::limits::{MAX_GROUP_MEMBERS, MAX_NAME_BYTES};
use kith_protocol::{GroupId, GroupTag, UserId};

use crate::crypto::sign::{SignContext, verify};
use crate::identity::IdentityKeyPair;

/// Most control messages a group keeps. Beyond it new changes are refused (a group that
/// changes this often should be recreated); it bounds what a member can make others store.
pub const MAX_GROUP_OPS: usize = 4096;

/// BLAKE3 context of group ids.
const GROUP_ID_CONTEXT: &str = "kith 2026-11 group id v1";
/// BLAKE3 context of group tags.
const GROUP_TAG_CONTEXT: &str = "kith 2026-11 group tag v1";

/// The id of the group `creator` creates with `salt`.
pub fn group_id(creator: &UserId, salt: &[u8; 16]) -> GroupId {
    let mut hasher = blake3::Hasher::new_derive_key(GROUP_ID_CONTEXT);
    hasher.update(&creator.0);
    hasher.update(salt);
    GroupId(*hasher.finalize().as_bytes())
}

/// The public tag of a group: names its gossipsub topic and marks its mailbox copies. It
/// reveals nothing about the id (a keyed hash under a fixed context).
pub fn group_tag(group: &GroupId) -> GroupTag {
    let mut hasher = blake3::Hasher::new_derive_key(GROUP_TAG_CONTEXT);
    hasher.update(&group.0);
    GroupTag(*hasher.finalize().as_bytes())
}

/// Why a control message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The author's signature does not verify.
    #[error("bad signature on a group change")]
    BadSignature,
    /// The action could not be encoded for verification.
    #[error("malformed group change")]
    Malformed,
}

/// The bytes a control message's signature covers.
fn signed_bytes(
    group: &GroupId,
    lamport: u64,
    author: &UserId,
    action: &GroupAction,
) -> Result<Vec<u8>, ControlError> {
    let action = postcard::to_allocvec(action).map_err(|_| ControlError::Malformed)?;
    let mut bytes = Vec::with_capacity(32 + 8 + 32 + action.len());
    bytes.extend_from_slice(&group.0);
    bytes.extend_from_slice(&lamport.to_be_bytes());
    bytes.extend_from_slice(&author.0);
    bytes.extend_from_slice(&action);
    Ok(bytes)
}

/// Signs a change to `group` as `identity`.
pub fn sign_control(
    identity: &IdentityKeyPair,
    group: GroupId,
    lamport: u64,
    action: GroupAction,
) -> Result<GroupControl, ControlError> {
    let author = identity.user_id();
    let bytes = signed_bytes(&group, lamport, &author, &action)?;
    let signature = identity.sign(SignContext::GroupControl, &[&bytes]);
    Ok(GroupControl { group, lamport, author, action, signature })
}

/// Verifies a change's signature by its author.
pub fn verify_control(op: &GroupControl) -> Result<(), ControlError> {
    let bytes = signed_bytes(&op.group, op.lamport, &op.author, &op.action)?;
    verify(&op.author, SignContext::GroupControl, &[&bytes], &op.signature)
        .map_err(|_| ControlError::BadSignature)
}

/// The order of replay: Lamport clock, then author, then the hash of the message.
pub(crate) fn op_order(op: &GroupControl) -> (u64, UserId, [u8; 32]) {
    let hash = postcard::to_allocvec(op)
        .map(|bytes| *blake3::hash(&bytes).as_bytes())
        .unwrap_or([0xff; 32]);
    (op.lamport, op.author, hash)
}

/// A group's membership as the replay of its control messages leaves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Who created the group (`None` until its `Create` message is known).
    pub creator: Option<UserId>,
    /// The group's name.
    pub name: String,
    /// Current members.
    pub members: BTreeSet<UserId>,
    /// Current admins (always members).
    pub admins: BTreeSet<UserId>,
    /// The highest Lamport clock seen.
    pub lamport: u64,
}

impl Membership {
    /// Replays `ops` (in any order) for `group`.
    pub fn replay(group: &GroupId, ops: &[GroupControl]) -> Self {
        let mut sorted: Vec<(_, &GroupControl)> = ops.iter().map(|op| (op_order(op), op)).collect();
        sorted.sort_by_key(|(key, _)| *key);
        let mut state = Self::default();
        for (_, op) in sorted {
            state.lamport = state.lamport.max(op.lamport);
            if op.group == *group {
                state.apply(group, op);
            }
        }
        state
    }

    /// Whether the group exists (its `Create` is known).
    pub fn created(&self) -> bool {
        self.creator.is_some()
    }

    /// Applies one change if its author may make it at this point; returns whether it did.
    fn apply(&mut self, group: &GroupId, op: &GroupControl) -> bool {
        let author = op.author;
        let admin = self.admins.contains(&author);
        match &op.action {
            GroupAction::Create { name, members, salt } => {
                let valid = self.creator.is_none()
                    && op.lamport == 0
                    && group_id(&author, salt) == *group
                    && members.contains(&author)
                    && members.len() <= MAX_GROUP_MEMBERS
                    && name.len() <= MAX_NAME_BYTES;
                if valid {
                    self.creator = Some(author);
                    self.name = name.clone();
                    self.members = members.iter().copied().collect();
                    self.admins = BTreeSet::from([author]);
                }
                valid
            }
            _ if self.creator.is_none() || op.lamport == 0 => false,
            GroupAction::Add { member } => {
                let valid = admin
                    && !self.members.contains(member)
                    && self.members.len() < MAX_GROUP_MEMBERS;
                if valid {
                    self.members.insert(*member);
                }
                valid
            }
            GroupAction::Remove { member } => {
                // The creator cannot be removed (only leave), and admins leave rather than
                // remove themselves.
                let valid = admin
                    && self.members.contains(member)
                    && Some(*member) != self.creator
                    && *member != author;
                if valid {
                    self.members.remove(member);
                    self.admins.remove(member);
                }
                valid
            }
            GroupAction::Leave => {
                let valid = self.members.remove(&author);
                self.admins.remove(&author);
                valid
            }
            GroupAction::Rename { name } => {
                if admin {
                    self.name = name.clone();
                }
                admin
            }
            GroupAction::Promote { member } => {
                let valid = admin && self.members.contains(member);
                if valid {
                    self.admins.insert(*member);
                }
                valid
            }
        }
    }
}

/// A group as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Group {
    /// Its id (never published; the topic is [`Group::tag`]).
    pub id: GroupId,
    /// Its public tag.
    pub tag: GroupTag,
    /// Its name.
    pub name: String,
    /// Who created it.
    pub creator: Option<UserId>,
    /// Current members, ourselves included while we are one.
    pub members: Vec<UserId>,
    /// Current admins.
    pub admins: Vec<UserId>,
    /// Whether we are a member (false once we left or were removed).
    pub joined: bool,
}

impl Group {
    pub(crate) fn new(id: GroupId, state: &Membership, me: &UserId) -> Self {
        Self {
            id,
            tag: group_tag(&id),
            name: state.name.clone(),
            creator: state.creator,
            members: state.members.iter().copied().collect(),
            admins: state.admins.iter().copied().collect(),
            joined: state.members.contains(me),
        }
    }
}

#[cfg(test)]
mod tests;
