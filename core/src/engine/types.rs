//! The engine's vocabulary: what goes in, what comes out, and what can go wrong.

use kith_protocol::content::{MediaManifest, PresenceStatus, TypingState};
use kith_protocol::direct::{AckResult, DeliveryAck, RejectReason};
use kith_protocol::prekey::{IdentityBinding, PreKeyBundle, PreKeyResponse};
use kith_protocol::{DecodeError, MessageId, UnixMillis, UserId};
use kith_protocol::{GroupId, GroupTag};

use crate::group::Group;
use crate::group::sender_key::GroupDecryptError;
use crate::model::{Contact, Message, MessageStatus};
use crate::ratchet::DecryptError;
use crate::store::StoreError;

/// An opaque token the driver attaches to an input that needs an answer; the answer comes back
/// as [`Output::Reply`] carrying the same token, once the state behind it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyToken(pub u64);

/// How an envelope reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// On a direct connection authenticated as this user (the envelope's sender must match).
    Direct(UserId),
    /// Through a relay (only the ciphertext authenticates the sender).
    Relay,
}

/// What became of one delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryResult {
    /// The recipient answered.
    Acked(AckResult),
    /// A relay stored the envelope durably for the recipient.
    Stored,
    /// The recipient (and its relays) could not be reached, or the attempt timed out.
    Unreachable,
}

/// Why fetching a prekey bundle failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The user could not be found or reached.
    #[error("the user could not be reached")]
    Unreachable,
    /// The user (or relay) has no bundle.
    #[error("no prekey bundle available")]
    NotFound,
    /// The user published only classical (pre-PQXDH) prekeys: no session is started with
    /// them (no silent downgrade).
    #[error("the user published no post-quantum prekeys")]
    Classical,
}

/// An input from the driver (network, timers).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// Envelope bytes received.
    Envelope {
        /// The encoded envelope.
        bytes: Vec<u8>,
        /// How it arrived.
        via: Via,
        /// Where to send the acknowledgement, if the transport wants one.
        reply: Option<ReplyToken>,
    },
    /// A sealed envelope (sealed sender) a relay handed over: opened with our identity key,
    /// then received as an envelope from the relay.
    SealedEnvelope {
        /// The sealed envelope.
        envelope: kith_protocol::mailbox::SealedEnvelope,
        /// Where to send the acknowledgement.
        reply: Option<ReplyToken>,
    },
    /// The outcome of an [`Output::Deliver`].
    Delivery {
        /// The message delivered.
        id: MessageId,
        /// The outcome.
        result: DeliveryResult,
    },
    /// The answer to an [`Output::FetchPreKeys`].
    PreKeyBundle {
        /// Whose bundle was asked for.
        user: UserId,
        /// The bundle, or why there is none.
        result: Result<Box<PreKeyBundle>, FetchError>,
    },
    /// Someone asks for our prekey bundle (each one-time prekey is handed out once).
    PreKeyRequest {
        /// Where to send the bundle.
        reply: ReplyToken,
    },
    /// A group message received by gossip. Answer with [`Output::Validation`] carrying
    /// `token`: whether to forward it, drop it, or penalise whoever sent it.
    GroupMessage {
        /// The encoded `GroupEnvelope`.
        bytes: Vec<u8>,
        /// Identifies the message in the answer.
        token: ValidationToken,
    },
    /// The outcome of an [`Output::Publish`]: the members the topic did not reach get a copy
    /// through the outbox (directly once reachable, else through their relays).
    GroupPublished {
        /// The group message.
        id: MessageId,
        /// Members that were not subscribed peers of ours when it was published.
        unreached: Vec<UserId>,
    },
    /// A connection to `user` came up: retry what waits for them now.
    PeerReachable {
        /// The user.
        user: UserId,
    },
    /// Time passed (see [`super::Engine::poll_timeout`]).
    Timeout,
}

/// A user's request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Adds (or renames) a contact.
    AddContact {
        /// Their id.
        user: UserId,
        /// The name to know them by (unique among contacts).
        name: String,
        /// Their relays, as multiaddr strings.
        relays: Vec<String>,
    },
    /// Deletes messages from this device only (the peer keeps theirs); one not yet sent is
    /// not sent. Every id must be a message of the conversation with `peer`, or nothing is
    /// deleted ([`CommandError::UnknownMessage`]).
    DeleteLocally {
        /// The conversation.
        peer: UserId,
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// Deletes the whole conversation with `peer` from this device only (the contact stays;
    /// see [`Command::RemoveContact`]); messages not yet sent are not sent.
    DeleteConversation {
        /// The conversation.
        peer: UserId,
    },
    /// Sets the disappearing-message timer of the conversation with `peer` for both sides:
    /// each text or attachment from then on disappears `seconds` after it was read (after it
    /// was sent, for ours); 0 turns it off. The setting is a message of the history.
    SetDisappearing {
        /// The conversation.
        peer: UserId,
        /// Seconds, at most [`kith_protocol::limits::MAX_EXPIRE_SECONDS`]; 0: off.
        seconds: u32,
    },
    /// Removes a contact and the sessions with them (history is kept).
    RemoveContact {
        /// Their id.
        user: UserId,
    },
    /// Marks a contact's identity as verified (safety numbers compared).
    VerifyContact {
        /// Their id.
        user: UserId,
    },
    /// Accepts a contact's changed identity key (after [`Event::IdentityChanged`]).
    TrustIdentity {
        /// Their id.
        user: UserId,
    },
    /// Blocks or unblocks a contact.
    Block {
        /// Their id.
        user: UserId,
        /// Blocked or not.
        blocked: bool,
    },
    /// Sends a text message.
    SendText {
        /// The recipient.
        to: UserId,
        /// The text.
        text: String,
        /// The message it replies to.
        reply_to: Option<MessageId>,
    },
    /// Sends an attachment whose chunks are sealed and available (see [`crate::media`]).
    SendMedia {
        /// The recipient.
        to: UserId,
        /// Everything the recipient needs to fetch, verify and decrypt it.
        manifest: Box<MediaManifest>,
    },
    /// Reacts to a message of a conversation.
    React {
        /// The conversation.
        to: UserId,
        /// The message.
        target: MessageId,
        /// The emoji.
        emoji: String,
        /// Whether to take the reaction back.
        remove: bool,
    },
    /// Edits one of our messages.
    Edit {
        /// The conversation.
        to: UserId,
        /// Our message.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Deletes one of our messages for everyone.
    Delete {
        /// The conversation.
        to: UserId,
        /// Our message.
        target: MessageId,
    },
    /// Marks received messages as read (and sends read receipts if enabled).
    MarkRead {
        /// The conversation.
        peer: UserId,
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// Tells a peer we started or stopped typing (not stored, not retried).
    Typing {
        /// The peer.
        to: UserId,
        /// Started or stopped.
        state: TypingState,
    },
    /// Shares our presence with every contact we have a session with (not retried).
    SetPresence {
        /// Online, away or offline.
        status: PresenceStatus,
    },
    /// Sets our display name and sends it to our contacts.
    SetProfile {
        /// The name.
        display_name: String,
    },
    /// Creates a group with us as its admin (answered with [`CommandResult::Group`]).
    CreateGroup {
        /// Its name.
        name: String,
        /// The other members.
        members: Vec<UserId>,
    },
    /// Acts in a group.
    Group {
        /// The group.
        group: GroupId,
        /// What to do.
        command: GroupCommand,
    },
}

/// What a member can do in a group.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupCommand {
    /// Deletes messages of the group's conversation from this device only (members keep
    /// theirs). Every id must be one of the group's messages, or nothing is deleted.
    DeleteLocally {
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// Deletes the group's whole conversation from this device only (the membership stays).
    DeleteHistory,
    /// Sets the group's disappearing-message timer for every member (see
    /// [`Command::SetDisappearing`]); any member may.
    SetDisappearing {
        /// Seconds; 0: off.
        seconds: u32,
    },
    /// Sends a text message.
    Send {
        /// The text.
        text: String,
        /// The message it replies to.
        reply_to: Option<MessageId>,
    },
    /// Sends an attachment whose chunks are sealed and available.
    SendMedia {
        /// The attachment's manifest.
        manifest: Box<MediaManifest>,
    },
    /// Reacts to a message of the group.
    React {
        /// The message.
        target: MessageId,
        /// The emoji.
        emoji: String,
        /// Whether to take the reaction back.
        remove: bool,
    },
    /// Edits one of our messages.
    Edit {
        /// Our message.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Deletes one of our messages for everyone.
    Delete {
        /// Our message.
        target: MessageId,
    },
    /// Marks messages as read (read receipts go to their authors).
    MarkRead {
        /// The messages.
        ids: Vec<MessageId>,
    },
    /// Tells the group we started or stopped typing.
    Typing {
        /// Started or stopped.
        state: TypingState,
    },
    /// Adds a member (admins).
    Add {
        /// The new member.
        member: UserId,
    },
    /// Removes a member (admins); every remaining member rotates its sender key.
    Remove {
        /// The member.
        member: UserId,
    },
    /// Leaves the group.
    Leave,
    /// Accepts the invitation to a group someone added us to: read receipts go to its
    /// members from now on. Speaking in the group (sending, reacting, typing, changing it)
    /// accepts it too.
    Accept,
    /// Declines the invitation to a group someone added us to: we leave it.
    Decline,
    /// Renames the group (admins).
    Rename {
        /// The new name.
        name: String,
    },
    /// Makes a member an admin (admins).
    Promote {
        /// The member.
        member: UserId,
    },
}

/// Identifies a gossip message awaiting its [`Output::Validation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValidationToken(pub u64);

/// What to do with a gossip message (gossipsub v1.1 validation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Not judged (not our group, a key not yet received, a copy we had by mail): drop it,
    /// without penalty.
    Ignore,
    /// Invalid (malformed, forged, replayed, from a non-member): drop it and penalise the
    /// peer that sent it.
    Reject,
}

/// A group message to publish on its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publication {
    /// The message id (report the outcome with [`Input::GroupPublished`] unless ephemeral).
    pub id: MessageId,
    /// The group's tag: the topic is its hex.
    pub tag: GroupTag,
    /// The encoded `GroupEnvelope`.
    pub envelope: Vec<u8>,
    /// The other members.
    pub members: Vec<UserId>,
    /// Typing indicators: published if anyone listens, never copied to mailboxes.
    pub ephemeral: bool,
}

/// The synchronous result of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandResult {
    /// A message was queued with this id.
    Queued(MessageId),
    /// The command took effect.
    Done,
    /// A group was created with this id.
    Group(GroupId),
}

/// A reply to a request that came in with a [`ReplyToken`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// The acknowledgement of a received envelope.
    Ack(DeliveryAck),
    /// Our prekey bundle.
    PreKeys(PreKeyResponse),
}

/// An envelope to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The envelope's id (report the outcome with [`Input::Delivery`]).
    pub id: MessageId,
    /// The recipient.
    pub to: UserId,
    /// The encoded envelope.
    pub envelope: Vec<u8>,
    /// Typing and presence: deliver directly if the peer is connected, never via relays, and
    /// report nothing back.
    pub ephemeral: bool,
    /// The recipient's known relays (multiaddrs), for the fallback.
    pub relays: Vec<String>,
}

/// Something the driver must do, or tell the app.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Output {
    /// Send an envelope.
    Deliver(Delivery),
    /// Fetch `user`'s prekey bundle (directly, from their relays or the DHT) and report it
    /// with [`Input::PreKeyBundle`].
    FetchPreKeys {
        /// Whose bundle.
        user: UserId,
        /// Their known relays.
        relays: Vec<String>,
    },
    /// Answer a request.
    Reply {
        /// The token the request came with.
        token: ReplyToken,
        /// The answer.
        reply: Reply,
    },
    /// Publish a group message on its topic.
    Publish(Publication),
    /// Subscribe to a group's topic and connect to its members (repeated when members join).
    Subscribe {
        /// The group's tag.
        tag: GroupTag,
        /// The other members.
        members: Vec<UserId>,
    },
    /// Leave a group's topic.
    Unsubscribe {
        /// The group's tag.
        tag: GroupTag,
    },
    /// Report the validation of a gossip message.
    Validation {
        /// The token it came with.
        token: ValidationToken,
        /// The verdict.
        verdict: Verdict,
    },
    /// Tell the app.
    Event(Event),
}

/// Something the app should know.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A new message arrived.
    Message(Box<Message>),
    /// One of our messages changed status.
    StatusChanged {
        /// The conversation (ourselves for a group message).
        peer: UserId,
        /// The group, for a group message.
        group: Option<GroupId>,
        /// The message.
        id: MessageId,
        /// Its new status.
        status: MessageStatus,
    },
    /// A message was edited, deleted or reacted to.
    MessageUpdated(Box<Message>),
    /// Messages were deleted from this device: by the user ([`Command::DeleteLocally`],
    /// [`Command::DeleteConversation`] and their group forms), or because they disappeared.
    MessagesDeleted {
        /// The conversation's peer (ourselves for a group).
        peer: UserId,
        /// The group, for a group's conversation.
        group: Option<GroupId>,
        /// The messages deleted.
        ids: Vec<MessageId>,
        /// Why.
        reason: DeleteReason,
    },
    /// A conversation's disappearing-message timer changed (set by us or by someone in it;
    /// the message that set it is in the history).
    TimerChanged {
        /// The conversation's peer (ourselves for a group).
        peer: UserId,
        /// The group, for a group's conversation.
        group: Option<GroupId>,
        /// The new timer in seconds (0: off).
        seconds: u32,
    },
    /// A group was created, joined, changed, or left.
    GroupChanged(Box<Group>),
    /// A member started or stopped typing in a group.
    GroupTyping {
        /// The group.
        group: GroupId,
        /// Who.
        peer: UserId,
        /// Started or stopped.
        state: TypingState,
    },
    /// A peer started or stopped typing.
    Typing {
        /// Who.
        peer: UserId,
        /// Started or stopped.
        state: TypingState,
    },
    /// A peer's presence changed.
    Presence {
        /// Who.
        peer: UserId,
        /// Their status.
        status: PresenceStatus,
        /// When they were last active, if they share it.
        last_seen: Option<UnixMillis>,
    },
    /// A contact was created (someone wrote to us first) or changed (profile name).
    ContactChanged(Box<Contact>),
    /// The session with a contact started anew under the same identity key: they restored a
    /// backup or lost their sessions (a new X3DH session replaced one that had carried
    /// messages), or their device could not decrypt ours and we started a new one. Nothing to
    /// accept: the identity is the one already pinned. Messages in flight under the old
    /// session may be lost.
    SessionReset {
        /// Who.
        peer: UserId,
    },
    /// A contact's identity key changed. Messages to and from them are refused until the user
    /// accepts the new key with [`Command::TrustIdentity`].
    IdentityChanged {
        /// Who.
        peer: UserId,
        /// The new identity.
        identity: IdentityBinding,
    },
    /// An envelope was refused (for diagnostics; the sender was told too).
    Rejected {
        /// The claimed sender, if the envelope decoded.
        sender: Option<UserId>,
        /// Why.
        reason: RejectReason,
    },
}

/// Why a command failed. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The user id is not a valid Kith identity.
    #[error("not a valid Kith user id")]
    InvalidUser,
    /// The command names ourselves where a peer is needed.
    #[error("cannot do that with yourself")]
    SelfAddressed,
    /// No contact with that id.
    #[error("unknown contact")]
    UnknownContact,
    /// Another contact already has that name.
    #[error("the name `{0}` is already taken by another contact")]
    NameTaken(String),
    /// Another group we are in already has that name (names are how users pick a group).
    #[error("you are already in a group named `{0}`")]
    GroupNameTaken(String),
    /// The name is empty or too long.
    #[error("invalid name")]
    InvalidName,
    /// The contact is blocked.
    #[error("the contact is blocked")]
    Blocked,
    /// The message breaks a wire limit (e.g. text too long or empty).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The referenced message does not exist in that conversation (or is not ours to edit).
    #[error("no such message in that conversation")]
    UnknownMessage,
    /// The outbox is full.
    #[error("the outbox is full ({max} messages waiting)")]
    OutboxFull {
        /// The limit.
        max: usize,
    },
    /// The identity key of the contact changed and was not accepted yet.
    #[error("the contact's identity key changed; verify and trust it first")]
    IdentityChanged,
    /// No such group.
    #[error("unknown group")]
    UnknownGroup,
    /// We are not a member of the group (any more).
    #[error("not a member of this group")]
    NotAMember,
    /// Only an admin may do that.
    #[error("only a group admin can do that")]
    NotAnAdmin,
    /// The change does not apply (already a member, not a member, the creator, ...).
    #[error("that change does not apply to this group")]
    InvalidChange,
    /// The group has reached a limit (members or changes).
    #[error("the group is full")]
    GroupFull,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an envelope was refused; mapped onto the [`RejectReason`] the sender sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The bytes are not a valid envelope.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] DecodeError),
    /// Not addressed to us.
    #[error("envelope addressed to someone else")]
    WrongRecipient,
    /// The direct connection's peer is not the envelope's sender.
    #[error("sender does not match the connection's peer")]
    SenderMismatch,
    /// The sender's identity binding does not verify.
    #[error("the sender's identity signature is invalid")]
    BadIdentity,
    /// The sender's identity key differs from the pinned one.
    #[error("the sender's identity key changed")]
    IdentityChanged,
    /// The sender is blocked.
    #[error("the sender is blocked")]
    Blocked,
    /// No session matches and the message does not start one (or names an unknown prekey).
    #[error("no session for this message")]
    NoSession,
    /// Decryption failed.
    #[error("decryption failed: {0}")]
    Decrypt(#[from] DecryptError),
    /// The decrypted content is not valid.
    #[error("invalid content")]
    BadContent,
    /// A kind of message this build does not handle.
    #[error("unsupported message kind")]
    Unsupported,
    /// A classical X3DH initial message for a new session: Kith sets up sessions with PQXDH
    /// only (no silent downgrade to a handshake a quantum computer could later break).
    #[error("a classical (X3DH) session was refused: Kith requires PQXDH")]
    ClassicalHandshake,
    /// A group message for a group we are not in.
    #[error("unknown group")]
    UnknownGroup,
    /// A group message whose sender is not a member.
    #[error("the sender is not a member of the group")]
    NotAMember,
    /// A group message seen before, arriving by gossip again.
    #[error("replayed group message")]
    Replay,
    /// A group message that does not verify or open.
    #[error("group message refused: {0}")]
    Group(#[from] GroupDecryptError),
    /// Too many group messages wait for keys.
    #[error("too many group messages waiting for keys")]
    PendingFull,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReceiveError {
    /// The reason reported to the sender.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            Self::Malformed(_) | Self::BadContent => RejectReason::Malformed,
            Self::WrongRecipient => RejectReason::WrongRecipient,
            Self::SenderMismatch => RejectReason::SenderMismatch,
            Self::Decrypt(DecryptError::Duplicate { .. }) => RejectReason::Expired,
            Self::Decrypt(DecryptError::TooFarAhead { .. }) => RejectReason::TooFarAhead,
            Self::BadIdentity | Self::Decrypt(_) => RejectReason::DecryptFailed,
            Self::IdentityChanged => RejectReason::IdentityChanged,
            Self::Blocked => RejectReason::Blocked,
            Self::NoSession => RejectReason::NoSession,
            Self::Unsupported | Self::ClassicalHandshake => RejectReason::Unsupported,
            Self::UnknownGroup => RejectReason::WrongRecipient,
            Self::NotAMember => RejectReason::Blocked,
            Self::Replay | Self::Group(GroupDecryptError::Duplicate { .. }) => {
                RejectReason::Expired
            }
            Self::Group(GroupDecryptError::TooFarAhead { .. }) => RejectReason::TooFarAhead,
            Self::Group(_) => RejectReason::DecryptFailed,
            Self::Store(_) | Self::PendingFull => RejectReason::Unavailable,
        }
    }
}

/// Why opening an engine failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store holds no identity (create one first).
    #[error("no identity in this store; create one first")]
    NoIdentity,
    /// The store already holds an identity.
    #[error("this store already holds an identity")]
    IdentityExists,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why messages were deleted from this device ([`Event::MessagesDeleted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// The user deleted them here.
    Local,
    /// Their disappearing-message timer ran out: whatever else holds them (attachment files,
    /// downloads) goes too.
    Expired,
}
