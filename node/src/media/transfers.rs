//! Attachment transfers: the download scheduler (sources, round-robin, bans, back-off,
//! resume), uploads to relays, and progress of what we serve.
//!
//! A download pulls up to [`PARALLEL_CHUNKS`] chunks at once, each from the next source in
//! turn (the sender first, then our relays) that is neither banned nor resting. A source that
//! serves a chunk failing verification is banned for that attachment; one that lacks a chunk
//! or cannot be reached rests until the next round, which comes after a back-off
//! ([`RETRY_FIRST`], doubling up to [`RETRY_MAX`]) or at once when a source reconnects. When
//! every source we reached served bad bytes and the others are unreachable, the download fails.
//! Nothing of a download is trusted after a restart but the chunks its record names, which the
//! writer synced first.
//!
//! A group's attachment is shared out among its members so that the sender's upload does not
//! grow with the group: the members other than the sender, sorted, take chunk `i` "home" to
//! member `i mod m`. Each member fetches its own chunks from the sender first, and every other
//! chunk from its home member, who serves what it holds (sealed again from the plaintext, and
//! only if that gives the manifest's hash). A home that does not have a chunk yet (or whose
//! stream broke) is asked again after a short back-off ([`HOME_RETRY_FIRST`] up to
//! [`HOME_RETRY_MAX`]); one that has not had it for [`HOME_PATIENCE`], or cannot be reached,
//! gives way to the sender and our relays, and when those fail too, to the other members.
//!
//! An upload sends an attachment's chunks to a relay that holds its manifest,
//! [`UPLOAD_IN_FLIGHT`] at a time; a chunk the relay could not take now is sent again after a
//! back-off; a relay that refuses for good fails the upload.
//!
//! Sans-IO but for its records: the component owns the attachment database (records are
//! written here and flushed by the driver), and asks the driver for everything else as
//! [`MediaAction`]s — fetch-stream requests, chunk reads and verifications on blocking threads,
//! uploads and deletions at relays, file removals, events. Requests are named by the driver's
//! ids (`R`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kith_core::engine::{Event, group_copy_id};
use kith_core::identity::peer_id_of;
use kith_core::media::{ChunkError, Layout};
use kith_core::model::{Direction, Message};
use kith_protocol::content::{Body, MediaManifest};
use kith_protocol::media::{MediaRefusal, MediaResponse};
use kith_protocol::{ChunkHash, GroupId, MediaId, MessageId, UnixMillis, UserId};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use super::fetch::{Catalog, Held, Served};
use super::store::{
    HeldRecord, IncomingRecord, IncomingState, MediaStore, MediaStoreError, OutgoingRecord,
    RelayUploads, bit, bitmap, count, set_bit,
};
use super::{Attachment, AttachmentState, MediaEvent, MediaFailure, TransferDirection};
use crate::mailbox::peer_of;

/// Chunk requests in flight per download (on the fetch streams, or being verified and
/// written).
pub const PARALLEL_CHUNKS: usize = 16;
/// Chunk uploads in flight per relay.
pub const UPLOAD_IN_FLIGHT: usize = 4;
/// First delay before sources that lacked a chunk are asked again; it doubles up to
/// [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between two rounds of asking a download's sources.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// First delay before a group member that did not have a chunk yet (its home) is asked again;
/// it doubles up to [`HOME_RETRY_MAX`], and starts over whenever a chunk arrives.
pub const HOME_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay before a chunk's home member is asked again.
pub const HOME_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a group member waits for a chunk's home member to have it before asking the
/// sender (or our relays) instead.
pub const HOME_PATIENCE: Duration = Duration::from_secs(5);

/// What the driver does for attachments.
#[derive(Debug)]
pub(crate) enum MediaAction {
    /// Start the writer of a download (a blocking thread that writes verified chunks in place
    /// and checkpoints `done`).
    StartWriter { media: MediaId, manifest: Arc<MediaManifest>, layout: Layout, done: Vec<u8> },
    /// The download is over: close its writer's channel and its fetch streams.
    StopWriter(MediaId),
    /// Ask `peer` (source number `source` of the download) for a chunk, on the download's
    /// fetch stream to it (opened on first use). If the stream is gone, report
    /// [`Transfers::source_down`].
    Request { media: MediaId, source: usize, peer: PeerId, index: u32, hash: ChunkHash },
    /// Verify and decrypt a fetched chunk on a blocking thread and hand it to the writer.
    Verify {
        media: MediaId,
        source: usize,
        index: u32,
        data: Vec<u8>,
        manifest: Arc<MediaManifest>,
        layout: Layout,
    },
    /// Read a sealed chunk for an upload (for `recipient`) on a blocking thread; report
    /// [`Transfers::chunk_read`].
    Read {
        media: MediaId,
        relay: PeerId,
        recipient: UserId,
        index: u32,
        path: PathBuf,
        offset: u64,
        len: usize,
    },
    /// Upload a sealed chunk to `relay`, held there for `recipient`; report
    /// [`Transfers::put_sent`].
    Put {
        media: MediaId,
        relay: PeerId,
        index: u32,
        recipient: UserId,
        hash: ChunkHash,
        data: Vec<u8>,
    },
    /// Ask `relay` to delete chunks it holds for us.
    Delete { relay: PeerId, hashes: Vec<ChunkHash> },
    /// Remember `address` for `peer`.
    AddAddress(PeerId, Multiaddr),
    /// Delete a file (a failed download's partial file).
    RemoveFile(PathBuf),
    /// Tell the app.
    Event(MediaEvent),
}

/// An attachment we serve.
struct Outgoing {
    record: OutgoingRecord,
    /// The group it went to.
    group: Option<GroupId>,
    /// For a group: the relays it goes to for members that were offline.
    member_uploads: HashMap<UserId, RelayUploads>,
    layout: Layout,
    /// Distinct chunks served to the recipient this run, and their plaintext bytes.
    served: Vec<u8>,
    served_chunks: u32,
    served_bytes: u64,
}

/// What a download's source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceKind {
    /// Who sent the attachment.
    Sender,
    /// Another member of the group it went to.
    Member,
    /// One of our relays.
    Relay,
}

/// A place a download's chunks may come from.
struct Source {
    peer: PeerId,
    kind: SourceKind,
    /// Served bad bytes: never asked again for this attachment.
    banned: bool,
    /// Unreachable or lacking chunks this round.
    resting: bool,
    /// Could not be reached in its last request.
    unreachable: bool,
}

impl Source {
    fn new(peer: PeerId, kind: SourceKind) -> Self {
        Self { peer, kind, banned: false, resting: false, unreachable: false }
    }

    fn available(&self) -> bool {
        !self.banned && !self.resting
    }
}

struct Download {
    message: MessageId,
    from: UserId,
    layout: Layout,
    manifest: Arc<MediaManifest>,
    missing: VecDeque<u32>,
    in_flight: usize,
    sources: Vec<Source>,
    cursor: usize,
    /// Chunks no source could give this round.
    stalled: Vec<u32>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Chunks requested and not answered yet, and from which source.
    assigned: HashMap<u32, usize>,
    chunks_done: u32,
    bytes_done: u64,
    last_error: Option<ChunkError>,
    /// A group's attachment: the source each chunk is asked of first, by `index mod len`
    /// (`None`: a chunk homed here, asked of the sender). Empty for a direct attachment.
    homes: Vec<Option<usize>>,
    /// Chunks whose home member did not have them yet, asked again at `later_at`.
    later: Vec<u32>,
    later_at: Option<Instant>,
    later_backoff: Duration,
    /// When each chunk's home member first did not have it.
    home_missed: HashMap<u32, Instant>,
}

impl Download {
    /// The member chunk `index` is homed at, as a source.
    fn home(&self, index: u32) -> Option<usize> {
        let n = self.homes.len();
        if n == 0 {
            return None;
        }
        self.homes.get(index as usize % n).copied().flatten()
    }

    /// The home member to ask for chunk `index`, if it may be asked now.
    fn home_source(&self, index: u32, now: Instant) -> Option<usize> {
        let home = self.home(index)?;
        let source = self.sources.get(home)?;
        let patient = self
            .home_missed
            .get(&index)
            .is_none_or(|since| now.saturating_duration_since(*since) < HOME_PATIENCE);
        (source.available() && !source.unreachable && patient).then_some(home)
    }

    /// The next source in turn for a chunk not asked of its home: the sender or a relay, else
    /// (both unavailable) another member.
    fn next_source(&self) -> Option<usize> {
        let n = self.sources.len();
        let in_turn = |members: bool| {
            (0..n).map(|k| (self.cursor + k) % n.max(1)).find(|i| {
                self.sources
                    .get(*i)
                    .is_some_and(|s| s.available() && (s.kind == SourceKind::Member) == members)
            })
        };
        in_turn(false).or_else(|| in_turn(true))
    }
}

struct Upload {
    message: MessageId,
    address: Multiaddr,
    next: u32,
    in_flight: usize,
    stored: u32,
    retry: Vec<u32>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// An upload request in flight.
struct Put {
    media: MediaId,
    relay: PeerId,
    recipient: UserId,
    index: u32,
}

/// An upload: an attachment, the relay it goes to, and the member it is held for there.
type UploadKey = (MediaId, PeerId, UserId);

/// The attachments' state. `R` names upload requests.
pub(crate) struct Transfers<R> {
    /// Who we are (a group's attachment: which chunks are homed here).
    me: UserId,
    store: MediaStore,
    max_bytes: u64,
    downloads_dir: PathBuf,
    sealed_dir: PathBuf,
    outgoing: HashMap<MediaId, Outgoing>,
    downloads: HashMap<MediaId, Download>,
    /// Incoming attachments recorded, to start after the flush that makes their records
    /// durable.
    starting: Vec<MediaId>,
    uploads: HashMap<UploadKey, Upload>,
    puts: HashMap<R, Put>,
    /// The groups' attachments we receive or received, and their group.
    held: HashMap<MediaId, GroupId>,
    /// What the fetch server may hand out (shared with it).
    catalog: Catalog,
    dirty: bool,
    actions: VecDeque<MediaAction>,
}

impl<R: Copy + Eq + Hash> Transfers<R> {
    /// Opens the records in `store` for user `me`: outgoing attachments older than `retention`
    /// (or whose sealed copy is gone) are forgotten, as are the groups' attachments received
    /// longer ago (we stop serving them); unfinished downloads are queued to start.
    pub(crate) fn open(
        me: UserId,
        store: MediaStore,
        sealed_dir: PathBuf,
        downloads_dir: PathBuf,
        max_bytes: u64,
        retention: Duration,
        now: UnixMillis,
    ) -> Result<Self, MediaStoreError> {
        let mut transfers = Self {
            me,
            store,
            max_bytes,
            downloads_dir,
            sealed_dir,
            outgoing: HashMap::new(),
            downloads: HashMap::new(),
            starting: Vec::new(),
            uploads: HashMap::new(),
            puts: HashMap::new(),
            held: HashMap::new(),
            catalog: Catalog::default(),
            dirty: false,
            actions: VecDeque::new(),
        };
        let retention = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let groups: HashMap<MediaId, GroupId> =
            transfers.store.outgoing_groups()?.into_iter().collect();
        for (id, record) in transfers.store.outgoing()? {
            let sealed = transfers.sealed_path(&id);
            let Ok(layout) = Layout::new(record.size, record.chunk_size) else { continue };
            if now.saturating_sub(record.created_at) > retention || !sealed.exists() {
                transfers.actions.push_back(MediaAction::RemoveFile(sealed));
                transfers.store.delete_outgoing(&id)?;
                transfers.dirty = true;
                continue;
            }
            transfers.add_outgoing(id, record, layout, groups.get(&id).copied());
        }
        for (id, held) in transfers.store.held()? {
            if now.saturating_sub(held.received_at) > retention {
                transfers.store.delete_held(&id);
                transfers.dirty = true;
            } else {
                transfers.held.insert(id, held.group);
            }
        }
        for (id, record) in transfers.store.incoming()? {
            match &record.state {
                IncomingState::Downloading => transfers.starting.push(id),
                IncomingState::Complete(path) => {
                    if let Some(group) = transfers.held.get(&id).copied() {
                        transfers.serve_held(id, group, path.clone(), &record.manifest);
                    }
                }
                IncomingState::Failed(_) => {}
            }
        }
        Ok(transfers)
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<MediaAction> {
        self.actions.pop_front()
    }

    /// When a retry is next due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let downloads = self.downloads.values().flat_map(|d| [d.retry_at, d.later_at]).flatten();
        let uploads = self.uploads.values().filter_map(|u| u.retry_at);
        downloads.chain(uploads).min()
    }

    /// What the fetch server may serve.
    pub(crate) fn catalog(&self) -> Catalog {
        self.catalog.clone()
    }

    /// The attachment database (shared with download writers).
    pub(crate) fn store(&self) -> &MediaStore {
        &self.store
    }

    /// Where sealed copies of what we send go.
    pub(crate) fn sealed_dir(&self) -> &Path {
        &self.sealed_dir
    }

    /// Where downloads are saved.
    pub(crate) fn downloads_dir(&self) -> &Path {
        &self.downloads_dir
    }

    /// The largest attachment sent or accepted.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn sealed_path(&self, media: &MediaId) -> PathBuf {
        self.sealed_dir.join(media.to_string())
    }

    /// Makes the records written since the last flush durable (the profile's whole database:
    /// one commit); nothing to do if none were.
    pub(crate) fn flush(&mut self) -> Result<(), MediaStoreError> {
        if self.dirty {
            self.store.flush()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The profile's database was flushed (by the engine): every record written so far is
    /// durable.
    pub(crate) fn flushed(&mut self) {
        self.dirty = false;
    }

    fn put_outgoing(&mut self, media: &MediaId) {
        let Some(outgoing) = self.outgoing.get(media) else { return };
        match self.store.put_outgoing(media, &outgoing.record) {
            Ok(()) => self.dirty = true,
            Err(e) => tracing::error!("recording an attachment: {e}"),
        }
    }

    /// Records where the uploads of `media` for `recipient` stand (the attachment's record for
    /// its recipient, a member's own record for a group's).
    fn save_relays(&mut self, media: &MediaId, recipient: &UserId) {
        let Some(outgoing) = self.outgoing.get(media) else { return };
        match outgoing.group {
            None => self.put_outgoing(media),
            Some(_) => {
                let lists = outgoing.member_uploads.get(recipient).cloned().unwrap_or_default();
                self.store.put_member_uploads(media, recipient, &lists);
                self.dirty = true;
            }
        }
    }

    /// Serves a group's attachment we received (or receive: `plain` is then the partial file)
    /// to the group's members.
    fn serve_held(
        &mut self,
        media: MediaId,
        group: GroupId,
        plain: PathBuf,
        manifest: &MediaManifest,
    ) {
        let Ok(layout) = Layout::of(manifest, u64::MAX) else { return };
        if let Ok(mut held) = self.catalog.held.write() {
            let manifest = Arc::new(manifest.clone());
            held.insert(media, Held { group, plain, layout, manifest });
        }
    }

    /// Serves an attachment we sent (here and on fetch streams); to `group`'s members if it
    /// went to a group.
    fn add_outgoing(
        &mut self,
        id: MediaId,
        record: OutgoingRecord,
        layout: Layout,
        group: Option<GroupId>,
    ) {
        let sealed = self.sealed_path(&id);
        if let Ok(mut catalog) = self.catalog.outgoing.write() {
            let hashes = Arc::new(record.hashes.clone());
            catalog.insert(id, Served { to: record.to, group, sealed, layout, hashes });
        }
        let served = bitmap(layout.chunks());
        let member_uploads = match group {
            Some(_) => self.store.member_uploads(&id).unwrap_or_else(|e| {
                tracing::error!("reading an attachment's uploads for offline members: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let outgoing = Outgoing {
            record,
            group,
            member_uploads: member_uploads.into_iter().collect(),
            layout,
            served,
            served_chunks: 0,
            served_bytes: 0,
        };
        self.outgoing.insert(id, outgoing);
    }

    /// Attachments exchanged with `peer` (all of them for `None`).
    pub(crate) fn list(&self, peer: Option<UserId>) -> Result<Vec<Attachment>, MediaStoreError> {
        let mut out = Vec::new();
        for (media, o) in &self.outgoing {
            if peer.is_some_and(|p| p != o.record.to) {
                continue;
            }
            out.push(Attachment {
                media: *media,
                message: o.record.message,
                peer: o.record.to,
                direction: TransferDirection::Sending,
                name: o.record.name.clone(),
                mime: o.record.mime.clone(),
                size: o.record.size,
                state: AttachmentState::Sent {
                    source: o.record.source.clone(),
                    relays: o.record.uploaded.len()
                        + o.member_uploads.values().map(|u| u.uploaded.len()).sum::<usize>(),
                },
                thumbnail: None,
            });
        }
        for (media, record) in self.store.incoming()? {
            if peer.is_some_and(|p| p != record.from) {
                continue;
            }
            let chunks = u32::try_from(record.manifest.chunk_hashes.len()).unwrap_or(u32::MAX);
            let state = match record.state {
                IncomingState::Complete(path) => AttachmentState::Saved(path),
                IncomingState::Failed(reason) => AttachmentState::Failed(reason),
                IncomingState::Downloading => {
                    let persisted = count(&record.done, chunks);
                    let chunks_done = self
                        .downloads
                        .get(&media)
                        .map_or(persisted, |d| d.chunks_done.max(persisted));
                    AttachmentState::Downloading { chunks_done, chunks }
                }
            };
            out.push(Attachment {
                media,
                message: record.message,
                peer: record.from,
                direction: TransferDirection::Receiving,
                name: record.manifest.name.clone(),
                mime: record.manifest.mime.clone(),
                size: record.manifest.size,
                state,
                thumbnail: record.manifest.thumbnail.clone(),
            });
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ sending

    /// Records an attachment we sealed into its sealed copy and queued as message `message`
    /// to `to` (durable with the next flush), and starts serving it.
    pub(crate) fn sent(
        &mut self,
        message: MessageId,
        to: UserId,
        group: Option<GroupId>,
        manifest: &MediaManifest,
        source: PathBuf,
        now: UnixMillis,
    ) -> Result<(), MediaStoreError> {
        let layout = Layout::new(manifest.size, manifest.chunk_size)
            .map_err(|_| MediaStoreError::Corrupt)?;
        let record = OutgoingRecord {
            message,
            to,
            name: manifest.name.clone(),
            mime: manifest.mime.clone(),
            size: manifest.size,
            chunk_size: manifest.chunk_size,
            hashes: manifest.chunk_hashes.clone(),
            source,
            created_at: now,
            pending_uploads: Vec::new(),
            uploaded: Vec::new(),
        };
        self.store.put_outgoing(&manifest.media_id, &record)?;
        if let Some(group) = &group {
            self.store.put_outgoing_group(&manifest.media_id, group);
        }
        self.dirty = true;
        self.add_outgoing(manifest.media_id, record, layout, group);
        Ok(())
    }

    /// Who may fetch what we sent to `group`: its current members (none once we left it).
    pub(crate) fn set_group_members(&mut self, group: GroupId, members: Option<Vec<UserId>>) {
        if let Ok(mut all) = self.catalog.members.write() {
            match members {
                Some(members) => {
                    all.insert(group, members.into_iter().collect());
                }
                None => {
                    all.remove(&group);
                }
            }
        }
    }

    /// The attachment message `id` carries (for a group's message, its copy for one member),
    /// and whom that copy is for.
    fn sent_as(&self, id: &MessageId) -> Option<(MediaId, UserId)> {
        let members = self.catalog.members.read().ok()?;
        self.outgoing.iter().find_map(|(media, o)| {
            if o.record.message == *id {
                return Some((*media, o.record.to));
            }
            let members = members.get(&o.group?)?;
            let member = members.iter().find(|m| group_copy_id(&o.record.message, m) == *id)?;
            Some((*media, *member))
        })
    }

    /// The manifest of message `id` reached the recipient's relays (it could not be
    /// delivered directly; for a group, `id` is a member's copy): upload the attachment's
    /// chunks to each of them, held there for that recipient.
    pub(crate) fn stored_at(&mut self, id: MessageId, relays: Vec<Multiaddr>) {
        let Some((media, recipient)) = self.sent_as(&id) else { return };
        let Some(outgoing) = self.outgoing.get_mut(&media) else { return };
        let message = outgoing.record.message;
        let (pending, uploaded) = match outgoing.group {
            None => (&mut outgoing.record.pending_uploads, &outgoing.record.uploaded),
            Some(_) => {
                let lists = outgoing.member_uploads.entry(recipient).or_default();
                (&mut lists.pending, &lists.uploaded)
            }
        };
        let mut changed = false;
        for address in &relays {
            let bytes = address.to_vec();
            if !pending.contains(&bytes) && !uploaded.contains(&bytes) {
                pending.push(bytes);
                changed = true;
            }
        }
        if changed {
            self.save_relays(&media, &recipient);
        }
        for address in relays {
            self.start_upload(media, recipient, message, address);
        }
    }

    /// Resumes the uploads a previous run left unfinished.
    pub(crate) fn resume_uploads(&mut self) {
        let mut pending: Vec<(MediaId, UserId, MessageId, Vec<u8>)> = Vec::new();
        for (media, o) in &self.outgoing {
            let message = o.record.message;
            for address in &o.record.pending_uploads {
                pending.push((*media, o.record.to, message, address.clone()));
            }
            for (member, lists) in &o.member_uploads {
                for address in &lists.pending {
                    pending.push((*media, *member, message, address.clone()));
                }
            }
        }
        for (media, recipient, message, address) in pending {
            if let Ok(address) = Multiaddr::try_from(address) {
                self.start_upload(media, recipient, message, address);
            }
        }
    }

    fn start_upload(
        &mut self,
        media: MediaId,
        recipient: UserId,
        message: MessageId,
        address: Multiaddr,
    ) {
        let Some(relay) = peer_of(&address) else { return };
        let key = (media, relay, recipient);
        if self.uploads.contains_key(&key) {
            return;
        }
        self.actions.push_back(MediaAction::AddAddress(relay, address.clone()));
        self.uploads.insert(
            key,
            Upload {
                message,
                address,
                next: 0,
                in_flight: 0,
                stored: 0,
                retry: Vec::new(),
                retry_at: None,
                backoff: RETRY_FIRST,
            },
        );
        self.pump_upload(key);
    }

    /// Reads the next chunks of an upload; each is sent when read.
    fn pump_upload(&mut self, key: UploadKey) {
        let (media, relay, recipient) = key;
        let Some(outgoing) = self.outgoing.get(&media) else {
            self.uploads.remove(&key);
            return;
        };
        let sealed = self.sealed_dir.join(media.to_string());
        let Some(upload) = self.uploads.get_mut(&key) else { return };
        if upload.retry_at.is_some() {
            return;
        }
        while upload.in_flight < UPLOAD_IN_FLIGHT {
            let index = match upload.retry.pop() {
                Some(index) => index,
                None if upload.next < outgoing.layout.chunks() => {
                    upload.next += 1;
                    upload.next - 1
                }
                None => break,
            };
            upload.in_flight += 1;
            self.actions.push_back(MediaAction::Read {
                media,
                relay,
                recipient,
                index,
                path: sealed.clone(),
                offset: outgoing.layout.sealed_offset(index),
                len: outgoing.layout.sealed_len(index),
            });
        }
    }

    /// A chunk read for an upload: it goes to the relay (or the upload fails).
    pub(crate) fn chunk_read(
        &mut self,
        media: MediaId,
        relay: PeerId,
        recipient: UserId,
        index: u32,
        data: std::io::Result<Vec<u8>>,
    ) {
        let key = (media, relay, recipient);
        let (Ok(data), Some(outgoing)) = (data, self.outgoing.get(&media)) else {
            self.upload_refused(key, MediaRefusal::Unavailable);
            return;
        };
        let Some(hash) = outgoing.record.hashes.get(index as usize).copied() else { return };
        self.actions.push_back(MediaAction::Put { media, relay, index, recipient, hash, data });
    }

    /// The driver sent a [`MediaAction::Put`] as `request`.
    pub(crate) fn put_sent(
        &mut self,
        request: R,
        media: MediaId,
        relay: PeerId,
        recipient: UserId,
        index: u32,
    ) {
        self.puts.insert(request, Put { media, relay, recipient, index });
    }

    /// A relay answered an upload (`None`: the request failed).
    pub(crate) fn put_answered(
        &mut self,
        request: R,
        response: Option<MediaResponse>,
        now: Instant,
    ) {
        let Some(Put { media, relay, recipient, index }) = self.puts.remove(&request) else {
            return;
        };
        let key = (media, relay, recipient);
        match response {
            Some(MediaResponse::Stored) => self.upload_answered(key, index, true, now),
            Some(MediaResponse::Refused(reason))
                if !matches!(reason, MediaRefusal::RateLimited | MediaRefusal::Unavailable) =>
            {
                self.upload_refused(key, reason)
            }
            _ => self.upload_answered(key, index, false, now),
        }
    }

    fn upload_answered(&mut self, key: UploadKey, index: u32, stored: bool, now: Instant) {
        let (media, relay, recipient) = key;
        let Some(upload) = self.uploads.get_mut(&key) else { return };
        upload.in_flight = upload.in_flight.saturating_sub(1);
        if !stored {
            upload.retry.push(index);
            if upload.retry_at.is_none() {
                upload.retry_at = Some(now + upload.backoff);
                upload.backoff = (upload.backoff * 2).min(RETRY_MAX);
            }
            return;
        }
        upload.stored += 1;
        upload.backoff = RETRY_FIRST;
        let (message, stored, address) = (upload.message, upload.stored, upload.address.clone());
        let Some(outgoing) = self.outgoing.get(&media) else { return };
        let (chunks, size) = (outgoing.layout.chunks(), outgoing.layout.size());
        let bytes_done = (u64::from(stored) * u64::from(outgoing.layout.chunk_size())).min(size);
        self.actions.push_back(MediaAction::Event(MediaEvent::Progress {
            media,
            message,
            peer: recipient,
            direction: TransferDirection::Sending,
            relay: Some(relay),
            chunks_done: stored,
            chunks,
            bytes_done,
            bytes: size,
        }));
        if stored < chunks {
            self.pump_upload(key);
            return;
        }
        self.uploads.remove(&key);
        let Some(outgoing) = self.outgoing.get_mut(&media) else { return };
        let (pending, uploaded) = match outgoing.group {
            None => (&mut outgoing.record.pending_uploads, &mut outgoing.record.uploaded),
            Some(_) => {
                let lists = outgoing.member_uploads.entry(recipient).or_default();
                (&mut lists.pending, &mut lists.uploaded)
            }
        };
        let bytes = address.to_vec();
        pending.retain(|a| *a != bytes);
        if !uploaded.contains(&bytes) {
            uploaded.push(bytes);
        }
        self.save_relays(&media, &recipient);
        tracing::info!("attachment uploaded to relay …{}", crate::short(&relay));
        self.actions.push_back(MediaAction::Event(MediaEvent::Uploaded { media, message, relay }));
    }

    fn upload_refused(&mut self, key: UploadKey, reason: MediaRefusal) {
        let (media, relay, recipient) = key;
        let Some(upload) = self.uploads.remove(&key) else { return };
        if let Some(outgoing) = self.outgoing.get_mut(&media) {
            let bytes = upload.address.to_vec();
            match outgoing.group {
                None => outgoing.record.pending_uploads.retain(|a| *a != bytes),
                Some(_) => {
                    if let Some(lists) = outgoing.member_uploads.get_mut(&recipient) {
                        lists.pending.retain(|a| *a != bytes);
                    }
                }
            }
            self.save_relays(&media, &recipient);
        }
        tracing::warn!("relay …{} refused an attachment: {reason:?}", crate::short(&relay));
        self.actions.push_back(MediaAction::Event(MediaEvent::Failed {
            media,
            message: upload.message,
            reason: MediaFailure::Refused(reason),
        }));
    }

    /// A chunk of ours reached its recipient.
    pub(crate) fn chunk_served(&mut self, media: MediaId, index: u32) {
        let Some(outgoing) = self.outgoing.get_mut(&media) else { return };
        if !bit(&outgoing.served, index) {
            set_bit(&mut outgoing.served, index);
            outgoing.served_chunks += 1;
            outgoing.served_bytes += outgoing.layout.plain_len(index) as u64;
        }
        let event = MediaEvent::Progress {
            media,
            message: outgoing.record.message,
            peer: outgoing.record.to,
            direction: TransferDirection::Sending,
            relay: None,
            chunks_done: outgoing.served_chunks,
            chunks: outgoing.layout.chunks(),
            bytes_done: outgoing.served_bytes,
            bytes: outgoing.layout.size(),
        };
        self.actions.push_back(MediaAction::Event(event));
    }

    // ------------------------------------------------------------------ receiving

    /// Notes an incoming attachment among the engine's events: recorded now (before the
    /// turn's acknowledgements leave: the driver flushes first), started after the flush.
    pub(crate) fn incoming(&mut self, event: &Event) {
        let Event::Message(message) = event else { return };
        let Message {
            id,
            peer,
            group,
            direction: Direction::Incoming,
            body: Some(Body::Media(m)),
            stored_at,
            ..
        } = message.as_ref()
        else {
            return;
        };
        let media = m.media_id;
        if self.store.incoming_record(&media).ok().flatten().is_some() {
            return; // the same attachment sent again
        }
        let layout = Layout::of(m, self.max_bytes);
        let state = match &layout {
            Ok(_) => IncomingState::Downloading,
            Err(e) => IncomingState::Failed(e.to_string()),
        };
        let done = bitmap(u32::try_from(m.chunk_hashes.len()).unwrap_or(0));
        let record = IncomingRecord { message: *id, from: *peer, manifest: m.clone(), done, state };
        if let Err(e) = self.store.put_incoming(&media, &record) {
            tracing::error!("recording an incoming attachment: {e}");
            return;
        }
        if let (Some(group), Ok(_)) = (group, &layout) {
            self.store.put_held(&media, &HeldRecord { group: *group, received_at: *stored_at });
            self.held.insert(media, *group);
        }
        self.dirty = true;
        match layout {
            Ok(_) => self.starting.push(media),
            Err(e) => {
                tracing::info!("refused an attachment before fetching it: {e}");
                let reason = match e {
                    kith_core::media::MediaError::TooLarge { size, max } => {
                        MediaFailure::TooLarge { size, max }
                    }
                    other => MediaFailure::Invalid(other),
                };
                self.actions.push_back(MediaAction::Event(MediaEvent::Failed {
                    media,
                    message: *id,
                    reason,
                }));
            }
        }
    }

    /// Messages `ids` were deleted from this device: their attachments are no longer served,
    /// uploaded or fetched, and their sealed copies and partial downloads go with their
    /// records. With `downloads` (the messages disappeared), a saved download goes too.
    pub(crate) fn forget_messages(&mut self, ids: &[MessageId], downloads: bool) {
        let sent: Vec<MediaId> = self
            .outgoing
            .iter()
            .filter(|(_, o)| ids.contains(&o.record.message))
            .map(|(media, _)| *media)
            .collect();
        for media in sent {
            self.outgoing.remove(&media);
            self.uploads.retain(|(m, _, _), _| *m != media);
            if let Ok(mut catalog) = self.catalog.outgoing.write() {
                catalog.remove(&media);
            }
            self.actions.push_back(MediaAction::RemoveFile(self.sealed_path(&media)));
            match self.store.delete_outgoing(&media) {
                Ok(()) => self.dirty = true,
                Err(e) => tracing::error!("forgetting an attachment: {e}"),
            }
        }
        let received = match self.store.incoming() {
            Ok(received) => received,
            Err(e) => {
                tracing::error!("reading attachments to forget: {e}");
                return;
            }
        };
        for (media, record) in received.into_iter().filter(|(_, r)| ids.contains(&r.message)) {
            if self.downloads.remove(&media).is_some() {
                self.actions.push_back(MediaAction::StopWriter(media));
            }
            self.starting.retain(|m| *m != media);
            self.stop_serving_held(&media);
            self.actions.push_back(MediaAction::RemoveFile(super::files::partial_path(
                &self.downloads_dir,
                &media,
            )));
            if let (true, IncomingState::Complete(path)) = (downloads, &record.state) {
                self.actions.push_back(MediaAction::RemoveFile(path.clone()));
            }
            self.store.delete_incoming(&media);
            self.dirty = true;
        }
    }

    /// The downloads recorded so far, to start now that their records are durable.
    pub(crate) fn take_starting(&mut self) -> Vec<MediaId> {
        std::mem::take(&mut self.starting)
    }

    /// Starts a download with `relays` (ours) as further sources. `partial_exists`: whether
    /// its partial file is on disk (if not, whatever the record says, it starts over).
    pub(crate) fn start_download(
        &mut self,
        media: MediaId,
        partial_exists: bool,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) -> Result<(), MediaStoreError> {
        if self.downloads.contains_key(&media) {
            return Ok(());
        }
        let Some(mut record) = self.store.incoming_record(&media)? else { return Ok(()) };
        let Ok(layout) = Layout::of(&record.manifest, u64::MAX) else { return Ok(()) };
        if !partial_exists {
            record.done = bitmap(layout.chunks());
        }
        let missing: VecDeque<u32> =
            (0..layout.chunks()).filter(|i| !bit(&record.done, *i)).collect();
        let chunks_done = count(&record.done, layout.chunks());
        let bytes_done = (0..layout.chunks())
            .filter(|i| bit(&record.done, *i))
            .map(|i| layout.plain_len(i) as u64)
            .sum();
        let manifest = Arc::new(record.manifest.clone());
        self.actions.push_back(MediaAction::StartWriter {
            media,
            manifest: manifest.clone(),
            layout,
            done: record.done.clone(),
        });
        let mut sources = Vec::new();
        if let Ok(peer) = peer_id_of(&record.from) {
            sources.push(Source::new(peer, SourceKind::Sender));
        }
        let mut missing = missing;
        let mut homes = Vec::new();
        if let Some(group) = self.held.get(&media).copied() {
            let partial = super::files::partial_path(&self.downloads_dir, &media);
            self.serve_held(media, group, partial, &record.manifest);
            // The members but the sender, in the same order for every member.
            let mut members: Vec<UserId> = self
                .catalog
                .members
                .read()
                .ok()
                .and_then(|m| m.get(&group).map(|m| m.iter().copied().collect()))
                .unwrap_or_default();
            members.retain(|m| *m != record.from);
            members.sort_unstable();
            for member in &members {
                if *member == self.me {
                    homes.push(None);
                } else if let Ok(peer) = peer_id_of(member) {
                    homes.push(Some(sources.len()));
                    sources.push(Source::new(peer, SourceKind::Member));
                }
            }
            // Our own chunks first (the other members wait for them), then the rest in order.
            if let Some(here) = homes.iter().position(Option::is_none) {
                let n = homes.len();
                missing.make_contiguous().sort_by_key(|i| (*i as usize % n != here, *i));
            }
        }
        self.downloads.insert(
            media,
            Download {
                message: record.message,
                from: record.from,
                layout,
                manifest,
                missing,
                in_flight: 0,
                sources,
                cursor: 0,
                stalled: Vec::new(),
                retry_at: None,
                backoff: RETRY_FIRST,
                assigned: HashMap::new(),
                chunks_done,
                bytes_done,
                last_error: None,
                homes,
                later: Vec::new(),
                later_at: None,
                later_backoff: HOME_RETRY_FIRST,
                home_missed: HashMap::new(),
            },
        );
        if chunks_done == layout.chunks() {
            // Every chunk was verified before a restart; the writer finishes the file.
            return Ok(());
        }
        self.pump_download(media, relays, now);
        Ok(())
    }

    /// Our relays as sources of a download (the recipient's relays are where a sender that
    /// could not reach us uploads).
    fn add_relay_sources(&mut self, media: MediaId, relays: &[(PeerId, Multiaddr)]) {
        let Some(download) = self.downloads.get_mut(&media) else { return };
        for (peer, address) in relays {
            if !download.sources.iter().any(|s| s.peer == *peer) {
                self.actions.push_back(MediaAction::AddAddress(*peer, address.clone()));
                download.sources.push(Source::new(*peer, SourceKind::Relay));
            }
        }
    }

    /// Sends chunk requests until [`PARALLEL_CHUNKS`] are in flight, each to its home member
    /// (a group's attachment) or else to the next source in turn that is neither banned nor
    /// resting.
    fn pump_download(&mut self, media: MediaId, relays: &[(PeerId, Multiaddr)], now: Instant) {
        self.add_relay_sources(media, relays);
        let Some(download) = self.downloads.get_mut(&media) else { return };
        if download.retry_at.is_some() {
            return;
        }
        while download.in_flight < PARALLEL_CHUNKS {
            let Some(index) = download.missing.pop_front() else { break };
            let home = download.home_source(index, now);
            let pick = home.or_else(|| download.next_source());
            let hash = download.manifest.chunk_hashes.get(index as usize);
            let (Some(source), Some(hash)) = (pick, hash) else {
                download.stalled.push(index);
                continue;
            };
            if home.is_none() {
                download.cursor = source + 1;
            }
            let Some(peer) = download.sources.get(source).map(|s| s.peer) else { continue };
            download.in_flight += 1;
            download.assigned.insert(index, source);
            self.actions.push_back(MediaAction::Request {
                media,
                source,
                peer,
                index,
                hash: *hash,
            });
        }
        self.download_stalled(media, now);
    }

    /// If nothing is in flight or waiting but chunks are still missing: when every source we
    /// reached served bad bytes and the others are unreachable, the download fails (the user
    /// may retry it later); otherwise the sources rest until the next round.
    fn download_stalled(&mut self, media: MediaId, now: Instant) {
        let Some(download) = self.downloads.get_mut(&media) else { return };
        if download.in_flight > 0 || !download.missing.is_empty() || download.stalled.is_empty() {
            return;
        }
        let some_banned = download.sources.iter().any(|s| s.banned);
        if some_banned && download.sources.iter().all(|s| s.banned || s.unreachable) {
            let error = download.last_error.unwrap_or(ChunkError::NoSuchIndex(0));
            self.fail_download(media, MediaFailure::Corrupt(error));
            return;
        }
        if download.retry_at.is_none() {
            tracing::debug!("no source has the rest of an attachment yet; retrying later");
            download.retry_at = Some(now + download.backoff);
            download.backoff = (download.backoff * 2).min(RETRY_MAX);
        }
    }

    /// A download failed for good: its partial file goes, its record says why.
    pub(crate) fn fail_download(&mut self, media: MediaId, reason: MediaFailure) {
        let Some(download) = self.downloads.remove(&media) else { return };
        self.stop_serving_held(&media);
        self.actions.push_back(MediaAction::StopWriter(media));
        self.actions.push_back(MediaAction::RemoveFile(super::files::partial_path(
            &self.downloads_dir,
            &media,
        )));
        if let Ok(Some(mut record)) = self.store.incoming_record(&media) {
            record.state = IncomingState::Failed(reason.to_string());
            record.done = bitmap(download.layout.chunks());
            match self.store.put_incoming(&media, &record) {
                Ok(()) => self.dirty = true,
                Err(e) => tracing::error!("recording a failed download: {e}"),
            }
        }
        tracing::warn!("attachment download failed: {reason}");
        self.actions.push_back(MediaAction::Event(MediaEvent::Failed {
            media,
            message: download.message,
            reason,
        }));
    }

    /// A chunk request ended without a chunk: the source rests, the chunk goes back.
    fn chunk_missed(
        &mut self,
        media: MediaId,
        index: u32,
        source: usize,
        unreachable: bool,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) {
        let Some(download) = self.downloads.get_mut(&media) else { return };
        download.in_flight = download.in_flight.saturating_sub(1);
        download.assigned.remove(&index);
        if let Some(s) = download.sources.get_mut(source) {
            s.resting = true;
            s.unreachable = unreachable;
        }
        download.missing.push_front(index);
        self.pump_download(media, relays, now);
    }

    /// We no longer serve a group's attachment we were receiving.
    fn stop_serving_held(&mut self, media: &MediaId) {
        if self.held.remove(media).is_some() {
            self.store.delete_held(media);
            self.dirty = true;
        }
        if let Ok(mut held) = self.catalog.held.write() {
            held.remove(media);
        }
    }

    /// The home member of chunk `index` does not have it yet: it is asked again later, and
    /// of the sender once [`HOME_PATIENCE`] has passed.
    fn home_missed(
        &mut self,
        media: MediaId,
        index: u32,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) {
        let Some(download) = self.downloads.get_mut(&media) else { return };
        download.in_flight = download.in_flight.saturating_sub(1);
        download.assigned.remove(&index);
        download.home_missed.entry(index).or_insert(now);
        download.later.push(index);
        if download.later_at.is_none() {
            download.later_at = Some(now + download.later_backoff);
            download.later_backoff = (download.later_backoff * 2).min(HOME_RETRY_MAX);
        }
        self.pump_download(media, relays, now);
    }

    /// A fetch stream answered: a chunk goes to be verified, anything else is a miss.
    pub(crate) fn fetched(
        &mut self,
        media: MediaId,
        index: u32,
        source: usize,
        response: MediaResponse,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) {
        let MediaResponse::Chunk { data } = response else {
            let from_home = self
                .downloads
                .get(&media)
                .is_some_and(|d| d.home_source(index, now) == Some(source));
            if from_home && response == MediaResponse::NotFound {
                self.home_missed(media, index, relays, now);
            } else {
                self.chunk_missed(media, index, source, false, relays, now);
            }
            return;
        };
        let Some(download) = self.downloads.get_mut(&media) else { return };
        download.assigned.remove(&index);
        // Still in flight until the writer is done with it, so the writer's channel always has
        // room.
        let (manifest, layout) = (download.manifest.clone(), download.layout);
        self.actions.push_back(MediaAction::Verify {
            media,
            source,
            index,
            data,
            manifest,
            layout,
        });
    }

    /// A download's fetch stream to source `source` is gone (it could not be opened, or
    /// `broke` after it was): its requests are lost. A group member whose stream broke is
    /// asked again on a new stream after the short back-off of a chunk it did not have (within
    /// [`HOME_PATIENCE`]); any other source rests, marked unreachable.
    pub(crate) fn source_down(
        &mut self,
        media: MediaId,
        source: usize,
        broke: bool,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) {
        let Some(mut download) = self.downloads.get(&media) else { return };
        let lost: Vec<u32> = download
            .assigned
            .iter()
            .filter(|(_, s)| **s == source)
            .map(|(index, _)| *index)
            .collect();
        let member = download.sources.get(source).is_some_and(|s| s.kind == SourceKind::Member);
        for index in lost {
            let from_home = download.home_source(index, now) == Some(source);
            if broke && member && from_home {
                self.home_missed(media, index, relays, now);
            } else {
                self.chunk_missed(media, index, source, true, relays, now);
            }
            let Some(next) = self.downloads.get(&media) else { return };
            download = next;
        }
    }

    /// The writer wrote a chunk (`None`: it was a duplicate and was dropped).
    pub(crate) fn chunk_written(
        &mut self,
        media: MediaId,
        bytes: Option<u64>,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) {
        let Some(download) = self.downloads.get_mut(&media) else { return };
        download.in_flight = download.in_flight.saturating_sub(1);
        if let Some(bytes) = bytes {
            download.later_backoff = HOME_RETRY_FIRST;
            download.chunks_done += 1;
            download.bytes_done += bytes;
            let event = MediaEvent::Progress {
                media,
                message: download.message,
                peer: download.from,
                direction: TransferDirection::Receiving,
                relay: None,
                chunks_done: download.chunks_done,
                chunks: download.layout.chunks(),
                bytes_done: download.bytes_done,
                bytes: download.layout.size(),
            };
            self.actions.push_back(MediaAction::Event(event));
        }
        self.pump_download(media, relays, now);
    }

    /// A chunk failed verification: its source is banned for this attachment.
    pub(crate) fn chunk_rejected(
        &mut self,
        media: MediaId,
        index: u32,
        source: usize,
        error: ChunkError,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) {
        let Some(download) = self.downloads.get_mut(&media) else { return };
        let peer = download.sources.get(source).map(|s| s.peer);
        tracing::warn!(
            "a chunk from …{} failed verification ({error}); not asking it again",
            peer.as_ref().map(crate::short).unwrap_or_default()
        );
        download.in_flight = download.in_flight.saturating_sub(1);
        if let Some(s) = download.sources.get_mut(source) {
            s.banned = true;
        }
        download.last_error = Some(error);
        download.missing.push_front(index);
        if let Some(source) = peer {
            self.actions.push_back(MediaAction::Event(MediaEvent::ChunkRefused {
                media,
                source,
                error,
            }));
        }
        self.pump_download(media, relays, now);
    }

    /// The writer saved a download: the relays among its sources may drop their copies; a
    /// group's attachment is served from the saved file from now on.
    pub(crate) fn completed(&mut self, media: MediaId, path: PathBuf) {
        let Some(download) = self.downloads.remove(&media) else { return };
        self.actions.push_back(MediaAction::StopWriter(media));
        tracing::info!("attachment saved to {}", path.display());
        if let Ok(mut held) = self.catalog.held.write()
            && let Some(held) = held.get_mut(&media)
        {
            held.plain = path.clone();
        }
        for source in download.sources.iter().filter(|s| s.kind == SourceKind::Relay) {
            let hashes = download.manifest.chunk_hashes.clone();
            self.actions.push_back(MediaAction::Delete { relay: source.peer, hashes });
        }
        self.actions.push_back(MediaAction::Event(MediaEvent::Saved {
            media,
            message: download.message,
            path,
        }));
    }

    /// Retries due downloads and uploads.
    pub(crate) fn handle_timeout(&mut self, relays: &[(PeerId, Multiaddr)], now: Instant) {
        let due: Vec<MediaId> = self
            .downloads
            .iter()
            .filter(|(_, d)| d.retry_at.is_some_and(|at| at <= now))
            .map(|(m, _)| *m)
            .collect();
        for media in due {
            self.retry_download(media, relays, now);
        }
        let later: Vec<MediaId> = self
            .downloads
            .iter()
            .filter(|(_, d)| d.later_at.is_some_and(|at| at <= now))
            .map(|(m, _)| *m)
            .collect();
        for media in later {
            let Some(download) = self.downloads.get_mut(&media) else { continue };
            download.later_at = None;
            let later = std::mem::take(&mut download.later);
            download.missing.extend(later);
            self.pump_download(media, relays, now);
        }
        let due: Vec<UploadKey> = self
            .uploads
            .iter()
            .filter(|(_, u)| u.retry_at.is_some_and(|at| at <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(upload) = self.uploads.get_mut(&key) {
                upload.retry_at = None;
            }
            self.pump_upload(key);
        }
    }

    fn retry_download(&mut self, media: MediaId, relays: &[(PeerId, Multiaddr)], now: Instant) {
        let Some(download) = self.downloads.get_mut(&media) else { return };
        download.retry_at = None;
        for source in &mut download.sources {
            source.resting = false;
        }
        let stalled = std::mem::take(&mut download.stalled);
        download.missing.extend(stalled);
        self.pump_download(media, relays, now);
    }

    /// A peer connected: downloads waiting for it try again now (a member that could not be
    /// reached is again asked for the chunks homed at it).
    pub(crate) fn connected(&mut self, peer: PeerId, relays: &[(PeerId, Multiaddr)], now: Instant) {
        for download in self.downloads.values_mut() {
            for source in download.sources.iter_mut().filter(|s| s.peer == peer) {
                source.unreachable = false;
            }
        }
        let waiting: Vec<MediaId> = self
            .downloads
            .iter()
            .filter(|(_, d)| d.retry_at.is_some() && d.sources.iter().any(|s| s.peer == peer))
            .map(|(m, _)| *m)
            .collect();
        for media in waiting {
            self.retry_download(media, relays, now);
        }
    }
}

#[cfg(test)]
mod tests;
