//! Groups: membership by signed changes ([`membership`]), and [sender keys](sender_key).
//!
//! A group's state is what its effective changes define (see [`membership`] for the rules):
//! every change is signed by its author's identity key (`verify_strict`) and names the
//! changes its author had seen, so a change's place in the group's history is fixed by hashes,
//! not by a clock its author picks.
//!
//! The group id is derived from the creator's id and a random salt carried in the `Create`
//! message, so only the creator can sign a valid `Create` for it.

pub mod membership;
pub mod sender_key;

use kith_protocol::content::{GroupAction, GroupControl};
use kith_protocol::{ChangeHash, GroupId, GroupTag, UserId};

use crate::crypto::sign::{SignContext, verify};
use crate::identity::IdentityKeyPair;

pub use membership::{ChangeError, ChangeLog, Membership, change_hash};

/// Most changes a group keeps that are not removals or leaves. Only effective changes (and
/// those other members built on) are kept, so only an admin's own changes fill it; beyond it
/// an admin can still remove members (a removal is always taken: a group that changes this
/// often should be recreated, but must never be frozen).
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

/// The bytes a change's signature covers: group, parents (with their count), author, action.
pub(crate) fn signed_bytes(
    group: &GroupId,
    parents: &[ChangeHash],
    author: &UserId,
    action: &GroupAction,
) -> Result<Vec<u8>, ControlError> {
    let action = postcard::to_allocvec(action).map_err(|_| ControlError::Malformed)?;
    let count = u8::try_from(parents.len()).map_err(|_| ControlError::Malformed)?;
    let mut bytes = Vec::with_capacity(32 + 1 + 32 * parents.len() + 32 + action.len());
    bytes.extend_from_slice(&group.0);
    bytes.push(count);
    parents.iter().for_each(|p| bytes.extend_from_slice(&p.0));
    bytes.extend_from_slice(&author.0);
    bytes.extend_from_slice(&action);
    Ok(bytes)
}

/// Signs a change to `group` as `identity`, made after the changes `parents` (ascending).
pub fn sign_control(
    identity: &IdentityKeyPair,
    group: GroupId,
    parents: Vec<ChangeHash>,
    action: GroupAction,
) -> Result<GroupControl, ControlError> {
    let author = identity.user_id();
    let bytes = signed_bytes(&group, &parents, &author, &action)?;
    let signature = identity.sign(SignContext::GroupControl, &[&bytes]);
    Ok(GroupControl { group, parents, author, action, signature })
}

/// Verifies a change's signature by its author.
pub fn verify_control(op: &GroupControl) -> Result<(), ControlError> {
    let bytes = signed_bytes(&op.group, &op.parents, &op.author, &op.action)?;
    verify(&op.author, SignContext::GroupControl, &[&bytes], &op.signature)
        .map_err(|_| ControlError::BadSignature)
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
    /// Who added us, while the invitation waits for the user to accept or decline it
    /// ([`GroupCommand::Accept`](crate::engine::GroupCommand::Accept)).
    pub invited_by: Option<UserId>,
}

impl Group {
    pub(crate) fn new(
        id: GroupId,
        state: &Membership,
        me: &UserId,
        invited_by: Option<UserId>,
    ) -> Self {
        Self {
            id,
            tag: group_tag(&id),
            name: state.name.clone(),
            creator: state.creator,
            members: state.members.iter().copied().collect(),
            admins: state.admins.iter().copied().collect(),
            joined: state.members.contains(me),
            invited_by,
        }
    }
}

#[cfg(test)]
mod tests;
