//! Media frames: sealed attachment chunks, addressed by their BLAKE3 hash.
//!
//! Recipients pull chunks from the sender or from a relay's blob store with [`MediaRequest::Get`]
//! on `/kith/media/fetch/1` streams (each frame preceded by its length as a big-endian `u32`,
//! many requests pipelined on one stream, answered in order); senders upload chunks to a
//! recipient's relay ([`MediaRequest::Put`]) and recipients release them
//! ([`MediaRequest::Delete`]) with one request-response exchange each on `/kith/media/1`. Chunks are ciphertext: neither relays
//! nor the network learn anything but sizes and hashes.

use serde::{Deserialize, Serialize};

use crate::codec::{Frame, Invalid, check_count, check_len, check_non_empty};
use crate::ids::{ChunkHash, MediaId, UserId};
use crate::limits::{MAX_CHUNK_BYTES, MAX_MEDIA_CHUNKS, MAX_MEDIA_FRAME_BYTES};

/// A request on `/kith/media/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaRequest {
    /// Asks for one sealed chunk.
    Get {
        /// The attachment.
        media: MediaId,
        /// Chunk index.
        index: u32,
        /// Expected BLAKE3 hash of the sealed chunk.
        hash: ChunkHash,
    },
    /// Stores one sealed chunk on a relay for `recipient`.
    Put {
        /// Who may fetch it.
        recipient: UserId,
        /// BLAKE3 hash of `data`; the relay checks it.
        hash: ChunkHash,
        /// The sealed chunk.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Deletes chunks a relay holds for the requester (the recipient has them all).
    Delete {
        /// The chunks.
        hashes: Vec<ChunkHash>,
    },
}

/// A response on `/kith/media/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaResponse {
    /// The requested sealed chunk.
    Chunk {
        /// Its bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// This peer does not hold that chunk.
    NotFound,
    /// The uploaded chunk is stored durably.
    Stored,
    /// This many of the chunks to delete were held, and are gone.
    Deleted {
        /// How many.
        removed: u32,
    },
    /// The request was refused.
    Refused(MediaRefusal),
}

/// Why a media request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaRefusal {
    /// The uploaded bytes do not hash to the claimed hash.
    HashMismatch,
    /// The recipient's blob quota is full.
    QuotaExceeded,
    /// Too many requests from this peer.
    RateLimited,
    /// Only the recipient may fetch this chunk.
    NotRecipient,
    /// The peer cannot serve right now; retry later.
    Unavailable,
    /// The peer does not store chunks for others.
    NotARelay,
}

impl Frame for MediaRequest {
    const NAME: &'static str = "media request";
    const MAX_BYTES: usize = MAX_MEDIA_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Get { .. } => Ok(()),
            Self::Delete { hashes } => {
                check_non_empty("hashes", hashes.len())?;
                check_count("hashes", hashes.len(), MAX_MEDIA_CHUNKS)
            }
            Self::Put { data, .. } => {
                check_non_empty("data", data.len())?;
                check_len("data", data.len(), MAX_CHUNK_BYTES)
            }
        }
    }
}

impl Frame for MediaResponse {
    const NAME: &'static str = "media response";
    const MAX_BYTES: usize = MAX_MEDIA_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Chunk { data } => check_len("data", data.len(), MAX_CHUNK_BYTES),
            Self::NotFound | Self::Stored | Self::Deleted { .. } | Self::Refused(_) => Ok(()),
        }
    }
}
