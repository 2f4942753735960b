//! Attachments: sending, serving and downloading over `/kith/media/fetch/1` streams
//! (see [`FETCH_PROTOCOL`]), uploads to relays and their deletion over `/kith/media/1`.
//!
//! ```text
//!  send_file: seal the file chunk by chunk into <data-dir>/media-sealed/<id> (synced), record
//!             it, send the manifest in the ratchet (Content::Media)
//!  recipient: manifest arrives → record (flushed before the envelope is acknowledged) →
//!             pull up to PARALLEL_CHUNKS chunks at once over one fetch stream per source,
//!             round-robin over the sources (the sender, then our relays) → blocking threads
//!             check each chunk's length and BLAKE3 hash and decrypt it → the writer thread
//!             writes in place, syncs and records progress every CHECKPOINT_CHUNKS →
//!             complete: renamed into the downloads directory, relays told to delete
//!  sender:    the manifest went to the recipient's relays (they were unreachable) → upload
//!             every chunk to each of those relays, UPLOAD_IN_FLIGHT at a time
//! ```
//!
//! A source that serves a chunk failing verification is not asked again for that attachment;
//! one that does not have a chunk, or cannot be reached, is asked again after a backoff (a
//! relay may not hold the chunks yet, a sender may come back). A download whose every source
//! served bad bytes fails, and no file is written. Nothing of a download is trusted after a
//! restart but the chunks its record names, which were synced first.

pub(crate) mod fetch;
pub(crate) mod files;
pub(crate) mod store;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_core::engine::{Command, CommandError, CommandResult, Event};
use kith_core::identity::peer_id_of;
use kith_core::media::{ChunkError, Layout};
use kith_core::model::{Direction, Message};
use kith_protocol::content::{Body, MediaManifest};
use kith_protocol::media::{MediaRefusal, MediaRequest, MediaResponse};
use kith_protocol::{ChunkHash, MediaId, MessageId, UserId};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::NodeEvent;
use crate::clock::now_millis;
use crate::driver::Driver;
use crate::mailbox::{NetAction, peer_of};
pub use fetch::{FETCH_PROTOCOL, FETCH_TIMEOUT, MAX_FETCH_STREAMS};
pub use files::{CHECKPOINT_CHUNKS, safe_file_name};
pub use store::MediaStoreError;
use store::{IncomingRecord, IncomingState, MediaStore, OutgoingRecord, bit, bitmap};

/// Chunk requests in flight per download (on the fetch streams, or being verified and
/// written).
pub const PARALLEL_CHUNKS: usize = 16;
/// Chunk uploads in flight per relay.
pub const UPLOAD_IN_FLIGHT: usize = 4;
/// Results from blocking threads queued for the driver; a full queue makes those threads wait.
pub const WORK_QUEUE: usize = 256;
/// Default largest attachment sent or accepted.
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// First delay before sources that lacked a chunk are asked again; it doubles up to
/// [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between two rounds of asking a download's sources.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long we keep the sealed copy of an attachment we sent (as long as a relay keeps mail).
pub const SEALED_RETENTION: Duration = crate::relay::DEFAULT_TTL;

/// Why an attachment could not be sent or received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaFailure {
    /// Above the configured maximum size; nothing was transferred.
    #[error("the attachment is {size} bytes, above the maximum of {max} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The maximum.
        max: u64,
    },
    /// The manifest or file is not valid.
    #[error("invalid attachment: {0}")]
    Invalid(String),
    /// Every source served chunks that failed verification; nothing was saved.
    #[error("every source served corrupt data (last: {0})")]
    Corrupt(ChunkError),
    /// A relay refused to store the chunks.
    #[error("the relay refused the upload: {0:?}")]
    Refused(MediaRefusal),
    /// Reading or writing files failed.
    #[error("file error: {0}")]
    Io(String),
}

/// Which way an attachment moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferDirection {
    /// We send it.
    Sending,
    /// We receive it.
    Receiving,
}

/// What happens to attachments (in [`NodeEvent::Media`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MediaEvent {
    /// Chunks moved. Sending: one event per chunk served to the recipient or stored by a
    /// relay; receiving: one per chunk verified and written.
    Progress {
        /// The attachment.
        media: MediaId,
        /// The message that carries it.
        message: MessageId,
        /// The other party.
        peer: UserId,
        /// Which way.
        direction: TransferDirection,
        /// The relay it goes to, for uploads.
        relay: Option<PeerId>,
        /// Distinct chunks done so far (served, uploaded, or verified).
        chunks_done: u32,
        /// Chunks in all.
        chunks: u32,
        /// Bytes of the attachment done so far.
        bytes_done: u64,
        /// Its size.
        bytes: u64,
    },
    /// A source served a chunk that failed verification; it is not asked again for this
    /// attachment and the chunk is fetched elsewhere.
    ChunkRefused {
        /// The attachment.
        media: MediaId,
        /// The source.
        source: PeerId,
        /// What was wrong.
        error: ChunkError,
    },
    /// A relay holds every chunk.
    Uploaded {
        /// The attachment.
        media: MediaId,
        /// The message.
        message: MessageId,
        /// The relay.
        relay: PeerId,
    },
    /// A download is complete and saved.
    Saved {
        /// The attachment.
        media: MediaId,
        /// The message.
        message: MessageId,
        /// Where.
        path: PathBuf,
    },
    /// An attachment failed for good.
    Failed {
        /// The attachment.
        media: MediaId,
        /// The message.
        message: MessageId,
        /// Why.
        reason: MediaFailure,
    },
}

/// An attachment as an app lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Its id.
    pub media: MediaId,
    /// The message that carries it.
    pub message: MessageId,
    /// The other party.
    pub peer: UserId,
    /// Which way.
    pub direction: TransferDirection,
    /// File name (as the sender named it).
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it stands.
    pub state: AttachmentState,
}

/// Where an attachment stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachmentState {
    /// Sent from this file; served to the recipient, and held by this many relays.
    Sent {
        /// The file we sent.
        source: PathBuf,
        /// Relays that hold every chunk.
        relays: usize,
    },
    /// Being downloaded.
    Downloading {
        /// Chunks verified and written.
        chunks_done: u32,
        /// Chunks in all.
        chunks: u32,
    },
    /// Saved here.
    Saved(PathBuf),
    /// Failed for good.
    Failed(String),
}

/// Results from blocking threads, handled by the driver.
pub(crate) enum Work {
    /// A chunk of ours was served to its recipient on a fetch stream.
    Served {
        media: MediaId,
        index: u32,
    },
    /// A relay's chunk was served to its recipient.
    BlobServed,
    /// A fetch stream answered a chunk request.
    Fetched {
        media: MediaId,
        index: u32,
        source: usize,
        response: MediaResponse,
    },
    /// A fetch stream could not be opened or broke: its requests are lost.
    SourceDown {
        media: MediaId,
        source: usize,
    },
    /// A chunk read for an upload.
    UploadRead {
        media: MediaId,
        relay: PeerId,
        index: u32,
        data: std::io::Result<Vec<u8>>,
    },
    /// A relay's chunk file was written (or not).
    BlobWritten {
        channel: ResponseChannel<MediaResponse>,
        recipient: UserId,
        hash: ChunkHash,
        size: u64,
        result: Result<(), MediaRefusal>,
    },
    /// A chunk was written (`None`: it was a duplicate and was dropped).
    ChunkWritten {
        media: MediaId,
        bytes: Option<u64>,
    },
    ChunkRejected {
        media: MediaId,
        index: u32,
        source: usize,
        error: ChunkError,
    },
    Completed {
        media: MediaId,
        path: PathBuf,
    },
    Failed {
        media: MediaId,
        failure: MediaFailure,
    },
}

/// An attachment we serve.
struct Outgoing {
    record: OutgoingRecord,
    layout: Layout,
    sealed: PathBuf,
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
    /// Chunks for the writer; requests in flight include those it has not finished, so this
    /// never holds more than [`PARALLEL_CHUNKS`].
    writer: std::sync::mpsc::SyncSender<files::Incoming>,
    /// One fetch stream per source in use.
    sessions: HashMap<usize, mpsc::Sender<(u32, ChunkHash)>>,
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

enum Pending {
    Put { media: MediaId, relay: PeerId, index: u32 },
    Delete,
}

/// The driver's attachment state.
pub(crate) struct Media {
    store: MediaStore,
    max_bytes: u64,
    downloads_dir: PathBuf,
    sealed_dir: PathBuf,
    outgoing: HashMap<MediaId, Outgoing>,
    downloads: HashMap<MediaId, Download>,
    /// Incoming attachments recorded this turn, started after the flush.
    starting: Vec<MediaId>,
    uploads: HashMap<(MediaId, PeerId), Upload>,
    requests: HashMap<OutboundRequestId, Pending>,
    /// What the fetch server may hand out (shared with it).
    pub(crate) catalog: fetch::Catalog,
    /// Opens fetch streams (set once the swarm exists).
    pub(crate) control: Option<libp2p_stream::Control>,
    dirty: bool,
    work_tx: mpsc::Sender<Work>,
    pub(crate) work_rx: mpsc::Receiver<Work>,
}

/// Media settings of a node.
#[derive(Clone, Debug)]
pub(crate) struct MediaSettings {
    pub(crate) db: PathBuf,
    pub(crate) sealed_dir: PathBuf,
    pub(crate) downloads_dir: PathBuf,
    pub(crate) max_bytes: u64,
}

impl Media {
    pub(crate) fn open(settings: MediaSettings) -> Result<Self, MediaStoreError> {
        let store = MediaStore::open(&settings.db)?;
        let (work_tx, work_rx) = mpsc::channel(WORK_QUEUE);
        let mut media = Self {
            store,
            max_bytes: settings.max_bytes,
            downloads_dir: settings.downloads_dir,
            sealed_dir: settings.sealed_dir,
            outgoing: HashMap::new(),
            downloads: HashMap::new(),
            starting: Vec::new(),
            uploads: HashMap::new(),
            requests: HashMap::new(),
            catalog: fetch::Catalog::default(),
            control: None,
            dirty: false,
            work_tx,
            work_rx,
        };
        let retention = u64::try_from(SEALED_RETENTION.as_millis()).unwrap_or(u64::MAX);
        let now = now_millis();
        for (id, record) in media.store.outgoing()? {
            let sealed = media.sealed_dir.join(id.to_string());
            let Ok(layout) = Layout::new(record.size, record.chunk_size) else { continue };
            if now.saturating_sub(record.created_at) > retention || !sealed.exists() {
                let _ = std::fs::remove_file(&sealed);
                media.store.delete_outgoing(&id)?;
                media.dirty = true;
                continue;
            }
            media.add_outgoing(id, record, layout, sealed);
        }
        for (id, record) in media.store.incoming()? {
            if record.state == IncomingState::Downloading {
                media.starting.push(id);
            }
        }
        Ok(media)
    }

    /// Starts answering fetch streams (from what we sent and, on a relay, from `blobs`), and
    /// keeps `control` to open our own.
    pub(crate) fn serve_fetches(
        &mut self,
        mut control: libp2p_stream::Control,
        blobs: Option<fetch::BlobIndex>,
    ) -> Result<(), libp2p_stream::AlreadyRegistered> {
        let incoming = control.accept(FETCH_PROTOCOL)?;
        self.catalog.blobs = blobs;
        tokio::spawn(fetch::serve(incoming, self.catalog.clone(), self.work_tx.clone()));
        self.control = Some(control);
        Ok(())
    }

    /// Serves an attachment we sent (here and on fetch streams).
    fn add_outgoing(
        &mut self,
        id: MediaId,
        record: OutgoingRecord,
        layout: Layout,
        sealed: PathBuf,
    ) {
        if let Ok(mut catalog) = self.catalog.outgoing.write() {
            catalog.insert(
                id,
                fetch::Served {
                    to: record.to,
                    sealed: sealed.clone(),
                    layout,
                    hashes: Arc::new(record.hashes.clone()),
                },
            );
        }
        let served = bitmap(layout.chunks());
        self.outgoing.insert(
            id,
            Outgoing { record, layout, sealed, served, served_chunks: 0, served_bytes: 0 },
        );
    }

    /// Makes the records written this turn durable.
    pub(crate) fn flush(&mut self) -> Result<(), MediaStoreError> {
        if self.dirty {
            self.store.flush()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// When a retry is next due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let downloads = self.downloads.values().filter_map(|d| d.retry_at);
        let uploads = self.uploads.values().filter_map(|u| u.retry_at);
        downloads.chain(uploads).min()
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
                    let persisted = store::count(&record.done, chunks);
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
            });
        }
        Ok(out)
    }

    /// Where sealed copies of what we send go.
    pub(crate) fn sealed_dir(&self) -> &Path {
        &self.sealed_dir
    }

    /// The largest attachment sent or accepted.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

impl Driver {
    // ------------------------------------------------------------------ sending

    /// Records a sealed attachment and queues its manifest to `to`. Durable after the flush.
    pub(crate) fn send_media(
        &mut self,
        to: UserId,
        manifest: MediaManifest,
        source: PathBuf,
    ) -> Result<MessageId, CommandError> {
        let media = manifest.media_id;
        let sealed = self.media.sealed_dir.join(media.to_string());
        let record = OutgoingRecord {
            message: MessageId([0; 16]),
            to,
            name: manifest.name.clone(),
            mime: manifest.mime.clone(),
            size: manifest.size,
            chunk_size: manifest.chunk_size,
            hashes: manifest.chunk_hashes.clone(),
            source,
            created_at: now_millis(),
            pending_uploads: Vec::new(),
            uploaded: Vec::new(),
        };
        let layout = Layout::new(manifest.size, manifest.chunk_size)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let command = Command::SendMedia { to, manifest: Box::new(manifest) };
        let message = match self.engine.handle_command(now_millis(), command) {
            Ok(CommandResult::Queued(id)) => id,
            Ok(_) => {
                return Err(CommandError::InvalidMessage("attachment not queued".into()));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&sealed);
                return Err(e);
            }
        };
        let record = OutgoingRecord { message, ..record };
        self.media.store.put_outgoing(&media, &record).map_err(|e| {
            CommandError::Store(kith_core::store::StoreError::Backend(e.to_string()))
        })?;
        self.media.dirty = true;
        self.media.add_outgoing(media, record, layout, sealed);
        Ok(message)
    }

    /// The manifest of message `id` reached the recipient's relays (it could not be delivered
    /// directly): upload the attachment's chunks to each of them.
    pub(crate) fn media_stored_at(&mut self, id: MessageId, relays: Vec<Multiaddr>) {
        let Some((media, outgoing)) =
            self.media.outgoing.iter_mut().find(|(_, o)| o.record.message == id)
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
        if changed {
            if let Err(e) = self.media.store.put_outgoing(&media, &outgoing.record) {
                tracing::error!("{e}");
            }
            self.media.dirty = true;
        }
        let message = outgoing.record.message;
        for address in relays {
            self.start_upload(media, message, address);
        }
    }

    fn start_upload(&mut self, media: MediaId, message: MessageId, address: Multiaddr) {
        let Some(relay) = peer_of(&address) else { return };
        if self.media.uploads.contains_key(&(media, relay)) {
            return;
        }
        self.swarm.add_peer_address(relay, address.clone());
        self.media.uploads.insert(
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

    /// Reads the next chunks of an upload (on blocking threads); each is sent when read.
    fn pump_upload(&mut self, media: MediaId, relay: PeerId) {
        let Some(outgoing) = self.media.outgoing.get(&media) else {
            self.media.uploads.remove(&(media, relay));
            return;
        };
        let Some(upload) = self.media.uploads.get_mut(&(media, relay)) else { return };
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
            let (path, offset, len) = (
                outgoing.sealed.clone(),
                outgoing.layout.sealed_offset(index),
                outgoing.layout.sealed_len(index),
            );
            let work = self.media.work_tx.clone();
            tokio::task::spawn_blocking(move || {
                let data = files::read_at(&path, offset, len);
                let _ = work.blocking_send(Work::UploadRead { media, relay, index, data });
            });
        }
    }

    fn upload_answered(&mut self, media: MediaId, relay: PeerId, index: u32, stored: bool) {
        let Some(upload) = self.media.uploads.get_mut(&(media, relay)) else { return };
        upload.in_flight = upload.in_flight.saturating_sub(1);
        if !stored {
            upload.retry.push(index);
            if upload.retry_at.is_none() {
                upload.retry_at = Some(Instant::now() + upload.backoff);
                upload.backoff = (upload.backoff * 2).min(RETRY_MAX);
            }
            return;
        }
        upload.stored += 1;
        upload.backoff = RETRY_FIRST;
        let (message, stored, address) = (upload.message, upload.stored, upload.address.clone());
        let Some(outgoing) = self.media.outgoing.get(&media) else { return };
        let (chunks, size, to) =
            (outgoing.layout.chunks(), outgoing.layout.size(), outgoing.record.to);
        let bytes_done = (u64::from(stored) * u64::from(outgoing.layout.chunk_size())).min(size);
        self.emit(NodeEvent::Media(MediaEvent::Progress {
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
        self.media.uploads.remove(&(media, relay));
        let Some(outgoing) = self.media.outgoing.get_mut(&media) else { return };
        let bytes = address.to_vec();
        outgoing.record.pending_uploads.retain(|a| *a != bytes);
        if !outgoing.record.uploaded.contains(&bytes) {
            outgoing.record.uploaded.push(bytes);
        }
        if let Err(e) = self.media.store.put_outgoing(&media, &outgoing.record) {
            tracing::error!("{e}");
        }
        self.media.dirty = true;
        tracing::info!("attachment uploaded to relay …{}", crate::short(&relay));
        self.emit(NodeEvent::Media(MediaEvent::Uploaded { media, message, relay }));
    }

    fn upload_refused(&mut self, media: MediaId, relay: PeerId, reason: MediaRefusal) {
        let Some(upload) = self.media.uploads.remove(&(media, relay)) else { return };
        if let Some(outgoing) = self.media.outgoing.get_mut(&media) {
            let bytes = upload.address.to_vec();
            outgoing.record.pending_uploads.retain(|a| *a != bytes);
            if let Err(e) = self.media.store.put_outgoing(&media, &outgoing.record) {
                tracing::error!("{e}");
            }
            self.media.dirty = true;
        }
        tracing::warn!("relay …{} refused an attachment: {reason:?}", crate::short(&relay));
        self.emit(NodeEvent::Media(MediaEvent::Failed {
            media,
            message: upload.message,
            reason: MediaFailure::Refused(reason),
        }));
    }

    // ------------------------------------------------------------------ receiving

    /// Notes the incoming attachments among this turn's engine outputs: recorded before the
    /// turn's acknowledgements leave (the caller flushes), started after.
    pub(crate) fn note_incoming_media(&mut self, event: &Event) {
        let Event::Message(message) = event else { return };
        let Message {
            id, peer, direction: Direction::Incoming, body: Some(Body::Media(m)), ..
        } = message.as_ref()
        else {
            return;
        };
        let media = m.media_id;
        if self.media.store.incoming_record(&media).ok().flatten().is_some() {
            return; // the same attachment sent again
        }
        let layout = Layout::of(m, self.media.max_bytes);
        let state = match &layout {
            Ok(_) => IncomingState::Downloading,
            Err(e) => IncomingState::Failed(e.to_string()),
        };
        let done = bitmap(u32::try_from(m.chunk_hashes.len()).unwrap_or(0));
        let record = IncomingRecord { message: *id, from: *peer, manifest: m.clone(), done, state };
        if let Err(e) = self.media.store.put_incoming(&media, &record) {
            tracing::error!("{e}");
            return;
        }
        self.media.dirty = true;
        match layout {
            Ok(_) => self.media.starting.push(media),
            Err(e) => {
                tracing::info!("refused an attachment before fetching it: {e}");
                let reason = match e {
                    kith_core::media::MediaError::TooLarge { size, max } => {
                        MediaFailure::TooLarge { size, max }
                    }
                    other => MediaFailure::Invalid(other.to_string()),
                };
                self.emit(NodeEvent::Media(MediaEvent::Failed { media, message: *id, reason }));
            }
        }
    }

    /// Starts the downloads recorded so far (after the flush that made their records durable),
    /// and resumes the uploads a previous run left.
    pub(crate) fn start_media(&mut self) {
        for media in std::mem::take(&mut self.media.starting) {
            if let Err(e) = self.start_download(media) {
                tracing::error!("could not start a download: {e}");
            }
        }
    }

    /// Resumes the uploads a previous run left unfinished.
    pub(crate) fn resume_uploads(&mut self) {
        let pending: Vec<(MediaId, MessageId, Vec<Vec<u8>>)> = self
            .media
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

    fn start_download(&mut self, media: MediaId) -> Result<(), MediaStoreError> {
        if self.media.downloads.contains_key(&media) {
            return Ok(());
        }
        let Some(mut record) = self.media.store.incoming_record(&media)? else { return Ok(()) };
        let Ok(layout) = Layout::of(&record.manifest, u64::MAX) else { return Ok(()) };
        let partial = files::partial_path(&self.media.downloads_dir, &media);
        if !partial.exists() {
            // Nothing on disk: whatever the record says, start over.
            record.done = bitmap(layout.chunks());
        }
        let missing: VecDeque<u32> =
            (0..layout.chunks()).filter(|i| !bit(&record.done, *i)).collect();
        let chunks_done = store::count(&record.done, layout.chunks());
        let bytes_done = (0..layout.chunks())
            .filter(|i| bit(&record.done, *i))
            .map(|i| layout.plain_len(i) as u64)
            .sum();
        let (writer, chunks) = std::sync::mpsc::sync_channel(PARALLEL_CHUNKS);
        let manifest = Arc::new(record.manifest.clone());
        let worker = files::Writer {
            media,
            manifest: manifest.clone(),
            layout,
            downloads: self.media.downloads_dir.clone(),
            store: self.media.store.clone(),
            done: record.done.clone(),
            work: self.media.work_tx.clone(),
        };
        tokio::task::spawn_blocking(move || worker.run(chunks));
        let mut sources = Vec::new();
        if let Ok(peer) = peer_id_of(&record.from) {
            sources.push(Source::new(peer));
        }
        let download = Download {
            message: record.message,
            from: record.from,
            layout,
            manifest: manifest.clone(),
            missing,
            in_flight: 0,
            sources,
            cursor: 0,
            stalled: Vec::new(),
            retry_at: None,
            backoff: RETRY_FIRST,
            writer,
            sessions: HashMap::new(),
            assigned: HashMap::new(),
            chunks_done,
            bytes_done,
            last_error: None,
        };
        self.media.downloads.insert(media, download);
        if chunks_done == layout.chunks() {
            // Every chunk was verified before a restart; the writer finishes the file.
            return Ok(());
        }
        self.pump_download(media);
        Ok(())
    }

    /// Our relays, as sources of a download (the recipient's relays are where a sender that
    /// could not reach us uploads).
    fn add_relay_sources(&mut self, media: MediaId) {
        let relays = self.mailboxes.ours();
        let Some(download) = self.media.downloads.get_mut(&media) else { return };
        for (peer, address) in relays {
            if !download.sources.iter().any(|s| s.peer == peer) {
                self.swarm.add_peer_address(peer, address);
                download.sources.push(Source::new(peer));
            }
        }
    }

    /// Sends chunk requests until [`PARALLEL_CHUNKS`] are in flight, each to the next source
    /// in turn that is neither banned nor resting.
    fn pump_download(&mut self, media: MediaId) {
        self.add_relay_sources(media);
        let Some(download) = self.media.downloads.get_mut(&media) else { return };
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
            let session = match (download.sessions.get(&source), &self.media.control) {
                (Some(session), _) => session.clone(),
                (None, Some(control)) => {
                    let session = fetch::start_session(
                        control.clone(),
                        peer,
                        media,
                        source,
                        self.media.work_tx.clone(),
                    );
                    download.sessions.insert(source, session.clone());
                    session
                }
                (None, None) => {
                    download.stalled.push(index);
                    continue;
                }
            };
            // Room is guaranteed: a session never has more than PARALLEL_CHUNKS requests.
            if session.try_send((index, *hash)).is_err() {
                download.sessions.remove(&source);
                download.missing.push_front(index);
                break;
            }
            download.in_flight += 1;
            download.assigned.insert(index, source);
        }
        self.download_stalled(media);
    }

    /// If nothing is in flight or waiting but chunks are still missing: when every source we
    /// reached served bad bytes and the others are unreachable, the download fails (the user
    /// may retry it later); otherwise the sources rest until the next round.
    fn download_stalled(&mut self, media: MediaId) {
        let Some(download) = self.media.downloads.get_mut(&media) else { return };
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
            download.retry_at = Some(Instant::now() + download.backoff);
            download.backoff = (download.backoff * 2).min(RETRY_MAX);
        }
    }

    fn fail_download(&mut self, media: MediaId, reason: MediaFailure) {
        let Some(download) = self.media.downloads.remove(&media) else { return };
        // Dropping the download closes the writer's channel; the partial file goes.
        let _ = std::fs::remove_file(files::partial_path(&self.media.downloads_dir, &media));
        if let Ok(Some(mut record)) = self.media.store.incoming_record(&media) {
            record.state = IncomingState::Failed(reason.to_string());
            record.done = bitmap(download.layout.chunks());
            if let Err(e) = self.media.store.put_incoming(&media, &record) {
                tracing::error!("{e}");
            }
            self.media.dirty = true;
        }
        tracing::warn!("attachment download failed: {reason}");
        self.emit(NodeEvent::Media(MediaEvent::Failed {
            media,
            message: download.message,
            reason,
        }));
    }

    /// A chunk request ended without a chunk: the source rests, the chunk goes back.
    fn chunk_missed(&mut self, media: MediaId, index: u32, source: usize, unreachable: bool) {
        let Some(download) = self.media.downloads.get_mut(&media) else { return };
        download.in_flight = download.in_flight.saturating_sub(1);
        download.assigned.remove(&index);
        if let Some(s) = download.sources.get_mut(source) {
            s.resting = true;
            s.unreachable = unreachable;
        }
        download.missing.push_front(index);
        self.pump_download(media);
    }

    /// Retries due downloads and uploads.
    pub(crate) fn media_timer(&mut self) {
        let now = Instant::now();
        let due: Vec<MediaId> = self
            .media
            .downloads
            .iter()
            .filter(|(_, d)| d.retry_at.is_some_and(|at| at <= now))
            .map(|(m, _)| *m)
            .collect();
        for media in due {
            self.retry_download(media);
        }
        let due: Vec<(MediaId, PeerId)> = self
            .media
            .uploads
            .iter()
            .filter(|(_, u)| u.retry_at.is_some_and(|at| at <= now))
            .map(|(k, _)| *k)
            .collect();
        for (media, relay) in due {
            if let Some(upload) = self.media.uploads.get_mut(&(media, relay)) {
                upload.retry_at = None;
            }
            self.pump_upload(media, relay);
        }
    }

    fn retry_download(&mut self, media: MediaId) {
        let Some(download) = self.media.downloads.get_mut(&media) else { return };
        download.retry_at = None;
        for source in &mut download.sources {
            source.resting = false;
        }
        let stalled = std::mem::take(&mut download.stalled);
        download.missing.extend(stalled);
        self.pump_download(media);
    }

    /// A peer connected: downloads waiting for it try again now.
    pub(crate) fn media_peer_connected(&mut self, peer: PeerId) {
        let waiting: Vec<MediaId> = self
            .media
            .downloads
            .iter()
            .filter(|(_, d)| d.retry_at.is_some() && d.sources.iter().any(|s| s.peer == peer))
            .map(|(m, _)| *m)
            .collect();
        for media in waiting {
            self.retry_download(media);
        }
    }

    // ------------------------------------------------------------------ the protocol

    pub(crate) fn on_media_event(
        &mut self,
        event: request_response::Event<MediaRequest, MediaResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_media_request(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_media_response(request_id, response)
                }
            },
            request_response::Event::OutboundFailure { request_id, .. } => {
                match self.media.requests.remove(&request_id) {
                    Some(Pending::Put { media, relay, index }) => {
                        self.upload_answered(media, relay, index, false)
                    }
                    Some(Pending::Delete) | None => {}
                }
            }
            _ => {}
        }
    }

    fn answer_media(&mut self, channel: ResponseChannel<MediaResponse>, response: MediaResponse) {
        let _ = self.swarm.behaviour_mut().media.send_response(channel, response);
    }

    fn on_media_request(
        &mut self,
        peer: PeerId,
        request: MediaRequest,
        channel: ResponseChannel<MediaResponse>,
    ) {
        match request {
            // Chunks travel on fetch streams (`/kith/media/fetch/1`).
            MediaRequest::Get { .. } => self.answer_media(channel, MediaResponse::NotFound),
            MediaRequest::Put { recipient, hash, data } => {
                let Some(relay) = self.relay.as_mut() else {
                    self.answer_media(channel, MediaResponse::Refused(MediaRefusal::NotARelay));
                    return;
                };
                let size = data.len() as u64;
                match relay.blob_admit(peer, &recipient, &hash, size) {
                    Err(reason) => self.answer_media(channel, MediaResponse::Refused(reason)),
                    // Held already: durable unless committed this very turn, so after the flush.
                    Ok(None) => self
                        .mailboxes
                        .after_flush
                        .push(NetAction::MediaReply(channel, MediaResponse::Stored)),
                    Ok(Some(path)) => {
                        let work = self.media.work_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let result = crate::relay::blobs::write_blob(&path, &hash, &data);
                            let _ = work.blocking_send(Work::BlobWritten {
                                channel,
                                recipient,
                                hash,
                                size,
                                result,
                            });
                        });
                    }
                }
            }
            MediaRequest::Delete { hashes } => {
                let response = match self.relay.as_mut() {
                    Some(relay) => relay.blob_delete(&peer, &hashes),
                    None => MediaResponse::Refused(MediaRefusal::NotARelay),
                };
                self.mailboxes.after_flush.push(NetAction::MediaReply(channel, response));
            }
        }
    }

    /// A fetch stream answered: a chunk goes to be verified, anything else is a miss.
    fn chunk_fetched(
        &mut self,
        media: MediaId,
        index: u32,
        source: usize,
        response: MediaResponse,
    ) {
        let MediaResponse::Chunk { data } = response else {
            self.chunk_missed(media, index, source, false);
            return;
        };
        let Some(download) = self.media.downloads.get_mut(&media) else { return };
        download.assigned.remove(&index);
        // Verified and decrypted on a blocking thread (chunks in parallel), then written by the
        // download's writer. Still in flight until the writer is done with it, so the writer's
        // channel always has room.
        let (manifest, layout) = (download.manifest.clone(), download.layout);
        let (writer, work) = (download.writer.clone(), self.media.work_tx.clone());
        tokio::task::spawn_blocking(move || {
            match kith_core::media::open_verified(&manifest, &layout, index, &data) {
                Ok(plain) => {
                    let _ = writer.send(files::Incoming { index, plain });
                }
                Err(error) => {
                    let _ = work.blocking_send(Work::ChunkRejected { media, index, source, error });
                }
            }
        });
    }

    fn on_media_response(&mut self, request: OutboundRequestId, response: MediaResponse) {
        match self.media.requests.remove(&request) {
            Some(Pending::Put { media, relay, index }) => match response {
                MediaResponse::Stored => self.upload_answered(media, relay, index, true),
                MediaResponse::Refused(MediaRefusal::RateLimited | MediaRefusal::Unavailable) => {
                    self.upload_answered(media, relay, index, false)
                }
                MediaResponse::Refused(reason) => self.upload_refused(media, relay, reason),
                _ => self.upload_answered(media, relay, index, false),
            },
            Some(Pending::Delete) | None => {}
        }
    }

    /// Handles what a blocking thread finished.
    pub(crate) fn on_media_work(&mut self, work: Work) {
        match work {
            Work::Served { media, index } => self.chunk_served(media, index),
            Work::BlobServed => {
                if let Some(relay) = &self.relay {
                    relay.metrics.blobs_served.inc();
                }
            }
            Work::Fetched { media, index, source, response } => {
                self.chunk_fetched(media, index, source, response)
            }
            Work::SourceDown { media, source } => {
                let Some(download) = self.media.downloads.get_mut(&media) else { return };
                download.sessions.remove(&source);
                let lost: Vec<u32> = download
                    .assigned
                    .iter()
                    .filter(|(_, s)| **s == source)
                    .map(|(index, _)| *index)
                    .collect();
                for index in lost {
                    self.chunk_missed(media, index, source, true);
                }
            }
            Work::UploadRead { media, relay, index, data } => {
                let (Ok(data), Some(outgoing)) = (data, self.media.outgoing.get(&media)) else {
                    self.upload_refused(media, relay, MediaRefusal::Unavailable);
                    return;
                };
                let Some(hash) = outgoing.record.hashes.get(index as usize).copied() else {
                    return;
                };
                let recipient = outgoing.record.to;
                let request = self
                    .swarm
                    .behaviour_mut()
                    .media
                    .send_request(&relay, MediaRequest::Put { recipient, hash, data });
                self.media.requests.insert(request, Pending::Put { media, relay, index });
            }
            Work::BlobWritten { channel, recipient, hash, size, result } => {
                let Some(relay) = self.relay.as_mut() else { return };
                let response = relay.blob_written(&recipient, &hash, size, result, now_millis());
                self.mailboxes.after_flush.push(NetAction::MediaReply(channel, response));
            }
            Work::ChunkWritten { media, bytes } => {
                let Some(download) = self.media.downloads.get_mut(&media) else { return };
                download.in_flight = download.in_flight.saturating_sub(1);
                let Some(bytes) = bytes else {
                    self.pump_download(media);
                    return;
                };
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
                self.emit(NodeEvent::Media(event));
                self.pump_download(media);
            }
            Work::ChunkRejected { media, index, source, error } => {
                let Some(download) = self.media.downloads.get_mut(&media) else { return };
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
                    self.emit(NodeEvent::Media(MediaEvent::ChunkRefused { media, source, error }));
                }
                self.pump_download(media);
            }
            Work::Completed { media, path } => {
                let Some(download) = self.media.downloads.remove(&media) else { return };
                tracing::info!("attachment saved to {}", path.display());
                // The relays may drop their copies now.
                let relays: Vec<PeerId> = download.sources.iter().skip(1).map(|s| s.peer).collect();
                for relay in relays {
                    let hashes = download.manifest.chunk_hashes.clone();
                    let request = self
                        .swarm
                        .behaviour_mut()
                        .media
                        .send_request(&relay, MediaRequest::Delete { hashes });
                    self.media.requests.insert(request, Pending::Delete);
                }
                self.emit(NodeEvent::Media(MediaEvent::Saved {
                    media,
                    message: download.message,
                    path,
                }));
            }
            Work::Failed { media, failure } => self.fail_download(media, failure),
        }
    }

    /// A chunk of ours reached its recipient.
    fn chunk_served(&mut self, media: MediaId, index: u32) {
        let Some(outgoing) = self.media.outgoing.get_mut(&media) else { return };
        if !bit(&outgoing.served, index) {
            store::set_bit(&mut outgoing.served, index);
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
        self.emit(NodeEvent::Media(event));
    }

    /// Attachments exchanged with `peer` (all for `None`).
    pub(crate) fn attachments(
        &self,
        peer: Option<UserId>,
    ) -> Result<Vec<Attachment>, MediaStoreError> {
        self.media.list(peer)
    }
}
