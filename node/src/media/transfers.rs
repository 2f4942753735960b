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

use kith_core::engine::Event;
use kith_core::identity::peer_id_of;
use kith_core::media::{ChunkError, Layout};
use kith_core::model::{Direction, Message};
use kith_protocol::content::{Body, MediaManifest};
use kith_protocol::media::{MediaRefusal, MediaResponse};
use kith_protocol::{ChunkHash, GroupId, MediaId, MessageId, UnixMillis, UserId};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use super::fetch::{Catalog, Served};
use super::store::{
    IncomingRecord, IncomingState, MediaStore, MediaStoreError, OutgoingRecord, bit, bitmap, count,
    set_bit,
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
    /// Read a sealed chunk for an upload on a blocking thread; report
    /// [`Transfers::chunk_read`].
    Read { media: MediaId, relay: PeerId, index: u32, path: PathBuf, offset: u64, len: usize },
    /// Upload a sealed chunk to `relay`; report [`Transfers::put_sent`].
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
    layout: Layout,
    /// Distinct chunks served to the recipient this run, and their plaintext bytes.
    served: Vec<u8>,
    served_chunks: u32,
    served_bytes: u64,
}

/// A place a download's chunks may come from.
struct Source {
    peer: PeerId,
    /// Served bad bytes: never asked again for this attachment.
    banned: bool,
    /// Unreachable or lacking chunks this round.
    resting: bool,
    /// Could not be reached in its last request.
    unreachable: bool,
}

impl Source {
    fn new(peer: PeerId) -> Self {
        Self { peer, banned: false, resting: false, unreachable: false }
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
    index: u32,
}

/// The attachments' state. `R` names upload requests.
pub(crate) struct Transfers<R> {
    store: MediaStore,
    max_bytes: u64,
    downloads_dir: PathBuf,
    sealed_dir: PathBuf,
    outgoing: HashMap<MediaId, Outgoing>,
    downloads: HashMap<MediaId, Download>,
    /// Incoming attachments recorded, to start after the flush that makes their records
    /// durable.
    starting: Vec<MediaId>,
    uploads: HashMap<(MediaId, PeerId), Upload>,
    puts: HashMap<R, Put>,
    /// What the fetch server may hand out (shared with it).
    catalog: Catalog,
    dirty: bool,
    actions: VecDeque<MediaAction>,
}

impl<R: Copy + Eq + Hash> Transfers<R> {
    /// Opens the records in `store`: outgoing attachments older than `retention` (or whose
    /// sealed copy is gone) are forgotten, unfinished downloads are queued to start.
    pub(crate) fn open(
        store: MediaStore,
        sealed_dir: PathBuf,
        downloads_dir: PathBuf,
        max_bytes: u64,
        retention: Duration,
        now: UnixMillis,
    ) -> Result<Self, MediaStoreError> {
        let mut transfers = Self {
            store,
            max_bytes,
            downloads_dir,
            sealed_dir,
            outgoing: HashMap::new(),
            downloads: HashMap::new(),
            starting: Vec::new(),
            uploads: HashMap::new(),
            puts: HashMap::new(),
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
        for (id, record) in transfers.store.incoming()? {
            if record.state == IncomingState::Downloading {
                transfers.starting.push(id);
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
        let downloads = self.downloads.values().filter_map(|d| d.retry_at);
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
        self.outgoing
            .insert(id, Outgoing { record, layout, served, served_chunks: 0, served_bytes: 0 });
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
                    relays: o.record.uploaded.len(),
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

    /// The manifest of message `id` reached the recipient's relays (it could not be
    /// delivered directly): upload the attachment's chunks to each of them.
    pub(crate) fn stored_at(&mut self, id: MessageId, relays: Vec<Multiaddr>) {
        let Some((media, outgoing)) =
            self.outgoing.iter_mut().find(|(_, o)| o.record.message == id)
        else {
            return;
        };
        let media = *media;
        let mut changed = false;
        for address in &relays {
            let bytes = address.to_vec();
            if !outgoing.record.pending_uploads.contains(&bytes)
                && !outgoing.record.uploaded.contains(&bytes)
            {
                outgoing.record.pending_uploads.push(bytes);
                changed = true;
            }
        }
        let message = outgoing.record.message;
        if changed {
            self.put_outgoing(&media);
        }
        for address in relays {
            self.start_upload(media, message, address);
        }
    }

    /// Resumes the uploads a previous run left unfinished.
    pub(crate) fn resume_uploads(&mut self) {
        let pending: Vec<(MediaId, MessageId, Vec<Vec<u8>>)> = self
            .outgoing
            .iter()
            .filter(|(_, o)| !o.record.pending_uploads.is_empty())
            .map(|(m, o)| (*m, o.record.message, o.record.pending_uploads.clone()))
            .collect();
        for (media, message, relays) in pending {
            for address in relays.into_iter().filter_map(|a| Multiaddr::try_from(a).ok()) {
                self.start_upload(media, message, address);
            }
        }
    }

    fn start_upload(&mut self, media: MediaId, message: MessageId, address: Multiaddr) {
        let Some(relay) = peer_of(&address) else { return };
        if self.uploads.contains_key(&(media, relay)) {
            return;
        }
        self.actions.push_back(MediaAction::AddAddress(relay, address.clone()));
        self.uploads.insert(
            (media, relay),
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
        self.pump_upload(media, relay);
    }

    /// Reads the next chunks of an upload; each is sent when read.
    fn pump_upload(&mut self, media: MediaId, relay: PeerId) {
        let Some(outgoing) = self.outgoing.get(&media) else {
            self.uploads.remove(&(media, relay));
            return;
        };
        let sealed = self.sealed_dir.join(media.to_string());
        let Some(upload) = self.uploads.get_mut(&(media, relay)) else { return };
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
        index: u32,
        data: std::io::Result<Vec<u8>>,
    ) {
        let (Ok(data), Some(outgoing)) = (data, self.outgoing.get(&media)) else {
            self.upload_refused(media, relay, MediaRefusal::Unavailable);
            return;
        };
        let Some(hash) = outgoing.record.hashes.get(index as usize).copied() else { return };
        let recipient = outgoing.record.to;
        self.actions.push_back(MediaAction::Put { media, relay, index, recipient, hash, data });
    }

    /// The driver sent a [`MediaAction::Put`] as `request`.
    pub(crate) fn put_sent(&mut self, request: R, media: MediaId, relay: PeerId, index: u32) {
        self.puts.insert(request, Put { media, relay, index });
    }

    /// A relay answered an upload (`None`: the request failed).
    pub(crate) fn put_answered(
        &mut self,
        request: R,
        response: Option<MediaResponse>,
        now: Instant,
    ) {
        let Some(Put { media, relay, index }) = self.puts.remove(&request) else { return };
        match response {
            Some(MediaResponse::Stored) => self.upload_answered(media, relay, index, true, now),
            Some(MediaResponse::Refused(reason))
                if !matches!(reason, MediaRefusal::RateLimited | MediaRefusal::Unavailable) =>
            {
                self.upload_refused(media, relay, reason)
            }
            _ => self.upload_answered(media, relay, index, false, now),
        }
    }

    fn upload_answered(
        &mut self,
        media: MediaId,
        relay: PeerId,
        index: u32,
        stored: bool,
        now: Instant,
    ) {
        let Some(upload) = self.uploads.get_mut(&(media, relay)) else { return };
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
        let (chunks, size, to) =
            (outgoing.layout.chunks(), outgoing.layout.size(), outgoing.record.to);
        let bytes_done = (u64::from(stored) * u64::from(outgoing.layout.chunk_size())).min(size);
        self.actions.push_back(MediaAction::Event(MediaEvent::Progress {
            media,
            message,
            peer: to,
            direction: TransferDirection::Sending,
            relay: Some(relay),
            chunks_done: stored,
            chunks,
            bytes_done,
            bytes: size,
        }));
        if stored < chunks {
            self.pump_upload(media, relay);
            return;
        }
        self.uploads.remove(&(media, relay));
        let Some(outgoing) = self.outgoing.get_mut(&media) else { return };
        let bytes = address.to_vec();
        outgoing.record.pending_uploads.retain(|a| *a != bytes);
        if !outgoing.record.uploaded.contains(&bytes) {
            outgoing.record.uploaded.push(bytes);
        }
        self.put_outgoing(&media);
        tracing::info!("attachment uploaded to relay …{}", crate::short(&relay));
        self.actions.push_back(MediaAction::Event(MediaEvent::Uploaded { media, message, relay }));
    }

    fn upload_refused(&mut self, media: MediaId, relay: PeerId, reason: MediaRefusal) {
        let Some(upload) = self.uploads.remove(&(media, relay)) else { return };
        if let Some(outgoing) = self.outgoing.get_mut(&media) {
            let bytes = upload.address.to_vec();
            outgoing.record.pending_uploads.retain(|a| *a != bytes);
            self.put_outgoing(&media);
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
            id, peer, direction: Direction::Incoming, body: Some(Body::Media(m)), ..
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
            sources.push(Source::new(peer));
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
                download.sources.push(Source::new(*peer));
            }
        }
    }

    /// Sends chunk requests until [`PARALLEL_CHUNKS`] are in flight, each to the next source
    /// in turn that is neither banned nor resting.
    fn pump_download(&mut self, media: MediaId, relays: &[(PeerId, Multiaddr)], now: Instant) {
        self.add_relay_sources(media, relays);
        let Some(download) = self.downloads.get_mut(&media) else { return };
        if download.retry_at.is_some() {
            return;
        }
        while download.in_flight < PARALLEL_CHUNKS {
            let Some(index) = download.missing.pop_front() else { break };
            let n = download.sources.len();
            let pick = (0..n)
                .map(|k| (download.cursor + k) % n.max(1))
                .find(|i| download.sources.get(*i).is_some_and(|s| !s.banned && !s.resting));
            let hash = download.manifest.chunk_hashes.get(index as usize);
            let (Some(source), Some(hash)) = (pick, hash) else {
                download.stalled.push(index);
                continue;
            };
            download.cursor = source + 1;
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
            self.chunk_missed(media, index, source, false, relays, now);
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

    /// A download's fetch stream to source `source` is gone: its requests are lost.
    pub(crate) fn source_down(
        &mut self,
        media: MediaId,
        source: usize,
        relays: &[(PeerId, Multiaddr)],
        now: Instant,
    ) {
        let Some(download) = self.downloads.get(&media) else { return };
        let lost: Vec<u32> = download
            .assigned
            .iter()
            .filter(|(_, s)| **s == source)
            .map(|(index, _)| *index)
            .collect();
        for index in lost {
            self.chunk_missed(media, index, source, true, relays, now);
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

    /// The writer saved a download: the relays among its sources may drop their copies.
    pub(crate) fn completed(&mut self, media: MediaId, path: PathBuf) {
        let Some(download) = self.downloads.remove(&media) else { return };
        self.actions.push_back(MediaAction::StopWriter(media));
        tracing::info!("attachment saved to {}", path.display());
        for source in download.sources.iter().skip(1) {
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
        let due: Vec<(MediaId, PeerId)> = self
            .uploads
            .iter()
            .filter(|(_, u)| u.retry_at.is_some_and(|at| at <= now))
            .map(|(k, _)| *k)
            .collect();
        for (media, relay) in due {
            if let Some(upload) = self.uploads.get_mut(&(media, relay)) {
                upload.retry_at = None;
            }
            self.pump_upload(media, relay);
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

    /// A peer connected: downloads waiting for it try again now.
    pub(crate) fn connected(&mut self, peer: PeerId, relays: &[(PeerId, Multiaddr)], now: Instant) {
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
