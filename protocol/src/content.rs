//! Message contents: the plaintext inside every ratchet or group ciphertext.
//!
//! Nothing in this module is visible to relays or the network. `Debug` output of every type
//! here omits user text and keys (it shows lengths instead), so contents can be logged by type
//! without leaking what they say.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::{Frame, Invalid, check_count, check_len, check_non_empty};
use crate::envelope::check_text;
use crate::ids::{
    ChangeHash, ChunkHash, GroupId, MediaId, MessageId, Signature, UnixMillis, UserId,
};
use crate::limits::{
    MAX_CHANGE_PARENTS, MAX_CHANGES_PER_MESSAGE, MAX_CHUNK_BYTES, MAX_CONTENT_BYTES,
    MAX_EXPIRE_SECONDS, MAX_FILE_NAME_BYTES, MAX_GROUP_MEMBERS, MAX_MEDIA_CHUNKS, MAX_MIME_BYTES,
    MAX_NAME_BYTES, MAX_REACTION_BYTES, MAX_RECEIPT_IDS, MAX_SYNC_HEADS, MAX_TEXT_BYTES,
    MAX_THUMBNAIL_BYTES,
};

/// Shows a length in place of the redacted value.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

/// A 32-byte symmetric key carried inside a content (media key, sender chain key). Zeroized on
/// drop, compared in constant time, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SymmetricKey(pub [u8; 32]);

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(..)")
    }
}

impl PartialEq for SymmetricKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SymmetricKey {}

/// The plaintext of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// When the sender wrote it, by the sender's clock.
    pub sent_at: UnixMillis,
    /// What it says.
    pub body: Body,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A text message.
    Text(Text),
    /// An attachment.
    Media(MediaManifest),
    /// A reaction to a message.
    Reaction(Reaction),
    /// Delivery or read receipts.
    Receipt(Receipt),
    /// A typing indicator.
    Typing(TypingState),
    /// Presence: online, away or offline with last seen.
    Presence(Presence),
    /// A new text for an earlier message.
    Edit(Edit),
    /// Delete an earlier message for everyone.
    Delete(Delete),
    /// The sender's profile.
    Profile(Profile),
    /// Signed changes to one group: a change made now, or the ones a member asked for.
    GroupChanges(GroupChanges),
    /// The sender's sender key for a group, sent pairwise.
    SenderKeyDistribution(SenderKeyDistribution),
    /// A member asks for the changes of a group that it lacks.
    GroupSync(GroupSync),
    /// The conversation's disappearing-message timer, set by the sender for everyone in it.
    /// It is a message of the history: everyone sees who set it.
    ExpireTimer(ExpireTimer),
    /// A member asks another, pairwise, for its current sender key of a group (it holds
    /// messages it cannot open: its keys were lost, or restored from a backup without them).
    SenderKeyRequest(SenderKeyRequest),
    /// The key the sender's relays accept for sealed deposits from the recipient (sealed
    /// sender): one per contact, replaced when the sender revokes it.
    AccessKey(crate::mailbox::AccessKey),
}

/// A request for the recipient's current sender key of `group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeyRequest {
    /// The group.
    pub group: GroupId,
}

/// A conversation's disappearing-message timer: each text or attachment sent or received while
/// it is on disappears from every member's device `seconds` after it was read (after it was
/// sent, on the sender's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireTimer {
    /// Seconds, at most [`MAX_EXPIRE_SECONDS`]; 0 turns the timer off.
    pub seconds: u32,
}

/// A text message.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The text, UTF-8.
    pub body: String,
    /// The message this one replies to.
    pub reply_to: Option<MessageId>,
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Text")
            .field("body", &Redacted(self.body.len()))
            .field("reply_to", &self.reply_to)
            .finish()
    }
}

/// An attachment manifest: everything needed to fetch, verify and decrypt the chunks.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaManifest {
    /// Random id bound into every chunk's associated data.
    pub media_id: MediaId,
    /// File name as the sender had it.
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// BLAKE3 hash of each sealed chunk, in order.
    pub chunk_hashes: Vec<ChunkHash>,
    /// The attachment key.
    pub key: SymmetricKey,
    /// A small preview image, for images and videos.
    #[serde(with = "serde_bytes")]
    pub thumbnail: Option<Vec<u8>>,
    /// A caption shown with the attachment.
    pub caption: Option<String>,
}

impl fmt::Debug for MediaManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaManifest")
            .field("media_id", &self.media_id)
            .field("name", &Redacted(self.name.len()))
            .field("mime", &self.mime)
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size)
            .field("chunks", &self.chunk_hashes.len())
            .field("key", &self.key)
            .field("thumbnail", &self.thumbnail.as_ref().map(|t| Redacted(t.len())))
            .field("caption", &self.caption.as_ref().map(|c| Redacted(c.len())))
            .finish()
    }
}

/// A reaction (an emoji) to a message; `remove` takes a previous reaction back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The message reacted to.
    pub target: MessageId,
    /// The emoji.
    pub emoji: String,
    /// Whether this removes the sender's earlier reaction with this emoji.
    pub remove: bool,
}

impl fmt::Debug for Reaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reaction")
            .field("target", &self.target)
            .field("emoji", &Redacted(self.emoji.len()))
            .field("remove", &self.remove)
            .finish()
    }
}

/// Receipts for one or more messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The messages it covers.
    pub ids: Vec<MessageId>,
}

/// What a receipt reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// The message reached the recipient's device.
    Delivered,
    /// The recipient displayed the message.
    Read,
}

/// Typing indicator state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TypingState {
    /// The sender started typing.
    Started,
    /// The sender stopped typing (or sent the message).
    Stopped,
}

/// Presence of the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Online, away or offline.
    pub status: PresenceStatus,
    /// When the sender was last active; `None` when they share no last-seen time.
    pub last_seen: Option<UnixMillis>,
}

/// A presence status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceStatus {
    /// Active now.
    Online,
    /// Running but idle.
    Away,
    /// Going offline.
    Offline,
}

/// A new text for an earlier message of the same sender.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    /// The message edited.
    pub target: MessageId,
    /// Its new text.
    pub body: String,
}

impl fmt::Debug for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Edit")
            .field("target", &self.target)
            .field("body", &Redacted(self.body.len()))
            .finish()
    }
}

/// Deletes an earlier message of the same sender for everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    /// The message deleted.
    pub target: MessageId,
}

/// The sender's profile.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The name the sender wants to be shown with.
    pub display_name: String,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile").field("display_name", &Redacted(self.display_name.len())).finish()
    }
}

/// A change to a group, signed by the member who makes it.
///
/// Changes form a hash-linked graph: each names, by [`ChangeHash`], the changes its author had
/// seen last (`parents`), and the signature covers them. What a change may do is judged in the
/// state those parents define, so no one can place a change before one it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupControl {
    /// The group.
    pub group: GroupId,
    /// The changes the author had seen last, in ascending order without repeats: empty for
    /// [`GroupAction::Create`] only, else 1 to [`MAX_CHANGE_PARENTS`].
    pub parents: Vec<ChangeHash>,
    /// Who made the change (an admin, or the leaving member for [`GroupAction::Leave`]).
    pub author: UserId,
    /// The change.
    pub action: GroupAction,
    /// Ed25519 signature by `author` over the group, parents and action.
    pub signature: Signature,
}

impl GroupControl {
    fn validate(&self) -> Result<(), Invalid> {
        match &self.action {
            GroupAction::Create { name, members, .. } => {
                if !self.parents.is_empty() {
                    return Err(Invalid::OutOfRange { field: "parents" });
                }
                check_text("group name", name, MAX_NAME_BYTES)?;
                check_non_empty("members", members.len())?;
                check_count("members", members.len(), MAX_GROUP_MEMBERS)?;
            }
            GroupAction::Rename { name } => check_text("group name", name, MAX_NAME_BYTES)?,
            GroupAction::Add { .. }
            | GroupAction::Remove { .. }
            | GroupAction::Leave
            | GroupAction::Promote { .. } => {}
        }
        if !matches!(self.action, GroupAction::Create { .. }) {
            check_non_empty("parents", self.parents.len())?;
        }
        check_count("parents", self.parents.len(), MAX_CHANGE_PARENTS)?;
        check_ascending("parents", &self.parents)
    }
}

/// Signed changes to one group, in an order where parents come first when they are included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChanges {
    /// The group every change is for.
    pub group: GroupId,
    /// The changes, 1 to [`MAX_CHANGES_PER_MESSAGE`].
    pub changes: Vec<GroupControl>,
}

impl GroupChanges {
    fn validate(&self) -> Result<(), Invalid> {
        check_non_empty("changes", self.changes.len())?;
        check_count("changes", self.changes.len(), MAX_CHANGES_PER_MESSAGE)?;
        for change in &self.changes {
            if change.group != self.group {
                return Err(Invalid::OutOfRange { field: "changes" });
            }
            change.validate()?;
        }
        Ok(())
    }
}

/// A request for the changes of a group that the sender lacks: the receiver answers with
/// every change it holds outside the history of `heads`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSync {
    /// The group.
    pub group: GroupId,
    /// The requester's newest changes (ascending, without repeats, at most
    /// [`MAX_SYNC_HEADS`]); empty when it holds none.
    pub heads: Vec<ChangeHash>,
}

/// Checks that `hashes` is strictly ascending: sorted and without repeats, so that a list has
/// one encoding.
fn check_ascending(field: &'static str, hashes: &[ChangeHash]) -> Result<(), Invalid> {
    if hashes.windows(2).all(|pair| matches!(pair, [a, b] if a < b)) {
        Ok(())
    } else {
        Err(Invalid::OutOfRange { field })
    }
}

/// The changes a group admits.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAction {
    /// Creates the group. The group id is derived from the creator and `salt`, so only the
    /// creator can sign a valid `Create` for it.
    Create {
        /// Group name.
        name: String,
        /// Initial members, creator included.
        members: Vec<UserId>,
        /// Random bytes the group id is derived from, with the creator's id.
        salt: [u8; 16],
    },
    /// Adds a member.
    Add {
        /// The new member.
        member: UserId,
    },
    /// Removes a member (admins only).
    Remove {
        /// The removed member.
        member: UserId,
    },
    /// The author leaves.
    Leave,
    /// Renames the group.
    Rename {
        /// The new name.
        name: String,
    },
    /// Makes a member an admin.
    Promote {
        /// The new admin.
        member: UserId,
    },
}

impl fmt::Debug for GroupAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create { name, members, .. } => f
                .debug_struct("Create")
                .field("name", &Redacted(name.len()))
                .field("members", &members.len())
                .finish(),
            Self::Add { member } => f.debug_struct("Add").field("member", member).finish(),
            Self::Remove { member } => f.debug_struct("Remove").field("member", member).finish(),
            Self::Leave => f.write_str("Leave"),
            Self::Rename { name } => {
                f.debug_struct("Rename").field("name", &Redacted(name.len())).finish()
            }
            Self::Promote { member } => f.debug_struct("Promote").field("member", member).finish(),
        }
    }
}

/// A member's sender key for a group, delivered pairwise over ratchet sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeyDistribution {
    /// The group.
    pub group: GroupId,
    /// The chain this key starts.
    pub chain_id: u32,
    /// The iteration `chain_key` belongs to.
    pub iteration: u32,
    /// The chain key at `iteration`.
    pub chain_key: SymmetricKey,
    /// The Ed25519 public key that signs this chain's messages.
    pub signing_key: [u8; 32],
}

impl Body {
    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Text(t) => check_text("text", &t.body, MAX_TEXT_BYTES),
            Self::Media(m) => {
                check_text("name", &m.name, MAX_FILE_NAME_BYTES)?;
                check_len("mime", m.mime.len(), MAX_MIME_BYTES)?;
                check_count("chunk_hashes", m.chunk_hashes.len(), MAX_MEDIA_CHUNKS)?;
                // A sealed chunk (plaintext plus the 16-byte tag) must fit a media frame.
                if m.chunk_size == 0 || m.chunk_size as usize + 16 > MAX_CHUNK_BYTES {
                    return Err(Invalid::OutOfRange { field: "chunk_size" });
                }
                // The hash list must cover exactly `size` bytes.
                let expected = m.size.div_ceil(u64::from(m.chunk_size)).max(1);
                if expected != m.chunk_hashes.len() as u64 {
                    return Err(Invalid::OutOfRange { field: "chunk_hashes" });
                }
                if let Some(t) = &m.thumbnail {
                    check_len("thumbnail", t.len(), MAX_THUMBNAIL_BYTES)?;
                }
                if let Some(c) = &m.caption {
                    check_len("caption", c.len(), MAX_TEXT_BYTES)?;
                }
                Ok(())
            }
            Self::Reaction(r) => check_text("emoji", &r.emoji, MAX_REACTION_BYTES),
            Self::Receipt(r) => {
                check_non_empty("ids", r.ids.len())?;
                check_count("ids", r.ids.len(), MAX_RECEIPT_IDS)
            }
            Self::Typing(_) | Self::Presence(_) | Self::Delete(_) => Ok(()),
            Self::Edit(e) => check_text("edit", &e.body, MAX_TEXT_BYTES),
            Self::Profile(p) => check_text("display_name", &p.display_name, MAX_NAME_BYTES),
            Self::GroupChanges(c) => c.validate(),
            Self::GroupSync(sync) => {
                check_count("heads", sync.heads.len(), MAX_SYNC_HEADS)?;
                check_ascending("heads", &sync.heads)
            }
            Self::SenderKeyDistribution(_) => Ok(()),
            Self::ExpireTimer(t) if t.seconds > MAX_EXPIRE_SECONDS => {
                Err(Invalid::OutOfRange { field: "seconds" })
            }
            Self::ExpireTimer(_) | Self::SenderKeyRequest(_) | Self::AccessKey(_) => Ok(()),
        }
    }
}

impl Frame for Content {
    const NAME: &'static str = "content";
    const MAX_BYTES: usize = MAX_CONTENT_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        self.body.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_text_and_keys() {
        let text = Body::Text(Text { body: "attack at dawn".into(), reply_to: None });
        let shown = format!("{text:?}");
        assert!(!shown.contains("attack"), "{shown}");
        assert!(shown.contains("<14 bytes>"), "{shown}");

        let key = SymmetricKey([0x5a; 32]);
        assert_eq!(format!("{key:?}"), "SymmetricKey(..)");
        let skd = SenderKeyDistribution {
            group: GroupId([1; 32]),
            chain_id: 1,
            iteration: 0,
            chain_key: key,
            signing_key: [2; 32],
        };
        let shown = format!("{skd:?}");
        assert!(!shown.contains("5a") && !shown.contains("90, 90"), "{shown}");
    }
}
