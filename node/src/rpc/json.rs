//! The JSON shapes of the control API: stable, documented views of Kith's types (ids as hex,
//! users as peer ids, statuses as lowercase words).

use kith_core::engine::{DeleteReason, Event};
use kith_core::group::Group;
use kith_core::identity::peer_id_of;
use kith_core::model::{Contact, Direction, Message, MessageStatus};
use kith_protocol::UserId;
use kith_protocol::content::{Body, PresenceStatus, TypingState};
use serde::Serialize;

use crate::media::{Attachment, AttachmentState, MediaEvent, TransferDirection};
use crate::{NodeEvent, StorageStatus};

/// A user as a peer id string.
pub fn peer(user: &UserId) -> String {
    peer_id_of(user).map(|p| p.to_string()).unwrap_or_else(|_| user.to_string())
}

/// A status as a word; a failure carries its reason.
pub fn status(status: &MessageStatus) -> (&'static str, Option<String>) {
    match status {
        MessageStatus::Queued => ("queued", None),
        MessageStatus::Sent => ("sent", None),
        MessageStatus::Delivered => ("delivered", None),
        MessageStatus::Read => ("read", None),
        MessageStatus::Received => ("received", None),
        MessageStatus::Failed(why) => ("failed", Some(why.to_string())),
    }
}

fn presence(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

/// A reaction.
#[derive(Clone, Debug, Serialize)]
pub struct ReactionJson {
    /// Who reacted (peer id).
    pub from: String,
    /// The emoji.
    pub emoji: String,
}

/// A message of the history.
#[derive(Clone, Debug, Serialize)]
pub struct MessageJson {
    /// Message id (hex).
    pub id: String,
    /// The other party (peer id); in a group, the author.
    pub peer: String,
    /// The group (hex id), for a group message.
    pub group: Option<String>,
    /// `incoming` or `outgoing`.
    pub direction: &'static str,
    /// `text`, `media`, `timer` (the conversation's disappearing-message timer was set),
    /// `other` or `deleted`.
    pub kind: &'static str,
    /// For a `timer` message: the timer it set, in seconds (0: off).
    pub timer_seconds: Option<u32>,
    /// The text (or the attachment's caption).
    pub text: Option<String>,
    /// The attachment's file name.
    pub file_name: Option<String>,
    /// The attachment and where it stands (filled in by `history` and `message`).
    pub attachment: Option<AttachmentJson>,
    /// The message this replies to (hex id).
    pub reply_to: Option<String>,
    /// `queued`, `sent`, `delivered`, `read`, `received` or `failed`.
    pub status: &'static str,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// Sender's time (ms since the Unix epoch).
    pub sent_at: u64,
    /// Local time it was stored.
    pub stored_at: u64,
    /// Sender's time of the last edit.
    pub edited_at: Option<u64>,
    /// Reactions.
    pub reactions: Vec<ReactionJson>,
    /// Position in the conversation.
    pub seq: u64,
    /// Our group messages: members that reported `delivered` or `read` (peer id → word).
    pub receipts: Vec<(String, &'static str)>,
}

/// A group.
#[derive(Clone, Debug, Serialize)]
pub struct GroupJson {
    /// Group id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Members (peer ids).
    pub members: Vec<String>,
    /// Admins (peer ids).
    pub admins: Vec<String>,
    /// Whether we are a member.
    pub joined: bool,
    /// Who added us (peer id), while the invitation waits for `group.accept` or
    /// `group.decline`.
    pub invited_by: Option<String>,
}

impl From<&Group> for GroupJson {
    fn from(g: &Group) -> Self {
        Self {
            id: g.id.to_string(),
            name: g.name.clone(),
            members: g.members.iter().map(peer).collect(),
            admins: g.admins.iter().map(peer).collect(),
            joined: g.joined,
            invited_by: g.invited_by.as_ref().map(peer),
        }
    }
}

impl From<&Message> for MessageJson {
    fn from(m: &Message) -> Self {
        let (kind, text, file_name, reply_to) = match &m.body {
            Some(Body::Text(t)) => {
                ("text", Some(t.body.clone()), None, t.reply_to.map(|r| r.to_string()))
            }
            Some(Body::Media(media)) => {
                ("media", media.caption.clone(), Some(media.name.clone()), None)
            }
            Some(Body::ExpireTimer(_)) => ("timer", None, None, None),
            Some(_) => ("other", None, None, None),
            None => ("deleted", None, None, None),
        };
        let timer_seconds = match &m.body {
            Some(Body::ExpireTimer(t)) => Some(t.seconds),
            _ => None,
        };
        let (status, failure) = status(&m.status);
        Self {
            id: m.id.to_string(),
            peer: peer(&m.peer),
            group: m.group.map(|g| g.to_string()),
            direction: match m.direction {
                Direction::Incoming => "incoming",
                Direction::Outgoing => "outgoing",
            },
            kind,
            timer_seconds,
            text,
            file_name,
            attachment: None,
            reply_to,
            status,
            failure,
            sent_at: m.sent_at,
            stored_at: m.stored_at,
            edited_at: m.edited_at,
            reactions: m
                .reactions
                .iter()
                .map(|r| ReactionJson { from: peer(&r.from), emoji: r.emoji.clone() })
                .collect(),
            seq: m.seq,
            receipts: m
                .receipts
                .iter()
                .map(|r| {
                    let word = match r.kind {
                        kith_protocol::content::ReceiptKind::Delivered => "delivered",
                        kith_protocol::content::ReceiptKind::Read => "read",
                    };
                    (peer(&r.member), word)
                })
                .collect(),
        }
    }
}

/// An attachment.
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentJson {
    /// Attachment id (hex).
    pub media: String,
    /// The message carrying it (hex).
    pub message: String,
    /// The other party (peer id).
    pub peer: String,
    /// `sending` or `receiving`.
    pub direction: &'static str,
    /// File name.
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// `sent`, `downloading`, `saved` or `failed`.
    pub state: &'static str,
    /// The saved file (received) or the file sent.
    pub path: Option<String>,
    /// Chunks verified so far (downloading).
    pub chunks_done: Option<u32>,
    /// Chunks in all (downloading).
    pub chunks: Option<u32>,
    /// Relays that hold every chunk (sent).
    pub relays: Option<usize>,
    /// Why it failed.
    pub failure: Option<String>,
    /// An image's `[width, height]`, read from the saved (or sent) file's header.
    pub image: Option<[u32; 2]>,
    /// Size of the preview image the manifest carries (a received image), in bytes.
    pub thumbnail_bytes: Option<usize>,
}

fn direction_word(direction: TransferDirection) -> &'static str {
    match direction {
        TransferDirection::Sending => "sending",
        TransferDirection::Receiving => "receiving",
    }
}

impl From<&Attachment> for AttachmentJson {
    fn from(a: &Attachment) -> Self {
        let mut json = Self {
            media: a.media.to_string(),
            message: a.message.to_string(),
            peer: peer(&a.peer),
            direction: direction_word(a.direction),
            name: a.name.clone(),
            mime: a.mime.clone(),
            size: a.size,
            state: "",
            path: None,
            chunks_done: None,
            chunks: None,
            relays: None,
            failure: None,
            image: None,
            thumbnail_bytes: a.thumbnail.as_ref().map(Vec::len),
        };
        match &a.state {
            AttachmentState::Sent { source, relays } => {
                json.state = "sent";
                json.path = Some(source.display().to_string());
                json.relays = Some(*relays);
            }
            AttachmentState::Downloading { chunks_done, chunks } => {
                json.state = "downloading";
                json.chunks_done = Some(*chunks_done);
                json.chunks = Some(*chunks);
            }
            AttachmentState::Saved(path) => {
                json.state = "saved";
                json.path = Some(path.display().to_string());
            }
            AttachmentState::Failed(why) => {
                json.state = "failed";
                json.failure = Some(why.clone());
            }
        }
        json
    }
}

impl AttachmentJson {
    /// With `image` read from the header of the file on our disk, for what is an image by its
    /// type. Reads the disk: call it on a blocking thread.
    pub(crate) fn with_image_size(mut self) -> Self {
        if crate::media::thumbnail::previewable(&self.mime)
            && let Some(path) = &self.path
        {
            self.image = crate::media::thumbnail::dimensions(std::path::Path::new(path))
                .map(|(w, h)| [w, h]);
        }
        self
    }
}

/// A contact.
#[derive(Clone, Debug, Serialize)]
pub struct ContactJson {
    /// Their peer id.
    pub peer_id: String,
    /// The name we gave them.
    pub name: Option<String>,
    /// Their own display name.
    pub profile_name: Option<String>,
    /// Whether safety numbers were compared.
    pub verified: bool,
    /// Whether their identity key is pinned yet (after the first exchange).
    pub identity_known: bool,
    /// Whether they presented a new identity key that waits for the user's decision.
    pub identity_changed: bool,
    /// Their relays.
    pub relays: Vec<String>,
    /// `online`, `away`, `offline` as they last shared it.
    pub presence: Option<&'static str>,
    /// When they were last active (their clock).
    pub last_seen: Option<u64>,
    /// Whether they are blocked.
    pub blocked: bool,
    /// Whether this is a message request: a stranger who wrote to us, not yet named (filled
    /// in by `contact.list`, which looks at the history).
    pub request: bool,
}

impl From<&Contact> for ContactJson {
    fn from(c: &Contact) -> Self {
        Self {
            peer_id: peer(&c.user),
            name: c.name.clone(),
            profile_name: c.profile_name.clone(),
            verified: c.verified,
            identity_known: c.identity.is_some(),
            identity_changed: c.pending_identity.is_some(),
            relays: c.relays.clone(),
            presence: c.presence.map(presence),
            last_seen: c.last_seen,
            blocked: c.blocked,
            request: false,
        }
    }
}

/// An event, as sent in `event` notifications.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventJson {
    /// A new message.
    Message {
        /// The message.
        message: MessageJson,
    },
    /// An outgoing message changed status.
    Status {
        /// The conversation.
        peer: String,
        /// The group (hex id), for a group message.
        group: Option<String>,
        /// The message.
        id: String,
        /// Its status.
        status: &'static str,
        /// Why it failed, if it did.
        failure: Option<String>,
    },
    /// A message was edited, deleted or reacted to.
    Updated {
        /// The message as it is now.
        message: MessageJson,
    },
    /// A peer started or stopped typing.
    Typing {
        /// Who.
        peer: String,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A peer's presence.
    Presence {
        /// Who.
        peer: String,
        /// `online`, `away` or `offline`.
        status: &'static str,
        /// When they were last active.
        last_seen: Option<u64>,
    },
    /// A contact was created or changed.
    Contact {
        /// The contact.
        contact: ContactJson,
    },
    /// A contact's identity key changed; accept it with `contact.trust`.
    IdentityChanged {
        /// Who.
        peer: String,
    },
    /// The session with a contact started anew, same identity key (a restored backup).
    SessionReset {
        /// Who.
        peer: String,
    },
    /// Messages were deleted on this device: by `forget`, or because they disappeared.
    MessagesDeleted {
        /// The conversation's peer (ourselves for a group).
        peer: String,
        /// The group, for a group's conversation.
        group: Option<String>,
        /// The messages.
        ids: Vec<String>,
        /// `local` (forgotten here) or `expired` (their disappearing-message timer ran out).
        reason: &'static str,
    },
    /// A conversation's disappearing-message timer changed.
    Timer {
        /// The conversation's peer (ourselves for a group).
        peer: String,
        /// The group, for a group's conversation.
        group: Option<String>,
        /// The timer in seconds (0: off).
        seconds: u32,
    },
    /// An envelope was refused.
    Rejected {
        /// The claimed sender.
        sender: Option<String>,
        /// Why.
        reason: String,
    },
    /// A group was created, joined, changed or left.
    Group {
        /// The group as it is now.
        group: GroupJson,
    },
    /// A member started or stopped typing in a group.
    GroupTyping {
        /// The group (hex id).
        group: String,
        /// Who.
        peer: String,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A peer connected.
    PeerConnected {
        /// The peer id.
        peer: String,
    },
    /// A peer disconnected.
    PeerDisconnected {
        /// The peer id.
        peer: String,
    },
    /// The node listens on a new address.
    Listening {
        /// The address.
        address: String,
    },
    /// This client fell behind and lost `missed` events: re-read the conversations it shows
    /// (`history`, `group_history`) from the message after `after_seq` on (all if null).
    Lagged {
        /// Events lost.
        missed: u64,
        /// The sequence number of the last message event this client received.
        after_seq: Option<u64>,
    },
    /// A relay refused to store one of our messages (it stays queued and is retried).
    RelayRefused {
        /// The message id.
        id: String,
        /// The relay's peer id.
        relay: String,
        /// Why: `quota_exceeded`, `rate_limited`, `too_large`, `unavailable`, ...
        reason: String,
    },
    /// Attachment chunks moved (notifications are spaced out; the last one always comes).
    MediaProgress {
        /// Attachment id.
        media: String,
        /// Its message id.
        message: String,
        /// The other party.
        peer: String,
        /// `sending` or `receiving`.
        direction: &'static str,
        /// The relay being uploaded to, if any.
        relay: Option<String>,
        /// Distinct chunks done.
        chunks_done: u32,
        /// Chunks in all.
        chunks: u32,
        /// Bytes done.
        bytes_done: u64,
        /// Bytes in all.
        bytes: u64,
    },
    /// A relay holds every chunk of an attachment we sent.
    MediaUploaded {
        /// Attachment id.
        media: String,
        /// Its message id.
        message: String,
        /// The relay's peer id.
        relay: String,
    },
    /// A received attachment was saved.
    MediaSaved {
        /// Attachment id.
        media: String,
        /// Its message id.
        message: String,
        /// Where.
        path: String,
    },
    /// A source served a chunk that failed verification (fetched elsewhere).
    MediaChunkRefused {
        /// Attachment id.
        media: String,
        /// The source's peer id.
        source: String,
        /// What was wrong.
        error: String,
    },
    /// The node's database refuses commits (a full disk): nothing new is acknowledged, sent or
    /// answered until it takes them again (the node retries every second by itself).
    StorageFailing {
        /// What the database reported.
        reason: String,
    },
    /// The node's database takes commits again; what was held has left.
    StorageRecovered {
        /// How long commits had failed (ms).
        after_ms: u64,
    },
    /// An attachment failed for good.
    MediaFailed {
        /// Attachment id.
        media: String,
        /// Its message id.
        message: String,
        /// Why.
        reason: String,
    },
}

impl EventJson {
    /// The JSON view of a node event (`None` for events with no JSON form).
    pub fn from_event(event: &NodeEvent) -> Option<Self> {
        Some(match event {
            NodeEvent::Engine(e) => match e {
                Event::Message(m) => Self::Message { message: m.as_ref().into() },
                Event::StatusChanged { peer: p, id, status: s, group } => {
                    let (status, failure) = status(s);
                    Self::Status {
                        peer: peer(p),
                        group: group.map(|g| g.to_string()),
                        id: id.to_string(),
                        status,
                        failure,
                    }
                }
                Event::GroupChanged(g) => Self::Group { group: g.as_ref().into() },
                Event::GroupTyping { group, peer: p, state } => Self::GroupTyping {
                    group: group.to_string(),
                    peer: peer(p),
                    typing: *state == TypingState::Started,
                },
                Event::MessageUpdated(m) => Self::Updated { message: m.as_ref().into() },
                Event::Typing { peer: p, state } => {
                    Self::Typing { peer: peer(p), typing: *state == TypingState::Started }
                }
                Event::Presence { peer: p, status, last_seen } => Self::Presence {
                    peer: peer(p),
                    status: presence(*status),
                    last_seen: *last_seen,
                },
                Event::ContactChanged(c) => Self::Contact { contact: c.as_ref().into() },
                Event::IdentityChanged { peer: p, .. } => Self::IdentityChanged { peer: peer(p) },
                Event::SessionReset { peer: p } => Self::SessionReset { peer: peer(p) },
                Event::MessagesDeleted { peer: p, group, ids, reason } => Self::MessagesDeleted {
                    peer: peer(p),
                    group: group.map(|g| g.to_string()),
                    ids: ids.iter().map(ToString::to_string).collect(),
                    reason: match reason {
                        DeleteReason::Local => "local",
                        DeleteReason::Expired => "expired",
                    },
                },
                Event::TimerChanged { peer: p, group, seconds } => Self::Timer {
                    peer: peer(p),
                    group: group.map(|g| g.to_string()),
                    seconds: *seconds,
                },
                Event::Rejected { sender, reason } => Self::Rejected {
                    sender: sender.as_ref().map(peer),
                    reason: format!("{reason:?}"),
                },
                _ => return None,
            },
            NodeEvent::PeerConnected(p) => Self::PeerConnected { peer: p.to_string() },
            NodeEvent::PeerDisconnected(p) => Self::PeerDisconnected { peer: p.to_string() },
            NodeEvent::Listening(a) => Self::Listening { address: a.to_string() },
            NodeEvent::Lagged { missed, after_seq } => {
                Self::Lagged { missed: *missed, after_seq: *after_seq }
            }
            NodeEvent::RelayRefused { id, relay, reason } => Self::RelayRefused {
                id: id.to_string(),
                relay: relay.to_string(),
                reason: crate::relay::metrics::reason_label(*reason).to_owned(),
            },
            NodeEvent::Storage(StorageStatus::Failing { error }) => {
                Self::StorageFailing { reason: crate::storage::with_sources(error) }
            }
            NodeEvent::Storage(StorageStatus::Recovered { after }) => Self::StorageRecovered {
                after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            },
            NodeEvent::Media(event) => match event {
                MediaEvent::Progress {
                    media,
                    message,
                    peer: p,
                    direction,
                    relay,
                    chunks_done,
                    chunks,
                    bytes_done,
                    bytes,
                } => Self::MediaProgress {
                    media: media.to_string(),
                    message: message.to_string(),
                    peer: peer(p),
                    direction: direction_word(*direction),
                    relay: relay.map(|r| r.to_string()),
                    chunks_done: *chunks_done,
                    chunks: *chunks,
                    bytes_done: *bytes_done,
                    bytes: *bytes,
                },
                MediaEvent::Uploaded { media, message, relay } => Self::MediaUploaded {
                    media: media.to_string(),
                    message: message.to_string(),
                    relay: relay.to_string(),
                },
                MediaEvent::Saved { media, message, path } => Self::MediaSaved {
                    media: media.to_string(),
                    message: message.to_string(),
                    path: path.display().to_string(),
                },
                MediaEvent::Failed { media, message, reason } => Self::MediaFailed {
                    media: media.to_string(),
                    message: message.to_string(),
                    reason: reason.to_string(),
                },
                MediaEvent::ChunkRefused { media, source, error } => Self::MediaChunkRefused {
                    media: media.to_string(),
                    source: source.to_string(),
                    error: error.to_string(),
                },
            },
        })
    }
}
