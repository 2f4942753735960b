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
//!             every chunk to each of those relays, UPLOAD_IN_FLIGHT at a time (for a group:
//!             for each member whose copy went to its relays)
//!  group:     each member fetches the chunks homed at it (index mod members) from the sender
//!             and the others from their home members, who serve them sealed again from the
//!             plaintext they saved (only if that matches the manifest's hash)
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
pub mod thumbnail;
pub(crate) mod transfers;

use std::path::PathBuf;
use std::time::Duration;

use kith_core::media::ChunkError;
use kith_protocol::media::{MediaRefusal, MediaResponse};
use kith_protocol::{ChunkHash, MediaId, MessageId, UserId};
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;

pub use fetch::{FETCH_PROTOCOL, FETCH_TIMEOUT, MAX_FETCH_STREAMS, MediaServed};
pub use files::{CHECKPOINT_CHUNKS, MAX_UNCHECKPOINTED, safe_file_name};
pub use store::MediaStoreError;
pub use transfers::{
    HOME_PATIENCE, HOME_RETRY_FIRST, HOME_RETRY_MAX, PARALLEL_CHUNKS, RETRY_FIRST, RETRY_MAX,
    UPLOAD_IN_FLIGHT,
};

/// Results from blocking threads queued for the driver; a full queue makes those threads wait.
pub const WORK_QUEUE: usize = 256;
/// Default largest attachment sent or accepted.
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// How long we keep the sealed copy of an attachment we sent: as long as a relay keeps mail by
/// default ([`crate::relay::DEFAULT_TTL`]), so a recipient that fetches its mail late still
/// finds the chunks.
pub const SEALED_RETENTION: Duration = Duration::from_secs(14 * 24 * 60 * 60);

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
    Invalid(#[from] kith_core::media::MediaError),
    /// Every source served chunks that failed verification; nothing was saved.
    #[error("every source served corrupt data (last: {0})")]
    Corrupt(ChunkError),
    /// A relay refused to store the chunks.
    #[error("the relay refused the upload: {0:?}")]
    Refused(MediaRefusal),
    /// What was to be sent is not a regular file.
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// Reading or writing files failed.
    #[error(transparent)]
    Io(#[from] FileError),
}

/// A file error, with the file it concerns when there is one. Cheap to clone (failures travel
/// in events); two are equal when they concern the same file and are of the same kind.
#[derive(Clone, Debug)]
pub struct FileError {
    path: Option<PathBuf>,
    error: std::sync::Arc<std::io::Error>,
}

impl FileError {
    /// `error`, which happened on `path`.
    pub(crate) fn new(path: Option<&std::path::Path>, error: std::io::Error) -> Self {
        Self { path: path.map(ToOwned::to_owned), error: std::sync::Arc::new(error) }
    }

    /// The file, if known.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The kind of the IO error.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.error.kind()
    }
}

impl PartialEq for FileError {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.kind() == other.kind()
    }
}

impl Eq for FileError {}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "file error on {}: {}", path.display(), self.error),
            None => write!(f, "file error: {}", self.error),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

/// Which way an attachment moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferDirection {
    /// We send it.
    Sending,
    /// We receive it.
    Receiving,
}

/// What happens to attachments (in [`NodeEvent::Media`](crate::NodeEvent::Media)).
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
#[non_exhaustive]
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
    /// The preview image (JPEG) the sender put in the manifest, for a received image.
    pub thumbnail: Option<Vec<u8>>,
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

/// Results of IO done off the driver (fetch streams, blocking threads), handled by the driver.
pub(crate) enum Work {
    /// A chunk of ours was served to its recipient on a fetch stream.
    Served { media: MediaId, index: u32 },
    /// A relay's chunk was served to its recipient.
    BlobServed,
    /// A fetch stream answered a chunk request.
    Fetched { media: MediaId, index: u32, source: usize, response: MediaResponse },
    /// A fetch stream could not be opened (`broke: false`) or broke: its requests are lost.
    SourceDown { media: MediaId, source: usize, broke: bool },
    /// A chunk read for an upload.
    UploadRead {
        media: MediaId,
        relay: PeerId,
        recipient: UserId,
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
    /// A sealed deposit with `relay` was answered (`None`: it failed on the way).
    SealedDeposited {
        relay: PeerId,
        ids: Vec<MessageId>,
        response: Option<kith_protocol::mailbox::MailboxResponse>,
    },
    /// A chunk was written (`None`: it was a duplicate and was dropped).
    ChunkWritten { media: MediaId, bytes: Option<u64> },
    /// A chunk failed verification.
    ChunkRejected { media: MediaId, index: u32, source: usize, error: ChunkError },
    /// A download was saved.
    Completed { media: MediaId, path: PathBuf },
    /// A download's writer failed.
    Failed { media: MediaId, failure: MediaFailure },
}
