//! The app-facing data model: contacts, messages and their delivery status.

use kith_protocol::content::{Body, PresenceStatus, ReceiptKind};
use kith_protocol::direct::RejectReason;
use kith_protocol::mailbox::AccessKey;
use kith_protocol::prekey::IdentityBinding;
use kith_protocol::{GroupId, MessageId, UnixMillis, UserId};
use serde::{Deserialize, Serialize};

/// A contact: someone we have added, or who wrote to us.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Contact {
    /// Their id.
    pub user: UserId,
    /// The name we gave them; `None` for someone who wrote to us first (a message request).
    pub name: Option<String>,
    /// The display name from their profile.
    pub profile_name: Option<String>,
    /// Their pinned identity (X25519 identity key and its signature), fixed at first contact.
    /// A different key is never accepted silently.
    pub identity: Option<IdentityBinding>,
    /// Whether we compared safety numbers with them.
    pub verified: bool,
    /// Their relays (multiaddrs), from their contact string or record.
    pub relays: Vec<String>,
    /// When the contact was created.
    pub added_at: UnixMillis,
    /// Their presence, as they last shared it.
    pub presence: Option<PresenceStatus>,
    /// When they were last seen active (their clock), if they share it.
    pub last_seen: Option<UnixMillis>,
    /// Whether messages from them are refused.
    pub blocked: bool,
    /// A new identity they presented that differs from the pinned one; nothing is exchanged
    /// with them until the user accepts it.
    pub pending_identity: Option<IdentityBinding>,
    /// Whether our profile was sent to them.
    pub profile_shared: bool,
    /// The access key we handed them for our relays (sealed sender); `None` until it is sent,
    /// and again once revoked (blocked).
    pub access_given: Option<AccessKey>,
    /// The access key they handed us for their relays.
    pub access_key: Option<AccessKey>,
}

impl Contact {
    /// A new contact with nothing known but the id.
    pub fn new(user: UserId, now: UnixMillis) -> Self {
        Self {
            user,
            name: None,
            profile_name: None,
            identity: None,
            verified: false,
            relays: Vec::new(),
            added_at: now,
            presence: None,
            last_seen: None,
            blocked: false,
            pending_identity: None,
            profile_shared: false,
            access_given: None,
            access_key: None,
        }
    }

    /// The best name to show: ours, else theirs, else `None`.
    pub fn display_name(&self) -> Option<&str> {
        self.name.as_deref().or(self.profile_name.as_deref())
    }
}

/// Which way a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// From the peer to us.
    Incoming,
    /// From us to the peer.
    Outgoing,
}

/// Where a message stands. Outgoing messages move Queued → Sent → Delivered → Read (or end in
/// Failed); incoming ones are Received, then Read once shown. Status never moves backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageStatus {
    /// Outgoing: stored locally, not yet held by anyone else.
    Queued,
    /// Outgoing: the recipient (or a relay) holds it durably.
    Sent,
    /// Outgoing: the recipient's device has it (reported by an encrypted receipt).
    Delivered,
    /// Outgoing: the recipient displayed it. Incoming: we displayed it.
    Read,
    /// Incoming: received, not yet shown.
    Received,
    /// Outgoing: could not be delivered, and why.
    Failed(DeliveryFailure),
}

impl MessageStatus {
    /// Progress rank; a status only ever changes to one of higher rank.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Received => 1,
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Read => 3,
            Self::Failed(_) => 4,
        }
    }

    /// Whether moving to `next` is progress.
    pub(crate) fn advances_to(self, next: MessageStatus) -> bool {
        next.rank() > self.rank() && !matches!(self, Self::Failed(_))
    }
}

/// Why a message could not be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryFailure {
    /// The recipient's identity key changed; verify it before sending again.
    #[error("the recipient's identity key changed")]
    IdentityChanged,
    /// The recipient refused it.
    #[error("the recipient refused the message: {0}")]
    Rejected(RejectReason),
    /// No valid prekey bundle could be obtained to start a session.
    #[error("no valid prekey bundle for the recipient")]
    NoPreKeys,
    /// Not delivered within the outbox deadline.
    #[error("not delivered before the deadline")]
    Expired,
    /// The recipient runs a version of Kith without post-quantum (PQXDH) prekeys; Kith does
    /// not fall back to a classical session, which a future quantum computer could decrypt.
    #[error("the recipient has no post-quantum prekeys (their Kith is too old); not sent")]
    NotPostQuantum,
}

/// A reaction on a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReaction {
    /// Who reacted.
    pub from: UserId,
    /// With what.
    pub emoji: String,
}

/// A message in a conversation's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// The other party of the conversation; in a group, the author (ourselves for ours).
    pub peer: UserId,
    /// The group, for a group message.
    pub group: Option<GroupId>,
    /// Which way it went.
    pub direction: Direction,
    /// When the sender wrote it (sender's clock).
    pub sent_at: UnixMillis,
    /// When it was stored here (local clock).
    pub stored_at: UnixMillis,
    /// What it says (text or attachment); for a deleted message, what it said is gone.
    pub body: Option<Body>,
    /// Where it stands.
    pub status: MessageStatus,
    /// Reactions, one per user and emoji.
    pub reactions: Vec<MessageReaction>,
    /// When it was last edited (sender's clock).
    pub edited_at: Option<UnixMillis>,
    /// Position in the conversation.
    pub seq: u64,
    /// Our group messages: which members reported delivery or reading.
    pub receipts: Vec<MemberReceipt>,
}

/// A member's receipt for one of our group messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReceipt {
    /// The member.
    pub member: UserId,
    /// The furthest they reported: delivered or read.
    pub kind: ReceiptKind,
}
