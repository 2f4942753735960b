//! The typed boundary between [`crate::Node`] handles and the driver task: one variant per
//! operation, each with the channel its typed answer goes back on (the shape of rust-libp2p's
//! `examples/file-sharing`). Commands are answered once their effects are durable; queries at
//! once.

use kith_core::engine::{Command, CommandError, CommandResult};
use kith_core::fingerprint::SafetyNumber;
use kith_core::group::Group;
use kith_core::model::{Contact, Message};
#[cfg(feature = "test-utils")]
use kith_core::store::RawWrite;
use kith_core::store::StoreError;
use kith_protocol::content::MediaManifest;
use kith_protocol::{GroupId, MessageId, UserId};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use crate::error::ConnectError;
use crate::media::{Attachment, MediaStoreError};
use crate::relay::RelayUsage;

/// Where an answer of type `T` goes.
pub(crate) type Reply<T> = oneshot::Sender<T>;

/// Whom an attachment goes to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MediaRecipient {
    /// A contact.
    User(UserId),
    /// Every member of a group we are in.
    Group(GroupId),
}

/// A request from a [`crate::Node`] handle.
pub(crate) enum Call {
    /// A user command; answered once its effects are durable.
    Command(Command, Reply<Result<CommandResult, CommandError>>),
    /// An attachment sealed into `sealed`: record it and queue its manifest to `to`;
    /// answered once both are durable.
    SendMedia {
        to: MediaRecipient,
        manifest: Box<MediaManifest>,
        source: std::path::PathBuf,
        reply: Reply<Result<MessageId, CommandError>>,
    },
    /// Where sealed copies go and the largest attachment accepted.
    MediaSettings(Reply<(std::path::PathBuf, u64)>),
    /// Attachments exchanged with a peer (all for `None`).
    Attachments(Option<UserId>, Reply<Result<Vec<Attachment>, MediaStoreError>>),
    /// What this relay holds (`None` if it is not a relay).
    RelayUsage(Reply<Option<RelayUsage>>),
    /// Whether a user can be found: connected, or their record in the DHT.
    FindUser(UserId, Reply<bool>),
    /// Every group.
    Groups(Reply<Vec<Group>>),
    /// A group by id.
    Group(GroupId, Reply<Option<Group>>),
    /// A page of a group's history.
    GroupHistory {
        group: GroupId,
        before: Option<u64>,
        limit: usize,
        reply: Reply<Result<Vec<Message>, StoreError>>,
    },
    /// Group messages waiting for their sender's key.
    PendingGroupMessages(GroupId, Reply<Result<usize, StoreError>>),
    /// A peer's gossipsub score.
    #[cfg(feature = "test-utils")]
    GossipScore(PeerId, Reply<Option<f64>>),
    /// Deliveries under way: direct requests in flight plus messages on their way to relays.
    #[cfg(feature = "test-utils")]
    DeliveriesInFlight(Reply<usize>),
    /// The disappearing-message timer of the conversation with a contact (seconds, 0: off).
    DisappearingTimer(UserId, Reply<u32>),
    /// A group's disappearing-message timer (seconds, 0: off).
    GroupDisappearingTimer(GroupId, Reply<u32>),
    /// Every contact.
    Contacts(Reply<Result<Vec<Contact>, StoreError>>),
    /// A contact by id.
    Contact(UserId, Reply<Result<Option<Contact>, StoreError>>),
    /// A contact by the name we gave it.
    ContactByName(String, Reply<Result<Option<Contact>, StoreError>>),
    /// A page of a conversation.
    History {
        peer: UserId,
        before: Option<u64>,
        limit: usize,
        reply: Reply<Result<Vec<Message>, StoreError>>,
    },
    /// A message by id.
    Message(MessageId, Reply<Result<Option<Message>, StoreError>>),
    /// The safety number with a peer.
    SafetyNumber(UserId, Reply<Result<Option<SafetyNumber>, StoreError>>),
    /// Our display name.
    ProfileName(Reply<Result<Option<String>, StoreError>>),
    /// Messages waiting in the outbox.
    OutboxLen(Reply<usize>),
    /// The addresses we listen on.
    ListenAddrs(Reply<Vec<Multiaddr>>),
    /// Peers we have a connection to.
    ConnectedPeers(Reply<Vec<PeerId>>),
    Connections(Reply<Vec<crate::driver::Connection>>),
    /// Whether we have a connection to a peer.
    IsConnected(PeerId, Reply<bool>),
    /// Dial an address (ending in `/p2p/<peer>`) and add it to the DHT.
    Connect(Multiaddr, Reply<Result<(), ConnectError>>),
    /// Every stored entry (tests).
    #[cfg(feature = "test-utils")]
    Dump(Reply<Result<Vec<RawWrite>, StoreError>>),
    /// A handle on the database, for work that reads it off the driver (a backup); dropped
    /// when that work ends, so that it never outlives the node's database.
    Database(Reply<kith_core::store::SideStore>),
    /// Flush and stop.
    Shutdown(Reply<()>),
}
